"""Request streams: arrival processes against theory, replay of the real Splitwise trace, routing rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from workloads.defaults import default_process
from workloads.requests import (
    LengthDist,
    ProcessRouting,
    Request,
    RequestFormatError,
    RequestStream,
    TraceReplay,
)
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def proc_routing() -> ProcessRouting:
    return ProcessRouting(default_process("mixtral-8x7b"), seed=3)


@pytest.fixture(scope="module")
def splitwise(shared_dir: Path) -> Path:
    return shared_dir / "workloads" / "splitwise_code.csv"


def gaps(stream: RequestStream) -> np.ndarray:
    t = np.array([r.arrival_s for r in stream.requests])
    return np.diff(np.r_[0.0, t])


def test_poisson_rate_within_confidence(proc_routing: ProcessRouting) -> None:
    rate, n = 5.0, 20_000
    s = RequestStream.poisson(rate_per_s=rate, n_requests=n, prompt_len=8, output_len=4, routing=proc_routing, seed=11)
    g = gaps(s)
    # mean gap 1/rate with standard error (1/rate)/sqrt(n): 4 sigma bounds
    assert abs(g.mean() - 1 / rate) < 4 * (1 / rate) / np.sqrt(n)
    # exponential gaps: CV = 1 (standard error of the CV estimate is about 1/sqrt(n))
    assert abs(g.std() / g.mean() - 1.0) < 4 / np.sqrt(n) * 1.5
    # counts in 1 s windows are Poisson: index of dispersion near 1
    counts = np.bincount(np.floor([r.arrival_s for r in s.requests]).astype(int))[:-1]
    assert 0.9 < counts.var() / counts.mean() < 1.1
    assert [r.request_id for r in s.requests] == list(range(n))
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(s.requests, s.requests[1:], strict=False))


def test_bursty_cv_and_rate(proc_routing: ProcessRouting) -> None:
    s = RequestStream.bursty(
        mean_rate_per_s=2.0, burstiness=3.0, n_requests=40_000, prompt_len=4, output_len=2, routing=proc_routing, seed=2
    )
    g = gaps(s)
    assert g.mean() == pytest.approx(0.5, rel=0.05)
    assert g.std() / g.mean() == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError, match="burstiness"):
        RequestStream.bursty(
            mean_rate_per_s=1, burstiness=0, n_requests=3, prompt_len=1, output_len=1, routing=proc_routing
        )


def test_onoff_mmpp_rate_and_burstiness(proc_routing: ProcessRouting) -> None:
    s = RequestStream.onoff(
        rate_on_per_s=20.0,
        rate_off_per_s=1.0,
        mean_on_s=2.0,
        mean_off_s=8.0,
        n_requests=40_000,
        prompt_len=4,
        output_len=2,
        routing=proc_routing,
        seed=5,
    )
    t = np.array([r.arrival_s for r in s.requests])
    assert np.all(np.diff(t) >= 0)
    expected = (20.0 * 2.0 + 1.0 * 8.0) / 10.0  # 4.8 requests/s in the long run
    assert len(t) / t[-1] == pytest.approx(expected, rel=0.08)
    counts = np.bincount(np.floor(t).astype(int))[:-1]
    assert counts.var() / counts.mean() > 3.0  # over-dispersed, unlike Poisson (1)


def test_closed_and_lengths(proc_routing: ProcessRouting) -> None:
    s = RequestStream.closed(
        n_requests=50, prompt_len=LengthDist.uniform(3, 9), output_len=7, routing=proc_routing, seed=0
    )
    assert all(r.arrival_s == 0.0 for r in s.requests)
    p = np.array([r.prompt_tokens for r in s.requests])
    assert p.min() >= 3 and p.max() <= 9 and len(set(p)) > 3
    assert all(r.output_tokens == 7 for r in s.requests)
    with pytest.raises(ValueError, match="prompt_len"):
        RequestStream.closed(n_requests=2, prompt_len=0, output_len=1, routing=proc_routing)


def test_replay_reproduces_real_arrivals(splitwise: Path, proc_routing: ProcessRouting) -> None:
    with open(splitwise, newline="") as fh:
        rows = list(csv.DictReader(fh))
    s = RequestStream.replay(splitwise, routing=proc_routing)
    assert len(s) == len(rows) == 8819
    t0 = float(rows[0]["arrived_at"])
    for r, row in zip(s.requests[::97], rows[::97], strict=True):
        assert r.arrival_s == pytest.approx(float(row["arrived_at"]) - t0)
        assert r.prompt_tokens == int(row["num_prefill_tokens"])
        assert r.output_tokens == int(row["num_decode_tokens"])
    fast = RequestStream.replay(
        splitwise, n_requests=100, time_scale=0.5, max_prompt=512, max_output=16, routing=proc_routing
    )
    assert len(fast) == 100
    assert fast.requests[-1].arrival_s == pytest.approx(0.5 * s.requests[99].arrival_s)
    assert max(r.prompt_tokens for r in fast.requests) == 512
    assert max(r.output_tokens for r in fast.requests) <= 16


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,2\n0.5,abc,3\n", r"line 3: field num_prefill_tokens"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,2\n1.0,10\n", r"line 3: 2 fields, expected 3"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n1.0,10,2\n0.5,10,3\n", r"line 3: arrived_at 0.5 is earlier"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,0\n", r"line 2: field num_decode_tokens = '0'"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n-1,10,2\n", r"line 2: field arrived_at"),
        ("arrived_at,num_prefill_tokens\n0.0,10\n", r"line 1: header lacks column\(s\) \['num_decode_tokens'\]"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\n", r"no request rows"),
    ],
)
def test_replay_malformed_csv(tmp_path: Path, proc_routing: ProcessRouting, body: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(RequestFormatError, match=r"bad\.csv.*" + match):
        RequestStream.replay(path, routing=proc_routing)


def test_lognormal_lengths_fitted_to_splitwise(splitwise: Path) -> None:
    d = LengthDist.from_splitwise(splitwise, "prompt")
    x = d.sample(20_000, np.random.default_rng(0))
    with open(splitwise, newline="") as fh:
        real = np.array([int(r["num_prefill_tokens"]) for r in csv.DictReader(fh)])
    assert np.median(x) == pytest.approx(np.exp(np.log(real).mean()), rel=0.05)
    assert x.max() <= real.max() and x.min() >= 1
    e = LengthDist.from_splitwise(splitwise, "output", kind="empirical")
    assert set(e.sample(500, np.random.default_rng(1)).tolist()) <= set(e.values)


def test_process_routing_rows_deterministic(proc_routing: ProcessRouting) -> None:
    s = RequestStream.poisson(
        rate_per_s=1.0, n_requests=4, prompt_len=LengthDist.uniform(5, 30), output_len=9, routing=proc_routing, seed=0
    )
    first = [s.routing(r) for r in s.requests]
    for r, rows in zip(s.requests, first, strict=True):
        assert rows.shape == (r.prompt_tokens + r.output_tokens, 32, 2) and rows.dtype == np.int16
        assert rows.min() >= 0 and rows.max() < 8
    # same rows in any call order, different for different ids or seeds
    again = [s.routing(r) for r in reversed(s.requests)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = ProcessRouting(proc_routing.process, seed=4).routing(s.requests[0])
    assert not np.array_equal(other, first[0])


def test_trace_replay_cycles(mixtral: RoutingTrace) -> None:
    src = TraceReplay(mixtral, cycle=True)
    assert (src.n_moe_layers, src.n_experts, src.top_k, src.n_recorded_requests) == (32, 8, 2, 4)
    lengths = np.bincount(mixtral.request)
    req = Request(request_id=5, arrival_s=0.0, prompt_tokens=int(lengths[1]), output_tokens=10)  # 5 mod 4 = 1
    rows = src.routing(req)
    assert rows.shape == (lengths[1] + 10, 32, 2)
    recorded = mixtral.experts[mixtral.request == 1][np.argsort(mixtral.position[mixtral.request == 1])]
    assert np.array_equal(rows[: lengths[1]], recorded)
    assert np.array_equal(rows[lengths[1] :], recorded[:10])  # continues cyclically


def test_trace_replay_maps_phases() -> None:
    """A traced request with prefill and decode tokens: prompt rows replay its prefill tokens,
    output rows its decode tokens, each cyclically."""
    ex = np.arange(7, dtype=np.int16)[:, None, None].repeat(2, axis=2)  # token t routed to expert t
    ex[:, :, 1] = 7
    phase = np.array([0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)
    perm = np.array([4, 0, 6, 2, 1, 5, 3])  # stored out of order
    t = RoutingTrace(
        experts=ex[perm],
        request=np.zeros(7, dtype=np.int32),
        position=np.arange(7, dtype=np.int32)[perm],
        phase=phase[perm],
        meta={"n_experts": 8, "top_k": 2, "source": "toy"},
    )
    rows = TraceReplay(t).routing(Request(request_id=0, arrival_s=0.0, prompt_tokens=5, output_tokens=6))
    assert rows[:, 0, 0].tolist() == [0, 1, 2, 0, 1, 3, 4, 5, 6, 3, 4]  # prefill 0-2, decode 3-6


def test_request_validation() -> None:
    with pytest.raises(ValueError, match="output_tokens"):
        Request(request_id=0, arrival_s=0.0, prompt_tokens=3, output_tokens=0)
    with pytest.raises(ValueError, match="arrival_s"):
        Request(request_id=0, arrival_s=float("nan"), prompt_tokens=3, output_tokens=1)
