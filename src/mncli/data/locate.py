"""Where datasets are looked for: --data-dir, then $MNCLI_DATA, then the system location, then a
torchvision download (only with --download). Not found: BadInput naming every place looked in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mncli.errors import BadInput

_DOWNLOAD = "add --download (torchvision fetches it into --data-dir, $MNCLI_DATA or ~/.cache/mncli/datasets)"


@dataclass(frozen=True)
class Layout:
    """How a dataset sits on disk: sub-folders tried under each root and the files that prove it."""

    subdirs: tuple[str, ...]
    marker: tuple[str, ...]  # any one of these (relative to the candidate folder) must exist
    system: tuple[str, ...] = ()
    torchvision: str | None = None  # torchvision.datasets class name for --download
    get_it: str = ""


LAYOUTS: dict[str, Layout] = {
    "fashion-mnist": Layout(
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", ""),
        marker=("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"),
        system=("/usr/share/datasets/fashion-mnist",),
        torchvision="FashionMNIST",
        get_it="sudo apt-get install dataset-fashion-mnist   (or add --download)",
    ),
    "mnist": Layout(
        subdirs=("mnist", "MNIST/raw", ""),
        marker=("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"),
        system=("/usr/share/datasets/mnist",),
        torchvision="MNIST",
        get_it=_DOWNLOAD,
    ),
    "cifar10": Layout(
        subdirs=("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
        marker=("data_batch_1",),
        system=("/usr/share/datasets/cifar10",),
        torchvision="CIFAR10",
        get_it=_DOWNLOAD,
    ),
    "cifar100": Layout(
        subdirs=("cifar-100-python", "cifar100/cifar-100-python", "cifar100"),
        marker=("train",),
        system=("/usr/share/datasets/cifar100",),
        torchvision="CIFAR100",
        get_it=_DOWNLOAD,
    ),
    "imagenet": Layout(
        subdirs=("imagenet", "ILSVRC2012", ""),
        marker=("train",),
        system=("/usr/share/datasets/imagenet",),
        get_it="put an ImageFolder tree (train/<class>/*.JPEG, val/<class>/*.JPEG) under --data-dir",
    ),
}


def cache_root() -> Path:
    """Where --download puts a dataset when neither --data-dir nor $MNCLI_DATA says where."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mncli" / "datasets"


def roots(data_dir: Path | str | None) -> list[tuple[str, Path]]:
    found = []
    if data_dir is not None:
        found.append(("--data-dir", Path(data_dir).expanduser()))
    env = os.environ.get("MNCLI_DATA")
    if env:
        found.append(("$MNCLI_DATA", Path(env).expanduser()))
    return found


def _search(name: str, layout: Layout, data_dir) -> tuple[Path | None, list[str]]:
    looked: list[str] = []
    candidates = [(label, root / sub) for label, root in roots(data_dir) for sub in layout.subdirs]
    candidates += [("system", Path(path)) for path in layout.system]
    candidates += [("download cache", cache_root() / sub) for sub in layout.subdirs if sub]
    for label, folder in candidates:
        folder = folder.resolve() if folder.exists() else folder
        looked.append(f"{folder} ({label})")
        if any((folder / marker).exists() for marker in layout.marker):
            return folder, looked
    return None, looked


def locate(name: str, data_dir: Path | str | None = None, download: bool = False) -> Path:
    """The folder holding dataset `name`'s files, downloading it with torchvision when asked."""
    layout = LAYOUTS[name]
    folder, looked = _search(name, layout, data_dir)
    if folder is not None:
        return folder
    if download and layout.torchvision:
        targets = roots(data_dir)
        _download(name, layout, targets[0][1] if targets else cache_root())
        folder, looked = _search(name, layout, data_dir)
        if folder is not None:
            return folder
    raise BadInput(
        f"dataset {name} not found; looked in: " + "; ".join(dict.fromkeys(looked)),
        hint=layout.get_it,
    )


def _download(name: str, layout: Layout, root: Path) -> None:
    import torchvision

    from mncli.errors import RuntimeFailure
    from mncli.log import log

    root.mkdir(parents=True, exist_ok=True)
    log(f"downloading {name} into {root} with torchvision")
    cls = getattr(torchvision.datasets, layout.torchvision)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise RuntimeFailure(
            f"downloading {name} failed: {exc}", hint=f"fetch it by hand into {root}; {layout.get_it}"
        ) from None
