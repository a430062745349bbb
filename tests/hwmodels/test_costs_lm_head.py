"""`CostModel.lm_head` (LM head GEMM + sampling over fp32 logits) and `StepCostPlan.lm_head`.

The roofline answer is checked against a hand computation for Mixtral-8x7B on one H100 SXM
(vocab 32,000, d_model 4,096, bf16 weights; 3.35 TB/s HBM, 989 TFLOP/s bf16 from the preset).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codesign.costplan import StepCostPlan
from codesign.mapping import Mapping
from hwmodels import CostModel, get_platform
from hwmodels.costs import ACTIVATION_BYTES
from workloads import get_model


@pytest.fixture(scope="module")
def setup() -> tuple:
    platform = get_platform("h100-pcie5-host")
    return platform, platform.accelerators[0], get_model("mixtral-8x7b")


def test_roofline_matches_hand_computation(setup: tuple) -> None:
    platform, h100, model = setup
    cost = CostModel(platform, fidelity="roofline")
    v, d = 32000, 4096
    for n in (1, 64, 4096):
        c = cost.lm_head(h100, model, n)
        weight = v * d * 2.0  # bf16 unembedding, read once per step
        act = n * (ACTIVATION_BYTES * d + 2 * 4.0 * v)  # hidden rows in, fp32 logits written and read back
        flops = 2.0 * n * d * v
        assert c.memory_s == pytest.approx((weight + act) / 3350e9, rel=1e-9)
        assert c.compute_s == pytest.approx(flops / 989e12, rel=1e-9)
        assert c.total_s == pytest.approx(max(flops / 989e12, (weight + act) / 3350e9), rel=1e-9)
    # batch 1 is memory-bound (262 MB of weights: ~78 us), 4096 sequences compute-bound
    assert cost.lm_head(h100, model, 1).memory_s > cost.lm_head(h100, model, 1).compute_s
    assert cost.lm_head(h100, model, 4096).compute_s > cost.lm_head(h100, model, 4096).memory_s


def test_zero_sequences_cost_nothing_and_vectorised_equals_scalar(setup: tuple) -> None:
    platform, h100, model = setup
    for fidelity in ("roofline", "calibrated"):
        cost = CostModel(platform, fidelity=fidelity)
        assert cost.lm_head(h100, model, 0).total_s == 0.0
        ns = np.array([0.0, 1.0, 7.0, 300.0, 2048.0])
        vec = cost.lm_head(h100, model, ns)
        scal = [float(cost.lm_head(h100, model, float(n)).total_s) for n in ns]
        assert np.allclose(np.asarray(vec.total_s), scal)
        assert np.all(np.diff(np.asarray(vec.total_s)) >= 0)  # more sequences never cost less


def test_calibrated_is_never_below_roofline(setup: tuple) -> None:
    platform, h100, model = setup
    roof = CostModel(platform, fidelity="roofline")
    cal = CostModel(platform, fidelity="calibrated")
    ns = np.array([1.0, 16.0, 256.0, 4096.0])
    assert np.all(np.asarray(cal.lm_head(h100, model, ns).total_s) >= np.asarray(roof.lm_head(h100, model, ns).total_s))


def test_plan_asks_the_cost_model(setup: tuple) -> None:
    platform, h100, bf16 = setup
    model = dataclasses.replace(bf16, bytes_per_weight=1.0)  # FP8: the whole model fits in 80 GB
    cost = CostModel(platform, fidelity="calibrated")
    bound = Mapping(n_devices=1).bind(model, platform, min_kv_tokens=64)
    plan = StepCostPlan(cost, bound)
    assert plan.lm_head(0, 32).total_s == pytest.approx(plan.cost.lm_head(h100, model, 32).total_s)
    with pytest.raises(ValueError, match="n_sequences"):
        cost.lm_head(h100, model, -1)
