"""Prefetch policies: none, next-layer pre-gating (Read-ME / Pre-gated MoE), affinity lookahead.

See `PrefetchPolicy` for the contract. The engine drops pairs that are resident or in flight and
fetches the rest on the copy engine, behind demand fetches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from codesign.policies.base import FloatArray, IntArray, PrefetchContext, PrefetchPolicy, RoutingStats
from codesign.policies.registry import REGISTRIES

if TYPE_CHECKING:
    from workloads.trace import RoutingTrace

__all__ = ["AffinityPrefetch", "NoPrefetch", "PregatePrefetch"]

_EMPTY = np.zeros((0, 2), dtype=np.int64)


def _pairs(layer: int, experts: IntArray) -> IntArray:
    return np.stack([np.full(experts.size, layer, dtype=np.int64), experts.astype(np.int64)], axis=1)


@REGISTRIES["prefetch"].register("none", "no prefetching (demand fetches only)")
class NoPrefetch(PrefetchPolicy):
    """Never prefetches."""

    def prefetch(self, ctx: PrefetchContext) -> IntArray:
        return _EMPTY


@REGISTRIES["prefetch"].register(
    "pregate", "next-layer pre-gating (Read-ME, Pre-gated MoE): layer l+1's experts fetched during layer l"
)
class PregatePrefetch(PrefetchPolicy):
    """Pre-gating: a pre-gate (Pre-gated MoE, Hwang et al. ISCA 2024) or a router decoupled from the
    backbone (Read-ME, Cai et al. NeurIPS 2024; "[P]" rows of hardware-and-papers.md s.4) knows
    the experts of layer ``l + 1`` while layer ``l`` runs, so their weights are fetched then.

    Options: ``accuracy`` in [0, 1] (default 1.0, the decoupled router of Read-ME, exact by
    construction): each predicted expert is, with probability ``1 - accuracy``, replaced by a
    uniformly drawn wrong one (an assumption standing in for a trained pre-gate's error rate; the
    papers do not give one per layer). ``depth``: how many layers ahead (default 1).
    """

    def __init__(self, *, accuracy: float = 1.0, depth: int = 1, **kwargs: int) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"pregate accuracy must be in [0, 1], got {accuracy}")
        if depth < 1:
            raise ValueError(f"pregate depth must be >= 1, got {depth}")
        self.accuracy = float(accuracy)
        self.depth = int(depth)

    def prefetch(self, ctx: PrefetchContext) -> IntArray:
        out = []
        for nxt in range(ctx.layer + 1, min(ctx.layer + 1 + self.depth, self.n_layers)):
            col = np.asarray(ctx.step_routing[:, nxt, :]).ravel()
            ex = np.unique(col[col >= 0]).astype(np.int64)
            if self.accuracy < 1.0 and ex.size:
                wrong = self.rng.random(ex.size) >= self.accuracy
                if wrong.any():
                    shift = self.rng.integers(1, self.n_experts, size=int(wrong.sum()))
                    ex[wrong] = (ex[wrong] + shift) % self.n_experts
                    ex = np.unique(ex)
            out.append(_pairs(nxt, ex))
        return np.concatenate(out) if out else _EMPTY


@REGISTRIES["prefetch"].register(
    "affinity", "affinity lookahead (ExFlow/MoE-Infinity style): likely experts of layer l+1 from P(e'|e)"
)
class AffinityPrefetch(PrefetchPolicy):
    """Predicts the experts of layer ``l + 1`` from the experts the step's tokens use at layer
    ``l`` and the inter-layer affinity ``P(e_{l+1} | e_l)`` fitted on a training trace
    (`RoutingStats.affinity`, as in ExFlow). Expected demand of expert ``j`` at ``l + 1``:
    ``sum over the step's (token, slot) choices i at l of P(j | i)``; it fetches the experts whose
    expected demand is at least ``threshold`` tokens, at most ``max_experts`` of them (default:
    ``top_k``), highest demand first. Needs `fit`.
    """

    needs_training = True

    def __init__(self, *, threshold: float = 0.5, max_experts: int | None = None, **kwargs: int) -> None:
        super().__init__(**kwargs)
        if threshold < 0:
            raise ValueError(f"affinity threshold must be >= 0 tokens, got {threshold}")
        self.threshold = float(threshold)
        self.max_experts = int(max_experts) if max_experts is not None else self.top_k
        if self.max_experts < 1:
            raise ValueError(f"affinity max_experts must be >= 1, got {self.max_experts}")
        self._cond: FloatArray | None = None

    def fit(self, trace: RoutingTrace) -> None:
        stats = RoutingStats.from_trace(trace)
        if stats.n_layers != self.n_layers or stats.n_experts != self.n_experts:
            raise ValueError(
                f"affinity prefetch: training trace has {stats.n_layers} layers x "
                f"{stats.n_experts} experts, the model {self.n_layers} x {self.n_experts}"
            )
        self.fit_stats(stats)

    def fit_stats(self, stats: RoutingStats) -> None:
        """Fit from precomputed statistics (Laplace-smoothed conditional probabilities)."""
        aff = stats.affinity + 1e-3
        self._cond = aff / aff.sum(axis=2, keepdims=True)

    def prefetch(self, ctx: PrefetchContext) -> IntArray:
        if self._cond is None:
            raise RuntimeError("affinity prefetch used before fit(trace)")
        if ctx.layer + 1 >= self.n_layers:
            return _EMPTY
        col = np.asarray(ctx.routing).ravel()
        col = col[col >= 0].astype(np.int64)
        if col.size == 0:
            return _EMPTY
        counts = np.bincount(col, minlength=self.n_experts).astype(np.float64)
        demand = counts @ self._cond[ctx.layer]
        order = np.lexsort((np.arange(self.n_experts), -demand))
        chosen = order[demand[order] >= self.threshold][: self.max_experts]
        return _pairs(ctx.layer + 1, chosen.astype(np.int64))
