"""The engine callback that runs a ProxylessNAS search inside `fit`: a sampled path before every
weight step, an architecture step on a validation batch every k weight steps after warm-up, and the
most likely network (with its cost) logged at every epoch end.

Under torchrun every rank runs the same callback in lock-step: the weight paths come from one seeded
generator and identical alphas, so every rank trains the same path (DDP reduces its gradients); each
architecture step takes this rank's share of one global validation batch and all-reduces the alpha
gradients (proxyless.ArchitectureSearch.arch_step). With MNCLI_SEARCH_TRACE=PREFIX set (for tests),
each rank appends one JSON line per weight step and per architecture step to PREFIX.rank<R>.jsonl:
the sampled paths and the alphas, to compare across ranks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os

import torch

from mncli.errors import BadInput
from mncli.log import log


def _cycle(split):
    while True:
        empty = True
        for batch in split:
            empty = False
            yield batch
        if empty:
            raise BadInput("the validation split is empty", hint="the search needs --val-size > 0")


def _val_shares(split, rank: int, world_size: int):
    """This rank's shares of the global validation batches, cycled: global batch k is batch k of a
    single process with batch size world_size x split.batch_size, and rank r takes its examples
    r, r + world_size, ... (the split's own strided sharding). A short last global batch with fewer
    examples than ranks is left out of the cycle, so every rank has examples at every step (and
    runs the same forward passes: synchronised batch norm's collectives stay in step)."""
    if world_size <= 1:
        yield from _cycle(split)
        return
    full, rest = divmod(len(split), split.batch_size * world_size)
    per_cycle = full + (rest >= world_size)
    if per_cycle == 0:
        raise BadInput(
            f"the validation split ({len(split)} images) is smaller than the {world_size} ranks",
            hint="give a larger --val-size",
        )
    while True:
        shares = split.batches(rank=rank, world_size=world_size)
        yield from itertools.islice(shares, per_cycle)
        close = getattr(shares, "close", None)
        if close is not None:
            close()


class _Trace:
    """Test-only: one JSON line per step with the sampled paths and the alphas (exact floats)."""

    def __init__(self, prefix: str, rank: int):
        self.file = open(f"{prefix}.rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def write(self, kind: str, net, **extra) -> None:
        record = {
            "kind": kind,
            "active": [op.active for op in net.mixed],
            "involved": [list(op.involved) for op in net.mixed],
            "alphas": [op.alpha.detach().cpu().tolist() for op in net.mixed],
            **extra,
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def weights_digest(net) -> str:
    """sha256 of the parameters' bytes (not the buffers: batch-norm statistics are each rank's)."""
    digest = hashlib.sha256()
    for name, param in net.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def make_callback(search, weights_warmup_epochs: int, metric: str):
    """The engine callback: a sampled path before every weight step, an architecture step on a
    validation batch every k weight steps after warm-up, the most likely network at each epoch end."""
    from mncli.engine import Callback
    from mncli.search.cost import fmt
    from mncli.search.proxyless import entropy

    class ArchitectureCallback(Callback):
        def __init__(self) -> None:
            self.history: list[dict] = []
            self.weight_steps = 0
            self._val = None
            self._trace: _Trace | None = None

        def on_train_start(self, ctx) -> None:
            search.to(ctx.device)
            self._val = _val_shares(ctx.data.val, ctx.rank, ctx.world_size)
            prefix = os.environ.get("MNCLI_SEARCH_TRACE")
            self._trace = _Trace(prefix, ctx.rank) if prefix else None

        def before_step(self, ctx) -> None:
            search.sample_weight_paths(warmup=ctx.epoch < weights_warmup_epochs)

        def after_step(self, ctx) -> None:
            if self._trace is not None:
                self._trace.write("weight", search.supernet, step=ctx.step)
            if ctx.epoch < weights_warmup_epochs:
                return
            self.weight_steps += 1
            if self.weight_steps % search.config.update_every:
                return
            for _ in range(search.config.arch_steps):
                x, y = next(self._val)
                search.arch_step(x.to(ctx.device), y.to(ctx.device))
                if self._trace is not None:
                    self._trace.write("arch", search.supernet, step=ctx.step, **search.last)
            search.sample_weight_paths(warmup=False)

        def on_train_end(self, ctx) -> None:
            if self._trace is not None:
                digest = weights_digest(search.supernet)
                self._trace.write("end", search.supernet, step=ctx.step, weights=digest)
                self._trace.close()
                self._trace = None

        def on_epoch_end(self, ctx, metrics: dict) -> None:
            net, costs = search.supernet, search.costs
            chosen = net.chosen_indices()
            derived = costs.of_indices(chosen)
            with torch.no_grad():
                expected = float(costs.expected(net))
            phase = "warm-up" if ctx.epoch < weights_warmup_epochs else "search"
            record = {
                "epoch": ctx.epoch,
                "phase": phase,
                "val_acc_shared": metrics.get("val_acc"),
                "expected_cost": expected,
                "argmax_cost": derived,
                "entropy": round(entropy(net), 4),
                "arch": net.chosen(),
            }
            self.history.append(record)
            metrics.update({"expected_cost": expected, "argmax_cost": derived, "entropy": record["entropy"]})
            acc = metrics.get("val_acc")
            if not ctx.is_main:
                return
            log(
                f"epoch {ctx.epoch + 1} ({phase}): most likely {' '.join(_short(c) for c in record['arch'])} "
                f"| {metric} {fmt(derived, metric)} (expected {fmt(expected, metric)})"
                + (f" | val top-1 {100 * acc:.2f} % (shared weights)" if isinstance(acc, float) else "")
            )

        def state_dict(self) -> dict:
            return {"search": search.state_dict(), "history": self.history, "weight_steps": self.weight_steps}

        def load_state_dict(self, state: dict) -> None:
            search.load_state_dict(state["search"])
            self.history = list(state.get("history", []))
            self.weight_steps = int(state.get("weight_steps", 0))

    return ArchitectureCallback()


def _short(choice: str) -> str:
    return "-" if choice == "zero" else choice.replace("_", "")
