"""The `verify` stage: is an artifact intact, can a stage load it, and (with `reproduce`) do the
claims of its manifest hold when measured again?

    run(VerifyConfig) -> report       mncli.artifact.verify_artifact's report, plus
        report["model"]               the model rebuilt from the manifest with the tensors loaded
                                      (mncli.bundle.load_bundle; on the meta device when there are no
                                      weights), or why that fails
        report["claims"]              with reproduce: one row per claim of the manifest's metrics,
                                      {"claim", "recorded", "measured", "tolerance", "holds", "note"}

Accuracy, top-5 and loss are measured as `mncli eval` does (stages/evaluate.py: the test split, and
the validation split the manifest records; ImageNet at the image size the manifest records, unless
--image-size says otherwise, and then not compared); the score as save_bundle records it
(`mncli.bundle.score_summary`, or `arch_score` for an architecture-only artifact). A claim holds when
the measurement is within its tolerance: accuracies within ACC_TOLERANCE (absolute; the default asks
for the same images right), losses within LOSS_RTOL and score figures within SCORE_RTOL (relative).
`measured_score` is what `mncli report` shows beside the recorded numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mncli.errors import BadInput, describe

ACC_TOLERANCE = 1e-6  # absolute, as a fraction of the images: below one image in a million
LOSS_RTOL = 1e-5  # relative: batch size and summation order move a mean loss by ~1e-7
SCORE_RTOL = 1e-9  # relative: counting is deterministic
# (manifest key in metrics, split, key in the evaluation result)
ACCURACY_CLAIMS = (
    ("val_acc", "val", "top1"),
    ("val_top5", "val", "top5"),
    ("val_loss", "val", "loss"),
    ("test_acc", "test", "top1"),
    ("test_top5", "test", "top5"),
    ("test_loss", "test", "loss"),
)
SCORE_CLAIMS = ("params", "mults", "adds", "ops", "score")


@dataclass
class VerifyConfig:
    input: Path
    reproduce: bool = False
    dataset: str | None = None
    data_dir: Path | None = None
    download: bool = False
    batch_size: int = 256
    device: str = "auto"
    acc_tolerance: float = ACC_TOLERANCE
    image_size: int | None = None

    def validate(self) -> VerifyConfig:
        from mncli.data.datasets import check_image_size

        given = self.dataset or self.data_dir is not None or self.download or self.image_size is not None
        if not self.reproduce and given:
            raise BadInput(
                "--dataset, --data-dir, --download and --image-size only apply with --reproduce",
                hint=f"mncli verify {self.input} --reproduce --dataset D",
            )
        if self.image_size is not None:
            check_image_size(self.image_size)
        if self.batch_size <= 0:
            raise BadInput(f"--batch-size must be positive, got {self.batch_size}", hint="e.g. -b 256")
        tol = self.acc_tolerance
        if not (isinstance(tol, int | float) and math.isfinite(tol) and 0 <= tol < 1):
            raise BadInput(f"--acc-tolerance must be in [0, 1), got {tol}", hint="e.g. --acc-tolerance 0.002")
        return self


# ---------------------------------------------------------------- the model


def load_model(path: Path, manifest: dict, weights: bool):
    """The artifact as a stage loads it: load_bundle, or for an architecture-only artifact the
    architecture built on the meta device (no memory, no random values)."""
    from mncli.bundle import Bundle, attach_specs, load_bundle
    from mncli.models import build_model
    from mncli.scoring import meta_device

    if weights:
        return load_bundle(path)
    arch = manifest.get("arch")
    if not isinstance(arch, dict) or "name" not in arch:
        raise BadInput(f"{path} has no architecture in its manifest")
    specs = dict((manifest.get("compression") or {}).get("layers") or {})
    with meta_device():
        model = build_model(arch)
        attach_specs(model, specs)
    return Bundle(model=model, arch=arch, specs=specs, manifest=manifest, path=path, weights=False)


def check_model(path: Path, report: dict) -> tuple[dict, Any]:
    """(report["model"], the bundle or None). Tried only when the file's own checks passed."""
    from mncli.artifact import read_manifest

    weights = report["tensors"]["count"] > 0
    out = {"ok": True, "status": "not tried", "error": None, "weights": weights}
    if not (report["content_sha256"]["ok"] and report["schema"]["ok"] and report["tensors"]["ok"]):
        return out, None
    try:
        bundle = load_model(path, read_manifest(path), weights)
    except Exception as exc:  # whatever stops a stage from loading it is this check's finding
        return {**out, "ok": False, "status": "does not load", "error": describe(exc)}, None
    what = "the weights load" if weights else "architecture only (no weights)"
    return {**out, "status": f"{bundle.arch['name']}: {what}"}, bundle


# ---------------------------------------------------------------- measuring


def measured_score(bundle) -> dict:
    """The score of a loaded artifact as save_bundle records it, for its recorded dataset's task."""
    from mncli.bundle import arch_score, score_summary

    dataset = (bundle.manifest.get("data") or {}).get("dataset")
    if not bundle.weights:
        return arch_score(bundle.arch, dataset)
    return score_summary(bundle.model, bundle.specs, bundle.arch, dataset)


def score_of(path: Path) -> tuple[dict | None, str | None]:
    """(measured score, None), or (None, why it could not be measured)."""
    from mncli.artifact import file_report, read_manifest

    try:
        weights = bool(file_report(path)["tensors"])
        return measured_score(load_model(path, read_manifest(path), weights)), None
    except Exception as exc:  # reported beside the recorded numbers, never fatal to `report`
        return None, describe(exc)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row(claim: str, recorded: Any, measured: Any, tolerance: str, holds: bool | None, note: str = ""):
    return {
        "claim": claim,
        "recorded": recorded,
        "measured": measured,
        "tolerance": tolerance,
        "holds": holds,
        "note": note,
    }


def _close(recorded: Any, measured: Any, *, atol: float = 0.0, rtol: float = 0.0) -> bool:
    if not (_number(recorded) and _number(measured)):
        return False
    return abs(measured - recorded) <= max(atol, rtol * max(abs(recorded), abs(measured)))


def score_claims(recorded: Any, bundle) -> list[dict]:
    """A row per figure the manifest's metrics.score records."""
    if not isinstance(recorded, dict) or not any(k in recorded for k in SCORE_CLAIMS):
        return []
    try:
        measured = measured_score(bundle)
    except Exception as exc:
        note = f"not measured: {describe(exc)}"
        return [
            _row(f"score.{k}", recorded[k], None, f"rel {SCORE_RTOL:g}", None, note)
            for k in SCORE_CLAIMS
            if k in recorded
        ]
    rows = [
        _row(
            f"score.{k}",
            recorded[k],
            measured.get(k),
            f"rel {SCORE_RTOL:g}",
            _close(recorded[k], measured.get(k), rtol=SCORE_RTOL),
        )
        for k in SCORE_CLAIMS
        if k in recorded
    ]
    if "task" in recorded:
        task = measured.get("task")
        rows.append(_row("score.task", recorded["task"], task, "equal", recorded["task"] == task))
    return rows


def _evaluations(config: VerifyConfig, splits: list[str]) -> dict[str, dict]:
    """The evaluation of each split, by stages/evaluate.py itself."""
    from mncli.stages.evaluate import EvalConfig, Split
    from mncli.stages.evaluate import run as evaluate

    return {
        split: evaluate(
            EvalConfig(
                input=config.input,
                dataset=config.dataset,
                split=Split(split),
                data_dir=config.data_dir,
                download=config.download,
                batch_size=config.batch_size,
                device=config.device,
                image_size=config.image_size,
                at_recorded_size=True,
                say_loading=False,
            )
        )  # fmt: skip
        for split in splits
    }


def accuracy_claims(config: VerifyConfig, manifest: dict, weights: bool) -> tuple[list[dict], dict]:
    """(a row per accuracy/top-5/loss claim, {"dataset", "device"} they were measured with)."""
    metrics = manifest.get("metrics") or {}
    claims = [(k, s, r) for k, s, r in ACCURACY_CLAIMS if metrics.get(k) is not None]
    acc_tol = f"abs {config.acc_tolerance:g}"
    tolerance = {"top1": acc_tol, "top5": acc_tol, "loss": f"rel {LOSS_RTOL:g}"}
    if not claims:
        return [], {}
    if not weights:
        note = "not measurable: architecture only (the number is from another model, e.g. a grid point)"
        return [_row(f"metrics.{k}", metrics[k], None, tolerance[r], None, note) for k, _, r in claims], {}
    from mncli.engine.runtime import resolve_device
    from mncli.stages.evaluate import recorded_image_size

    results = _evaluations(config, sorted({s for _, s, _ in claims}, reverse=True))
    recorded_data = (manifest.get("data") or {}).get("dataset")
    measured_on = next(iter(results.values()))["dataset"]
    recorded_size, measured_size = recorded_image_size(manifest), next(iter(results.values()))["image_size"]
    context = {
        "dataset": measured_on,
        "image_size": measured_size,
        "device": str(resolve_device(config.device)),
        "recorded_device": (manifest.get("env") or {}).get("device"),
        "count": {s: r["count"] for s, r in results.items()},
    }
    rows = []
    for key, split, result_key in claims:
        recorded, measured = metrics[key], results[split][result_key]
        note = None
        if measured_on != recorded_data:
            note = f"measured on {measured_on}, recorded on {recorded_data}: not comparable"
        elif recorded_size is not None and measured_size != recorded_size:
            note = f"measured at {measured_size} px, recorded at {recorded_size} px: not comparable"
        if note:
            rows.append(_row(f"metrics.{key}", recorded, measured, tolerance[result_key], None, note))
            continue
        if result_key == "loss":
            holds = _close(recorded, measured, rtol=LOSS_RTOL)
        else:
            holds = _close(recorded, measured, atol=config.acc_tolerance)
        rows.append(_row(f"metrics.{key}", recorded, measured, tolerance[result_key], holds))
    return rows, context


def reproduce(config: VerifyConfig, manifest: dict, bundle) -> dict:
    """report["claims"]: the manifest's metrics measured again."""
    metrics = manifest.get("metrics") or {}
    rows, context = accuracy_claims(config, manifest, bundle.weights)
    rows += score_claims(metrics.get("score"), bundle)
    checked = {r["claim"].split(".", 1)[1] for r in rows if r["claim"].startswith("metrics.")}
    unchecked = sorted(k for k in metrics if k not in checked and k != "score")
    return {
        **context,
        "rows": rows,
        "unchecked": unchecked,
        "ok": all(r["holds"] is not False for r in rows),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:  # a scoring task
        value = value["name"]
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def run(config: VerifyConfig) -> dict:
    """verify_artifact's report, the model check, and with config.reproduce the claims."""
    from mncli.artifact import verify_artifact

    path = Path(config.input)
    try:
        found = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise BadInput(f"{path}: cannot be read: {exc.strerror}", hint="check the path") from None
    if not found:
        raise BadInput(f"{path}: no such file", hint="check the path")
    config.validate()
    report = verify_artifact(path)
    model, bundle = check_model(path, report)
    report["model"] = model
    problems = report["problems"]
    if not model["ok"]:
        problems.append(f"model: {model['error']} (no stage can load it)")
    if config.reproduce:
        if bundle is None:
            skipped = "not measured: the checks above failed"
            report["claims"] = {"ok": None, "rows": [], "unchecked": [], "skipped": skipped}
        else:
            report["claims"] = reproduce(config, bundle.manifest, bundle)
            problems += [
                f"claim {r['claim']} does not hold: recorded {_fmt(r['recorded'])}, "
                f"measured {_fmt(r['measured'])} (tolerance {r['tolerance']})"
                for r in report["claims"]["rows"]
                if r["holds"] is False
            ]
    report["ok"] = not problems
    return report
