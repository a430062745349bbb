"""Vectorised layer sampler behind `workloads.process.RoutingProcess` (private).

One call of `sample_layer` draws the experts of every token at one MoE layer, given the
previous layer's experts of the same tokens: fresh draws without replacement (Plackett-Luce) from
per-token weights, then temporal reuse of the previous token's experts (`apply_copies`).

Two fresh-draw paths give the same distribution:

- *table* (``k <= 2`` and at most `TABLE_MAX_SETS` possible expert sets): the weights depend only
  on the previous set, so the probability of every outcome set is tabulated per previous set and
  each token needs one uniform and one ``searchsorted`` (fast for Mixtral-like 8 experts, top-2);
- *wide* (anything else): log-weights as an indicator-matrix product, then Gumbel-top-k in its
  exponential form (the k smallest ``Exp(1) / w``), chunked over tokens.

Memory: the wide path keeps each token's weights for the reuse choice, ``4 E`` bytes per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

#: Largest number of possible expert sets for which the table path is used.
TABLE_MAX_SETS = 512
#: Largest table (previous sets x outcomes) given alias tables (built by a Python loop per row);
#: bigger ones sample by ``searchsorted`` on row-offset CDFs.
ALIAS_MAX_CELLS = 1 << 14
_LOG_FLOOR = -80.0

I16 = npt.NDArray[np.int16]
F32 = npt.NDArray[np.float32]
WeightAt = Callable[[npt.NDArray[np.intp], I16], F32]


@dataclass(frozen=True)
class Tokens:
    """Token layout shared by all layers: ``has_prev[n]`` (a predecessor in the same request) and
    ``pos[n]`` (index inside the request: how many predecessors a token has)."""

    n: int
    has_prev: npt.NDArray[np.bool_]
    idx: npt.NDArray[np.intp]
    pos: npt.NDArray[np.int64]

    @classmethod
    def from_lengths(cls, lengths: npt.NDArray[np.int64]) -> Tokens:
        n = int(lengths.sum())
        has_prev = np.ones(n, dtype=bool)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        has_prev[starts[lengths > 0]] = False
        pos = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
        return cls(n=n, has_prev=has_prev, idx=np.arange(n), pos=pos)


def use_table(n_experts: int, k: int) -> bool:
    return k <= 2 and math.comb(n_experts, k) <= TABLE_MAX_SETS


@dataclass(frozen=True)
class LayerModel:
    """Everything about one layer that does not depend on the tokens (built once, reused).

    ``log_base[E]``: log-weights of the layer (popularity + bias); ``log_r[E_prev, E_next]``: log
    affinity factor added per previous expert (None at the first layer); ``copy_cdf[k+1]``: CDF of
    the number of experts copied from an earlier token of the same request; ``lag_cdf[D]``: CDF of
    how many tokens back that token is (``[1.0]``: always the previous one). For the table path,
    the per-previous-set weights and alias tables over ordered outcomes are precomputed.
    """

    k: int
    log_base: F32
    log_r: F32 | None
    copy_cdf: npt.NDArray[np.float32]
    co_log: F32 | None = None
    lut: npt.NDArray[np.int32] | None = None
    w_flat: F32 | None = None
    acc_flat: F32 | None = None
    alias_flat: npt.NDArray[np.int32] | None = None
    outcomes: I16 | None = None
    cdf_rows: npt.NDArray[np.float64] | None = None
    lag_cdf: npt.NDArray[np.float32] = field(default_factory=lambda: np.ones(1, dtype=np.float32))

    @property
    def n_experts(self) -> int:
        return int(self.log_base.size)

    @classmethod
    def build(
        cls,
        log_base: npt.ArrayLike,
        log_r: npt.ArrayLike | None,
        copy_dist: npt.ArrayLike,
        k: int,
        *,
        co_log: npt.ArrayLike | None = None,
        lag_dist: npt.ArrayLike | None = None,
    ) -> LayerModel:
        """``co_log[E, E]`` (first layer only, where ``log_r`` is None): log-weight added to every
        expert for each expert already picked by the token at this layer (within-layer coherence).
        ``lag_dist[D]``: probability that a copying token copies from the token ``d = 1..D`` back
        (None: always ``d = 1``)."""
        model = cls._build(log_base, log_r, copy_dist, k, co_log=co_log)
        if lag_dist is None:
            return model
        lag = np.asarray(lag_dist, dtype=np.float64)
        if lag.ndim != 1 or lag.size < 1 or lag.min() < 0 or lag.sum() <= 0:
            raise ValueError(f"LayerModel.build: lag_dist must be a non-empty distribution, got {lag}")
        cdf = np.cumsum(lag / lag.sum()).astype(np.float32)
        cdf[-1] = 1.0
        return replace(model, lag_cdf=cdf)

    @classmethod
    def _build(
        cls,
        log_base: npt.ArrayLike,
        log_r: npt.ArrayLike | None,
        copy_dist: npt.ArrayLike,
        k: int,
        *,
        co_log: npt.ArrayLike | None = None,
    ) -> LayerModel:
        lb = np.asarray(log_base, dtype=np.float32)
        lr = None if log_r is None else np.asarray(log_r, dtype=np.float32)
        co = None if co_log is None or lr is not None else np.asarray(co_log, dtype=np.float32)
        cdf = np.cumsum(np.asarray(copy_dist, dtype=np.float64)).astype(np.float32)
        n_e = lb.size
        if not use_table(n_e, k):
            return cls(k=k, log_base=lb, log_r=lr, copy_cdf=cdf, co_log=co)
        combos, lut = _combos(n_e, k)
        if lr is None:
            logw = lb[None, :].astype(np.float64)
        else:
            onehot = np.zeros((combos.shape[0], n_e))
            np.put_along_axis(onehot, combos, 1.0, axis=1)
            logw = lb[None, :] + onehot @ lr.astype(np.float64)
        w = np.exp(np.maximum(logw - logw.max(axis=1, keepdims=True), _LOG_FLOOR))  # [S, E]
        tot = w.sum(axis=1, keepdims=True)
        if k == 1:
            outcomes = np.arange(n_e)[:, None]
            prob = w / tot
        elif co is None:  # ordered pairs (i, j), i != j: P = w_i / W * w_j / (W - w_i)
            i, j = np.nonzero(~np.eye(n_e, dtype=bool))
            outcomes = np.stack([i, j], axis=1)
            prob = w[:, i] / tot * w[:, j] / (tot - w[:, i])
        else:  # the second pick's weights are tilted by the first: w_j exp(co[i, j])
            i, j = np.nonzero(~np.eye(n_e, dtype=bool))
            outcomes = np.stack([i, j], axis=1)
            w2 = w[0][None, :] * np.exp(co.astype(np.float64))  # [first, second]
            np.fill_diagonal(w2, 0.0)
            prob = (w[0, i] / tot[0, 0] * w2[i, j] / w2.sum(axis=1)[i])[None, :]
        prob /= prob.sum(axis=1, keepdims=True)
        if prob.size <= ALIAS_MAX_CELLS:
            accept, alias = alias_tables(prob)
            acc_flat, alias_flat = accept.ravel(), alias.ravel().astype(np.int32)
        else:  # big tables: inverse CDF by searchsorted over rows offset by their index (no Python loop)
            cum = np.cumsum(prob, axis=1)
            cum /= cum[:, -1:]
            acc_flat, alias_flat = None, None
            cdf_rows = (cum + np.arange(prob.shape[0])[:, None]).ravel()
            return cls(
                k=k,
                log_base=lb,
                log_r=lr,
                copy_cdf=cdf,
                co_log=co,
                lut=lut.astype(np.int32),
                w_flat=w.astype(np.float32).ravel(),
                cdf_rows=cdf_rows,
                outcomes=outcomes.T.astype(np.int16),
            )
        return cls(
            k=k,
            log_base=lb,
            log_r=lr,
            copy_cdf=cdf,
            co_log=co,
            lut=lut.astype(np.int32),
            w_flat=w.astype(np.float32).ravel(),
            acc_flat=acc_flat,
            alias_flat=alias_flat,
            outcomes=outcomes.T.astype(np.int16),
        )


def sample_layer(model: LayerModel, prev: I16 | None, rng: np.random.Generator, tokens: Tokens) -> I16:
    """Experts ``[k, n]`` of one layer given the previous layer's ``prev [k, n]`` (None at the first)."""
    k = model.k
    if model.lut is not None:
        fresh, weight_at = _table_fresh(model, prev, rng, tokens.n)
    elif prev is None and model.co_log is not None:
        fresh, weight_at = _coherent_first(model.log_base, model.co_log, k, rng, tokens.n)
    else:
        fresh, weight_at = _wide_fresh(prev, model.log_base, model.log_r, k, rng, tokens.n)
    u = rng.random(tokens.n, dtype=np.float32)
    m = np.zeros(tokens.n, dtype=np.intp)
    for c in model.copy_cdf[:-1]:
        m += u >= c
    m[~tokens.has_prev] = 0
    lag = None
    if model.lag_cdf.size > 1:  # no extra random numbers for lag-1-only models (reproducible)
        u = rng.random(tokens.n, dtype=np.float32)
        lag = np.ones(tokens.n, dtype=np.intp)
        for c in model.lag_cdf[:-1]:
            lag += u >= c
        np.minimum(lag, np.maximum(tokens.pos, 1), out=lag)  # a token copies from within its request
    return apply_copies(fresh, weight_at, m, tokens.idx, rng, lag=lag)


# ------------------------------------------------------------------ fresh draws
def _combos(n_e: int, k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """All k-subsets ``[C, k]`` (sorted) and a lookup ``a * E + b -> id`` (k=2) or ``a -> id``."""
    if k == 1:
        return np.arange(n_e)[:, None], np.arange(n_e)
    a, b = np.triu_indices(n_e, 1)
    lut = np.zeros(n_e * n_e, dtype=np.intp)
    ids = np.arange(a.size)
    lut[a * n_e + b] = ids
    lut[b * n_e + a] = ids
    return np.stack([a, b], axis=1), lut


def alias_tables(prob: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """Walker/Vose alias tables for each row of ``prob [S, C]`` (rows sum to 1): draw column
    ``c = floor(u1 C)``, keep it if ``u2 < accept[s, c]`` else take ``alias[s, c]``."""
    n_s, n_c = prob.shape
    accept = np.ones((n_s, n_c), dtype=np.float64)
    alias = np.tile(np.arange(n_c), (n_s, 1))
    scaled = prob * n_c
    for s in range(n_s):
        q = scaled[s].tolist()
        small = [i for i, v in enumerate(q) if v < 1.0]
        large = [i for i, v in enumerate(q) if v >= 1.0]
        acc, ali = accept[s], alias[s]
        while small and large:
            lo, hi = small.pop(), large.pop()
            acc[lo] = q[lo]
            ali[lo] = hi
            q[hi] -= 1.0 - q[lo]
            (small if q[hi] < 1.0 else large).append(hi)
    return accept.astype(np.float32), alias


def _table_fresh(model: LayerModel, prev: I16 | None, rng: np.random.Generator, n: int) -> tuple[I16, WeightAt]:
    """Ranked draws ``[k, n]`` from the layer's alias tables over ordered outcomes (k <= 2).

    One float32 uniform per token: its integer part (times the outcome count) picks an alias
    column, its fraction decides between the column and its alias."""
    assert model.lut is not None and model.w_flat is not None and model.outcomes is not None
    n_e, k = model.n_experts, model.k
    if prev is None or model.log_r is None:
        sid = np.zeros(n, dtype=np.int32)
    elif prev.shape[0] == 1:
        sid = model.lut[prev[0]]
    else:
        key = prev[0].astype(np.int32)
        key *= n_e
        key += prev[1]
        sid = model.lut[key]
    n_c = model.outcomes.shape[1]
    if model.cdf_rows is not None:
        u = rng.random(n)
        col = (np.searchsorted(model.cdf_rows, sid + u, side="right") - sid.astype(np.int64) * n_c).astype(np.int32)
        np.clip(col, 0, n_c - 1, out=col)
    else:
        assert model.acc_flat is not None and model.alias_flat is not None
        x = rng.random(n, dtype=np.float32)
        x *= np.float32(n_c)
        col = x.astype(np.int32)
        np.minimum(col, n_c - 1, out=col)
        x -= col  # the fraction, uniform in [0, 1)
        flat = sid * np.int32(n_c)
        flat += col
        reject = x >= model.acc_flat[flat]
        col[reject] = model.alias_flat[flat[reject]]
    fresh = np.empty((k, n), dtype=np.int16)
    for r in range(k):
        fresh[r] = model.outcomes[r][col]  # in draw order
    w_flat = model.w_flat
    row = sid * np.int32(n_e)

    def weight_at(tok: npt.NDArray[np.intp], experts: I16) -> F32:
        base = row[tok]
        return np.stack([w_flat[base + e] for e in experts])

    return fresh, weight_at


def _wide_fresh(
    prev: I16 | None, log_base: F32, log_r: F32 | None, k: int, rng: np.random.Generator, n: int
) -> tuple[I16, WeightAt]:
    """Gumbel-top-k in exponential form: the k smallest ``Exp(1) / w`` per token, found by sorting
    the keys with the expert index packed into their low mantissa bits (positive float32 keys sort
    like their int32 bit patterns; ``ceil(log2 E)`` bits of precision are given up)."""
    n_e = log_base.size
    bits = max(1, (n_e - 1).bit_length())
    low = np.int32((1 << bits) - 1)
    idx = np.arange(n_e, dtype=np.int32)
    chunk = max(1, (1 << 20) // n_e)
    fresh = np.empty((k, n), dtype=np.int16)
    weight = np.empty((n, n_e), dtype=np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        logits = weight[lo:hi]
        if prev is None or log_r is None:
            logits[:] = log_base[None, :]
        else:
            np.take(log_r, prev[0, lo:hi], axis=0, out=logits)
            for j in range(1, prev.shape[0]):
                logits += log_r[prev[j, lo:hi]]
            logits += log_base
        logits -= logits.max(axis=1, keepdims=True)
        np.maximum(logits, _LOG_FLOOR, out=logits)
        np.exp(logits, out=logits)
        keys = rng.random((hi - lo, n_e), dtype=np.float32)
        np.negative(keys, out=keys)
        np.log1p(keys, out=keys)  # log(1 - u) <= 0, finite for u in [0, 1)
        np.negative(keys, out=keys)  # Exp(1)
        keys /= logits
        packed = keys.view(np.int32)
        packed &= ~low
        packed |= idx
        packed.sort(axis=1)
        fresh[:, lo:hi] = (packed[:, :k] & low).T

    def weight_at(tok: npt.NDArray[np.intp], experts: I16) -> F32:
        return weight[tok[None, :], experts]

    return fresh, weight_at


def _coherent_first(log_base: F32, co_log: F32, k: int, rng: np.random.Generator, n: int) -> tuple[I16, WeightAt]:
    """First-layer draws with within-layer coherence: k sequential Gumbel-argmax picks, each pick
    adding its ``co_log`` row to the remaining experts' log-weights (the Gumbel noise of an expert
    is drawn once, so this approximates sequential Plackett-Luce; calibration absorbs the bias)."""
    n_e = log_base.size
    chunk = max(1, (1 << 20) // n_e)
    fresh = np.empty((k, n), dtype=np.int16)
    base_w = np.exp(log_base - log_base.max()).astype(np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        m = hi - lo
        u = rng.random((m, n_e), dtype=np.float32)
        np.negative(u, out=u)
        np.log1p(u, out=u)
        np.negative(u, out=u)
        np.maximum(u, np.float32(1e-30), out=u)
        np.log(u, out=u)  # log Exp(1) = -Gumbel
        score = log_base[None, :] - u  # log w + Gumbel
        rows = np.arange(m)
        for p in range(k):
            pick = np.argmax(score, axis=1)
            fresh[p, lo:hi] = pick
            score[rows, pick] = -np.inf
            if p < k - 1:
                score += co_log[pick]

    def weight_at(tok: npt.NDArray[np.intp], experts: I16) -> F32:
        return base_w[experts]

    return fresh, weight_at


# ------------------------------------------------------------------ temporal reuse
def apply_copies(
    fresh: I16,
    weight_at: WeightAt,
    m: npt.NDArray[np.intp],
    idx: npt.NDArray[np.intp],
    rng: np.random.Generator,
    *,
    lag: npt.NDArray[np.intp] | None = None,
) -> I16:
    """Final experts ``[k, n]`` of one layer from the ranked fresh draws ``fresh [k, n]``.

    A token with ``m > 0`` copies from its source, the token ``lag`` positions earlier (``lag``
    None: 1; the caller guarantees the source is in the same request). ``m == k``: the source's
    whole final set; ``0 < m < k``: ``m`` of the source's experts, drawn without replacement with
    probability proportional to the token's own weights (so reuse follows the token's affinity
    path), the rest its best ranked fresh draws not among them; ``m == 0``: ``fresh``.

    Resolution equals the sequential rule: whole copies point to their source, and pointer jumping
    finds each one's root (a token that does not copy wholly); partially copying tokens are
    recomputed in passes, each pass only for those whose root changed in the previous pass, until
    nothing changes (the random numbers of each token are fixed, so the result is exact).
    """
    k = fresh.shape[0]
    parent = idx.copy() if lag is None else idx - lag
    if lag is None:
        parent -= 1
    copying = m > 0
    full = m >= k
    ptr = np.where(full, parent, idx)
    while True:  # pointer jumping: each whole copy points to its root (a token not copying wholly)
        nxt = ptr[ptr]
        if np.array_equal(nxt, ptr):
            break
        ptr = nxt
    part = np.flatnonzero(copying & ~full)
    if part.size == 0:
        return fresh[:, ptr]
    root = ptr[parent[part]]  # the token whose final value each partial token reads
    if k == 2:  # the k = 2 path draws its noise as -log1p(-u) (kept for reproducible streams)
        noise = -np.log1p(-rng.random((2, part.size), dtype=np.float32))
    else:
        noise = -np.log(rng.random((k, part.size), dtype=np.float32) + np.float32(1e-12))
    vals = fresh.copy()
    by_root = np.argsort(root, kind="stable")  # partial tokens grouped by the token they read
    root_sorted = root[by_root]
    pos = np.arange(part.size)  # positions (into part) of the active tokens
    cols_all = np.arange(part.size)
    while pos.size:
        tok = part[pos]
        prev_all = vals[:, root[pos]]
        cand = fresh[:, tok]
        w = weight_at(tok, prev_all)
        if k == 2:  # m == 1: keep the preferred one (Exp0 / w0 <= Exp1 / w1), fill with the best fresh one
            c = np.where(noise[0, pos] * w[1] <= noise[1, pos] * w[0], prev_all[0], prev_all[1])
            new = np.stack([c, np.where(cand[0] != c, cand[0], cand[1])])
        else:
            mp = m[tok]
            order = np.argsort(noise[:, pos] / w, axis=0)
            prev = np.take_along_axis(prev_all, order, axis=0)  # source set, preferred first
            copy_mask = np.arange(k)[:, None] < mp[None, :]
            new = prev.copy()
            dup = np.zeros(cand.shape, dtype=bool)
            for j in range(k - 1):  # copied experts sit in slots 0..m-1 (m <= k-1)
                dup |= (cand == prev[j]) & copy_mask[j]
            filled = mp.copy()
            cols = cols_all[: tok.size]
            for j in range(k):  # the best ranked candidates not copied fill slots m, m+1, ...
                ok = ~dup[j] & (filled < k)
                new[filled[ok], cols[ok]] = cand[j, ok]
                filled += ok
        changed = np.any(new != vals[:, tok], axis=0)
        vals[:, tok] = new
        moved = tok[changed]
        if not moved.size:
            break
        lo = np.searchsorted(root_sorted, moved, side="left")
        hi = np.searchsorted(root_sorted, moved, side="right")
        cnt = hi - lo
        if not cnt.sum():
            break
        starts = np.repeat(lo - np.concatenate([[0], np.cumsum(cnt)[:-1]]), cnt)
        pos = by_root[starts + np.arange(int(cnt.sum()))]
    return vals[:, ptr]


def log_factor(pmi: npt.NDArray[np.float64], beta: float, pop_prev: npt.NDArray[np.float64], clip: float = 20.0) -> F32:
    """``[E_prev, E_next]`` log of ``exp(beta * PMI)``, each next-expert column scaled so that its
    mean under the previous layer's popularity is 1 (the factor reshapes the conditionals without
    moving the marginal much, which keeps ``bias`` and ``beta`` nearly decoupled)."""
    log_r = np.clip(beta * pmi, -clip, clip)
    r = np.exp(log_r)
    log_r -= np.log((pop_prev[:, None] * r).sum(axis=0, keepdims=True))
    return log_r.astype(np.float32)
