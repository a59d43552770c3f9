"""The page of `mncli report --html`: one self-contained HTML file of a report's artifacts.

Sections, each an element with its id: summary (the table), lineage (each chain as a row of stage
cards: accuracy, score, params, ops, file bytes, what the stage did), pareto (accuracy against score
on a log axis, the Pareto front, the task's target), layers (parameters and operations by layer type,
weight bits and sparsity per layer, before and after compression), training (the manifests' per-epoch
records: loss, accuracy, AGP's sparsity schedule, the ternary zero fraction) and conventions (how
the score counts, which figures were measured against the weights and which are the manifests'
claims). Text goes through `html.escape`; the CSS is inline; every plot is a matplotlib (Agg) PNG in a
data: URI, one <figure class="plot"> with one <img> each; links are #anchors only, so the file opens
in any browser with no network. matplotlib is imported when a page is drawn.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from mncli.errors import BadInput
from mncli.scaling.plot import PALETTE, group_style
from mncli.stages.report import (
    COLUMNS,
    MEASURED_KEYS,
    NOTE,
    Artifact,
    Kind,
    Page,
    cell,
    changes,
    epoch_records,
    fmt,
)
from mncli.text import fmt_pct
from mncli.version import __version__

SECTIONS = {
    "summary": "Summary",
    "lineage": "Lineage",
    "pareto": "Accuracy against score",
    "layers": "Per layer",
    "training": "Training",
    "conventions": "Conventions and claims",
}
COMPARED_MAX = 6  # artifacts in the layer-type plot: the chains' first ones and their last ones
PER_LAYER_MAX = 4  # series in the per-layer bits and sparsity plot
FIG_WIDTH = 4.8  # inches: two plots a row at 1280 px, one at phone width, its text still legible
DPI = 150

CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f6f7fa; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  background: #fff; }
header, main { max-width: 1240px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 20px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 32px 0 10px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 0 0 6px; overflow-wrap: anywhere; }
p, li { max-width: 80ch; }
.muted, figcaption, .note { color: var(--muted); font-size: 0.9rem; }
nav { display: flex; flex-wrap: wrap; gap: 6px 14px; margin: 10px 0 0; font-size: 0.95rem; }
a { color: var(--accent); }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.9rem; white-space: nowrap; width: 100%; }
table.wrap { white-space: normal; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th { background: var(--bg); }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
th:first-child, td:first-child { position: sticky; left: 0; background: #fff;
  box-shadow: 1px 0 0 var(--line); }
th:first-child { background: var(--bg); }
.claim { display: block; font-size: 0.8rem; }
details { margin: 12px 0; } summary { cursor: pointer; color: var(--accent); }
tr:last-child td { border-bottom: none; }
.chain { display: flex; align-items: flex-start; gap: 8px; margin: 0 0 16px; }
.branch { display: flex; flex-wrap: wrap; gap: 8px; flex: 1 1 0; min-width: 0; }
.card { flex: 0 0 250px; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
  background: var(--bg); }
.card.same { flex: 0 0 120px; align-self: flex-start; background: #fff; border-style: dashed; }
.card dl { display: grid; grid-template-columns: auto 1fr; gap: 1px 10px; margin: 6px 0; font-size: 0.88rem; }
.card dt { color: var(--muted); white-space: nowrap; }
.card dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; }
.card dd .delta { display: block; font-size: 0.78rem; line-height: 1.2; margin-bottom: 2px; }
.card ul { margin: 6px 0 0; padding-left: 18px; font-size: 0.85rem; }
.badge { display: inline-block; font-size: 0.75rem; padding: 0 6px; border-radius: 9px; background: #e3e9f5;
  color: var(--accent); }
.arrow { margin-top: 64px; color: var(--muted); font-size: 1.4rem; }
.up { color: #1b7f3b; } .down { color: #b3261e; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 540px), 1fr)); gap: 16px; }
figure.plot { margin: 0; }
figure.plot img { width: 100%; height: auto; display: block; border: 1px solid var(--line);
  border-radius: 6px; }
.empty { color: var(--muted); font-style: italic; }
.flag { color: #b3261e; font-weight: 600; }
@media (max-width: 700px) {
  body { font-size: 15px; }
  .chain, .branch { flex-direction: column; align-items: stretch; }
  .card, .card.same { flex: 1 1 auto; }
  .arrow { transform: rotate(90deg); margin: 0 auto; }
  th, td { padding: 4px 6px; }
}
"""


def require_matplotlib() -> None:
    """BadInput (one line, exit 2) when matplotlib, which draws the page's plots, is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput(
            "--html draws its plots with matplotlib, which is not installed", hint="pip install 'mncli[plot]'"
        ) from None


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _si(value) -> str:
    """Three significant digits with a unit: 12.3k, 4.56M; '-' when missing."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10.5, "legend.fontsize": 9, "axes.labelsize": 10})
    return plt


def _figure(fig, ident: str, caption: str, alt: str) -> str:
    """The figure as a PNG in a data: URI, closed once written."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure class="plot" id="{_e(ident)}"><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


# ---------------------------------------------------------------- summary


def _name_cell(artifact: Artifact) -> str:
    return f'<td class="text" title="{_e(artifact.path)}">{_e(artifact.name)}</td>'


def _cell(row: dict, key: str, kind: Kind) -> str:
    """As the table's cell, with a differing claim on a line of its own, flagged."""
    if key in row["claims_differ"]:
        claim = f'<span class="claim flag">claimed {_e(fmt(row["recorded"][key], kind))}</span>'
        return _e(fmt(row[key], kind)) + claim
    if key == "manifest" and row[key] == "EDITED":
        return f'<span class="flag">{_e(row[key])}</span>'
    return _e(cell(row, key, kind))


def _summary(page: Page) -> str:
    head = "".join(f'<th class="{"text" if k is Kind.TEXT else ""}">{_e(t)}</th>' for t, _, k in COLUMNS)
    body = []
    for artifact in page.given:
        row = artifact.row
        cells = []
        for _, key, kind in COLUMNS:
            value = row.get(key)
            data = f' data-key="{key}" data-value="{value!r}"' if isinstance(value, int | float) else ""
            klass = "text" if kind is Kind.TEXT else ""
            cells.append(f'<td class="{klass}"{data}>{_cell(row, key, kind)}</td>')
        body.append(f'<tr data-artifact="{_e(artifact.path)}">{_name_cell(artifact)}{"".join(cells)}</tr>')
    table = f'<div class="scroll"><table><thead><tr><th class="text">artifact</th>{head}</tr></thead>'
    return table + f'<tbody>{"".join(body)}</tbody></table></div><p class="note">{_e(NOTE)}</p>'


# ---------------------------------------------------------------- lineage


def _delta(value, before, *, pct: bool) -> str:
    """The change from the previous stage: +1.23 pp for accuracies, 2.1x smaller for the rest."""
    if value is None or before is None:
        return ""
    if pct:
        change = 100 * (value - before)
        klass = "up" if change > 0 else "down" if change < 0 else ""
        return f'<span class="delta {klass}">{change:+.2f} pp</span>'
    if value and before and value != before:
        ratio = before / value
        text = f"{ratio:.2g}x smaller" if ratio > 1 else f"{1 / ratio:.2g}x larger"
        return f'<span class="delta muted">{text}</span>'
    return ""


def _card(artifact: Artifact, parent: Artifact | None, anchor: str) -> str:
    row, before = artifact.row, (parent.row if parent else {})
    figures = [
        (
            "test top-1*",
            fmt_pct(row["test_top1"]) + _delta(row["test_top1"], before.get("test_top1"), pct=True),
        ),
        ("val top-1*", fmt_pct(row["val_top1"]) + _delta(row["val_top1"], before.get("val_top1"), pct=True)),
        ("score", _cell(row, "score", Kind.SCORE) + _delta(row["score"], before.get("score"), pct=False)),
        ("params", _e(_si(row["params"])) + _delta(row["params"], before.get("params"), pct=False)),
        ("ops", _e(_si(row["ops"])) + _delta(row["ops"], before.get("ops"), pct=False)),
        ("file bytes", f"{row['file_bytes']:,}"),
    ]
    details = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in figures)
    did = "".join(
        f"<li>{_e(line)}</li>" for line in changes(artifact.manifest, parent.manifest if parent else None)
    )
    arch = _e(row.get("arch") or "?")
    return (
        f'<div class="card" id="{anchor}"><h3 title="{_e(artifact.path)}">{_e(artifact.name)}</h3>'
        f'<span class="badge">{_e(row.get("stage"))}</span> <span class="muted">{arch}</span>'
        f"<dl>{details}</dl><ul>{did}</ul></div>"
    )


def _lineage(page: Page, anchors: dict[str, str]) -> str:
    """One row per group of chains that differ only in their last artifact (a grid's points): the
    shared stages, then the last artifacts side by side. A stage already shown is a dashed card
    linking to it."""
    groups: dict[tuple, list[str]] = {}
    for chain in page.chains:
        groups.setdefault(tuple(chain[:-1]), []).append(chain[-1])

    def card(key: str, parent: str | None) -> str:
        artifact = page.artifacts[key]
        if key in anchors:
            return (
                f'<div class="card same"><a href="#{anchors[key]}">{_e(artifact.name)}</a>'
                '<div class="muted">as above</div></div>'
            )
        anchors[key] = f"stage-{len(anchors)}"
        return _card(artifact, page.artifacts[parent] if parent else None, anchors[key])

    rows = []
    for prefix, leaves in groups.items():
        parts = [card(key, prefix[i - 1] if i else None) for i, key in enumerate(prefix)]
        last = prefix[-1] if prefix else None
        parts.append('<div class="branch">' + "".join(card(key, last) for key in leaves) + "</div>")
        rows.append('<div class="chain">' + '<div class="arrow">&rarr;</div>'.join(parts) + "</div>")
    note = (
        "Each row is a lineage, oldest first (parents as far as they are on disk), ending in the "
        "artifacts that share it (a grid's points side by side); a dashed card was shown above. "
        "Changes are against the previous stage. * as recorded."
    )
    return "".join(rows) + f'<p class="note">{_e(note)}</p>'


# ---------------------------------------------------------------- accuracy against score


def _split(artifacts: list[Artifact]) -> str | None:
    """test when every artifact with an accuracy and a score has a test accuracy, else val."""
    scored = [a for a in artifacts if a.row["score"] is not None]
    with_any = [a for a in scored if a.row["test_top1"] is not None or a.row["val_top1"] is not None]
    if not with_any:
        return None
    return "test" if all(a.row["test_top1"] is not None for a in with_any) else "val"


def _target(artifacts: list[Artifact]) -> tuple[float | None, str | None]:
    for artifact in artifacts:
        task = (artifact.score or {}).get("task") or {}
        if task:
            return task.get("accuracy_target"), task.get("label")
    return None, None


def _pareto(page: Page) -> str:
    from mncli.scaling.plot import draw_accuracy_score, place_labels

    order = dict.fromkeys([k for chain in page.chains for k in chain] + list(page.artifacts))
    artifacts = [page.artifacts[k] for k in order]  # along the lineages: a stage keeps its colour
    split = _split(artifacts)
    key = f"{split}_top1"
    plotted = [a for a in artifacts if split and a.row["score"] and a.row[key] is not None]
    if not plotted:
        return _empty("No artifact here has both a score and a recorded accuracy.")
    keys = [str(a.path.resolve()) for a in plotted]
    points = [
        {"score": a.row["score"], "acc": 100 * a.row[key], "label": a.name, "group": str(a.row["stage"])}
        for a in plotted
    ]
    links = [[keys.index(k) for k in chain if k in keys] for chain in page.chains]
    target, label = _target(plotted)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, 4.4))
    front = draw_accuracy_score(
        ax, points, target=target, links=[link for link in links if len(link) > 1],
        xlabel="MicroNet score (log axis)", ylabel=f"{split} top-1 (%)",
    )  # fmt: skip
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)
    fig.tight_layout()
    place_labels(ax, [p["score"] for p in points], [p["acc"] for p in points], [p["label"] for p in points])
    missing = [a.path.name for a in artifacts if a not in plotted]
    caption = (
        f"{split} top-1 as each manifest records it against the measured score"
        + (f" ({_e(label)})" if label else "")
        + "; grey lines follow each lineage; red: the Pareto front (nothing else is both cheaper and more "
        "accurate)"
        + (f"; green: the task's target, {target:g} %" if target is not None else "; the task has no target")
        + "."
        + (f" Not plotted (no score or no {split} accuracy): {_e(', '.join(missing))}." if missing else "")
    )
    figure = _figure(fig, "fig-pareto", caption, f"{split} top-1 against MicroNet score")
    rows = "".join(
        f"<tr>{_name_cell(plotted[i])}<td>{_e(fmt(points[i]['score'], Kind.SCORE))}</td>"
        f"<td>{points[i]['acc']:.2f} %</td></tr>"
        for i in front
    )
    table = (
        '<div class="scroll"><table><thead><tr><th class="text">on the Pareto front</th><th>score</th>'
        f"<th>{split} top-1*</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )
    return f'<div class="plots">{figure}<div>{table}</div></div>'


# ---------------------------------------------------------------- per layer


def _compared(page: Page) -> tuple[list[Artifact], list[Artifact]]:
    """(the artifacts compared layer by layer, those left out): the first artifact of each chain,
    then the last ones, a grid's collected output before its points; measured ones, at most
    COMPARED_MAX."""
    firsts = [chain[0] for chain in page.chains]
    lasts = sorted(
        (chain[-1] for chain in page.chains), key=lambda k: not _collected(page.artifacts[k].manifest)
    )
    measured = [
        page.artifacts[k] for k in dict.fromkeys(firsts + lasts) if page.artifacts[k].score is not None
    ]
    return measured[:COMPARED_MAX], measured[COMPARED_MAX:]


def _collected(manifest: dict) -> bool:
    """A grid's collected output: its manifest lists the grid's points."""
    return isinstance(manifest.get("grid"), dict) or isinstance(manifest.get("scale"), dict)


def _type_total(artifact: Artifact, kind: str, what: str) -> float:
    """Scored params, or ops (mults + adds), of the layers of one type."""
    rows = [layer for layer in artifact.score["layers"] if layer["type"] == kind]
    return sum(r["params"] if what == "params" else r["mults"] + r["adds"] for r in rows)


def _by_type(compared: list[Artifact], left_out: list[Artifact]) -> str:
    plt = _pyplot()
    types = list(dict.fromkeys(layer["type"] for a in compared for layer in a.score["layers"]))
    height = 1.8 + 1.1 * len(compared)
    fig, axes = plt.subplots(2, 1, figsize=(FIG_WIDTH, height))
    names = [a.name for a in compared]
    for ax, what in zip(axes, ("params", "ops"), strict=True):
        left = [0.0] * len(compared)
        for k, kind in enumerate(types):
            values = [_type_total(a, kind, what) for a in compared]
            if any(values):
                ax.barh(names, values, left=left, color=f"C{k % 10}", label=kind, height=0.6)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set_title(
            "scored parameters (bits/32)" if what == "params" else "scored operations (mults + adds)"
        )
        ax.xaxis.set_major_formatter(_si_formatter())
        ax.grid(True, axis="x", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = min(len(labels), 5)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8.5, frameon=False)
    legend_rows = -(-len(labels) // columns)
    fig.tight_layout(rect=(0, (0.1 + 0.22 * legend_rows) / height, 1, 1))
    caption = (
        "Where the parameters and operations go, by layer type, as the score counts them (each value at "
        "its bits, operations weighted by their bits), for the first and the last artifact of each lineage."
    )
    if left_out:
        caption += f" Left out (more than {COMPARED_MAX}): {_e(', '.join(a.name for a in left_out))}."
    return _figure(fig, "fig-layer-types", caption, "parameters and operations by layer type")


def _si_formatter():
    import matplotlib.ticker as ticker

    return ticker.FuncFormatter(lambda v, _: _si(v) if v else "0")


def _weight_layers(artifact: Artifact) -> list[dict]:
    return [layer for layer in artifact.score["layers"] if layer["weight_bits"] is not None]


def _per_layer(compared: list[Artifact]) -> str:
    """Weight bits and sparsity per layer of the artifacts with the first one's layers."""
    names = [layer["name"] for layer in _weight_layers(compared[0])]
    if not names:
        return _empty("No layer with weights to show.")
    series = [a for a in compared if [layer["name"] for layer in _weight_layers(a)] == names][:PER_LAYER_MAX]
    plt = _pyplot()
    height = 1.6 + 0.2 * len(names) * (1 + 0.25 * (len(series) - 1))
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(FIG_WIDTH, height))
    bar = 0.8 / len(series)
    for k, artifact in enumerate(series):
        layers = {layer["name"]: layer for layer in _weight_layers(artifact)}
        offsets = [p - 0.4 + bar * (k + 0.5) for p in range(len(names))]
        colour = PALETTE[k % len(PALETTE)]
        axes[0].barh(
            offsets, [layers[n]["weight_bits"] for n in names], height=bar, color=colour, label=artifact.name
        )
        axes[1].barh(offsets, [100 * (layers[n]["sparsity"] or 0.0) for n in names], height=bar, color=colour)
    axes[0].set_yticks(list(range(len(names))), names, fontsize=8 if len(names) > 30 else 9)
    axes[0].invert_yaxis()
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
    axes[0].set_title("weight bits")
    axes[1].set_xlim(0, 100)
    axes[1].set_title("weight zeros (%)")
    for ax in axes:
        ax.grid(True, axis="x", alpha=0.3)
    columns = min(len(series), 3)
    fig.legend(loc="lower center", ncol=columns, fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, (0.1 + 0.22 * -(-len(series) // columns)) / height, 1, 1))
    caption = (
        "Bits and sparsity of every layer with weights, before (the first artifact) and after compression."
    )
    left_out = [a.name for a in compared if a not in series]
    if left_out:
        caption += f" Not shown (other layers, or more than {PER_LAYER_MAX}): {_e(', '.join(left_out))}."
    return _figure(fig, "fig-layer-bits", caption, "weight bits and sparsity per layer")


def _bits(row: dict | None) -> str:
    if row is None or row["weight_format"] is None:
        return "-"
    return f"{row['weight_format']}/a{row['act_bits']}"


def _zeros(row: dict | None) -> str:
    return "-" if row is None or row["sparsity"] is None else fmt_pct(row["sparsity"])


def _params(row: dict | None) -> str:
    return "-" if row is None else f"{row['params']:,.2f}"


def _ops(row: dict | None) -> str:
    return "-" if row is None else f"{row['mults'] + row['adds']:,.0f}"


def _layer_table(before: Artifact, after: Artifact) -> str:
    rows_after = {layer["name"]: layer for layer in after.score["layers"]}
    head = (
        '<tr><th class="text">layer</th><th class="text">type</th><th>params</th><th>params after</th>'
        "<th>ops</th><th>ops after</th><th>weights</th><th>weights after</th><th>zeros</th>"
        "<th>zeros after</th></tr>"
    )
    body = []
    for layer in before.score["layers"]:
        other = rows_after.get(layer["name"])
        cells = [f(row) for f in (_params, _ops, _bits, _zeros) for row in (layer, other)]
        body.append(
            f'<tr><td class="text">{_e(layer["name"])}</td><td class="text">{_e(layer["type"])}</td>'
            + "".join(f"<td>{_e(c)}</td>" for c in cells)
            + "</tr>"
        )
    caption = (
        f"{_e(before.path.name)} (before) and {_e(after.path.name)} (after), layer by layer: scored "
        "parameters, operations, weight format / input activation bits, weight zeros."
    )
    return (
        f"<details><summary>Layer by layer: {_e(before.name)} and {_e(after.name)}</summary>"
        f'<p class="note">{caption}</p><div class="scroll"><table><thead>{head}</thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></details>"
    )


def _layers(page: Page) -> str:
    compared, left_out = _compared(page)
    if not compared:
        return _empty("No artifact here could be measured layer by layer.")
    parts = ['<div class="plots">', _by_type(compared, left_out), _per_layer(compared), "</div>"]
    before, after = compared[0], page.artifacts[page.chains[0][-1]]
    if after.score is not None and after is not before:
        parts.append(_layer_table(before, after))
    return "".join(parts)


# ---------------------------------------------------------------- training


VAL, TRAIN = "-", "--"  # line styles
CURVES = [  # (figure id, y label, [(record key, legend, style)], factor, title)
    ("fig-loss", "loss", [("val_loss", "validation", VAL), ("train_loss", "training", TRAIN)], 1,
     "loss per epoch"),
    ("fig-accuracy", "top-1 (%)", [("val_acc", "validation", VAL), ("train_acc", "training", TRAIN)], 100,
     "accuracy per epoch"),
    ("fig-sparsity", "weights pruned (%)",
     [("sparsity", "achieved", VAL), ("sparsity_target", "schedule", TRAIN)], 100,
     "pruning: the sparsity schedule (AGP's cubic ramp) and the zeros reached"),
    ("fig-zeros", "ternary zeros (%)", [("ternary_sparsity", "zero fraction", VAL)], 100,
     "ternarization: the fraction of ternary weights at zero (EC2T's grows with lambda_div)"),
]  # fmt: skip


def _placed(page: Page) -> tuple[list[tuple[int, list[dict]]], list[tuple[float, float, str]]]:
    """Each stage's records on one epoch axis per chain, a stage shared by several chains placed once
    (with the first): ([(chain index, records with their "x")], [(start, end, key) of every stage])."""
    segments, spans, seen = [], [], set()
    for c, chain in enumerate(page.chains):
        offset = 0
        for i, key in enumerate(chain):
            parent = page.artifacts[chain[i - 1]].manifest if i else None
            records, span = epoch_records(page.artifacts[key].manifest, parent)
            if span and (key, offset) not in seen:
                seen.add((key, offset))
                first = offset + span - len(records)
                segments.append((c, [{**r, "x": first + n + 1} for n, r in enumerate(records)]))
                spans.append((offset, offset + span, key))
            offset += span
    return segments, spans


def _curve(page: Page, segments, spans, spec) -> str | None:
    """One plot of CURVES, or None when no record holds its metrics."""
    from matplotlib.lines import Line2D

    ident, ylabel, metrics, factor, title = spec
    keys = [metric for metric, *_ in metrics]
    if not any(key in r for _, records in segments for r in records for key in keys):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(FIG_WIDTH, 3.8))
    for c, records in segments:
        for metric, _, style in metrics:
            points = [(r["x"], factor * r[metric]) for r in records if isinstance(r.get(metric), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                colour, marker = group_style(c)
                ax.plot(xs, ys, style, color=colour, marker=marker, ms=3, lw=1.4)
    centres = {}
    for start, end, key in spans:
        if start > 0:
            ax.axvline(start + 0.5, color="0.7", lw=0.8, zorder=0)
        centres.setdefault((start + end) / 2 + 0.5, str(page.artifacts[key].row["stage"]))
    ax.set_xlim(0.5, max(end for _, end, _ in spans) + 0.5)
    top = ax.secondary_xaxis("top")
    top.set_xticks(
        list(centres), list(centres.values()), fontsize=8.5, rotation=25 if len(centres) > 4 else 0
    )
    top.tick_params(length=0)
    handles = [Line2D([], [], color="0.2", ls=style, label=name) for _, name, style in metrics]
    if len(page.chains) > 1:
        for c, chain in enumerate(page.chains):
            colour, marker = group_style(c)
            label = page.artifacts[chain[-1]].name
            handles.append(Line2D([], [], color=colour, marker=marker, lw=3, label=label))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    if factor == 100 and ident != "fig-accuracy":
        ax.set_ylim(0, 100)
    ax.set_xlabel("epoch, counted along the lineage")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    caption = f"{_e(title[0].upper() + title[1:])}; one colour per lineage (named by its last artifact)."
    return _figure(fig, ident, caption, title)


def _training(page: Page) -> str:
    segments, spans = _placed(page)
    figures = [f for f in (_curve(page, segments, spans, spec) for spec in CURVES) if f is not None]
    recorded = {spans[n][2] for n, (_, records) in enumerate(segments) if records}
    silent = [
        f"{page.artifacts[key].path.name} ({end - start} epoch{'' if end - start == 1 else 's'})"
        for start, end, key in spans
        if key not in recorded
    ]
    note = (
        "Per-epoch records as the manifests hold them: the training loop's history (train, search, "
        "ternarize), the pruning schedule (prune)."
        + (f" No per-epoch record in: {', '.join(dict.fromkeys(silent))}." if silent else "")
    )
    if not figures:
        return _empty("No manifest here holds per-epoch records.") + f'<p class="note">{_e(note)}</p>'
    return '<div class="plots">' + "".join(figures) + f'</div><p class="note">{_e(note)}</p>'


# ---------------------------------------------------------------- conventions and claims


def _conventions(page: Page) -> str:
    measured = [a for a in page.artifacts.values() if a.score is not None]
    parts = []
    if measured:
        report = measured[0].score
        base = report["baseline"]
        parts.append(
            f"<p>score = params / {base['params']:,.0f} + ops / {base['ops']:,.0f}, the constants of "
            f"{_e(base['name'])}; task {_e(report['task']['label'])}. Counted as <code>mncli score</code> "
            "counts with its defaults:</p>"
        )
        items = "".join(
            f'<tr><td class="text">{_e(k.replace("_", " "))}</td><td class="text">{_e(v)}</td></tr>'
            for k, v in report["conventions"].items()
        )
        parts.append(f'<div class="scroll"><table class="wrap"><tbody>{items}</tbody></table></div>')
    head = (
        '<tr><th class="text">artifact</th><th class="text">counted from</th><th>params</th><th>ops</th>'
        '<th>score</th><th class="text">accuracies</th><th class="text">manifest</th></tr>'
    )
    body = []
    for artifact in page.artifacts.values():
        row = artifact.row
        if row["measured_from"] is None:
            source = f"not measured ({row['not_measured']}): the manifest's numbers"
        else:
            source = {"weights": "its weights", "architecture": "its architecture (no weights)"}[
                row["measured_from"]
            ]
        claims = []
        for key, kind in zip(MEASURED_KEYS, (Kind.INT, Kind.INT, Kind.SCORE), strict=True):
            if key in row["claims_differ"] or row["measured_from"] is None:
                verdict = ""
            else:
                verdict = '<span class="claim muted">as claimed</span>'
            claims.append(f"<td>{_cell(row, key, kind)}{verdict}</td>")
        accuracies = (
            f"test {fmt_pct(row['test_top1'])}, val {fmt_pct(row['val_top1'])}: recorded, not measured"
        )
        notes = (artifact.score or {}).get("claims") or []
        extra = f'<br><span class="flag">{_e("; ".join(notes))}</span>' if notes else ""
        body.append(
            f'<tr>{_name_cell(artifact)}<td class="text">{_e(source)}{extra}</td>'
            f'{"".join(claims)}<td class="text">{_e(accuracies)}</td>'
            f'<td class="text">{_cell(row, "manifest", Kind.TEXT)}</td></tr>'
        )
    parts.append(
        "<p>What was measured here and what is the manifests' word: params, ops and score are counted "
        "again from each artifact's weights (or its architecture, for an artifact without weights) and "
        "compared with what its manifest claims; accuracies are the manifests' records, which "
        "<code>mncli verify ART --reproduce</code> measures; <em>EDITED</em> marks a manifest changed "
        "after it was written.</p>"
    )
    parts.append(
        f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(body)}</tbody></table></div>'
    )
    return "".join(parts)


# ---------------------------------------------------------------- the page


def render(page: Page) -> str:
    """The whole page as one string."""
    anchors: dict[str, str] = {}
    bodies = {
        "summary": _summary(page),
        "lineage": _lineage(page, anchors),
        "pareto": _pareto(page),
        "layers": _layers(page),
        "training": _training(page),
        "conventions": _conventions(page),
    }
    nav = "".join(f'<a href="#{ident}">{_e(title)}</a>' for ident, title in SECTIONS.items())
    sections = "".join(
        f'<section id="{ident}"><h2>{_e(SECTIONS[ident])}</h2>{body}</section>'
        for ident, body in bodies.items()
    )
    names = ", ".join(Path(a.path).name for a in page.given)
    count = len(page.given)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>mncli report: {_e(names)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>mncli report</h1><div class="muted">{count} artifact{"s" if count > 1 else ""}: '
        f"{_e(names)} &middot; mncli {_e(__version__)}</div><nav>{nav}</nav></header>"
        f"<main>{sections}</main></body></html>\n"
    )
