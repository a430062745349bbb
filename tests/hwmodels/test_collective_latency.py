"""Per-call latency of collectives (issue 8): a link's ``collective_latency_s`` (or a caller's
``call_latency_s``) makes small all-to-alls and all-reduces latency-bound; the TOML field, its errors
and its JSON round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hwmodels import CostModel, get_link, get_platform
from hwmodels.devices import PresetError, load_link_file
from hwmodels.serialize import hardware_numbers, link_from_dict, link_to_dict

LINKS = Path(__file__).resolve().parents[2] / "hwmodels" / "presets" / "links"


def _platform_with(latency_s: float) -> tuple[CostModel, CostModel, object]:
    plat = get_platform("dgx-h100")
    link = dataclasses.replace(plat.peer_link, collective_latency_s=latency_s)
    plat = dataclasses.replace(plat, peer_link=link)
    return CostModel(plat), CostModel(plat, fidelity="roofline"), link


def test_call_latency_is_added_once_per_collective_and_binds_small_messages() -> None:
    base, _, link0 = _platform_with(0.0)
    cm, roof, link = _platform_with(20e-6)
    for nbytes in (1024.0, 64e6):
        a0 = base.all_to_all(link0, nbytes, 8).total_s
        a1 = cm.all_to_all(link, nbytes, 8).total_s
        assert a1 - a0 == pytest.approx(20e-6)
        r0 = base.all_reduce(link0, nbytes, 8).total_s
        r1 = cm.all_reduce(link, nbytes, 8).total_s
        assert r1 - r0 == pytest.approx(20e-6)
    small = cm.all_to_all(link, 1024.0, 8).total_s
    assert small > 20e-6 and 20e-6 / small > 0.5  # latency-bound
    big = cm.all_to_all(link, 64e6, 8).total_s
    assert 20e-6 / big < 0.2
    # a caller's (serving stack's) value replaces the link's; zero bytes or one device cost nothing
    assert cm.all_to_all(link, 1024.0, 8, call_latency_s=0.0).total_s == pytest.approx(
        base.all_to_all(link0, 1024.0, 8).total_s
    )
    assert cm.all_to_all(link, 0.0, 8).total_s == 0.0
    assert cm.all_reduce(link, 1024.0, 1).total_s == 0.0
    # the roofline stays a lower bound without it
    assert roof.all_to_all(link, 1024.0, 8).total_s == roof.all_to_all(link0, 1024.0, 8).total_s
    with pytest.raises(ValueError, match="call_latency_s must be finite and >= 0"):
        cm.all_to_all(link, 1024.0, 8, call_latency_s=-1.0)


def test_collective_latency_from_a_link_file(tmp_path: Path) -> None:
    text = (LINKS / "ib-cx7-400g.toml").read_text(encoding="utf-8")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("collective_latency"))
    path = tmp_path / "link.toml"
    path.write_text(text + '\ncollective_latency = { value = "25 us", source = "test" }\n', encoding="utf-8")
    link = load_link_file(path)
    assert link.collective_latency_s == pytest.approx(25e-6)
    again = link_from_dict(link_to_dict(link))
    assert again == link
    other = dataclasses.replace(link, collective_latency_s=30e-6)
    assert hardware_numbers(link_to_dict(other)) != hardware_numbers(link_to_dict(link))
    # unset: absent from the description (older hashes unchanged)
    assert "collective_latency_s" not in link_to_dict(dataclasses.replace(link, collective_latency_s=0.0))
    path.write_text(text + '\ncollective_latency = { value = "25 GB", source = "test" }\n', encoding="utf-8")
    with pytest.raises(PresetError, match="field 'collective_latency'") as info:
        load_link_file(path)
    assert "\n" not in str(info.value)
    path.write_text(text + '\ncollective_latency = { value = "-1 us", source = "test" }\n', encoding="utf-8")
    with pytest.raises(PresetError, match="must be >= 0"):
        load_link_file(path)


def test_link_refuses_a_negative_collective_latency() -> None:
    with pytest.raises(ValueError, match="collective_latency_s must be finite and >= 0"):
        dataclasses.replace(get_link("nvlink4"), collective_latency_s=-1e-6)


def test_all_to_all_across_nodes_runs_both_paths_at_once() -> None:
    nvl, nic = get_link("nvlink-h800"), get_link("ib-cx7-400g")
    plat = dataclasses.replace(get_platform("dgx-h100"), peer_link=nvl)
    cm, roof = CostModel(plat), CostModel(plat, fidelity="roofline")
    nbytes = 7.6e6
    # one node: the plain all-to-all over the node's link
    assert cm.all_to_all_nodes(nvl, nic, nbytes, 8, 8).total_s == cm.all_to_all(nvl, nbytes, 8).total_s
    # roofline, 4 nodes of 8: the NIC carries 24/32 of the bytes, NVLink 7/32, concurrently
    t = roof.all_to_all_nodes(nvl, nic, nbytes, 32, 8).total_s
    nic_s = nbytes * 24 / 32 / nic.bandwidth_Bps
    assert t == pytest.approx(max(nvl.latency_s, nic.latency_s) + nic_s)
    assert nic_s > nbytes * 7 / 32 / nvl.bandwidth_Bps
    # more nodes -> more of the bytes cross the NIC -> slower; the call latency is paid once: the
    # scale-out link's own by default, a caller's (a stack's) in its place
    times = [cm.all_to_all_nodes(nvl, nic, nbytes, n, 8).total_s for n in (16, 32, 64, 256)]
    assert times == sorted(times)
    extra = cm.all_to_all_nodes(nvl, nic, nbytes, 16, 8, call_latency_s=17e-6).total_s - times[0]
    assert extra == pytest.approx(17e-6)
    nic5 = dataclasses.replace(nic, collective_latency_s=5e-6)
    own = cm.all_to_all_nodes(nvl, nic5, nbytes, 16, 8).total_s - times[0]
    assert own == pytest.approx(5e-6)
    assert cm.all_to_all_nodes(nvl, nic5, nbytes, 16, 8, call_latency_s=17e-6).total_s - times[0] == pytest.approx(
        17e-6
    )
    # energy: each path's bytes at its link's energy per byte
    e = roof.all_to_all_nodes(nvl, nic, nbytes, 16, 8).energy_J
    assert e == pytest.approx(16 * nbytes * (7 / 16 * nvl.energy_J_per_byte + 8 / 16 * nic.energy_J_per_byte))
    assert cm.all_to_all_nodes(nvl, nic, 0.0, 16, 8).total_s == 0.0
    with pytest.raises(ValueError, match=r"devices_per_node \(6\) must divide n_devices \(16\)"):
        cm.all_to_all_nodes(nvl, nic, nbytes, 16, 6)
