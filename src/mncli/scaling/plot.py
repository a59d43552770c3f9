"""Accuracy against MicroNet score: the scaling grid's PNG, and the drawing `mncli report` shares.

`draw_accuracy_score` puts points on a log score axis, marks their Pareto front (no other point has
a lower score and a higher accuracy), draws the task's accuracy target and labels every point where
its label overlaps no other label or point (`place_labels`: the first free spot of a few around the
point, then further out with a leader line). matplotlib is imported by the callers, lazily.
"""

from __future__ import annotations

from pathlib import Path

from mncli.log import log

# Where a label may go, in points from its point: (dx, dy, horizontal and vertical alignment);
# the close ring first, then the same directions further out (drawn with a leader line).
_NEAR = [(5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
         (-5, -4, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top")]  # fmt: skip
_RINGS = (1, 3, 5, 8)
# Colours of groups and series: matplotlib's own cycle without red and green, which mark the Pareto
# front and the accuracy target.
PALETTE = ["C0", "C1", "C4", "C5", "C6", "C9", "C8", "C7"]
# Past the palette's last colour, groups take the next marker shape, so no two groups look alike.
MARKERS = ["o", "s", "^", "D", "v", "P"]


def group_style(k: int) -> tuple[str, str]:
    """The colour and marker of the k-th group: every colour with circles, then with squares, ..."""
    return PALETTE[k % len(PALETTE)], MARKERS[k // len(PALETTE) % len(MARKERS)]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (score, accuracy) points no other point beats on both (lower score, higher
    accuracy), by increasing score."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def label_box(annotation, renderer):
    """Where an annotation's text is drawn, without its leader line (display coordinates)."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def place_labels(ax, xs: list[float], ys: list[float], labels: list[str], fontsize: float = 9) -> None:
    """Annotate each point with its label where it overlaps neither another label, a point nor the
    legend and stays inside the axes; when no spot is free, the last (farthest) one. Call it once the axes'
    limits and the figure's layout are final."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(list(zip(xs, ys, strict=True)))
    radius = 4 * ax.figure.dpi / 72
    taken = [(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]
    if ax.get_legend() is not None:
        legend = ax.get_legend().get_window_extent(renderer)
        taken.append((legend.x0, legend.y0, legend.x1, legend.y1))

    def free(box) -> bool:
        inside = box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
        return inside and not any(
            box.x0 < x1 and box.x1 > x0 and box.y0 < y1 and box.y1 > y0 for x0, y0, x1, y1 in taken
        )

    for i in sorted(range(len(labels)), key=lambda i: -centres[i][1]):
        text = None
        for ring in _RINGS:
            for dx, dy, ha, va in _NEAR:
                if text is not None:
                    text.remove()
                arrow = {"arrowstyle": "-", "color": "0.5", "lw": 0.6} if ring > 1 else None
                text = ax.annotate(
                    labels[i], (xs[i], ys[i]), xytext=(dx * ring, dy * ring), textcoords="offset points",
                    ha=ha, va=va, fontsize=fontsize, arrowprops=arrow, zorder=4,
                )  # fmt: skip
                box = label_box(text, renderer)
                if free(box):
                    break
            else:
                continue
            break
        box = label_box(text, renderer)
        taken.append((box.x0, box.y0, box.x1, box.y1))


def draw_accuracy_score(
    ax,
    points: list[dict],
    *,
    target: float | None = None,
    links: list[list[int]] = (),
    chosen: int | None = None,
    xlabel: str = "MicroNet score (log)",
    ylabel: str = "top-1 (%)",
) -> list[int]:
    """Draw `points` ({"score", "acc" in %, "label", "group"}) on `ax`: one colour per group, lines
    along each of `links` (index lists, e.g. a chain's stages), the Pareto front, the target, a ring
    on `chosen`. Returns the front's indices. Labels are placed by `place_labels` afterwards."""
    import matplotlib.ticker as ticker

    xs = [p["score"] for p in points]
    ys = [p["acc"] for p in points]
    for link in links:
        ax.plot([xs[i] for i in link], [ys[i] for i in link], color="0.75", lw=1, zorder=1)
    groups = list(dict.fromkeys(p["group"] for p in points))
    for k, group in enumerate(groups):
        colour, marker = group_style(k)
        members = [i for i, p in enumerate(points) if p["group"] == group]
        ax.scatter(
            [xs[i] for i in members], [ys[i] for i in members], color=colour, marker=marker, s=28,
            zorder=3, label=group,
        )  # fmt: skip
    front = pareto_front(list(zip(xs, ys, strict=True)))
    if len(front) > 1:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red", lw=1.2,
                alpha=0.7, zorder=2, label="Pareto front")  # fmt: skip
    ring = None if len(front) > 1 else "Pareto front"  # a front of one point is its ring alone
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=110, facecolors="none",
               edgecolors="tab:red", linewidths=1.2, zorder=3, label=ring)  # fmt: skip
    if chosen is not None:
        ax.scatter([xs[chosen]], [ys[chosen]], marker="*", s=180, color="gold", edgecolors="k",
                   linewidths=0.6, zorder=4, label="chosen")  # fmt: skip
    if target is not None:
        ax.axhline(target, color="tab:green", ls="--", lw=1.2, zorder=1, label=f"target {target:g} %")
    ax.set_xscale("log")
    low, high = min(xs), max(xs)
    ax.set_xlim(low / 1.35, high * 1.35)
    values = ys + ([target] if target is not None else [])
    pad = max(1.0, 0.08 * (max(values) - min(values)))
    ax.set_ylim(min(values) - pad, max(values) + pad)
    if high / low < 30:  # less than a decade and a half: label 1-2-5 ticks, not only the decades
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    return front


def plot_grid(points: list[dict], choice: int | None, path: Path, title: str) -> Path | None:
    """Write a PNG of accuracy vs score of the trained points; None (with a log line) without matplotlib.
    Points are labelled by their number; their alpha, beta, gamma are listed beside the plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install 'mncli[plot]')")
        return None
    trained = [p for p in points if p.get("status") == "trained" and p.get("val_acc") is not None]
    if not trained:
        return None
    shown = [
        {
            "score": p["score"]["score"],
            "acc": 100 * p["val_acc"],
            "label": str(p["point"]),
            "group": "grid point",
        }
        for p in trained
    ]
    task = trained[0]["score"].get("task")
    target = task.get("accuracy_target") if isinstance(task, dict) else None
    name = task.get("name", "cifar100") if isinstance(task, dict) else task or "cifar100"
    chosen = next((i for i, p in enumerate(trained) if p["point"] == choice), None)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    draw_accuracy_score(
        ax, shown, target=target, chosen=chosen, xlabel=f"MicroNet score ({name} constants, log)",
        ylabel="validation top-1 (%)",
    )  # fmt: skip
    legend = "\n".join(
        f"{p['point']}: a={p['alpha']:g} b={p['beta']:g}" + (f" g={p['gamma']:g}" if p["gamma"] != 1 else "")
        for p in trained
    )
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.75, 1))
    fig.text(0.77, 0.9, legend, va="top", ha="left", fontsize=7, family="monospace")
    place_labels(ax, [p["score"] for p in shown], [p["acc"] for p in shown], [p["label"] for p in shown])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
