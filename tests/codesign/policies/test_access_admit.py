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
