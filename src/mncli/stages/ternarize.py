"""Stage `ternarize`: TTQ (paper or MIT variant) or EC2T fine-tuning, baked into {-wn, 0, +wp} layers.

`Ternarization(config)` is the CompressionMethod (`compression.run_stage` around it loads, measures
and saves); `run(input, out, config, train)` is the file stage. With EC2T's grid each point
(ini_c x lambda_div) is its own run writing OUT.pointK.safetensors; `collect` keeps the point best on
validation as OUT.

`--method ec2t --do-prune` is EC2T's second step: the squeeze-excite convs and the classifier go
through the same entropy-constrained assignment, but a weight either joins the zero cluster or keeps
its full-precision value; the layers end pruned ("mask": true, float non-zeros) and the input's
ternary layers stay frozen. The manifest records it as compression.ternarize {method ec2t, mode prune}.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.compression import Run, run_stage
from mncli.stages.training import TrainOptions, as_record, check_writable
from mncli.text import fmt_pct, parse_choice


class TernaryMethod(StrEnum):
    TTQ = "ttq"
    EC2T = "ec2t"


class TTQVariant(StrEnum):
    PAPER = "paper"
    MIT = "mit"


class ScaleInit(StrEnum):
    MEAN = "mean"
    ONE = "one"


class SelectBy(StrEnum):
    ACCURACY = "accuracy"
    SCORE = "score"


@dataclass
class TernarizeConfig:
    """The options of `mncli ternarize` itself; None: the method's original default (compress.ternary)."""

    method: TernaryMethod = TernaryMethod.TTQ
    variant: TTQVariant = TTQVariant.PAPER
    threshold: float | None = None  # ttq: t of t*max|w| (0.05); mit: factor of mean|w| (0.7)
    scale_init: ScaleInit = ScaleInit.MEAN  # ttq: Wp/Wn from the mean |w| of each side, or one
    layers: list[str] = field(default_factory=list)
    include_depthwise: bool = False
    retrain_epochs: int | None = None  # ec2t: epochs with the assignment frozen (20; do_prune 0)
    scale_lr: float | None = None  # ttq: LR of Wp/Wn (the training LR)
    latent_lr: float | None = None  # ec2t: Adam LR of the fp weights (1e-4)
    centroid_lr: float | None = None  # ec2t: Adam LR of the centroids (1e-5)
    ini_c: list[float] = field(default_factory=list)  # ec2t: one value, or the grid's
    lambda_div: list[float] = field(default_factory=list)
    grid: bool = False
    point: int | None = None
    collect: bool = False
    select_by: SelectBy = SelectBy.ACCURACY
    tolerance: float = 0.005  # --select-by score: points within this val-accuracy drop of the best
    do_prune: bool = False  # ec2t: entropy-controlled pruning of the SE convs and the classifier

    def validate(self) -> TernarizeConfig:
        self.method = parse_choice(TernaryMethod, self.method, "--method")
        self.variant = parse_choice(TTQVariant, self.variant, "--variant")
        self.scale_init = parse_choice(ScaleInit, self.scale_init, "--scale-init")
        self.select_by = parse_choice(SelectBy, self.select_by, "--select-by")
        ec2t = self.method is TernaryMethod.EC2T
        if self.variant is not TTQVariant.PAPER and ec2t:
            raise BadInput("--variant applies to --method ttq only", hint="drop --variant for ec2t")
        if self.scale_lr is not None and ec2t:
            raise BadInput(
                "--scale-lr applies to --method ttq only", hint="ec2t has --latent-lr and --centroid-lr"
            )
        if (self.latent_lr is not None or self.centroid_lr is not None) and not ec2t:
            raise BadInput("--latent-lr and --centroid-lr apply to --method ec2t only")
        if self.do_prune and not ec2t:
            raise BadInput("--do-prune applies to --method ec2t only", hint="add --method ec2t")
        if self.do_prune and self.grid:
            raise BadInput(
                "--do-prune runs one (ini_c, lambda_div) point, not --grid",
                hint="give --ini-c and --lambda-div (default 0.25, 0.15), one run per value",
            )
        if self.do_prune and self.retrain_epochs:
            # EC2T's frozen-assignment retraining (stop_quantizing_flag) would ternarize the layers
            raise BadInput(
                "--do-prune has no frozen-assignment retraining (EC2T's prune step: --retrain-epochs 0)",
                hint="drop --retrain-epochs; give --epochs for more pruning epochs",
            )
        if not 0.0 <= self.tolerance < 1.0:
            raise BadInput(f"--tolerance {self.tolerance} is outside [0, 1)", hint="e.g. --tolerance 0.005")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise BadInput(
                f"threshold {self.threshold} is outside (0, 1)", hint="TTQ uses 0.05, the MIT variant 0.7"
            )
        for c in self.ini_c:
            if not 0.0 < c <= 1.0:
                raise BadInput(f"ini_c {c} is outside (0, 1]", hint="EC2T's grid is 0.15,0.3,0.45,0.5")
        for d in self.lambda_div:
            if not d >= 0.0:
                raise BadInput(f"lambda_div {d} is negative", hint="EC2T's grid is 0.125,0.15,0.175")
        if not ec2t and (
            self.grid or self.collect or self.point is not None or self.ini_c or self.lambda_div
        ):
            raise BadInput(
                "--grid, --point, --collect, --ini-c and --lambda-div belong to --method ec2t",
                hint="add --method ec2t",
            )
        if (self.point is not None or self.collect) and not self.grid:
            raise BadInput("--point and --collect need --grid", hint="e.g. --grid --point 3")
        if not self.grid and (len(self.ini_c) > 1 or len(self.lambda_div) > 1):
            raise BadInput("several --ini-c / --lambda-div values need --grid", hint="add --grid")
        last = len(grid_points(self)) - 1
        if self.grid and self.point is not None and not 0 <= self.point <= last:
            raise BadInput(f"--point {self.point} is outside the grid", hint=f"K = 0..{last}")
        if self.retrain_epochs is not None and self.retrain_epochs < 0:
            raise BadInput(
                f"--retrain-epochs must be >= 0, got {self.retrain_epochs}", hint="e.g. --retrain-epochs 20"
            )
        return self


def grid_points(config: TernarizeConfig) -> list[dict]:
    """Grid points in a fixed order: ini_c outer, lambda_div inner (point K = index)."""
    from mncli.compress.ternary.ec2t import GRID_INI_C, GRID_LAMBDA_DIV

    ini = config.ini_c or list(GRID_INI_C)
    lam = config.lambda_div or list(GRID_LAMBDA_DIV)
    return [{"ini_c": c, "lambda_div": d} for c, d in itertools.product(ini, lam)]


def point_path(out: Path, k: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.point{k}{out.suffix or '.safetensors'}")


class Ternarization:
    """TTQ (paper or MIT variant) or EC2T as a CompressionMethod; `point` K runs EC2T grid point K."""

    stage = "ternarize"

    def __init__(self, config: TernarizeConfig, point: int | None = None):
        self.config = config.validate()
        self.point = point

    @property
    def prune_mode(self) -> bool:
        return self.config.do_prune

    @property
    def name(self) -> str:
        """The method as the specs record it: ttq, ttq-mit or ec2t."""
        if self.config.method is TernaryMethod.EC2T:
            return "ec2t"
        return "ttq-mit" if self.config.variant is TTQVariant.MIT else "ttq"

    def defaults(self) -> dict:
        """The method's original settings (compress.ternary.ttq / ec2t; EC2T's prune step its own)."""
        from mncli.compress.ternary.ec2t import EC2T_DEFAULTS, EC2T_PRUNE_DEFAULTS
        from mncli.compress.ternary.ttq import MIT_DEFAULTS, TTQ_DEFAULTS

        if self.prune_mode:
            return EC2T_PRUNE_DEFAULTS
        return {"ec2t": EC2T_DEFAULTS, "ttq-mit": MIT_DEFAULTS, "ttq": TTQ_DEFAULTS}[self.name]

    def ec2t_point(self) -> tuple[float, float]:
        """(ini_c, lambda_div) of this run: the grid point's, the one given, or EC2T's default."""
        if self.point is not None:
            point = grid_points(self.config)[self.point]
            return point["ini_c"], point["lambda_div"]
        from mncli.compress.ternary.ec2t import EC2T_DEFAULTS, EC2T_PRUNE_DEFAULTS

        d = EC2T_PRUNE_DEFAULTS if self.prune_mode else EC2T_DEFAULTS
        ini_c = self.config.ini_c[0] if self.config.ini_c else d["ini_c"]
        lambda_div = self.config.lambda_div[0] if self.config.lambda_div else d["lambda_div"]
        return ini_c, lambda_div

    def threshold(self) -> float | None:
        if self.config.method is TernaryMethod.EC2T:
            return None
        return self.config.threshold if self.config.threshold is not None else self.defaults()["threshold"]

    def options(self, train: TrainOptions) -> TrainOptions:
        d = self.defaults()
        opts = train.resolved(
            epochs=d["epochs"], batch_size=d["batch_size"], optimizer=d["optimizer"], lr=d["lr"],
            momentum=d.get("momentum", 0.9), nesterov=d.get("nesterov", False),
            weight_decay=d["weight_decay"], schedule=d["schedule"], step_gamma=d.get("gamma", 0.1),
        )  # fmt: skip
        # TTQ's step decays sit at the paper's fractions of the epochs (EC2T and MIT have none)
        fractions = d.get("milestone_fractions", ())
        return opts.resolved(
            milestones=tuple(float(m) for m in sorted({round(f * opts.epochs) for f in fractions}))
        )

    def layers(self, model) -> list[str]:
        from mncli.compress.ternary.common import select_ternary_layers
        from mncli.compress.ternary.ec2t import select_prune_layers

        select = select_prune_layers if self.prune_mode else select_ternary_layers
        return select(model, self.config.layers or None, include_depthwise=self.config.include_depthwise)

    def check(self, model, specs: dict, arch: dict, options: TrainOptions) -> None:
        names = self.layers(model)
        fixed = fixed_format_layers(specs)
        already = [n for n, fmt in fixed.items() if fmt == "ternary"]
        if already and not self.prune_mode:
            raise BadInput(
                f"the input is already ternary ({len(already)} layers, e.g. {already[0]})",
                hint="ternarize the artifact it was made from, or prune its float layers: -m ec2t --do-prune",
            )
        for name in names:
            if self.prune_mode and fixed.get(name) == "ternary":
                raise BadInput(
                    f"layer {name} is ternary in the input: --do-prune prunes full-precision layers",
                    hint=f"leave it out with --layers '!{name}'",
                )
            if name in fixed:
                weight = specs[name]["weight"]
                raise BadInput(
                    f"layer {name} is already {weight.get('format')} {weight.get('bits')}-bit",
                    hint="ternarize before quantize; exclude the layer with --layers '!NAME'",
                )

    def apply(self, run: Run) -> dict:
        if self.prune_mode:
            return self._apply_prune(run)
        from mncli.compress.prune.callbacks import keep_pruned
        from mncli.compress.prune.masks import kept_masks
        from mncli.compress.ternary.common import bake, ternary_specs

        names = self.layers(run.model)
        masks = kept_masks(run.model, run.specs, names)  # pruned layers it ternarizes keep their zeros
        # pruned layers that stay full precision (depthwise, stem...) keep theirs too
        keep = keep_pruned(run.model, {n: s for n, s in run.specs.items() if n not in names})
        log(f"ternarizing {len(names)} layers: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
        layers = self._attach(run.model, names, masks)
        training = self._train(run, layers, [keep] if keep is not None else [])
        if keep is not None:
            keep.close()
        stats = bake(run.model, layers)
        run.specs = ternary_specs(run.specs, stats, self.name, {})
        nnz = sum(s["nnz"] for s in stats.values())
        numel = sum(s["numel"] for s in stats.values())
        summary = {
            "method": self.name,
            "mode": "ternary",
            "ternary_layers": len(stats),
            "ternary_weights": numel,
            "ternary_nonzeros": nnz,
            "ternary_sparsity": 1.0 - nnz / numel,
            "pruned_layers_kept": sorted(masks),
        }
        if self.config.method is TernaryMethod.EC2T:
            summary["ini_c"], summary["lambda_div"] = self.ec2t_point()
        else:
            summary["threshold"] = self.threshold()
        run.record = summary
        return {
            **summary,
            **ternary_bytes(run.model, run.specs, list(stats)),
            "layers": {n: {k: s[k] for k in ("numel", "sparsity", "wp", "wn")} for n, s in stats.items()},
            "metrics": {"ternary_sparsity": summary["ternary_sparsity"], "training": training},
        }

    def _apply_prune(self, run: Run) -> dict:
        """EC2T's --do-prune: entropy-controlled pruning of the chosen layers; layers of a fixed
        format (the input's ternary ones) are frozen, other pruned layers keep their zeros."""
        from mncli.compress.prune.callbacks import keep_pruned
        from mncli.compress.prune.masks import kept_masks
        from mncli.compress.ternary.ec2t import bake_pruned, pruned_specs

        names = self.layers(run.model)
        frozen = sorted(fixed_format_layers(run.specs))
        masks = kept_masks(run.model, run.specs, names)
        others = {n: s for n, s in run.specs.items() if n not in names and n not in frozen}
        keep = keep_pruned(run.model, others)
        log(f"entropy-controlled pruning of {len(names)} layers: {', '.join(names[:6])}"
            f"{', ...' if len(names) > 6 else ''}; {len(frozen)} layers frozen")  # fmt: skip
        weights = {name: dict(run.model.named_modules())[name].weight for name in frozen}
        trainable = {name: w.requires_grad for name, w in weights.items()}
        # EC2T zeroes the gradients of the already ternary layers so they do not change while pruning
        for weight in weights.values():
            weight.requires_grad_(False)
        layers = self._attach(run.model, names, masks)
        try:
            training = self._train(run, layers, [keep] if keep is not None else [])
        finally:
            for name, weight in weights.items():
                weight.requires_grad_(trainable[name])
            if keep is not None:
                keep.close()
        stats = bake_pruned(run.model, layers)
        run.specs = pruned_specs(run.specs, stats)
        for name, s in stats.items():
            log(f"{name}: {s['numel'] - s['nnz']}/{s['numel']} zeros ({fmt_pct(s['sparsity'])})")
        nnz = sum(s["nnz"] for s in stats.values())
        numel = sum(s["numel"] for s in stats.values())
        ini_c, lambda_div = self.ec2t_point()
        summary = {
            "method": self.name,
            "mode": "prune",
            "pruned_layers": len(stats),
            "pruned_weights": numel,
            "pruned_nonzeros": nnz,
            "pruned_sparsity": 1.0 - nnz / numel,
            "frozen_layers": frozen,
            "pruned_layers_kept": sorted(masks),
            "ini_c": ini_c,
            "lambda_div": lambda_div,
        }
        run.record = summary
        return {
            **summary,
            "layers": {n: {k: s[k] for k in ("numel", "nnz", "sparsity")} for n, s in stats.items()},
            "metrics": {"pruned_sparsity": summary["pruned_sparsity"], "training": training},
        }

    def params(self) -> dict:
        record = as_record(self.config)
        record["ini_c"], record["lambda_div"] = self.ec2t_point()
        if self.point is not None:
            record.update(grid_point=self.point, grid=grid_points(self.config))
        return record

    def _attach(self, model, names: list[str], masks: dict) -> dict:
        from mncli.compress.ternary.common import attach
        from mncli.compress.ternary.ec2t import EC2TPruneWeight, EC2TWeight, make_layers_decay
        from mncli.compress.ternary.ttq import MITTernaryWeight, TTQWeight

        if self.config.method is TernaryMethod.EC2T:
            ini_c, lambda_div = self.ec2t_point()
            decay = make_layers_decay(model, names)  # relative to the largest layer of this run, as EC2T's
            kind = EC2TPruneWeight if self.prune_mode else EC2TWeight
            return attach(model, names, lambda n, w: kind(w, ini_c, lambda_div, decay[n], masks.get(n)))
        threshold = self.threshold()
        if self.config.variant is TTQVariant.MIT:
            return attach(model, names, lambda n, w: MITTernaryWeight(w, threshold, masks.get(n)))
        init = str(self.config.scale_init)
        return attach(model, names, lambda n, w: TTQWeight(w, threshold, masks.get(n), init=init))

    def _train(self, run: Run, layers: dict, keep: list) -> dict:
        from mncli.compress.ternary.ec2t import EC2TCallback
        from mncli.compress.ternary.ttq import TTQCallback

        c, d, epochs = self.config, self.defaults(), run.options.epochs
        if c.method is not TernaryMethod.EC2T:
            scale_lr = c.scale_lr if c.scale_lr is not None else run.options.lr
            callback = TTQCallback(run.model, layers, scale_lr)
            return {"scale_lr": scale_lr, "fit": _fit(run, [callback, *keep], "ttq", epochs)}
        latent_lr = c.latent_lr if c.latent_lr is not None else d["latent_lr"]
        centroid_lr = c.centroid_lr if c.centroid_lr is not None else d["centroid_lr"]
        record: dict = {"latent_lr": latent_lr, "centroid_lr": centroid_lr}
        if self.prune_mode:  # one phase: EC2T's prune step has no frozen-assignment retraining
            phase = EC2TCallback(run.model, layers, latent_lr, centroid_lr, sparsity_metric="pruned_sparsity")
            record["fit"] = _fit(run, [phase, *keep], "ec2t-prune", epochs)
            record["retrain_epochs"] = 0
            return record
        phase1 = EC2TCallback(run.model, layers, latent_lr, centroid_lr)
        record["fit"] = _fit(run, [phase1, *keep], "ec2t", epochs)
        retrain = c.retrain_epochs if c.retrain_epochs is not None else d["retrain_epochs"]
        phase2 = EC2TCallback(run.model, layers, latent_lr, centroid_lr, retrain=True)  # assignment frozen
        record["retrain"] = _fit(run, [phase2, *keep], "retrain", retrain)
        record["retrain_epochs"] = retrain
        return record


def fixed_format_layers(specs: dict) -> dict[str, str]:
    """Layers whose weight format a fine-tuning must not change (ternary, int, fp16): name -> format."""
    fixed = {}
    for name, spec in specs.items():
        weight = spec.get("weight") or {}
        if weight.get("format", "float") != "float" or int(weight.get("bits", 32)) < 32:
            fixed[name] = str(weight.get("format"))
    return fixed


def _fit(run: Run, callbacks: list, phase: str, epochs: int) -> dict:
    if epochs == 0:
        return {"epochs": 0}
    result = run.train(callbacks, epochs=epochs, phase=phase)
    return {"epochs": epochs, "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
            "history": result.history}  # fmt: skip


def ternary_bytes(model, specs: dict, names: list[str]) -> dict:
    """Bytes the artifact spends on the ternary weights vs. the MicroNet charge (the smaller of 2n and
    n + 2*nnz bits, plus 2 scales), from the same encoding the file stores."""
    from mncli.artifact import codec
    from mncli.storage import storage_form

    modules = dict(model.named_modules())
    stored = charged = 0.0
    for name in names:
        key = f"{name}.weight::"
        tensors = codec.encode_state({f"{name}.weight": modules[name].weight.detach()}, {name: specs[name]})
        stored += sum(t.numel() * t.element_size() for k, t in tensors.items() if not k.endswith("::shape"))
        spec = specs[name]
        numel = int(tensors[f"{key}shape"].prod())
        nnz = round(numel * (1.0 - spec["sparsity"]))
        bits, _ = storage_form(numel, nnz, lambda count: 2 * count)
        charged += bits / 8 + 2 * tensors[f"{key}wp"].element_size()
    return {"ternary_bytes": int(stored), "ternary_bytes_charged": round(charged, 1)}


def run(input: Path, out: Path, config: TernarizeConfig, train: TrainOptions) -> dict:
    """The file stage: one ternarization, or EC2T's grid (every point, one --point, or --collect)."""
    from mncli.stages.compression import process_group

    config.validate()
    check_writable(out, train, input)
    if not config.grid:
        return _run_one(Ternarization(config), input, Path(out), train)
    with process_group(train.device) as ranks:  # one group for every point of the grid
        if config.collect:
            return collect(input, out, config) if ranks.is_main else {"rank": ranks.rank}
        if config.point is not None:
            return _run_point(input, out, config, train, config.point)
        for k in range(len(grid_points(config))):
            _run_point(input, out, config, train, k)
        return collect(input, out, config) if ranks.is_main else {"rank": ranks.rank}


def _run_point(input: Path, out: Path, config: TernarizeConfig, train: TrainOptions, k: int) -> dict:
    point = grid_points(config)[k]
    log(f"grid point {k}: ini_c {point['ini_c']}, lambda_div {point['lambda_div']}")
    return _run_one(Ternarization(config, point=k), input, point_path(out, k), train)


def _run_one(method: Ternarization, input: Path, out: Path, train: TrainOptions) -> dict:
    result = run_stage(method, input, out, train)
    if "output" not in result:  # a rank other than 0 under torchrun
        return result
    mode = "pruned" if method.prune_mode else "ternary"
    log(
        f"{out}: {result[f'{mode}_layers']} {mode} layers ({result['method']}), "
        f"test acc {fmt_pct(result['test_acc_before'])} -> {fmt_pct(result['test_acc'])}, "
        f"sparsity {result[f'{mode}_sparsity']:.3f}, score {result['score']}"
    )
    return result


def collect(input: Path, out: Path, config: TernarizeConfig) -> dict:
    """Keep the grid point best on validation (accuracy, or the lowest score within --tolerance of the
    best accuracy) and write it as OUT; the manifest lists every point found."""
    from mncli.artifact import read_manifest
    from mncli.bundle import load_bundle, save_bundle

    source = read_manifest(input).get("content_sha256")
    rows = []
    for k, point in enumerate(grid_points(config)):
        path = point_path(out, k)
        if not path.exists():
            continue
        manifest = read_manifest(path)
        params, metrics = manifest.get("params", {}), manifest.get("metrics", {})
        parents = [p.get("content_sha256") for p in manifest.get("parents", [])]
        if source not in parents or params.get("grid_point") != k:
            log(f"skipping {path}: made from another input or grid")
            continue
        score = (metrics.get("score") or {}).get("score")
        rows.append({"point": k, **point, "path": str(path), "val_acc": metrics.get("val_acc"),
                     "test_acc": metrics.get("test_acc"), "ternary_sparsity": metrics.get("ternary_sparsity"),
                     "score": score})  # fmt: skip
    if not rows:
        raise BadInput(
            f"no grid point outputs next to {out}",
            hint=f"run the points first: mncli ternarize ... --grid --point K -o {out}"
            f" (K = 0..{len(grid_points(config)) - 1})",
        )
    best_acc = max(r["val_acc"] or 0.0 for r in rows)
    select_by = str(config.select_by)
    if config.select_by is SelectBy.SCORE:
        eligible = [
            r for r in rows if (r["val_acc"] or 0.0) >= best_acc - config.tolerance and r["score"] is not None
        ]
        best = min(
            eligible or rows,
            key=lambda r: (r["score"] if r["score"] is not None else float("inf"), r["point"]),
        )
    else:
        best = max(rows, key=lambda r: (r["val_acc"] or 0.0, r["ternary_sparsity"] or 0.0, -r["point"]))
    bundle = load_bundle(best["path"])
    m = bundle.manifest
    manifest = save_bundle(
        bundle, out, stage="ternarize", params={**m.get("params", {}), "select_by": select_by},
        metrics=m.get("metrics"), data=m.get("data"), seed=m.get("seed"),
        compression={k: v for k, v in m.get("compression", {}).items() if k != "layers"},
        extra={"grid": {"points": rows, "chosen": best["point"], "select_by": select_by}},
    )  # fmt: skip
    log(f"grid: {len(rows)} points, kept point {best['point']} (ini_c {best['ini_c']}, "
        f"lambda_div {best['lambda_div']}, val acc {fmt_pct(best['val_acc'])})")  # fmt: skip
    return {
        "output": str(out),
        "chosen": best,
        "points": rows,
        "content_sha256": manifest.get("content_sha256"),
    }
