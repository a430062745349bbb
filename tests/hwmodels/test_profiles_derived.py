"""Calibration profiles derived by rule (issue 8): H200, H100 NVL and H100 PCIe from the H100 SXM profile, and
profile names resolved for ``--profile``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hwmodels import get_device
from hwmodels.calibration import (
    CalibrationError,
    PowerLaw,
    default_profile_names,
    derive_profile,
    limit_power,
    load_default_profile,
    resolve_profile,
)


def test_derived_names_are_listed_and_load() -> None:
    names = default_profile_names()
    assert {"a100", "h100", "h200", "h100-nvl", "h100-pcie"} <= set(names)
    for name in ("h200", "h100-nvl", "h100-pcie", "H200"):
        prof = load_default_profile(name)
        assert prof.name == name.lower() and "derive_profile" in prof.source


def test_h200_keeps_the_gemm_curve_and_scales_memory_by_the_hbm_ratio() -> None:
    h100, h200 = load_default_profile("h100"), load_default_profile("h200")
    ratio = get_device("h200").weights_memory.bandwidth_Bps / get_device("h100-sxm").weights_memory.bandwidth_Bps
    assert ratio == pytest.approx(4.8 / 3.35)
    assert h200.peaks.flops == h100.peaks.flops  # same GH100 compute
    assert h200.peaks.memory_Bps == pytest.approx(4.8e12)
    assert h200.gemm_fit.eff_compute == h100.gemm_fit.eff_compute
    assert h200.gemm_fit.t0_s == h100.gemm_fit.t0_s
    assert h200.gemm_fit.bandwidth_Bps == pytest.approx(h100.gemm_fit.bandwidth_Bps * ratio)
    for key, fit in h100.memory_fits.items():
        assert h200.memory_fits[key].bandwidth_Bps == pytest.approx(fit.bandwidth_Bps * ratio)
    assert h200.memory() == pytest.approx(h100.memory())  # same fraction of a larger peak
    # a compute-bound GEMM takes about the same time (the fit blends in a little operand streaming);
    # a streaming kernel ~ 3.35 / 4.8 of it
    t100, t200 = h100.predict_gemm_s(8192, 8192, 8192), h200.predict_gemm_s(8192, 8192, 8192)
    assert t200 <= t100 and t200 == pytest.approx(t100, rel=0.03)
    big = 1e10
    assert h200.predict_memory_s(big) / h100.predict_memory_s(big) == pytest.approx(1 / ratio, rel=0.01)


def test_h100_nvl_scales_compute_by_its_power_limit_below_the_datasheet_ratio() -> None:
    """The NVL's 400 W against the SXM's 700 W allows (400/700)**e of the SXM's compute rate, below
    the datasheet peak ratio (835 / 989 TFLOP/s fp16, its boost clock): the smaller one rules."""
    h100, nvl = load_default_profile("h100"), load_default_profile("h100-nvl")
    law = h100.power_law
    assert law is not None and law.power_W == 700.0 and 0.0 < law.exponent < 3.0
    datasheet = get_device("h100-nvl").flops("fp16") / get_device("h100-sxm").flops("fp16")
    assert datasheet == pytest.approx(835 / 989)
    power = (400 / 700) ** law.exponent
    flops_ratio = min(datasheet, power)
    assert nvl.peaks.flops == pytest.approx(h100.peaks.flops * flops_ratio)
    assert ("power-limited" in nvl.source) == (power < datasheet)
    # the law binds from the NVL's own limit when power-limited, else from the power that just allows
    # its datasheet rate
    bind = 400.0 if power < datasheet else 700.0 * datasheet ** (1 / law.exponent)
    assert nvl.power_law is not None and nvl.power_law.power_W == pytest.approx(bind)
    t_sxm = h100.predict_gemm_s(16384, 16384, 16384)
    t_nvl = nvl.predict_gemm_s(16384, 16384, 16384)
    assert t_sxm / t_nvl == pytest.approx(flops_ratio, rel=0.02)
    assert np.allclose(nvl.gemm(np.array([1.0, 4096.0]), 4096, 14336) > 0, True)


def test_one_exponent_reaches_the_derivation_and_a_limit_on_top() -> None:
    """A replaced exponent (`load_default_profile(..., power_exponent=)`) changes the derived NVL's own
    rate, so the NVL under 300 W runs at min(datasheet, (300/700)**e) of the SXM, as the rule says."""
    h100 = load_default_profile("h100")
    datasheet = 835 / 989
    for e in (0.3, 0.6, 0.9):
        nvl = load_default_profile("h100-nvl", power_exponent=e)
        capped = limit_power(nvl, 300.0)
        assert capped.peaks.flops / h100.peaks.flops == pytest.approx(min(datasheet, (300 / 700) ** e), rel=1e-9)
    with pytest.raises(CalibrationError, match="no power law"):
        load_default_profile("a100", power_exponent=0.5)


def test_h100_pcie_scales_compute_and_memory_by_the_preset_ratios() -> None:
    """H100 PCIe (llama.cpp H100 case): compute by the smaller of the datasheet peak ratio (756 / 989
    TFLOP/s fp16) and its 350 W power limit's rate, memory-bound parts by the HBM bandwidth ratio
    (2.0 / 3.35 TB/s), all from the presets and the h100 profile's power law."""
    h100, pcie = load_default_profile("h100"), load_default_profile("h100-pcie")
    sxm, dev = get_device("h100-sxm"), get_device("h100-pcie")
    assert h100.power_law is not None and dev.tdp_W == 350.0
    datasheet = dev.flops("fp16") / sxm.flops("fp16")
    assert datasheet == pytest.approx(756 / 989)
    flops_ratio = min(datasheet, h100.power_law.rate(350.0))
    bw_ratio = dev.weights_memory.bandwidth_Bps / sxm.weights_memory.bandwidth_Bps
    assert bw_ratio == pytest.approx(2.0 / 3.35)
    assert pcie.peaks.flops == pytest.approx(h100.peaks.flops * flops_ratio)
    assert pcie.peaks.memory_Bps == pytest.approx(2.0e12)
    assert pcie.gemm_fit.eff_compute == h100.gemm_fit.eff_compute
    assert pcie.gemm_fit.bandwidth_Bps == pytest.approx(h100.gemm_fit.bandwidth_Bps * bw_ratio)
    for key, fit in h100.memory_fits.items():
        assert pcie.memory_fits[key].bandwidth_Bps == pytest.approx(fit.bandwidth_Bps * bw_ratio)
    big = 1e10
    assert pcie.predict_memory_s(big) / h100.predict_memory_s(big) == pytest.approx(1 / bw_ratio, rel=0.01)
    t_sxm, t_pcie = h100.predict_gemm_s(16384, 16384, 16384), pcie.predict_gemm_s(16384, 16384, 16384)
    assert t_sxm / t_pcie == pytest.approx(flops_ratio, rel=0.05)


def test_derive_refuses_other_kinds_and_devices_without_the_dtype() -> None:
    h100, sxm = load_default_profile("h100"), get_device("h100-sxm")
    with pytest.raises(CalibrationError, match="differ in kind"):
        derive_profile(h100, sxm, get_device("epyc-9004-2s"), name="x")
    bf16_only = dataclasses.replace(sxm, name="bf16-only", peak_flops={"bf16": 1e15}, energy_J_per_flop={"bf16": 1e-13})
    with pytest.raises(CalibrationError, match="has no fp16 peak"):
        derive_profile(h100, sxm, bf16_only, name="x")


def test_resolve_profile_errors_list_the_names(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError) as info:
        resolve_profile("h300")
    assert "valid names: a100, gh200, h100, h100-nvl, h100-pcie, h200" in str(info.value)
    with pytest.raises(CalibrationError, match="cannot read calibration profile"):
        resolve_profile(str(tmp_path / "missing.json"))
    saved = load_default_profile("h200").save(tmp_path / "h200.json")
    again = resolve_profile(str(saved))
    assert again.peaks == load_default_profile("h200").peaks


def test_a_device_at_or_above_the_reference_power_keeps_the_datasheet_ratio() -> None:
    """The H200 (700 W, as the SXM): no power term; a device whose TDP exceeds the reference is not
    extrapolated upwards (its datasheet ratio only)."""
    h100, sxm = load_default_profile("h100"), get_device("h100-sxm")
    assert load_default_profile("h200").peaks.flops == h100.peaks.flops
    hot = dataclasses.replace(sxm, name="hot", tdp_W=1000.0)
    hot_profile = derive_profile(h100, sxm, hot, name="hot")
    assert hot_profile.peaks.flops == h100.peaks.flops
    # its law binds from the reference's 700 W, not its own 1,000 W: a 700 W limit changes nothing
    assert hot_profile.power_law is not None and hot_profile.power_law.power_W == 700.0
    assert limit_power(hot_profile, 700.0).peaks.flops == h100.peaks.flops
    # an explicit power limit below the reference rules over the device's TDP
    capped = limit_power(h100, 350.0)
    assert h100.power_law is not None
    assert capped.peaks.flops == pytest.approx(h100.peaks.flops * h100.power_law.rate(350.0))
    assert capped.power_law is not None and capped.power_law.power_W == pytest.approx(350.0)


def test_power_law_rate_round_trip_and_checks(tmp_path: Path) -> None:
    law = PowerLaw(exponent=0.5, power_W=700.0, source="test", fitted_on=("a", "b"))
    assert law.rate(700.0) == 1.0 and law.rate(900.0) == 1.0
    assert law.rate(175.0) == pytest.approx(0.5)
    for bad in (-0.1, 3.5, float("nan"), True):
        with pytest.raises(CalibrationError, match="exponent"):
            PowerLaw(exponent=bad, power_W=700.0)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match="power_W"):
        PowerLaw(exponent=0.5, power_W=0.0)
    with pytest.raises(CalibrationError, match="positive number of watts"):
        law.rate(0.0)
    prof = dataclasses.replace(load_default_profile("h100"), power_law=law)
    again = resolve_profile(str(prof.save(tmp_path / "p.json")))
    assert again.power_law == law
    # a profile without one (a100) has none, and its JSON has no key for it
    a100 = load_default_profile("a100")
    assert a100.power_law is None and "power_law" not in a100.to_dict()
    raw = prof.to_dict()
    raw["power_law"] = {"exponent": "steep", "power_W": 700.0}
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match=r"bad.json: power_law: field 'exponent' must be"):
        resolve_profile(str(tmp_path / "bad.json"))


def test_limit_power_scales_compute_only() -> None:
    h200 = load_default_profile("h200")
    assert h200.power_law is not None
    capped = limit_power(h200, 500.0)
    ratio = (500 / 700) ** h200.power_law.exponent
    assert capped.name == "h200@500W" and capped.peaks.flops == pytest.approx(h200.peaks.flops * ratio)
    assert capped.peaks.memory_Bps == h200.peaks.memory_Bps and capped.memory_fits == h200.memory_fits
    t, t_cap = h200.predict_gemm_s(16384, 16384, 16384), capped.predict_gemm_s(16384, 16384, 16384)
    assert t / t_cap == pytest.approx(ratio, rel=0.03)  # compute-bound: the rate falls with the limit
    big = 1e10
    assert capped.predict_memory_s(big) == h200.predict_memory_s(big)  # streaming: unchanged
    assert limit_power(h200, 500.0, exponent=0.0).peaks.flops == h200.peaks.flops
    assert limit_power(h200, 800.0).peaks.flops == h200.peaks.flops
    with pytest.raises(CalibrationError, match="has no power law"):
        limit_power(load_default_profile("a100"), 300.0)


def test_a_power_limit_lowers_the_dynamic_energy_of_a_compute_bound_op(tmp_path: Path) -> None:
    """Under a power limit the clocks and voltage drop: each FLOP costs ``rate ** (1/e - 1)`` of the
    device file's energy (`limit_power`). A compute-bound expert FFN (4,096 tokens, FP8) takes longer
    and its energy beyond the static draw falls; the FP8 path (`_ProfileAtDtype`) carries the scale."""
    from hwmodels import CostModel, get_platform
    from workloads import get_model

    h100 = load_default_profile("h100")
    capped = limit_power(h100, 350.0, exponent=0.6)
    rate = (350 / 700) ** 0.6
    assert capped.flop_energy_scale == pytest.approx(rate ** (1 / 0.6 - 1))
    assert resolve_profile(str(capped.save(tmp_path / "c.json"))).flop_energy_scale == pytest.approx(rate ** (2 / 3))
    platform = get_platform("h100-pcie5-host")
    dev = platform.accelerators[0]
    model = get_model("mixtral-8x7b").with_(bytes_per_weight=1.0)
    costs = [CostModel(platform, profiles={dev.name: p}).expert_ffn(dev, model, 4096) for p in (h100, capped)]
    full, slow = costs
    assert slow.total_s > full.total_s * 1.2
    dynamic = [c.energy_J - dev.static_power_W * c.total_s for c in costs]
    assert dynamic[1] < dynamic[0] * 0.9
