"""Routing statistics: hand-made traces with known answers, properties, brute force, real traces."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads.stats import (
    affinity,
    affinity_counts,
    coactivation,
    expert_load,
    load_skew,
    moe_layer_ids,
    mutual_information,
    request_order,
    temporal_reuse,
    trace_stats,
)
from workloads.trace import RoutingTrace


def make_trace(experts: list | np.ndarray, request: list[int], position: list[int], n_experts: int) -> RoutingTrace:
    e = np.asarray(experts, dtype=np.int16)
    return RoutingTrace(
        experts=e,
        request=np.asarray(request),
        position=np.asarray(position),
        phase=np.ones(e.shape[0], dtype=np.uint8),
        meta={"model": "toy", "n_experts": n_experts, "top_k": e.shape[2], "source": "test"},
    )


@pytest.fixture
def tiny() -> RoutingTrace:
    """E=4, k=2, 2 layers; request 0 has tokens 0, 1; request 1 has token 0. Rows shuffled."""
    rows = [
        ([[3, 0], [0, 1]], 1, 0),  # request 1, token 0
        ([[1, 2], [2, -1]], 0, 1),  # request 0, token 1 (one slot empty at layer 1)
        ([[0, 1], [2, 3]], 0, 0),  # request 0, token 0
    ]
    return make_trace([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], 4)


def test_load_known(tiny: RoutingTrace) -> None:
    assert expert_load(tiny).tolist() == [[2, 2, 1, 1], [1, 1, 2, 1]]


def test_skew_known(tiny: RoutingTrace) -> None:
    sk = load_skew(tiny)
    assert sk.gini[0] == pytest.approx(2 * (1 + 2 + 6 + 8) / 24 - 5 / 4)
    p = np.array([2, 2, 1, 1]) / 6
    assert sk.entropy[0] == pytest.approx(-(p * np.log(p)).sum() / math.log(4))
    assert sk.max_over_mean[0] == pytest.approx(2 / 1.5)


def test_skew_extremes() -> None:
    sk = load_skew(np.array([[5, 5, 5, 5], [20, 0, 0, 0], [0, 0, 0, 0]]))
    assert sk.gini[0] == pytest.approx(0.0) and sk.entropy[0] == pytest.approx(1.0)
    assert sk.gini[1] == pytest.approx(0.75) and sk.entropy[1] == pytest.approx(0.0)
    assert sk.max_over_mean[1] == pytest.approx(4.0)
    assert np.isnan(sk.gini[2]) and np.isnan(sk.entropy[2])


def test_affinity_known(tiny: RoutingTrace) -> None:
    a = affinity(tiny)
    assert a.shape == (1, 4, 4)
    np.testing.assert_allclose(a[0, 0], [0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(a[0, 1], [0, 0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(a[0, 2], [0, 0, 1, 0])
    np.testing.assert_allclose(a[0, 3], [0.5, 0.5, 0, 0])


def test_temporal_reuse_known(tiny: RoutingTrace) -> None:
    r = temporal_reuse(tiny, max_distance=3)
    np.testing.assert_allclose(r.rate, [0.5, 1.0])
    assert r.reused.tolist() == [1, 1] and r.slots.tolist() == [2, 1]
    assert r.overlap_hist.tolist() == [[0, 1, 0], [0, 1, 0]]
    assert r.distance_hist.tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert r.first_use.tolist() == [5, 4]
    assert r.mean_rate == pytest.approx(2 / 3)


def test_reuse_distance_counts_gaps() -> None:
    # one request, expert 0 at tokens 0 and 3 (distance 3), expert 1 at 1 and 2 (distance 1), k = 1
    t = make_trace([[[0]], [[1]], [[1]], [[0]], [[2]]], [0] * 5, list(range(5)), 3)
    r = temporal_reuse(t, max_distance=2)
    assert r.distance_hist[0].tolist() == [1, 0, 1]  # d=1, d=2, d>2
    assert r.first_use[0] == 3
    assert r.rate[0] == pytest.approx(1 / 4)


def test_coactivation_known(tiny: RoutingTrace) -> None:
    c = coactivation(tiny)
    assert c.shape == (2, 4, 4)
    assert np.array_equal(c, c.transpose(0, 2, 1))
    assert np.diag(c[0]).tolist() == [2, 2, 1, 1]
    assert c[0, 0, 1] == 1 and c[0, 1, 2] == 1 and c[0, 0, 3] == 1 and c[0, 2, 3] == 0
    assert c[1, 2, 3] == 1 and c[1, 2].sum() == 2 + 1  # diagonal 2 (load) + pair with 3; the -1 adds nothing


def test_request_order(tiny: RoutingTrace) -> None:
    order = request_order(tiny)
    assert tiny.request[order].tolist() == [0, 0, 1] and tiny.position[order].tolist() == [0, 1, 0]


def test_trace_stats_json(tiny: RoutingTrace) -> None:
    s = trace_stats(tiny, full=True)
    json.dumps(s, allow_nan=False)  # strictly JSON-able
    for key, value in (("tokens", 3), ("moe_layers", 2), ("n_experts", 4), ("top_k", 2), ("requests", 2)):
        assert s[key] == value
    assert s["load"]["counts"] == [[2, 2, 1, 1], [1, 1, 2, 1]]
    assert s["temporal_reuse"]["rate"] == [0.5, 1.0]
    assert s["null_fraction"] == pytest.approx(1 / 12)
    assert np.asarray(s["affinity"]["matrix"]).shape == (1, 4, 4)


def test_mutual_information() -> None:
    assert mutual_information(np.outer([1, 2, 3], [4, 5, 6]))[()] == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(np.eye(4) * 10)[()] == pytest.approx(2.0)


# ---------------------------------------------------------------- properties and brute force
def random_trace(seed: int, n: int, n_l: int, k: int, n_e: int, n_req: int, null_p: float) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    keys = rng.random((n, n_l, n_e)) ** 3  # skewed, distinct top-k
    ex = np.argsort(keys, axis=2)[:, :, :k].astype(np.int16)
    ex[rng.random(ex.shape) < null_p] = -1
    req = np.sort(rng.integers(0, n_req, n))
    pos = np.zeros(n, dtype=np.int64)
    for r in np.unique(req):
        pos[req == r] = np.arange((req == r).sum())
    perm = rng.permutation(n)
    return make_trace(ex[perm], req[perm].tolist(), pos[perm].tolist(), n_e)


shapes = st.tuples(
    st.integers(0, 10_000),
    st.integers(1, 60),
    st.integers(1, 5),
    st.integers(1, 3),
    st.integers(3, 9),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.1, 0.5]),
)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_properties(args: tuple[int, int, int, int, int, int, float]) -> None:
    seed, n, n_l, k, n_e, n_req, null_p = args
    k = min(k, n_e)
    t = random_trace(seed, n, n_l, k, n_e, n_req, null_p)
    valid = int((t.experts >= 0).sum())
    load = expert_load(t)
    assert load.sum() == valid  # tokens * k minus the -1 entries
    a = affinity(t)
    mass = affinity_counts(t).sum(axis=2)
    np.testing.assert_allclose(a.sum(axis=2)[mass > 0], 1.0)
    assert np.all(a.sum(axis=2)[mass == 0] == 0)
    c = coactivation(t)
    assert np.array_equal(c, c.transpose(0, 2, 1))
    assert np.array_equal(np.einsum("lii->li", c), load)
    r = temporal_reuse(t, max_distance=4)
    assert int(r.distance_hist.sum() + r.first_use.sum()) == valid
    ok = np.isfinite(r.rate)
    assert np.all((r.rate[ok] >= 0) & (r.rate[ok] <= 1))


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_against_brute_force(args: tuple[int, int, int, int, int, int, float]) -> None:
    seed, n, n_l, k, n_e, n_req, null_p = args
    k = min(k, n_e)
    t = random_trace(seed, n, n_l, k, n_e, n_req, null_p)
    # brute force with Python loops
    rows = sorted(range(n), key=lambda i: (t.request[i], t.position[i]))
    aff = np.zeros((max(n_l - 1, 0), n_e, n_e), dtype=np.int64)
    reused = np.zeros(n_l, dtype=np.int64)
    slots = np.zeros(n_l, dtype=np.int64)
    d1 = np.zeros(n_l, dtype=np.int64)
    last: dict[tuple[int, int, int], int] = {}
    for pos_i, i in enumerate(rows):
        sets = [[int(e) for e in t.experts[i, layer] if e >= 0] for layer in range(n_l)]
        for layer in range(n_l - 1):
            for a in sets[layer]:
                for b in sets[layer + 1]:
                    aff[layer, a, b] += 1
        prev = rows[pos_i - 1] if pos_i > 0 and t.request[rows[pos_i - 1]] == t.request[i] else None
        for layer in range(n_l):
            if prev is not None:
                pset = {int(e) for e in t.experts[prev, layer] if e >= 0}
                slots[layer] += len(sets[layer])
                reused[layer] += sum(e in pset for e in sets[layer])
            for e in sets[layer]:
                key = (int(t.request[i]), layer, e)
                if key in last and pos_i - last[key] == 1:
                    d1[layer] += 1
                last[key] = pos_i
    assert np.array_equal(affinity_counts(t), aff)
    r = temporal_reuse(t)
    assert r.reused.tolist() == reused.tolist() and r.slots.tolist() == slots.tolist()
    assert r.distance_hist[:, 0].tolist() == d1.tolist()


# ---------------------------------------------------------------- real traces
@pytest.mark.parametrize("name", ["deepseek", "mixtral"])
def test_real_traces_sane(name: str, request: pytest.FixtureRequest) -> None:
    t: RoutingTrace = request.getfixturevalue(name)
    s = trace_stats(t)
    json.dumps(s, allow_nan=False)
    assert s["tokens"] == t.n_tokens and s["moe_layers"] == t.n_moe_layers
    gini = np.array(s["load"]["gini"], dtype=float)
    entropy = np.array(s["load"]["entropy"], dtype=float)
    assert np.all((gini > 0) & (gini < 0.5)) and np.all((entropy > 0.8) & (entropy <= 1.0))
    rate = np.array(s["temporal_reuse"]["rate"], dtype=float)
    chance = t.top_k / t.n_experts
    # real routing reuses the previous token's experts far more than chance (k / E) on average
    assert np.all(np.isfinite(rate)) and rate.mean() > 1.3 * chance
    mi = np.array(s["affinity"]["mutual_information_bits"], dtype=float)
    assert np.all(mi > 0.0)
    top1 = np.array(s["affinity"]["top1"], dtype=float)
    assert np.all(top1 > 1.0 / t.n_experts)


def test_deepseek_known_figures(deepseek: RoutingTrace) -> None:
    """Pinned figures of the DeepSeek-V2-Lite prompts (see the README)."""
    load = expert_load(deepseek)
    assert load.shape == (26, 64) and int(load.sum()) == 19_520 * 26 * 6
    r = temporal_reuse(deepseek)
    assert r.mean_rate == pytest.approx(0.262, abs=0.002)
    assert load_skew(load).gini.mean() == pytest.approx(0.131, abs=0.002)


def test_mixtral_missing_layers_ignored(mixtral: RoutingTrace) -> None:
    load = expert_load(mixtral)
    assert int(load.sum()) == int((mixtral.experts >= 0).sum()) < mixtral.experts.size


def test_js_distance_matches_scipy_and_handles_edges() -> None:
    from scipy.spatial.distance import jensenshannon

    from workloads.stats import js_distance

    rng = np.random.default_rng(0)
    p, q = rng.random((40, 9)), rng.random((40, 9))
    p[5, :4] = 0.0
    np.testing.assert_allclose(js_distance(p, q), jensenshannon(p, q, axis=1, base=2), atol=1e-12)
    assert js_distance(p[0], p[0]) == 0.0
    assert js_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert np.isnan(js_distance([0.0, 0.0], [1.0, 0.0]))


def test_moe_layer_ids_recorded_preset_or_columns(tiny: RoutingTrace) -> None:
    assert moe_layer_ids(tiny) == [0, 1]  # unknown model "toy": column indices
    kw: dict[str, Any] = {
        "experts": tiny.experts,
        "request": tiny.request,
        "position": tiny.position,
        "phase": tiny.phase,
    }
    rec = RoutingTrace(meta={**tiny.meta, "moe_layer_ids": [5, 9]}, **kw)
    assert moe_layer_ids(rec) == [5, 9] and trace_stats(rec)["moe_layer_ids"] == [5, 9]
    n = 3
    ds_like = RoutingTrace(
        experts=np.tile(np.arange(6, dtype=np.int16), (n, 26, 1)),
        request=np.zeros(n, np.int32),
        position=np.arange(n, dtype=np.int32),
        phase=np.zeros(n, np.uint8),
        meta={
            "model": "deepseek-v2-lite",
            "n_experts": 64,
            "top_k": 6,
            "moe_layer_ids": "column c = Layer ID c+1 (layer 0 is dense)",
        },
    )  # older files
    assert moe_layer_ids(ds_like) == list(range(1, 27))  # from the preset: layer 0 is dense
    other = RoutingTrace(meta={**tiny.meta, "model": "deepseek-v2-lite"}, **kw)  # 2 layers: not the preset's 26
    assert moe_layer_ids(other) == [0, 1]


def test_statistics_leave_the_trace_untouched() -> None:
    t = make_trace([[[-1, 2]]], [0], [0], 4)  # one token: the layer-major transpose is already contiguous
    before = t.experts.copy()
    trace_stats(t)
    assert np.array_equal(t.experts, before)
