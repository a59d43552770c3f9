"""EC2T's CIFAR-100 pipeline through `scale` and `ternarize`: `scale --arch`, grid points that keep
their trained weights, `--collect` writing the winner's weights, --resume keeping trained points, the
seed's option names `--ini-c-divrs` / `--lambda-max-divrs`, and EC2T's phi 3.5 grid and winner."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_artifact

DATA = "synthetic:classes=4,shape=3x8x8,train=128,test=32"
TINY = ["--arch", "micronet-cifar", "--arch-opt", "width_mult=0.5", "--arch-opt", "depth_mult=0.3"]
GRID = "1.9,1.0 1.0,1.4 1.0,2.0"  # point 2 is over the --budget-params below
BUDGET = ["--budget-params", "200000"]
TRAIN = ["--epochs", "1", "-b", "32", "--device", "cpu", "--seed", "1"]
EC2T = ["-m", "ec2t", "--epochs", "1", "--retrain-epochs", "1", "-b", "32", "--device", "cpu"]

# ALGORITHMS.md "scale": EC2T's CIFAR grid of (alpha, beta) at phi 3.5; the winner is point 4.
EC2T_GRID = [(1.0, 1.0), (1.9, 1.0), (1.7, 1.1), (1.6, 1.1), (1.4, 1.2), (1.2, 1.3), (1.0, 1.4)]


def _state(path: Path) -> dict:
    from mncli.bundle import load_bundle

    return load_bundle(path).model.state_dict()


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _grid(run_cli, out: Path, *extra):
    grid = ["--phi", "1", "--grid-points", GRID, *BUDGET, "-d", DATA, *TRAIN]
    run = run_cli("scale", *TINY, *grid, *extra, "-o", out, "--json")
    assert run.code == 0, run.err
    return run


def test_the_default_grid_at_phi_3_5_is_ec2ts_and_its_winner_has_ec2ts_shapes(tmp_path, run_cli):
    from mncli.artifact import load_artifact
    from mncli.models import build_model
    from mncli.scaling.compound import grid_points, parse_grid, scale_arch
    from mncli.scoring import meta_device

    points = grid_points(parse_grid(None))
    assert [(p.alpha, p.beta, p.gamma) for p in points] == [(a, b, 1.0) for a, b in EC2T_GRID]
    out = tmp_path / "winner.safetensors"
    one = ["--phi", "3.5", "--alpha", "1.4", "--beta", "1.2", "-d", "cifar100"]
    run = run_cli("scale", "--arch", "micronet-cifar", *one, "-o", out, "--json")  # no data is read
    assert run.code == 0, run.err
    tensors, manifest = load_artifact(out)
    assert tensors == {} and manifest["parents"] == []  # one point trains nothing: architecture-only
    depth, width, _ = points[4].multipliers(3.5)
    assert manifest["arch"] == scale_arch({"name": "micronet-cifar", "args": {}}, depth, width)
    with meta_device():
        model = build_model(manifest["arch"])
    for stage, width in zip((model.layer1, model.layer2, model.layer3), (32, 64, 120), strict=True):
        assert len(stage) == 23
        assert {block.conv2.out_channels for block in stage} == {width}
    params = manifest["metrics"]["score"]["params"]
    assert round(params / 1e6, 1) == 8.0  # ALGORITHMS.md: 8.0M parameters
    assert run.json["score"]["params"] == params


def test_grid_points_keep_their_weights_and_collect_writes_the_winners(tmp_path, run_cli):
    from mncli.artifact import load_artifact, read_manifest

    out = tmp_path / "seq" / "fp.safetensors"
    out.parent.mkdir()
    first = _grid(run_cli, out, "--grid")
    assert first.err.count("epoch 1/1") == 2  # points 0 and 1 train, point 2 is over budget
    result = first.json
    manifest = read_manifest(out)
    choice = result["choice"]
    assert choice in (0, 1) and result["weights"] is True
    assert manifest["parents"] == [] and manifest["params"]["arch"] == "micronet-cifar"
    winner = out.with_name(f"fp.point{choice}.safetensors")
    assert manifest["scale"]["choice_file"] == winner.name
    assert manifest["scale"]["choice_sha256"] == read_manifest(winner)["content_sha256"]
    assert _same_weights(_state(out), _state(winner))
    winner_metrics = read_manifest(winner)["metrics"]
    for key in ("val_acc", "test_acc", "best_epoch", "score"):
        assert manifest["metrics"][key] == winner_metrics[key]
    assert manifest["arch"] == manifest["scale"]["points"][choice]["arch"]
    trained, over = [out.with_name(f"fp.point{k}.safetensors") for k in (1 - choice, 2)]
    assert load_artifact(trained)[0]  # the loser keeps its weights too
    assert load_artifact(over)[0] == {} and read_manifest(over)["scale_point"]["status"] == "over budget"

    # the same grid as separate jobs (a Slurm array), then --collect: the same winner, the same weights
    fanned = tmp_path / "fan" / "fp.safetensors"
    fanned.parent.mkdir()
    for k in range(3):
        _grid(run_cli, fanned, "--point", k)
    collected = run_cli("scale", *TINY, "--collect", "-d", DATA, *TRAIN, "-o", fanned, "--json")
    assert collected.code == 0, collected.err
    assert collected.json["choice"] == choice
    assert _same_weights(_state(fanned), _state(out))

    # --resume keeps a point already trained: its file stays byte for byte, nothing is trained
    before = winner.read_bytes()
    again = _grid(run_cli, out, "--point", choice, "--resume")
    assert f"point {choice}: already trained" in again.err and "epoch 1/1" not in again.err
    assert winner.read_bytes() == before and again.json["val_acc"] == result["points"][choice]["val_acc"]
    regrid = _grid(run_cli, out, "--grid", "--resume")
    assert regrid.err.count("already trained") == 2 and regrid.json["choice"] == choice
    assert _same_weights(_state(out), _state(winner))


def test_the_winner_goes_through_ec2t_under_the_seeds_option_names(tmp_path, run_cli):
    from mncli.artifact import read_manifest

    fp = tmp_path / "fp.safetensors"
    args = {"width_mult": 0.5, "depth_mult": 0.15, "num_classes": 4, "in_channels": 3, "input_size": 8}
    tiny_artifact(fp, "micronet-cifar", args)
    seed_names = ["--ini-c-divrs", "0.3", "--lambda-max-divrs", "0.175"]
    ours = ["--ini-c", "0.3", "--lambda-div", "0.175"]
    runs = {}
    for name, options in (("seed", seed_names), ("ours", ours)):
        out = tmp_path / f"t-{name}.safetensors"
        run = run_cli("ternarize", fp, *EC2T, *options, "-d", DATA, "-o", out, "--json")
        assert run.code == 0, run.err
        runs[name] = read_manifest(out)
    params = runs["seed"]["params"]
    assert (params["ini_c"], params["lambda_div"]) == (0.3, 0.175)
    assert runs["seed"]["content_sha256"] == runs["ours"]["content_sha256"]
    scores = {}
    for bits in (32, 16):  # the seed's score with 32-bit adds, and its claim with 16-bit adds
        run = run_cli("score", tmp_path / "t-seed.safetensors", "--add-bits", bits, "--json")
        assert run.code == 0, run.err
        scores[bits] = run.json["score"]
    assert scores[16] < scores[32]


def test_the_seeds_option_names_are_shown_in_help():
    import typer

    from mncli.cli.app import app

    params = {p.name: p for p in typer.main.get_command(app).commands["ternarize"].params}
    assert {"--ini-c", "--ini-c-divrs"} <= set(params["ini_c"].opts)
    assert {"--lambda-div", "--lambda-max-divrs"} <= set(params["lambda_div"].opts)
    assert "--ini-c-divrs" in params["ini_c"].help and "--lambda-max-divrs" in params["lambda_div"].help


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scale", "{input}", *TINY, "--phi", "1"], "not both"),
        (["scale", "--phi", "1"], "nothing to scale"),
        (["scale", "--arch", "no-such-net", "--phi", "1"], "unknown architecture"),
        (["scale", "--arch", "resnet20", "--phi", "1", "-d", "cifar10"], "cannot be scaled"),
        (["scale", "{input}", "--arch-opt", "width_mult=2", "--phi", "1"], "--arch-opt applies to --arch"),
        (["scale", "--arch", "micronet-cifar", "--arch-opt", "nope=1", "--phi", "1"], "no argument"),
        (["scale", "--arch", "micronet-cifar", "--arch-opt", "width_mult", "--phi", "1"], "key=value"),
        (["scale", *TINY, "--collect", "-d", DATA], "no point files"),
        (["scale", *TINY, "--phi", "1", "--grid", "-d", "cifar-100"], "unknown dataset"),
        (["ternarize", "{input}", "-m", "ec2t", "--ini-c-divrs", "2"], "ini_c 2.0 is outside"),
        (["ternarize", "{input}", "-m", "ec2t", "--lambda-max-divrs", "-1"], "lambda_div -1.0 is negative"),
        (["ternarize", "{input}", "--ini-c-divrs", "0.45"], "belong to --method ec2t"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path, run_cli):
    source = tiny_artifact(
        tmp_path / "in.safetensors", "micronet-cifar", {"width_mult": 0.5, "depth_mult": 0.15}
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    run = run_cli(*[str(source) if a == "{input}" else a for a in argv], "-o", tmp_path / "out.safetensors")
    lines = run.err.splitlines()
    assert run.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.err
    assert message in lines[0] and "Traceback" not in run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
