"""Inputs other than artifacts and data: recipes, --arch-opt values, checkpoints (foreign ones for
`mncli import`, OUT.ckpt/ for --resume), and signals before training starts. Each bad one ends as
exit 2 (130/143 for a signal) with one line on stderr, nothing written, the input unchanged, and a
malicious pickle never run."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_artifact
from mncli.compress.recipe import load_recipe
from mncli.engine import Callback
from mncli.errors import BadInput

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
FAST = ("--epochs", "1", "-b", "32", "--val-size", "32", "--device", "cpu")
NET = {"num_classes": 4, "in_channels": 1, "input_size": 8}
ADVICE = "weights_only"  # torch's advice to load unsafely must never reach the user


class Payload:
    """Unpickled, runs `touch MARKER`: the marker's absence shows the file was never unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def one_error_line(result, code: int = 2) -> str:
    assert result.code == code, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert ADVICE not in result.err and "Traceback" not in result.err
    assert result.out == ""
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cnn(work) -> Path:
    return tiny_artifact(work / "in.safetensors", args={**NET, "width": 4})


# ---------------------------------------------------------------- recipes

BAD_RECIPES = {
    "not-utf8.yaml": b"\xff\xfe\x00layers: {}",
    "latin1.yaml": "layers: {conv1: {sparsity: 0.5}} # caf\xe9".encode("latin-1"),
    "binary.yaml": bytes(range(256)),
    "syntax.yaml": b"layers: [1, 2",
    "tab.yaml": b"\t- x",
    "syntax.json": b'{"layers": {"conv1": ',
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "deep.yaml": b"[" * 100_000 + b"]" * 100_000,
    "list.yaml": b"layers: [conv1, conv2]",
    "scalar.yaml": b"42",
    "empty.yaml": b"",
    "no-layers.yaml": b"layers: {}",
    "settings-list.yaml": b"layers: {conv1: [0.5]}",
    "settings-null.yaml": b"layers: {conv1: }",
    "unknown-key.yaml": b"layers: {conv1: {sparsity: 0.5, colour: red}}",
    "numeric-key.yaml": b"layers: {conv1: {1: 0.5}}",
    "top-level-typo.yaml": b"layers: {conv1: {sparsity: 0.5}}\nlayer: {}",
    "empty-pattern.yaml": b'layers: {"": {sparsity: 0.5}}',
    "null-pattern.yaml": b"layers: {null: {sparsity: 0.5}}",
    "negative.yaml": b"layers: {conv1: {sparsity: -0.5}}",
    "one.yaml": b"layers: {conv1: {sparsity: 1.0}}",
    "nan.yaml": b"layers: {conv1: {sparsity: .nan}}",
    "inf.yaml": b"layers: {conv1: {sparsity: .inf}}",
    "bool.yaml": b"layers: {conv1: {sparsity: false}, conv2: {sparsity: 0.5}}",
    "text-value.yaml": b"layers: {conv1: {sparsity: half}}",
    "list-value.yaml": b"layers: {conv1: {sparsity: [0.5]}}",
    "no-match.yaml": b"layers: {nothing*: {sparsity: 0.5}}",
}


@pytest.mark.parametrize("name", sorted(BAD_RECIPES))
def test_bad_recipe_is_one_line_before_any_work(run_cli, work, cnn, name, monkeypatch):
    recipe = work / name
    recipe.write_bytes(BAD_RECIPES[name])
    _no_data(monkeypatch)
    before = snapshot(work)
    result = run_cli("prune", cnn, "--recipe", recipe, "-d", SYN, *FAST, "-o", "out.safetensors")
    line = one_error_line(result)
    assert line.startswith("error: recipe")
    assert snapshot(work) == before


@pytest.mark.parametrize("name", ["not-utf8.yaml", "unknown-key.yaml", "nan.yaml", "deep.yaml"])
def test_bad_recipe_for_quantize(run_cli, work, cnn, name, monkeypatch):
    (work / name).write_bytes(BAD_RECIPES[name].replace(b"sparsity", b"weight_bits"))
    _no_data(monkeypatch)
    result = run_cli("quantize", cnn, "--recipe", name, "-d", SYN, *FAST, "-o", "out.safetensors")
    assert one_error_line(result).startswith("error: recipe")
    assert not (work / "out.safetensors").exists()


@pytest.mark.parametrize(
    "text, key",
    [
        ("layers: {fc: {weight_bits: 64}}", "weight_bits"),
        ("layers: {fc: {weight_bits: true}}", "weight_bits"),
        ("layers: {fc: {act_bits: -8}}", "act_bits"),
        ("layers: {fc: {per_channel: 1}}", "per_channel"),
        ("layers: {fc: {channel_ratio: 2}}", "channel_ratio"),
    ],
)
def test_recipe_values_of_the_wrong_kind(tmp_path, text, key):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=f"{key} of 'fc' must be"):
        load_recipe(path, {"weight_bits", "act_bits", "per_channel", "channel_ratio"})


def test_good_recipes_still_load(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("\ufefflayers:\n  0: {sparsity: 0.5}\n  'block.*': {sparsity: null}\n")
    assert load_recipe(path, {"sparsity"}) == {"0": {"sparsity": 0.5}, "block.*": {"sparsity": None}}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".yaml", ".json", ".yml"]))
def test_recipe_reader_raises_only_bad_input_on_any_bytes(tmp_path, raw, suffix):
    path = tmp_path / f"r{suffix}"
    path.write_bytes(raw)
    _only_bad_input_or_a_recipe(path)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=JSONISH | st.fixed_dictionaries({"layers": JSONISH}))
def test_recipe_reader_raises_only_bad_input_on_any_structure(tmp_path, data):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    _only_bad_input_or_a_recipe(path)


def _only_bad_input_or_a_recipe(path: Path) -> None:
    try:
        recipe = load_recipe(path, {"sparsity", "weight_bits", "per_channel"})
    except BadInput as exc:
        assert "\n" not in exc.message
        return
    assert recipe and all(isinstance(k, str) and k.strip() for k in recipe)
    for settings_ in recipe.values():
        assert set(settings_) <= {"sparsity", "weight_bits", "per_channel"}
        sparsity = settings_.get("sparsity")
        assert sparsity is None or (not isinstance(sparsity, bool) and 0 <= sparsity < 1)


# ---------------------------------------------------------------- --arch-opt


def _no_data(monkeypatch) -> None:
    """Reading data from here on fails the test: the refusal must come before."""
    import mncli.data

    def refuse(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(mncli.data, "load_data", refuse)


BAD_ARCH_OPTS = [
    "num_classes=-1",
    "num_classes=0",
    "num_classes=100000000000",
    "num_classes=1e400",
    "num_classes=" + "9" * 5000,
    "num_classes=abc",
    "num_classes=2.5",
    "num_classes=true",
    "num_classes=[1,2]",
    "num_classes=" + "[" * 50_000,
    "num_classes=",
    "width=-3",
    "width=0",
    "width=5000",
    "width=wide",
    "in_channels=-1",
    "input_size=0",
    "colour=red",
    "=4",
    "width",
]


@pytest.mark.parametrize("opt", BAD_ARCH_OPTS, ids=[o[:30] for o in BAD_ARCH_OPTS])
def test_bad_arch_opt_for_train_fails_before_data(run_cli, work, opt, monkeypatch):
    _no_data(monkeypatch)
    result = run_cli(
        "train", "--arch", "test-cnn", "--arch-opt", opt, "-d", SYN, *FAST, "-o", "o.safetensors"
    )
    line = one_error_line(result)
    assert len(line) < 300
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "arch, opt",
    [
        ("mbconv", "blocks="),
        ("mbconv", "blocks=[]"),
        ("mbconv", "blocks=[1]"),
        ("mbconv", "blocks=[[1]]"),
        ("mbconv", "blocks=" + ",".join(["ir_r1_k3_s1_e1_c16"] * 1001)),
        ("mbconv", "width_mult=0"),
        ("mbconv", "width_mult=nan"),
        ("mbconv", "width_mult=-1"),
        ("mbconv", "width_mult=900"),
        ("mbconv", "dropout=2"),
        ("mbconv", "act=nope"),
        ("resnet20", "depth=21"),
        ("efficientnet-b0", "variant=9"),
        ("lenet5", "act=sigmoid"),
    ],
)
def test_bad_arch_opt_for_score(run_cli, arch, opt):
    one_error_line(run_cli("score", "--arch", arch, "--arch-opt", opt, "-d", "cifar100"))


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.integers(), st.floats(), st.text(max_size=12), st.booleans(), st.none()))
def test_arch_args_build_a_model_or_raise_bad_input(value):
    from mncli.models import create_model

    with torch.device("meta"):
        try:
            model = create_model("test-cnn", num_classes=value, in_channels=1, input_size=8)
        except BadInput as exc:
            assert "\n" not in exc.message
            return
    assert 1 <= model.arch["args"]["num_classes"] <= 100_000


def test_bad_arch_opt_for_import(run_cli, work):
    torch.save({"w": torch.ones(2)}, work / "w.pt")
    result = run_cli(
        "import", "w.pt", "--arch", "test-cnn", "--arch-opt", "num_classes=-1", "-o", "o.safetensors"
    )
    assert "num_classes" in one_error_line(result)
    assert sorted(p.name for p in work.iterdir()) == ["w.pt"]


# ---------------------------------------------------------------- foreign checkpoints (mncli import)


def _foreign_checkpoints(folder: Path) -> dict[str, Path]:
    good = folder / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    raw = good.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "garbage": b"garbage\n",
        "empty": b"",
        "text": b"hello world",
        "zip-junk": b"PK\x03\x04" + bytes(200),
        "legacy-pickle-with-code": pickle.dumps({"w": Payload(folder / "pwned")}),
        "legacy-pickle-protocol-2": pickle.dumps({"w": Payload(folder / "pwned")}, protocol=2),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.pt"
        paths[name].write_bytes(data)
    paths["zip-pickle-with-code"] = folder / "zip-code.pt"
    torch.save({"w": Payload(folder / "pwned")}, paths["zip-pickle-with-code"])
    paths["not-a-dict"] = folder / "list.pt"
    torch.save([torch.ones(2)], paths["not-a-dict"])
    paths["complex"] = folder / "complex.pt"
    torch.save({"conv1.weight": torch.ones(2, dtype=torch.complex64)}, paths["complex"])
    paths["sparse"] = folder / "sparse.pt"
    torch.save({"conv1.weight": torch.ones(2).to_sparse()}, paths["sparse"])
    paths["bad-safetensors"] = folder / "bad.safetensors"
    paths["bad-safetensors"].write_bytes(b"\xff" * 8 + b"{}")
    paths["directory"] = folder / "dir.pt"
    paths["directory"].mkdir()
    paths["fifo"] = folder / "fifo.pt"
    os.mkfifo(paths["fifo"])
    paths["missing"] = folder / "missing.pt"
    good.unlink()
    return paths


def test_bad_import_checkpoints_are_one_line(run_cli, work):
    paths = _foreign_checkpoints(work)
    before = snapshot(work)
    for name, path in paths.items():
        result = run_cli("import", path, "--arch", "test-cnn", "-o", "o.safetensors")
        line = one_error_line(result)
        assert line.startswith("error:"), name
        assert snapshot(work) == before, name
    assert not (work / "pwned").exists()


def test_payload_is_live(tmp_path):
    """The control: unpickled unsafely, the payload does write its marker (so its absence above means
    it never ran)."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


# ---------------------------------------------------------------- checkpoints for --resume


def _checkpoint(folder: Path, width: int = 8, callbacks=()) -> Path:
    """A real checkpoint of test-cnn stopped by SIGINT after its first step, written by the engine;
    its recorded settings are dropped so a CLI run with other defaults may resume it."""
    from mncli.data import load_data
    from mncli.engine import TrainConfig, TrainingInterrupted, fit
    from mncli.models import create_model

    class Stop(Callback):
        def after_step(self, ctx):
            os.kill(os.getpid(), signal.SIGINT)

    torch.manual_seed(0)
    model = create_model("test-cnn", **NET, width=width)
    data = load_data(SYN, batch_size=32, val_size=32)
    with pytest.raises(TrainingInterrupted):
        fit(
            model,
            data,
            TrainConfig(epochs=1, batch_size=32, device="cpu"),
            [*callbacks, Stop()],
            ckpt_dir=folder,
        )
    path = folder / "state.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = {}
    torch.save(state, path)
    return path


def _edit(path: Path, edit) -> None:
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


TRAIN = ("train", "--arch", "test-cnn", "-d", SYN, *FAST, "-o", "out.safetensors", "--resume", "-q")


def test_resume_from_a_real_checkpoint_still_works(run_cli, work):
    _checkpoint(work / "out.ckpt")
    result = run_cli(*TRAIN)
    assert result.code == 0, result.err
    assert (work / "out.safetensors").exists() and not (work / "out.ckpt").exists()


def _malicious(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "mncli-ckpt/1", "model": Payload(marker)}, path)


def _legacy_malicious(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"format": "mncli-ckpt/1", "model": Payload(marker)}, protocol=2))


BAD_STATES = {
    "truncated": lambda p, m: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p, m: p.write_bytes(b"garbage\n"),
    "empty": lambda p, m: p.write_bytes(b""),
    "malicious": lambda p, m: _malicious(p, m),
    "malicious-legacy": lambda p, m: _legacy_malicious(p, m),
    "not-a-dict": lambda p, m: torch.save([1, 2], p),
    "other-format": lambda p, m: _edit(p, lambda s: s.update(format="something else")),
    "no-model": lambda p, m: _edit(p, lambda s: s.pop("model")),
    "model-not-tensors": lambda p, m: _edit(p, lambda s: s.update(model={"conv1.weight": 3})),
    "epoch-text": lambda p, m: _edit(p, lambda s: s.update(epoch="three")),
    "negative-batch": lambda p, m: _edit(p, lambda s: s.update(batch=-1)),
    "no-rng": lambda p, m: _edit(p, lambda s: s.update(rng={})),
    "partial-short": lambda p, m: _edit(p, lambda s: s.update(partial=[1.0])),
    "a-directory": lambda p, m: (p.unlink(), p.mkdir()),
}


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_bad_resume_checkpoint_is_one_line_before_any_work(run_cli, work, kind, monkeypatch):
    path = _checkpoint(work / "out.ckpt")
    BAD_STATES[kind](path, work / "pwned")
    _no_data(monkeypatch)
    before = snapshot(work)
    line = one_error_line(run_cli(*TRAIN))
    assert "out.ckpt" in line
    assert snapshot(work) == before
    assert not (work / "pwned").exists()


class AGPPruning(Callback):
    """A callback of another stage, with state of its own."""

    def state_dict(self) -> dict:
        return {"step": 3}


LATE_STATES = {  # found only once the model and the run exist: still one line
    "another-architecture": lambda folder: _checkpoint(folder, width=4),
    "epoch-beyond-the-run": lambda folder: _edit(_checkpoint(folder), lambda s: s.update(epoch=9)),
    "bad-optimiser-state": lambda folder: _edit(
        _checkpoint(folder), lambda s: s.update(optimizer={"state": {}, "param_groups": [{"params": [0]}]})
    ),
    "another-stage": lambda folder: _checkpoint(folder, callbacks=[AGPPruning()]),
    "rng-state-wrong": lambda folder: _edit(
        _checkpoint(folder), lambda s: s.update(rng={"cpu": torch.zeros(3, dtype=torch.uint8)})
    ),
}


@pytest.mark.parametrize("kind", sorted(LATE_STATES))
def test_resume_checkpoint_of_another_run_is_one_line(run_cli, work, kind):
    LATE_STATES[kind](work / "out.ckpt")
    before = snapshot(work)
    line = one_error_line(run_cli(*TRAIN))
    assert "checkpoint" in line and "out.ckpt" in line
    assert snapshot(work) == before


def test_train_checkpoint_at_a_compression_stage_resume(run_cli, work, cnn):
    _checkpoint(work / "out.ckpt" / "agp", width=4)  # where prune's AGP run keeps its checkpoint
    before = snapshot(work)
    result = run_cli("prune", cnn, "-s", "0.5", "-d", SYN, *FAST, "-o", "out.safetensors", "--resume", "-q")
    assert "checkpoint" in one_error_line(result)
    assert snapshot(work) == before


@pytest.mark.parametrize(
    "where", ["out.ckpt/state.pt", "out.ckpt/finetune/state.pt", "out.ckpt/agp/state.pt"]
)
@pytest.mark.parametrize("make", [_malicious, _legacy_malicious], ids=["zip", "legacy"])
def test_malicious_checkpoint_at_prune_resume(run_cli, work, cnn, where, make, monkeypatch):
    make(work / where, work / "pwned")
    _no_data(monkeypatch)
    before = snapshot(work)
    result = run_cli("prune", cnn, "-s", "0.5", "-d", SYN, *FAST, "-o", "out.safetensors", "--resume")
    assert where in one_error_line(result)
    assert snapshot(work) == before
    assert not (work / "pwned").exists()


@pytest.mark.parametrize("make", [_malicious, _legacy_malicious], ids=["zip", "legacy"])
def test_malicious_checkpoint_at_train_resume(run_cli, work, make):
    make(work / "out.ckpt" / "state.pt", work / "pwned")
    before = snapshot(work)
    line = one_error_line(run_cli(*TRAIN[:-1]))  # without -q: still one line
    assert "out.ckpt/state.pt" in line
    assert snapshot(work) == before
    assert not (work / "pwned").exists()


def test_engine_load_checkpoint_refuses_a_malicious_file(tmp_path):
    from mncli.engine.checkpoint import check_checkpoints, load_checkpoint

    _malicious(tmp_path / "run" / "state.pt", tmp_path / "pwned")
    for load in (load_checkpoint, check_checkpoints):
        with pytest.raises(BadInput) as info:
            load(tmp_path / "run")
        assert ADVICE not in info.value.message and "\n" not in info.value.message
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- signals before training starts

CHILD = """
import sys, time
from pathlib import Path
import mncli.data

real = mncli.data.load_data

def slow(*args, **kwargs):  # the data takes long to load: the signal arrives meanwhile
    Path(sys.argv[1]).touch()
    time.sleep(60)
    return real(*args, **kwargs)

mncli.data.load_data = slow
from mncli.cli.app import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_data_loads_says_interrupted_and_leaves_nothing(tmp_path, signum, code):
    work = tmp_path / "work"
    work.mkdir()
    ready = tmp_path / "ready"
    argv = ["train", "--arch", "test-cnn", "-d", SYN, *FAST, "-o", "out.safetensors"]
    env = {**os.environ, "MNCLI_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ready), *argv],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never started loading data"
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert signal.Signals(signum).name in lines[0]
    assert out == ""
    assert list(work.iterdir()) == []
