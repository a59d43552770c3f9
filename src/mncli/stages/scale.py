"""The `scale` stage: compound scaling of an architecture, one point or a grid of trainings.

The architecture comes from an input artifact or from `--arch NAME` (the zoo, sized for the dataset's
classes, channels and image size as `train --arch` sizes it, without reading the data). Modes: one
point (--phi with --alpha/--beta/--gamma, no training: OUT is architecture-only); `--grid` (every point
trained from scratch with the training options, then the best on validation chosen); `--point K`
(point K alone, written beside the output with its trained weights as OUT.pointK.safetensors, its
checkpoints in OUT.pointK.ckpt/); `--collect` (choose among the point files present and write the
winner's weights and metrics as OUT). `--grid` is literally "every --point, then --collect", so a grid
fanned out with make -j or a Slurm array chooses what the sequential run does. With --resume a point
whose file of the same grid already holds its trained weights is kept, not trained again.

    result = run(Path("arch.safetensors"), Path("scaled.safetensors"), ScaleConfig(phi=1.0), TrainOptions())
    result = run(None, Path("s.safetensors"), ScaleConfig(phi=3.5, grid=True, arch="micronet-cifar"),
                 TrainOptions(dataset="cifar100", epochs=250))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.training import (
    TrainOptions,
    as_record,
    check_model_fits_data,
    check_writable,
    final_metrics,
    image_size_choice,
    input_size_of,
    loading_line,
    remove_checkpoints,
    run_training,
)

# The training of every grid point: EC2T's (SGD 0.1 with Nesterov, weight decay 5e-4, cosine, batch
# 128; ALGORITHMS.md "scale"), for 5 epochs unless --epochs says otherwise (EC2T trained 200-250).
TRAIN_DEFAULTS = dict(epochs=5, batch_size=128, lr=0.1, optimizer="sgd", weight_decay=5e-4, schedule="cosine")


@dataclass
class ScaleConfig:
    """The scaling's own options: the architecture when there is no input (`arch`, `arch_opts`), phi
    and one point's bases, or the grid, its mode and budgets."""

    arch: str | None = None
    arch_opts: dict = field(default_factory=dict)
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
        if self.arch_opts and self.arch is None:
            raise BadInput(
                "--arch-opt applies to --arch only", hint="an input artifact keeps its architecture"
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
    """One run of the stage: the input (None with --arch), the output, the options and the source."""

    input: Path | None
    out: Path
    cfg: ScaleConfig
    opts: TrainOptions
    source: object  # a Bundle: the input's, or --arch's architecture alone
    main: bool = True  # rank 0 (or one process): the rank that writes

    @property
    def source_name(self) -> str:
        return str(self.input) if self.input is not None else f"--arch {self.cfg.arch}"

    def _save(self, arch: dict, path: Path, stage: str, metrics: dict, data: dict, extra: dict,
              model=None) -> dict:  # fmt: skip
        """Write `path`: with `model`'s weights when given, else the architecture alone."""
        from mncli.bundle import Bundle, save_bundle

        source = self.source
        return save_bundle(
            Bundle(model=model, arch=arch, path=source.path, manifest=source.manifest), path, stage=stage,
            params={"train": self.opts.params(), **self.cfg.params()}, metrics=metrics, data=data,
            seed=self.opts.seed, weights=model is not None, extra=extra,
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
            **({"image_size": o.image_size} if o.image_size is not None else {}),
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
        from mncli.scaling.grid import point_path, trained_point

        records, gid = self._plan()
        point = self.cfg.point
        if point is not None and not 0 <= point < len(records):
            raise BadInput(f"--point {point} is not in the grid (points 0..{len(records) - 1})")
        todo = records if point is None else [records[point]]
        # --resume keeps points already trained; every rank reads their files before any rank trains,
        # so all of them skip the same points.
        kept = {}
        if self.opts.resume:
            kept = {r["point"]: trained_point(point_path(self.out, r["point"]), gid) for r in todo}
        loaded: dict = {}  # image size -> data: ImageNet points are read at their own resolutions
        results = []
        for record in todo:
            if kept.get(record["point"]) is not None:
                results.append(self._kept_point(*kept[record["point"]]))
            else:
                results.append(self._run_point(record, gid, len(records), loaded))
        if point is not None:
            return results[0]
        return self.collect() if self.main else {}

    def _train(self, arch: dict, data, path: Path):
        """Train a new model of `arch` from scratch on `data` (`_point_data`), checkpointed beside the
        point file; returns the model (its best-on-validation weights) and the engine's FitResult."""
        import torch

        from mncli.models import build_model

        torch.manual_seed(self.opts.seed)
        model = build_model(arch)
        return model, run_training(model, self.opts, data, out=path)

    def _point_result(self, record: dict, path: Path, content_sha256: str | None) -> dict:
        return {
            "output": str(path),
            "mode": "point",
            "phi": self.cfg.phi,
            **record,
            "content_sha256": content_sha256,
        }

    def _kept_point(self, path: Path, manifest: dict) -> dict:
        """A point --resume finds already trained: its file stays as it is."""
        shared = ("grid_id", "grid_size", "phi", "source_arch")
        record = {k: v for k, v in manifest["scale_point"].items() if k not in shared}
        log(f"point {record['point']}: already trained in {path}, kept (--resume)")
        if self.main:  # a checkpoint left behind by a run stopped after writing the point file
            remove_checkpoints(path)
        return self._point_result(record, path, manifest.get("content_sha256"))

    def _point_data(self, arch: dict, index: int, loaded: dict):
        """The data point `index` trains on: ImageNet at the point's resolution (or --image-size),
        each size read once (`loaded`: size -> data); a dataset of fixed size once. BadInput when
        the architecture does not fit the data."""
        own = input_size_of(arch)
        size, _ = image_size_choice(self.opts.dataset, self.opts.image_size, own, "")
        fresh = size not in loaded
        if fresh:
            loaded[size] = self.opts.load_data(own, f"point {index}'s resolution")
        check_model_fits_data(arch, loaded[size], what=f"the architecture of {self.source_name}")
        if fresh:
            log(loading_line(loaded[size]))
        return loaded[size]

    def _run_point(self, record: dict, gid: str, n_points: int, loaded: dict) -> dict:
        """Train one point (unless over budget) and write its point file, with the trained weights;
        returns the point's result. `loaded`: the data read so far, by image size."""
        from mncli.scaling.grid import point_path

        cfg, index = self.cfg, record["point"]
        path = point_path(self.out, index)
        record = dict(record)
        model, metrics, data = None, {}, None
        if record["over_budget"]:
            log(f"point {index}: over budget ({record['over_budget']}), not trained")
            record["val_acc"] = record["test_acc"] = None
        else:
            data = self._point_data(record["arch"], index, loaded)
            log(
                f"point {index}/{n_points - 1}: depth x{record['depth_mult']:.3f}, "
                f"width x{record['width_mult']:.3f}"
                f" -> {record['score']['params']:,.0f} params, {record['score']['ops']:,.0f} ops; "
                f"training {self.opts.epochs} epochs"
            )
            model, fit = self._train(record["arch"], data, path)
            metrics = final_metrics(model, data, fit)  # under torchrun every rank measures its share
            record["val_acc"] = float(fit.best_val_acc)  # what the choice compares
            record["test_acc"] = metrics.get("test_acc")
            record["status"] = "trained"
        if not self.main:  # rank 0 writes the point file
            return {}
        extra = {"scale_point": {"grid_id": gid, "phi": cfg.phi, "grid_size": n_points,
                                 "source_arch": self.source.arch, **record}}  # fmt: skip
        manifest = self._save(
            record["arch"], path, "scale-point",
            {"val_acc": record["val_acc"], **metrics, "score": record["score"]},
            getattr(data, "info", None) or {"dataset": self.opts.dataset}, extra,
            model=None if model is None else model.cpu().eval(),
        )  # fmt: skip
        remove_checkpoints(path)
        return self._point_result(record, path, manifest.get("content_sha256"))

    def collect(self) -> dict:
        """Choose among the point files present and write the winner, with its weights and metrics."""
        from mncli.bundle import load_bundle
        from mncli.scaling.compound import parse_grid
        from mncli.scaling.grid import choose, grid_id, point_path, present_points
        from mncli.scaling.plot import plot_grid

        cfg, arch = self.cfg, self.source.arch

        def wanted() -> str | None:
            if cfg.phi is None or self.opts.dataset is None:
                return None
            return grid_id(arch, cfg.phi, parse_grid(cfg.grid_points), self._grid_settings())

        records, first = present_points(self.out, arch, wanted, self._point_command())
        missing = sorted(set(range(first["grid_size"])) - {r["point"] for r in records})
        if missing:
            log(f"points {missing} have no file yet: choosing among the {len(records)} present")
        best = choose(records)
        if best is None:
            raise BadInput(
                "every grid point present is over budget: nothing was trained",
                hint="lower --phi, raise --budget-ops/--budget-params, or give cheaper --grid-points",
            )
        winner_path = point_path(self.out, best["point"])
        winner = load_bundle(winner_path, require_weights=False)
        if not winner.weights:  # a point file written before point files kept their weights
            log(f"{winner_path} holds no weights: {self.out} is architecture-only")
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
            "choice_file": winner_path.name,
            "choice_sha256": winner.manifest.get("content_sha256"),
            "plot": None if png is None else png.name,
        }
        metrics = {
            "val_acc": best["val_acc"],
            **(winner.manifest.get("metrics") or {}),
            "score": best["score"],
        }
        manifest = self._save(
            best["arch"], self.out, "scale", metrics, winner.manifest.get("data") or self._data_info(),
            {"scale": record}, model=winner.model if winner.weights else None,
        )  # fmt: skip
        return {
            "output": str(self.out),
            "mode": "grid",
            "phi": first["phi"],
            "choice": best["point"],
            "arch": best["arch"],
            "val_acc": best["val_acc"],
            "test_acc": metrics.get("test_acc"),
            "weights": winner.weights,
            "points": points,
            "plot": None if png is None else str(png),
            "content_sha256": manifest.get("content_sha256"),
        }

    def _point_command(self) -> str:
        """How a point of this source is run, for the hint when none is present."""
        if self.input is not None:
            return f"mncli scale {self.input}"
        opts = "".join(f" --arch-opt {k}={v}" for k, v in self.cfg.arch_opts.items())
        return f"mncli scale --arch {self.cfg.arch}{opts}"


def _dataset_args(name: str, arch_opts: dict, dataset: str | None) -> dict:
    """The arguments of `--arch NAME` for `dataset`: its classes, input channels and image size (what
    `train --arch` takes from the loaded data), known here without reading the data; --arch-opt wins."""
    from mncli.data import canonical_name
    from mncli.data.datasets import parse_synthetic
    from mncli.stages.score import arch_args_for

    if dataset is None:
        return dict(arch_opts)
    base = canonical_name(dataset)
    if base != "synthetic":
        return arch_args_for(name, base, arch_opts)
    synthetic = parse_synthetic(dataset)
    channels, size, _ = synthetic["shape"]
    return {"num_classes": synthetic["classes"], "in_channels": channels, "input_size": size, **arch_opts}


def _source_from_arch(name: str, arch_opts: dict, dataset: str | None):
    """The Bundle of `--arch NAME` as the grid's source: its architecture alone (built on the meta
    device; every grid point trains a model of its own from scratch)."""
    from mncli.bundle import Bundle
    from mncli.models import create_model
    from mncli.scoring import meta_device

    with meta_device():
        model = create_model(name, **_dataset_args(name, arch_opts, dataset))
    return Bundle(model=None, arch=model.arch, weights=False)


def run(input: Path | None, out: Path, config: ScaleConfig, train: TrainOptions) -> dict:
    """Scale INPUT's architecture, or that of `config.arch` (exactly one of the two), as one point, a
    grid, a grid point or the collection, and write OUT. Under torchrun every rank trains each grid
    point (DDP); rank 0 alone writes the point files and OUT and returns the result, the others
    {"rank": r}."""
    from mncli.bundle import load_bundle
    from mncli.stages.compression import process_group

    if input is not None and config.arch is not None:
        raise BadInput("give an input artifact or --arch, not both", hint="drop one of them")
    if input is None and config.arch is None:
        raise BadInput(
            "nothing to scale", hint="give an input artifact or --arch NAME (e.g. --arch micronet-cifar)"
        )
    cfg = config.validate()
    check_writable(out, train, input)
    opts = train.resolved(**TRAIN_DEFAULTS).with_fallbacks()
    if cfg.trains:
        if opts.dataset is None:
            raise BadInput(
                "a scaling grid trains each point: --dataset is required", hint="e.g. -d fashion-mnist"
            )
        opts.validate()
    if input is not None:
        source = load_bundle(input, require_weights=False)
    else:
        source = _source_from_arch(cfg.arch, cfg.arch_opts, opts.dataset)
    with process_group(opts.device) as ranks:
        stage = _Stage(None if input is None else Path(input), Path(out), cfg, opts, source, ranks.is_main)
        if cfg.collect:
            result = stage.collect() if ranks.is_main else {}
        elif cfg.trains:
            result = stage.run_grid()
        else:
            result = stage.single() if ranks.is_main else {}
        return result if ranks.is_main else {"rank": ranks.rank}
