"""Integer simulation of each layer's accumulator, to back a claim of fewer than 32 accumulator bits.

For a layer with integer weight codes w (int layers: weight / weight_scale; ternary layers: sign(w), the
+1 and -1 inputs being what the hardware sums) and integer activation codes x (from its `act_quant`),
every output is a sum of products w_i * x_i (plus the bias in units of s_w * s_x for int layers).
Whatever order the hardware adds them in, every partial sum lies between the sum of the negative
products and the sum of the positive products, so checking those two bounds against the signed N-bit
range proves that no partial sum overflows. Both are computed exactly in float64 with the layer's own
conv/linear arithmetic (stride, padding, groups), over real validation batches.

`simulate_tree` proves the narrower widths of a binary adder tree (RL1's "binary-tree accumulation"):
each output's k products with non-zero weights, in the order of the flattened weight (c_in/groups, kh,
kw), are added in pairs, the pairs in pairs, and so on, an odd last term passing up unchanged; every
add of level l must fit that level's signed width. The products come from unfold (im2col) patches,
in chunks of images and output channels, so one layer never holds more than a few tensors of
`TREE_CHUNK_ELEMENTS` float64 values. float64 adds integers exactly below 2^53, which is checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mncli.errors import BadInput, RuntimeFailure
from mncli.models.quantized import ACT_QUANT, WEIGHT_SCALE, ActQuantizer, int_codes


@dataclass
class AccumulatorRange:
    max_positive: int = 0  # largest sum of positive products seen
    min_negative: int = 0  # smallest sum of negative products seen

    @property
    def bits_needed(self) -> int:
        return bits_for_range(self.min_negative, self.max_positive)


def bits_for_range(low: int, high: int) -> int:
    """Smallest signed width n with -2^(n-1) <= low and high <= 2^(n-1) - 1."""
    n = 2
    while not (-(2 ** (n - 1)) <= low and high <= 2 ** (n - 1) - 1):
        n += 1
    return n


def integer_layers(model: nn.Module, specs: dict[str, dict]) -> dict[str, nn.Module]:
    """Layers whose multiplies are integer x integer: int or ternary weights and integer activations."""
    modules = dict(model.named_modules())
    chosen = {}
    for name, spec in specs.items():
        weight_format = (spec.get("weight") or {}).get("format")
        module = modules.get(name)
        quantizer = getattr(module, ACT_QUANT, None) if module is not None else None
        if (
            weight_format in ("int", "ternary")
            and isinstance(quantizer, ActQuantizer)
            and not quantizer.is_float
        ):
            chosen[name] = module
    return chosen


def _weight_codes(module: nn.Module, weight_format: str) -> torch.Tensor:
    if weight_format == "ternary":
        return torch.sign(module.weight.detach()).double()
    return int_codes(module.weight, getattr(module, WEIGHT_SCALE)).double()


def _apply(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    return module._conv_forward(x, w, None)


def _bias_codes(module: nn.Module, quantizer: ActQuantizer, weight_format: str) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    if bias is None or weight_format != "int":
        return None
    w_scale = getattr(module, WEIGHT_SCALE).detach().double().flatten()
    return torch.round(bias.detach().double() / (w_scale * quantizer.scale.double()))


def _channel_view(t: torch.Tensor, module: nn.Module, out_dim: int) -> torch.Tensor:
    shape = [1] * out_dim
    shape[1 if not isinstance(module, nn.Linear) else -1] = -1
    return t.reshape(shape)


def simulate_accumulators(
    model: nn.Module,
    specs: dict[str, dict],
    batches: Iterable,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, AccumulatorRange]:
    """Run the model on `batches` and record each integer layer's accumulator range."""
    layers = integer_layers(model, specs)
    ranges = {name: AccumulatorRange() for name in layers}
    handles = []
    for name, module in layers.items():
        weight_format = specs[name]["weight"]["format"]
        w = _weight_codes(module, weight_format)
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        quantizer: ActQuantizer = getattr(module, ACT_QUANT)
        bias = _bias_codes(module, quantizer, weight_format)

        def hook(_q, args, _name=name, _module=module, _wp=w_pos, _wn=w_neg, _bias=bias, _q_mod=quantizer):
            x = _q_mod.codes(args[0]).double()
            x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
            positive = _apply(_module, x_pos, _wp.to(x.device))
            negative = _apply(_module, x_pos, _wn.to(x.device))
            if bool((x_neg != 0).any()):
                positive = positive + _apply(_module, x_neg, _wn.to(x.device))
                negative = negative + _apply(_module, x_neg, _wp.to(x.device))
            if _bias is not None:
                b = _channel_view(_bias.to(x.device), _module, positive.dim())
                positive = positive + b.clamp(min=0)
                negative = negative + b.clamp(max=0)
            r = ranges[_name]
            r.max_positive = max(r.max_positive, int(positive.max()))
            r.min_negative = min(r.min_negative, int(negative.min()))

        handles.append(quantizer.register_forward_pre_hook(hook))
    _run_batches(model, batches, device, max_batches, handles)
    return ranges


def _run_batches(model: nn.Module, batches: Iterable, device, max_batches: int | None, handles: list) -> None:
    """The model in eval mode on up to `max_batches` batches; removes the hooks in `handles` after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def check_claim(ranges: dict[str, AccumulatorRange], bits: int) -> dict[str, int]:
    """Bits each layer needs; BadInput naming the worst layer when a claim of `bits` overflows."""
    if not ranges:
        raise BadInput(
            f"--accumulator-bits {bits}: no layer has integer weights and integer activations",
            hint="quantize weights and activations (e.g. --weight-bits 8 --act-bits 8) first",
        )
    needed = {name: r.bits_needed for name, r in ranges.items()}
    over = {name: n for name, n in needed.items() if n > bits}
    if over:
        worst = max(over, key=over.get)
        r = ranges[worst]
        more = f"; {len(over) - 1} more layers overflow too" if len(over) > 1 else ""
        raise BadInput(
            f"accumulator overflow: layer {worst} needs {over[worst]} bits (partial sums from "
            f"{r.min_negative} to {r.max_positive}), more than --accumulator-bits {bits}{more}",
            hint=f"claim --accumulator-bits {max(needed.values())} or more, or quantize to fewer bits",
        )
    return needed


# --- binary adder trees

EXACT_BELOW = 2**53  # float64 holds every integer of smaller magnitude, so sums below it are exact
TREE_CHUNK_ELEMENTS = 2**22  # products of one layer held at once (32 MiB of float64)

LevelRanges = list[tuple[int, int]]  # (smallest, largest) add result of each tree level, level 1 first


def compact_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each output channel's non-zero weights moved to the front, in the order of the flattened weight:
    (positions [C, k_max], values [C, k_max], counts [C]); past a channel's count the values are 0."""
    flat = w.reshape(w.shape[0], -1)
    nonzero = flat != 0
    counts = nonzero.sum(1)
    k_max = int(counts.max()) if counts.numel() else 0
    positions = torch.sort((~nonzero).to(torch.int8), dim=1, stable=True).indices[:, :k_max]
    return positions, torch.gather(flat, 1, positions), counts


def tree_levels(products: torch.Tensor, counts: torch.Tensor) -> LevelRanges:
    """Ranges of the add results at each level of the binary trees over the last dim of `products`
    [N, C, k]: channel c's tree adds its first counts[c] terms, the rest is zero padding."""
    levels: LevelRanges = []
    if products.shape[0] == 0:
        return levels
    same_count = bool((counts == counts[0]).all())
    values, level = products, 1
    while values.shape[-1] > 1:
        pairs = values.shape[-1] // 2
        summed = values.new_empty(*values.shape[:-1], (values.shape[-1] + 1) // 2)
        torch.add(values[..., 0 : 2 * pairs : 2], values[..., 1 : 2 * pairs : 2], out=summed[..., :pairs])
        if values.shape[-1] % 2:
            summed[..., pairs] = values[..., -1]
        values = summed
        # node j of level l holds the sum of terms [j 2^l, (j+1) 2^l): it is an add when its right
        # half is not empty, else an odd term passed up (or padding); so a channel's adds come first
        right_half = torch.arange(values.shape[-1], device=counts.device) * 2**level + 2 ** (level - 1)
        if same_count:
            adds = values[..., : int((right_half < counts[0]).sum())]
        else:
            adds = values[:, counts[:, None] > right_half]
        levels.append((int(adds.amin()), int(adds.amax())))  # (aminmax copies a strided view)
        level += 1
    return levels


def _merge(into: LevelRanges, new: LevelRanges) -> None:
    for i, (low, high) in enumerate(new):
        if i < len(into):
            into[i] = (min(into[i][0], low), max(into[i][1], high))
        else:
            into.append((low, high))


def _padded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A conv's input with the padding its forward adds ("same" included)."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(x, module._reversed_padding_repeated_twice, mode=mode)


def _conv_patches(module: nn.Module, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """im2col of groups [first, last) of a conv's input: [images * positions, groups, c_in/groups * kh *
    kw], each patch in the order of the flattened weight."""
    per_group = module.in_channels // module.groups
    x = _padded(module, x[:, first * per_group : last * per_group])
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # [images, groups * patch, positions]
    images, _, positions = cols.shape
    cols = cols.reshape(images, last - first, -1, positions).permute(0, 3, 1, 2)
    return cols.reshape(images * positions, last - first, -1)


def layer_tree_ranges(
    module: nn.Module,
    x_codes: torch.Tensor,
    w_codes: torch.Tensor,
    chunk_elements: int = TREE_CHUNK_ELEMENTS,
) -> LevelRanges:
    """Level ranges of the adder trees of every output of one conv/linear layer, from its input codes
    and weight codes (float64 integers, sums below 2^53), in chunks of images and output channels of
    about `chunk_elements` products."""
    if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
        kind = type(module).__name__
        raise BadInput(f"adder trees are simulated for Linear, Conv1d and Conv2d layers, not {kind}")
    positions, values, counts = compact_weights(w_codes)
    if isinstance(module, nn.Linear):
        x, groups, per_image = x_codes.reshape(-1, 1, x_codes.shape[-1]), 1, 1
    else:
        x, groups = x_codes, module.groups
        padded = _padded(module, x[:1, :1]).shape[2:]
        sizes = zip(padded, module.kernel_size, module.dilation, module.stride, strict=True)
        per_image = math.prod((n - d * (k - 1) - 1) // s + 1 for n, k, d, s in sizes)
    out_channels, patch = values.shape[0], w_codes[0].numel()
    per_group = out_channels // groups
    channel_chunk = min(out_channels, max(1, chunk_elements // (per_image * patch)))
    image_chunk = max(1, chunk_elements // (per_image * channel_chunk * patch))
    ranges: LevelRanges = []
    for i in range(0, x.shape[0], image_chunk):
        images = x[i : i + image_chunk]
        for c0 in range(0, out_channels, channel_chunk):
            c1 = min(c0 + channel_chunk, out_channels)
            k = int(counts[c0:c1].max())
            if k < 2:  # no add in these channels
                continue
            first, last = c0 // per_group, (c1 - 1) // per_group + 1
            cols = images if isinstance(module, nn.Linear) else _conv_patches(module, images, first, last)
            chunk_values, chunk_counts = values[c0:c1, :k].to(cols.device), counts[c0:c1].to(cols.device)
            if bool((chunk_counts == patch).all()) and cols.shape[1] in (1, c1 - c0):
                # no zero weight, one patch for all channels or one each: the patches as they are
                products = cols * chunk_values
            else:
                # index into the chunk's groups laid end to end, so every channel gathers from one tensor
                rows = cols.shape[0]
                group = torch.arange(c0, c1, device=positions.device) // per_group - first
                index = (group[:, None] * patch + positions[c0:c1, :k]).to(cols.device)
                flat = cols.reshape(rows, 1, -1).expand(rows, c1 - c0, -1)
                products = torch.gather(flat, 2, index.expand(rows, -1, -1)) * chunk_values
            _merge(ranges, tree_levels(products, chunk_counts))
    return ranges


def _check_exact(name: str, w: torch.Tensor, max_code: int) -> None:
    """RuntimeFailure unless every partial sum of the layer stays below 2^53 (exact in float64)."""
    bound = float(w.abs().reshape(w.shape[0], -1).sum(1).max()) * max_code
    if bound >= EXACT_BELOW:
        raise RuntimeFailure(
            f"layer {name}: integer partial sums may reach {bound:.3g}, beyond float64's exact 2^53"
        )


def simulate_tree(
    model: nn.Module,
    specs: dict[str, dict],
    batches: Iterable,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, list[int]]:
    """Run the model on `batches` and prove each integer layer's adder-tree widths: the signed bits
    every level's adds need (level 1 first). The bias is added after the tree and is not part of it."""
    layers = integer_layers(model, specs)
    ranges: dict[str, LevelRanges] = {name: [] for name in layers}
    handles = []
    for name, module in layers.items():
        w = _weight_codes(module, specs[name]["weight"]["format"])
        quantizer: ActQuantizer = getattr(module, ACT_QUANT)
        _check_exact(name, w, max(quantizer.q_n, quantizer.q_p))

        def hook(_q, args, _name=name, _module=module, _w=w, _q_mod=quantizer):
            x = _q_mod.codes(args[0]).double()
            _merge(ranges[_name], layer_tree_ranges(_module, x, _w.to(x.device)))

        handles.append(quantizer.register_forward_pre_hook(hook))
    _run_batches(model, batches, device, max_batches, handles)
    return {name: [bits_for_range(low, high) for low, high in levels] for name, levels in ranges.items()}
