"""ImageNet loading: images/s of mncli's ImageFolder splits against a plain torchvision ImageFolder
+ DataLoader, on a generated folder of JPEGs.

The folder (default 2,000 JPEGs of 500x375 or 375x500 px, quality 90, across 10 classes, about
ImageNet's typical size and file size) is written to a temporary directory. Each measurement reads
every image once and yields normalised float batches on the CPU, as the training loop receives them:
mncli's train split (torchvision.io decoding, RandomResizedCrop + flip on uint8 tensors with
transforms.v2, normalised per batch) and its evaluation split (Resize(size / 0.875) + CenterCrop),
against torchvision.datasets.ImageFolder with PIL decoding and the same transforms from
torchvision.transforms (then ToTensor + Normalize per image), with the same workers and batch size.
The two run alternately, a few repeats, in the same process. Each measurement gives images per
second of wall time and images per CPU-second of the process and its workers (what the loading costs,
less sensitive to other jobs on a shared machine); the medians and their ratios go to
bench/results/imagenet_loader.json with the machine, the load average, the date and --note.

    python bench/imagenet_loader.py [--images 2000] [--size 224] [--batch 64] [--workers N] [--repeats 3]
                                    [--note "what else ran"]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

from mncli.data import load_data
from mncli.data.datasets import MEAN_STD
from mncli.data.folder import default_workers, eval_resize

CLASSES = 10


def write_jpegs(root: Path, count: int, seed: int = 0) -> None:
    """`count` photo-like JPEGs (smooth colour fields plus grain) in root/imagenet/train/<class>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for index in range(count):
        width, height = (500, 375) if index % 2 else (375, 500)
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(smooth + rng.integers(-20, 20, smooth.shape), 0, 255).astype(np.uint8)
        folder = root / "imagenet" / "train" / f"class{index % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{index:05d}.jpg", quality=90)


def plain_loader(root: Path, size: int, batch: int, workers: int, train: bool):
    """torchvision's ImageFolder (PIL decoding) and DataLoader with the standard transforms."""
    from torchvision import datasets
    from torchvision import transforms as T

    mean, std = MEAN_STD["imagenet"]
    if train:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(eval_resize(size)), T.CenterCrop(size)]
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
    folder = datasets.ImageFolder(str(root / "imagenet" / "train"), transform=transform)
    return torch.utils.data.DataLoader(folder, batch_size=batch, shuffle=train, num_workers=workers)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the DataLoader's workers, once
    a loader is exhausted)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(batches) -> tuple[float, float]:
    """Read every batch: (images per second of wall time, images per CPU-second of this process and
    its workers). The second is what the loader costs, less sensitive to other jobs on the machine."""
    wall, cpu, seen = time.perf_counter(), cpu_seconds(), 0
    for x, _ in batches:
        seen += x.shape[0]
    wall = time.perf_counter() - wall
    del batches
    gc.collect()  # the DataLoader's iterator shuts its workers down, so their CPU time is counted
    return seen / wall, seen / (cpu_seconds() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: mncli's (default_workers)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default="", help="recorded with the results, e.g. what else ran")
    default_out = Path(__file__).parent / "results" / "imagenet_loader.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    workers = default_workers() if args.workers is None else args.workers
    names = ("mncli_train", "plain_train", "mncli_eval", "plain_eval")
    runs: dict[str, list[float]] = {k: [] for k in names}
    cpu_runs: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory(prefix="mncli-bench-imagenet-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_jpegs(root, args.images)
        jpeg_bytes = sum(p.stat().st_size for p in root.rglob("*.jpg"))
        seconds = time.perf_counter() - started
        print(f"wrote {args.images} JPEGs ({jpeg_bytes / args.images / 1e3:.0f} kB each) in {seconds:.0f} s; "
              f"{workers} workers, batch {args.batch}", flush=True)  # fmt: skip
        data = load_data("imagenet", data_dir=root, val_size=0, batch_size=args.batch, image_size=args.size)
        split = data.train  # every image; without an epoch it reads them with the evaluation transform
        split.workers = workers
        for repeat in range(args.repeats):
            for train in (True, False):
                kind = "train" if train else "eval"
                epoch = repeat if train else None
                loaders = {
                    f"mncli_{kind}": split.batches(epoch=epoch, seed=0),
                    f"plain_{kind}": plain_loader(root, args.size, args.batch, workers, train),
                }
                for name, batches in loaders.items():
                    rate, cpu_rate = measure(batches)
                    runs[name].append(rate)
                    cpu_runs[name].append(cpu_rate)
                del loaders
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in runs.items()),
                  flush=True)  # fmt: skip
    medians = {k: statistics.median(v) for k, v in runs.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_runs.items()}
    result = {
        "benchmark": "imagenet_loader",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "images": args.images,
        "image_px": "500x375 and 375x500 JPEG, quality 90",
        "jpeg_kb_mean": round(jpeg_bytes / args.images / 1e3, 1),
        "size": args.size,
        "eval_resize": eval_resize(args.size),
        "batch": args.batch,
        "workers": workers,
        "repeats": args.repeats,
        "images_per_s": {k: round(v, 1) for k, v in medians.items()},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratio": {
            "train": round(medians["mncli_train"] / medians["plain_train"], 2),
            "eval": round(medians["mncli_eval"] / medians["plain_eval"], 2),
        },
        "images_per_cpu_s": {k: round(v, 1) for k, v in cpu_medians.items()},
        "all_cpu_runs": {k: [round(x, 1) for x in v] for k, v in cpu_runs.items()},
        "cpu_ratio": {
            "train": round(cpu_medians["mncli_train"] / cpu_medians["plain_train"], 2),
            "eval": round(cpu_medians["mncli_eval"] / cpu_medians["plain_eval"], 2),
        },
        "mncli": "torchvision.io decode_image + transforms.v2 on uint8, normalised per batch",
        "plain": "torchvision ImageFolder (PIL) + transforms (ToTensor, Normalize per image) + DataLoader",
        "note": args.note,
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "pillow": _version("PIL"),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_s", "ratio", "cpu_ratio")}))


def _version(module: str) -> str:
    return getattr(__import__(module), "__version__", "?")


if __name__ == "__main__":
    main()
