"""Checkpoints that pickle more than tensors (Distiller's, a whole pickled model): `read_state_dict`
reads them through the restricted loader, with inert placeholders for every class, function and enum
they name, and never imports or runs any of them.

The checkpoints are written by a subprocess that has a fake `distiller` package (and a hostile
`evil_h1`) on its path; the loading side does not, except where a check needs the packages importable
to show that nothing imported them: those packages leave a marker file when imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mncli.artifact import load_artifact
from mncli.errors import BadInput
from mncli.models import create_model
from mncli.models.checkpoint import read_state_dict
from mncli.models.unpickle import Placeholder, load_restricted

FORMATS = ("zip", "legacy")
DISTILLER_NAMES = [
    "distiller.quantization.range_linear.LinearQuantMode",
    "distiller.quantization.range_linear.PostTrainLinearQuantizer",
    "distiller.thinning.ThinningRecipe",
    "torch.optim.sgd.SGD",
]
FAKE_PACKAGES = ("distiller", "evil_h1")
MODE_REPR = "<placeholder distiller.quantization.range_linear.LinearQuantMode(1)>"

# Imported, a package of these writes its name into the folder $H1_IMPORTED (when that is set).
_IMPORT_MARKER = """
import os, pathlib
if os.environ.get("H1_IMPORTED"):
    pathlib.Path(os.environ["H1_IMPORTED"], __name__).touch()
"""
PACKAGES = {
    "distiller/__init__.py": _IMPORT_MARKER,
    "distiller/quantization/__init__.py": _IMPORT_MARKER,
    "distiller/quantization/range_linear.py": """
        import enum

        class LinearQuantMode(enum.Enum):
            SYMMETRIC = 1
            ASYMMETRIC_UNSIGNED = 2

        class PostTrainLinearQuantizer:
            pass
        """,
    "distiller/thinning.py": """
        import collections

        ThinningRecipe = collections.namedtuple("ThinningRecipe", ["modules", "parameters"])
        """,
    "evil_h1/__init__.py": _IMPORT_MARKER
    + """
def touch(path):
    pathlib.Path(path).touch()
""",
}

# Run with the fake packages on its path: writes every checkpoint below into the folder argv[1]; the
# payloads' marker is argv[2].
SAVE = """
import os, sys
from pathlib import Path

import torch

import evil_h1
from distiller.quantization.range_linear import LinearQuantMode, PostTrainLinearQuantizer
from distiller.thinning import ThinningRecipe
from mncli.models import create_model, input_shape

out, marker = Path(sys.argv[1]), sys.argv[2]


class Open:  # unpickled, creates the marker file
    def __reduce__(self):
        return (open, (marker, "w"))


class System:  # unpickled, runs a shell command that creates it
    def __reduce__(self):
        return (os.system, (f"touch {marker}",))


class Eval:  # unpickled, evaluates Python that creates it
    def __reduce__(self):
        return (eval, (f"open({marker!r}, 'w')",))


class Imported:  # unpickled, imports evil_h1 and calls it to create it
    def __reduce__(self):
        return (evil_h1.touch, (marker,))


torch.manual_seed(0)
model = create_model("lenet5")
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model(torch.randn(2, *input_shape(model.arch))).sum().backward()
optimizer.step()  # momentum buffers in the optimiser's state


def distiller_checkpoint(**changes):
    checkpoint = {
        "epoch": 7,
        "arch": "lenet5",
        "dataset": "mnist",
        "state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "optimizer_type": type(optimizer),
        "extras": {"current_top1": 98.5, "best_top1": 98.75, "best_epoch": 6},
        "quantizer_metadata": {
            "type": PostTrainLinearQuantizer,
            "params": {"bits_activations": 8, "mode": LinearQuantMode.SYMMETRIC},
        },
        "thinning_recipes": [
            ThinningRecipe({"conv2": {"out_channels": 16}}, {"conv2.weight": [(0, torch.arange(16))]})
        ],
        "compression_sched": {"masks_dict": {"conv2.weight": torch.ones_like(model.conv2.weight)}},
    }
    checkpoint.update(changes)
    return checkpoint


def save(obj, name):
    torch.save(obj, out / f"{name}-zip.pt")
    torch.save(obj, out / f"{name}-legacy.pt", _use_new_zipfile_serialization=False)


torch.save(model.state_dict(), out / "reference.pt")
torch.save(optimizer.state_dict(), out / "optimizer.pt")
save(distiller_checkpoint(), "distiller")
save(distiller_checkpoint(extras={"best_top1": Open()}), "open")
save(distiller_checkpoint(extras={"best_top1": System()}), "system")
save(distiller_checkpoint(extras={"best_top1": Eval()}), "eval")
save(distiller_checkpoint(extras={"best_top1": Imported()}), "imported")
save(distiller_checkpoint(state_dict=Open()), "slot")
save(model, "whole")
"""

# Run on the hostile files with the fake packages importable: what read_state_dict made of each, which
# fake modules are loaded and which import markers exist; then the control, an unsafe load.
LOAD = """
import json, os, sys
from pathlib import Path

import torch

from mncli.artifact import load_artifact
from mncli.errors import BadInput
from mncli.models.checkpoint import read_state_dict

folder, marker, imported = Path(sys.argv[1]), Path(sys.argv[2]), Path(os.environ["H1_IMPORTED"])
report = {"results": {}}
for name in sys.argv[3:]:
    try:
        report["results"][name] = ["read", read_state_dict(folder / name)[1]["replaced_objects"]]
    except BadInput as exc:
        report["results"][name] = ["refused", exc.message]
report["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("distiller", "evil_h1"))
report["import_markers"] = sorted(p.name for p in imported.iterdir())
report["marker"] = marker.exists()
torch.load(folder / "imported-zip.pt", weights_only=False)  # the control: these payloads are live
report["control_marker"] = marker.exists()
report["control_import_markers"] = sorted(p.name for p in imported.iterdir())
print(json.dumps(report))
"""


def _python(script: str, *args, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _with_path(folder: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """The saving subprocess's files by name, plus the fake packages' folder and the payloads' marker."""
    root = tmp_path_factory.mktemp("restricted")
    packages = root / "packages"
    for name, text in PACKAGES.items():
        (packages / name).parent.mkdir(parents=True, exist_ok=True)
        (packages / name).write_text(textwrap.dedent(text))
    files = root / "files"
    files.mkdir()
    marker = root / "marker"
    _python(SAVE, files, marker, cwd=root, env=_with_path(packages))
    assert not marker.exists()
    return {**{p.name: p for p in files.iterdir()}, "files": files, "packages": packages, "marker": marker}


def _assert_same_state(state: dict, reference: dict) -> None:
    assert list(state) == list(reference)
    for key, tensor in reference.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key


@pytest.mark.parametrize("fmt", FORMATS)
def test_distiller_checkpoint_reads_with_placeholders(saved, fmt):
    state, notes = read_state_dict(saved[f"distiller-{fmt}.pt"])
    _assert_same_state(state, torch.load(saved["reference.pt"], weights_only=True))
    assert notes == {"stripped_prefixes": [], "dropped_non_tensors": [], "replaced_objects": DISTILLER_NAMES}
    assert not any(m.split(".")[0] in FAKE_PACKAGES for m in sys.modules)


@pytest.mark.parametrize("fmt", FORMATS)
def test_placeholders_record_what_the_pickle_gave_them(saved, fmt):
    checkpoint, names = load_restricted(saved[f"distiller-{fmt}.pt"])
    assert names == DISTILLER_NAMES
    mode = checkpoint["quantizer_metadata"]["params"]["mode"]
    assert isinstance(mode, Placeholder) and mode.args == (1,)
    assert repr(mode) == MODE_REPR
    quantizer, sgd = checkpoint["quantizer_metadata"]["type"], checkpoint["optimizer_type"]
    assert repr(sgd) == "<placeholder class torch.optim.sgd.SGD>" and sgd is not torch.optim.SGD
    assert (sgd.__module__, sgd.__qualname__) == ("torch.optim.sgd", "SGD")
    assert (
        repr(quantizer) == "<placeholder class distiller.quantization.range_linear.PostTrainLinearQuantizer>"
    )
    (recipe,) = checkpoint["thinning_recipes"]
    assert recipe.dotted_name == "distiller.thinning.ThinningRecipe" and len(repr(recipe)) < 200
    modules, parameters = recipe.args
    assert modules == {"conv2": {"out_channels": 16}}
    assert torch.equal(parameters["conv2.weight"][0][1], torch.arange(16))
    optimizer = torch.load(saved["optimizer.pt"], weights_only=True)
    assert checkpoint["optimizer_state_dict"]["param_groups"] == optimizer["param_groups"]
    for index, buffers in optimizer["state"].items():
        saved_buffer = checkpoint["optimizer_state_dict"]["state"][index]["momentum_buffer"]
        assert torch.equal(saved_buffer, buffers["momentum_buffer"])
    assert checkpoint["extras"] == {"current_top1": 98.5, "best_top1": 98.75, "best_epoch": 6}


def test_hostile_twins_neither_import_nor_run_anything(saved, tmp_path):
    """Each payload would create the marker when unpickled (the control at the end shows it does);
    the fake packages are importable here and would leave a marker of their own if imported."""
    imported = tmp_path / "imported"
    imported.mkdir()
    names = [f"{kind}-{fmt}.pt" for kind in ("open", "eval", "system", "imported", "slot") for fmt in FORMATS]
    env = {**_with_path(saved["packages"]), "H1_IMPORTED": str(imported)}
    report = json.loads(_python(LOAD, saved["files"], saved["marker"], *names, cwd=tmp_path, env=env))
    results = report["results"]
    for fmt in FORMATS:
        assert results[f"open-{fmt}.pt"] == ["read", sorted([*DISTILLER_NAMES, "io.open"])]
        assert results[f"eval-{fmt}.pt"] == ["read", sorted([*DISTILLER_NAMES, "builtins.eval"])]
        assert results[f"imported-{fmt}.pt"] == ["read", sorted([*DISTILLER_NAMES, "evil_h1.touch"])]
        kind, message = results[f"system-{fmt}.pt"]
        assert kind == "refused" and "posix.system" in message and "not loaded, for safety" in message
        kind, message = results[f"slot-{fmt}.pt"]
        assert kind == "refused" and "holds a pickled io.open object and no state dict" in message
    assert report["modules"] == [] and report["import_markers"] == [] and report["marker"] is False
    assert report["control_marker"] is True and report["control_import_markers"] == [
        "distiller",
        "distiller.quantization",
        "evil_h1",
    ]
    saved["marker"].unlink()  # the control's


def test_whole_pickled_model_gives_its_state_dict(saved):
    """Optional extraction: the tensors of a pickled nn.Module from its placeholders' recorded state;
    the legacy format pickles each module class with its source, which torch refuses outright."""
    state, notes = read_state_dict(saved["whole-zip.pt"])
    _assert_same_state(state, torch.load(saved["reference.pt"], weights_only=True))
    lenet = {f"{type(m).__module__}.{type(m).__qualname__}" for m in create_model("lenet5").modules()}
    assert notes["replaced_objects"] == sorted(lenet)
    with pytest.raises(BadInput, match="whole model in the legacy format"):
        read_state_dict(saved["whole-legacy.pt"])


def test_cli_imports_a_distiller_checkpoint(saved, tmp_path):
    imported = tmp_path / "imported"
    imported.mkdir()
    env = {**_with_path(saved["packages"]), "H1_IMPORTED": str(imported)}
    reference = torch.load(saved["reference.pt"], weights_only=True)
    for fmt, verbose in (("legacy", []), ("zip", ["-v"])):
        out = tmp_path / f"{fmt}.safetensors"
        argv = [*verbose, "import", saved[f"distiller-{fmt}.pt"], "--arch", "lenet5", "-o", out]
        done = subprocess.run(
            [sys.executable, "-m", "mncli", *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**os.environ, **env},
        )
        assert done.returncode == 0, done.stderr
        if verbose:
            assert all(name in done.stderr for name in DISTILLER_NAMES), done.stderr
        assert (MODE_REPR in done.stderr) == bool(verbose), done.stderr  # the entries beside the weights
        tensors, manifest = load_artifact(out)
        _assert_same_state({k: tensors[k] for k in reference}, reference)
        assert manifest["params"]["replaced_objects"] == DISTILLER_NAMES
    assert list(imported.iterdir()) == []


# ---------------------------------------------------------------- property: plain structures round-trip

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


def _tensor(seed: int, dtype: torch.dtype, shape: list[int], transpose: bool) -> torch.Tensor:
    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 50
    values = values > 0 if dtype is torch.bool else values.to(dtype)
    return values.t() if transpose and values.dim() == 2 else values


_leaves = st.one_of(
    st.builds(
        _tensor,
        st.integers(0, 2**16),
        st.sampled_from(DTYPES),
        st.lists(st.integers(0, 3), max_size=3),
        st.booleans(),
    ),
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=6),
    st.sampled_from(DTYPES),
    st.builds(torch.Size, st.lists(st.integers(0, 5), max_size=3)),
)
_keys = st.one_of(st.text(max_size=6), st.integers(-5, 5))
_structures = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(_keys, children, max_size=3),
        st.dictionaries(_keys, children, max_size=3).map(OrderedDict),
        st.sets(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    ),
    max_leaves=12,
)


def _same(a, b) -> bool:
    """Equal in type and value, exactly: tensors in dtype, shape, strides and every element; floats
    to the bit (so -0.0 is not 0.0); containers in order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, complex):
        return a.real.hex() == b.real.hex() and a.imag.hex() == b.imag.hex()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=30, deadline=None)
@given(_structures)
def test_plain_structures_round_trip_exactly(structure):
    with tempfile.TemporaryDirectory() as folder:
        for fmt in FORMATS:
            path = Path(folder) / f"{fmt}.pt"
            torch.save(structure, path, _use_new_zipfile_serialization=fmt == "zip")
            loaded, names = load_restricted(path)
            assert names == [] and _same(loaded, structure), (fmt, loaded)


class _Hoard:
    """A pickle that asks a builtin for more memory or time than any checkpoint needs."""

    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("call", [(bytes, (10**12,)), (frozenset, (range(10**12),))])
def test_builtins_built_for_real_cannot_be_asked_for_a_hoard(tmp_path, call):
    hoard = {"state_dict": {"w": torch.ones(1)}, "x": _Hoard(call), "o": torch.optim.SGD}
    torch.save(hoard, tmp_path / "h.pt")
    with pytest.raises(BadInput, match="not loaded|not a PyTorch checkpoint"):
        load_restricted(tmp_path / "h.pt")


def test_plain_builtins_pickle_protocol_2_calls_are_data_not_placeholders(tmp_path):
    values = {"empty": b"", "frozen": frozenset({1, 2}), "range": range(3), "slice": slice(1, 2)}
    torch.save({**values, "o": torch.optim.SGD}, tmp_path / "b.pt")
    loaded, names = load_restricted(tmp_path / "b.pt")
    assert names == ["torch.optim.sgd.SGD"] and {k: loaded[k] for k in values} == values
