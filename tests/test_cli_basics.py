"""The command line as a whole: every command is there, documented with an example, and errors are
one line with the right exit code."""

import subprocess
import sys

import pytest

from mncli.cli.app import COMMANDS


def test_help_lists_every_command(run_cli):
    result = run_cli("--help")
    assert result.code == 0
    for name in COMMANDS:
        assert name in result.out, name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name, run_cli):
    result = run_cli(name, "--help")
    assert result.code == 0
    text = result.out
    assert "Example" in text or "example" in text, f"`mncli {name} --help` shows no example"
    assert "mncli " + name in text


def test_help_does_not_import_torch():
    code = "import sys; from mncli.cli.app import main; main(['--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("False")


def test_unknown_option_exits_2_without_traceback(run_cli):
    result = run_cli("inspect", "--no-such-option")
    assert result.code == 2
    assert "Traceback" not in result.err


def test_missing_file_is_one_line_exit_2(tmp_path, run_cli):
    result = run_cli("inspect", tmp_path / "missing.safetensors")
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "missing.safetensors" in result.err


def test_version(run_cli):
    result = run_cli("--version")
    assert result.code == 0 and result.out.startswith("mncli ")


READ_ONLY = ["models", "inspect", "verify", "import", "export", "eval", "score", "report"]


@pytest.mark.parametrize("name", READ_ONLY)
def test_help_paragraphs_are_single_lines(name):
    """Each paragraph of the help is one line of text (the terminal wraps it), examples each their own."""
    import importlib

    text = importlib.import_module(f"mncli.cli.cmd_{name}").HELP
    for paragraph in text.strip().split("\n\n"):
        assert "\n" not in paragraph, paragraph


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["eval", "missing.safetensors", "--split", "tset"], "--split"),
        (["export", "missing.safetensors", "-o", "m.pt", "--format", "onxx"], "--format"),
        (["score", "--arch", "resnet20", "--ternary-mults", "sparse"], "--ternary-mults"),
    ],
)
def test_a_typo_in_a_choice_exits_2_while_parsing(run_cli, argv, option):
    result = run_cli(*argv)
    assert result.code == 2
    err = result.err
    assert option in err and argv[-1] in err and "not found" not in err
