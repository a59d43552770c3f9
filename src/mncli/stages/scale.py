"""The `scale` stage: compound scaling of an architecture, one point or a grid of short trainings.

Modes: one point (--phi with --alpha/--beta/--gamma, no training); `--grid` (every point trained with
the training options, then the best on validation chosen); `--point K` (point K alone, written beside
the output as OUT.pointK.safetensors, its checkpoints in OUT.pointK.ckpt/); `--collect` (choose among
the point files present). `--grid` is literally "every --point, then --collect", so a grid fanned out
with make -j chooses what the sequential run does.

    result = run(Path("arch.safetensors"), Path("scaled.safetensors"), ScaleConfig(phi=1.0), TrainOptions())
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.training import (
    TrainOptions,
    as_record,
    check_model_fits_data,
    check_writable,
    remove_checkpoints,
    run_training,
)

# The short training of every grid point.
TRAIN_DEFAULTS = dict(epochs=5, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4, schedule="cosine")


@dataclass
class ScaleConfig:
    """The scaling's own options: phi and one point's bases, or the grid, its mode and budgets."""

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

    @property
    def trains(self) -> bool:
        return self.grid or self.point is not None

    def validate(self) -> ScaleConfig:
        """BadInput for a wrong combination or value, before anything is read."""
        modes = sum([self.grid, self.point is not None, self.collect])
        if modes > 1:
            raise BadInput(
                "use one of --grid, --point K and --collect", hint="--grid is every --point, then --collect"
            )
        if self.phi is None and not self.collect:
            raise BadInput(
                "--phi is required", hint="e.g. mncli scale arch.safetensors --phi 1 -o scaled.safetensors"
            )
        if self.phi is not None and not self.phi >= 0:
            raise BadInput(f"--phi must be >= 0, got {self.phi}")
        if modes and any(v is not None for v in (self.alpha, self.beta, self.gamma)):
            raise BadInput("--alpha/--beta/--gamma choose one point; a grid takes --grid-points")
        for option, value in (("--budget-ops", self.budget_ops), ("--budget-params", self.budget_params)):
            if value is not None and not value > 0:
                raise BadInput(f"{option} must be positive, got {value}")
        return self

    def params(self) -> dict:
        """The scaling's options as the manifest records them beside params["train"]."""
        return as_record(self)


@dataclass
class _Stage:
    """One run of the stage: the input, the output, the options and the source architecture."""

    input: Path
    out: Path
    cfg: ScaleConfig
    opts: TrainOptions
    source: object
    main: bool = True  # rank 0 (or one process): the rank that writes

    def _save(self, arch: dict, path: Path, stage: str, metrics: dict, data: dict, extra: dict) -> dict:
        from mncli.bundle import Bundle, save_bundle

        source = self.source
        return save_bundle(
            Bundle(model=None, arch=arch, path=source.path, manifest=source.manifest), path, stage=stage,
            params={"train": self.opts.params(), **self.cfg.params()}, metrics=metrics, data=data,
            seed=self.opts.seed, weights=False, extra=extra,
        )  # fmt: skip

    def _data_info(self) -> dict:
        return {"dataset": self.opts.dataset} if self.opts.dataset else {}

    def single(self) -> dict:
        from mncli.scaling.compound import (
            EFFICIENTNET_ALPHA,
            EFFICIENTNET_BETA,
            EFFICIENTNET_GAMMA,
            GridPoint,
        )
        from mncli.scaling.grid import over_budget, resolution_fixed, scaled_point

        cfg, dataset = self.cfg, self.opts.dataset
        point = GridPoint(
            0,
            EFFICIENTNET_ALPHA if cfg.alpha is None else cfg.alpha,
            EFFICIENTNET_BETA if cfg.beta is None else cfg.beta,
            EFFICIENTNET_GAMMA if cfg.gamma is None else cfg.gamma,
        )
        if min(point.alpha, point.beta, point.gamma) <= 0:
            raise BadInput("--alpha, --beta and --gamma must be positive")
        fixed = resolution_fixed(self.source.arch, dataset)
        record = scaled_point(self.source.arch, point, cfg.phi, fixed, dataset)  # refuses what cannot scale
        if fixed and point.gamma != 1.0:
            log(f"resolution is fixed by the dataset: gamma {point.gamma:g} is not applied")
        reason = over_budget(record["score"], cfg.budget_ops, cfg.budget_params)
        if reason:
            raise BadInput(
                f"the scaled network is over budget: {reason}", hint="lower --phi, or raise the budget"
            )
        record.pop("point")
        extra = {"scale": {"phi": cfg.phi, **record}}
        manifest = self._save(
            record["arch"], self.out, "scale", {"score": record["score"]}, self._data_info(), extra
        )
        return {
            "output": str(self.out),
            "mode": "point",
            "phi": cfg.phi,
            **record,
            "content_sha256": manifest.get("content_sha256"),
        }

    def _grid_settings(self) -> dict:
        """The options a point file shares with its siblings (part of the grid id)."""
        o, cfg = self.opts, self.cfg
        return {
            "dataset": o.dataset,
            "epochs": o.epochs,
            "seed": o.seed,
            "budget": [cfg.budget_ops, cfg.budget_params],
            "train": [o.batch_size, o.lr, o.optimizer, o.weight_decay, o.schedule, o.subset, o.val_size],
        }

    def _plan(self) -> tuple[list[dict], str]:
        """Every point's scaled arch, cost and budget verdict; BadInput when no point fits the budget."""
        from mncli.scaling.compound import grid_points, parse_grid
        from mncli.scaling.grid import grid_id, over_budget, resolution_fixed, scaled_point

        cfg, arch = self.cfg, self.source.arch
        raw = parse_grid(cfg.grid_points)
        fixed = resolution_fixed(arch, self.opts.dataset)
        records = []
        for point in grid_points(raw):
            record = scaled_point(arch, point, cfg.phi, fixed, self.opts.dataset)
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
        return records, grid_id(arch, cfg.phi, raw, self._grid_settings())

    def run_grid(self) -> dict:
        records, gid = self._plan()
        point = self.cfg.point
        if point is not None:
            if not 0 <= point < len(records):
                raise BadInput(f"--point {point} is not in the grid (points 0..{len(records) - 1})")
            return self._run_point(records[point], gid, len(records))[0]
        data = None
        for record in records:
            _, data = self._run_point(record, gid, len(records), data=data)
        return self.collect() if self.main else {}

    def _train(self, arch: dict, data, path: Path) -> float:
        """A short training from scratch, checkpointed beside the point file; the best val accuracy."""
        import torch

        from mncli.models import build_model

        check_model_fits_data(arch, data, what=f"the architecture of {self.input}")
        torch.manual_seed(self.opts.seed)
        model = build_model(arch)
        return float(run_training(model, self.opts, data, out=path).best_val_acc)

    def _run_point(self, record: dict, gid: str, n_points: int, data=None) -> tuple[dict, object]:
        """Train one point (unless over budget) and write its point file; returns (result, data)."""
        from mncli.scaling.grid import point_path

        cfg, index = self.cfg, record["point"]
        path = point_path(self.out, index)
        record = dict(record)
        if record["over_budget"]:
            log(f"point {index}: over budget ({record['over_budget']}), not trained")
            record["val_acc"] = None
        else:
            if data is None:
                data = self.opts.load_data()
            log(
                f"point {index}/{n_points - 1}: depth x{record['depth_mult']:.3f}, "
                f"width x{record['width_mult']:.3f}"
                f" -> {record['score']['params']:,.0f} params, {record['score']['ops']:,.0f} ops; "
                f"training {self.opts.epochs} epochs"
            )
            record["val_acc"] = self._train(record["arch"], data, path)
            record["status"] = "trained"
        if not self.main:  # rank 0 writes the point file
            return {}, data
        extra = {"scale_point": {"grid_id": gid, "phi": cfg.phi, "grid_size": n_points,
                                 "source_arch": self.source.arch, **record}}  # fmt: skip
        manifest = self._save(
            record["arch"], path, "scale-point", {"score": record["score"], "val_acc": record["val_acc"]},
            getattr(data, "info", None) or {"dataset": self.opts.dataset}, extra,
        )  # fmt: skip
        remove_checkpoints(path)
        result = {
            "output": str(path),
            "mode": "point",
            "phi": cfg.phi,
            **record,
            "content_sha256": manifest.get("content_sha256"),
        }
        return result, data

    def collect(self) -> dict:
        from mncli.scaling.compound import parse_grid
        from mncli.scaling.grid import choose, grid_id, present_points
        from mncli.scaling.plot import plot_grid

        cfg, arch = self.cfg, self.source.arch

        def wanted() -> str | None:
            if cfg.phi is None or self.opts.dataset is None:
                return None
            return grid_id(arch, cfg.phi, parse_grid(cfg.grid_points), self._grid_settings())

        records, first = present_points(self.out, arch, wanted, str(self.input))
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
            points, best["point"], self.out.with_suffix(".png"), f"compound scaling, phi {first['phi']:g}"
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
        metrics = {"score": best["score"], "val_acc": best["val_acc"]}
        manifest = self._save(best["arch"], self.out, "scale", metrics, self._data_info(), {"scale": record})
        return {
            "output": str(self.out),
            "mode": "grid",
            "phi": first["phi"],
            "choice": best["point"],
            "arch": best["arch"],
            "points": points,
            "plot": None if png is None else str(png),
            "content_sha256": manifest.get("content_sha256"),
        }


def run(input: Path, out: Path, config: ScaleConfig, train: TrainOptions) -> dict:
    """Scale INPUT's architecture (one point, a grid, a grid point or the collection) and write OUT.
    Under torchrun every rank trains each grid point (DDP); rank 0 alone writes the point files and
    OUT and returns the result, the others {"rank": r}."""
    from mncli.bundle import load_bundle
    from mncli.stages.compression import process_group

    cfg = config.validate()
    check_writable(out, train, input)
    opts = train.resolved(**TRAIN_DEFAULTS).with_fallbacks()
    if cfg.trains:
        if opts.dataset is None:
            raise BadInput(
                "a scaling grid trains each point: --dataset is required", hint="e.g. -d fashion-mnist"
            )
        opts.validate()
    source = load_bundle(input, require_weights=False)
    with process_group(opts.device) as ranks:
        stage = _Stage(Path(input), Path(out), cfg, opts, source, ranks.is_main)
        if cfg.collect:
            result = stage.collect() if ranks.is_main else {}
        elif cfg.trains:
            result = stage.run_grid()
        else:
            result = stage.single() if ranks.is_main else {}
        return result if ranks.is_main else {"rank": ranks.rank}
