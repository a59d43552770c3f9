"""How many bits a weight tensor takes, by one rule the file format (mncli.artifact.codec) and the
score (mncli.scoring.weights) share, so an artifact holds each weight in exactly the form, and at
exactly the bits, the score charges.

Dense or sparse: a tensor of n values, nnz of them non-zero, whose values take `bits_of(count)` bits,
is stored dense, `bits_of(n)`, or sparse, `bits_of(nnz) + n` (the non-zeros and a 1-bit mask over all
n), whichever is smaller; dense on a tie.

Integer codes of L levels: L a power of two packs each code in log2 L bits. Any other L (fractional
bits: 2.5 bits is a grid of 5 levels) packs k codes as one base-L integer of g = ceil(k * log2 L)
bits, the k <= 20 (with g <= 32) that spends the fewest bits per code, the smallest such k on a tie:
5 levels put 3 codes in 7 bits (2.333 bits a code). n codes take ceil(n / k) * g bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

MAX_GROUP_CODES = 20
MAX_GROUP_BITS = 32
# 2**b of a fractional b is rounded up by this much before the floor, so that b = log2(L) written as
# a float (log2(3) = 1.58496...) gives L and not L - 1.
_LEVELS_SLACK = 1e-9


def smaller_form(dense: int, sparse: int) -> tuple[int, str]:
    """(bits, "dense" or "sparse"): the smaller of the two, dense on a tie."""
    return (sparse, "sparse") if sparse < dense else (dense, "dense")


def storage_form(n: int, nnz: int, bits_of: Callable[[int], int]) -> tuple[int, str]:
    """(bits, form) of n values with nnz non-zeros: dense `bits_of(n)` or sparse `bits_of(nnz) + n`."""
    return smaller_form(bits_of(n), bits_of(nnz) + n)


def levels_for_bits(bits: float) -> int:
    """Levels of a b-bit integer grid: 2**b for whole bits, floor(2**b) for fractional ones (2.5 -> 5,
    2.4 -> 5): a uniform grid of that many codes.

    Distiller's linear quantizers take a fractional num_bits too, but put the clamp bound at the
    non-integer 2**(b-1) - 1 (1.83 for 2.5 bits) after rounding, so values that round beyond it land on
    an extra level off the uniform grid (1.83 * step beside -2, -1, 0, 1 steps). Here every level is
    on the grid: code * scale with integer codes."""
    if isinstance(bits, bool) or not isinstance(bits, int | float) or not math.isfinite(bits) or bits <= 0:
        raise ValueError(f"bits must be a positive number, got {bits!r}")
    if float(bits).is_integer():
        return 1 << int(bits)
    return math.floor(2.0**bits + _LEVELS_SLACK)


def spec_levels(bits: float, levels: object = None) -> int:
    """The levels of an int weight spec {"bits": b, "levels": L?}: L = levels_for_bits(b); a `levels`
    given must be that number (ValueError otherwise)."""
    expected = levels_for_bits(bits)
    if levels is None:
        return expected
    if isinstance(levels, bool) or not isinstance(levels, int) or levels != expected:
        raise ValueError(f"{bits:g}-bit int weights have {expected} levels, the spec says levels {levels!r}")
    return expected


@cache
def code_group(levels: int) -> tuple[int, int]:
    """(k, g): k codes of `levels` levels packed as one base-`levels` integer of g bits (module doc)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer of at least 2, got {levels!r}")
    best: tuple[int, int] | None = None
    for k in range(1, MAX_GROUP_CODES + 1):
        g = (levels**k - 1).bit_length()  # the smallest g with 2**g >= levels**k
        if g > MAX_GROUP_BITS:
            break
        if best is None or g * best[0] < best[1] * k:
            best = (k, g)
    if best is None:
        raise ValueError(f"{levels} levels do not fit a code of {MAX_GROUP_BITS} bits")
    return best


def code_bits(count: int, levels: int) -> int:
    """Bits of `count` codes of `levels` levels, packed: ceil(count / k) * g."""
    k, g = code_group(levels)
    return -(-count // k) * g


def bits_per_code(levels: int) -> int | float:
    """g / k: log2 L for a power of two (an int), else the packed bits a code costs (a float)."""
    k, g = code_group(levels)
    return g if k == 1 else g / k


def code_range(levels: int) -> tuple[int, int]:
    """(lowest, highest) signed code of a grid of `levels` levels: -(L // 2) .. (L - 1) // 2, i.e.
    two's complement for a power of two (-8..7 at 4 bits) and symmetric for odd L (-2..2 for 5)."""
    return -(levels // 2), (levels - 1) // 2
