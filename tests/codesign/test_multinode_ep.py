"""Expert parallelism across nodes: a platform with ``[scale_out]`` (each accelerator's NIC between
nodes of ``devices_per_node``) runs its all-to-alls through `CostModel.all_to_all_nodes` and counts
the bytes on both links; one-node platforms and groups inside one node are unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from codesign.costplan import StepCostPlan
from codesign.mapping import BatchingSpec, Mapping, MappingError
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from hwmodels.devices import PresetError, load_platform_file
from hwmodels.serialize import platform_from_dict, platform_to_dict
from tests.codesign.sim_helpers import random_stream, tiny_model

PLATFORMS = Path(__file__).resolve().parents[2] / "hwmodels" / "presets" / "platforms"


def test_the_multi_node_preset_and_its_errors(tmp_path: Path) -> None:
    p = get_platform("h800-4node-ib")
    assert p.n_accelerators == 32 and p.devices_per_node == 8 and p.scale_out_link is not None
    assert p.nodes_of(32) == 8 and p.nodes_of(16) == 8 and p.nodes_of(8) is None
    assert platform_from_dict(platform_to_dict(p)) == p
    one = platform_to_dict(get_platform("dgx-h100"))
    assert "scale_out_link" not in one and "devices_per_node" not in one  # one-node hashes unchanged
    text = (PLATFORMS / "h800-4node-ib.toml").read_text()
    for bad, message in (
        ("devices_per_node = 8", "devices_per_node = 5"),
        ("devices_per_node = 8", "devices_per_node = 32"),
        ('link = "ib-cx7-400g"', 'link = "no-such-nic"'),
    ):
        path = tmp_path / f"p{abs(hash(message))}.toml"
        path.write_text(text.replace(bad, message))
        with pytest.raises(PresetError, match="scale_out"):
            load_platform_file(path)
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(p, devices_per_node=None)


def test_the_plan_crosses_nodes_only_when_the_group_does() -> None:
    model = tiny_model(n_experts=32)
    platform = get_platform("h800-4node-ib")
    cost = CostModel(platform)
    nbytes = np.array([4096.0, 2e6])

    def plan(n: int) -> StepCostPlan:
        return StepCostPlan(cost, Mapping(n_devices=n, batching=BatchingSpec(max_batch=8)).bind(model, platform))

    nvl, nic = platform.peer_link, platform.scale_out_link
    assert nvl is not None and nic is not None
    np.testing.assert_allclose(plan(8).all_to_all(nbytes).total_s, cost.all_to_all(nvl, nbytes, 8).total_s)
    np.testing.assert_allclose(
        plan(32).all_to_all(nbytes).total_s, cost.all_to_all_nodes(nvl, nic, nbytes, 32, 8).total_s
    )
    assert np.all(plan(32).all_to_all(nbytes).total_s > plan(8).all_to_all(nbytes).total_s)
    with pytest.raises(MappingError, match="whole nodes only"):
        Mapping(n_devices=12).bind(model, platform)


def test_a_multi_node_run_puts_the_bytes_on_both_links() -> None:
    model = tiny_model(n_experts=32)
    platform = get_platform("h800-4node-ib")
    stream = random_stream(model, 16, 8, 8, seed=1)
    res = simulate(model, platform, stream, Mapping(n_devices=16, batching=BatchingSpec(max_batch=16)))
    moved = res.summary["bytes_moved"]
    nvl, nic = platform.peer_link, platform.scale_out_link
    assert nvl is not None and nic is not None
    assert moved[nic.name] > 0 and moved[nvl.name] > 0
    # uniform destinations: of the bytes that leave a GPU, 7/15 stay in its node, 8/15 cross nodes
    assert moved[nvl.name] / moved[nic.name] == pytest.approx(7 / 8)
    one_node = simulate(model, platform, stream, Mapping(n_devices=8, batching=BatchingSpec(max_batch=16)))
    assert nic.name not in one_node.summary["bytes_moved"]


def test_a_scale_out_link_needs_its_own_name() -> None:
    p = get_platform("h800-4node-ib")
    with pytest.raises(ValueError, match="has the name of the host or peer link"):
        dataclasses.replace(p, scale_out_link=p.host_link)


def test_the_breakdowns_all_to_all_is_what_the_engine_charged() -> None:
    """`Metrics.breakdown_s['all_to_all']` is the engine's own all-to-all seconds (every dispatch and
    combine call: per-call latency, the busiest device's bytes, across nodes the slower path), so it
    agrees with the analytic model's, which charges the same calls from the cost plan; a group
    spanning four nodes pays more for it than one node."""
    from codesign.design import Design, WorkloadSpec, evaluate

    a2a = {}
    for n in (8, 32):
        design = Design.from_presets("deepseek-v2-lite", "h800-4node-ib").with_(
            mapping=Mapping(n_devices=n, batching=BatchingSpec(max_batch=8)),
            workload=WorkloadSpec(n_requests=8, prompt_tokens=8, output_tokens=8),
        )
        sim = evaluate(design, "sim")
        a2a[n] = sim.breakdown_s["all_to_all"]
        assert a2a[n] == pytest.approx(evaluate(design, "analytic").breakdown_s["all_to_all"], rel=0.1)
        assert a2a[n] == pytest.approx(simulate_design_a2a(design), rel=1e-12)
    assert a2a[32] > a2a[8] > 0


def simulate_design_a2a(design: object) -> float:
    """The run's ``all_to_all_s`` summary counter."""
    from codesign.design import simulate_design

    return float(simulate_design(design).summary["all_to_all_s"])
