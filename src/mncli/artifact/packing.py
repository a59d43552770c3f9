"""Codes packed into uint8: row-major, least significant bits first.

Element i of a flattened code tensor occupies bits [i*b, (i+1)*b) of one bit stream, and bit k of the
stream is bit (k % 8) of byte k // 8; the stream is the little-endian integer sum(code_i << (i*b)).
`ceil(numel * b / 8)` bytes, the last one padded with zero bits. `pack_bits` takes any width b from 1
to 8.

Codes of L levels (`pack_levels`, mncli.storage.code_group): a power of two L is `pack_bits` at log2 L
bits. Any other L groups k codes, in order, as the base-L integer sum(code_j * L**j) (the first code
the lowest digit; the last group padded with zero codes), and packs those groups as above at the
group's g bits (up to 32): ceil(ceil(numel / k) * g / 8) bytes.
"""

from __future__ import annotations

import torch

from mncli.storage import code_group

# Elements per step for widths up to 8; a multiple of 8 so each step fills whole bytes for every width.
_CHUNK = 1 << 20


def _check_bits(bits: int, top: int = 8) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= top:
        raise ValueError(f"bits must be an integer from 1 to {top}, got {bits!r}")


def packed_size(numel: int, bits: int) -> int:
    """Bytes that `numel` codes of `bits` bits take."""
    return (numel * bits + 7) // 8


def _step(bits: int) -> int:
    """Elements per step: _CHUNK up to 8 bits (uint8 while unpacking the bits); wider codes go through
    int64, so fewer, a multiple of 8, about _CHUNK stream bits a step."""
    return _CHUNK if bits <= 8 else max(8, _CHUNK // bits // 8 * 8)


def _pack_stream(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """The bit stream of the values `flat` (uint8 up to 8 bits, int64 above) at `bits` bits each."""
    if bits == 8:
        return flat.to(torch.uint8).clone()
    out = torch.empty(packed_size(flat.numel(), bits), dtype=torch.uint8)
    shifts, byte_shifts = torch.arange(bits, dtype=flat.dtype), torch.arange(8, dtype=torch.uint8)
    step = _step(bits)
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step]
        stream = ((part.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
        stream = torch.cat([stream, stream.new_zeros(-stream.numel() % 8)])
        first = start * bits // 8
        out[first : first + stream.numel() // 8] = (stream.view(-1, 8) << byte_shifts).sum(
            1, dtype=torch.uint8
        )
    return out


def _unpack_stream(packed: torch.Tensor, bits: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The `numel` values of `bits` bits (as `dtype`) that `_pack_stream` packed."""
    if packed.numel() != packed_size(numel, bits):
        raise ValueError(
            f"{numel} codes of {bits} bits take {packed_size(numel, bits)} bytes, got {packed.numel()}"
        )
    if bits == 8:
        return packed.to(dtype).clone()
    out = torch.empty(numel, dtype=dtype)
    shifts, byte_shifts = torch.arange(bits, dtype=dtype), torch.arange(8, dtype=torch.uint8)
    step = _step(bits)
    for start in range(0, numel, step):
        count = min(step, numel - start)
        first = start * bits // 8
        chunk = packed[first : first + packed_size(count, bits)]
        stream = ((chunk.unsqueeze(1) >> byte_shifts) & 1).reshape(-1)[: count * bits]
        out[start : start + count] = (stream.view(count, bits).to(dtype) << shifts).sum(1, dtype=dtype)
    return out


def _integer_codes(codes: torch.Tensor, top: int) -> torch.Tensor:
    """`codes` flattened on the CPU; ValueError unless integers in [0, top)."""
    flat = codes.detach().cpu().reshape(-1)
    if flat.dtype.is_floating_point or flat.dtype.is_complex:
        raise ValueError(f"codes must be an integer tensor, got {flat.dtype}")
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= top):
        raise ValueError(f"codes must lie in [0, {top - 1}]")
    return flat


def _packed_bytes(packed: torch.Tensor) -> torch.Tensor:
    packed = packed.detach().cpu().reshape(-1)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    return packed


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) into a 1-D uint8 tensor of packed_size(numel, bits) bytes."""
    _check_bits(bits)
    if codes.dtype == torch.bool and bits != 1:
        raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
    try:
        flat = _integer_codes(codes, 1 << bits)
    except ValueError as exc:
        raise ValueError(f"{exc} for {bits}-bit packing") from None
    return _pack_stream(flat.to(torch.uint8), bits)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The `numel` codes (uint8, 1-D) that `pack_bits(codes, bits)` packed."""
    _check_bits(bits)
    return _unpack_stream(_packed_bytes(packed), bits, numel, torch.uint8)


def levels_size(numel: int, levels: int) -> int:
    """Bytes that `numel` codes of `levels` levels take, packed."""
    k, g = code_group(levels)
    return packed_size(-(-numel // k), g)


def pack_levels(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Pack integer codes in [0, levels) into a 1-D uint8 tensor of levels_size(numel, levels) bytes:
    k codes per base-`levels` group of g bits (the module doc); `pack_bits` when k is 1."""
    k, g = code_group(levels)
    flat = _integer_codes(codes, levels)
    if k == 1:
        return _pack_stream(flat.to(torch.uint8 if g <= 8 else torch.int64), g)
    digits = torch.cat([flat.to(torch.int64), flat.new_zeros(-flat.numel() % k, dtype=torch.int64)])
    powers = torch.tensor([levels**j for j in range(k)], dtype=torch.int64)
    return _pack_stream((digits.view(-1, k) * powers).sum(1), g)


def unpack_levels(packed: torch.Tensor, levels: int, numel: int) -> torch.Tensor:
    """The `numel` codes (int64, 1-D) that `pack_levels(codes, levels)` packed; ValueError when a group
    holds a number beyond levels**k (no codes of that many levels packed it)."""
    k, g = code_group(levels)
    packed = _packed_bytes(packed)
    groups = _unpack_stream(packed, g, -(-numel // k), torch.int64 if g > 8 or k > 1 else torch.uint8)
    if k == 1:
        if groups.numel() and int(groups.max()) >= levels:
            raise ValueError(f"a code beyond {levels} levels")
        return groups.to(torch.int64)
    if groups.numel() and int(groups.max()) >= levels**k:
        raise ValueError(f"a group of {k} codes beyond {levels}**{k}")
    powers = torch.tensor([levels**j for j in range(k)], dtype=torch.int64)
    return (groups.unsqueeze(1) // powers % levels).reshape(-1)[:numel]
