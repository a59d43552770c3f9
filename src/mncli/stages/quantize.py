"""Stage `quantize`: n-bit weights and input activations per layer (LSQ, PACT, DoReFa QAT, or PTQ;
weights of fractional bits too, a grid of floor(2**b) levels, as Distiller's ImageNet entry's last FC),
optional fp16 for what stays float, an accumulator-width claim checked by integer simulation, and
the binary adder tree's width per level proved by integer simulation (`--accumulator-tree`).

Ternary layers keep their weights (only their inputs are quantized), so do int layers no new bits are
planned for (they never become fp16), and pruned zeros stay zero. The saved model holds real values:
int weights = code * scale, deployed act quantizers with their scales, so `mncli eval` of the output
runs exactly the quantized network. The training defaults are the LSQ paper's fine-tuning settings
for 2-4 bit networks (SGD, cosine, lr 0.01, weight decay 1e-4), for a few epochs since the input is a
trained network.

    run(input, out, QuantizeConfig(weight_bits=4, act_bits=4), TrainOptions(dataset="fashion-mnist"))
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.compression import Run, from_main, run_stage
from mncli.stages.training import TrainOptions, as_record
from mncli.text import fmt_pct, parse_choice

STAGE = "quantize"


class QuantizeMethod(enum.StrEnum):
    """The quantization-aware training method."""

    LSQ = "lsq"
    PACT = "pact"
    DOREFA = "dorefa"


class Calibration(enum.StrEnum):
    """How post-training quantization (--ptq) sets its ranges."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"


@dataclass
class QuantizeConfig:
    weight_bits: int | float = 4  # fractional (2.5): a grid of floor(2**b) levels, see compress.quant.plan
    act_bits: int = 4
    first_last_bits: int = 8
    method: QuantizeMethod = QuantizeMethod.LSQ
    ptq: bool = False
    # PTQ's ranges (None: minmax); with LSQ, where its step sizes start (None: the paper's init)
    calibration: Calibration | None = None
    percentile: float = 99.99
    calib_batches: int = 4
    fp16: bool = False
    accumulator_bits: int = 32
    accumulator_batches: int | None = None  # None: the whole validation split
    accumulator_tree: bool = False  # prove each adder-tree level's width: spec acc_tree
    recipe: Path | None = None
    pact_decay: float | None = None  # L2 on PACT's alpha; None: the weight decay

    def validate(self) -> QuantizeConfig:
        """BadInput for any option out of range; turns method and calibration names into their enums."""
        from mncli.compress.quant.plan import check_bits

        # whole bits as ints (4.0 from the command line is recorded as 4)
        self.weight_bits = check_bits(self.weight_bits, "--weight-bits", fractional=True)
        self.act_bits = check_bits(self.act_bits, "--act-bits")
        self.first_last_bits = check_bits(self.first_last_bits, "--first-last-bits")
        self.method = parse_choice(QuantizeMethod, self.method, "--method")
        if self.calibration is not None and not self.ptq and self.method is not QuantizeMethod.LSQ:
            raise BadInput(
                f"--calibration sets PTQ's ranges or LSQ's initial step sizes, not {self.method.value}'s",
                hint="add --ptq, use --method lsq, or drop --calibration",
            )
        if self.ptq or self.calibration is not None:
            self.calibration = parse_choice(
                Calibration, self.calibration or Calibration.MINMAX, "--calibration"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise BadInput(f"--percentile {self.percentile} is outside (50, 100]", hint="e.g. 99.99")
        if not 2 <= self.accumulator_bits <= 32:
            raise BadInput(f"--accumulator-bits {self.accumulator_bits} is outside 2-32", hint="e.g. 24")
        if self.calib_batches < 1:
            raise BadInput("--calib-batches must be at least 1", hint="e.g. --calib-batches 4")
        if self.accumulator_batches is not None and self.accumulator_batches < 1:
            raise BadInput(
                "--accumulator-batches must be at least 1", hint="omit it to check the whole split"
            )
        if self.pact_decay is not None and self.pact_decay < 0:
            raise BadInput(f"--pact-decay must be >= 0, got {self.pact_decay}", hint="e.g. --pact-decay 1e-4")
        return self


class Quantization:
    """The `quantize` method: plan bits per layer, calibrate, PTQ or QAT, bake real values, fp16,
    check the accumulator claim. Works in memory (`run.out` None) as well as in the file stage."""

    stage = STAGE

    def __init__(self, config: QuantizeConfig):
        self.config = config

    def options(self, train: TrainOptions) -> TrainOptions:
        return train.resolved(epochs=3, lr=0.01, weight_decay=1e-4)

    def check(self, model, specs: dict, arch: dict, options: TrainOptions) -> None:
        self.config.validate()
        plans = self._plans(model, specs)
        if self.config.accumulator_tree and not any(
            (p.int_weight or p.keeps_codes) and p.int_act for p in plans.values()
        ):
            raise BadInput(
                "--accumulator-tree: no layer has integer weights and integer activations",
                hint="quantize weights and activations (e.g. --weight-bits 8 --act-bits 8) too",
            )

    def apply(self, run: Run) -> dict:
        from mncli.compress.quant import qat

        cfg, model = self.config, run.model
        plans = self._plans(model, run.specs)
        if _drop_old_quantizers(model, plans):
            log("the input was already quantized: its activation quantizers are replaced")
        device = _device_of(model)
        method = "ptq" if cfg.ptq else cfg.method.value
        n_int = sum(p.int_weight or p.int_act for p in plans.values())
        log(f"quantizing {n_int} of {len(plans)} layers with {method}")

        self._quantize(run, plans, device)
        model.to(device)
        specs = qat.bake(model, plans, run.specs)
        fp16_layers = qat.apply_fp16(model, plans, specs)
        kept_int = sum(p.keep_int for p in plans.values())
        if kept_int:
            log(f"{kept_int} int layers keep their weights as they are (no new integer bits planned)")
        needed = {}
        if cfg.accumulator_bits < 32:
            needed = self._check_accumulators(model, specs, run.data, device)
            if len(needed) < len(plans):
                log(f"{len(plans) - len(needed)} layers are not integer x integer: accumulators stay 32 bits")
        trees = self._prove_trees(model, specs, run.data, device) if cfg.accumulator_tree else {}
        self._record_specs(specs, plans, needed, fp16_layers, trees)
        run.specs.clear()
        run.specs.update(specs)
        model.eval()
        run.record = {
            "method": method, "weight_bits": cfg.weight_bits, "act_bits": cfg.act_bits,
            "first_last_bits": cfg.first_last_bits, "fp16": cfg.fp16,
            "accumulator_bits": cfg.accumulator_bits, "accumulator_tree": cfg.accumulator_tree,
        }  # fmt: skip
        return {
            "method": method,
            "int_weight_layers": sum(p.int_weight for p in plans.values()),
            "int_act_layers": sum(p.int_act for p in plans.values()),
            "ternary_layers": sum(p.ternary for p in plans.values()),
            "fp16_layers": len(fp16_layers),
            "accumulator_bits": cfg.accumulator_bits,
            "accumulator_tree_layers": sum(bool(levels) for levels in trees.values()),
            "layers": _layer_rows(model, specs, plans),
        }

    def params(self) -> dict:
        return as_record(self.config)

    # --- the steps of apply
    def _plans(self, model, specs: dict) -> dict:
        from mncli.compress.quant.plan import RECIPE_KEYS, plan_layers
        from mncli.compress.recipe import load_recipe

        cfg = self.config
        recipe = load_recipe(cfg.recipe, RECIPE_KEYS) if cfg.recipe else None
        return plan_layers(
            model, specs, weight_bits=cfg.weight_bits, act_bits=cfg.act_bits,
            first_last_bits=cfg.first_last_bits, recipe=recipe, fp16=cfg.fp16,
        )  # fmt: skip

    def _quantize(self, run: Run, plans: dict, device) -> None:
        """Calibrate, then PTQ or QAT (through the run's training options); leaves fake-quant wrappers."""
        from mncli.compress.prune.callbacks import keep_pruned
        from mncli.compress.quant import qat
        from mncli.compress.quant.ptq import observe_inputs
        from mncli.engine.distributed import group_shard

        cfg, model, specs = self.config, run.model, run.specs
        modules = dict(model.named_modules())
        act_layers = {name: modules[name] for name, plan in plans.items() if plan.int_act}
        # under torchrun rank 0 calibrates and every rank takes its statistics (the same ranges, signs
        # and initial scales everywhere), on batches of the global batch size: the images one process
        # with that batch size calibrates on
        world = group_shard()[1]
        split = run.data.train
        batches = split if world == 1 else split.batches(split.batch_size * world)
        stats = from_main(
            lambda: (
                observe_inputs(model, act_layers, batches, cfg.calib_batches, device) if act_layers else {}
            )
        )
        if cfg.ptq:
            qat.prepare_ptq(model, plans, stats, cfg.calibration, cfg.percentile, specs)
            return
        if not any(p.int_weight or p.int_act for p in plans.values()):
            return
        qparams = qat.prepare_qat(model, plans, stats, cfg.method, specs, cfg.calibration, cfg.percentile)
        if run.options.epochs > 0:
            pact_decay = run.options.weight_decay if cfg.pact_decay is None else cfg.pact_decay
            callbacks = [_callback(qparams, pact_decay)]
            # int weights keep their zeros inside the fake-quant wrapper; layers trained as floats need this:
            float_layers = {
                n: specs[n] for n, p in plans.items() if n in specs and not (p.int_weight or p.keeps_codes)
            }
            keep = keep_pruned(model, float_layers)
            if keep is not None:
                callbacks.append(keep)
            run.train(callbacks)

    def _check_accumulators(self, model, specs: dict, data, device) -> dict[str, int]:
        """Integer simulation on the validation split; refuses a claim that any layer overflows."""
        from mncli.compress.quant.accumulator import check_claim, simulate_accumulators

        ranges = simulate_accumulators(model, specs, data.val, device, self.config.accumulator_batches)
        return check_claim(ranges, self.config.accumulator_bits)

    def _prove_trees(self, model, specs: dict, data, device) -> dict[str, list[int]]:
        """Integer simulation of every integer layer's binary adder tree on the validation split."""
        from mncli.compress.quant.accumulator import simulate_tree

        trees = simulate_tree(model, specs, data.val, device, self.config.accumulator_batches)
        widths = [bits for levels in trees.values() for bits in levels]
        if widths:
            proved = sum(bool(levels) for levels in trees.values())
            depth = max(len(levels) for levels in trees.values())
            bits = f"{min(widths)}..{max(widths)} bits"
            log(f"tree widths proved for {proved} layers (levels 1..{depth}: {bits})")
        return trees

    def _record_specs(self, specs: dict, plans: dict, needed: dict, fp16_layers: list, trees: dict) -> None:
        cfg = self.config
        method = f"ptq-{cfg.calibration.value}" if cfg.ptq else cfg.method.value
        for name, plan in plans.items():
            spec = specs[name]
            spec["acc_bits"] = cfg.accumulator_bits if name in needed else 32
            spec.pop("acc_bits_needed", None)  # an input's proofs do not hold for the new weights
            spec.pop("acc_tree", None)
            if name in needed:
                spec["acc_bits_needed"] = needed[name]
            if trees.get(name):  # a layer whose outputs sum at most one product has no adds
                spec["acc_tree"] = trees[name]
            if plan.int_weight or plan.int_act:
                spec["quant_method"] = method
            elif name in fp16_layers:
                spec["quant_method"] = "fp16"


def _callback(qparams, pact_decay: float):
    from mncli.engine import Callback

    class QuantizerCallback(Callback):
        """Step sizes train without weight decay, PACT clips with their own L2; both stay positive."""

        def param_groups(self, model):
            groups = []
            if qparams.scales:
                groups.append({"params": list(qparams.scales), "weight_decay": 0.0})
            if qparams.clips:
                groups.append({"params": list(qparams.clips), "weight_decay": pact_decay})
            return groups

        def after_step(self, ctx):
            qparams.clamp_()

    return QuantizerCallback()


def _drop_old_quantizers(model, plans) -> int:
    from mncli.models.quantized import WEIGHT_SCALE, remove_act_quantizers

    modules = dict(model.named_modules())
    for name, plan in plans.items():
        if not plan.keep_int:
            modules[name]._buffers.pop(WEIGHT_SCALE, None)
    return remove_act_quantizers(model)


def _device_of(model):
    import torch

    return next(model.parameters(), torch.empty(0)).device


def _layer_rows(model, specs: dict, plans: dict) -> list[dict]:
    import torch

    modules = dict(model.named_modules())
    rows = []
    for name in plans:
        spec = specs.get(name, {})
        weight, act = spec.get("weight", {}), spec.get("act") or {}
        fmt = weight.get("format", "float")
        rows.append(
            {
                "layer": name,
                "weight": f"{fmt}{weight.get('bits', 32)}" if fmt != "ternary" else "ternary",
                "levels": int(torch.unique(modules[name].weight.detach()).numel()),
                "act_bits": int(act.get("bits", 32)),
                "act_signed": act.get("signed"),
                "acc_bits": int(spec.get("acc_bits", 32)),
                "acc_bits_needed": spec.get("acc_bits_needed"),
                "acc_tree": spec.get("acc_tree"),
            }
        )
    return rows


def run(input: Path, out: Path, config: QuantizeConfig, train: TrainOptions) -> dict:
    """The file stage: quantize INPUT into OUT (dataset: the one asked for, else the input's own)."""
    config.validate()
    result = run_stage(Quantization(config), input, out, train)
    if "output" not in result:  # a rank other than 0 under torchrun
        return result
    before, after = fmt_pct(result["test_acc_before"]), fmt_pct(result["test_acc"])
    log(
        f"quantized {result['int_weight_layers']} weight / {result['int_act_layers']} activation layers "
        f"({result['method']}): test top-1 {before} -> {after}"
    )
    return result
