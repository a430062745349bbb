"""The kernel execution model (grouped vs per-expert, eager vs graph, fused) and the registered
expert-execution strategies."""

from __future__ import annotations

import numpy as np
import pytest

from hwmodels import CostModel, get_platform
from hwmodels.costs import DEFAULT_CURVES
from hwmodels.execution import (
    DEFAULT_EXECUTION,
    EXECUTIONS,
    FUSED_KERNELS,
    GRAPH_KERNEL_OVERHEAD_S,
    FpgaExperts,
    GemmExperts,
    KernelExecution,
    expert_strategy,
    get_execution,
    register_expert_strategy,
    resolve_execution,
)
from workloads import get_model


def test_presets_and_defaults() -> None:
    assert resolve_execution("auto", "gpu").experts == "grouped"
    assert resolve_execution(None, "gpu").launch == "eager"
    for kind in ("cpu", "rdu", "fpga"):
        assert resolve_execution("auto", kind).experts == "per-expert"
    assert set(DEFAULT_EXECUTION.values()) <= set(EXECUTIONS)
    for name, exe in EXECUTIONS.items():
        assert exe.name == name and exe.source
    custom = KernelExecution(name="mine", launch="graph", graph_kernel_overhead_s=0.0)
    assert resolve_execution(custom, "cpu") is custom
    with pytest.raises(ValueError, match=r"unknown kernel execution 'warp'.*grouped-eager"):
        get_execution("warp")
    with pytest.raises(ValueError, match="experts must be 'grouped' or 'per-expert'"):
        KernelExecution(name="x", experts="batched")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="graph_kernel_overhead_s"):
        KernelExecution(name="x", graph_kernel_overhead_s=-1.0)
    with pytest.raises(ValueError, match="unknown kernel execution"):
        CostModel(get_platform("dgx-h100"), execution="warp")


def test_launch_overheads_and_kernel_counts() -> None:
    eager = get_execution("grouped-eager")
    graph = get_execution("grouped-graph")
    fused = get_execution("grouped-graph-fused")
    assert eager.kernel_overhead_s(7e-6) == 7e-6
    assert graph.kernel_overhead_s(7e-6) == GRAPH_KERNEL_OVERHEAD_S
    assert graph.kernel_overhead_s(1e-6) == 1e-6  # never above the eager overhead
    assert eager.kernels("expert_ffn", 3) == 3 and fused.kernels("expert_ffn", 3) == FUSED_KERNELS["expert_ffn"]
    assert fused.kernels("unknown_op", 5) == 5
    plat = get_platform("dgx-h100")
    h100 = plat.accelerators[0]
    cm = CostModel(plat)
    assert cm.launch_s(h100, "experts_grouped", 3) == pytest.approx(3 * DEFAULT_CURVES["gpu"].launch_overhead_s)
    assert cm.with_execution("grouped-graph").launch_s(h100, "experts_grouped", 3) == pytest.approx(
        3 * GRAPH_KERNEL_OVERHEAD_S
    )
    assert CostModel(plat, fidelity="roofline").launch_s(h100, "experts_grouped", 3) == 0.0
    # single ops: a graph removes launch time, fusion removes kernels; bytes and FLOPs unchanged
    model = get_model("deepseek-v2-lite")
    base = cm.expert_ffn(h100, model, 1.0)
    g = cm.with_execution("grouped-graph").expert_ffn(h100, model, 1.0)
    f = cm.with_execution("grouped-graph-fused").expert_ffn(h100, model, 1.0)
    assert base.memory_s - g.memory_s == pytest.approx(3 * (7e-6 - GRAPH_KERNEL_OVERHEAD_S))
    assert g.memory_s - f.memory_s == pytest.approx(GRAPH_KERNEL_OVERHEAD_S)
    roof = CostModel(plat, fidelity="roofline")
    assert roof.with_execution("grouped-graph-fused").expert_ffn(h100, model, 1.0) == roof.expert_ffn(h100, model, 1.0)
    assert cm.with_execution(None) is cm


@pytest.mark.parametrize("fidelity", ["roofline", "calibrated"])
def test_grouped_call_is_vectorised_and_cheaper_than_per_expert(fidelity: str) -> None:
    """``experts_grouped`` over ``[L, E]`` equals one call per row; one group never costs more than
    the same experts run one by one (same bytes and FLOPs, launches paid once)."""
    plat = get_platform("dgx-h100")
    h100 = plat.accelerators[0]
    model = get_model("deepseek-v2-lite")
    cm = CostModel(plat, fidelity=fidelity)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=(6, model.n_experts)) * (rng.random((6, model.n_experts)) < 0.2)
    counts[2] = 0
    grouped = cm.experts_grouped(h100, model, counts)
    for i in range(counts.shape[0]):
        one = cm.experts_grouped(h100, model, counts[i])
        assert float(np.asarray(grouped.total_s)[i]) == pytest.approx(one.total_s)
        assert float(np.asarray(grouped.energy_J)[i]) == pytest.approx(one.energy_J)
        per = cm.expert_ffn(h100, model, counts[i])
        assert one.total_s <= float(np.sum(per.total_s)) * (1 + 1e-12)
    assert float(np.asarray(grouped.total_s)[2]) == 0.0
    # an expectation with certain activities is the deterministic answer
    act = (counts > 0).astype(float)
    expect = cm.experts_grouped(h100, model, counts, active=act)
    assert np.allclose(np.asarray(expect.total_s), np.asarray(grouped.total_s))
    # activity 1/2 on every expert: half the weights in expectation, launches with P(any) = 1 - 2^-n
    half = cm.experts_grouped(h100, model, counts[0], active=0.5 * (counts[0] > 0))
    assert half.memory_s < cm.experts_grouped(h100, model, counts[0]).memory_s


def test_strategies_by_device_kind() -> None:
    assert isinstance(expert_strategy("gpu"), GemmExperts)
    assert isinstance(expert_strategy("rdu"), GemmExperts)
    assert isinstance(expert_strategy("fpga"), FpgaExperts)
    with pytest.raises(ValueError, match="no expert-execution strategy for device kind 'tpu'"):
        expert_strategy("tpu")
    with pytest.raises(ValueError, match="already has an expert strategy"):
        register_expert_strategy(type("OtherFpga", (FpgaExperts,), {})())
    # FPGA: a layer is one double-buffered stream with one pipeline fill (the cost model's fpga_layer)
    board = get_platform("zcu104-board")
    fpga = board.accelerators[0]
    cm = CostModel(board)
    model = get_model("deepseek-v2-lite").with_(n_experts=8, top_k=2)
    counts = np.array([3, 0, 1, 0, 0, 2, 0, 0], dtype=float)
    exe = resolve_execution("auto", "fpga")
    lay = expert_strategy("fpga").layer(cm, fpga, model, counts, weights_tier="", execution=exe, fpga_reorder=True)
    ref = cm.fpga_layer(fpga, model, counts, reorder=True)
    assert lay.total_s == pytest.approx(ref.total_s) and lay.energy_J == pytest.approx(ref.energy_J)
    both = expert_strategy("fpga").layer(
        cm, fpga, model, np.stack([counts, counts]), weights_tier="", execution=exe, fpga_reorder=True
    )
    assert np.allclose(np.asarray(both.total_s), ref.total_s)
    assert expert_strategy("fpga").group_fixed_s(cm, fpga, model, execution=exe) == cm.fpga_first_load_s(fpga, model)
