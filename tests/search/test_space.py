"""The search space: TOML defaults and errors, model scaling, conditional knobs, enumeration."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.objectives import OBJECTIVES, SloConstraint, get_objective
from search.space import Knob, SpaceError, default_space, load_space, params_chooser, scale_model
from search.study import dominates
from tests.search.search_helpers import tiny_space
from workloads.model import get_model


def test_default_space_covers_the_default_workloads_and_platforms() -> None:
    space = default_space()
    assert set(space.knobs["workload.base_model"].values()) == {"mixtral-8x7b", "deepseek-v2-lite"}
    assert set(space.platforms) == {"h100-pcie5-host", "dgx-h100", "sn40l-node", "cpu-server"}
    assert space.platforms["sn40l-node"].backing == "ddr"
    assert space.platforms["cpu-server"].backing is None  # nothing to offload to
    assert space.platforms["h100-pcie5-host"].backing == "host"
    assert all(o in OBJECTIVES for o in space.objectives)
    assert ("mixtral-8x7b", 8, 2) in space.routing_shapes()


def test_user_file_overrides_defaults_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[study]\nsampler = "tpe"\n[mapping]\nmax_batch = [1, 2, 3]\n', encoding="utf-8")
    space = load_space(path)
    assert space.sampler == "tpe"
    assert space.knobs["mapping.max_batch"].choices == (1, 2, 3)
    assert space.knobs["model.granularity"] == default_space().knobs["model.granularity"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[model]\ngranularity = 'two'\n", "s.toml:model.granularity: expected a number, got 'two'"),
        ("[model]\ngranularity = [1, 1]\n", "s.toml:model.granularity: expected distinct values"),
        ("[model]\ngranularity = -1\n", "s.toml:model.granularity: expected a number > 0"),
        ("[model]\ncolour = 1\n", "s.toml:model.colour: expected a key among"),
        ("[modle]\n", "s.toml:modle: expected a section among"),
        ("[study]\nobjectives = ['speed']\n", "s.toml:study.objectives: expected names among"),
        ("[mapping]\ncache_policy = 'fifo'\n", "s.toml:mapping.cache_policy: expected one of"),
        ("[mapping]\nfast_tier_share = 1.5\n", "s.toml:mapping.fast_tier_share: expected a share in (0, 1]"),
        ("[platform.dgx-h100]\ndevices = [16]\n", "s.toml:platform.dgx-h100.devices: expected device counts <= 8"),
        ("[platform.cpu-server]\nbacking = 'host'\n", "s.toml:platform.cpu-server.backing"),
        ("[platform]\npreset = ['tpu-pod']\n", "s.toml:platform.preset: expected one of"),
        ("[workload]\narrivals = 'poisson'\n", "s.toml:workload.rate_per_s: expected a rate > 0"),
        ("[mapping]\nmax_batch = {low = 8, high = 2}\n", "s.toml:mapping.max_batch: expected low < high"),
        ("[study\n", "s.toml: not valid TOML"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(str(tmp_path / where))
    assert "\n" not in str(info.value)


def test_missing_space_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="cannot read the search space"):
        load_space(tmp_path / "absent.toml")


def test_granularity_splits_experts_at_fixed_active_parameters() -> None:
    base = get_model("mixtral-8x7b")
    for s in (0.5, 2.0, 4.0):
        m = scale_model(base, granularity=s)
        assert (m.n_experts, m.top_k) == (round(8 * s), round(2 * s))
        assert m.top_k * m.expert_ffn_dim == base.top_k * base.expert_ffn_dim
        assert m.top_k * m.params_per_expert == base.top_k * base.params_per_expert
        assert m.active_params == pytest.approx(base.active_params, rel=1e-3)  # the router grows with E
        assert m.granularity == pytest.approx(base.granularity * s)
    wider = scale_model(base, experts_scale=2.0)
    assert (wider.n_experts, wider.top_k, wider.expert_ffn_dim) == (16, 2, base.expert_ffn_dim)
    assert wider.total_params > base.total_params
    assert wider.active_params == pytest.approx(base.active_params, rel=1e-3)
    shared = scale_model(base, shared_experts=1, weight_precision="fp8")
    assert shared.n_shared_experts == 1 and shared.shared_ffn_dim == base.expert_ffn_dim
    assert shared.bytes_per_weight == 1.0
    with pytest.raises(ValueError, match="granularity must be a number > 0"):
        scale_model(base, granularity=0)


def _choose_first(knob: Knob) -> object:
    return knob.values()[0]


def test_conditional_knobs_are_asked_only_when_they_apply() -> None:
    space = default_space()
    asked: list[str] = []

    def choose(fixed: dict[str, object]):  # type: ignore[no-untyped-def]
        def pick(knob: Knob) -> object:
            asked.append(knob.name)
            return fixed.get(knob.name, knob.values()[0])

        return pick

    space.build(choose({"platform.preset": "cpu-server"}))
    assert "mapping.fast_tier_share" not in asked and "mapping.placement" not in asked
    asked.clear()
    cand = space.build(
        choose({"platform.preset": "h100-pcie5-host", "mapping.fast_tier_share": 0.5, "mapping.miss": "cpu"})
    )
    assert {"mapping.cache_policy", "mapping.prefetch", "mapping.miss"} <= set(asked)
    assert "mapping.placement" not in asked and cand.mapping().miss == "cpu"
    asked.clear()
    cand = space.build(choose({"platform.preset": "dgx-h100", "mapping.fast_tier_share": 1.0}))
    assert {"mapping.placement", "mapping.ep_execution", "platform.n_devices@dgx-h100"} <= set(asked)
    assert "mapping.cache_policy" not in asked
    asked.clear()
    cand = space.build(choose({"platform.preset": "sn40l-node", "mapping.fast_tier_share": 0.5}))
    assert "mapping.miss" not in asked  # no host: misses are fetched from DDR
    assert cand.mapping().backing == "ddr" and cand.mapping().miss == "fetch"


def test_enumeration_visits_each_design_once_and_replays_by_params() -> None:
    space = tiny_space()
    cands = list(space.enumerate())
    # precision 2 x (share 1.0 + shares 0.5, 0.75 x cache 2 x miss 2) = 2 x (1 + 8)
    assert len(cands) == 18 == space.size()
    keys = {tuple(sorted(c.params.items())) for c in cands}
    assert len(keys) == len(cands)
    for c in cands[:5]:
        again = space.build(params_chooser(c.params))
        assert again.mapping() == c.mapping() and again.model == c.model
    with pytest.raises(SpaceError, match="float range cannot be enumerated"):
        Knob(name="x", low=0.1, high=0.9).values()


def test_objective_registry_and_slo_constraints() -> None:
    tpot = get_objective("tpot_p99")
    assert tpot.value({"tpot_p99_s": 0.02}, 2.0) == pytest.approx(20.0)  # milliseconds
    assert get_objective("quality").value({}, 2.5) == 2.5
    with pytest.raises(KeyError, match="valid: \\["):
        get_objective("speed")
    with pytest.raises(ValueError, match="not finite"):
        tpot.value({"tpot_p99_s": float("nan")}, 2.0)
    slo = SloConstraint(metric="tpot_p99_s", limit=0.1)
    assert slo.violation({"tpot_p99_s": 0.05}) == pytest.approx(-0.5)
    assert slo.violation({"tpot_p99_s": 0.15}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown metric"):
        SloConstraint(metric="energy", limit=1.0)


def test_dominance_respects_directions() -> None:
    assert dominates([1.0, 2.0], [1.0, 3.0], ["minimize", "minimize"])
    assert not dominates([1.0, 3.0], [1.0, 3.0], ["minimize", "minimize"])
    assert dominates([1.0, 4.0], [1.0, 3.0], ["minimize", "maximize"])
    assert not dominates([0.5, 2.0], [1.0, 1.0], ["minimize", "minimize"])
