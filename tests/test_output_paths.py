"""Where a stage may write: checked before any work, with exit 2 and nothing written or changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mncli.cli.app import main

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
TRAIN = ["train", "--arch", "test-cnn", "-d", SYN, "--val-size", "32", "--batch-size", "32", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "cnn.safetensors"
    assert main([*TRAIN, "-o", str(path), "-q"]) == 0
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _refused(run_cli, argv: list[str], folder: Path, words: str) -> None:
    before = _snapshot(folder)
    run = run_cli(*argv)
    assert run.code == 2
    err = run.err.strip().splitlines()
    assert words in err[0] and len(err) <= 2, err  # one line, and at most a hint
    assert _snapshot(folder) == before
    assert not any(p.name.endswith(".ckpt") for p in folder.iterdir())


@pytest.mark.parametrize("out", ["cnn", "cnn.manifest.json"])
def test_an_output_over_the_inputs_manifest_is_refused(trained, run_cli, out):
    folder = trained.parent
    argv = ["train", str(trained), "-d", SYN, "--epochs", "1", "-o", str(folder / out)]
    _refused(run_cli, argv, folder, "would overwrite the input")


def test_a_directory_as_output_is_refused(tmp_path, run_cli):
    (tmp_path / "d").mkdir()
    _refused(run_cli, [*TRAIN, "-o", str(tmp_path / "d")], tmp_path, "is a directory")


def test_an_output_below_a_file_is_refused(tmp_path, run_cli):
    (tmp_path / "f").write_text("x")
    _refused(run_cli, [*TRAIN, "-o", str(tmp_path / "f" / "a.safetensors")], tmp_path, "is not a directory")


def test_an_unwritable_folder_is_refused(tmp_path, run_cli, monkeypatch):
    # root (CI, these machines) may write anywhere, so the folder is made unwritable to os.access,
    # which is what the check asks; as another user chmod 500 gives the same refusal.
    from mncli.artifact import io

    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(
        io.os, "access", lambda path, mode: False if Path(path) == folder else real(path, mode)
    )
    _refused(run_cli, [*TRAIN, "-o", str(folder / "a.safetensors")], folder, "cannot write")


@pytest.mark.parametrize("name", ["notes.txt", "a.safetensors"])
def test_a_file_that_is_not_an_artifact_is_never_replaced(tmp_path, run_cli, name):
    (tmp_path / name).write_text("my notes\n")
    _refused(run_cli, [*TRAIN, "-o", str(tmp_path / name)], tmp_path, "is not an mncli artifact")


def test_a_manifest_without_its_artifact_is_never_replaced(tmp_path, run_cli):
    (tmp_path / "a.manifest.json").write_text("{}")
    _refused(
        run_cli, [*TRAIN, "-o", str(tmp_path / "a.safetensors")], tmp_path, "exists without the artifact"
    )


def test_an_existing_artifact_is_replaced_unless_no_clobber(tmp_path, run_cli):
    out = tmp_path / "a.safetensors"
    assert run_cli(*TRAIN, "-o", out, "-q").code == 0
    assert run_cli(*TRAIN, "--seed", "1", "-o", out, "-q").code == 0  # replaced
    _refused(run_cli, [*TRAIN, "-o", str(out), "-n"], tmp_path, "--no-clobber keeps it")
    _refused(run_cli, [*TRAIN, "-o", str(out), "--no-clobber"], tmp_path, "--no-clobber keeps it")


def test_a_file_where_the_checkpoints_go_is_refused(tmp_path, run_cli):
    (tmp_path / "a.ckpt").write_text("not a folder")
    run = run_cli(*TRAIN, "-o", tmp_path / "a.safetensors")
    assert run.code == 2 and "where checkpoints go" in run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]
