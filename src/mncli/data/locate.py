"""Where datasets are looked for: --data-dir, then $MNCLI_DATA, then the system location, then a
torchvision download (only with --download). Not found: BadInput naming every place looked in; a
--data-dir or $MNCLI_DATA that does not exist: BadInput naming it (never a fall back to elsewhere)."""

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


def _fs(check, path: Path, what: str) -> bool:
    """`check(path)` (Path.exists / is_dir), with an OSError (a name too long, a denied parent) as
    BadInput naming `what` and the path instead of a traceback."""
    try:
        return check(path)
    except OSError as exc:
        raise BadInput(
            f"cannot look in {what} {path}: {exc.strerror or exc}", hint="check the path"
        ) from None


def _groups(layout: Layout, data_dir) -> list[tuple[str, Path | None, list[Path]]]:
    """(label, the root the user named or None, the folders tried under it), in search order."""
    groups: list[tuple[str, Path | None, list[Path]]] = [
        (label, root, [root / sub for sub in layout.subdirs]) for label, root in roots(data_dir)
    ]
    groups.append(("system", None, [Path(path) for path in layout.system]))
    groups.append(("download cache", None, [cache_root() / sub for sub in layout.subdirs if sub]))
    return groups


def _search(layout: Layout, data_dir) -> tuple[Path | None, list[str], tuple[str, Path] | None]:
    """(the folder found, every place looked, the named root that does not exist). A folder the user
    named (--data-dir, $MNCLI_DATA) that does not exist ends the search there: falling back to a copy
    elsewhere would silently train on data the user did not point at."""
    looked: list[str] = []
    for label, root, folders in _groups(layout, data_dir):
        if root is not None and not _fs(Path.is_dir, root, label):
            if _fs(Path.exists, root, label):
                raise BadInput(
                    f"{label} {root} is not a folder", hint="give the folder that holds the datasets"
                )
            return None, looked, (label, root)
        for folder in folders:
            folder = folder.resolve() if _fs(Path.exists, folder, label) else folder
            looked.append(f"{folder} ({label})")
            if any(_fs(Path.exists, folder / marker, label) for marker in layout.marker):
                return folder, looked, None
    return None, looked, None


def _missing_root(name: str, layout: Layout, label: str, root: Path) -> BadInput:
    fetch = f"; or add --download to fetch {name} into it" if layout.torchvision else ""
    if label == "--data-dir":
        return BadInput(f"--data-dir {root} does not exist", hint=f"check the path{fetch}")
    return BadInput(
        f"$MNCLI_DATA is {root}, a folder that does not exist", hint=f"fix or unset MNCLI_DATA{fetch}"
    )


def locate(name: str, data_dir: Path | str | None = None, download: bool = False) -> Path:
    """The folder holding dataset `name`'s files, downloading it with torchvision when asked. A
    --data-dir or $MNCLI_DATA that does not exist is BadInput, unless --download is to create it."""
    layout = LAYOUTS[name]
    folder, looked, missing = _search(layout, data_dir)
    if folder is not None:
        return folder
    if download and layout.torchvision:
        targets = roots(data_dir)
        _download(name, layout, targets[0][1] if targets else cache_root())
        folder, looked, missing = _search(layout, data_dir)
        if folder is not None:
            return folder
    if missing is not None:
        raise _missing_root(name, layout, *missing)
    raise BadInput(
        f"dataset {name} not found; looked in: " + "; ".join(dict.fromkeys(looked)),
        hint=layout.get_it,
    )


def _download(name: str, layout: Layout, root: Path) -> None:
    import torchvision

    from mncli.errors import RuntimeFailure
    from mncli.log import log

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(
            f"cannot create {root} for the download: {exc.strerror or exc}", hint="check the path"
        ) from None
    log(f"downloading {name} into {root} with torchvision")
    cls = getattr(torchvision.datasets, layout.torchvision)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise RuntimeFailure(
            f"downloading {name} failed: {exc}", hint=f"fetch it by hand into {root}; {layout.get_it}"
        ) from None
