"""Temporary files beside an output, named after their writer so a later run can clean up after a
killed one.

Outputs are written to a hidden temporary in the same folder and renamed into place. A writer that is
interrupted removes its temporary, but one killed outright (SIGKILL, out of memory, power loss) cannot,
and would leave `.NAME.HOST-PID.<random>.tmp` behind. Before writing NAME again, temporaries of NAME whose
writer ran on this host and is no longer alive are removed. Those of live processes, and of other hosts
(a shared folder on a cluster), are left alone.

`output_lock(path)` serialises the writers of one output around renaming their files into place: an
flock on the hidden `.NAME.lock` beside it, which the holder removes before releasing it.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mncli.log import warn

try:
    import fcntl
except ImportError:  # not POSIX: no lock, writers of one path are not serialised
    fcntl = None  # type: ignore[assignment]


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_") or "host"


def _prefix(path: Path) -> str:
    return f".{path.name}."


def _writer_is_gone(tag: str) -> bool:
    host, sep, pid = tag.rpartition("-")
    if not sep or host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user / not a pid we can ask about
        return False
    return False


def remove_stale_temporaries(path: Path, suffix: str = ".tmp") -> list[Path]:
    """Remove the temporaries of `path` left by dead writers on this host; returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = _prefix(path)
    for candidate in path.parent.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        tag = candidate.name[len(prefix) :].split(".", 1)[0]
        if _writer_is_gone(tag):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def make_temporary(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """An open (fd, path) temporary beside `path`, named `.NAME.HOST-PID.<random><suffix>`, with the
    permissions of an ordinary new file, after removing the stale temporaries of dead writers."""
    path = Path(path)
    remove_stale_temporaries(path, suffix)
    writer = f"{_host()}-{os.getpid()}"
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{_prefix(path)}{writer}.", suffix=suffix)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; outputs are ordinary files
    return fd, Path(name)


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _take_lock(lock: Path) -> int | None:
    """An fd holding an exclusive flock on the file `lock` (created if need be), or None where no
    lock can be had (no fcntl, a folder that refuses locks): then writers are not serialised.
    A holder removes the file before releasing it, so a waiter that wakes on a removed file retries."""
    if fcntl is None:
        return None
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        try:
            fd = os.open(lock, flags, 0o666)
        except OSError as exc:
            warn(f"cannot create the lock {lock} ({exc.strerror}); writing without it")
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                named = os.stat(lock, follow_symlinks=False)
            except FileNotFoundError:
                named = None
        except OSError as exc:
            os.close(fd)
            warn(f"cannot lock {lock} ({exc.strerror}); writing without it")
            return None
        except BaseException:
            os.close(fd)
            raise
        if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # the previous holder removed that file: lock the one there now


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock of one output path, held while its artifact and sidecar are renamed into place,
    so that concurrent writers of the same path leave a pair written by one of them. The lock is the
    flock of a hidden `.NAME.lock` beside the output, removed again on release (a holder killed
    outright leaves the empty file, whose lock died with it; the next writer takes and removes it)."""
    lock = _lock_path(Path(path))
    fd = _take_lock(lock)
    try:
        yield
    finally:
        if fd is not None:
            with suppress(OSError):
                lock.unlink()  # still holding it: a waiter on this file wakes, sees it gone, retries
            os.close(fd)
