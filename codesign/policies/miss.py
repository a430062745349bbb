"""Miss handling: fetch the expert's weights, compute it on the host CPU (Fiddler), or pick by cost."""

from __future__ import annotations

import numpy as np

from codesign.policies.base import BoolArray, IntArray, MissPolicy
from codesign.policies.registry import REGISTRIES
from hwmodels.opcost import OpCost

__all__ = ["CheapestMiss", "CpuMiss", "FetchMiss"]


@REGISTRIES["miss"].register("fetch", "always fetch the missing expert's weights to the device")
class FetchMiss(MissPolicy):
    """Always fetch (the weights then go to the cache or a staging buffer)."""

    def decide(self, layer: int, experts: IntArray, n_tokens: IntArray, fetch: OpCost, cpu: OpCost | None) -> BoolArray:
        return np.ones(np.shape(experts), dtype=bool)


@REGISTRIES["miss"].register("cpu", "always compute a missing expert on the host CPU (fetch if no host)")
class CpuMiss(MissPolicy):
    """Always compute on the host CPU where a host exists."""

    def decide(self, layer: int, experts: IntArray, n_tokens: IntArray, fetch: OpCost, cpu: OpCost | None) -> BoolArray:
        return np.full(np.shape(experts), cpu is None, dtype=bool)


@REGISTRIES["miss"].register("cost", "Fiddler: per expert, fetch or compute on the CPU, whichever costs less time")
class CheapestMiss(MissPolicy):
    """Fiddler's rule (Kamahori et al. 2024, "[P] Fiddler" in hardware-and-papers.md): for each
    missing expert compare the time to fetch its weights and compute it on the device with the time
    to compute it on the CPU where the weights already are, and take the smaller (ties: fetch).
    Queueing on the link and on the CPU is not part of the comparison (as in the paper)."""

    def decide(self, layer: int, experts: IntArray, n_tokens: IntArray, fetch: OpCost, cpu: OpCost | None) -> BoolArray:
        if cpu is None:
            return np.ones(np.shape(experts), dtype=bool)
        return np.asarray(np.asarray(fetch.total_s) <= np.asarray(cpu.total_s), dtype=bool).reshape(np.shape(experts))
