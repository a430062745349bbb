"""Mapping: argument validation, JSON round trip, stable hash, bind-time fit with the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codesign.mapping import BatchingSpec, CacheSpec, Mapping, MappingError
from codesign.policies import RoutingStats, UnknownPolicyError
from hwmodels import get_platform
from tests.codesign.sim_helpers import tiny_model
from workloads import get_model


@pytest.fixture(scope="module")
def mixtral():
    return get_model("mixtral-8x7b")


@pytest.fixture(scope="module")
def h100_host():
    return get_platform("h100-pcie5-host")


def test_defaults_and_round_trip() -> None:
    m = Mapping(
        cache=CacheSpec(policy="lfu", expert_fraction=0.25, options={}),
        prefetch="pregate",
        prefetch_options={"accuracy": 0.9},
        pinned=((1, 2), (0, 3)),
        batching=BatchingSpec(max_batch=8),
    )
    again = Mapping.from_json(m.to_json())
    assert again == m
    assert again.config_hash == m.config_hash
    assert m.pinned == ((0, 3), (1, 2))  # normalised order
    assert json.loads(m.to_json())["prefetch_options"] == {"accuracy": 0.9}


def test_hash_changes_with_any_field() -> None:
    base = Mapping()
    assert base.config_hash == Mapping().config_hash
    assert base.with_(miss="cpu").config_hash != base.config_hash
    assert base.with_(cache=CacheSpec(expert_fraction=0.5)).config_hash != base.config_hash
    assert base.with_(ep_execution="context-coherent").config_hash != base.config_hash
    assert len(base.config_hash) == 16


def test_ep_execution_round_trip() -> None:
    assert Mapping().ep_execution == "classic"
    m = Mapping(ep_execution="context-coherent")
    assert json.loads(m.to_json())["ep_execution"] == "context-coherent"
    again = Mapping.from_json(m.to_json())
    assert again == m and again.ep_execution == "context-coherent"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cache": CacheSpec(policy="lru")} | {"n_devices": 0}, "n_devices must be an int > 0"),
        ({"kv_fraction": 1.5}, "kv_fraction must be in"),
        ({"kv_fraction": 0.0}, "kv_fraction must be > 0"),
        ({"train_fraction": 1.0}, "train_fraction must be < 1"),
        ({"pinned": ((0, -1),)}, r"pinned\[0\]"),
        ({"pinned": ((0, 1), (0, 1))}, "twice"),
        ({"initial": "random"}, "initial must be"),
        ({"resident": ((0, 1),)}, "set initial='listed'"),
        ({"initial": "listed", "resident": ((0, 1), (0, 1))}, "resident lists an expert twice"),
        ({"staging_experts": -1}, "staging_experts"),
        ({"prefetch_options": {"bad key": 1}}, "identifier"),
        ({"miss_options": {"x": [1]}}, "bool, int, float or str"),
        ({"ep_execution": "coherent"}, "ep_execution must be 'classic' or 'context-coherent', got 'coherent'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MappingError, match=match):
        Mapping(**kwargs)  # type: ignore[arg-type]


def test_bad_cache_and_batching() -> None:
    with pytest.raises(MappingError, match="expert_fraction must be in"):
        CacheSpec(expert_fraction=1.2)
    with pytest.raises(MappingError, match="max_batch must be an int > 0"):
        BatchingSpec(max_batch=0)


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("prefetch", "magic", "prefetch"),
        ("miss", "gpu", "miss"),
        ("placement", "random", "placement"),
    ],
)
def test_unknown_policy_lists_valid(field: str, value: str, kind: str) -> None:
    with pytest.raises(UnknownPolicyError, match=f"unknown {kind} policy {value!r}; valid: .+"):
        Mapping(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(UnknownPolicyError, match=r"valid: .*lru"):
        CacheSpec(policy="arc")
    with pytest.raises(UnknownPolicyError, match=r"valid: .*fifo"):
        BatchingSpec(scheduler="lifo")


def test_from_dict_unknown_key() -> None:
    with pytest.raises(MappingError, match=r"unknown key\(s\) \['cache_size'\]; valid: "):
        Mapping.from_dict({"cache_size": 3})
    with pytest.raises(MappingError, match=r"mapping\.cache: unknown key"):
        Mapping.from_dict({"cache": {"size": 3}})
    with pytest.raises(MappingError, match="malformed"):
        Mapping.from_json("{not json")


def test_all_in_hbm_bf16_mixtral_does_not_fit_one_h100(mixtral, h100_host) -> None:
    with pytest.raises(MappingError) as info:
        Mapping().bind(mixtral, h100_host, min_kv_tokens=100)
    msg = str(info.value)
    assert "capacity 80.00 GB" in msg and "256 resident experts" in msg and "352.3 MB" in msg


def test_quarter_offload_fits_and_fills(mixtral, h100_host) -> None:
    b = Mapping(cache=CacheSpec(expert_fraction=0.25)).bind(mixtral, h100_host, min_kv_tokens=4096)
    assert b.slots == (64,) and b.homed == (256,) and b.offloaded
    assert b.initial.sum() == 64
    # spread fill (no stats): two experts of every one of the 32 layers
    assert (b.initial[0].sum(axis=1) == 2).all()
    assert b.kv_capacity_tokens[0] > 4096
    mem = b.memory[0]
    used = mem["non_expert_bytes"] + mem["expert_cache_bytes"] + mem["staging_bytes"] + mem["kv_cache_bytes"]
    assert used == pytest.approx(mem["capacity_bytes"])


def test_popular_fill_uses_stats(mixtral, h100_host) -> None:
    load = np.zeros((32, 8))
    load[:, 5] = 10.0
    load[3, :] = 100.0
    stats = RoutingStats(load=load, affinity=np.zeros((31, 8, 8)), n_tokens=1)
    b = Mapping(cache=CacheSpec(capacity_experts=8)).bind(mixtral, h100_host, stats=stats)
    assert b.initial[0, 3].all()  # the hot layer's 8 experts
    b2 = Mapping(cache=CacheSpec(capacity_experts=40)).bind(mixtral, h100_host, stats=stats)
    assert b2.initial[0, :, 5].all() and b2.initial[0].sum() == 40


def test_kv_that_does_not_fit_is_refused(mixtral, h100_host) -> None:
    m = Mapping(cache=CacheSpec(expert_fraction=0.25))
    with pytest.raises(MappingError, match=r"KV cache of the largest request \(10000000 tokens"):
        m.bind(mixtral, h100_host, min_kv_tokens=10_000_000)
    # the check made before the requests are known (1 token) names no request: the weights leave no room
    with pytest.raises(MappingError, match=r"leaves -\d+\.\d+ GB; the KV cache of one token \(") as exc:
        Mapping(cache=CacheSpec(expert_fraction=1.0)).bind(mixtral, h100_host, min_kv_tokens=1)
    assert "largest request" not in str(exc.value)


def test_offload_without_host_is_refused(mixtral) -> None:
    cpu = get_platform("cpu-server")
    with pytest.raises(MappingError, match="no host memory to offload"):
        Mapping(cache=CacheSpec(expert_fraction=0.5)).bind(mixtral, cpu)


def test_pinned_checks(mixtral, h100_host) -> None:
    with pytest.raises(MappingError, match=r"pinned expert \(40, 0\) does not exist"):
        Mapping(cache=CacheSpec(expert_fraction=0.25), pinned=((40, 0),)).bind(mixtral, h100_host)
    pins = tuple((layer, 0) for layer in range(32))
    with pytest.raises(MappingError, match="32 pinned experts exceed its 16 cache slots"):
        Mapping(cache=CacheSpec(capacity_experts=16), pinned=pins).bind(mixtral, h100_host)
    b = Mapping(cache=CacheSpec(capacity_experts=40), pinned=pins).bind(mixtral, h100_host)
    assert b.pinned[0, :, 0].all() and b.initial[0, :, 0].all()


def test_expert_parallel_placement_and_devices() -> None:
    model = get_model("deepseek-v2-lite")
    dgx = get_platform("dgx-h100")
    b = Mapping().bind(model, dgx)
    assert b.n_devices == dgx.n_accelerators
    counts = np.stack([(b.expert_home == d).sum(axis=1) for d in range(b.n_devices)])
    assert (counts == model.n_experts // b.n_devices).all()
    assert not b.offloaded
    with pytest.raises(MappingError, match="exceeds the 8 accelerators"):
        Mapping(n_devices=9).bind(model, dgx)


def test_unknown_cache_tier(mixtral, h100_host) -> None:
    with pytest.raises(MappingError, match=r"no memory tier 'sram'; tiers: \['l2', 'hbm'\]"):
        Mapping(cache=CacheSpec(expert_fraction=0.25, tier="sram")).bind(mixtral, h100_host)


def test_listed_residents(mixtral, h100_host) -> None:
    m = Mapping(cache=CacheSpec(capacity_experts=3), initial="listed", resident=((5, 1), (0, 7)), pinned=((2, 2),))
    assert Mapping.from_json(m.to_json()) == m
    b = m.bind(mixtral, h100_host)
    assert sorted(map(tuple, np.argwhere(b.initial[0]).tolist())) == [(0, 7), (2, 2), (5, 1)]
    with pytest.raises(MappingError, match="3 listed resident and pinned experts exceed its 2 cache slots"):
        m.with_(cache=CacheSpec(capacity_experts=2)).bind(mixtral, h100_host)
    with pytest.raises(MappingError, match=r"resident expert \(40, 1\) does not exist"):
        m.with_(resident=((40, 1),)).bind(mixtral, h100_host)


def test_near_tier_checks(mixtral) -> None:
    sn = get_platform("sn40l-node")
    ok = Mapping(n_devices=1, near=CacheSpec(tier="sram", capacity_experts=1))
    assert Mapping.from_json(ok.to_json()) == ok
    b = ok.bind(get_model("deepseek-v2-lite"), sn)
    assert b.near_tier == "sram" and b.near_slots == (1,)
    with pytest.raises(MappingError, match="near must be a CacheSpec naming its tier"):
        Mapping(near=CacheSpec(capacity_experts=1))
    dsv2 = get_model("deepseek-v2-lite")  # 17.3 MB experts: 31 fit the 545 MB SRAM
    with pytest.raises(MappingError, match=r"near tier 'sram' of device 0 \(sn40l\) holds 545\.3 MB; 40 experts"):
        ok.with_(near=CacheSpec(tier="sram", capacity_experts=40)).bind(dsv2, sn)
    with pytest.raises(MappingError, match=r"near\.tier 'ddr' is slower than the cache tier 'hbm'"):
        ok.with_(near=CacheSpec(tier="ddr", capacity_experts=1)).bind(dsv2, sn)
    with pytest.raises(MappingError, match="FPGA"):
        ok.with_(near=CacheSpec(tier="onchip", capacity_experts=1)).bind(tiny_model(), get_platform("zcu104-board"))
