"""Dense or sparse, whichever is smaller: the artifact stores each weight in exactly the form the score
charges (one rule, mncli.storage), decodes both forms, and still reads artifacts written when every
weight with a zero was stored sparse."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mncli.artifact import codec, load_artifact, pack_bits, save_artifact
from mncli.artifact.manifest import new_manifest
from mncli.bundle import load_bundle
from mncli.scoring import score_model
from mncli.storage import smaller_form, storage_form

SHAPE = (8, 4, 3, 3)
N = math.prod(SHAPE)
SCALE = torch.tensor([0.125])
WP, WN = 0.5, 0.25


def weights(kind: str, sparsity: float, seed: int) -> torch.Tensor:
    """A weight of SHAPE of the format `kind` with about `sparsity` exact zeros (none at 0.0)."""
    g = torch.Generator().manual_seed(seed)
    zero = torch.rand(SHAPE, generator=g) < sparsity
    if kind == "ternary":
        values = torch.where(torch.rand(SHAPE, generator=g) < 0.5, WP, -WN)
    elif kind == "int4":
        sign = torch.where(torch.rand(SHAPE, generator=g) < 0.5, 1, -1)
        values = (torch.randint(1, 8, SHAPE, generator=g) * sign).float() * SCALE
    else:
        values = torch.randn(SHAPE, generator=g).clamp(min=1e-3) if kind == "fp32" else torch.ones(SHAPE)
        values = values.half().float() if kind == "fp16" else values
    return torch.where(zero, torch.zeros(()), values)


SPECS = {
    "fp32": {"weight": {"format": "float", "bits": 32}},
    "fp16": {"weight": {"format": "float", "bits": 16}},
    "ternary": {"weight": {"format": "ternary", "bits": 2, "wp": WP, "wn": WN}},
    "int4": {"weight": {"format": "int", "bits": 4, "per_channel": False}},
}


def conv_with(kind: str, weight: torch.Tensor) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    if kind == "int4":
        model[0].register_buffer("weight_scale", SCALE.clone())
    return model


def payload_bits(stored: dict[str, torch.Tensor]) -> int:
    """Bits of the weight's own tensors in the file, its shape and quantizer scales left out."""
    parts = ("shape", "wp", "wn", "scale")
    return 8 * sum(t.numel() * t.element_size() for k, t in stored.items() if k.split("::")[-1] not in parts)


def test_the_rule():
    assert smaller_form(10, 9) == (9, "sparse") and smaller_form(10, 10) == (10, "dense")
    assert storage_form(100, 40, lambda count: 2 * count) == (180, "sparse")
    assert storage_form(100, 50, lambda count: 2 * count) == (200, "dense")  # a tie: dense
    assert storage_form(100, 97, lambda count: 32 * count) == (3200, "dense")


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(sorted(SPECS)),
    sparsity=st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.5, 0.7, 1.0]),
    seed=st.integers(0, 1000),
)
def test_the_file_holds_the_form_and_the_bits_the_score_charges(kind, sparsity, seed):
    weight = weights(kind, sparsity, seed)
    specs = {"0": SPECS[kind]}
    model = conv_with(kind, weight)
    row = score_model(model, specs, input_shape=(4, 5, 5))["layers"][0]
    stored = codec.encode_state(model.state_dict(), specs)
    assert ("0.weight::mask" in stored) == (row["storage"] == "sparse")
    if row["storage"] == "dense" and kind.startswith("fp"):
        assert "0.weight" in stored and stored["0.weight"].shape == SHAPE  # the plain tensor
    scale_bits = {"ternary": 64, "int4": 32}.get(kind, 0)
    weight_bits = row["storage_bits"] - scale_bits
    # each tensor rounded up to whole bytes: the mask, the codes (or the values)
    nnz = int((weight != 0).sum())
    padded = (
        8 * math.ceil(N / 8) + 8 * math.ceil((weight_bits - N) / 8)
        if row["storage"] == "sparse"
        else 8 * math.ceil(weight_bits / 8)
    )
    assert payload_bits(stored) == padded
    decoded = codec.decode_state(stored, specs)["0.weight"]
    assert torch.equal(decoded, weight) and int((decoded != 0).sum()) == nnz


def test_dense_ternary_codes_zero_as_0():
    w = torch.tensor([[0.5, 0.0, -0.25, 0.5]])  # 1 zero in 4: 8 bits dense < 4 + 6 sparse
    stored = codec.encode_state({"t.weight": w}, {"t": SPECS["ternary"]})
    assert "t.weight::mask" not in stored
    assert torch.equal(stored["t.weight::codes"], pack_bits(torch.tensor([1, 0, 2, 1]), 2))
    assert torch.equal(codec.decode_state(stored, {"t": SPECS["ternary"]})["t.weight"], w)


def test_a_zero_code_is_refused_in_the_sparse_form():
    w = torch.tensor([[0.5, 0.0, 0.0, 0.0]])
    stored = codec.encode_state({"t.weight": w}, {"t": SPECS["ternary"]})
    assert "t.weight::mask" in stored
    broken = {**stored, "t.weight::codes": pack_bits(torch.tensor([0]), 2)}
    with pytest.raises(Exception, match="ternary codes other than 1 and 2"):
        codec.decode_state(broken, {"t": SPECS["ternary"]})


def old_encode(state: dict[str, torch.Tensor], specs: dict) -> dict[str, torch.Tensor]:
    """The stored form of artifacts written before the dense form: any weight of 2+ dims with an exact
    zero as mask + non-zeros (float values, ternary codes 1/2, int codes + 2**(b-1))."""
    out = {}
    for name, t in state.items():
        layer = name.removesuffix(".weight")
        spec = (specs.get(layer) or {}).get("weight") or {"format": "float", "bits": 32}
        if name.endswith(".weight_scale"):
            continue
        if not name.endswith(".weight") or t.dim() < 2:
            out[name] = t
            continue
        flat = t.reshape(-1)
        keep = flat != 0
        layout = {f"{name}::shape": torch.tensor(list(t.shape))}
        if not bool(keep.all()):
            layout[f"{name}::mask"] = pack_bits(keep, 1)
        if spec["format"] == "float":
            out.update({**layout, f"{name}::values": flat[keep]} if not bool(keep.all()) else {name: t})
        elif spec["format"] == "ternary":
            codes = torch.where(flat[keep] == spec["wp"], 1, 2)
            out.update(layout)
            out[f"{name}::codes"] = pack_bits(codes, 2)
            out[f"{name}::wp"], out[f"{name}::wn"] = torch.tensor(spec["wp"]), torch.tensor(spec["wn"])
        else:
            bits, scale = spec["bits"], state[f"{layer}.weight_scale"]
            codes = torch.round(flat / scale).to(torch.int64)[keep] + (1 << (bits - 1))
            out.update({**layout, f"{name}::codes": pack_bits(codes, bits), f"{name}::scale": scale})
    return out


def old_state() -> tuple[dict[str, torch.Tensor], dict]:
    """test-cnn with a lightly pruned fp32 conv1, a 20 % zero ternary conv2 and a 10 % zero int4 conv3:
    all three sparse in an old artifact, all three dense now."""
    from mncli.models import create_model

    torch.manual_seed(0)
    state = {k: v.clone() for k, v in create_model("test-cnn").state_dict().items()}
    state["conv1.weight"][0, 0, 0, 0] = 0.0
    shape2, shape3 = state["conv2.weight"].shape, state["conv3.weight"].shape
    g = torch.Generator().manual_seed(1)
    pick = torch.rand(shape2, generator=g)
    state["conv2.weight"] = torch.where(pick < 0.2, 0.0, torch.where(pick < 0.6, WP, -WN))
    codes = torch.randint(-8, 8, shape3, generator=g) * (torch.rand(shape3, generator=g) >= 0.1)
    state["conv3.weight"], state["conv3.weight_scale"] = codes.float() * SCALE, SCALE.clone()
    specs = {"conv1": {"mask": True}, "conv2": SPECS["ternary"], "conv3": SPECS["int4"]}
    return state, specs


def test_old_artifacts_written_sparse_still_load(tmp_path):
    state, specs = old_state()
    old = old_encode(state, specs)
    new = codec.encode_state(state, specs)
    assert {"conv1.weight::mask", "conv2.weight::mask", "conv3.weight::mask"} <= set(old)
    assert not any(k.endswith("::mask") for k in new)  # the score charges all three dense
    assert payload_bits(new) < payload_bits(old)
    path = tmp_path / "old.safetensors"
    manifest = new_manifest("quantize", arch={"name": "test-cnn", "args": {}}, compression={"layers": specs})
    save_artifact(path, old, manifest)
    bundle = load_bundle(path)
    loaded = bundle.model.state_dict()
    for name, value in state.items():
        assert torch.equal(loaded[name], value), name
    assert set(load_artifact(path)[0]) == set(old)


def test_where_the_forms_agree_the_bytes_are_the_old_ones():
    """No zero, or sparse by the rule: the file is byte for byte what it was before the dense form."""
    state, specs = old_state()
    g = torch.Generator().manual_seed(2)
    state["conv1.weight"] = torch.randn(state["conv1.weight"].shape, generator=g)  # no zero
    for name, kept in (("conv2.weight", 0.3), ("conv3.weight", 0.4)):  # sparse by the rule
        state[name] = state[name] * (torch.rand(state[name].shape, generator=g) < kept)
    new, old = codec.encode_state(state, specs), old_encode(state, specs)
    assert {"conv2.weight::mask", "conv3.weight::mask"} <= set(new) and "conv1.weight" in new
    assert set(new) == set(old)
    for key, value in old.items():
        assert torch.equal(new[key], value.to(new[key].dtype)), key
