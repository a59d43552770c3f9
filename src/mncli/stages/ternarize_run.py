"""The body of `mncli ternarize`: load, check, choose layers, fine-tune with ternary layers, bake,
evaluate, score, save. Split from stages/ternarize.py (config, validation, grid) to keep both short."""

from __future__ import annotations

import copy
from pathlib import Path

from mncli.errors import BadInput, MncliError
from mncli.log import log
from mncli.stages.ternarize import TernarizeConfig, _pct, config_params


def _device(name: str):
    from mncli.engine.runtime import distributed_env, resolve_device

    return resolve_device(name, distributed_env()[1])


def _evaluate(model, data, device) -> dict:
    from mncli.engine import evaluate

    val, test = evaluate(model, data.val, device), evaluate(model, data.test, device)
    return {"val_acc": val["top1"] if len(data.val) else None, "test_acc": test["top1"]}


def _score(model, specs: dict, arch: dict, dataset: str) -> dict | None:
    from mncli.bundle import score_summary

    try:
        return score_summary(model, specs, arch, dataset)
    except MncliError as exc:  # an untraceable model still gets ternarized
        log(f"warning: not scored: {exc.message}")
        return None


def method_defaults(cfg: TernarizeConfig) -> dict:
    from mncli.compress.ternary.ec2t import EC2T_DEFAULTS
    from mncli.compress.ternary.ttq import MIT_DEFAULTS, TTQ_DEFAULTS

    if cfg.method == "ec2t":
        return EC2T_DEFAULTS
    return MIT_DEFAULTS if cfg.variant == "mit" else TTQ_DEFAULTS


def train_options(cfg: TernarizeConfig, out: Path):
    """The common training options, with the method's original optimiser settings where not given."""
    from mncli.stages.train import TrainOptions

    d = method_defaults(cfg)
    return TrainOptions(
        dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, subset=cfg.subset,
        val_size=cfg.val_size, epochs=cfg.epochs if cfg.epochs is not None else d["epochs"],
        batch_size=cfg.batch_size or d["batch_size"], optimizer=d["optimizer"],
        lr=cfg.lr if cfg.lr is not None else d["lr"],
        momentum=cfg.momentum if cfg.momentum is not None else d.get("momentum", 0.9),
        schedule=cfg.schedule or d["schedule"],
        weight_decay=cfg.weight_decay if cfg.weight_decay is not None else d["weight_decay"],
        teacher=cfg.teacher, device=cfg.device, seed=cfg.seed, out=out, resume=cfg.resume,
    ).validate()  # fmt: skip


def _overrides(cfg: TernarizeConfig, epochs: int) -> dict:
    """TrainConfig fields TrainOptions does not carry: nesterov and the step schedule's milestones."""
    d = method_defaults(cfg)
    milestones = cfg.milestones or sorted({round(f * epochs) for f in d.get("milestone_fractions", ())})
    return {"nesterov": d.get("nesterov", False), "milestones": tuple(float(m) for m in milestones),
            "gamma": d.get("gamma", 0.1)}  # fmt: skip


def _check_input(bundle, names: list[str], path: Path) -> None:
    already = [n for n, s in bundle.specs.items() if (s.get("weight") or {}).get("format") == "ternary"]
    if already:
        raise BadInput(
            f"{path} is already ternary ({len(already)} layers, e.g. {already[0]})",
            hint="ternarize the full-precision or pruned artifact it was made from",
        )
    for name in names:
        weight = bundle.specs.get(name, {}).get("weight") or {}
        if weight.get("format", "float") != "float" or int(weight.get("bits", 32)) < 32:
            raise BadInput(
                f"layer {name} is already {weight.get('format')} {weight.get('bits')}-bit",
                hint="ternarize before quantize; exclude the layer with --layers '!NAME'",
            )


def _attach(cfg: TernarizeConfig, model, names, masks, ini_c: float, lambda_div: float) -> dict:
    from mncli.compress.ternary.common import attach
    from mncli.compress.ternary.ec2t import EC2TWeight, make_layers_decay
    from mncli.compress.ternary.ttq import MITTernaryWeight, TTQWeight

    d = method_defaults(cfg)
    threshold = cfg.threshold if cfg.threshold is not None else d.get("threshold")
    if cfg.method == "ec2t":
        decay = make_layers_decay(model, names)
        return attach(model, names, lambda n, w: EC2TWeight(w, ini_c, lambda_div, decay[n], masks.get(n)))
    if cfg.variant == "mit":
        return attach(model, names, lambda n, w: MITTernaryWeight(w, threshold, masks.get(n)))
    return attach(model, names, lambda n, w: TTQWeight(w, threshold, masks.get(n), init=cfg.scale_init))


def _fit(model, opts, data, callbacks: list, phase: str, epochs: int, overrides: dict) -> dict:
    from dataclasses import replace

    from mncli.stages.train import run_training

    if epochs == 0:
        return {"epochs": 0}
    result = run_training(
        model, replace(opts, epochs=epochs), data, callbacks=callbacks, phase=phase, **overrides
    )
    return {"epochs": epochs, "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
            "history": result.history}  # fmt: skip


def _train(cfg: TernarizeConfig, model, layers: dict, opts, data, pruned_others: list[str]) -> dict:
    from mncli.compress.ternary.ec2t import EC2TCallback
    from mncli.compress.ternary.ttq import TTQCallback
    from mncli.stages.train_run import KeepMasks

    # Pruned layers that stay full precision (depthwise, stem...) keep their zeros too.
    keep = [KeepMasks(model, pruned_others)] if pruned_others else []

    d = method_defaults(cfg)
    overrides = _overrides(cfg, opts.epochs)
    log = {"train": opts.config(**overrides).to_dict()}
    if cfg.method != "ec2t":
        scale_lr = cfg.scale_lr if cfg.scale_lr is not None else opts.lr
        log["scale_lr"] = scale_lr
        callback = TTQCallback(model, layers, scale_lr)
        log["fit"] = _fit(model, opts, data, [callback, *keep], "ttq", opts.epochs, overrides)
        return log
    latent_lr = cfg.latent_lr if cfg.latent_lr is not None else d["latent_lr"]
    centroid_lr = cfg.centroid_lr if cfg.centroid_lr is not None else d["centroid_lr"]
    log.update(latent_lr=latent_lr, centroid_lr=centroid_lr)
    phase1 = EC2TCallback(model, layers, latent_lr, centroid_lr)
    log["fit"] = _fit(model, opts, data, [phase1, *keep], "ec2t", opts.epochs, overrides)
    retrain = cfg.retrain_epochs if cfg.retrain_epochs is not None else d["retrain_epochs"]
    phase2 = EC2TCallback(model, layers, latent_lr, centroid_lr, retrain=True)  # freezes the assignment
    log["retrain"] = _fit(model, opts, data, [phase2, *keep], "retrain", retrain, _overrides(cfg, retrain))
    log["retrain_epochs"] = retrain
    return log


def ternary_file_bytes(path: Path, names: list[str]) -> dict:
    """Bytes the file spends on the ternary weights vs. the MicroNet charge (n + 2*nnz bits + 2 scales)."""
    from mncli.artifact import load_artifact

    tensors, manifest = load_artifact(path)
    stored = charged = 0.0
    for name in names:
        key = f"{name}.weight::"
        stored += sum(
            t.numel() * t.element_size()
            for k, t in tensors.items()
            if k.startswith(key) and not k.endswith("::shape")
        )
        spec = manifest["compression"]["layers"][name]
        numel = int(tensors[f"{key}shape"].prod())
        nnz = round(numel * (1.0 - spec["sparsity"]))
        mask_bits = numel if spec["mask"] else 0
        charged += (mask_bits + 2 * nnz) / 8 + 2 * tensors[f"{key}wp"].element_size()
    return {
        "ternary_bytes": int(stored),
        "ternary_bytes_charged": round(charged, 1),
        "file_bytes": path.stat().st_size,
    }


def ternarize(
    cfg: TernarizeConfig, *, ini_c: float, lambda_div: float, out: Path, extra: dict | None = None
) -> dict:
    import torch

    from mncli.bundle import Bundle, load_bundle, save_bundle
    from mncli.compress.ternary.common import bake, pruning_masks, select_ternary_layers, ternary_specs
    from mncli.stages.train import check_model_fits_data, remove_checkpoints

    torch.manual_seed(cfg.seed)
    bundle = load_bundle(cfg.input, require_weights=True)
    model, specs, arch = bundle.model, copy.deepcopy(bundle.specs), copy.deepcopy(bundle.arch)
    names = select_ternary_layers(model, cfg.layers or None, include_depthwise=cfg.include_depthwise)
    _check_input(bundle, names, Path(cfg.input))
    masks = pruning_masks(model, specs, names)
    opts = train_options(cfg, out)
    data = opts.load_data()
    check_model_fits_data(arch, data, what=str(cfg.input))
    score_before = _score(model, specs, arch, data.name)
    device = _device(cfg.device)
    model.to(device)
    before = _evaluate(model, data, device)
    log(
        f"before: val acc {_pct(before['val_acc'])}, test acc {_pct(before['test_acc'])}; "
        f"ternarizing {len(names)} layers: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
    )
    layers = _attach(cfg, model, names, masks, ini_c, lambda_div)
    pruned_others = [n for n, s in specs.items() if s.get("mask") and n not in names]
    training = _train(cfg, model, layers, opts, data, pruned_others)
    stats = bake(model, layers)
    method = {"ec2t": "ec2t", "ttq": "ttq-mit" if cfg.variant == "mit" else "ttq"}[cfg.method]
    new_specs = ternary_specs(specs, stats, method, {})
    after = _evaluate(model, data, device)
    model.cpu()
    score_after = _score(model, new_specs, arch, data.name)
    nnz = sum(s["nnz"] for s in stats.values())
    numel = sum(s["numel"] for s in stats.values())
    summary = {
        "method": method,
        "ternary_layers": len(stats),
        "ternary_weights": numel,
        "ternary_nonzeros": nnz,
        "ternary_sparsity": 1.0 - nnz / numel,
        "pruned_layers_kept": sorted(masks),
        **({"ini_c": ini_c, "lambda_div": lambda_div} if cfg.method == "ec2t" else {}),
        **({"threshold": cfg.threshold if cfg.threshold is not None else method_defaults(cfg)["threshold"]}
           if cfg.method == "ttq" else {}),
    }  # fmt: skip
    metrics = {
        "val_acc": after["val_acc"], "test_acc": after["test_acc"],
        "val_acc_before": before["val_acc"], "test_acc_before": before["test_acc"],
        "ternary_sparsity": summary["ternary_sparsity"],
        "score": score_after if score_after is not None else {"error": "not scored"},
        "score_before": score_before, "training": training,
    }  # fmt: skip
    out_bundle = Bundle(model=model, arch=arch, specs=new_specs, manifest=bundle.manifest, path=bundle.path)
    params = {**config_params(cfg), "ini_c": ini_c, "lambda_div": lambda_div, **(extra or {})}
    manifest = save_bundle(
        out_bundle, out, stage="ternarize", params=params, metrics=metrics, data=data.info, seed=cfg.seed,
        compression={"ternarize": summary},
    )  # fmt: skip
    remove_checkpoints(opts)
    return {
        "output": str(out),
        **summary,
        "val_acc_before": before["val_acc"], "val_acc": after["val_acc"],
        "test_acc_before": before["test_acc"], "test_acc": after["test_acc"],
        "score_before": (score_before or {}).get("score"), "score": (score_after or {}).get("score"),
        **ternary_file_bytes(Path(out), list(stats)),
        "content_sha256": manifest.get("content_sha256"),
        "layers": {n: {k: s[k] for k in ("numel", "sparsity", "wp", "wn")} for n, s in stats.items()},
    }  # fmt: skip
