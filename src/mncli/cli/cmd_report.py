"""`mncli report`: one table for a chain of artifacts (accuracy, score, size at every stage)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import OUTPUT, Json
from mncli.log import log, warn
from mncli.text import fmt_num, fmt_pct

HELP = "\n\n".join(
    [
        "Summarise a compression chain: accuracy, MicroNet score and file size of every stage.",
        "Give the artifacts in order, or only the last one with --chain to follow its parents.",
        "Params, ops and score are measured from each artifact, with '(claimed X)' where its manifest "
        "says otherwise; accuracies are the manifests' own numbers, marked * as recorded (`mncli "
        "verify ART --reproduce` measures them), as is a score that cannot be measured. The manifest "
        "column says whether each manifest is as written (sealed), from before seals (not sealed), or "
        "EDITED since. --json gives the same per row: sources (measured or recorded), recorded, "
        "claims_differ.",
        "Examples:",
        "  mncli report fp.safetensors p.safetensors t.safetensors q.safetensors",
        "  mncli report q.safetensors --chain --markdown results.md",
    ]
)


def _chain(path: Path) -> list[Path]:
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


def _top1(metrics: dict, split: str) -> float | None:
    value = metrics.get(f"{split}_acc")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


MEASURED_KEYS = ("params", "ops", "score")  # recomputed from the weights (or the architecture)
SEAL_LABELS = {"ok": "sealed", "not sealed": "not sealed", "mismatch": "EDITED", "unreadable": "EDITED"}


def _differs(recorded, measured) -> bool:
    from mncli.stages.verify import SCORE_RTOL

    if not isinstance(recorded, int | float) or isinstance(recorded, bool):
        return recorded is not None
    if not isinstance(measured, int | float):
        return True
    return abs(measured - recorded) > SCORE_RTOL * max(abs(recorded), abs(measured))


def build_row(path: Path) -> dict:
    """One artifact: accuracy as its manifest records it; params, ops and score measured from the
    artifact itself (recorded values only when it cannot be measured, marked so); size from the file.
    row["sources"] says which is which, row["claims_differ"] where the manifest claims otherwise."""
    from mncli.artifact import read_manifest
    from mncli.artifact.manifest import seal_status
    from mncli.stages.verify import score_of

    manifest = read_manifest(path)
    metrics = manifest.get("metrics") or {}
    claimed = metrics.get("score") if isinstance(metrics.get("score"), dict) else {}
    recorded = {k: claimed.get(k) for k in MEASURED_KEYS}
    measured, why = score_of(path)
    seal = seal_status(manifest)
    if seal["status"] != "ok" and seal["status"] != "not sealed":
        warn(f"{path}: its manifest was edited after it was written (`mncli verify {path}`)")
    if measured is None:
        warn(f"{path}: score not measured ({why}); showing the manifest's numbers")
    shown = {k: measured.get(k) for k in MEASURED_KEYS} if measured else recorded
    differ = [k for k in MEASURED_KEYS if measured and _differs(recorded[k], shown[k])]
    source = "measured" if measured else "recorded"
    return {
        "artifact": str(path),
        "stage": manifest.get("stage"),
        "arch": (manifest.get("arch") or {}).get("name"),
        "val_top1": _top1(metrics, "val"),
        "test_top1": _top1(metrics, "test"),
        **shown,
        "file_bytes": path.stat().st_size,
        "manifest": SEAL_LABELS[seal["status"]],
        "sources": {
            "val_top1": "recorded",
            "test_top1": "recorded",
            **{k: source for k in MEASURED_KEYS},
            "file_bytes": "measured",
        },
        "recorded": recorded,
        "claims_differ": differ,
        "not_measured": why,
    }


def build_rows(paths: list[Path]) -> list[dict]:
    rows = [build_row(path) for path in paths]
    first = next((r["score"] for r in rows if r["score"]), None)
    for row in rows:
        row["score_reduction"] = first / row["score"] if first and row["score"] else None
    return rows


class Kind(enum.StrEnum):
    """How a report column is printed."""

    TEXT = "str"
    PCT = "pct"
    INT = "int"
    SCORE = "score"
    TIMES = "x"


def _fmt(value, kind: Kind) -> str:
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


def _cell(row: dict, key: str, kind: Kind) -> str:
    """A value, marked * when it is the manifest's word where a measurement was expected, and with
    the claim when the manifest says something else than what was measured."""
    text = _fmt(row[key], kind)
    if key in MEASURED_KEYS and row["sources"][key] == "recorded" and row[key] is not None:
        return f"{text}*"
    if key in row["claims_differ"]:
        return f"{text} (claimed {_fmt(row['recorded'][key], kind)})"
    return text


def markdown(rows: list[dict]) -> str:
    head = "| artifact | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    cells = [[Path(r["artifact"]).name, *(_cell(r, key, kind) for _, key, kind in COLUMNS)] for r in rows]
    body = ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join([head, rule, *body, "", NOTE]) + "\n"


def _write_text(out: Path, text: str) -> None:
    """Write `out` atomically (a temporary beside it, renamed into place); BadInput when the system
    refuses, with nothing left behind."""
    import os

    from mncli.artifact.tempfiles import make_temporary
    from mncli.errors import BadInput

    tmp = None
    try:
        fd, tmp = make_temporary(out, suffix=f".tmp{out.suffix}")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
        tmp = None
    except OSError as exc:
        raise BadInput(
            f"cannot write {out}: {exc.strerror or exc}", hint="choose another --markdown path"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


Artifacts = Annotated[
    list[Path], typer.Argument(metavar="INPUT...", help="Artifacts, oldest first.", show_default=False)
]
Markdown = Annotated[
    Path | None,
    typer.Option(
        "--markdown", metavar="FILE", rich_help_panel=OUTPUT, help="Also write the table as Markdown to FILE."
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report(
        artifacts: Artifacts,
        chain: Annotated[bool, typer.Option("--chain", help="Follow the last artifact's parents.")] = False,
        markdown_out: Markdown = None,
        as_json: Json = False,
    ) -> None:
        from rich.table import Table

        from mncli.artifact import check_output, read_manifest
        from mncli.errors import BadInput

        for path in artifacts:
            read_manifest(path)  # a clear BadInput for anything that is not an artifact
        if chain and len(artifacts) > 1:
            raise BadInput(
                f"--chain follows the parents of one artifact, got {len(artifacts)}",
                hint=f"mncli report {artifacts[-1]} --chain",
            )
        if markdown_out is not None:
            check_output(markdown_out, *artifacts, artifact=False)
        paths = _chain(artifacts[-1]) if chain else list(artifacts)
        rows = build_rows(paths)
        if markdown_out is not None:
            _write_text(markdown_out, markdown(rows))
            log(f"wrote {markdown_out}")
        table = Table(title="mncli report")
        table.add_column("artifact", overflow="ellipsis", max_width=28)
        for title, _, kind in COLUMNS:
            table.add_column(title, justify="left" if kind is Kind.TEXT else "right", no_wrap=True)
        for r in rows:
            table.add_row(Path(r["artifact"]).name, *(_cell(r, key, kind) for _, key, kind in COLUMNS))
        table.caption = NOTE
        output.emit({"rows": rows}, as_json=as_json, table=table)
