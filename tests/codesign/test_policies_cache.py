"""Conformance suite of every registered cache policy, and behaviour of LRU, LFU, static, Belady."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.policies import REGISTRIES, CachePolicy
from codesign.policies.base import AccessSequence, slots_for_bytes
from codesign.policies.cache import BeladyCache
from workloads.trace import RoutingTrace

L, E = 3, 6


def _train_trace(seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    n = 200
    experts = np.stack([np.stack([rng.permutation(E)[:2] for _ in range(L)]) for _ in range(n)]).astype(np.int16)
    return RoutingTrace(
        experts=experts,
        request=np.repeat(np.arange(4), n // 4).astype(np.int32),
        position=np.tile(np.arange(n // 4), 4).astype(np.int32),
        phase=np.ones(n, np.uint8),
        meta={"n_experts": E, "top_k": 2, "source": "test"},
    )


def _calls(seq: list[tuple[int, list[int]]]) -> AccessSequence:
    keys = np.concatenate([layer * E + np.array(sorted(set(ex)), dtype=np.int64) for layer, ex in seq])
    lens = [len(set(ex)) for _, ex in seq]
    return AccessSequence(keys=keys, call_starts=np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64))


def _make(
    name: str, capacity: int, seq: list[tuple[int, list[int]]], pinned: np.ndarray | None = None, seed: int = 0
) -> CachePolicy:
    cache: CachePolicy = REGISTRIES["cache"].create(
        name, capacity=capacity, n_layers=L, n_experts=E, pinned=pinned, seed=seed
    )
    if cache.needs_training:
        cache.fit(_train_trace())
    if cache.needs_future:
        cache.prepare(_calls(seq))
    cache.warm(np.zeros((L, E), dtype=bool))
    return cache


def _play(cache: CachePolicy, seq: list[tuple[int, list[int]]]) -> tuple[int, list[object]]:
    """Demand-fetch play: access, then admit the misses; returns (hits, trace of decisions)."""
    hits = 0
    log: list[object] = []
    for t, (layer, ex) in enumerate(seq):
        e = np.array(sorted(set(ex)), dtype=np.int64)
        before = cache.resident.copy()
        h = cache.access(layer, e, float(t))
        assert np.array_equal(before, cache.resident), "access must not change residency"
        assert np.array_equal(h, before[layer, e])
        hits += int(h.sum())
        adm = cache.admit(layer, e[~h], float(t), protect=e)
        for lv, ev in adm.victims.tolist():
            assert before[lv, ev] and not cache.pinned[lv, ev], "victim must be an evictable resident"
            assert not (lv == layer and ev in e.tolist()), "protected expert evicted"
        assert cache.n_resident == int(cache.resident.sum()) <= cache.capacity
        assert cache.resident[cache.pinned].all()
        log.append((h.tolist(), adm.admitted.tolist(), adm.victims.tolist()))
    return hits, log


access_seqs = st.lists(
    st.tuples(st.integers(0, L - 1), st.lists(st.integers(0, E - 1), min_size=1, max_size=3)), min_size=1, max_size=40
)


@pytest.mark.parametrize("name", REGISTRIES["cache"].names())
class TestCacheConformance:
    @settings(max_examples=40, deadline=None)
    @given(seq=access_seqs, capacity=st.integers(0, 8))
    def test_capacity_pins_and_protection(self, name: str, seq: list[tuple[int, list[int]]], capacity: int) -> None:
        pinned = np.zeros((L, E), dtype=bool)
        if capacity >= 2:
            pinned[0, 0] = pinned[2, 5] = True
        cache = _make(name, capacity, seq, pinned)
        _play(cache, seq)

    @settings(max_examples=15, deadline=None)
    @given(seq=access_seqs)
    def test_deterministic(self, name: str, seq: list[tuple[int, list[int]]]) -> None:
        a = _play(_make(name, 4, seq, seed=3), seq)
        b = _play(_make(name, 4, seq, seed=3), seq)
        assert a == b

    def test_warm_over_capacity_is_refused(self, name: str) -> None:
        cache = _make(name, 2, [(0, [0])])
        with pytest.raises(ValueError, match="exceed the cache capacity of 2"):
            cache.warm(np.ones((L, E), dtype=bool))

    def test_bad_construction(self, name: str) -> None:
        with pytest.raises(ValueError, match="capacity"):
            REGISTRIES["cache"].create(name, capacity=-1, n_layers=L, n_experts=E)
        with pytest.raises(ValueError, match="pinned"):
            REGISTRIES["cache"].create(name, capacity=1, n_layers=L, n_experts=E, pinned=np.ones((L, E), bool))


def test_lru_evicts_least_recent() -> None:
    c = _make("lru", 2, [])
    for layer, e in [(0, 1), (0, 2), (0, 1)]:
        h = c.access(layer, np.array([e]), 0.0)
        c.admit(layer, np.array([e])[~h], 0.0)
    adm = c.admit(0, np.array([3]), 0.0)
    assert adm.victims.tolist() == [[0, 2]]  # 1 was used after 2


def test_lfu_evicts_least_frequent() -> None:
    c = _make("lfu", 2, [])
    for e in [1, 1, 1, 2, 2, 1]:
        h = c.access(0, np.array([e]), 0.0)
        c.admit(0, np.array([e])[~h], 0.0)
    h = c.access(0, np.array([3]), 0.0)
    adm = c.admit(0, np.array([3]), 0.0)
    assert adm.victims.tolist() == [[0, 2]]


def test_static_never_admits() -> None:
    c = _make("static", 3, [])
    c.warm(np.eye(L, E, dtype=bool))
    adm = c.admit(1, np.array([4]), 0.0)
    assert not adm.admitted.any() and adm.victims.size == 0
    assert c.resident.sum() == 3


def test_belady_matches_textbook_min() -> None:
    # single layer, capacity 2, sequence 1 2 3 1 2 4 1 2 (demand paging, every miss admitted):
    seq = [(0, [e]) for e in [1, 2, 3, 1, 2, 4, 1, 2]]
    hits_b, _ = _play(_make("belady", 2, seq), seq)
    hits_l, _ = _play(_make("lru", 2, seq), seq)
    # MIN: 3 evicts 2 (used after 1) | 1 hit | 2 evicts 3 (never used) | 4 evicts 2 (used after 1) | 1 hit | 2 miss
    assert hits_b == 2
    assert hits_l == 0
    assert _make("belady", 2, seq).needs_future


@settings(max_examples=60, deadline=None)
@given(seq=access_seqs, capacity=st.integers(1, 8))
def test_belady_never_below_online_policies(seq: list[tuple[int, list[int]]], capacity: int) -> None:
    hb, _ = _play(_make("belady", capacity, seq), seq)
    for name in REGISTRIES["cache"].names():
        if name == "belady":
            continue
        h, _ = _play(_make(name, capacity, seq), seq)
        assert hb >= h, f"Belady {hb} < {name} {h} on {seq}"


def test_belady_detects_divergence() -> None:
    seq = [(0, [1]), (0, [2])]
    c = _make("belady", 1, seq)
    _play(c, [(0, [3]), (0, [1])])
    assert isinstance(c, BeladyCache) and not c.exact


def test_slots_for_bytes() -> None:
    assert slots_for_bytes(10.5, 2.0) == 5
    assert slots_for_bytes(-1.0, 2.0) == 0
    with pytest.raises(ValueError):
        slots_for_bytes(1.0, 0.0)


@pytest.mark.parametrize("name", ["lru", "lfu", "belady", "static"])
@settings(max_examples=25, deadline=None)
@given(seq=access_seqs, capacity=st.integers(0, 9))
def test_per_layer_partition_holds(name: str, seq: list[tuple[int, list[int]]], capacity: int) -> None:
    cache: CachePolicy = REGISTRIES["cache"].create(name, capacity=capacity, n_layers=L, n_experts=E, per_layer=True)
    if cache.needs_future:
        cache.prepare(_calls(seq))
    cache.warm(np.ones((L, E), dtype=bool) if name == "static" else np.zeros((L, E), dtype=bool))
    assert cache.layer_capacity.sum() == capacity
    for t, (layer, ex) in enumerate(seq):
        e = np.array(sorted(set(ex)), dtype=np.int64)
        h = cache.access(layer, e, float(t))
        others = np.delete(cache.resident, layer, axis=0).copy()
        adm = cache.admit(layer, e[~h], float(t), protect=e)
        assert (adm.victims[:, 0] == layer).all(), "per-layer eviction stays in the layer"
        assert np.array_equal(np.delete(cache.resident, layer, axis=0), others)
        assert (cache.resident.sum(axis=1) <= cache.layer_capacity).all()


def test_per_layer_lru_isolates_layers() -> None:
    def make(per_layer: bool) -> CachePolicy:
        c: CachePolicy = REGISTRIES["cache"].create("lru", capacity=4, n_layers=2, n_experts=E, per_layer=per_layer)
        c.warm(np.zeros((2, E), dtype=bool))
        return c

    fits = [(0, [1, 2]), (1, [3, 4])] * 5
    assert _play(make(True), fits)[0] == 16  # every call after the first two hits
    # layer 0 needs 3 experts (5 distinct per cycle > 4 slots): in a global LRU layer 0's misses evict
    # layer 1's experts; per-layer slots (2 + 2) keep layer 1's pair and 2 of layer 0's three resident
    thrash = [(0, [1, 2, 3]), (1, [3, 4])] * 5
    assert _play(make(True), thrash)[0] == 16
    assert _play(make(False), thrash)[0] < 16
    pinned = np.zeros((L, E), dtype=bool)
    pinned[0, :2] = True
    with pytest.raises(ValueError, match="per-layer cache: 2 pinned experts of layer 0 exceed its 1 slots"):
        REGISTRIES["cache"].create("lru", capacity=3, n_layers=L, n_experts=E, pinned=pinned, per_layer=True)
