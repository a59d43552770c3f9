"""Fuzzing the artifact reader and `load_bundle`: whatever a file holds, only `BadInput` (one line,
naming the file) escapes `read_manifest`, `load_artifact`, `file_report` and `load_bundle`, and
nothing the safetensors library refuses is read.

The files are mutations of one small valid artifact whose layers cover every stored form (a sparse
float weight, ternary codes with a mask, 16-bit floats, 4-bit integer codes with a scale, two
activation quantizers). Mutation families: byte flips, truncation, insertion, deletion, the header
length, the header's JSON text (nesting, duplicate keys, huge numbers, non-UTF-8), its entries
(dtype, shape, data offsets, names), the tensor data, and the manifest (architecture, layer specs,
nesting, NaN). Where a mutation leaves the header readable the content hash (and the manifest's
seal, if it has one) is recomputed as a forger would, so that the mutation reaches the checks
behind the hash: decoding, the architecture, the specs.

Seeded for CI (the same cases every run); MNCLI_FUZZ_SEED=N draws other cases, and
MNCLI_FUZZ_SCALE=K runs K times as many.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import safetensors
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from mncli.artifact import file_report, load_artifact, read_manifest
from mncli.artifact import manifest as manifest_module
from mncli.artifact.hashing import hash_entries
from mncli.bundle import bundle_from_arch, load_bundle, save_bundle
from mncli.errors import BadInput
from mncli.models.quantized import install_act_quantizers, set_int_weight

FUZZ_SEED = os.environ.get("MNCLI_FUZZ_SEED")
SCALE = float(os.environ.get("MNCLI_FUZZ_SCALE", "1"))


def fuzz(examples: int):
    """Settings for one fuzz test: `examples` cases, no deadline, no example database, seeded."""

    def wrap(test):
        test = settings(
            max_examples=max(1, int(examples * SCALE)),
            deadline=None,
            database=None,
            derandomize=FUZZ_SEED is None,
            suppress_health_check=list(HealthCheck),
        )(test)
        return seed(int(FUZZ_SEED))(test) if FUZZ_SEED is not None else test

    return wrap


# ---------------------------------------------------------------- the valid artifact


SPECS = {
    "conv1": {"mask": True},
    "conv2": {"weight": {"format": "ternary", "bits": 2, "wp": 0.125, "wn": 0.0625}, "mask": True},
    "conv3": {
        "weight": {"format": "float", "bits": 16},
        "act": {"bits": 8, "signed": False, "method": "lsq"},
    },
    "fc": {"weight": {"format": "int", "bits": 4, "per_channel": False}, "act": {"bits": 4, "signed": True}},
}


def _write_valid(path: Path) -> None:
    torch.manual_seed(0)
    bundle = bundle_from_arch("test-cnn", {"width": 2, "input_size": 8, "num_classes": 3})
    model, g = bundle.model, torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.conv1.weight[0] = 0.0  # some exact zeros: stored sparse
        pick = torch.randint(0, 3, model.conv2.weight.shape, generator=g)
        model.conv2.weight.copy_(torch.where(pick == 1, 0.125, torch.where(pick == 2, -0.0625, 0.0)))
        model.conv3.weight.copy_(model.conv3.weight.half().float())
    codes = torch.randint(-8, 8, model.fc.weight.shape, generator=g)
    set_int_weight(model.fc, torch.tensor([0.03125]), codes)
    install_act_quantizers(model, SPECS)
    bundle.specs = json.loads(json.dumps(SPECS))
    save_bundle(bundle, path, stage="quantize", metrics={"score": {"params": 1}})


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("fuzz-source")
    path = folder / "valid.safetensors"
    _write_valid(path)
    bundle = load_bundle(path)  # the source itself loads, every stored form included
    assert {"conv1.weight::mask", "conv2.weight::codes", "fc.weight::scale"} <= set(load_artifact(path)[0])
    assert bundle.specs == SPECS
    return path.read_bytes()


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """The one file every case is written to (hypothesis runs the cases of a test one by one)."""
    return tmp_path_factory.mktemp("fuzz") / "case.safetensors"


# ---------------------------------------------------------------- the property


def _library_accepts(path: Path) -> bool:
    try:
        with safetensors.safe_open(str(path), framework="numpy"):
            return True
    except Exception:  # noqa: BLE001 - any refusal of the reference parser
        return False


def _only_bad_input(path: Path, data: bytes) -> None:
    """Write `data` to `path` and read it every way: BadInput (one line naming the file) or success;
    and never success for what the safetensors library refuses."""
    path.write_bytes(data)
    accepted = _library_accepts(path)
    readers = (
        read_manifest,
        load_artifact,
        file_report,
        load_bundle,
        lambda p: load_bundle(p, require_weights=False),
    )
    for reader in readers:
        try:
            reader(path)
        except BadInput as exc:
            assert "\n" not in exc.message, exc.message
            assert str(path) in exc.message, exc.message
        else:
            assert accepted, (
                f"{getattr(reader, '__name__', reader)} read a file the safetensors library refuses"
            )
    assert path.read_bytes() == data  # reading never changes the input


# ---------------------------------------------------------------- taking files apart


def _split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header: dict | bytes, data: bytes, pad: bool = True) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _manifest_text(manifest: dict) -> str:
    seal = getattr(manifest_module, "seal_manifest", None)
    if seal is not None and "manifest_sha256" in manifest:
        try:
            manifest = seal(manifest)
        except Exception:  # noqa: BLE001 - a manifest the sealer cannot take stays unsealed
            pass
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"))


def _rehash(raw: bytes) -> bytes:
    """`raw` with the manifest's content hash recomputed from its entries and data, as a forger
    would; unchanged where the header does not parse that far."""
    try:
        header, data = _split(raw)
        entries = [
            (name, e["dtype"], e["shape"], data[e["data_offsets"][0] : e["data_offsets"][1]])
            for name, e in header.items()
            if name != "__metadata__"
        ]
        manifest = json.loads(header["__metadata__"]["mncli"])
        manifest["content_sha256"] = hash_entries(entries)
        header["__metadata__"]["mncli"] = _manifest_text(manifest)
        return _join(header, data)
    except Exception:  # noqa: BLE001 - nothing to fix in a header this broken
        return raw


def _with_manifest(raw: bytes, manifest_text: str) -> bytes:
    header, data = _split(raw)
    header["__metadata__"]["mncli"] = manifest_text
    return _join(header, data)


# ---------------------------------------------------------------- values a hostile file may hold

HUGE = [2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, 10**30]
scalars = st.one_of(
    st.integers(-3, 40),
    st.sampled_from([*HUGE, -1, -(2**63), 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.sampled_from(["", "F32", "F16", "U8", "I64", "BOOL", "F4", "C64", "F8_E8M0", "F8_E4M3", "U64"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
shapes = st.one_of(
    st.lists(st.integers(0, 9), max_size=5),
    st.lists(st.sampled_from([0, 1, 2, *HUGE]), max_size=4),
    st.lists(scalars, max_size=3),
    st.just([0] * 70),
    values,
)
offsets = st.one_of(
    st.tuples(st.integers(0, 5000), st.integers(0, 5000)).map(list),
    st.lists(scalars, max_size=3),
    values,
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------- the families


@fuzz(600)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
            st.floats(0, 1),
            st.binary(min_size=1, max_size=9),
        ),
        min_size=1,
        max_size=4,
    ),
    in_header=st.booleans(),
    rehash=st.booleans(),
)
def test_byte_mutations(valid, target, edits, in_header, rehash):
    raw = bytearray(valid)
    header_end = 8 + int.from_bytes(valid[:8], "little")
    for op, where, payload in edits:
        size = header_end if in_header and header_end <= len(raw) else len(raw)
        i = min(int(where * size), max(len(raw) - 1, 0))
        if op == "flip" and raw:
            raw[i] ^= payload[0] or 1
        elif op == "set":
            raw[i : i + len(payload)] = payload
        elif op == "insert":
            raw[i:i] = payload
        elif op == "delete":
            del raw[i : i + len(payload)]
        elif op == "truncate":
            del raw[i:]
    data = bytes(raw)
    _only_bad_input(target, _rehash(data) if rehash else data)


@fuzz(300)
@given(
    length=st.one_of(st.integers(0, 2**64 - 1), st.integers(-64, 64)),
    relative=st.booleans(),
)
def test_header_length_mutations(valid, target, length, relative):
    n = int.from_bytes(valid[:8], "little")
    new = (n + length) % 2**64 if relative else length % 2**64
    _only_bad_input(target, new.to_bytes(8, "little") + valid[8:])


@fuzz(600)
@given(
    field=st.sampled_from(["dtype", "shape", "data_offsets", "extra", "drop", "rename", "remove", "add"]),
    pick=st.integers(0, 1000),
    value=st.one_of(values, shapes, offsets),
    rehash=st.booleans(),
)
def test_header_entry_edits(valid, target, field, pick, value, rehash):
    header, data = _split(valid)
    names = sorted(n for n in header if n != "__metadata__")
    name = names[pick % len(names)]
    entry = header[name]
    if field in ("dtype", "shape", "data_offsets"):
        entry[field] = value
    elif field == "extra":
        entry[str(value)[:8]] = value
    elif field == "drop":
        entry.pop(["dtype", "shape", "data_offsets"][pick % 3])
    elif field == "rename":
        header[str(value)[:12]] = header.pop(name)
    elif field == "remove":
        del header[name]
    elif field == "add":
        header[f"{name}::{pick % 5}"] = {
            "dtype": "U8",
            "shape": value,
            "data_offsets": [len(data), len(data)],
        }
    raw = _join(header, data)
    _only_bad_input(target, _rehash(raw) if rehash else raw)


@fuzz(400)
@given(
    kind=st.sampled_from(["nest", "duplicate", "number", "not utf8", "unpadded", "nul", "metadata"]),
    depth=st.sampled_from([10, 127, 128, 129, 1000, 100_000]),
    number=st.sampled_from(["1e400", "-1", "9" * 5000, "1.5", "-0", "18446744073709551616", "NaN"]),
    pick=st.integers(0, 1000),
)
def test_header_text_edits(valid, target, kind, depth, number, pick):
    header, data = _split(valid)
    names = sorted(n for n in header if n != "__metadata__")
    name = names[pick % len(names)]
    text = json.dumps(header, separators=(",", ":")).encode()
    entry = json.dumps({name: header[name]}, separators=(",", ":")).encode()[1:-1]
    if kind == "nest":
        text = b'{"x":' + _nested(depth).encode() + b"," + text[1:]
    elif kind == "duplicate":
        text = b"{" + entry + b"," + text[1:]
    elif kind == "number":
        begin = json.dumps(header[name]["data_offsets"][0]).encode()
        text = text.replace(b'"data_offsets":[' + begin, b'"data_offsets":[' + number.encode(), 1)
    elif kind == "not utf8":
        i = pick % len(text)
        text = text[:i] + b"\xff\xfe" + text[i:]
    elif kind == "nul":
        text += b"\x00"
    elif kind == "metadata":
        meta = [b"null", b"1", b'"x"', b'{"mncli":1}', b'{"mncli":"x","mncli":"y"}', b"[]"][pick % 6]
        text = text.replace(b'"__metadata__":', b'"__metadata__":' + meta + b',"_":', 1)
    _only_bad_input(target, _join(text, data, pad=kind != "unpadded"))


def _manifest_paths(manifest: dict) -> list[tuple]:
    """The path of every value in the manifest, after a few of those load_bundle reads first."""
    paths = [("arch", "args", "num_classes"), ("arch", "args", "width"), ("arch", "name"), ("arch", "shapes")]
    stack = [((k,), v) for k, v in manifest.items()]
    while stack:
        where, item = stack.pop()
        paths.append(where)
        if isinstance(item, dict):
            stack.extend(((*where, k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend(((*where, i), v) for i, v in enumerate(item))
    return paths


def _set(manifest: dict, path: tuple, value) -> None:
    *parents, last = path
    item = manifest
    for key in parents:
        item = item[key]
    item[last] = value


LAYER_NAMES = ["", "nope", "bn1", "relu1", "pool", "conv1.weight", "fc", "fc.act_quant"]


@fuzz(800)
@given(
    pick=st.integers(0, 10_000),
    value=st.one_of(
        values,
        st.sampled_from([-1, 0, 1, 7, 2**70, "", "no-such-net", {}, [], None, True, 1e308]),
        st.sampled_from(LAYER_NAMES).map(
            lambda layer: {layer: {"act": {"bits": 8}, "weight": {"format": "int", "bits": 4}}}
        ),
        st.sampled_from([10, 129, 1000]).map(lambda d: json.loads(_nested(d)) if d < 900 else d),
    ),
    spec_layer=st.sampled_from(["conv1", "conv2", "conv3", "fc", ""]),
    spec_value=values,
    where=st.sampled_from(["anywhere", "layers", "layer"]),
)
def test_manifest_edits(valid, target, pick, value, spec_layer, spec_value, where):
    header, _ = _split(valid)
    manifest = json.loads(header["__metadata__"]["mncli"])
    if where == "anywhere":
        paths = _manifest_paths(manifest)
        _set(manifest, paths[pick % len(paths)], value)
    elif where == "layers":
        manifest["compression"]["layers"] = value
    else:
        layers = manifest["compression"]["layers"]
        layers[spec_layer] = spec_value if pick % 2 else {**layers.get(spec_layer, {}), "weight": spec_value}
    _only_bad_input(target, _with_manifest(valid, _manifest_text(manifest)))


@fuzz(300)
@given(
    kind=st.sampled_from(["nest", "duplicate", "nan", "huge", "truncate", "not an object"]),
    depth=st.sampled_from([127, 128, 129, 900, 5000, 100_000]),
    cut=st.floats(0, 1),
)
def test_manifest_text_edits(valid, target, kind, depth, cut):
    header, _ = _split(valid)
    text = header["__metadata__"]["mncli"]
    if kind == "nest":
        text = '{"params":' + _nested(depth) + "," + text[1:]
    elif kind == "duplicate":
        text = '{"stage":"x",' + text[1:]
    elif kind == "nan":
        text = text.replace('"seed":null', '"seed":NaN').replace('"seed":0', '"seed":Infinity')
    elif kind == "huge":
        text = text.replace('"params":{', '"params":{"x":1e999,"y":' + "9" * 5000 + ",", 1)
    elif kind == "truncate":
        text = text[: int(cut * len(text))]
    else:
        text = json.dumps([text])
    _only_bad_input(target, _with_manifest(valid, text))


@fuzz(600)
@given(
    pick=st.integers(0, 1000),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4),
    special=st.sampled_from([None, "shape", "mask", "codes", "scale", "wp"]),
    fill=st.sampled_from([0x00, 0xFF, 0x7F, 0x80]),
)
def test_tensor_data_mutations_with_the_hash_fixed(valid, target, pick, edits, special, fill):
    """Stored weights altered and the hash recomputed: the decoder and the architecture must refuse."""
    header, data = _split(valid)
    names = sorted(n for n in header if n != "__metadata__")
    if special is not None:
        names = [n for n in names if n.endswith("::" + special)] or names
    begin, end = header[names[pick % len(names)]]["data_offsets"]
    data = bytearray(data)
    if end > begin:
        for where, byte in edits:
            data[begin + min(int(where * (end - begin)), end - begin - 1)] = byte
        if special == "shape":
            data[begin:end] = bytes([fill]) * (end - begin)
    _only_bad_input(target, _rehash(_join(header, bytes(data))))


# ---------------------------------------------------------------- the named cases, each pinned


def _edit_entry(name: str, **fields):
    def edit(header: dict, data: bytes) -> tuple[dict, bytes]:
        header[name].update(fields)
        return header, data

    return edit


def _add_entry(entry: dict, extra: bytes = b""):
    def edit(header: dict, data: bytes) -> tuple[dict, bytes]:
        header["extra"] = {**entry, "data_offsets": [len(data), len(data) + len(extra)]}
        return header, data + extra

    return edit


def _uncovered(header: dict, data: bytes) -> tuple[dict, bytes]:
    """The entry of the last tensor in the file dropped, its data left in place."""
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])
    del header[last]
    return header, data


def _overlap(header: dict, data: bytes) -> tuple[dict, bytes]:
    header["bn1.bias"]["data_offsets"] = list(header["bn1.weight"]["data_offsets"])  # same size
    return header, data


def _edit_manifest(change):
    def edit(header: dict, data: bytes) -> tuple[dict, bytes]:
        manifest = json.loads(header["__metadata__"]["mncli"])
        change(manifest)
        header["__metadata__"]["mncli"] = _manifest_text(manifest)
        return header, data

    return edit


def _classes(n):
    return _edit_manifest(lambda m: m["arch"]["args"].update(num_classes=n))


def _layer(name, spec):
    return _edit_manifest(lambda m: m["compression"]["layers"].update({name: spec}))


STRUCTURED = {
    "float data_offsets": (_edit_entry("fc.bias", data_offsets=[0.0, 12]), "expected usize"),
    "bool shape entry": (_add_entry({"dtype": "U8", "shape": [True]}, b"\1"), "boolean `true`"),
    "element count overflows": (_add_entry({"dtype": "F32", "shape": [0, 2**70]}), "expected usize"),
    "overlapping offsets": (_overlap, "invalid offset for tensor"),
    "offsets not covering the data": (_uncovered, "bytes after the last tensor's data"),
    "unsupported dtype": (_add_entry({"dtype": "C64", "shape": [1]}, b"\0" * 8), "which mncli does not read"),
    "num_classes -1": (_classes(-1), "num_classes"),
    "num_classes 7 for 3 classes": (
        _classes(7),
        "fc.weight is stored as [3, 8], the architecture needs [7, 8]",
    ),
    "architecture no longer fits": (
        _edit_manifest(lambda m: m["arch"]["args"].update(width=4)),
        "weights do not fit architecture test-cnn",
    ),
    "empty layer name": (_layer("", {"act": {"bits": 8}}), "names layer '', which test-cnn does not have"),
    "layer the model lacks": (_layer("conv9", {"mask": True}), "names layer 'conv9'"),
    "weight spec on a layer without one": (
        _layer("relu1", {"weight": {"format": "int", "bits": 4}}),
        "describes the weight of 'relu1', which has none",
    ),
}


@pytest.mark.parametrize("label", STRUCTURED)
def test_named_hostile_headers_and_manifests(valid, target, label):
    """Header and manifest edits with the content hash (and seal) fixed: one BadInput line each."""
    edit, message = STRUCTURED[label]
    header, data = edit(*_split(valid))
    raw = _rehash(_join(header, data))
    target.write_bytes(raw)
    with pytest.raises(BadInput) as info:
        load_bundle(target)
    assert message in info.value.message and str(target) in info.value.message, info.value.message
    assert "\n" not in info.value.message
    _only_bad_input(target, raw)


def _text_cases(valid: bytes) -> dict[str, tuple[bytes, str]]:
    header, data = _split(valid)
    text = json.dumps(header, separators=(",", ":")).encode()
    manifest = header["__metadata__"]["mncli"]
    first = next(n for n in sorted(header) if n != "__metadata__")
    entry = json.dumps({first: header[first]}, separators=(",", ":")).encode()[1:-1]
    return {
        "deeply nested header": (
            _join(b'{"x":' + _nested(100_000).encode() + b"," + text[1:], data),
            "recursion",
        ),
        "deeply nested manifest": (
            _with_manifest(valid, _nested(100_000)),
            "not valid JSON (nested too deeply)",
        ),
        "manifest nested 200 deep": (
            _with_manifest(valid, '{"x":' + _nested(200) + "," + manifest[1:]),
            "nests deeper than 128 levels",
        ),
        "header not UTF-8": (_join(text.replace(b'"mncli"', b'"mn\xffli"'), data), "invalid UTF-8"),
        "duplicate header key": (_join(b"{" + entry + b"," + text[1:], data), f"duplicate key {first!r}"),
        "duplicate manifest key": (
            _with_manifest(valid, '{"stage":"x",' + manifest[1:]),
            "duplicate key 'stage'",
        ),
        "NaN in the manifest": (_with_manifest(valid, manifest.replace('"seed":', '"x":NaN,"seed":')), "NaN"),
        "header longer than the file": ((10**6).to_bytes(8, "little") + valid[8:], "not a safetensors file"),
        "trailing bytes": (valid + b"\0" * 8, "8 bytes after the last tensor's data"),
        "truncated data": (valid[:-3], "truncated file"),
    }


@pytest.mark.parametrize(
    "label",
    [
        "deeply nested header",
        "deeply nested manifest",
        "manifest nested 200 deep",
        "header not UTF-8",
        "duplicate header key",
        "duplicate manifest key",
        "NaN in the manifest",
        "header longer than the file",
        "trailing bytes",
        "truncated data",
    ],
)
def test_named_hostile_files(valid, target, label):
    raw, message = _text_cases(valid)[label]
    target.write_bytes(raw)
    for reader in (read_manifest, load_artifact, load_bundle):
        with pytest.raises(BadInput) as info:
            reader(target)
        assert message in info.value.message and str(target) in info.value.message, info.value.message
    _only_bad_input(target, raw)
