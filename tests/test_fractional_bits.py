"""Fractional weight bits (Distiller's ImageNet entry put its last FC at 2.5 bits): a uniform grid of
floor(2**b) levels, packed k codes per base-L group, and scored at exactly the packed bits."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_artifact
from mncli.artifact import codec, load_artifact, pack_bits
from mncli.artifact.packing import levels_size, pack_levels, unpack_levels
from mncli.compress.quant.lsq import LsqWeight
from mncli.compress.quant.plan import check_bits
from mncli.errors import BadInput
from mncli.models import create_model
from mncli.models.quantized import install_act_quantizers, qrange, set_int_weight
from mncli.scoring import score_model
from mncli.storage import bits_per_code, code_bits, code_group, levels_for_bits

DATA = "synthetic:classes=4,shape=1x12x12,train=96,test=32"
ARCH = {"in_channels": 1, "input_size": 12, "num_classes": 4, "width": 4}
FRACTIONAL = {"format": "int", "bits": 2.5, "levels": 5, "per_channel": False}


def reference_pack(codes: list[int], levels: int) -> list[int]:
    """The layout's definition: groups sum(code_j * L**j) of k codes, their bits one little-endian
    integer sum(group_i << (i * g))."""
    k, g = code_group(levels)
    padded = codes + [0] * (-len(codes) % k)
    groups = [sum(c * levels**j for j, c in enumerate(padded[i : i + k])) for i in range(0, len(padded), k)]
    stream = sum(group << (i * g) for i, group in enumerate(groups))
    return list(stream.to_bytes(levels_size(len(codes), levels), "little"))


def test_levels_and_groups():
    assert [levels_for_bits(b) for b in (2, 2.4, 2.5, 3, 7.9, 8)] == [4, 5, 5, 8, 238, 256]
    assert levels_for_bits(math.log2(3)) == 3  # 2**log2(3) is 2.9999...: not floored to 2
    assert code_group(5) == (3, 7) and bits_per_code(5) == 7 / 3
    assert code_group(3) == (17, 27) and code_group(6) == (5, 13)
    assert all(code_group(1 << b) == (1, b) and bits_per_code(1 << b) == b for b in range(1, 9))
    assert code_bits(64, 5) == 22 * 7 and code_bits(0, 5) == 0
    assert qrange(2.5, signed=True) == (2, 2) and qrange(3, signed=True) == (4, 3)
    assert qrange(2.9, signed=True) == (3, 3) and qrange(2.6, signed=True) == (3, 2)  # 7 and 6 levels


@settings(max_examples=200, deadline=None)
@given(levels=st.integers(3, 255), data=st.data())
def test_pack_round_trip_for_any_levels_and_length(levels, data):
    k, _ = code_group(levels)
    length = data.draw(st.sampled_from([0, 1, k - 1, k, k + 1, 2 * k + 1]) | st.integers(0, 90))
    codes = data.draw(st.lists(st.integers(0, levels - 1), min_size=length, max_size=length))
    packed = pack_levels(torch.tensor(codes, dtype=torch.int64), levels)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(code_bits(length, levels) / 8)
    assert packed.tolist() == reference_pack(codes, levels)
    assert unpack_levels(packed, levels, length).tolist() == codes


def test_powers_of_two_keep_the_bit_layout():
    codes = torch.randint(0, 16, (101,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(pack_levels(codes, 16), pack_bits(codes, 4))


def test_wide_groups_across_many_chunks(monkeypatch):
    import mncli.artifact.packing as packing

    monkeypatch.setattr(packing, "_CHUNK", 64)  # 27-bit groups of 3 levels: steps of 8 groups
    codes = torch.randint(0, 3, (1000,), generator=torch.Generator().manual_seed(1))
    packed = pack_levels(codes, 3)
    assert packed.tolist() == reference_pack(codes.tolist(), 3)
    assert torch.equal(unpack_levels(packed, 3, 1000), codes)


def test_malformed_packed_codes_are_refused():
    with pytest.raises(ValueError, match="lie in"):
        pack_levels(torch.tensor([5]), 5)
    with pytest.raises(ValueError, match="beyond"):
        unpack_levels(torch.tensor([0x7F], dtype=torch.uint8), 5, 3)  # 127 >= 5**3
    with pytest.raises(ValueError, match="take 2 bytes"):
        unpack_levels(torch.zeros(1, dtype=torch.uint8), 5, 4)


def fc_model(sparsity: float, seed: int = 0):
    """test-cnn whose fc holds 5-level codes (-2..2) * scale, about `sparsity` of them zero."""
    torch.manual_seed(seed)
    model = create_model("test-cnn", **ARCH)
    g = torch.Generator().manual_seed(seed)
    shape = model.fc.weight.shape
    codes = torch.randint(-2, 3, shape, generator=g) * (torch.rand(shape, generator=g) >= sparsity)
    set_int_weight(model.fc, torch.tensor([0.0625]), codes)
    return model, {"fc": {"weight": dict(FRACTIONAL)}}


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.6, 1.0])
def test_the_file_holds_the_5_level_fc_at_the_bits_the_score_charges(sparsity):
    model, specs = fc_model(sparsity)
    report = score_model(model, specs, input_shape=(1, 12, 12))
    row = next(r for r in report["layers"] if r["name"] == "fc")
    n, nnz = model.fc.weight.numel(), int(torch.count_nonzero(model.fc.weight))
    dense, sparse = code_bits(n, 5), code_bits(nnz, 5) + n
    assert row["storage"] == ("sparse" if sparse < dense else "dense")
    weight_bits = min(dense, sparse)
    bias_bits = model.fc.bias.numel() * 32
    assert row["storage_bits"] == weight_bits + 32 + bias_bits  # + the scale
    assert row["weight_format"] == "int2.5" and row["weight_bits"] == 7 / 3
    assert row["mult_bits"] == 32  # max(7/3, its 32-bit inputs)
    assert report["conventions"]["fractional_layers"]["fc"] == {
        "weight_format": "int2.5",
        "levels": 5,
        "codes_per_group": 3,
        "group_bits": 7,
        "bits_per_code": 7 / 3,
    }
    stored = codec.encode_state(model.state_dict(), specs)
    codes_bits = weight_bits - (n if row["storage"] == "sparse" else 0)
    assert stored["fc.weight::codes"].numel() == math.ceil(codes_bits / 8)
    assert ("fc.weight::mask" in stored) == (row["storage"] == "sparse")
    if row["storage"] == "sparse":
        assert stored["fc.weight::mask"].numel() == math.ceil(n / 8)
    decoded = codec.decode_state(stored, specs)
    assert torch.equal(decoded["fc.weight"], model.fc.weight) and torch.equal(
        decoded["fc.weight_scale"], model.fc.weight_scale
    )


def test_mults_at_the_packed_bits_when_the_inputs_are_narrower():
    model, specs = fc_model(0.3)
    specs["fc"]["act"] = {"bits": 2, "signed": True, "method": "lsq"}
    install_act_quantizers(model, specs)
    row = next(r for r in score_model(model, specs, input_shape=(1, 12, 12))["layers"] if r["name"] == "fc")
    assert row["mult_bits"] == 7 / 3 and row["mults"] == row["raw_mults"] * 7 / 3 / 32


def test_claims_are_checked_against_the_values():
    model, specs = fc_model(0.0)
    with torch.no_grad():
        model.fc.weight[0, 0] = 3 * 0.0625  # a sixth level
    with pytest.raises(BadInput, match="not on one grid of 5 levels"):
        score_model(model, specs, input_shape=(1, 12, 12))
    with pytest.raises(BadInput, match=r"off the 2.5-bit \(5-level\) grid"):
        codec.encode_state(model.state_dict(), specs)


@pytest.mark.parametrize("levels", [6, 4, 2.5, True])
def test_levels_that_contradict_the_bits_are_bad_input(levels):
    model, specs = fc_model(0.3)
    specs["fc"]["weight"]["levels"] = levels
    with pytest.raises(BadInput, match="2.5-bit int weights have 5 levels"):
        score_model(model, specs, input_shape=(1, 12, 12))
    with pytest.raises(BadInput, match="2.5-bit int weights have 5 levels"):
        codec.encode_state(model.state_dict(), specs)


def test_activation_bits_stay_whole_and_weights_between_2_and_8():
    assert check_bits(2.5, "--weight-bits", fractional=True) == 2.5
    assert check_bits(4.0, "--weight-bits", fractional=True) == 4
    with pytest.raises(BadInput, match="--act-bits must be an integer number of bits, got 2.5"):
        check_bits(2.5, "--act-bits")
    for bits in (1.5, 8.5):
        with pytest.raises(BadInput, match="fractional bits lie between 2 and 8"):
            check_bits(bits, "--weight-bits", fractional=True)


def test_lsq_trains_on_the_5_level_grid():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    quantizer = LsqWeight(w, 2.5)
    assert (quantizer.q_n, quantizer.q_p) == (2, 2)
    scale, codes = quantizer.deployed(w)
    assert set(codes.unique().tolist()) <= {-2, -1, 0, 1, 2}
    assert torch.equal(quantizer(w).detach(), codes.float() * scale)


@pytest.fixture(scope="module")
def fp_artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("frac") / "fp.safetensors", "test-cnn", ARCH)


def test_quantize_with_a_recipe_giving_the_fc_2_5_bits(fp_artifact, tmp_path, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("layers:\n  fc: {weight_bits: 2.5}\n")
    out = tmp_path / "q.safetensors"
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-w", "4", "-a", "4", "--recipe", recipe,
                  "--epochs", "1", "-b", "32", "-o", out, "--json")  # fmt: skip
    assert run.code == 0, run.err
    manifest = json.loads(out.with_name("q.manifest.json").read_text())
    specs = manifest["compression"]["layers"]
    assert specs["fc"]["weight"] == FRACTIONAL
    assert specs["conv2"]["weight"] == {"format": "int", "bits": 4, "per_channel": False}
    assert manifest["params"]["weight_bits"] == 4  # whole bits recorded as an int
    rows = {r["layer"]: r for r in run.json["layers"]}
    assert rows["fc"]["weight"] == "int2.5" and rows["fc"]["levels"] <= 5
    score = run_cli("score", out, "--json")
    assert score.code == 0, score.err
    fc = next(r for r in score.json["layers"] if r["name"] == "fc")
    assert fc["weight_format"] == "int2.5" and fc["weight_bits"] == 7 / 3
    tensors, _ = load_artifact(out)
    n = int(tensors["fc.weight::shape"].prod())
    mask = "fc.weight::mask" in tensors
    assert fc["storage"] == ("sparse" if mask else "dense")
    code_bytes = math.ceil((fc["storage_bits"] - 32 - 4 * 32 - 32 - (n if mask else 0)) / 8)  # scales, bias
    assert tensors["fc.weight::codes"].numel() == code_bytes
    info = run_cli("inspect", out, "--json")
    layer = next(r for r in info.json["layers"] if r["name"] == "fc")
    assert layer["format"] == "int2.5 (5 levels)" and layer["weight_bits"] == 2.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["-a", "2.5"], "'2.5' is not a valid integer"),
        (["-w", "1.5"], "--weight-bits 1.5 is not supported: fractional bits lie between 2 and 8"),
        (["--recipe", "{act}"], "act_bits of 'fc' must be an integer number of bits, got 2.5"),
    ],
)
def test_fractional_activation_bits_are_refused(fp_artifact, tmp_path, run_cli, args, message):
    (tmp_path / "act.yaml").write_text("layers:\n  fc: {act_bits: 2.5}\n")
    out = tmp_path / "x.safetensors"
    args = [a.replace("{act}", str(tmp_path / "act.yaml")) for a in args]
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-o", out, *args)
    assert run.code == 2 and message in run.err and not out.exists()
    assert len([line for line in run.err.splitlines() if line.startswith("error")]) == 1
