"""What a command prints as its result, on stdout (logs and progress go to stderr through mncli.log)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from rich.console import Console

from mncli.log import is_quiet

# Piped tables are not cut to 80 columns: a result read by a script or a file keeps every digit.
stdout = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


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
    elif is_quiet() and out_path is not None:
        sys.stdout.write(f"{out_path}\n")
    elif table is not None:
        stdout.print(table)
    elif out_path is not None:
        sys.stdout.write(f"{out_path}\n")
