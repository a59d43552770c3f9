"""Stage `ternarize`: TTQ (paper or MIT variant) or EC2T fine-tuning, baked into {-wn, 0, +wp} layers.

run(config) -> result dict. With EC2T's grid, each point (ini_c x lambda_div) is its own run
writing OUT.pointK.safetensors; `collect` keeps the point best on validation as OUT.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log

METHODS = ("ttq", "ec2t")
VARIANTS = ("paper", "mit")
SELECT_BY = ("accuracy", "score")


@dataclass
class TernarizeConfig:
    input: Path
    out: Path
    dataset: str
    method: str = "ttq"
    variant: str = "paper"
    threshold: float | None = None  # ttq: t of t*max|w| (0.05); mit: factor of mean|w| (0.7)
    scale_init: str = "mean"  # ttq: Wp/Wn from the mean |w| of each side, or "one"
    layers: list[str] = field(default_factory=list)
    include_depthwise: bool = False
    # training; None means the method's original default (compress.ttq / compress.ec2t)
    epochs: int | None = None
    retrain_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    scale_lr: float | None = None
    latent_lr: float | None = None
    centroid_lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    milestones: list[int] | None = None
    teacher: Path | None = None  # knowledge distillation during the fine-tuning
    # ec2t
    ini_c: list[float] = field(default_factory=list)
    lambda_div: list[float] = field(default_factory=list)
    grid: bool = False
    point: int | None = None
    collect: bool = False
    select_by: str = "accuracy"
    tolerance: float = 0.005  # --select-by score: points within this val-accuracy drop of the best
    resume: bool = False
    # data and run
    data_dir: Path | None = None
    download: bool = False
    subset: int | None = None
    val_size: int | None = None
    seed: int = 0
    device: str = "auto"


def grid_points(cfg: TernarizeConfig) -> list[dict]:
    """Grid points in a fixed order: ini_c outer, lambda_div inner (point K = index)."""
    from mncli.compress.ternary.ec2t import GRID_INI_C, GRID_LAMBDA_DIV

    ini = cfg.ini_c or list(GRID_INI_C)
    lam = cfg.lambda_div or list(GRID_LAMBDA_DIV)
    return [{"ini_c": c, "lambda_div": d} for c, d in itertools.product(ini, lam)]


def point_path(out: Path, k: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.point{k}{out.suffix or '.safetensors'}")


def validate(cfg: TernarizeConfig) -> None:
    if Path(cfg.out).resolve() == Path(cfg.input).resolve():
        raise BadInput(
            f"output {cfg.out} is the input file", hint="write to a new path; inputs are never modified"
        )
    if cfg.method not in METHODS:
        raise BadInput(f"unknown method {cfg.method!r}", hint="use --method ttq or --method ec2t")
    if cfg.variant not in VARIANTS:
        raise BadInput(f"unknown variant {cfg.variant!r}", hint="use --variant paper or --variant mit")
    if cfg.variant != "paper" and cfg.method != "ttq":
        raise BadInput("--variant applies to --method ttq only")
    if cfg.threshold is not None and not 0.0 < cfg.threshold < 1.0:
        raise BadInput(
            f"threshold {cfg.threshold} is outside (0, 1)", hint="TTQ uses 0.05, the MIT variant 0.7"
        )
    for c in cfg.ini_c:
        if not 0.0 < c <= 1.0:
            raise BadInput(f"ini_c {c} is outside (0, 1]", hint="EC2T's grid is 0.15,0.3,0.45,0.5")
    for d in cfg.lambda_div:
        if not d >= 0.0:
            raise BadInput(f"lambda_div {d} is negative", hint="EC2T's grid is 0.125,0.15,0.175")
    if cfg.method != "ec2t" and (
        cfg.grid or cfg.collect or cfg.point is not None or cfg.ini_c or cfg.lambda_div
    ):
        raise BadInput("--grid, --point, --collect, --ini-c and --lambda-div belong to --method ec2t")
    if (cfg.point is not None or cfg.collect) and not cfg.grid:
        raise BadInput("--point and --collect need --grid", hint="e.g. --grid --point 3")
    if not cfg.grid and (len(cfg.ini_c) > 1 or len(cfg.lambda_div) > 1):
        raise BadInput("several --ini-c / --lambda-div values need --grid")
    if cfg.grid and cfg.point is not None and not 0 <= cfg.point < len(grid_points(cfg)):
        raise BadInput(f"--point {cfg.point} is outside the grid (0..{len(grid_points(cfg)) - 1})")
    if cfg.scale_init not in ("mean", "one"):
        raise BadInput(
            f"unknown --scale-init {cfg.scale_init!r}", hint="mean (from the trained weights) or one"
        )
    if cfg.select_by not in SELECT_BY:
        raise BadInput(f"unknown --select-by {cfg.select_by!r}", hint="accuracy or score")
    for name in ("epochs", "retrain_epochs", "batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < (1 if name == "batch_size" else 0):
            raise BadInput(f"--{name.replace('_', '-')} must be positive, got {value}")


def run(cfg: TernarizeConfig) -> dict:
    validate(cfg)
    if cfg.method == "ec2t" and cfg.grid:
        if cfg.collect:
            return collect(cfg)
        if cfg.point is not None:
            return run_point(cfg, cfg.point)
        for k in range(len(grid_points(cfg))):
            run_point(cfg, k)
        return collect(cfg)
    return run_once(cfg, out=Path(cfg.out))


def _single(values: list[float], default: float) -> float:
    return values[0] if values else default


def run_once(
    cfg: TernarizeConfig,
    *,
    out: Path,
    ini_c: float | None = None,
    lambda_div: float | None = None,
    extra: dict | None = None,
) -> dict:
    """One ternarization: load, fine-tune with ternary layers, bake, evaluate, score, save."""
    from mncli.compress.ternary.ec2t import EC2T_DEFAULTS
    from mncli.stages.ternarize_run import ternarize

    started = time.time()
    ini_c = _single(cfg.ini_c, EC2T_DEFAULTS["ini_c"]) if ini_c is None else ini_c
    lambda_div = _single(cfg.lambda_div, EC2T_DEFAULTS["lambda_div"]) if lambda_div is None else lambda_div
    result = ternarize(cfg, ini_c=ini_c, lambda_div=lambda_div, out=out, extra=extra)
    result["wall_time_s"] = round(time.time() - started, 1)
    log(
        f"{out}: {result['ternary_layers']} ternary layers ({result['method']}), "
        f"test acc {_pct(result['test_acc_before'])} -> {_pct(result['test_acc'])}, "
        f"sparsity {result['ternary_sparsity']:.3f}, score {result['score']}"
    )
    return result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def run_point(cfg: TernarizeConfig, k: int) -> dict:
    point = grid_points(cfg)[k]
    log(f"grid point {k}: ini_c {point['ini_c']}, lambda_div {point['lambda_div']}")
    return run_once(
        cfg, out=point_path(cfg.out, k), extra={"grid_point": k, "grid": grid_points(cfg)}, **point
    )


def collect(cfg: TernarizeConfig) -> dict:
    """Keep the grid point best on validation (accuracy, or the lowest score within --tolerance of the
    best accuracy) and write it as OUT; the manifest lists every point found."""
    from mncli.artifact import read_manifest
    from mncli.bundle import load_bundle, save_bundle

    source = read_manifest(cfg.input).get("content_sha256")
    rows = []
    for k, point in enumerate(grid_points(cfg)):
        path = point_path(cfg.out, k)
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
            f"no grid point outputs next to {cfg.out}",
            hint=f"run the points first: mncli ternarize ... --grid --point K -o {cfg.out}"
            f" (K = 0..{len(grid_points(cfg)) - 1})",
        )
    best_acc = max(r["val_acc"] or 0.0 for r in rows)
    if cfg.select_by == "score":
        eligible = [
            r for r in rows if (r["val_acc"] or 0.0) >= best_acc - cfg.tolerance and r["score"] is not None
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
        bundle, cfg.out, stage="ternarize", params={**m.get("params", {}), "select_by": cfg.select_by},
        metrics=m.get("metrics"), data=m.get("data"), seed=m.get("seed"),
        compression={k: v for k, v in m.get("compression", {}).items() if k != "layers"},
        extra={"grid": {"points": rows, "chosen": best["point"], "select_by": cfg.select_by}},
    )  # fmt: skip
    log(f"grid: {len(rows)} points, kept point {best['point']} (ini_c {best['ini_c']}, "
               f"lambda_div {best['lambda_div']}, val acc {_pct(best['val_acc'])})")  # fmt: skip
    return {
        "output": str(cfg.out),
        "chosen": best,
        "points": rows,
        "content_sha256": manifest.get("content_sha256"),
    }


def config_params(cfg: TernarizeConfig) -> dict:
    params = asdict(cfg)
    for key in ("input", "out", "data_dir", "teacher"):
        params[key] = None if params[key] is None else str(params[key])
    return params
