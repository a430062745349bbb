"""The simpy engine end to end on small workloads: records, policies, devices, contracts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from codesign.engine import Engine, SimRequest
from codesign.mapping import BatchingSpec, CacheSpec, EpExecution, Mapping
from codesign.policies.base import Batch, TokenScheduler
from codesign.result import Result
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from tests.codesign.sim_helpers import ListStream, Req, random_stream, tiny_model
from workloads import get_model
from workloads.importers import import_trace
from workloads.model import MoEModel
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def h100():
    return get_platform("h100-pcie5-host")


def test_basic_run_records_and_conservation(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 12, 7, 5, seed=1, rate_per_s=50.0)
    r = simulate(model, h100, stream, Mapping(batching=BatchingSpec(max_batch=4, max_tokens=16)), seed=0)
    req, steps = r.requests, r.steps
    assert len(req) == 12 and sorted(req.request_id) == list(range(12))
    assert steps.prefill_tokens.sum() == 12 * 7
    assert steps.decode_tokens.sum() == 12 * (5 - 1)
    assert (steps.prefill_tokens + steps.decode_tokens <= 16).all()
    assert (steps.n_requests <= 4).all()
    assert (req.first_token_s >= req.arrival_s).all() and (req.finish_s >= req.first_token_s).all()
    assert np.allclose(req.ttft_s, req.first_token_s - req.arrival_s)
    assert np.allclose(req.tpot_s, (req.finish_s - req.first_token_s) / 4)
    assert (steps.start_s.diff().dropna() > 0).all()
    s = r.summary
    assert s["hit_rate"] == {"hbm": 1.0} and s["bytes_moved"] == {}
    assert s["throughput_tok_s"] == pytest.approx(60 / s["makespan_s"])
    assert s["energy_j_per_token"] > 0 and s["cost_per_million_tokens_usd"] > 0
    assert 0 < s["peak_memory_bytes"]["hbm"] <= 80e9


def test_offload_lru_fetches_and_counts_bytes(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 4, 3, 6, seed=2)
    r = simulate(model, h100, stream, Mapping(cache=CacheSpec(expert_fraction=0.25)), seed=0)
    s = r.summary
    fetched = r.steps.fetched.sum() + r.steps.prefetched.sum()
    assert fetched > 0
    assert s["bytes_moved"]["pcie-gen5-x16"] == pytest.approx(fetched * model.bytes_per_expert)
    assert 0 <= s["hit_rate"]["hbm"] < 1
    assert s["peak_resident_experts"] <= s["cache_slots"] == 8


def test_cpu_miss_computes_on_host(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 4, 3, 6, seed=2)
    r = simulate(model, h100, stream, Mapping(cache=CacheSpec(expert_fraction=0.25), miss="cpu"), seed=0)
    s = r.summary
    assert r.steps.fetched.sum() == 0 and r.steps.cpu_computed.sum() == r.steps.misses.sum() > 0
    assert s["assignments_cpu"] > 0
    # only activations crossed the link: 2 x tokens x d_model x 2 bytes per CPU assignment
    assert s["bytes_moved"]["pcie-gen5-x16"] == pytest.approx(s["assignments_cpu"] * 2 * model.d_model * 2.0)


def _prefetch_accounting(r: Result) -> None:
    """Each access is a hit, a late prefetch or a miss; each prefetch is resolved at most once."""
    st, s = r.steps, r.summary
    assert (st.experts_needed == st.hits + st.prefetch_late + st.misses).all()
    assert s["hit_rate"]["hbm"] == pytest.approx(st.hits.sum() / st.experts_needed.sum())
    pf = s["prefetch"]
    assert pf["issued"] == st.prefetched.sum() and pf["late"] == st.prefetch_late.sum()
    assert pf["unused_at_end"] >= 0 and pf["on_time"] + pf["late"] + pf["wasted"] <= pf["issued"]


def test_on_time_prefetch_raises_hit_rate(h100) -> None:
    """With a host link 1000x faster than PCIe Gen5 (hypothetical), a pre-gated expert arrives
    before its layer: on-time prefetches are hits and the hit rate rises."""
    fast = dataclasses.replace(
        h100, host_link=dataclasses.replace(h100.host_link, bandwidth_Bps=64e12, latency_s=0.0, efficiency_points=())
    )
    model = tiny_model()
    stream = random_stream(model, 2, 2, 20, seed=3)
    base = Mapping(cache=CacheSpec(expert_fraction=0.5))
    r0 = simulate(model, fast, stream, base, seed=0)
    r1 = simulate(model, fast, stream, base.with_(prefetch="pregate"), seed=0)
    _prefetch_accounting(r1)
    pf = r1.summary["prefetch"]
    assert pf["issued"] > 0 and pf["on_time"] > 0.9 * (pf["on_time"] + pf["late"])
    assert r1.summary["hit_rate"]["hbm"] > r0.summary["hit_rate"]["hbm"] + 0.2


def test_late_prefetch_is_not_a_hit(h100) -> None:
    """Regression (reviewer defect #4): over PCIe the pre-gated copies of the next layer are still
    in flight when it starts; they are late prefetches, not hits (the hit rate used to count them)."""
    model = tiny_model()
    stream = random_stream(model, 2, 2, 20, seed=3)
    base = Mapping(cache=CacheSpec(expert_fraction=0.5))
    r0 = simulate(model, h100, stream, base, seed=0)
    r1 = simulate(model, h100, stream, base.with_(prefetch="pregate"), seed=0)
    _prefetch_accounting(r1)
    st = r1.steps
    assert st.prefetch_late.sum() > 0.5 * st.prefetched.sum() > 0
    # counting late prefetches as hits would report far more than demand caching alone
    assert (st.hits.sum() + st.prefetch_late.sum()) / st.experts_needed.sum() > r0.summary["hit_rate"]["hbm"] + 0.1
    assert r1.summary["hit_rate"]["hbm"] < r0.summary["hit_rate"]["hbm"] + 0.05
    assert r1.summary["late_prefetch_share"] == pytest.approx(st.prefetch_late.sum() / st.experts_needed.sum())


def test_late_prefetch_goes_to_the_miss_policy(h100) -> None:
    """A pre-gated copy still in flight when its layer starts is a miss to the miss policy: with
    ``miss="cpu"`` the layer computes it on the host CPU instead of waiting for the copy (it used
    to wait: pre-gating then turned a CPU-on-miss design into a link-bound one, ~10x slower)."""
    model = tiny_model()
    stream = random_stream(model, 2, 2, 20, seed=3)
    base = Mapping(cache=CacheSpec(expert_fraction=0.5), miss="cpu")
    r = simulate(model, h100, stream, base.with_(prefetch="pregate"), seed=0)
    st = r.steps
    assert st.prefetch_late.sum() > 0
    # only true hits run on the device; every other needed expert (a miss, or a copy in flight) on the CPU
    assert st.cpu_computed.sum() == st.experts_needed.sum() - st.hits.sum()
    assert st.fetched.sum() == 0  # nothing is fetched on demand; the prefetches still run
    assert st.prefetched.sum() > 0


def test_expert_parallel_all_to_all() -> None:
    model = get_model("deepseek-v2-lite")
    dgx = get_platform("dgx-h100")
    stream = random_stream(model, 16, 4, 3, seed=4)
    r = simulate(model, dgx, stream, Mapping(), seed=0, record_events=True)
    s = r.summary
    assert s["n_devices"] == 8
    assert 0.5 < s["cross_device_share"] < 1.0  # 7/8 expected for uniform routing and round-robin homes
    assert s["bytes_moved"]["nvlink4"] > 0
    kinds = set(r.events_frame().kind)
    assert {"all_to_all", "attention", "experts", "shared", "dense"} <= kinds
    assert set(r.requests.device) == set(range(8))  # requests spread over the devices


def test_rdu_ddr_to_hbm_tier() -> None:
    model = tiny_model()
    sn = get_platform("sn40l-node")
    stream = random_stream(model, 3, 2, 4, seed=5)
    m = Mapping(n_devices=1, cache=CacheSpec(expert_fraction=0.25), backing="ddr")
    r = simulate(model, sn, stream, m, seed=0)
    assert list(r.summary["bytes_moved"]) == ["sn40l:ddr->hbm"]
    assert r.summary["peak_memory_bytes"]["ddr"] == pytest.approx(24 * model.bytes_per_expert)


def test_fpga_reordering_beats_per_token() -> None:
    vit = tiny_model(
        name="vit-moe",
        n_layers=12,
        d_model=192,
        n_heads=3,
        n_kv_heads=3,
        head_dim=64,
        expert_ffn_dim=384,
        n_experts=16,
        top_k=2,
        gated=False,
    )
    board = get_platform("zcu104-board")
    stream = random_stream(vit, 1, 197, 1, seed=6)
    fast = simulate(vit, board, stream, Mapping(fpga_reorder=True), seed=0)
    slow = simulate(vit, board, stream, Mapping(fpga_reorder=False), seed=0)
    assert fast.summary["ttft_p50_s"] < slow.summary["ttft_p50_s"]


def test_cpu_only_server() -> None:
    model = tiny_model()
    r = simulate(model, get_platform("cpu-server"), random_stream(model, 3, 4, 4, seed=7), Mapping(), seed=0)
    assert r.summary["n_requests"] == 3 and "ddr" in r.summary["peak_memory_bytes"]


class _Greedy(TokenScheduler):
    """Breaks the contract: gives decode requests 2 tokens."""

    def schedule(self, now, waiting, running, kv_free_tokens):
        reqs = list(running) + list(waiting)
        return Batch(
            request_ids=tuple(r.request_id for r in reqs),
            n_tokens=tuple(r.remaining_prompt if r.in_prefill else 2 for r in reqs),
        )


def test_scheduler_contract_is_enforced(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 2, 2, 3, seed=8)
    bound = Mapping().bind(model, h100)
    eng = Engine(bound, CostModel(h100))
    eng.scheduler = _Greedy(max_batch=8, max_tokens=64)
    reqs = [
        SimRequest(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens, stream.routing(r))
        for r in stream.requests
    ]
    with pytest.raises(RuntimeError, match=r"gave request 0 2 tokens; expected 1\.\.1"):
        eng.run(reqs)


def test_bad_routing_is_reported(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 1, 2, 2, seed=9)
    stream._routing[0] = stream._routing[0][:, :2]
    with pytest.raises(ValueError, match=r"request 0: routing has shape \(4, 2, 2\), expected \(4, 4, k\)"):
        simulate(model, h100, stream, Mapping())


@pytest.mark.parametrize("cache, prefetch", [("lru", "pregate"), ("static", "none")])
def test_events_do_not_overlap_per_resource(h100, cache: str, prefetch: str) -> None:
    model = tiny_model()
    stream = random_stream(model, 3, 3, 4, seed=10)
    m = Mapping(cache=CacheSpec(policy=cache, expert_fraction=0.25), prefetch=prefetch)
    r = simulate(model, h100, stream, m, seed=0, record_events=True)
    ev = r.events_frame()
    assert {"fetch", "expert", "attention", "router"} <= set(ev.kind)
    if cache == "static":  # nothing is cached: misses stream through the 2 staging buffers
        assert r.steps.streamed.sum() == r.steps.fetched.sum() > 0
        fetches = ev[ev.kind == "fetch"].sort_values("start_s")
        computes = ev[ev.kind == "expert"].sort_values("start_s")
        assert len(fetches) == len(computes) == r.steps.fetched.sum()
        start = fetches.start_s.to_numpy()
        freed = computes.end_s.to_numpy()  # a buffer is held from its fetch to its expert's compute
        assert (freed >= fetches.end_s.to_numpy()).all()
        in_use = [int(((start <= t + 1e-15) & (freed > t + 1e-15)).sum()) for t in start]
        assert max(in_use) <= 2
    else:
        assert "prefetch" in set(ev.kind)
    for (_dev, res), g in ev.groupby(["device", "resource"]):
        g = g.sort_values("start_s")
        assert (g.start_s.to_numpy()[1:] >= g.end_s.to_numpy()[:-1] - 1e-12).all(), res


def test_near_tier_sram_on_rdu() -> None:
    model = tiny_model(d_model=2048, expert_ffn_dim=4096)  # 50 MB experts: 10 fit the SN40L's 520 MB SRAM
    sn = get_platform("sn40l-node")
    stream = random_stream(model, 1, 4, 30, seed=2, zipf=1.2)
    base = Mapping(n_devices=1)
    near = base.with_(near=CacheSpec(tier="sram", capacity_experts=8, options={"per_layer": True}))
    r0 = simulate(model, sn, stream, base)
    r1 = simulate(model, sn, stream, near, record_events=True)
    s = r1.summary
    assert 0 < s["hit_rate"]["sram"] < 1 and s["hit_rate"]["hbm"] == 1.0
    assert s["tpot_p50_s"] < r0.summary["tpot_p50_s"]  # SRAM-resident experts compute faster
    assert s["assignments_device"] == r0.summary["assignments_device"]
    assert s["bytes_moved"]["sn40l:hbm->sram"] > 0
    assert s["peak_memory_bytes"]["sram"] <= 8 * model.bytes_per_expert
    assert "promote" in set(r1.events_frame().kind)
    assert r1.steps.hits.sum() + r1.steps.misses.sum() == r1.steps.experts_needed.sum()


# ------------------------------------------------------------------ expert-parallel execution modes
def _expected_cross(
    stream: ListStream, model: MoEModel, home: npt.NDArray[np.int64], req_device: dict[int, int], *, coherent: bool
) -> tuple[int, int]:
    """Independent count of (dispatch crossings, gathered partial outputs) over the served rows:
    classic: expert's home != the request's device; context-coherent: the token starts on its
    request's device and moves to the home of its first valid expert after each MoE layer."""
    cross = gather = 0
    for r in stream.requests:
        rows = stream.routing(r)[: r.prompt_tokens + r.output_tokens - 1]
        for tok in rows:
            cur = int(req_device[r.request_id])
            for layer in range(model.n_moe_layers):
                ex = [int(e) for e in tok[layer] if e >= 0]
                homes = [int(home[layer, e]) for e in ex]
                cross += sum(h != cur for h in homes)
                if coherent and ex:
                    cur = homes[0]
                    gather += sum(h != cur for h in homes[1:])
    return cross, gather


@pytest.mark.parametrize("execution", ["classic", "context-coherent"])
def test_ep_execution_crossings_and_bytes(execution: EpExecution) -> None:
    model = tiny_model(n_experts=16)
    dgx = get_platform("dgx-h100")
    stream = random_stream(model, 6, 3, 4, seed=7, zipf=0.8)
    m = Mapping(ep_execution=execution, batching=BatchingSpec(max_batch=3, max_tokens=8))
    r = simulate(model, dgx, stream, m, seed=0, record_events=True)
    home = m.bind(model, dgx).expert_home
    dev = dict(zip(r.requests.request_id, r.requests.device, strict=True))
    cross, gather = _expected_cross(stream, model, home, dev, coherent=execution == "context-coherent")
    assert r.steps.cross_device.sum() == cross
    unit = model.d_model * 2.0
    expected_bytes = (cross + gather) * unit if execution == "context-coherent" else 2 * cross * unit
    assert r.summary["bytes_moved"]["nvlink4"] == pytest.approx(expected_bytes)
    assert r.steps.assignments.sum() == r.summary["assignments_device"]  # each computed exactly once
    labels = set(r.events_frame().query("kind == 'all_to_all'").label.str.split().str[0])
    assert labels == ({"dispatch", "gather"} if execution == "context-coherent" else {"dispatch", "combine"})


def test_context_coherent_top1_is_one_all_to_all_per_layer() -> None:
    model = tiny_model(n_experts=16, top_k=1)
    dgx = get_platform("dgx-h100")
    stream = random_stream(model, 4, 3, 3, seed=8)
    r = simulate(model, dgx, stream, Mapping(ep_execution="context-coherent"), seed=0, record_events=True)
    a2a = r.events_frame().query("kind == 'all_to_all' and device == '0:h100-sxm'")
    assert len(a2a) > 0 and set(a2a.label.str.split().str[0]) == {"dispatch"}
    cross = r.steps.cross_device.sum()
    assert r.summary["bytes_moved"]["nvlink4"] == pytest.approx(cross * model.d_model * 2.0)


def test_context_coherent_on_one_device_is_classic(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 3, 4, 5, seed=9)
    m = Mapping(cache=CacheSpec(expert_fraction=0.5))
    a = simulate(model, h100, stream, m, seed=0)
    b = simulate(model, h100, stream, m.with_(ep_execution="context-coherent"), seed=0)
    assert a.steps.equals(b.steps) and a.requests.equals(b.requests)


def test_context_coherent_share_depends_on_placement(shared_dir: Path) -> None:
    """Reviewer defect #1, on the real DeepSeek-V2-Lite trace (first 100 requests: 50 to fit the
    placement, 20 of the other 50 served): in classic EP a token returns home after every layer, so
    the cross-device share is ~7/8 whatever the placement; in context-coherent EP the token stays on
    its top-1 expert's device and ExFlow's affinity placement keeps clearly more of the next layer
    local than round-robin."""
    trace = import_trace("deepseek-csv", [shared_dir / "traces" / "deepseek-v2-lite"])
    assert isinstance(trace, RoutingTrace)
    rids = np.unique(trace.request)
    train = trace.select_requests(rids[:50])
    test = trace.select_requests(rids[50:70])
    reqs, routing = [], []
    for i, rid in enumerate(np.unique(test.request)):
        rows = test.experts[test.request == rid]
        reqs.append(Req(i, 0.0, rows.shape[0] - 1, 2))
        routing.append(np.concatenate([rows, rows[-1:]]))
    stream = ListStream(reqs, routing)
    model = get_model("deepseek-v2-lite")
    dgx = get_platform("dgx-h100")
    share = {}
    executions: tuple[EpExecution, ...] = ("classic", "context-coherent")
    for execution in executions:
        for placement in ("round-robin", "exflow"):
            m = Mapping(
                placement=placement,
                placement_options={"method": "sequential"} if placement == "exflow" else {},
                ep_execution=execution,
                batching=BatchingSpec(max_batch=8),
            )
            r = simulate(model, dgx, stream, m, seed=0, train=train)
            share[execution, placement] = r.summary["cross_device_share"]
    # classic: placement-independent, about 7/8 (measured 0.872 / 0.878)
    assert share["classic", "round-robin"] == pytest.approx(7 / 8, abs=0.03)
    assert share["classic", "exflow"] == pytest.approx(share["classic", "round-robin"], abs=0.03)
    # context-coherent: round-robin has no affinity to exploit; exflow keeps tokens local
    assert share["context-coherent", "round-robin"] == pytest.approx(7 / 8, abs=0.03)
    assert share["context-coherent", "exflow"] < share["context-coherent", "round-robin"] - 0.1, share
