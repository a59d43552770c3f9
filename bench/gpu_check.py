"""`make gpu-check`: every stage at smoke size on CUDA GPUs, compared with the CPU run of the same seed.

The plan: first a CPU reference (device cpu, fp32, one process), then for each autocast precision
(bf16 and fp16 by default) every stage on one GPU (`--device cuda`), then on all the GPUs through
`torchrun --standalone --nproc-per-node N` (per-process batch = global batch / N, `--sync-bn`), so
every configuration trains on the same global batch. channels_last is the engine's default on CUDA
and is checked in the train stage's runtime record. Stages, each on tiny synthetic data (smoke size):

    train      test-cnn (conv + BatchNorm) from scratch
    prune      AGP to 50 % from the CPU's trained model
    ternarize  TTQ from the CPU's trained model
    quantize   LSQ 4-bit weights and activations from the CPU's trained model
    search     ProxylessNAS on a two-stage MBConv space
    scale      grid point 0 of a two-point compound-scaling grid of the CPU's searched architecture
               (`--point 0`, what a cluster array job runs)
    eval       the CPU's trained model on the test split (sharded across ranks under torchrun)
    score      this configuration's pruned model (plain process: score uses no GPU and no ranks)

Every stage of a configuration starts from the CPU reference's input artifact, so each row measures
that one stage. A row passes when (tolerances, against the CPU reference row of the same stage):

    accuracy    test top-1 within 2 points (train, prune, ternarize, quantize), the grid point's
                validation top-1 within 2 points (scale), the super-network's validation top-1
                within 5 points (search: one epoch, a few hundred images), eval top-1 within 1 point
                (the same weights in fp32; TF32 convolutions may move a prediction near a tie)
    score       exactly equal (train, prune: zeros fixed by the count, scale: a dense fp32 point,
                score); within 5 % relative (ternarize, quantize: their zero codes depend on the
                trained weights); search: the derived network within --target-ops and every block's
                probabilities within 0.05 of the CPU's (the derived network itself is reported, not
                required: near-uniform probabilities can tie)
    run         exit code 0, exactly one JSON object on stdout (rank 0 alone printed), the world size
                the configuration asked for, and in train the precision asked for and channels_last

It prints a table and writes bench/results/gpu_check.json (machine, GPUs, torch version, date,
tolerances, every row with its command). Exit code 0 when every row passes, 1 otherwise; 2 with
one line on stderr when there is no CUDA GPU.

    python bench/gpu_check.py [--precisions bf16,fp16] [--gpus N] [--stages train,eval,...]
                              [--data SPEC] [--out PATH] [--work DIR] [--keep]
    python bench/gpu_check.py --dry-run [--gpus 2] --out /tmp/gpu_check.json

--dry-run runs the same plan, commands and comparisons with device cpu: the "one GPU" pass in one
process, the "all GPUs" pass as --gpus (default 2) gloo processes under torchrun, every precision as
fp32 (fp16 autocast exists only on CUDA, and bf16 on a CPU would make the check depend on the
processor); tests/test_gpu_check.py runs it on tiny data so the script cannot rot unseen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu_check.json"
DRY_RESULTS = ROOT / "bench" / "results" / "gpu_check_dry_run.json"

STAGES = ("train", "prune", "ternarize", "quantize", "search", "scale", "eval", "score")
NEEDS = {"prune": "train", "ternarize": "train", "quantize": "train", "eval": "train", "score": "train"}
NEEDS["scale"] = "search"
TRAINING = {"train", "prune", "ternarize", "quantize", "search", "scale"}
OUTPUT = {
    "train": "fp.safetensors",
    "prune": "pruned.safetensors",
    "ternarize": "ternary.safetensors",
    "quantize": "quantized.safetensors",
    "search": "arch.safetensors",
    "scale": "scaled.safetensors",
}

SMOKE_DATA = "synthetic:classes=10,shape=3x16x16,train=2048,test=512"
SEARCH_SPACE = [
    "--widths", "8,16", "--repeats", "2,1", "--strides", "2,2", "--stem-channels", "8",
    "--head-channels", "0", "--ops", "k3_e3,k5_e3,zero",
]  # fmt: skip
GRID = "1.2,1.1 1.0,1.2"

# Tolerances against the CPU reference (see the docstring).
ACC_TOL = {"train": 0.02, "prune": 0.02, "ternarize": 0.02, "quantize": 0.02, "scale": 0.02}
ACC_TOL.update(search=0.05, eval=0.01)
SCORE_EXACT = {"train", "prune", "scale", "score"}
SCORE_REL_TOL = {"ternarize": 0.05, "quantize": 0.05}
PROB_TOL = 0.05


@dataclass
class Config:
    """One way of running the stages: device, autocast precision, processes."""

    name: str
    device: str
    precision: str  # as planned (bf16 / fp16 on GPUs)
    ran_precision: str  # what --precision was given (fp32 for every precision in --dry-run)
    nproc: int = 1
    torchrun: bool = False


@dataclass
class Plan:
    data: str = SMOKE_DATA
    epochs: int = 4  # train
    stage_epochs: int = 2  # prune, ternarize, quantize, scale point
    batch: int = 64  # global batch: per-process batch x processes
    seed: int = 0
    target_ops: float = 1e6
    timeout: float = 900.0  # per command
    stages: tuple[str, ...] = STAGES


@dataclass
class Row:
    config: str
    stage: str
    device: str
    precision: str
    ran_precision: str
    world_size: int
    command: list[str]
    code: int | None = None
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    diffs: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    passed: bool = False
    log: str = ""


# --- the plan


def configs(device_count: int, precisions: list[str], dry_run: bool) -> list[Config]:
    """The CPU reference, then each precision on one device, then on `device_count` under torchrun."""
    device = "cpu" if dry_run else "cuda"
    found = [Config("cpu-fp32", "cpu", "fp32", "fp32")]
    for nproc, launched in ((1, False), (device_count, True)):
        for precision in precisions:
            ran = "fp32" if dry_run else precision
            label = (
                f"{'cpu-dry' if dry_run else 'cuda'}-x{nproc}{'-torchrun' if launched else ''}-{precision}"
            )
            found.append(Config(label, device, precision, ran, nproc, launched))
    return found


def stages_with_needs(chosen: list[str]) -> tuple[str, ...]:
    wanted = set(chosen) | {NEEDS[s] for s in chosen if s in NEEDS}
    return tuple(s for s in STAGES if s in wanted)


def per_process_batch(plan: Plan, cfg: Config) -> int:
    return max(1, plan.batch // cfg.nproc)


def stage_argv(stage: str, cfg: Config, plan: Plan, ref: Path, own: Path) -> list[str]:
    """`mncli` arguments of `stage` in configuration `cfg`; inputs from the CPU reference's folder."""
    common = ["-d", plan.data, "--device", cfg.device, "--precision", cfg.ran_precision]
    common += [
        "--augment",
        "none",
        "--seed",
        str(plan.seed),
        "-b",
        str(per_process_batch(plan, cfg)),
        "--json",
    ]
    if cfg.nproc > 1:
        common.append("--sync-bn")
    fp = str(ref / OUTPUT["train"])
    out = ["-o", str(own / OUTPUT.get(stage, ""))]
    epochs = ["--epochs", str(plan.stage_epochs)]
    if stage == "train":
        arch = ["--arch", "test-cnn", "--arch-opt", "width=8"]
        return ["train", *arch, *common, "--epochs", str(plan.epochs), "--lr", "0.1", *out]
    if stage == "prune":
        agp = ["--method", "agp", "--sparsity", "0.5", "--end", "1", "--freq", "1"]
        return ["prune", fp, *common, *agp, *epochs, "--lr", "0.01", *out]
    if stage == "ternarize":
        return ["ternarize", fp, *common, "--method", "ttq", *epochs, *out]
    if stage == "quantize":
        return ["quantize", fp, *common, "--method", "lsq", "-w", "4", "-a", "4", *epochs, *out]
    if stage == "search":
        quick = ["--weights-warmup-epochs", "1", "--epochs", "1", "--arch-every", "1"]
        return ["search", *common, *SEARCH_SPACE, *quick, "--target-ops", f"{plan.target_ops:g}", *out]
    if stage == "scale":
        point = ["--phi", "1", "--grid-points", GRID, "--point", "0", "--lr", "0.05"]
        return ["scale", str(ref / OUTPUT["search"]), *common, *point, *epochs, *out]
    if stage == "eval":
        return ["eval", fp, "-d", plan.data, "--device", cfg.device, "--split", "test", "--json"]
    if stage == "score":
        source = OUTPUT["prune"] if "prune" in plan.stages else OUTPUT["train"]
        return ["score", str(own / source), "--json"]
    raise ValueError(stage)


def launch(stage: str, cfg: Config, argv: list[str], logs: Path) -> list[str]:
    """The full command: `python -m mncli ARGV`, under torchrun for the multi-process pass (not for
    score, which uses no GPU and no process group)."""
    mncli = [sys.executable, "-m", "mncli", *argv]
    if not cfg.torchrun or stage == "score":
        return mncli
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(cfg.nproc),
    ]
    return [*torchrun, "--log-dir", str(logs), *mncli[1:]]


def expected_world(stage: str, cfg: Config) -> int:
    return 1 if stage == "score" or not cfg.torchrun else cfg.nproc


# --- running and reading results


def metrics_of(stage: str, result: dict) -> dict:
    """What the comparison looks at, from the stage's JSON result."""
    if stage == "train":
        runtime = result.get("runtime", {})
        return {
            "acc": result["test_acc"], "score": result["score"], "world_size": runtime.get("world_size"),
            "precision": runtime.get("precision"), "channels_last": runtime.get("channels_last"),
        }  # fmt: skip
    if stage in ("prune", "ternarize", "quantize"):
        return {"acc": result["test_acc"], "score": result["score"], "world_size": result.get("world_size")}
    if stage == "search":
        return {
            "acc": result.get("val_acc_shared_weights"), "score": result["score"]["score"],
            "derived_cost": result["derived_cost"], "target": result["target"],
            "blocks": [b["chosen"] for b in result["blocks"]],
            "probabilities": [b["probabilities"] for b in result["blocks"]],
        }  # fmt: skip
    if stage == "scale":
        return {"acc": result.get("val_acc"), "score": result["score"]["score"], "status": result["status"]}
    if stage == "eval":
        return {"acc": result["top1"], "count": result["count"]}
    if stage == "score":
        return {"score": result["score"]}
    raise ValueError(stage)


def run_row(stage: str, cfg: Config, plan: Plan, ref: Path, own: Path, env: dict) -> Row:
    argv = stage_argv(stage, cfg, plan, ref, own)
    logs = own / "torchrun-logs" / stage
    cmd = launch(stage, cfg, argv, logs)
    row = Row(cfg.name, stage, cfg.device, cfg.precision, cfg.ran_precision, expected_world(stage, cfg), cmd)
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=plan.timeout, cwd=own, env=env)
    except subprocess.TimeoutExpired:
        row.seconds = round(time.perf_counter() - started, 1)
        row.problems.append(f"timed out after {plan.timeout:g} s")
        return row
    row.seconds = round(time.perf_counter() - started, 1)
    row.code = done.returncode
    log = own / f"{stage}.log"
    log.write_text(done.stderr)
    row.log = str(log)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        row.problems.append(f"exit code {done.returncode}: {tail[0][:300]}")
        return row
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        row.problems.append("stdout is not one JSON object (did more than rank 0 print?)")
        return row
    try:
        row.metrics = metrics_of(stage, result)
    except (KeyError, TypeError) as exc:
        row.problems.append(f"result without {exc}")
    return row


# --- comparing with the CPU reference


def compare(row: Row, ref: Row | None) -> Row:
    """Fill row.diffs, row.problems and row.passed against the CPU reference row (None: this is it)."""
    m = row.metrics
    if row.code == 0 and m:
        if m.get("world_size") is not None and m["world_size"] != row.world_size:
            row.problems.append(f"world size {m['world_size']}, expected {row.world_size}")
        if row.stage == "train":
            if m.get("precision") != row.ran_precision:
                row.problems.append(f"ran in {m.get('precision')}, expected {row.ran_precision}")
            if m.get("channels_last") is not True:
                row.problems.append("channels_last was off")
        if row.stage == "search" and m["derived_cost"] > m["target"]:
            row.problems.append(f"derived network {m['derived_cost']:g} ops over the target {m['target']:g}")
    if ref is not None and row.code == 0 and m:
        if ref.code != 0 or not ref.metrics:
            row.problems.append("no CPU reference to compare with")
        else:
            row.reference = ref.metrics
            _compare_metrics(row, ref.metrics)
    row.passed = row.code == 0 and bool(m) and not row.problems
    return row


def _compare_metrics(row: Row, ref: dict) -> None:
    m, stage = row.metrics, row.stage
    if stage in ACC_TOL and m.get("acc") is not None and ref.get("acc") is not None:
        diff = m["acc"] - ref["acc"]
        row.diffs["acc"] = round(diff, 6)
        if abs(diff) > ACC_TOL[stage] + 1e-12:
            row.problems.append(
                f"accuracy {m['acc']:.4f} vs CPU {ref['acc']:.4f} (tolerance {ACC_TOL[stage]:g})"
            )
    if stage == "eval" and m.get("count") != ref.get("count"):
        row.problems.append(f"evaluated {m.get('count')} images, CPU {ref.get('count')}")
    if "score" in m and "score" in ref:
        rel = abs(m["score"] - ref["score"]) / abs(ref["score"]) if ref["score"] else abs(m["score"])
        row.diffs["score_rel"] = rel
        if stage in SCORE_EXACT and m["score"] != ref["score"]:
            row.problems.append(f"score {m['score']!r} vs CPU {ref['score']!r} (must be equal)")
        elif stage in SCORE_REL_TOL and rel > SCORE_REL_TOL[stage]:
            row.problems.append(f"score {rel:.1%} from the CPU's (tolerance {SCORE_REL_TOL[stage]:.0%})")
    if stage == "search":
        worst = max(
            (
                abs(p[k] - q[k])
                for p, q in zip(m["probabilities"], ref["probabilities"], strict=True)
                for k in p
            ),
            default=0.0,
        )
        row.diffs["probabilities"] = round(worst, 6)
        row.diffs["same_network"] = m["blocks"] == ref["blocks"]
        if worst > PROB_TOL:
            row.problems.append(f"block probabilities {worst:.3f} from the CPU's (tolerance {PROB_TOL:g})")
    if stage == "scale" and m.get("status") != ref.get("status"):
        row.problems.append(f"point {m.get('status')}, CPU {ref.get('status')}")


# --- the machine, the table, the file


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }  # fmt: skip


def gpus() -> list[dict]:
    import torch

    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append({
            "index": i, "name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "bf16": bool(torch.cuda.is_bf16_supported()),
        })  # fmt: skip
    return found


def _fmt(value, digits=4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


def table(rows: list[Row]) -> str:
    head = ["config", "stage", "world", "s", "acc", "cpu acc", "score", "cpu score", "result"]
    lines = [head]
    for r in rows:
        verdict = "ok" if r.passed else "FAIL: " + "; ".join(r.problems)
        m, ref = r.metrics, r.reference
        lines.append([
            r.config, r.stage, str(r.world_size), f"{r.seconds:.1f}", _fmt(m.get("acc")),
            _fmt(ref.get("acc")), _fmt(m.get("score")), _fmt(ref.get("score")), verdict,
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    text = []
    for n, line in enumerate(lines):
        text.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "  " + line[-1])
        if n == 0:
            text.append("-" * (sum(widths) + 2 * len(widths) + 6))
    return "\n".join(text)


def report(rows: list[Row], plan: Plan, cfgs: list[Config], dry_run: bool) -> dict:
    import torch

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dry_run": dry_run,
        "machine": machine(),
        "gpus": [] if dry_run else gpus(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "plan": {**asdict(plan), "stages": list(plan.stages)},
        "configs": [asdict(c) for c in cfgs],
        "tolerances": {
            "accuracy_points": {k: v * 100 for k, v in ACC_TOL.items()},
            "score_exact": sorted(SCORE_EXACT),
            "score_relative": SCORE_REL_TOL,
            "search_probabilities": PROB_TOL,
        },
        "passed": all(r.passed for r in rows),
        "rows": [asdict(r) for r in rows],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Every stage on CUDA GPUs against the CPU run of the same seed.")
    p.add_argument("--dry-run", action="store_true", help="the same plan on CPU (no GPU needed)")
    p.add_argument(
        "--gpus", type=int, help="processes of the torchrun pass (default: every GPU; --dry-run: 2)"
    )
    p.add_argument("--precisions", default="bf16,fp16", help="autocast precisions, comma-separated")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset (needs are added)")
    p.add_argument("--data", default=SMOKE_DATA, help="dataset spec (default: smoke-size synthetic data)")
    p.add_argument("--epochs", type=int, default=Plan.epochs, help="train epochs")
    p.add_argument(
        "--stage-epochs", type=int, default=Plan.stage_epochs, help="prune/ternarize/quantize/scale"
    )
    p.add_argument("--batch", type=int, default=Plan.batch, help="global batch size")
    p.add_argument("--seed", type=int, default=Plan.seed)
    p.add_argument("--target-ops", type=float, default=Plan.target_ops, help="search target")
    p.add_argument("--timeout", type=float, default=Plan.timeout, help="seconds per command")
    p.add_argument("--out", type=Path, help=f"result file (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--work", type=Path, help="folder for the artifacts (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the artifacts and logs")
    args = p.parse_args(argv)
    for name in args.stages.split(","):
        if name not in STAGES:
            p.error(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    for name in args.precisions.split(","):
        if name not in ("fp32", "bf16", "fp16"):
            p.error(f"unknown precision {name!r}; choose from fp32, bf16, fp16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu-check: no CUDA GPU on this machine (torch {torch.__version__}, {build}); nothing was run "
            "(--dry-run runs the same plan on the CPU)",
            file=sys.stderr,
        )
        return 2
    count = args.gpus or (2 if args.dry_run else torch.cuda.device_count())
    plan = Plan(
        data=args.data, epochs=args.epochs, stage_epochs=args.stage_epochs, batch=args.batch, seed=args.seed,
        target_ops=args.target_ops, timeout=args.timeout, stages=stages_with_needs(args.stages.split(",")),
    )  # fmt: skip
    cfgs = configs(count, args.precisions.split(","), args.dry_run)
    out = args.out or (DRY_RESULTS if args.dry_run else RESULTS)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    rows: list[Row] = []
    reference: dict[str, Row] = {}
    try:
        for cfg in cfgs:
            own = work / cfg.name
            own.mkdir(parents=True, exist_ok=True)
            for stage in plan.stages:
                row = run_row(stage, cfg, plan, work / cfgs[0].name, own, env)
                compare(row, None if cfg is cfgs[0] else reference.get(stage))
                if cfg is cfgs[0]:
                    reference[stage] = row
                rows.append(row)
                mark = "ok" if row.passed else "FAIL " + "; ".join(row.problems)
                print(f"{cfg.name:<28} {stage:<10} {row.seconds:6.1f} s  {mark}", file=sys.stderr, flush=True)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
            for row in rows:
                row.log = ""  # removed with the work folder
    result = report(rows, plan, cfgs, args.dry_run)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(table(rows))
    verdict = "every row passed" if result["passed"] else f"{sum(not r.passed for r in rows)} rows FAILED"
    print(f"\n{verdict}; {len(rows)} rows written to {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
