"""Sub-byte packing: the documented bit layout and exact round trips for every width 1..8."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mncli.artifact import pack_bits, unpack_bits
from mncli.artifact.packing import packed_size


def reference_pack(codes: list[int], bits: int) -> list[int]:
    """The format's definition: the little-endian integer sum(code_i << (i * bits))."""
    stream = sum(c << (i * bits) for i, c in enumerate(codes))
    return list(stream.to_bytes(packed_size(len(codes), bits), "little"))


def test_known_layouts():
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 0b1]
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_bits(torch.tensor([7, 1, 2]), 3).tolist() == [7 | 1 << 3 | (2 & 1) << 6 | (2 >> 1) << 7, 0]
    assert pack_bits(torch.tensor([0xA, 0x5, 0xF]), 4).tolist() == [0x5A, 0x0F]
    assert pack_bits(torch.tensor([200, 3]), 8).tolist() == [200, 3]


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_round_trip_matches_reference(bits, data):
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=70))
    packed = pack_bits(torch.tensor(codes, dtype=torch.uint8), bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.tolist() == reference_pack(codes, bits)
    assert unpack_bits(packed, bits, len(codes)).tolist() == codes


@pytest.mark.parametrize("bits", range(1, 9))
def test_large_multichunk_round_trip(bits, monkeypatch):
    import mncli.artifact.packing as packing

    monkeypatch.setattr(packing, "_CHUNK", 64)  # many chunks, including a ragged last one
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 1 << bits, (1000 + bits,), generator=g, dtype=torch.uint8)
    packed = pack_bits(codes.reshape(10, -1) if codes.numel() % 10 == 0 else codes, bits)
    assert packed.numel() == packed_size(codes.numel(), bits)
    assert torch.equal(unpack_bits(packed, bits, codes.numel()), codes)
    assert packed.tolist() == reference_pack(codes.tolist(), bits)


def test_mask_from_bool_and_wider_integer_dtypes():
    mask = torch.tensor([[True, False, True], [False, False, True]])
    assert pack_bits(mask, 1).tolist() == [0b100101]
    assert pack_bits(torch.tensor([3, 1], dtype=torch.int64), 2).tolist() == [0b0111]


def test_empty_and_errors():
    assert pack_bits(torch.zeros(0, dtype=torch.uint8), 3).numel() == 0
    assert unpack_bits(torch.zeros(0, dtype=torch.uint8), 3, 0).numel() == 0
    with pytest.raises(ValueError, match="lie in"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="lie in"):
        pack_bits(torch.tensor([-1]), 8)
    with pytest.raises(ValueError, match="integer"):
        pack_bits(torch.tensor([1.0]), 2)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match="take 2 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 5)
