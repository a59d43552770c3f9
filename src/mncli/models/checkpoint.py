"""Foreign PyTorch checkpoints: read them without unpickling code, and fit them onto a registered model.

`read_state_dict` accepts what people actually save: a bare state dict, or one nested under
"state_dict" / "model" / "model_state_dict" / "net" / "weights" beside epochs and optimiser states,
with `module.` (DataParallel) or `_orig_mod.` (torch.compile) prefixes. It reads the file with
`load_plain` (torch's weights-only load); when torch refuses it only because the pickle names classes
or functions (an optimiser's type, a quantizer's enums, a whole pickled model), it reads it again with
`unpickle.load_restricted`, which stands an inert placeholder in for each of them, and reports their
names. A pickled whole `nn.Module` gives the tensors its default `state_dict()` would. `fit_state_dict`
then demands exact keys and shapes and reports every difference.
"""

from __future__ import annotations

import errno
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from mncli.errors import BadInput
from mncli.log import debug
from mncli.models.unpickle import Placeholder, load_restricted, short_repr

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
PREFIXES = ("module.", "_orig_mod.")
_SAVE_HINT = "save the weights alone: torch.save(model.state_dict(), PATH)"
MAX_MODULE_DEPTH = 100  # submodules nested deeper than any real network: a loop in a hostile pickle


# What torch's weights-only unpickler says when a pickle asks for code (a global, a call, an object).
_CODE_WORDS = re.compile(r"global|reduce|build|newobj|find_class|not an allowed", re.IGNORECASE)


class _NamesGlobals(BadInput):
    """torch refused the file because its pickle names a global beyond the weights-only allowlist
    (the first one it met: others, even blocked ones, may follow)."""


_UNREADABLE = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG}


def load_plain(path: Path | str, what: str = "checkpoint", hint: str | None = None) -> object:
    """`torch.load(path, weights_only=True)` with every failure one BadInput line: only tensors,
    numbers, strings, lists and dicts are ever unpickled, and torch's advice to retry with
    `weights_only=False` (which would run whatever code the file holds) is never passed on."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist")
    if path.is_dir():
        raise BadInput(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise BadInput(f"{what} {path} is not a regular file")
    hint = hint or "give a file written by torch.save(model.state_dict(), PATH)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol ...": not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _CODE_WORDS.search(str(exc)):
            refused = _NamesGlobals if "was not an allowed global" in str(exc) else BadInput
            raise refused(
                f"{what} {path} holds pickled Python objects or code; it was not loaded, for safety",
                hint=hint,
            ) from None
        raise BadInput(f"{what} {path} is not a PyTorch checkpoint (no readable pickle)", hint=hint) from None
    except OSError as exc:
        if exc.errno in _UNREADABLE:  # the file system's refusal, not the file's content
            raise BadInput(f"cannot read {what} {path}: {exc.strerror}") from None
        reason = "damaged or truncated"  # torch seeks past the end of a torn archive (EINVAL)
        raise BadInput(f"{what} {path} is not a PyTorch checkpoint ({reason})", hint=hint) from None
    except MemoryError:
        raise BadInput(f"{what} {path} is too large to load", hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - a torn, truncated or foreign file, whatever torch raises
        raise BadInput(f"{what} {path} is not a PyTorch checkpoint ({_reason(exc)})", hint=hint) from None


def _reason(exc: BaseException) -> str:
    """A short cause: torch's first line when it says something useful and nothing about
    weights_only, else the exception's kind."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if not text or "weights_only" in text or len(text) < 4:
        return "damaged or another format" if isinstance(exc, EOFError | KeyError) else type(exc).__name__
    if "central directory" in text or "zip archive" in text:
        return "truncated or damaged zip archive"
    return text[:100]


def _load_object(path: Path) -> tuple[object, list[str]]:
    """The object the file holds and the names of the pickled globals that placeholders stand for."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), []
        except Exception as exc:  # noqa: BLE001 - the library's own parser decides what is valid
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise BadInput(f"{path} is not a readable safetensors file: {reason}") from None
    try:
        return load_plain(path), []
    except _NamesGlobals:
        return load_restricted(path)


def _unwrap(obj: object, path: Path) -> dict:
    for _ in range(4):
        if isinstance(obj, Placeholder):
            state = _module_tensors(obj, path)
            if state:
                return state
            raise BadInput(
                f"checkpoint {path} holds a pickled {obj.dotted_name} object and no state dict",
                hint=_SAVE_HINT,
            )
        if not isinstance(obj, dict):
            break
        # A nested state dict wins over tensors beside it (ProxylessNAS saves best_acc as a 0-d tensor).
        nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), dict | Placeholder)), None)
        if nested is None and any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if nested is None:
            break
        obj = nested
    raise BadInput(
        "no state dict found in the checkpoint",
        hint=f"expected a dict of tensors, possibly under one of {', '.join(NESTED_KEYS)}",
    )


def _module_tensors(module: Placeholder, path: Path, prefix: str = "", depth: int = 0) -> dict:
    """The tensors a pickled `nn.Module`'s default `state_dict()` holds, in its order: its parameters and
    persistent buffers, then each child's under `name.`; empty when the placeholder is no module."""
    state = module.state
    if not isinstance(state, dict) or not all(
        isinstance(state.get(k), dict) for k in ("_parameters", "_buffers", "_modules")
    ):
        return {}
    if depth > MAX_MODULE_DEPTH:
        raise BadInput(f"checkpoint {path} nests modules more than {MAX_MODULE_DEPTH} deep", hint=_SAVE_HINT)
    skipped = state.get("_non_persistent_buffers_set")
    skipped = skipped if isinstance(skipped, set) else set()
    buffers = {k: v for k, v in state["_buffers"].items() if k not in skipped}
    tensors = {
        f"{prefix}{name}": value.detach()
        for name, value in [*state["_parameters"].items(), *buffers.items()]
        if isinstance(value, torch.Tensor)
    }
    for name, child in state["_modules"].items():
        if isinstance(child, Placeholder):
            tensors.update(_module_tensors(child, path, f"{prefix}{name}.", depth + 1))
    return tensors


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
    """The tensors of a checkpoint file, unwrapped and with wrapper prefixes removed, plus notes:
    `stripped_prefixes`, `dropped_non_tensors` (keys beside the tensors) and `replaced_objects` (the
    sorted dotted names of the pickled globals placeholders stood in for; empty for a plain file)."""
    path = Path(path)
    loaded, replaced = _load_object(path)
    obj = _unwrap(loaded, path)
    if replaced and isinstance(loaded, dict):  # what the placeholders stood for, with -v
        for key, value in list(loaded.items())[:20]:
            if value is not obj:
                debug(f"checkpoint entry {key}: {short_repr(value)}")
    dropped = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for key, tensor in state.items():
        if tensor.layout is not torch.strided or tensor.is_complex() or tensor.is_quantized or tensor.is_meta:
            kind = "complex" if tensor.is_complex() else str(tensor.layout).replace("torch.", "")
            raise BadInput(
                f"{path}: tensor {key!r} is not a plain real tensor ({kind}, {tensor.dtype})",
                hint="save dense real-valued weights: torch.save(model.state_dict(), PATH)",
            )
    state, stripped = strip_prefixes(state)
    return state, {
        "stripped_prefixes": stripped,
        "dropped_non_tensors": dropped,
        "replaced_objects": replaced,
    }


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
    try:
        model.load_state_dict(full, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()[:120]
        raise BadInput(f"checkpoint does not fit {arch_name}: {reason}") from None
    return problems
