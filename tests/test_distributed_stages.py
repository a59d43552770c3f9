"""Every stage under torchrun (issue 18, item 2): 2 gloo processes on CPU against one process.

Each test runs a stage through `torchrun --nproc-per-node 2` (batch 16 per process) and in this
process (batch 32) with the same seed on tiny synthetic data, and checks:
- rank 0 alone printed (one JSON object on its stdout; rank 1's stdout is empty) and wrote (the
  output folder holds what the single-process run writes, no checkpoints left); no rank found its
  parameters or masks different from rank 0's after training (`sync_from_main` would warn); with
  the collective checker on (conftest: tests/distributed_checker.py), both ranks made the same
  collectives and reached the barrier of leaving the group;
- the outputs agree. The models without BatchNorm (test-mlp) see the same global batch in both runs
  (2 x 16 = the single run's 32, the same images: each rank takes a strided share of one
  permutation; --augment none) and DDP's gradient all-reduce averages the two halves, so the runs
  differ only by float summation order: weights within WEIGHT_ATOL = 1e-5 (measured: at most 5e-7,
  reweighted-l1 with Adam; PTQ exactly 0), the same zeros (masks, ternary and int codes), the same
  accuracies (ACC_ATOL = 1e-9: the same predictions) and losses within LOSS_ATOL = 1e-6;
- evaluation is sharded: an odd split of 33 images is scored 17 + 16 and summed to 33 (not 66);
- with BatchNorm (test-cnn) every rank's running statistics are its own after DDP training; the
  stage gives every rank rank 0's model before its sharded evaluation, so what OUT records equals
  `mncli eval OUT` in one process (without that sync the losses differ by 2e-5 to 2e-4: caught);
- scale trains MBConv networks with BatchNorm, with --sync-bn (one process ignores it): every rank
  normalises with the statistics of the whole global batch, so the grid's architectures and scores
  are equal and each point's validation accuracy too (without --sync-bn one point differed by one
  of the 12 validation images).

The whole file takes 65-135 s on the shared 2-core machine (each test 4-15 s); none is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import tiny_artifact

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
MLP = {"num_classes": 4, "in_channels": 1, "input_size": 8, "hidden": 16}
CNN = {"num_classes": 4, "in_channels": 1, "input_size": 8, "width": 4}
COMMON = ["-d", SYN, "--device", "cpu", "--precision", "fp32", "--augment", "none", "--seed", "1", "--json"]
ONE_BATCH, RANK_BATCH = "32", "16"  # the single run's batch = 2 ranks x the per-rank batch

WEIGHT_ATOL = 1e-5  # float summation order only (see above)
LOSS_ATOL = 1e-6
ACC_ATOL = 1e-9  # the same predictions
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
MISMATCH = "differed from rank 0"


@dataclass
class Ranked:
    """A torchrun job: its exit code, each rank's stdout and stderr, and torchrun's own stderr."""

    code: int
    stdout: list[str]
    stderr: list[str]
    agent: str
    checks: list[dict] | None  # the collective checker's record of each rank (None: checker off)

    def result(self) -> dict:
        """Rank 0's one JSON object, after checking that no other rank printed or disagreed."""
        assert self.code == 0, "\n".join([self.agent[-3000:], *(e[-3000:] for e in self.stderr)])
        assert len(self.stdout) == 2, self.agent[-1500:]
        assert all(out == "" for out in self.stdout[1:]), self.stdout[1:]  # rank 0 alone prints
        assert not any(MISMATCH in err for err in self.stderr), self.stderr
        if self.checks is not None:  # the collective checker ran on both ranks; both left the group
            assert sorted(c["rank"] for c in self.checks) == [0, 1], self.checks
            assert all(c["calls"].get("barrier", 0) >= 1 for c in self.checks), self.checks
            assert self.checks[0]["total"] == self.checks[1]["total"], self.checks
        return json.loads(self.stdout[0])


def torchrun(cwd: Path, *argv) -> Ranked:
    """`mncli ARGV` in 2 gloo processes under torchrun, run in `cwd`; each rank's output captured
    through torchrun's per-rank log files (--redirects 3), kept beside `cwd`."""
    logs = cwd.parent / f"{cwd.name}.torchrun-logs"
    cmd = [*TORCHRUN, "--log-dir", str(logs), "--redirects", "3", "-m", "mncli", *map(str, argv)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["MNCLI_NUM_THREADS"] = "1"
    checked = env.get("MNCLI_COLLECTIVE_CHECK") == "1"  # conftest turns tests/distributed_checker.py on
    env["MNCLI_COLLECTIVE_CHECK_LOG"] = str(logs / "checks")
    cwd.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=cwd, env=env)
    ranks = sorted(logs.glob("*/attempt_0/*"), key=lambda p: int(p.name))
    checks = [json.loads(p.read_text()) for p in sorted((logs / "checks").glob("rank*.json"))]
    return Ranked(
        done.returncode,
        [(r / "stdout.log").read_text() for r in ranks],
        [(r / "stderr.log").read_text() for r in ranks],
        done.stderr,
        checks if checked else None,
    )


def single(run_cli, cwd: Path, *argv) -> dict:
    """The same command in this process (world size 1)."""
    cwd.mkdir(parents=True, exist_ok=True)
    done = run_cli(*argv)
    assert done.code == 0, done.err[-2000:]
    return json.loads(done.out)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def both(run_cli, tmp_path: Path, make_argv) -> tuple[dict, dict, Path, Path, Ranked]:
    """Run `make_argv(out_dir, batch)` in one process (batch 32) and under torchrun (2 x 16):
    (single result, rank 0's result, their output folders, the torchrun job)."""
    one_dir, ddp_dir = tmp_path / "one", tmp_path / "ddp"
    one = single(run_cli, one_dir, *make_argv(one_dir, ONE_BATCH))
    job = torchrun(ddp_dir, *make_argv(ddp_dir, RANK_BATCH))
    ddp = job.result()
    assert files(ddp_dir) == files(one_dir)  # rank 0 wrote what one process writes, nothing else
    return one, ddp, one_dir, ddp_dir, job


def calls(job: Ranked, name: str) -> list[int] | None:
    """How many `name` collectives each rank made (the checker's count; None with the checker off)."""
    return None if job.checks is None else [c["calls"].get(name, 0) for c in job.checks]


def state(path: Path) -> tuple[dict, dict]:
    from mncli.bundle import load_bundle

    bundle = load_bundle(path)
    return {k: v.detach().float() for k, v in bundle.model.state_dict().items()}, bundle.specs


def max_weight_diff(a: Path, b: Path) -> float:
    """The largest |difference| between the two artifacts' real-valued weights; same keys and
    shapes, the same zeros everywhere (masks, ternary and int codes at zero)."""
    wa, sa = state(a)
    wb, sb = state(b)
    assert wa.keys() == wb.keys()
    worst = 0.0
    for key in wa:
        assert wa[key].shape == wb[key].shape, key
        assert bool(((wa[key] == 0) == (wb[key] == 0)).all()), f"{key}: other zeros"
        worst = max(worst, float((wa[key] - wb[key]).abs().max()) if wa[key].numel() else 0.0)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert _formats(sa[name]) == _formats(sb[name]), name
    return worst


def _formats(spec: dict) -> dict:
    """A layer spec without its measured floats (scales, wp/wn), which the weights compare."""
    return {
        k: (_formats(v) if isinstance(v, dict) else v)
        for k, v in spec.items()
        if not isinstance(v, float) or k in ("sparsity", "target_sparsity")
    }


def assert_same_metrics(
    one: dict, ddp: dict, keys=("val_acc_before", "val_acc", "test_acc_before", "test_acc")
):
    for key in keys:
        assert ddp[key] == pytest.approx(one[key], abs=ACC_ATOL), key


def assert_close_runs(one: dict, ddp: dict, one_dir: Path, ddp_dir: Path, name: str = "out.safetensors"):
    assert_same_metrics(one, ddp)
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    diff = max_weight_diff(one_dir / name, ddp_dir / name)
    assert diff <= WEIGHT_ATOL, diff
    _, m_one = _manifest(one_dir / name)
    _, m_ddp = _manifest(ddp_dir / name)
    for key in ("val_loss", "test_loss"):
        if key in m_one["metrics"]:
            assert m_ddp["metrics"][key] == pytest.approx(m_one["metrics"][key], abs=LOSS_ATOL)
    return diff


def _manifest(path: Path):
    from mncli.artifact import load_artifact

    return load_artifact(path)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("in") / "mlp.safetensors", "test-mlp", MLP)


def _stage(command: str, source: Path, *options: str):
    def argv(folder: Path, batch: str) -> list:
        return [command, source, *COMMON, "-b", batch, *options, "-o", folder / "out.safetensors"]

    return argv


# --- train and eval


def test_train_from_scratch(run_cli, tmp_path):
    def argv(folder: Path, batch: str) -> list:
        opts = ["--arch-opt", "hidden=16", "--epochs", "2", "--lr", "0.1"]
        return ["train", "--arch", "test-mlp", *opts, *COMMON, "-b", batch, "-o", folder / "out.safetensors"]

    one, ddp, one_dir, ddp_dir, job = both(run_cli, tmp_path, argv)
    assert ddp["runtime"]["world_size"] == 2
    for key in ("val_acc", "test_acc", "test_top5"):
        assert ddp[key] == pytest.approx(one[key], abs=ACC_ATOL), key
    assert max_weight_diff(one_dir / "out.safetensors", ddp_dir / "out.safetensors") <= WEIGHT_ATOL
    history = [_manifest(d / "out.safetensors")[1]["metrics"]["history"] for d in (one_dir, ddp_dir)]
    for a, b in zip(*history, strict=True):  # every epoch's training loss, summed over the ranks
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=LOSS_ATOL)


def test_eval_counts_every_test_image_once(run_cli, tmp_path):
    cnn = tiny_artifact(tmp_path / "cnn.safetensors", "test-cnn", CNN)
    odd = "synthetic:classes=4,shape=1x8x8,train=128,test=33"  # 17 + 16 images on the two ranks
    argv = ["eval", cnn, "-d", odd, "--json"]
    one = single(run_cli, tmp_path / "one", *argv)
    job = torchrun(tmp_path / "ddp", *argv)
    ddp = job.result()
    assert one["count"] == ddp["count"] == 33  # not 66: each rank scored its share, the sums reduced
    assert calls(job, "all_reduce") in (None, [1, 1])
    assert ddp["top1"] == pytest.approx(one["top1"], abs=ACC_ATOL)
    assert ddp["top5"] == pytest.approx(one["top5"], abs=ACC_ATOL)
    assert ddp["loss"] == pytest.approx(one["loss"], abs=LOSS_ATOL)
    assert files(tmp_path / "ddp") == []  # eval writes nothing


# --- prune: every method


@pytest.mark.parametrize(
    "options",
    [
        ["--method", "agp", "--sparsity", "0.6", "--epochs", "3", "--end", "2", "--freq", "1"],
        ["--method", "magnitude", "--sparsity", "0.5", "--global", "--epochs", "2"],
        [
            "--method",
            "reweighted-l1",
            "--sparsity",
            "0.5",
            "--epochs",
            "2",
            "--retrain-epochs",
            "1",
            "--rl1-lambda",
            "1e-4",
        ],
        ["--structured", "--channel-ratio", "0.25", "--epochs", "2"],
    ],  # fmt: skip
    ids=["agp", "magnitude-global", "reweighted-l1", "structured"],
)
def test_prune(run_cli, tmp_path, mlp, options):
    one, ddp, one_dir, ddp_dir, job = both(run_cli, tmp_path, _stage("prune", mlp, "--lr", "0.05", *options))
    assert_close_runs(one, ddp, one_dir, ddp_dir)
    if "--structured" in options:
        assert ddp["params_after"] == one["params_after"] < one["params_before"]
    else:
        assert ddp["achieved"] == one["achieved"] > 0.4
        assert ddp["layers"] == one["layers"]


@pytest.mark.parametrize("command", ["train", "prune"])
def test_recorded_metrics_are_the_written_models_with_batchnorm(run_cli, tmp_path, command):
    """After DDP training each rank's BatchNorm statistics are its own; the stage makes every rank
    hold rank 0's model before the sharded evaluation, so the accuracy and loss OUT records are what
    `mncli eval` of OUT measures in one process (loss within LOSS_ATOL: float summation order)."""
    out = tmp_path / "ddp" / "out.safetensors"
    if command == "train":
        what = ["train", "--arch", "test-cnn", "--arch-opt", "width=4", "--epochs", "2"]
    else:
        cnn = tiny_artifact(tmp_path / "cnn.safetensors", "test-cnn", CNN)
        what = ["prune", cnn, "--sparsity", "0.5", "--method", "magnitude", "--epochs", "2"]
    torchrun(out.parent, *what, *COMMON, "-b", RANK_BATCH, "--lr", "0.2", "-o", out).result()
    recorded = _manifest(out)[1]["metrics"]
    for split in ("val", "test"):
        measured = single(run_cli, tmp_path, "eval", out, "--split", split, "--device", "cpu", "--json")
        assert measured["top1"] == pytest.approx(recorded[f"{split}_acc"], abs=ACC_ATOL), split
        assert measured["loss"] == pytest.approx(recorded[f"{split}_loss"], abs=LOSS_ATOL), split


# --- ternarize: both methods


@pytest.mark.parametrize(
    "options",
    [["--method", "ttq", "--epochs", "2"], ["--method", "ec2t", "--epochs", "1", "--retrain-epochs", "1"]],
    ids=["ttq", "ec2t"],
)
def test_ternarize(run_cli, tmp_path, mlp, options):
    one, ddp, one_dir, ddp_dir, job = both(run_cli, tmp_path, _stage("ternarize", mlp, *options))
    assert_close_runs(one, ddp, one_dir, ddp_dir)
    assert ddp["ternary_layers"] == one["ternary_layers"] >= 1
    assert ddp["ternary_nonzeros"] == one["ternary_nonzeros"]


def test_ternarize_ec2t_grid_stays_in_one_group(run_cli, tmp_path, mlp):
    """Every grid point trains in the group the grid joined (left once, at the end); rank 0 writes
    the point files and collects them."""
    grid = ["--method", "ec2t", "--grid", "--ini-c", "0.3", "--lambda-div", "0.1,0.2", "--epochs", "1",
            "--retrain-epochs", "0"]  # fmt: skip
    one, ddp, one_dir, ddp_dir, job = both(run_cli, tmp_path, _stage("ternarize", mlp, *grid))
    assert "out.point1.safetensors" in files(ddp_dir)
    assert calls(job, "barrier") in (None, [1, 1])  # the group is left once, after the last point
    assert ddp["chosen"]["point"] == one["chosen"]["point"]
    for a, b in zip(one["points"], ddp["points"], strict=True):
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=ACC_ATOL)
        assert b["ternary_sparsity"] == a["ternary_sparsity"]
    for name in ("out.point0.safetensors", "out.point1.safetensors", "out.safetensors"):
        assert max_weight_diff(one_dir / name, ddp_dir / name) <= WEIGHT_ATOL, name


# --- quantize: QAT and PTQ


@pytest.mark.parametrize(
    "options",
    [
        ["--method", "lsq", "--weight-bits", "4", "--act-bits", "4", "--epochs", "2"],
        [
            "--ptq",
            "--calibration",
            "percentile",
            "--weight-bits",
            "4",
            "--act-bits",
            "4",
            "--calib-batches",
            "2",
        ],
    ],
    ids=["qat-lsq", "ptq"],
)
def test_quantize(run_cli, tmp_path, mlp, options):
    one, ddp, one_dir, ddp_dir, job = both(run_cli, tmp_path, _stage("quantize", mlp, *options))
    diff = assert_close_runs(one, ddp, one_dir, ddp_dir)
    assert ddp["int_weight_layers"] == one["int_weight_layers"] >= 1
    assert ddp["layers"] == one["layers"]  # bits, levels, signs per layer
    if "--ptq" in options:  # no training: the same calibration (rank 0's), the same weights exactly
        assert diff == 0.0
        # no training, so the all-reduces are the sharded evaluations: val and test, before and after
        assert calls(job, "all_reduce") in (None, [4, 4])
        assert calls(job, "broadcast_object_list") in (None, [1, 1])  # rank 0's calibration


# --- scale: grid points


def test_scale_grid_points(run_cli, tmp_path):
    args = {"blocks": ["ir_r1_k3_s2_e3_c8", "ir_r1_k3_s2_e3_c16"], "stem_channels": 8, "head_channels": 0,
            "num_classes": 4, "in_channels": 1, "input_size": 8}  # fmt: skip
    arch = tiny_artifact(tmp_path / "arch.safetensors", "mbconv", args, weights=False, stage="search")
    grid = ["--phi", "1", "--grid", "--grid-points", "1.2,1.1 1.0,1.2", "--epochs", "1", "--lr", "0.05",
            "--sync-bn"]  # fmt: skip
    one, ddp, _, ddp_dir, job = both(run_cli, tmp_path, _stage("scale", arch, *grid))
    assert [p["arch"] for p in ddp["points"]] == [p["arch"] for p in one["points"]]
    assert [p["score"] for p in ddp["points"]] == [p["score"] for p in one["points"]]
    for a, b in zip(one["points"], ddp["points"], strict=True):
        assert b["status"] == a["status"] == "trained"
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=ACC_ATOL)


# --- the helpers themselves, in this process


def test_leave_group_waits_and_destroys_the_group(tmp_path):
    import torch.distributed as dist

    from mncli.engine.distributed import leave_group
    from mncli.stages.compression import other_rank

    leave_group()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    leave_group()
    assert not dist.is_initialized()
    assert other_rank({"rank": 1}) and not other_rank({"rank": 0}) and not other_rank({"output": "x"})
