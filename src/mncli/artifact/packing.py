"""Sub-byte codes packed into uint8: row-major, least significant bits first.

Element i of a flattened code tensor occupies bits [i*b, (i+1)*b) of one bit stream, and bit k of the
stream is bit (k % 8) of byte k // 8; the stream is the little-endian integer sum(code_i << (i*b)).
`ceil(numel * b / 8)` bytes, the last one padded with zero bits. b is any width from 1 to 8.
"""

from __future__ import annotations

import torch

# Elements per step; a multiple of 8 so each step fills whole bytes for every width.
_CHUNK = 1 << 20


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")


def packed_size(numel: int, bits: int) -> int:
    """Bytes that `numel` codes of `bits` bits take."""
    return (numel * bits + 7) // 8


def _bit_weights(bits: int) -> torch.Tensor:
    return torch.arange(bits, dtype=torch.uint8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) into a 1-D uint8 tensor of packed_size(numel, bits) bytes."""
    _check_bits(bits)
    flat = codes.detach().cpu().reshape(-1)
    if flat.dtype.is_floating_point or flat.dtype == torch.bool and bits != 1:
        raise ValueError(f"codes must be an integer tensor, got {flat.dtype}")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing")
    flat = flat.to(torch.uint8)
    if bits == 8:
        return flat.clone()
    out = torch.empty(packed_size(flat.numel(), bits), dtype=torch.uint8)
    shifts, byte_shifts = _bit_weights(bits), _bit_weights(8)
    for start in range(0, flat.numel(), _CHUNK):
        part = flat[start : start + _CHUNK]
        stream = ((part.unsqueeze(1) >> shifts) & 1).reshape(-1)
        stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
        first = start * bits // 8
        out[first : first + stream.numel() // 8] = (stream.view(-1, 8) << byte_shifts).sum(
            1, dtype=torch.uint8
        )
    return out


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The `numel` codes (uint8, 1-D) that `pack_bits(codes, bits)` packed."""
    _check_bits(bits)
    packed = packed.detach().cpu().reshape(-1)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.numel() != packed_size(numel, bits):
        raise ValueError(
            f"{numel} codes of {bits} bits take {packed_size(numel, bits)} bytes, got {packed.numel()}"
        )
    if bits == 8:
        return packed.clone()
    out = torch.empty(numel, dtype=torch.uint8)
    shifts, byte_shifts = _bit_weights(bits), _bit_weights(8)
    for start in range(0, numel, _CHUNK):
        count = min(_CHUNK, numel - start)
        first = start * bits // 8
        chunk = packed[first : first + packed_size(count, bits)]
        stream = ((chunk.unsqueeze(1) >> byte_shifts) & 1).reshape(-1)[: count * bits]
        out[start : start + count] = (stream.view(count, bits) << shifts).sum(1, dtype=torch.uint8)
    return out
