"""`analytic.supports`: the closed form says what it cannot model instead of answering wrongly."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from codesign.analytic import analytic_summary, supports
from codesign.mapping import BatchingSpec, BoundMapping, CacheSpec, Mapping
from codesign.policies.base import RoutingStats
from hwmodels import CostModel, get_platform
from workloads import RoutingTrace, get_model

OFFLOAD = CacheSpec(policy="lru", expert_fraction=0.25)


Binder = Callable[[Mapping], BoundMapping]


@pytest.fixture(scope="module")
def bind_mixtral() -> Binder:
    """Binds a mapping of Mixtral-8x7B (fp8) on one H100 with a host."""
    model = get_model("mixtral-8x7b").with_precision("fp8")
    platform = get_platform("h100-pcie5-host")

    def bind(mapping: Mapping) -> BoundMapping:
        return mapping.bind(model, platform, min_kv_tokens=64)

    return bind


def test_modelled_designs_have_no_reason(bind_mixtral: Binder) -> None:
    for m in (
        Mapping(cache=OFFLOAD, batching=BatchingSpec(max_batch=8)),
        Mapping(cache=CacheSpec(policy="lfu", expert_fraction=0.25), batching=BatchingSpec(max_batch=1)),
        Mapping(cache=CacheSpec(policy="static", expert_fraction=0.25), miss="cost"),
        Mapping(cache=CacheSpec(policy="lru", expert_fraction=0.25, options={"per_layer": True})),
        Mapping(cache=CacheSpec(policy="belady"), batching=BatchingSpec(max_batch=1)),  # nothing offloaded
        Mapping(cache=OFFLOAD, execution="grouped-graph-fused"),
    ):
        assert supports(bind_mixtral(m)) == [], m


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        (Mapping(cache=CacheSpec(policy="belady", expert_fraction=0.25)), "cache policy 'belady'"),
        (Mapping(cache=CacheSpec(policy="expertflow", expert_fraction=0.25)), "cache policy 'expertflow'"),
        (Mapping(cache=OFFLOAD, prefetch="pregate"), "prefetch 'pregate'"),
        (Mapping(cache=OFFLOAD, batching=BatchingSpec(max_batch=1)), "LRU cache at batch 1"),
        (Mapping(cache=OFFLOAD, batching=BatchingSpec(scheduler="expertflow")), "token scheduler 'expertflow'"),
    ],
)
def test_unsupported_mappings_are_refused_with_reasons(bind_mixtral: Binder, mapping: Mapping, fragment: str) -> None:
    reasons = supports(bind_mixtral(mapping))
    assert any(fragment in r for r in reasons), reasons


def test_expert_parallel_and_tier_reasons() -> None:
    model = get_model("deepseek-v2-lite")
    dgx = get_platform("dgx-h100")
    coherent = Mapping(n_devices=8, ep_execution="context-coherent").bind(model, dgx, min_kv_tokens=64)
    assert any("ep_execution 'context-coherent'" in r for r in supports(coherent))
    assert supports(Mapping(n_devices=8).bind(model, dgx, min_kv_tokens=64)) == []
    sn = get_platform("sn40l-node")
    near = Mapping(n_devices=1, cache=CacheSpec(tier="hbm"), near=CacheSpec(tier="sram", capacity_experts=8))
    assert any("near tier 'sram'" in r for r in supports(near.bind(model, sn, min_kv_tokens=64)))
    with pytest.raises(TypeError, match="needs a Design or a BoundMapping"):
        supports(Mapping())


def test_summary_reports_what_it_did_not_model(mixtral: RoutingTrace) -> None:
    """An unsupported policy used to be answered silently as LRU; the summary now carries the reasons
    (and `codesign.design.evaluate(..., "analytic")` refuses it)."""
    model = get_model("mixtral-8x7b").with_precision("fp8")
    platform = get_platform("h100-pcie5-host")
    m = Mapping(cache=CacheSpec(policy="belady", expert_fraction=0.25), batching=BatchingSpec(max_batch=4))
    out = analytic_summary(
        model,
        platform,
        m,
        RoutingStats.from_trace(mixtral),
        batch_size=4,
        prompt_tokens=8,
        output_tokens=8,
        cost_model=CostModel(platform),
    )
    assert any("cache policy 'belady'" in r for r in out["unsupported"])


def test_evaluate_refuses_an_unmodelled_policy_with_reasons() -> None:
    """The one door: `evaluate(design, "analytic")` raises with the reasons instead of answering."""
    from codesign.design import Design, UnsupportedDesignError, evaluate

    design = Design.from_presets(
        model="mixtral-8x7b",
        platform="h100-pcie5-host",
        mapping=Mapping(cache=CacheSpec(policy="belady", expert_fraction=0.25), prefetch="pregate"),
    )
    with pytest.raises(UnsupportedDesignError) as info:
        evaluate(design, "analytic")
    reasons = info.value.reasons
    assert any("cache policy 'belady'" in r for r in reasons) and any("prefetch 'pregate'" in r for r in reasons)
    assert supports(design) and set(supports(design)) <= set(reasons)


@pytest.mark.parametrize(
    ("workload", "batching", "fragment"),
    [
        ({"prompt_dist": "uniform:low=96,high=160"}, None, "workload.prompt_dist 'uniform:low=96,high=160'"),
        ({"output_dist": "lognormal:sigma=0.5,max=1024"}, None, "workload.output_dist"),
        (
            {"n_requests": 8, "prompt_tokens": 512},
            BatchingSpec(max_batch=8, max_tokens=2048),
            "batch 8 x prompt 512 = 4096 tokens > batching.max_tokens=2048",
        ),
    ],
)
def test_evaluate_refuses_length_spreads_and_chunked_prefill(
    workload: dict[str, object], batching: BatchingSpec | None, fragment: str
) -> None:
    """The closed form models equal-length requests and one prefill step: a length spread or a
    prefill the engine would chunk is refused with its reason, before any work."""
    import dataclasses

    from codesign.design import Design, UnsupportedDesignError, analytic_reasons, evaluate

    mapping = Mapping(cache=CacheSpec(expert_fraction=0.5))
    mapping = mapping if batching is None else mapping.with_(batching=batching)
    base = Design.from_presets(model="mixtral-8x7b", platform="h100-pcie5-host", mapping=mapping)
    assert analytic_reasons(base) == []
    design = dataclasses.replace(base, workload=dataclasses.replace(base.workload, **workload))
    with pytest.raises(UnsupportedDesignError) as info:
        evaluate(design, "analytic")
    assert any(fragment in r for r in info.value.reasons), info.value.reasons
