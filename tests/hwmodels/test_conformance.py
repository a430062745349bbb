"""The conformance suite every device preset and every cost model passes.

One class, `TestCostModelConformance`, parametrised by two fixtures: ``device`` (every shipped
device preset) and ``setup`` (every fidelity: roofline; calibrated with the package's default
curves; calibrated with a fake `EfficiencyModel` of unusual shape; calibrated with each
calibration profile shipped in ``hwmodels/data`` when present). A new device or cost model plugs
in by adding a preset file or a ``setup`` parameter. Checked: costs finite and non-negative, zero
work costs zero, monotone non-decreasing in tokens and bytes, faster hardware never slower,
calibrated >= roofline, picklable.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hwmodels
from hwmodels import (
    CostModel,
    Device,
    Link,
    OpCost,
    Platform,
    device_preset_names,
    get_device,
    get_link,
    link_preset_names,
)
from workloads import MoEModel, get_model

TOKENS = np.array([0, 1, 2, 3, 5, 8, 16, 31, 64, 100, 128, 257, 512, 1000, 2048, 4096, 8192])
BYTES = np.concatenate([[0.0], np.logspace(0, 11, 60)])
MODELS = (get_model("mixtral-8x7b"), get_model("deepseek-v2-lite"), get_model("switch-base-128"))
VIT = MoEModel(
    name="vit-moe",
    n_layers=12,
    d_model=192,
    n_heads=3,
    n_kv_heads=3,
    head_dim=64,
    expert_ffn_dim=384,
    n_experts=16,
    top_k=2,
    gated=False,
    vocab_size=1000,
)


class FakeEfficiency:
    """An EfficiencyModel of its own shape (slow saturation, low memory efficiency, an overhead)."""

    name = "fake"
    launch_overhead_s = 3e-6

    def gemm(self, m: Any, k: int, n: int) -> Any:
        m = np.asarray(m, dtype=np.float64)
        return 0.2 + 0.6 * m / (m + 300.0) * min(1.0, (k * n) / (1024.0 * 1024.0)) ** 0.1

    def memory(self) -> float:
        return 0.6

    def copy(self, n_bytes: Any, *, pinned: bool = True) -> Any:
        n = np.asarray(n_bytes, dtype=np.float64)
        return (0.3 + 0.6 * n / (n + 4e6)) * (1.0 if pinned else 0.5)


def _shipped_profiles() -> list[str]:
    data = Path(hwmodels.__file__).parent / "data"
    return sorted(p.name for p in data.glob("calibration-*.json"))


SETUPS = ["roofline", "calibrated-default", "calibrated-fake", *(f"profile:{n}" for n in _shipped_profiles())]


def _platform_for(device: Device) -> Platform:
    return Platform(
        name=f"conformance-{device.name}",
        accelerators=(device,),
        host=None,
        host_link=None,
        peer_link=None,
        cost_per_hour_usd=1.0,
        source="test",
    )


def make_cost_model(setup: str, device: Device) -> CostModel:
    plat = _platform_for(device)
    if setup == "roofline":
        return CostModel(plat, fidelity="roofline")
    if setup == "calibrated-default":
        return CostModel(plat)
    if setup == "calibrated-fake":
        return CostModel(plat, profiles={device.name: FakeEfficiency()})
    from hwmodels.calibration import CalibrationProfile

    profile = CalibrationProfile.load(Path(hwmodels.__file__).parent / "data" / setup.split(":", 1)[1])
    profiles = {device.name: profile} if profile.device_kind == device.kind else {}
    return CostModel(plat, profiles=profiles)  # type: ignore[arg-type]


Op = Callable[..., OpCost]


def device_ops(device: Device) -> dict[str, Op]:
    """Every cost-model operation that applies to ``device``, as a function of a token count."""
    ops: dict[str, Op] = {}
    for model in MODELS:
        ops[f"expert_ffn/{model.name}"] = lambda cm, d, n, m=model: cm.expert_ffn(d, m, n)
        ops[f"shared/{model.name}"] = lambda cm, d, n, m=model: cm.shared_experts(d, m, n)
        ops[f"router/{model.name}"] = lambda cm, d, n, m=model: cm.router(d, m, n)
        ops[f"prefill/{model.name}"] = lambda cm, d, n, m=model: cm.attention_prefill(d, m, n)
        ops[f"decode-batch/{model.name}"] = lambda cm, d, n, m=model: cm.attention_decode(d, m, n, 1024)
        ops[f"decode-context/{model.name}"] = lambda cm, d, n, m=model: cm.attention_decode(d, m, 8, n)
        ops[f"grouped/{model.name}"] = lambda cm, d, n, m=model: _grouped(cm, d, m, n)
    for tier in device.tiers:
        ops[f"expert_ffn@{tier.name}"] = lambda cm, d, n, t=tier.name: cm.expert_ffn(d, MODELS[0], n, weights_tier=t)
        if tier.name != device.weights_tier:
            ops[f"tier_copy:{tier.name}->{device.weights_tier}"] = lambda cm, d, n, t=tier.name: cm.tier_copy(
                d, t, d.weights_tier, n * 1e5
            )
    if device.kind == "cpu":
        ops["cpu_expert"] = lambda cm, d, n: cm.cpu_expert(d, MODELS[0], n)
    if device.kind == "rdu":
        for tier in device.tiers:
            ops[f"rdu_expert@{tier.name}"] = lambda cm, d, n, t=tier.name: cm.rdu_expert(
                d, MODELS[0], n, weights_tier=t
            )
    if device.kind == "fpga":
        for reorder in (True, False):
            ops[f"fpga_expert/{reorder}"] = lambda cm, d, n, r=reorder: cm.fpga_expert(d, VIT, n, reorder=r)
            ops[f"fpga_layer/{reorder}"] = lambda cm, d, n, r=reorder: _fpga_layer(cm, d, n, r)
    return ops


def _grouped(cm: CostModel, d: Device, m: MoEModel, n: Any) -> OpCost:
    costs = [cm.experts_grouped(d, m, [int(x), int(x) // 2, 3 if x else 0]) for x in np.ravel(n)]
    return _stack(costs, np.shape(n))


def _fpga_layer(cm: CostModel, d: Device, n: Any, reorder: bool) -> OpCost:
    costs = [cm.fpga_layer(d, VIT, [int(x)] * 4 + [int(x) // 3] * 4, reorder=reorder) for x in np.ravel(n)]
    return _stack(costs, np.shape(n))


def _stack(costs: list[OpCost], shape: tuple[int, ...]) -> OpCost:
    def field(name: str) -> Any:
        return np.array([getattr(c, name) for c in costs], dtype=np.float64).reshape(shape)

    return OpCost(
        compute_s=field("compute_s"),
        memory_s=field("memory_s"),
        comm_s=field("comm_s"),
        energy_J=field("energy_J"),
        source=costs[0].source,
    )


def faster(device: Device) -> Device:
    """The same device with twice the FLOP/s (or DSPs) and twice every tier's bandwidth."""
    tiers = tuple(dataclasses.replace(t, bandwidth_Bps=2 * t.bandwidth_Bps) for t in device.tiers)
    if device.kind == "fpga":
        return dataclasses.replace(
            device,
            name=device.name + "-2x",
            tiers=tiers,
            dsp_count=2 * device.dsp_count,
            peak_flops={k: 2 * v for k, v in device.peak_flops.items()},
        )
    return dataclasses.replace(
        device, name=device.name + "-2x", tiers=tiers, peak_flops={k: 2 * v for k, v in device.peak_flops.items()}
    )


FIELDS = ("compute_s", "memory_s", "comm_s", "energy_J")


@pytest.fixture(params=device_preset_names())
def device(request: pytest.FixtureRequest) -> Device:
    return get_device(request.param)


@pytest.fixture(params=SETUPS)
def setup(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestCostModelConformance:
    def test_finite_non_negative_and_zero_for_zero(self, device: Device, setup: str) -> None:
        cm = make_cost_model(setup, device)
        for name, op in device_ops(device).items():
            cost = op(cm, device, TOKENS)
            for f in FIELDS:
                values = np.asarray(getattr(cost, f))
                assert values.shape == TOKENS.shape, (name, f)
                assert np.all(np.isfinite(values)) and np.all(values >= 0), (name, f, values)
            if not name.startswith("decode-context"):  # batch 8 at context 0 still runs projections
                assert np.all(np.asarray(cost.total_s)[0] == 0.0), (name, "zero tokens must cost zero")
            assert cost.source

    def test_monotone_in_tokens(self, device: Device, setup: str) -> None:
        cm = make_cost_model(setup, device)
        for name, op in device_ops(device).items():
            cost = op(cm, device, TOKENS)
            for f in ("total_s", "energy_J", "compute_s", "memory_s"):
                values = np.asarray(getattr(cost, f))
                assert np.all(np.diff(values) >= -1e-12 * np.abs(values[1:])), (name, f, values)

    def test_calibrated_at_least_roofline(self, device: Device, setup: str) -> None:
        cm = make_cost_model(setup, device)
        roof = make_cost_model("roofline", device)
        for name, op in device_ops(device).items():
            mine, bound = op(cm, device, TOKENS), op(roof, device, TOKENS)
            assert np.all(np.asarray(mine.total_s) >= np.asarray(bound.total_s) * (1 - 1e-12)), name

    def test_faster_hardware_never_slower(self, device: Device, setup: str) -> None:
        fast = faster(device)
        cm = make_cost_model(setup, device)
        cm_fast = make_cost_model(setup, fast)
        if setup == "calibrated-fake":  # the profile is keyed by device name
            cm_fast = CostModel(_platform_for(fast), profiles={fast.name: FakeEfficiency()})
        elif setup.startswith("profile:") and device.name in cm.profiles:
            cm_fast = CostModel(_platform_for(fast), profiles={fast.name: cm.profiles[device.name]})
        for name, op in device_ops(device).items():
            slow_t = np.asarray(op(cm, device, TOKENS).total_s)
            fast_t = np.asarray(op(cm_fast, fast, TOKENS).total_s)
            assert np.all(fast_t <= slow_t * (1 + 1e-12)), name

    def test_average_power_within_tdp(self, device: Device, setup: str) -> None:
        """Energy is consistent with the device's power limit: energy / time never exceeds the TDP
        (static power plus dynamic energy at full rate), and never falls below the static power."""
        cm = make_cost_model(setup, device)
        for name, op in device_ops(device).items():
            cost = op(cm, device, TOKENS)
            t, e = np.asarray(cost.total_s), np.asarray(cost.energy_J)
            busy = t > 0
            power = e[busy] / t[busy]
            assert np.all(power <= device.tdp_W * (1 + 1e-9)), (name, power.max(), device.tdp_W)
            assert np.all(power >= device.static_power_W * (1 - 1e-9)), name

    def test_picklable(self, device: Device, setup: str) -> None:
        cm = make_cost_model(setup, device)
        clone = pickle.loads(pickle.dumps(cm))
        assert pickle.loads(pickle.dumps(device)) == device
        for name, op in list(device_ops(device).items())[:6]:
            a, b = op(cm, device, TOKENS), op(clone, device, TOKENS)
            assert np.allclose(a.total_s, b.total_s) and a.source == b.source, name


# ------------------------------------------------------------------ links
LINK_SETUPS = ["roofline", "calibrated-default", "calibrated-fake"]


def link_cost_model(setup: str, link: Link) -> CostModel:
    dev = get_device("h100-sxm")
    plat = Platform(
        name="conformance-link",
        accelerators=(dev, dev),
        host=get_device("spr-2s"),
        host_link=link,
        peer_link=link,
        cost_per_hour_usd=1.0,
        source="test",
    )
    if setup == "roofline":
        return CostModel(plat, fidelity="roofline")
    if setup == "calibrated-fake":
        return CostModel(plat, profiles={link.name: FakeEfficiency()})
    return CostModel(plat)


def link_ops() -> dict[str, Callable[[CostModel, Link, Any], OpCost]]:
    return {
        "transfer-pinned": lambda cm, ln, b: cm.transfer(ln, b),
        "transfer-pageable": lambda cm, ln, b: cm.transfer(ln, b, pinned=False),
        "all_to_all-8": lambda cm, ln, b: cm.all_to_all(ln, b, 8),
        "all_to_all-2": lambda cm, ln, b: cm.all_to_all(ln, b, 2),
        "all_reduce-4": lambda cm, ln, b: cm.all_reduce(ln, b, 4),
    }


@pytest.fixture(params=link_preset_names())
def link(request: pytest.FixtureRequest) -> Link:
    return get_link(request.param)


@pytest.fixture(params=LINK_SETUPS)
def link_setup(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestLinkConformance:
    def test_finite_monotone_zero_and_bounded(self, link: Link, link_setup: str) -> None:
        cm = link_cost_model(link_setup, link)
        roof = link_cost_model("roofline", link)
        for name, op in link_ops().items():
            cost = op(cm, link, BYTES)
            t = np.asarray(cost.total_s)
            assert np.all(np.isfinite(t)) and np.all(t >= 0) and t[0] == 0.0, name
            assert np.all(np.diff(t) >= 0), name
            assert np.all(np.diff(np.asarray(cost.energy_J)) >= 0), name
            assert np.all(t >= np.asarray(op(roof, link, BYTES).total_s) * (1 - 1e-12)), name

    def test_faster_link_never_slower(self, link: Link, link_setup: str) -> None:
        fast = dataclasses.replace(
            link,
            name=link.name + "-2x",
            bandwidth_Bps=2 * link.bandwidth_Bps,  # measured points are efficiencies: they scale with it
        )
        cm, cm_fast = link_cost_model(link_setup, link), link_cost_model(link_setup, fast)
        if link_setup == "calibrated-fake":
            cm_fast = CostModel(cm_fast.platform, profiles={fast.name: FakeEfficiency()})
        for name, op in link_ops().items():
            assert np.all(
                np.asarray(op(cm_fast, fast, BYTES).total_s) <= np.asarray(op(cm, link, BYTES).total_s) * (1 + 1e-12)
            ), name

    def test_picklable(self, link: Link, link_setup: str) -> None:
        cm = link_cost_model(link_setup, link)
        clone = pickle.loads(pickle.dumps(cm))
        assert np.allclose(cm.transfer(link, BYTES).total_s, clone.transfer(link, BYTES).total_s)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.floats(min_value=0.0, max_value=1e12, allow_nan=False), min_size=2, max_size=30),
    name=st.sampled_from(link_preset_names()),
    pinned=st.booleans(),
)
def test_transfer_monotone_property(sizes: list[float], name: str, pinned: bool) -> None:
    link = get_link(name)
    cm = link_cost_model("calibrated-default", link)
    ordered = np.sort(np.array(sizes))
    t = np.asarray(cm.transfer(link, ordered, pinned=pinned).total_s)
    assert np.all(np.diff(t) >= 0)
    scalar = [float(cm.transfer(link, float(s), pinned=pinned).total_s) for s in ordered]
    assert np.allclose(scalar, t)


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(min_value=0, max_value=200_000), min_size=2, max_size=30),
    name=st.sampled_from(device_preset_names()),
    model=st.sampled_from([m.name for m in MODELS]),
)
def test_expert_ffn_monotone_property(tokens: list[int], name: str, model: str) -> None:
    dev = get_device(name)
    cm = CostModel(_platform_for(dev))
    ordered = np.sort(np.array(tokens))
    t = np.asarray(cm.expert_ffn(dev, get_model(model), ordered).total_s)
    assert np.all(np.diff(t) >= 0)


def test_newer_gpus_are_never_slower() -> None:
    """Real presets: an H200 (same compute, more bandwidth) never loses to an H100; an H100 never
    loses to an A100."""
    pairs = [("h200", "h100-sxm"), ("h100-sxm", "a100-80gb")]
    for fast_name, slow_name in pairs:
        fast, slow = get_device(fast_name), get_device(slow_name)
        for setup in ("roofline", "calibrated-default"):
            cm_f, cm_s = make_cost_model(setup, fast), make_cost_model(setup, slow)
            for name, op in device_ops(slow).items():
                assert np.all(
                    np.asarray(op(cm_f, fast, TOKENS).total_s)
                    <= np.asarray(op(cm_s, slow, TOKENS).total_s) * (1 + 1e-12)
                ), (fast_name, name)
