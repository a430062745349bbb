"""`codesign.simulate`: where training routing comes from (given, split, separate process sample)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from codesign.mapping import CacheSpec, Mapping
from codesign.simulate import (
    TrainingDataError,
    policies_needing_training,
    process_training_trace,
    simulate,
    training_trace,
)
from hwmodels import get_platform
from workloads.defaults import default_process
from workloads.model import MoEModel, get_model
from workloads.requests import ProcessRouting, RequestStream, TraceReplay


@pytest.fixture(scope="module")
def model() -> MoEModel:
    return get_model("mixtral-8x7b").with_precision("fp8")


def _mapping(**kw: Any) -> Mapping:
    return Mapping(cache=CacheSpec(expert_fraction=0.25), **kw)


def test_policies_needing_training(model: MoEModel) -> None:
    assert policies_needing_training(_mapping(), model) == []
    assert policies_needing_training(_mapping(prefetch="affinity"), model) == ["prefetch policy 'affinity'"]
    assert policies_needing_training(_mapping(placement="exflow"), model) == ["placement 'exflow'"]
    assert policies_needing_training(_mapping(placement="load-balanced", n_devices=1), model) == []  # nothing to place
    assert policies_needing_training(_mapping(placement="round-robin"), model) == []
    # one accelerator: nothing to place, so exflow needs nothing there
    assert policies_needing_training(_mapping(placement="exflow"), model, get_platform("h100-pcie5-host")) == []
    assert policies_needing_training(_mapping(placement="exflow"), model, get_platform("dgx-h100")) == [
        "placement 'exflow'"
    ]


def test_process_stream_trains_on_a_separate_sample(model: MoEModel) -> None:
    routing = ProcessRouting(default_process("mixtral-8x7b"), seed=3)
    stream = RequestStream.closed(n_requests=3, prompt_len=5, output_len=7, routing=routing, seed=3)
    platform = get_platform("h100-pcie5-host")
    res = simulate(model, platform, stream, _mapping(prefetch="affinity"), seed=0)
    assert res.summary["train_source"] == "process-sample"
    assert res.summary["train_tokens"] == 3 * (5 + 7)  # as many tokens as the run
    assert res.summary["n_requests"] == 3 and res.summary["train_requests"] == 0  # nothing withheld
    train = process_training_trace(routing, list(stream.requests), model.n_moe_layers, model.n_experts, model.top_k)
    served = training_trace(stream, list(stream.requests), model.n_moe_layers, model.n_experts, model.top_k)
    assert train.experts.shape == served.experts.shape
    assert not np.array_equal(train.experts, served.experts)  # a fresh sample, not the served routing
    again = process_training_trace(routing, list(stream.requests), model.n_moe_layers, model.n_experts, model.top_k)
    assert np.array_equal(train.experts, again.experts)  # deterministic under the process seed
    # the same run twice is identical; a policy without training needs gets no training data
    assert simulate(model, platform, stream, _mapping(prefetch="affinity"), seed=0).config_hash == res.config_hash
    plain = simulate(model, platform, stream, _mapping(), seed=0)
    assert plain.summary["train_source"] is None and plain.summary["train_tokens"] == 0


def test_trace_stream_is_not_split_implicitly(model: MoEModel) -> None:
    routing = ProcessRouting(default_process("mixtral-8x7b"), seed=1)
    src = RequestStream.closed(n_requests=4, prompt_len=3, output_len=3, routing=routing)
    trace = training_trace(src, list(src.requests), model.n_moe_layers, model.n_experts, model.top_k)
    stream = RequestStream.closed(n_requests=4, prompt_len=3, output_len=3, routing=TraceReplay(trace))
    platform = get_platform("h100-pcie5-host")
    with pytest.raises(TrainingDataError, match="prefetch policy 'affinity' need") as info:
        simulate(model, platform, stream, _mapping(prefetch="affinity"))
    assert info.value.policies == ["prefetch policy 'affinity'"]
    split = simulate(model, platform, stream, _mapping(prefetch="affinity", train_fraction=0.5))
    assert split.summary["train_source"] == "split" and split.summary["n_requests"] == 2
    given = simulate(model, platform, stream, _mapping(prefetch="affinity"), train=trace)
    assert given.summary["train_source"] == "given" and given.summary["n_requests"] == 4
