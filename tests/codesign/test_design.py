"""`Design` / `evaluate()`: JSON round trip, content hash, both fidelities, refusals."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from codesign.design import (
    BREAKDOWN_KEYS,
    CostSpec,
    Design,
    DesignError,
    EvalCache,
    Metrics,
    UnsupportedDesignError,
    WorkloadSpec,
    evaluate,
)
from codesign.mapping import CacheSpec, Mapping, MappingError

OFFLOAD = Mapping(cache=CacheSpec(expert_fraction=0.25), miss="fetch")


@pytest.fixture(scope="module")
def cache() -> EvalCache:
    return EvalCache()


def _with_host_bandwidth(design: Design, factor: float) -> Design:
    plat = design.platform
    assert plat.host_link is not None
    link = dataclasses.replace(plat.host_link, bandwidth_Bps=plat.host_link.bandwidth_Bps * factor)
    return design.with_(platform=dataclasses.replace(plat, host_link=link))


def test_json_round_trip_keeps_design_and_hash(tmp_path):
    d = Design.from_presets("mixtral-8x7b", "h100-pcie5-host", mapping=OFFLOAD, n_requests=2, output_tokens=4)
    back = Design.from_json(d.to_json())
    assert back == d
    assert back.content_hash == d.content_hash
    path = d.save(tmp_path / "d.json")
    assert Design.load(path) == d
    assert json.loads(path.read_text())["hash"] == d.content_hash


def test_a_design_with_a_stack_file_replays_after_the_file_is_gone(tmp_path):
    import shutil
    from pathlib import Path

    stack = tmp_path / "my-llama.toml"
    shutil.copy(Path(__file__).parents[2] / "hwmodels" / "presets" / "stacks" / "llama.cpp.toml", stack)
    d = Design.from_presets(
        "deepseek-v2-lite", "h100-pcie5-host", mapping=Mapping(stack=str(stack)), n_requests=2, output_tokens=4
    )
    path = d.save(tmp_path / "d.json")
    before, digest = evaluate(d, "sim").tpot_p50_s, d.content_hash
    stack.unlink()
    back = Design.load(path)
    assert back.content_hash == digest
    assert back.mapping.stack.name == "llama.cpp" and back.mapping.stack.per_layer_s > 0  # type: ignore[union-attr]
    assert evaluate(back, "sim").tpot_p50_s == pytest.approx(before)


def test_one_platform_number_changes_the_hash_a_source_string_does_not():
    d = Design.from_presets("mixtral-8x7b", "h100-pcie5-host", mapping=OFFLOAD)
    faster = _with_host_bandwidth(d, 10.0)
    assert faster.content_hash != d.content_hash
    acc = d.platform.accelerators[0]
    tier = dataclasses.replace(acc.tiers[0], bandwidth_Bps=acc.tiers[0].bandwidth_Bps * 1.01)
    hbm = dataclasses.replace(d.platform, accelerators=(dataclasses.replace(acc, tiers=(tier, *acc.tiers[1:])),))
    assert d.with_(platform=hbm).content_hash != d.content_hash
    renamed_source = dataclasses.replace(d.platform, source="another citation")
    assert d.with_(platform=renamed_source).content_hash == d.content_hash


def test_every_part_enters_the_hash():
    d = Design.from_presets("mixtral-8x7b", "h100-pcie5-host", mapping=OFFLOAD)
    variants = [
        d.with_(model=d.model.with_(top_k=1)),
        d.with_(mapping=OFFLOAD.with_(miss="cpu")),
        d.with_(workload=WorkloadSpec(n_requests=9)),
        d.with_(cost=CostSpec(fidelity="roofline")),
        d.with_(cost=CostSpec(profile="h100")),
    ]
    hashes = {v.content_hash for v in variants}
    assert len(hashes) == len(variants)
    assert d.content_hash not in hashes


def test_malformed_design_files_name_the_part(tmp_path):
    d = Design.from_presets("mixtral-8x7b", "h100-pcie5-host").to_dict()
    with pytest.raises(DesignError, match="unknown key"):
        Design.from_dict({**d, "mapp": {}})
    bad_model = {**d, "model": {**d["model"], "n_experts": 0}}
    with pytest.raises(DesignError, match=r"design\.model"):
        Design.from_dict(bad_model)
    with pytest.raises(DesignError, match=r"workload\.n_requests"):
        Design.from_dict({**d, "workload": {"n_requests": 0}})
    with pytest.raises(DesignError, match="cannot read"):
        Design.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DesignError, match=r"bad\.json: not valid JSON"):
        Design.load(tmp_path / "bad.json")


def test_both_fidelities_agree_at_zero_load(cache):
    """One request, every expert resident: the analytic decode step is the engine's (exact)."""
    d = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host", n_requests=1, prompt_tokens=16, output_tokens=8)
    sim = evaluate(d, "sim", cache=cache)
    ana = evaluate(d, "analytic", cache=cache)
    assert isinstance(sim, Metrics) and isinstance(ana, Metrics)
    assert sim.fidelity == "sim" and ana.fidelity == "analytic"
    assert sim.design_hash == ana.design_hash == d.content_hash
    assert ana.tpot_p50_s == pytest.approx(sim.tpot_p50_s, rel=0.02)
    assert sim.hit_rate == 1.0
    assert set(sim.breakdown_s) == set(BREAKDOWN_KEYS) == set(ana.breakdown_s)
    assert sim.bottleneck in BREAKDOWN_KEYS
    back = Metrics.from_dict(json.loads(json.dumps(sim.to_dict())))
    assert back.tpot_p50_s == sim.tpot_p50_s and back.breakdown_s == sim.breakdown_s


def test_ten_times_the_host_link_bandwidth_speeds_up_an_offload_bound_design(cache):
    d = Design.from_presets(
        "mixtral-8x7b", "h100-pcie5-host", mapping=OFFLOAD, n_requests=1, prompt_tokens=8, output_tokens=6
    )
    slow = evaluate(d, "sim", cache=cache)
    fast = evaluate(_with_host_bandwidth(d, 10.0), "sim", cache=cache)
    assert slow.bottleneck == "pcie"
    assert fast.tpot_p50_s < 0.5 * slow.tpot_p50_s


def test_analytic_refuses_what_it_cannot_model_with_reasons(cache):
    d = Design.from_presets(
        "mixtral-8x7b",
        "h100-pcie5-host",
        mapping=OFFLOAD,
        n_requests=4,
        arrivals="poisson",
        rate_per_s=2.0,
        output_tokens=4,
    )
    with pytest.raises(UnsupportedDesignError) as info:
        evaluate(d, "analytic", cache=cache)
    assert any("closed batch" in r for r in info.value.reasons)


def test_a_mapping_that_does_not_fit_is_an_error_with_numbers(cache):
    d = Design.from_presets("deepseek-v3", "h100-pcie5-host", n_requests=1, output_tokens=2)
    for fidelity in ("analytic", "sim"):
        with pytest.raises(MappingError, match=r"\d"):
            evaluate(d, fidelity, cache=cache)  # type: ignore[arg-type]


def test_a_varied_model_gets_retargeted_routing_and_the_cache_reuses_it():
    c = EvalCache()
    base = Design.from_presets("mixtral-8x7b", "dgx-h100", n_requests=2, prompt_tokens=8, output_tokens=4)
    varied = base.with_(model=base.model.with_(name="mixtral-e16", n_experts=16, expert_ffn_dim=7168))
    m1 = evaluate(varied, "analytic", cache=c)
    misses = c.misses
    m2 = evaluate(varied, "analytic", cache=c)
    assert c.misses == misses and c.hits > 0
    assert m1.tpot_p50_s == m2.tpot_p50_s
    assert math.isfinite(m1.throughput_tok_s) and m1.throughput_tok_s > 0


def test_unknown_profile_and_routing_are_named():
    with pytest.raises(DesignError, match=r"workload\.routing"):
        WorkloadSpec(routing="magic")
    d = Design.from_presets("mixtral-8x7b", "dgx-h100", cost=CostSpec(profile="no-such-gpu"))
    with pytest.raises(DesignError, match=r"cost\.profile 'no-such-gpu'"):
        _ = d.content_hash


def test_a_power_limit_slows_compute_bound_work_and_enters_the_hash(cache):
    """`CostSpec.power_limit`: the profile's power law scales the compute rate (a prefill-bound TTFT
    grows), leaves a memory-bound decode nearly alone, and enters the dict and hash only when set."""
    base = Design.from_presets(
        "mixtral-8x7b",
        "h100-pcie5-host",
        mapping=Mapping(batching=dataclasses.replace(Mapping().batching, max_batch=4, max_tokens=8192)),
        n_requests=4,
        prompt_tokens=2048,
        output_tokens=8,
        cost=CostSpec(profile="h100"),
    )
    base = base.with_(model=base.model.with_(bytes_per_weight=1.0))  # FP8: fits one 80 GB GPU
    assert "power_limit" not in base.to_dict()["cost"] and "power_exponent" not in base.to_dict()["cost"]
    # explicit exponents (the shipped one is fitted and may move): 0.6 and a steeper 0.9
    capped = base.with_(cost=CostSpec(profile="h100", power_limit=350.0, power_exponent=0.6))
    assert capped.to_dict()["cost"]["power_limit"] == 350.0
    assert "power limit 350 W" in capped.describe() and "power limit" not in base.describe()
    assert capped.content_hash != base.content_hash
    assert Design.from_dict(capped.to_dict()).content_hash == capped.content_hash
    full, slow = evaluate(base, "sim", cache=cache), evaluate(capped, "sim", cache=cache)
    law = (350 / 700) ** 0.9
    steep = evaluate(base.with_(cost=CostSpec(profile="h100", power_limit=350.0, power_exponent=0.9)), "sim")
    assert slow.ttft_p50_s > full.ttft_p50_s * 1.15  # prefill of 4 x 2,048 tokens: compute-bound
    assert steep.ttft_p50_s > slow.ttft_p50_s
    assert steep.ttft_p50_s < full.ttft_p50_s / law * 1.05  # no more than the compute share can slow
    assert slow.tpot_p50_s < full.tpot_p50_s * 1.1  # batch-4 decode: weight streaming, HBM unchanged
    no_change = evaluate(base.with_(cost=CostSpec(profile="h100", power_limit=700.0)), "sim", cache=cache)
    assert base.with_(cost=CostSpec(profile="h100", power_limit=700.0)).content_hash != base.content_hash
    assert no_change.ttft_p50_s == pytest.approx(full.ttft_p50_s)


def test_power_limit_refusals_name_the_field():
    with pytest.raises(DesignError, match=r"cost\.power_limit / cost\.power_exponent need cost\.profile"):
        CostSpec(power_limit=350.0)
    with pytest.raises(DesignError, match=r"cost\.power_limit must be a positive number of watts"):
        CostSpec(profile="h100", power_limit=0)
    with pytest.raises(DesignError, match=r"cost\.power_exponent must be a non-negative number"):
        CostSpec(profile="h100", power_limit=300.0, power_exponent=-1)
    with pytest.raises(DesignError, match=r"cost\.power_exponent must be in \[0, 3\]"):
        CostSpec(profile="h100", power_limit=300.0, power_exponent=5)
    # an exponent alone moves a derived, power-limited profile (the NVL at its 400 W), nothing else
    nvl = Design.from_presets("mixtral-8x7b", "h100-nvl-pcie5-host", cost=CostSpec(profile="h100-nvl"))
    steep = nvl.with_(cost=CostSpec(profile="h100-nvl", power_exponent=1.2))
    assert steep.content_hash != nvl.content_hash
    h100 = Design.from_presets("mixtral-8x7b", "h100-pcie5-host", cost=CostSpec(profile="h100"))
    assert h100.with_(cost=CostSpec(profile="h100", power_exponent=1.2)).content_hash != h100.content_hash  # dict
    with pytest.raises(DesignError, match=r"cost\.power_exponent: profile 'a100' has no power law"):
        _ = Design.from_presets(
            "mixtral-8x7b", "a100-pcie4-host", cost=CostSpec(profile="a100", power_exponent=0.5)
        ).content_hash
    with pytest.raises(DesignError, match=r"cost\.power_limit must be a non-negative number"):
        CostSpec(profile="h100", power_limit="500 W")  # type: ignore[arg-type]
    d = Design.from_presets("mixtral-8x7b", "a100-pcie4-host", cost=CostSpec(profile="a100", power_limit=250.0))
    with pytest.raises(DesignError, match=r"cost\.power_limit 250 W: profile '(vidur-)?a100' has no power law"):
        _ = d.content_hash
