"""Compute dtype from bytes per weight read as bands (scales included), and attention's score FLOPs
at the KV cache's dtype (issue 8 review)."""

from __future__ import annotations

import pytest

from hwmodels import CostModel, get_device, get_platform
from hwmodels.costs import _dtype_for
from workloads import get_model

MIXTRAL = get_model("mixtral-8x7b")


def test_bytes_per_weight_bands_pick_the_dtype() -> None:
    dev = get_device("h100-sxm")
    assert _dtype_for(dev, 1.0) == "fp8"
    assert _dtype_for(dev, 1.0 + 4.0 / 128) == "fp8"  # FP8 with one fp32 scale per 128 weights
    assert _dtype_for(dev, 1.0 + 4.0 / 32) == "bf16"  # band end is exclusive
    assert _dtype_for(dev, 0.5 + 2.0 / 64) == "bf16"  # int4 + scales: upcast
    assert _dtype_for(dev, 2.0 + 4.0 / 128) == "bf16"
    assert _dtype_for(dev, 4.0) == "fp32" if "fp32" in dev.peak_flops else "bf16"


def test_fp8_with_block_scales_computes_at_fp8() -> None:
    roof = CostModel(get_platform("h100-pcie5-host"), fidelity="roofline")
    dev = get_device("h100-sxm")
    plain = MIXTRAL.with_(bytes_per_weight=1.0)
    scaled = MIXTRAL.with_(bytes_per_weight=1.0 + 4.0 / 128)
    a, b = roof.expert_ffn(dev, plain, 4096), roof.expert_ffn(dev, scaled, 4096)
    assert b.compute_s == pytest.approx(a.compute_s)  # same fp8 peak, not the bf16 one
    assert b.compute_s < 0.6 * roof.expert_ffn(dev, MIXTRAL, 4096).compute_s


@pytest.mark.parametrize("fidelity", ["roofline", "calibrated"])
def test_attention_scores_run_at_the_kv_dtype(fidelity: str) -> None:
    """FP8 weights with a 16-bit KV cache: the projections at fp8, QK^T / PV at bf16; and the
    other way round. Long contexts make the score FLOPs dominate the compute."""
    cost = CostModel(get_platform("h100-pcie5-host"), fidelity=fidelity)
    dev = get_device("h100-sxm")
    w8_kv16 = MIXTRAL.with_(bytes_per_weight=1.0)
    w8_kv8 = MIXTRAL.with_(bytes_per_weight=1.0, kv_bytes_per_elem=1.0)
    w16_kv8 = MIXTRAL.with_(kv_bytes_per_elem=1.0)
    n = 8192
    p16 = cost.attention_prefill(dev, w8_kv16, n)
    p8 = cost.attention_prefill(dev, w8_kv8, n)
    assert p16.compute_s > 1.25 * p8.compute_s  # scores at the bf16 peak, not the fp8 one
    assert p16.energy_J > p8.energy_J
    q16 = cost.attention_prefill(dev, MIXTRAL, n)
    q8 = cost.attention_prefill(dev, w16_kv8, n)
    assert q8.compute_s < 0.9 * q16.compute_s
    if fidelity == "roofline":
        proj = float(MIXTRAL.attention_flops_per_token_proj) * n
        score = 2.0 * MIXTRAL.n_heads * 2.0 * MIXTRAL.head_dim * n * n / 2.0
        assert p16.compute_s == pytest.approx(proj / dev.flops("fp8") + score / dev.flops("bf16"))
        d16 = cost.attention_decode(dev, w8_kv16, 16, 4096)
        proj_d = float(MIXTRAL.attention_flops_per_token_proj) * 16
        score_d = 2.0 * MIXTRAL.n_heads * 2.0 * MIXTRAL.head_dim * 16 * 4096
        assert d16.compute_s == pytest.approx(proj_d / dev.flops("fp8") + score_d / dev.flops("bf16"))
