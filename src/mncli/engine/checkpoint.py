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
    path = Path(folder) / FILE
    if not path.is_file():
        raise BadInput(f"no checkpoint to resume from in {folder}", hint="run without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file
        raise BadInput(f"cannot read checkpoint {path}: {exc}", hint="delete it and start again") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInput(f"{path} is not an mncli checkpoint", hint="delete it and start again")
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
