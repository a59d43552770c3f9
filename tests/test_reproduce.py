"""The reproduction targets (reproduce/): each recipe names only real mncli commands and options, the
smoke data (CIFAR-100's pickles, an ImageFolder of JPEGs, efficientnet_pytorch checkpoints with a
`module.` prefix) loads through mncli's own readers, every smoke target runs end to end through the
runner and writes summary.json with a score per convention, the Distiller schedule file reads into the
seed's groups, a re-run skips the finished steps and runs again a step whose command or input changed,
a missing checkpoint is one line naming its variable, and a failing step stops the run naming the step
and its exit code."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mncli.errors import BadInput

REPRODUCE = Path(__file__).resolve().parents[1] / "reproduce"
RECIPES = ["ec2t-cifar100", "mit-cifar100", "rl1-cifar100"]
IMAGENET_RECIPES = ["distiller-imagenet", "ec2t-imagenet"]
# The px each score counts at, full and smoke: Distiller's 224 (its own count's input), EC2T's 256.
SCORE_SIZES = {"distiller-imagenet": (224, 64), "ec2t-imagenet": (256, 72)}


def _load(name: str, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, REPRODUCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


smoke_data = _load("smoke_data", "smoke_data")  # run.py imports it by this name
runner = _load("run", "reproduce_run")


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPRODUCE / "run.py"), *map(str, args)], capture_output=True, text=True
    )


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _scored_beside_the_published(summary: dict, recipe, done) -> dict[str, dict]:
    """Every convention scored, with the entry's published figures beside it; the rows by label."""
    rows = {row["label"]: row for row in summary["scores"]}
    assert list(rows) == [c.label for c in recipe.scores]
    for label, row in rows.items():
        assert row["score"] > 0 and row["params"] > 0 and row["ops"] > 0, row
        assert 0 <= row["accuracy"] <= 100
        assert row["published_score"] == recipe.published["scores"][label]
    assert summary["published"]["accuracy"] == recipe.published["accuracy"]
    assert summary["published"]["verified_score"] == recipe.published["verified_score"]
    assert "mncli beside the published entry" in done.stdout
    return rows


def _manifest_layers(path: Path) -> dict:
    from mncli.artifact.io import read_manifest

    return read_manifest(path)["compression"]["layers"]


# --- the recipes


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_each_recipe_parses_with_the_commands_it_names(tmp_path, name, smoke):
    """Every step and every score, full and smoke, parses as the mncli command it runs (options that
    exist, values of their types, choices among the command's), with the runner's own options added."""
    import typer

    from mncli.cli.app import app

    commands = typer.main.get_command(app).commands
    recipe = runner.load_recipe(REPRODUCE / f"{name}.yaml")
    assert recipe.name == name and recipe.dataset == "cifar100"
    plan = runner.Runner(recipe, tmp_path, smoke=smoke, download=not smoke)
    for step in plan.steps:
        argv = [*plan.settings(step), *plan.data_options(), "--resume"]
        command = commands[argv[0]]
        context = command.make_context(argv[0], argv[1:])
        assert context.params["out"] == str(tmp_path / f"{step.id}.safetensors")
        assert context.params["dataset"] == "cifar100" and context.params["resume"]
        if smoke:
            assert context.params["data_dir"] == str(tmp_path / "data") and context.params["val_size"] == 100
            assert context.params["max_steps_per_epoch"] == 2
        else:
            assert context.params["download"] and context.params["val_size"] is None
    assert [s.command for s in plan.steps] == [s.command for s in recipe.steps]  # smoke: same chain
    for convention in recipe.scores:
        argv = plan.score_command(convention)[len(plan.mncli) :]
        commands["score"].make_context("score", argv[1:])
    assert set(recipe.published["scores"]) <= {c.label for c in recipe.scores}


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = _run(REPRODUCE / "rl1-cifar100.yaml", "--dir", out, "--dry-run", "--smoke")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    assert [line.split()[3] for line in lines] == ["train", "prune", "quantize", "score", "score"]
    assert "QBNs[Layers-3]" in done.stdout and f"--recipe {out}/quantize.recipe.yaml" in done.stdout
    assert not out.exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: r["steps"][0].update(command="evaluate"), ["step 1", "'evaluate' is not a stage"]),
        (lambda r: r["steps"][1].update(input="fp16"), ["step 2", "'fp16' is not the id of an earlier"]),
        (lambda r: r["steps"][0]["args"].update({"-o": "x.safetensors"}), ["-o is set by the runner"]),
        (lambda r: r["scores"][0].update(step="nowhere"), ["step 'nowhere' is not a step"]),
        (lambda r: r["published"].pop("source"), ["published needs a source"]),
        (lambda r: r["smoke"]["steps"].update(nowhere={"--epochs": 1}), ["smoke steps"]),
    ],
    ids=["command", "input", "reserved", "score-step", "source", "smoke-step"],
)
def test_a_wrong_recipe_is_one_bad_input_naming_it(tmp_path, change, words):
    recipe = yaml.safe_load((REPRODUCE / "ec2t-cifar100.yaml").read_text())
    change(recipe)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(BadInput) as caught:
        runner.load_recipe(path)
    assert str(path) in caught.value.message
    for word in words:
        assert word in caught.value.message, caught.value.message
    done = _run(path, "--dry-run")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# --- the smoke data


def test_smoke_data_is_cifar100_in_its_own_format_and_loads_through_mncli(tmp_path):
    from mncli.data import load_data

    folder = smoke_data.write_smoke_cifar100(tmp_path, train_per_class=3, test_per_class=2)
    assert folder == tmp_path / "cifar-100-python"
    raw = {name: (folder / name).read_bytes() for name in ("train", "test", "meta")}
    assert all(data[:2] == b"\x80\x02" for data in raw.values())  # protocol 2
    train = pickle.loads(raw["train"], encoding="bytes")  # the keys are Python 2 byte strings
    assert set(train) == {b"data", b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"}
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (300, 3072)
    meta = pickle.loads(raw["meta"], encoding="bytes")
    fine = [name.decode() for name in meta[b"fine_label_names"]]
    coarse = [name.decode() for name in meta[b"coarse_label_names"]]
    assert len(fine) == len(set(fine)) == 100 and len(coarse) == 20 and fine == sorted(fine)
    assert (fine[0], fine[-1], coarse[0]) == ("apple", "worm", "aquatic_mammals")
    for label, parent in zip(train[b"fine_labels"], train[b"coarse_labels"], strict=True):
        assert fine[label] in smoke_data.SUPERCLASSES[coarse[parent]]

    data = load_data("cifar100", data_dir=tmp_path, val_size=100)
    assert (data.num_classes, data.in_channels, data.image_size) == (100, 3, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (200, 100, 200)
    test = pickle.loads(raw["test"], encoding="latin1")  # as torchvision reads it: str keys
    images, labels = data.test.images, data.test.labels
    assert np.array_equal(images.numpy().reshape(200, 3072), test["data"])
    assert labels.tolist() == test["fine_labels"] and sorted(set(labels.tolist())) == list(range(100))


# --- the smoke targets, end to end


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Each smoke target run once through the runner (as `make reproduce-NAME SMOKE=1` does)."""
    runs = {}

    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        if name not in runs:
            folder = tmp_path_factory.mktemp(name)
            runs[name] = (folder, _run(REPRODUCE / f"{name}.yaml", "--smoke", "--dir", folder))
        return runs[name]

    return run


# The rerun test reruns the ec2t-cifar100 smoke run: under `pytest -n` both go to one worker (so the
# run is made once) by their xdist group.
RERUN = pytest.mark.xdist_group("ec2t-cifar100-smoke")
SMOKE_TARGETS = [pytest.param(n, marks=RERUN) if n == "ec2t-cifar100" else n for n in RECIPES]


@pytest.mark.parametrize("name", SMOKE_TARGETS)
def test_each_smoke_target_runs_end_to_end_and_scores_every_convention(smoke_runs, name):
    folder, done = smoke_runs(name)
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = runner.load_recipe(REPRODUCE / f"{name}.yaml")
    summary = _summary(folder)
    assert summary["recipe"] == name and summary["smoke"] is True
    assert [(s["id"], s["status"]) for s in summary["steps"]] == [(s.id, "ran") for s in recipe.steps]
    for step in recipe.steps:
        assert f"step {recipe.steps.index(step) + 1}/{len(recipe.steps)} {step.id}: done" in done.stderr
        assert (folder / f"{step.id}.safetensors").is_file()
    rows = _scored_beside_the_published(summary, recipe, done)
    if name == "ec2t-cifar100":
        # EC2T's counting: a sign bit per non-zero and 2 mults per output; then 16-bit adds
        official, ec2t, adds16 = rows["official"], rows["ec2t"], rows["ec2t-16bit-adds"]
        assert ec2t["params"] < official["params"] and ec2t["ops"] < official["ops"]
        assert adds16["ops"] < ec2t["ops"] and adds16["conventions"]["add_bits"] == 16
    if name == "rl1-cifar100":
        manifest = json.loads((folder / "quantize.manifest.json").read_text())
        layers = manifest["compression"]["layers"]
        assert layers["layers.0.conv3"]["weight"]["bits"] == 6  # QBNs[3]
        assert layers["layers.16.shortcut.0"]["weight"]["bits"] == 6  # QBNs[Layers-3]
        assert layers["layers.0.conv2"]["weight"]["bits"] == 8
        assert rows["rl1"]["ops"] < rows["official"]["ops"]  # the adder tree's narrower adds


@RERUN
def test_a_rerun_skips_the_finished_steps(smoke_runs):
    folder, first = smoke_runs("ec2t-cifar100")
    assert first.returncode == 0, first.stderr[-3000:]
    first_scores = [row["score"] for row in _summary(folder)["scores"]]
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}
    again = _run(REPRODUCE / "ec2t-cifar100.yaml", "--smoke", "--dir", folder)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("verified: skipped") == 3 and "epoch 1/1" not in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")} == before
    summary = _summary(folder)
    assert [s["status"] for s in summary["steps"]] == ["skipped"] * 3
    assert [row["score"] for row in summary["scores"]] == first_scores


def test_a_failing_step_stops_the_run_with_its_exit_code_and_a_fixed_one_continues(tmp_path):
    recipe = {
        "name": "tiny",
        "seed": "none: a test chain",
        "dataset": "synthetic:classes=4,shape=3x8x8,train=64,test=16",
        "steps": [
            {"id": "fp", "command": "train", "input": None,
             "args": {"--arch": "test-cnn", "--epochs": 1, "--batch-size": 16, "--device": "cpu"}},
            {"id": "pruned", "command": "prune", "input": "fp", "args": {"--sparsity": 1.5, "--epochs": 1}},
            {"id": "quantized", "command": "quantize", "input": "pruned", "args": {"--ptq": True}},
        ],
        "scores": [{"label": "official", "step": "quantized", "args": {}}],
        "published": {"source": "none", "accuracy": None, "scores": {"official": None}},
    }  # fmt: skip
    path, out = tmp_path / "tiny.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    failed = _run(path, "--dir", out)
    assert failed.returncode == 2
    assert "step 2/3 pruned (mncli prune) failed with exit code 2" in failed.stderr
    assert "step 3/3" not in failed.stderr and not (out / "summary.json").exists()
    assert json.loads((out / "fp.step.json").read_text())["done"] is True

    recipe["steps"][1]["args"]["--sparsity"] = 0.5
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    fixed = _run(path, "--dir", out)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "step 1/3 fp: done before" in fixed.stderr
    assert "step 2/3 pruned: its command changed since the last run: starting it over" in fixed.stderr
    pruned_command = next(
        line for line in fixed.stderr.splitlines() if line.startswith("step 2/3 pruned: mncli")
    )
    assert "--sparsity 0.5" in pruned_command and "--resume" not in pruned_command
    assert [s["status"] for s in _summary(out)["steps"]] == ["skipped", "ran", "ran"]


def test_a_stopped_run_continues_the_interrupted_step_from_its_checkpoint(tmp_path):
    """SIGTERM to the runner reaches the training step, which saves a checkpoint and stops; the next
    run continues that step with --resume instead of starting it again."""
    import signal

    recipe = {
        "name": "long",
        "seed": "none: a test chain",
        "dataset": "synthetic:classes=4,shape=3x8x8,train=1024,test=16",
        "steps": [
            {"id": "fp", "command": "train", "input": None,
             "args": {"--arch": "test-cnn", "--epochs": 6, "--batch-size": 8, "--device": "cpu"}},
        ],
        "scores": [{"label": "official", "step": "fp", "args": {}}],
        "published": {"source": "none", "accuracy": None},
    }  # fmt: skip
    path, out = tmp_path / "long.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    argv = [sys.executable, str(REPRODUCE / "run.py"), str(path), "--dir", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("epoch 1/6"):
            process.send_signal(signal.SIGTERM)
            break
    seen += process.stderr.readlines()
    assert process.wait() == 128 + signal.SIGTERM, "".join(seen)
    assert "stopped: run the same command again to continue" in seen[-1]
    assert not (out / "fp.safetensors").exists() and (out / "fp.ckpt").is_dir()

    again = _run(path, "--dir", out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "--resume" in next(
        line for line in again.stderr.splitlines() if line.startswith("step 1/1 fp: mncli")
    )
    assert "resuming from" in again.stderr and "epoch 1/6" not in again.stderr
    assert _summary(out)["steps"][0]["status"] == "ran"


# --- the ImageNet recipes


@pytest.mark.parametrize("name", IMAGENET_RECIPES)
@pytest.mark.parametrize("mode", ["given", "download", "smoke"])
def test_each_imagenet_recipe_parses_with_the_commands_it_names(tmp_path, name, mode):
    """Every step and score, full and smoke, parses as the mncli command it runs; an import gets the
    checkpoint (given, where --download puts it, or the smoke one) and no data options, a stage the
    runner's options and the teacher's artifact."""
    import typer
    from efficientnet_pytorch.utils import url_map

    from mncli.cli.app import app

    commands = typer.main.get_command(app).commands
    recipe = runner.load_recipe(REPRODUCE / f"{name}.yaml")
    assert recipe.name == name and recipe.dataset == "imagenet"
    assert {n: i.url for n, i in recipe.inputs.items()} == {
        n: url_map[f"efficientnet-{n}"] for n in recipe.inputs
    }
    given = {}
    if mode == "given":
        for input_name in recipe.inputs:
            given[input_name] = tmp_path / f"my-{input_name}.pth"
            given[input_name].write_bytes(b"weights")
    plan = runner.Runner(recipe, tmp_path, smoke=mode == "smoke", download=mode == "download", inputs=given)
    expected_inputs = {
        "given": {n: given.get(n) for n in recipe.inputs},
        "download": {n: tmp_path / "inputs" / recipe.inputs[n].url.rsplit("/", 1)[-1] for n in recipe.inputs},
        "smoke": {n: tmp_path / "inputs" / f"{n}.pth" for n in recipe.inputs},
    }[mode]
    for step in plan.steps:
        argv = plan.command_line(step)[len(plan.mncli) :]
        context = commands[argv[0]].make_context(argv[0], argv[1:])
        assert context.params["out"] == str(tmp_path / f"{step.id}.safetensors")
        if step.command == "import":
            assert context.params["checkpoint"] == str(expected_inputs[step.checkpoint].resolve())
            assert context.params["arch"] == {"b1": "efficientnet-b1", "b2": "efficientnet-b2"}[step.id]
            continue
        assert context.params["dataset"] == "imagenet" and context.params["resume"]
        assert context.params["download"] == (mode == "download")
        if mode == "smoke":
            assert context.params["data_dir"] == str(tmp_path / "data") and context.params["val_size"] == 10
            assert context.params["image_size"] in (64, 72)
        else:
            assert context.params["image_size"] in (224, 256)
        if step.teacher:
            assert context.params["teacher"] == str(tmp_path / f"{step.teacher}.safetensors")
    assert [s.command for s in plan.steps] == [s.command for s in recipe.steps]  # smoke: same chain
    for convention in plan.scores:
        argv = plan.score_command(convention)[len(plan.mncli) :]
        context = commands["score"].make_context("score", argv[1:])
        assert context.params["image_size"] == SCORE_SIZES[name][mode == "smoke"]
    assert set(recipe.published["scores"]) <= {c.label for c in recipe.scores}


def test_the_distiller_schedule_reads_into_the_seeds_groups():
    """reproduce/distiller-pruning2.yaml, read by prune's own reader onto mncli's efficientnet-b1:
    every one of B1's 116 conv/linear layers in one of the seed's six groups, at its sparsity."""
    from mncli.compress.prune.distiller import read_schedule
    from mncli.compress.recipe import compute_layers
    from mncli.models import create_model
    from mncli.scoring import meta_device

    schedule = read_schedule(REPRODUCE / "distiller-pruning2.yaml")
    assert schedule is not None and schedule.last_epoch == 40
    with meta_device():
        model = create_model("efficientnet-b1", num_classes=10)
    plan = schedule.plan(model)
    finals = plan.finals()
    assert set(finals) == set(compute_layers(model)) and len(finals) == 116
    assert finals["stem.conv"] == 0.3
    assert finals["blocks.0.dw"] == finals["blocks.12.dw"] == finals["blocks.21.dw"] == 0.25
    assert finals["blocks.10.dw"] == finals["blocks.22.dw"] == 0.7
    assert finals["blocks.2.expand"] == finals["blocks.16.project"] == finals["blocks.0.project"] == 0.25
    assert finals["blocks.7.expand"] == finals["blocks.9.project"] == finals["blocks.22.expand"] == 0.6
    assert finals["blocks.5.se.reduce"] == finals["blocks.22.se.expand"] == 0.7
    assert finals["head.conv"] == finals["classifier"] == 0.65
    assert plan.sources["blocks.3.expand"]["weight"] == "module._blocks.3._expand_conv.weight"
    assert {p.window.epochs() for p in schedule.pruners} == {range(0, 20, 2)}
    assert all(p.initial == 0.05 for p in schedule.pruners)
    assert plan.targets_at(0)["head.conv"] == pytest.approx(0.05)
    assert plan.targets_at(18)["head.conv"] == pytest.approx(0.65)  # AGP reaches it at its last step
    (decay,) = schedule.lr_policies
    assert (decay.kind, decay.gamma, decay.window.epochs()) == ("ExponentialLR", 0.9, range(20, 40))
    assert plan.lr_factor(20) == 1.0 and plan.lr_factor(21) == pytest.approx(0.9**21)


def test_smoke_imagenet_is_an_image_folder_of_jpegs_and_loads_through_mncli(tmp_path):
    from mncli.data import load_data

    folder = smoke_data.write_smoke_imagenet(tmp_path, classes=3, train_per_class=4, test_per_class=2)
    assert folder == tmp_path / "imagenet"
    train = sorted((folder / "train").glob("*/*.JPEG"))
    assert len(train) == 12 and train[0].read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG's SOI marker
    assert sorted(p.name for p in (folder / "val").iterdir()) == ["n00000001", "n00000002", "n00000003"]
    data = load_data("imagenet", data_dir=tmp_path, val_size=3, image_size=32)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 3, 6)


def test_smoke_checkpoint_is_efficientnet_pytorch_with_the_dataparallel_prefix(tmp_path):
    import torch

    path = smoke_data.write_smoke_efficientnet(tmp_path / "b0.pth", "efficientnet-b0", 7)
    state = torch.load(path, weights_only=True)
    assert all(key.startswith("module.") for key in state)
    assert state["module._fc.weight"].shape == (7, 1280)


# --- the ImageNet smoke targets, end to end (the smoke_runs fixture above)


@pytest.mark.parametrize("name", IMAGENET_RECIPES)
def test_each_imagenet_smoke_target_runs_end_to_end_and_scores_every_convention(smoke_runs, name):
    folder, done = smoke_runs(name)
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = runner.load_recipe(REPRODUCE / f"{name}.yaml")
    summary = _summary(folder)
    assert summary["recipe"] == name and summary["smoke"] is True and summary["dataset"] == "imagenet"
    assert [(s["id"], s["status"]) for s in summary["steps"]] == [(s.id, "ran") for s in recipe.steps]
    assert "stripped key prefixes: module." in done.stderr  # the smoke checkpoints are DataParallel's
    for input_name, entry in summary["inputs"].items():
        assert entry["from"] == "smoke" and entry["path"] == str(folder / "inputs" / f"{input_name}.pth")
        assert len(entry["sha256"]) == 64 and entry["url"] == recipe.inputs[input_name].url
    rows = _scored_beside_the_published(summary, recipe, done)

    if name == "distiller-imagenet":
        pruned = _manifest_layers(folder / "prune.safetensors")
        assert pruned["blocks.13.dw"]["sparsity"] == pytest.approx(0.7, abs=1e-3)
        assert pruned["blocks.0.dw"]["sparsity"] == pytest.approx(0.25, abs=1e-2)
        assert pruned["classifier"]["sparsity"] == pytest.approx(0.65, abs=1e-3)
        layers = _manifest_layers(folder / "quantize.safetensors")
        assert layers["stem.conv"]["weight"]["bits"] == 32 and "act" not in layers["stem.conv"]
        assert layers["classifier"]["weight"]["bits"] == 2.5 and "act" not in layers["classifier"]
        block = layers["blocks.5.expand"]
        assert (block["weight"]["bits"], block["weight"]["per_channel"], block["act"]["bits"]) == (4, True, 4)
        assert layers["blocks.13.dw"]["sparsity"] == pytest.approx(0.7, abs=1e-3)  # zeros kept
    if name == "ec2t-imagenet":
        ternary = _manifest_layers(folder / "ternarize.safetensors")
        formats = {n: (spec.get("weight") or {}).get("format") for n, spec in ternary.items()}
        assert formats["blocks.3.expand"] == formats["blocks.3.project"] == formats["head.conv"] == "ternary"
        assert formats.get("blocks.3.se.expand") != "ternary" and formats.get("blocks.3.dw") != "ternary"
        pruned = _manifest_layers(folder / "entropy-prune.safetensors")
        assert pruned["blocks.3.se.reduce"]["mask"] and pruned["classifier"]["mask"]
        threshold = _manifest_layers(folder / "threshold.safetensors")
        assert {n for n, s in threshold.items() if s.get("method") == "threshold"} == {
            f"blocks.{i}.dw" for i in range(23)
        }
        fp16 = _manifest_layers(folder / "fp16.safetensors")
        assert (
            fp16["blocks.3.dw"]["weight"]["bits"] == 16
            and fp16["blocks.3.expand"]["weight"]["format"] == "ternary"
        )
        official, ec2t, adds16 = rows["official"], rows["ec2t"], rows["ec2t-16bit-adds"]
        assert ec2t["params"] < official["params"] and ec2t["ops"] < official["ops"]
        assert adds16["ops"] < ec2t["ops"] and adds16["conventions"]["add_bits"] == 16


# --- inputs


def test_a_missing_checkpoint_is_one_line_naming_its_variable(tmp_path):
    out = tmp_path / "run"
    done = _run(REPRODUCE / "distiller-imagenet.yaml", "--dir", out, "--input", f"b1={tmp_path}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "is not a file" in done.stderr

    b1 = tmp_path / "b1.pth"
    b1.write_bytes(b"weights")
    done = _run(REPRODUCE / "distiller-imagenet.yaml", "--dir", out, "--input", f"b1={b1}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "B2=PATH" in done.stderr and "--input b2=PATH" in done.stderr and "B1=" not in done.stderr
    assert "efficientnet-b2-8bb594d6.pth" in done.stderr and "DOWNLOAD=1" in done.stderr
    assert not out.exists()

    make = subprocess.run(
        ["make", "--no-print-directory", "-n", "reproduce-ec2t-imagenet", "B1=/x/b1.pth", "SMOKE=0"],
        cwd=REPRODUCE.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert (
        "reproduce/run.py reproduce/ec2t-imagenet.yaml" in make.stdout
        and "--input b1=/x/b1.pth" in make.stdout
    )
    done = _run(REPRODUCE / "ec2t-imagenet.yaml", "--dir", out)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "B1=PATH" in done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--input", "b3=x.pth"], "has no input b3"),
        (["--input", "b1"], "is not NAME=PATH"),
        (["--smoke", "--input", "b1=x.pth"], "--smoke writes and reads its own"),
    ],
    ids=["unknown", "no-path", "smoke"],
)
def test_wrong_inputs_are_one_line(tmp_path, args, words):
    done = _run(REPRODUCE / "ec2t-imagenet.yaml", "--dir", tmp_path / "run", "--dry-run", *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr


def test_a_step_whose_checkpoint_or_input_changed_runs_again(tmp_path):
    """An import of a user-given checkpoint, then a stage on it: re-run as they are, both are skipped;
    with another file at the same path, the import runs again, and so does the step after it."""
    import torch

    from mncli.models import create_model

    recipe = {
        "name": "tiny-import",
        "seed": "none: a test chain",
        "dataset": "synthetic:classes=4,shape=3x8x8,train=64,test=16",
        "inputs": {"net": {"about": "a test-cnn state dict", "url": "https://example.invalid/net.pth"}},
        "steps": [
            {"id": "net", "command": "import", "checkpoint": "net",
             "args": {"--arch": "test-cnn", "--arch-opt": ["num_classes=4", "input_size=8"]}},
            {"id": "pruned", "command": "prune", "input": "net",
             "args": {"--sparsity": 0.5, "--method": "magnitude", "--epochs": 0, "--device": "cpu"}},
        ],
        "scores": [{"label": "official", "step": "pruned", "args": {}}],
        "published": {"source": "none", "accuracy": None},
    }  # fmt: skip
    path, out, checkpoint = tmp_path / "tiny.yaml", tmp_path / "run", tmp_path / "net.pth"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    torch.manual_seed(0)
    torch.save(create_model("test-cnn", num_classes=4, input_size=8).state_dict(), checkpoint)

    first = _run(path, "--dir", out, "--input", f"net={checkpoint}")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = _summary(out)
    assert summary["inputs"]["net"]["from"] == "given" and summary["inputs"]["net"]["path"] == str(checkpoint)
    assert [s["status"] for s in summary["steps"]] == ["ran", "ran"]

    again = _run(path, "--dir", out, "--input", f"net={checkpoint}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [s["status"] for s in _summary(out)["steps"]] == ["skipped"] * 2

    torch.manual_seed(1)
    torch.save(create_model("test-cnn", num_classes=4, input_size=8).state_dict(), checkpoint)
    changed = _run(path, "--dir", out, "--input", f"net={checkpoint}")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "step 1/2 net: the files it reads changed since the last run: starting it over" in changed.stderr
    assert "step 2/2 pruned: the files it reads changed since the last run" in changed.stderr
    assert [s["status"] for s in _summary(out)["steps"]] == ["ran"] * 2
