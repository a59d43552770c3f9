"""The body of `mncli quantize`: load, plan, calibrate, train (or PTQ), bake, fp16, accumulator check,
evaluate, save. Split from stages/quantize.py (config and validation) to keep both short."""

from __future__ import annotations

import copy

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.quantize import QuantizeConfig, config_params
from mncli.text import fmt_pct


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
    for name in plans:
        modules[name]._buffers.pop(WEIGHT_SCALE, None)
    return remove_act_quantizers(model)


def _check_accumulators(cfg: QuantizeConfig, model, specs: dict, data, device) -> dict[str, int]:
    """Integer simulation on the validation split; refuses a claim that any layer overflows."""
    from mncli.compress.quant.accumulator import check_claim, simulate_accumulators

    ranges = simulate_accumulators(model, specs, data.val, device, cfg.accumulator_batches)
    return check_claim(ranges, cfg.accumulator_bits)


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
            }
        )
    return rows


def _device(name: str):
    from mncli.engine.runtime import resolve_device

    return resolve_device(name)


def _plans(cfg: QuantizeConfig, model, specs: dict) -> dict:
    from mncli.compress.quant.plan import RECIPE_KEYS, plan_layers
    from mncli.compress.recipe import load_recipe

    recipe = load_recipe(cfg.recipe, RECIPE_KEYS) if cfg.recipe else None
    return plan_layers(
        model, specs, weight_bits=cfg.weight_bits, act_bits=cfg.act_bits,
        first_last_bits=cfg.first_last_bits, recipe=recipe, fp16=cfg.fp16,
    )  # fmt: skip


def _quantize_model(cfg: QuantizeConfig, model, plans: dict, data, device) -> None:
    """Calibrate, then PTQ or QAT (through the common training options); leaves fake-quant wrappers."""
    from mncli.compress.quant import qat
    from mncli.compress.quant.ptq import observe_inputs
    from mncli.stages.train import run_training

    modules = dict(model.named_modules())
    act_layers = {name: modules[name] for name, plan in plans.items() if plan.int_act}
    stats = observe_inputs(model, act_layers, data.train, cfg.calib_batches, device) if act_layers else {}
    if cfg.ptq:
        qat.prepare_ptq(model, plans, stats, cfg.calibration, cfg.percentile)
        return
    if not any(p.int_weight or p.int_act for p in plans.values()):
        return
    qparams = qat.prepare_qat(model, plans, stats, cfg.method)
    if cfg.train.epochs > 0:
        pact_decay = cfg.train.weight_decay if cfg.pact_decay is None else cfg.pact_decay
        run_training(model, cfg.train, data, callbacks=[_callback(qparams, pact_decay)])


def _record_specs(cfg: QuantizeConfig, specs: dict, plans: dict, needed: dict, fp16_layers: list) -> None:
    method = f"ptq-{cfg.calibration}" if cfg.ptq else cfg.method
    for name, plan in plans.items():
        spec = specs[name]
        spec["acc_bits"] = cfg.accumulator_bits if name in needed else 32
        if name in needed:
            spec["acc_bits_needed"] = needed[name]
        if plan.int_weight or plan.int_act:
            spec["quant_method"] = method
        elif name in fp16_layers:
            spec["quant_method"] = "fp16"


def quantize(cfg: QuantizeConfig) -> dict:
    import torch

    from mncli.bundle import Bundle, load_bundle, save_bundle
    from mncli.compress.quant import qat
    from mncli.stages.train import check_model_fits_data, final_metrics, remove_checkpoints

    opts = cfg.train
    torch.manual_seed(opts.seed)
    if opts.resume and not (opts.ckpt_dir() / "state.pt").is_file():
        raise BadInput(
            f"nothing to resume: {opts.ckpt_dir()} holds no checkpoint", hint="run without --resume"
        )
    bundle = load_bundle(cfg.input)
    model, specs = bundle.model, copy.deepcopy(bundle.specs)
    plans = _plans(cfg, model, specs)
    if _drop_old_quantizers(model, plans):
        log("the input was already quantized: its activation quantizers are replaced")
    data = opts.load_data()
    check_model_fits_data(bundle.arch, data, what=str(cfg.input))
    device = _device(opts.device)
    model.to(device)
    before = final_metrics(model, data, device=device)
    score_before = (bundle.manifest.get("metrics") or {}).get("score")
    n_int = sum(p.int_weight or p.int_act for p in plans.values())
    val, test = fmt_pct(before.get("val_acc")), fmt_pct(before.get("test_acc"))
    log(
        f"before: val acc {val}, test acc {test}; "
        f"quantizing {n_int} of {len(plans)} layers with {'ptq' if cfg.ptq else cfg.method}"
    )

    _quantize_model(cfg, model, plans, data, device)
    model.to(device)
    new_specs = qat.bake(model, plans, specs)
    fp16_layers = qat.apply_fp16(model, plans, new_specs)
    needed = {}
    if cfg.accumulator_bits < 32:
        needed = _check_accumulators(cfg, model, new_specs, data, device)
        if len(needed) < len(plans):
            log(f"{len(plans) - len(needed)} layers are not integer x integer: accumulators stay 32 bits")
    _record_specs(cfg, new_specs, plans, needed, fp16_layers)

    model.eval()
    after = final_metrics(model, data, device=device)
    metrics = {
        **after,
        "val_acc_before": before.get("val_acc"),
        "test_acc_before": before.get("test_acc"),
        "score_before": score_before,
    }
    model.to("cpu")
    out_bundle = Bundle(
        model=model, arch=bundle.arch, specs=new_specs, manifest=bundle.manifest, path=bundle.path
    )
    method = "ptq" if cfg.ptq else cfg.method
    compression = {
        "quantize": {
            "method": method, "weight_bits": cfg.weight_bits, "act_bits": cfg.act_bits,
            "first_last_bits": cfg.first_last_bits, "fp16": cfg.fp16,
            "accumulator_bits": cfg.accumulator_bits,
        }
    }  # fmt: skip
    manifest = save_bundle(
        out_bundle, cfg.out, stage="quantize", params=config_params(cfg), metrics=metrics,
        data=data.info, seed=opts.seed, compression=compression,
    )  # fmt: skip
    remove_checkpoints(opts)
    score = (manifest.get("metrics") or {}).get("score") or {}
    return {
        "output": str(cfg.out),
        "method": method,
        "int_weight_layers": sum(p.int_weight for p in plans.values()),
        "int_act_layers": sum(p.int_act for p in plans.values()),
        "ternary_layers": sum(p.ternary for p in plans.values()),
        "fp16_layers": len(fp16_layers),
        "val_acc_before": before.get("val_acc"),
        "val_acc": after.get("val_acc"),
        "test_acc_before": before.get("test_acc"),
        "test_acc": after.get("test_acc"),
        "accumulator_bits": cfg.accumulator_bits,
        "score_before": (score_before or {}).get("score"),
        "score": score.get("score"),
        "content_sha256": manifest.get("content_sha256"),
        "layers": _layer_rows(model, new_specs, plans),
    }
