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
        """One update of every alpha on a validation batch; returns the loss terms.

        Under torchrun (a process group of several ranks) x, y are this rank's share of one global
        validation batch. Every rank samples the same gates (one seed, identical alphas); the alpha
        gradients, weighted by each share's size, are summed in one all-reduce, so the step is the
        one on the global batch (up to batch-norm statistics, each share's own unless synchronised),
        and every rank takes the same Adam step."""
        cfg, net = self.config, self.supernet
        ops = list(net.mixed)
        for op in ops:
            sample_path(op, self.generator, uniform=False, mode=cfg.binary_mode)
        grads, ce, loss, expected = self._gradients(ops, x, y)
        if _world_size() > 1:
            grads, ce, loss = _all_reduce_weighted(grads, ce, loss, int(y.shape[0]))
        old_alphas = [op.alpha.detach().clone() for op in ops]
        for op, grad in zip(ops, grads, strict=True):
            op.alpha.grad = grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.binary_mode == "two":
            for op, old in zip(ops, old_alphas, strict=True):
                rescale_two(op, old)
        self.arch_steps_done += 1
        self.last = {
            "arch_ce": float(ce),
            "arch_loss": float(loss),
            "expected_cost": float(expected),
        }
        return self.last

    def _gradients(self, ops: list[MixedOp], x: torch.Tensor, y: torch.Tensor):
        """(alpha gradient per block, CE, loss, E[cost]) on one batch, with the gates sampled."""
        cfg, net = self.config, self.supernet
        was_training = net.training
        net.train()
        for op in ops:
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
        out = []
        for op, direct, gate_grad in zip(ops, grads[: len(ops)], grads[len(ops) :], strict=True):
            grad = torch.zeros_like(op.alpha) if direct is None else direct.clone()
            if gate_grad is not None:
                idx = op.involved
                probs = torch.softmax(op.alpha.detach()[idx], dim=0)
                grad[idx] += estimator_gradient(probs, gate_grad.detach().to(grad.device)[idx])
            out.append(grad)
        return out, ce.detach(), loss.detach(), expected.detach()

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


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_weighted(grads: list[torch.Tensor], ce, loss, count: int):
    """Every rank's gradients, CE and loss weighted by its share's size: one all-reduce of one flat
    tensor on the alphas' device (NCCL takes no CPU tensor), then divided by the global count. Each
    loss is linear in the mean CE, so this is the gradient of the loss on the global batch."""
    device = grads[0].device
    sizes = [g.numel() for g in grads]
    terms = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in (ce, loss)])
    flat = torch.cat([torch.cat(grads).float(), terms, torch.ones(1, device=device)]) * count
    torch.distributed.all_reduce(flat)
    total = flat[-1].item()
    flat = flat / total  # > 0: every rank has examples (search.callback._val_shares)
    parts = list(torch.split(flat[: sum(sizes)], sizes))
    return [p.to(g.dtype).clone() for p, g in zip(parts, grads, strict=True)], flat[-3], flat[-2]


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
