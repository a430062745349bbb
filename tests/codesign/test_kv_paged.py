"""``batching.kv``: KV-cache admission by final length ("reserve") or as the cache grows ("paged",
with preemption by recomputation when a step would overflow), on a KV cache of a few hundred tokens."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from codesign.mapping import BatchingSpec, Mapping, MappingError
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import random_stream, tiny_model

PROMPT, OUTPUT, N = 50, 40, 8


def _run(
    kv: str,
    capacity_tokens: int = 300,
    *,
    scheduler: str = "fifo",
    n_devices: int = 1,
    max_tokens: int = 8192,
    n: int = N,
    prompt: int = PROMPT,
    output: int = OUTPUT,
    seed: int = 3,
) -> tuple[Any, int]:
    """Run ``n`` requests arriving at once on ``n_devices`` whose KV caches hold ~``capacity_tokens``;
    checks the invariants every run must keep and returns (result, capacity per device)."""
    model = tiny_model()
    platform = get_platform("dgx-h100")
    batching = BatchingSpec(scheduler=scheduler, max_batch=16, max_tokens=max_tokens, kv=kv)
    base = Mapping(n_devices=n_devices, batching=batching)
    free = base.bind(model, platform).memory[0]["kv_cache_bytes"]
    mapping = dataclasses.replace(base, kv_fraction=capacity_tokens * model.kv_bytes_per_token / free)
    bound = mapping.bind(model, platform)
    cap = bound.kv_capacity_tokens[0]
    assert capacity_tokens - 2 <= cap <= capacity_tokens
    res = simulate(model, platform, random_stream(model, n, prompt, output, seed=seed), mapping)
    s = res.summary
    # the engine never set aside more KV than a device has, and the cache never held more
    assert 0 < s["kv_peak_set_aside_tokens"] <= cap
    budget = bound.memory[0]
    weights = budget["non_expert_bytes"] + budget["expert_cache_bytes"] + budget["staging_bytes"]
    assert max(s["peak_memory_bytes"].values()) <= weights + cap * model.kv_bytes_per_token
    req = res.requests.sort_values("request_id")
    assert len(req) == n
    # every request reports its own lengths and time to first token, once, however often preempted
    assert (req.prompt_tokens == prompt).all() and (req.output_tokens == output).all()
    assert (req.admitted_s <= req.first_token_s).all() and (req.first_token_s > req.arrival_s).all()
    np.testing.assert_allclose(req.tpot_s, (req.finish_s - req.first_token_s) / (output - 1))
    # tokens processed: every prompt and fed-back output once, plus what preemptions recompute
    processed = int(res.steps.prefill_tokens.sum() + res.steps.decode_tokens.sum())
    assert processed == n * (prompt + output - 1) + s["kv_recomputed_tokens"]
    assert s["kv_policy"] == kv
    return res, cap


def test_paged_admits_more_than_reserve_and_preempts_to_stay_within_the_cache() -> None:
    reserve, cap = _run("reserve")
    paged, _ = _run("paged")
    final = PROMPT + OUTPUT - 1
    assert reserve.summary["kv_preemptions"] == 0 and reserve.summary["kv_recomputed_tokens"] == 0
    assert reserve.steps.n_requests.max() == cap // final  # 3 final lengths fit in ~300 tokens
    assert paged.summary["kv_preemptions"] > 0 and paged.summary["kv_recomputed_tokens"] > 0
    assert paged.steps.n_requests.max() > cap // final  # prompts only at admission
    # recomputation costs work: the paged run processed more prefill tokens than the prompts
    assert int(paged.steps.prefill_tokens.sum()) > N * PROMPT
    assert int(reserve.steps.prefill_tokens.sum()) == N * PROMPT


def test_a_preempted_request_keeps_its_first_token_and_admission_times() -> None:
    """Two prompts of 50 fit a 101-token cache, their first decode step does not: the later one is
    preempted after its prefill emitted its first token; its TTFT stays that first prefill's end and
    it recomputes 50 prompt rows + its first output."""
    res, _ = _run("paged", 101, n=2, prompt=50, output=40)
    assert res.summary["kv_preemptions"] >= 1
    req = res.requests.sort_values("request_id")
    first_step_end = float(res.steps.end_s.iloc[0])
    assert int(res.steps.prefill_tokens.iloc[0]) == 100  # both prompts in the first step
    np.testing.assert_allclose(req.first_token_s, first_step_end)
    assert (req.admitted_s == 0.0).all()
    assert res.summary["kv_recomputed_tokens"] >= 50


@pytest.mark.parametrize(
    ("scheduler", "n_devices", "max_tokens", "capacity", "shape"),
    [
        # chunked prefills (16 tokens a step): preemption can hit a request mid-prefill
        ("fifo", 1, 16, 300, (8, 50, 40)),
        # a step whose chosen requests are all preempted must not read as a deadlock (two devices,
        # a 3-token budget, an expert-grouping scheduler)
        ("expertflow", 2, 3, 60, (8, 12, 25)),
        ("symbolic-moe", 2, 64, 120, (10, 20, 30)),
    ],
)
def test_paged_keeps_its_invariants_across_schedulers_and_devices(
    scheduler: str, n_devices: int, max_tokens: int, capacity: int, shape: tuple[int, int, int]
) -> None:
    n, prompt, output = shape
    res, _ = _run(
        "paged",
        capacity,
        scheduler=scheduler,
        n_devices=n_devices,
        max_tokens=max_tokens,
        n=n,
        prompt=prompt,
        output=output,
        seed=2,
    )
    if scheduler != "symbolic-moe":  # it serves one expert group at a time: fewer run at once
        assert res.summary["kv_preemptions"] > 0


def test_paged_is_deterministic_and_reserve_keeps_the_hash() -> None:
    a, _ = _run("paged")
    b, _ = _run("paged")
    assert np.array_equal(a.requests.finish_s.to_numpy(), b.requests.finish_s.to_numpy())
    assert "kv" not in Mapping().to_dict()["batching"]  # the default leaves older designs' hashes alone
    assert Mapping.from_dict(Mapping(batching=BatchingSpec(kv="paged")).to_dict()).batching.kv == "paged"
    with pytest.raises(MappingError, match=r"batching\.kv must be one of"):
        BatchingSpec(kv="lru")
