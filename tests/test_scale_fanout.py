"""A scale grid fanned out with make -j2 (examples/scale_grid.mk) chooses what the sequential run does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_artifact

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:classes=3,shape=1x12x12,train=96,test=24"
GRID = "1.4,1.2 1.2,1.3 1.0,1.4"
TRAIN = ["--epochs", "1", "-b", "16", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fanout") / "arch.safetensors"
    args = {"blocks": ["ir_r1_k3_s2_e3_c8", "ir_r1_k3_s2_e3_c16"], "stem_channels": 8, "head_channels": 0,
            "num_classes": 3, "in_channels": 1, "input_size": 12}  # fmt: skip
    return tiny_artifact(path, "mbconv", args, weights=False, stage="search")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_fan_out_chooses_what_the_sequential_grid_chooses(arch, tmp_path, run_cli):
    sequential = tmp_path / "seq" / "s.safetensors"
    sequential.parent.mkdir()
    grid = ["--phi", "2", "--grid", "--grid-points", GRID]
    run = run_cli("-q", "scale", arch, *grid, "-d", DATA, *TRAIN, "-o", sequential)
    assert run.code == 0, run.err
    fanned = tmp_path / "fan" / "s.safetensors"
    fanned.parent.mkdir()
    mncli = Path(sys.executable).with_name("mncli")
    env = {**os.environ, "MNCLI_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            "make", "-s", "-f", str(ROOT / "examples" / "scale_grid.mk"), "-j2", f"MNCLI={mncli}",
            f"ARCH={arch}", f"OUT={fanned}", "PHI=2", f"DATASET={DATA}", "EPOCHS=1", "POINTS=0 1 2",
            f"GRID=--grid-points '{GRID}'", "SCALE_OPTS=-b 16 --device cpu --seed 3",
        ],
        check=True, env=env, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    from mncli.artifact import read_manifest

    seq, fan = read_manifest(sequential)["scale"], read_manifest(fanned)["scale"]
    assert fan["choice"] == seq["choice"]
    assert [p["val_acc"] for p in fan["points"]] == [p["val_acc"] for p in seq["points"]]
