"""Where things are printed: results to stdout, logs and progress to stderr."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Piped tables are not cut to 80 columns: a result read by a script or a file keeps every digit.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, soft_wrap=True)

_state = {"verbose": False, "quiet": False}


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    _state["verbose"] = verbose
    _state["quiet"] = quiet


def is_verbose() -> bool:
    return _state["verbose"]


def log(message: str) -> None:
    """One log line on stderr (silenced by -q)."""
    if not _state["quiet"]:
        stderr.print(message, highlight=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def print_json(obj: dict) -> None:
    """Exactly one JSON object on stdout and nothing else."""
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def emit(result: dict, *, as_json: bool, table: Any = None, out_path: str | None = None) -> None:
    """Print a command's result: JSON, or the output path alone with -q, or a rich table."""
    if as_json:
        print_json(result)
    elif _state["quiet"] and out_path is not None:
        sys.stdout.write(f"{out_path}\n")
    elif table is not None:
        stdout.print(table)
    elif out_path is not None:
        sys.stdout.write(f"{out_path}\n")


def progress(transient: bool = True) -> Progress:
    """A rich progress bar on stderr; disabled with -q."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=transient,
        disable=_state["quiet"],
    )


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals, or '-' when missing."""
    return "-" if value is None else f"{100 * value:.2f} %"


def fmt_num(value: Any) -> str:
    """An int with thousands separators, any other number to 4 significant digits, or '-'."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
