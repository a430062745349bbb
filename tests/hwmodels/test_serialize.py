"""JSON round trip of platforms and the numbers-only view used by design hashes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hwmodels import get_platform
from hwmodels.devices import platform_preset_names
from hwmodels.serialize import hardware_numbers, platform_from_dict, platform_to_dict


@pytest.mark.parametrize("name", platform_preset_names())
def test_every_platform_preset_round_trips_through_json(name):
    plat = get_platform(name)
    back = platform_from_dict(json.loads(json.dumps(platform_to_dict(plat))))
    assert back == plat


def test_numbers_view_drops_sources_but_keeps_every_number():
    plat = get_platform("h100-pcie5-host")
    d = hardware_numbers(platform_to_dict(plat))
    assert "source" not in d and "source" not in d["accelerators"][0]
    other = dataclasses.replace(plat, cost_per_hour_usd=plat.cost_per_hour_usd + 1)
    assert hardware_numbers(platform_to_dict(other)) != d


def test_a_broken_platform_dict_names_the_part():
    d = platform_to_dict(get_platform("dgx-h100"))
    del d["accelerators"][0]["tiers"]
    with pytest.raises(ValueError, match=r"platform.accelerators\[0\]"):
        platform_from_dict(d)
    with pytest.raises(ValueError, match="missing field"):
        platform_from_dict({"name": "x"})
