"""Workload length distributions (`codesign.design.length_dist`, ``WorkloadSpec.prompt_dist`` /
``output_dist``), which the MLPerf validation cases use for the real 1-1024 output spread: the
solved log-normal keeps the stated mean after clipping, bad specs fail naming the field, the
simulator's request stream draws the spread, and the spec is part of the design's JSON and hash.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from codesign.design import Design, DesignError, WorkloadSpec, length_dist, request_stream


@pytest.mark.parametrize(
    ("spec", "mean"),
    [
        ("lognormal:sigma=0.8,max=1024", 145),
        ("lognormal:sigma=1.5,min=2,max=300", 145),  # heavy clipping at both ends
        ("lognormal:sigma=0.6,max=2048", 300),
        ("lognormal:sigma=0", 77),
    ],
)
def test_lognormal_keeps_the_mean_after_clipping(spec: str, mean: int) -> None:
    d = length_dist(spec, mean, "w")
    x = d.sample(400_000, np.random.default_rng(1))
    assert x.min() >= d.minimum and (d.maximum is None or x.max() <= d.maximum)
    # rounding to integers moves the mean by well under half a token; the sample error is ~0.3%
    assert x.mean() == pytest.approx(mean, rel=0.01)
    if d.params[1] > 0:
        assert len(np.unique(x)) > 20  # a spread, not one length


def test_uniform_and_none() -> None:
    assert length_dist(None, 128, "w") == 128
    d = length_dist("uniform:low=100,high=200", 150, "w")
    x = d.sample(10_000, np.random.default_rng(0))
    assert x.min() >= 100 and x.max() <= 200 and x.mean() == pytest.approx(150, rel=0.01)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("lognormal", "must be 'lognormal:"),
        ("gamma:k=1", "kind 'gamma'"),
        ("lognormal:mu=4", "takes \\['sigma'\\]"),
        ("lognormal:sigma=x", "not key=number"),
        ("lognormal:sigma=-1", "sigma >= 0"),
        ("lognormal:sigma=1,max=100", "must lie in \\[min, max\\]"),
        ("lognormal:sigma=1,min=0.5", "integers"),
        ("uniform:low=1,high=10", "midpoint 5.5 must be the mean length 150"),
        ("uniform:low=200,high=100", "1 <= low <= high"),
    ],
)
def test_bad_specs_name_the_field(spec: str, match: str) -> None:
    with pytest.raises(DesignError, match=r"workload\.prompt_dist") as info:
        WorkloadSpec(prompt_tokens=150, prompt_dist=spec)
    assert info.match(match)
    with pytest.raises(DesignError, match=r"workload\.output_dist"):
        WorkloadSpec(output_tokens=150, output_dist=spec)


def test_request_stream_draws_the_spread_and_the_design_keeps_it() -> None:
    fixed = Design.from_presets("mixtral-8x7b", "h100-pcie5-host", n_requests=400, prompt_tokens=300, output_tokens=145)
    spread = fixed.with_(
        workload=WorkloadSpec(
            n_requests=400,
            prompt_tokens=300,
            output_tokens=145,
            prompt_dist="lognormal:sigma=0.6,max=2048",
            output_dist="lognormal:sigma=0.8,max=1024",
        )
    )
    reqs_fixed = request_stream(fixed).requests
    assert {r.prompt_tokens for r in reqs_fixed} == {300} and {r.output_tokens for r in reqs_fixed} == {145}
    reqs = request_stream(spread).requests
    outs = np.array([r.output_tokens for r in reqs])
    prompts = np.array([r.prompt_tokens for r in reqs])
    assert outs.min() >= 1 and outs.max() <= 1024 and prompts.max() <= 2048
    assert outs.std() > 50 and prompts.std() > 50
    assert math.isclose(outs.mean(), 145, rel_tol=0.15) and math.isclose(prompts.mean(), 300, rel_tol=0.15)
    # the same seed draws the same lengths; the spec is in the JSON and changes the hash
    assert [r.output_tokens for r in request_stream(spread).requests] == outs.tolist()
    back = Design.from_json(spread.to_json())
    assert back.workload.output_dist == "lognormal:sigma=0.8,max=1024"
    assert back.content_hash == spread.content_hash != fixed.content_hash
