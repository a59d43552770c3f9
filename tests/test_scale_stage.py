"""`mncli scale`: one point, a grid, single points and collect, budgets, and the make -j fan-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_artifact

DATA = "synthetic:classes=3,shape=1x12x12,train=96,test=24"
GRID = "1.4,1.2 1.2,1.3 1.0,1.4"
TRAIN = ["--epochs", "1", "-b", "16", "--device", "cpu", "--seed", "3"]


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> Path:
    args = {
        "blocks": ["ir_r1_k3_s2_e3_c8", "ir_r1_k5_s1_e3_c8", "ir_r1_k3_s2_e3_c16"],
        "stem_channels": 8,
        "head_channels": 0,
        "num_classes": 3,
        "in_channels": 1,
        "input_size": 12,
    }
    path = tmp_path_factory.mktemp("scale") / "arch.safetensors"
    return tiny_artifact(path, "mbconv", args, weights=False, stage="search")


def test_one_point_scales_depth_and_width_and_keeps_a_fixed_resolution(arch, tmp_path, run_cli):
    out = tmp_path / "s.safetensors"
    scaling = ["--phi", "2", "--alpha", "1.5", "--beta", "1.2"]
    run = run_cli("scale", arch, *scaling, "-d", "fashion-mnist", "-o", out, "--json")
    assert run.code == 0
    result = run.json
    from mncli.artifact import load_artifact

    tensors, manifest = load_artifact(out)
    assert tensors == {} and manifest["stage"] == "scale"
    assert manifest["parents"][0]["path"].endswith("arch.safetensors")
    args = manifest["arch"]["args"]
    # stage of 8 channels: 2 blocks -> ceil(2.25 * 2) = 5, the added ones copies of its last block
    assert args["blocks"] == ["ir_r1_k3_s2_e3_c8", "ir_r4_k5_s1_e3_c8", "ir_r3_k3_s2_e3_c16"]
    assert args["width_mult"] == pytest.approx(1.44) and args["input_size"] == 12
    assert result["depth_mult"] == pytest.approx(2.25)
    assert result["output"] == str(out)
    assert manifest["metrics"]["score"]["ops"] > 0


def test_one_point_on_mobilenetv2_scales_its_depth(tmp_path, run_cli):
    from mncli.artifact import load_artifact

    src = tiny_artifact(tmp_path / "mnv2.safetensors", "mobilenetv2-cifar", weights=False, stage="import")
    out = tmp_path / "mnv2-phi1.safetensors"
    run = run_cli("scale", src, "--phi", "1", "-d", "cifar100", "-o", out, "--json")
    assert run.code == 0, run.err
    args = load_artifact(out)[1]["arch"]["args"]
    assert args["depth_mult"] == pytest.approx(1.2) and args["width_mult"] == pytest.approx(1.1)
    assert args["input_size"] == 32  # CIFAR: one image size, resolution stays


def test_grid_trains_every_point_and_records_the_choice(arch, tmp_path, run_cli):
    out = tmp_path / "g.safetensors"
    run = run_cli(
        "scale", arch, "--phi", "2", "--grid", "--grid-points", GRID, "-d", DATA, *TRAIN, "-o", out, "--json"
    )
    assert run.code == 0
    result = run.json
    from mncli.artifact import read_manifest

    manifest = read_manifest(out)
    record = manifest["scale"]
    assert [p["point"] for p in record["points"]] == [0, 1, 2]
    accs = [p["val_acc"] for p in record["points"]]
    best = max(range(3), key=lambda k: (accs[k], -record["points"][k]["score"]["score"], -k))
    assert record["choice"] == result["choice"] == best
    assert manifest["arch"] == record["points"][best]["arch"]
    assert all(p["status"] == "trained" for p in record["points"])
    for k in range(3):
        assert (tmp_path / f"g.point{k}.safetensors").exists()
    if record["plot"]:
        assert (tmp_path / "g.png").stat().st_size > 0


def test_budget_drops_points_before_training(arch, tmp_path, run_cli):
    from mncli.bundle import load_bundle
    from mncli.scaling.compound import grid_points, parse_grid
    from mncli.scaling.grid import scaled_point

    source = load_bundle(arch, require_weights=False)
    ops = [
        scaled_point(source.arch, p, 2.0, True, "cifar100")["score"]["ops"]
        for p in grid_points(parse_grid(GRID))
    ]
    assert len(set(ops)) == 3
    budget = sorted(ops)[1]  # the two cheapest fit
    out = tmp_path / "b.safetensors"
    grid = ["scale", arch, "--phi", "2", "--grid", "--grid-points", GRID]
    run = run_cli(*grid, "--budget-ops", budget, "-d", DATA, *TRAIN, "-o", out, "--json")
    assert run.code == 0
    points = run.json["points"]
    over = [p for p in points if p["score"]["ops"] > budget]
    assert len(over) == 1 and over[0]["status"] == "over budget" and over[0]["val_acc"] is None
    run = run_cli(*grid, "--budget-ops", "10", "-d", DATA, "-o", out)
    assert run.code == 2
    assert "every grid point is over budget" in run.err


def test_bad_inputs(arch, tmp_path, run_cli):
    out = tmp_path / "x.safetensors"
    assert run_cli("scale", arch, "-o", out).code == 2  # no --phi
    assert run_cli("scale", arch, "--phi", "2", "--grid", "-o", out).code == 2  # no dataset
    run = run_cli("scale", arch, "--phi", "1", "--point", "9", "--grid-points", GRID, "-d", DATA, "-o", out)
    assert run.code == 2
    run = run_cli("scale", arch, "--collect", "-o", out)
    assert run.code == 2  # no point files
    assert "no point files" in run.err
    run = run_cli("scale", arch, "--phi", "1", "--grid-points", "1.2", "--grid", "-d", DATA, "-o", out)
    assert run.code == 2


def test_a_grid_point_checkpoints_beside_its_point_file(arch, tmp_path, run_cli, monkeypatch):
    import mncli.stages.scale as stage
    from mncli.artifact import read_manifest

    out = tmp_path / "c.safetensors"
    args = ["scale", arch, "--phi", "2", "--point", "1", "--grid-points", GRID, "-d", DATA, *TRAIN]
    monkeypatch.setattr(stage, "remove_checkpoints", lambda path: None)  # keep them to look at
    run = run_cli(*args, "-o", out, "--json")
    assert run.code == 0
    result = run.json
    assert result["output"] == str(tmp_path / "c.point1.safetensors")
    assert (tmp_path / "c.point1.ckpt").is_dir() and not (tmp_path / "c.ckpt").exists()
    monkeypatch.undo()
    for name in ("c.point1.safetensors", "c.point1.manifest.json"):  # as if stopped before writing them
        (tmp_path / name).unlink()
    run = run_cli(*args, "--resume", "-o", out, "--json")
    assert run.code == 0  # continues from that checkpoint
    assert "no checkpoint" not in run.err
    assert run.json["val_acc"] == result["val_acc"]
    assert not (tmp_path / "c.point1.ckpt").exists()
    run = run_cli(*args, "--resume", "-o", tmp_path / "d.safetensors")
    assert run.code == 0
    err = run.err
    assert "no checkpoint in" in err and "d.point1.ckpt" in err  # --resume without one: from the start
    assert not (tmp_path / "d.point1.ckpt").exists()  # removed once the point file is written
    params = read_manifest(tmp_path / "d.point1.safetensors")["params"]
    assert params["train"]["epochs"] == 1 and params["train"]["seed"] == 3 and params["point"] == 1
