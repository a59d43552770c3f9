"""The codec: deployable storage that decodes to exactly the values encoded, and refuses weights
that contradict their spec."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mncli.artifact import codec, pack_bits
from mncli.errors import BadInput

SHAPES = [(6, 3, 3, 3), (10, 7), (4, 4, 1, 1), (3, 5, 2, 2)]


def sparse_weight(g, shape, sparsity):
    w = torch.randn(shape, generator=g)
    return w * (torch.rand(shape, generator=g) >= sparsity)


def ternary_weight(g, shape, sparsity, wp, wn):
    r = torch.rand(shape, generator=g)
    sign = torch.rand(shape, generator=g) < 0.5
    w = torch.where(sign, torch.tensor(wp), torch.tensor(-wn))
    return torch.where(r < sparsity, torch.tensor(0.0), w)


def int_weight(g, shape, bits, per_channel, sparsity):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, shape, generator=g)
    codes = codes * (torch.rand(shape, generator=g) >= sparsity)
    scale_shape = (shape[0],) + (1,) * (len(shape) - 1) if per_channel else (1,)
    scale = torch.rand(scale_shape, generator=g) * 0.1 + 1e-3
    return codes.float() * scale, scale


def assert_same_state(decoded, original):
    assert set(decoded) == set(original)
    for k, v in original.items():
        assert decoded[k].dtype == v.dtype and decoded[k].shape == v.shape, k
        assert torch.equal(decoded[k], v), k


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from(SHAPES),
    sparsity=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    bits=st.integers(2, 8),
    per_channel=st.booleans(),
)
def test_round_trip_is_exact(seed, shape, sparsity, bits, per_channel):
    g = torch.Generator().manual_seed(seed)
    wp, wn = (float(torch.rand((), generator=g)) + 0.01 for _ in range(2))
    wq, scale = int_weight(g, shape, bits, per_channel, sparsity)
    w16 = sparse_weight(g, shape, sparsity).half().float()
    state = {
        "pruned.weight": sparse_weight(g, shape, sparsity),
        "pruned.bias": torch.randn(shape[0], generator=g),
        "tern.weight": ternary_weight(g, shape, sparsity, wp, wn),
        "quant.weight": wq,
        "quant.weight_scale": scale,
        "half.weight": w16,
        "bn.weight": torch.ones(shape[0]),
        "bn.running_var": torch.rand(shape[0], generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
        "tern.act_quant.scale": torch.tensor(0.25),
    }
    wp32, wn32 = float(torch.tensor(wp)), float(torch.tensor(wn))
    specs = {
        "pruned": {"weight": {"format": "float", "bits": 32}, "mask": True},
        "tern": {"weight": {"format": "ternary", "bits": 2, "wp": wp32, "wn": wn32}, "act": {"bits": 4}},
        "quant": {"weight": {"format": "int", "bits": bits, "per_channel": per_channel}},
        "half": {"weight": {"format": "float", "bits": 16}},
    }
    stored = codec.encode_state(state, specs)
    assert not any(k in stored for k in ("tern.weight", "quant.weight", "quant.weight_scale"))
    assert_same_state(codec.decode_state(stored, specs), state)


def test_ternary_storage_is_the_micronet_charge():
    g = torch.Generator().manual_seed(0)
    w = ternary_weight(g, (16, 8, 3, 3), 0.6, 0.5, 0.25)
    n, nnz = w.numel(), int((w != 0).sum())
    spec = {"t": {"weight": {"format": "ternary", "bits": 2, "wp": 0.5, "wn": 0.25}}}
    stored = codec.encode_state({"t.weight": w}, spec)
    payload_bits = 8 * sum(
        v.numel() * v.element_size() for k, v in stored.items() if not k.endswith("::shape")
    )
    assert payload_bits == 8 * math.ceil(n / 8) + 8 * math.ceil(2 * nnz / 8) + 64
    assert sorted(stored) == [f"t.weight::{p}" for p in ("codes", "mask", "shape", "wn", "wp")]
    # codes of the non-zeros in order: 1 = +wp, 2 = -wn
    nz = w.reshape(-1)[w.reshape(-1) != 0]
    assert torch.equal(stored["t.weight::codes"], pack_bits(torch.where(nz > 0, 1, 2), 2))


def test_dense_ternary_has_no_mask_and_dense_float_stays_as_is():
    w = torch.tensor([[0.5, -0.25], [0.5, 0.5]])
    stored = codec.encode_state(
        {"t.weight": w, "f.weight": torch.randn(3, 3)}, {"t": {"weight": {"format": "ternary", "bits": 2}}}
    )
    assert "t.weight::mask" not in stored and stored["t.weight::codes"].numel() == 1
    assert float(stored["t.weight::wp"]) == 0.5 and float(stored["t.weight::wn"]) == 0.25
    assert "f.weight" in stored and stored["f.weight"].dtype == torch.float32


def test_int_storage_sizes_and_offset_codes():
    w = torch.tensor([[-8.0, 0.0, 7.0, 1.0, 0.0, 0.0, 0.0, 0.0]]) * 0.5
    spec = {"q": {"weight": {"format": "int", "bits": 4}}}
    stored = codec.encode_state({"q.weight": w, "q.weight_scale": torch.tensor([0.5])}, spec)
    # sparse: 3 codes * 4 bits + an 8-bit mask = 20 bits < 32 dense
    assert stored["q.weight::mask"].tolist() == [0b1101]
    assert stored["q.weight::codes"].tolist() == [0 | 15 << 4, 9]  # codes -8, 7, 1 offset by 8
    assert torch.equal(stored["q.weight::scale"], torch.tensor([0.5]))
    # the first four alone: dense 16 bits ties sparse 12 + 4, so dense, the zero code (8) included
    stored = codec.encode_state({"q.weight": w[:, :4], "q.weight_scale": torch.tensor([0.5])}, spec)
    assert "q.weight::mask" not in stored and stored["q.weight::codes"].tolist() == [0 | 8 << 4, 15 | 9 << 4]


def test_sparse_float_auto_and_fp16_values():
    w = torch.tensor([[0.0, 1.5], [0.0, -2.0]])
    stored = codec.encode_state({"a.weight": w, "a.bias": torch.zeros(2)}, {})
    assert stored["a.weight::values"].tolist() == [1.5, -2.0] and "a.bias" in stored  # biases never masked
    stored = codec.encode_state({"a.weight": w}, {"a": {"weight": {"format": "float", "bits": 16}}})
    assert stored["a.weight::values"].dtype == torch.float16
    decoded = codec.decode_state(stored, {"a": {"weight": {"format": "float", "bits": 16}}})
    assert decoded["a.weight"].dtype == torch.float32 and torch.equal(decoded["a.weight"], w)


TERN = {"t": {"weight": {"format": "ternary", "bits": 2, "wp": 0.5, "wn": 0.25}}}


@pytest.mark.parametrize(
    "state, specs, message",
    [
        (
            {"t.weight": torch.tensor([[0.5, -0.25, 0.1, 0.2]])},
            TERN,
            "layer t: ternary weight has 4 distinct values, at most 3",
        ),
        ({"t.weight": torch.tensor([[0.5, -0.3]])}, TERN, "layer t: ternary weight holds values outside"),
        (
            {"t.weight": torch.tensor([[0.5, 0.4, -0.3]])},
            {"t": {"weight": {"format": "ternary", "bits": 2}}},
            "layer t",
        ),
        (
            {"q.weight": torch.tensor([[0.3, 0.5]]), "q.weight_scale": torch.tensor([0.5])},
            {"q": {"weight": {"format": "int", "bits": 4}}},
            "layer q: 1 of 2 values are off the 4-bit grid",
        ),
        (
            {"q.weight": torch.tensor([[8.0]]), "q.weight_scale": torch.tensor([1.0])},
            {"q": {"weight": {"format": "int", "bits": 4}}},
            "off the 4-bit grid",
        ),
        (
            {"q.weight": torch.tensor([[1.0]])},
            {"q": {"weight": {"format": "int", "bits": 4}}},
            "q.weight_scale",
        ),
        (
            {"q.weight": torch.ones(2, 3), "q.weight_scale": torch.ones(1)},
            {"q": {"weight": {"format": "int", "bits": 4, "per_channel": True}}},
            "per-channel scale has 2",
        ),
        (
            {"q.weight": torch.ones(2, 3), "q.weight_scale": torch.ones(1)},
            {"q": {"weight": {"format": "int", "bits": 12}}},
            "2 to 8 bits",
        ),
        (
            {"h.weight": torch.tensor([[0.1]])},
            {"h": {"weight": {"format": "float", "bits": 16}}},
            "fp16 cannot",
        ),
        (
            {"h.weight": torch.tensor([[0.1]])},
            {"h": {"weight": {"format": "float", "bits": 8}}},
            "unknown weight",
        ),
        ({}, TERN, "no t.weight"),
        ({"a::b": torch.ones(1)}, {}, "reserve"),
    ],
)
def test_contradictions_are_bad_input(state, specs, message):
    with pytest.raises(BadInput, match=message.replace("*", r"\*")):
        codec.encode_state(state, specs)


def test_malformed_storage_is_bad_input():
    w = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    stored = codec.encode_state({"a.weight": w}, {})
    broken = {**stored, "a.weight::values": torch.ones(3)}
    with pytest.raises(BadInput, match="malformed stored weight 'a.weight'"):
        codec.decode_state(broken, {})
    with pytest.raises(BadInput, match="no int spec"):
        codec.decode_state(
            {
                "q.weight::shape": torch.tensor([1]),
                "q.weight::codes": torch.zeros(1, dtype=torch.uint8),
                "q.weight::scale": torch.ones(1),
            },
            {},
        )
    with pytest.raises(BadInput, match="no shape"):
        codec.decode_state({"a.weight::values": torch.ones(1)}, {})


def test_negative_zero_comes_back_as_zero_and_nan_survives():
    w = torch.tensor([[-0.0, float("nan")], [1.0, 0.0]])
    decoded = codec.decode_state(codec.encode_state({"a.weight": w}, {}), {})["a.weight"]
    assert decoded[0, 0] == 0 and torch.isnan(decoded[0, 1]) and decoded[1].tolist() == [1.0, 0.0]
