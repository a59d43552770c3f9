"""ProxylessNAS (Cai, Zhu, Han 2019): binary gates, the gradient estimator, the architecture step.

Weight steps run one sampled path per batch (uniformly random during warm-up, then drawn from
p = softmax(alpha)). Every `update_every` weight steps one architecture step runs on a batch of the
held-out validation split: gates are sampled, the loss (cross-entropy with the cost term) is
back-propagated to the gates, and

    dL/dalpha_i = sum_j dL/dg_j * p_j * (delta_ij - p_i)

is added to the cost term's own gradient (E[cost] is differentiable in alpha). In `two` mode only two
paths are sampled and compared, and afterwards their alphas are shifted so that the probabilities of
the other paths are unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from mncli.errors import BadInput
from mncli.search.cost import CostModel, cost_loss
from mncli.search.supernet import MixedOp, SuperNet


@dataclass
class ArchConfig:
    binary_mode: str = "full"  # "full" (all paths' gate gradients) or "two"
    arch_lr: float = 1e-3
    arch_beta1: float = 0.0
    arch_beta2: float = 0.999
    arch_eps: float = 1e-8
    update_every: int = 5  # one architecture step every k weight steps
    arch_steps: int = 1
    weights_warmup_epochs: int = 0  # epochs of weight steps only (random paths), before any arch step
    loss: str = "mul#log"
    target: float = 0.0

    def __post_init__(self) -> None:
        if self.binary_mode not in ("full", "two"):
            raise BadInput(f"unknown binary mode {self.binary_mode!r}", hint="use --binary-mode full or two")
        if self.update_every < 1 or self.arch_steps < 1:
            raise BadInput("--arch-every and --arch-steps must be at least 1")
        if self.arch_lr <= 0:
            raise BadInput(f"--arch-lr must be positive, got {self.arch_lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def estimator_gradient(probs: torch.Tensor, gate_grads: torch.Tensor) -> torch.Tensor:
    """sum_j g_j p_j (delta_ij - p_i) for every i: p_i g_i - p_i sum_j p_j g_j."""
    return probs * gate_grads - probs * torch.dot(probs, gate_grads)


def sample_path(op: MixedOp, generator: torch.Generator, *, uniform: bool, mode: str) -> None:
    """Pick the active path (and, for an architecture step, the paths whose gate gradients count)."""
    n = len(op.choices)
    if uniform:
        op.active = int(torch.randint(n, (1,), generator=generator).item())
        op.involved = [op.active]
        return
    probs = op.probs().detach().cpu()
    if mode == "two" and n >= 2:
        pair = torch.multinomial(probs, 2, replacement=False, generator=generator).tolist()
        pair_probs = torch.softmax(op.alpha.detach().cpu()[pair], dim=0)
        op.active = pair[int(torch.multinomial(pair_probs, 1, generator=generator).item())]
        op.involved = pair
    else:
        op.active = int(torch.multinomial(probs, 1, generator=generator).item())
        op.involved = list(range(n))


class ArchitectureSearch:
    """Drives the super-network: path sampling for weight steps and the architecture steps."""

    def __init__(self, supernet: SuperNet, costs: CostModel, config: ArchConfig, seed: int = 0):
        self.supernet, self.costs, self.config = supernet, costs, config
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.optimizer = torch.optim.Adam(
            supernet.arch_parameters(),
            lr=config.arch_lr,
            betas=(config.arch_beta1, config.arch_beta2),
            eps=config.arch_eps,
            weight_decay=0.0,
        )
        self.arch_steps_done = 0
        self.last: dict = {}

    def to(self, device: torch.device | str) -> None:
        """Move alpha and the gates next to the weights (the optimiser keeps the same tensors)."""
        for op in self.supernet.mixed:
            op.alpha.data = op.alpha.data.to(device)
            op.gates.data = op.gates.data.to(device)
            state = self.optimizer.state.get(op.alpha)
            if state:
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)

    def sample_weight_paths(self, warmup: bool) -> None:
        for op in self.supernet.mixed:
            sample_path(op, self.generator, uniform=warmup, mode="full")
            op.mode = "path"

    def arch_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """One update of every alpha on a validation batch; returns the loss terms."""
        cfg, net = self.config, self.supernet
        ops = list(net.mixed)
        was_training = net.training
        net.train()
        for op in ops:
            sample_path(op, self.generator, uniform=False, mode=cfg.binary_mode)
            op.mode = "arch"
        try:
            logits = net(x)
            ce = F.cross_entropy(logits.float(), y)
            expected = self.costs.expected(net)
            loss = cost_loss(ce, expected, cfg.target, cfg.loss, self.costs.metric)
            alphas = [op.alpha for op in ops]
            gates = [op.gates for op in ops]
            grads = torch.autograd.grad(loss, alphas + gates, allow_unused=True)
        finally:
            for op in ops:
                op.mode = "path"
            net.train(was_training)
        old_alphas = [op.alpha.detach().clone() for op in ops]
        for op, direct, gate_grad in zip(ops, grads[: len(ops)], grads[len(ops) :], strict=True):
            grad = torch.zeros_like(op.alpha) if direct is None else direct.clone()
            if gate_grad is not None:
                idx = op.involved
                probs = torch.softmax(op.alpha.detach()[idx], dim=0)
                grad[idx] += estimator_gradient(probs, gate_grad.detach().to(grad.device)[idx])
            op.alpha.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.binary_mode == "two":
            for op, old in zip(ops, old_alphas, strict=True):
                rescale_two(op, old)
        self.arch_steps_done += 1
        self.last = {
            "arch_ce": ce.item(),
            "arch_loss": loss.item(),
            "expected_cost": expected.item(),
        }
        return self.last

    def state_dict(self) -> dict:
        return {
            "alphas": [op.alpha.detach().cpu().clone() for op in self.supernet.mixed],
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "arch_steps_done": self.arch_steps_done,
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for op, alpha in zip(self.supernet.mixed, state["alphas"], strict=True):
                op.alpha.copy_(alpha.to(op.alpha.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.arch_steps_done = int(state["arch_steps_done"])


def rescale_two(op: MixedOp, old_alpha: torch.Tensor) -> None:
    """After a `two`-mode update, shift the two involved alphas by a common offset so that the sum of
    their exponentials (and so every other path's probability) is what it was before the step."""
    idx = op.involved
    with torch.no_grad():
        new = op.alpha[idx]
        offset = torch.logsumexp(new, 0) - torch.logsumexp(old_alpha.to(new.device)[idx], 0)
        op.alpha[idx] -= offset


def log_probabilities(supernet: SuperNet) -> list[list[float]]:
    return [torch.log_softmax(op.alpha.detach(), dim=0).cpu().tolist() for op in supernet.mixed]


def entropy(supernet: SuperNet) -> float:
    """Mean entropy of the block distributions, in nats (log(n) at the start, 0 once decided)."""
    values = []
    for op in supernet.mixed:
        p = op.probs().detach()
        values.append(float(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    return sum(values) / max(1, len(values)) if values else math.nan
