"""A training option declared once in TrainOptions reaches the engine and the manifest of every stage."""

from __future__ import annotations

from mncli.artifact import read_manifest

SYN = "synthetic:classes=4,shape=1x8x8,train=256,test=64"
FAST = ["--arch", "test-cnn", "-d", SYN, "--val-size", "64", "--batch-size", "32", "--device", "cpu"]


def test_final_lr_ratio_reaches_the_engine_and_the_manifest(tmp_path, run_cli):
    out = tmp_path / "a.safetensors"
    run = run_cli(
        "train", *FAST, "--epochs", "2", "--lr", "0.1", "--final-lr-ratio", "0.5", "-o", out, "--json"
    )
    assert run.code == 0
    _ = run.json  # the result is JSON
    manifest = read_manifest(out)
    assert manifest["params"]["train"]["final_lr_ratio"] == 0.5
    last_lr = manifest["metrics"]["history"][-1]["lr"]
    assert 0.05 <= last_lr < 0.1  # cosine from 0.1 towards 0.05, not towards 0


def test_an_out_of_range_final_lr_ratio_is_one_line_and_exit_2(tmp_path, run_cli):
    out = tmp_path / "a.safetensors"
    run = run_cli("train", *FAST, "--final-lr-ratio", "2", "-o", out)
    assert run.code == 2
    err = run.err.strip().splitlines()
    assert "--final-lr-ratio" in err[0] and not out.exists()
