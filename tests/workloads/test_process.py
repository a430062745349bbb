"""RoutingProcess: fit, sample, determinism, JSON, retarget/relayer, and fidelity on real traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workloads import stats
from workloads.fidelity import METRICS, compare, holdout_evaluation, split_requests, uniform_trace
from workloads.process import ASSUMPTIONS, ProcessFormatError, RoutingProcess
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def mix_proc(mixtral: RoutingTrace) -> RoutingProcess:
    return RoutingProcess.fit(mixtral, seed=0)


def distinct(experts: np.ndarray) -> bool:
    s = np.sort(experts, axis=2)
    return bool(np.all(np.diff(s, axis=2) != 0))


def test_fit_shapes_and_targets(mix_proc: RoutingProcess, mixtral: RoutingTrace) -> None:
    p = mix_proc
    assert (p.n_moe_layers, p.n_experts, p.top_k) == (32, 8, 2)
    assert p.affinity.shape == (31, 8, 8) and p.overlap.shape == (32, 3)
    np.testing.assert_allclose(p.popularity.sum(axis=1), 1.0)
    np.testing.assert_allclose(p.affinity.sum(axis=2), 1.0)
    np.testing.assert_allclose(p.reuse_rate, stats.temporal_reuse(mixtral).rate, atol=1e-12)
    assert p.phase == 1  # a decode trace
    ach = p.meta["calibration"]["achieved"]
    assert ach["reuse_abs_error"] < 0.02 and ach["load_max_rel_error"] < 0.15


@pytest.mark.parametrize("kw", [{}, {"n_requests": 7}, {"tokens_per_request": 50}, {"request_lengths": [1, 99, 200]}])
def test_sample_shapes_distinct_deterministic(mix_proc: RoutingProcess, kw: dict) -> None:
    t = mix_proc.sample(300, seed=5, **kw)
    assert t.experts.shape == (300, 32, 2) and t.experts.dtype == np.int16
    assert t.experts.min() >= 0 and t.experts.max() < 8
    assert distinct(t.experts)  # top-k distinct experts per token-layer
    assert t.equals(mix_proc.sample(300, seed=5, **kw))
    assert not np.array_equal(t.experts, mix_proc.sample(300, seed=6, **kw).experts)
    if "request_lengths" in kw:
        assert np.bincount(t.request).tolist() == kw["request_lengths"]
        assert t.position[:2].tolist() == [0, 0]


def test_sample_reproduces_fitted_statistics(mix_proc: RoutingProcess) -> None:
    t = mix_proc.sample(40_000, seed=1, tokens_per_request=200)
    r = stats.temporal_reuse(t)
    assert np.max(np.abs(r.rate - mix_proc.reuse_rate)) < 0.03
    load = stats.expert_load(t)
    q = load / load.sum(axis=1, keepdims=True)
    assert np.max(np.abs(q - mix_proc.popularity)) < 0.02
    # the affinity is not uniform: the mutual information between layers is near its target
    mi = stats.mutual_information(stats.affinity_counts(t))
    assert np.mean(mi) > 0.5 * np.mean(mix_proc.mi_target) > 0


def test_sample_errors(mix_proc: RoutingProcess) -> None:
    with pytest.raises(ValueError, match="at most one"):
        mix_proc.sample(10, n_requests=2, tokens_per_request=5)
    with pytest.raises(ValueError, match="sum to n_tokens"):
        mix_proc.sample(10, request_lengths=[3, 3])
    with pytest.raises(ValueError, match="n_requests=100 exceeds n_tokens=10"):
        mix_proc.sample(10, n_requests=100)
    assert mix_proc.sample(0).n_tokens == 0


def test_json_round_trip(mix_proc: RoutingProcess, tmp_path: Path) -> None:
    path = mix_proc.save(tmp_path / "p.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "moe-codesign/routing-process" and doc["version"] == 1
    assert doc["assumptions"] == ASSUMPTIONS
    back = RoutingProcess.load(path)
    for name in ("popularity", "affinity", "bias", "beta", "reuse_rate", "overlap", "copy_scale", "mi_target"):
        np.testing.assert_array_equal(getattr(back, name), getattr(mix_proc, name))
    assert back.sample(100, seed=3).equals(mix_proc.sample(100, seed=3))
    compact = RoutingProcess.load(mix_proc.save(tmp_path / "c.json", precision="float16"))
    np.testing.assert_allclose(compact.affinity, mix_proc.affinity, rtol=2e-3)


def test_bad_files(mix_proc: RoutingProcess, tmp_path: Path) -> None:
    doc = mix_proc.to_dict()
    bad = tmp_path / "bad.json"
    doc["arrays"]["popularity"][3][0] = -0.5
    bad.write_text(json.dumps(doc))
    with pytest.raises(ProcessFormatError, match=r"bad.json.*popularity\[3, 0\].*negative"):
        RoutingProcess.load(bad)
    doc = mix_proc.to_dict()
    doc["arrays"]["affinity"] = doc["arrays"]["affinity"][:-1]
    bad.write_text(json.dumps(doc))
    with pytest.raises(ProcessFormatError, match="affinity has shape"):
        RoutingProcess.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ProcessFormatError, match="not JSON"):
        RoutingProcess.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ProcessFormatError, match="format"):
        RoutingProcess.load(bad)


def test_retarget_split_invariants(mix_proc: RoutingProcess) -> None:
    """Fine-grained split 8 -> 32 experts (x4), top-2 -> top-8: children share their parent's
    popularity equally, the reuse rate is kept, sampled traces have the new shape."""
    p = mix_proc.retarget(32, 8, calibration_iterations=4, calibration_tokens=4096)
    assert (p.n_experts, p.top_k, p.n_moe_layers) == (32, 8, 32)
    layer = 5
    old = np.sort(mix_proc.popularity[layer])[::-1]
    new = np.sort(p.popularity[layer])[::-1]
    np.testing.assert_allclose(new.reshape(8, 4).sum(axis=1), old, rtol=1e-6)
    np.testing.assert_allclose(new.reshape(8, 4), np.repeat(old[:, None] / 4, 4, axis=1), rtol=1e-6)
    np.testing.assert_allclose(p.reuse_rate, mix_proc.reuse_rate)
    t = p.sample(3000, seed=0, tokens_per_request=100)
    assert t.experts.shape == (3000, 32, 8) and distinct(t.experts)
    assert abs(stats.temporal_reuse(t).mean_rate - float(np.mean(mix_proc.reuse_rate))) < 0.05


def test_retarget_merge_and_identity(mix_proc: RoutingProcess) -> None:
    merged = mix_proc.retarget(4, 1, calibration_iterations=2, calibration_tokens=2048)
    layer = 0
    old = np.sort(mix_proc.popularity[layer])[::-1]
    np.testing.assert_allclose(np.sort(merged.popularity[layer])[::-1], old.reshape(4, 2).sum(axis=1), rtol=1e-6)
    same = mix_proc.retarget(8, 2, calibration_iterations=0)
    np.testing.assert_allclose(np.sort(same.popularity, axis=1), np.sort(mix_proc.popularity, axis=1))
    with pytest.raises(ValueError, match="top_k"):
        mix_proc.retarget(4, 5)


def test_relayer(mix_proc: RoutingProcess) -> None:
    p = mix_proc.relayer(56, calibration_iterations=2, calibration_tokens=2048)  # Mixtral-8x22B depth
    assert p.n_moe_layers == 56 and p.affinity.shape == (55, 8, 8)
    np.testing.assert_allclose(p.popularity[0], mix_proc.popularity[0])
    np.testing.assert_allclose(p.popularity[-1], mix_proc.popularity[-1])
    short = mix_proc.relayer(1, calibration_iterations=0)
    assert short.sample(10, seed=0).experts.shape == (10, 1, 2)


def test_fit_rejects_empty() -> None:
    t = RoutingTrace(
        experts=-np.ones((3, 2, 2), dtype=np.int16),
        request=np.zeros(3, dtype=np.int32),
        position=np.arange(3, dtype=np.int32),
        phase=np.zeros(3, dtype=np.uint8),
        meta={"n_experts": 4, "top_k": 2, "source": "empty"},
    )
    with pytest.raises(ValueError, match="no routed expert"):
        RoutingProcess.fit(t)


def test_compare_identity_and_shape_mismatch(mixtral: RoutingTrace, mix_proc: RoutingProcess) -> None:
    rep = compare(mixtral, mixtral)
    for m in METRICS:
        assert getattr(rep, m) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="differ in shape"):
        compare(mixtral, mix_proc.relayer(4, calibration_iterations=0).sample(10))


def test_uniform_trace_is_uniform(mixtral: RoutingTrace) -> None:
    u = uniform_trace(mixtral, seed=0)
    assert u.experts.shape == mixtral.experts.shape and distinct(u.experts)
    r = stats.temporal_reuse(u)
    assert r.mean_rate == pytest.approx(2 / 8, abs=0.03)


def test_split_requests(deepseek: RoutingTrace) -> None:
    a, b = split_requests(deepseek, 0.5, seed=0)
    assert a.n_requests == b.n_requests == 100
    assert not set(np.unique(a.request)) & set(np.unique(b.request))
    assert a.n_tokens + b.n_tokens == deepseek.n_tokens


def test_deepseek_fidelity_fitted_clearly_closer_than_uniform(deepseek: RoutingTrace) -> None:
    """The issue's requirement on the DeepSeek-V2-Lite prompts: fit on half of the requests, sample,
    compare with the held-out half: the fitted process is closer than uniform random on every
    statistic; clearly so (at most 0.6 x) on affinity, reuse and reuse distance, 0.75 x on
    co-activation (the process has no within-layer term: co-activation comes only through affinity).
    The per-layer load is the weak one (see the README): prompt sets differ in which experts they
    load about as much as the average load differs from uniform, so its margin is smaller."""
    res = holdout_evaluation(deepseek, 0.5, seed=0, synth_factor=2, calibration_iterations=6)
    fitted, uniform = res["fitted"], res["uniform"]
    for m in METRICS:
        assert fitted[m] < uniform[m], (m, fitted[m], uniform[m])
    for m in ("affinity_js", "reuse_error", "reuse_layer_mae", "reuse_distance_js"):
        assert fitted[m] <= 0.6 * uniform[m], (m, fitted[m], uniform[m])
    assert fitted["coactivation_js"] <= 0.75 * uniform["coactivation_js"]
    assert fitted["load_js"] <= 0.95 * uniform["load_js"]
    assert fitted["reuse_error"] < 0.03  # absolute reuse-rate error
    # issue 10's bar: an offloaded expert cache sees the same LRU hit rate (25% / 50% of experts)
    assert fitted["lru_hit_25_error"] < 0.05 and fitted["lru_hit_50_error"] < 0.05, fitted


def test_mixtral_lru_hit_rate_within_bar(mixtral: RoutingTrace) -> None:
    """Issue 10's bar on the Mixtral decode trace (4 requests: fit on 2, compare with the other 2):
    the process's LRU hit rate at 25% and 50% of the experts cached is within 0.05 of the held-out
    real requests'. (The two real halves themselves differ by 0.046 / 0.010: the noise floor.)"""
    res = holdout_evaluation(mixtral, 0.5, seed=0, synth_factor=4)
    fitted = res["fitted"]
    assert fitted["lru_hit_25_error"] < 0.05 and fitted["lru_hit_50_error"] < 0.05, fitted
    assert fitted["lru_hit_25_error"] < res["uniform"]["lru_hit_25_error"]


def test_shrinkage_cv_extrapolates_half_to_full(deepseek: RoutingTrace) -> None:
    """The cross-validated weight is chosen for half of the requests and extrapolated to the full
    trace: ``lambda = 2 lambda_h / (1 + lambda_h)`` with ``lambda_h`` on the grid."""
    from workloads.process import shrinkage_cv

    lam = shrinkage_cv(deepseek, seed=0)
    lam_h = lam / (2.0 - lam)
    assert abs(lam_h * 20 - round(lam_h * 20)) < 1e-9, (lam, lam_h)  # on the 0.05 grid
    assert lam_h < lam < 1.0  # DeepSeek's prompt sets differ: some shrinkage, less than a half's
    # iid tokens from one popularity (no between-request variation): hardly any shrinkage
    rng = np.random.default_rng(3)
    pop = rng.dirichlet(np.full(16, 0.5))
    n = 40 * 64
    ex = np.stack([np.stack([rng.choice(16, 2, replace=False, p=pop) for _ in range(2)]) for _ in range(n)])
    iid = RoutingTrace(
        experts=ex.astype(np.int16),
        request=np.repeat(np.arange(40), 64).astype(np.int32),
        position=np.tile(np.arange(64), 40).astype(np.int32),
        phase=np.ones(n, dtype=np.uint8),
        meta={"n_experts": 16, "top_k": 2},
    )
    assert shrinkage_cv(iid, seed=0) >= 0.9


def test_calibrated_bias_matches_popularity_on_fresh_samples(deepseek: RoutingTrace) -> None:
    """Calibration targets the population popularity, not one calibration sample's noise: a large
    fresh sample's per-layer load, in requests of the fitted length, is close to the fitted
    popularity (0.0167; 0.0135 before copies from up to 4 tokens back, 0.022 before the
    Robbins-Monro fix). In one 100,000-token request the load drifts further (0.031, was 0.0135):
    copies pick the source's experts by the token's weights, which favours popular experts more in
    long chains than in the fitted requests of 26 tokens (a known limitation, see the README)."""
    p = RoutingProcess.fit(deepseek, seed=0)
    load = stats.expert_load(p.sample(100_000, seed=11, tokens_per_request=p.tokens_per_request)).astype(np.float64)
    js = float(np.mean(stats.js_distance(p.popularity, load)))
    assert js < 0.019, js
