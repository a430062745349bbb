"""Routing statistics of a `RoutingTrace`, vectorised with numpy.

Every function takes a trace (or the arrays it derives from it) and returns numpy arrays or
JSON-able dicts. ``-1`` entries ("no expert") are ignored everywhere. No Python loop runs over
tokens: counts are ``np.bincount`` over flattened indices, loops run over layers or over the
``k`` slots only.

Definitions (``L`` MoE layers, ``E`` experts, ``k`` slots per token and layer):

- load ``[L, E]``: how many tokens chose expert ``e`` at layer ``l``.
- skew per layer: Gini coefficient of the load (0 = perfectly even, ``1 - 1/E`` = one expert takes
  everything), normalised entropy ``H(load) / log(E)`` (1 = even), and ``max / mean`` load.
- affinity ``[L-1, E, E]``: ``P(e_{l+1} = b | e_l = a)`` as in ExFlow (Yao et al., IPDPS 2024,
  reference/hardware-and-papers.md section 4), estimated over all ``k x k`` pairs of a token's
  experts at consecutive layers; rows are normalised to sum to 1 where they have mass, and are
  all zero where expert ``a`` was never chosen at layer ``l``.
- temporal reuse, per layer: the share of a token's experts that the previous token of the same
  request also used at that layer (tokens are ordered by ``(request, position)``; a request's first
  token has no previous token and is not counted); the reuse-distance histogram counts, for each
  use of an expert at a layer, how many tokens back (within the request) that expert was last used
  at that layer (first uses are counted apart).
- lag overlap ``[L, D]`` (`lag_overlap`): for ``d = 1..D``, the share of a token's experts that the
  token ``d`` positions earlier in the same request also used at that layer (tokens with fewer than
  ``d`` predecessors are not counted; ``d = 1`` is the temporal reuse rate).
- LRU hit rate (`lru_hit_rate`): per layer, a cache of ``C`` experts, cold at the start of each
  request, updated token by token in least-recently-used order: a token's experts are looked up
  against the cache as it was after the previous token (the router picks all ``k`` before any is
  loaded), then become the most recent (ties inside a token are broken by slot order). A use hits
  when its expert is among the ``C`` most recently used; the rate is hits / uses of the layer.
- co-activation ``[L, E, E]``: ``C[l, a, b]`` = tokens that chose both ``a`` and ``b`` at layer
  ``l``; the diagonal ``C[l, a, a]`` is the load of ``a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from workloads.model import UnknownPresetError, get_model
from workloads.trace import RoutingTrace

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Distances (in tokens) resolved by the reuse-distance histogram; longer ones go to one overflow bin.
DEFAULT_MAX_DISTANCE = 64


LayerMajor = npt.NDArray[np.int16]


def _layer_major(experts: npt.NDArray[np.int16], n_experts: int) -> LayerMajor:
    """Expert ids as ``int16 [L, k, T]`` (contiguous per layer and slot, so that per-layer work stays
    in cache) with -1 mapped to ``n_experts`` (an extra "null" bin dropped after counting)."""
    ex = np.array(experts.transpose(1, 2, 0), dtype=np.int16, order="C", copy=True)  # never a view: edited below
    ex[ex < 0] = n_experts
    return ex


def _pair_dtype(n_bins: int) -> type[np.signedinteger[Any]]:
    """Smallest integer type that holds pair codes ``a * n_bins + b`` (int16 keeps the temporaries
    small, which is what the pair counts' speed depends on)."""
    return np.int16 if n_bins * n_bins <= np.iinfo(np.int16).max else np.int64


def expert_load(trace: RoutingTrace, *, _ex: LayerMajor | None = None) -> IntArray:
    """Load ``[moe_layers, n_experts]`` int64: tokens that chose each expert at each layer."""
    n_l, n_e = trace.n_moe_layers, trace.n_experts
    ex = _layer_major(trace.experts, n_e) if _ex is None else _ex
    counts = (
        np.stack([np.bincount(ex[layer].ravel(), minlength=n_e + 1) for layer in range(n_l)])
        if n_l
        else np.zeros((0, n_e + 1), dtype=np.int64)
    )
    return counts[:, :n_e].astype(np.int64)


@dataclass(frozen=True)
class LoadSkew:
    """Per-layer skew of an expert load ``[L, E]``: each field is a float array ``[L]``.

    ``gini`` in ``[0, 1 - 1/E]``; ``entropy`` = ``H / log(E)`` in ``[0, 1]``; ``max_over_mean`` >= 1.
    A layer without any load has ``nan`` in every field.
    """

    gini: FloatArray
    entropy: FloatArray
    max_over_mean: FloatArray

    def to_dict(self) -> dict[str, list[float | None]]:
        return {name: _floats(getattr(self, name)) for name in ("gini", "entropy", "max_over_mean")}


def load_skew(load: RoutingTrace | npt.ArrayLike) -> LoadSkew:
    """Gini, normalised entropy and max/mean of each layer's load (a trace or a ``[L, E]`` array)."""
    x = expert_load(load) if isinstance(load, RoutingTrace) else np.asarray(load, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"load_skew: load must be [layers, experts], got shape {x.shape}")
    if x.size and x.min() < 0:
        raise ValueError(f"load_skew: load has a negative entry ({x.min()})")
    x = x.astype(np.float64)
    n_e = x.shape[1]
    total = x.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xs = np.sort(x, axis=1)
        i = np.arange(1, n_e + 1, dtype=np.float64)
        gini = 2.0 * (xs * i).sum(axis=1) / (n_e * total) - (n_e + 1.0) / n_e
        p = x / total[:, None]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        entropy = -plogp.sum(axis=1) / math.log(n_e) if n_e > 1 else np.ones_like(total)
        max_over_mean = x.max(axis=1) / (total / n_e)
    empty = total <= 0
    for arr in (gini, entropy, max_over_mean):
        arr[empty] = np.nan
    return LoadSkew(gini=gini, entropy=np.asarray(entropy, dtype=np.float64), max_over_mean=max_over_mean)


def affinity_counts(trace: RoutingTrace, *, _ex: LayerMajor | None = None) -> IntArray:
    """Joint counts ``[L-1, E, E]``: pairs (a at layer l, b at layer l+1) over all k x k slot pairs."""
    n_l, n_e = trace.n_moe_layers, trace.n_experts
    if n_l < 2:
        return np.zeros((0, n_e, n_e), dtype=np.int64)
    e1 = n_e + 1
    ex = _layer_major(trace.experts, n_e) if _ex is None else _ex
    counts = np.zeros((n_l - 1, e1 * e1), dtype=np.int64)
    code = _pair_dtype(e1)
    buf = np.empty((trace.k, trace.n_tokens), dtype=code)
    for layer in range(n_l - 1):
        nxt = ex[layer + 1]
        base = ex[layer].astype(code) * code(e1)
        for i in range(trace.k):
            np.add(base[i][None, :], nxt, out=buf)
            counts[layer] += np.bincount(buf.ravel(), minlength=e1 * e1)
    return counts.reshape(n_l - 1, e1, e1)[:, :n_e, :n_e]


def normalise_rows(counts: npt.ArrayLike) -> FloatArray:
    """Rows divided by their sums; rows without mass stay all zero."""
    c = np.asarray(counts, dtype=np.float64)
    s = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, c / np.where(s > 0, s, 1.0), 0.0)


def affinity(trace: RoutingTrace) -> FloatArray:
    """Row-stochastic ``P(e_{l+1} = b | e_l = a)`` ``[L-1, E, E]`` (rows without mass are zero)."""
    return normalise_rows(affinity_counts(trace))


def mutual_information(counts: npt.ArrayLike) -> FloatArray:
    """Plug-in mutual information (bits) of each joint count matrix ``[..., E, E]`` (0 for no mass)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        joint = np.where(total > 0, c / np.where(total > 0, total, 1.0), 0.0)
        pa = joint.sum(axis=-1, keepdims=True)
        pb = joint.sum(axis=-2, keepdims=True)
        ratio = np.where(joint > 0, joint / np.where(pa * pb > 0, pa * pb, 1.0), 1.0)
        return np.asarray((joint * np.log2(ratio)).sum(axis=(-2, -1)), dtype=np.float64)


def affinity_summary(counts: npt.ArrayLike) -> dict[str, list[float | None]]:
    """Concentration of affinity per layer pair, from joint counts ``[L-1, E, E]``.

    ``top1``: mass-weighted mean of each row's largest probability (1/E when rows are uniform);
    ``row_entropy``: mass-weighted mean of ``H(row) / log(E)``; ``mutual_information_bits``:
    ``I(e_l; e_{l+1})`` of the joint pair distribution (0 when layers are independent).
    """
    c = np.asarray(counts, dtype=np.float64)
    n_e = c.shape[-1]
    total = c.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        row_mass = c.sum(axis=2)
        w = row_mass / total[:, None]
        rows = normalise_rows(c)
        top1 = (w * rows.max(axis=2)).sum(axis=1)
        h = -np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1.0)), 0.0).sum(axis=2)
        row_entropy = (w * h).sum(axis=1) / (math.log(n_e) if n_e > 1 else 1.0)
        mi = mutual_information(c)
    empty = total <= 0
    for arr in (top1, row_entropy, mi):
        arr[empty] = np.nan
    return {"top1": _floats(top1), "row_entropy": _floats(row_entropy), "mutual_information_bits": _floats(mi)}


def js_distance(p: npt.ArrayLike, q: npt.ArrayLike) -> FloatArray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between the rows (last axis) of ``p`` and ``q``,
    each normalised to sum to 1; ``nan`` where either row has no mass."""
    a = np.asarray(p, dtype=np.float64)
    b = np.asarray(q, dtype=np.float64)
    sa = a.sum(axis=-1, keepdims=True)
    sb = b.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / sa
        b = b / sb
        m = 0.5 * (a + b)
        kl_a = np.where(a > 0, a * np.log2(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=-1)
        kl_b = np.where(b > 0, b * np.log2(np.where(b > 0, b, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=-1)
    d = np.sqrt(np.clip(0.5 * (kl_a + kl_b), 0.0, 1.0))
    empty = (sa[..., 0] <= 0) | (sb[..., 0] <= 0)
    return np.asarray(np.where(empty, np.nan, d), dtype=np.float64)


def request_order(trace: RoutingTrace) -> npt.NDArray[np.intp]:
    """Row order that sorts tokens by ``(request, position)`` (stable; identity if already sorted)."""
    req, pos = trace.request.astype(np.int64), trace.position.astype(np.int64)
    if trace.n_tokens < 2:
        return np.arange(trace.n_tokens)
    dr = np.diff(req)
    if np.all((dr > 0) | ((dr == 0) & (np.diff(pos) > 0))):
        return np.arange(trace.n_tokens)
    return np.lexsort((pos, req))


@dataclass(frozen=True)
class TemporalReuse:
    """Temporal reuse per layer (see the module docstring for the definitions).

    - ``rate[L]``: ``reused[L] / slots[L]`` (``nan`` where no token has a predecessor);
    - ``reused[L]``, ``slots[L]``: reused expert slots and all valid slots of tokens with a predecessor;
    - ``overlap_hist[L, k+1]``: tokens (with a predecessor) by how many of their experts were reused;
    - ``distance_hist[L, max_distance+1]``: uses by distance ``d = 1..max_distance`` (column ``d-1``)
      and longer (last column); ``first_use[L]``: uses of an expert not used before in that request.
    """

    rate: FloatArray
    reused: IntArray
    slots: IntArray
    overlap_hist: IntArray
    distance_hist: IntArray
    first_use: IntArray

    @property
    def max_distance(self) -> int:
        return int(self.distance_hist.shape[1] - 1)

    @property
    def mean_rate(self) -> float:
        """Reuse rate pooled over layers (``nan`` if nothing to measure)."""
        s = int(self.slots.sum())
        return float(self.reused.sum() / s) if s else math.nan

    def to_dict(self) -> dict[str, Any]:
        hist = self.distance_hist.sum(axis=0)
        return {
            "rate": _floats(self.rate),
            "mean_rate": _float(self.mean_rate),
            "reuse_distance": {
                "distances": [*range(1, self.max_distance + 1), f">{self.max_distance}"],
                "counts": [int(v) for v in hist],
                "first_use": int(self.first_use.sum()),
            },
        }


def temporal_reuse(
    trace: RoutingTrace, *, max_distance: int = DEFAULT_MAX_DISTANCE, distances: bool = True
) -> TemporalReuse:
    """Reuse of experts across consecutive tokens of a request, per layer (module docstring).

    With ``distances=False`` the reuse-distance histogram is skipped (left all zero), which is
    faster when only the rates are needed.
    """
    if max_distance < 1:
        raise ValueError(f"temporal_reuse: max_distance must be >= 1, got {max_distance}")
    n_l, k, n = trace.n_moe_layers, trace.k, trace.n_tokens
    order = request_order(trace)
    in_order = n < 2 or bool(order[-1] == n - 1 and np.all(order[1:] > order[:-1]))
    req = trace.request if in_order else trace.request[order]
    src = trace.experts if in_order else trace.experts[order]
    exl = np.ascontiguousarray(src.transpose(1, 0, 2))  # [L, T, k], tokens in request order
    has_prev = np.zeros(n, dtype=bool)
    has_prev[1:] = req[1:] == req[:-1]
    idx = np.flatnonzero(has_prev)
    # Token clock with a gap of n between requests: a distance < n is within a request, any
    # distance across requests is > n (so no per-use lookup of the request start is needed).
    clock = np.arange(n, dtype=np.int64) + n * (np.cumsum(~has_prev, dtype=np.int64) - 1)
    reused = np.zeros(n_l, dtype=np.int64)
    slots = np.zeros(n_l, dtype=np.int64)
    overlap = np.zeros((n_l, k + 1), dtype=np.int64)
    dist = np.zeros((n_l, max_distance + 1), dtype=np.int64)
    first = np.zeros(n_l, dtype=np.int64)
    n_e = trace.n_experts
    key_dtype = np.uint8 if n_e < 255 else np.uint16
    ones_k = np.ones(k, dtype=np.uint8)
    hp1 = has_prev[1:, None]
    for layer in range(n_l):
        lay = exl[layer]  # [T, k]
        cur, prev = lay[1:], lay[:-1]  # views; rows without a predecessor are masked out
        match = cur == prev[:, 0:1]
        for i in range(1, k):
            match |= cur == prev[:, i : i + 1]
        valid = (cur >= 0) & hp1
        match &= valid
        # per-row sums; a uint8 product is faster than .sum(axis=1) (and exact while k < 256)
        m = ((match.view(np.uint8) @ ones_k) if k < 256 else match.sum(axis=1))[idx - 1]
        reused[layer] = int(m.sum())
        slots[layer] = int(valid.sum())
        overlap[layer] = np.bincount(m, minlength=k + 1)[: k + 1]
        if not distances:
            continue
        # Expert ids shifted by one (null -1 -> 0) as small unsigned keys: the stable radix argsort
        # is fastest on uint8; the null run sorts first and is skipped.
        keys = (lay.ravel() + 1).astype(key_dtype)
        cnt = np.bincount(keys, minlength=n_e + 1)
        srt = np.argsort(keys, kind="stable")[cnt[0] :]  # keeps token order inside each expert's run
        n_uses = srt.size
        if not n_uses:
            continue
        d = np.diff(clock[srt // k])
        ends = np.cumsum(cnt[1:])  # each expert's run ends at ends - 1
        d[ends[(ends > 0) & (ends < n_uses)] - 1] = 0  # no distance across two experts' runs
        d = d[(d > 0) & (d < n)]
        dist[layer] = np.bincount(np.minimum(d, max_distance + 1), minlength=max_distance + 2)[1:]
        first[layer] = n_uses - d.size
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(slots > 0, reused / np.maximum(slots, 1), np.nan)
    return TemporalReuse(
        rate=rate.astype(np.float64),
        reused=reused,
        slots=slots,
        overlap_hist=overlap,
        distance_hist=dist,
        first_use=first,
    )


def lag_overlap(trace: RoutingTrace, max_lag: int) -> FloatArray:
    """``[L, max_lag]`` lag overlap (module docstring): column ``d-1`` is the share of the valid
    expert slots of tokens with at least ``d`` predecessors in their request whose expert the
    token ``d`` back also used at that layer (``nan`` where no token has ``d`` predecessors)."""
    if max_lag < 1:
        raise ValueError(f"lag_overlap: max_lag must be >= 1, got {max_lag}")
    order = request_order(trace)
    ex = np.ascontiguousarray(trace.experts[order].transpose(1, 0, 2))  # [L, T, k]
    pos = _position_in_request(trace.request[order])
    n_l, k = trace.n_moe_layers, trace.k
    out = np.full((n_l, max_lag), np.nan)
    for layer in range(n_l):
        lay = ex[layer]
        valid_all = lay >= 0
        for d in range(1, min(max_lag, lay.shape[0] - 1) + 1):
            cur, back = lay[d:], lay[:-d]  # token t and token t - d (same request where pos >= d)
            match = cur == back[:, 0:1]
            for j in range(1, k):
                match |= cur == back[:, j : j + 1]
            valid = valid_all[d:] & (pos[d:, None] >= d)
            slots = int(valid.sum())
            if slots:
                out[layer, d - 1] = float((match & valid).sum()) / slots
    return out


def _position_in_request(req: npt.NDArray[np.int32]) -> IntArray:
    """Index of each token inside its run of equal request ids (rows already in request order)."""
    n = req.size
    if not n:
        return np.zeros(0, dtype=np.int64)
    start = np.ones(n, dtype=bool)
    start[1:] = req[1:] != req[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n, dtype=np.int64) - first


#: Cache sizes (share of a layer's experts) of the LRU statistic reported by `trace_stats` and fidelity.
LRU_FRACTIONS = (0.25, 0.5)


def lru_hit_rate(trace: RoutingTrace, fractions: tuple[float, ...] = LRU_FRACTIONS) -> FloatArray:
    """``[len(fractions), L]`` LRU hit rate per layer (module docstring) for caches of
    ``max(k, round(f * E))`` experts per layer. ``nan`` where a layer has no routed expert.

    Vectorised: a use hits when fewer than ``C`` experts were used (at that layer, in that request)
    more recently than its own last use; the per-token last-use stamps ``[T, E]`` are a running
    maximum, compared in chunks of tokens (memory ``O(chunk * k * E)``).
    """
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"lru_hit_rate: cache fractions must be in (0, 1], got {f}")
    n_l, k, n_e, n = trace.n_moe_layers, trace.k, trace.n_experts, trace.n_tokens
    caps = np.array([max(k, round(f * n_e)) for f in fractions], dtype=np.int64)
    out = np.full((len(fractions), n_l), np.nan)
    if n == 0:
        return out
    order = request_order(trace)
    ex = np.ascontiguousarray(trace.experts[order].transpose(1, 0, 2)).astype(np.int64)  # [L, T, k]
    req = trace.request[order]
    start = np.ones(n, dtype=bool)
    start[1:] = req[1:] != req[:-1]
    first_stamp = (np.maximum.accumulate(np.where(start, np.arange(n), 0)) * k).astype(np.int64)  # request start
    chunk = max(1, (1 << 22) // max(k * n_e, 1))
    for layer in range(n_l):
        lay = ex[layer]
        ok = lay >= 0
        if not ok.any():
            continue
        stamp = np.full((n, n_e), -1, dtype=np.int32 if n * k < 2**31 else np.int64)
        tt, ss = np.nonzero(ok)
        stamp[tt, lay[tt, ss]] = tt * k + ss
        np.maximum.accumulate(stamp, axis=0, out=stamp)  # last use up to and including each token
        hits = np.zeros(caps.size, dtype=np.int64)
        for lo in range(1, n, chunk):
            hi = min(n, lo + chunk)
            before = stamp[lo - 1 : hi - 1]  # state after the previous token
            before = np.where(before >= first_stamp[lo:hi, None], before, -1)  # cold at each request start
            cur = lay[lo:hi]
            mine = np.take_along_axis(before, np.maximum(cur, 0), axis=1)  # [c, k]
            seen = (mine >= 0) & (cur >= 0)
            rank = (before[:, None, :] > mine[:, :, None]).sum(axis=2)  # experts used more recently
            for i, c in enumerate(caps):
                hits[i] += int((seen & (rank < c)).sum())
        out[:, layer] = hits / int(ok.sum())
    return out


def coactivation(trace: RoutingTrace, *, _ex: LayerMajor | None = None) -> IntArray:
    """Co-activation counts ``[L, E, E]``: tokens choosing both a and b at a layer; diagonal = load."""
    n_l, n_e = trace.n_moe_layers, trace.n_experts
    e1 = n_e + 1
    ex = _layer_major(trace.experts, n_e) if _ex is None else _ex
    counts = np.zeros((n_l, e1, e1), dtype=np.int64)
    code = _pair_dtype(e1)
    for layer in range(n_l):
        c = np.zeros(e1 * e1, dtype=np.int64)
        base = ex[layer].astype(code) * code(e1)
        for i in range(trace.k - 1):  # pairs of slots i < j, made symmetric below
            c += np.bincount((base[i][None, :] + ex[layer, i + 1 :]).ravel(), minlength=e1 * e1)
        m = c.reshape(e1, e1)
        counts[layer] = m + m.T
        counts[layer][np.diag_indices(e1)] = np.bincount(ex[layer].ravel(), minlength=e1)
    return counts[:, :n_e, :n_e]


def coactivation_summary(counts: npt.ArrayLike) -> dict[str, list[float | None]]:
    """Per layer: ``max_lift`` = max over pairs a != b of ``P(a and b) / (P(a) P(b))`` among pairs
    seen at least 5 times (1 when choices are independent), and ``mean_lift`` weighted by pair counts."""
    c = np.asarray(counts, dtype=np.float64)
    n_l, n_e = c.shape[0], c.shape[1]
    diag = np.einsum("lii->li", c)
    off = c.copy()
    off[:, np.arange(n_e), np.arange(n_e)] = 0.0
    max_lift = np.full(n_l, np.nan)
    mean_lift = np.full(n_l, np.nan)
    for layer in range(n_l):
        load = diag[layer]
        tot_pairs = off[layer].sum()
        if tot_pairs <= 0:
            continue
        pa = load / load.sum()
        expected = np.outer(pa, pa)
        np.fill_diagonal(expected, 0.0)
        expected /= expected.sum()
        observed = off[layer] / tot_pairs
        with np.errstate(invalid="ignore", divide="ignore"):
            lift = np.where(expected > 0, observed / np.where(expected > 0, expected, 1.0), np.nan)
        seen = off[layer] >= 5
        if seen.any():
            max_lift[layer] = float(np.nanmax(np.where(seen, lift, np.nan)))
        mean_lift[layer] = float(np.nansum(observed * np.nan_to_num(lift)))
    return {"max_lift": _floats(max_lift), "mean_lift": _floats(mean_lift)}


def moe_layer_ids(trace: RoutingTrace) -> list[int]:
    """The model's decoder-layer number of each MoE-layer column of ``trace``.

    ``meta["moe_layer_ids"]`` when the trace records them (importers and the tracer do, e.g.
    1..26 for DeepSeek-V2-Lite, whose layer 0 is dense); otherwise the MoE layers of the model
    preset named by ``meta["model"]`` when its MoE-layer count matches the trace (older files,
    synthetic traces of a preset); otherwise the column indices ``0..L-1``.
    """
    ids = trace.meta.get("moe_layer_ids")
    if isinstance(ids, (list, tuple)) and len(ids) == trace.n_moe_layers:
        return [int(i) for i in ids]
    name = trace.meta.get("model")
    if isinstance(name, str):
        try:
            preset = get_model(name)
        except UnknownPresetError:
            preset = None
        if preset is not None and preset.n_moe_layers == trace.n_moe_layers:
            return list(preset.moe_layers)
    return list(range(trace.n_moe_layers))


def trace_stats(trace: RoutingTrace, *, full: bool = False, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, Any]:
    """A JSON-able summary: shape keys (``tokens``, ``moe_layers``, ``n_experts``, ``top_k``,
    ``requests``, ``k``, ``null_fraction``), ``moe_layer_ids`` (the model's layer number of each
    column, `moe_layer_ids`; per-layer lists below are indexed by column), ``load`` (counts
    ``[L][E]`` and skew per layer),
    ``affinity`` (concentration per layer pair), ``temporal_reuse``, ``lru_hit_rate`` (per layer and
    mean, at the `LRU_FRACTIONS` cache sizes) and ``coactivation`` summaries.
    With ``full=True`` the affinity ``[L-1][E][E]`` and co-activation ``[L][E][E]`` matrices too.
    """
    ex = _layer_major(trace.experts, trace.n_experts)  # shared by the counts below
    load = expert_load(trace, _ex=ex)
    skew = load_skew(load)
    aff_c = affinity_counts(trace, _ex=ex)
    co = coactivation(trace, _ex=ex)
    del ex
    reuse = temporal_reuse(trace, max_distance=max_distance)
    lru = lru_hit_rate(trace, LRU_FRACTIONS)
    n_slots = trace.experts.size
    out: dict[str, Any] = {
        "model": trace.meta.get("model"),
        "tokens": trace.n_tokens,
        "moe_layers": trace.n_moe_layers,
        "n_experts": trace.n_experts,
        "top_k": trace.top_k,
        "k": trace.k,
        "requests": trace.n_requests,
        "moe_layer_ids": moe_layer_ids(trace),
        "null_fraction": _float(float((trace.experts < 0).sum() / n_slots) if n_slots else math.nan),
        "phase_counts": {"prefill": int((trace.phase == 0).sum()), "decode": int((trace.phase == 1).sum())},
        "load": {
            "counts": load.tolist(),
            **skew.to_dict(),
            "mean_gini": _nanmean(skew.gini),
            "mean_entropy": _nanmean(skew.entropy),
            "mean_max_over_mean": _nanmean(skew.max_over_mean),
        },
        "affinity": affinity_summary(aff_c) if aff_c.shape[0] else {},
        "temporal_reuse": reuse.to_dict(),
        "lru_hit_rate": {
            "cache_fraction": list(LRU_FRACTIONS),
            "cache_experts": [max(trace.k, round(f * trace.n_experts)) for f in LRU_FRACTIONS],
            "per_layer": [_floats(row) for row in lru],
            "mean": [_nanmean(row) for row in lru],
        },
        "coactivation": coactivation_summary(co),
    }
    aff = out["affinity"]
    if aff:
        aff["mean_top1"] = _nanmean(np.array(aff["top1"], dtype=float))
        aff["mean_mutual_information_bits"] = _nanmean(np.array(aff["mutual_information_bits"], dtype=float))
    if full:
        out["affinity"]["matrix"] = normalise_rows(aff_c).round(6).tolist()
        out["coactivation"]["matrix"] = co.tolist()
    return out


# ----------------------------------------------------------------- JSON helpers
def _float(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _floats(a: npt.ArrayLike) -> list[float | None]:
    return [_float(float(v)) for v in np.asarray(a, dtype=np.float64).ravel()]


def _nanmean(a: npt.ArrayLike) -> float | None:
    x = np.asarray(a, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None
