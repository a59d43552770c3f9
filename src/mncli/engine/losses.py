"""The training loss: cross-entropy (with label smoothing), or Hinton distillation with a teacher.

    L = w_s * CE(z_s, y) + w_d * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))   (KL: batchmean)

T^2 keeps the soft term's gradients the same size as T changes (without it the term vanishes at
large T)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 2.0,
    student_weight: float = 0.5,
    distill_weight: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    hard = classification_loss(student, y, label_smoothing)
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return student_weight * hard + distill_weight * temperature**2 * soft
