"""The deployable form of a state dict: what `encode_state` stores and `decode_state` gives back.

Specs are keyed by module name (docs/architecture.md); a layer's weight is f"{module}.weight". A weight
W of 2+ dims is stored in one of two forms, the smaller by the rule the score charges
(mncli.storage.storage_form, under the official conventions; dense on a tie):

  dense     every element: n values
  sparse    W::shape (int64), W::mask (1 bit per element, packed), and only the non-zero elements:
            nnz values + n mask bits

and its values, by format, as the tensors named W::part:

  float, 32 bits      dense: W as is; sparse: W::shape, W::mask, W::values (the non-zeros)
  float, 16 bits      the same with float16 values (the weight must hold fp16-representable values);
                      decoded back to float32 exactly
  ternary (2 bits)    W::shape, W::mask (sparse only), W::codes (2-bit codes: 1 = +wp, 2 = -wn, and in
                      the dense form 0 = zero), W::wp, W::wn (0-d, weight dtype). Dense 2n bits,
                      sparse n + 2*nnz, plus two scales: the official MicroNet charge.
  int, b = 2..8 bits  W::shape, W::mask (sparse only), W::codes (the codes of a grid of L levels,
                      L = 2**b, or floor(2**b) for fractional bits (mncli.storage.levels_for_bits; the
                      spec's `levels`), stored as code + L // 2 in [0, L); the zero code too when
                      dense), W::scale. The state dict carries the scale as f"{module}.weight_scale"
                      (what compress.intweights keeps as a buffer): numel 1, or one per output channel;
                      decoding gives it back and computes the weight exactly as the quantizer does:
                      value = code.float() * scale (the scale reshaped to (-1, 1, ...) to broadcast
                      over the output channels).
Everything else (biases and other 1-D weights, BN parameters and buffers, activation quantizer scales)
is stored as it is.

Packing of W::codes (artifact.packing.pack_levels): L a power of two is b bits per code, element i at
bits [i*b, (i+1)*b) of a little-endian bit stream (pack_bits), as every artifact has always stored
it. Any other L packs k codes as one base-L integer sum(code_j * L**j), the first code the lowest
digit, of g = ceil(k * log2 L) bits, the k <= 20 (g <= 32) with the fewest bits per code
(mncli.storage.code_group; 5 levels: 3 codes in 7 bits), the last group padded with zero digits, and
bit-packs the groups at g bits: ceil(count / k) * g bits, exactly what the score charges, rounded
up to whole bytes per tensor. Masks are pack_bits at 1 bit.

"Sparse" elements are the exact zeros. Zeros of a sparse weight, and of a dense ternary one, come
back as +0.0 (a -0.0 loses its sign); every other value comes back bit for bit. Artifacts written
before the dense form existed stored every weight with a zero sparse; they decode as they are.
"""

from __future__ import annotations

import math

import torch

from mncli.artifact.packing import pack_bits, pack_levels, unpack_bits, unpack_levels
from mncli.errors import BadInput
from mncli.storage import code_bits, code_range, spec_levels, storage_form

SEP = "::"
FLOAT32 = {"format": "float", "bits": 32}
BAKE_HINT = "bake the layer's quantizer before saving: the weight must hold its real, deployable values"


def weight_spec(spec: dict | None) -> dict:
    return (spec or {}).get("weight") or FLOAT32


def _layout(name: str, shape: torch.Size, keep: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """W::shape, and W::mask when `keep` (the sparse form) is given."""
    out = {f"{name}{SEP}shape": torch.tensor(list(shape), dtype=torch.int64)}
    if keep is not None:
        out[f"{name}{SEP}mask"] = pack_bits(keep.to(torch.uint8), 1)
    return out


def _is_sparse(keep: torch.Tensor, bits_of) -> bool:
    """Whether the weight whose non-zeros `keep` marks is stored sparse: the score's rule."""
    return storage_form(keep.numel(), int(keep.sum()), bits_of)[1] == "sparse"


def _encode_float(name: str, t: torch.Tensor, stored: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """`stored` (t, or t as fp16) dense as W, or sparse; `bits` is what the score charges a value."""
    keep = (t != 0).reshape(-1)
    if t.dim() < 2 or not _is_sparse(keep, lambda count: count * bits):
        return {name: stored}
    return {**_layout(name, t.shape, keep), f"{name}{SEP}values": stored.reshape(-1)[keep]}


def ternary_scales(weight: torch.Tensor, spec: dict, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(wp, wn) as 0-d tensors of the weight's dtype: the spec's numbers, else the weight's own
    positive and negative value. BadInput when the weight holds anything but {-wn, 0, +wp}."""
    flat = weight.detach().reshape(-1)

    def level(key: str, found: torch.Tensor) -> torch.Tensor:
        if key in spec:
            return torch.tensor(spec[key], dtype=flat.dtype)
        return found[0].abs() if len(found) else flat.new_zeros(())  # any other value fails below

    wp, wn = level("wp", flat[flat > 0]), level("wn", flat[flat < 0])
    if not bool(((flat == 0) | (flat == wp) | (flat == -wn)).all()):
        distinct = torch.unique(flat).numel()
        what = (
            f"has {distinct} distinct values, at most 3 allowed:" if distinct > 3 else "holds values outside"
        )
        raise BadInput(
            f"layer {layer}: ternary weight {what} {{-wn, 0, +wp}} = "
            f"{{{-float(wn):.6g}, 0, {float(wp):.6g}}}",
            hint=BAKE_HINT,
        )
    return wp.clone(), wn.clone()


def _encode_ternary(name: str, t: torch.Tensor, spec: dict, layer: str) -> dict[str, torch.Tensor]:
    if spec.get("bits", 2) != 2:
        raise BadInput(f"layer {layer}: a ternary weight is 2 bits, the spec says {spec['bits']}")
    wp, wn = ternary_scales(t, spec, layer)
    flat = t.reshape(-1)
    keep = flat != 0
    codes = torch.where(keep, torch.where(flat == wp, 1, 2), 0).to(torch.uint8)  # 0: a dense zero
    sparse = _is_sparse(keep, lambda count: 2 * count)
    if sparse:
        codes = codes[keep]
    return {
        **_layout(name, t.shape, keep if sparse else None),
        f"{name}{SEP}codes": pack_bits(codes, 2),
        f"{name}{SEP}wp": wp,
        f"{name}{SEP}wn": wn,
    }


def _scale_view(scale: torch.Tensor, dim: int) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (dim - 1))) if dim >= 1 else scale.reshape(())


def int_codes(weight: torch.Tensor, scale: torch.Tensor, bits: float, layer: str) -> torch.Tensor:
    """Signed integer codes with weight == code.float() * scale exactly, in the range of the grid of
    b bits (mncli.storage: -2**(b-1)..2**(b-1) - 1, -2..2 for the 5 levels of 2.5 bits); BadInput
    when the weight is off that grid."""
    levels = spec_levels(bits)
    s = _scale_view(scale.detach().float(), weight.dim())
    raw = torch.round(weight.detach().float() / torch.where(s == 0, torch.ones_like(s), s))
    raw = torch.where(s == 0, torch.zeros_like(raw), raw)
    lo, hi = code_range(levels)
    ok = torch.isfinite(raw) & (raw >= lo) & (raw <= hi)
    codes = torch.where(ok, raw, torch.zeros_like(raw)).to(torch.int64)
    ok &= codes.float() * s == weight
    if not bool(ok.all()):
        bad = int((~ok).sum())
        grid = f"{bits:g}-bit" + ("" if float(bits).is_integer() else f" ({levels}-level)")
        raise BadInput(
            f"layer {layer}: {bad} of {weight.numel()} values are off the {grid} grid code * scale",
            hint=BAKE_HINT,
        )
    return codes


def int_levels(spec: dict, layer: str) -> int:
    """The levels of an int weight spec, whose bits are 2 to 8 (fractional ones too); BadInput
    otherwise, or when its `levels` contradict its bits."""
    bits = spec.get("bits")
    number = isinstance(bits, int | float) and not isinstance(bits, bool)
    if not number or not 2 <= bits <= 8:
        raise BadInput(f"layer {layer}: int weights are 2 to 8 bits, the spec says {bits!r}")
    try:
        return spec_levels(bits, spec.get("levels"))
    except ValueError as exc:
        raise BadInput(f"layer {layer}: {exc}", hint="levels = floor(2**bits), or leave levels out") from None


def _encode_int(name: str, t: torch.Tensor, spec: dict, layer: str, state: dict) -> dict[str, torch.Tensor]:
    levels, per_channel = int_levels(spec, layer), bool(spec.get("per_channel", False))
    scale = state.get(f"{layer}.weight_scale")
    if scale is None:
        raise BadInput(
            f"layer {layer}: int weights need their scale as {layer}.weight_scale in the state dict",
            hint="the quantizer keeps it as the layer's `weight_scale` buffer when baking",
        )
    scale = scale.detach().cpu()
    needed = t.shape[0] if per_channel else 1
    if scale.numel() != needed or not scale.is_floating_point():
        kind = "per-channel" if per_channel else "per-tensor"
        raise BadInput(
            f"layer {layer}: a {kind} scale has {needed} float values, weight_scale has {scale.numel()}"
        )
    codes = int_codes(t, scale, spec["bits"], layer).reshape(-1)
    keep = codes != 0
    sparse = _is_sparse(keep, lambda count: code_bits(count, levels))
    stored = codes[keep] if sparse else codes
    return {
        **_layout(name, t.shape, keep if sparse else None),
        f"{name}{SEP}codes": pack_levels(stored + levels // 2, levels),
        f"{name}{SEP}scale": scale,
    }


def _encode_weight(
    name: str, t: torch.Tensor, layer: str, spec: dict, state: dict
) -> dict[str, torch.Tensor]:
    fmt, bits = spec.get("format", "float"), spec.get("bits", 32)
    if not t.is_floating_point():
        raise BadInput(f"layer {layer}: weight {name} is {t.dtype}, expected floating point values")
    if fmt == "ternary":
        return _encode_ternary(name, t, spec, layer)
    if fmt == "int":
        return _encode_int(name, t, spec, layer, state)
    if fmt != "float" or bits not in (16, 32):
        raise BadInput(
            f"layer {layer}: unknown weight format {fmt!r} with {bits} bits",
            hint="weight formats: float 32/16, ternary 2, int 2..8",
        )
    if bits == 16 and not torch.equal(t.half().to(t.dtype), t):
        raise BadInput(
            f"layer {layer}: the spec says 16-bit float but the weight holds values fp16 cannot represent",
            hint=BAKE_HINT,
        )
    return _encode_float(name, t, t.half() if bits == 16 else t, bits)


def encode_state(
    state_dict: dict[str, torch.Tensor], specs: dict[str, dict] | None = None
) -> dict[str, torch.Tensor]:
    """The tensors to store for a state dict whose layers are described by `specs`."""
    specs = specs or {}
    reserved = [k for k in state_dict if SEP in k]
    if reserved:
        raise BadInput(f"state dict key {reserved[0]!r} contains '{SEP}', which artifacts reserve")
    scale_keys = set()
    for layer, spec in specs.items():
        w = weight_spec(spec)
        if w != FLOAT32 and f"{layer}.weight" not in state_dict:
            raise BadInput(
                f"layer {layer}: the spec describes its weight but the state dict has no {layer}.weight"
            )
        if w.get("format") == "int":
            scale_keys.add(f"{layer}.weight_scale")
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        layer = name.removesuffix(".weight")
        if name in scale_keys:
            continue
        if name.endswith(".weight") and layer in specs:
            out.update(_encode_weight(name, t, layer, weight_spec(specs[layer]), state_dict))
        elif name.endswith(".weight") and t.is_floating_point():
            # no spec: the score charges a half-precision tensor at 16 bits, any other at 32
            out.update(_encode_float(name, t, t, 16 if t.dtype in (torch.float16, torch.bfloat16) else 32))
        else:
            out[name] = t
    return out


def _decode_group(
    name: str, parts: dict[str, torch.Tensor], specs: dict[str, dict]
) -> dict[str, torch.Tensor]:
    shape = [int(d) for d in parts["shape"].tolist()]
    n = math.prod(shape)
    keep = unpack_bits(parts["mask"], 1, n).bool() if "mask" in parts else None
    nnz = int(keep.sum()) if keep is not None else n
    kinds = set(parts) - {"shape", "mask"}
    layer = name.removesuffix(".weight")
    if kinds == {"values"}:
        values = parts["values"]
        values = values.float() if values.dtype == torch.float16 else values
        if values.numel() != nnz:
            raise ValueError(f"{values.numel()} values for {nnz} mask bits")
    elif kinds == {"codes", "wp", "wn"}:
        codes = unpack_bits(parts["codes"], 2, nnz)
        if bool(((codes == 3) | ((codes == 0) & (keep is not None))).any()):
            raise ValueError("ternary codes other than 1 and 2 (and 0 when dense)")
        values = torch.where(codes == 1, parts["wp"], -parts["wn"])
        values = torch.where(codes == 0, torch.zeros_like(values), values)
    elif kinds == {"codes", "scale"}:
        spec = weight_spec(specs.get(layer))
        if spec.get("format") != "int":
            raise ValueError("stored as integer codes but the manifest has no int spec for this layer")
        try:
            levels = int_levels(spec, layer)
        except BadInput as exc:
            raise ValueError(exc.message) from None
        codes = unpack_levels(parts["codes"], levels, nnz) - levels // 2
        full = torch.zeros(n, dtype=torch.int64)
        full[keep if keep is not None else slice(None)] = codes
        scale = parts["scale"]
        weight = full.reshape(shape).float() * _scale_view(scale, len(shape))
        return {name: weight, f"{layer}.weight_scale": scale}
    else:
        raise ValueError(f"unknown layout {sorted(parts)}")
    if keep is None:
        return {name: values.reshape(shape).clone()}
    full = torch.zeros(n, dtype=values.dtype)
    full[keep] = values
    return {name: full.reshape(shape)}


def decode_state(
    tensors: dict[str, torch.Tensor], specs: dict[str, dict] | None = None
) -> dict[str, torch.Tensor]:
    """The state dict back, with exactly the values that were encoded (see the module docstring)."""
    specs = specs or {}
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if SEP in key:
            base, part = key.split(SEP, 1)
            groups.setdefault(base, {})[part] = t
        elif (
            t.dtype == torch.float16 and weight_spec(specs.get(key.removesuffix(".weight"))).get("bits") == 16
        ):
            out[key] = t.float()
        else:
            out[key] = t
    for name, parts in groups.items():
        try:
            if "shape" not in parts:
                raise ValueError("no shape")
            out.update(_decode_group(name, parts, specs))
        except (ValueError, RuntimeError, TypeError, IndexError, OverflowError) as exc:
            raise BadInput(
                f"malformed stored weight {name!r}: {' '.join(str(exc).split())[:200]}",
                hint="`mncli verify` the artifact",
            ) from None
    return dict(sorted(out.items()))
