"""`mncli eval`: top-1, top-5 and mean loss of an artifact on a dataset's validation or test split.

The validation split is the one the artifact was trained against: its manifest's split seed and size
are reused, so `eval --split val` reproduces the number `train` recorded. ImageNet is read at the
artifact's resolution (its architecture's input_size), or at --image-size; `verify --reproduce` asks
for the resolution the manifest's metrics were measured at (`at_recorded_size`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.training import (
    SPLIT_SEED,
    check_input_size,
    check_model_fits_data,
    image_size_choice,
    input_size_of,
    loading_line,
)
from mncli.text import parse_choice


class Split(enum.StrEnum):
    """The dataset split `eval` measures."""

    VAL = "val"
    TEST = "test"
    TRAIN = "train"


@dataclass
class EvalConfig:
    input: Path
    dataset: str | None = None
    split: Split = Split.TEST
    data_dir: Path | None = None
    download: bool = False
    batch_size: int = 256
    device: str = "auto"
    image_size: int | None = None
    at_recorded_size: bool = False  # imagenet by default at the manifest's image_shape, not the arch's
    say_loading: bool = True  # log what is loaded (verify, which evaluates split by split, does not)

    def validate(self) -> EvalConfig:
        from mncli.data.datasets import check_image_size

        self.split = parse_choice(Split, self.split, "--split")
        if self.batch_size <= 0:
            raise BadInput(f"--batch-size must be positive, got {self.batch_size}", hint="e.g. -b 256")
        if self.image_size is not None:
            check_image_size(self.image_size)
        return self


def recorded_image_size(manifest: dict) -> int | None:
    """The image size (height) the manifest's metrics were measured at, from its data's image_shape
    [C, H, W]; None when not recorded."""
    shape = (manifest.get("data") or {}).get("image_shape")
    return int(shape[-2]) if isinstance(shape, list) and len(shape) == 3 else None


def dataset_of(manifest: dict) -> str | None:
    return (manifest.get("data") or {}).get("dataset")


def dataset_for_input(path: Path, dataset: str | None) -> str:
    """The dataset asked for, else the one the input artifact was trained on. A missing input is
    reported first either way, before any other option is checked."""
    if not Path(path).is_file():
        raise BadInput(f"input {path} not found", hint="give the path of a .safetensors artifact")
    if dataset:
        return dataset
    from mncli.artifact import read_manifest

    recorded = dataset_of(read_manifest(path))
    if not recorded:
        raise BadInput(f"{path} does not say which dataset it was trained on", hint="add --dataset NAME")
    return recorded


def run(config: EvalConfig) -> dict:
    import time

    from mncli.bundle import load_bundle
    from mncli.data import load_data
    from mncli.engine import evaluate
    from mncli.engine.runtime import configure
    from mncli.stages.compression import process_group

    if not Path(config.input).is_file():
        raise BadInput(f"input {config.input} not found", hint="give the path of a .safetensors artifact")
    config.validate()
    bundle = load_bundle(config.input)
    recorded = bundle.manifest.get("data") or {}
    dataset = config.dataset or dataset_of(bundle.manifest)
    if not dataset:
        raise BadInput(
            f"{config.input} does not say which dataset it was trained on", hint="give --dataset D"
        )
    same_data = dataset == recorded.get("dataset")
    own, whose = input_size_of(bundle.arch), "the artifact's resolution"
    if config.at_recorded_size and same_data and recorded_image_size(bundle.manifest):
        own, whose = recorded_image_size(bundle.manifest), "the resolution its metrics were measured at"
    image_size, why = image_size_choice(dataset, config.image_size, own, whose)
    data = load_data(
        dataset,
        data_dir=config.data_dir,
        download=config.download,
        val_size=recorded.get("val_size") if same_data else None,
        seed=recorded.get("split_seed", SPLIT_SEED) if same_data else SPLIT_SEED,
        batch_size=config.batch_size,
        image_size=image_size,
    )
    data.info["image_size_from"] = why
    check_model_fits_data(bundle.arch, data, what=str(config.input))
    check_input_size(bundle.arch, data, str(config.input), "evaluate it on the dataset it was trained on")
    split = {Split.VAL: lambda: data.val, Split.TEST: lambda: data.test, Split.TRAIN: lambda: data.train}
    images = split[config.split]()
    with process_group(config.device):  # under torchrun: each rank measures its share, rank 0 reports
        rt = configure(config.device, precision="fp32")  # threads as the engine sets them; fp32 arithmetic
        if config.say_loading:
            log(loading_line(data))
        model = bundle.model.to(rt.device)
        started = time.perf_counter()
        # In the ordinary memory layout, as every stage measures the metrics it records: another
        # layout runs other kernels, whose last-bit differences flip the odd fake-quantized code.
        scores = evaluate(
            model, images, rt.device, batch_size=config.batch_size, rank=rt.rank, world_size=rt.world_size
        )
    if rt.rank != 0:
        return {"rank": rt.rank}
    return {
        "artifact": str(config.input),
        "dataset": data.name,
        "split": str(config.split),
        "top1": scores["top1"],
        "top5": scores["top5"],
        "loss": scores["loss"],
        "count": scores["count"],
        "image_size": data.image_size,
        "seconds": round(time.perf_counter() - started, 2),
    }
