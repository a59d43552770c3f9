"""The `scale` stage: compound scaling of an architecture, one point or a grid of short trainings.

Modes: one point (--phi with --alpha/--beta/--gamma, no training); `--grid` (every point trained for
--epochs, then the best on validation chosen); `--point K` (point K alone, written beside the output as
OUT.pointK.safetensors); `--collect` (choose among the point files present). `--grid` is literally
"every --point, then --collect", so a grid fanned out with make -j chooses what the sequential run does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log


@dataclass
class ScaleConfig:
    input: Path
    out: Path
    phi: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    grid: bool = False
    grid_points: str | None = None
    point: int | None = None
    collect: bool = False
    budget_ops: float | None = None
    budget_params: float | None = None
    dataset: str | None = None
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    max_steps_per_epoch: int | None = None
    augment: str | None = None
    precision: str = "auto"
    data_dir: Path | None = None
    download: bool = False
    subset: int | None = None
    val_size: int | None = None
    seed: int = 0
    device: str = "auto"


def config_params(cfg: ScaleConfig) -> dict:
    params = asdict(cfg)
    for key in ("input", "out", "data_dir"):
        params[key] = None if params[key] is None else str(params[key])
    return params


def _check(cfg: ScaleConfig) -> None:
    modes = sum([cfg.grid, cfg.point is not None, cfg.collect])
    if modes > 1:
        raise BadInput(
            "use one of --grid, --point K and --collect", hint="--grid is every --point, then --collect"
        )
    if cfg.phi is None and not cfg.collect:
        raise BadInput(
            "--phi is required", hint="e.g. mncli scale arch.safetensors --phi 1 -o scaled.safetensors"
        )
    if cfg.phi is not None and not cfg.phi >= 0:
        raise BadInput(f"--phi must be >= 0, got {cfg.phi}")
    if (cfg.grid or cfg.point is not None) and cfg.dataset is None:
        raise BadInput(
            "a scaling grid trains each point: --dataset is required", hint="e.g. -d fashion-mnist"
        )
    if modes and any(v is not None for v in (cfg.alpha, cfg.beta, cfg.gamma)):
        raise BadInput("--alpha/--beta/--gamma choose one point; a grid takes --grid-points")
    for option, value in (("--budget-ops", cfg.budget_ops), ("--budget-params", cfg.budget_params)):
        if value is not None and not value > 0:
            raise BadInput(f"{option} must be positive, got {value}")


def run(cfg: ScaleConfig) -> dict:
    from mncli.bundle import load_bundle

    _check(cfg)
    source = load_bundle(cfg.input, require_weights=False)
    if cfg.collect:
        return collect(cfg, source)
    if cfg.grid or cfg.point is not None:
        return run_grid(cfg, source)
    return _single(cfg, source)


def _single(cfg: ScaleConfig, source) -> dict:
    from mncli.bundle import Bundle, save_bundle
    from mncli.scaling.compound import EFFICIENTNET_ALPHA, EFFICIENTNET_BETA, EFFICIENTNET_GAMMA, GridPoint
    from mncli.scaling.grid import over_budget, resolution_fixed, scaled_point, task_for

    point = GridPoint(
        0,
        EFFICIENTNET_ALPHA if cfg.alpha is None else cfg.alpha,
        EFFICIENTNET_BETA if cfg.beta is None else cfg.beta,
        EFFICIENTNET_GAMMA if cfg.gamma is None else cfg.gamma,
    )
    if min(point.alpha, point.beta, point.gamma) <= 0:
        raise BadInput("--alpha, --beta and --gamma must be positive")
    fixed = resolution_fixed(source.arch, cfg.dataset)
    if fixed and point.gamma != 1.0:
        log(f"resolution is fixed by the dataset: gamma {point.gamma:g} is not applied")
    task = task_for(cfg.dataset)
    record = scaled_point(source.arch, point, cfg.phi, fixed, task)
    reason = over_budget(record["score"], cfg.budget_ops, cfg.budget_params)
    if reason:
        raise BadInput(
            f"the scaled network is over budget: {reason}", hint="lower --phi, or raise the budget"
        )
    record.pop("point")
    manifest = save_bundle(
        Bundle(model=None, arch=record["arch"], path=source.path, manifest=source.manifest),
        cfg.out,
        stage="scale",
        params=config_params(cfg),
        metrics={"score": record["score"]},
        data={"dataset": cfg.dataset} if cfg.dataset else {},
        seed=cfg.seed,
        weights=False,
        extra={"scale": {"phi": cfg.phi, **record}},
    )
    return {
        "out": str(cfg.out),
        "mode": "point",
        "phi": cfg.phi,
        **record,
        "content_sha256": manifest.get("content_sha256"),
    }


def _grid_settings(cfg: ScaleConfig) -> dict:
    return {
        "dataset": cfg.dataset,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "budget": [cfg.budget_ops, cfg.budget_params],
        "train": [
            cfg.batch_size,
            cfg.lr,
            cfg.optimizer,
            cfg.weight_decay,
            cfg.schedule,
            cfg.subset,
            cfg.val_size,
        ],
    }


def _plan(cfg: ScaleConfig, source) -> tuple[list[dict], str]:
    """Every point's scaled arch, cost and budget verdict; BadInput when no point fits the budget."""
    from mncli.scaling.compound import grid_points, parse_grid
    from mncli.scaling.grid import grid_id, over_budget, resolution_fixed, scaled_point, task_for

    raw = parse_grid(cfg.grid_points)
    fixed = resolution_fixed(source.arch, cfg.dataset)
    task = task_for(cfg.dataset)
    records = []
    for point in grid_points(raw):
        record = scaled_point(source.arch, point, cfg.phi, fixed, task)
        reason = over_budget(record["score"], cfg.budget_ops, cfg.budget_params)
        record["status"] = "over budget" if reason else "pending"
        record["over_budget"] = reason
        records.append(record)
    if all(r["over_budget"] for r in records):
        cheapest = min(records, key=lambda r: r["score"]["ops"])
        raise BadInput(
            f"every grid point is over budget (the cheapest, point {cheapest['point']}, has "
            f"{cheapest['score']['ops']:,.0f} ops and {cheapest['score']['params']:,.0f} params)",
            hint="lower --phi, raise --budget-ops/--budget-params, or give cheaper --grid-points",
        )
    return records, grid_id(source.arch, cfg.phi, raw, _grid_settings(cfg))


def run_grid(cfg: ScaleConfig, source) -> dict:
    records, gid = _plan(cfg, source)
    if cfg.point is not None:
        if not 0 <= cfg.point < len(records):
            raise BadInput(f"--point {cfg.point} is not in the grid (points 0..{len(records) - 1})")
        return _run_point(cfg, source, records[cfg.point], gid, len(records))[0]
    data = None
    for record in records:
        _, data = _run_point(cfg, source, record, gid, len(records), data=data)
    return collect(cfg, source)


def train_options(cfg: ScaleConfig):
    """Each point trains as `mncli train` would (same split, engine and options)."""
    from mncli.stages.train import TrainOptions

    return TrainOptions(
        dataset=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download, subset=cfg.subset,
        val_size=cfg.val_size, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
        lr=cfg.lr, schedule=cfg.schedule, weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
        augment=cfg.augment, device=cfg.device, precision=cfg.precision, seed=cfg.seed,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
    ).validate()  # fmt: skip


def _train(cfg: ScaleConfig, arch: dict, data) -> float:
    """A short training from scratch; the best validation accuracy."""
    import torch

    from mncli.models import build_model
    from mncli.stages.train import check_model_fits_data, run_training

    check_model_fits_data(arch, data, what=f"the architecture of {cfg.input}")
    torch.manual_seed(cfg.seed)
    model = build_model(arch)
    return float(run_training(model, train_options(cfg), data).best_val_acc)


def _run_point(
    cfg: ScaleConfig, source, record: dict, gid: str, n_points: int, data=None
) -> tuple[dict, object]:
    """Train one point (unless over budget) and write its point file; returns (result, data)."""
    from mncli.bundle import Bundle, save_bundle
    from mncli.scaling.grid import point_path

    index = record["point"]
    path = point_path(cfg.out, index)
    record = dict(record)
    if record["over_budget"]:
        log(f"point {index}: over budget ({record['over_budget']}), not trained")
        record["val_acc"] = None
    else:
        if data is None:
            data = train_options(cfg).load_data()
        log(
            f"point {index}/{n_points - 1}: depth x{record['depth_mult']:.3f}, "
            f"width x{record['width_mult']:.3f}"
            f" -> {record['score']['params']:,.0f} params, {record['score']['ops']:,.0f} ops; "
            f"training {cfg.epochs} epochs"
        )
        record["val_acc"] = _train(cfg, record["arch"], data)
        record["status"] = "trained"
    manifest = save_bundle(
        Bundle(model=None, arch=record["arch"], path=source.path, manifest=source.manifest),
        path,
        stage="scale-point",
        params=config_params(cfg),
        metrics={"score": record["score"], "val_acc": record["val_acc"]},
        data=getattr(data, "info", None) or {"dataset": cfg.dataset},
        seed=cfg.seed,
        weights=False,
        extra={
            "scale_point": {
                "grid_id": gid,
                "phi": cfg.phi,
                "grid_size": n_points,
                "source_arch": source.arch,
                **record,
            }
        },
    )
    result = {
        "out": str(path),
        "mode": "point",
        "phi": cfg.phi,
        **record,
        "content_sha256": manifest.get("content_sha256"),
    }
    return result, data


def collect(cfg: ScaleConfig, source) -> dict:
    from mncli.bundle import Bundle, save_bundle
    from mncli.scaling.compound import parse_grid
    from mncli.scaling.grid import choose, grid_id, present_points
    from mncli.scaling.plot import plot_grid

    def wanted() -> str | None:
        if cfg.phi is None or cfg.dataset is None:
            return None
        return grid_id(source.arch, cfg.phi, parse_grid(cfg.grid_points), _grid_settings(cfg))

    records, first = present_points(cfg.out, source.arch, wanted, str(cfg.input))
    missing = sorted(set(range(first["grid_size"])) - {r["point"] for r in records})
    if missing:
        log(f"points {missing} have no file yet: choosing among the {len(records)} present")
    best = choose(records)
    if best is None:
        raise BadInput(
            "every grid point present is over budget: nothing was trained",
            hint="lower --phi, raise --budget-ops/--budget-params, or give cheaper --grid-points",
        )
    points = [
        {k: v for k, v in r.items() if k not in ("source_arch", "grid_id", "grid_size")} for r in records
    ]
    png = plot_grid(
        points, best["point"], cfg.out.with_suffix(".png"), f"compound scaling, phi {first['phi']:g}"
    )
    log(
        f"chosen: point {best['point']} (val top-1 {100 * best['val_acc']:.2f} %, "
        f"score {best['score']['score']:.6f})"
    )
    record = {
        "phi": first["phi"],
        "grid_id": first["grid_id"],
        "grid": [{k: p[k] for k in ("point", "alpha", "beta", "gamma")} for p in points],
        "points": points,
        "choice": best["point"],
        "plot": None if png is None else png.name,
    }
    manifest = save_bundle(
        Bundle(model=None, arch=best["arch"], path=source.path, manifest=source.manifest),
        cfg.out,
        stage="scale",
        params=config_params(cfg),
        metrics={"score": best["score"], "val_acc": best["val_acc"]},
        data={"dataset": cfg.dataset} if cfg.dataset else {},
        seed=cfg.seed,
        weights=False,
        extra={"scale": record},
    )
    return {
        "out": str(cfg.out),
        "mode": "grid",
        "phi": first["phi"],
        "choice": best["point"],
        "arch": best["arch"],
        "points": points,
        "plot": None if png is None else str(png),
        "content_sha256": manifest.get("content_sha256"),
    }
