"""Issue 8 per-step costs: LM head + sampling, MoE permute, the serving stack's host CPU time.

Charged identically by the engine's two step paths, `StepCostPlan.zero_load_step_s` and the
analytic model; the ``none`` stack charges nothing (the engine as before)."""

from __future__ import annotations

import pytest

from codesign.analytic import analytic_step, selection_probability
from codesign.costplan import StepCostPlan
from codesign.engine import Engine, zero_load_step_s
from codesign.mapping import BatchingSpec, Mapping
from codesign.policies.base import RoutingStats
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from hwmodels.stacks import ServingStack
from tests.codesign.sim_helpers import random_stream, tiny_model

FULL = ServingStack(
    name="test-full", per_step_s=2e-4, per_layer_s=3e-5, per_sequence_s=1e-5, lm_head=True, moe_permute=True
)
HIDDEN = ServingStack(name="test-hidden", per_step_s=1e-3, cpu_overlap=1.0, lm_head=True)


@pytest.fixture(scope="module")
def h100():
    return get_platform("h100-pcie5-host")


def test_plan_parts(h100) -> None:
    model = tiny_model()
    bound = Mapping(stack=FULL).bind(model, h100)
    plan = StepCostPlan(CostModel(h100), bound)
    none = StepCostPlan(CostModel(h100), Mapping().bind(model, h100))
    assert float(none.moe_permute(0, 8).total_s) == 0.0
    assert none.step_tail([4.0], 1e-3) == (0.0, 0.0, 0.0, 0.0)
    p1, p8 = float(plan.moe_permute(0, 1).total_s), float(plan.moe_permute(0, 8).total_s)
    assert 0.0 < p1 <= p8
    assert float(plan.moe_permute(0, 0).total_s) == 0.0
    lm_s, lm_J, exposed, cpu = plan.step_tail([4.0], 1e-3)
    assert lm_s == pytest.approx(float(plan.lm_head(0, 4.0).total_s)) and lm_s > 0 and lm_J > 0
    assert cpu == pytest.approx(2e-4 + model.n_layers * 3e-5 + 4 * 1e-5)
    assert exposed == pytest.approx(cpu)  # cpu_overlap 0: serial


@pytest.mark.parametrize("stack", [FULL, HIDDEN])
def test_zero_load_step_equals_plan_both_paths(h100, stack: ServingStack, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(first_dense_layers=1, dense_ffn_dim=2048, n_layers=5)
    stream = random_stream(model, 1, 9, 4, seed=13)
    cost = CostModel(h100)
    m = Mapping(stack=stack)
    bound = m.bind(model, h100)
    rows = stream.routing(stream.requests[0])
    base = simulate(model, h100, stream, Mapping(), cost_model=cost).steps.duration_s.to_numpy()
    for fast in (True, False):
        with monkeypatch.context() as mp:
            if not fast:  # the simpy step path
                mp.setattr(Engine, "_arithmetic_ok", lambda self: False)
            steps = simulate(model, h100, stream, m, cost_model=cost).steps.duration_s.to_numpy()
        assert steps[0] == pytest.approx(
            zero_load_step_s(cost, bound, rows[:9], prefill=True, context_len=0), rel=1e-12
        )
        for j in range(1, 4):
            z = zero_load_step_s(cost, bound, rows[9 + j - 1 : 9 + j], prefill=False, context_len=9 + j)
            assert steps[j] == pytest.approx(z, rel=1e-12)
        assert (steps > base).all()


def test_hidden_cpu_time_costs_only_what_the_device_does_not_cover(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 1, 9, 4, seed=13)
    cost = CostModel(h100)
    lm_only = ServingStack(name="lm", lm_head=True)
    a = simulate(model, h100, stream, Mapping(stack=lm_only), cost_model=cost).steps.duration_s.to_numpy()
    b = simulate(model, h100, stream, Mapping(stack=HIDDEN), cost_model=cost).steps.duration_s.to_numpy()
    # the step is max(device, 1 ms of host CPU) with cpu_overlap = 1
    assert b == pytest.approx([max(x, 1e-3) for x in a], rel=1e-12)


def test_tail_grows_with_emitting_sequences_and_is_host_busy(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 6, 4, 5, seed=3)
    m = Mapping(stack=FULL, batching=BatchingSpec(max_batch=6))
    r = simulate(model, h100, stream, m)
    n_steps = len(r.steps)
    emitting = int(r.steps.decode_tokens.sum()) + 6  # every decode token + each prompt's first token
    cpu = n_steps * (2e-4 + model.n_layers * 3e-5) + emitting * 1e-5
    assert r.summary["host_busy_s"] == pytest.approx(cpu, rel=1e-9)


def test_analytic_charges_the_same_tail(h100) -> None:
    model = tiny_model()
    cost = CostModel(h100)
    stream = random_stream(model, 1, 9, 4, seed=13)
    rows = stream.routing(stream.requests[0])
    stats = RoutingStats.from_routing(rows, model.n_experts)
    p = selection_probability(stats)
    for stack, extra in ((ServingStack(name="none-like"), 0.0), (FULL, None)):
        bound = Mapping(stack=stack).bind(model, h100)
        plan = StepCostPlan(cost, bound)
        dec = analytic_step(plan, bound, p, n_tokens=1, prefill=False, context_len=20.0)
        if extra == 0.0:
            assert dec.lm_head_s == 0.0 and dec.host_cpu_s == 0.0
        else:
            assert dec.lm_head_s == pytest.approx(float(plan.lm_head(0, 1.0).total_s))
            assert dec.host_cpu_s == pytest.approx(plan.host_cpu_s(1.0))


def test_moe_permute_energy_counts_each_moved_byte_once(h100) -> None:
    """The permute's ``(2 top_k + 2) d_model`` activation bytes per token already count reads and
    writes: each pays the tier's energy per byte once (plus static power over the time)."""
    model = tiny_model()
    plan = StepCostPlan(CostModel(h100), Mapping(stack=FULL).bind(model, h100))
    dev = plan.devices[0]
    c = plan.moe_permute(0, 64)
    moved = 64 * (2 * model.top_k + 2) * model.d_model * 2.0
    e_byte = dev.tier(dev.weights_tier).energy_J_per_byte
    assert float(c.energy_J) == pytest.approx(moved * e_byte + dev.static_power_W * float(c.total_s), rel=1e-12)


def test_no_permute_for_a_one_expert_top1_model(h100) -> None:
    dense = tiny_model(n_experts=1, top_k=1)
    plan = StepCostPlan(CostModel(h100), Mapping(stack=FULL).bind(dense, h100))
    assert float(plan.moe_permute(0, 64).total_s) == 0.0 and float(plan.moe_permute(0, 64).energy_J) == 0.0
    two = StepCostPlan(CostModel(h100), Mapping(stack=FULL).bind(tiny_model(n_experts=2, top_k=1), h100))
    assert float(two.moe_permute(0, 64).total_s) > 0.0
