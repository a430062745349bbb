"""The vectorised layer sampler against exact probabilities and a sequential reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from workloads import _routing_sampler as rs
from workloads.process import RoutingProcess


def pl_pair_probs(w: np.ndarray) -> dict[tuple[int, int], float]:
    """Exact Plackett-Luce probabilities of ordered pairs (first, second)."""
    tot = w.sum()
    return {(i, j): w[i] / tot * w[j] / (tot - w[i]) for i, j in itertools.permutations(range(w.size), 2)}


@pytest.mark.parametrize("path", ["table", "wide"])
def test_first_layer_draws_follow_plackett_luce(path: str) -> None:
    w = np.array([0.5, 0.25, 0.15, 0.1])
    n = 200_000
    rng = np.random.default_rng(0)
    tokens = rs.Tokens.from_lengths(np.array([1] * n))  # no predecessor: no copies
    copy = np.array([1.0, 0.0, 0.0])
    model = rs.LayerModel.build(np.log(w), None, copy, 2)
    if path == "wide":  # force the general path on the same weights
        model = rs.LayerModel(k=2, log_base=model.log_base, log_r=None, copy_cdf=model.copy_cdf)
    out = rs.sample_layer(model, None, rng, tokens)
    assert out.shape == (2, n) and np.all(out[0] != out[1])
    exact = pl_pair_probs(w)
    counts = np.bincount(out[0].astype(int) * 4 + out[1], minlength=16)
    for (i, j), p in exact.items():
        se = np.sqrt(p * (1 - p) / n)
        assert abs(counts[i * 4 + j] / n - p) < 5 * se, (i, j)


def test_affinity_factor_conditions_on_previous_set() -> None:
    """With a strong affinity 'expert a -> expert a', the next layer mostly repeats the previous set."""
    n_e, k, n = 6, 2, 20_000
    log_r = np.full((n_e, n_e), -3.0, dtype=np.float32)
    np.fill_diagonal(log_r, 3.0)
    model = rs.LayerModel.build(np.zeros(n_e), log_r, np.array([1.0, 0.0, 0.0]), k)
    rng = np.random.default_rng(1)
    prev = np.stack([rng.permutation(n_e)[:k] for _ in range(n)], axis=1).astype(np.int16)
    tokens = rs.Tokens.from_lengths(np.array([1] * n))
    out = rs.sample_layer(model, prev, rng, tokens)
    same = np.mean([set(out[:, t]) == set(prev[:, t]) for t in range(0, n, 10)])
    assert same > 0.9


def sequential_copies(fresh: np.ndarray, weight: np.ndarray, m: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Reference: token by token, the rule that `apply_copies` vectorises."""
    k, n = fresh.shape
    out = fresh.copy()
    part = np.flatnonzero((m > 0) & (m < k))
    pos_of = {int(t): i for i, t in enumerate(part)}
    for t in range(n):
        if m[t] >= k:
            out[:, t] = out[:, t - 1]
        elif m[t] > 0:
            prev = out[:, t - 1]
            keys = noise[:, pos_of[t]] / weight[t, prev]
            pref = prev[np.argsort(keys, kind="stable")]
            kept = list(pref[: m[t]])
            for c in fresh[:, t]:
                if len(kept) == k:
                    break
                if c not in kept:
                    kept.append(c)
            out[:, t] = kept
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
def test_apply_copies_matches_sequential_reference(k: int) -> None:
    rng = np.random.default_rng(k)
    n_e, n = 9, 3000
    fresh = np.stack([rng.permutation(n_e)[:k] for _ in range(n)], axis=1).astype(np.int16)
    weight = rng.random((n, n_e)).astype(np.float32) + 0.05
    m = rng.integers(0, k + 1, n)
    m[rng.random(n) < 0.05] = 0
    m[0] = 0
    starts = np.flatnonzero(m == 0)  # make every m == 0 token a request start, like sample_layer
    part = np.flatnonzero((m > 0) & (m < k))
    seed_rng = np.random.default_rng(99)
    noise = -np.log(seed_rng.random((k, part.size), dtype=np.float32) + np.float32(1e-12))
    if k == 2:  # the k = 2 path draws its noise as -log1p(-u)
        u = np.random.default_rng(99).random((2, part.size), dtype=np.float32)
        noise = -np.log1p(-u)

    def weight_at(tok: np.ndarray, experts: np.ndarray) -> np.ndarray:
        return weight[tok[None, :], experts]

    got = rs.apply_copies(fresh, weight_at, m, np.arange(n), np.random.default_rng(99))
    want = sequential_copies(fresh, weight, m, noise)
    assert starts.size > 0
    np.testing.assert_array_equal(got, want)
    assert np.all(np.sort(got, axis=0)[1:] != np.sort(got, axis=0)[:-1])  # distinct experts per token


@pytest.mark.parametrize(("n_e", "k"), [(4, 1), (8, 2), (200, 1), (12, 3), (40, 6)])
def test_paths_sample_valid_sets(n_e: int, k: int) -> None:
    """Every sampler path (alias table, searchsorted table, wide) gives distinct in-range experts and
    reproduces the popularity when there is no affinity and no reuse."""
    rng = np.random.default_rng(n_e)
    n_l = 3
    pop = rng.dirichlet(np.full(n_e, 2.0), size=n_l)
    pop = np.minimum(pop, 0.9 / k)
    pop /= pop.sum(axis=1, keepdims=True)
    proc = RoutingProcess(
        popularity=pop,
        affinity=np.broadcast_to(pop[1:, None, :], (n_l - 1, n_e, n_e)),
        bias=np.zeros((n_l, n_e)),
        beta=np.zeros(n_l - 1),
        reuse_rate=np.zeros(n_l),
        overlap=np.tile(np.eye(1, k + 1), (n_l, 1)),
        copy_scale=np.zeros(n_l),
        mi_target=np.zeros(n_l - 1),
        top_k=k,
    )
    proc = proc.calibrate(iterations=4, n_tokens=20_000)
    t = proc.sample(20_000, seed=3, tokens_per_request=20)
    e = np.sort(t.experts, axis=2)
    assert e.min() >= 0 and e.max() < n_e and np.all(np.diff(e, axis=2) != 0)
    load = np.stack([np.bincount(t.experts[:, layer].ravel(), minlength=n_e) for layer in range(n_l)])
    share = load / load.sum(axis=1, keepdims=True)
    assert np.abs(share - pop).max() < 0.02


def test_apply_copies_with_lags_matches_sequential_reference() -> None:
    """Copies from the token ``lag`` back (whole sets through chains, partial sets in passes) equal
    the token-by-token rule."""
    rng = np.random.default_rng(5)
    k, n_e, n = 3, 9, 3000
    fresh = np.stack([rng.permutation(n_e)[:k] for _ in range(n)], axis=1).astype(np.int16)
    weight = rng.random((n, n_e)).astype(np.float32) + 0.05
    m = rng.integers(0, k + 1, n)
    lag = np.minimum(rng.integers(1, 6, n), np.maximum(np.arange(n), 1))
    m[0] = 0
    part = np.flatnonzero((m > 0) & (m < k))
    noise = -np.log(np.random.default_rng(99).random((k, part.size), dtype=np.float32) + np.float32(1e-12))

    def weight_at(tok: np.ndarray, experts: np.ndarray) -> np.ndarray:
        return weight[tok[None, :], experts]

    got = rs.apply_copies(fresh, weight_at, m, np.arange(n), np.random.default_rng(99), lag=lag)
    want = fresh.copy()
    pos_of = {int(t): i for i, t in enumerate(part)}
    for t in range(n):
        src = want[:, t - lag[t]]
        if m[t] >= k:
            want[:, t] = src
        elif m[t] > 0:
            pref = src[np.argsort(noise[:, pos_of[t]] / weight[t, src], kind="stable")]
            kept = list(pref[: m[t]])
            kept += [c for c in fresh[:, t] if c not in kept][: k - len(kept)]
            want[:, t] = kept
    np.testing.assert_array_equal(got, want)
