"""Cache replacement policies for expert weights: LRU, LFU, static pinning (Fiddler) and Belady.

All of them derive from `CachePolicy` (see its contract). State is vectorised per flat key
``layer * n_experts + expert``; victim choice is one ``np.lexsort`` over the evictable residents,
so a policy costs a few microseconds per step and layer. Ties are broken by the flat key
(deterministic, no randomness needed).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from codesign.policies.base import AccessSequence, BoolArray, CachePolicy, IntArray
from codesign.policies.registry import REGISTRIES

__all__ = ["BeladyCache", "LFUCache", "LRUCache", "StaticCache"]


def _lowest(n: int, candidates: BoolArray, *keys: npt.NDArray[np.float64]) -> IntArray:
    """The ``n`` candidate flat keys with the smallest ``keys`` (last key is the primary sort key)."""
    flat = np.flatnonzero(candidates.ravel())
    order = np.lexsort(tuple(k[flat] for k in keys))
    return flat[order[:n]].astype(np.int64)


@REGISTRIES["cache"].register("lru", "least recently used expert is evicted")
class LRUCache(CachePolicy):
    """Least recently used. A use is an `access` (hit or miss) or an admission; residents set by
    `warm` count as never used (evicted first, lowest key first)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._last = np.full(self.n_layers * self.n_experts, -1.0)
        self._tick = 0.0

    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        self._tick += 1.0
        self._last[layer * self.n_experts + experts] = self._tick

    def _on_admit(self, layer: int, experts: IntArray, now: float, prefetch: bool) -> None:
        self._tick += 1.0
        self._last[layer * self.n_experts + experts] = self._tick

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        return _lowest(n, candidates, self._last)


@REGISTRIES["cache"].register("lfu", "least frequently used expert is evicted (ties: least recent)")
class LFUCache(CachePolicy):
    """Least frequently used, with "perfect" counts (uses are counted whether or not the expert was
    resident; they survive eviction). Ties go to the least recently used."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        size = self.n_layers * self.n_experts
        self._count = np.zeros(size)
        self._last = np.full(size, -1.0)
        self._tick = 0.0

    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        keys = layer * self.n_experts + experts
        self._count[keys] += 1.0
        self._tick += 1.0
        self._last[keys] = self._tick

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        return _lowest(n, candidates, self._last, self._count)


@REGISTRIES["cache"].register("static", "static pinning (Fiddler): the starting residents stay, nothing else is cached")
class StaticCache(CachePolicy):
    """Fiddler-style static placement: the experts made resident by `warm` (the mapping's start
    set, by default the most popular experts of the training data) and the pinned ones stay; a
    missing expert is never cached (it is streamed through a staging buffer or computed on the
    CPU, as the miss policy decides)."""

    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        return None

    def _admission_filter(self, layer: int, experts: IntArray, now: float, prefetch: bool) -> BoolArray:
        return np.zeros(experts.shape, dtype=bool)

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        return _lowest(n, candidates, np.zeros(candidates.size))


@REGISTRIES["cache"].register("belady", "Belady/MIN oracle: evicts the expert used farthest in the future")
class BeladyCache(CachePolicy):
    """Belady's MIN: evict the resident whose next use lies farthest in the future (upper bound of
    the hit rate for a demand-fetching cache). Needs `prepare` with the future `AccessSequence`.

    ``exact`` stays True while the accesses match the prepared sequence; on a divergence (the run
    differs from the recording) the policy looks up each key's next occurrence after the current
    cursor instead and sets ``exact = False``.
    """

    needs_future = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        size = self.n_layers * self.n_experts
        self._next = np.full(size, np.inf)  # next use (position in the sequence) of each key
        self._keys: IntArray = np.zeros(0, dtype=np.int64)
        self._next_pos: npt.NDArray[np.float64] = np.zeros(0)
        self._positions: list[IntArray] = []
        self.exact = True
        self.prepared = False

    def prepare(self, future: AccessSequence) -> None:
        keys = np.asarray(future.keys, dtype=np.int64)
        size = self.n_layers * self.n_experts
        if keys.size and (keys.min() < 0 or keys.max() >= size):
            raise ValueError(f"future access keys must be in [0, {size}), got [{keys.min()}, {keys.max()}]")
        n = keys.size
        # next occurrence of keys[i] after i (inf if none), vectorised over a stable sort by key
        order = np.lexsort((np.arange(n), keys))
        nxt = np.full(n, np.inf)
        same = keys[order[1:]] == keys[order[:-1]]
        nxt[order[:-1][same]] = order[1:][same]
        self._keys, self._next_pos = keys, nxt
        sorted_keys = keys[order]
        bounds = np.searchsorted(sorted_keys, np.arange(size + 1))
        self._positions = [order[bounds[k] : bounds[k + 1]] for k in range(size)]  # ascending positions
        first = np.full(size, np.inf)
        for k in range(size):
            if self._positions[k].size:
                first[k] = self._positions[k][0]
        self._next = first
        self.prepared = True

    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        if not self.prepared:
            raise RuntimeError("BeladyCache.access called before prepare(future)")
        keys = layer * self.n_experts + experts
        start = self.n_accessed
        end = start + keys.size
        if end <= self._keys.size and np.array_equal(self._keys[start:end], keys):
            self._next[keys] = self._next_pos[start:end]
            return
        self.exact = False
        for key in keys.tolist():
            pos = self._positions[key]
            i = int(np.searchsorted(pos, end))
            self._next[key] = float(pos[i]) if i < pos.size else np.inf

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        flat = np.flatnonzero(candidates.ravel())
        order = np.lexsort((flat, -self._next[flat]))
        return flat[order[:n]].astype(np.int64)
