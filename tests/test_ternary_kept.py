"""Ternary weights recognised on import in any float dtype, and kept: `mncli import` of an EC2T
checkpoint records its ternary layers, `quantize --fp16` keeps them ternary (scales rounded to fp16
values, recorded in the spec) and makes only the float layers fp16; int layers keep their codes too."""

import pytest
import torch

from conftest import tiny_artifact
from mncli.bundle import load_bundle
from mncli.compress.ternary.common import ternary_specs
from mncli.models.quantized import WEIGHT_SCALE
from mncli.scoring.weights import check_claim
from test_layouts_proxyless_ec2t import RefMicroNet, randomise, ternarize

DATA = "synthetic:classes=10,shape=3x32x32,train=32,test=32"
BLOCK_CONVS = [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in (0, 1) for c in (1, 2)]


@pytest.fixture(scope="module", params=["float32", "float16"])
def ec2t_checkpoint(request, tmp_path_factory):
    """EC2T's ternary MicroNet as quantizer.train_quantization saves it; float16 is its halfprecision."""
    reference = randomise(RefMicroNet(0.15, 0.6, num_classes=10), seed=7)
    ternarize(reference)
    state = {k: v.to(getattr(torch, request.param)) if v.is_floating_point() else v
             for k, v in reference.state_dict().items()}  # fmt: skip
    path = tmp_path_factory.mktemp("ec2t") / f"ternary_{request.param}.pt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def imported(ec2t_checkpoint, tmp_path_factory):
    from mncli.stages.import_checkpoint import ImportConfig, run

    out = tmp_path_factory.mktemp("imported") / "ec2t.safetensors"
    result = run(ec2t_checkpoint, out, ImportConfig())
    return out, result


def test_import_records_the_ternary_layers_as_ternarize_writes_them(imported):
    out, result = imported
    assert result["layout"] == "ec2t" and result["ternary_layers"] == len(BLOCK_CONVS)
    bundle = load_bundle(out)
    assert sorted(bundle.specs) == sorted(BLOCK_CONVS)  # stem, shortcuts and classifier stay float
    for name in BLOCK_CONVS:
        weight = bundle.model.get_submodule(name).weight.detach()
        wp, wn = float(weight.max()), float(-weight.min())
        nnz = int((weight != 0).sum())
        stats = {name: {"wp": wp, "wn": wn, "nnz": nnz, "numel": weight.numel(),
                        "sparsity": 1 - nnz / weight.numel()}}  # fmt: skip
        assert bundle.specs[name] == ternary_specs({}, stats, "import", {})[name]
        assert check_claim(name, bundle.specs[name], weight, None).format == "ternary"


def test_import_logs_and_shows_the_ternary_layers(ec2t_checkpoint, tmp_path, run_cli):
    out = tmp_path / "cli.safetensors"
    run = run_cli("import", ec2t_checkpoint, "-o", out)
    assert run.code == 0, run.err
    assert f"{len(BLOCK_CONVS)} ternary layers recognised: layer1.0.conv1" in run.err
    assert "ternary layers" in run.out


def test_fp16_keeps_the_ternary_layers_and_halves_the_rest(imported, tmp_path, run_cli):
    source, _ = imported
    before = load_bundle(source)
    out = tmp_path / "half.safetensors"
    run = run_cli("quantize", source, "-d", DATA, "--fp16", "-w", "32", "-a", "32", "--epochs", "0",
                  "-o", out, "--json")  # fmt: skip
    assert run.code == 0, run.err
    assert run.json["ternary_layers"] == len(BLOCK_CONVS)
    after = load_bundle(out)
    for name, module in after.model.named_modules():
        if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            continue
        spec, weight = after.specs[name], module.weight.detach()
        assert spec["act"] == {"bits": 16, "signed": True, "method": "fp16"}
        if name not in BLOCK_CONVS:
            assert spec["weight"] == {"format": "float", "bits": 16}, name
            continue
        old = before.model.get_submodule(name).weight.detach()
        assert torch.equal(torch.sign(weight), torch.sign(old)), name  # every code kept
        wp, wn = (float(torch.tensor(v).half()) for v in (float(old.max()), float(-old.min())))
        assert spec["weight"] == {"format": "ternary", "bits": 2, "wp": wp, "wn": wn}, name
        assert set(torch.unique(weight).tolist()) <= {-wn, 0.0, wp}
        assert check_claim(name, spec, weight, None).format == "ternary"
        assert spec["mask"] == before.specs[name]["mask"] and spec["method"] == "import"


def test_int_layers_keep_their_codes_through_fp16_and_training(tmp_path, run_cli):
    data = "synthetic:classes=4,shape=1x12x12,train=64,test=32"
    fp = tiny_artifact(tmp_path / "fp.safetensors", "test-cnn",
                       {"in_channels": 1, "input_size": 12, "num_classes": 4, "width": 4})  # fmt: skip
    q8, half = tmp_path / "q8.safetensors", tmp_path / "half.safetensors"
    assert run_cli("quantize", fp, "-d", data, "--ptq", "-w", "8", "-a", "8", "-o", q8).code == 0
    run = run_cli("quantize", q8, "-d", data, "--fp16", "-w", "32", "-a", "8", "--epochs", "1",
                  "--batch-size", "32", "-o", half)  # fmt: skip
    assert run.code == 0, run.err
    assert "4 int layers keep their weights as they are" in run.err
    before, after = load_bundle(q8), load_bundle(half)
    for name, spec in after.specs.items():
        assert spec["weight"] == before.specs[name]["weight"] and spec["weight"]["format"] == "int"
        module, old = after.model.get_submodule(name), before.model.get_submodule(name)
        assert torch.equal(module.weight, old.weight), name  # frozen while the rest trained
        assert torch.equal(getattr(module, WEIGHT_SCALE), getattr(old, WEIGHT_SCALE)), name
        assert spec["act"]["bits"] == 8


@pytest.mark.parametrize(
    ("storage", "bits_of"),
    [
        ("codes2", lambda n, nnz: min(2 * n, 2 * nnz + n)),  # the official count
        ("sign1", lambda n, nnz: min(2 * n, nnz + n)),  # EC2T's: mask + a sign bit per non-zero
        ("dense2", lambda n, nnz: 2 * n),  # MIT's: dense 2-bit codes
    ],
)
def test_an_imported_ternary_checkpoint_scores_as_counted_from_its_own_tensors(
    ec2t_checkpoint, imported, run_cli, storage, bits_of
):
    """Each ternary layer's storage under each convention against a count made from the checkpoint
    file's tensors alone (n, non-zeros, two 32-bit scales), not from the imported model."""
    state = torch.load(ec2t_checkpoint, weights_only=True)["state_dict"]
    run = run_cli("score", imported[0], "--ternary-storage", storage, "--json")
    assert run.code == 0, run.err
    rows = {row["name"]: row for row in run.json["layers"] if row["weight_format"] == "ternary"}
    assert sorted(rows) == sorted(BLOCK_CONVS)
    for name in BLOCK_CONVS:
        weight = state[f"{name}.weight"].float()
        n, nnz = weight.numel(), int((weight != 0).sum())
        assert rows[name]["storage_bits"] == bits_of(n, nnz) + 2 * 32, name
