"""bench/gpu_check.py (`make gpu-check`, issue 18 item 5) without a GPU.

- Its --dry-run mode runs the GPU plan's commands and comparisons with device cpu on tiny data
  (stages train, eval and score: the CPU reference, the one-process pass, the 2-process torchrun
  pass), and the JSON it writes holds the machine, the torch version, the date, the tolerances and
  every row, all passing (about 35 s). Every stage in that mode: test_dry_run_every_stage, slow
  (about 2 minutes).
- Without --dry-run on a machine with no CUDA GPU: exit 2 and one line on stderr.
- The plan on GPUs (commands for one GPU and for torchrun over 4) and the comparison code, fed rows
  just inside and just outside each tolerance, must flag the outside ones.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
TINY = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
QUICK = ["--data", TINY, "--epochs", "2", "--stage-epochs", "1", "--batch", "32"]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gc = _load()


def _dry_run(tmp_path: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "result" / "gpu_check.json"
    code = gc.main(["--dry-run", *QUICK, "--out", str(out), "--work", str(tmp_path / "work"), *extra])
    return code, json.loads(out.read_text()), capsys.readouterr().out


def test_dry_run_writes_every_row(tmp_path, capsys):
    code, report, printed = _dry_run(tmp_path, capsys, "--stages", "train,eval,score", "--precisions", "bf16")
    assert code == 0, printed
    assert report["dry_run"] is True and report["passed"] is True
    assert report["gpus"] == [] and report["torch"].startswith("2.")
    assert datetime.fromisoformat(report["date"]).tzinfo is not None
    assert {"host", "platform", "cpu", "python"} <= set(report["machine"])
    tol = report["tolerances"]
    assert (
        tol["accuracy_points"]["train"] == 2
        and "score" in tol["score_exact"]
        and "train" in tol["score_exact"]
    )

    rows = report["rows"]
    names = ["cpu-fp32", "cpu-dry-x1-bf16", "cpu-dry-x2-torchrun-bf16"]
    assert [(r["config"], r["stage"]) for r in rows] == [
        (c, s) for c in names for s in ("train", "eval", "score")
    ]
    assert all(r["passed"] and r["code"] == 0 and not r["problems"] for r in rows), rows
    by = {(r["config"], r["stage"]): r for r in rows}

    ref, ddp = by["cpu-fp32", "train"], by["cpu-dry-x2-torchrun-bf16", "train"]
    assert ref["metrics"]["world_size"] == 1 and ddp["metrics"]["world_size"] == 2
    assert ddp["metrics"]["channels_last"] is True and ddp["metrics"]["precision"] == "fp32"
    assert (
        ddp["precision"] == "bf16" and ddp["ran_precision"] == "fp32"
    )  # the planned precision, and what ran
    cmd = ddp["command"]
    assert "torch.distributed.run" in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert "--sync-bn" in cmd and cmd[cmd.index("-b") + 1] == "16"  # 2 x 16 = the global batch of 32
    assert cmd[cmd.index("--device") + 1] == "cpu"
    for config in names[1:]:  # compared with the reference: within tolerance, score exactly equal
        train = by[config, "train"]
        assert train["reference"] == ref["metrics"]
        assert abs(train["diffs"]["acc"]) <= 0.02 and train["diffs"]["score_rel"] == 0.0
        assert by[config, "eval"]["metrics"]["count"] == 32  # every test image once, also sharded
        assert by[config, "score"]["metrics"]["score"] == by["cpu-fp32", "score"]["metrics"]["score"]
    assert "torch.distributed.run" not in by["cpu-dry-x2-torchrun-bf16", "score"]["command"]
    assert "cpu-dry-x2-torchrun-bf16" in printed and "every row passed" in printed  # the table


@pytest.mark.slow
def test_dry_run_every_stage(tmp_path, capsys):
    code, report, printed = _dry_run(tmp_path, capsys, "--precisions", "fp16")
    assert code == 0, printed
    assert [r["stage"] for r in report["rows"]] == list(gc.STAGES) * 3
    assert all(r["passed"] for r in report["rows"])


def test_without_a_gpu_exits_2_with_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stderr
    assert done.stdout == "" and not out.exists()


def test_plan_on_four_gpus(tmp_path):
    cfgs = gc.configs(4, ["bf16", "fp16"], dry_run=False)
    assert [c.name for c in cfgs] == [
        "cpu-fp32", "cuda-x1-bf16", "cuda-x1-fp16", "cuda-x4-torchrun-bf16", "cuda-x4-torchrun-fp16",
    ]  # fmt: skip
    plan = gc.Plan()
    ref, own = tmp_path / "ref", tmp_path / "own"
    for cfg in cfgs[1:]:
        for stage in gc.STAGES:
            argv = gc.stage_argv(stage, cfg, plan, ref, own)
            cmd = gc.launch(stage, cfg, argv, own / "logs")
            if stage == "score":
                assert "--device" not in argv and "torch.distributed.run" not in cmd
                continue
            assert argv[argv.index("--device") + 1] == "cuda"
            if stage in gc.TRAINING:
                assert argv[argv.index("--precision") + 1] == cfg.precision
                assert argv[argv.index("-b") + 1] == str(64 // cfg.nproc)
                assert ("--sync-bn" in argv) == (cfg.nproc > 1)
            if stage not in ("train", "search"):
                assert str(ref) in " ".join(argv)  # starts from the CPU reference's artifact
            assert ("torch.distributed.run" in cmd) == cfg.torchrun
    assert gc.stages_with_needs(["scale", "eval"]) == ("train", "search", "scale", "eval")


def _row(stage: str, world: int = 1, **metrics) -> object:
    row = gc.Row("cfg", stage, "cuda", "bf16", "bf16", world, ["mncli"], code=0)
    row.metrics = metrics
    return row


def _check(stage: str, ref: dict, got: dict, world: int = 1) -> list[str]:
    return gc.compare(_row(stage, world, **got), _row(stage, **ref)).problems


TRAIN_REF = {"acc": 0.90, "score": 1e-4, "world_size": 1, "precision": "bf16", "channels_last": True}


@pytest.mark.parametrize(
    "stage, got, world, fails",
    [
        ("train", {**TRAIN_REF, "acc": 0.915}, 1, False),  # 1.5 points: inside 2
        ("train", {**TRAIN_REF, "acc": 0.875}, 1, True),  # 2.5 points
        ("train", {**TRAIN_REF, "score": 1e-4 * (1 + 1e-12)}, 1, True),  # the score must be equal
        ("train", {**TRAIN_REF, "channels_last": False}, 1, True),
        ("train", {**TRAIN_REF, "precision": "fp32"}, 1, True),  # autocast did not happen
        ("train", {**TRAIN_REF, "world_size": 1}, 4, True),  # torchrun ran one process
        ("train", {**TRAIN_REF, "world_size": 4}, 4, False),
        ("eval", {"acc": 0.905, "count": 100}, 1, False),
        ("eval", {"acc": 0.915, "count": 100}, 1, True),  # eval: 1 point
        ("eval", {"acc": 0.90, "count": 200}, 1, True),  # every image once
        ("ternarize", {"acc": 0.9, "score": 1.04e-4}, 1, False),  # 4 %: inside 5 %
        ("ternarize", {"acc": 0.9, "score": 1.06e-4}, 1, True),
        ("score", {"score": 1.0000001e-4}, 1, True),
    ],
)
def test_comparison_flags_what_is_out_of_tolerance(stage, got, world, fails):
    ref = {
        "train": TRAIN_REF,
        "eval": {"acc": 0.90, "count": 100},
        "ternarize": {"acc": 0.9, "score": 1e-4},
        "score": {"score": 1e-4},
    }[stage]
    problems = _check(stage, ref, got, world)
    assert bool(problems) == fails, problems


def test_search_comparison():
    ref = {"acc": 0.5, "score": 1e-4, "derived_cost": 9e5, "target": 1e6, "blocks": ["k3_e3", "k5_e3"],
           "probabilities": [{"k3_e3": 0.5, "k5_e3": 0.5}, {"k3_e3": 0.4, "k5_e3": 0.6}]}  # fmt: skip
    flipped = {**ref, "blocks": ["k5_e3", "k5_e3"], "score": 2e-4,
               "probabilities": [{"k3_e3": 0.49, "k5_e3": 0.51}, {"k3_e3": 0.4, "k5_e3": 0.6}]}  # fmt: skip
    row = gc.compare(_row("search", **flipped), _row("search", **ref))
    assert row.passed and row.diffs["same_network"] is False  # a near tie flipped: reported, allowed
    assert _check(
        "search", ref, {**ref, "probabilities": [{"k3_e3": 0.56, "k5_e3": 0.44}, ref["probabilities"][1]]}
    )
    assert _check("search", ref, {**ref, "derived_cost": 1.1e6})  # over the target
    assert _check("search", ref, {**ref, "acc": 0.44})  # 6 points: outside 5


def test_failed_command_and_missing_reference():
    row = gc.Row("cfg", "train", "cuda", "bf16", "bf16", 1, ["mncli"], code=1)
    assert not gc.compare(row, None).passed
    bad_ref = gc.Row("cpu-fp32", "train", "cpu", "fp32", "fp32", 1, ["mncli"], code=1)
    problems = gc.compare(_row("train", **TRAIN_REF), bad_ref).problems
    assert problems == ["no CPU reference to compare with"]
    assert "FAIL" in gc.table(
        [gc.compare(_row("train", **{**TRAIN_REF, "acc": 0.5}), _row("train", **TRAIN_REF))]
    )
