"""`mncli import` and `mncli inspect CHECKPOINT`: foreign PyTorch checkpoints in, as mncli artifacts.

A checkpoint is read without running anything it names (models/checkpoint.read_state_dict). Its keys
then say which published layout it is in (models/layouts: torchvision's or lukemelas' EfficientNet,
ProxylessNAS, EC2T, ...); the layout renames it onto one of our architectures and gives the
arguments that reproduce the source implementation's forward pass. A checkpoint in no known layout
is taken as it is and must fit `--arch` exactly. Either way every key and shape must match, or the
differences are listed and nothing is written.

The weights' structure is recorded where it is certain: a conv/linear weight holding only {-wn, 0,
+wp}, whatever float dtype the checkpoint stored, gets the ternary layer spec `ternarize` writes, so
later stages keep it ternary and `score` charges it so. Integer-grid weights are left float: without
the quantizer's scale they are no int spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mncli.artifact.hashing import file_sha256
from mncli.errors import BadInput
from mncli.log import debug, log, warn

AUTO, AS_IS = "auto", "none"
MAX_CONFIG_BYTES = 16 * 1024 * 1024


@dataclass
class ImportConfig:
    arch: str | None = None
    arch_opts: dict[str, Any] = field(default_factory=dict)
    layout: str = AUTO  # auto (from the keys), none (take the keys as they are), or a layout's name
    config: Path | None = None  # a side file the layout needs (ProxylessNAS' net.config)


def read_config(path: Path | None) -> dict | None:
    """The JSON side file, or None; BadInput for a missing, oversized or malformed one."""
    if path is None:
        return None
    if not path.is_file():
        raise BadInput(f"config {path} not found", hint="give the net.config the checkpoint was trained with")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BadInput(f"config {path} is larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a net config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadInput(f"config {path} is not JSON: {str(exc)[:120]}") from None
    if not isinstance(config, dict):
        raise BadInput(f"config {path} is not a JSON object")
    return config


def _fits_as_is(state: dict, config: ImportConfig) -> bool:
    """Whether the keys and shapes already are those of --arch (no renaming to do)."""
    from mncli.models import create_model
    from mncli.models.checkpoint import compare_state_dict
    from mncli.scoring import meta_device

    if not config.arch:
        return False
    with meta_device():
        model = create_model(config.arch, **config.arch_opts)
    return not any(compare_state_dict(model, state).values())


def choose_layout(state: dict, config: ImportConfig):
    """(layout, converted state) for --layout; for auto: as-is when the keys already fit --arch,
    else the one layout the keys match (with --arch, one that converts to that architecture's
    family), else as-is. (None, None) means as-is."""
    from mncli.models.layouts import detect_layouts, get_layout, layouts

    side_file = read_config(config.config)
    if config.layout == AS_IS:
        return None, None
    if config.layout != AUTO:
        layout = get_layout(config.layout)
        return layout, layout.convert(state, side_file)
    if _fits_as_is(state, config):
        return None, None
    matched = detect_layouts(state)
    if config.arch:
        found = (_converts_to_family(layout, state, side_file, config.arch) for layout in matched)
        candidates = [c for c in found if c is not None]
    else:
        candidates = [(layout, None) for layout in matched]
    if len(candidates) > 1:
        names = ", ".join(layout.name for layout, _ in candidates)
        raise BadInput(f"the checkpoint's keys match several layouts: {names}", hint="name one with --layout")
    if candidates:
        layout, converted = candidates[0]
        return layout, converted if converted is not None else layout.convert(state, side_file)
    debug(f"no known layout matches (known: {', '.join(sorted(layouts()))}): keys taken as they are")
    return None, None


def _converts_to_family(layout, state: dict, side_file: dict | None, arch: str):
    """(layout, converted) when the layout converts `state` to a model of `arch`'s family, else None."""
    from mncli.models.registry import find_family

    try:
        converted = layout.convert(state, side_file)
    except BadInput as exc:
        debug(f"layout {layout.name} does not apply: {exc.message}")
        return None
    if find_family(converted.arch)[0].name != find_family(arch)[0].name:
        return None
    return layout, converted


def _target(converted, config: ImportConfig) -> tuple[str, dict]:
    """The architecture to build: the layout's unless --arch names another; --arch-opt wins."""
    if converted is None:
        if not config.arch:
            from mncli.models.layouts import layouts

            raise BadInput(
                "the checkpoint's keys match no known layout, so --arch must name its architecture",
                hint=f"add --arch NAME (layouts known: {', '.join(sorted(layouts()))})",
            )
        return config.arch, dict(config.arch_opts)
    if config.arch and config.arch != converted.arch:
        warn(f"--arch {config.arch} differs from the layout's {converted.arch}; building {config.arch}")
        return config.arch, dict(config.arch_opts)
    return converted.arch, {**converted.args, **config.arch_opts}


def load_checkpoint(checkpoint: Path, config: ImportConfig):
    """(model with the checkpoint's weights, params to record): BadInput for anything that does not fit."""
    from mncli.models import create_model
    from mncli.models.checkpoint import compare_state_dict, fit_state_dict, read_state_dict

    state, notes = read_state_dict(checkpoint)
    if notes.get("stripped_prefixes"):
        log(f"stripped key prefixes: {', '.join(notes['stripped_prefixes'])}")
    if notes.get("dropped_non_tensors"):
        debug(f"ignored non-tensor entries: {', '.join(notes['dropped_non_tensors'][:10])}")
    if notes.get("replaced_objects"):
        log(f"not loaded (replaced by inert placeholders): {', '.join(notes['replaced_objects'][:10])}")
    layout, converted = choose_layout(state, config)
    if config.config is not None and layout is None:
        raise BadInput("--config is only read for a layout that needs one", hint="drop --config")
    arch, args = _target(converted, config)
    if converted is not None:
        state = converted.state
        log(f"layout: {layout.name} ({layout.description}) -> {arch}")
        for note in converted.notes:
            log(note)
    model = create_model(arch, **args)
    problems = compare_state_dict(model, state)
    for kind in ("missing", "unexpected"):  # the keys one by one with -v; the error sums them up
        for key in problems[kind][:20]:
            debug(f"{kind}: {key} {list(state[key].shape) if key in state else ''}".rstrip())
        if len(problems[kind]) > 20:
            debug(f"... and {len(problems[kind]) - 20} more {kind} keys")
    for item in problems["mismatched"][:20]:
        debug(f"shape mismatch: {item['key']} checkpoint {item['checkpoint']} model {item['model']}")
    fit_state_dict(model, state, arch)
    model.eval()
    params: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "layout": layout.name if layout is not None else AS_IS,
        **notes,
    }
    if config.config is not None:
        params["config"] = {"path": str(config.config), "sha256": file_sha256(config.config)}
    return model, params


def ternary_layer_specs(model) -> dict[str, dict]:
    """The ternary spec of every conv/linear layer whose weight holds only {-wn, 0, +wp} (two or three
    distinct values), as `ternarize` writes it, with method "import"."""
    from mncli.compress.recipe import compute_layers
    from mncli.compress.ternary.common import ternary_specs
    from mncli.scoring.weights import infer_format

    modules = dict(model.named_modules())
    stats = {}
    for name in compute_layers(model):
        weight = modules[name].weight.detach()
        if infer_format(weight).format != "ternary":
            continue
        nnz, numel = int((weight != 0).sum()), weight.numel()
        stats[name] = {
            "wp": max(float(weight.max()), 0.0),
            "wn": max(float(-weight.min()), 0.0),
            "nnz": nnz,
            "numel": numel,
            "sparsity": 1.0 - nnz / numel,
        }
    return ternary_specs({}, stats, "import", {})


def run(checkpoint: Path, out: Path, config: ImportConfig) -> dict[str, Any]:
    from mncli.artifact import check_output
    from mncli.bundle import Bundle, save_bundle

    check_output(out, checkpoint)
    model, params = load_checkpoint(checkpoint, config)
    specs = ternary_layer_specs(model)
    if specs:
        names = ", ".join(list(specs)[:6]) + (", ..." if len(specs) > 6 else "")
        log(f"{len(specs)} ternary layers recognised: {names}")
    bundle = Bundle(model=model, arch=model.arch, specs=specs)
    manifest = save_bundle(bundle, out, stage="import", params=params)
    return {
        "output": str(out),
        "arch": model.arch,
        "layout": params["layout"],
        "tensors": len(model.state_dict()),
        "params": sum(p.numel() for p in model.parameters()),
        "ternary_layers": len(specs),
        "checkpoint_sha256": params["checkpoint_sha256"],
        "replaced_objects": params.get("replaced_objects", []),
        "content_sha256": manifest.get("content_sha256"),
    }


def is_checkpoint(path: Path) -> bool:
    """Whether `path` is a foreign checkpoint rather than an mncli artifact: any file not named
    .safetensors, or a .safetensors file without an mncli manifest."""
    if path.suffix.lower() != ".safetensors":
        return True
    from safetensors import safe_open

    from mncli.artifact.io import KEY

    try:
        with safe_open(str(path), framework="numpy") as f:
            return KEY not in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: the artifact reader says what is wrong with it
        return False


def describe_checkpoint(path: Path, arch: str | None = None, arch_opts: dict | None = None) -> dict:
    """What `inspect CHECKPOINT` shows: every key with its shape and dtype, the layouts the keys
    match (and the architecture each converts to), and with `arch` how the keys fit that model."""
    from mncli.models.checkpoint import compare_state_dict, read_state_dict
    from mncli.models.layouts import detect_layouts

    state, notes = read_state_dict(path)
    matches = []
    for layout in detect_layouts(state):
        entry: dict[str, Any] = {"layout": layout.name, "description": layout.description}
        try:
            converted = layout.convert(state, None)
            entry.update(arch=converted.arch, args=converted.args)
        except BadInput as exc:
            entry["cannot_convert"] = exc.message
        matches.append(entry)
    info: dict[str, Any] = {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "checkpoint_sha256": file_sha256(path),
        "tensors": len(state),
        "values": sum(t.numel() for t in state.values()),
        "keys": [
            {"key": k, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for k, t in state.items()
        ],
        "layouts": matches,
        **notes,
    }
    if arch:
        from mncli.models import create_model
        from mncli.scoring import meta_device

        with meta_device():
            model = create_model(arch, **(arch_opts or {}))
        info["fit"] = {"arch": model.arch, **compare_state_dict(model, state)}
    return info
