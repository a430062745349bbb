"""``batching.kv``: KV-cache admission by final length ("reserve") or as the cache grows ("paged",
with preemption by recomputation when a step would overflow), on a KV cache of a few hundred tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codesign.mapping import BatchingSpec, Mapping, MappingError
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import random_stream, tiny_model

PROMPT, OUTPUT, N = 50, 40, 8


def _run(kv: str, capacity_tokens: int = 300):
    model = tiny_model()
    platform = get_platform("dgx-h100")
    base = Mapping(n_devices=1, batching=BatchingSpec(max_batch=16, kv=kv))
    free = base.bind(model, platform).memory[0]["kv_cache_bytes"]
    fraction = capacity_tokens * model.kv_bytes_per_token / free
    mapping = dataclasses.replace(base, kv_fraction=fraction)
    bound = mapping.bind(model, platform)
    cap = bound.kv_capacity_tokens[0]
    assert capacity_tokens - 2 <= cap <= capacity_tokens
    res = simulate(model, platform, random_stream(model, N, PROMPT, OUTPUT, seed=3), mapping)
    # the KV cache never held more than it has: peak HBM <= weights + the KV cache's bytes
    budget = bound.memory[0]
    weights = budget["non_expert_bytes"] + budget["expert_cache_bytes"] + budget["staging_bytes"]
    assert max(res.summary["peak_memory_bytes"].values()) <= weights + cap * model.kv_bytes_per_token
    return res, cap


def test_paged_admits_more_than_reserve_and_preempts_to_stay_within_the_cache() -> None:
    reserve, cap = _run("reserve")
    paged, _ = _run("paged")
    final = PROMPT + OUTPUT - 1
    assert reserve.summary["kv_policy"] == "reserve" and reserve.summary["kv_preemptions"] == 0
    assert reserve.steps.n_requests.max() == cap // final  # 3 final lengths fit in ~300 tokens
    assert paged.summary["kv_policy"] == "paged" and paged.summary["kv_preemptions"] > 0
    assert paged.steps.n_requests.max() > cap // final  # prompts only at admission
    for res in (reserve, paged):
        req = res.requests.sort_values("request_id")
        assert len(req) == N
        # every request reports its own lengths and emits all its tokens once
        assert (req.prompt_tokens == PROMPT).all() and (req.output_tokens == OUTPUT).all()
        # tokens processed: every prompt and fed-back output once, plus what preemptions recompute
        processed = int(res.steps.prefill_tokens.sum() + res.steps.decode_tokens.sum())
        assert processed == N * (PROMPT + OUTPUT - 1) + res.summary["kv_recomputed_tokens"]
        assert (req.first_token_s > req.arrival_s).all() and (req.finish_s > req.first_token_s).all()
        assert (req.admitted_s <= req.first_token_s).all()
    # recomputation costs work: the paged run processed more prefill tokens than the prompts
    assert int(paged.steps.prefill_tokens.sum()) > N * PROMPT and paged.summary["kv_recomputed_tokens"] > 0
    assert int(reserve.steps.prefill_tokens.sum()) == N * PROMPT


def test_paged_is_deterministic_and_reserve_keeps_the_hash() -> None:
    a, _ = _run("paged")
    b, _ = _run("paged")
    assert np.array_equal(a.requests.finish_s.to_numpy(), b.requests.finish_s.to_numpy())
    assert "kv" not in Mapping().to_dict()["batching"]  # the default leaves older designs' hashes alone
    assert Mapping.from_dict(Mapping(batching=BatchingSpec(kv="paged")).to_dict()).batching.kv == "paged"
    with pytest.raises(MappingError, match=r"batching\.kv must be one of"):
        BatchingSpec(kv="lru")
