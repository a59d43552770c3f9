"""Collect runs of the Fashion-MNIST chain (examples/fashion_mnist.yaml) into one result file and the
accuracy/score picture.

    .venv/bin/python bench/fashion_mnist_chain.py RUN_DIR [RUN_DIR ...]
        [--out bench/results/fashion_mnist_chain.json] [--plot bench/results/fashion_mnist_front.png]

Each RUN_DIR is a folder `reproduce/run.py examples/fashion_mnist.yaml --dir RUN_DIR` finished (its
summary.json); its run is added to the result file, in place of an earlier run of the same name and
seed, and the file's other runs are kept. A run whose steps ran the recipe's commands (today's
recipe, at the run's seed) is the recipe; any other is a variant, named by the options its commands
had otherwise, with the `--set` options that run it again; the runs already in the file are named
again each time, so a change of the recipe renames them. The result file holds, per run, that
command line, the commands its steps ran, each step's test top-1, parameters, ops, score and wall
time, and whether the target was met; for the recipe's own runs also the mean and spread of the
final accuracy and score over seeds. The picture has one point per step and run (test top-1 against
score), the steps of a run joined by a line, the recipe's seeds in one colour and each variant in
its own, with the Pareto front and the accuracy target.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "reproduce"))
import run as recipe_runner  # noqa: E402
from machine import cpu_name  # noqa: E402

from mncli.artifact.tempfiles import output_lock  # noqa: E402
from mncli.host import available_cores  # noqa: E402
from mncli.log import log  # noqa: E402
from mncli.stages.export import atomic_write  # noqa: E402

RECIPE = "examples/fashion_mnist.yaml"


def options_of(argv: list[str]) -> dict[str, str | bool | list[str]]:
    """`[train, --epochs, 20, --ptq, --arch-opt, a=1, --arch-opt, b=2]` -> {--epochs: "20", --ptq: True,
    --arch-opt: [a=1, b=2]}: the options of a step's command (its command name and input path left out)."""
    options: dict = {}
    tokens = list(argv[1:])
    while tokens and not tokens[0].startswith("-"):
        tokens.pop(0)  # the input artifact
    while tokens:
        flag = tokens.pop(0)
        value = tokens.pop(0) if tokens and not tokens[0].startswith("--") else True
        if flag in options:
            before = options[flag]
            options[flag] = [*(before if isinstance(before, list) else [before]), value]
        else:
            options[flag] = value
    return options


def differences(summary: dict, recipe) -> dict[str, dict]:
    """What each step of a run did otherwise than `recipe` (today's) does at the same seed: the --set
    options that make the recipe run it (None: an option the run did not have)."""
    plan = recipe_runner.Runner(recipe, Path(summary["dir"]), seed=summary.get("random_seed"))
    ran = {row["id"]: shlex.split(row["command"])[1:] for row in summary["steps"]}
    changed: dict[str, dict] = {}
    for step in plan.steps:
        ours, theirs = options_of(plan.settings(step)), options_of(ran[step.id])
        diff = {flag: value for flag, value in theirs.items() if ours.get(flag) != value}
        diff.update({flag: None for flag in ours if flag not in theirs})
        if diff:
            changed[step.id] = diff
    return changed


def variant_name(changed: dict) -> str:
    """`ternarize --lambda-div 0.2, quantize --epochs 4` for {"ternarize": {"--lambda-div": "0.2"}, ...}."""
    parts = []
    for step, options in changed.items():
        shown = []
        for flag, value in options.items():
            shown.append(flag if value is True else f"{flag} {'(none)' if value is None else value}")
        parts.append(f"{step} {' '.join(shown)}")
    return ", ".join(parts) or "recipe"


def command_of(summary: dict, changed: dict) -> str:
    """The command line that makes this run with today's recipe."""
    words = [".venv/bin/python reproduce/run.py", RECIPE, "--dir", summary["dir"]]
    if summary.get("random_seed") is not None:
        words += ["--seed", str(summary["random_seed"])]
    for step, options in changed.items():
        for flag, value in options.items():
            shown = {None: "null", True: "true"}.get(value, value) if not isinstance(value, str) else value
            words.append(f"--set {step}:{flag}={shown}")
    return " ".join(words)


def name_and_command(summary: dict, recipe) -> dict:
    """{"name", "command"} of a run against `recipe` (today's)."""
    changed = differences(summary, recipe)
    return {"name": variant_name(changed), "command": command_of(summary, changed)}


def run_record(summary: dict, recipe) -> dict:
    return {
        **name_and_command(summary, recipe),
        "seed": summary.get("random_seed"),
        "ran": {row["id"]: row["command"] for row in summary["steps"]},
        "steps": [
            {
                "label": row["label"],
                "step": row["step"],
                "test_top1": row.get("accuracy"),
                "params": row.get("params"),
                "ops": row.get("ops"),
                "score": row.get("score"),
                "seconds": row.get("step_seconds"),
                "claims": row.get("claims"),
            }
            for row in summary["scores"]
        ],
        "chain_seconds": summary["chain_seconds"],
        "target_met": summary.get("target_met"),
        "date": date.today().isoformat(),
        "machine": {"cpu": cpu_name(), "cores": available_cores()},
    }


def renamed(record: dict, recipe) -> dict:
    """A stored run named and given its command again against `recipe` (today's): a run that was the
    recipe when it was added becomes the variant it is now, and a variant the recipe took up becomes
    the recipe."""
    words = shlex.split(record["command"])
    folder = words[words.index("--dir") + 1]
    summary = {
        "dir": folder,
        "random_seed": record["seed"],
        "steps": [{"id": step, "command": command} for step, command in record["ran"].items()],
    }
    return {**record, **name_and_command(summary, recipe)}


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def collect(dirs: list[Path], previous: dict | None, note: str | None = None) -> dict:
    """The result file: the runs it held before (`previous`), each renamed against today's recipe, each
    run of `dirs` added in place of an earlier one of the same name and seed, and the spread over the
    recipe's seeds recomputed."""
    recipe = recipe_runner.load_recipe(ROOT / RECIPE)
    renamed_runs = (renamed(record, recipe) for record in (previous or {}).get("runs", []))
    runs = list({(r["name"], r["seed"]): r for r in renamed_runs}.values())  # two that are one now: the later
    target = (previous or {}).get("target")
    for folder in dirs:
        path = folder / "summary.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"error: {path}: {exc} (run the chain into {folder} first)") from None
        if summary.get("smoke"):
            continue
        record = run_record(summary, recipe)
        if note:
            record["note"] = note
        runs = [r for r in runs if (r["name"], r["seed"]) != (record["name"], record["seed"])] + [record]
        target = summary.get("target")
    recipe_runs = sorted((r for r in runs if r["name"] == "recipe"), key=lambda r: r["seed"] or 0)
    result = {"benchmark": "fashion_mnist_chain", "recipe": RECIPE, "target": target, "runs": runs}
    if recipe_runs:
        finals = [r["steps"][-1] for r in recipe_runs]
        result["recipe_over_seeds"] = {
            "seeds": [r["seed"] for r in recipe_runs],
            "final_test_top1": spread([f["test_top1"] for f in finals]),
            "final_score": spread([f["score"] for f in finals]),
            "chain_minutes": spread([r["chain_seconds"] / 60 for r in recipe_runs]),
            "target_met": sum(all(r["target_met"].values()) for r in recipe_runs),
        }
    return result


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no picture (pip install 'mncli[plot]')")
        return None
    from mncli.scaling.plot import draw_accuracy_score, place_labels

    seeds = [
        str(seed) for seed in sorted(run["seed"] or 0 for run in result["runs"] if run["name"] == "recipe")
    ]
    recipe_group = f"recipe, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
    points, links = [], []
    # the recipe's seeds first, so they take the first colour whatever order the runs were added in
    for run in sorted(result["runs"], key=lambda r: (r["name"] != "recipe", r["seed"] or 0)):
        group = recipe_group if run["name"] == "recipe" else run["name"]
        link = []
        for step in run["steps"]:
            if step["score"] is None or step["test_top1"] is None:
                continue
            link.append(len(points))
            label = f"s{run['seed']} {step['label']}"
            points.append({"score": step["score"], "acc": step["test_top1"], "group": group, "label": label})
        links.append(link)
    if not points:
        return None
    target = result.get("target") or {}
    groups = len({p["group"] for p in points})
    fig, ax = plt.subplots(figsize=(9.0, 4.6 + 0.16 * (groups + 3)), dpi=120)  # the legend below
    draw_accuracy_score(
        ax, points, target=target.get("accuracy"), links=links,
        xlabel="MicroNet score (cifar100 constants, log)", ylabel="test top-1 (%)",
    )  # fmt: skip
    if target.get("score") is not None:
        ax.axvline(target["score"], color="tab:green", ls=":", lw=1.2, label=f"score {target['score']:g}")
    ax.set_title("Fashion-MNIST chain: test top-1 against score, one point per step and run", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), fontsize=7, frameon=False)
    fig.tight_layout()
    named = [p for p in points if p["group"] == recipe_group]  # variants: by the legend alone
    xs, ys = [p["score"] for p in named], [p["acc"] for p in named]
    place_labels(ax, xs, ys, [p["label"] for p in named], fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda partial: fig.savefig(partial, format="png"))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run folders holding summary.json")
    parser.add_argument("--out", type=Path, default=Path("bench/results/fashion_mnist_chain.json"))
    parser.add_argument("--plot", type=Path, default=Path("bench/results/fashion_mnist_front.png"))
    parser.add_argument("--note", help="how these runs were made (e.g. two side by side), kept with each")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(args.out):  # two runs ending together: each adds its run to what the other wrote
        previous = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else None
        result = collect(args.dirs, previous, args.note)
        text = json.dumps(result, indent=1) + "\n"
        atomic_write(args.out, lambda partial: Path(partial).write_text(text, encoding="utf-8"))
    log(f"wrote {args.out}")
    if plot(result, args.plot):
        log(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
