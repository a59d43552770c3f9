"""Small text helpers every layer shares: comma lists in, percentages and numbers out."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from mncli.errors import BadInput

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


def parse_list(text: str | None, kind: Callable[[str], T], option: str, example: str) -> list[T] | None:
    """`"16, 32,64"` -> [16, 32, 64]; None stays None; a bad item is BadInput naming `option`."""
    if text is None:
        return None
    try:
        return [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        noun = "integers" if kind is int else "numbers" if kind is float else "values"
        raise BadInput(
            f"{option} takes comma-separated {noun}, got {text!r}", hint=f"e.g. {option} {example}"
        ) from None


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals (0.9312 -> '93.12 %'), or '-' when missing."""
    return "-" if value is None else f"{100 * value:.2f} %"


def fmt_num(value: Any) -> str:
    """An int with thousands separators, any other number to 4 significant digits, or '-'."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def parse_choice(kind: type[E], value: object, option: str) -> E:
    """`value` as a member of the StrEnum `kind`; anything else is BadInput naming `option` and the choices
    (the command line checks choices while parsing; this is the same check for the Python API)."""
    try:
        return kind(value.lower() if isinstance(value, str) else value)
    except ValueError:
        what = option.lstrip("-").replace("-", " ")
        raise BadInput(f"unknown {what} {value!r}", hint=f"use {option} " + ", ".join(kind)) from None


def clipped(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in "..." when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's text (its type's name when it has none), cut to `limit`."""
    lines = str(exc).strip().splitlines()
    return clipped(lines[0] if lines else type(exc).__name__, limit)


def shown(value: object, limit: int = 60) -> str:
    """repr(value) for an error message, cut short: a value from a file or the command line may be any
    length."""
    return clipped(repr(value), limit)


def one_line(text: object, limit: int) -> str:
    """`text` on one line (runs of whitespace and newlines as one space), cut to `limit` characters."""
    return clipped(" ".join(str(text).split()), limit)
