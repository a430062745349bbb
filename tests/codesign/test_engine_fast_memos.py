"""The fast path's cost memos answer exactly what the plan answers (bit for bit).

`AllToAllMemo` (all-to-all costs by bytes value) and `DecodeAttention` (decode attention by
context sum, asked 64 sums ahead in one call) replace per-step `StepCostPlan` calls in
`Engine._prepare`; their answers must be the plan's own scalar answers, whatever was asked before
(repeats, new values mixed with memoised ones, zeros, sums past the memo's exact range).
"""

from __future__ import annotations

import numpy as np
import pytest

from codesign._engine_fast import AllToAllMemo, DecodeAttention
from codesign.costplan import StepCostPlan
from codesign.mapping import CacheSpec, Mapping
from hwmodels import get_platform
from hwmodels.costs import CostModel
from workloads import get_model


@pytest.fixture(scope="module")
def plan() -> StepCostPlan:
    platform = get_platform("dgx-h100")
    bound = Mapping(cache=CacheSpec(policy="lru", expert_fraction=1.0)).bind(get_model("mixtral-8x7b"), platform)
    return StepCostPlan(CostModel(platform), bound)


def test_all_to_all_memo_is_the_plan(plan: StepCostPlan) -> None:
    memo = AllToAllMemo(plan)
    unit = 8192.0
    rng = np.random.default_rng(0)
    for _ in range(5):  # steps whose per-layer bytes repeat, with zeros and new values
        nbytes = rng.integers(0, 12, size=32).astype(np.float64) * unit
        s, j = memo(nbytes)
        for v, s_v, j_v in zip(nbytes.tolist(), s, j, strict=True):
            c = plan.all_to_all(np.asarray([v]))
            assert (s_v, j_v) == (float(np.asarray(c.total_s)[0]), float(np.asarray(c.energy_J)[0]))
        want = plan.all_to_all(nbytes)
        assert s == np.asarray(want.total_s).tolist()
        assert j == np.asarray(want.energy_J).tolist()


@pytest.mark.parametrize("n", [1, 3, 32])
def test_decode_attention_is_the_plan(plan: StepCostPlan, n: int) -> None:
    attn = DecodeAttention(plan, [0] * plan.n_devices)
    rng = np.random.default_rng(n)
    contexts = rng.integers(16, 4000, size=n).tolist()
    for _step in range(100):  # every request's context grows by one per step; a jump now and then
        got = attn(0, contexts)
        c = plan.attention_decode(0, n, float(np.mean(contexts)))
        assert got == (float(c.total_s), float(c.energy_J))
        contexts = [x + 1 for x in contexts]
        if _step % 37 == 36:
            contexts[0] += 1000
    huge = [2**53 - 1] * n  # past the exact-sum range: numpy's mean of the values, asked directly
    c = plan.attention_decode(0, n, float(np.mean(huge)))
    assert attn(0, huge) == (float(c.total_s), float(c.energy_J))
