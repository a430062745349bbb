"""Policy plug-ins (entry points, ``load_plugin``), policy options checked when a `Mapping` is
built, and the class flags the simulator reads instead of probing policies."""

from __future__ import annotations

import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from codesign.mapping import BatchingSpec, CacheSpec, Mapping, MappingError
from codesign.policies import REGISTRIES, policy_flag, policy_options
from codesign.policies.registry import PluginError, load_entry_point_plugins, load_plugin
from codesign.simulate import policies_needing_training
from tests.codesign.sim_helpers import tiny_model

PLUGIN = """
from codesign.policies.base import PlacementPolicy
from codesign.policies.placement import round_robin_placement
from codesign.policies.registry import REGISTRIES


@REGISTRIES["placement"].register("{name}", "test plug-in: round-robin shifted by one device")
class Shifted(PlacementPolicy):
    needs_stats = {needs_stats}

    def __init__(self, *, seed: int = 0, shift: int = 1) -> None:
        super().__init__(seed=seed)
        self.shift = shift

    def place(self, model, n_devices, stats):
        home = (round_robin_placement(model.n_moe_layers, model.n_experts, n_devices) + self.shift) % n_devices
        return self.check(home, model, n_devices)
"""


def _write_plugin(tmp_path: Path, module: str, name: str, needs_stats: bool) -> None:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(name=name, needs_stats=needs_stats)))


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_load_plugin_registers_and_the_mapping_uses_it(plugin_path: Path) -> None:
    from hwmodels import get_platform

    _write_plugin(plugin_path, "h3_plugin_a", "h3-shifted-a", needs_stats=False)
    added = load_plugin("h3_plugin_a")
    assert added == ["placement/h3-shifted-a"]
    assert load_plugin("h3_plugin_a") == []  # a second import adds nothing
    assert policy_options("placement", "h3-shifted-a") == ["shift"]
    model = tiny_model(n_experts=8)
    bound = Mapping(placement="h3-shifted-a", n_devices=2).bind(model, get_platform("dgx-h100"))
    assert bound.expert_home[0].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    with pytest.raises(MappingError, match=r"no option\(s\) \['shfit'\]; valid options: shift"):
        Mapping(placement="h3-shifted-a", placement_options={"shfit": 2})
    with pytest.raises(PluginError, match="'h3_no_such_plugin' cannot be imported"):
        load_plugin("h3_no_such_plugin")
    with pytest.raises(PluginError, match="non-empty"):
        load_plugin(" ")


def test_entry_points_are_loaded(plugin_path: Path) -> None:
    _write_plugin(plugin_path, "h3_plugin_b", "h3-shifted-b", needs_stats=True)
    ep = metadata.EntryPoint(name="shifted", value="h3_plugin_b", group="moe_codesign.policies")
    assert load_entry_point_plugins([ep]) == ["placement/h3-shifted-b"]
    assert "h3-shifted-b" in REGISTRIES["placement"].names()
    assert policy_flag("placement", "h3-shifted-b", "needs_stats")
    # the simulator reads the flag: no probing of the policy
    model = tiny_model(n_experts=8)
    assert policies_needing_training(Mapping(placement="h3-shifted-b", n_devices=2), model) == [
        "placement 'h3-shifted-b'"
    ]
    bad = metadata.EntryPoint(name="broken", value="h3_plugin_missing", group="moe_codesign.policies")
    with pytest.raises(PluginError, match="h3_plugin_missing"):
        load_entry_point_plugins([bad])
    assert "h3_plugin_b" in sys.modules


def test_options_checked_when_the_mapping_is_built() -> None:
    with pytest.raises(MappingError, match=r"placement options: placement policy 'exflow' has no option\(s\) "):
        Mapping(placement="exflow", placement_options={"time_limit": 3})
    with pytest.raises(MappingError, match="valid options: budget_s, load_slack, max_sweeps, method, time_limit_s"):
        Mapping(placement="exflow", placement_options={"time_limit": 3})
    with pytest.raises(MappingError, match=r"cache\.policy options: cache policy 'lru' has no option"):
        CacheSpec(policy="lru", options={"perlayer": True})
    with pytest.raises(MappingError, match="set by the simulator"):
        CacheSpec(policy="lru", options={"capacity": 3})
    with pytest.raises(MappingError, match="prefetch options: prefetch policy 'pregate' has no option"):
        Mapping(prefetch="pregate", prefetch_options={"acuracy": 0.9})
    with pytest.raises(MappingError, match=r"batching\.scheduler options"):
        BatchingSpec(options={"nope": 1})
    with pytest.raises(MappingError, match="miss options"):
        Mapping(miss="fetch", miss_options={"x": 1})
    # valid options pass, and JSON keeps them
    m = Mapping(placement="exflow", placement_options={"method": "greedy", "budget_s": 5.0})
    assert Mapping.from_json(m.to_json()) == m
    CacheSpec(policy="lru", options={"per_layer": True})


def test_class_flags_replace_probing() -> None:
    assert policy_flag("placement", "exflow", "needs_stats")
    assert policy_flag("placement", "load-balanced", "needs_stats")
    assert not policy_flag("placement", "round-robin", "needs_stats")
    model = tiny_model(n_experts=8)
    layout = [[e % 2 for e in range(8)] for _ in range(model.n_moe_layers)]
    # a mapping with its own layout needs no statistics whatever its placement policy
    assert policies_needing_training(Mapping(placement="exflow", n_devices=2, expert_home=layout), model) == []
