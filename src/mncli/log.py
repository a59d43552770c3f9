"""Logs and progress bars on stderr, for every layer of mncli (results on stdout are the CLI's business).

Messages go through the standard `logging` module (logger "mncli"), so a script or notebook that
imports mncli can silence, raise or redirect them like any other library's. The first use installs a
handler that prints plain lines through a rich console on stderr (rich markup such as `[red]` works);
`set_verbosity` is what `-q` and `-v` change:

    from mncli.log import log, progress
    log("pruning 12 layers")
    with progress() as bar:
        task = bar.add_task("epoch 1", total=100, status="")
"""

from __future__ import annotations

import logging

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

logger = logging.getLogger("mncli")
stderr = Console(stderr=True, soft_wrap=True)
_state = {"verbose": False, "quiet": False}


class _ConsoleHandler(logging.Handler):
    """One record, one line on the stderr console: no time, level or path columns, no wrapping."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stderr.print(self.format(record), highlight=False)
        except Exception:  # noqa: BLE001 - logging must never take the program down
            self.handleError(record)


def _handler() -> logging.Handler:
    for handler in logger.handlers:
        if isinstance(handler, _ConsoleHandler):
            return handler
    handler = _ConsoleHandler()
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return handler


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    """-v: debug messages and tracebacks; -q: no logs and no progress bars, only warnings."""
    _state["verbose"] = verbose
    _state["quiet"] = quiet
    _handler()
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def is_verbose() -> bool:
    return _state["verbose"]


def is_quiet() -> bool:
    return _state["quiet"]


def log(message: str) -> None:
    """One informational line on stderr (silenced by -q)."""
    _handler()
    logger.info(message)


def warn(message: str) -> None:
    """One "warning: ..." line on stderr, shown even with -q: something the user must know."""
    _handler()
    logger.warning(f"warning: {message}")


def debug(message: str) -> None:
    """One line on stderr shown only with -v."""
    _handler()
    logger.debug(message)


def progress(transient: bool = True) -> Progress:
    """A rich progress bar on stderr; disabled with -q. Tasks take a `status` field."""
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
