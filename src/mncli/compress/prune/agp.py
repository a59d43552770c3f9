"""Automated gradual pruning (Zhu & Gupta 2017), on Distiller's cubic schedule.

Pruning steps fall every `freq` units (epochs or optimiser steps) from `start` while below `end`:

    span = ((end - start - 1) // freq) * freq
    s(t) = s_f + (s_i - s_f) * (1 - (t - start) / span)^3

so the first step prunes to s_i and the last one (at start + span) reaches s_f exactly. Between
steps the target holds; after the last one the mask is fixed and training fine-tunes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mncli.errors import BadInput


@dataclass(frozen=True)
class AGPSchedule:
    final: float
    initial: float = 0.05
    start: int = 0
    end: int = 1
    freq: int = 1
    unit: str = "epochs"  # or "steps"

    def __post_init__(self) -> None:
        if not 0.0 <= self.final < 1.0:
            raise BadInput(f"sparsity {self.final} is outside [0, 1)", hint="e.g. --sparsity 0.8")
        if not 0.0 <= self.initial < 1.0:
            raise BadInput(f"initial sparsity {self.initial} is outside [0, 1)")
        if self.unit not in ("epochs", "steps"):
            raise BadInput(f"unknown schedule unit {self.unit!r}", hint="use --unit epochs or --unit steps")
        if self.start < 0 or self.end <= self.start:
            raise BadInput(
                f"AGP needs 0 <= start < end, got start {self.start}, end {self.end}",
                hint="e.g. --start 0 --end 20 --freq 2",
            )
        if self.freq < 1:
            raise BadInput(f"--freq must be at least 1, got {self.freq}")

    @property
    def span(self) -> int:
        return ((self.end - self.start - 1) // self.freq) * self.freq

    def is_step(self, t: int) -> bool:
        """Whether `t` (epoch or step index, 0-based) is a pruning step."""
        return self.start <= t < self.end and (t - self.start) % self.freq == 0

    def steps(self) -> list[int]:
        return [t for t in range(self.start, self.end) if self.is_step(t)]

    def target(self, t: int, final: float | None = None) -> float:
        """Target sparsity in force at `t` for a layer whose final sparsity is `final`.

        Before `start` nothing is pruned (0.0); between steps the last step's target holds.
        """
        s_f = self.final if final is None else final
        s_i = min(self.initial, s_f)
        if t < self.start:
            return 0.0
        last = self.start + self.span
        t = min(t, last)
        t = self.start + ((t - self.start) // self.freq) * self.freq
        if self.span == 0:
            return s_f
        return s_f + (s_i - s_f) * (1.0 - (t - self.start) / self.span) ** 3

    def table(self, final: float | None = None) -> list[list[float]]:
        """[[t, target], ...] at every pruning step (what the manifest records)."""
        return [[t, round(self.target(t, final), 6)] for t in self.steps()]

    def as_dict(self) -> dict:
        return {**asdict(self), "span": self.span, "steps": self.table()}
