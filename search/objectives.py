"""Objectives and constraints of a search, from registries (STYLE item 6).

An `Objective` reads one number from an evaluated design: its `codesign.design.Metrics` (as a
dict, ``Metrics.to_dict()``) and its quality-proxy loss. Directions are Optuna's
(``"minimize"`` / ``"maximize"``). Constraints follow Optuna's convention (``constraints_func``
of `optuna.samplers.NSGAIISampler` / `TPESampler`): a value ``<= 0`` is satisfied, ``> 0`` is
the size of the violation. SLO constraints are relative (``value / limit - 1``), so violations of
different SLOs add up on one scale; the memory-fit constraint is 1 when the design does not fit
(the mapping's error message says by how much) and -1 when it does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CONSTRAINT_METRICS",
    "OBJECTIVES",
    "Objective",
    "SloConstraint",
    "get_objective",
    "objective_names",
]

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True, kw_only=True)
class Objective:
    """One optimisation target.

    ``value(metrics, quality_loss)`` returns the number the sampler sees (finite for any design
    that was evaluated). ``metric`` names the `Metrics` field it reads (``None`` for the quality
    proxy); ``unit`` is for tables and axes."""

    name: str
    direction: Direction
    unit: str
    help: str
    metric: str | None
    scale: float = 1.0

    def value(self, metrics: Mapping[str, Any], quality_loss: float) -> float:
        """The objective value of an evaluated design (``metrics`` = ``Metrics.to_dict()``)."""
        raw = quality_loss if self.metric is None else float(metrics[self.metric])
        v = float(raw) * self.scale
        if not math.isfinite(v):
            raise ValueError(f"objective {self.name}: {self.metric or 'quality'} is not finite ({raw!r})")
        return v

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b`` in this objective's direction."""
        return a < b if self.direction == "minimize" else a > b


def _registry() -> dict[str, Objective]:
    objs = [
        Objective(
            name="tpot_p99",
            direction="minimize",
            unit="ms",
            help="time per output token, 99th percentile (ms)",
            metric="tpot_p99_s",
            scale=1e3,
        ),
        Objective(
            name="throughput",
            direction="maximize",
            unit="tok/s",
            help="output tokens per second of makespan (combine with an SLO constraint: throughput at an SLO)",
            metric="throughput_tok_s",
        ),
        Objective(
            name="energy_per_token",
            direction="minimize",
            unit="J/tok",
            help="energy per output token (J)",
            metric="energy_j_per_token",
        ),
        Objective(
            name="cost_per_mtok",
            direction="minimize",
            unit="$/Mtok",
            help="platform cost per million output tokens (USD)",
            metric="cost_per_mtok_usd",
        ),
        Objective(
            name="quality",
            direction="minimize",
            unit="nats",
            help="quality proxy: the scaling-law loss of the model (search.quality; lower is better)",
            metric=None,
        ),
    ]
    return {o.name: o for o in objs}


#: Objective registry (read-only).
OBJECTIVES: Mapping[str, Objective] = _registry()


def objective_names() -> list[str]:
    return sorted(OBJECTIVES)


def get_objective(name: str) -> Objective:
    """The objective ``name``; `KeyError` listing the valid names otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; valid: {objective_names()}") from None


#: Metrics an SLO may bound from above (seconds), and their `Metrics` fields.
CONSTRAINT_METRICS: Mapping[str, str] = {
    "tpot_p99_s": "tpot_p99_s",
    "tpot_p50_s": "tpot_p50_s",
    "ttft_p50_s": "ttft_p50_s",
}


@dataclass(frozen=True, kw_only=True)
class SloConstraint:
    """An upper bound on a latency metric: violation ``metrics[metric] / limit - 1`` (``> 0`` violated)."""

    metric: str
    limit: float

    def __post_init__(self) -> None:
        if self.metric not in CONSTRAINT_METRICS:
            raise ValueError(f"SLO on unknown metric {self.metric!r}; valid: {sorted(CONSTRAINT_METRICS)}")
        if not (isinstance(self.limit, int | float) and math.isfinite(self.limit) and self.limit > 0):
            raise ValueError(f"SLO {self.metric}: limit must be a number > 0 (seconds), got {self.limit!r}")

    @property
    def name(self) -> str:
        return f"slo_{self.metric}"

    def violation(self, metrics: Mapping[str, Any]) -> float:
        return float(metrics[CONSTRAINT_METRICS[self.metric]]) / float(self.limit) - 1.0


ValueFn = Callable[[Mapping[str, Any], float], float]
