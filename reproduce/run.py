"""Run a 2019 MicroNet entry's published pipeline through mncli's stages, as its recipe file says.

    .venv/bin/python reproduce/run.py reproduce/ec2t-cifar100.yaml [--dir DIR] [--smoke]
        [--data-dir D] [--download] [--dry-run]

Each step of the recipe is one `mncli COMMAND` in a subprocess (`python -m mncli` of this Python),
reading the artifact of the step it names as `input` and writing DIR/<id>.safetensors. The runner adds
what every step shares: `--dataset` (the recipe's), `--data-dir` and `--download` (yours), `--resume`
and `-o`. DIR/<id>.step.json records the command a step was started with; a step whose output passes
`mncli verify` and was finished by the same command is skipped. Any other step runs with `--resume`,
so an interrupted one continues from its checkpoint (from the start when its command changed). A
failing step stops the run with its exit code. Then each convention of `scores:` is `mncli score
--json` of a step's artifact, and a table of mncli's accuracy and scores beside the seed's published
figures is printed and written to DIR/summary.json.

--smoke writes the small CIFAR-100 of smoke_data.py into DIR/data, reads the data from there and
applies the recipe's `smoke:` overrides: the same commands in the same order, a few steps each.
The recipe format is described in reproduce/README.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from smoke_data import FOLDER, write_smoke_cifar100

from mncli.errors import BadInput
from mncli.log import log, warn
from mncli.stages.export import atomic_write
from mncli.text import fmt_num

# The mncli commands a step may run: each reads a dataset, trains (or calibrates) and writes `-o`.
STEP_COMMANDS = ("train", "scale", "search", "prune", "ternarize", "quantize")
# Options the runner sets itself, on every step (and --json on every score).
RUNNER_OPTIONS = {
    "-o", "--out", "-d", "--dataset", "--data-dir", "--download", "--resume", "--json", "-n",
    "--no-clobber", "-q", "--quiet",
}  # fmt: skip
RECIPE_KEYS = {"name", "seed", "dataset", "steps", "scores", "published", "smoke"}
SMOKE_KEYS = {"data", "all_steps", "steps"}


@dataclass
class Step:
    id: str
    command: str
    args: dict | list
    input: str | None


@dataclass
class Convention:
    label: str
    step: str
    args: dict | list


@dataclass
class Recipe:
    path: Path
    name: str
    seed: str
    dataset: str
    steps: list[Step]
    scores: list[Convention]
    published: dict
    smoke: dict

    def smoke_steps(self) -> list[Step]:
        """The steps with the `smoke:` overrides applied: `all_steps` to every step, then the step's own
        (an override of null drops the option)."""
        every = self.smoke.get("all_steps") or {}
        own = self.smoke.get("steps") or {}
        return [
            Step(s.id, s.command, merge_args(merge_args(s.args, every), own.get(s.id) or {}), s.input)
            for s in self.steps
        ]


# --- the recipe file


def load_recipe(path: Path) -> Recipe:
    """Read and check a recipe; any mistake is a BadInput naming the file and what is wrong."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise BadInput(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None

    def bad(message: str, hint: str | None = None) -> BadInput:
        return BadInput(f"recipe {path}: {message}", hint=hint or "see reproduce/README.md")

    if not isinstance(data, dict):
        raise bad("not a mapping of name, seed, dataset, steps, scores, published")
    unknown = sorted(set(data) - RECIPE_KEYS)
    missing = sorted(RECIPE_KEYS - {"smoke"} - set(data))
    if unknown or missing:
        raise bad(f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}")
    for key in ("name", "seed", "dataset"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise bad(f"{key} must be a non-empty string")
    if not _plain_name(data["name"]):
        raise bad("name must be letters, digits, - or _ (it names the output folder)")

    steps = _read_steps(data["steps"], bad)
    scores = _read_scores(data["scores"], {s.id for s in steps}, bad)
    _check_published(data["published"], {c.label for c in scores}, bad)
    smoke = data.get("smoke") or {}
    _check_smoke(smoke, {s.id for s in steps}, bad)
    return Recipe(path, data["name"], data["seed"], data["dataset"], steps, scores, data["published"], smoke)


def _read_steps(value, bad) -> list[Step]:
    steps: list[Step] = []
    for index, raw in enumerate(_list_of_mappings(value, "steps", bad)):
        step = Step(
            str(raw.get("id", "")), str(raw.get("command", "")), raw.get("args") or {}, raw.get("input")
        )
        where = f"step {index + 1} ({step.id or 'no id'})"
        unknown = sorted(set(raw) - {"id", "command", "args", "input"})
        if unknown:
            raise bad(f"{where}: unknown key {unknown[0]!r}")
        if not _plain_name(step.id):
            raise bad(f"{where}: id must be letters, digits, - or _ (it names DIR/<id>.safetensors)")
        if step.id in {s.id for s in steps}:
            raise bad(f"{where}: id {step.id!r} is used twice")
        if step.command not in STEP_COMMANDS:
            raise bad(f"{where}: command {step.command!r} is not a stage", hint=", ".join(STEP_COMMANDS))
        if step.input is not None and step.input not in {s.id for s in steps}:
            raise bad(f"{where}: input {step.input!r} is not the id of an earlier step")
        check_args(step.args, where, bad)
        steps.append(step)
    if not steps:
        raise bad("no steps")
    return steps


def _read_scores(value, ids: set[str], bad) -> list[Convention]:
    scores: list[Convention] = []
    for raw in _list_of_mappings(value, "scores", bad):
        convention = Convention(str(raw.get("label", "")), str(raw.get("step", "")), raw.get("args") or {})
        where = f"score {convention.label or 'without a label'}"
        unknown = sorted(set(raw) - {"label", "step", "args"})
        if unknown:
            raise bad(f"{where}: unknown key {unknown[0]!r}")
        if not convention.label or convention.label in {c.label for c in scores}:
            raise bad(f"{where}: every score needs its own label")
        if convention.step not in ids:
            raise bad(f"{where}: step {convention.step!r} is not a step of the recipe")
        check_args(convention.args, where, bad)
        if isinstance(convention.args, dict) and any(isinstance(v, dict) for v in convention.args.values()):
            raise bad(f"{where}: score options take values, not mappings")
        scores.append(convention)
    if not scores:
        raise bad("no scores")
    return scores


def _check_published(published, labels: set[str], bad) -> None:
    if not isinstance(published, dict) or not isinstance(published.get("source"), str):
        raise bad("published needs a source (where its figures come from)")
    unknown = sorted(set(published) - {"source", "accuracy", "scores", "verified_score", "figures"})
    if unknown:
        raise bad(f"published: unknown key {unknown[0]!r}")
    for key in ("accuracy", "verified_score"):
        if not _number_or_null(published.get(key)):
            raise bad(f"published {key} must be a number or null")
    scores = published.get("scores") or {}
    if not isinstance(scores, dict) or set(scores) - labels or not all(map(_number_or_null, scores.values())):
        raise bad("published scores must map labels of `scores:` to numbers (or null)")
    if not isinstance(published.get("figures") or {}, dict):
        raise bad("published figures must be a mapping of names to figures")


def _check_smoke(smoke, ids: set[str], bad) -> None:
    if not isinstance(smoke, dict) or set(smoke) - SMOKE_KEYS:
        raise bad(f"smoke holds only {', '.join(sorted(SMOKE_KEYS))}")
    check_args(smoke.get("all_steps") or {}, "smoke all_steps", bad, mapping_only=True)
    own = smoke.get("steps") or {}
    if not isinstance(own, dict) or set(own) - ids:
        raise bad("smoke steps must map step ids to options")
    for step_id, overrides in own.items():
        check_args(overrides or {}, f"smoke of step {step_id}", bad, mapping_only=True)
    sizes = smoke.get("data") or {}
    if (
        not isinstance(sizes, dict)
        or set(sizes) - {"train_per_class", "test_per_class"}
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes.values())
    ):
        raise bad("smoke data takes train_per_class and test_per_class, whole numbers from 1")


def _plain_name(text: str) -> bool:
    return bool(text) and text.replace("-", "").replace("_", "").isalnum()


def _list_of_mappings(value, key: str, bad) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad(f"{key} must be a list of mappings")
    return value


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def check_args(args, where: str, bad, mapping_only: bool = False) -> None:
    """Options are a mapping of flags (or a list of argv tokens) that leaves the runner's own alone."""
    if isinstance(args, list) and not mapping_only:
        flags = [str(token) for token in args if str(token).startswith("-")]
    elif isinstance(args, dict):
        flags = [str(flag) for flag in args]
        for flag in flags:
            if not flag.startswith("-"):
                raise bad(f"{where}: option {flag!r} does not start with -", hint="e.g. --epochs: 20")
    else:
        raise bad(f"{where}: options must be a mapping of flags to values")
    reserved = [flag for flag in flags if flag.split("=")[0] in RUNNER_OPTIONS]
    if reserved:
        raise bad(f"{where}: {reserved[0]} is set by the runner", hint="drop it from the recipe")


def merge_args(args: dict | list, overrides: dict) -> dict | list:
    """`args` with `overrides` on top: a mapping is updated (null removes the option when it is turned
    into argv); a list of argv tokens gets the overrides after it, where the last value wins."""
    if not overrides:
        return args
    if isinstance(args, list):
        return [*args, *to_argv(overrides, {})]
    return {**args, **overrides}


def to_argv(args: dict | list, files: dict[str, Path]) -> list[str]:
    """Argv tokens of a step's options: `flag: true` is the flag alone, false or null leaves it out, a
    list repeats it, a mapping is the path in `files` it is written to, anything else its value."""
    if isinstance(args, list):
        return [str(token) for token in args]
    argv: list[str] = []
    for flag, value in args.items():
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif isinstance(value, dict):
            argv += [flag, str(files[flag])]
        else:
            argv += [flag, str(value)]
    return argv


def option_files(step: Step, out_dir: Path) -> dict[str, Path]:
    """Where the mapping-valued options of a step (a per-layer recipe) are written: DIR/<id>.<flag>.yaml."""
    if not isinstance(step.args, dict):
        return {}
    return {
        flag: out_dir / f"{step.id}.{flag.lstrip('-')}.yaml"
        for flag, value in step.args.items()
        if isinstance(value, dict)
    }


# --- running


class Child:
    """The mncli process running now. A SIGTERM to the runner is passed on to it (it saves a checkpoint
    and stops), and the runner stops once it has."""

    process: subprocess.Popen | None = None
    stopped_by: int | None = None

    @classmethod
    def forward(cls, signum, frame) -> None:
        cls.stopped_by = signum
        if cls.process is not None and cls.process.poll() is None:
            cls.process.send_signal(signum)
        else:
            raise Stopped(signum)


class Stopped(Exception):
    """The runner was told to stop (SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.code = 128 + signum


def call(argv: list[str], capture: bool = False) -> tuple[int, str]:
    """Run argv; its stderr (and its stdout unless captured) goes to ours. Returns (exit code, stdout).
    On Ctrl-C the child got the same SIGINT: wait for it to save its checkpoint, then stop."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE if capture else None, text=True)
    Child.process = process
    try:
        out, _ = process.communicate()
    except KeyboardInterrupt:
        process.wait()
        raise
    finally:
        Child.process = None
    if Child.stopped_by is not None:
        raise Stopped(Child.stopped_by)
    return process.returncode, out or ""


class Runner:
    def __init__(
        self,
        recipe: Recipe,
        out_dir: Path,
        *,
        smoke: bool = False,
        data_dir: Path | None = None,
        download: bool = False,
        dry_run: bool = False,
    ):
        if smoke and (data_dir is not None or download):
            raise BadInput("--smoke writes and reads its own data", hint="drop --data-dir and --download")
        self.recipe = recipe
        self.dir = Path(out_dir)
        self.smoke = smoke
        self.data_dir = self.dir / "data" if smoke else data_dir
        self.download = download
        self.dry_run = dry_run
        self.steps = recipe.smoke_steps() if smoke else recipe.steps
        self.mncli = [sys.executable, "-m", "mncli"]

    def artifact(self, step_id: str) -> Path:
        return self.dir / f"{step_id}.safetensors"

    def settings(self, step: Step, files: dict[str, Path]) -> list[str]:
        """The step's command line without where the data is and without --resume: what a re-run compares."""
        inputs = [str(self.artifact(step.input))] if step.input else []
        options = to_argv(step.args, files)
        out = ["-o", str(self.artifact(step.id))]
        return [step.command, *inputs, *options, "--dataset", self.recipe.dataset, *out]

    def data_options(self) -> list[str]:
        location = ["--data-dir", str(self.data_dir)] if self.data_dir is not None else []
        return location + (["--download"] if self.download else [])

    def score_command(self, convention: Convention) -> list[str]:
        artifact = str(self.artifact(convention.step))
        return [*self.mncli, "score", artifact, *to_argv(convention.args, {}), "--json"]

    # the parts of a run

    def print_plan(self) -> None:
        """--dry-run: every command, in order, and the files the runner would write for them."""
        if self.smoke:
            writer = [sys.executable, str(Path(__file__).with_name("smoke_data.py")), str(self.data_dir)]
            print(f"# smoke data: {shlex.join(writer)}")
        for step in self.steps:
            files = option_files(step, self.dir)
            for flag, path in files.items():
                text = _yaml(step.args[flag]).rstrip()
                print(f"# {path} ({flag}):\n" + "\n".join(f"#   {line}" for line in text.splitlines()))
            print(shlex.join([*self.mncli, *self.settings(step, files), *self.data_options(), "--resume"]))
        for convention in self.recipe.scores:
            print(shlex.join(self.score_command(convention)))

    def write_smoke_data(self) -> None:
        if (self.data_dir / FOLDER / "train").is_file():
            return
        sizes = self.recipe.smoke.get("data") or {}
        folder = write_smoke_cifar100(self.data_dir, **sizes)
        log(f"smoke data: {folder}")

    def verified(self, path: Path) -> bool:
        code, _ = call([*self.mncli, "verify", str(path), "-q"], capture=True)
        return code == 0

    def run_step(self, number: int, step: Step) -> dict:
        """Run one step unless it is done; returns its row for the summary, or raises StepFailed."""
        files = option_files(step, self.dir)
        contents = {str(path): step.args[flag] for flag, path in files.items()}
        settings = self.settings(step, files)
        record_path = self.dir / f"{step.id}.step.json"
        previous = _read_json(record_path)
        record = {"settings": settings, "files": contents}
        same = previous is not None and {key: previous.get(key) for key in record} == record
        out = self.artifact(step.id)
        name = f"step {number}/{len(self.steps)} {step.id}"
        if same and previous.get("done") and out.is_file() and self.verified(out):
            log(f"{name}: done before, {out} verified: skipped")
            return {"id": step.id, "command": shlex.join(["mncli", *settings]), "status": "skipped"}
        if previous is not None and not same:
            log(f"{name}: its command changed since the last run: starting it over")
        for flag, path in files.items():
            path.write_text(_yaml(step.args[flag]), encoding="utf-8")
        # --resume continues an interrupted step (without a checkpoint it starts from the beginning),
        # unless the command changed: its checkpoint would be another run's
        resume = ["--resume"] if previous is None or same else []
        argv = [*self.mncli, *settings, *self.data_options(), *resume]
        _write_json(record_path, {**record, "done": False})
        log(f"{name}: {shlex.join(['mncli', *argv[len(self.mncli) :]])}")
        started = time.monotonic()
        code, _ = call(argv)
        seconds = round(time.monotonic() - started, 1)
        if code != 0:
            raise StepFailed(name, step.command, code)
        _write_json(record_path, {**record, "done": True, "seconds": seconds})
        log(f"{name}: done in {seconds:g} s")
        return {
            "id": step.id,
            "command": shlex.join(["mncli", *settings]),
            "status": "ran",
            "seconds": seconds,
        }

    def score(self, convention: Convention) -> dict:
        argv = self.score_command(convention)
        row = {
            "label": convention.label,
            "step": convention.step,
            "command": shlex.join(["mncli", *argv[len(self.mncli) :]]),
            "published_score": (self.recipe.published.get("scores") or {}).get(convention.label),
        }
        code, out = call(argv, capture=True)
        if code != 0:
            warn(f"score {convention.label} failed with exit code {code}")
            return {**row, "exit_code": code}
        result = json.loads(out)
        accuracy = result.get("accuracy") or {}
        return {
            **row,
            "accuracy": accuracy.get("test_top1"),
            "score": result["score"],
            "params": result["params"],
            "ops": result["ops"],
            "mults": result["mults"],
            "adds": result["adds"],
            "storage_mb": result["storage_mb"],
            "conventions": result["conventions"],
            "claims": result["claims"],
        }

    def run(self) -> int:
        if self.dry_run:
            self.print_plan()
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.smoke:
            self.write_smoke_data()
        log(f"{self.recipe.name}: {len(self.steps)} steps into {self.dir}{' (smoke)' if self.smoke else ''}")
        rows = []
        try:
            for number, step in enumerate(self.steps, 1):
                rows.append(self.run_step(number, step))
        except StepFailed as failed:
            warn(f"{failed.name} (mncli {failed.command}) failed with exit code {failed.code}")
            log("the finished steps are kept: run the same command again to continue")
            return failed.code
        scores = [self.score(convention) for convention in self.recipe.scores]
        summary = {
            "recipe": self.recipe.name,
            "recipe_file": str(self.recipe.path),
            "seed": self.recipe.seed,
            "dataset": self.recipe.dataset,
            "smoke": self.smoke,
            "dir": str(self.dir),
            "steps": rows,
            "scores": scores,
            "published": self.recipe.published,
        }
        path = self.dir / "summary.json"
        _write_json(path, summary)
        print_table(summary)
        log(f"summary: {path}")
        failed = [row["exit_code"] for row in scores if "exit_code" in row]
        return failed[0] if failed else 0


class StepFailed(Exception):
    def __init__(self, name: str, command: str, code: int):
        super().__init__(name)
        self.name, self.command, self.code = name, command, code


def _yaml(value: dict) -> str:
    """A mapping option as the file the command reads (nested mappings inline, as a recipe writes them)."""
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=None)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict) -> None:
    """Written whole or not at all (through a temporary file renamed into place)."""
    text = json.dumps(data, indent=2) + "\n"
    atomic_write(path, lambda partial: Path(partial).write_text(text, encoding="utf-8"))


# --- the table


def _count(value: float | None) -> str:
    return "-" if value is None else fmt_num(round(value))


def _top1(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def print_table(summary: dict) -> None:
    """mncli's accuracy and score under each convention beside the seed's published figures."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    published = summary["published"]
    title = f"{summary['recipe']}{' (smoke)' if summary['smoke'] else ''}: mncli beside the published entry"
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold")
    for column in (
        "counting",
        "mncli top-1",
        "params",
        "ops",
        "score",
        "seed top-1",
        "seed score",
        "verified",
    ):
        table.add_column(column, justify="left" if column == "counting" else "right")
    for row in summary["scores"]:
        failed = "exit_code" in row
        table.add_row(
            row["label"],
            _top1(row.get("accuracy")),
            _count(row.get("params")),
            _count(row.get("ops")),
            f"failed ({row['exit_code']})" if failed else fmt_num(row["score"]),
            _top1(published.get("accuracy")),
            fmt_num(row["published_score"]),
            fmt_num(published.get("verified_score")),
        )
    console = Console() if sys.stdout.isatty() else Console(width=160)  # a file or pipe: no wrapping
    console.print(table)
    for row in summary["scores"]:
        console.print(f"  {row['label']}: {row['command']}", highlight=False, soft_wrap=True)
    for name, figure in (published.get("figures") or {}).items():
        console.print(f"  published {name}: {figure}", highlight=False, soft_wrap=True)
    console.print(f"  source: {published['source']}", highlight=False, soft_wrap=True)


# --- the command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a 2019 MicroNet entry's pipeline through mncli from its recipe file."
    )
    parser.add_argument("recipe", type=Path, help="the recipe, e.g. reproduce/ec2t-cifar100.yaml")
    parser.add_argument("--dir", type=Path, help="where the artifacts go (default runs/reproduce/NAME)")
    parser.add_argument(
        "--smoke", action="store_true", help="the same chain on a small CIFAR-100, a few steps"
    )
    parser.add_argument("--data-dir", type=Path, help="where the datasets are (default: mncli's search)")
    parser.add_argument(
        "--download", action="store_true", help="download CIFAR-100 with torchvision if missing"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, Child.forward)
    try:
        recipe = load_recipe(args.recipe)
        out_dir = args.dir or Path("runs") / ("reproduce-smoke" if args.smoke else "reproduce") / recipe.name
        runner = Runner(
            recipe, out_dir, smoke=args.smoke, data_dir=args.data_dir, download=args.download,
            dry_run=args.dry_run,
        )  # fmt: skip
        return runner.run()
    except BadInput as exc:
        print(f"error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print("stopped: run the same command again to continue", file=sys.stderr)
        return stopped.code


if __name__ == "__main__":
    raise SystemExit(main())
