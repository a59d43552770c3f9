"""A writer killed outright (SIGKILL) cannot remove its hidden temporary; the next write of the same
output removes it, and leaves alone the temporaries of live writers and of other hosts."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from mncli.artifact import new_manifest, save_artifact
from mncli.artifact.tempfiles import make_temporary, remove_stale_temporaries
from mncli.engine.checkpoint import save_checkpoint

KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from mncli.artifact.tempfiles import make_temporary
    fd, tmp = make_temporary(__import__("pathlib").Path(sys.argv[1]))
    os.write(fd, b"half a file")
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _killed_writer_temporary(path) -> str:
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL
    tmp = done.stdout.strip()
    assert os.path.exists(tmp)
    return tmp


def _manifest():
    return new_manifest(
        "train", arch={"name": "test-mlp", "args": {"width": 4}}, seed=0, command="mncli test"
    )


def test_the_next_save_removes_what_a_killed_writer_left(tmp_path):
    out = tmp_path / "model.safetensors"
    stale = _killed_writer_temporary(out)
    save_artifact(out, {"w": torch.ones(3)}, _manifest())
    assert not os.path.exists(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.manifest.json", "model.safetensors"]


def test_a_checkpoint_write_cleans_up_too(tmp_path):
    (tmp_path / "ckpt").mkdir()
    stale = _killed_writer_temporary(tmp_path / "ckpt" / "state.pt")
    save_checkpoint(tmp_path / "ckpt", {"epoch": 1})
    assert not os.path.exists(stale)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["state.pt"]


def test_live_writers_other_hosts_and_other_outputs_are_left_alone(tmp_path):
    out = tmp_path / "a.safetensors"
    fd, live = make_temporary(out)  # this process: alive
    os.close(fd)
    other_host = tmp_path / ".a.safetensors.elsewhere-1.abc.tmp"
    other_output = tmp_path / ".b.safetensors.x-1.abc.tmp"
    other_host.write_bytes(b"")
    other_output.write_bytes(b"")
    assert remove_stale_temporaries(out) == []
    assert live.exists() and other_host.exists() and other_output.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_outputs_get_ordinary_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        fd, tmp = make_temporary(tmp_path / "x.safetensors")
        os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(tmp.stat().st_mode) == 0o644
