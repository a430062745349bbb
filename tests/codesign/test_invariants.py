"""Invariants of the simulator: conservation, capacity, zero-load latency, Belady bound,
monotonicity in cache and bandwidth, determinism, clear errors."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.engine import zero_load_step_s
from codesign.mapping import BatchingSpec, CacheSpec, Mapping, MappingError
from codesign.policies import REGISTRIES, UnknownPolicyError
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from tests.codesign.sim_helpers import ListStream, Req, random_stream, tiny_model
from workloads import get_model
from workloads.importers import import_trace
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def h100():
    return get_platform("h100-pcie5-host")


@pytest.fixture(scope="module")
def mixtral_trace(shared_dir: Path) -> RoutingTrace:
    trace = import_trace("mixtral-jsonl", shared_dir / "traces" / "mixtral-8x7b-instruct")
    assert isinstance(trace, RoutingTrace)
    return trace


def _served_assignments(stream: ListStream) -> int:
    """Valid (token, expert) entries in the rows the engine processes: prompt + output - 1 rows."""
    total = 0
    for r in stream.requests:
        rows = stream.routing(r)[: r.prompt_tokens + r.output_tokens - 1]
        total += int((rows >= 0).sum())
    return total


def _trace_stream(trace: RoutingTrace, prompt: int = 1) -> ListStream:
    """Each request of the real trace replayed as one request (its first rows act as the prompt)."""
    reqs, routing = [], []
    for i, rid in enumerate(np.unique(trace.request)):
        rows = trace.experts[trace.request == rid]
        reqs.append(Req(i, 0.0, prompt, rows.shape[0] - prompt))
        routing.append(rows)
    return ListStream(reqs, routing)


@pytest.mark.parametrize("miss, prefetch", [("fetch", "none"), ("cost", "pregate"), ("cpu", "none")])
def test_assignments_tokens_bytes_energy_conserved(h100, miss: str, prefetch: str) -> None:
    model = tiny_model()
    stream = random_stream(model, 10, 5, 6, seed=21, rate_per_s=2000.0)
    stream._routing[3][2, 1, 1] = -1  # a dropped slot is not an assignment
    m = Mapping(
        cache=CacheSpec(expert_fraction=0.25),
        miss=miss,
        prefetch=prefetch,
        batching=BatchingSpec(max_batch=4, max_tokens=12),
    )
    r = simulate(model, h100, stream, m, seed=0)
    s, steps = r.summary, r.steps
    expected = _served_assignments(stream)
    assert steps.assignments.sum() == expected
    assert s["assignments_device"] + s["assignments_cpu"] == expected  # each computed exactly once
    assert steps.prefill_tokens.sum() == 50 and steps.decode_tokens.sum() == 50
    assert r.requests.output_tokens.sum() == s["output_tokens"] == 60
    moved = (steps.fetched.sum() + steps.prefetched.sum()) * model.bytes_per_expert
    moved += s["assignments_cpu"] * 2 * model.d_model * 2.0
    assert s["bytes_moved"].get("pcie-gen5-x16", 0.0) == pytest.approx(moved)
    assert steps.bytes_host.sum() == pytest.approx(moved)
    assert steps.energy_J.sum() + s["idle_static_energy_J"] == pytest.approx(s["energy_J"])
    assert s["idle_static_energy_J"] > 0  # the GPU and the host wait for transfers and each other
    # every miss is fetched or computed on the CPU; the CPU also takes late prefetches when the miss
    # policy prefers it to waiting for their copies (a late prefetch is not a miss: see below)
    late_on_cpu = steps.fetched + steps.cpu_computed - steps.misses
    assert (late_on_cpu >= 0).all() and (late_on_cpu <= steps.prefetch_late).all()
    if miss == "fetch" or prefetch == "none":
        assert (late_on_cpu == 0).all()
    assert (steps.hits + steps.prefetch_late + steps.misses == steps.experts_needed).all()
    assert steps.experts_needed.sum() == s["accesses"] and steps.hits.sum() == s["hits"]
    pf = s["prefetch"]  # each prefetch resolved once: on time, late, wasted, or still unused at the end
    assert pf["issued"] == steps.prefetched.sum() and min(pf.values()) >= 0
    assert pf["on_time"] + pf["late"] + pf["wasted"] + pf["unused_at_end"] == pf["issued"]
    if prefetch != "none":
        assert pf["issued"] > 0


@settings(max_examples=12, deadline=None)
@given(
    policy=st.sampled_from(["lru", "lfu", "static", "belady"]),
    slots=st.integers(1, 32),
    prefetch=st.sampled_from(["none", "pregate"]),
    seed=st.integers(0, 3),
)
def test_capacity_never_exceeded(policy: str, slots: int, prefetch: str, seed: int) -> None:
    model = tiny_model()
    plat = get_platform("h100-pcie5-host")
    stream = random_stream(model, 3, 3, 4, seed=seed)
    r = simulate(
        model,
        plat,
        stream,
        Mapping(cache=CacheSpec(policy=policy, capacity_experts=slots), prefetch=prefetch),
        seed=seed,
    )
    s = r.summary
    assert s["peak_resident_experts"] <= s["cache_slots"] == slots
    assert s["peak_memory_bytes"]["hbm"] <= plat.accelerators[0].tier("hbm").capacity_bytes
    assert s["n_requests"] == 3


def test_capacity_holds_when_kv_is_full(h100) -> None:
    model = get_model("mixtral-8x7b")
    stream = random_stream(model, 6, 2000, 2, seed=5)
    m = Mapping(cache=CacheSpec(expert_fraction=0.75), batching=BatchingSpec(max_batch=6, max_tokens=16384))
    r = simulate(model, h100, stream, m)
    assert r.summary["peak_memory_bytes"]["hbm"] <= 80e9


def test_zero_load_step_equals_sum_of_op_costs(h100) -> None:
    for model in (
        tiny_model(),
        tiny_model(first_dense_layers=1, dense_ffn_dim=2048, n_layers=5, n_shared_experts=1, shared_ffn_dim=512),
    ):
        stream = random_stream(model, 1, 9, 4, seed=13)
        cost = CostModel(h100)
        r = simulate(model, h100, stream, Mapping(), cost_model=cost)
        bound = Mapping().bind(model, h100)
        rows = stream.routing(stream.requests[0])
        steps = r.steps.duration_s.to_numpy()
        assert steps[0] == pytest.approx(
            zero_load_step_s(cost, bound, rows[:9], prefill=True, context_len=0), rel=1e-12
        )
        for j in range(1, 4):
            z = zero_load_step_s(cost, bound, rows[9 + j - 1 : 9 + j], prefill=False, context_len=9 + j)
            assert steps[j] == pytest.approx(z, rel=1e-12)


def test_zero_load_with_offloading_but_all_hits_equals_sum_of_op_costs(h100) -> None:
    """The offloading code path (processes, copy engine) at zero load with every needed expert
    resident gives the same step latency as the sum of the op costs."""
    model = tiny_model()
    stream = random_stream(model, 1, 6, 3, seed=17)
    rows = stream.routing(stream.requests[0])
    rows[rows == 7] = 6  # expert 7 is never used ...
    dup = rows[:, :, 0] == rows[:, :, 1]
    rows[:, :, 1][dup] = np.where(rows[:, :, 0][dup] == 5, 4, 5)
    listed = tuple((layer, e) for layer in range(model.n_moe_layers) for e in range(7))
    m = Mapping(cache=CacheSpec(capacity_experts=28), initial="listed", resident=listed)  # ... nor resident
    cost = CostModel(h100)
    r = simulate(model, h100, stream, m, cost_model=cost)
    assert r.summary["offloaded"] and r.summary["hit_rate"]["hbm"] == 1.0
    bound = m.bind(model, h100)
    steps = r.steps.duration_s.to_numpy()
    assert steps[0] == pytest.approx(zero_load_step_s(cost, bound, rows[:6], prefill=True, context_len=0), rel=1e-12)
    assert steps[1] == pytest.approx(zero_load_step_s(cost, bound, rows[6:7], prefill=False, context_len=7), rel=1e-12)


def test_belady_hit_rate_bounds_online_policies(h100, mixtral_trace: RoutingTrace) -> None:
    model = get_model("mixtral-8x7b")
    stream = _trace_stream(mixtral_trace.select(np.arange(400)))
    hits = {}
    for name in REGISTRIES["cache"].names():
        m = Mapping(cache=CacheSpec(policy=name, expert_fraction=0.25))
        r = simulate(model, h100, stream, m, train=mixtral_trace)
        hits[name] = r.summary["hit_rate"]["hbm"]
        if name == "belady":
            assert r.summary["oracle_exact"] is True
    for h in hits.values():
        assert hits["belady"] >= h - 1e-12, hits
    assert hits["belady"] > hits["lru"]


@pytest.mark.parametrize("initial", ["empty", "spread"])
def test_more_cache_never_makes_lru_slower(h100, mixtral_trace: RoutingTrace, initial: str) -> None:
    model = get_model("mixtral-8x7b")
    stream = _trace_stream(mixtral_trace.select(np.arange(400)))
    times, hit = [], []
    for slots in (8, 32, 64, 96, 128, 192):
        m = Mapping(cache=CacheSpec(capacity_experts=slots), initial=initial)  # type: ignore[arg-type]
        r = simulate(model, h100, stream, m)
        times.append(r.summary["makespan_s"])
        hit.append(r.summary["hit_rate"]["hbm"])
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(times)), times
    assert all(b >= a for a, b in itertools.pairwise(hit)), hit
    assert times[-1] < times[0]


def test_more_bandwidth_never_makes_lru_slower(h100, mixtral_trace: RoutingTrace) -> None:
    model = get_model("mixtral-8x7b")
    stream = _trace_stream(mixtral_trace.select(np.arange(300)))
    link = h100.host_link
    times = []
    for scale in (0.5, 1.0, 2.0, 4.0):
        fast = dataclasses.replace(
            link,
            bandwidth_Bps=link.bandwidth_Bps * scale,  # the measured points are efficiencies: they scale with it
        )
        plat = dataclasses.replace(h100, host_link=fast)
        r = simulate(model, plat, stream, Mapping(cache=CacheSpec(expert_fraction=0.25)))
        times.append(r.summary["makespan_s"])
    assert all(b < a for a, b in itertools.pairwise(times)), times


def test_exact_pregating_moves_no_extra_bytes(h100, mixtral_trace: RoutingTrace) -> None:
    """An exact pre-gate fetches what demand fetching would, only earlier: a prefetch never evicts
    an expert it predicts (regression: it used to evict the next layer's resident experts)."""
    model = get_model("mixtral-8x7b").with_precision("fp8")
    stream = _trace_stream(mixtral_trace.select(np.arange(300)))
    m = Mapping(cache=CacheSpec(expert_fraction=0.25), batching=BatchingSpec(max_batch=1))
    r0 = simulate(model, h100, stream, m)
    r1 = simulate(model, h100, stream, m.with_(prefetch="pregate"))
    moved0, moved1 = r0.summary["bytes_moved"]["pcie-gen5-x16"], r1.summary["bytes_moved"]["pcie-gen5-x16"]
    assert moved1 <= moved0 * 1.001
    assert r1.summary["makespan_s"] <= r0.summary["makespan_s"]
    # the pre-gate predicts the experts (hits + late prefetches cover most accesses), but over PCIe
    # (176 MB per FP8 expert, ~5 ms) the copies are still in flight when the layer needs them: late
    # prefetches are not hits (regression, reviewer defect #4: they were counted as hits, 97 % vs 0 %)
    st = r1.steps
    assert (st.hits.sum() + st.prefetch_late.sum()) / st.experts_needed.sum() > r0.summary["hit_rate"]["hbm"] + 0.3
    assert r1.summary["prefetch"]["late"] > 0.9 * r1.summary["prefetch"]["issued"]
    assert r1.summary["hit_rate"]["hbm"] <= r0.summary["hit_rate"]["hbm"] + 0.05


def test_same_seed_same_result(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 8, 4, 5, seed=3, rate_per_s=500.0)
    m = Mapping(cache=CacheSpec(expert_fraction=0.5), prefetch="pregate", prefetch_options={"accuracy": 0.7})
    a = simulate(model, h100, stream, m, seed=7)
    b = simulate(model, h100, stream, m, seed=7)
    assert a.requests.equals(b.requests) and a.steps.equals(b.steps)
    assert a.to_json() == b.to_json() and a.config_hash == b.config_hash
    c = simulate(model, h100, stream, m, seed=8)
    assert c.config_hash != a.config_hash
    assert not c.steps.equals(a.steps)  # the noisy pre-gate draws differ
    other = simulate(model, h100, random_stream(model, 8, 4, 5, seed=4, rate_per_s=500.0), m, seed=7)
    assert other.config_hash != a.config_hash  # the workload is part of the hashed config


def test_bad_mappings_and_unknown_policies_are_clear(h100) -> None:
    model = get_model("mixtral-8x7b")
    stream = random_stream(model, 1, 2, 2)
    with pytest.raises(MappingError, match=r"capacity 80\.00 GB.*256 resident experts"):
        simulate(model, h100, stream, Mapping())
    with pytest.raises(UnknownPolicyError, match=r"unknown cache policy 'fifo'; valid: belady, .*lru"):
        simulate(model, h100, stream, Mapping(cache=CacheSpec(policy="fifo")))
    with pytest.raises(ValueError, match="train_fraction > 0 or pass train="):
        simulate(model, h100, stream, Mapping(cache=CacheSpec(expert_fraction=0.25), prefetch="affinity"))


@settings(max_examples=10, deadline=None)
@given(
    cache=st.sampled_from(REGISTRIES["cache"].names()),
    prefetch=st.sampled_from(REGISTRIES["prefetch"].names()),
    miss=st.sampled_from(REGISTRIES["miss"].names()),
    fraction=st.sampled_from([0.25, 0.5, 1.0]),
    n_devices=st.sampled_from([1, 2, 8]),
    scheduler=st.sampled_from(REGISTRIES["scheduling"].names()),
)
def test_any_policy_combination_conserves_work(
    cache: str, prefetch: str, miss: str, fraction: float, n_devices: int, scheduler: str
) -> None:
    """Every registered policy of every kind, on 1-8 devices with or without offloading: every
    assignment computed once, all requests served, capacity held."""
    model = tiny_model(n_experts=16)
    stream = random_stream(model, 10, 3, 5, seed=1, rate_per_s=3000.0, zipf=1.0)
    m = Mapping(
        n_devices=n_devices,
        cache=CacheSpec(policy=cache, expert_fraction=fraction),
        prefetch=prefetch,
        miss=miss,
        train_fraction=0.3,
        batching=BatchingSpec(scheduler=scheduler, max_batch=4, max_tokens=16),
    )
    r = simulate(model, get_platform("dgx-h100"), stream, m, seed=0)
    s = r.summary
    served = ListStream(list(stream.requests[3:]), [stream.routing(q) for q in stream.requests[3:]])
    assert s["n_requests"] == 7
    assert s["assignments_device"] + s["assignments_cpu"] == _served_assignments(served) == r.steps.assignments.sum()
    assert s["peak_resident_experts"] <= max(s["cache_slots"] / n_devices, 1)
