"""The CPU precision default follows what the processor really has: oneDNN emulates bf16 on AVX-512
processors without the bf16 instructions, and emulated bf16 autocast trains slower than fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from mncli.engine import runtime
from mncli.errors import BadInput


@pytest.fixture
def cpu(monkeypatch):
    """Set what oneDNN says and which flags the processor shows."""

    def set_cpu(onednn: bool, flags: set[str] | None):
        monkeypatch.setattr(runtime, "onednn_bf16", lambda: onednn)
        monkeypatch.setattr(runtime, "cpu_flags", lambda: None if flags is None else frozenset(flags))

    return set_cpu


@pytest.mark.parametrize(
    ("onednn", "flags", "expected"),
    [
        (True, {"avx512f", "avx512_bf16"}, "bf16"),  # AMD EPYC (Zen 4), Intel Cooper Lake
        (True, {"avx512f", "amx_bf16", "amx_tile"}, "bf16"),  # Intel Sapphire Rapids
        (True, {"fp", "asimd", "bf16"}, "bf16"),  # Arm with the BF16 extension
        (True, {"avx512f", "avx512bw", "avx512vl"}, "fp32"),  # AVX-512 only: oneDNN emulates bf16
        (False, {"avx2"}, "fp32"),
        (True, None, "bf16"),  # no /proc/cpuinfo: oneDNN's word
    ],
    ids=["avx512_bf16", "amx", "arm-bf16", "emulated", "avx2", "no-flags"],
)
def test_auto_precision_on_cpu_is_bf16_only_where_it_is_native(cpu, onednn, flags, expected):
    cpu(onednn, flags)
    assert runtime.configure("cpu", "auto").describe()["precision"] == expected


def test_bf16_asked_for_runs_where_onednn_emulates_it_and_is_refused_where_it_cannot(cpu):
    cpu(True, {"avx512f"})
    assert runtime.configure("cpu", "bf16").describe()["precision"] == "bf16"
    cpu(False, {"avx2"})
    with pytest.raises(BadInput, match="cannot run bfloat16"):
        runtime.configure("cpu", "bf16")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo on this system")
def test_cpu_flags_are_read_from_this_machine():
    flags = runtime.cpu_flags()
    assert flags and flags <= set(Path("/proc/cpuinfo").read_text().split())
