"""The plot of a scaling grid: validation accuracy against MicroNet score, the choice marked."""

from __future__ import annotations

from pathlib import Path

from mncli.log import log


def plot_grid(points: list[dict], choice: int | None, path: Path, title: str) -> Path | None:
    """Write a PNG of accuracy vs score of the trained points; None (with a log line) without matplotlib."""
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
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    xs = [p["score"]["score"] for p in trained]
    ys = [100 * p["val_acc"] for p in trained]
    ax.scatter(xs, ys, color="tab:blue", zorder=2)
    for p, x, y in zip(trained, xs, ys, strict=True):
        label = f"{p['point']}: a={p['alpha']:g} b={p['beta']:g}" + (
            f" g={p['gamma']:g}" if p["gamma"] != 1 else ""
        )
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    chosen = [p for p in trained if p["point"] == choice]
    if chosen:
        ax.scatter(
            [chosen[0]["score"]["score"]],
            [100 * chosen[0]["val_acc"]],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=2,
            zorder=3,
            label="chosen",
        )
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"MicroNet score ({trained[0]['score'].get('task', 'cifar100')} constants, fp32)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
