"""Cache replacement policies for expert weights: LRU, LFU, static pinning (Fiddler) and Belady.

All of them derive from `CachePolicy` (see its contract). LRU, LFU and Belady are incremental
(`IncrementalCachePolicy`): LRU keeps an ordered dict of the evictable residents, LFU and Belady a
heap with lazy deletion, so a use or an eviction costs O(1) or O(log n), never a scan over every
key. Ties are broken by the flat key ``layer * n_experts + expert`` (deterministic, no randomness
needed). Static never admits (a victim, on a plain `evict`, is the lowest evictable key).
"""

from __future__ import annotations

import heapq
from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from codesign.policies.base import AccessSequence, BoolArray, CachePolicy, IncrementalCachePolicy, IntArray
from codesign.policies.registry import REGISTRIES

__all__ = ["BeladyCache", "LFUCache", "LRUCache", "StaticCache"]


def _lowest(n: int, candidates: BoolArray, *keys: npt.NDArray[np.float64]) -> IntArray:
    """The ``n`` candidate flat keys with the smallest ``keys`` (last key is the primary sort key)."""
    flat = np.flatnonzero(candidates.ravel())
    order = np.lexsort(tuple(k[flat] for k in keys))
    return flat[order[:n]].astype(np.int64)


def _crossed(
    s: npt.NDArray[np.int64], layer: npt.NDArray[np.int64], which: npt.NDArray[np.int64], limit: int = 1 << 22
) -> npt.NDArray[np.int64]:
    """For the entries ``which`` of ``(s, layer)`` (``layer`` non-decreasing, ``s`` distinct):
    ``#{j : layer[j] < layer[i], s[j] > s[i]}``. The cheaper of a comparison matrix ``[which,
    entries]`` and a table of counts by (layer, rank of s) cumulated both ways; one comparison per
    layer holding such entries when both would exceed ``limit`` cells."""
    m = int(s.size)
    runs = np.flatnonzero(np.concatenate(([True], layer[1:] != layer[:-1])))
    n_runs = int(runs.size)
    run_w = np.searchsorted(runs, which, side="right") - 1  # the layer run of each entry of ``which``
    cells_matrix = int(which.size) * m
    cells_table = 2 * n_runs * (m + 1)
    if min(cells_matrix, cells_table) <= limit:
        if cells_matrix <= cells_table:
            earlier = np.arange(m)[None, :] < runs[run_w][:, None]
            return np.count_nonzero(earlier & (s[None, :] > s[which][:, None]), axis=1).astype(np.int64)
        rank = np.empty(m, dtype=np.int64)
        rank[np.argsort(s, kind="stable")] = np.arange(m, dtype=np.int64)
        table = np.zeros((n_runs, m + 1), dtype=np.int32)
        table[np.repeat(np.arange(n_runs), np.diff(np.append(runs, m))), rank] = 1
        newer = np.cumsum(table[:, ::-1], axis=1, dtype=np.int32)[:, ::-1]  # [run, r]: its entries ranked >= r
        before = np.cumsum(newer, axis=0, dtype=np.int32) - newer  # the same over the runs before
        return before[run_w, rank[which] + 1].astype(np.int64)
    out = np.empty(which.size, dtype=np.int64)
    start = runs[run_w]
    s_w = s[which]
    cuts = np.flatnonzero(np.concatenate(([True], start[1:] != start[:-1])))
    for a, b in zip(cuts.tolist(), [*cuts[1:].tolist(), int(which.size)], strict=True):
        out[a:b] = np.count_nonzero(s[None, : int(start[a])] > s_w[a:b, None], axis=1)
    return out


@REGISTRIES["cache"].register("lru", "least recently used expert is evicted")
class LRUCache(IncrementalCachePolicy):
    """Least recently used. A use is an `access` (hit or miss) or an admission; residents set by
    `warm` count as never used (evicted first, lowest key first); ties (experts used in the same
    call) go to the lowest key.

    Incremental: an ordered dict of the evictable residents in victim order (per layer when
    ``per_layer``), least recent first; a use moves a key to the end, O(1)."""

    time_independent = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tick = 0
        n_orders = self.n_layers if self.per_layer else 1
        # key -> tick of its last use; iteration order = (tick, key) ascending
        self._orders: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(n_orders)]
        # the array form of `access_admit_step` (one global order only), in place of ``_orders[0]``:
        # the victim order as an array of flat keys (least recent first) and each key's index in it
        # (-1: not in it); ``None`` while the ordered dict is the current form (`_dict_mode`)
        self._ord: npt.NDArray[np.int64] | None = None
        self._pos: npt.NDArray[np.int64] = np.full(self.n_layers * self.n_experts, -1, dtype=np.int64)
        self._pin_flat: npt.NDArray[np.bool_] = self.pinned.reshape(-1).copy()  # fixed at construction
        self._n_pinned = int(self._pin_flat.sum())
        self._rebuild()

    def _order(self, key: int) -> OrderedDict[int, int]:
        return self._orders[key // self.n_experts if self.per_layer else 0]

    def _dict_mode(self) -> None:
        """Make the ordered dict the current form of the victim order again (after steps of
        `access_admit_step`): the array's keys in its order, each with its own tick."""
        order = self._ord
        if order is None:
            return
        self._ord = None
        self._pos[order] = -1
        keys = order.tolist()
        od = self._orders[0]
        od.clear()
        for i, k in enumerate(keys):
            od[k] = self._tick + 1 + i
        self._tick += len(keys) + 1

    def _rebuild(self) -> None:
        if self._ord is not None:
            self._pos[self._ord] = -1
            self._ord = None
        for od in self._orders:
            od.clear()
        if not self.per_layer:  # one order: ascending keys, built in one call
            self._orders[0].update(dict.fromkeys(self._evictable(), -1))
            return
        for k in self._evictable():
            self._order(k)[k] = -1

    def _touch(self, layer: int, experts: list[int], hits: list[bool]) -> None:
        self._dict_mode()
        self._tick += 1
        tick = self._tick
        od = self._orders[layer if self.per_layer else 0]
        base = layer * self.n_experts
        for e in sorted(experts):
            k = base + e
            if k in od:
                od[k] = tick
                od.move_to_end(k)

    def _inserted(self, keys: list[int], prefetch: bool) -> None:
        self._dict_mode()
        self._tick += 1
        tick = self._tick
        if not self.per_layer:
            od = self._orders[0]
            for k in keys:
                od[k] = tick
            return
        for k in keys:
            self._order(k)[k] = tick

    def _removed(self, keys: list[int]) -> None:
        self._dict_mode()
        if not self.per_layer:
            od = self._orders[0]
            for k in keys:
                del od[k]
            return
        for k in keys:
            del self._order(k)[k]

    def access_admit_list(self, layer: int, experts: list[int], now: float) -> tuple[list[bool], list[bool]]:
        """Fused `CachePolicy.access_admit_list` (the same effects and answers, no intermediate
        calls). The experts of ``layer`` that must not be evicted (``protect=experts``) are exactly
        the residents touched by this call: the evictable ones carry the newest tick, at the end of
        the victim order, so victims are taken from the front up to the first key of this tick."""
        if self._filters:  # a subclass with an admission filter: the generic two calls
            return super().access_admit_list(layer, experts, now)
        self._dict_mode()
        res = self._res
        base = layer * self.n_experts
        per_layer = self.per_layer
        od = self._orders[layer if per_layer else 0]
        self._tick += 1
        tick = self._tick
        hits: list[bool] = []
        miss: list[int] = []
        for e in experts:
            k = base + e
            if res[k] == 1:
                hits.append(True)
                if k in od:  # evictable (pinned keys are not in the order)
                    od[k] = tick
                    od.move_to_end(k)
            else:
                hits.append(False)
                miss.append(k)
        self.n_accessed += len(experts)
        if not miss:
            return hits, []
        n_miss = len(miss)
        if per_layer:
            free = self._layer_cap[layer] - self._layer_n[layer]
        else:
            free = self.capacity - self._n_resident
        need = n_miss - free
        if need > 0:
            victims: list[int] = []
            for k, t in od.items():
                if t == tick or len(victims) == need:
                    break
                victims.append(k)
            E = self.n_experts
            layer_n = self._layer_n
            for k in victims:
                res[k] = 0
                layer_n[k // E] -= 1
                del od[k]
            self._n_resident -= len(victims)
            free += len(victims)
        n_take = min(n_miss, free)
        if n_take:
            self._tick += 1
            tick = self._tick
            for k in miss[:n_take]:
                res[k] = 1
                od[k] = tick
            self._n_resident += n_take
            self._layer_n[layer] += n_take
        return hits, [True] * n_take + [False] * (n_miss - n_take)

    def access_admit_step(self, keys: npt.NDArray[np.int64], now: float) -> tuple[BoolArray, BoolArray]:
        """Vectorised `CachePolicy.access_admit_step` for one global order (not ``per_layer``) when
        no call of the step has more unpinned experts than the evictable slots (so protecting a
        call's own experts never binds and every miss is admitted); otherwise the calls one by one.

        LRU's inclusion property: a resident stays resident while fewer than ``C`` (the evictable
        slots) distinct keys are used after it. A key used at layer ``l`` of the step hits when it
        was resident before the step and ``depth + before - crossed < C``: ``depth`` residents were
        used after it before the step, ``before`` unpinned keys are used by the step's earlier
        layers, ``crossed`` of those were among the ``depth`` (not counted twice). After the step the
        step's keys are the newest (per layer: hits, then misses, each ascending, as the calls order
        them) and the ``C`` newest stay resident. The victim order lives in an
        array while steps follow each other (`_dict_mode` turns it back into the ordered dict)."""
        if self.per_layer or self._filters or keys.size == 0:
            return super().access_admit_step(keys, now)
        E = self.n_experts
        pin = self._pin_flat
        n_pinned = self._n_pinned
        slots = self.capacity - n_pinned
        layers = keys // E
        unp = ~pin[keys]
        if min(E, int(keys.size)) > slots:  # a call may hold more unpinned keys than the slots: count them
            cuts = np.flatnonzero(np.diff(layers)) + 1
            if int(np.add.reduceat(unp.astype(np.int64), np.concatenate(([0], cuts))).max()) > slots:
                return super().access_admit_step(keys, now)
        pos = self._pos
        order = self._ord
        if order is None:  # enter the array form, in the ordered dict's order
            od = self._orders[0]
            order = np.fromiter(od.keys(), dtype=np.int64, count=len(od))
            pos[order] = np.arange(order.size, dtype=np.int64)
        n_held = int(order.size)
        old = pos[keys]  # >= 0: resident and evictable (pinned keys are never in the order)
        hits = ~unp  # pinned: always resident
        idx = np.flatnonzero(old >= 0)
        if idx.size:
            s_i, l_i = old[idx], layers[idx]
            depth = n_held - 1 - s_i
            used_before: npt.NDArray[np.int64] = np.cumsum(unp) - unp  # unpinned keys before each key
            before = used_before[np.searchsorted(layers, l_i, side="left")]
            # 0 <= crossed <= min(depth, before): only keys between the two bounds need it
            hit = depth + before < slots
            open_ = np.flatnonzero(~hit & (np.maximum(depth, before) < slots))
            if open_.size:
                crossed = _crossed(s_i, l_i, open_)
                hit[open_] = depth[open_] + before[open_] - crossed < slots
            hits[idx] = hit
        miss = ~hits
        # the new order: the untouched ones as they were, then per layer its hits, then its misses
        used = np.flatnonzero(unp)
        used = used[np.argsort(layers[used] * 2 + miss[used], kind="stable")]
        keep = np.ones(n_held, dtype=bool)
        keep[old[idx]] = False
        order = np.concatenate((order[keep], keys[used]))
        res = self.resident.reshape(-1)
        new = keys[miss]
        res[new] = True
        delta = np.bincount(new // E, minlength=self.n_layers)
        if order.size > slots:  # the oldest beyond the evictable slots were evicted on the way
            out = order[: order.size - slots]
            order = order[order.size - slots :]
            pos[out] = -1
            res[out] = False
            delta -= np.bincount(out // E, minlength=self.n_layers)
        pos[order] = np.arange(order.size, dtype=np.int64)
        self._ord = order
        self._n_resident = n_pinned + int(order.size)
        self._layer_n = (np.asarray(self._layer_n, dtype=np.int64) + delta).tolist()
        self.n_accessed += int(keys.size)
        return hits, miss

    def _pick(self, n: int, only_layer: int, excluded: set[int]) -> list[int]:
        self._dict_mode()
        if not self.per_layer:
            items: Iterable[int] = self._orders[0]
        elif only_layer >= 0:
            items = self._orders[only_layer]
        else:  # a plain evict over per-layer orders: merge them by (tick, key)
            items = (k for _, k in heapq.merge(*(((t, k) for k, t in od.items()) for od in self._orders)))
        out: list[int] = []
        if n <= 0:
            return out
        for k in items:
            if k in excluded:
                continue
            out.append(k)
            if len(out) == n:
                break
        return out


class _HeapCache(IncrementalCachePolicy):
    """Victims from a min-heap of ``(priority..., key)`` entries with lazy deletion: an entry is
    current when `_entry` of its key gives the same tuple and the key is an evictable resident;
    stale entries are dropped when popped, and the heap is rebuilt when it grows past twice the
    residents. One heap per layer when ``per_layer``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._heaps: list[list[tuple[float, ...]]] = [[] for _ in range(self.n_layers if self.per_layer else 1)]

    @abstractmethod
    def _entry(self, key: int) -> tuple[float, ...]:
        """The key's current heap entry (its priority, then the key itself; lowest = best victim)."""

    def _heap(self, key: int) -> list[tuple[float, ...]]:
        return self._heaps[key // self.n_experts if self.per_layer else 0]

    def _push(self, key: int) -> None:
        heap = self._heap(key)
        heapq.heappush(heap, self._entry(key))
        if len(heap) > 2 * self._n_resident + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        for h in self._heaps:
            h.clear()
        for k in self._evictable():
            self._heap(k).append(self._entry(k))
        for h in self._heaps:
            heapq.heapify(h)

    def _inserted(self, keys: list[int], prefetch: bool) -> None:
        for k in keys:
            self._push(k)

    def _removed(self, keys: list[int]) -> None:
        return None  # entries go stale; dropped when popped

    def _current(self, entry: tuple[float, ...]) -> bool:
        k = int(entry[-1])
        return self._res[k] == 1 and not self._pinned_flat[k] and self._entry(k) == entry

    def _pick(self, n: int, only_layer: int, excluded: set[int]) -> list[int]:
        out: list[int] = []
        if n <= 0:
            return out
        if self.per_layer and only_layer < 0:  # a plain evict over per-layer heaps (rare): sort them
            entries = sorted(self._entry(k) for k in self._evictable() if k not in excluded)
            return [int(e[-1]) for e in entries[:n]]
        heap = self._heaps[only_layer if self.per_layer else 0]
        kept: list[tuple[float, ...]] = []
        chosen: set[int] = set()
        while heap and len(out) < n:
            entry = heapq.heappop(heap)
            if not self._current(entry):
                continue
            k = int(entry[-1])
            if k in chosen:
                continue
            kept.append(entry)
            if k in excluded:
                continue
            out.append(k)
            chosen.add(k)
        for entry in kept:
            heapq.heappush(heap, entry)
        return out


@REGISTRIES["cache"].register("lfu", "least frequently used expert is evicted (ties: least recent)")
class LFUCache(_HeapCache):
    """Least frequently used, with "perfect" counts (uses are counted whether or not the expert was
    resident; they survive eviction). Ties go to the least recently used, then the lowest key.
    Incremental: a heap of ``(count, last use, key)`` with lazy deletion."""

    time_independent = True

    def __init__(self, **kwargs: Any) -> None:
        size = int(kwargs["n_layers"]) * int(kwargs["n_experts"])
        self._count = [0] * size
        self._last = [-1] * size
        self._tick = 0
        super().__init__(**kwargs)

    def _entry(self, key: int) -> tuple[float, ...]:
        return (self._count[key], self._last[key], key)

    def _touch(self, layer: int, experts: list[int], hits: list[bool]) -> None:
        self._tick += 1
        base = layer * self.n_experts
        count, last = self._count, self._last
        for e, h in zip(experts, hits, strict=True):
            k = base + e
            count[k] += 1
            last[k] = self._tick
            if h and not self._pinned_flat[k]:
                self._push(k)


@REGISTRIES["cache"].register("static", "static pinning (Fiddler): the starting residents stay, nothing else is cached")
class StaticCache(CachePolicy):
    """Fiddler-style static placement: the experts made resident by `warm` (the mapping's start
    set, by default the most popular experts of the training data) and the pinned ones stay; a
    missing expert is never cached (it is streamed through a staging buffer or computed on the
    CPU, as the miss policy decides)."""

    time_independent = True

    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        return None

    def _admission_filter(self, layer: int, experts: IntArray, now: float, prefetch: bool) -> BoolArray:
        return np.zeros(experts.shape, dtype=bool)

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        return _lowest(n, candidates, np.zeros(candidates.size))


@REGISTRIES["cache"].register("belady", "Belady/MIN oracle: evicts the expert used farthest in the future")
class BeladyCache(_HeapCache):
    """Belady's MIN: evict the resident whose next use lies farthest in the future (upper bound of
    the hit rate for a demand-fetching cache), ties to the lowest key. Needs `prepare` with the
    future `AccessSequence`. Incremental: a heap of ``(-next use, key)`` with lazy deletion.

    ``exact`` stays True while the accesses match the prepared sequence; on a divergence (the run
    differs from the recording) the policy looks up each key's next occurrence after the current
    cursor instead and sets ``exact = False``.
    """

    needs_lookahead = True
    time_independent = True

    def __init__(self, **kwargs: Any) -> None:
        size = int(kwargs["n_layers"]) * int(kwargs["n_experts"])
        self._next: list[float] = [float("inf")] * size  # next use (position in the sequence) of each key
        self._keys: list[int] = []
        self._next_pos: list[float] = []
        self._positions: list[IntArray] = []
        self.exact = True
        self.prepared = False
        super().__init__(**kwargs)

    def _entry(self, key: int) -> tuple[float, ...]:
        return (-self._next[key], key)

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
        self._keys, self._next_pos = keys.tolist(), nxt.tolist()
        sorted_keys = keys[order]
        bounds = np.searchsorted(sorted_keys, np.arange(size + 1))
        self._positions = [order[bounds[k] : bounds[k + 1]] for k in range(size)]  # ascending positions
        first = np.full(size, np.inf)
        has = bounds[1:] > bounds[:-1]
        first[has] = order[bounds[:-1][has]]
        self._next = first.tolist()
        self.prepared = True
        self._rebuild()

    def _touch(self, layer: int, experts: list[int], hits: list[bool]) -> None:
        if not self.prepared:
            raise RuntimeError("BeladyCache.access called before prepare(future)")
        base = layer * self.n_experts
        keys = [base + e for e in experts]
        start = self.n_accessed
        end = start + len(keys)
        nxt = self._next
        if end <= len(self._keys) and self._keys[start:end] == keys:
            for k, p in zip(keys, self._next_pos[start:end], strict=True):
                nxt[k] = p
        else:
            self.exact = False
            for k in keys:
                pos = self._positions[k]
                i = int(np.searchsorted(pos, end))
                nxt[k] = float(pos[i]) if i < pos.size else float("inf")
        for k, h in zip(keys, hits, strict=True):
            if h and not self._pinned_flat[k]:
                self._push(k)
