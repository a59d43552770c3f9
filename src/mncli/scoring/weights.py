"""What a weight tensor really is: its format read from the layer spec and checked against the values,
or (with `--infer`) derived from the values alone; and how many bits storing it costs by the rules
(mncli.storage, the rule the artifact's codec stores by too).

Integer weights of a grid of L levels that is not a power of two (fractional bits: `{"format": "int",
"bits": 2.5, "levels": 5}`) are charged as the codec packs them: k codes in one base-L number of g bits
(5 levels: 3 codes in 7 bits), ceil(count / k) * g bits for `count` codes, and multiply at g / k bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mncli.errors import BadInput
from mncli.storage import bits_per_code, code_bits, smaller_form, spec_levels, storage_form

SCALE_BITS = 32
# Off-grid tolerance in units of the step: float32 code*scale is exact to ~1e-7 relative, so even
# 16-bit codes sit within 1e-2 of their grid point, and random values almost never do.
_GRID_TOL = 1e-2
_MAX_LEVELS = 2**16


@dataclass
class WeightFormat:
    format: str  # "float", "int" or "ternary"
    bits: int | float  # a float only for int codes of fractional bits
    n_scales: int = 0  # quantizer scales stored beside the codes (ternary: wp and wn)
    inferred: bool = False
    levels: int | None = None  # int codes of fractional bits: levels of the grid, floor(2**bits)

    @property
    def label(self) -> str:
        if self.format == "ternary":
            return "ternary"
        return f"{'fp' if self.format == 'float' else 'int'}{self.bits:g}"

    @property
    def fractional(self) -> bool:
        """Int codes of fractional bits, packed in base-L groups (mncli.storage.code_group)."""
        return self.format == "int" and self.levels is not None

    @property
    def value_bits(self) -> int | float:
        """Bits a value costs: packed bits per code of fractional int codes (7/3 for 5 levels), else
        `bits`."""
        return bits_per_code(self.levels) if self.fractional else self.bits


def weight_storage(
    n: int, nnz: int, fmt: WeightFormat, *, value_bits: int, ternary_storage: str
) -> tuple[int, str]:
    """(bits, form) of one weight tensor stored in the smaller of two forms: "dense", `n*b`, or
    "sparse", the non-zeros `nnz*b` plus a 1-bit mask over all `n` (dense on a tie). Ternary codes:
    codes2 (official) 2 bits a code, sparse `2*nnz + n`; sign1 (EC2T) sparse `nnz + n`, the mask saying
    non-zero and 1 bit the sign, dense `2*n` (three states need 2 bits); dense2 (MIT) `2*n` whatever the
    zeros. Int codes of fractional bits: packed in base-L groups (mncli.storage.code_bits). Plus the
    quantizer scales at 32 bits."""
    if fmt.format == "ternary" and ternary_storage == "dense2":
        bits, form = 2 * n, "dense"
    elif fmt.format == "ternary" and ternary_storage == "sign1":
        bits, form = smaller_form(2 * n, nnz + n)
    elif fmt.format == "ternary":
        bits, form = storage_form(n, nnz, lambda count: 2 * count)
    elif fmt.fractional:
        bits, form = storage_form(n, nnz, lambda count: code_bits(count, fmt.levels))
    else:
        bits, form = storage_form(n, nnz, lambda count: count * value_bits)
    return bits + fmt.n_scales * SCALE_BITS, form


def fp16_exact(weight: torch.Tensor) -> bool:
    """Every value is an fp16 value."""
    values = weight.detach().float()
    return torch.equal(values.half().float(), values)


def _unique_sorted(values: torch.Tensor, limit: int) -> torch.Tensor | None:
    """Distinct values, or None when there are more than `limit` of them."""
    distinct = torch.unique(values.detach().float().reshape(-1))
    return None if distinct.numel() > limit else distinct


def grid_levels(distinct: torch.Tensor) -> int | None:
    """Levels of the uniform grid (step, offset) holding every distinct value, or None if none fits.

    The step is the smallest gap between neighbours, or an integer fraction of it (codes may skip)."""
    if distinct.numel() <= 1:
        return 1
    values = distinct.double()
    gaps = values[1:] - values[:-1]
    smallest = float(gaps.min())
    span = float(values[-1] - values[0])
    for divisor in range(1, 17):
        step = smallest / divisor
        if span / step > _MAX_LEVELS:
            return None
        positions = (values - values[0]) / step
        if float((positions - positions.round()).abs().max()) <= _GRID_TOL:
            return int(round(span / step)) + 1
    return None


def _ternary_values(distinct: torch.Tensor) -> tuple[float, float] | None:
    """(wp, wn) when the values are within {-wn, 0, +wp}."""
    if distinct.numel() > 3:
        return None
    pos = distinct[distinct > 0]
    neg = distinct[distinct < 0]
    if pos.numel() > 1 or neg.numel() > 1:
        return None
    return (float(pos[0]) if pos.numel() else 0.0, float(-neg[0]) if neg.numel() else 0.0)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-12)


def _int_levels(
    weight: torch.Tensor, scale: torch.Tensor | None, per_channel: bool, limit: int
) -> int | None:
    """Grid levels needed (the worst channel when per channel), or None when off grid / too many values."""
    if scale is not None:
        scale = scale.detach().float()
        codes = torch.round(weight.detach().float() / scale)
        if not torch.allclose(codes * scale, weight.detach().float(), rtol=1e-5, atol=0.0):
            return None
        rows = codes.reshape(codes.shape[0], -1) if per_channel else codes.reshape(1, -1)
        return int((rows.amax(1) - rows.amin(1)).max()) + 1
    rows = weight.reshape(weight.shape[0], -1) if per_channel else weight.reshape(1, -1)
    worst = 1
    for row in rows:
        distinct = _unique_sorted(row, limit)
        levels = None if distinct is None else grid_levels(distinct)
        if levels is None:
            return None
        worst = max(worst, levels)
    return worst


def _int_claim(layer: str, claim: dict) -> tuple[int | float, int | None]:
    """(bits, levels) of an int claim, levels None for whole bits (2**bits); BadInput unless 1-16 bits
    with `levels`, when given, floor(2**bits)."""
    bits = claim.get("bits", 32)
    if isinstance(bits, bool) or not isinstance(bits, int | float) or not 1 <= bits <= 16:
        raise BadInput(f"layer {layer}: integer weights of {bits} bits are not supported (1-16)")
    try:
        levels = spec_levels(bits, claim.get("levels"))
    except ValueError as exc:
        raise BadInput(f"layer {layer}: {exc}", hint="levels = floor(2**bits), or leave levels out") from None
    return (int(bits), None) if float(bits).is_integer() else (bits, levels)


def check_claim(layer: str, spec: dict, weight: torch.Tensor, scale: torch.Tensor | None) -> WeightFormat:
    """The format a layer's spec claims, verified against its values; BadInput on a contradiction."""
    claim = spec.get("weight") or {"format": "float", "bits": 32}
    kind = str(claim.get("format", "float"))
    if kind == "int":
        return _check_int(layer, claim, weight, scale)
    bits = int(claim.get("bits", 32))
    if kind == "float":
        if bits not in (16, 32):
            raise BadInput(f"layer {layer}: float weights of {bits} bits are not a format (16 or 32)")
        if bits == 16 and not fp16_exact(weight):
            raise BadInput(f"layer {layer} claims fp16 weights but holds values fp16 cannot represent")
        return WeightFormat("float", bits)
    if kind == "ternary":
        distinct = _unique_sorted(weight, 3)
        found = None if distinct is None else _ternary_values(distinct)
        if found is None:
            count = torch.unique(weight.detach()).numel()
            raise BadInput(
                f"layer {layer} claims ternary weights but holds {count} distinct values",
                hint="a ternary layer holds only -wn, 0 and +wp; re-run ternarize or score with --infer",
            )
        for key, value in zip(("wp", "wn"), found, strict=True):
            if key in claim and value and not _close(float(claim[key]), value):
                raise BadInput(f"layer {layer}: spec says {key}={claim[key]} but the weights hold {value:g}")
        return WeightFormat("ternary", 2, n_scales=2)
    raise BadInput(f"layer {layer}: unknown weight format {kind!r}", hint="float, int or ternary")


def _check_int(layer: str, claim: dict, weight: torch.Tensor, scale: torch.Tensor | None) -> WeightFormat:
    """An int claim verified: the values on one grid of at most L levels (per channel when so)."""
    bits, levels = _int_claim(layer, claim)
    allowed = levels if levels is not None else 1 << int(bits)
    per_channel = bool(claim.get("per_channel", False))
    found = _int_levels(weight, scale, per_channel, allowed)
    if found is None or found > allowed:
        raise BadInput(
            f"layer {layer} claims {bits:g}-bit integer weights but its values are not on one grid of "
            f"{allowed} levels" + (" per channel" if per_channel else ""),
            hint="re-run quantize, or score with --infer to see what the values really are",
        )
    n_scales = int(scale.numel()) if scale is not None else (int(weight.shape[0]) if per_channel else 1)
    return WeightFormat("int", bits, n_scales=n_scales, levels=levels)


def infer_format(weight: torch.Tensor) -> WeightFormat:
    """The cheapest format the values fit: ternary, int 2..8 (per tensor, then per channel), fp16, fp32."""
    distinct = _unique_sorted(weight, 256)
    if distinct is not None:
        if distinct.numel() > 1 and _ternary_values(distinct) is not None:
            return WeightFormat("ternary", 2, n_scales=2, inferred=True)
        levels = grid_levels(distinct)
        if levels is not None and levels <= 256:
            bits = max(2, (levels - 1).bit_length())
            return WeightFormat("int", bits, n_scales=1, inferred=True)
    if weight.dim() > 1 and weight.shape[0] > 1:
        levels = _int_levels(weight, None, True, 256)
        if levels is not None and levels <= 256:
            bits = max(2, (levels - 1).bit_length())
            return WeightFormat("int", bits, n_scales=int(weight.shape[0]), inferred=True)
    if fp16_exact(weight):
        return WeightFormat("float", 16, inferred=True)
    return WeightFormat("float", 32, inferred=True)


def claimed_format(spec: dict | None, weight_shape: tuple[int, ...], layer: str) -> WeightFormat:
    """The claimed format without values to check (architecture-only scoring)."""
    claim = (spec or {}).get("weight") or {"format": "float", "bits": 32}
    kind = str(claim.get("format", "float"))
    if kind == "ternary":
        return WeightFormat("ternary", 2, n_scales=2)
    if kind == "int":
        bits, levels = _int_claim(layer, claim)
        per_channel = bool(claim.get("per_channel", False))
        return WeightFormat("int", bits, n_scales=int(weight_shape[0]) if per_channel else 1, levels=levels)
    bits = int(claim.get("bits", 32))
    if kind != "float":
        raise BadInput(f"unknown weight format {kind!r}", hint="float, int or ternary")
    return WeightFormat("float", bits)
