"""`mncli ternarize -m ec2t --do-prune`: EC2T's entropy-controlled pruning step on tiny synthetic data."""

import pytest
import torch

from conftest import tiny_artifact
from mncli.bundle import load_bundle
from mncli.compress.prune.masks import kept_masks

DATA = "synthetic:classes=4,shape=1x12x12,train=64,test=32"
MBCONV = {"in_channels": 1, "input_size": 12, "num_classes": 4}
FAST = ["-d", DATA, "--batch-size", "32", "--max-steps-per-epoch", "2", "--device", "cpu"]
SE_AND_CLASSIFIER = {f"blocks.{b}.se.{c}" for b in range(3) for c in ("reduce", "expand")} | {"classifier"}


@pytest.fixture(scope="module")
def ternary_artifact(tmp_path_factory):
    """Step 1 of the seed's pipeline on a tiny MBConv net: EC2T on the block convs."""
    from mncli.cli.app import main

    folder = tmp_path_factory.mktemp("doprune")
    fp = tiny_artifact(folder / "fp.safetensors", "test-mbconv", MBCONV)
    out = folder / "t.safetensors"
    argv = ["ternarize", fp, *FAST, "-m", "ec2t", "--epochs", "1", "--retrain-epochs", "0", "-o", out]
    assert main([str(a) for a in argv]) == 0
    return out


def test_do_prune_prunes_se_and_classifier_and_keeps_ternary_layers(ternary_artifact, tmp_path, run_cli):
    out = tmp_path / "tp.safetensors"
    run = run_cli("ternarize", ternary_artifact, *FAST, "-m", "ec2t", "--do-prune", "--epochs", "1",
                  "-o", out, "--json")  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    assert set(result["layers"]) == SE_AND_CLASSIFIER and result["mode"] == "prune"
    before, after = load_bundle(ternary_artifact), load_bundle(out)
    old, new = dict(before.model.named_modules()), dict(after.model.named_modules())
    for name in SE_AND_CLASSIFIER:
        spec, weight = after.specs[name], new[name].weight.detach()
        assert spec["mask"] is True and spec["prune_method"] == "ec2t" and "weight" not in spec
        zeros = int((weight == 0).sum())
        assert zeros > 0 and spec["sparsity"] == pytest.approx(zeros / weight.numel())
        kept = weight[weight != 0]
        assert kept.unique().numel() > 3  # full-precision values, not ternary
        assert not torch.equal(kept, old[name].weight.detach()[weight != 0])  # and trained
        assert "epoch 1/1" in run.err and f"{name}: {zeros}/{weight.numel()} zeros" in run.err
    ternary = {n for n, s in before.specs.items() if s.get("weight", {}).get("format") == "ternary"}
    assert ternary and result["frozen_layers"] == sorted(ternary)
    for name in ternary:  # frozen: bit-equal weights, the same specs
        assert torch.equal(new[name].weight, old[name].weight) and after.specs[name] == before.specs[name]
    record = after.manifest["compression"]["ternarize"]
    assert (record["method"], record["mode"]) == ("ec2t", "prune")
    assert record["pruned_sparsity"] == result["pruned_sparsity"] > 0
    params = after.manifest["params"]
    assert params["do_prune"] is True and (params["ini_c"], params["lambda_div"]) == (0.25, 0.15)
    assert result["score"] < result["score_before"]  # the zeros are charged as mask + non-zeros
    assert SE_AND_CLASSIFIER <= set(kept_masks(after.model, after.specs))  # later stages keep the zeros


def test_zero_fraction_grows_with_lambda_div_and_a_model_without_se_prunes_its_classifier():
    """In memory (the Python API's path); test-cnn has no squeeze-excite: only `fc` is pruned."""
    from mncli.bundle import bundle_from_arch
    from mncli.stages.compression import Run
    from mncli.stages.ternarize import Ternarization, TernarizeConfig
    from mncli.stages.training import TrainOptions

    sparsity = {}
    for lambda_div in (0.0, 0.5):
        torch.manual_seed(0)
        bundle = bundle_from_arch("test-cnn", {"in_channels": 1, "input_size": 12, "num_classes": 4})
        method = Ternarization(TernarizeConfig(method="ec2t", do_prune=True, lambda_div=[lambda_div]))
        opts = method.options(
            TrainOptions(dataset=DATA, epochs=1, batch_size=32, max_steps_per_epoch=2, device="cpu", seed=0)
        ).validate()
        method.check(bundle.model, bundle.specs, bundle.arch, opts)
        run = Run(bundle.model, dict(bundle.specs), bundle.arch, opts.load_data(), opts)
        result = method.apply(run)
        assert list(result["layers"]) == ["fc"] and run.record["lambda_div"] == lambda_div
        weight = bundle.model.fc.weight.detach()
        assert result["layers"]["fc"]["sparsity"] == pytest.approx(
            float((weight == 0).sum()) / weight.numel()
        )
        sparsity[lambda_div] = result["pruned_sparsity"]
    assert sparsity[0.5] > sparsity[0.0]


def test_forward_keeps_latent_values_and_gradients_are_ec2ts():
    from mncli.compress.ternary.ec2t import EC2TPruneWeight, EC2TWeight

    g = torch.Generator().manual_seed(3)
    latent = (torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.2).requires_grad_(True)
    upstream = torch.randn(6, 5, generator=g, dtype=torch.float64)
    pruned, ternary = EC2TPruneWeight(latent.detach(), 0.25), EC2TWeight(latent.detach(), 0.25)
    out = pruned(latent)
    keep = pruned.assignment != 0
    assert torch.equal(out.detach(), torch.where(keep, latent.detach(), torch.zeros_like(out)))
    (out * upstream).sum().backward()
    pruned_grads = (latent.grad.clone(), pruned.wp.grad.clone(), pruned.wn.grad.clone())
    latent.grad = None
    (ternary(latent) * upstream).sum().backward()
    for mine, theirs in zip(pruned_grads, (latent.grad, ternary.wp.grad, ternary.wn.grad), strict=True):
        assert torch.equal(mine, theirs)


def test_defaults_are_the_seeds_prune_step():
    from mncli.stages.ternarize import Ternarization, TernarizeConfig
    from mncli.stages.training import TrainOptions

    unset = dict.fromkeys(("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule"))
    method = Ternarization(TernarizeConfig(method="ec2t", do_prune=True))
    opts = method.options(TrainOptions(**unset))
    assert (opts.epochs, opts.batch_size, opts.optimizer, opts.lr) == (10, 128, "adam", 1e-4)
    assert (opts.weight_decay, opts.schedule) == (5e-6, "constant")
    assert method.ec2t_point() == (0.25, 0.15) and method.defaults()["retrain_epochs"] == 0
    assert method.defaults()["latent_lr"] == 1e-4 and method.defaults()["centroid_lr"] == 1e-5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--do-prune"], "--do-prune applies to --method ec2t only"),
        (
            ["-m", "ec2t", "--do-prune", "--layers", "blocks.1.expand"],
            "blocks.1.expand is ternary in the input",
        ),
        (["-m", "ec2t", "--do-prune", "--grid"], "not --grid"),
        (["-m", "ec2t", "--do-prune", "--retrain-epochs", "2"], "no frozen-assignment retraining"),
    ],
)
def test_bad_combinations_are_one_line_and_write_nothing(
    ternary_artifact, options, message, tmp_path, run_cli
):
    out = tmp_path / "bad.safetensors"
    run = run_cli("ternarize", ternary_artifact, *FAST, *options, "-o", out)
    lines = run.err.strip().splitlines()
    assert run.code == 2 and len(lines) == 1 and message in lines[0], run.err
    assert not out.exists()
