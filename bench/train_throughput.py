"""Training throughput: a plain fp32 eager PyTorch loop vs mncli's engine with its device defaults.

The same MBConv network (28x28x1 inputs, batch 128) is trained for a fixed number of steps both ways,
alternating the two several times, each measurement in a fresh Python process (the engine tunes
process-wide settings such as the allocator, which must not leak into the plain loop's figure); the
median images/s of each and their ratio go to bench/results/train_throughput.json. The plain loop
gets its batches already normalised in memory (the cheapest input path there is), while the engine's
figure includes its on-the-fly batch augmentation, so the ratio is, if anything, conservative.

    python bench/train_throughput.py [--steps 40] [--repeats 3] [--variants] [--threads N]
        [--net bench|fashion-mnist-chain]

--variants also measures the engine with --precision fp32 (channels_last alone) to show what each
default contributes. --net fashion-mnist-chain measures the net examples/fashion_mnist.yaml trains
(5x5 and 7x7 depthwise convs, hard-swish) instead of the 3x3 benchmark net.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from machine import cpu_name

from mncli.data import load_data
from mncli.engine import TrainConfig, fit
from mncli.errors import MncliError
from mncli.models import create_model, parse_arch_opts

BENCH_NET = {
    "blocks": ["ir_r1_k3_s1_e1_c16", "ir_r2_k3_s2_e4_c24", "ir_r2_k3_s2_e4_c40", "ir_r1_k3_s2_e4_c80"],
    "stem_channels": 16, "head_channels": 256, "num_classes": 10, "in_channels": 1, "input_size": 28,
}  # fmt: skip
CHAIN_RECIPE = Path(__file__).resolve().parents[1] / "examples" / "fashion_mnist.yaml"
NETS = ("bench", "fashion-mnist-chain")
BATCH = 128
WARMUP = 5


def net_args(net: str) -> dict:
    """The mbconv arguments of `net`: the benchmark's 3x3 net, or the one the chain's train step
    builds, read from its --arch-opt list so that the two cannot drift apart."""
    if net == "bench":
        return BENCH_NET
    steps = yaml.safe_load(CHAIN_RECIPE.read_text(encoding="utf-8"))["steps"]
    train = next(step for step in steps if step["id"] == "train")
    return parse_arch_opts(train["args"]["--arch-opt"])


def make_model(net: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mbconv", **net_args(net))


def get_data():
    try:
        return load_data("fashion-mnist", batch_size=BATCH), "fashion-mnist"
    except MncliError:
        return load_data("synthetic:train=12000", batch_size=BATCH), "synthetic"


def plain_loop(data, steps: int, net: str) -> float:
    """What the seed repositories run: fp32, default memory format, SGD, batches ready in memory."""
    model = make_model(net).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = list(data.val.batches(BATCH))  # normalised float tensors, no augmentation
    started = 0.0
    for step in range(WARMUP + steps):
        if step == WARMUP:
            started = time.perf_counter()
        x, y = batches[step % len(batches)]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * BATCH / (time.perf_counter() - started)


def engine(data, steps: int, net: str, precision: str = "auto") -> tuple[float, dict]:
    model = make_model(net)
    common = dict(batch_size=BATCH, lr=0.05, weight_decay=5e-4, precision=precision, seed=0, keep_best=False)
    fit(
        model, _no_val(data), TrainConfig(epochs=1, max_steps_per_epoch=WARMUP, **common), show_progress=False
    )
    result = fit(
        model, _no_val(data), TrainConfig(epochs=1, max_steps_per_epoch=steps, **common), show_progress=False
    )
    return result.history[-1]["images_per_s"], result.runtime


def _no_val(data):
    """The engine validates after each epoch; leave that out of a throughput figure."""
    import copy

    trimmed = copy.copy(data)
    trimmed.val = data.val.head(0)
    return trimmed


MEASURES = {
    "plain_fp32": lambda data, steps, net: (plain_loop(data, steps, net), {}),
    "engine": engine,
    "engine_fp32_channels_last": lambda data, steps, net: engine(data, steps, net, precision="fp32"),
}


def measure_in_subprocess(name: str, steps: int, threads: int, net: str) -> tuple[float, dict, str]:
    """Run one measurement in a fresh interpreter; returns (images/s, engine runtime, data source)."""
    env = dict(os.environ, MNCLI_NUM_THREADS=str(threads))
    argv = ["--one", name, "--steps", str(steps), "--threads", str(threads), "--net", net]
    done = subprocess.run(
        [sys.executable, __file__, *argv], env=env, check=True, capture_output=True, text=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["images_per_s"], result["runtime"], result["data"]


def measure_here(name: str, steps: int, threads: int, net: str) -> None:
    from mncli.log import set_verbosity

    set_verbosity(quiet=True)
    torch.set_num_threads(threads)
    data, source = get_data()
    rate, runtime = MEASURES[name](data, steps, net)
    print(json.dumps({"images_per_s": rate, "runtime": runtime, "data": source}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="threads for both loops (default: all cores)")
    parser.add_argument("--net", choices=NETS, default="bench", help="which network to train")
    parser.add_argument("--one", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "train_throughput.json"
    )
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.one:
        return measure_here(args.one, args.steps, threads, args.net)
    names = ["plain_fp32", "engine"] + (["engine_fp32_channels_last"] if args.variants else [])
    runs: dict[str, list[float]] = {name: [] for name in names}
    runtime, source = {}, ""
    for repeat in range(args.repeats):
        for name in names:
            rate, measured_runtime, source = measure_in_subprocess(name, args.steps, threads, args.net)
            runs[name].append(rate)
            if name == "engine":
                runtime = measured_runtime
        print(
            f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in runs.items()),
            flush=True,
        )
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "benchmark": "train_throughput",
        "model": {"name": "mbconv", "net": args.net, **net_args(args.net), "batch": BATCH},
        "data": source,
        "steps": args.steps,
        "repeats": args.repeats,
        "images_per_s": {k: round(v, 1) for k, v in medians.items()},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratio": round(medians["engine"] / medians["plain_fp32"], 2),
        "engine_runtime": runtime,
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "threads": threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_1m": os.getloadavg()[0],
        },
        "goal": ">= 2.0",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_s", "ratio")}))


if __name__ == "__main__":
    main()
