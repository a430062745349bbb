"""CalibrationProfile: fits recover known parameters, efficiencies obey the contract, files round-trip
and bad files fail with messages naming the file and field."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hwmodels.calibration import (
    CalibrationError,
    CalibrationProfile,
    GemmFit,
    LinearFit,
    MissingCalibrationError,
    Peaks,
    Sample,
    assess_fit,
    default_profile_names,
    fit_gemm,
    fit_linear,
    fit_profile,
    load_default_profile,
    robust_median,
)

PEAK = 100e9
B = 4.0
TRUE = GemmFit(t0_s=20e-6, eff_compute=0.6, bandwidth_Bps=12e9, sharpness=2.0, half_occupancy_elems=3000.0)
SHAPES = [(512, 1408), (1408, 512), (1024, 2816), (2816, 1024), (768, 2048), (2048, 768)]
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]


def synthetic(noise: float = 0.02, outliers: int = 4, seed: int = 0) -> list[Sample]:
    """GEMM timings from TRUE with multiplicative noise and a few 3x outliers."""
    rng = np.random.default_rng(seed)
    out = []
    for k, n in SHAPES:
        for m in TOKENS:
            t = float(TRUE.predict_s(m, k, n, peak_flops=PEAK, dtype_bytes=B)) * math.exp(rng.normal(0, noise))
            out.append(Sample(kind="gemm", op="up", shape={"m": m, "k": k, "n": n}, time_s=t, heldout=(m in (8, 512))))
    for i in rng.choice(len(out), size=outliers, replace=False):
        s = out[int(i)]
        out[int(i)] = Sample(kind=s.kind, op=s.op, shape=s.shape, time_s=3.0 * s.time_s, heldout=s.heldout)
    for nb in (2**22, 2**24, 2**26, 2**28):
        out.append(Sample(kind="memory", op="stream", shape={"n_bytes": nb}, time_s=3e-6 + nb / 20e9))
    return out


def make_profile(samples: list[Sample] | None = None) -> CalibrationProfile:
    return fit_profile(
        name="synthetic",
        device_name="test-cpu",
        device_kind="cpu",
        dtype="fp32",
        dtype_bytes=B,
        peaks=Peaks(flops=PEAK, flops_source="test", memory_Bps=25e9, memory_source="test"),
        samples=synthetic() if samples is None else samples,
        fingerprint={"cpu_model": "test"},
        heldout_rule="m in (8, 512)",
    )


@pytest.fixture(scope="module")
def profile() -> CalibrationProfile:
    return make_profile()


def test_fit_recovers_known_gemm_parameters(profile: CalibrationProfile) -> None:
    fit = profile.gemm_fit
    assert fit.eff_compute == pytest.approx(TRUE.eff_compute, rel=0.05)
    assert fit.bandwidth_Bps == pytest.approx(TRUE.bandwidth_Bps, rel=0.10)
    assert fit.t0_s == pytest.approx(TRUE.t0_s, rel=0.25)
    assert fit.sharpness == pytest.approx(TRUE.sharpness, rel=0.35)
    # held-out predictions are close despite the outliers (robust loss)
    held = [s for s in profile.samples if s.heldout and s.kind == "gemm"]
    err = [abs(profile.predict_sample_s(s) / s.time_s - 1) for s in held]
    assert np.median(err) < 0.03


def test_least_squares_without_robust_loss_would_be_pulled_by_outliers() -> None:
    """The outliers are real: a fit with a huge f_scale (plain least squares) is further off."""
    samples = [s for s in synthetic(outliers=12) if s.kind == "gemm"]
    args = (
        [s.shape["m"] for s in samples],
        [s.shape["k"] for s in samples],
        [s.shape["n"] for s in samples],
        [s.time_s for s in samples],
    )
    robust = fit_gemm(*args, peak_flops=PEAK, dtype_bytes=B)
    plain = fit_gemm(*args, peak_flops=PEAK, dtype_bytes=B, f_scale=1e3)
    assert abs(robust.eff_compute - TRUE.eff_compute) < abs(plain.eff_compute - TRUE.eff_compute)


def test_fit_linear_recovers_bandwidth_and_latency() -> None:
    sizes = np.geomspace(1e3, 1e9, 20)
    fit = fit_linear(sizes, 5e-6 + sizes / 25e9)
    assert fit.bandwidth_Bps == pytest.approx(25e9, rel=0.01)
    assert fit.t0_s == pytest.approx(5e-6, rel=0.05)


def test_efficiencies_in_unit_interval_and_calibrated_not_below_roofline(profile: CalibrationProfile) -> None:
    m = np.array([0, 1, 3, 17, 100, 1000, 4096, 100000])
    for k, n in [(64, 64), (4096, 14336), (1, 1)]:
        eff = profile.gemm(m, k, n)
        assert eff.shape == m.shape
        assert np.all(eff > 0) and np.all(eff <= 1)
        t = profile.predict_gemm_s(np.maximum(m, 1), k, n)
        assert np.all(t >= 2.0 * np.maximum(m, 1) * k * n / profile.peaks.flops)
        assert np.all(np.diff(t) >= 0)  # monotone in tokens
    assert 0 < profile.memory() <= 1


def test_copy_without_measurements_is_a_lookup_error(profile: CalibrationProfile) -> None:
    assert not profile.has_copy
    with pytest.raises(MissingCalibrationError, match="synthetic"):
        profile.copy(1e6)
    assert issubclass(MissingCalibrationError, LookupError)  # CostModel falls back on LookupError


def test_copy_efficiency_from_fit() -> None:
    samples = synthetic()
    for is_pinned, bw in ((True, 24e9), (False, 12e9)):
        for nb in (2**12, 2**16, 2**20, 2**24, 2**28):
            samples.append(
                Sample(kind="copy", op="h2d", shape={"n_bytes": nb, "pinned": is_pinned}, time_s=10e-6 + nb / bw)
            )
    prof = fit_profile(
        name="gpu",
        device_name="fake",
        device_kind="gpu",
        dtype="bf16",
        dtype_bytes=2,
        peaks=Peaks(flops=PEAK, flops_source="t", memory_Bps=1e12, memory_source="t", link_Bps=32e9, link_source="t"),
        samples=samples,
    )
    sizes = np.array([1e3, 1e6, 1e9])
    pinned = prof.copy(sizes, pinned=True)
    pageable = prof.copy(sizes, pinned=False)
    assert np.all(np.diff(pinned) > 0) and np.all(pinned <= 1)
    assert pinned[-1] == pytest.approx(24 / 32, rel=0.02)
    assert np.all(pageable < pinned)


def test_json_round_trip(tmp_path: Path, profile: CalibrationProfile) -> None:
    path = profile.save(tmp_path / "p.json")
    back = CalibrationProfile.load(path)
    assert back == profile
    assert back.samples[0].shape == profile.samples[0].shape
    slim = CalibrationProfile.load(profile.without_samples().save(tmp_path / "slim.json"))
    assert slim.samples == () and slim.gemm_fit == profile.gemm_fit
    assert float(slim.predict_gemm_s(100, 1024, 2816)) == float(profile.predict_gemm_s(100, 1024, 2816))


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("peaks"), "missing field 'peaks'"),
        (lambda d: d.update(version=99), "unsupported profile version 99"),
        (lambda d: d.update(format="other"), "field 'format'"),
        (lambda d: d["peaks"].update(flops=-1.0), "peaks: field 'flops' must be > 0"),
        (lambda d: d["fit"]["gemm"].update(eff_compute=1.5), "fit.gemm: field 'eff_compute' must be in (0, 1]"),
        (lambda d: d["fit"]["gemm"].update(sharpness="x"), "fit.gemm: field 'sharpness' must be int or float"),
        (lambda d: d["samples"][3].update(kind="warp"), "samples[3]: sample kind 'warp' unknown"),
        (lambda d: d["samples"][2]["shape"].pop("k"), "samples[2]: gemm sample 'up': shape lacks ['k']"),
        (lambda d: d["samples"][1].update(time_s=0), "samples[1]: gemm sample 'up': time_s must be a positive"),
        (lambda d: d.update(device_kind="tpu"), "field 'device_kind' must be 'cpu' or 'gpu'"),
        (lambda d: d["fit"]["memory"].update(dram={"t0_s": 0, "bandwidth_Bps": 1}), "fit.memory key 'dram' unknown"),
    ],
)
def test_bad_files_name_file_and_field(
    tmp_path: Path, profile: CalibrationProfile, mutate: object, message: str
) -> None:
    data = profile.to_dict()
    mutate(data)  # type: ignore[operator]
    path = _write(tmp_path, data)
    with pytest.raises(CalibrationError) as info:
        CalibrationProfile.load(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{"format": "moe-codesign-calibration",\n "version": 1,\n oops}\n', encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"broken\.json: line 3: not valid JSON"):
        CalibrationProfile.load(p)
    with pytest.raises(CalibrationError, match="cannot read"):
        CalibrationProfile.load(tmp_path / "absent.json")
    with pytest.raises(CalibrationError, match="top level"):
        CalibrationProfile.load(_write(tmp_path, [1, 2]))


def test_fit_needs_gemm_samples() -> None:
    with pytest.raises(CalibrationError, match="no GEMM samples"):
        make_profile([Sample(kind="memory", op="stream", shape={"n_bytes": 10}, time_s=1.0)])
    with pytest.raises(CalibrationError, match="at least 6"):
        fit_gemm([1, 2], [3, 3], [3, 3], [1e-3, 2e-3], peak_flops=1e9, dtype_bytes=4)


def test_robust_median_drops_outliers() -> None:
    med, mad, kept = robust_median([1.0, 1.01, 0.99, 1.02, 0.98, 9.0, 1.0])
    assert med == pytest.approx(1.0, abs=0.01) and kept == 6 and mad < 0.05
    with pytest.raises(CalibrationError):
        robust_median([])


def test_shipped_profiles_load_and_keep_the_device_name() -> None:
    # two fitted files, and four profiles derived from the h100 one (tests/hwmodels/test_profiles_derived.py)
    assert default_profile_names() == ["a100", "gh200", "h100", "h100-nvl", "h100-pcie", "h200"]
    for name in default_profile_names():
        prof = load_default_profile(name)
        assert prof.device_name == name and prof.device_kind == "gpu"
        assert "Vidur" in prof.source and "[S]" in prof.peaks.flops_source
        assert prof.samples == ()
        eff = prof.gemm(np.array([1, 64, 4096]), 4096, 14336)
        assert np.all((eff > 0) & (eff <= 1)) and np.all(np.diff(eff) > 0)
    assert load_default_profile("h100").predict_gemm_s(4096, 4096, 14336) < load_default_profile("a100").predict_gemm_s(
        4096, 4096, 14336
    )
    with pytest.raises(CalibrationError, match="valid"):
        load_default_profile("v100")


def test_predict_ffn_composes_gemms_and_activation(profile: CalibrationProfile) -> None:
    m, d, f = 64, 1024, 2816
    gemms = 2 * profile.predict_gemm_s(m, d, f) + profile.predict_gemm_s(m, f, d)
    ffn = float(profile.predict_ffn_s(m, d, f))
    assert ffn > float(gemms)
    assert float(profile.predict_ffn_s(0, d, f)) == 0.0
    assert profile.predict_grouped_s([m, 0, m], d, f) == pytest.approx(2 * ffn)


def test_linear_fit_predict() -> None:
    assert float(LinearFit(t0_s=1.0, bandwidth_Bps=2.0).predict_s(4)) == 3.0


def test_shipped_profiles_plug_into_the_cost_model() -> None:
    """With a shipped profile, CostModel's calibrated expert cost is >= roofline and says who answered."""
    from hwmodels import CostModel, get_platform
    from workloads import get_model

    platform = get_platform("h100-pcie5-host")
    device = platform.accelerators[0]
    model = get_model("mixtral-8x7b")
    tokens = np.array([1, 8, 64, 512, 4096])
    roof = CostModel(platform, fidelity="roofline").expert_ffn(device, model, tokens)
    cal = CostModel(platform, profiles={device.name: load_default_profile("h100")}).expert_ffn(device, model, tokens)
    assert np.all(np.asarray(cal.total_s) >= np.asarray(roof.total_s))
    assert np.all(np.diff(np.asarray(cal.total_s)) >= 0)
    assert "vidur-h100" in cal.source
    # the cost model's calibrated time is close to the profile's own FFN prediction
    direct = load_default_profile("h100").predict_ffn_s(tokens, model.d_model, model.expert_ffn_dim)
    assert np.all(np.abs(np.asarray(cal.total_s) / direct - 1) < 0.25)


def test_fit_with_huge_spurious_t0_is_flagged_absurd() -> None:
    """Timings disturbed as on a busy machine (4.6 ms added to every fitted GEMM but the m = 1 ones)
    make the robust fit put t0 near 4.6 ms, far above the fastest measured GEMM: flagged."""
    bad = [
        replace(s, time_s=s.time_s + 4.6e-3) if s.kind == "gemm" and not s.heldout and s.shape["m"] > 1 else s
        for s in synthetic()
    ]
    prof = make_profile(bad)
    q = prof.quality
    assert prof.gemm_fit.t0_s > 3e-3 and q["status"] == "absurd"
    assert q["gemm_t0_s"] > 1.5 * q["min_gemm_time_s"]
    assert any("exceeds the fastest measured GEMM" in p for p in q["problems"])
    assert q["heldout_gemm_median_abs_pct_error"] > 50


def test_clean_fit_is_ok_and_held_out_drift_is_suspect(profile: CalibrationProfile) -> None:
    assert profile.quality["status"] == "ok" and profile.quality["problems"] == []
    assert profile.quality["heldout_gemm_median_abs_pct_error"] < 5
    # held-out GEMMs measured 30% slower than the fitted model predicts: suspect, not absurd
    drift = [replace(s, time_s=1.3 * s.time_s) if s.kind == "gemm" and s.heldout else s for s in synthetic()]
    q = make_profile(drift).quality
    assert q["status"] == "suspect" and 20 < q["heldout_gemm_median_abs_pct_error"] < 50
    assert len(q["problems"]) == 1 and "held-out" in q["problems"][0]
    assert assess_fit(profile.without_samples())["status"] == "unchecked"


def test_quality_round_trips_through_json(tmp_path: Path, profile: CalibrationProfile) -> None:
    out = profile.save(tmp_path / "p.json")
    assert CalibrationProfile.load(out).quality == json.loads(json.dumps(profile.quality))
    data = json.loads(out.read_text(encoding="utf-8"))
    data["quality"] = [1]
    (tmp_path / "q.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"q\.json: field 'quality' must be an object"):
        CalibrationProfile.load(tmp_path / "q.json")


def test_binary_and_npz_files_are_not_profiles(tmp_path: Path) -> None:
    npz = tmp_path / "mix.npz"
    np.savez(npz, experts=np.zeros((2, 3), dtype=np.int16))
    with pytest.raises(CalibrationError, match=r"mix.npz: not a calibration profile JSON \(a zip/.npz archive"):
        CalibrationProfile.load(npz)
    blob = tmp_path / "blob.json"
    blob.write_bytes(b"\xd0\xcf\x11\xe0 binary")
    with pytest.raises(CalibrationError, match=r"blob.json: not a calibration profile JSON \(binary data: byte 0xd0"):
        CalibrationProfile.load(blob)
