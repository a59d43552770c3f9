"""Read a PyTorch checkpoint that pickles more than tensors, never importing or running what it names.

torch's weights-only unpickler already refuses code: it looks a pickle's globals up by name in an
allowlist (it never imports them) and only calls, instantiates or sets the state of what that list
holds. `load_restricted` extends the list, for one load, with a *placeholder* for each name the file
asks for beyond it: a class made here on the spot whose `__module__` and `__qualname__` are the name
asked for, so the allowlist matches it by name while the real module is never imported. Calling,
instantiating or setting the state of a placeholder only records what the pickle gave it. Tensors,
plain containers, numbers, strings, `torch.Size` and dtypes load as usual; modules torch blocks
outright (os, sys, ...) stay refused.

The names are read from the pickles without running them, by torch's own scan: the public
`get_unsafe_globals_in_checkpoint` for the zip format, and for the legacy format
(`_use_new_zipfile_serialization=False`, the default before torch 1.6) the same scan over each of the
file's pickles, minus the same allowlist. The scan applies the Python 2 renames the unpickler applies
(pickle protocol 2 writes `__builtin__ getattr`, looked up as `builtins.getattr`), so the placeholders
carry the names the unpickler will look for.
"""

from __future__ import annotations

import pickle
import re
import reprlib
import warnings
from pathlib import Path

import torch
import torch._weights_only_unpickler as weights_only_unpickler  # read only: torch's scan and allowlist

from mncli.errors import BadInput
from mncli.text import clipped

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_PICKLES = 5  # magic number, protocol version, system info, the object, its storage keys
# What torch's unpickler says of an object it will not build (a call, a state, items of a dict subclass).
REFUSAL_WORDS = ("global", "reduce", "build", "newobj", "append", "setitem")
HINT = "save the weights alone: torch.save(model.state_dict(), PATH)"


class _ShortRepr(reprlib.Repr):
    """reprlib's elision, with a tensor as its dtype and shape and any dict as a dict (an OrderedDict's
    own repr would print every tensor in full)."""

    def repr1(self, x, level):
        if isinstance(x, torch.Tensor):
            return f"tensor({str(x.dtype).removeprefix('torch.')}{list(x.shape)})"
        if isinstance(x, Placeholder | PlaceholderType):
            return repr(x)
        if isinstance(x, dict):
            return self.repr_dict(x, level)
        return super().repr1(x, level)


_short = _ShortRepr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 40, 80
_short.maxtuple = _short.maxlist = _short.maxdict = _short.maxset = 4


def short_repr(obj: object, limit: int = 200) -> str:
    """A one-line repr of at most `limit` characters, long containers and strings elided."""
    return clipped(_short.repr(obj).replace("\n", " "), limit)


class PlaceholderType(type):
    """The type of a placeholder class, so that a class the file names shows as one."""

    dotted_name: str

    def __repr__(cls) -> str:
        return f"<placeholder class {cls.dotted_name}>"


class Placeholder(metaclass=PlaceholderType):
    """An object the file asked for, never built: `args` holds what the pickle called or instantiated
    it with, `state` what it then set (None when it set nothing)."""

    dotted_name = "placeholder"

    def __new__(cls, *args):
        self = super().__new__(cls)
        self.args = args
        self.state = None
        return self

    def __init__(self, *args):  # the pickle calling the class passes its arguments here too
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        args = ", ".join([short_repr(arg, 60) for arg in self.args[:4]] + ["..."] * (len(self.args) > 4))
        state = "" if self.state is None else f" state={short_repr(self.state, 60)}"
        return f"<placeholder {self.dotted_name}({args}){state}>"


def _bytes(*args):
    """`bytes` as pickle protocol 2 calls it for b"" (no arguments) or from a string and an encoding;
    not from a length, which would let a file ask for any amount of memory."""
    if args and not isinstance(args[0], str | bytes | bytearray):
        raise pickle.UnpicklingError(f"refused bytes({short_repr(args[0], 40)})")
    return bytes(*args)


def _frozenset(*args):
    """`frozenset` of items the pickle already holds (never of a range, which could be endless)."""
    if args and not isinstance(args[0], list | tuple | set | frozenset):
        raise pickle.UnpicklingError(f"refused frozenset({short_repr(args[0], 40)})")
    return frozenset(*args)


for _builtin, _name in ((_bytes, "bytes"), (_frozenset, "frozenset")):
    _builtin.__module__, _builtin.__qualname__, _builtin.__name__ = "builtins", _name, _name

# Plain data that pickle protocol 2 builds by calling a builtin, which torch's allowlist lacks: built
# for real (they run no code and take no more memory than the file gives them), not replaced.
PLAIN_BUILTINS = {"builtins.bytes": _bytes, "builtins.frozenset": _frozenset, "builtins.range": range,
                  "builtins.slice": slice}  # fmt: skip


def placeholder(name: str) -> PlaceholderType:
    """A placeholder class that torch's allowlist matches to the dotted `name` (`module.qualname`)."""
    module, _, qualname = name.rpartition(".")
    namespace = {"__module__": module, "__qualname__": qualname, "dotted_name": name}
    return PlaceholderType(qualname, (Placeholder,), namespace)


def unsafe_globals(path: Path) -> list[str]:
    """The names of the globals the file's pickles ask for beyond torch's weights-only allowlist,
    sorted, read without unpickling anything."""
    with open(path, "rb") as handle:
        if handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        handle.seek(0)
        found: set[str] = set()
        for _ in range(LEGACY_PICKLES):  # each scan stops at its pickle's STOP: the next one follows
            found |= weights_only_unpickler.get_globals_in_pkl(handle)
    allowed = set(weights_only_unpickler._get_allowed_globals()) | set(
        weights_only_unpickler._get_user_allowed_globals()
    )
    return sorted(found - allowed)


def load_restricted(path: Path | str) -> tuple[object, list[str]]:
    """The object a torch checkpoint (zip or legacy format) holds, with every class, function or other
    global beyond torch's allowlist replaced by an inert placeholder, and the sorted names replaced.

    Anything unreadable, or a pickle that needs what even placeholders cannot stand for (a blocked
    module, an opcode torch does not read), is one BadInput line."""
    path = Path(path)
    try:
        found = unsafe_globals(path)
        names = [n for n in found if n not in PLAIN_BUILTINS]
        allowed = [PLAIN_BUILTINS[n] for n in found if n in PLAIN_BUILTINS] + [placeholder(n) for n in names]
        with warnings.catch_warnings(), torch.serialization.safe_globals(allowed):
            warnings.simplefilter("ignore")  # "Detected pickle protocol ...": not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True), names
    except pickle.UnpicklingError as exc:
        raise _refusal(path, str(exc)) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise BadInput(f"cannot read checkpoint {path}: {exc.strerror}") from None
    except MemoryError:
        raise BadInput(f"checkpoint {path} is too large to load", hint=HINT) from None
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file, or placeholders torch cannot use
        raise BadInput(f"checkpoint {path} is not a readable PyTorch checkpoint ({_reason(exc)})") from None


def _refusal(path: Path, message: str) -> BadInput:
    """What torch's weights-only unpickler refused, even with the placeholders, as one line."""
    blocked = re.search(r"GLOBAL (\S+) whose module \S+ is blocked", message)
    if blocked:
        problem = f"asks for {blocked[1]}, which no checkpoint may use"
    elif "persistent_load" in message:  # the legacy format pickles a module's class with its source
        problem = "pickles nn.Module classes with their source code (a whole model in the legacy format)"
    elif any(word in message.lower() for word in REFUSAL_WORDS):
        problem = "holds pickled objects that cannot be built without running code"
    else:
        return BadInput(f"checkpoint {path} is not a PyTorch checkpoint (no readable pickle)", hint=HINT)
    return BadInput(f"checkpoint {path} {problem}; it was not loaded, for safety", hint=HINT)


def _reason(exc: BaseException) -> str:
    """torch's first line when it is short and says nothing about weights_only, else the exception's kind."""
    if isinstance(exc, EOFError | OSError):
        return "damaged or truncated"
    first = (str(exc).strip().splitlines() or [""])[0]
    return first[:100] if first and "weights_only" not in first else type(exc).__name__
