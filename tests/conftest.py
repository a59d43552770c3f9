"""Shared test helpers: `run_cli` runs the command line in-process, `tiny_artifact` writes a small
zoo model as an artifact (`from conftest import tiny_artifact`), `RoutedAtTrainStart` tells whether
fit gave a module one of the engine's per-instance forwards."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mncli.engine import Callback

os.environ.setdefault("MNCLI_NUM_THREADS", "1")
# Every torchrun worker a test starts runs the collective checker (tests/distributed_checker.py).
os.environ.setdefault("MNCLI_COLLECTIVE_CHECK", "1")
_TESTS = str(Path(__file__).parent)  # for tests/sitecustomize.py in the workers
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_TESTS, os.environ.get("PYTHONPATH")]))


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@dataclass
class CliResult:
    """One in-process run of `mncli`: the exit code and what it printed."""

    code: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys):
    """`run_cli(*argv) -> CliResult`: `mncli.cli.app.main` on the arguments (each made a str), with
    the stdout and stderr of that one run (anything printed before it is discarded)."""
    from mncli.cli.app import main

    def run(*argv) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def tiny_artifact(
    path: Path | str,
    arch: str = "test-cnn",
    args: dict | None = None,
    *,
    weights: bool = True,
    stage: str = "train",
    metrics: dict | None = None,
    seed: int | None = 0,
) -> Path:
    """Save a freshly initialised zoo model `arch(**args)` at `path` with save_bundle; returns the path.

    The weights are drawn after torch.manual_seed(seed) (none when seed is None), so the same call
    writes the same weights: `torch.manual_seed(0); create_model(arch, **args)` is the same model."""
    import torch

    from mncli.bundle import bundle_from_arch, save_bundle

    if seed is not None:
        torch.manual_seed(seed)
    path = Path(path)
    save_bundle(bundle_from_arch(arch, args), path, stage=stage, weights=weights, metrics=metrics)
    return path


def write_image_folder(root: Path, classes: tuple[str, ...], counts: dict[str, int], seed: int = 0) -> Path:
    """root/imagenet/<split>/<class>/<i>.jpg: random 30x40 JPEGs, `counts[split]` per class; returns
    root (the --data-dir)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for cls in classes:
            target = root / "imagenet" / split / cls
            target.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(target / f"{i}.jpg")
    return root


class RoutedAtTrainStart(Callback):
    """A fit callback: `routed` is whether the module `name` had a per-instance forward (one of the
    engine's routes) when training started."""

    def __init__(self, name: str):
        self.name, self.routed = name, None

    def on_train_start(self, ctx):
        self.routed = "forward" in dict(ctx.model.named_modules())[self.name].__dict__
