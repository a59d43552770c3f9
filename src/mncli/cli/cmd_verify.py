"""`mncli verify`: is an artifact intact, loadable, consistent with its parents, and (with
--reproduce) are the claims of its manifest true?"""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import InputArtifact, Json, train_option
from mncli.stages.verify import ACC_TOLERANCE, LOSS_RTOL, SCORE_RTOL

HELP = "\n\n".join(
    [
        "Check that an artifact is intact, loadable and consistent with its parents.",
        "Recomputes the content hash of the tensors and the manifest's seal (manifest_sha256, broken by "
        "any edit of the manifest), validates the manifest, decodes the weights, rebuilds the model from "
        "the manifest and loads them, compares the sidecar NAME.manifest.json, and checks the lineage "
        "and every parent still on disk. A parent that is gone, a missing sidecar and a manifest from "
        "before seals ('not sealed') are listed, not failures.",
        "A seal shows edits; it is not a signature. --reproduce checks the claims themselves: it "
        "measures accuracy, top-5 and loss again (test split, and the recorded validation split, as "
        "`mncli eval` does) and the score, with a row per claim: recorded, measured, holds. Tolerances: "
        f"accuracy --acc-tolerance (absolute, default {ACC_TOLERANCE:g}: the same images right; widen "
        f"it on another device than the recorded one), loss {LOSS_RTOL:g} and score {SCORE_RTOL:g} "
        "(relative).",
        "Exit code 0 when every check holds; 1 when one fails (changed tensors or manifest, a model "
        "that does not load, a claim that does not hold); 2 when the file is not an artifact or the "
        "data it needs cannot be loaded.",
        "Examples:",
        "  mncli verify q.safetensors",
        "  mncli verify q.safetensors --reproduce",
        "  mncli verify q.safetensors --json | jq .problems",
    ]
)
DATA = "Reproduce"
Reproduce = Annotated[
    bool,
    typer.Option(
        "--reproduce", rich_help_panel=DATA,
        help="Measure the manifest's accuracy and score claims again and say which hold.",
    ),
]  # fmt: skip
AccTolerance = Annotated[
    float,
    typer.Option(
        "--acc-tolerance", metavar="ABS", rich_help_panel=DATA,
        help="How far a measured accuracy may be from the recorded one (a fraction: 0.002 = 0.2 %).",
    ),
]  # fmt: skip
Dataset = train_option(
    "dataset",
    "fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic[:...] (default: the recorded one; "
    "another dataset's numbers are shown, not compared).",
    panel=DATA,
)
DataDir = train_option("data_dir", panel=DATA)
Download = train_option("download", panel=DATA)
BatchSize = train_option("batch_size", "Evaluation batch size.", panel=DATA)
ImageSize = train_option(
    "image_size",
    "ImageNet: measure at N px (default: the size the manifest's metrics were measured at; at another "
    "size the numbers are shown, not compared).",
    panel=DATA,
)
Device = train_option("device", panel=DATA)


def _mark(ok: bool | None) -> str:
    if ok is None:
        return "[yellow]-[/yellow]"
    return "[green]ok[/green]" if ok else "[red]FAILED[/red]"


def _seal_row(seal: dict) -> tuple[str, str, str]:
    if seal["status"] == "not sealed":
        return "[yellow]not sealed[/yellow]", "written before manifests were sealed: edits cannot be seen"
    if seal["ok"]:
        return _mark(True), seal["computed"]
    return _mark(False), seal["problem"]


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict) and "name" in value:  # a scoring task
        return str(value["name"])
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _claims_table(claims: dict):
    from rich.table import Table

    where = ""
    if claims.get("dataset"):
        where = f" on {claims['dataset']}, {claims['device']}"
        if claims.get("recorded_device") and claims["recorded_device"] != claims["device"]:
            where += f" (recorded on {claims['recorded_device']})"
    table = Table(title=f"claims of the manifest, measured again{where}")
    for col in ("claim", "recorded", "measured", "tolerance", "holds"):
        table.add_column(col, justify="left" if col in ("claim", "tolerance") else "right")
    for r in claims["rows"]:
        holds = {True: "[green]yes[/green]", False: "[red]NO[/red]", None: "[yellow]-[/yellow]"}[r["holds"]]
        if r["note"]:
            holds += f" ({r['note']})"
        table.add_row(r["claim"], _value(r["recorded"]), _value(r["measured"]), r["tolerance"], holds)
    if claims.get("skipped"):
        table.add_row("-", "-", "-", "-", claims["skipped"])
    elif not claims["rows"]:
        table.add_row("-", "-", "-", "-", "the manifest claims no accuracy or score")
    if claims.get("unchecked"):
        table.caption = "not checked: " + ", ".join(claims["unchecked"])
    return table


def render(report: dict):
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"mncli verify {report['path']}")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    h = report["content_sha256"]
    table.add_row(
        "content hash",
        _mark(h["ok"]),
        h["computed"] if h["ok"] else f"recorded {h['recorded']}, computed {h['computed']}",
    )
    table.add_row("manifest seal", *_seal_row(report["manifest_sha256"]))
    s = report["schema"]
    table.add_row("manifest schema", _mark(s["ok"]), "; ".join(s["errors"][:3]))
    t = report["tensors"]
    table.add_row("stored tensors", _mark(t["ok"]), t["error"] or f"{t['count']} stored tensors, all decode")
    m = report["model"]
    tried = m["status"] != "not tried"
    table.add_row("model", _mark(m["ok"] if tried else None), m["error"] or m["status"])
    c = report["sidecar"]
    table.add_row("sidecar", _mark(c["ok"]), f"{c['path']}: {c['status']}")
    for p in report["parents"]:
        result = "[yellow]missing[/yellow]" if p["status"] == "missing" else _mark(p["ok"])
        table.add_row("parent", result, f"{p['path']}: {p['status']}")
    if not report["parents"]:
        table.add_row("parents", "-", "none recorded")
    lin = report["lineage"]
    table.add_row("lineage", _mark(lin["ok"]), "; ".join(lin["errors"][:3]))
    if "claims" not in report:
        return table
    return Group(table, _claims_table(report["claims"]))


def register(app: typer.Typer) -> None:
    @app.command("verify", help=HELP)
    def verify(
        artifact: InputArtifact,
        reproduce: Reproduce = False,
        dataset: Dataset = None,
        data_dir: DataDir = None,
        download: Download = False,
        image_size: ImageSize = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        acc_tolerance: AccTolerance = ACC_TOLERANCE,
        as_json: Json = False,
    ) -> None:
        from mncli.errors import RuntimeFailure
        from mncli.stages.verify import VerifyConfig, run

        config = VerifyConfig(
            input=artifact, reproduce=reproduce, dataset=dataset, data_dir=data_dir, download=download,
            batch_size=batch_size, device=device, acc_tolerance=acc_tolerance, image_size=image_size,
        )  # fmt: skip
        report = run(config)
        output.emit(report, as_json=as_json, table=render(report))
        if not report["ok"]:
            problems = report["problems"]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RuntimeFailure(f"{artifact} failed verification: {problems[0]}{more}")
