"""The engine under torchrun (issue 18): collectives by NCCL's rules (held by tests/distributed_checker.py,
made to fail on purpose), sharded evaluation equal to one process's, --sync-bn, and an elastic restart
after a rank is killed that ends with the uninterrupted run's weights.

Every torchrun here runs 2 gloo processes on CPU with the checker installed (conftest + sitecustomize).
The file is also a worker script: `torchrun tests/test_distributed_engine.py evaluate OUT.json`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distributed_checker import HostTracker, device_problems, is_host, torchrun, worker_env
from mncli.artifact import load_artifact, read_manifest

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=33"  # 33: the ranks' shares differ (17 + 16)
ARCH = ["--arch", "test-cnn", "--arch-opt", "width=4"]
TIMEOUT = 120


def run_torchrun(args, cwd: Path, *, launcher=("--standalone",), **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun(*args, launcher=launcher), capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
        env=worker_env(**env),
    )  # fmt: skip


def checked_ranks(stderr: str) -> list[str]:
    """The checker's exit lines: proof that it ran in the workers."""
    return re.findall(r"collective check: rank \d+: \d+ collectives checked", stderr)


def train_args(out: Path, *extra: str) -> list[str]:
    return ["-m", "mncli", "train", *ARCH, "-d", SYN, "--json", "-o", str(out), *extra]


# --- the checker ----------------------------------------------------------------------------------


def test_host_tensors_are_told_from_device_tensors():
    """What the checker calls a host tensor: what a GPU run would hold on the CPU."""
    dev = torch.device("cpu")
    with HostTracker():
        host = torch.tensor([1.0, 2.0])  # no device=: on the host in a GPU run
        on_dev = torch.zeros(2, device=dev)
        moved = host.clone().to(dev)
        assert is_host(host) and not is_host(on_dev) and not is_host(moved)
        assert is_host(host * 2) and is_host(host.double()) and is_host(torch.stack([host, host]))
        assert not is_host(on_dev + host[0]) and not is_host(torch.zeros_like(on_dev))
        on_dev += host  # in place: stays on the device
        assert not is_host(on_dev)
        assert is_host(on_dev.cpu()) and not is_host(on_dev)
        assert is_host(torch.tensor([on_dev.sum().item()]))  # a fresh tensor from a number
    assert device_problems([on_dev], dev) == []
    assert "host tensor" in device_problems([host], dev)[0]
    assert "not the rank's device" in device_problems([torch.zeros(1, device="meta")], dev)[0]


@pytest.mark.parametrize(
    "fault, message",
    [
        # the stop flag as it was before the fix: torch.tensor([flag]), refused by NCCL on GPUs
        ("host-tensor", "is a host tensor"),
        ("shape-mismatch", "collectives differ between ranks"),
    ],
)
def test_checker_fails_a_run_that_breaks_nccl_rules(tmp_path, fault, message):
    out = tmp_path / "bad.safetensors"
    run = run_torchrun(train_args(out, "--epochs", "1", "-b", "16"), tmp_path, MNCLI_CHECK_FAULT=fault)
    assert run.returncode != 0
    assert (
        "collective check failed (rank 0)" in run.stderr and "collective check failed (rank 1)" in run.stderr
    )
    assert message in run.stderr
    assert "all_reduce[((1,), 'float32')]" in run.stderr  # the stop flag
    assert not out.exists()


# --- sharded evaluation ---------------------------------------------------------------------------


def _eval_setup():
    from mncli.data import load_data
    from mncli.models import create_model

    torch.manual_seed(3)
    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)
    data = load_data(SYN, batch_size=8)
    return model, data


def _evaluate_worker(out: str) -> None:
    from mncli.engine import distributed, evaluate, runtime

    rt = runtime.configure("cpu", "fp32")
    model, data = _eval_setup()
    results = {
        name: evaluate(model, split, rt.device, batch_size=8, sharded=True)
        for name, split in (("test", data.test), ("val", data.val))
    }
    results["world_size"] = distributed.group_shard()[1]
    everyone = [None] * rt.world_size
    torch.distributed.all_gather_object(everyone, results)
    if rt.rank == 0:
        assert all(r == everyone[0] for r in everyone), everyone  # every rank got the whole split's
        Path(out).write_text(json.dumps(results))
    distributed.leave_group()


def test_sharded_evaluation_equals_one_process(tmp_path):
    """Each rank evaluates its strided share (no padding), the sums are reduced: the counts are the
    split's (every example once), top-1/top-5 exactly one process's, the loss within 1e-6 relative
    (float32 per-batch sums over other batches)."""
    from mncli.engine import evaluate

    out = tmp_path / "eval.json"
    run = run_torchrun([__file__, "evaluate", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(checked_ranks(run.stderr)) == 2
    sharded = json.loads(out.read_text())
    assert sharded["world_size"] == 2
    model, data = _eval_setup()
    for name, split in (("test", data.test), ("val", data.val)):
        alone = evaluate(model, split, "cpu", batch_size=8)
        assert sharded[name]["count"] == alone["count"] == len(split)
        assert sharded[name]["top1"] == alone["top1"] and sharded[name]["top5"] == alone["top5"]
        assert sharded[name]["loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert len(data.test) == 33


# --- --sync-bn ------------------------------------------------------------------------------------


def _max_difference(a: Path, b: Path) -> float:
    ta, _ = load_artifact(a)
    tb, _ = load_artifact(b)
    assert ta.keys() == tb.keys()
    return max((ta[k].double() - tb[k].double()).abs().max().item() for k in ta if ta[k].is_floating_point())


def test_sync_bn_two_processes_train_as_one_process_with_both_batches(tmp_path, run_cli):
    """2 ranks x batch 16 with --sync-bn take the steps of 1 process x batch 32 (the ranks' shares
    of each step are the 32 images of the one process's step; BatchNorm sees all of them): every
    weight and running statistic within 1e-5 (measured 2.4e-7). Without --sync-bn they are 1e-2 off
    (each rank's BatchNorm sees its 16), so the comparison can tell."""
    common = ["--epochs", "1", "--augment", "none", "--precision", "fp32"]
    one = tmp_path / "one.safetensors"
    alone = run_cli("train", *ARCH, "-d", SYN, *common, "-b", "32", "--sync-bn", "-o", one, "--json")
    assert alone.code == 0, alone.err
    assert "--sync-bn: one process, so BatchNorm is left as it is" in alone.err
    synced, unsynced = tmp_path / "sync.safetensors", tmp_path / "nosync.safetensors"
    run = run_torchrun(train_args(synced, *common, "-b", "16", "--sync-bn"), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(checked_ranks(run.stderr)) == 2
    assert read_manifest(synced)["params"]["train"]["sync_bn"] is True
    run = run_torchrun(train_args(unsynced, *common, "-b", "16"), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _max_difference(one, synced) < 1e-5
    assert _max_difference(one, unsynced) > 1e-3
    assert read_manifest(synced)["metrics"]["runtime"]["world_size"] == 2


def test_sync_bn_modules_keep_their_class_and_state_and_are_restored():
    from mncli.engine import distributed, forwards
    from mncli.models import create_model

    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patched = distributed.sync_batchnorm(model)
    assert patched and all(type(m) is torch.nn.BatchNorm2d and "forward" in m.__dict__ for m in patched)
    assert model.state_dict().keys() == before.keys()
    model.eval()  # evaluation uses the running statistics, no collective: runs without a group
    model(torch.randn(2, 1, 8, 8))
    forwards.restore_forward(patched)
    assert not any("forward" in m.__dict__ for m in model.modules())


# --- elastic restart ------------------------------------------------------------------------------


def test_rank_killed_mid_epoch_restarts_from_the_checkpoint_with_the_same_weights(tmp_path):
    """torchrun --max-restarts 1; rank 1 exits in epoch 2 (global step 4 of 2 x 3); the job restarts,
    resumes from OUT.ckpt/ (epoch 1's checkpoint) by itself and ends with the uninterrupted run's
    weights exactly (tolerance 0: the same tensors, the same content_sha256)."""
    common = ["--epochs", "2", "-b", "16"]
    ref, out = tmp_path / "ref.safetensors", tmp_path / "elastic.safetensors"
    run = run_torchrun(train_args(ref, *common), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    marker = tmp_path / "killed"
    run = run_torchrun(
        train_args(out, *common), tmp_path, launcher=("--standalone", "--max-restarts", "1"),
        MNCLI_TEST_KILL=f"1:4:{marker}",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert marker.exists() and "MNCLI_TEST_KILL: rank 1 exits before step 4" in run.stderr
    assert "torchrun restarted the job (attempt 2): resuming" in run.stderr
    assert "at epoch 2, batch 0" in run.stderr
    assert len(checked_ranks(run.stderr)) >= 3  # rank 0 of the first attempt, both of the second
    a, _ = load_artifact(ref)
    b, _ = load_artifact(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_manifest(ref)["content_sha256"] == read_manifest(out)["content_sha256"]
    assert len(read_manifest(out)["metrics"]["history"]) == 2
    assert not (tmp_path / "elastic.ckpt").exists()


def test_a_restarted_job_resumes_only_its_own_checkpoint(tmp_path, monkeypatch):
    """TORCHELASTIC_RESTART_COUNT > 0 is --resume for a checkpoint of the same TORCHELASTIC_RUN_ID,
    and no resume for one left by another job."""
    from mncli.data import load_data
    from mncli.engine import Callback, TrainConfig, fit
    from mncli.models import create_model

    class Steps(Callback):
        count = 0

        def after_step(self, ctx):
            Steps.count += 1

    data = load_data(SYN, batch_size=16)
    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", keep_best=False)
    ckpt = tmp_path / "out.ckpt"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)
    fit(model, data, cfg, callbacks=[Steps()], ckpt_dir=ckpt, show_progress=False)
    first = Steps.count
    assert first > 0 and (ckpt / "state.pt").is_file()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    fit(model, data, cfg, callbacks=[Steps()], ckpt_dir=ckpt, show_progress=False)
    assert Steps.count == first  # resumed from the finished run: no step left
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    fit(model, data, cfg, callbacks=[Steps()], ckpt_dir=ckpt, show_progress=False)
    assert Steps.count == 2 * first  # another job's checkpoint: trained from the start


if __name__ == "__main__":  # a worker under torchrun
    if sys.argv[1] == "evaluate":
        _evaluate_worker(sys.argv[2])
