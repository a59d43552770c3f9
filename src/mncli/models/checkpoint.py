"""Foreign PyTorch checkpoints: read them without unpickling code, and fit them onto a registered model.

`read_state_dict` accepts what people actually save: a bare state dict, or one nested under
"state_dict" / "model" / "model_state_dict" / "net" / "weights" beside epochs and optimiser states,
with `module.` (DataParallel) or `_orig_mod.` (torch.compile) prefixes. `fit_state_dict` then demands
exact keys and shapes and reports every difference.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from mncli.errors import BadInput

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
PREFIXES = ("module.", "_orig_mod.")


def _load_object(path: Path) -> object:
    if not path.exists():
        raise BadInput(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise BadInput(f"checkpoint {path} is a directory, not a file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInput(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BadInput(
            f"{path} holds Python objects that are not loaded for safety (weights_only=True)",
            hint="save a plain state dict instead: torch.save(model.state_dict(), 'model.pt')",
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadInput(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})",
            hint="give a file written by torch.save(model.state_dict(), PATH)",
        ) from exc


def _unwrap(obj: object) -> dict:
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    raise BadInput(
        "no state dict found in the checkpoint",
        hint=f"expected a dict of tensors, possibly under one of {', '.join(NESTED_KEYS)}",
    )


def strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes that every key shares (`module.layer1...` -> `layer1...`)."""
    stripped = []
    changed = True
    while changed and state:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def read_state_dict(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a checkpoint file, unwrapped and with wrapper prefixes removed, plus notes."""
    path = Path(path)
    obj = _unwrap(_load_object(path))
    dropped = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    state, stripped = strip_prefixes(state)
    return state, {"stripped_prefixes": stripped, "dropped_non_tensors": dropped}


def compare_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list]:
    """Missing, unexpected and shape-mismatched keys of `state` against `model`.

    A missing `num_batches_tracked` is not a problem: checkpoints older than PyTorch 0.4 lack it."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        {"key": k, "checkpoint": list(state[k].shape), "model": list(expected[k].shape)}
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def _describe(problems: dict[str, list], limit: int = 3) -> str:
    parts = []
    if problems["missing"]:
        parts.append("missing " + ", ".join(problems["missing"][:limit]))
    if problems["unexpected"]:
        parts.append("unexpected " + ", ".join(problems["unexpected"][:limit]))
    for item in problems["mismatched"][:limit]:
        parts.append(f"{item['key']} is {item['checkpoint']} in the checkpoint, {item['model']} in the model")
    return "; ".join(parts)


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], arch_name: str) -> dict[str, list]:
    """Load `state` into `model` with exact key and shape matching; BadInput listing every difference."""
    problems = compare_state_dict(model, state)
    counts = {k: len(v) for k, v in problems.items()}
    if any(counts.values()):
        summary = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        hint = _describe(problems)
        classifier = [m for m in problems["mismatched"] if len(m["checkpoint"]) in (1, 2)]
        if classifier and len(classifier) == counts["mismatched"] and len(classifier) <= 2:
            hint += f" (a different class count? try --arch-opt num_classes={classifier[0]['checkpoint'][0]})"
        raise BadInput(f"checkpoint does not fit {arch_name}: {summary} keys", hint=hint)
    full = dict(state)
    for key, value in model.state_dict().items():
        full.setdefault(key, value)  # only num_batches_tracked can be absent here
    model.load_state_dict(full, strict=True)
    return problems
