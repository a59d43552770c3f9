"""Run a 2019 MicroNet entry's published pipeline through mncli's stages, as its recipe file says.

    .venv/bin/python reproduce/run.py reproduce/ec2t-cifar100.yaml [--dir DIR] [--smoke]
        [--data-dir D] [--download] [--input NAME=PATH ...] [--seed N] [--set STEP:OPTION=VALUE ...]
        [--dry-run]

Each step of the recipe is one `mncli COMMAND` in a subprocess (`python -m mncli` of this Python),
reading the artifact of the step it names as `input` and writing DIR/<id>.safetensors. The runner adds
what every stage step shares: `--dataset` (the recipe's), `--data-dir` and `--download` (yours),
`--resume` and `-o`; `--teacher` when the step names a teacher step. An `import` step imports one of
the checkpoints the recipe's `inputs:` names: the file `--input NAME=PATH` gives, or with --download
the published one fetched from its URL into DIR/inputs/ (nothing is downloaded without --download).
DIR/<id>.step.json records the command a step was started with and the hashes of the files it reads;
a step whose output passes `mncli verify` and was finished by the same command on the same files is
skipped. Any other step runs with `--resume`, so an interrupted one continues from its checkpoint
(from the start when its command or its inputs changed). A failing step stops the run with its exit
code. Then each convention of `scores:` is `mncli score --json` of a step's artifact, and a table of
mncli's accuracy and scores beside the seed's published figures is printed and written to
DIR/summary.json.

A recipe of our own chain (examples/fashion_mnist.yaml) has a `target:` instead of published figures:
the table then shows each step's accuracy, score and wall time and whether the target was met.
--seed N adds --seed N to every stage step; --set STEP:OPTION=VALUE changes one option of one step
(a variant of the recipe).

--smoke writes the recipe dataset's small stand-in of smoke_data.py into DIR/data (CIFAR-100's
pickles, an ImageFolder of JPEGs for imagenet, gzipped IDX files for fashion-mnist) and randomly
initialised checkpoints for the inputs into DIR/inputs/, reads them from there and applies the
recipe's `smoke:` overrides: the same commands in the same order, a few steps each. The recipe
format is described in reproduce/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from smoke_data import (
    FASHION_MNIST_FOLDER,
    FOLDER,
    IMAGENET_FOLDER,
    write_smoke_cifar100,
    write_smoke_efficientnet,
    write_smoke_fashion_mnist,
    write_smoke_imagenet,
)

from mncli.artifact import file_sha256
from mncli.errors import BadInput, MncliError, RuntimeFailure
from mncli.log import log, warn
from mncli.stages.export import atomic_write
from mncli.text import fmt_num

# The mncli stages a step may run: each reads a dataset, trains (or calibrates) and writes `-o`.
STEP_COMMANDS = ("train", "scale", "search", "prune", "ternarize", "quantize")
# The other kind of step: `mncli import CHECKPOINT -o ...` of one of the recipe's inputs (no data).
IMPORT = "import"
# Options the runner sets itself, on every step (and --json on every score).
RUNNER_OPTIONS = {
    "-o", "--out", "-d", "--dataset", "--data-dir", "--download", "--resume", "--json", "-n",
    "--no-clobber", "-q", "--quiet",
}  # fmt: skip
RECIPE_KEYS = {"name", "seed", "dataset", "inputs", "steps", "scores", "published", "target", "smoke"}
TARGET_KEYS = {"source", "label", "accuracy", "score", "minutes"}
STEP_KEYS = {"id", "command", "input", "teacher", "checkpoint", "files", "args"}
INPUT_KEYS = {"about", "url", "smoke_efficientnet"}
SMOKE_KEYS = {"data", "all_steps", "steps", "scores"}
# What `smoke: data:` may size, per dataset smoke_data.py writes (the keywords of its writer).
SMOKE_DATA = {
    "cifar100": {"train_per_class", "test_per_class"},
    "imagenet": {"classes", "train_per_class", "test_per_class", "image_size"},
    "fashion-mnist": {"train_per_class", "test_per_class"},
}
# imagenet: write_smoke_imagenet's default
SMOKE_CLASSES = {"cifar100": 100, "imagenet": 10, "fashion-mnist": 10}


@dataclass
class Step:
    id: str
    command: str
    args: dict | list
    input: str | None
    teacher: str | None = None  # the id of an earlier step whose artifact is --teacher
    checkpoint: str | None = None  # import: the name of the recipe input it imports
    files: dict[str, str] | None = None  # option -> a file beside the recipe, passed by its path


@dataclass
class Input:
    """A checkpoint the recipe starts from, which the user supplies (or --download fetches)."""

    name: str
    about: str
    url: str | None
    smoke_efficientnet: str | None

    @property
    def variable(self) -> str:
        """The make variable that gives it: B1 for b1."""
        return self.name.upper().replace("-", "_")


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
    inputs: dict[str, Input]
    steps: list[Step]
    scores: list[Convention]
    published: dict | None  # a 2019 entry's own figures
    target: dict | None  # or, for a chain of our own, what it is out to reach
    smoke: dict

    def smoke_steps(self) -> list[Step]:
        """The steps with the `smoke:` overrides applied: `all_steps` to every stage step (not to
        imports, which read no data), then the step's own (an override of null drops the option)."""
        every = self.smoke.get("all_steps") or {}
        own = self.smoke.get("steps") or {}
        return [
            replace(
                s,
                args=merge_args(
                    merge_args(s.args, every if s.command != IMPORT else {}), own.get(s.id) or {}
                ),
            )
            for s in self.steps
        ]

    def smoke_scores(self) -> list[Convention]:
        """The conventions with the `smoke: scores:` overrides of their labels applied."""
        own = self.smoke.get("scores") or {}
        return [replace(c, args=merge_args(c.args, own.get(c.label) or {})) for c in self.scores]


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
    missing = sorted(RECIPE_KEYS - {"inputs", "smoke", "published", "target"} - set(data))
    if unknown or missing:
        raise bad(f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}")
    if ("published" in data) == ("target" in data):
        raise bad("give either published (an entry's own figures) or target (what a chain is out to reach)")
    for key in ("name", "seed", "dataset"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise bad(f"{key} must be a non-empty string")
    if not _plain_name(data["name"]):
        raise bad("name must be letters, digits, - or _ (it names the output folder)")

    inputs = _read_inputs(data.get("inputs") or {}, bad)
    steps = _read_steps(data["steps"], inputs, path.parent, bad)
    scores = _read_scores(data["scores"], {s.id for s in steps}, bad)
    labels = {c.label for c in scores}
    if "published" in data:
        _check_published(data["published"], labels, bad)
    else:
        _check_target(data["target"], labels, bad)
    smoke = data.get("smoke") or {}
    _check_smoke(smoke, data["dataset"], {s.id for s in steps}, labels, bad)
    if smoke:
        lacking = [i.name for i in inputs.values() if i.smoke_efficientnet is None]
        if lacking:
            raise bad(f"input {lacking[0]} has no smoke_efficientnet, which --smoke writes in its place")
    return Recipe(
        path, data["name"], data["seed"], data["dataset"], inputs, steps, scores,
        data.get("published"), data.get("target"), smoke,
    )  # fmt: skip


def _read_inputs(value, bad) -> dict[str, Input]:
    if not isinstance(value, dict):
        raise bad("inputs must map names to {about, url, smoke_efficientnet}")
    inputs: dict[str, Input] = {}
    for name, raw in value.items():
        where = f"input {name}"
        if not isinstance(name, str) or not _plain_name(name):
            raise bad(f"{where}: the name must be letters, digits, - or _ (it names --input NAME=PATH)")
        if not isinstance(raw, dict) or set(raw) - INPUT_KEYS:
            raise bad(f"{where} holds only {', '.join(sorted(INPUT_KEYS))}")
        entry = Input(name, raw.get("about"), raw.get("url"), raw.get("smoke_efficientnet"))
        if not isinstance(entry.about, str) or not entry.about.strip():
            raise bad(f"{where} needs an about (what the checkpoint is, for the message when it is missing)")
        if entry.url is not None and not (isinstance(entry.url, str) and entry.url.startswith("https://")):
            raise bad(f"{where}: url must be an https:// address of the published file")
        smoke_name = entry.smoke_efficientnet
        if smoke_name is not None and not re.fullmatch(r"efficientnet-b[0-8]", str(smoke_name)):
            raise bad(
                f"{where}: smoke_efficientnet must be an efficientnet_pytorch name, e.g. efficientnet-b1"
            )
        inputs[name] = entry
    return inputs


def _read_steps(value, inputs: dict[str, Input], folder: Path, bad) -> list[Step]:
    steps: list[Step] = []
    for index, raw in enumerate(_list_of_mappings(value, "steps", bad)):
        step = Step(
            str(raw.get("id", "")),
            str(raw.get("command", "")),
            raw.get("args") or {},
            raw.get("input"),
            raw.get("teacher"),
            raw.get("checkpoint"),
            raw.get("files") or {},
        )
        where = f"step {index + 1} ({step.id or 'no id'})"
        unknown = sorted(set(raw) - STEP_KEYS)
        if unknown:
            raise bad(f"{where}: unknown key {unknown[0]!r}")
        if not _plain_name(step.id):
            raise bad(f"{where}: id must be letters, digits, - or _ (it names DIR/<id>.safetensors)")
        if step.id in {s.id for s in steps}:
            raise bad(f"{where}: id {step.id!r} is used twice")
        if step.command not in (*STEP_COMMANDS, IMPORT):
            raise bad(
                f"{where}: command {step.command!r} is not a stage", hint=", ".join((*STEP_COMMANDS, IMPORT))
            )
        for key in ("input", "teacher"):
            earlier = getattr(step, key)
            if earlier is not None and earlier not in {s.id for s in steps}:
                raise bad(f"{where}: {key} {earlier!r} is not the id of an earlier step")
        if step.command == IMPORT:
            if step.checkpoint not in inputs:
                raise bad(
                    f"{where}: an import names its checkpoint, one of the recipe's inputs",
                    hint="checkpoint: b1",
                )
            if step.input is not None or step.teacher is not None or step.files:
                raise bad(f"{where}: an import reads its checkpoint only (no input, teacher or files)")
        elif step.checkpoint is not None:
            raise bad(f"{where}: only an import step takes a checkpoint")
        check_args(step.args, where, bad)
        if _flags(step.args) & {"--teacher"}:
            raise bad(f"{where}: --teacher is set by the runner", hint="name the teacher's step: teacher: ID")
        step.files = _shipped_files(step, folder, where, bad)
        steps.append(step)
    if not steps:
        raise bad("no steps")
    unused = sorted(set(inputs) - {s.checkpoint for s in steps})
    if unused:
        raise bad(f"input {unused[0]} is imported by no step")
    return steps


def _shipped_files(step: Step, folder: Path, where: str, bad) -> dict[str, str]:
    """`files:` maps options to files beside the recipe: the same mapping with their absolute paths."""
    if not isinstance(step.files, dict):
        raise bad(f"{where}: files must map options to files beside the recipe", hint="--recipe: x.yaml")
    check_args(step.files, f"{where} files", bad, mapping_only=True)
    paths: dict[str, str] = {}
    for flag, name in step.files.items():
        if flag in _flags(step.args):
            raise bad(f"{where}: {flag} is in both args and files")
        path = folder / str(name)
        if not path.is_file():
            raise bad(f"{where}: {flag} file {path} not found", hint="files are named relative to the recipe")
        paths[flag] = str(path.resolve())
    return paths


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


def _check_target(target, labels: set[str], bad) -> None:
    """target: {source, label, accuracy, score, minutes}: the score `label` names must reach test top-1
    >= accuracy (%) at a score <= score, the whole run in <= minutes of wall time."""
    if not isinstance(target, dict) or not isinstance(target.get("source"), str):
        raise bad("target needs a source (who set it)")
    unknown = sorted(set(target) - TARGET_KEYS)
    if unknown:
        raise bad(f"target: unknown key {unknown[0]!r}")
    if target.get("label") not in labels:
        raise bad("target label must be the label of one of `scores:` (the one that must reach it)")
    for key in ("accuracy", "score", "minutes"):
        if not _number_or_null(target.get(key)):
            raise bad(f"target {key} must be a number or null")


def _check_smoke(smoke, dataset: str, ids: set[str], labels: set[str], bad) -> None:
    if not isinstance(smoke, dict) or set(smoke) - SMOKE_KEYS:
        raise bad(f"smoke holds only {', '.join(sorted(SMOKE_KEYS))}")
    if smoke and dataset not in SMOKE_DATA:
        raise bad(f"--smoke writes {' and '.join(SMOKE_DATA)} only, not {dataset}")
    check_args(smoke.get("all_steps") or {}, "smoke all_steps", bad, mapping_only=True)
    for key, known, what in (("steps", ids, "step ids"), ("scores", labels, "score labels")):
        own = smoke.get(key) or {}
        if not isinstance(own, dict) or set(own) - known:
            raise bad(f"smoke {key} must map {what} to options")
        for name, overrides in own.items():
            check_args(overrides or {}, f"smoke of {key[:-1]} {name}", bad, mapping_only=True)
    sizes = smoke.get("data") or {}
    allowed = SMOKE_DATA.get(dataset, set())
    if (
        not isinstance(sizes, dict)
        or set(sizes) - allowed
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes.values())
    ):
        raise bad(f"smoke data of {dataset} takes {', '.join(sorted(allowed))}, whole numbers from 1")


def _plain_name(text: str) -> bool:
    return bool(text) and text.replace("-", "").replace("_", "").isalnum()


def _list_of_mappings(value, key: str, bad) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise bad(f"{key} must be a list of mappings")
    return value


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _flags(args: dict | list) -> set[str]:
    """The option names in a step's options (`--x=1` counts as --x)."""
    tokens = args if isinstance(args, list) else list(args)
    return {str(token).split("=")[0] for token in tokens if str(token).startswith("-")}


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
        inputs: dict[str, Path] | None = None,
        dry_run: bool = False,
        seed: int | None = None,
        overrides: dict[str, dict] | None = None,
    ):
        if smoke and (data_dir is not None or download or inputs):
            raise BadInput(
                "--smoke writes and reads its own data and checkpoints",
                hint="drop --data-dir, --download and --input",
            )
        self.recipe = recipe
        self.dir = Path(out_dir)
        self.smoke = smoke
        self.data_dir = self.dir / "data" if smoke else data_dir
        self.download = download
        self.dry_run = dry_run
        self.random_seed = seed
        self.overrides = overrides or {}
        unknown = sorted(set(self.overrides) - {step.id for step in recipe.steps})
        if unknown:
            raise BadInput(
                f"--set {unknown[0]}: recipe {recipe.name} has no such step",
                hint=f"its steps: {', '.join(step.id for step in recipe.steps)}",
            )
        self.steps = [
            replace(step, args=merge_args(step.args, self.step_overrides(step)))
            for step in (recipe.smoke_steps() if smoke else recipe.steps)
        ]
        self.scores = recipe.smoke_scores() if smoke else recipe.scores
        self.inputs = self.input_files(inputs or {})
        self.mncli = [sys.executable, "-m", "mncli"]

    def step_overrides(self, step: Step) -> dict:
        """What the command line puts on top of a step's options: --seed on every stage step, then --set."""
        seed = {"--seed": self.random_seed} if self.random_seed is not None and step.command != IMPORT else {}
        return {**seed, **self.overrides.get(step.id, {})}

    def input_files(self, given: dict[str, Path]) -> dict[str, dict]:
        """Where each of the recipe's inputs is read from, and how it gets there: given (--input),
        downloaded (--download: DIR/inputs/<the URL's file name>) or smoke (DIR/inputs/<name>.pth).
        One BadInput names every input that is neither given nor downloadable."""
        unknown = sorted(set(given) - set(self.recipe.inputs))
        if unknown:
            known = ", ".join(self.recipe.inputs) or "none"
            raise BadInput(
                f"recipe {self.recipe.name} has no input {unknown[0]}", hint=f"its inputs: {known}"
            )
        files: dict[str, dict] = {}
        missing: list[Input] = []
        for name, entry in self.recipe.inputs.items():
            if self.smoke:
                files[name] = {"path": self.dir / "inputs" / f"{name}.pth", "from": "smoke"}
            elif name in given:
                if not Path(given[name]).is_file():
                    raise BadInput(f"input {name}: {given[name]} is not a file", hint=entry.about)
                files[name] = {"path": Path(given[name]).resolve(), "from": "given"}
            elif self.download and entry.url:
                files[name] = {"path": self.dir / "inputs" / entry.url.rsplit("/", 1)[-1], "from": "download"}
            else:
                missing.append(entry)
        if missing:
            needs = "; ".join(
                f"{i.name}, {i.about}: give {i.variable}=PATH to make (--input {i.name}=PATH to run.py)"
                for i in missing
            )
            urls = ", ".join(i.url for i in missing if i.url)
            raise BadInput(
                f"recipe {self.recipe.name} needs {needs}",
                hint=f"or DOWNLOAD=1 (--download) to fetch the published {urls} into DIR/inputs/"
                if urls
                else None,
            )
        return files

    def artifact(self, step_id: str) -> Path:
        return self.dir / f"{step_id}.safetensors"

    def settings(self, step: Step) -> list[str]:
        """The step's command line without where the data is and without --resume: what a re-run compares
        (a mapping-valued option is the file `option_files` names for it)."""
        out = ["-o", str(self.artifact(step.id))]
        options = to_argv(step.args, option_files(step, self.dir))
        if step.command == IMPORT:
            return [step.command, str(self.inputs[step.checkpoint]["path"]), *options, *out]
        inputs = [str(self.artifact(step.input))] if step.input else []
        shipped = to_argv(step.files or {}, {})
        teacher = ["--teacher", str(self.artifact(step.teacher))] if step.teacher else []
        return [step.command, *inputs, *options, *shipped, *teacher, "--dataset", self.recipe.dataset, *out]

    def data_options(self) -> list[str]:
        location = ["--data-dir", str(self.data_dir)] if self.data_dir is not None else []
        return location + (["--download"] if self.download else [])

    def command_line(self, step: Step, resume: bool = True) -> list[str]:
        """The whole argv of a step: a stage also gets the data options and --resume; an import neither."""
        if step.command == IMPORT:
            return [*self.mncli, *self.settings(step)]
        return [
            *self.mncli,
            *self.settings(step),
            *self.data_options(),
            *(["--resume"] if resume else []),
        ]

    def read_files(self, step: Step) -> list[Path]:
        """The files a step reads besides its options: its input and teacher artifacts, or its checkpoint."""
        if step.command == IMPORT:
            return [Path(self.inputs[step.checkpoint]["path"])]
        return [self.artifact(s) for s in (step.input, step.teacher) if s]

    def score_command(self, convention: Convention) -> list[str]:
        artifact = str(self.artifact(convention.step))
        return [*self.mncli, "score", artifact, *to_argv(convention.args, {}), "--json"]

    # the parts of a run

    def print_plan(self) -> None:
        """--dry-run: every command, in order, and the files the runner would write for them."""
        if self.smoke:
            writer = [sys.executable, str(Path(__file__).with_name("smoke_data.py")), str(self.data_dir)]
            sizes = self.recipe.smoke.get("data") or {}
            writer += ["--dataset", self.recipe.dataset]
            writer += [f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()]
            print(f"# smoke data: {shlex.join(writer)}")
        for name, source in self.inputs.items():
            entry = self.recipe.inputs[name]
            classes = self.smoke_classes()
            how = {
                "smoke": f"a random efficientnet_pytorch {entry.smoke_efficientnet}, {classes} classes",
                "given": "given",
                "download": f"downloaded from {entry.url}",
            }[source["from"]]
            print(f"# input {name}: {source['path']} ({how})")
        for step in self.steps:
            files = option_files(step, self.dir)
            for flag, path in files.items():
                text = _yaml(step.args[flag]).rstrip()
                print(f"# {path} ({flag}):\n" + "\n".join(f"#   {line}" for line in text.splitlines()))
            print(shlex.join(self.command_line(step)))
        for convention in self.scores:
            print(shlex.join(self.score_command(convention)))

    def smoke_classes(self) -> int:
        sizes = self.recipe.smoke.get("data") or {}
        return sizes.get("classes", SMOKE_CLASSES[self.recipe.dataset])

    def write_smoke_data(self) -> None:
        sizes = self.recipe.smoke.get("data") or {}
        if self.recipe.dataset == "imagenet":
            if not (self.data_dir / IMAGENET_FOLDER / "train").is_dir():
                log(f"smoke data: {write_smoke_imagenet(self.data_dir, **sizes)}")
        elif self.recipe.dataset == "fashion-mnist":
            if not (self.data_dir / FASHION_MNIST_FOLDER / "t10k-labels-idx1-ubyte.gz").is_file():
                log(f"smoke data: {write_smoke_fashion_mnist(self.data_dir, **sizes)}")
        elif not (self.data_dir / FOLDER / "train").is_file():
            log(f"smoke data: {write_smoke_cifar100(self.data_dir, **sizes)}")
        for name, source in self.inputs.items():
            if not source["path"].is_file():
                arch = self.recipe.inputs[name].smoke_efficientnet
                write_smoke_efficientnet(source["path"], arch, self.smoke_classes())
                log(f"smoke input {name}: {source['path']} (random {arch})")

    def fetch_inputs(self) -> None:
        """--download: each input that is neither given nor there yet, from its URL (torch.hub)."""
        for name, source in self.inputs.items():
            if source["from"] != "download" or source["path"].is_file():
                continue
            from torch.hub import download_url_to_file

            url = self.recipe.inputs[name].url
            log(f"input {name}: downloading {url}")
            source["path"].parent.mkdir(parents=True, exist_ok=True)
            try:
                download_url_to_file(url, str(source["path"]))
            except Exception as exc:  # noqa: BLE001 - network errors come in many types
                raise RuntimeFailure(
                    f"downloading input {name} from {url} failed: {exc}",
                    hint=f"fetch it by hand and give {self.recipe.inputs[name].variable}=PATH",
                ) from None

    def verified(self, path: Path) -> bool:
        code, _ = call([*self.mncli, "verify", str(path), "-q"], capture=True)
        return code == 0

    def run_step(self, number: int, step: Step) -> dict:
        """Run one step unless it is done; returns its row for the summary, or raises StepFailed."""
        files = option_files(step, self.dir)
        contents = {str(path): step.args[flag] for flag, path in files.items()}
        contents.update(
            {path: Path(path).read_text(encoding="utf-8") for path in (step.files or {}).values()}
        )
        settings = self.settings(step)
        record_path = self.dir / f"{step.id}.step.json"
        previous = _read_json(record_path)
        record = {"settings": settings, "files": contents}
        same = previous is not None and {key: previous.get(key) for key in record} == record
        # what it reads: a step after one that ran again runs again too
        reads = {str(path): file_sha256(path) for path in self.read_files(step)}
        read_before = previous is not None and previous.get("reads", reads) == reads
        out = self.artifact(step.id)
        name = f"step {number}/{len(self.steps)} {step.id}"
        if same and read_before and previous.get("done") and out.is_file() and self.verified(out):
            log(f"{name}: done before, {out} verified: skipped")
            return {
                "id": step.id,
                "command": shlex.join(["mncli", *settings]),
                "status": "skipped",
                "seconds": previous.get("seconds"),  # when it ran
            }
        if previous is not None and not same:
            log(f"{name}: its command changed since the last run: starting it over")
        elif previous is not None and not read_before:
            log(f"{name}: the files it reads changed since the last run: starting it over")
        for flag, path in files.items():
            path.write_text(_yaml(step.args[flag]), encoding="utf-8")
        # --resume continues an interrupted step (without a checkpoint it starts from the beginning),
        # unless the command or what it reads changed: its checkpoint would be another run's
        argv = self.command_line(step, resume=previous is None or (same and read_before))
        _write_json(record_path, {**record, "reads": reads, "done": False})
        log(f"{name}: {shlex.join(['mncli', *argv[len(self.mncli) :]])}")
        started = time.monotonic()
        code, _ = call(argv)
        seconds = round(time.monotonic() - started, 1)
        if code != 0:
            raise StepFailed(name, step.command, code)
        _write_json(record_path, {**record, "reads": reads, "done": True, "seconds": seconds})
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
            "published_score": ((self.recipe.published or {}).get("scores") or {}).get(convention.label),
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

    def input_record(self) -> dict:
        """What summary.json says of each input: where it was read from, how it got there, its hash."""
        return {
            name: {
                "path": str(source["path"]),
                "from": source["from"],
                "sha256": file_sha256(source["path"]),
                "about": self.recipe.inputs[name].about,
                "url": self.recipe.inputs[name].url,
            }
            for name, source in self.inputs.items()
        }

    def run(self) -> int:
        if self.dry_run:
            self.print_plan()
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.smoke:
            self.write_smoke_data()
        self.fetch_inputs()
        log(f"{self.recipe.name}: {len(self.steps)} steps into {self.dir}{' (smoke)' if self.smoke else ''}")
        started = time.monotonic()
        rows = []
        try:
            for number, step in enumerate(self.steps, 1):
                rows.append(self.run_step(number, step))
        except StepFailed as failed:
            warn(f"{failed.name} (mncli {failed.command}) failed with exit code {failed.code}")
            log("the finished steps are kept: run the same command again to continue")
            return failed.code
        seconds = {row["id"]: row.get("seconds") for row in rows}
        scores = [{**self.score(c), "step_seconds": seconds[c.step]} for c in self.scores]
        summary = {
            "recipe": self.recipe.name,
            "recipe_file": str(self.recipe.path),
            "seed": self.recipe.seed,
            "dataset": self.recipe.dataset,
            "smoke": self.smoke,
            "dir": str(self.dir),
            "random_seed": self.random_seed,
            "overrides": self.overrides,
            "inputs": self.input_record(),
            "steps": rows,
            "scores": scores,
            # every step's seconds when it ran (in this run or an earlier one), and this run's own
            "chain_seconds": round(sum(s or 0 for s in seconds.values()), 1),
            "run_seconds": round(time.monotonic() - started, 1),
            "published": self.recipe.published,
            "target": self.recipe.target,
        }
        if self.recipe.target is not None:
            summary["target_met"] = target_met(self.recipe.target, summary)
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


def target_met(target: dict, summary: dict) -> dict:
    """Whether the run reached each part of its target: the accuracy and score of the score row the
    target's label names, and the chain's wall time (the seconds of every step, when it ran)."""
    row = next(r for r in summary["scores"] if r["label"] == target["label"])
    accuracy, score, minutes = row.get("accuracy"), row.get("score"), summary["chain_seconds"] / 60
    checks = {}
    if target.get("accuracy") is not None:
        checks["accuracy"] = accuracy is not None and accuracy >= target["accuracy"]
    if target.get("score") is not None:
        checks["score"] = score is not None and score <= target["score"]
    if target.get("minutes") is not None:
        checks["minutes"] = minutes <= target["minutes"]
    return checks


def _measured(row: dict) -> list[str]:
    """mncli's figures of a score row: test top-1, params, ops, score."""
    failed = "exit_code" in row
    return [
        _top1(row.get("accuracy")),
        _count(row.get("params")),
        _count(row.get("ops")),
        f"failed ({row['exit_code']})" if failed else fmt_num(row["score"]),
    ]


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def print_table(summary: dict) -> None:
    """mncli's accuracy and score under each convention beside the seed's published figures; for a
    chain with a target, each step's accuracy, score and wall time, and whether the target is met."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    published, target = summary.get("published"), summary.get("target")
    title = f"{summary['recipe']}{' (smoke)' if summary['smoke'] else ''}"
    if target is None:
        title += ": mncli beside the published entry"
        columns = ["counting", "mncli top-1", "params", "ops", "score"]
        columns += ["seed top-1", "seed score", "verified"]
        rows = [
            [row["label"], *_measured(row), _top1(published.get("accuracy")), fmt_num(row["published_score"]),
             fmt_num(published.get("verified_score"))]
            for row in summary["scores"]
        ]  # fmt: skip
    else:
        if summary.get("random_seed") is not None:
            title += f", seed {summary['random_seed']}"
        columns = ["score of", "step", "test top-1", "params", "ops", "score", "step wall time"]
        rows = [
            [row["label"], row["step"], *_measured(row), _minutes(row.get("step_seconds"))]
            for row in summary["scores"]
        ]
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold")
    for column in columns:
        table.add_column(column, justify="left" if column in ("counting", "score of", "step") else "right")
    for row in rows:
        table.add_row(*row)
    console = Console() if sys.stdout.isatty() else Console(width=160)  # a file or pipe: no wrapping
    console.print(table)
    lines = [f"{row['label']}: {row['command']}" for row in summary["scores"]]
    if target is None:
        lines += [f"published {name}: {figure}" for name, figure in (published.get("figures") or {}).items()]
        lines.append(f"source: {published['source']}")
    else:
        lines += [target_verdict(target, summary), f"target set by: {target['source']}"]
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def target_verdict(target: dict, summary: dict) -> str:
    wanted = []
    if target.get("accuracy") is not None:
        wanted.append(f"test top-1 >= {target['accuracy']:.2f} %")
    if target.get("score") is not None:
        wanted.append(f"score <= {fmt_num(target['score'])}")
    if target.get("minutes") is not None:
        wanted.append(f"in <= {target['minutes']:g} min")
    missed = [key for key, ok in summary["target_met"].items() if not ok]
    verdict = "met" if not missed else f"not met ({', '.join(missed)})"
    return (
        f"target ({target['label']}): {', '.join(wanted)}: {verdict}; the steps took "
        f"{_minutes(summary['chain_seconds'])}, this run {_minutes(summary['run_seconds'])}"
    )


# --- the command line


def parse_overrides(pairs: list[str]) -> dict[str, dict]:
    """--set STEP:OPTION=VALUE (repeatable): VALUE read as YAML (true: the flag alone, null: drop it)."""
    overrides: dict[str, dict] = {}
    for pair in pairs:
        step, colon, rest = pair.partition(":")
        flag, equals, value = rest.partition("=")
        if not colon or not equals or not step or not flag.startswith("-"):
            raise BadInput(f"--set {pair!r} is not STEP:OPTION=VALUE", hint="e.g. --set prune:--sparsity=0.6")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        overrides.setdefault(step, {})[flag] = parsed

    def bad(message: str, hint: str | None = None) -> BadInput:
        return BadInput(f"--set {message}", hint=hint)

    for step, options in overrides.items():
        check_args(options, step, bad, mapping_only=True)
    return overrides


def parse_inputs(pairs: list[str]) -> dict[str, Path]:
    """--input NAME=PATH, each name once."""
    inputs: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise BadInput(f"--input {pair!r} is not NAME=PATH", hint="e.g. --input b1=efficientnet-b1.pth")
        if name in inputs:
            raise BadInput(f"--input {name} is given twice")
        inputs[name] = Path(path)
    return inputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a 2019 MicroNet entry's pipeline through mncli from its recipe file."
    )
    parser.add_argument("recipe", type=Path, help="the recipe, e.g. reproduce/ec2t-cifar100.yaml")
    parser.add_argument("--dir", type=Path, help="where the artifacts go (default runs/reproduce/NAME)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the same chain on small data and random checkpoints it writes, a few steps",
    )
    parser.add_argument("--data-dir", type=Path, help="where the datasets are (default: mncli's search)")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download what is missing: CIFAR with torchvision, the recipe's inputs from their URLs",
    )
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="the checkpoint for one of the recipe's inputs (repeatable), e.g. b1=efficientnet-b1.pth",
    )
    parser.add_argument(
        "--seed", type=int, help="the random seed of every stage step (--seed N added to each)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STEP:OPTION=VALUE",
        help="change one option of one step (repeatable; null drops it), e.g. prune:--sparsity=0.6",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, Child.forward)
    try:
        recipe = load_recipe(args.recipe)
        out_dir = args.dir or Path("runs") / ("reproduce-smoke" if args.smoke else "reproduce") / recipe.name
        runner = Runner(
            recipe, out_dir, smoke=args.smoke, data_dir=args.data_dir, download=args.download,
            inputs=parse_inputs(args.input), dry_run=args.dry_run,
            seed=args.seed, overrides=parse_overrides(args.set),
        )  # fmt: skip
        return runner.run()
    except MncliError as exc:
        print(f"error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    except Stopped as stopped:
        print("stopped: run the same command again to continue", file=sys.stderr)
        return stopped.code


if __name__ == "__main__":
    raise SystemExit(main())
