"""The Python API: the README's example as written, and each function on small models in memory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mncli
from mncli.errors import BadInput
from mncli.models import create_model

ROOT = Path(__file__).resolve().parents[1]
SYN = "synthetic:classes=4,shape=1x8x8,train=384,test=128"


@pytest.fixture(scope="module")
def data():
    return mncli.load_data(SYN, val_size=64, batch_size=32)


def _model():
    torch.manual_seed(0)
    return create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=8)


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_example_runs_as_written(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _readme_example()], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("sparsity ") and float(lines[0].split()[1]) > 0.3
    assert (tmp_path / "small.safetensors").is_file()


def test_import_mncli_stays_free_of_torch():
    code = "import sys, mncli; assert callable(mncli.prune); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", "import mncli, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.strip() == "False"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


def test_score_takes_any_module():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    result = mncli.score(model, input_shape=(3, 16, 16))
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["score"] > 0
    with pytest.raises(BadInput, match="input_shape"):
        mncli.score(model)


def test_saved_model_scores_as_the_cli_does(tmp_path, data, run_cli):
    model = _model()
    mncli.train(model, data, epochs=1, lr=0.05, batch_size=32)
    mncli.prune(model, data, sparsity=0.5, epochs=0)
    path = tmp_path / "m.safetensors"
    mncli.save(model, path, data=data)
    run = run_cli("score", path, "--json")
    assert run.code == 0
    cli = run.json
    assert cli["score"] == pytest.approx(mncli.score(model)["score"], rel=1e-12)
    loaded = mncli.load(path)
    assert mncli.specs_of(loaded) == mncli.specs_of(model)
    assert mncli.evaluate(loaded, data)["top1"] == pytest.approx(mncli.evaluate(model, data)["top1"])


def test_prune_in_memory_reaches_the_target_and_keeps_zeros_through_training(data):
    model = _model()
    report = mncli.prune(model, data, sparsity=0.6, method="magnitude", epochs=1, lr=0.01, batch_size=32)
    assert report["achieved"] == pytest.approx(0.6, abs=0.01)
    masked = [n for n, s in mncli.specs_of(model).items() if s.get("mask")]
    zeros = {n: (dict(model.named_modules())[n].weight == 0).clone() for n in masked}
    mncli.train(model, data, epochs=1, lr=0.05, batch_size=32)
    for name in masked:
        weight = dict(model.named_modules())[name].weight
        assert bool((weight[zeros[name]] == 0).all()), name


def test_quantize_and_ternarize_in_memory(data):
    model = _model()
    mncli.ternarize(model, data, epochs=1, batch_size=32, layers=["conv*"])
    ternary = [n for n, s in mncli.specs_of(model).items() if s.get("weight", {}).get("format") == "ternary"]
    assert ternary
    for name in ternary:
        assert dict(model.named_modules())[name].weight.unique().numel() <= 3
    mncli.quantize(model, data, ptq=True, weight_bits=8, act_bits=8)
    assert any(s.get("act", {}).get("bits") == 8 for s in mncli.specs_of(model).values())


def test_unknown_option_names_the_option(data):
    with pytest.raises(TypeError, match="sparsityy"):
        mncli.prune(_model(), data, sparsityy=0.5)


def test_save_refuses_a_model_outside_the_zoo(tmp_path):
    with pytest.raises(BadInput, match="zoo"):
        mncli.save(nn.Linear(2, 2), tmp_path / "x.safetensors")
