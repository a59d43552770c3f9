"""Batch norm in channels_last training: ATen's own kernels against the engine's NCHW route.

For each channel count and resolution (batch 128), one BatchNorm2d in training mode takes a
channels_last input through forward and backward (input, weight and bias gradients) as it is, and
once more through the engine's route (`engine.batchnorm.nchw_forward`, on every width here), in
fp32 and in bf16. The median milliseconds of each, their ratio and whether `is_narrow` routes that
width go to bench/results/batchnorm_layout.json, with the widths where the rule and the measurement
disagree.

    python bench/batchnorm_layout.py [--repeats 30] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from machine import cpu_name

from mncli.engine import batchnorm
from mncli.engine.runtime import tune_cpu_allocator

CHANNELS = (8, 12, 16, 24, 32, 40, 48, 56, 72, 96, 120)
SIZES = (28, 14, 7)
BATCH = 128
MAX_ELEMENTS = BATCH * 64 * 28 * 28  # the widest layer of bench/train_throughput.py's nets
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def step_ms(bn: torch.nn.BatchNorm2d, x: torch.Tensor, grad_out: torch.Tensor, repeats: int) -> float:
    def step():
        out = bn(x)
        torch.autograd.grad(out, (x, bn.weight, bn.bias), grad_out)

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def routed(channels: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels)
    bn.forward = batchnorm.nchw_forward(bn)
    return bn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="default: all cores")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "batchnorm_layout.json"
    )
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    tune_cpu_allocator()  # as the engine runs: freed buffers stay in the heap
    rows = []
    for dtype_name, dtype in DTYPES.items():
        for channels in CHANNELS:
            for size in SIZES:
                if BATCH * channels * size * size > MAX_ELEMENTS:
                    continue
                torch.manual_seed(0)
                x = (
                    torch.randn(BATCH, channels, size, size)
                    .to(dtype)
                    .contiguous(memory_format=torch.channels_last)
                )
                x.requires_grad_(True)
                grad_out = torch.randn_like(x)
                native_ms = step_ms(torch.nn.BatchNorm2d(channels), x, grad_out, args.repeats)
                routed_ms = step_ms(routed(channels), x, grad_out, args.repeats)
                row = {
                    "dtype": dtype_name, "channels": channels, "size": size,
                    "channels_last_ms": round(native_ms, 3), "nchw_route_ms": round(routed_ms, 3),
                    "speedup": round(native_ms / routed_ms, 2),
                    "routed_by_rule": batchnorm.is_narrow(channels, dtype),
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    disagree = [r for r in rows if r["routed_by_rule"] != (r["speedup"] > 1.0)]
    result = {
        "benchmark": "batchnorm_layout",
        "batch": BATCH,
        "repeats": args.repeats,
        "rows": rows,
        "rule_disagrees": [{k: r[k] for k in ("dtype", "channels", "size", "speedup")} for r in disagree],
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "threads": threads,
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(disagree)} of {len(rows)} shapes where the rule and the measurement disagree")


if __name__ == "__main__":
    main()
