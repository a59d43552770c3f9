"""The `export` stage: an artifact's model for plain PyTorch (state dict, TorchScript, torch.export) or
for any ONNX runtime.

    run(ExportConfig(input=Path("q.safetensors"), out=Path("model.onnx"), format="onnx"))

ONNX: torch.onnx's exporter writes the float graph of the model's real values (its activation
quantizers taken off, batch norms kept apart, nothing fused), and each layer then gets the form its
spec says it has:

  fp32 weights      FLOAT initializers, as exported
  fp16 weights      FLOAT16 initializers (weight and bias) -> Cast to FLOAT
  n-bit weights     integer codes (INT2 / INT4 / INT8: the narrowest type the opset has) ->
                    DequantizeLinear with the layer's own scale (per tensor, or per output channel
                    on axis 0); codes * scale is the artifact's value bit for bit. Fractional bits
                    (L = floor(2**b) levels) are codes like any others, in the type of the whole bits
                    that hold them, ceil(log2 L) (5 levels: INT4, claimed as 3 bits): an ONNX graph
                    knows no L, so `mncli score model.onnx` charges those bits, not the packed ones
  ternary weights   2-bit codes {-1, 0, +1} (INT2 from opset 25, else INT8) decoded with the two scales:
                    Relu(DequantizeLinear(codes, wp)) - Relu(-DequantizeLinear(codes, wn))
  pruned weights    exact zeros (codes 0), whatever the format
  b-bit inputs      QuantizeLinear to INT8 / UINT8 -> Clip on the codes to [-Q_N, Q_P] when b < 8 ->
                    DequantizeLinear, with the quantizer's scale and zero point 0: clamp(round(x / s),
                    -Q_N, Q_P) * s, as `models.quantized.ActQuantizer` computes it (not INT4 codes:
                    onnxruntime moves a QuantizeLinear up through MaxPool, which it cannot run on them)
  fp16 inputs       Cast to FLOAT16 -> Cast to FLOAT

The opset is the lowest that has every code type used (21 for INT4, 25 for INT2), or the one asked
for (narrower codes then go into a wider type: the model's `mncli.weight_bits` metadata keeps their
bits for `mncli score`). Metadata also records the architecture, dataset and recorded test accuracy.
The written model passes `onnx.checker` and, when onnxruntime is installed, is run once against the
artifact on random inputs (the result's `check`). What to expect of onnxruntime against the artifact:
without activation quantizers, logits within 1e-4 absolute + 1e-4 relative (float sums in another
order); with them, the quantizers are bit-exact but an input on a rounding boundary may take the
neighbouring code when the sums before it were ordered differently: about 1 image in 100 differs by
more, every logit stays within a few % of the largest, and top-1 on a test set within 0.1 point
(tests/test_onnx_export.py holds these).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mncli.errors import BadInput, RuntimeFailure
from mncli.log import debug, log
from mncli.storage import levels_for_bits
from mncli.text import parse_choice

MIN_OPSET, MAX_OPSET = 18, 25  # torch.onnx's exporter writes opset 18 and up
INT4_OPSET, INT2_OPSET = 21, 25
DEFAULT_OPSET = 21  # INT4 codes, per-axis QDQ, and runtimes from onnxruntime 1.18 on


class ExportFormat(enum.StrEnum):
    """What `export` writes."""

    STATE_DICT = "state-dict"  # torch.load(PATH, weights_only=True), activation quantizer scales included
    TORCHSCRIPT = "torchscript"  # torch.jit.load(PATH)
    TORCH_EXPORT = "torch-export"  # torch.export.load(PATH).module()
    ONNX = "onnx"  # onnxruntime.InferenceSession(PATH), QDQ for quantized layers


@dataclass
class ExportConfig:
    input: Path
    out: Path
    format: ExportFormat = ExportFormat.STATE_DICT
    opset: int | None = None  # ONNX only; None: the lowest that holds the artifact's code types
    check: bool = True  # ONNX only: run the written model in onnxruntime against the artifact

    def validate(self) -> ExportConfig:
        self.format = parse_choice(ExportFormat, self.format, "--format")
        if self.opset is not None:
            if self.format is not ExportFormat.ONNX:
                raise BadInput("--opset is for --format onnx", hint="drop --opset, or add --format onnx")
            if not MIN_OPSET <= int(self.opset) <= MAX_OPSET:
                raise BadInput(
                    f"--opset {self.opset} is outside {MIN_OPSET}-{MAX_OPSET}",
                    hint=f"e.g. --opset {DEFAULT_OPSET} (INT4 codes) or {INT2_OPSET} (INT2 codes)",
                )
        return self


def atomic_write(out: Path, write) -> None:
    """Write `out` through a temporary beside it, renamed into place once complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    from mncli.artifact.tempfiles import make_temporary

    fd, tmp = make_temporary(out, suffix=f".tmp{out.suffix}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _torch_export(model, example, name: str):
    import torch

    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception:  # noqa: BLE001 - fall back to a fixed batch size of one
        pass
    try:
        return torch.export.export(model, (example[:1],))
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"cannot export {name} with torch.export: {exc}") from exc


def run(config: ExportConfig) -> dict:
    """Export an artifact; returns the `--json` object (`output` is the written file)."""
    import torch

    from mncli.artifact import check_output
    from mncli.bundle import load_bundle

    config.validate()
    fmt, inp, out = config.format, Path(config.input), Path(config.out)
    if fmt is ExportFormat.ONNX:
        from mncli.scoring.onnx import require_onnx

        require_onnx("--format onnx")
        _require_exporter()
    check_output(out, inp, artifact=False)
    bundle = load_bundle(inp)
    model = bundle.model.eval()
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    example = torch.zeros(2, *bundle.input_shape)
    result = {
        "output": str(out),
        "format": fmt.value,
        "arch": bundle.arch,
        "input_shape": list(bundle.input_shape),
        "tensors": len(state),
        "params": sum(p.numel() for p in model.parameters()),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        if fmt is ExportFormat.STATE_DICT:
            atomic_write(out, lambda tmp: torch.save(state, tmp))
        elif fmt is ExportFormat.TORCHSCRIPT:
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(model, example, check_trace=False)
            except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
                raise RuntimeFailure(f"cannot trace {bundle.arch['name']} to TorchScript: {exc}") from exc
            atomic_write(out, lambda tmp: torch.jit.save(traced, tmp))
        elif fmt is ExportFormat.TORCH_EXPORT:
            program = _torch_export(model, example, bundle.arch["name"])
            atomic_write(out, lambda tmp: torch.export.save(program, tmp))
        else:
            proto, summary = onnx_model(bundle, opset=config.opset)
            result.update(summary)
            result["tensors"] = len(proto.graph.initializer)

            def write(tmp: str) -> None:  # checked before it is renamed into place
                _save_onnx(proto, tmp)
                if config.check:
                    result["check"] = check_onnx(Path(tmp), model, bundle.input_shape)

            atomic_write(out, write)
    return result


def _require_exporter() -> None:
    from mncli.scoring.onnx import ONNX_EXTRA

    try:
        import onnx_ir  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise BadInput(
            f"--format onnx needs the optional package {exc.name or 'onnxscript'} (torch.onnx's exporter), "
            "which is not installed",
            hint=f"install the onnx extra: {ONNX_EXTRA}",
        ) from None


def _save_onnx(proto, path: str) -> None:
    with open(path, "wb") as handle:
        handle.write(proto.SerializeToString())


# ---- ONNX ------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """What one conv/linear layer is, read from its module and spec."""

    name: str
    module: Any
    weight: str  # "float32", "float16", "int", "ternary"
    bits: int | float  # fractional for int codes of floor(2**bits) levels
    per_channel: bool = False
    act: Any = None  # the ActQuantizer, if any

    @property
    def code_bits(self) -> int:
        """Whole bits holding the layer's codes: `bits`, or ceil(log2 L) of fractional bits."""
        if self.weight != "int" or float(self.bits).is_integer():
            return int(self.bits)
        return (levels_for_bits(self.bits) - 1).bit_length()


def _layers(model, specs: dict) -> list[_Layer]:
    from torch import nn

    from mncli.models.quantized import ACT_QUANT

    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            continue
        claim = (specs.get(name) or {}).get("weight") or {"format": "float", "bits": 32}
        kind, bits = str(claim.get("format", "float")), claim.get("bits", 32)
        if kind != "int":
            bits = int(bits)
        if kind == "float":
            kind = "float16" if bits == 16 else "float32"
        elif kind not in ("int", "ternary"):
            raise BadInput(f"layer {name}: weight format {kind!r} cannot be exported")
        layers.append(
            _Layer(
                name=name,
                module=module,
                weight=kind,
                bits=bits,
                per_channel=bool(claim.get("per_channel", False)),
                act=module._modules.get(ACT_QUANT),
            )
        )
    return layers


def _code_type(bits: int, signed: bool, opset: int) -> tuple[int, int]:
    """(TensorProto type, its bits): the narrowest integer type of the opset holding b-bit codes."""
    from onnx import TensorProto as T

    if bits <= 2 and opset >= INT2_OPSET:
        return (T.INT2 if signed else T.UINT2), 2
    if bits <= 4 and opset >= INT4_OPSET:
        return (T.INT4 if signed else T.UINT4), 4
    return (T.INT8 if signed else T.UINT8), 8


def _act_code_type(signed: bool) -> tuple[int, int]:
    """Activation codes are INT8 / UINT8 (narrower ones clipped inside them): onnxruntime moves a
    QuantizeLinear up through MaxPool, which it cannot run on INT4 / UINT4 codes."""
    from onnx import TensorProto as T

    return (T.INT8 if signed else T.UINT8), 8


def _auto_opset(layers: list[_Layer]) -> int:
    needed = DEFAULT_OPSET
    for layer in layers:
        if layer.weight == "ternary" or (layer.weight == "int" and layer.code_bits <= 2):
            needed = max(needed, INT2_OPSET)
    return needed


def _float_graph(model, input_shape: tuple[int, ...], opset: int, name: str):
    """torch.onnx's graph of the model's float values: constants folded, weights untouched (no batch
    norm fusion, no dropped biases), initializers named by their state-dict keys."""
    import logging

    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import torch
    from onnxscript import rewriter
    from onnxscript.optimizer import _constant_folding
    from onnxscript.rewriter import (
        _fuse_batchnorm,
        _fuse_pad_into_conv,
        _fuse_relus_clips,
        _remove_optional_bias,
    )

    example = torch.zeros(2, *input_shape)
    attempts = [({0: torch.export.Dim("batch", min=1)},), None]
    program, error = None, None
    for dynamic in attempts:
        sink = io.StringIO()
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model,
                    (example if dynamic else example[:1],),
                    dynamo=True,
                    optimize=False,
                    verbose=False,
                    opset_version=opset,
                    dynamic_shapes=dynamic,
                    input_names=["input"],
                    output_names=["logits"],
                )
            break
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types
            error = exc
            debug(f"torch.onnx.export ({'dynamic' if dynamic else 'fixed'} batch) failed: {exc}")
        finally:
            quiet.setLevel(level)
    if program is None:
        raise RuntimeFailure(f"cannot export {name} to ONNX: {str(error).splitlines()[0][:200]}")
    protected = {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers()}

    def should_fold(node) -> bool | None:
        if node.op_type in ("Shape", "Size"):
            return None
        return False if any(v is not None and v.name in protected for v in node.inputs) else None

    skip = {
        *_fuse_batchnorm.rules,
        *_remove_optional_bias.rules,
        *_fuse_relus_clips.rules,
        *_fuse_pad_into_conv.rules,
    }
    rules = [rule for rule in rewriter._DEFAULT_REWRITE_RULES if rule not in skip]
    fold = _constant_folding.FoldConstantsPass(
        shape_inference=True, input_size_limit=1 << 16, output_size_limit=1 << 20, should_fold=should_fold
    )
    passes = ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [fold, rewriter.RewritePass(rules), common.RemoveUnusedNodesPass()], steps=2, early_stop=True
        ),
        common.RemoveUnusedNodesPass(),
    )
    model_ir = program.model
    passes(model_ir)
    proto = ir.serde.serialize_model(model_ir)
    _name_nodes(proto)
    return proto


def _name_nodes(proto) -> None:
    """Name each node after the module that ran it ("layer1.0.bn1/BatchNormalization"), and drop the
    exporter's per-node metadata (stack traces with local paths)."""
    import ast

    taken: set[str] = set()
    for node in proto.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        module = ""
        if scopes:
            try:
                parts = [str(x) for x in ast.literal_eval(scopes)]
                module = ".".join(x for x in parts[1:-1] if x)
            except (ValueError, SyntaxError):
                module = ""
        base = f"{module}/{node.op_type}" if module else (node.name or node.op_type)
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}#{k}"
        taken.add(name)
        node.name = name
        del node.metadata_props[:]


class _Surgery:
    """Edits of the exported float graph: initializers replaced by codes, nodes inserted before users."""

    def __init__(self, proto):
        self.proto = proto
        self.graph = proto.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.new_nodes: list[tuple[int, Any]] = []  # (insert before node index, node)
        self.taken: set[str] = {i.name for i in self.graph.initializer}
        for node in self.graph.node:
            self.taken.update([node.name, *node.output])
        for index, node in enumerate(self.graph.node):
            if not node.name:
                node.name = self.fresh(f"{node.op_type}_{index}")

    def fresh(self, name: str) -> str:
        candidate, k = name, 1
        while candidate in self.taken:
            k += 1
            candidate = f"{name}_{k}"
        self.taken.add(candidate)
        return candidate

    def add_init(self, array, name: str) -> str:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(array, name)
        if name in self.inits:
            self.graph.initializer.remove(self.inits[name])
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        self.taken.add(name)
        return name

    def users(self, name: str) -> list[tuple[int, Any, int]]:
        return [
            (i, node, k)
            for i, node in enumerate(self.graph.node)
            for k, inp in enumerate(node.input)
            if inp == name
        ]

    def compute_nodes(self, weight: str) -> list[tuple[Any, int]]:
        """(node, data input index) of the Conv/Gemm/MatMul nodes that use a weight (through shape ops)."""
        found, frontier, seen = [], [weight], set()
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen.add(current)
            for _, node, k in self.users(current):
                if node.op_type in ("Conv", "Gemm") and k == 1:
                    found.append((node, 0))
                elif node.op_type == "MatMul":
                    found.append((node, 1 - k))
                elif node.op_type in ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Cast"):
                    frontier.extend(o for o in node.output if o)
        return found

    def rewire(self, old: str, new: str, exclude: set[int] | None = None) -> None:
        for _, node, k in self.users(old):
            if exclude and id(node) in exclude:
                continue
            node.input[k] = new

    def insert_before(self, target_name: str, nodes: list) -> None:
        index = next(i for i, node in enumerate(self.graph.node) if node.name == target_name)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(index + offset, node)

    def prepend(self, nodes: list) -> None:
        for offset, node in enumerate(nodes):
            self.graph.node.insert(offset, node)

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        used.update(o.name for o in self.graph.output)
        for init in list(self.graph.initializer):
            if init.name not in used:
                self.graph.initializer.remove(init)
                self.inits.pop(init.name, None)


def _ml_dtype(elem_type: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type)


def _decode_weight(s: _Surgery, layer: _Layer, opset: int, claims: dict) -> None:
    """Replace a layer's float weight (and an fp16 layer's bias) by its stored form and a decoder."""
    import numpy as np
    import torch
    from onnx import TensorProto as T
    from onnx import helper

    from mncli.artifact.codec import int_codes, ternary_scales

    name = f"{layer.name}.weight" if layer.name else "weight"
    if name not in s.inits:
        raise RuntimeFailure(
            f"layer {layer.name}: its weight {name} is not an initializer of the exported graph"
        )
    if layer.weight == "float32":
        return
    module = layer.module
    weight = module.weight.detach().cpu().float()
    decoded = s.fresh(f"{name}_decoded")
    s.rewire(name, decoded)
    if layer.weight == "float16":
        s.add_init(weight.numpy().astype(np.float16), name)
        nodes = [
            helper.make_node("Cast", [name], [decoded], to=T.FLOAT, name=s.fresh(f"{layer.name}/weight_fp16"))
        ]
        bias = f"{layer.name}.bias" if layer.name else "bias"
        if getattr(module, "bias", None) is not None and bias in s.inits:
            bias_decoded = s.fresh(f"{bias}_decoded")
            s.rewire(bias, bias_decoded)
            s.add_init(module.bias.detach().cpu().float().numpy().astype(np.float16), bias)
            nodes.append(
                helper.make_node(
                    "Cast", [bias], [bias_decoded], to=T.FLOAT, name=s.fresh(f"{layer.name}/bias_fp16")
                )
            )
    elif layer.weight == "int":
        scale = getattr(module, "weight_scale", None)
        if scale is None:
            raise RuntimeFailure(f"layer {layer.name}: an int layer without its weight_scale")
        codes = int_codes(weight, scale.detach().cpu(), layer.bits, layer.name).numpy()
        elem, container = _code_type(layer.code_bits, True, opset)
        s.add_init(codes.astype(_ml_dtype(elem)), name)
        if container > layer.code_bits:
            claims[name] = layer.code_bits
        flat = scale.detach().cpu().float().reshape(-1).numpy()
        scale_name = s.add_init(
            flat if layer.per_channel and flat.size > 1 else flat.reshape(()), f"{name}_scale"
        )
        nodes = [
            helper.make_node(
                "DequantizeLinear",
                [name, scale_name],
                [decoded],
                axis=0,
                name=s.fresh(f"{layer.name}/weight_dq"),
            )
        ]
    elif layer.weight == "ternary":
        wp, wn = ternary_scales(weight, {}, layer.name)
        codes = torch.where(weight == 0, 0, torch.where(weight > 0, 1, -1)).to(torch.int8).numpy()
        elem, _ = _code_type(2, True, opset)
        s.add_init(codes.astype(_ml_dtype(elem)), name)
        wp_name = s.add_init(np.array(float(wp), np.float32), f"{name}_wp")
        wn_name = s.add_init(np.array(float(wn), np.float32), f"{name}_wn")
        pos, neg, neg_flip, pos_r, neg_r = (
            s.fresh(f"{name}_{tag}") for tag in ("pos", "neg", "negflip", "posr", "negr")
        )
        prefix = f"{layer.name}/ternary"
        nodes = [
            helper.make_node("DequantizeLinear", [name, wp_name], [pos], name=s.fresh(f"{prefix}_wp")),
            helper.make_node("DequantizeLinear", [name, wn_name], [neg], name=s.fresh(f"{prefix}_wn")),
            helper.make_node("Relu", [pos], [pos_r], name=s.fresh(f"{prefix}_pos")),
            helper.make_node("Neg", [neg], [neg_flip], name=s.fresh(f"{prefix}_flip")),
            helper.make_node("Relu", [neg_flip], [neg_r], name=s.fresh(f"{prefix}_neg")),
            helper.make_node("Sub", [pos_r, neg_r], [decoded], name=s.fresh(f"{prefix}_values")),
        ]
    else:
        raise RuntimeFailure(f"layer {layer.name}: weight format {layer.weight} cannot be exported")
    s.prepend(nodes)


def _drop_absent_bias(s: _Surgery, layer: _Layer) -> None:
    """The exporter gives a conv without a bias an all-zero one; the layer has none, and none is stored."""
    import numpy as np
    from onnx import numpy_helper

    if getattr(layer.module, "bias", None) is not None:
        return
    weight = f"{layer.name}.weight" if layer.name else "weight"
    for node, _ in s.compute_nodes(weight):
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in s.inits:
            if not np.any(numpy_helper.to_array(s.inits[node.input[2]])):
                del node.input[2]


def _quantize_input(s: _Surgery, layer: _Layer, opset: int) -> int:
    """QuantizeLinear -> DequantizeLinear (or a Cast round trip) on the data input of the layer's nodes."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper

    act = layer.act
    weight = f"{layer.name}.weight" if layer.name else "weight"
    prefix = f"{layer.name}.act_quant"
    targets = s.compute_nodes(weight)
    if not targets:
        raise RuntimeFailure(
            f"layer {layer.name}: no Conv, Gemm or MatMul node uses its weight in the exported graph"
        )
    if not act.is_float:
        elem, container = _act_code_type(act.signed)
        scale = s.add_init(act.scale.detach().cpu().float().reshape(()).numpy(), f"{prefix}.scale")
        zero = s.add_init(np.zeros((), _ml_dtype(elem)), f"{prefix}.zero_point")
    for node, index in targets:
        data = node.input[index]
        quantized = s.fresh(f"{prefix}.output")
        if act.is_float:
            half = s.fresh(f"{prefix}.fp16")
            nodes = [
                helper.make_node(
                    "Cast", [data], [half], to=T.FLOAT16, name=s.fresh(f"{layer.name}/act_fp16")
                ),
                helper.make_node(
                    "Cast", [half], [quantized], to=T.FLOAT, name=s.fresh(f"{layer.name}/act_fp32")
                ),
            ]
        else:
            codes = s.fresh(f"{prefix}.codes")
            nodes = [
                helper.make_node(
                    "QuantizeLinear", [data, scale, zero], [codes], name=s.fresh(f"{layer.name}/act_q")
                )
            ]
            if container > act.bits:  # b-bit codes in a wider type: clamp to [-Q_N, Q_P]
                low = s.add_init(np.array(-act.q_n, _ml_dtype(elem)), s.fresh(f"{prefix}.min"))
                high = s.add_init(np.array(act.q_p, _ml_dtype(elem)), s.fresh(f"{prefix}.max"))
                clipped = s.fresh(f"{prefix}.codes_clipped")
                nodes.append(
                    helper.make_node(
                        "Clip", [codes, low, high], [clipped], name=s.fresh(f"{layer.name}/act_clip")
                    )
                )
                codes = clipped
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [codes, scale, zero],
                    [quantized],
                    name=s.fresh(f"{layer.name}/act_dq"),
                )
            )
        node.input[index] = quantized
        s.insert_before(node.name, nodes)
    return len(targets)


def _metadata(bundle, claims: dict, opset: int) -> dict[str, str]:
    from mncli.stages.score import _test_accuracy
    from mncli.version import __version__

    manifest = bundle.manifest or {}
    meta = {
        "mncli.version": __version__,
        "mncli.arch": json.dumps(bundle.arch, sort_keys=True),
        "mncli.input_shape": "x".join(str(s) for s in bundle.input_shape),
        "mncli.stage": str(manifest.get("stage") or ""),
        "mncli.opset": str(opset),
    }
    from mncli.data import scoring_task
    from mncli.models import default_dataset

    dataset = (manifest.get("data") or {}).get("dataset")
    if dataset:
        meta["mncli.dataset"] = str(dataset)
    arch = bundle.arch
    meta["mncli.task"] = scoring_task(
        dataset or default_dataset(arch["name"], arch.get("args", {})) or "cifar100"
    )
    accuracy = _test_accuracy(manifest)
    if accuracy is not None:
        meta["mncli.test_top1"] = repr(float(accuracy))
    if manifest.get("content_sha256"):
        meta["mncli.source_sha256"] = str(manifest["content_sha256"])
    if claims:
        meta["mncli.weight_bits"] = json.dumps(claims, sort_keys=True)
    return meta


def onnx_model(bundle, *, opset: int | None = None) -> tuple[Any, dict]:
    """The ONNX form of a bundle's model (see the module doc) and a summary of what each layer became."""
    import onnx
    from onnx import helper

    from mncli.models.quantized import remove_act_quantizers

    model = bundle.model.eval()
    layers = _layers(model, bundle.specs or {})
    opset = int(opset) if opset is not None else _auto_opset(layers)
    plain = copy.deepcopy(model)
    remove_act_quantizers(plain)
    for module in plain.modules():
        module._buffers.pop("weight_scale", None)
    proto = _float_graph(plain, bundle.input_shape, opset, bundle.arch.get("name", "model"))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise RuntimeFailure(
            f"torch.onnx wrote opset {written}, not the {opset} asked for", hint="try another --opset"
        )
    surgery = _Surgery(proto)
    claims: dict[str, int] = {}
    counts = {"fp32": 0, "fp16": 0, "int": 0, "ternary": 0, "act_int": 0, "act_fp16": 0}
    for layer in layers:
        _drop_absent_bias(surgery, layer)
        if layer.act is not None:
            _quantize_input(surgery, layer, opset)
            counts["act_fp16" if layer.act.is_float else "act_int"] += 1
        _decode_weight(surgery, layer, opset, claims)
        counts[{"float32": "fp32", "float16": "fp16"}.get(layer.weight, layer.weight)] += 1
    surgery.drop_unused_initializers()
    del proto.graph.value_info[:]  # the float graph's types; inferred anew below
    proto.ir_version = max(proto.ir_version, helper.find_min_ir_version_for(list(proto.opset_import), True))
    proto.producer_name, proto.producer_version = "mncli", _version()
    proto.graph.name = str(bundle.arch.get("name", "model"))
    del proto.metadata_props[:]
    for key, value in _metadata(bundle, claims, opset).items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError
        raise RuntimeFailure(
            f"the exported ONNX model fails onnx.checker: {str(exc).splitlines()[0][:200]}"
        ) from exc
    log(
        f"ONNX opset {opset}: {counts['int']} int, {counts['ternary']} ternary, {counts['fp16']} fp16 and "
        f"{counts['fp32']} fp32 layers; {counts['act_int']} quantized and {counts['act_fp16']} fp16 inputs"
    )
    return proto, {"opset": opset, "layers": counts, "weight_bits_metadata": claims}


def _version() -> str:
    from mncli.version import __version__

    return __version__


def check_onnx(path: Path, model, input_shape: tuple[int, ...], batch: int = 8) -> dict:
    """Run the written model in onnxruntime (CPU) on random inputs against the artifact's model."""
    try:
        import onnxruntime as ort
    except ImportError:
        log("onnxruntime is not installed: the exported model was checked by onnx.checker only")
        return {"runtime": None}
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=generator)
    with torch.no_grad():
        expected = model(x).float().numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise RuntimeFailure(
            f"onnxruntime cannot run the exported model: {str(exc).splitlines()[0][:200]}"
        ) from exc
    diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max()) or 1.0
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    log(
        f"onnxruntime vs the artifact on {batch} random inputs: max |logit diff| {diff:.3g}, "
        f"top-1 agreement {agree:.0%}"
    )
    return {
        "runtime": f"onnxruntime {ort.__version__}",
        "inputs": batch,
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "top1_agreement": agree,
    }
