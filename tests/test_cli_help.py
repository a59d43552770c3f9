"""Every command's --help reads well at 80 columns, and every training command takes every training option."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields

import pytest
import typer

from mncli.cli.app import COMMANDS, app
from mncli.stages.training import TrainOptions

TRAINING_COMMANDS = ["train", "prune", "ternarize", "quantize", "search", "scale"]


def _commands():
    return typer.main.get_command(app).commands


def _help(command: str) -> str:
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, "-m", "mncli", command, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_paragraphs_are_one_line_each_so_the_terminal_wraps_them(command):
    text = _commands()[command].help
    for paragraph in text.split("\n\n"):
        lines = paragraph.strip("\n").split("\n")
        prose = [line for line in lines if line and not line.startswith("  ")]
        assert len(prose) <= 1, f"{command}: a paragraph broken by hand: {paragraph!r}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_shows_no_type_tags_and_readable_arguments(command):
    text = _help(command)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<bool>" not in text and "{inp}" not in text and " inp " not in text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    arguments = usage.split("[OPTIONS]", 1)[1].split()
    assert all(arg.strip("[]{}.").isupper() for arg in arguments), usage


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_every_training_command_takes_every_training_option(command):
    params = {p.name: p for p in _commands()[command].params}
    for field in fields(TrainOptions):
        assert field.name in params, f"{command} has no {field.metadata['flags'][0]}"
        param = params[field.name]
        assert set(field.metadata["flags"][0].split("/")[0:1]) <= set(param.opts)
        assert getattr(param, "rich_help_panel", None) == field.metadata["panel"]


def test_a_training_option_has_one_meaning_everywhere():
    helps = {}
    for command in TRAINING_COMMANDS:
        for param in _commands()[command].params:
            if param.name == "resume":
                helps.setdefault(param.help, []).append(command)
    assert len(helps) == 1, helps


@pytest.mark.parametrize("flag", ["-q", "-v", "--quiet", "--verbose"])
def test_verbosity_flags_work_after_the_subcommand(flag, run_cli):
    run = run_cli("models", "--json", flag)
    assert run.code == 0
    assert run.out.lstrip().startswith("{")


def test_quiet_after_the_subcommand_silences_logs(run_cli):
    from mncli.log import is_quiet, set_verbosity

    try:
        assert run_cli("models", "-q").code == 0
        assert is_quiet()
    finally:
        set_verbosity()


def test_training_options_hand_the_command_one_trainoptions_with_its_defaults():
    from typer.testing import CliRunner

    from mncli.cli.options import training_options

    seen = {}
    demo = typer.Typer()

    @demo.command()
    @training_options(epochs=3, lr=None, help_lr="Peak LR (default: the method's).")
    def run(name: str = "x", *, train: TrainOptions) -> None:
        seen.update(name=name, train=train)

    runner = CliRunner()
    assert runner.invoke(demo, ["--name", "y", "--milestones", "2,4", "--no-nesterov"]).exit_code == 0
    train = seen["train"]
    assert seen["name"] == "y" and train.epochs == 3 and train.lr is None and train.seed == 0
    assert train.milestones == (2.0, 4.0) and train.nesterov is False
    assert runner.invoke(demo, []).exit_code == 0
    assert seen["train"].nesterov is None and seen["train"].milestones is None
    assert "the method's" in runner.invoke(demo, ["--help"]).output
    bad = runner.invoke(demo, ["--milestones", "2,x"])
    assert bad.exit_code != 0
