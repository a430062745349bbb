"""validate: error statistics, real trace routing, and a whole real torch MoE layer timed on this CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hwmodels.calibration import CalibrationError, CalibrationProfile, Sample, load_default_profile
from hwmodels.validate import (
    ErrorStats,
    LayerRouting,
    against_device,
    device_mismatch,
    load_against,
    predict_moe_layer_s,
    quality_warnings,
    read_trace_routing,
    validate_heldout,
    validate_moe_layer,
    validate_samples,
)


def test_error_stats_on_known_numbers() -> None:
    s = ErrorStats.of([1.1, 0.8, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert s.n == 4
    assert s.mape == pytest.approx((10 + 20 + 0 + 100) / 4)
    assert s.median_abs_pct_error == pytest.approx(15.0)
    assert s.max_abs_pct_error == pytest.approx(100.0)
    assert s.mean_signed_pct_error == pytest.approx((10 - 20 + 0 + 100) / 4)
    assert math.isnan(ErrorStats.of([], []).mape)
    with pytest.raises(ValueError):
        ErrorStats.of([1.0], [0.0])


def test_validate_samples_groups_per_op_and_skips_uncalibrated_copies() -> None:
    prof = load_default_profile("a100")
    samples = [
        Sample(
            kind="gemm",
            op="up",
            shape={"m": 64, "k": 4096, "n": 22016},
            time_s=float(prof.predict_gemm_s(64, 4096, 22016)) * 1.1,
        ),
        Sample(
            kind="gemm",
            op="down",
            shape={"m": 64, "k": 11008, "n": 4096},
            time_s=float(prof.predict_gemm_s(64, 11008, 4096)) / 1.25,
        ),
        Sample(kind="copy", op="h2d", shape={"n_bytes": 10**6, "pinned": True}, time_s=1e-4),
    ]
    report = validate_samples(prof, samples, against="test")
    assert report.n == 2
    assert report.per_op["gemm:up"].mean_signed_pct_error == pytest.approx(100 * (1 / 1.1 - 1))
    assert report.per_op["gemm:down"].mean_signed_pct_error == pytest.approx(25.0)
    d = report.to_dict()
    assert {"mape", "max_abs_pct_error", "n", "per_op"} <= set(d)
    with pytest.raises(CalibrationError, match="no held-out samples"):
        validate_heldout(prof)  # shipped profiles keep no samples


def test_against_other_table(shared_dir: Path) -> None:
    """The shipped H100 profile predicts every GEMM of the H100 table (fit and held-out rows)."""
    samples = load_against(shared_dir / "calibration" / "vidur-a100-h100" / "compute" / "h100")
    report = validate_samples(load_default_profile("h100"), [s for s in samples if s.kind == "gemm"], against="h100")
    assert report.n == 4 * 1044
    assert report.overall.median_abs_pct_error < 10


def test_read_mixtral_routing(shared_dir: Path) -> None:
    routings = read_trace_routing(shared_dir / "traces" / "mixtral-8x7b-instruct", layers=[0, -1], max_tokens=100)
    assert len(routings) == 2
    r = routings[0]
    assert r.experts.shape == (100, 2) and r.n_experts == 8
    assert np.all((r.experts >= 0) & (r.experts < 8))
    assert np.allclose(r.weights.sum(axis=1), 1.0, atol=1e-3)  # renormalised gate weights
    assert r.tokens_per_expert().sum() == 200
    assert "layer 31" in routings[1].source


def test_read_deepseek_routing(shared_dir: Path) -> None:
    routings = read_trace_routing(shared_dir / "traces" / "deepseek-v2-lite", layers=[0], max_tokens=64)
    r = routings[0]
    assert r.experts.shape == (64, 6) and r.n_experts == 64
    assert np.allclose(r.weights, 1 / 6)
    assert "layer 1 " in r.source  # DeepSeek's first MoE layer is layer 1


def test_malformed_trace_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "x_routing.jsonl"
    bad.write_text(
        '{"layer": 0, "experts": [1, 2], "gating_probs": [0.5, 0.5]}\n{"layer": 0, "experts": [1]\n', encoding="utf-8"
    )
    with pytest.raises(CalibrationError, match=r"x_routing\.jsonl:2: malformed Mixtral routing record"):
        read_trace_routing(bad)
    with pytest.raises(CalibrationError, match="no Mixtral"):
        read_trace_routing(tmp_path / "missing")


@pytest.fixture(scope="module")
def tiny_cpu_profile(recorded_cpu_profile: CalibrationProfile) -> CalibrationProfile:
    """A CPU profile fitted to recorded timings (a real sweep's fit quality depends on the machine's
    load; real sweeps are in benchmarks/bench_calibrate.py)."""
    return recorded_cpu_profile


def test_whole_moe_layer_runs_and_reports_error(shared_dir: Path, tiny_cpu_profile: CalibrationProfile) -> None:
    routings = read_trace_routing(shared_dir / "traces" / "mixtral-8x7b-instruct", layers=[3, 20], max_tokens=48)
    stats, results = validate_moe_layer(tiny_cpu_profile, routings, d_model=256, d_ff=896, repeats=3, threads=1)
    assert stats.n == 2 and len(results) == 2
    for r in results:
        assert r.measured_s > 0 and r.predicted_s > r.predicted_gemm_s > 0
        assert sum(r.tokens_per_expert) == 96
        assert math.isfinite(r.pct_error)
    # the error itself depends on this machine's load: benchmarks/bench_calibrate.py --layer-trace reports it
    assert math.isfinite(stats.mape) and stats.n == 2
    # the process-CPU-time clock (for shared machines) times the same layers
    cpu_stats, cpu_results = validate_moe_layer(
        tiny_cpu_profile, routings[:1], d_model=256, d_ff=896, repeats=2, threads=1, clock="process"
    )
    assert cpu_stats.n == 1 and cpu_results[0].measured_s > 0
    with pytest.raises(CalibrationError, match="one thread"):
        validate_moe_layer(tiny_cpu_profile, routings[:1], d_model=256, d_ff=896, threads=2, clock="process")


def test_layer_prediction_grows_with_load(tiny_cpu_profile: CalibrationProfile) -> None:
    balanced, _ = predict_moe_layer_s(tiny_cpu_profile, [12] * 8, d_model=256, d_ff=896)
    heavy, _ = predict_moe_layer_s(tiny_cpu_profile, [24] * 8, d_model=256, d_ff=896)
    skewed, _ = predict_moe_layer_s(tiny_cpu_profile, [96, 0, 0, 0, 0, 0, 0, 0], d_model=256, d_ff=896)
    assert heavy > balanced
    assert skewed < balanced  # one expert's weights streamed instead of eight


def test_layer_validation_needs_a_cpu_profile() -> None:
    routing = LayerRouting(
        experts=np.zeros((4, 1), dtype=np.int64), weights=np.ones((4, 1), dtype=np.float32), n_experts=2, source="test"
    )
    with pytest.raises(CalibrationError, match="needs a CPU profile"):
        validate_moe_layer(load_default_profile("h100"), [routing])


def test_device_mismatch_between_profile_and_table(shared_dir: Path, tmp_path: Path) -> None:
    compute = shared_dir / "calibration" / "vidur-a100-h100" / "compute"
    assert against_device(compute / "h100" / "llama-2-7b-mlp.csv") == "h100"
    assert against_device(compute, device="a100") == "a100"
    a100, h100 = load_default_profile("a100"), load_default_profile("h100")
    warning = device_mismatch(a100, "h100")
    assert warning is not None and "'a100'" in warning and "'h100'" in warning
    assert device_mismatch(h100, "h100") is None
    # a profile measured on the real GPU carries its full name: still the same device
    named = CalibrationProfile.from_dict({**h100.to_dict(), "device_name": "NVIDIA H100 80GB HBM3"})
    assert device_mismatch(named, "h100") is None and device_mismatch(named, "a100") is not None
    saved = h100.save(tmp_path / "h100.json")
    assert against_device(saved) == "h100"


def test_quality_warnings_come_from_the_profile_quality_block() -> None:
    h100 = load_default_profile("h100")
    assert quality_warnings(h100) == []
    bad = CalibrationProfile.from_dict({**h100.to_dict(), "quality": {"status": "absurd", "problems": ["t0 big"]}})
    assert quality_warnings(bad) == ["profile 'vidur-h100' fit is absurd: t0 big"]


def test_layer_flags_must_be_positive(shared_dir: Path, tiny_cpu_profile: CalibrationProfile) -> None:
    trace = shared_dir / "traces" / "mixtral-8x7b-instruct"
    with pytest.raises(CalibrationError, match=r"max_tokens \(--tokens\) must be >= 1, got 0"):
        read_trace_routing(trace, layers=[0], max_tokens=0)
    routings = read_trace_routing(trace, layers=[0], max_tokens=8)
    with pytest.raises(CalibrationError, match=r"repeats \(--repeats\) must be >= 1"):
        validate_moe_layer(tiny_cpu_profile, routings, d_model=256, d_ff=896, repeats=0, threads=1)
