"""Artifact files: safetensors compatibility, determinism, atomic writes, header-only reads and a
clear one-line BadInput for every kind of broken input."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mncli.artifact import (
    content_sha256,
    file_report,
    lineage_from,
    load_artifact,
    new_manifest,
    parent_entry,
    read_manifest,
    save_artifact,
    sidecar_path,
)
from mncli.artifact import io as art_io
from mncli.errors import BadInput


def manifest(stage="train", **kw):
    return new_manifest(
        stage, arch={"name": "test-mlp", "args": {"width": 4}}, seed=0, command="mncli test", **kw
    )


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randn(4, 3, generator=g),
        "fc.bias": torch.randn(4, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(5),
        "codes": torch.randint(0, 255, (7,), generator=g, dtype=torch.uint8),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "bf": torch.ones(2, dtype=torch.bfloat16),
    }


def test_round_trip_and_safetensors_reads_our_files(tmp_path):
    path = tmp_path / "a.safetensors"
    written = save_artifact(path, tensors(), manifest())
    assert written["content_sha256"] == content_sha256(tensors()) and written["format"] == "mncli/1"
    loaded, m = load_artifact(path)
    assert m == written and list(loaded) == sorted(tensors())
    for k, v in tensors().items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    theirs = load_file(path)
    assert all(torch.equal(theirs[k], v) for k, v in tensors().items())
    with safe_open(path, "pt") as f:
        assert list(f.metadata()) == ["mncli"]
        assert json.loads(f.metadata()["mncli"]) == written
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0 and json.loads(raw[8 : 8 + n])["__metadata__"]["mncli"] == json.dumps(
        written, sort_keys=True, separators=(",", ":")
    )
    assert json.loads(sidecar_path(path).read_text()) == written
    assert sidecar_path(path).name == "a.manifest.json"


def test_we_read_files_written_by_safetensors(tmp_path):
    path = tmp_path / "theirs.safetensors"
    m = {**manifest(), "content_sha256": content_sha256(tensors())}
    save_file(tensors(), path, metadata={"mncli": json.dumps(m)})
    loaded, m2 = load_artifact(path)
    assert m2 == m and all(torch.equal(loaded[k], v) for k, v in tensors().items())


def test_identical_inputs_give_identical_bytes(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "sub" / "a.safetensors"
    save_artifact(a, tensors(), manifest())
    save_artifact(b, dict(reversed(list(tensors().items()))), manifest())  # insertion order is irrelevant
    assert a.read_bytes() == b.read_bytes()
    assert sidecar_path(a).read_bytes() == sidecar_path(b).read_bytes()


def test_hash_is_independent_of_the_manifest(tmp_path):
    one = save_artifact(tmp_path / "1.safetensors", tensors(), manifest("train"))
    two = save_artifact(tmp_path / "2.safetensors", tensors(), manifest("prune", metrics={"val": 0.5}))
    changed = {**tensors(), "codes": tensors()["codes"] + 1}
    assert one["content_sha256"] == two["content_sha256"] != content_sha256(changed)
    assert content_sha256({"a": torch.zeros(2)}) != content_sha256({"a": torch.zeros(1, 2)})
    assert content_sha256({"a": torch.zeros(2)}) != content_sha256({"b": torch.zeros(2)})


def test_architecture_only_artifact(tmp_path):
    path = tmp_path / "arch.safetensors"
    written = save_artifact(path, {}, manifest("search"))
    assert load_artifact(path) == ({}, written)
    assert load_file(path) == {}
    assert file_report(path)["tensors"] == [] and file_report(path)["data_bytes"] == 0


def test_manifest_is_canonical_and_nan_free(tmp_path):
    path = tmp_path / "a.safetensors"
    written = save_artifact(path, {}, manifest(metrics={"loss": float("nan"), "acc": (0.5, 0.25)}))
    assert written["metrics"] == {"loss": None, "acc": [0.5, 0.25]}
    assert b"NaN" not in path.read_bytes()
    text = json.dumps(written, sort_keys=True, separators=(",", ":"))
    assert json.dumps(text)[1:-1].encode() in path.read_bytes()  # escaped inside the header


def test_read_manifest_reads_the_header_only(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    written = save_artifact(path, tensors(), manifest())
    monkeypatch.setattr(art_io, "read_tensor_data", lambda *a: pytest.fail("tensor data was read"))
    assert read_manifest(path) == written
    report = file_report(path)
    assert report["groups"]["fc.weight"]["bytes"] == 48 and report["file_bytes"] == path.stat().st_size


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
    out, inp = tmp_path / "out.safetensors", tmp_path / "in.safetensors"
    save_artifact(inp, tensors(), manifest())
    before = inp.read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(art_io, "tensor_bytes", lambda t: boom())
    with pytest.raises(OSError, match="disk full"):
        save_artifact(out, tensors(), manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.manifest.json", "in.safetensors"]
    with pytest.raises(OSError):  # an existing output stays as it was too
        save_artifact(inp, {"x": torch.ones(1)}, manifest())
    assert inp.read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setattr(art_io, "pretty_json", lambda m: boom())  # the sidecar fails: no data file either
    with pytest.raises(OSError, match="disk full"):
        save_artifact(out, tensors(), manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.manifest.json", "in.safetensors"]


def test_killed_write_leaves_no_output(tmp_path):
    """SIGKILL in the middle of writing: no output file appears (a hidden temporary may remain)."""
    out = tmp_path / "out.safetensors"
    script = f"""
import os, signal, torch
from mncli.artifact import io, save_artifact, new_manifest
real = io.tensor_bytes
calls = []
def dying(t):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(t)
io.tensor_bytes = dying
save_artifact({str(out)!r}, {{"a": torch.ones(1000), "b": torch.ones(1000)}},
              new_manifest("train", arch={{"name": "x", "args": {{}}}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not out.exists() and not sidecar_path(out).exists()


def test_refuses_to_overwrite_its_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parent = Path("in.safetensors")
    pm = save_artifact(parent, tensors(), manifest())
    before = parent.read_bytes()
    entry = parent_entry(parent, pm, parent)
    with pytest.raises(BadInput, match="refusing to write the output over its input"):
        save_artifact(parent, {}, manifest("prune", parents=[entry], lineage=lineage_from([(entry, pm)])))
    assert parent.read_bytes() == before


def test_parent_entry_and_lineage(tmp_path):
    a = save_artifact(tmp_path / "a.safetensors", {}, manifest("search"))
    ea = parent_entry(tmp_path / "a.safetensors", a, tmp_path / "runs" / "b.safetensors")
    assert ea == {"path": "../a.safetensors", "content_sha256": a["content_sha256"], "stage": "search"}
    b = save_artifact(
        tmp_path / "runs" / "b.safetensors",
        tensors(),
        manifest(parents=[ea], lineage=lineage_from([(ea, a)])),
    )
    eb = parent_entry(tmp_path / "runs" / "b.safetensors", b, tmp_path / "c.safetensors")
    lineage = lineage_from([(eb, b), (ea, a)])
    assert [x["stage"] for x in lineage] == ["search", "train"]


def write(tmp_path, name, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def broken_inputs(tmp_path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.safetensors"
    save_artifact(good, tensors(), manifest())
    raw = good.read_bytes()
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, foreign, metadata={"format": "pt"})
    ckpt = tmp_path / "ckpt.safetensors"
    torch.save({"w": torch.ones(2)}, ckpt)
    bad_schema = tmp_path / "schema.safetensors"
    save_file(
        {"w": torch.ones(2)}, bad_schema, metadata={"mncli": json.dumps({**read_manifest(good), "stage": 3})}
    )
    return {
        "missing": (tmp_path / "nope.safetensors", "no such file"),
        "directory": (tmp_path, "not a file"),
        "empty": (write(tmp_path, "empty.safetensors", b""), "truncated or empty"),
        "truncated data": (write(tmp_path, "t1.safetensors", raw[:-5]), "truncated file"),
        "truncated header": (write(tmp_path, "t2.safetensors", raw[:40]), "not a safetensors file"),
        "foreign": (foreign, "a safetensors file without an mncli manifest"),
        "torch.save zip": (ckpt, "looks like a pickled PyTorch checkpoint"),
        "raw pickle": (write(tmp_path, "p.safetensors", pickle.dumps({"w": [1.0]})), "pickled PyTorch"),
        "length 0x280, like a pickle's first bytes": (
            write(tmp_path, "l.safetensors", (0x280).to_bytes(8, "little") + b'{"a":' + b" " * 634 + b"x"),
            "not a safetensors file (its header",
        ),
        "garbage": (write(tmp_path, "g.safetensors", os.urandom(16) + b"x" * 100), "not a safetensors file"),
        "json not an object": (
            write(tmp_path, "j.safetensors", (8).to_bytes(8, "little") + b"[1,2,3] "),
            "not a safe",
        ),
        "manifest not json": (
            write(
                tmp_path, "m.safetensors", (32).to_bytes(8, "little") + b'{"__metadata__":{"mncli":"{"}}  '
            ),
            "not valid JSON",
        ),
        "schema": (bad_schema, "invalid mncli manifest: manifest.stage: expected string, got integer"),
    }


def test_broken_inputs_are_one_line_bad_input(tmp_path):
    """read_manifest catches even short data from the header's offsets, without reading the data."""
    for label, (path, message) in broken_inputs(tmp_path).items():
        for reader in (read_manifest, load_artifact):
            with pytest.raises(BadInput) as info:
                reader(path)
            assert message in info.value.message, (label, info.value.message)
            assert "\n" not in info.value.message


def test_altered_data_fails_the_hash_on_load(tmp_path):
    path = tmp_path / "a.safetensors"
    save_artifact(path, tensors(), manifest())
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    read_manifest(path)  # the header is still fine
    with pytest.raises(BadInput, match="content hash mismatch"):
        load_artifact(path)
    assert load_artifact(path, check_hash=False)[0]["fc.weight"].shape == (4, 3)


class _Trap:
    """Unpickling this object would create a directory: proof that something unpickled the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_nothing_is_ever_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    trap = tmp_path / "trap.safetensors"
    trap.write_bytes(pickle.dumps({"w": _Trap(marker)}))
    zipped = tmp_path / "trap2.safetensors"
    torch.save({"w": _Trap(marker)}, zipped)
    for path in (trap, zipped):
        for reader in (read_manifest, load_artifact, file_report):
            with pytest.raises(BadInput, match="pickled PyTorch checkpoint"):
                reader(path)
    assert not marker.exists()


def test_manifest_that_is_not_json_is_a_runtime_failure(tmp_path):
    from mncli.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="not JSON"):
        save_artifact(tmp_path / "a.safetensors", {}, manifest(params={"dtype": torch.float32}))
    assert list(tmp_path.iterdir()) == []
