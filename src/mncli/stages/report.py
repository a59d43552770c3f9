"""The `report` stage: accuracy, MicroNet score and size of a set of artifacts, measured where it can be.

Inputs are artifacts or folders (a folder stands for every mncli artifact in it: a grid's points and
its collected output, or a chain's stages); with `chain`, the one artifact given and its parents on
disk. Each artifact is measured once, by the score stage (`stages.score.run`, what `mncli score`
prints): params, ops and score from its weights, or from its architecture when it has none.
Accuracies, histories and what a stage did are the manifest's own records. `build_row` is an
artifact's line of the table, the Markdown and the JSON; `collect` adds what the HTML page
(stages/report_html.py) shows: every artifact's lineage on disk, its per-layer rows and its per-epoch
records.

    result = run(ReportConfig([Path("q.safetensors")], chain=True, html=Path("report.html")))
    result["rows"]      one row per artifact, as `mncli report --json` prints them
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from mncli.errors import BadInput, describe
from mncli.log import log, warn
from mncli.text import fmt_num, fmt_pct

MEASURED_KEYS = ("params", "ops", "score")  # recomputed from the weights (or the architecture)
SEAL_LABELS = {"ok": "sealed", "not sealed": "not sealed", "mismatch": "EDITED", "unreadable": "EDITED"}


@dataclass
class ReportConfig:
    inputs: list[Path]
    chain: bool = False
    markdown: Path | None = None
    html: Path | None = None


@dataclass
class Artifact:
    """One artifact as the report knows it: its manifest, the score stage's report of it (None when it
    could not be measured, `why` says why) and its row."""

    path: Path
    manifest: dict
    score: dict | None
    why: str | None
    weights: bool
    row: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name.removesuffix(".safetensors")


@dataclass
class Page:
    """What the HTML page shows: the artifacts given, every artifact of their lineages (key: the
    resolved path), and one chain per artifact given that is no other's ancestor, oldest first."""

    given: list[Artifact]
    artifacts: dict[str, Artifact]
    chains: list[list[str]]


# ---------------------------------------------------------------- inputs


def _natural(path: Path) -> list:
    """Sort key: point2 before point10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def artifacts_in(folder: Path) -> list[Path]:
    """The mncli artifacts in `folder` (not below it), in natural order; other .safetensors files (a
    state dict from `mncli export`, say) are skipped with a warning."""
    from mncli.artifact import read_manifest

    found = []
    for path in sorted(folder.glob("*.safetensors"), key=_natural):
        try:
            read_manifest(path)
        except BadInput as exc:
            warn(f"skipping {exc.message}")  # the message names the file
            continue
        found.append(path)
    if not found:
        raise BadInput(f"no mncli artifacts in {folder}", hint="give the folder a grid or a chain wrote")
    return found


def expand(inputs: list[Path]) -> list[Path]:
    """Folders replaced by their artifacts; every file must be an artifact (BadInput otherwise)."""
    from mncli.artifact import read_manifest

    paths = []
    for given in inputs:
        if Path(given).is_dir():
            paths.extend(artifacts_in(Path(given)))
        else:
            read_manifest(given)  # a clear BadInput for anything that is not an artifact
            paths.append(Path(given))
    unique = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def lineage(path: Path) -> list[Path]:
    """The artifact and its ancestors that still exist on disk, oldest first."""
    from mncli.artifact import read_manifest
    from mncli.artifact.manifest import resolve_parent

    chain = [path]
    seen = {path.resolve()}
    while True:
        parents = read_manifest(chain[0]).get("parents") or []
        parent = resolve_parent(chain[0], parents[0]["path"]) if parents else None
        if parent is None or parent.resolve() in seen:
            break
        seen.add(parent.resolve())
        chain.insert(0, parent)
    return chain


# ---------------------------------------------------------------- measuring


def measure(path: Path) -> Artifact:
    """The artifact scored by the score stage; a failure is recorded, never raised."""
    from mncli.artifact import file_report, read_manifest
    from mncli.stages.score import ScoreConfig
    from mncli.stages.score import run as score

    manifest = read_manifest(path)
    weights = bool(file_report(path)["tensors"])
    try:
        report, why = score(ScoreConfig(artifact=path)), None
    except Exception as exc:  # reported beside the recorded numbers, never fatal to `report`
        report, why = None, describe(exc)
    artifact = Artifact(path=path, manifest=manifest, score=report, why=why, weights=weights)
    artifact.row = build_row(artifact)
    return artifact


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _differs(recorded, measured) -> bool:
    from mncli.stages.verify import SCORE_RTOL

    if _number(recorded) is None:
        return recorded is not None
    if _number(measured) is None:
        return True
    return abs(measured - recorded) > SCORE_RTOL * max(abs(recorded), abs(measured))


def build_row(artifact: Artifact) -> dict:
    """One artifact: accuracy as its manifest records it; params, ops and score measured from the
    artifact itself (recorded values only when it cannot be measured, marked so); size from the file.
    row["sources"] says which is which, row["claims_differ"] where the manifest claims otherwise."""
    from mncli.artifact.manifest import seal_status

    path, manifest, measured = artifact.path, artifact.manifest, artifact.score
    metrics = manifest.get("metrics") or {}
    claimed = metrics.get("score") if isinstance(metrics.get("score"), dict) else {}
    recorded = {k: claimed.get(k) for k in MEASURED_KEYS}
    seal = seal_status(manifest)
    if seal["status"] not in ("ok", "not sealed"):
        warn(f"{path}: its manifest was edited after it was written (`mncli verify {path}`)")
    if measured is None:
        warn(f"{path}: score not measured ({artifact.why}); showing the manifest's numbers")
    shown = {k: measured.get(k) for k in MEASURED_KEYS} if measured else recorded
    source = "measured" if measured else "recorded"
    return {
        "artifact": str(path),
        "stage": manifest.get("stage"),
        "arch": (manifest.get("arch") or {}).get("name"),
        "val_top1": _number(metrics.get("val_acc")),
        "test_top1": _number(metrics.get("test_acc")),
        **shown,
        "file_bytes": path.stat().st_size,
        "manifest": SEAL_LABELS[seal["status"]],
        "sources": {
            "val_top1": "recorded",
            "test_top1": "recorded",
            **{k: source for k in MEASURED_KEYS},
            "file_bytes": "measured",
        },
        "measured_from": None if measured is None else "weights" if artifact.weights else "architecture",
        "recorded": recorded,
        "claims_differ": [k for k in MEASURED_KEYS if measured and _differs(recorded[k], shown[k])],
        "not_measured": artifact.why,
    }


def with_reductions(rows: list[dict]) -> list[dict]:
    """Each row's score_reduction: the first row's score over its own."""
    first = next((r["score"] for r in rows if r["score"]), None)
    for row in rows:
        row["score_reduction"] = first / row["score"] if first and row["score"] else None
    return rows


def collect(paths: list[Path], measured: dict[str, Artifact] | None = None) -> Page:
    """The page of `paths`: each one's lineage on disk, every artifact in them measured once (those
    in `measured` are not measured again)."""
    artifacts = dict(measured or {})
    chains_of = {}
    for path in paths:
        chain = lineage(path)
        for link in chain:
            key = str(link.resolve())
            if key not in artifacts:
                artifacts[key] = measure(link)
        chains_of[str(path.resolve())] = [str(link.resolve()) for link in chain]
    ancestors = {key for chain in chains_of.values() for key in chain[:-1]}
    chains = [chain for leaf, chain in chains_of.items() if leaf not in ancestors]
    given = [artifacts[str(path.resolve())] for path in paths]
    return Page(given=given, artifacts=artifacts, chains=chains)


# ---------------------------------------------------------------- what a stage recorded and did


def epoch_records(manifest: dict, parent: dict | None = None) -> tuple[list[dict], int]:
    """(the stage's per-epoch records in the order they ran, each with its "phase"; the epochs the
    stage spans). Records of the engine's history carry loss and accuracy; a pruning stage records
    only its sparsity schedule (placed at the end of its span); a stage that recorded none spans its
    training epochs with no records. Records that are `parent`'s own (a grid's collected output
    copies its chosen point's) were not trained again: ([], 0)."""
    records, span = _records(manifest)
    if records and parent is not None and _records(parent)[0] == records:
        return [], 0
    return records, span


def _records(manifest: dict) -> tuple[list[dict], int]:
    stage = str(manifest.get("stage") or "?")
    metrics = manifest.get("metrics") or {}
    params = manifest.get("params") or {}
    records: list[dict] = []
    search = manifest.get("search") if isinstance(manifest.get("search"), dict) else {}
    for record in search.get("history") or []:
        records.append({"phase": "search", **record, "val_acc": record.get("val_acc_shared")})
    if isinstance(metrics.get("history"), list):
        records += [{"phase": stage, **r} for r in metrics["history"] if isinstance(r, dict)]
    training = metrics.get("training") if isinstance(metrics.get("training"), dict) else {}
    for phase, run in training.items():
        if isinstance(run, dict) and isinstance(run.get("history"), list):
            records += [{"phase": phase, **r} for r in run["history"] if isinstance(r, dict)]
    if records:
        return records, len(records)
    train = params.get("train") if isinstance(params.get("train"), dict) else {}
    span = int(_number(train.get("epochs")) or 0) + int(_number(params.get("retrain_epochs")) or 0)
    compression = manifest.get("compression") or {}
    pruning = compression.get("prune") if isinstance(compression.get("prune"), dict) else {}
    for r in pruning.get("history") or []:
        records.append({"phase": str(pruning.get("method", "prune")), "epoch": r.get("epoch"),
                        "sparsity_target": r.get("target"), "sparsity": r.get("achieved")})  # fmt: skip
    return records, max(span, len(records))


def _weight_kind(spec: dict) -> str:
    weight = spec.get("weight") or {}
    fmt, bits = weight.get("format", "float"), weight.get("bits", 32)
    return {"ternary": "ternary", "int": f"int{bits:g}"}.get(fmt, "fp16" if bits == 16 else "fp32")


def _spec_changes(specs: dict, before: dict) -> list[str]:
    """What changed in the per-layer specs: formats, masks, activation bits, counted by layers."""
    counts: dict[str, int] = {}
    for name, spec in specs.items():
        old = before.get(name) or {}
        if _weight_kind(spec) != _weight_kind(old):
            key = f"weights {_weight_kind(old)} -> {_weight_kind(spec)}"
            counts[key] = counts.get(key, 0) + 1
        if spec.get("mask") and not old.get("mask"):
            counts["masked (pruned)"] = counts.get("masked (pruned)", 0) + 1
        act, old_act = (spec.get("act") or {}).get("bits"), (old.get("act") or {}).get("bits")
        if act is not None and act != old_act:
            key = f"activations {act}-bit"
            counts[key] = counts.get(key, 0) + 1
    return [f"{n} layer{'s' if n > 1 else ''}: {what}" for what, n in counts.items()]


def _stage_line(manifest: dict) -> str:
    """The stage and its method in a few words, from the recorded parameters."""
    stage = str(manifest.get("stage") or "?")
    params = manifest.get("params") or {}
    metrics = manifest.get("metrics") or {}
    train = params.get("train") if isinstance(params.get("train"), dict) else {}
    epochs = f"{train.get('epochs')} epoch" + ("" if train.get("epochs") == 1 else "s")
    method = params.get("method")
    if stage == "train":
        return f"trained {epochs} ({train.get('optimizer')}, lr {train.get('lr')})"
    if stage == "prune":
        achieved = (
            (metrics.get("sparsity") or {}).get("achieved")
            if isinstance(metrics.get("sparsity"), dict)
            else None
        )
        line = f"{method} to {fmt_pct(params.get('sparsity'))} zeros"
        return line + (f" (achieved {fmt_pct(achieved)})" if achieved is not None else "") + f", {epochs}"
    if stage == "ternarize":
        line = f"{method}" + (f" ({params.get('variant')})" if method == "ttq" else "")
        if method == "ec2t":
            line += f", ini_c {params.get('ini_c')}, lambda_div {params.get('lambda_div')}"
        if params.get("grid_point") is not None:
            line += f", grid point {params['grid_point']}"
        zeros = _number(metrics.get("ternary_sparsity"))
        return line + (f", {fmt_pct(zeros)} ternary zeros" if zeros is not None else "") + f", {epochs}"
    if stage == "quantize":
        if params.get("fp16"):
            return "fp16 weights and activations"
        how = "post-training" if params.get("ptq") else f"{method}, {epochs}"
        return f"weights {params.get('weight_bits')}-bit, activations {params.get('act_bits')}-bit ({how})"
    point = manifest.get("scale_point") if isinstance(manifest.get("scale_point"), dict) else None
    if point is not None:
        gamma = f" gamma {point.get('gamma')}" if point.get("gamma") not in (None, 1, 1.0) else ""
        bases = f"alpha {point.get('alpha')} beta {point.get('beta')}{gamma}"
        line = f"grid point {point.get('point')}: phi {point.get('phi')}, {bases}"
        if _number(point.get("depth_mult")) and _number(point.get("width_mult")):
            line += f" (depth x{point['depth_mult']:.3g}, width x{point['width_mult']:.3g})"
        return line + (f", trained {epochs}" if point.get("status") == "trained" else "")
    if stage == "scale":
        scale = manifest.get("scale") if isinstance(manifest.get("scale"), dict) else {}
        if scale:
            return f"compound scaling grid, phi {scale.get('phi')}: chose point {scale.get('choice')}"
        return f"compound scaling, phi {params.get('phi')}"
    return stage + (f" ({method})" if method else "")


def changes(manifest: dict, parent: dict | None) -> list[str]:
    """What a stage did, in short lines: its method, then what changed in its layers."""
    specs = (manifest.get("compression") or {}).get("layers") or {}
    before = ((parent or {}).get("compression") or {}).get("layers") or {}
    lines = [_stage_line(manifest), *_spec_changes(specs, before)]
    arch, parent_arch = manifest.get("arch") or {}, (parent or {}).get("arch") or {}
    if parent is not None and arch.get("name") != parent_arch.get("name"):
        lines.append(f"architecture {parent_arch.get('name')} -> {arch.get('name')}")
    elif parent is not None and arch.get("args") != parent_arch.get("args"):
        args, before = arch.get("args") or {}, parent_arch.get("args") or {}
        changed = sorted(k for k in {**args, **before} if args.get(k) != before.get(k))
        lines.append("architecture arguments changed: " + ", ".join(changed))
    return lines


# ---------------------------------------------------------------- the table


class Kind(enum.StrEnum):
    """How a report column is printed."""

    TEXT = "str"
    PCT = "pct"
    INT = "int"
    SCORE = "score"
    TIMES = "x"


def fmt(value, kind: Kind) -> str:
    if value is None:
        return "-"
    if kind is Kind.PCT:
        return fmt_pct(value)
    if kind is Kind.INT:
        return f"{value:,.0f}"
    if kind is Kind.SCORE:
        return fmt_num(float(value))
    if kind is Kind.TIMES:
        return f"{value:.1f}x"
    return str(value)


COLUMNS = [
    ("stage", "stage", Kind.TEXT),
    ("val top-1*", "val_top1", Kind.PCT),
    ("test top-1*", "test_top1", Kind.PCT),
    ("params", "params", Kind.INT),
    ("ops", "ops", Kind.INT),
    ("score", "score", Kind.SCORE),
    ("vs first", "score_reduction", Kind.TIMES),
    ("file bytes", "file_bytes", Kind.INT),
    ("manifest", "manifest", Kind.TEXT),
]
NOTE = (
    "* as recorded in the manifest, not measured here (`mncli verify ART --reproduce` measures "
    "accuracy); everything else measured from each artifact and its file."
)


def cell(row: dict, key: str, kind: Kind) -> str:
    """A value, marked * when it is the manifest's word where a measurement was expected, and with
    the claim when the manifest says something else than what was measured."""
    text = fmt(row[key], kind)
    if key in MEASURED_KEYS and row["sources"][key] == "recorded" and row[key] is not None:
        return f"{text}*"
    if key in row["claims_differ"]:
        return f"{text} (claimed {fmt(row['recorded'][key], kind)})"
    return text


def markdown(rows: list[dict]) -> str:
    head = "| artifact | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    cells = [[Path(r["artifact"]).name, *(cell(r, key, kind) for _, key, kind in COLUMNS)] for r in rows]
    body = ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join([head, rule, *body, "", NOTE]) + "\n"


# ---------------------------------------------------------------- the stage


def write_text(out: Path, text: str, option: str) -> None:
    """Write `out` atomically (a temporary beside it, renamed into place); BadInput naming `option`
    when the system refuses, with nothing left behind."""
    import os

    from mncli.artifact.tempfiles import make_temporary

    tmp = None
    try:
        fd, tmp = make_temporary(out, suffix=f".tmp{out.suffix}")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        raise BadInput(
            f"cannot write {out}: {exc.strerror or exc}", hint=f"choose another {option} path"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _check(config: ReportConfig, paths: list[Path]) -> None:
    from mncli.artifact import check_output

    if config.chain and len(paths) > 1:
        raise BadInput(
            f"--chain follows the parents of one artifact, got {len(paths)}",
            hint=f"mncli report {paths[-1]} --chain",
        )
    for out in (config.markdown, config.html):
        if out is not None:
            check_output(out, *paths, artifact=False)
    if config.markdown is not None and config.html is not None:
        if Path(config.markdown).resolve() == Path(config.html).resolve():
            raise BadInput(f"--markdown and --html are both {config.html}", hint="give them different files")


def run(config: ReportConfig) -> dict:
    """The rows of the artifacts (and, with --chain, of the last one's parents); with `markdown` and
    `html` those files written. Returns {"rows", "markdown", "html"}."""
    if not config.inputs:
        raise BadInput("no artifacts given", hint="mncli report fp.safetensors q.safetensors")
    paths = expand(list(config.inputs))
    _check(config, paths)
    if config.html is not None:
        from mncli.stages.report_html import require_matplotlib

        require_matplotlib()
    shown = lineage(paths[-1]) if config.chain else paths
    measured = {str(p.resolve()): measure(p) for p in shown}
    rows = with_reductions([measured[str(p.resolve())].row for p in shown])
    if config.markdown is not None:
        write_text(Path(config.markdown), markdown(rows), "--markdown")
        log(f"wrote {config.markdown}")
    if config.html is not None:
        from mncli.stages.report_html import render

        write_text(Path(config.html), render(collect(shown, measured)), "--html")
        log(f"wrote {config.html}")
    return {
        "rows": rows,
        "markdown": None if config.markdown is None else str(config.markdown),
        "html": None if config.html is None else str(config.html),
    }
