"""The engine callback that runs a ProxylessNAS search inside `fit`: a sampled path before every
weight step, an architecture step on a validation batch every k weight steps after warm-up, and the
most likely network (with its cost) logged at every epoch end."""

from __future__ import annotations

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

        def on_train_start(self, ctx) -> None:
            search.to(ctx.device)
            self._val = _cycle(ctx.data.val)

        def before_step(self, ctx) -> None:
            search.sample_weight_paths(warmup=ctx.epoch < weights_warmup_epochs)

        def after_step(self, ctx) -> None:
            if ctx.epoch < weights_warmup_epochs:
                return
            self.weight_steps += 1
            if self.weight_steps % search.config.update_every:
                return
            for _ in range(search.config.arch_steps):
                x, y = next(self._val)
                search.arch_step(x.to(ctx.device), y.to(ctx.device))
            search.sample_weight_paths(warmup=False)

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
