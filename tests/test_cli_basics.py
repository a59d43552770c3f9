"""The command line as a whole: every command is there, documented with an example, and errors are
one line with the right exit code."""

import subprocess
import sys

import pytest

from mncli.cli.app import COMMANDS, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "mncli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout, name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name, capsys):
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example" in text or "example" in text, f"`mncli {name} --help` shows no example"
    assert "mncli " + name in text


def test_help_does_not_import_torch():
    code = "import sys; from mncli.cli.app import main; main(['--help']); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("False")


def test_unknown_option_exits_2_without_traceback():
    result = run("inspect", "--no-such-option")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_missing_file_is_one_line_exit_2(tmp_path):
    result = run("inspect", str(tmp_path / "missing.safetensors"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing.safetensors" in result.stderr


def test_version():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("mncli ")
