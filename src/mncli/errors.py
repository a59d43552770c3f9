"""Errors that the command line turns into one clear line and an exit code.

BadInput (exit 2) is the user's to fix: a missing file, a wrong format, a bad option.
RuntimeFailure (exit 1) is the run's: a diverged loss, an overflow found by a check.
"""

from __future__ import annotations


class MncliError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(MncliError):
    exit_code = 2


class RuntimeFailure(MncliError):
    exit_code = 1


def describe(exc: BaseException) -> str:
    """One line for any exception: our own message, else its type and the first line of its text."""
    if isinstance(exc, MncliError):
        return exc.message
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
