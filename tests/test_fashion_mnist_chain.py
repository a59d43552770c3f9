"""The Fashion-MNIST chain (`make fashion-mnist`: examples/fashion_mnist.yaml through reproduce/run.py):
the recipe names only real mncli commands and options, the smoke data is Fashion-MNIST's IDX format and
loads through mncli's reader, the smoke chain runs end to end at the seed it is given with the options
`--set` changes, prints and records each step's accuracy, score and wall time and whether the target is
met, and bench/fashion_mnist_chain.py collects runs into one result file and a picture."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mncli.errors import BadInput

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "fashion_mnist.yaml"


def _load(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


smoke_data = _load(ROOT / "reproduce" / "smoke_data.py", "smoke_data")  # run.py imports it by this name
runner = _load(ROOT / "reproduce" / "run.py", "reproduce_run")
collector = _load(ROOT / "bench" / "fashion_mnist_chain.py", "fashion_mnist_chain")


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "reproduce" / "run.py"), *map(str, args)], capture_output=True, text=True
    )


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_the_recipe_parses_with_the_commands_it_names_at_the_seed_given(tmp_path, smoke):
    import typer

    from mncli.cli.app import app

    commands = typer.main.get_command(app).commands
    recipe = runner.load_recipe(RECIPE)
    assert recipe.name == "fashion-mnist" and recipe.published is None
    assert recipe.target == {
        "source": recipe.target["source"], "label": "final", "accuracy": 92.5, "score": 0.0004, "minutes": 60,
    }  # fmt: skip
    overrides = runner.parse_overrides(["ternarize:--lambda-div=0.2", "quantize:--accumulator-bits=null"])
    plan = runner.Runner(recipe, tmp_path, smoke=smoke, seed=7, overrides=overrides)
    for step in plan.steps:
        argv = [*plan.settings(step), *plan.data_options(), "--resume"]
        context = commands[argv[0]].make_context(argv[0], argv[1:])
        assert context.params["seed"] == 7 and context.params["dataset"] == "fashion-mnist"
        if step.teacher:
            assert context.params["teacher"] == str(tmp_path / "train.safetensors")
        if step.id == "ternarize":
            assert context.params["lambda_div"] == "0.2"
        if step.id == "quantize":
            assert context.params["accumulator_bits"] == 32  # null dropped the option: its default
        if smoke:
            assert context.params["data_dir"] == str(tmp_path / "data")
            assert context.params["max_steps_per_epoch"] == 2
    assert [s.teacher for s in plan.steps] == [None, "train", "train"]
    for convention in recipe.scores:
        argv = plan.score_command(convention)[len(plan.mncli) :]
        commands["score"].make_context("score", argv[1:])


@pytest.mark.parametrize(
    ("pairs", "words"),
    [
        (["ternarize--epochs=2"], "is not STEP:OPTION=VALUE"),
        (["ternarize:epochs=2"], "is not STEP:OPTION=VALUE"),
        (["ternarize:-o=x"], "-o is set by the runner"),
    ],
    ids=["no-colon", "no-dash", "reserved"],
)
def test_a_wrong_set_is_one_bad_input(pairs, words):
    with pytest.raises(BadInput) as caught:
        runner.parse_overrides(pairs)
    assert words in caught.value.message


def test_a_set_of_a_step_the_recipe_lacks_is_refused_on_one_line(tmp_path):
    done = _run(RECIPE, "--dry-run", "--set", "prune:--sparsity=0.5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--set prune: recipe fashion-mnist has no such step" in done.stderr


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: r.update(published={"source": "x"}), "either published"),
        (lambda r: r.pop("target"), "either published"),
        (lambda r: r["target"].update(label="nowhere"), "target label"),
        (lambda r: r["target"].update(minutes="an hour"), "target minutes must be a number"),
        (lambda r: r["target"].update(speed=2), "target: unknown key 'speed'"),
    ],
    ids=["both", "neither", "label", "minutes", "unknown"],
)
def test_a_wrong_target_is_one_bad_input_naming_it(tmp_path, change, words):
    recipe = yaml.safe_load(RECIPE.read_text())
    change(recipe)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(BadInput) as caught:
        runner.load_recipe(path)
    assert words in caught.value.message


def test_the_target_is_met_only_when_every_part_of_it_is():
    target = {"source": "t", "label": "final", "accuracy": 92.5, "score": 0.0004, "minutes": 60}

    def summary(accuracy, score, seconds):
        return {
            "scores": [{"label": "final", "accuracy": accuracy, "score": score}],
            "chain_seconds": seconds,
        }

    assert runner.target_met(target, summary(92.5, 0.0004, 3600)) == {
        "accuracy": True,
        "score": True,
        "minutes": True,
    }
    assert runner.target_met(target, summary(92.49, 0.0003, 100)) == {
        "accuracy": False,
        "score": True,
        "minutes": True,
    }
    assert runner.target_met(target, summary(93.0, 0.00041, 3601))["score"] is False
    assert runner.target_met(target, summary(93.0, 0.0003, 3601))["minutes"] is False
    assert runner.target_met(target, summary(None, None, 1)) == {
        "accuracy": False,
        "score": False,
        "minutes": True,
    }
    assert runner.target_met({"source": "t", "label": "final", "accuracy": 90}, summary(91, 1.0, 10**6)) == {
        "accuracy": True
    }


def test_smoke_data_is_fashion_mnist_idx_and_loads_through_mncli(tmp_path):
    from mncli.data import load_data

    folder = smoke_data.write_smoke_fashion_mnist(tmp_path, train_per_class=6, test_per_class=3)
    assert folder == tmp_path / "fashion-mnist"
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as handle:
        raw = handle.read()
    assert raw[:4] == bytes([0, 0, 8, 3]) and np.frombuffer(raw[4:16], ">i4").tolist() == [30, 28, 28]
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read()[8:], np.uint8)
    data = load_data("fashion-mnist", data_dir=tmp_path, val_size=10)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 30)
    assert data.test.labels.tolist() == labels.tolist() and sorted(set(labels.tolist())) == list(range(10))
    stored = np.frombuffer(raw[16:], np.uint8).reshape(30, 28, 28)
    assert np.array_equal(data.test.images.numpy().reshape(30, 28, 28), stored)


# The tests on one smoke run share a worker under `pytest -n`, so the run is made once.
SMOKE_RUN = pytest.mark.xdist_group("fashion-mnist-smoke-run")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion-mnist") / "seed3"
    done = _run(RECIPE, "--smoke", "--dir", folder, "--seed", 3, "--set", "ternarize:--lambda-div=0.2")
    return folder, done


@SMOKE_RUN
def test_the_smoke_chain_runs_and_reports_each_step_and_the_target(smoke_run):
    folder, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["random_seed"] == 3 and summary["overrides"] == {"ternarize": {"--lambda-div": 0.2}}
    assert [row["label"] for row in summary["scores"]] == ["fp32", "ternary", "final"]
    for step, row in zip(summary["steps"], summary["scores"], strict=True):
        assert step["status"] == "ran" and "--seed 3" in step["command"]
        assert row["step_seconds"] == step["seconds"] > 0 and row["score"] > 0 and 0 <= row["accuracy"] <= 100
    assert "--lambda-div 0.2" in summary["steps"][1]["command"]
    assert summary["chain_seconds"] == pytest.approx(sum(s["seconds"] for s in summary["steps"]), abs=0.2)
    assert summary["run_seconds"] >= summary["chain_seconds"]
    assert set(summary["target_met"]) == {"accuracy", "score", "minutes"}
    assert summary["target_met"]["accuracy"] is False  # 2 steps a stage on random images
    assert "fashion-mnist (smoke), seed 3" in done.stdout and "step wall time" in done.stdout
    assert "target (final): test top-1 >= 92.50 %, score <= 0.0004, in <= 60 min: not met" in done.stdout


@SMOKE_RUN
def test_the_collector_keeps_earlier_runs_and_draws_every_step(smoke_run, tmp_path):
    pytest.importorskip("matplotlib")
    folder, done = smoke_run
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = runner.load_recipe(RECIPE)
    runs = []
    variant = {"ternarize": {"--lambda-div": 0.2}, "quantize": {"--calibration": None}}
    for seed, overrides in ((0, {}), (1, {}), (0, variant)):
        run = tmp_path / f"run{len(runs)}"
        run.mkdir()
        summary = json.loads((folder / "summary.json").read_text())
        summary.update(smoke=False, random_seed=seed, dir=str(run))
        plan = runner.Runner(recipe, run, seed=seed, overrides=overrides)
        for row, step in zip(summary["steps"], plan.steps, strict=True):  # as the full chain runs them
            row["command"] = shlex.join(["mncli", *plan.settings(step)])
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    out, picture = tmp_path / "chain.json", tmp_path / "front.png"
    assert collector.main([str(runs[0]), str(runs[2]), "--out", str(out), "--plot", str(picture)]) == 0
    assert collector.main([str(runs[1]), str(runs[0]), "--out", str(out), "--plot", str(picture)]) == 0
    result = json.loads(out.read_text())
    assert [(r["name"], r["seed"]) for r in result["runs"]] == [
        ("ternarize --lambda-div 0.2, quantize --calibration (none)", 0), ("recipe", 1), ("recipe", 0),
    ]  # fmt: skip
    assert result["runs"][0]["command"].endswith(
        "--set ternarize:--lambda-div=0.2 --set quantize:--calibration=null"
    )
    assert result["runs"][1]["command"].endswith(f"--dir {runs[1]} --seed 1")
    over = result["recipe_over_seeds"]
    assert over["seeds"] == [0, 1] and over["target_met"] == 0
    assert over["final_test_top1"]["sd"] == 0  # the same run, twice
    assert [s["label"] for s in result["runs"][0]["steps"]] == ["fp32", "ternary", "final"]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a recipe's run stays named by what it ran when the recipe changes (here: as if it had)
    for record in result["runs"]:
        if record["seed"] == 1:
            record["ran"]["quantize"] = record["ran"]["quantize"].replace("percentile", "minmax")
    out.write_text(json.dumps(result))
    assert collector.main([str(runs[0]), "--out", str(out), "--plot", str(picture)]) == 0
    result = json.loads(out.read_text())
    assert [(r["name"], r["seed"]) for r in result["runs"]] == [
        ("ternarize --lambda-div 0.2, quantize --calibration (none)", 0),
        ("quantize --calibration minmax", 1),
        ("recipe", 0),
    ]
    assert result["runs"][1]["command"].endswith("--seed 1 --set quantize:--calibration=minmax")
    assert result["recipe_over_seeds"]["seeds"] == [0]
    shutil.rmtree(runs[0])
    with pytest.raises(SystemExit, match="summary.json"):
        collector.main([str(runs[0]), "--out", str(out), "--plot", str(picture)])
