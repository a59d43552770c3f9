"""Stopping cleanly: SIGINT/SIGTERM become a flag the loop checks after every step (all DDP ranks agree
before stopping), then a checkpoint and TrainingInterrupted (exit 130 / 143, with how to resume)."""

from __future__ import annotations

import signal

import torch

from mncli.engine.config import TrainConfig
from mncli.errors import BadInput, MncliError

# Settings that must match between a checkpoint and the run resuming it.
_RESUME_KEYS = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "schedule",
    "seed",
    "weight_decay",
    "warmup_epochs",
)


class TrainingInterrupted(MncliError):
    """SIGINT / SIGTERM: a checkpoint was saved; exit 130 / 143 as a shell expects."""

    def __init__(self, message: str, hint: str | None, exit_code: int):
        super().__init__(message, hint)
        self.exit_code = exit_code


class StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks after every step."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def agree_to_stop(flag: bool, world_size: int, device: torch.device | str) -> bool:
    """True on every rank when any rank was signalled (a collective on the rank's `device`)."""
    if world_size <= 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value)
    return value.item() > 0


def check_resumable(state: dict, cfg: TrainConfig) -> None:
    saved = state.get("config", {})
    now = cfg.to_dict()
    changed = [k for k in _RESUME_KEYS if k in saved and saved[k] != now[k]]
    if changed:
        detail = ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in changed)
        raise BadInput(
            f"the checkpoint was written with other settings ({detail})",
            hint="resume with the options of the interrupted run, or delete the .ckpt folder",
        )


def interrupted(signum, epoch: int, batch: int, ckpt_dir, hint: str | None) -> TrainingInterrupted:
    name = signal.Signals(signum).name
    code = 128 + int(signum)
    where = f"epoch {epoch + 1} after batch {batch}"
    if ckpt_dir is None:
        return TrainingInterrupted(
            f"stopped by {name} at {where}; no checkpoint (no output path)", None, code
        )
    return TrainingInterrupted(
        f"stopped by {name} at {where}; checkpoint saved in {ckpt_dir}",
        hint or "run the same command again with --resume",
        code,
    )
