"""The body of `mncli prune`: load, evaluate, choose layers and targets, prune (+ fine-tune), record,
save. Split from stages/prune.py (config and validation) to keep both short."""

from __future__ import annotations

import copy
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.prune import PruneConfig, agp_schedule, config_params, training_options


def _score(model, specs: dict, arch: dict, dataset: str) -> dict | None:
    from mncli.bundle import score_summary
    from mncli.errors import MncliError

    try:
        return score_summary(model, specs, arch, dataset)
    except MncliError as exc:  # an untraceable model still gets pruned
        log(f"warning: not scored: {exc.message}")
        return None


def _targets(cfg: PruneConfig, model, specs: dict, key: str, default: float | None) -> dict[str, float]:
    """Per-layer targets: candidates by role/patterns, recipe values over the CLI default."""
    from mncli.compress.recipe import load_recipe, resolve_recipe, select_layers

    recipe = load_recipe(cfg.recipe, {key}) if cfg.recipe else {}
    candidates = select_layers(model, cfg.layers or None, include_depthwise=cfg.include_depthwise)
    targets = {}
    for name, settings in resolve_recipe(model, recipe, candidates).items():
        value = settings.get(key, default)
        if value is None:
            continue
        if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
            raise BadInput(f"{key} {value!r} for layer {name} is outside [0, 1)")
        targets[name] = float(value)
    if not any(v > 0 for v in targets.values()):
        raise BadInput(
            f"no layer gets a {key} above 0",
            hint="give --sparsity / --channel-ratio, or name layers in the recipe with a value",
        )
    trains = cfg.total_epochs > 0 or (cfg.method == "reweighted-l1" and cfg.retrain_epochs)
    for name, spec in specs.items():
        weight = spec.get("weight", {})
        if (name in targets or trains) and (
            weight.get("format", "float") != "float" or int(weight.get("bits", 32)) < 32
        ):
            raise BadInput(
                f"layer {name} is already {weight.get('format')} {weight.get('bits')}-bit: pruning and "
                "fine-tuning would move its values off that format",
                hint="prune before ternarize/quantize (a pruned model stays pruned through them)",
            )
    return {n: v for n, v in targets.items() if v > 0}


def _fixed_masks(model, specs: dict) -> dict:
    """Zero patterns of layers the input already has masked: they are kept."""
    modules = dict(model.named_modules())
    return {n: modules[n].weight.detach() == 0 for n, s in specs.items() if s.get("mask") and n in modules}


def _trainer(opts, model, data):
    """train(callbacks, epochs, phase, keep_best): one engine run with a fresh optimiser, checkpointed
    in OUT.ckpt/<phase>/. With keep_best the best validation epoch is kept; the mask callbacks mark
    epochs whose sparsity is still below the target as not eligible."""
    from mncli.stages.train import run_training

    def train(callbacks: list, epochs: int, phase: str, keep_best: bool = True) -> None:
        log(f"{phase}: {epochs} epochs, {opts.optimizer} lr {opts.lr}")
        run_training(model, opts, data, callbacks=callbacks, phase=phase, keep_best=keep_best, epochs=epochs)
        for callback in callbacks:  # the kept state went through the masks; re-apply anyway
            if hasattr(callback, "masker"):
                callback.masker.apply()

    return train


def _unstructured(cfg: PruneConfig, model, specs: dict, targets: dict[str, float], data, train) -> dict:
    from mncli.compress.prune.masks import Masker, sparsity_of
    from mncli.compress.prune.methods import run_agp, run_magnitude, run_reweighted_l1
    from mncli.compress.prune.reweighted_l1 import default_milestones

    modules = dict(model.named_modules())
    sparsity_before = {n: sparsity_of(modules[n].weight.detach()) for n in targets}
    masker = Masker(model, list(targets), fixed=_fixed_masks(model, specs))
    masker.apply()
    epochs = cfg.total_epochs
    global_sparsity = cfg.sparsity if cfg.global_threshold else None
    log(f"pruning {len(targets)} layers with {cfg.method}" + (" (global)" if global_sparsity else ""))
    info: dict = {"method": cfg.method, "global": cfg.global_threshold}
    if cfg.method == "agp":
        steps_per_epoch = (
            data.train.num_batches(cfg.train.batch_size, drop_last=True) if cfg.unit == "steps" else None
        )
        schedule = agp_schedule(cfg, cfg.sparsity if cfg.sparsity is not None else max(targets.values()),
                                steps_per_epoch)  # fmt: skip
        info.update(run_agp(masker, targets, schedule, train, epochs, log, global_sparsity=global_sparsity))
        info["schedule"]["per_layer_final"] = targets
    elif cfg.method == "magnitude":
        info.update(run_magnitude(masker, targets, train, epochs, log, global_sparsity=global_sparsity))
    else:
        retrain = cfg.retrain_epochs if cfg.retrain_epochs is not None else epochs
        milestones = cfg.reweight_at if cfg.reweight_at is not None else default_milestones(epochs)
        info.update(
            run_reweighted_l1(
                model,
                masker,
                targets,
                train,
                epochs,
                retrain,
                log,
                lam=cfg.rl1_lambda,
                eps=cfg.rl1_eps,
                milestones=milestones,
                lr_boost=cfg.lr_boost,
            )
        )
        info["schedule"] = {"regularise_epochs": epochs, "retrain_epochs": retrain, "milestones": milestones}
    masker.apply()
    report = masker.report()
    for name, row in report.items():
        row["before"] = round(sparsity_before.get(name, row["achieved"]), 6)
        spec = specs.setdefault(name, {})
        spec["mask"] = True
        spec.setdefault("method", cfg.method)
        spec["prune_method"] = cfg.method
        if row["target"] is not None:
            spec["target_sparsity"] = round(row["target"], 6)
        spec["sparsity"] = round(row["achieved"], 6)
    target, achieved = masker.overall()
    info["layers"] = report
    info["target"], info["achieved"] = round(target, 6), round(achieved, 6)
    info["max_deviation_weights"] = masker.max_deviation()
    return info


def _structured(cfg: PruneConfig, model, specs: dict, ratios: dict[str, float], arch: dict, train) -> dict:
    from mncli.compress.prune.callbacks import MaskCallback
    from mncli.compress.prune.channels import prune_channels
    from mncli.compress.prune.masks import Masker
    from mncli.models import input_shape

    params_before = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    model.cpu()
    report = prune_channels(model, input_shape(arch), ratios=ratios, criterion=cfg.criterion)
    model.to(device)
    arch["shapes"] = {**arch.get("shapes", {}), **report["shapes"]}
    model.arch = copy.deepcopy(arch)
    params_after = sum(p.numel() for p in model.parameters())
    removed = sum(g["channels"] - g["kept"] for g in report["groups"])
    log(f"removed {removed} channels: {params_before:,} -> {params_after:,} parameters")
    masker = Masker(model, [], fixed=_fixed_masks(model, specs))  # earlier masks survive the fine-tuning
    callback = MaskCallback(masker, log=log)
    epochs = cfg.total_epochs
    if epochs > 0:
        train([callback], epochs, "finetune")
    callback.close()
    for name in report["shapes"]:
        if name in specs and specs[name].get("mask"):
            specs[name]["sparsity"] = masker.report().get(name, {}).get("achieved")
    return {
        "method": "structured",
        "criterion": cfg.criterion,
        "groups": report["groups"],
        "shapes": report["shapes"],
        "params_before": params_before,
        "params_after": params_after,
        "channels_removed": removed,
    }


def prune(cfg: PruneConfig) -> dict:
    import torch

    from mncli.bundle import Bundle, load_bundle, save_bundle
    from mncli.engine.runtime import resolve_device
    from mncli.stages.train import check_model_fits_data, final_metrics, remove_checkpoints

    opts = training_options(cfg)
    torch.manual_seed(opts.seed)
    if opts.resume and not opts.ckpt_dir().is_dir():
        raise BadInput(f"nothing to resume: {opts.ckpt_dir()} does not exist", hint="run without --resume")
    bundle = load_bundle(cfg.input, require_weights=True)
    model, specs, arch = bundle.model, copy.deepcopy(bundle.specs), copy.deepcopy(bundle.arch)
    if cfg.structured:  # layers and targets first: a typo fails before any data is read
        ratio = cfg.channel_ratio if cfg.criterion == "l1" else 0.5  # "zero" ignores the ratio
        targets = _targets(cfg, model, specs, "channel_ratio", ratio)
    else:
        targets = _targets(cfg, model, specs, "sparsity", cfg.sparsity)
    data = opts.load_data()
    check_model_fits_data(arch, data)
    score_before = _score(model, specs, arch, data.name)
    model.to(resolve_device(opts.device))
    before = final_metrics(model, data)
    log(f"before: val acc {before.get('val_acc', 0):.4f}, test acc {before.get('test_acc', 0):.4f}")
    train = _trainer(opts, model, data)
    if cfg.structured:
        info = _structured(cfg, model, specs, targets, arch, train)
    else:
        info = _unstructured(cfg, model, specs, targets, data, train)
    after = final_metrics(model, data)
    model.cpu()
    score_after = _score(model, specs, arch, data.name)
    metrics = {
        **{k: after.get(k) for k in ("val_acc", "val_top5", "test_acc", "test_top5")},
        "val_acc_before": before.get("val_acc"),
        "test_acc_before": before.get("test_acc"),
        "score": score_after if score_after is not None else {"error": "not scored"},
        "score_before": score_before,
    }
    if not cfg.structured:
        metrics["sparsity"] = {"target": info["target"], "achieved": info["achieved"]}
    compression = {"prune": {k: v for k, v in info.items() if k != "layers"}}
    out_bundle = Bundle(model=model, arch=arch, specs=specs, manifest=bundle.manifest, path=bundle.path)
    manifest = save_bundle(
        out_bundle, cfg.out, stage="prune", params=config_params(cfg), metrics=metrics,
        data=data.info, seed=opts.seed, compression=compression,
    )  # fmt: skip
    remove_checkpoints(opts)
    result = {
        "output": str(cfg.out),
        "method": "structured" if cfg.structured else cfg.method,
        **{k: metrics[k] for k in ("val_acc_before", "val_acc", "test_acc_before", "test_acc")},
        "score_before": (score_before or {}).get("score"),
        "score": (score_after or {}).get("score"),
        "content_sha256": manifest.get("content_sha256"),
    }
    if cfg.structured:
        result.update({k: info[k] for k in ("params_before", "params_after", "channels_removed")})
    else:
        result.update({k: info[k] for k in ("target", "achieved", "max_deviation_weights")})
        result["layers"] = {
            n: {"before": r["before"], "target": r["target"], "achieved": r["achieved"]}
            for n, r in info["layers"].items()
        }
    if Path(cfg.out).exists():
        result["file_bytes"] = Path(cfg.out).stat().st_size
        if cfg.input.exists():
            result["input_bytes"] = cfg.input.stat().st_size
    return result
