"""Link measured points are efficiencies (achieved / peak): a bandwidth change scales the copy times."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hwmodels import CostModel, Link, get_link, get_platform
from hwmodels.devices import efficiencies_from_rates
from workloads import get_model


def test_ten_times_the_bandwidth_copies_an_expert_ten_times_faster() -> None:
    """An offload-bound transfer (one Mixtral-8x7B bf16 expert, 352 MB, over PCIe Gen5 at its
    measured 35.2 GB/s) takes ~10 ms; on a link with 10x the peak and the same measured curve shape
    it takes ~1 ms: only the 10 us latency does not scale."""
    plat = get_platform("h100-pcie5-host")
    link = plat.host_link
    assert link is not None and link.efficiency_points
    fast = dataclasses.replace(link, name=link.name, bandwidth_Bps=10 * link.bandwidth_Bps)
    n = float(get_model("mixtral-8x7b").bytes_per_expert)
    cost = CostModel(plat)
    slow_s = float(cost.transfer(link, n).total_s)
    fast_s = float(cost.transfer(fast, n).total_s)  # same name: the cost model must not reuse the slow curve
    assert slow_s == pytest.approx(link.latency_s + n / 35.2e9, rel=0.02)
    assert slow_s / fast_s == pytest.approx(10.0, rel=0.02)
    # the roofline scales the same way (latency + bytes / peak)
    roof = CostModel(plat, fidelity="roofline")
    assert float(roof.transfer(link, n).total_s) / float(roof.transfer(fast, n).total_s) == pytest.approx(10, rel=0.02)


def test_efficiencies_round_trip_and_bounds() -> None:
    g4 = get_link("pcie-gen4-x16")
    rates = g4.achieved_points
    back = np.asarray(efficiencies_from_rates(rates, g4.bandwidth_Bps))
    assert np.allclose(back, np.asarray(g4.efficiency_points), rtol=1e-12)
    with pytest.raises(ValueError, match=r"points\[0\]: achieved .* exceeds the peak"):
        efficiencies_from_rates([(1e6, 2e9)], 1e9)
    with pytest.raises(ValueError, match="efficiency 3 exceeds the peak"):
        Link(
            name="l",
            bandwidth_Bps=1e9,
            latency_s=0.0,
            duplex=True,
            efficiency_points=((1e6, 3.0),),
            energy_J_per_byte=0.0,
            source="t",
        )


def test_calibrated_copy_time_never_below_roofline_at_any_bandwidth() -> None:
    link = get_link("pcie-gen5-x16")
    plat = get_platform("h100-pcie5-host")
    sizes = np.logspace(3, 10, 50)
    for scale in (0.1, 1.0, 10.0):
        scaled = dataclasses.replace(link, bandwidth_Bps=scale * link.bandwidth_Bps)
        cal = np.asarray(CostModel(plat).transfer(scaled, sizes).total_s)
        roof = np.asarray(CostModel(plat, fidelity="roofline").transfer(scaled, sizes).total_s)
        assert np.all(cal >= roof * (1 - 1e-12)) and np.all(np.diff(cal) >= 0), scale
