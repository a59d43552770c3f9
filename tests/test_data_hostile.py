"""Hostile and broken data files: no file a dataset is read from may run code, and anything that is
not a whole dataset ends as BadInput (exit 2, one line) naming the file, never another exception.

- CIFAR batches are pickles: one whose pickle calls os.system (or exec, or numpy's runstring) sits in
  every place the tools read from (--data-dir, $MNCLI_DATA, the system folder, the download cache)
  and `mncli train` refuses it without running it; the real formats (a Python 2 batch as published,
  and every pickle protocol) still load exactly.
- A --data-dir or $MNCLI_DATA that does not exist is an error naming it, never a fall back elsewhere.
- IDX files cut in the header, truncated, padded, gzip-corrupt: BadInput; and as a property, any cut
  or byte mutation of a valid dataset gives a valid dataset or BadInput.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mncli.cli.app import main
from mncli.data import load_data
from mncli.data import locate as locate_mod
from mncli.data.formats import load_idx_pair, read_cifar_batch, read_idx, safe_unpickle
from mncli.errors import BadInput
from test_data_formats import make_cifar, make_idx_dataset, write_idx

# ---------------------------------------------------------------- hostile pickles


class _Reduce:
    """Pickles as `func(*args)`: what a hostile pickle does to run code on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_cmd(marker: Path) -> str:
    return f"touch {marker}"


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that would create `marker` if loaded by pickle.load."""
    code = f"open({str(marker)!r}, 'w').close()"
    system = _Reduce(os.system, _touch_cmd(marker))
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": system}  # hidden in a batch
    return {
        "os.system-p0": pickle.dumps(system, protocol=0),
        "os.system-p2": pickle.dumps(system, protocol=2),
        "os.system-p4": pickle.dumps(system, protocol=4),
        "os.system-p5": pickle.dumps(system, protocol=5),
        "exec": pickle.dumps(_Reduce(exec, code), protocol=2),
        "eval": pickle.dumps(_Reduce(eval, code), protocol=4),
        "inside-a-valid-batch": pickle.dumps(batch, protocol=4),
        # protocol 0's INST opcode: instantiate os.system with the args after the MARK
        "inst-opcode": b"(S'" + _touch_cmd(marker).encode() + b"'\nios\nsystem\n.",
        # a gadget inside numpy itself: numpy.testing's runstring(code, dict) execs code
        "numpy-runstring": b"\x80\x02cnumpy.testing._private.utils\nrunstring\nX"
        + struct.pack("<I", len(code))
        + code.encode()
        + b"}\x86R.",
        # numpy's own name for the array reconstructor, but an ndarray subclass that is not data
        "ndarray-subclass": pickle.dumps(np.ma.masked_array([1, 2]), protocol=2),
    }


def test_each_payload_runs_when_unpickled_plainly(tmp_path):
    """The payloads are real: plain pickle.load runs them (in a child, so this test runs nothing)."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    raw = _payloads(marker)["os.system-p2"]
    (tmp_path / "evil").write_bytes(raw)
    script = f"import pickle; pickle.loads(open({str(tmp_path / 'evil')!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("kind", list(_payloads(Path("/x"))))
def test_a_hostile_batch_is_refused_unrun(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "data_batch_1"
    path.write_bytes(_payloads(marker)[kind])
    with pytest.raises(BadInput) as info:
        read_cifar_batch(path, "labels")
    assert str(path) in info.value.message
    assert not marker.exists()


def _places(tmp_path: Path, monkeypatch, name: str) -> dict[str, tuple[Path, list[str]]]:
    """Where each place reads dataset `name` from (the folder to plant the batch in) and the extra
    arguments that point the CLI there. $MNCLI_DATA unset, the download cache and the system folder
    moved under tmp_path."""
    sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    system = tmp_path / "system" / name
    layout = locate_mod.LAYOUTS[name]
    monkeypatch.setitem(locate_mod.LAYOUTS, name, dataclasses.replace(layout, system=(str(system),)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MNCLI_DATA", raising=False)
    return {
        "--data-dir": (tmp_path / "mine" / sub, ["--data-dir", str(tmp_path / "mine")]),
        "$MNCLI_DATA": (tmp_path / "env" / sub, []),
        "system": (system, []),
        "download cache": (tmp_path / "cache" / "mncli" / "datasets" / sub, []),
    }


@pytest.mark.parametrize("place", ["--data-dir", "$MNCLI_DATA", "system", "download cache"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_train_refuses_a_hostile_batch_in_every_place(tmp_path, monkeypatch, capsys, name, place):
    folder, extra = _places(tmp_path, monkeypatch, name)[place]
    if place == "$MNCLI_DATA":
        monkeypatch.setenv("MNCLI_DATA", str(tmp_path / "env"))
    make_cifar(folder, 10 if name == "cifar10" else 100)
    marker = tmp_path / "ran"
    evil = folder / ("data_batch_1" if name == "cifar10" else "train")
    evil.write_bytes(pickle.dumps(_Reduce(os.system, _touch_cmd(marker)), protocol=2))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "cnn.safetensors"

    capsys.readouterr()
    code = main(["train", "--arch", "test-cnn", "--dataset", name, *extra, "-o", str(out), "--epochs", "1"])
    _, err = capsys.readouterr()

    assert (code, len(err.splitlines())) == (2, 1), err
    assert err.startswith("error: ") and str(evil) in err and "unexpected" not in err
    assert not marker.exists()
    assert list(out_dir.iterdir()) == []


# ---------------------------------------------------------------- the real CIFAR formats still load


def _python2_batch(data: np.ndarray, labels: list[int], label_key: str = "labels") -> bytes:
    """A batch byte for byte as the published CIFAR python batches are: a protocol-2 pickle written by
    Python 2 and numpy 1 (str as SHORT_BINSTRING/BINSTRING, numpy.core.multiarray._reconstruct)."""

    def s(text: bytes) -> bytes:
        return (
            b"U" + bytes([len(text)]) + text
            if len(text) < 256
            else b"T" + struct.pack("<i", len(text)) + text
        )

    def k(value: int) -> bytes:
        return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)

    rows, cols = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + k(0)
        + b"\x85"
        + s(b"b")
        + b"\x87R("
        + k(1)
        + k(rows)
        + k(cols)
        + b"\x86cnumpy\ndtype\n"
        + s(b"u1")
        + k(0)
        + k(1)
        + b"\x87R("
        + k(3)
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
        + k(0)
        + b"tb\x89"
        + s(data.tobytes())
        + b"tb"
    )
    items = (
        s(b"batch_label")
        + s(b"training batch 1 of 5")
        + s(b"data")
        + array
        + s(label_key.encode())
        + b"]("
        + b"".join(k(v) for v in labels)
        + b"e"
        + s(b"filenames")
        + b"]("
        + b"".join(s(f"img_{i}.png".encode()) for i in range(rows))
        + b"e"
    )
    return b"\x80\x02}(" + items + b"u."


def test_a_published_python2_batch_loads_exactly(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    data[0, :4] = [0x80, 0xFF, 0x00, 0x0A]  # bytes that latin1 must carry through unchanged
    labels = [3, 0, 9, 1, 7]
    path = tmp_path / "data_batch_1"
    path.write_bytes(_python2_batch(data, labels))
    assert pickle.loads(path.read_bytes(), encoding="latin1")["filenames"][4] == "img_4.png"  # well formed
    images, got = read_cifar_batch(path, "labels")
    assert images.dtype == np.uint8 and images.shape == (5, 3, 32, 32)
    assert np.array_equal(images.reshape(5, -1), data)
    assert got.dtype == np.int64 and got.tolist() == labels


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_reads_like_pickle_load(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    entry = {
        "data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
        "fine_labels": list(rng.integers(0, 100, 3)),  # numpy int64 scalars, as make_cifar writes
        "coarse_labels": [1, 2, 3],
        "filenames": [b"a.png", "b.png", "c.png"],
        "batch_label": "testing batch 1 of 1",
        "extra": (1.5, complex(1, 2), {1, 2}, frozenset({3}), bytearray(b"xy"), None, True),
    }
    raw = pickle.dumps(entry, protocol=protocol)
    safe = safe_unpickle(raw)
    plain = pickle.loads(raw, encoding="latin1")
    assert np.array_equal(safe["data"], plain["data"]) and safe["data"].dtype == np.uint8
    assert safe["fine_labels"] == plain["fine_labels"] and safe["extra"] == plain["extra"]
    path = tmp_path / "train"
    path.write_bytes(raw)
    images, labels = read_cifar_batch(path, "fine_labels")
    assert np.array_equal(images.reshape(3, -1), entry["data"])
    assert labels.tolist() == [int(v) for v in entry["fine_labels"]]


@pytest.mark.parametrize(
    "entry, text",
    [
        ({"data": np.array([object()] * 3072, dtype=object), "labels": [0]}, "refused"),
        ({"data": np.zeros(3072, dtype=[("a", "u1")]), "labels": [0]}, "refused"),
        ({"data": np.zeros((1, 3072), np.float32), "labels": [0]}, "not an array of bytes"),
        ({"data": np.full((1, 3072), 300, np.int16), "labels": [0]}, "outside 0..255"),
        ({"data": np.zeros((1, 3000), np.uint8), "labels": [0]}, "3x32x32"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "2 images and 1 labels"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": ["cat"]}, "not a list of integers"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [[0, 1], [2]]}, "not a list of integers"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": {"a": 1}}, "not a list of integers"),
        ({"data": "pixels", "labels": [0]}, "not an array of bytes"),
        ([1, 2, 3], "no 'data'"),
    ],
)
def test_a_batch_that_is_not_cifar_data_is_bad_input(tmp_path, entry, text):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(BadInput, match=text) as info:
        read_cifar_batch(path, "labels")
    assert str(path) in info.value.message


def test_cifar_labels_out_of_range_are_bad_input(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder, 10)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"][0] = 10
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    data = load_data("cifar10", data_dir=tmp_path, val_size=6)  # the training files are fine
    with pytest.raises(BadInput, match="run from .* to 10; cifar10 has classes 0 to 9"):
        data.test  # noqa: B018 - the test split is read on first use


def _valid_batch(protocol: int) -> bytes:
    rng = np.random.default_rng(0)
    entry = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [1, 2], "batch_label": "b"}
    return pickle.dumps(entry, protocol=protocol)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protocol=st.sampled_from([0, 2, 4, 5]), data=st.data())
def test_any_damaged_batch_is_data_or_bad_input(tmp_path, protocol, data):
    """Property: a cut or a few bytes changed anywhere in a valid batch (often in the pickle's opcodes
    and lengths: the pixels are the tail) give a batch of valid arrays or BadInput, nothing else."""
    raw = _damaged(data, _valid_batch(protocol), header=min(400, len(_valid_batch(protocol)) - 1))
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    try:
        images, labels = read_cifar_batch(path, "labels")
    except BadInput as exc:
        assert str(path) in exc.message
        return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
    assert labels.dtype == np.int64 and labels.shape == (len(images),)


# ---------------------------------------------------------------- folders that do not exist


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A valid fashion-mnist in the system folder and the download cache (both moved under tmp_path),
    $MNCLI_DATA unset, and the working folder tmp_path/work."""
    system = tmp_path / "system"
    layout = locate_mod.LAYOUTS["fashion-mnist"]
    monkeypatch.setitem(
        locate_mod.LAYOUTS, "fashion-mnist", dataclasses.replace(layout, system=(str(system),))
    )
    make_idx_dataset(system)
    make_idx_dataset(tmp_path / "cache" / "mncli" / "datasets" / "fashion-mnist")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MNCLI_DATA", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def _train(capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", "--arch", "test-cnn", "-d", "fashion-mnist", *extra, "-o", "x.safetensors"])
    return code, capsys.readouterr().err


def test_a_missing_data_dir_is_an_error_not_a_fall_back(places, capsys):
    code, err = _train(capsys, "--data-dir", "nowhere", "--epochs", "1")
    assert (code, len(err.splitlines())) == (2, 1), err
    assert "error: --data-dir nowhere does not exist" in err and "--download" in err
    assert not Path("x.safetensors").exists()


def test_a_missing_mncli_data_is_an_error_not_a_fall_back(places, capsys, monkeypatch):
    monkeypatch.setenv("MNCLI_DATA", str(places / "gone"))
    code, err = _train(capsys, "--epochs", "1")
    assert (code, len(err.splitlines())) == (2, 1), err
    assert f"$MNCLI_DATA is {places / 'gone'}, a folder that does not exist" in err
    assert "unset MNCLI_DATA" in err


def test_a_missing_mncli_data_behind_a_data_dir_that_holds_the_dataset_is_not_reached(places, monkeypatch):
    monkeypatch.setenv("MNCLI_DATA", str(places / "gone"))
    make_idx_dataset(places / "mine" / "fashion-mnist")
    assert (
        load_data("fashion-mnist", data_dir=places / "mine", val_size=10)
        .info["source"]
        .startswith(str(places / "mine"))
    )


def test_a_data_dir_that_exists_without_the_dataset_still_searches_on(places):
    (places / "empty").mkdir()
    data = load_data("fashion-mnist", data_dir=places / "empty", val_size=10)
    assert data.info["source"] == str((places / "system").resolve())


def test_a_data_dir_that_is_a_file_or_an_impossible_name_is_bad_input(places, capsys):
    Path("file").write_text("not a folder")
    code, err = _train(capsys, "--data-dir", "file")
    assert (code, len(err.splitlines())) == (2, 1) and "--data-dir file is not a folder" in err, err
    code, err = _train(capsys, "--data-dir", "a" * 300)
    assert (code, len(err.splitlines())) == (2, 1) and "unexpected" not in err, err


def test_download_creates_a_missing_data_dir(places, monkeypatch):
    calls = []

    def fake_download(name, layout, root):
        calls.append(root)
        make_idx_dataset(root / "FashionMNIST" / "raw")  # where torchvision puts it

    monkeypatch.setattr(locate_mod, "_download", fake_download)
    data = load_data("fashion-mnist", data_dir=places / "new", download=True, val_size=10)
    assert calls == [places / "new"] and len(data.train) == 50


# ---------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


IMAGES = np.arange(3 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(3, 28, 28)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5, 7, 8, 11, 15])
def test_an_idx_file_cut_inside_its_header_is_bad_input(tmp_path, compress, cut):
    raw = _idx_bytes(IMAGES)[:cut]
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(BadInput) as info:
        read_idx(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    "damage, text",
    [
        (lambda raw: raw + b"\0", "data past"),
        (lambda raw: raw[:-1], "truncated"),
        (lambda raw: raw[:4] + b"\xff\xff\xff\xff" * 3 + raw[16:], "truncated"),  # 2^96 declared bytes
        (lambda raw: b"\0\0\x08\xff" + raw[4:200], "cut inside its header"),  # 255 dimensions
        (lambda raw: b"PK\x03\x04" + raw[4:], "bad magic"),
    ],
)
def test_an_idx_file_with_wrong_lengths_is_bad_input(tmp_path, damage, text):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(_idx_bytes(IMAGES)))
    with pytest.raises(BadInput, match=text) as info:
        read_idx(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    "content",
    [
        b"not gzip at all",
        gzip.compress(_idx_bytes(IMAGES))[:-12],  # cut: no end-of-stream marker
        gzip.compress(_idx_bytes(IMAGES))[:10] + b"\xff" * 40,  # a gzip header, then no valid deflate
        gzip.compress(_idx_bytes(IMAGES))[:-8] + b"\0\0\0\0" + gzip.compress(b"")[-4:],  # wrong CRC
    ],
    ids=["not-gzip", "cut", "bad-deflate", "bad-crc"],
)
def test_a_corrupt_gz_is_bad_input(tmp_path, content):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(BadInput) as info:
        read_idx(path)
    assert str(path) in info.value.message


def test_idx_pairs_of_another_type_or_shape_are_bad_input(tmp_path):
    folder = tmp_path / "mnist"
    make_idx_dataset(folder, compress=False)
    images = folder / "train-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[2] = 0x0C  # int32: the same bytes read as a quarter as many values
    raw[4:8] = struct.pack(">I", 15)
    images.write_bytes(bytes(raw))
    with pytest.raises(BadInput, match="unsigned bytes"):
        load_idx_pair(folder, "train")
    write_idx(images, np.zeros((60, 14, 56), np.uint8), compress=False)
    with pytest.raises(BadInput, match="are 1x14x56, mnist's are 1x28x28"):
        load_data("mnist", data_dir=tmp_path, val_size=10)


def test_train_refuses_an_idx_file_cut_in_its_header(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MNCLI_DATA", raising=False)
    folder = tmp_path / "fashion-mnist"
    make_idx_dataset(folder)
    cut = folder / "train-images-idx3-ubyte.gz"
    cut.write_bytes(gzip.compress(_idx_bytes(IMAGES)[:9]))
    capsys.readouterr()
    argv = ["train", "--arch", "test-cnn", "-d", "fashion-mnist", "--data-dir", str(tmp_path)]
    code = main([*argv, "-o", str(tmp_path / "x.safetensors"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert (code, len(err.splitlines())) == (2, 1), err
    assert f"{cut} is cut inside its header" in err


# ---------------------------------------------------------------- the IDX property


def _damaged(data, original: bytes, header: int = 16) -> bytes:
    """`original` cut, or with 1-4 bytes changed (half of them within its first `header` bytes)."""
    raw = bytearray(original)
    header = min(header, len(raw) - 1)
    kind = data.draw(st.sampled_from(["cut", "mutate", "both"]))
    if kind != "cut":
        for _ in range(data.draw(st.integers(1, 4))):
            where = data.draw(st.one_of(st.integers(0, header), st.integers(0, len(raw) - 1)))
            raw[where] = data.draw(st.integers(0, 255))
    if kind != "mutate":
        raw = raw[: data.draw(st.one_of(st.integers(0, header), st.integers(0, len(raw) - 1)))]
    return bytes(raw)


N_TRAIN, N_TEST = 12, 4
FILES = [
    f"{split}-{part}" for split in ("train", "t10k") for part in ("images-idx3-ubyte", "labels-idx1-ubyte")
]


def _clean_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        files[f"{split}-images-idx3-ubyte"] = _idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        files[f"{split}-labels-idx1-ubyte"] = _idx_bytes(np.arange(n) % 10)
    return files


CLEAN = _clean_files()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.sampled_from(FILES),
    form=st.sampled_from(["raw", "gz-of-damaged", "damaged-gz"]),
    data=st.data(),
)
def test_any_damaged_idx_dataset_is_a_valid_dataset_or_bad_input(tmp_path, target, form, data):
    """Property: one of the four files cut or mutated (raw; gzipped after the damage; or damaged in
    its gzip stream) gives a dataset whose every split is whole and in range, or BadInput."""
    folder = tmp_path / "mnist"
    for stale in folder.glob("*") if folder.exists() else ():
        stale.unlink()
    folder.mkdir(exist_ok=True)
    for name, raw in CLEAN.items():
        if name == target:
            if form == "raw":
                (folder / name).write_bytes(_damaged(data, raw))
            elif form == "gz-of-damaged":
                (folder / f"{name}.gz").write_bytes(gzip.compress(_damaged(data, raw), mtime=0))
            else:
                (folder / f"{name}.gz").write_bytes(_damaged(data, gzip.compress(raw, mtime=0), header=24))
        else:
            (folder / name).write_bytes(raw)
    try:
        bundle = load_data("mnist", data_dir=tmp_path, val_size=2, batch_size=4)
        splits = [bundle.train, bundle.val, bundle.test]
    except BadInput as exc:
        assert str(folder) in exc.message
        return
    assert len(bundle.train) + len(bundle.val) == N_TRAIN
    for split in splits:
        assert split.images.dtype.is_floating_point is False and tuple(split.images.shape[1:]) == (1, 28, 28)
        assert int(split.labels.min()) >= 0 and int(split.labels.max()) < 10
        assert len(split.images) == len(split.labels)
        x, y = next(iter(split))
        assert x.shape[1:] == (1, 28, 28) and len(x) == len(y)


def test_gzip_module_is_what_reads_gz(tmp_path):
    """The .gz path goes through gzip (a file named .gz that holds raw IDX is refused, not guessed)."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(_idx_bytes(IMAGES))
    with pytest.raises(BadInput, match="cannot read IDX file"):
        read_idx(path)
    path.write_bytes(gzip.compress(_idx_bytes(IMAGES)))
    assert np.array_equal(read_idx(path), IMAGES)
