"""Tamper evidence: the manifest's seal, `verify` rebuilding the model, `report` measuring what it
can, and `verify --reproduce` checking the claims of a manifest against the weights.

Forgeries are written as a forger would: the header rewritten with the safetensors library's own
writer (tensors and content hash untouched, so only the seal can tell), the sidecar edited the same
way or deleted, and, for the worst case, the seal recomputed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mncli.artifact import read_manifest, sidecar_path, verify_artifact
from mncli.artifact.manifest import (
    SEAL_KEY,
    canonical_json,
    first_difference,
    pretty_json,
    seal_manifest,
    seal_status,
)
from mncli.cli.app import main

SYN = "synthetic:classes=4,shape=1x8x8,train=400,test=60"
ACCURACY = ("metrics", "test_acc", 0.99)
SCORE = ("metrics", "score", "score", 1e-9)
PARAMS = ("metrics", "score", "params", 1)
FORGERIES = {"accuracy": [ACCURACY], "score": [SCORE], "params": [PARAMS]}


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    """A test-cnn trained one epoch on tiny synthetic data by `mncli train` (accuracy and score
    recorded by the stage itself)."""
    out = tmp_path_factory.mktemp("honest") / "a.safetensors"
    argv = ["-q", "train", "--arch", "test-cnn", "--arch-opt", "width=4", "-d", SYN, "--epochs", "1"]
    assert main([*argv, "-b", "32", "-o", str(out)]) == 0
    return out


def copy_of(src: Path, folder: Path, name: str = "a.safetensors") -> Path:
    dst = folder / name
    shutil.copyfile(src, dst)
    shutil.copyfile(sidecar_path(src), sidecar_path(dst))
    return dst


def _set(manifest: dict, edit: tuple) -> None:
    *keys, last, value = edit
    target = manifest
    for key in keys:
        target = target[key]
    target[last] = value


def forge(path: Path, edits: list[tuple], *, sidecar: str = "edited", reseal: bool = False) -> dict:
    """Edit the manifest inside `path` through the safetensors writer; sidecar "edited" (the same
    edit), "absent" (deleted) or "kept" (the original); reseal: recompute the seal, as a forger who
    read the docs would. Returns the forged manifest."""
    with safe_open(str(path), "pt") as f:
        manifest = json.loads(f.metadata()["mncli"])
    tensors = load_file(str(path))
    for edit in edits:
        _set(manifest, edit)
    if reseal:
        manifest = seal_manifest(manifest)
    save_file(tensors, str(path), metadata={"mncli": canonical_json(manifest)})
    if sidecar == "edited":
        sidecar_path(path).write_text(pretty_json(manifest))
    elif sidecar == "absent":
        sidecar_path(path).unlink()
    return manifest


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the seal


def test_save_artifact_seals_the_manifest_and_its_sidecar(honest):
    manifest = read_manifest(honest)
    assert seal_status(manifest)["status"] == "ok"
    assert json.loads(sidecar_path(honest).read_text()) == manifest
    report = verify_artifact(honest)
    assert report["ok"] and report["manifest_sha256"]["status"] == "ok"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8), JSON, max_size=6))
def test_a_seal_survives_the_canonical_round_trip_and_breaks_on_any_change(body):
    sealed = seal_manifest(body)
    written = json.loads(canonical_json(sealed))  # what save_artifact stores and a reader gets back
    assert seal_status(written)["status"] == "ok"
    assert json.loads(pretty_json(sealed)) == written  # the sidecar holds the same sealed manifest
    changed = {**written, "stage": "forged" if written.get("stage") != "forged" else "other"}
    assert seal_status(changed)["status"] == "mismatch"
    assert first_difference(written, changed, ("file", "sidecar")).startswith("stage: ")


def test_an_old_manifest_without_a_seal_is_reported_not_failed(honest, tmp_path, capsys):
    path = copy_of(honest, tmp_path)
    manifest = forge(path, [], sidecar="absent")
    manifest.pop(SEAL_KEY)
    save_file(load_file(str(path)), str(path), metadata={"mncli": canonical_json(manifest)})
    code, out, err = run(capsys, "verify", path, "--json")
    assert code == 0, err
    assert json.loads(out)["manifest_sha256"]["status"] == "not sealed"
    code, out, _ = run(capsys, "verify", path)
    assert code == 0 and "not sealed" in out


# ---------------------------------------------------------------- verify catches the forgery


@pytest.mark.parametrize("sidecar", ["edited", "absent", "kept"])
@pytest.mark.parametrize("what", sorted(FORGERIES))
def test_a_forged_manifest_fails_verify(honest, tmp_path, capsys, what, sidecar):
    path = copy_of(honest, tmp_path)
    forge(path, FORGERIES[what], sidecar=sidecar)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    code, out, err = run(capsys, "verify", path, "--json")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "manifest edited after it was written" in err
    report = json.loads(out)
    assert report["manifest_sha256"]["status"] == "mismatch" and report["content_sha256"]["ok"]
    if sidecar == "kept":  # the sealed original beside it names the field
        field = ".".join(str(k) for k in FORGERIES[what][0][:-1])
        assert f"the sealed sidecar differs at {field}: " in err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # verify changes nothing


def test_an_edited_sidecar_alone_is_named(honest, tmp_path, capsys):
    path = copy_of(honest, tmp_path)
    side = json.loads(sidecar_path(path).read_text())
    side["metrics"]["test_acc"] = 0.99
    sidecar_path(path).write_text(json.dumps(side))
    code, _, err = run(capsys, "verify", path)
    assert code == 1 and "differs at metrics.test_acc: " in err and "0.99 in the sidecar" in err


def test_an_architecture_that_no_longer_fits_the_tensors_fails_verify(honest, tmp_path, capsys):
    path = copy_of(honest, tmp_path)
    forge(path, [("arch", "args", "width", 16)], reseal=True)  # seal intact: only loading tells
    code, out, err = run(capsys, "verify", path, "--json")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "model:" in err and "no stage can load it" in err
    report = json.loads(out)
    assert report["manifest_sha256"]["ok"] and not report["model"]["ok"]


def test_an_architecture_only_artifact_is_built_and_scored_not_failed(tmp_path, capsys):
    from conftest import tiny_artifact
    from mncli.bundle import arch_score

    score = arch_score({"name": "test-cnn", "args": {}}, None)
    metrics = {"score": score, "val_acc": 0.5}  # as search and scale record them
    path = tiny_artifact(tmp_path / "arch.safetensors", weights=False, stage="search", metrics=metrics)
    code, out, err = run(capsys, "verify", path, "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["status"] == "test-cnn: architecture only (no weights)"
    code, out, err = run(capsys, "verify", path, "--reproduce", "--json")
    assert code == 0, err
    rows = _rows(json.loads(out))
    assert rows["score.ops"]["holds"] and rows["metrics.val_acc"]["holds"] is None


# ---------------------------------------------------------------- --reproduce


def _rows(report: dict) -> dict[str, dict]:
    return {r["claim"]: r for r in report["claims"]["rows"]}


def test_reproduce_confirms_every_claim_of_an_honest_artifact(honest, capsys):
    code, out, err = run(capsys, "verify", honest, "--reproduce", "--json")
    assert code == 0, err
    rows = _rows(json.loads(out))
    expected = {"metrics.val_acc", "metrics.test_acc", "metrics.test_loss", "score.score", "score.params"}
    assert expected <= set(rows)
    assert all(r["holds"] is True for r in rows.values()), rows
    code, out, _ = run(capsys, "verify", honest, "--reproduce")
    assert code == 0 and "metrics.test_acc" in out and "yes" in out and "NO" not in out


@pytest.mark.parametrize("what", sorted(FORGERIES))
def test_reproduce_flags_exactly_the_forged_claims_of_a_resealed_forgery(honest, tmp_path, capsys, what):
    path = copy_of(honest, tmp_path)
    forge(path, FORGERIES[what], reseal=True)
    assert run(capsys, "verify", path)[0] == 0  # a resealed forgery passes the seal...
    code, out, err = run(capsys, "verify", path, "--reproduce", "--json")
    assert code == 1 and len(err.splitlines()) == 1, err  # ...but not the measurement
    claim = ".".join(str(k) for k in FORGERIES[what][0][:-1]).removeprefix("metrics.score.")
    claim = claim if claim.startswith("metrics.") else f"score.{claim}"
    assert f"claim {claim} does not hold" in err
    rows = _rows(json.loads(out))
    assert [c for c, r in rows.items() if r["holds"] is False] == [claim]
    assert rows[claim]["recorded"] == FORGERIES[what][0][-1]


def test_reproduce_on_another_dataset_shows_but_does_not_compare(honest, capsys):
    other = "synthetic:classes=4,shape=1x8x8,train=400,test=80"
    code, out, err = run(capsys, "verify", honest, "--reproduce", "-d", other, "--json")
    assert code == 0, err
    rows = _rows(json.loads(out))
    assert rows["metrics.test_acc"]["holds"] is None and "not comparable" in rows["metrics.test_acc"]["note"]
    assert rows["score.score"]["holds"] is True


def test_reproduce_scores_a_compressed_artifact_as_the_stage_recorded_it(tmp_path, capsys):
    from mncli.bundle import Bundle, attach_specs, save_bundle
    from mncli.models import create_model
    from test_cli_inspect_verify import compressed_state

    state, specs = compressed_state()  # pruned, ternary, 4-bit, fp16 layers and an 8-bit input quantizer
    model = create_model("test-cnn")
    attach_specs(model, specs)
    model.load_state_dict(state)
    path = tmp_path / "q.safetensors"
    save_bundle(Bundle(model, {"name": "test-cnn", "args": {}}, specs), path, stage="quantize")
    code, out, err = run(capsys, "verify", path, "--reproduce", "--json")
    assert code == 0, err
    rows = _rows(json.loads(out))
    assert rows["score.score"]["holds"] and rows["score.params"]["measured"] < sum(
        v.numel() for v in state.values() if v.is_floating_point()
    )


def test_eval_measures_a_quantized_artifact_exactly_as_its_stage_recorded(honest, tmp_path, capsys):
    """Not just within tolerance: the same figures to the last bit, because both measure in the same
    memory layout (another layout's kernels differ in the last bits, and a fake-quantized activation
    near a rounding edge then takes the next code)."""
    out = tmp_path / "q.safetensors"
    argv = ["quantize", honest, "--ptq", "--weight-bits", "8", "--act-bits", "8", "-o", out]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    metrics = read_manifest(out)["metrics"]
    for split in ("val", "test"):
        code, printed, err = run(capsys, "eval", out, "--split", split, "--json")
        assert code == 0, err
        measured = json.loads(printed)
        assert (measured["top1"], measured["loss"]) == (metrics[f"{split}_acc"], metrics[f"{split}_loss"])


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--dataset", SYN], "only apply with --reproduce"),
        (["--reproduce", "--acc-tolerance", "-1"], "--acc-tolerance must be in [0, 1)"),
        (["--reproduce", "--acc-tolerance", "nan"], "--acc-tolerance must be in [0, 1)"),
        (["--reproduce", "-b", "0"], "--batch-size must be positive"),
        (["--reproduce", "-d", "synthetic:classes=5,shape=1x8x8"], "num_classes=4"),
    ],
)
def test_bad_verify_options_exit_2_with_one_line(honest, capsys, argv, text):
    code, out, err = run(capsys, "verify", honest, *argv)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and text in err, err


# ---------------------------------------------------------------- report


@pytest.mark.parametrize("sidecar", ["edited", "absent"])
@pytest.mark.parametrize("reseal", [False, True])
def test_report_measures_the_score_and_marks_the_recorded_accuracy(honest, tmp_path, capsys, sidecar, reseal):
    truth = read_manifest(honest)["metrics"]["score"]
    path = copy_of(honest, tmp_path)
    forge(path, [ACCURACY, SCORE, PARAMS], sidecar=sidecar, reseal=reseal)
    code, out, err = run(capsys, "report", path, "--json")
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    assert row["score"] == pytest.approx(truth["score"], rel=1e-9) and row["params"] == truth["params"]
    assert row["recorded"]["score"] == 1e-9 and row["recorded"]["params"] == 1
    assert set(row["claims_differ"]) == {"score", "params"}
    assert row["sources"]["test_top1"] == "recorded" and row["sources"]["score"] == "measured"
    assert row["test_top1"] == 0.99  # shown as the manifest's word, marked so
    assert row["manifest"] == ("sealed" if reseal else "EDITED")
    assert ("edited after it was written" in err) != reseal
    code, out, _ = run(capsys, "report", path)
    assert code == 0 and "test top-1*" in out and "(claimed 1)" in out and "99.00 %" in out
    assert "* as recorded in the manifest" in out
    md = tmp_path / "r.md"
    assert run(capsys, "report", path, "--markdown", md)[0] == 0
    assert "(claimed 1)" in md.read_text() and "* as recorded in the manifest" in md.read_text()


def test_report_falls_back_to_the_recorded_score_and_says_so(honest, tmp_path, capsys):
    path = copy_of(honest, tmp_path)
    forge(path, [("arch", "args", "width", 16)], reseal=True)  # no stage can load it
    code, out, err = run(capsys, "report", path, "--json")
    assert code == 0 and "score not measured" in err
    row = json.loads(out)["rows"][0]
    assert row["sources"]["score"] == "recorded" and row["not_measured"]
    code, out, _ = run(capsys, "report", path)
    assert code == 0 and f"{row['score']:.4g}*" in out
