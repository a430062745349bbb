"""The arithmetic step path (`codesign._engine_fast`) against the simpy step path: the same results.

Each case runs `simulate` twice on the same workload: as the engine chooses (the arithmetic path,
checked to be taken) and with the arithmetic path switched off (every step played by simpy
processes). Times, counts, bytes and hit rates must be identical; energies equal up to float
summation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import codesign._engine_fast as fast_mod
from codesign.engine import Engine
from codesign.mapping import BatchingSpec, CacheSpec, EpExecution, Mapping
from codesign.result import Result
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import random_stream, tiny_model

_ENERGY = ("energy_J",)


def _run_both(monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any) -> tuple[Result, Result, int]:
    calls = {"n": 0}
    play = fast_mod.ArithmeticStep.play

    def counting(self: fast_mod.ArithmeticStep, si: fast_mod.StepInputs, t0: float) -> float:
        calls["n"] += 1
        return play(self, si, t0)

    with monkeypatch.context() as m:
        m.setattr(fast_mod.ArithmeticStep, "play", counting)
        fast = simulate(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(Engine, "_arithmetic_ok", lambda self: False)
        slow = simulate(*args, **kwargs)
    return fast, slow, calls["n"]


def _same(fast: Result, slow: Result) -> None:
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    cols = [c for c in slow.steps.columns if c not in _ENERGY]
    pd.testing.assert_frame_equal(fast.steps[cols], slow.steps[cols], check_exact=True)
    np.testing.assert_allclose(fast.steps.energy_J, slow.steps.energy_J, rtol=1e-9)
    for key in ("hit_rate", "bytes_moved", "peak_memory_bytes", "makespan_s", "accesses", "hits", "device_busy_s"):
        if isinstance(slow.summary[key], float):
            assert fast.summary[key] == pytest.approx(slow.summary[key], rel=1e-12), key
        else:
            assert fast.summary[key] == slow.summary[key], key
    assert fast.summary["energy_J"] == pytest.approx(slow.summary["energy_J"], rel=1e-9)


@pytest.mark.parametrize(
    ("policy", "options", "staging"),
    [("lru", {}, 0), ("lru", {"per_layer": True}, 2), ("lfu", {}, 0), ("belady", {}, 1), ("static", {}, 2)],
)
def test_offloaded_one_device(monkeypatch: pytest.MonkeyPatch, policy: str, options: dict, staging: int) -> None:
    model = tiny_model()
    h100 = get_platform("h100-pcie5-host")
    stream = random_stream(model, 6, 5, 7, seed=11, rate_per_s=40.0, zipf=0.8)
    m = Mapping(
        cache=CacheSpec(policy=policy, expert_fraction=0.3, options=tuple(options.items())),
        staging_experts=staging,
        batching=BatchingSpec(max_batch=4, max_tokens=12),
    )
    fast, slow, n_fast = _run_both(monkeypatch, model, h100, stream, m, seed=3)
    assert n_fast >= len(fast.steps) > 0  # Belady's recording pass plays the steps too
    assert slow.summary["hits"] < slow.summary["accesses"]  # the cache matters here
    _same(fast, slow)


@pytest.mark.parametrize("ep", ["classic", "context-coherent"])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_several_devices(monkeypatch: pytest.MonkeyPatch, ep: EpExecution, fraction: float) -> None:
    model = tiny_model(n_shared_experts=1, shared_ffn_dim=512, first_dense_layers=1, n_layers=5, dense_ffn_dim=2048)
    dgx = get_platform("dgx-h100")
    stream = random_stream(model, 8, 4, 5, seed=5, rate_per_s=200.0)
    m = Mapping(
        n_devices=4,
        ep_execution=ep,
        cache=CacheSpec(expert_fraction=fraction),
        batching=BatchingSpec(max_batch=8, max_tokens=32),
    )
    fast, slow, n_fast = _run_both(monkeypatch, model, dgx, stream, m, seed=0)
    assert n_fast == len(fast.steps) > 0
    _same(fast, slow)


def test_per_expert_execution(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    h100 = get_platform("h100-pcie5-host")
    stream = random_stream(model, 3, 4, 6, seed=2)
    m = Mapping(cache=CacheSpec(expert_fraction=0.5), execution="per-expert-eager")
    fast, slow, n_fast = _run_both(monkeypatch, model, h100, stream, m, seed=0)
    assert n_fast > 0
    _same(fast, slow)


def test_prefetch_takes_the_simpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    h100 = get_platform("h100-pcie5-host")
    stream = random_stream(model, 3, 4, 6, seed=2)
    m = Mapping(cache=CacheSpec(expert_fraction=0.5), prefetch="pregate")
    fast, slow, n_fast = _run_both(monkeypatch, model, h100, stream, m, seed=0)
    assert n_fast == 0
    pd.testing.assert_frame_equal(fast.steps, slow.steps, check_exact=True)
