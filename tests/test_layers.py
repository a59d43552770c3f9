"""The layer contract of docs/architecture.md, checked with import-linter over the real import graph."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
]


def _lint(src: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*LINT, str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        cwd=src,
        timeout=120,
    )


def test_the_package_keeps_its_layers():
    result = _lint(ROOT / "src")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_the_cli_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "mncli", tmp_path / "mncli")
    loop = tmp_path / "mncli" / "engine" / "loop.py"
    loop.write_text(loop.read_text() + "\nfrom mncli.cli import output  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "mncli.engine.loop -> mncli.cli.output" in result.stdout
