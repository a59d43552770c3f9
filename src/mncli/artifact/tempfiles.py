"""Temporary files beside an output, named after their writer so a later run can clean up after a
killed one.

Outputs are written to a hidden temporary in the same folder and renamed into place. A writer that is
interrupted removes its temporary, but one killed outright (SIGKILL, out of memory, power loss) cannot,
and would leave `.NAME.HOST-PID.<random>.tmp` behind. Before writing NAME again, temporaries of NAME whose
writer ran on this host and is no longer alive are removed. Those of live processes, and of other hosts
(a shared folder on a cluster), are left alone.
"""

from __future__ import annotations

import glob
import os
import socket
import tempfile
from pathlib import Path


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
