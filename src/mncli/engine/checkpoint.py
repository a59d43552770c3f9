"""Checkpoints in OUT.ckpt/: everything a resumed run needs to continue bit-for-bit.

One file, `state.pt`, written atomically with torch.save and read back with `weights_only=True`, so it
holds only tensors, numbers, strings, lists and dicts (never arbitrary pickled objects): the model,
the optimiser, every callback's state, the global RNG states, where in the run it stopped (epoch and
batch), the history so far and the best weights. The data order and augmentation need no state: they
are derived from (seed, epoch, batch index).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mncli.artifact.tempfiles import make_temporary
from mncli.errors import BadInput
from mncli.models.checkpoint import load_plain

FILE = "state.pt"
FORMAT = "mncli-ckpt/1"


def ckpt_dir_for(out: Path | str) -> Path:
    """`runs/fp.safetensors` -> `runs/fp.ckpt/`."""
    out = Path(out)
    return out.with_name(out.stem + ".ckpt") if out.suffix else out.with_name(out.name + ".ckpt")


def save_checkpoint(folder: Path, state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FILE
    fd, tmp = make_temporary(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(folder: Path) -> dict:
    """The checkpoint in `folder`, read without unpickling code and checked to be complete; a missing,
    torn, foreign or malicious file is one BadInput line (never torch's advice to load it unsafely)."""
    path = Path(folder) / FILE
    if not path.exists():
        raise BadInput(f"no checkpoint to resume from in {folder}", hint="run without --resume first")
    return _checked(path, load_plain(path, "checkpoint", _hint(path)))


def check_checkpoints(folder: Path | str | None) -> None:
    """Read and check every checkpoint under `folder` (a stage's OUT.ckpt/ and its phases): a run
    with --resume calls this before any work, so a bad file stops it before data is read."""
    if folder is None or not Path(folder).exists():
        return
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a checkpoint folder", hint="move that file away, or give another -o")
    for path in sorted(folder.rglob(FILE)):
        _checked(path, load_plain(path, "checkpoint", _hint(path)))


# Entries of a checkpoint and what each must be; "best_state" and "scaler" are optional.
_SHAPE = {
    "model": dict,
    "optimizer": dict,
    "callbacks": list,
    "rng": dict,
    "epoch": int,
    "batch": int,
    "partial": list,
    "history": list,
    "best_acc": float,
    "best_epoch": int,
    "config": dict,
}


_KIND_NAMES = {dict: "a mapping", list: "a list", int: "an integer", float: "a number"}


def _hint(path: Path) -> str:
    return f"delete {path.parent} and start again (without --resume)"


def _checked(path: Path, state: object) -> dict:
    hint = _hint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"{path} is not an mncli checkpoint", hint=hint)
    for key, kind in _SHAPE.items():
        value = state.get(key)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool):
            what = f"{key!r} is missing or not {_KIND_NAMES[kind]}"
            raise BadInput(f"checkpoint {path} is damaged: {what}", hint=hint)
    for key in ("model", "best_state"):
        tensors = state.get(key, {})
        if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
        ):
            raise BadInput(f"checkpoint {path} is damaged: {key!r} is not a dict of tensors", hint=hint)
    if not isinstance(state["rng"].get("cpu"), torch.Tensor):
        raise BadInput(f"checkpoint {path} is damaged: no random generator state", hint=hint)
    if state["epoch"] < 0 or state["batch"] < 0:
        where = f"epoch {state['epoch']}, batch {state['batch']}"
        raise BadInput(f"checkpoint {path} is damaged: it stopped at {where}", hint=hint)
    partial = state["partial"]
    if len(partial) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in partial):
        raise BadInput(f"checkpoint {path} is damaged: its partial sums are not 3 numbers", hint=hint)
    return state


def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in module.state_dict().items()
    }
