"""Scoring at scale (BENCHMARKS.md section 3): wall time and peak memory of

    mncli score --arch efficientnet-b7 --dataset imagenet     (targets: < 10 s, < 2 GB)

and of scoring a trained artifact (target: memory above an import-only process at most twice the
artifact's size). Every command runs in its own measuring process, so each peak RSS is its own.
Writes bench/results/score_at_scale.json.

    .venv/bin/python bench/score_at_scale.py [--repeat 3] [--artifact-arch efficientnet-b0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "score_at_scale.json"
MNCLI = str(Path(sys.executable).parent / "mncli")

# Runs argv as a child and prints its exit code, wall seconds and peak RSS (the child's own maximum).
_MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": done.returncode, "seconds": seconds, "rss_mb": rss_mb, "out": done.stdout,
                  "err": done.stderr[-400:]}))
"""


# The same scoring in one process, with the imports timed apart from the stage (build + trace + count).
_STAGE = """
import json, resource, time
start = time.perf_counter()
import torch, mncli.models, mncli.scoring
from mncli.stages.score import ScoreConfig, run
imported = time.perf_counter()
run(ScoreConfig(arch="efficientnet-b7", dataset="imagenet"))
done = time.perf_counter()
print(json.dumps({"import_seconds": imported - start, "stage_seconds": done - imported,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


_IMPORTS = "import torch, mncli.cli.app, mncli.stages.score, mncli.scoring, mncli.models, mncli.bundle"


def measure(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, cwd=ROOT)
    result = json.loads(done.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result['rc']}): {result['err']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Time and peak memory of mncli score at scale.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--artifact-arch", default="efficientnet-b0")
    args = parser.parse_args()

    # what `mncli score` imports before it reads anything: the floor under every figure below
    imports = measure([sys.executable, "-c", _IMPORTS])

    command = [MNCLI, "score", "--arch", "efficientnet-b7", "--dataset", "imagenet", "--json"]
    runs = [measure(command) for _ in range(args.repeat)]
    report = json.loads(runs[-1]["out"])
    best = min(r["seconds"] for r in runs)
    stages = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _STAGE], capture_output=True, text=True, check=True, cwd=ROOT
            ).stdout
        )
        for _ in range(args.repeat)
    ]
    peak = max(r["rss_mb"] for r in runs)

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "model.safetensors"
        make = (
            "from mncli.bundle import bundle_from_arch, save_bundle\n"
            f"save_bundle(bundle_from_arch({args.artifact_arch!r}, {{}}), {str(artifact)!r}, stage='train', "
            "data={'dataset': 'imagenet'})"
        )
        subprocess.run([sys.executable, "-c", make], check=True, capture_output=True, cwd=ROOT)
        artifact_mb = artifact.stat().st_size / 2**20
        scored = measure([MNCLI, "score", str(artifact), "--json"])
    above = scored["rss_mb"] - imports["rss_mb"]

    result = {
        "benchmark": "score_at_scale (BENCHMARKS.md section 3)",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "load_average_1m_at_end": None,
        "import_only": {"seconds": round(imports["seconds"], 3), "peak_rss_mb": round(imports["rss_mb"], 1)},
        "arch_efficientnet_b7": {
            "command": " ".join(["mncli", *command[1:]]),
            "runs": [{"seconds": round(r["seconds"], 3), "peak_rss_mb": round(r["rss_mb"], 1)} for r in runs],
            "best_seconds": round(best, 3),
            "peak_rss_mb": round(peak, 1),
            "targets": {"seconds": 10, "peak_rss_mb": 2048},
            "meets_targets": best < 10 and peak < 2048,
            "in_process": {
                "import_seconds": round(min(r["import_seconds"] for r in stages), 3),
                "stage_seconds": round(min(r["stage_seconds"] for r in stages), 3),
                "note": "stage = build the model on the meta device + trace + count, imports excluded",
            },
            "params": report["params"],
            "ops": report["ops"],
            "input_shape": report["input_shape"],
            "rows": len(report["layers"]),
        },
        "artifact": {
            "command": f"mncli score <{args.artifact_arch} fp32 artifact> --json",
            "artifact_mb": round(artifact_mb, 2),
            "seconds": round(scored["seconds"], 3),
            "peak_rss_mb": round(scored["rss_mb"], 1),
            "above_import_only_mb": round(above, 1),
            "target": "above_import_only_mb <= 2 x artifact_mb",
            "meets_target": above <= 2 * artifact_mb,
            "score": json.loads(scored["out"])["score"],
        },
    }
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)  # other jobs on the machine inflate times
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
