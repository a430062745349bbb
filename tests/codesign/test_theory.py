"""Queueing theory: one request = one deterministic service, Poisson arrivals -> M/D/1; Little's law.

With ``max_batch = 1``, 1-token prompts and 1 output token, each request is exactly one step whose
duration S is the same for every request (every expert sees one token), so the server is an M/D/1
queue: mean time in system ``W = S + rho S / (2 (1 - rho))`` (Pollaczek-Khinchine with zero service
variance) and ``P(no wait) = 1 - rho``. Independent replications give a confidence interval.
"""

from __future__ import annotations

import numpy as np
import pytest

from codesign.mapping import BatchingSpec, Mapping
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import ListStream, Req, random_stream, tiny_model


def _poisson_stream(model, n: int, rate: float, seed: int) -> ListStream:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    rows = np.tile(np.array([[0, 1]], dtype=np.int16), (2, model.n_moe_layers, 1))  # same experts every token
    return ListStream([Req(i, float(t[i]), 1, 1) for i in range(n)], [rows] * n)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_sojourn_and_idle_probability(rho: float) -> None:
    model = tiny_model()
    plat = get_platform("h100-pcie5-host")
    mapping = Mapping(batching=BatchingSpec(max_batch=1, max_tokens=1))
    probe = simulate(model, plat, _poisson_stream(model, 3, 1e-3, 0), mapping)
    service = float(probe.steps.duration_s.iloc[0])
    assert np.allclose(probe.steps.duration_s, service)  # deterministic service
    rate = rho / service
    means, no_wait = [], []
    for seed in range(10):
        r = simulate(model, plat, _poisson_stream(model, 800, rate, 100 + seed), mapping, seed=seed)
        assert np.allclose(r.steps.duration_s, service)
        means.append(float(r.requests.latency_s.mean()))
        no_wait.append(float(np.mean(np.isclose(r.requests.admitted_s, r.requests.arrival_s, rtol=0, atol=1e-12))))
    theory = service + rho * service / (2 * (1 - rho))
    m, se = np.mean(means), np.std(means, ddof=1) / np.sqrt(len(means))
    assert abs(m - theory) < 4 * se + 0.02 * theory, (m, se, theory)
    assert np.mean(no_wait) == pytest.approx(1 - rho, abs=0.04)


def test_littles_law_on_results() -> None:
    """L = lambda W: the engine's time-average of requests in system (tracked at arrivals and
    departures) equals throughput x mean latency computed from the per-request records."""
    model = tiny_model()
    plat = get_platform("h100-pcie5-host")
    # 600/s: with grouped expert execution (the engine's default on GPUs) a step is ~2x shorter than
    # per-expert, so 300/s (the per-expert-era rate) no longer loads the system (L = 0.91)
    stream = random_stream(model, 40, 6, 8, seed=11, rate_per_s=600.0)
    r = simulate(model, plat, stream, Mapping(batching=BatchingSpec(max_batch=6, max_tokens=24)), seed=0)
    s = r.summary
    lam = s["n_requests"] / s["makespan_s"]
    w = float(r.requests.latency_s.mean())
    assert s["mean_requests_in_system"] == pytest.approx(lam * w, rel=1e-9)
    assert s["mean_requests_in_system"] > 1.0  # a loaded system, not a trivial one
