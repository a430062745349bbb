"""Fidelity: how close two routing traces are, and how well a fitted process predicts held-out data.

`compare(a, b)` measures the distance between the statistics of two traces of the same model
shape (same ``moe_layers`` and ``n_experts``):

- ``load_js``: Jensen-Shannon distance (base 2, in [0, 1]) between the per-layer expert load
  distributions, mean over layers;
- ``affinity_js``: JS distance between the rows of the affinity ``P(e_{l+1} | e_l)``, each row
  weighted by its pair mass (mean of the two traces' shares), mean over layer pairs;
- ``reuse_error``: absolute difference of the pooled temporal reuse rate (share of a token's
  experts used by the previous token of its request); ``reuse_layer_mae`` the mean absolute
  difference per layer;
- ``coactivation_js``: JS distance between the within-layer co-activation pair distributions
  (off-diagonal), mean over layers;
- ``reuse_distance_js``: JS distance between the pooled reuse-distance histograms;
- ``lru_hit_25_error``, ``lru_hit_50_error``: absolute difference of the LRU hit rate (per-layer
  cache of 25% / 50% of the experts, cold at each request start, mean over layers; see
  `workloads.stats.lru_hit_rate`) — what an offloaded expert cache would see. The two traces'
  rates themselves are ``lru_hit_25_a`` etc.

`holdout_evaluation` splits a real trace by requests, fits a `RoutingProcess` on one part, samples
as many tokens as the held-out part (same request lengths) and compares fitted-vs-held-out with
uniform-random-vs-held-out (and popularity-only-vs-held-out, which keeps each layer's popularity
but no affinity nor reuse). It also reports the LRU hit rates of the training part against the
held-out part (``train_vs_heldout``): how much two sets of real requests differ, the noise floor
under which no model of the population can be judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from workloads import stats
from workloads.process import RoutingProcess
from workloads.trace import RoutingTrace

FloatArray = npt.NDArray[np.float64]

#: Statistics reported by `compare`, lower is closer.
METRICS = (
    "load_js",
    "affinity_js",
    "reuse_error",
    "reuse_layer_mae",
    "coactivation_js",
    "reuse_distance_js",
    "lru_hit_25_error",
    "lru_hit_50_error",
)


@dataclass(frozen=True)
class FidelityReport:
    """Distances between two traces' statistics (module docstring); all >= 0, 0 = identical."""

    load_js: float
    affinity_js: float
    reuse_error: float
    reuse_layer_mae: float
    coactivation_js: float
    reuse_distance_js: float
    reuse_rate_a: float
    reuse_rate_b: float
    lru_hit_25_error: float = math.nan
    lru_hit_50_error: float = math.nan
    lru_hit_25_a: float = math.nan
    lru_hit_25_b: float = math.nan
    lru_hit_50_a: float = math.nan
    lru_hit_50_b: float = math.nan

    def to_dict(self) -> dict[str, float | None]:
        return {k: (None if not math.isfinite(v) else float(v)) for k, v in asdict(self).items()}


def _js_rows(p: FloatArray, q: FloatArray) -> FloatArray:
    """JS distance (base 2) row by row; rows where either side has no mass are ``nan``."""
    return stats.js_distance(p, q)


def _check_compatible(a: RoutingTrace, b: RoutingTrace) -> None:
    if a.n_moe_layers != b.n_moe_layers or a.n_experts != b.n_experts:
        raise ValueError(
            f"compare: traces differ in shape: {a.meta.get('source')!r} has {a.n_moe_layers} MoE layers x "
            f"{a.n_experts} experts, {b.meta.get('source')!r} has {b.n_moe_layers} x {b.n_experts}"
        )


def compare(a: RoutingTrace, b: RoutingTrace, *, max_distance: int = stats.DEFAULT_MAX_DISTANCE) -> FidelityReport:
    """Distances between the statistics of ``a`` and ``b`` (same layers and experts)."""
    _check_compatible(a, b)
    load_js = _js_rows(stats.expert_load(a).astype(float), stats.expert_load(b).astype(float))
    ca = stats.affinity_counts(a).astype(float)
    cb = stats.affinity_counts(b).astype(float)
    if ca.shape[0]:
        js = _js_rows(ca, cb)  # [L-1, E]
        wa = ca.sum(axis=2) / np.maximum(ca.sum(axis=(1, 2))[:, None], 1.0)
        wb = cb.sum(axis=2) / np.maximum(cb.sum(axis=(1, 2))[:, None], 1.0)
        w = np.where(np.isfinite(js), 0.5 * (wa + wb), 0.0)
        per_pair = np.where(
            w.sum(axis=1) > 0, (np.nan_to_num(js) * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-300), np.nan
        )
        affinity_js = _nanmean(per_pair)
    else:
        affinity_js = math.nan
    ra = stats.temporal_reuse(a, max_distance=max_distance)
    rb = stats.temporal_reuse(b, max_distance=max_distance)
    both = np.isfinite(ra.rate) & np.isfinite(rb.rate)
    co_a = stats.coactivation(a).astype(float)
    co_b = stats.coactivation(b).astype(float)
    n_e = a.n_experts
    off = ~np.eye(n_e, dtype=bool)
    co_js = _js_rows(co_a[:, off], co_b[:, off])
    lru_a = _lru(a)
    lru_b = _lru(b)
    ha = np.append(ra.distance_hist.sum(axis=0), ra.first_use.sum()).astype(float)
    hb = np.append(rb.distance_hist.sum(axis=0), rb.first_use.sum()).astype(float)
    return FidelityReport(
        load_js=_nanmean(load_js),
        affinity_js=affinity_js,
        reuse_error=abs(ra.mean_rate - rb.mean_rate),
        reuse_layer_mae=float(np.mean(np.abs(ra.rate[both] - rb.rate[both]))) if both.any() else math.nan,
        coactivation_js=_nanmean(co_js),
        reuse_distance_js=float(_js_rows(ha[None, :], hb[None, :])[0]),
        reuse_rate_a=ra.mean_rate,
        reuse_rate_b=rb.mean_rate,
        lru_hit_25_error=abs(lru_a[0] - lru_b[0]),
        lru_hit_50_error=abs(lru_a[1] - lru_b[1]),
        lru_hit_25_a=lru_a[0],
        lru_hit_25_b=lru_b[0],
        lru_hit_50_a=lru_a[1],
        lru_hit_50_b=lru_b[1],
    )


def _lru(trace: RoutingTrace) -> tuple[float, float]:
    """Mean over layers of the LRU hit rate at 25% and 50% of the experts cached."""
    rates = stats.lru_hit_rate(trace, (0.25, 0.5))
    return _nanmean(rates[0]), _nanmean(rates[1])


def uniform_trace(like: RoutingTrace, seed: int | None = 0) -> RoutingTrace:
    """A trace shaped like ``like`` (tokens, layers, top_k, requests, positions, phase) whose
    experts are uniformly random distinct top-k choices per token and layer."""
    rng = np.random.default_rng(seed)
    n, n_l, k, n_e = like.n_tokens, like.n_moe_layers, like.top_k, like.n_experts
    keys = rng.random((n * n_l, n_e), dtype=np.float32)
    top = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < n_e else np.argsort(keys, axis=1)
    meta = {**like.meta, "source": f"uniform-random like {like.meta.get('source')!r}, seed={seed}", "synthetic": True}
    return RoutingTrace(
        experts=top.reshape(n, n_l, k).astype(np.int16),
        request=like.request.copy(),
        position=like.position.copy(),
        phase=like.phase.copy(),
        meta=meta,
    )


def popularity_trace(like: RoutingTrace, popularity: FloatArray, seed: int | None = 0) -> RoutingTrace:
    """Like `uniform_trace` but each layer draws top-k without replacement from ``popularity[L, E]``
    independently per token (no affinity, no temporal reuse)."""
    rng = np.random.default_rng(seed)
    n, n_l, k, n_e = like.n_tokens, like.n_moe_layers, like.top_k, like.n_experts
    logp = np.log(np.maximum(np.asarray(popularity, dtype=np.float64), 1e-300))
    keys = np.log(rng.random((n, n_l, n_e)) + 1e-300) / np.exp(logp)[None, :, :]
    top = np.argsort(-keys, axis=2)[:, :, :k]
    meta = {**like.meta, "source": f"popularity-only like {like.meta.get('source')!r}, seed={seed}", "synthetic": True}
    return RoutingTrace(
        experts=top.astype(np.int16),
        request=like.request.copy(),
        position=like.position.copy(),
        phase=like.phase.copy(),
        meta=meta,
    )


def split_requests(
    trace: RoutingTrace, train_fraction: float, seed: int | None = 0
) -> tuple[RoutingTrace, RoutingTrace]:
    """Random split of the trace's requests: ``(train, held_out)``; each side gets >= 1 request."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    ids = np.unique(trace.request)
    if ids.size < 2:
        raise ValueError(f"holdout needs at least 2 requests, trace {trace.meta.get('source')!r} has {ids.size}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ids)
    n_train = int(np.clip(round(train_fraction * ids.size), 1, ids.size - 1))
    return trace.select_requests(np.sort(perm[:n_train])), trace.select_requests(np.sort(perm[n_train:]))


def holdout_evaluation(
    trace: RoutingTrace, train_fraction: float = 0.5, seed: int = 0, *, synth_factor: int = 4, **fit_kwargs: Any
) -> dict[str, Any]:
    """Fit on ``train_fraction`` of the requests, compare samples with the held-out rest.

    The synthetic traces (fitted process, uniform, popularity-only) have ``synth_factor`` times the
    held-out token count (the held-out request lengths repeated), so that their own sampling noise
    does not mask the difference between the models; ``synth_factor=1`` samples the held-out size.

    Returns ``{"train_tokens", "heldout_tokens", "train_requests", "heldout_requests",
    "fitted": {...}, "uniform": {...}, "popularity_only": {...}, "fitted_closer": {metric: bool},
    "train_vs_heldout": {LRU hit rates of the training part and their distance to the held-out's}}``
    where each inner dict is a `FidelityReport` against the held-out part. The synthetic traces
    copy the held-out request lengths.
    """
    train, held = split_requests(trace, train_fraction, seed)
    proc = RoutingProcess.fit(train, seed=seed, **fit_kwargs)
    if synth_factor < 1:
        raise ValueError(f"synth_factor must be >= 1, got {synth_factor}")
    lengths = np.tile(np.bincount(np.unique(held.request, return_inverse=True)[1]), synth_factor)
    held_sorted = held.select(stats.request_order(held))
    synth = proc.sample(int(lengths.sum()), seed=seed + 1, request_lengths=lengths.tolist())
    fitted = compare(synth, held_sorted)
    uniform = compare(uniform_trace(synth, seed=seed + 2), held_sorted)
    popular = compare(popularity_trace(synth, proc.popularity, seed=seed + 3), held_sorted)
    fd, ud = fitted.to_dict(), uniform.to_dict()
    lru_train = _lru(train)
    closer = {m: (fd[m] is not None and ud[m] is not None and fd[m] < ud[m]) for m in METRICS}  # type: ignore[operator]
    return {
        "model": trace.meta.get("model"),
        "train_fraction": train_fraction,
        "seed": seed,
        "train_tokens": train.n_tokens,
        "heldout_tokens": held.n_tokens,
        "train_requests": train.n_requests,
        "heldout_requests": held.n_requests,
        "synthetic_tokens": synth.n_tokens,
        "popularity_shrinkage": proc.meta.get("fitted_from", {}).get("popularity_shrinkage"),
        "fitted": fd,
        "uniform": ud,
        "popularity_only": popular.to_dict(),
        "fitted_closer": closer,
        "train_vs_heldout": {
            "lru_hit_25_train": lru_train[0],
            "lru_hit_50_train": lru_train[1],
            "lru_hit_25_error": abs(lru_train[0] - fitted.lru_hit_25_b),
            "lru_hit_50_error": abs(lru_train[1] - fitted.lru_hit_50_b),
        },
    }


def _nanmean(a: npt.ArrayLike) -> float:
    x = np.asarray(a, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan
