"""`simulate`: placement reused across calls through a memo, and a ``config_hash`` that sees every
platform number."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codesign.mapping import Mapping
from codesign.policies.placement import PlacementMemo
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import random_stream, tiny_model


@pytest.fixture(scope="module")
def setup() -> tuple:
    model = tiny_model(n_experts=16)
    stream = random_stream(model, 6, 6, 3, seed=2, zipf=1.0)
    return model, stream


def test_placement_computed_once_across_simulate_calls(setup: tuple) -> None:
    model, stream = setup
    plat = get_platform("dgx-h100")
    m = Mapping(placement="exflow", n_devices=4, train_fraction=0.5)
    memo = PlacementMemo()
    first = simulate(model, plat, stream, m, seed=0, placements=memo)
    second = simulate(model, plat, stream, m, seed=0, placements=memo)
    assert (first.summary["placement_source"], second.summary["placement_source"]) == ("computed", "memo")
    assert (memo.misses, memo.hits) == (1, 1)
    # reusing the placement changes nothing but where it came from
    assert first.requests.equals(second.requests) and first.config_hash == second.config_hash
    # the same layout carried by the mapping: no statistics needed for placement, same run
    train = stream.requests[:3]
    from codesign.policies.base import RoutingStats

    stats = RoutingStats.from_routing(np.concatenate([stream.routing(r) for r in train]), model.n_experts)
    placed = m.placed(model, plat, stats=stats, placements=memo)
    given = simulate(model, plat, stream, placed, seed=0)
    assert given.summary["placement_source"] == "given"
    np.testing.assert_allclose(given.requests["finish_s"], first.requests["finish_s"])


def test_config_hash_sees_every_platform_number(setup: tuple) -> None:
    model, stream = setup
    plat = get_platform("h100-pcie5-host")
    m = Mapping(n_devices=1)
    base = simulate(model, plat, stream, m, seed=0)
    assert base.config["platform"]["accelerators"][0]["tiers"]
    assert plat.host_link is not None
    faster_link = dataclasses.replace(
        plat, host_link=dataclasses.replace(plat.host_link, bandwidth_Bps=plat.host_link.bandwidth_Bps * 10)
    )
    assert faster_link.name == plat.name
    acc = plat.accelerators[0]
    hbm = next(t for t in acc.tiers if t.name == acc.weights_tier)
    bigger_hbm = dataclasses.replace(
        plat,
        accelerators=(
            dataclasses.replace(
                acc,
                tiers=tuple(
                    dataclasses.replace(t, capacity_bytes=t.capacity_bytes + 1) if t is hbm else t for t in acc.tiers
                ),
            ),
        ),
    )
    pricier = dataclasses.replace(plat, cost_per_hour_usd=plat.cost_per_hour_usd + 0.01)
    hashes = {base.config_hash}
    for other in (faster_link, bigger_hbm, pricier):
        hashes.add(simulate(model, other, stream, m, seed=0).config_hash)
    assert len(hashes) == 4
    # a source string is not a number: same hash
    reworded = dataclasses.replace(plat, source=plat.source + " (reworded)")
    assert simulate(model, reworded, stream, m, seed=0).config_hash == base.config_hash
