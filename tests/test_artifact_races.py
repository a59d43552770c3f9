"""Concurrent writers and readers of one artifact path.

Two writers released together by a barrier must never leave an artifact and a sidecar written by
different writers (the pair is renamed into place under a lock per output path), and a reader
running while a writer keeps replacing the file must never see a false corruption error (it reads
header and data from one open file, so an atomic rename cannot hand it a mismatched pair).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import torch

from mncli.artifact import load_artifact, new_manifest, read_manifest, save_artifact, sidecar_path
from mncli.artifact.io import file_report
from mncli.errors import BadInput

ROUNDS = 40
WAIT = 60  # seconds a barrier waits before the test fails instead of hanging


def _tensors(writer: int, round_: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * writer + round_)
    return {"w": torch.randn(64, 16, generator=g), "b": torch.full((16,), float(writer))}


def _manifest(writer: int, round_: int) -> dict:
    return new_manifest(
        "train", arch={"name": "test-mlp", "args": {}}, params={"writer": writer, "round": round_}, command=""
    )


def _writer(path: str, writer: int, rounds: int, barrier) -> None:
    torch.set_num_threads(1)
    for r in range(rounds):
        barrier.wait(WAIT)  # start together
        save_artifact(path, _tensors(writer, r), _manifest(writer, r))
        barrier.wait(WAIT)  # both done: the parent checks the pair


def _context():
    # fork is fast and safe here (the children only write files); spawn where fork is unavailable
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _join(procs) -> None:
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0, f"writer exit code {p.exitcode}"


def test_synchronized_writers_leave_a_matching_pair(tmp_path):
    path = tmp_path / "out.safetensors"
    ctx = _context()
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_writer, args=(str(path), i, ROUNDS, barrier)) for i in (1, 2)]
    for p in procs:
        p.start()
    mismatched = []
    try:
        for r in range(ROUNDS):
            barrier.wait(WAIT)
            barrier.wait(WAIT)
            inside = read_manifest(path)
            beside = json.loads(sidecar_path(path).read_text())
            if inside != beside:
                mismatched.append((r, inside["params"], beside["params"]))
            assert inside["params"]["round"] == r
    except BaseException:
        barrier.abort()  # release the writers, then report what went wrong here
        raise
    finally:
        _join(procs)
    assert not mismatched, f"artifact and sidecar from different writers in rounds {mismatched}"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["out.manifest.json", "out.safetensors"], left  # no lock file, no temporary


def _replacer(path: str, writes: int, started) -> None:
    torch.set_num_threads(1)
    for i in range(writes):
        save_artifact(path, _tensors(i % 2, i % 7), _manifest(i % 2, i % 7))
        if i == 0:
            started.set()


def test_reader_during_atomic_replacement_sees_no_false_corruption(tmp_path):
    path = tmp_path / "out.safetensors"
    save_artifact(path, _tensors(0, 0), _manifest(0, 0))
    ctx = _context()
    started = ctx.Event()
    proc = ctx.Process(target=_replacer, args=(str(path), 400, started))
    proc.start()
    errors, reads = [], 0
    try:
        started.wait(WAIT)
        while proc.is_alive() or reads == 0:
            try:
                tensors, manifest = load_artifact(path)  # checks the content hash
                writer = manifest["params"]["writer"]
                assert torch.equal(tensors["b"], torch.full((16,), float(writer)))
                report = file_report(path)
                assert report["file_bytes"] == report["header_bytes"] + report["data_bytes"]
            except BadInput as exc:
                errors.append(exc.message)
            reads += 1
    finally:
        proc.join(WAIT)
    assert proc.exitcode == 0
    assert not errors, f"{len(errors)} of {reads} reads failed, e.g. {errors[0]}"
    assert reads > 50


def test_a_lock_left_by_a_killed_writer_does_not_block_the_next(tmp_path):
    """A writer killed while holding the lock leaves its lock file, but not the lock: the next
    writer takes it, and removes the file."""
    path = tmp_path / "out.safetensors"
    lock = Path(tmp_path / ".out.safetensors.lock")
    lock.write_bytes(b"")  # what SIGKILL inside the critical section leaves
    save_artifact(path, _tensors(0, 0), _manifest(0, 0))
    assert not lock.exists()
    assert read_manifest(path) == json.loads(sidecar_path(path).read_text())
