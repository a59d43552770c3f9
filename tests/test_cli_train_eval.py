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
from mncli.cli.app import main

SYN = "synthetic:classes=4,shape=1x8x8,train=400,test=60"
ARCH = ["--arch", "test-cnn", "--arch-opt", "width=4"]


def train(tmp_path, name="a.safetensors", *extra, capsys=None):
    out = tmp_path / name
    code = main(["train", *ARCH, "-d", SYN, "--epochs", "2", "-b", "32", "--json", "-o", str(out), *extra])
    return code, out


def test_train_then_eval(tmp_path, capsys):
    code, out = train(tmp_path)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["output"] == str(out) and result["params"] > 0 and 0 <= result["test_acc"] <= 1
    manifest = read_manifest(out)
    assert manifest["stage"] == "train"
    assert manifest["arch"]["args"]["num_classes"] == 4 and manifest["arch"]["args"]["in_channels"] == 1
    assert manifest["params"]["train"]["lr"] == 0.1 and manifest["params"]["train"]["epochs"] == 2
    assert manifest["data"]["val_size"] == 40 and manifest["data"]["split_seed"] == 0
    assert len(manifest["metrics"]["history"]) == 2
    assert manifest["metrics"]["score"]["score"] > 0
    assert not (tmp_path / "a.ckpt").exists()  # removed once the artifact is written

    assert main(["eval", str(out), "--split", "val", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert val["split"] == "val" and val["count"] == 40
    assert val["top1"] == pytest.approx(manifest["metrics"]["val_acc"])
    assert main(["eval", str(out), "--json"]) == 0
    test = json.loads(capsys.readouterr().out)
    assert test["count"] == 60 and test["top1"] == pytest.approx(manifest["metrics"]["test_acc"])
    assert set(test) >= {"top1", "top5", "loss"}


def test_continue_from_artifact(tmp_path, capsys):
    code, first = train(tmp_path)
    assert code == 0
    capsys.readouterr()
    out = tmp_path / "b.safetensors"
    assert (
        main(["train", str(first), "--epochs", "1", "-b", "32", "--lr", "0.01", "-o", str(out), "--json"])
        == 0
    )
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
def test_bad_input_exits_2(tmp_path, capsys, args, text):
    code = main(["train", *ARCH, *args, "-o", str(tmp_path / "x.safetensors")])
    assert code == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_missing_dataset_exits_2_with_places(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MNCLI_DATA", str(tmp_path / "nowhere"))
    code = main(["train", "--arch", "lenet5", "-d", "mnist", "-o", str(tmp_path / "x.safetensors")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "/usr/share/datasets/mnist" in err and "--download" in err


def test_wrong_number_of_classes_exits_2(tmp_path, capsys):
    code, first = train(tmp_path)
    assert code == 0
    other = "synthetic:classes=5,shape=1x8x8,train=200"
    assert (
        main(["train", str(first), "-d", other, "--epochs", "1", "-o", str(tmp_path / "c.safetensors")]) == 2
    )
    assert "num_classes=4" in capsys.readouterr().err
    assert main(["eval", str(first), "-d", other]) == 2


def test_arch_and_input_together_or_neither(tmp_path, capsys):
    assert main(["train", "-d", SYN, "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "--arch" in capsys.readouterr().err


def run_cli(args, **kw):
    env = {**os.environ, "MNCLI_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mncli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)  # fmt: skip


def test_sigterm_then_resume_gives_the_same_artifact(tmp_path):
    data = "synthetic:classes=4,shape=1x8x8,train=3000,test=60"
    common = [*ARCH, "-d", data, "--epochs", "6", "-b", "32", "--precision", "fp32"]
    reference = run_cli(["train", *common, "-o", str(tmp_path / "ref.safetensors")])
    killed = run_cli(["train", *common, "-o", str(tmp_path / "run.safetensors")])
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
    resumed = run_cli(["train", *common, "-o", str(tmp_path / "run.safetensors"), "--resume"])
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
