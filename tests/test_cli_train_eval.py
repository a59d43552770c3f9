"""`mncli train` and `mncli eval` end to end on synthetic data, the bad inputs a user will try, a
SIGTERM'd run resumed to the same bytes, and a 2-process torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mncli.artifact import read_manifest

SYN = "synthetic:classes=4,shape=1x8x8,train=400,test=60"
ARCH = ["--arch", "test-cnn", "--arch-opt", "width=4"]


def train(run_cli, tmp_path, name="a.safetensors", *extra):
    out = tmp_path / name
    return run_cli("train", *ARCH, "-d", SYN, "--epochs", "2", "-b", "32", "--json", "-o", out, *extra), out


def test_train_then_eval(tmp_path, run_cli):
    run, out = train(run_cli, tmp_path)
    assert run.code == 0
    result = run.json
    assert result["output"] == str(out) and result["params"] > 0 and 0 <= result["test_acc"] <= 1
    manifest = read_manifest(out)
    assert manifest["stage"] == "train"
    assert manifest["arch"]["args"]["num_classes"] == 4 and manifest["arch"]["args"]["in_channels"] == 1
    assert manifest["params"]["train"]["lr"] == 0.1 and manifest["params"]["train"]["epochs"] == 2
    assert manifest["data"]["val_size"] == 40 and manifest["data"]["split_seed"] == 0
    assert len(manifest["metrics"]["history"]) == 2
    assert manifest["metrics"]["score"]["score"] > 0
    assert not (tmp_path / "a.ckpt").exists()  # removed once the artifact is written

    run = run_cli("eval", out, "--split", "val", "--json")
    assert run.code == 0
    val = run.json
    assert val["split"] == "val" and val["count"] == 40
    assert val["top1"] == pytest.approx(manifest["metrics"]["val_acc"])
    run = run_cli("eval", out, "--json")
    assert run.code == 0
    test = run.json
    assert test["count"] == 60 and test["top1"] == pytest.approx(manifest["metrics"]["test_acc"])
    assert set(test) >= {"top1", "top5", "loss"}


def test_continue_from_artifact(tmp_path, run_cli):
    run, first = train(run_cli, tmp_path)
    assert run.code == 0
    out = tmp_path / "b.safetensors"
    assert run_cli("train", first, "--epochs", "1", "-b", "32", "--lr", "0.01", "-o", out, "--json").code == 0
    manifest = read_manifest(out)
    assert manifest["params"]["input"] == str(first) and manifest["data"]["dataset"] == SYN
    assert manifest["parents"][0]["content_sha256"] == read_manifest(first)["content_sha256"]


@pytest.mark.parametrize(
    "args, text",
    [
        (["-d", "no-such-set"], "unknown dataset"),
        (["-d", SYN, "--lr", "-0.1"], "--lr"),
        (["-d", SYN, "--optimizer", "lion"], "--optimizer"),
        (["-d", SYN, "--epochs", "-1"], "--epochs"),
        (["-d", SYN, "--augment", "rotate"], "--augment"),
        (["-d", SYN, "--subset", "0"], "--subset"),
    ],
)
def test_bad_input_exits_2(tmp_path, run_cli, args, text):
    run = run_cli("train", *ARCH, *args, "-o", tmp_path / "x.safetensors")
    assert run.code == 2
    assert text in run.err
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_dataset_exits_2_with_places(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("MNCLI_DATA", str(tmp_path / "nowhere"))
    (tmp_path / "nowhere").mkdir()  # exists, lacks mnist (a missing one is its own error: test_data_hostile)
    run = run_cli("train", "--arch", "lenet5", "-d", "mnist", "-o", tmp_path / "x.safetensors")
    assert run.code == 2
    err = run.err
    assert "nowhere" in err and "/usr/share/datasets/mnist" in err and "--download" in err


def test_wrong_number_of_classes_exits_2(tmp_path, run_cli):
    run, first = train(run_cli, tmp_path)
    assert run.code == 0
    other = "synthetic:classes=5,shape=1x8x8,train=200"
    run = run_cli("train", first, "-d", other, "--epochs", "1", "-o", tmp_path / "c.safetensors")
    assert run.code == 2
    assert "num_classes=4" in run.err
    assert run_cli("eval", first, "-d", other).code == 2


def test_arch_and_input_together_or_neither(tmp_path, run_cli):
    run = run_cli("train", "-d", SYN, "-o", tmp_path / "x.safetensors")
    assert run.code == 2
    assert "--arch" in run.err


def spawn(args, **kw):
    """`python -m mncli` in a process of its own (to signal it)."""
    env = {**os.environ, "MNCLI_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mncli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def test_sigterm_then_resume_gives_the_same_artifact(tmp_path):
    data = "synthetic:classes=4,shape=1x8x8,train=3000,test=60"
    common = [*ARCH, "-d", data, "--epochs", "6", "-b", "32", "--precision", "fp32"]
    reference = spawn(["train", *common, "-o", str(tmp_path / "ref.safetensors")])
    killed = spawn(["train", *common, "-o", str(tmp_path / "run.safetensors")])
    ckpt = tmp_path / "run.ckpt" / "state.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.send_signal(signal.SIGTERM)
    _, err = killed.communicate(timeout=120)
    reference.communicate(timeout=240)
    if killed.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert killed.returncode == 143, err
    assert "--resume" in err and "checkpoint saved" in err
    resumed = spawn(["train", *common, "-o", str(tmp_path / "run.safetensors"), "--resume"])
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    assert "resuming from" in err
    ref, run = read_manifest(tmp_path / "ref.safetensors"), read_manifest(tmp_path / "run.safetensors")
    assert run["content_sha256"] == ref["content_sha256"]


def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp.safetensors"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [
        *torchrun,
        "-m",
        "mncli",
        "train",
        *ARCH,
        "-d",
        SYN,
        "--epochs",
        "2",
        "-b",
        "32",
        "-o",
        str(out),
        "--json",
    ]
    env = {**os.environ, "MNCLI_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    reported = json.loads(result.stdout)  # rank 0 alone printed, one JSON object
    assert reported["runtime"]["world_size"] == 2
    manifest = read_manifest(out)
    assert manifest["metrics"]["runtime"]["world_size"] == 2 and len(manifest["metrics"]["history"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.manifest.json", "ddp.safetensors"]


def test_shared_training_helper_for_other_stages(tmp_path):
    from mncli.engine import Callback
    from mncli.models import create_model
    from mncli.stages.training import TrainOptions, check_model_fits_data, final_metrics, run_training

    class Zeroes(Callback):  # what a pruning stage would plug in
        def after_step(self, ctx):
            ctx.model.fc.weight.data[:, 0] = 0

    opts = TrainOptions(dataset=SYN, epochs=2, batch_size=32, lr=0.05)
    data = opts.validate().load_data()
    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)
    check_model_fits_data(model.arch, data)
    result = run_training(
        model, opts, data, out=tmp_path / "p.safetensors", callbacks=[Zeroes()], phase="finetune"
    )
    assert (tmp_path / "p.ckpt" / "finetune" / "state.pt").is_file()
    assert float(model.fc.weight.detach()[:, 0].abs().sum()) == 0.0  # the kept weights too
    metrics = final_metrics(model, data, result)
    assert {"val_acc", "test_acc", "history", "runtime"} <= set(metrics)
    assert opts.params()["split_seed"] == 0 and "out" not in opts.params()
