"""`StepCostPlan`: one cost plan for the engine, the zero-load check and the analytic model.

The DeepSeek-V2-Lite expert-parallel decode case of issue 7 is checked against a roofline-plus-
launch estimate computed by hand below (bytes of weights touched / HBM bandwidth + kernel launches
x per-kernel overhead + all-to-all latencies).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from codesign.analytic import analytic_summary
from codesign.costplan import StepCostPlan, zero_load_step_s
from codesign.mapping import BatchingSpec, CacheSpec, Mapping, MappingError
from codesign.policies.base import RoutingStats
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from hwmodels.costs import DEFAULT_CURVES
from tests.codesign.sim_helpers import rows_stream
from workloads import get_model

PROMPT, OUTPUT = 4, 8


def _balanced_ep8_rows(home: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int16]]:
    """8 requests whose every token routes, at every MoE layer, to 6 experts on 6 devices so that
    each of the 8 devices serves exactly 6 distinct experts with one token each per decode step
    (request ``r`` uses slot ``j`` of device ``(r + j) % 8``: 6 requests per device, distinct slots)."""
    n_layers, _ = home.shape
    rows = []
    for r in range(8):
        row = np.empty((PROMPT + OUTPUT, n_layers, 6), dtype=np.int16)
        for layer in range(n_layers):
            for j in range(6):
                d = (r + j) % 8
                row[:, layer, j] = np.flatnonzero(home[layer] == d)[j]
        rows.append(row)
    return rows


def test_deepseek_ep8_decode_matches_a_hand_roofline_plus_launch_estimate() -> None:
    """DeepSeek-V2-Lite (bf16) on a DGX H100, 8-way expert parallel, 8 decode requests (one per
    GPU); each GPU serves 6 routed experts with one token each per MoE layer.

    Hand estimate of one decode step (the critical path is the same on every GPU):

    - HBM 3.35 TB/s (h100-sxm preset); eager per-kernel overhead 7 us (the GPU default curve's
      ``launch_overhead_s``, fitted to measured op times); NVLink latency 5 us (nvlink4 preset);
    - per MoE layer (26 of them):
      attention 13,762,560 params x 2 B = 27.5 MB -> 8.2 us, + 4 kernels;
      router 2048 x 64 x 2 B = 0.26 MB -> 0.08 us, + 2 kernels;
      2 shared experts 34.6 MB -> 10.3 us, + 3 kernels;
      6 routed experts in one grouped GEMM: 6 x 17.3 MB = 103.8 MB -> 31.0 us, + 3 kernels;
      dispatch + combine all-to-all: 2 x 5 us latency (a few kB each);
      = 49.6 us of bytes + 12 kernels x 7 us + 10 us = 143.6 us;
    - the dense layer: attention 8.2 us + 4 kernels; FFN 3 x 2048 x 10944 x 2 B = 134.5 MB ->
      40.1 us + 3 kernels: 97.3 us;
    - step = 26 x 143.6 + 97.3 = 3,831 us.

    The simulated decode step (and the analytic one) must be within 25 % of it. Before the
    execution model, each routed expert paid its own three launches: 6 x (5.2 + 21) us instead of
    31 + 21 us per layer, ~2.7 ms more per step (> 60 % above the estimate)."""
    model = get_model("deepseek-v2-lite")
    platform = get_platform("dgx-h100")
    h100 = platform.accelerators[0]
    assert h100.tier("hbm").bandwidth_Bps == 3350e9
    launch_s = DEFAULT_CURVES["gpu"].launch_overhead_s
    assert launch_s == 7e-6
    assert platform.peer_link is not None and platform.peer_link.latency_s == pytest.approx(5e-6)
    hbm = 3350e9
    expert_B = 3 * 2048 * 1408 * 2  # gate, up, down of width 1408, bf16
    assert model.bytes_per_expert == expert_B
    attention_us = 13_762_560 * 2 / hbm * 1e6 + 4 * 7
    router_us = 2048 * 64 * 2 / hbm * 1e6 + 2 * 7
    shared_us = 2 * expert_B / hbm * 1e6 + 3 * 7
    routed_us = 6 * expert_B / hbm * 1e6 + 3 * 7
    a2a_us = 2 * 5
    moe_layer_us = attention_us + router_us + shared_us + routed_us + a2a_us
    dense_layer_us = attention_us + 3 * 2048 * 10944 * 2 / hbm * 1e6 + 3 * 7
    estimate_s = (26 * moe_layer_us + 1 * dense_layer_us) * 1e-6
    assert estimate_s == pytest.approx(3.831e-3, rel=0.001)

    cost = CostModel(platform)
    mapping = Mapping(n_devices=8, batching=BatchingSpec(max_batch=8))
    bound = mapping.bind(model, platform, min_kv_tokens=PROMPT + OUTPUT)
    rows = _balanced_ep8_rows(bound.expert_home)
    res = simulate(model, platform, rows_stream(rows, PROMPT), mapping, cost_model=cost)
    sim_s = res["tpot_p50_s"]
    assert sim_s == pytest.approx(estimate_s, rel=0.25)  # measured: 4.00 ms (+4 %)

    stats = RoutingStats.from_routing(np.concatenate(rows), model.n_experts)
    ana = analytic_summary(
        model, platform, mapping, stats, batch_size=8, prompt_tokens=PROMPT, output_tokens=OUTPUT, cost_model=cost
    )
    assert ana["tpot_p50_s"] == pytest.approx(estimate_s, rel=0.25)

    # per-expert eager kernels (the old engine's only mode) are far above the estimate
    per_expert = simulate(
        model,
        platform,
        rows_stream(rows, PROMPT),
        dataclasses.replace(mapping, execution="per-expert-eager"),
        cost_model=cost,
    )
    assert per_expert["tpot_p50_s"] > 1.5 * estimate_s


def test_plan_answers_as_the_cost_model_per_expert_and_grouped() -> None:
    """The plan's per-expert costs are the cost model's; its group is the sum of the per-expert
    costs under per-expert execution and one grouped call under grouped execution; the zero-load
    step is the sum of the parts."""
    model = get_model("deepseek-v2-lite")
    platform = get_platform("dgx-h100")
    h100 = platform.accelerators[0]
    cost = CostModel(platform)
    rng = np.random.default_rng(1)
    rows = np.stack(
        [np.stack([rng.choice(64, 6, replace=False) for _ in range(model.n_moe_layers)]) for _ in range(3)]
    ).astype(np.int16)
    counts = np.zeros((model.n_moe_layers, 64), dtype=np.int64)
    for layer in range(model.n_moe_layers):
        np.add.at(counts[layer], rows[:, layer, :].ravel(), 1)
    parts = {}
    for exe in ("per-expert-eager", "grouped-eager"):
        bound = Mapping(n_devices=1, execution=exe).bind(model, platform, min_kv_tokens=64)
        plan = StepCostPlan(cost, bound)
        per = plan.experts(0, counts[0])
        assert np.allclose(np.asarray(per.total_s), np.asarray(cost.expert_ffn(h100, model, counts[0]).total_s))
        ready = np.flatnonzero(counts[0])
        g_s, _ = plan.group(0, counts[0], ready, np.asarray(per.total_s), np.asarray(per.energy_J))
        if exe == "per-expert-eager":
            assert g_s == pytest.approx(float(np.sum(np.asarray(per.total_s)[ready])))
        else:
            assert g_s == pytest.approx(cost.experts_grouped(h100, model, counts[0]).total_s)
            assert g_s < float(np.sum(np.asarray(per.total_s)[ready]))
        layers = np.asarray(plan.layer_experts(0, counts).total_s)
        assert layers.shape == (model.n_moe_layers,) and layers[0] == pytest.approx(g_s)
        attn = float(cost.attention_decode(h100, model, 3, 40.0).total_s)
        router = float(cost.router(h100, model, 3).total_s)
        shared = float(cost.shared_experts(h100, model, 3).total_s)
        dense = float(cost.expert_ffn(h100, model.with_(expert_ffn_dim=model.dense_ffn_dim), 3).total_s)
        expect = model.n_moe_layers * (attn + router + shared) + float(layers.sum()) + attn + dense
        parts[exe] = zero_load_step_s(cost, bound, rows, prefill=False, context_len=40)
        assert parts[exe] == pytest.approx(expect, rel=1e-12)
    assert parts["grouped-eager"] < parts["per-expert-eager"]
    with pytest.raises(MappingError, match="execution must be 'auto' or one of"):
        Mapping(execution="warp-speed")


def test_ten_times_the_host_link_bandwidth_speeds_up_an_offload_bound_decode() -> None:
    """Mixtral-8x7B (fp8) on one H100 with a quarter of the experts in HBM: decode waits for expert
    fetches over PCIe. 10x the host link's bandwidth (same measured curve shape: the points are
    efficiencies) makes each fetch ~10x faster and the decode step several times faster."""
    model = get_model("mixtral-8x7b").with_precision("fp8")
    platform = get_platform("h100-pcie5-host")
    link = platform.host_link
    assert link is not None
    fast = dataclasses.replace(platform, host_link=dataclasses.replace(link, bandwidth_Bps=10 * link.bandwidth_Bps))
    mapping = Mapping(cache=CacheSpec(policy="lru", expert_fraction=0.25), batching=BatchingSpec(max_batch=1))
    rng = np.random.default_rng(3)
    rows = [
        np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(32)]) for _ in range(12)]).astype(np.int16)
    ]
    tpot, fetch = [], []
    for plat in (platform, fast):
        cost = CostModel(plat)
        bound = mapping.bind(model, plat, min_kv_tokens=12)
        fetch.append(float(StepCostPlan(cost, bound).fetch(0).total_s))
        tpot.append(simulate(model, plat, rows_stream(rows, 4), mapping, cost_model=cost)["tpot_p50_s"])
    assert fetch[0] / fetch[1] == pytest.approx(10, rel=0.05)
    assert tpot[0] / tpot[1] > 5  # measured: 264.6 ms -> 30.4 ms (8.7x; attention and compute do not scale)


def test_a_stacks_compute_slowdown_scales_compute_bound_kernels_only() -> None:
    """``ServingStack.compute_slowdown`` (the stack's kernel library): the plan's cost model computes on
    the GPU at ``1 / (1 + slowdown)`` of the curve's rate, so a compute-bound expert GEMM's arithmetic
    takes ``1 + slowdown`` times as long (its launch overhead does not change); a batch-1 GEMV (capped
    at its weight stream), memory time and the roofline fidelity are unchanged; the cost model the
    plan was given is untouched."""
    platform = get_platform("dgx-h100")
    model = get_model("mixtral-8x7b")
    dev = platform.accelerators[0]
    cost = CostModel(platform)
    base_map = Mapping(batching=BatchingSpec(max_batch=64))

    def plan(slowdown: float) -> StepCostPlan:
        stack = {"name": "slow-kernels", "compute_slowdown": slowdown}
        return StepCostPlan(cost, dataclasses.replace(base_map, stack=stack).bind(model, platform))

    base, slow1, slow3 = StepCostPlan(cost, base_map.bind(model, platform)), plan(1.0), plan(3.0)
    assert base.cost.compute_scale == 1.0 and slow1.cost.compute_scale == pytest.approx(0.5)
    assert slow3.cost.compute_scale == pytest.approx(0.25) and cost.compute_scale == 1.0

    def compute(p: StepCostPlan, rows: float) -> float:
        return float(np.sum(p.cost.expert_ffn(dev, model, [rows]).compute_s))

    d1, d3 = compute(slow1, 4096.0) - compute(base, 4096.0), compute(slow3, 4096.0) - compute(base, 4096.0)
    assert d1 > 0.9 * compute(base, 4096.0)  # the arithmetic doubled (launches are a few %)
    assert d3 == pytest.approx(3.0 * d1, rel=1e-9)
    memory = [float(np.sum(p.cost.expert_ffn(dev, model, [4096.0]).memory_s)) for p in (base, slow3)]
    assert memory[1] == pytest.approx(memory[0], rel=1e-12)
    one = [float(np.sum(p.cost.expert_ffn(dev, model, [1.0]).total_s)) for p in (base, slow3)]
    assert one[1] == pytest.approx(one[0], rel=1e-12)
    roof = CostModel(platform, fidelity="roofline")
    r = [float(np.sum(c.expert_ffn(dev, model, [4096.0]).total_s)) for c in (roof, roof.with_compute_scale(0.5))]
    assert r[1] == r[0]
    with pytest.raises(ValueError, match="compute_scale"):
        cost.with_compute_scale(0.0)


def test_a_designs_cost_model_computes_at_its_stacks_rate() -> None:
    """`codesign.design.cost_model` reads the mapping's stack like `StepCostPlan` does, so the
    metrics' compute / memory split sees the kernels the engine ran; the plan built on it keeps it."""
    from codesign.design import cost_model
    from codesign.validation import build_design, case_dir, load_case
    from hwmodels.stacks import get_stack

    design = build_design(load_case(case_dir() / "mlperf41-offline-h100.json"), reduced=True)
    scale = get_stack("trt-llm").compute_scale
    assert scale < 1.0
    cost = cost_model(design)
    assert cost.compute_scale == pytest.approx(scale)
    assert cost.with_compute_scale(scale) is cost  # the plan's call sets the same rate, it does not compound
    plain = cost_model(design.with_(mapping=dataclasses.replace(design.mapping, stack="none")))
    assert plain.compute_scale == 1.0


def test_a_stacks_collective_latency_is_paid_once_per_all_to_all() -> None:
    """A stack's ``collective_latency_s`` (its collective library) replaces the link's per-call
    latency in the plan's all-to-all; a stack without one leaves the link's."""
    platform = get_platform("dgx-h100")
    # a link with a call latency of its own, so that "replaces" and "adds to" differ
    platform = dataclasses.replace(
        platform, peer_link=dataclasses.replace(platform.peer_link, collective_latency_s=5e-6)
    )
    model = get_model("mixtral-8x7b")
    cost = CostModel(platform)
    ep8 = Mapping(n_devices=8, batching=BatchingSpec(max_batch=8))

    def plan(stack: object) -> StepCostPlan:
        return StepCostPlan(cost, dataclasses.replace(ep8, stack=stack).bind(model, platform))

    bytes_per_device = np.array([0.0, 4096.0, 2e6])
    base = plan("none").all_to_all(bytes_per_device).total_s
    link = platform.peer_link
    assert base[1] == pytest.approx(cost.all_to_all(link, 4096.0, 8).total_s)
    slow = plan({"name": "lib", "collective_latency_s": 40e-6}).all_to_all(bytes_per_device).total_s
    assert slow[0] == 0.0 and base[0] == 0.0
    assert slow[1:] - base[1:] == pytest.approx([40e-6 - 5e-6] * 2)
