"""Many processes (torchrun): the process group, collectives on the rank's device, synchronised
BatchNorm, elastic restarts.

Collectives. The group has one backend: nccl on CUDA, gloo on CPU. Every tensor the engine hands to
torch.distributed is on the rank's compute device (`Runtime.device`), which is what NCCL demands.
torch could also give one group two backends (`backend="cpu:gloo,cuda:nccl"`), so that CPU tensors
go through gloo; we do not use that: a per-batch CPU collective on a GPU run is a hidden device->host
copy and sync, gloo between machines needs its own network set-up besides NCCL's, and a single rule
("no host tensor in a collective") is one the test suite can hold on CPU runs
(tests/distributed_checker.py), where cpu is both the host and the compute device.

    rank, world = group_shard()                       # (0, 1) without an initialised group
    totals = all_reduce_sum([loss, correct, count], device)
    restore = sync_batchnorm(model)                   # BatchNorm statistics over every rank's batch
    elastic_restart()                                 # > 0 in a job torchrun restarted
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mncli.engine.forwards import replace_forwards

RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"
RUN_ID_ENV = "TORCHELASTIC_RUN_ID"


def init_group(device: torch.device, rank: int, world_size: int) -> None:
    """Join the job's process group: nccl on CUDA (bound to `device`), gloo otherwise.

    Under torchrun the group's keys go under a prefix of the attempt (TORCHELASTIC_RESTART_COUNT) in
    the agent's store: the agent keeps its store across restarts, and gloo's workers of a restarted
    job otherwise read the addresses of the dead attempt's (measured with torch 2.14: connection
    refused, or a hang until the 30-minute timeout)."""
    from datetime import timedelta

    dist = torch.distributed
    kwargs: dict = {"backend": "nccl", "device_id": device} if device.type == "cuda" else {"backend": "gloo"}
    timeout = timedelta(minutes=30)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true" and "MASTER_PORT" in os.environ:
        store = dist.TCPStore(
            os.environ.get("MASTER_ADDR", "localhost"), int(os.environ["MASTER_PORT"]), world_size,
            is_master=False, timeout=timeout,
        )  # fmt: skip
        store = dist.PrefixStore(f"mncli/attempt{elastic_restart()}", store)
        kwargs.update(store=store, rank=rank, world_size=world_size)
    dist.init_process_group(timeout=timeout, **kwargs)


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def group_shard() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group; (0, 1) without one."""
    if not initialized():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def all_reduce_sum(values: Sequence[float], device: torch.device | str, world_size: int) -> list[float]:
    """`values` summed over the ranks (float64, on the rank's device); unchanged in one process."""
    if world_size <= 1 or not initialized():
        return [float(v) for v in values]
    totals = torch.tensor(list(values), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(totals)
    return totals.tolist()


def leave_group(*, wait: bool = True) -> None:
    """Every rank waits for the others (rank 0 has written OUT), then the process group is destroyed.
    The one way a stage leaves it; a no-op without a group. `wait=False` (a stage failed, the other
    ranks may never arrive) only destroys it."""
    if not initialized():
        return
    if wait:
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def elastic_restart() -> int:
    """How many times torchrun (--max-restarts) restarted this job: 0 in its first attempt."""
    try:
        return int(os.environ.get(RESTART_ENV) or 0)
    except ValueError:
        return 0


def run_id() -> str | None:
    """The torchrun job's id (the same in every attempt of the job), or None outside torchrun."""
    return os.environ.get(RUN_ID_ENV) or None


# --- synchronised BatchNorm ---------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: every rank's loss depends on every rank's statistics, so
    the gradient of the summed statistics is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(grad)
        return grad


def _synced_forward(bn: torch.nn.modules.batchnorm._BatchNorm):
    original = type(bn).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        if not batch_stats:
            return original(bn, x)
        bn._check_input_dim(x)
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, channels] + [1] * (x.dim() - 2)
        with torch.autocast(x.device.type, enabled=False):
            xf = x.float()
            # Shifted by the running mean (the same on every rank): s2/n - (s1/n)^2 then cancels
            # little once the running mean is near the batch mean.
            if bn.running_mean is not None:
                shift = bn.running_mean.detach().float()
            else:
                shift = torch.zeros(channels, device=x.device)
            centred = xf - shift.view(shape)
            count = torch.full((1,), x.numel() // max(1, channels), dtype=torch.float32, device=x.device)
            local = torch.cat([centred.sum(dims), centred.square().sum(dims), count])
            total = _AllReduceSum.apply(local)
            n = total[-1]
            mean_c = total[:channels] / n
            var = (total[channels : 2 * channels] / n - mean_c.square()).clamp_min(0)
            mean = shift + mean_c
            if bn.training and bn.track_running_stats and bn.running_mean is not None:
                with torch.no_grad():
                    unbiased = var * (n / (n - 1).clamp_min(1))
                    bn.running_mean.mul_(1 - factor).add_(
                        mean.detach().to(bn.running_mean.dtype), alpha=factor
                    )
                    bn.running_var.mul_(1 - factor).add_(
                        unbiased.detach().to(bn.running_var.dtype), alpha=factor
                    )
            y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
            if bn.affine:
                y = y * bn.weight.float().view(shape) + bn.bias.float().view(shape)
        return y.to(x.dtype)

    return forward


def sync_batchnorm(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Make every BatchNorm of `model` normalise with the statistics of all ranks' batches together
    (what torch.nn.SyncBatchNorm does, on any device: torch's refuses CPU tensors, so the CPU test
    would not run the code GPUs run). The modules keep their class, parameters, buffers and
    state-dict keys; only their forward is replaced, in training mode (evaluation uses the running
    statistics as before). Returns the patched modules; `forwards.restore_forward` undoes it."""
    return replace_forwards(
        model, lambda module: _synced_forward(module) if isinstance(module, _BatchNorm) else None
    )
