"""`CachePolicy.access_admit_list` (the engine's fused call for a demand-fetching layer) has exactly
the effects and answers of `access_list` followed by ``admit_list(misses, protect=experts)``.

Two caches built alike replay the same random call sequence: one through the fused call, the
other through the two calls; prefetch admissions and plain evictions are interleaved (applied to
both). Hits, admissions, residency and every later victim must agree. `LRUCache` overrides the
fused call (its own code path); LFU, Belady and static run the base-class default.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.policies import REGISTRIES
from codesign.policies.base import AccessSequence, CachePolicy
from codesign.policies.cache import LRUCache

L, E = 3, 6

ops = st.lists(
    st.tuples(
        st.sampled_from(["demand", "demand", "demand", "prefetch", "evict"]),
        st.integers(0, L - 1),
        st.lists(st.integers(0, E - 1), min_size=1, max_size=5, unique=True),
    ),
    min_size=1,
    max_size=40,
)


def _build(name: str, capacity: int, per_layer: bool, pinned: np.ndarray, future: list[int]) -> CachePolicy:
    cache = REGISTRIES["cache"].create(
        name, capacity=capacity, n_layers=L, n_experts=E, pinned=pinned, per_layer=per_layer
    )
    if cache.needs_future:
        cache.prepare(AccessSequence(keys=np.asarray(future, dtype=np.int64), call_starts=np.zeros(0, dtype=np.int64)))
    start = np.zeros((L, E), dtype=bool)
    start[1, :2] = True
    start[0, 3] = True
    cache.warm(start)
    return cache


@pytest.mark.parametrize("name", ["lru", "lfu", "belady", "static"])
@settings(max_examples=80, deadline=None)
@given(seq=ops, capacity=st.integers(5, 10), per_layer=st.booleans(), pin=st.booleans())
def test_fused_call_equals_the_two_calls(name: str, seq: list, capacity: int, per_layer: bool, pin: bool) -> None:
    pinned = np.zeros((L, E), dtype=bool)
    if pin:
        pinned[0, 0] = pinned[2, 5] = True
    future = [layer * E + e for kind, layer, ex in seq if kind == "demand" for e in sorted(ex)]
    fused = _build(name, capacity, per_layer, pinned, future)
    plain = _build(name, capacity, per_layer, pinned, future)
    for kind, layer, ex in seq:
        ex = sorted(ex)
        if kind == "demand":
            hits, admitted = fused.access_admit_list(layer, ex, 0.0)
            want_hits = plain.access_list(layer, ex, 0.0)
            miss = [e for e, h in zip(ex, want_hits, strict=True) if not h]
            want_adm = plain.admit_list(layer, miss, 0.0, protect=ex)[0] if miss else []
            assert (hits, admitted) == (want_hits, want_adm)
        elif kind == "prefetch":
            target = (layer + 1) % L
            assert fused.admit_list(target, ex, 0.0, prefetch=True) == plain.admit_list(target, ex, 0.0, prefetch=True)
        else:
            assert np.array_equal(fused.evict(2, 0.0, layer=layer), plain.evict(2, 0.0, layer=layer))
        assert np.array_equal(fused.resident, plain.resident)
        assert fused.n_resident == plain.n_resident
        assert fused.n_accessed == plain.n_accessed
    # the victim order left behind is the same: evict everything evictable, one at a time
    for _ in range(capacity):
        assert np.array_equal(fused.evict(1, 0.0), plain.evict(1, 0.0))


def test_lru_has_its_own_fused_call() -> None:
    """The LRU override is the code path the engine takes (not the base-class default)."""
    assert LRUCache.access_admit_list is not CachePolicy.access_admit_list
    cache = REGISTRIES["cache"].create("lru", capacity=2, n_layers=1, n_experts=4)
    cache.warm(np.array([[True, True, False, False]]))
    # 0 hits; 2 and 3 miss; 1 is the only victim (0 is protected): 2 is cached, 3 is not
    assert cache.access_admit_list(0, [0, 2, 3], 0.0) == ([True, False, False], [True, False])
    assert cache.resident.tolist() == [[True, False, True, False]]


steps = st.lists(
    st.tuples(
        st.sampled_from(["step", "step", "step", "demand", "prefetch", "evict"]),
        st.lists(st.integers(0, L * E - 1), min_size=1, max_size=L * E, unique=True),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("name", ["lru", "lfu", "belady", "static"])
@settings(max_examples=120, deadline=None)
@given(seq=steps, capacity=st.integers(5, 12), per_layer=st.booleans(), pin=st.booleans())
def test_step_call_equals_the_fused_calls_layer_by_layer(
    name: str, seq: list, capacity: int, per_layer: bool, pin: bool
) -> None:
    """`access_admit_step` (a whole step's keys, ascending) has the effects and answers of one
    `access_admit_list` per layer in layer order; LRU's vectorised pass (one global order, no call
    larger than the evictable slots) and its fallback included, with demand calls, prefetches and
    evictions in between (they switch LRU between its array and ordered-dict forms)."""
    pinned = np.zeros((L, E), dtype=bool)
    if pin:
        pinned[0, 0] = pinned[2, 5] = True
    future = sorted({k for _, keys in seq for k in keys})  # Belady's oracle: any fixed sequence for both
    stepped = _build(name, capacity, per_layer, pinned, future)
    plain = _build(name, capacity, per_layer, pinned, future)
    for kind, keys in seq:
        keys = sorted(keys)
        layer, ex = keys[0] // E, sorted({k % E for k in keys})
        if kind == "step":
            hits, admitted = stepped.access_admit_step(np.asarray(keys, dtype=np.int64), 0.0)
            want_h: list[bool] = []
            want_a: list[bool] = []
            for lay in sorted({k // E for k in keys}):
                h, a = plain.access_admit_list(lay, [k - lay * E for k in keys if k // E == lay], 0.0)
                want_h += h
                it = iter(a)
                want_a += [False if hit else next(it) for hit in h]
            assert (hits.tolist(), admitted.tolist()) == (want_h, want_a)
        elif kind == "demand":
            assert stepped.access_admit_list(layer, ex, 0.0) == plain.access_admit_list(layer, ex, 0.0)
        elif kind == "prefetch":
            assert stepped.admit_list(layer, ex, 0.0, prefetch=True) == plain.admit_list(layer, ex, 0.0, prefetch=True)
        else:
            assert np.array_equal(stepped.evict(2, 0.0, layer=layer), plain.evict(2, 0.0, layer=layer))
        assert np.array_equal(stepped.resident, plain.resident)
        assert stepped.n_resident == plain.n_resident == int(plain.resident.sum())
        assert stepped.n_accessed == plain.n_accessed
        assert stepped._free_for(layer) == plain._free_for(layer)
    for _ in range(capacity):  # the victim order left behind is the same
        assert np.array_equal(stepped.evict(1, 0.0), plain.evict(1, 0.0))


def test_lru_step_is_vectorised_when_it_can_be() -> None:
    """The LRU step pass is the one the engine takes: after a step the victim order is held in its
    array form (not rebuilt call by call), and a hand-worked step gives LRU's answer: capacity 3,
    residents 0 and 1 (never used), the step uses layer 0's 1 and 2, then layer 1's 0 and 1."""
    assert LRUCache.access_admit_step is not CachePolicy.access_admit_step
    cache = REGISTRIES["cache"].create("lru", capacity=3, n_layers=2, n_experts=4)
    cache.warm(np.array([[True, True, False, False], [False, False, False, False]]))
    hits, admitted = cache.access_admit_step(np.array([1, 2, 4, 5]), 0.0)
    assert isinstance(cache, LRUCache) and cache._ord is not None
    # layer 0: 1 hits, 2 is admitted in place of 0 (the oldest); layer 1: 4 evicts 1, 5 evicts 2
    assert hits.tolist() == [True, False, False, False]
    assert admitted.tolist() == [False, True, True, True]
    assert np.flatnonzero(cache.resident.ravel()).tolist() == [2, 4, 5]
    assert cache.evict(1, 0.0).tolist() == [[0, 2]]  # back to the ordered dict: 2 is the oldest now


@settings(max_examples=60, deadline=None)
@given(
    layers=st.lists(st.integers(0, 5), min_size=1, max_size=40),
    seed=st.integers(0, 2**16),
    limit=st.sampled_from([0, 1 << 22]),
)
def test_crossed_counts_earlier_layers_with_newer_use(layers: list[int], seed: int, limit: int) -> None:
    """LRU's step pass counts, per key, the keys of earlier layers used after it (every way of
    counting: one matrix, a table by (layer, rank), and layer by layer when both would be large)."""
    from codesign.policies.cache import _crossed

    layer = np.sort(np.asarray(layers, dtype=np.int64))
    s = np.random.default_rng(seed).permutation(layer.size).astype(np.int64) * 3
    which = np.flatnonzero(np.random.default_rng(seed + 1).random(layer.size) < 0.6)
    want = [sum(1 for j in range(layer.size) if layer[j] < layer[i] and s[j] > s[i]) for i in which]
    assert _crossed(s, layer, which, limit=limit).tolist() == want
    if limit and which.size:  # the table too, whichever the size rule picks
        from codesign.policies import cache as cache_mod

        all_rows = np.arange(layer.size)
        want_all = [sum(1 for j in range(layer.size) if layer[j] < layer[i] and s[j] > s[i]) for i in all_rows]
        assert cache_mod._crossed(s, layer, all_rows, limit=limit).tolist() == want_all
