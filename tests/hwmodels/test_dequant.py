"""Per-component weight precision and dequantisation in the cost model (`hwmodels.dequant`).

Nothing moves at the defaults; each op reads its own component's bytes and picks its own compute
dtype; packed formats pay their dequantisation (fused: per row tile on the vector units; unfused: a
serial pass plus the 16-bit copy read back), so an unfused 2-bit expert is slower than reading its
packed bytes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwmodels import CostModel, get_device, get_platform
from hwmodels.dequant import FORMATS, VECTOR_FP32_FLOPS, WeightFormat, dequant_terms, get_format, vector_ops_per_s
from workloads import get_model
from workloads.model import WEIGHT_COMPONENTS, WEIGHT_FORMATS

MODEL = get_model("mixtral-8x7b")


@pytest.fixture(scope="module")
def a100():
    return get_device("a100-80gb")


def _all_ops(cost: CostModel, dev, model, m) -> list:
    return [
        cost.expert_ffn(dev, model, m),
        cost.experts_grouped(dev, model, [m, 0, 2 * m, 1]),
        cost.shared_experts(dev, model, m),
        cost.router(dev, model, m),
        cost.lm_head(dev, model, m),
        cost.attention_prefill(dev, model, m),
        cost.attention_decode(dev, model, m, 300),
    ]


def test_formats_match_the_model_list() -> None:
    assert set(FORMATS) == set(WEIGHT_FORMATS)
    assert all(f.source for f in FORMATS.values())
    with pytest.raises(ValueError, match="unknown weight format 'gguf'"):
        get_format("gguf")
    with pytest.raises(ValueError, match="ops_per_weight"):
        WeightFormat(
            name="bad",
            fused=True,
            ops_per_weight=-1.0,
            rows_per_dequant=1,
            extra_bytes_per_weight=0.0,
            copy_bytes_per_weight=0.0,
            extra_kernels=0,
            source="x",
        )


@pytest.mark.parametrize("fidelity", ["roofline", "calibrated"])
def test_explicit_defaults_change_nothing(a100, fidelity: str) -> None:
    explicit = MODEL.with_(
        **{f"{c}_bytes_per_weight": 2.0 for c in WEIGHT_COMPONENTS},
        **{f"{c}_format": "none" for c in WEIGHT_COMPONENTS},
    )
    ds = get_model("deepseek-v2-lite")
    ds_explicit = ds.with_(**{f"{c}_bytes_per_weight": 2.0 for c in WEIGHT_COMPONENTS})
    cost = CostModel(get_platform("dgx-h100"), fidelity=fidelity)
    for model, same in ((MODEL, explicit), (ds, ds_explicit)):
        for m in (1.0, 7.0, 512.0):
            for a, b in zip(_all_ops(cost, a100, model, m), _all_ops(cost, a100, same, m), strict=True):
                assert a.total_s == b.total_s and a.energy_J == b.energy_J and a.source == b.source


def test_each_op_reads_its_component_bytes(a100) -> None:
    cost = CostModel(get_platform("dgx-h100"), fidelity="roofline")
    bw = a100.tier(a100.weights_tier).bandwidth_Bps
    half = {
        "expert": lambda c, m: c.expert_ffn(a100, m, 1),
        "attention": lambda c, m: c.attention_decode(a100, m, 1, 0),
        "dense": lambda c, m: c.router(a100, m, 1),
        "embedding": lambda c, m: c.lm_head(a100, m, 1),
    }
    params = {
        "expert": MODEL.params_per_expert,
        "attention": MODEL.params_attention,
        "dense": MODEL.router_params,
        "embedding": MODEL.params_lm_head,
    }
    for comp, op in half.items():
        base = op(cost, MODEL).memory_s
        for other in WEIGHT_COMPONENTS:
            cut = op(cost, MODEL.with_(**{f"{other}_bytes_per_weight": 0.5})).memory_s
            expect = params[comp] * 1.5 / bw if other == comp else 0.0
            assert base - cut == pytest.approx(expect, rel=1e-9, abs=1e-15), (comp, other)
    ds = get_model("deepseek-v2-lite")
    cut = cost.shared_experts(a100, ds.with_(shared_bytes_per_weight=0.5), 1).memory_s
    assert cost.shared_experts(a100, ds, 1).memory_s - cut == pytest.approx(ds.params_shared_experts * 1.5 / bw)


def test_compute_dtype_follows_each_component() -> None:
    h100 = get_device("h100-sxm")
    cost = CostModel(get_platform("dgx-h100"), fidelity="roofline")
    fp8_experts = MODEL.with_(expert_bytes_per_weight=1.0)
    m = 4096.0  # compute-bound
    e = cost.expert_ffn(h100, fp8_experts, m)
    assert e.compute_s == pytest.approx(m * MODEL.expert_flops_per_token / h100.flops("fp8"))
    a = cost.attention_prefill(h100, fp8_experts, 1.0)  # attention stays bf16
    assert a.compute_s == pytest.approx(cost.attention_prefill(h100, MODEL, 1.0).compute_s)
    fp8_attn = MODEL.with_(attention_bytes_per_weight=1.0)
    assert cost.expert_ffn(h100, fp8_attn, m).compute_s == pytest.approx(cost.expert_ffn(h100, MODEL, m).compute_s)


def test_two_bit_expert_fetch_moves_an_eighth() -> None:
    plat = get_platform("dgx-h100")
    link = plat.host_link
    cost = CostModel(plat, fidelity="roofline")
    two = MODEL.with_(expert_bytes_per_weight=0.25)
    assert two.bytes_per_expert * 8 == MODEL.bytes_per_expert
    t_bf16 = cost.transfer(link, MODEL.bytes_per_expert).comm_s - link.latency_s
    t_two = cost.transfer(link, two.bytes_per_expert).comm_s - link.latency_s
    assert t_two * 8 == pytest.approx(t_bf16)


@pytest.mark.parametrize("fidelity", ["roofline", "calibrated"])
def test_unfused_two_bit_expert_is_slower_than_its_bytes(a100, fidelity: str) -> None:
    cost = CostModel(get_platform("dgx-h100"), fidelity=fidelity)
    packed = MODEL.with_(expert_bytes_per_weight=0.325)  # 2-bit HQQ with its metadata, no dequant charged
    read_only = cost.expert_ffn(a100, packed, 1)
    unfused = cost.expert_ffn(a100, packed.with_(expert_format="hqq-unfused"), 1)
    fused = cost.expert_ffn(a100, packed.with_(expert_format="hqq-triton"), 1)
    four = MODEL.with_(expert_bytes_per_weight=0.5)  # Marlin is a 4-bit format
    marlin = cost.expert_ffn(a100, four.with_(expert_format="marlin"), 1)
    four_read = cost.expert_ffn(a100, four, 1)
    bf16 = cost.expert_ffn(a100, MODEL, 1)
    # unfused: a serial pass (12 B/weight of traffic) then a GEMM over the fp16 copy
    assert unfused.total_s > fused.total_s > read_only.total_s
    assert unfused.memory_s > bf16.memory_s  # it moves more bytes than the bf16 expert
    assert marlin.total_s >= four_read.total_s
    if fidelity == "roofline":
        assert marlin.total_s == four_read.total_s  # memory-bound on the packed bytes: dequant hidden
        assert unfused.total_s > bf16.total_s
        p = MODEL.params_per_expert
        bw = a100.tier("hbm").bandwidth_Bps
        pass_s = max(5.0 * p / vector_ops_per_s(a100), 12.0 * p / bw)
        assert unfused.memory_s == pytest.approx(read_only.memory_s + pass_s + 2.0 * p / bw)
        assert unfused.compute_s == pytest.approx(read_only.compute_s + pass_s)


def test_fused_dequant_is_paid_once_per_row_tile(a100) -> None:
    cost = CostModel(get_platform("dgx-h100"), fidelity="roofline")
    packed = MODEL.with_(expert_bytes_per_weight=0.5)
    fmt = packed.with_(expert_format="marlin")
    one = MODEL.params_per_expert * FORMATS["marlin"].ops_per_weight / vector_ops_per_s(a100)  # per tile of 16 rows
    for m, tiles in ((1, 1), (16, 1), (17, 2), (160, 10), (4096, 256)):
        plain = cost.expert_ffn(a100, packed, m)
        # the vector-unit work overlaps the tensor-core GEMM: compute = max(GEMM, dequant)
        assert cost.expert_ffn(a100, fmt, m).compute_s == pytest.approx(max(plain.compute_s, tiles * one))
        assert cost.expert_ffn(a100, fmt, m).memory_s == plain.memory_s  # Marlin moves no extra bytes
    assert cost.expert_ffn(a100, fmt, 0).total_s == 0.0


@pytest.mark.parametrize("fmt", ["marlin", "hqq-triton", "hqq-unfused", "llamacpp-mmvq"])
def test_dequant_vectorised_grouped_and_bounded(a100, fmt: str) -> None:
    model = MODEL.with_(bytes_per_weight=0.5, attention_format=fmt, expert_format=fmt, embedding_format=fmt)
    roof = CostModel(get_platform("dgx-h100"), fidelity="roofline")
    cal = CostModel(get_platform("dgx-h100"), fidelity="calibrated")
    rows = np.array([0.0, 1.0, 5.0, 16.0, 33.0, 700.0])
    for cost in (roof, cal):
        arr = cost.expert_ffn(a100, model, rows)
        for i, r in enumerate(rows):
            one = cost.expert_ffn(a100, model, float(r))
            assert arr.total_s[i] == pytest.approx(one.total_s) and arr.energy_J[i] == pytest.approx(one.energy_J)
        assert arr.total_s[0] == 0.0 and np.all(np.diff(arr.total_s) >= 0)
    for op in ("expert_ffn", "lm_head", "attention_prefill"):
        for r in rows[1:]:
            assert getattr(cal, op)(a100, model, float(r)).total_s >= getattr(roof, op)(a100, model, float(r)).total_s
    # roofline: a grouped call pays its experts' own dequantisation (vector work and serial passes)
    tokens = np.array([3.0, 0.0, 40.0, 1.0])
    plain = MODEL.with_(bytes_per_weight=0.5)
    f = FORMATS[fmt]
    p = MODEL.params_per_expert
    vec = vector_ops_per_s(a100)
    bw = a100.tier("hbm").bandwidth_Bps
    active = tokens > 0
    base = roof.experts_grouped(a100, plain, tokens)
    got = roof.experts_grouped(a100, model, tokens)
    if f.fused:
        vector = sum(f.ops_per_weight * p * math.ceil(t / f.rows_per_dequant) for t in tokens) / vec
        assert got.compute_s == pytest.approx(max(base.compute_s, vector))
        assert got.memory_s == pytest.approx(base.memory_s + active.sum() * f.extra_bytes_per_weight * p / bw)
    else:
        serial = active.sum() * max(f.ops_per_weight * p / vec, f.extra_bytes_per_weight * p / bw)
        assert got.compute_s == pytest.approx(base.compute_s + serial)
        assert got.memory_s == pytest.approx(base.memory_s + serial + active.sum() * f.copy_bytes_per_weight * p / bw)


def test_vector_rate_sources(a100) -> None:
    assert vector_ops_per_s(a100) == VECTOR_FP32_FLOPS["a100-80gb"][0] / 2
    t4 = get_device("t4")
    assert vector_ops_per_s(t4) == t4.flops("fp32") / 2  # the preset's own fp32 peak
    terms = dequant_terms("hqq-triton", 1000.0, 3)
    assert terms is not None and terms.kernels == 12 and terms.extra_bytes == pytest.approx(500.0)
    assert dequant_terms("none", 1000.0, 3) is None
    assert math.isclose(FORMATS["hqq-triton-g64"].extra_bytes_per_weight * 64, 8.0)
