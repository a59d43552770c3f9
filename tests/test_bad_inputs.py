"""The reliability table: bad input to every command ends as exit 2 and one line on stderr, before
any work, with nothing on stdout, every input byte-for-byte as it was, and nothing left behind in
the working folder (no output, no sidecar, no hidden `.NAME.*.tmp`, no `OUT.ckpt/`).

Each row runs `mncli.cli.app.main(argv)` in a fresh empty working folder, where outputs are written
(relative paths); `{name}` in an argument is a fixture file built once for the module. A row may
prepare the working folder first (an existing output, a checkpoint for --resume); what it puts
there counts as input and must stay exactly as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mncli.cli.app import main

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
FAST = ("--epochs", "1", "-b", "32", "--val-size", "32")


# ---------------------------------------------------------------- fixture files


def _split(path: Path) -> tuple[dict, bytes]:
    """(header JSON, tensor data) of a safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict | bytes, data: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _rehash(header: dict, data: bytes) -> dict:
    """The header with its manifest's content hash recomputed from the (edited) entries, so that
    only the edit itself is wrong."""
    from mncli.artifact.hashing import hash_entries

    entries = [
        (name, e["dtype"], e["shape"], data[e["data_offsets"][0] : e["data_offsets"][1]])
        for name, e in header.items()
        if name != "__metadata__"
    ]
    manifest = json.loads(header["__metadata__"]["mncli"])
    manifest["content_sha256"] = hash_entries(entries)
    return _with_manifest(header, manifest)


def _with_manifest(header: dict, manifest: dict) -> dict:
    """The header carrying `manifest`, resealed as a forger would (the seal is tamper evidence,
    not a signature), so that only the edit itself is wrong."""
    from mncli.artifact.manifest import canonical_json, seal_manifest

    if "manifest_sha256" in manifest:
        manifest = seal_manifest(manifest)
    return {**header, "__metadata__": {"mncli": canonical_json(manifest)}}


def _manifest(header: dict) -> dict:
    return json.loads(header["__metadata__"]["mncli"])


def _forge(src: Path, dst: Path, edit: Callable[[dict], None]) -> None:
    """`src` with its manifest edited (tensors and content hash untouched), sidecar included."""
    header, data = _split(src)
    manifest = _manifest(header)
    edit(manifest)
    header = _with_manifest(header, manifest)
    manifest = _manifest(header)
    dst.write_bytes(_join(header, data))
    dst.with_name(dst.name.removesuffix(".safetensors") + ".manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True)
    )


class _Payload:
    """A pickle that runs `touch pwned` in the working folder when unpickled: if it ever runs, the
    row fails on what it left behind."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _write_hostile_artifacts(fx: Path, cnn: Path) -> None:
    header, data = _split(cnn)
    names = sorted(n for n in header if n != "__metadata__")

    h = json.loads(json.dumps(header))
    begin, end = h[names[0]]["data_offsets"]
    h[names[0]]["data_offsets"] = [float(begin), float(end)]
    (fx / "float_offsets.safetensors").write_bytes(_join(h, data))

    deep = b'{"__metadata__":{"mncli":"{}"},"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (fx / "deep_header.safetensors").write_bytes(_join(deep, data))

    h = json.loads(json.dumps(header))
    h["__metadata__"]["mncli"] = "[" * 100_000 + "]" * 100_000
    (fx / "deep_manifest.safetensors").write_bytes(_join(h, data))

    h = json.loads(json.dumps(header))
    h["huge"] = {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [len(data), len(data)]}
    (fx / "huge_shape.safetensors").write_bytes(_join(_rehash(h, data), data))

    h = json.loads(json.dumps(header))
    ones = [n for n in names if 1 in h[n]["shape"]]  # conv1.weight: [8, 1, 3, 3]
    shape = h[ones[0]]["shape"]
    h[ones[0]]["shape"] = [True if d == 1 else d for d in shape]
    (fx / "bool_shape.safetensors").write_bytes(_join(_rehash(h, data), data))

    h = json.loads(json.dumps(header))
    sizes: dict[tuple, list[str]] = {}
    for n in names:
        e = h[n]
        sizes.setdefault((e["dtype"], e["data_offsets"][1] - e["data_offsets"][0]), []).append(n)
    a, b = next(group for group in sizes.values() if len(group) >= 2)[:2]
    h[b]["data_offsets"] = list(h[a]["data_offsets"])
    (fx / "overlap.safetensors").write_bytes(_join(_rehash(h, data), data))

    (fx / "trailing.safetensors").write_bytes(cnn.read_bytes() + b"\0" * 64)
    (fx / "truncated.safetensors").write_bytes(cnn.read_bytes()[: cnn.stat().st_size // 2])
    (fx / "huge_length.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}      ")

    h = json.loads(json.dumps(header))
    h["__metadata__"]["mncli"] = "{not json"
    (fx / "manifest_not_json.safetensors").write_bytes(_join(h, data))

    raw = json.dumps(header, separators=(",", ":")).encode().replace(b'"__metadata__"', b'"__metadata\xff_"')
    (fx / "header_not_utf8.safetensors").write_bytes(_join(raw, data))

    def set_classes(n):
        return lambda m: m["arch"]["args"].update(num_classes=n)

    _forge(cnn, fx / "classes_minus1.safetensors", set_classes(-1))
    _forge(cnn, fx / "classes_7.safetensors", set_classes(7))
    _forge(cnn, fx / "arch_misfit.safetensors", lambda m: m["arch"]["args"].update(width=16))
    _forge(cnn, fx / "arch_unknown.safetensors", lambda m: m["arch"].update(name="no-such-net"))
    _forge(cnn, fx / "no_arch.safetensors", lambda m: m.pop("arch"))


def _write_foreign_files(fx: Path) -> None:
    import torch
    from PIL import Image

    from mncli.models import create_model

    (fx / "notes.txt").write_text("my notes, not a model\n")
    (fx / "text_st.safetensors").write_text("my notes, not a model\n")
    (fx / "empty.safetensors").write_bytes(b"")
    Image.new("L", (8, 8)).save(fx / "image.png")
    with zipfile.ZipFile(fx / "archive.zip", "w") as z:
        z.writestr("a.txt", "hello")
    (fx / "folder.safetensors").mkdir()

    torch.manual_seed(0)
    net = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8)
    torch.save(net.state_dict(), fx / "cnn_state.pt")
    torch.save(create_model("lenet5").state_dict(), fx / "lenet5_state.pt")
    wide = create_model("test-cnn", num_classes=10, in_channels=1, input_size=8)
    torch.save(wide.state_dict(), fx / "cnn10_state.pt")
    torch.save([1, 2, 3], fx / "a_list.pt")
    (fx / "evil.pt").write_bytes(pickle.dumps({"state_dict": _Payload()}))

    import safetensors.torch

    safetensors.torch.save_file({"w": torch.zeros(2)}, str(fx / "plain.safetensors"))


def _write_data_folders(fx: Path) -> None:
    cut = fx / "idx_cut"
    cut.mkdir()
    (cut / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    (cut / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00")
    (cut / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    (cut / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00")

    evil = fx / "cifar_evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (evil / name).write_bytes(pickle.dumps(_Payload()))

    odd = fx / "cifar_list" / "cifar-10-batches-py"
    odd.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (odd / name).write_bytes(pickle.dumps([1, 2, 3]))


def _write_recipes(fx: Path) -> None:
    (fx / "recipe_broken.yaml").write_text("layers: [unclosed\n")
    (fx / "recipe_latin1.yaml").write_bytes(b"layers:\n  conv2: {sparsity: 0.5}  # caf\xe9\n")
    (fx / "recipe_unknown_key.yaml").write_text('layers:\n  "conv*": {spars1ty: 0.5}\n')
    (fx / "recipe_list.yaml").write_text("- conv2\n- conv3\n")
    (fx / "recipe_empty.yaml").write_text("")
    (fx / "recipe_no_match.json").write_text('{"layers": {"nosuch*": {"sparsity": 0.5}}}')
    (fx / "recipe_sparsity2.json").write_text('{"layers": {"conv2": {"sparsity": 2}}}')
    (fx / "recipe_sparsity_text.json").write_text('{"layers": {"conv2": {"sparsity": "half"}}}')
    (fx / "recipe_empty_name.json").write_text('{"layers": {"": {"sparsity": 0.5}}}')
    (fx / "recipe_settings_scalar.json").write_text('{"layers": {"conv2": 0.5}}')
    (fx / "recipe_bits1.json").write_text('{"layers": {"conv2": {"weight_bits": 1}}}')
    (fx / "recipe_bits_float.json").write_text('{"layers": {"conv2": {"act_bits": 4.5}}}')
    (fx / "recipe_quant_key.json").write_text('{"layers": {"conv2": {"sparsity": 0.5}}}')


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict:
    """The module's fixture files by name ({name} in a row's argv), and a snapshot of them all."""
    from conftest import tiny_artifact

    folder = tmp_path_factory.mktemp("fx")
    cnn = folder / "cnn.safetensors"
    assert main(["train", "--arch", "test-cnn", "-d", SYN, *FAST, "-o", str(cnn), "-q"]) == 0
    pruned = folder / "pruned.safetensors"
    assert main(["prune", str(cnn), "-m", "magnitude", "-s", "0.5", *FAST, "-o", str(pruned), "-q"]) == 0
    args = {"num_classes": 4, "in_channels": 1, "input_size": 8}
    tiny_artifact(folder / "arch.safetensors", "test-cnn", args, weights=False, stage="search")
    tiny_artifact(folder / "mbconv_arch.safetensors", "mbconv", args, weights=False, stage="search")
    _write_hostile_artifacts(folder, cnn)
    _forge(pruned, folder / "long_parent.safetensors", _long_parent)
    _write_foreign_files(folder)
    _write_data_folders(folder)
    _write_recipes(folder)
    paths = {p.name.split(".")[0]: str(p) for p in folder.iterdir() if not p.name.endswith(".manifest.json")}
    assert len(paths) == len([p for p in folder.iterdir() if not p.name.endswith(".manifest.json")])
    paths["fx"] = str(folder)
    paths["long_name"] = str(folder / ("x" * 300 + ".safetensors"))
    return {"paths": paths, "folder": folder, "snapshot": _snapshot(folder)}


def _long_parent(manifest: dict) -> None:
    manifest["parents"][0]["path"] = "p" * 300 + "/" + "q" * 300 + ".safetensors"


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry below `folder`, hidden ones included: file bytes, None for a directory."""
    found: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return found


# ---------------------------------------------------------------- working-folder set-ups


def _existing_text(work: Path, fx: dict) -> None:
    (work / "out.safetensors").write_text("my notes\n")


def _existing_artifact(work: Path, fx: dict) -> None:
    src = fx["folder"] / "cnn.safetensors"
    shutil.copy(src, work / "out.safetensors")
    shutil.copy(fx["folder"] / "cnn.manifest.json", work / "out.manifest.json")


def _lonely_sidecar(work: Path, fx: dict) -> None:
    (work / "out.manifest.json").write_text("{}")


def _out_dir(work: Path, fx: dict) -> None:
    (work / "out.safetensors").mkdir()


def _a_file(work: Path, fx: dict) -> None:
    (work / "file").write_text("x")


def _hard_link(work: Path, fx: dict) -> None:
    os.link(fx["folder"] / "cnn.safetensors", work / "link.safetensors")


def _copies(work: Path, fx: dict) -> None:
    """The trained and the pruned artifact, with their sidecars, in the working folder: for rows
    that might write over their input (a defect there must not spoil the module's fixtures)."""
    for name in ("cnn", "pruned", "mbconv_arch"):
        for suffix in (".safetensors", ".manifest.json"):
            shutil.copy(fx["folder"] / (name + suffix), work / (name + suffix))
    shutil.copy(fx["folder"] / "cnn_state.pt", work / "cnn_state.pt")


def _bad_checkpoint(work: Path, fx: dict) -> None:
    (work / "out.ckpt").mkdir()
    (work / "out.ckpt" / "state.pt").write_text("not a checkpoint\n")


def _bad_agp_checkpoint(work: Path, fx: dict) -> None:
    (work / "out.ckpt" / "agp").mkdir(parents=True)
    (work / "out.ckpt" / "agp" / "state.pt").write_text("not a checkpoint\n")


def _evil_checkpoint(work: Path, fx: dict) -> None:
    (work / "out.ckpt").mkdir()
    (work / "out.ckpt" / "state.pt").write_bytes(pickle.dumps({"format": "mncli-ckpt/1", "x": _Payload()}))


def _foreign_checkpoint(work: Path, fx: dict) -> None:
    import torch

    (work / "out.ckpt").mkdir()
    torch.save({"format": "something else", "epoch": "three"}, work / "out.ckpt" / "state.pt")


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    setup: Callable[[Path, dict], None] | None = None
    env: tuple[tuple[str, str], ...] = ()


def row(id: str, *argv: str, setup=None, env: dict | None = None):
    return pytest.param(Case(tuple(argv), setup, tuple((env or {}).items())), id=id)


O = ("-o", "out.safetensors")  # noqa: E741 - the output every writing row names
TRAIN = ("train", "--arch", "test-cnn", "-d", SYN, *FAST)
PRUNE = ("prune", "{cnn}", "-s", "0.5", *FAST)
LOCAL_PRUNE = ("prune", "cnn.safetensors", "-s", "0.5", *FAST)
TERN = ("ternarize", "{cnn}", *FAST)
QUANT = ("quantize", "{cnn}", *FAST)
SEARCH = ("search", "-d", SYN, *FAST, "--weights-warmup-epochs", "0")
SCALE = ("scale", "{mbconv_arch}")

ROWS = [
    # ---- the root and models
    row("root-unknown-command", "nosuch"),
    row("root-unknown-option", "--bogus", "models"),
    row("models-unknown-family", "models", "--family", "nosuch"),
    row("models-stray-argument", "models", "extra"),
    row("models-unknown-option", "models", "--sort", "params"),
    # ---- inspect: missing, empty, truncated, foreign and hostile files
    row("inspect-missing-file", "inspect", "nowhere.safetensors"),
    row("inspect-empty-file", "inspect", "{empty}"),
    row("inspect-text-file", "inspect", "{notes}"),
    row("inspect-text-named-safetensors", "inspect", "{text_st}"),
    row("inspect-png", "inspect", "{image}"),
    row("inspect-zip", "inspect", "{archive}"),
    row("inspect-checkpoint-unknown-arch", "inspect", "{cnn_state}", "--arch", "no-such-net"),
    row("inspect-checkpoint-without-a-state-dict", "inspect", "{a_list}"),
    row("inspect-artifact-with-arch", "inspect", "{cnn}", "--arch", "test-cnn"),
    row("inspect-malicious-pickle", "inspect", "{evil}"),
    row("inspect-directory", "inspect", "{folder}"),
    row("inspect-truncated", "inspect", "{truncated}"),
    row("inspect-huge-header-length", "inspect", "{huge_length}"),
    row("inspect-header-not-utf8", "inspect", "{header_not_utf8}"),
    row("inspect-float-data-offsets", "inspect", "{float_offsets}"),
    row("inspect-deeply-nested-header", "inspect", "{deep_header}"),
    row("inspect-deeply-nested-manifest", "inspect", "{deep_manifest}"),
    row("inspect-manifest-not-json", "inspect", "{manifest_not_json}"),
    row("inspect-safetensors-without-manifest-unknown-arch", "inspect", "{plain}", "--arch", "no-such-net"),
    row("inspect-huge-shape-hash-fixed", "inspect", "{huge_shape}"),
    row("inspect-bool-shape-hash-fixed", "inspect", "{bool_shape}"),
    # ---- verify: what the format forbids, and paths the OS refuses
    row("verify-missing-file", "verify", "nowhere.safetensors"),
    row("verify-text-file", "verify", "{notes}"),
    row("verify-zip", "verify", "{archive}"),
    row("verify-truncated", "verify", "{truncated}"),
    row("verify-overlapping-offsets", "verify", "{overlap}"),
    row("verify-trailing-bytes", "verify", "{trailing}"),
    row("verify-huge-shape-hash-fixed", "verify", "{huge_shape}"),
    row("verify-bool-shape-hash-fixed", "verify", "{bool_shape}"),
    row("verify-float-data-offsets", "verify", "{float_offsets}"),
    row("verify-deeply-nested-header", "verify", "{deep_header}"),
    row("verify-name-over-255-chars", "verify", "{long_name}"),
    row("verify-parent-path-over-255-chars", "verify", "{long_parent}"),
    # ---- import: wrong shapes, foreign and hostile checkpoints
    row("import-other-architecture", "import", "{lenet5_state}", "--arch", "test-cnn", *O),
    row(
        "import-other-class-count",
        "import",
        "{cnn10_state}",
        "--arch",
        "test-cnn",
        "--arch-opt",
        "num_classes=4",
        "--arch-opt",
        "in_channels=1",
        *O,
    ),
    row("import-unknown-arch", "import", "{cnn_state}", "--arch", "no-such-net", *O),
    row("import-missing-arch", "import", "{cnn_state}", *O),
    row("import-missing-file", "import", "nowhere.pt", "--arch", "test-cnn", *O),
    row("import-text-file", "import", "{notes}", "--arch", "test-cnn", *O),
    row("import-png", "import", "{image}", "--arch", "test-cnn", *O),
    row("import-empty-file", "import", "{empty}", "--arch", "test-cnn", *O),
    row("import-malicious-pickle", "import", "{evil}", "--arch", "test-cnn", *O),
    row("import-not-a-state-dict", "import", "{a_list}", "--arch", "test-cnn", *O),
    row(
        "import-arch-opt-negative-classes",
        "import",
        "{cnn_state}",
        "--arch",
        "test-cnn",
        "--arch-opt",
        "num_classes=-1",
        *O,
    ),
    row(
        "import-arch-opt-without-equals",
        "import",
        "{cnn_state}",
        "--arch",
        "test-cnn",
        "--arch-opt",
        "num_classes",
        *O,
    ),
    row(
        "import-arch-opt-unknown-key",
        "import",
        "{cnn_state}",
        "--arch",
        "test-cnn",
        "--arch-opt",
        "depth=3",
        *O,
    ),
    row(
        "import-output-is-the-input",
        "import",
        "cnn_state.pt",
        "--arch",
        "test-cnn",
        "--arch-opt",
        "num_classes=4",
        "--arch-opt",
        "in_channels=1",
        "-o",
        "cnn_state.pt",
        setup=_copies,
    ),
    # ---- export
    row("export-architecture-only", "export", "{arch}", "-o", "out.pt"),
    row("export-format-typo", "export", "{cnn}", "-o", "out.pt", "--format", "onxx"),
    row("export-output-a-directory", "export", "{cnn}", "-o", "out.safetensors", setup=_out_dir),
    row("export-output-is-the-input", "export", "cnn.safetensors", "-o", "cnn.safetensors", setup=_copies),
    row(
        "export-output-is-inputs-manifest",
        "export",
        "cnn.safetensors",
        "-o",
        "cnn.manifest.json",
        setup=_copies,
    ),
    row("export-output-below-a-file", "export", "{cnn}", "-o", "file/out.pt", setup=_a_file),
    row("export-text-file", "export", "{notes}", "-o", "out.pt"),
    row("export-pruned-format-typo", "export", "{pruned}", "-o", "out.onnx", "--format", "onxx"),
    row("export-huge-shape-hash-fixed", "export", "{huge_shape}", "-o", "out.pt"),
    row("export-forged-class-count", "export", "{classes_7}", "-o", "out.pt"),
    # ---- train: options out of range, choice typos, conflicts, data, outputs
    row("train-neither-arch-nor-input", "train", "-d", SYN, *FAST, *O),
    row("train-arch-and-input", "train", "{cnn}", "--arch", "test-cnn", *FAST, *O),
    row("train-unknown-arch", "train", "--arch", "no-such-net", "-d", SYN, *FAST, *O),
    row("train-epochs-negative", *TRAIN, "--epochs", "-1", *O),
    row("train-epochs-not-a-number", *TRAIN, "--epochs", "many", *O),
    row("train-lr-zero", *TRAIN, "--lr", "0", *O),
    row("train-lr-negative", *TRAIN, "--lr", "-0.1", *O),
    row("train-lr-nan", *TRAIN, "--lr", "nan", *O),
    row("train-batch-size-zero", *TRAIN, "--batch-size", "0", *O),
    row("train-momentum-above-one", *TRAIN, "--momentum", "1.5", *O),
    row("train-weight-decay-negative", *TRAIN, "--wd", "-1", *O),
    row("train-warmup-negative", *TRAIN, "--warmup-epochs", "-1", *O),
    row("train-final-lr-ratio-above-one", *TRAIN, "--final-lr-ratio", "2", *O),
    row("train-step-gamma-zero", *TRAIN, "--schedule", "step", "--milestones", "1", "--step-gamma", "0", *O),
    row("train-milestones-not-numbers", *TRAIN, "--schedule", "step", "--milestones", "a,b", *O),
    row("train-label-smoothing-above-one", *TRAIN, "--label-smoothing", "1.5", *O),
    row("train-grad-clip-negative", *TRAIN, "--grad-clip", "-1", *O),
    row("train-max-steps-zero", *TRAIN, "--max-steps-per-epoch", "0", *O),
    row("train-subset-zero", *TRAIN, "--subset", "0", *O),
    row("train-val-size-negative", *TRAIN, "--val-size", "-5", *O),
    row("train-val-size-whole-set", *TRAIN, "--val-size", "128", *O),
    row("train-kd-temperature-zero", *TRAIN, "--teacher", "{cnn}", "--kd-temperature", "0", *O),
    row("train-kd-weight-negative", *TRAIN, "--teacher", "{cnn}", "--kd-student-weight", "-1", *O),
    row("train-optimizer-typo", *TRAIN, "--optimizer", "adamm", *O),
    row("train-schedule-typo", *TRAIN, "--schedule", "cosin", *O),
    row("train-precision-typo", *TRAIN, "--precision", "fp8", *O),
    row("train-device-typo", *TRAIN, "--device", "gpu", *O),
    row("train-augment-typo", *TRAIN, "--augment", "crop=x,flip", *O),
    row("train-dataset-typo", "train", "--arch", "test-cnn", "-d", "fashion_mnst", *FAST, *O),
    row(
        "train-synthetic-zero-classes", "train", "--arch", "test-cnn", "-d", "synthetic:classes=0", *FAST, *O
    ),
    row("train-synthetic-bad-shape", "train", "--arch", "test-cnn", "-d", "synthetic:shape=1x8", *FAST, *O),
    row("train-arch-opt-negative-classes", *TRAIN, "--arch-opt", "num_classes=-1", *O),
    row("train-arch-opt-zero-width", *TRAIN, "--arch-opt", "width=0", *O),
    row("train-arch-opt-text-width", *TRAIN, "--arch-opt", "width=wide", *O),
    row("train-input-architecture-only-teacher", *TRAIN, "--teacher", "{arch}", *O),
    row("train-teacher-text-file", *TRAIN, "--teacher", "{notes}", *O),
    row(
        "train-teacher-other-dataset",
        "train",
        "--arch",
        "test-cnn",
        "-d",
        "synthetic:classes=10,shape=1x8x8,train=128,test=32",
        *FAST,
        "--teacher",
        "{cnn}",
        *O,
    ),
    row(
        "train-input-other-class-count",
        "train",
        "{cnn}",
        "-d",
        "synthetic:classes=10,shape=1x8x8,train=128,test=32",
        *FAST,
        *O,
    ),
    row(
        "train-input-other-channels",
        "train",
        "{cnn}",
        "-d",
        "synthetic:classes=4,shape=3x8x8,train=128,test=32",
        *FAST,
        *O,
    ),
    row("train-input-forged-classes-minus-1", "train", "{classes_minus1}", *FAST, *O),
    row("train-input-forged-classes-7", "train", "{classes_7}", *FAST, *O),
    row("train-input-arch-does-not-fit-tensors", "train", "{arch_misfit}", *FAST, *O),
    row("train-input-unknown-arch", "train", "{arch_unknown}", *FAST, *O),
    row("train-input-no-arch", "train", "{no_arch}", *FAST, *O),
    row("train-input-png", "train", "{image}", *FAST, *O),
    row("train-input-float-data-offsets", "train", "{float_offsets}", *FAST, *O),
    row("train-pruned-input-lr-zero", "train", "{pruned}", *FAST, "--lr", "0", *O),
    row(
        "train-data-dir-nowhere",
        "train",
        "--arch",
        "test-cnn",
        "-d",
        "fashion-mnist",
        "--data-dir",
        "nowhere",
        *FAST,
        "--subset",
        "64",
        "--max-steps-per-epoch",
        "1",
        *O,
    ),
    row(
        "train-idx-cut-in-header",
        "train",
        "--arch",
        "test-cnn",
        "-d",
        "fashion-mnist",
        "--data-dir",
        "{idx_cut}",
        *FAST,
        *O,
    ),
    row(
        "train-cifar-batch-runs-code",
        "train",
        "--arch",
        "test-cnn",
        "-d",
        "cifar10",
        "--data-dir",
        "{cifar_evil}",
        *FAST,
        *O,
    ),
    row(
        "train-mncli-data-cifar-batch-runs-code",
        "train",
        "--arch",
        "test-cnn",
        "-d",
        "cifar10",
        *FAST,
        *O,
        env={"MNCLI_DATA": "{cifar_evil}"},
    ),
    row(
        "train-cifar-batch-not-a-dict",
        "train",
        "--arch",
        "test-cnn",
        "-d",
        "cifar10",
        "--data-dir",
        "{cifar_list}",
        *FAST,
        *O,
    ),
    row(
        "train-output-is-the-input", "train", "cnn.safetensors", *FAST, "-o", "cnn.safetensors", setup=_copies
    ),
    row("train-output-over-inputs-manifest", "train", "cnn.safetensors", *FAST, "-o", "cnn", setup=_copies),
    row(
        "train-output-is-inputs-manifest",
        "train",
        "cnn.safetensors",
        *FAST,
        "-o",
        "cnn.manifest.json",
        setup=_copies,
    ),
    row(
        "train-output-hard-link-to-input", "train", "{cnn}", *FAST, "-o", "link.safetensors", setup=_hard_link
    ),
    row("train-output-a-directory", *TRAIN, *O, setup=_out_dir),
    row("train-output-below-a-file", *TRAIN, "-o", "file/out.safetensors", setup=_a_file),
    row("train-output-a-text-file", *TRAIN, *O, setup=_existing_text),
    row("train-output-lonely-sidecar", *TRAIN, *O, setup=_lonely_sidecar),
    row("train-no-clobber-existing", *TRAIN, *O, "-n", setup=_existing_artifact),
    row("train-resume-text-checkpoint", *TRAIN, *O, "--resume", setup=_bad_checkpoint),
    row("train-resume-malicious-checkpoint", *TRAIN, *O, "--resume", setup=_evil_checkpoint),
    row("train-resume-foreign-checkpoint", *TRAIN, *O, "--resume", setup=_foreign_checkpoint),
    # ---- eval
    row("eval-architecture-only", "eval", "{arch}"),
    row("eval-split-typo", "eval", "{cnn}", "--split", "testing"),
    row("eval-batch-size-zero", "eval", "{cnn}", "-b", "0"),
    row("eval-batch-size-negative", "eval", "{cnn}", "-b", "-8"),
    row(
        "eval-other-class-count", "eval", "{cnn}", "-d", "synthetic:classes=10,shape=1x8x8,train=128,test=32"
    ),
    row("eval-other-channels", "eval", "{cnn}", "-d", "synthetic:classes=4,shape=3x8x8,train=128,test=32"),
    row("eval-unknown-dataset", "eval", "{cnn}", "-d", "imagenet21k"),
    row("eval-device-typo", "eval", "{cnn}", "--device", "tpu"),
    row("eval-truncated", "eval", "{truncated}"),
    row("eval-trailing-bytes", "eval", "{trailing}"),
    row("eval-overlapping-offsets", "eval", "{overlap}"),
    row("eval-data-dir-nowhere", "eval", "{cnn}", "-d", "fashion-mnist", "--data-dir", "nowhere"),
    row("eval-pickled-pt", "eval", "{cnn_state}"),
    row("eval-forged-classes-minus-1", "eval", "{classes_minus1}"),
    row("eval-forged-classes-7", "eval", "{classes_7}"),
    row("eval-arch-does-not-fit-tensors", "eval", "{arch_misfit}"),
    row("eval-huge-shape-hash-fixed", "eval", "{huge_shape}"),
    # ---- score
    row("score-neither-input-nor-arch", "score", "--dataset", "cifar100"),
    row("score-input-and-arch", "score", "{cnn}", "--arch", "test-cnn"),
    row("score-unknown-arch", "score", "--arch", "no-such-net"),
    row("score-arch-opt-negative-classes", "score", "--arch", "test-cnn", "--arch-opt", "num_classes=-1"),
    row("score-add-bits-zero", "score", "{cnn}", "--add-bits", "0"),
    row("score-add-bits-33", "score", "{cnn}", "--add-bits", "33"),
    row("score-ternary-storage-typo", "score", "{cnn}", "--ternary-storage", "codes3"),
    row("score-ternary-mults-typo", "score", "{cnn}", "--ternary-mults", "sparse"),
    row("score-dataset-typo", "score", "--arch", "test-cnn", "--dataset", "cifar1000"),
    row("score-zip", "score", "{archive}"),
    row("score-forged-classes-7", "score", "{classes_7}"),
    row("score-bool-shape-hash-fixed", "score", "{bool_shape}"),
    row("score-pruned-add-bits-negative", "score", "{pruned}", "--add-bits", "-8"),
    # ---- prune
    row("prune-sparsity-1.5", "prune", "{cnn}", "-s", "1.5", *FAST, *O),
    row("prune-sparsity-negative", "prune", "{cnn}", "-s", "-0.1", *FAST, *O),
    row("prune-sparsity-one", "prune", "{cnn}", "-s", "1", *FAST, *O),
    row("prune-method-typo", *PRUNE, "-m", "agpp", *O),
    row("prune-unit-typo", *PRUNE, "--unit", "batches", *O),
    row(
        "prune-criterion-typo",
        "prune",
        "{cnn}",
        "--structured",
        "--channel-ratio",
        "0.25",
        "--criterion",
        "l3",
        *FAST,
        *O,
    ),
    row(
        "prune-channel-ratio-above-one", "prune", "{cnn}", "--structured", "--channel-ratio", "1.5", *FAST, *O
    ),
    row("prune-channel-ratio-without-structured", *PRUNE, "--channel-ratio", "0.25", *O),
    row("prune-rl1-lambda-with-agp", *PRUNE, "--rl1-lambda", "1e-4", *O),
    row("prune-overlapping-offsets", "prune", "{overlap}", "-s", "0.5", *FAST, *O),
    row("prune-pruned-input-sparsity-1.5", "prune", "{pruned}", "-s", "1.5", *FAST, *O),
    row("prune-initial-above-final-sparsity", *PRUNE, "--initial-sparsity", "0.9", *O),
    row(
        "prune-end-before-start",
        "prune",
        "{cnn}",
        "-s",
        "0.5",
        "--epochs",
        "4",
        "-b",
        "32",
        "--val-size",
        "32",
        "--start",
        "3",
        "--end",
        "1",
        *O,
    ),
    row("prune-freq-zero", *PRUNE, "--freq", "0", *O),
    row("prune-rl1-lambda-negative", *PRUNE, "-m", "reweighted-l1", "--rl1-lambda", "-1", *O),
    row("prune-reweight-at-not-numbers", *PRUNE, "-m", "reweighted-l1", "--reweight-at", "x,y", *O),
    row("prune-retrain-epochs-negative", *PRUNE, "-m", "reweighted-l1", "--retrain-epochs", "-1", *O),
    row("prune-epochs-negative", "prune", "{cnn}", "-s", "0.5", "--epochs", "-1", *O),
    row("prune-layers-match-nothing", *PRUNE, "--layers", "nosuch*", *O),
    row("prune-layers-empty", *PRUNE, "--layers", "", *O),
    row("prune-recipe-missing", "prune", "{cnn}", *FAST, "--recipe", "nowhere.yaml", *O),
    row("prune-recipe-broken-yaml", "prune", "{cnn}", *FAST, "--recipe", "{recipe_broken}", *O),
    row("prune-recipe-not-utf8", "prune", "{cnn}", *FAST, "--recipe", "{recipe_latin1}", *O),
    row("prune-recipe-unknown-key", "prune", "{cnn}", *FAST, "--recipe", "{recipe_unknown_key}", *O),
    row("prune-recipe-a-list", "prune", "{cnn}", *FAST, "--recipe", "{recipe_list}", *O),
    row("prune-recipe-empty-file", "prune", "{cnn}", *FAST, "--recipe", "{recipe_empty}", *O),
    row("prune-recipe-matches-nothing", "prune", "{cnn}", *FAST, "--recipe", "{recipe_no_match}", *O),
    row("prune-recipe-sparsity-2", "prune", "{cnn}", *FAST, "--recipe", "{recipe_sparsity2}", *O),
    row("prune-recipe-sparsity-text", "prune", "{cnn}", *FAST, "--recipe", "{recipe_sparsity_text}", *O),
    row("prune-recipe-empty-layer-name", "prune", "{cnn}", *FAST, "--recipe", "{recipe_empty_name}", *O),
    row(
        "prune-recipe-settings-not-a-mapping",
        "prune",
        "{cnn}",
        *FAST,
        "--recipe",
        "{recipe_settings_scalar}",
        *O,
    ),
    row("prune-recipe-a-png", "prune", "{cnn}", *FAST, "--recipe", "{image}", *O),
    row("prune-architecture-only", "prune", "{arch}", "-s", "0.5", "-d", SYN, *FAST, *O),
    row("prune-other-class-count", *PRUNE, "-d", "synthetic:classes=10,shape=1x8x8,train=128,test=32", *O),
    row("prune-output-is-the-input", *LOCAL_PRUNE, "-o", "cnn.safetensors", setup=_copies),
    row("prune-output-over-inputs-manifest", *LOCAL_PRUNE, "-o", "cnn", setup=_copies),
    row("prune-output-is-inputs-manifest", *LOCAL_PRUNE, "-o", "cnn.manifest.json", setup=_copies),
    row("prune-output-a-text-file", *PRUNE, *O, setup=_existing_text),
    row("prune-resume-text-checkpoint", *PRUNE, *O, "--resume", setup=_bad_agp_checkpoint),
    # ---- ternarize
    row("ternarize-threshold-above-one", *TERN, "-t", "1.5", *O),
    row("ternarize-threshold-zero", *TERN, "-t", "0", *O),
    row("ternarize-method-typo", *TERN, "-m", "tqq", *O),
    row("ternarize-variant-typo", *TERN, "--variant", "mit2", *O),
    row("ternarize-scale-init-typo", *TERN, "--scale-init", "zero", *O),
    row("ternarize-select-by-typo", *TERN, "-m", "ec2t", "--grid", "--select-by", "loss", *O),
    row("ternarize-variant-with-ec2t", *TERN, "-m", "ec2t", "--variant", "mit", *O),
    row("ternarize-point-without-grid", *TERN, "-m", "ec2t", "--point", "1", *O),
    row("ternarize-collect-without-grid", *TERN, "-m", "ec2t", "--collect", *O),
    row("ternarize-point-outside-grid", *TERN, "-m", "ec2t", "--grid", "--point", "99", *O),
    row("ternarize-grid-with-ttq", *TERN, "-m", "ttq", "--grid", *O),
    row("ternarize-ini-c-not-a-number", *TERN, "-m", "ec2t", "--ini-c", "a", *O),
    row("ternarize-ini-c-above-one", *TERN, "-m", "ec2t", "--ini-c", "1.5", *O),
    row("ternarize-lambda-div-negative", *TERN, "-m", "ec2t", "--lambda-div", "-1", *O),
    row("ternarize-several-values-without-grid", *TERN, "-m", "ec2t", "--ini-c", "0.3,0.45", *O),
    row(
        "ternarize-tolerance-negative",
        *TERN,
        "-m",
        "ec2t",
        "--grid",
        "--ini-c",
        "0.3,0.45",
        "--lambda-div",
        "0.15",
        "--retrain-epochs",
        "1",
        "--select-by",
        "score",
        "--tolerance",
        "-1",
        *O,
    ),
    row("ternarize-layers-match-nothing", *TERN, "--layers", "nosuch*", *O),
    row(
        "ternarize-scale-lr-with-ec2t", *TERN, "-m", "ec2t", "--retrain-epochs", "1", "--scale-lr", "0.01", *O
    ),
    row("ternarize-deeply-nested-manifest", "ternarize", "{deep_manifest}", *FAST, *O),
    row("ternarize-pruned-input-threshold-1", "ternarize", "{pruned}", "-t", "1", *FAST, *O),
    row("ternarize-architecture-only", "ternarize", "{arch}", "-d", SYN, *FAST, *O),
    row(
        "ternarize-output-over-inputs-manifest",
        "ternarize",
        "cnn.safetensors",
        *FAST,
        "-o",
        "cnn",
        setup=_copies,
    ),
    # ---- quantize
    row("quantize-weight-bits-1", *QUANT, "-w", "1", *O),
    row("quantize-weight-bits-33", *QUANT, "-w", "33", *O),
    row("quantize-weight-bits-9", *QUANT, "-w", "9", *O),
    row("quantize-act-bits-zero", *QUANT, "-a", "0", *O),
    row("quantize-act-bits-negative", *QUANT, "-a", "-4", *O),
    row("quantize-first-last-bits-1", *QUANT, "--first-last-bits", "1", *O),
    row("quantize-method-typo", *QUANT, "-m", "lsqq", *O),
    row("quantize-calibration-typo", *QUANT, "--ptq", "--calibration", "max", *O),
    row(
        "quantize-percentile-above-100",
        *QUANT,
        "--ptq",
        "--calibration",
        "percentile",
        "--percentile",
        "101",
        *O,
    ),
    row("quantize-percentile-zero", *QUANT, "--ptq", "--calibration", "percentile", "--percentile", "0", *O),
    row("quantize-calib-batches-zero", *QUANT, "--calib-batches", "0", *O),
    row("quantize-accumulator-bits-zero", *QUANT, "--accumulator-bits", "0", *O),
    row("quantize-accumulator-bits-64", *QUANT, "--accumulator-bits", "64", *O),
    row(
        "quantize-accumulator-batches-zero",
        *QUANT,
        "--accumulator-bits",
        "24",
        "--accumulator-batches",
        "0",
        *O,
    ),
    row("quantize-pact-decay-negative", *QUANT, "-m", "pact", "--pact-decay", "-1", *O),
    row("quantize-recipe-bits-1", *QUANT, "--recipe", "{recipe_bits1}", *O),
    row("quantize-recipe-bits-float", *QUANT, "--recipe", "{recipe_bits_float}", *O),
    row("quantize-recipe-prune-key", *QUANT, "--recipe", "{recipe_quant_key}", *O),
    row("quantize-recipe-not-utf8", *QUANT, "--recipe", "{recipe_latin1}", *O),
    row("quantize-calibration-pact", *QUANT, "-m", "pact", "--calibration", "percentile", *O),
    row("quantize-trailing-bytes", "quantize", "{trailing}", *FAST, *O),
    row("quantize-pruned-input-weight-bits-33", "quantize", "{pruned}", "-w", "33", *FAST, *O),
    row("quantize-architecture-only", "quantize", "{arch}", "-d", SYN, *FAST, *O),
    row("quantize-other-channels", *QUANT, "-d", "synthetic:classes=4,shape=3x8x8,train=128,test=32", *O),
    row(
        "quantize-output-is-the-input",
        "quantize",
        "cnn.safetensors",
        *FAST,
        "-o",
        "cnn.safetensors",
        setup=_copies,
    ),
    row(
        "quantize-output-is-inputs-manifest",
        "quantize",
        "cnn.safetensors",
        *FAST,
        "-o",
        "cnn.manifest.json",
        setup=_copies,
    ),
    # ---- search
    row("search-target-ops-negative", *SEARCH, "--target-ops", "-1", *O),
    row("search-target-ops-zero", *SEARCH, "--target-ops", "0", *O),
    row("search-target-below-cheapest", *SEARCH, "--target-ops", "1", *O),
    row("search-two-targets", *SEARCH, "--target-ops", "5e6", "--target-params", "1e5", *O),
    row("search-cost-typo", *SEARCH, "--cost", "flops", *O),
    row("search-cost-loss-typo", *SEARCH, "--cost-loss", "mul#lin", *O),
    row("search-widths-not-numbers", *SEARCH, "--widths", "a,b", *O),
    row("search-widths-repeats-mismatch", *SEARCH, "--widths", "8,16", "--repeats", "1,1,1", *O),
    row("search-stride-three", *SEARCH, "--widths", "8,16", "--repeats", "1,1", "--strides", "3,1", *O),
    row("search-ops-typo", *SEARCH, "--ops", "k4_e3,zero", *O),
    row("search-stem-stride-three", *SEARCH, "--stem-stride", "3", *O),
    row("search-se-ratio-above-one", *SEARCH, "--se-ratio", "1.5", *O),
    row("search-act-typo", *SEARCH, "--act", "relu7", *O),
    row("search-binary-mode-typo", *SEARCH, "--binary-mode", "three", *O),
    row("search-arch-lr-zero", *SEARCH, "--arch-lr", "0", *O),
    row("search-arch-every-zero", *SEARCH, "--arch-every", "0", *O),
    row("search-warmup-negative", "search", "-d", SYN, *FAST, "--weights-warmup-epochs", "-1", *O),
    row("search-epochs-negative", "search", "-d", SYN, "--epochs", "-1", *O),
    row("search-dataset-typo", "search", "-d", "cifar-100", *FAST, *O),
    row("search-output-a-text-file", *SEARCH, *O, setup=_existing_text),
    # ---- scale
    row("scale-phi-negative", *SCALE, "--phi", "-1", *O),
    row("scale-alpha-zero", *SCALE, "--phi", "1", "--alpha", "0", *O),
    row("scale-beta-negative", *SCALE, "--phi", "1", "--beta", "-1.1", *O),
    row("scale-no-phi", *SCALE, *O),
    row("scale-unsupported-family", "scale", "{arch}", "--phi", "1", *O),
    row(
        "scale-grid-points-not-numbers",
        *SCALE,
        "--phi",
        "1",
        "--grid",
        "--grid-points",
        "x,y",
        "-d",
        SYN,
        *FAST,
        *O,
    ),
    row("scale-grid-and-alpha", *SCALE, "--phi", "1", "--grid", "--alpha", "1.2", "-d", SYN, *FAST, *O),
    row("scale-point-outside-grid", *SCALE, "--phi", "1", "--point", "99", "-d", SYN, *FAST, *O),
    row("scale-collect-nothing-present", *SCALE, "--collect", *O),
    row(
        "scale-budget-ops-negative",
        *SCALE,
        "--phi",
        "1",
        "--grid",
        "--budget-ops",
        "-1",
        "-d",
        SYN,
        *FAST,
        *O,
    ),
    row("scale-text-file", "scale", "{notes}", "--phi", "1", *O),
    row(
        "scale-output-over-inputs-manifest",
        "scale",
        "mbconv_arch.safetensors",
        "--phi",
        "1",
        "-o",
        "mbconv_arch",
        setup=_copies,
    ),
    # ---- report
    row("report-missing-file", "report", "{cnn}", "nowhere.safetensors"),
    row("report-png", "report", "{image}"),
    row("report-zip", "report", "{archive}"),
    row("report-truncated", "report", "{cnn}", "{truncated}"),
    row("report-chain-with-several-inputs", "report", "{cnn}", "{pruned}", "--chain"),
    row("report-markdown-a-directory", "report", "{cnn}", "--markdown", "{fx}"),
    row(
        "report-markdown-over-an-input",
        "report",
        "cnn.safetensors",
        "pruned.safetensors",
        "--markdown",
        "pruned.safetensors",
        setup=_copies,
    ),
    row("report-markdown-below-a-file", "report", "{cnn}", "--markdown", "file/r.md", setup=_a_file),
]


def _argv(case: Case, paths: dict) -> list[str]:
    return [arg.format_map(paths) if "{" in arg else arg for arg in case.argv]


@pytest.mark.parametrize("case", ROWS)
def test_bad_input_is_refused_cleanly(case: Case, fx, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MNCLI_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name, value in case.env:
        monkeypatch.setenv(name, value.format_map(fx["paths"]))
    if case.setup is not None:
        case.setup(work, fx)
    before = _snapshot(work)
    argv = _argv(case, fx["paths"])

    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()

    lines = err.splitlines()
    shown = [lines[0], *[x for x in lines[1:] if x.startswith("error:")][-1:]] if lines else []
    assert (code, len(lines)) == (2, 1), f"exit {code}, {len(lines)} stderr lines: {shown}"
    assert lines[0].startswith("error: "), lines[0]
    assert not lines[0].startswith("error: unexpected ") and "Traceback" not in err, lines[0]
    assert out == "", f"stdout: {out[:500]!r}"
    assert _snapshot(work) == before, f"left behind or changed: {_changes(before, _snapshot(work))}"
    assert _snapshot(fx["folder"]) == fx["snapshot"], (
        f"inputs: {_changes(fx['snapshot'], _snapshot(fx['folder']))}"
    )


def _changes(before: dict, after: dict) -> list[str]:
    """What differs between two snapshots: new, gone and changed entries."""
    keys = sorted(set(before) | set(after))
    return [
        f"{'new' if k not in before else 'gone' if k not in after else 'changed'} {k}"
        for k in keys
        if before.get(k, ...) != after.get(k, ...)
    ]


def test_the_table_covers_every_command():
    from mncli.cli.app import COMMANDS

    covered = {case.values[0].argv[0] for case in ROWS}
    assert set(COMMANDS) <= covered, sorted(set(COMMANDS) - covered)
    assert len(ROWS) >= 80
