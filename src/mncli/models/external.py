"""Architectures from outside the zoo, named by a reference with a colon in it.

* `path/to/file.py:builder` and `package.module:builder`: the user's own code (a file is recorded by
  its absolute path, so later stages find it from any folder). `builder` is a function
  (or an nn.Module class) whose keyword arguments come from `--arch-opt`; it receives num_classes,
  in_channels and input_size only if it names them. The file is imported under a name derived from its
  path; its folder is put on sys.path so that it can import its neighbours.
* `torchvision:NAME`: every torchvision classification builder (`torchvision.models.list_models`),
  built with `weights=None`; `timm:NAME`: every timm model, when timm is installed, built with
  `pretrained=False`. No weights are ever downloaded; they come in through `mncli import`.

Each becomes a registry `Family`, so every stage builds, checks and records it as it does the zoo's.
The model's `arch["source"]` records where the code came from (the file and its sha256, or the
package's version); `check_source` warns when the code has changed since. A manifest can name such a
reference, and rebuilding the model runs the named code: so a reference to the standard library, to
torch itself or to anything that is not a Python function or class is refused.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mncli.artifact.hashing import file_sha256
from mncli.errors import BadInput
from mncli.log import progress, warn
from mncli.text import first_line

COMMON = ("num_classes", "in_channels", "input_size")
PACKAGES = ("torchvision", "timm")
# Top-level packages a reference may not name: their functions do anything but build a model
# (torch.hub.load fetches and runs code), and their models have their own prefixes.
REFUSED_PACKAGES = frozenset({"torch", "torchvision", "timm", "pip", "setuptools", "mncli"})
_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_reference(name: object) -> bool:
    return isinstance(name, str) and ":" in name


def family_for(name: str):
    """The registry Family a reference names (BadInput when it names nothing buildable)."""
    prefix, _, target = name.partition(":")
    if prefix in PACKAGES:
        if not target:
            raise BadInput(f"{name!r} names no model", hint=f"e.g. --arch {prefix}:resnet18")
        return _torchvision_family(name, target) if prefix == "torchvision" else _timm_family(name, target)
    where, _, attr = name.rpartition(":")
    if not where or not attr.isidentifier():
        raise BadInput(
            f"bad architecture reference {name!r}",
            hint="give path/to/file.py:builder or package.module:builder",
        )
    if where.endswith(".py") or "/" in where or "\\" in where:
        target_obj, source = _from_file(name, Path(where), attr)
        name = f"{source['file']}:{attr}"  # the same file from whatever folder a later stage runs in
    else:
        target_obj, source = _from_module(name, where, attr)
    return _code_family(name, target_obj, source)


# ------------------------------------------------------------------------------------ the user's code


_FILE_MODULES: dict[tuple[str, str], Any] = {}


def _from_file(name: str, path: Path, attr: str) -> tuple[Any, dict]:
    if not path.is_file():
        raise BadInput(
            f"architecture file {path} not found (architecture {name})",
            hint="give the path of the .py file that defines the builder",
        )
    path = path.resolve()
    digest = file_sha256(path)
    key = (str(path), digest)
    if key not in _FILE_MODULES:
        module_name = "mncli_arch_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise BadInput(f"cannot import {path}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))
        previous = sys.modules.get(module_name)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever the user's file raises on import
            if previous is None:
                sys.modules.pop(module_name, None)
            else:
                sys.modules[module_name] = previous
            raise BadInput(f"cannot import {path}: {type(exc).__name__}: {first_line(exc)}") from None
        _FILE_MODULES[key] = module
    module = _FILE_MODULES[key]
    return _attribute(name, module, attr, str(path)), {"file": str(path), "sha256": digest}


def _from_module(name: str, module_name: str, attr: str) -> tuple[Any, dict]:
    if not _MODULE_PATH.fullmatch(module_name):
        raise BadInput(f"bad module name {module_name!r} in --arch {name}")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in REFUSED_PACKAGES:
        hint = f"use {top}:NAME" if top in PACKAGES else "name a builder in your own code"
        raise BadInput(f"refusing --arch {name}: {top} is not model code of yours", hint=hint)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BadInput(
            f"cannot import {module_name} (architecture {name}): {first_line(exc)}",
            hint="install the package, or give path/to/file.py:builder",
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever the module raises on import
        raise BadInput(f"cannot import {module_name}: {type(exc).__name__}: {first_line(exc)}") from None
    source: dict[str, Any] = {"module": module_name}
    file = getattr(module, "__file__", None)
    if file and Path(file).is_file():
        source.update(file=str(Path(file).resolve()), sha256=file_sha256(Path(file)))
    return _attribute(name, module, attr, module_name), source


def _attribute(name: str, module: Any, attr: str, where: str) -> Any:
    from torch import nn

    target = getattr(module, attr, None)
    if target is None:
        public = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attr, public, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"callables there: {', '.join(public[:8])}"
        raise BadInput(f"{where} has no {attr!r} (architecture {name})", hint=hint)
    is_module_class = inspect.isclass(target) and issubclass(target, nn.Module)
    if not (inspect.isfunction(target) or is_module_class):
        raise BadInput(
            f"--arch {name}: {attr} is not a Python function or nn.Module class",
            hint="name a function that returns the model, or the model's class",
        )
    return target


def _code_family(name: str, target: Any, source: dict):
    from mncli.models.registry import Family

    signature = inspect.signature(target)
    named = {
        k: p
        for k, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    defaults = {k: (None if p.default is inspect.Parameter.empty else p.default) for k, p in named.items()}
    for key in COMMON:
        defaults.setdefault(key, None)
    required = [k for k, p in named.items() if p.default is inspect.Parameter.empty]

    def build(**args: Any):
        missing = [k for k in required if args.get(k) is None]
        if missing:
            raise BadInput(
                f"{name} needs {', '.join(missing)}",
                hint=" ".join(f"--arch-opt {k}=..." for k in missing),
            )
        passed = {k: v for k, v in args.items() if k in named or (takes_any and k not in COMMON)}
        return target(**passed)

    return Family(
        name=name,
        pattern=re.compile(re.escape(name)),
        builder=build,
        description=_doc(target) or f"{name} (your own code)",
        examples=[name],
        hints=_hints(target),
        defaults=defaults,
        open_args=takes_any,
        source=source,
        check_outputs=True,
    )


def _hints(target: Any) -> dict:
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: no conversion, values as given
        return {}


def _doc(target: Any) -> str:
    doc = inspect.getdoc(target) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


# ------------------------------------------------------------------------------ torchvision and timm

_NO_DOWNLOADS = ("weights", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def _refuse_downloads(name: str, args: dict) -> None:
    asked = [k for k in _NO_DOWNLOADS if k in args]
    if asked:
        raise BadInput(
            f"{name}: {asked[0]} is not an option here: mncli never downloads weights",
            hint=f"download them yourself, then: mncli import WEIGHTS.pth --arch {name} -o OUT",
        )


def _unknown_model(name: str, package: str, known: list[str]) -> BadInput:
    close = difflib.get_close_matches(name.partition(":")[2], known, n=3)
    hint = f"did you mean {', '.join(f'{package}:{c}' for c in close)}?" if close else None
    return BadInput(
        f"{package} has no classification model {name.partition(':')[2]!r}",
        hint=hint or f"see `mncli models --family {package}`",
    )


def torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision_family(name: str, model_name: str):
    import torchvision
    import torchvision.models as tvm

    if model_name not in torchvision_names():
        raise _unknown_model(name, "torchvision", torchvision_names())
    builder = tvm.get_model_builder(model_name)

    def build(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, **args: Any):
        _refuse_downloads(name, args)
        if in_channels != 3:
            raise BadInput(
                f"{name} takes 3-channel images, not {in_channels}",
                hint="use a dataset of colour images, or a model of the zoo (mncli models)",
            )
        with warnings.catch_warnings():  # "the default weight initialization will change": not ours to act on
            warnings.simplefilter("ignore", FutureWarning)
            return builder(weights=None, num_classes=num_classes, **args)

    return _package_family(name, "torchvision", torchvision.__version__, build, _torchvision_size(model_name))


def _torchvision_size(model_name: str) -> int:
    """The crop size torchvision's published weights were made for (224 for most), read from the
    weights enum's metadata: nothing is downloaded."""
    import torchvision.models as tvm

    try:
        weights = list(tvm.get_model_weights(model_name))
        size = weights[0].transforms().crop_size
        return int(size[0] if isinstance(size, list | tuple) else size)
    except Exception:  # noqa: BLE001 - a builder without published weights
        return 224


def _timm():
    try:
        import timm
    except ImportError:
        raise BadInput("timm is not installed", hint="pip install 'mncli[timm]'") from None
    return timm


_timm_names: list[str] = []


def timm_names() -> list[str]:
    if not _timm_names:
        _timm_names.extend(sorted(_timm().list_models()))
    return _timm_names


def _timm_family(name: str, model_name: str):
    timm = _timm()

    if model_name not in timm_names():
        raise _unknown_model(name, "timm", timm_names())

    def build(*, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, **args: Any):
        _refuse_downloads(name, args)
        return timm.create_model(
            model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **args
        )

    return _package_family(name, "timm", timm.__version__, build, _timm_size(timm, model_name))


def _package_family(name: str, package: str, version: str, build: Callable, input_size: int):
    """The Family of a package's ImageNet classifier: any keyword passes through to its builder."""
    from mncli.models.registry import Family

    return Family(
        name=name,
        pattern=re.compile(re.escape(name)),
        builder=build,
        description=f"{package}'s {name.partition(':')[2]}",
        examples=[name],
        default_dataset="imagenet",
        defaults={"num_classes": 1000, "in_channels": 3, "input_size": input_size},
        open_args=True,
        source={"package": package, "version": version},
        check_outputs=True,
    )


def _timm_size(timm: Any, model_name: str) -> int:
    try:
        size = timm.get_pretrained_cfg(model_name).input_size
        return int(size[-1])
    except Exception:  # noqa: BLE001 - a model without a pretrained config
        return 224


def package_models(package: str) -> list[dict]:
    """`mncli models --family torchvision|timm`: one row per model, as list_models gives them;
    torchvision's parameters counted on the meta device (None where the model cannot be built),
    timm's listed by name only (a thousand models are too many to build for a listing)."""
    names = torchvision_names() if package == "torchvision" else timm_names()
    rows = []
    with progress() as bar:
        task = bar.add_task(f"{package} models", total=len(names), status="")
        for model_name in names:
            rows.append(_package_row(package, model_name))
            bar.update(task, advance=1, status=model_name)
    return rows


def _package_row(package: str, model_name: str) -> dict:
    import torch

    from mncli.models.registry import create_model

    name = f"{package}:{model_name}"
    row = {"name": name, "family": package, "description": f"{package}'s {model_name}", "params": None}
    row.update(input_shape=None, num_classes=1000, default_dataset="imagenet")
    if package == "torchvision":
        try:
            with torch.device("meta"):
                model = create_model(name)
            size = model.arch["args"]["input_size"]
            row.update(params=sum(p.numel() for p in model.parameters()), input_shape=[3, size, size])
        except BadInput as exc:
            row["description"] = exc.message
    return row


# ------------------------------------------------------------------------------------------ rebuilds

_warned: set[tuple] = set()


def check_source(arch: dict, now: dict | None) -> None:
    """Warn (once per process) when the code an artifact's model was built from has changed since."""
    recorded, now = arch.get("source") or {}, now or {}
    for key, what in (("sha256", "file"), ("version", "package")):
        old, new = recorded.get(key), now.get(key)
        if old and new and old != new and (arch["name"], old, new) not in _warned:
            _warned.add((arch["name"], old, new))
            where = now.get("file") or now.get(what) or arch["name"]
            change = f"sha256 {old[:12]} -> {new[:12]}" if key == "sha256" else f"{old} -> {new}"
            warn(f"{where} has changed since the artifact was written ({change}); built as it is now")


def family_of_entry_point(name: str, builder: Callable) -> dict:
    """register_family's arguments for a builder an installed package names in `mncli.models`."""
    return {
        "name": name,
        "pattern": re.escape(name),
        "description": _doc(builder) or f"{name} (from an installed package)",
        "examples": [name],
    }
