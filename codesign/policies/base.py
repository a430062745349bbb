"""The five extension points of the simulator, as abstract base classes whose docstrings are the contracts.

Conventions shared by every policy
----------------------------------
- **Layers** are *MoE-layer indices* ``0 .. n_layers-1`` (the columns of a routing trace, i.e. the
  positions in ``MoEModel.moe_layers``), never the model's absolute layer numbers.
- **Experts** are ints ``0 .. n_experts-1``; ``-1`` in a routing array means "no expert" and is never
  passed to a cache. A *key* is the flat id ``layer * n_experts + expert`` (int64); arrays of
  ``(layer, expert)`` pairs have shape ``[n, 2]`` and dtype int64.
- **Time** ``now`` is simulated seconds (float) since the start of the run; policies never read a
  wall clock.
- **Determinism**: a policy owns its random generator (``np.random.default_rng(seed)`` built from
  the ``seed`` constructor argument); the same seed and the same call sequence give the same
  answers. No module- or class-level mutable state.
- Policies hold no hardware numbers: costs reach them, when they need any, as `hwmodels.OpCost`
  values computed by the engine.
- Implementations register themselves by name in `codesign.policies.registry.REGISTRIES` and are
  built with keyword arguments only (``REGISTRIES["cache"].create("lru", capacity=..., ...)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from hwmodels.opcost import OpCost

if TYPE_CHECKING:
    from workloads.model import MoEModel
    from workloads.trace import RoutingTrace

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]

__all__ = [
    "AccessSequence",
    "Admission",
    "Batch",
    "CachePolicy",
    "IncrementalCachePolicy",
    "MissPolicy",
    "PlacementPolicy",
    "PrefetchContext",
    "PrefetchPolicy",
    "RequestState",
    "RoutingStats",
    "TokenScheduler",
]


# ----------------------------------------------------------------------------- shared data types
@dataclass(frozen=True, eq=False)
class RoutingStats:
    """Routing statistics that placement (and other trained) policies consume.

    ``load[l, e]``: number of token-to-expert assignments of MoE layer ``l`` to expert ``e``.
    ``affinity[l, a, b]``: number of tokens routed to ``a`` at layer ``l`` *and* to ``b`` at layer
    ``l + 1`` (joint counts, shape ``[n_layers - 1, n_experts, n_experts]``; ExFlow's inter-layer
    affinity is ``affinity[l] / affinity[l].sum(axis=1, keepdims=True)``).
    ``n_tokens``: tokens the counts come from.
    """

    load: FloatArray
    affinity: FloatArray
    n_tokens: int

    @property
    def n_layers(self) -> int:
        return int(self.load.shape[0])

    @property
    def n_experts(self) -> int:
        return int(self.load.shape[1])

    @classmethod
    def from_routing(cls, experts: npt.ArrayLike, n_experts: int) -> RoutingStats:
        """Counts from a routing array ``[tokens, n_layers, k]`` (``-1`` ignored), vectorised."""
        e = np.asarray(experts)
        if e.ndim != 3:
            raise ValueError(f"routing must be 3-D (tokens, moe_layers, k), got shape {e.shape}")
        if n_experts <= 0:
            raise ValueError(f"n_experts must be > 0, got {n_experts}")
        if e.size and (e.min() < -1 or e.max() >= n_experts):
            raise ValueError(f"routing holds expert ids outside [-1, {n_experts})")
        t, n_layers, k = e.shape
        e64 = e.astype(np.int64)
        valid = e64 >= 0
        layer_idx = np.broadcast_to(np.arange(n_layers)[None, :, None], e.shape)
        flat = (layer_idx * n_experts + e64)[valid]
        load = np.bincount(flat, minlength=n_layers * n_experts).astype(np.float64).reshape(n_layers, n_experts)
        n_pairs = max(n_layers - 1, 0)
        if n_pairs and t:
            a = e64[:, :-1, :, None]  # [t, L-1, k, 1]
            b = e64[:, 1:, None, :]  # [t, L-1, 1, k]
            ok = (a >= 0) & (b >= 0)
            lidx = np.arange(n_pairs)[None, :, None, None]
            idx = (lidx * n_experts + a) * n_experts + b
            idx = np.broadcast_to(idx, (t, n_pairs, k, k))[np.broadcast_to(ok, (t, n_pairs, k, k))]
            aff = np.bincount(idx, minlength=n_pairs * n_experts * n_experts).astype(np.float64)
            affinity = aff.reshape(n_pairs, n_experts, n_experts)
        else:
            affinity = np.zeros((n_pairs, n_experts, n_experts))
        return cls(load=load, affinity=affinity, n_tokens=int(t))

    @classmethod
    def from_trace(cls, trace: RoutingTrace) -> RoutingStats:
        """Counts from a `RoutingTrace`."""
        return cls.from_routing(trace.experts, trace.n_experts)


@dataclass(frozen=True, eq=False)
class AccessSequence:
    """The future accesses of one cache, for offline (oracle) policies such as Belady.

    ``keys`` (int64, flat ``layer * n_experts + expert``) lists, in order, every expert that the
    cache will be asked about through `CachePolicy.access`: the concatenation of the ``experts``
    arguments of all future ``access`` calls. ``call_starts[i]`` is the offset in ``keys`` of the
    i-th ``access`` call. The engine builds it from a recording pass of the same workload (exact
    when the batching does not depend on timing, e.g. all requests present at t=0; otherwise an
    approximation, which the engine reports).
    """

    keys: IntArray
    call_starts: IntArray


@dataclass(frozen=True)
class Admission:
    """Outcome of `CachePolicy.admit`.

    ``admitted``: bool mask over the ``experts`` argument (True = now resident, a slot is held;
    already-resident experts count as admitted). ``victims``: int64 ``[n, 2]`` (layer, expert)
    pairs evicted to make room, in eviction order.
    """

    admitted: BoolArray
    victims: IntArray


# ----------------------------------------------------------------------------------- cache
_NO_VICTIMS: IntArray = np.zeros((0, 2), dtype=np.int64)
_NO_VICTIMS.setflags(write=False)


class CachePolicy(ABC):
    """Replacement policy of one cache: one memory tier of one device holding expert weights.

    The base class keeps the bookkeeping (which experts are resident, which are pinned) and
    guarantees the capacity; a subclass only decides *what to keep* through the hooks
    `_on_access` (record a use) and `_choose_victims` (pick experts to evict), and optionally
    `_admission_filter` (refuse to cache some experts), `prepare` and `fit`.

    Construction (keyword-only, as the registry calls it)::

        Policy(capacity=slots, n_layers=L, n_experts=E, pinned=None | bool[L, E], seed=0, **options)

    ``capacity`` is in *expert slots* (an int >= 0; the engine converts a byte capacity with
    ``bytes // model.bytes_per_expert``, see `slots_for_bytes`); pinned experts occupy slots, are
    resident from the start and are never evicted. ``pinned.sum() <= capacity`` is required.
    ``per_layer=True`` splits the slots evenly over the layers (``layer_capacity``; the first
    ``capacity % n_layers`` layers get one more), as Mixtral-offloading's per-layer expert caches
    do: an admission to layer ``l`` then evicts only from layer ``l`` and never exceeds its share.

    Call order, per simulation run:

    1. ``fit(trace)`` once, if ``needs_training`` (a training part of the routing, never the part
       that is replayed) ;
    2. ``prepare(future)`` once, if ``needs_lookahead`` (offline oracles such as Belady);
    3. ``warm(initial)`` once: the mapping's starting residents (pinned experts are added);
    4. then, for every step and MoE layer ``l`` that needs experts on this cache's device, in time
       order:

       a. ``observe(l, routing_rows, now)``: the step's routing rows at layer ``l`` (int
          ``[n_tokens, k]``, ``-1`` = none); for predictor-based policies; default no-op;
       b. ``hits = access(l, experts, now)``: ``experts`` is the sorted unique int array of the
          experts the step needs at ``l`` from this cache; records the use (recency, frequency,
          oracle cursor) of every one of them and returns the bool mask "resident";
       c. ``admit(l, missing, now, protect=experts)`` for the misses that the miss policy chose to
          fetch (and, from prefetching, ``admit(l2, experts2, now, prefetch=True)`` for later
          layers); ``protect`` lists experts of the current layer that must not be evicted.

    Guarantees (tested for every registered cache policy): the number of residents never exceeds
    ``capacity``; pinned experts stay resident; victims were resident and not pinned/protected;
    ``access`` does not change residency; the same seed and call sequence give the same answers.
    """

    #: True for offline (oracle) policies that read the future: they need `prepare` with the future
    #: access sequence (the engine records it in a first pass). The documented flag; ``needs_future``
    #: is the same flag under its earlier name, kept equal to it for every subclass (set either one).
    needs_lookahead: ClassVar[bool] = False
    #: Alias of ``needs_lookahead`` (kept in sync by ``__init_subclass__``).
    needs_future: ClassVar[bool] = False
    #: True for policies that must be trained with `fit` on part of a trace before the run.
    needs_training: ClassVar[bool] = False
    #: True for policies whose decisions never read the ``now`` arguments: the engine may then take
    #: a step's cache decisions before it knows when each layer starts (it passes the step's start).
    time_independent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep ``needs_lookahead`` and its alias ``needs_future`` equal: a subclass that sets one
        sets both; setting them to different values is an error naming the class."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "needs_lookahead" in own and "needs_future" in own:
            if bool(own["needs_lookahead"]) != bool(own["needs_future"]):
                raise TypeError(
                    f"{cls.__name__}: needs_lookahead={own['needs_lookahead']!r} and its alias "
                    f"needs_future={own['needs_future']!r} disagree; set needs_lookahead only"
                )
        elif "needs_lookahead" in own:
            cls.needs_future = bool(own["needs_lookahead"])
        elif "needs_future" in own:
            cls.needs_lookahead = bool(own["needs_future"])

    def __init__(
        self,
        *,
        capacity: int,
        n_layers: int,
        n_experts: int,
        pinned: npt.ArrayLike | None = None,
        seed: int = 0,
        per_layer: bool = False,
    ) -> None:
        if not isinstance(capacity, int | np.integer) or capacity < 0:
            raise ValueError(f"cache capacity must be an int >= 0 expert slots, got {capacity!r}")
        if n_layers <= 0 or n_experts <= 0:
            raise ValueError(f"n_layers and n_experts must be > 0, got {n_layers}, {n_experts}")
        self.capacity = int(capacity)
        self.n_layers = int(n_layers)
        self.n_experts = int(n_experts)
        self.rng = np.random.default_rng(seed)
        if pinned is None:
            self.pinned: BoolArray = np.zeros((n_layers, n_experts), dtype=bool)
        else:
            p = np.asarray(pinned, dtype=bool)
            if p.shape != (n_layers, n_experts):
                raise ValueError(f"pinned must have shape ({n_layers}, {n_experts}), got {p.shape}")
            self.pinned = p.copy()
        if int(self.pinned.sum()) > self.capacity:
            raise ValueError(
                f"{int(self.pinned.sum())} pinned experts exceed the cache capacity of {self.capacity} slots"
            )
        self.per_layer = bool(per_layer)
        self.layer_capacity = np.full(n_layers, self.capacity // n_layers, dtype=np.int64)
        self.layer_capacity[: self.capacity % n_layers] += 1
        if self.per_layer:
            over = np.flatnonzero(self.pinned.sum(axis=1) > self.layer_capacity)
            if over.size:
                layer = int(over[0])
                raise ValueError(
                    f"per-layer cache: {int(self.pinned[layer].sum())} pinned experts of layer {layer} "
                    f"exceed its {int(self.layer_capacity[layer])} slots"
                )
        # residency lives in one byte buffer: ``resident`` is a numpy view of it, ``_res`` the same
        # bytes for O(1) reads and writes from Python (flat key ``layer * n_experts + expert``)
        self._res = bytearray(self.pinned.astype(np.uint8).tobytes())
        self.resident: BoolArray = np.frombuffer(self._res, dtype=bool).reshape(n_layers, n_experts)
        self._n_resident = int(self.resident.sum())
        self._filters = type(self)._admission_filter is not CachePolicy._admission_filter
        self.n_accessed = 0  # keys passed to access() so far (the oracle cursor)

    # ------------------------------------------------------------------ public API (final)
    @property
    def n_resident(self) -> int:
        """Experts resident now (pinned included); always <= ``capacity``."""
        return self._n_resident

    @property
    def free_slots(self) -> int:
        return self.capacity - self._n_resident

    def fit(self, trace: RoutingTrace) -> None:  # noqa: B027 - optional hook
        """Train on a part of a trace (only called when ``needs_training``); default: nothing."""

    def prepare(self, future: AccessSequence) -> None:  # noqa: B027 - optional hook
        """Receive the future access sequence (only called when ``needs_lookahead``); default: nothing."""

    def warm(self, initial: npt.ArrayLike) -> None:
        """Make the experts of the bool ``[n_layers, n_experts]`` mask ``initial`` resident (plus the
        pinned ones) before the run; more than ``capacity`` is an error naming the numbers."""
        init = np.asarray(initial, dtype=bool)
        if init.shape != (self.n_layers, self.n_experts):
            raise ValueError(f"initial residents must have shape ({self.n_layers}, {self.n_experts}), got {init.shape}")
        new = init | self.pinned
        if self.per_layer:  # keep the pinned, then the lowest expert ids, up to each layer's share
            for layer in np.flatnonzero(new.sum(axis=1) > self.layer_capacity).tolist():
                free = int(self.layer_capacity[layer]) - int(self.pinned[layer].sum())
                extra = np.flatnonzero(new[layer] & ~self.pinned[layer])
                new[layer, extra[free:]] = False
        n = int(new.sum())
        if n > self.capacity:
            raise ValueError(f"{n} initial resident experts exceed the cache capacity of {self.capacity} slots")
        self.resident[...] = new
        self._n_resident = n
        self._on_warm(new)

    def observe(self, layer: int, routing_rows: npt.NDArray[np.integer], now: float) -> None:  # noqa: B027
        """The step's routing rows ``[n_tokens, k]`` at ``layer`` (before `access`); default: nothing."""

    def access(self, layer: int, experts: npt.NDArray[np.integer], now: float) -> BoolArray:
        """Record a use of every expert in ``experts`` (sorted unique ints) at ``layer``; return the
        bool mask of those that are resident (hits). Residency is not changed."""
        ex = np.asarray(experts, dtype=np.int64)
        hits = self.resident[layer, ex]
        self._on_access(layer, ex, hits, now)
        self.n_accessed += int(ex.size)
        return hits

    def admit(
        self,
        layer: int,
        experts: npt.NDArray[np.integer],
        now: float,
        *,
        protect: npt.NDArray[np.integer] | None = None,
        prefetch: bool = False,
        protect_keys: npt.NDArray[np.integer] | None = None,
    ) -> Admission:
        """Make ``experts`` (priority order) of ``layer`` resident, evicting as the policy chooses.

        Experts already resident are admitted without change. Experts refused by
        `_admission_filter`, or for which no evictable victim exists (all residents pinned or
        protected), are not admitted. ``protect`` (experts of ``layer``) and ``protect_keys`` (flat
        keys of any layer, e.g. experts in flight or in use) must not be evicted.
        ``prefetch`` says the admission is speculative (a policy may treat it differently).
        """
        ex = np.asarray(experts, dtype=np.int64)
        admitted = self.resident[layer, ex]  # fancy indexing: a copy
        new_idx = np.flatnonzero(~admitted)
        if new_idx.size and self._filters:
            ok = np.asarray(self._admission_filter(layer, ex[new_idx], now, prefetch), dtype=bool)
            new_idx = new_idx[ok]
        victims = _NO_VICTIMS
        if new_idx.size:
            need = int(new_idx.size) - self._free_for(layer)
            if need > 0:
                victims = self._evict(
                    need, now, layer=layer, protect=protect, incoming=ex[new_idx], protect_keys=protect_keys
                )
            n_admit = min(int(new_idx.size), self._free_for(layer))
            take = new_idx[:n_admit]
            self.resident[layer, ex[take]] = True
            self._n_resident += int(take.size)
            admitted[take] = True
            if take.size:
                self._on_admit(layer, ex[take], now, prefetch)
        return Admission(admitted=admitted, victims=victims)

    def access_list(self, layer: int, experts: list[int], now: float) -> list[bool]:
        """`access` with Python lists (the engine's per-layer call): the same effect and answer."""
        return self.access(layer, np.asarray(experts, dtype=np.int64), now).tolist()

    def access_admit_list(self, layer: int, experts: list[int], now: float) -> tuple[list[bool], list[bool]]:
        """One layer of a demand-fetching step in one call: `access_list` of ``experts`` (ascending),
        then ``admit_list(misses, now, protect=experts)`` for all its misses (in ``experts`` order).
        Returns (hit flags over ``experts``, admitted flags over the misses); the effects and
        answers are exactly those of the two calls (a policy may override it with a fused version,
        e.g. `LRUCache`; a test pins the equality for every registered cache policy)."""
        hits = self.access_list(layer, experts, now)
        miss = [e for e, h in zip(experts, hits, strict=True) if not h]
        if not miss:
            return hits, []
        admitted, _victims = self.admit_list(layer, miss, now, protect=experts)
        return hits, admitted

    def access_admit_step(self, keys: npt.NDArray[np.int64], now: float) -> tuple[BoolArray, BoolArray]:
        """A demand-fetching step's `access_admit_list` calls at once: ``keys`` are the step's flat
        keys (``layer * n_experts + expert``) of this cache, strictly ascending; each layer's keys
        are one call, in layer order. Returns (hit flags, admitted flags) over ``keys`` (admitted:
        a miss that became resident). The effects and answers are exactly those of the calls one
        by one (this default makes them; `LRUCache` overrides it with a vectorised pass, and a
        test pins the equality)."""
        hits = np.zeros(keys.size, dtype=bool)
        admitted = np.zeros(keys.size, dtype=bool)
        if keys.size == 0:
            return hits, admitted
        E = self.n_experts
        layers = keys // E
        cuts = np.flatnonzero(np.diff(layers)) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), int(keys.size)]
        for lo, hi, layer in zip(starts, ends, layers[starts].tolist(), strict=True):
            ex = (keys[lo:hi] - layer * E).tolist()
            h, adm = self.access_admit_list(layer, ex, now)
            hits[lo:hi] = h
            if adm:
                miss = np.flatnonzero(~hits[lo:hi]) + lo
                admitted[miss] = adm
        return hits, admitted

    def admit_list(
        self,
        layer: int,
        experts: list[int],
        now: float,
        *,
        protect: list[int] | None = None,
        prefetch: bool = False,
        protect_keys: Collection[int] | None = None,
    ) -> tuple[list[bool], list[int]]:
        """`admit` with Python lists: the same effect; returns (admitted flags in the order of
        ``experts``, victims as flat keys in eviction order)."""
        adm = self.admit(
            layer,
            np.asarray(experts, dtype=np.int64),
            now,
            protect=None if protect is None else np.asarray(protect, dtype=np.int64),
            prefetch=prefetch,
            protect_keys=None if protect_keys is None else np.fromiter(protect_keys, dtype=np.int64),
        )
        v = adm.victims
        return adm.admitted.tolist(), (v[:, 0] * self.n_experts + v[:, 1]).tolist()

    def _free_for(self, layer: int) -> int:
        """Free slots an admission to ``layer`` may use (its own share when ``per_layer``)."""
        if self.per_layer:
            return int(self.layer_capacity[layer]) - int(np.count_nonzero(self.resident[layer]))
        return self.capacity - self._n_resident

    def evict(
        self,
        n: int,
        now: float,
        *,
        layer: int = -1,
        protect: npt.NDArray[np.integer] | None = None,
        protect_keys: npt.NDArray[np.integer] | None = None,
    ) -> IntArray:
        """Evict up to ``n`` experts chosen by the policy (never pinned or protected ones); return
        them as ``[m, 2]`` (layer, expert), ``m <= n``."""
        return self._evict(
            n, now, layer=layer, protect=protect, incoming=np.zeros(0, dtype=np.int64), protect_keys=protect_keys
        )

    def _evict(
        self,
        n: int,
        now: float,
        *,
        layer: int,
        protect: npt.NDArray[np.integer] | None,
        incoming: IntArray,
        protect_keys: npt.NDArray[np.integer] | None = None,
    ) -> IntArray:
        candidates = self.resident & ~self.pinned
        if self.per_layer and layer >= 0 and incoming.size:  # room is made within the layer's share
            keep = candidates[layer].copy()
            candidates[:] = False
            candidates[layer] = keep
        if protect is not None and layer >= 0:
            candidates[layer, np.asarray(protect, dtype=np.int64)] = False
        if protect_keys is not None:
            candidates.ravel()[np.asarray(protect_keys, dtype=np.int64)] = False
        n = min(n, int(np.count_nonzero(candidates)))
        if n <= 0:
            return _NO_VICTIMS
        keys = np.asarray(self._choose_victims(n, candidates, now, layer, incoming), dtype=np.int64).ravel()
        keys = keys[:n]
        if keys.size and (not bool(candidates.take(keys).all()) or len(set(keys.tolist())) != keys.size):
            raise RuntimeError(f"{type(self).__name__} chose victims that are not evictable residents: {keys}")
        np.put(self.resident, keys, False)
        self._n_resident -= int(keys.size)
        if keys.size:
            self._on_evict(keys, now)
        return np.column_stack((keys // self.n_experts, keys % self.n_experts))

    # -------------------------------------------------------------------- hooks for subclasses
    @abstractmethod
    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        """Record that ``experts`` of ``layer`` were used at ``now`` (``hits``: which were resident)."""

    @abstractmethod
    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        """Return exactly ``n`` distinct flat keys whose ``candidates[l, e]`` is True (the evictable
        residents, ``n <= candidates.sum()``), best victim first. ``layer`` / ``incoming`` name the
        experts that are being admitted (``layer == -1`` for a plain `evict`)."""

    def _admission_filter(self, layer: int, experts: IntArray, now: float, prefetch: bool) -> BoolArray:
        """Which of the non-resident ``experts`` may be cached at all (default: all)."""
        return np.ones(experts.shape, dtype=bool)

    def _on_admit(self, layer: int, experts: IntArray, now: float, prefetch: bool) -> None:  # noqa: B027
        """``experts`` of ``layer`` became resident (default: nothing)."""

    def _on_evict(self, keys: IntArray, now: float) -> None:  # noqa: B027
        """Flat ``keys`` were evicted (default: nothing)."""

    def _on_warm(self, resident: BoolArray) -> None:  # noqa: B027
        """The starting residents were set (default: nothing)."""


def slots_for_bytes(capacity_bytes: float, bytes_per_expert: float) -> int:
    """Expert slots that fit in ``capacity_bytes`` (floor; 0 when negative)."""
    if bytes_per_expert <= 0:
        raise ValueError(f"bytes_per_expert must be > 0, got {bytes_per_expert}")
    return max(0, int(capacity_bytes // bytes_per_expert))


# ---------------------------------------------------------------------------------- prefetch
@dataclass(frozen=True, eq=False)
class PrefetchContext:
    """What a prefetch policy may see at MoE layer ``layer`` of step ``step``.

    ``routing``: the step's routing at ``layer`` (int ``[n_tokens, k]``, ``-1`` = none), known once
    the router of ``layer`` has run. ``step_routing``: the step's rows for *all* layers
    (``[n_tokens, n_layers, k]``); an online policy may read only layers ``<= layer`` of it, except
    next-layer pre-gating, which models a pre-gate/decoupled router (Read-ME, Pre-gated MoE) that
    knows layer ``layer + 1`` during ``layer``. ``recent_load``: float ``[n_layers, n_experts]``,
    the token-assignment counts of the previous steps with exponential decay (the engine's
    history). ``resident``: bool ``[n_layers, n_experts]``, what the device's cache holds now.
    ``now``: simulated seconds.
    """

    step: int
    layer: int
    routing: npt.NDArray[np.int16]
    step_routing: npt.NDArray[np.int16]
    recent_load: FloatArray
    resident: BoolArray
    now: float


class PrefetchPolicy(ABC):
    """Which experts of *later* layers of the current step to start fetching now.

    Construction (keyword-only): ``Policy(n_layers=L, n_experts=E, top_k=k, seed=0, **options)``.
    Call order: ``fit(trace)`` once when ``needs_training``; then ``prefetch(ctx)`` once per step
    and MoE layer, right after the router of that layer (before its experts run).

    Contract of `prefetch`: return int64 ``[n, 2]`` (layer, expert) pairs, highest priority first,
    every layer in ``(ctx.layer, n_layers)``; no duplicates. The engine drops pairs that are
    already resident or in flight, admits the rest into the cache (``prefetch=True``) and queues
    their transfers on the copy engine behind demand fetches; transfers overlap compute. A policy
    must not return more pairs than it would want fetched (bytes moved are counted). Deterministic
    under the seed.
    """

    needs_training: ClassVar[bool] = False

    def __init__(self, *, n_layers: int, n_experts: int, top_k: int, seed: int = 0) -> None:
        if n_layers <= 0 or n_experts <= 0 or top_k <= 0:
            raise ValueError(f"n_layers, n_experts and top_k must be > 0, got {n_layers}, {n_experts}, {top_k}")
        self.n_layers = int(n_layers)
        self.n_experts = int(n_experts)
        self.top_k = int(top_k)
        self.rng = np.random.default_rng(seed)

    def fit(self, trace: RoutingTrace) -> None:  # noqa: B027 - optional hook
        """Train on part of a trace (only called when ``needs_training``); default: nothing."""

    @abstractmethod
    def prefetch(self, ctx: PrefetchContext) -> IntArray:
        """(layer, expert) pairs of later layers to fetch now, priority order (see class doc)."""


# -------------------------------------------------------------------------------------- miss
class MissPolicy(ABC):
    """What to do with each expert that a step needs but that is not resident on its device.

    Construction (keyword-only): ``Policy(seed=0, **options)``.
    Call: ``decide(layer, experts, n_tokens, fetch, cpu)`` once per step and layer with misses.
    ``experts`` (int64 ``[m]``) are the missing experts, ``n_tokens`` (int64 ``[m]``) the tokens
    each serves this step. ``fetch`` is the array `OpCost` (shape ``[m]``) of bringing each
    expert's weights over the link *plus* computing it on the device; ``cpu`` is the array
    `OpCost` of computing it on the host CPU (weights in host memory, activations over the host
    link both ways, Fiddler), or ``None`` when the platform has no host to compute on.

    Return a bool mask ``[m]``: True = fetch the weights (they are then offered to the cache),
    False = compute on the host CPU. Where ``cpu is None`` the answer must be all True.
    Deterministic under the seed; no side effects on the engine.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def decide(self, layer: int, experts: IntArray, n_tokens: IntArray, fetch: OpCost, cpu: OpCost | None) -> BoolArray:
        """True = fetch weights, False = compute on the host CPU (see class doc)."""


# --------------------------------------------------------------------------------- placement
class PlacementPolicy(ABC):
    """Where each expert lives when experts are spread over several devices (expert parallelism).

    Construction (keyword-only): ``Policy(seed=0, **options)``.
    Call: ``place(model, n_devices, stats)`` once when a `Mapping` is bound (before the run).
    ``stats`` are routing statistics of a training part of the workload (`RoutingStats`, or None
    when none is available: a policy that needs them must then raise a clear error).

    Return ``expert_home``: int64 ``[model.n_moe_layers, model.n_experts]`` with values in
    ``[0, n_devices)``: the device that holds (homes) each expert. Contract: every expert has
    exactly one home; each device homes at most ``ceil(n_experts / n_devices)`` experts of each
    layer (balanced memory); deterministic under the seed; ``n_devices == 1`` gives all zeros.

    Class flag ``needs_stats``: True when ``place`` needs routing statistics (with ``stats=None``
    it raises); the simulator then supplies training routing (`codesign.simulate`).
    """

    needs_stats: ClassVar[bool] = False

    def __init__(self, *, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def place(self, model: MoEModel, n_devices: int, stats: RoutingStats | None) -> IntArray:
        """The ``[n_moe_layers, n_experts]`` device-id array (see class doc)."""

    @staticmethod
    def check(home: npt.ArrayLike, model: MoEModel, n_devices: int) -> IntArray:
        """Validate a placement against the contract; returns it as int64 or raises ValueError."""
        h = np.asarray(home)
        shape = (model.n_moe_layers, model.n_experts)
        if h.shape != shape:
            raise ValueError(f"placement must have shape {shape}, got {h.shape}")
        if h.size and (h.min() < 0 or h.max() >= n_devices):
            raise ValueError(f"placement device ids must be in [0, {n_devices}), got range [{h.min()}, {h.max()}]")
        cap = -(-model.n_experts // n_devices)
        for layer in range(shape[0]):
            counts = np.bincount(h[layer].astype(np.int64), minlength=n_devices)
            if counts.max() > cap:
                raise ValueError(
                    f"placement puts {counts.max()} experts of MoE layer {layer} on device "
                    f"{int(counts.argmax())}; at most {cap} allowed"
                )
        return h.astype(np.int64)


# -------------------------------------------------------------------------------- scheduling
@dataclass(slots=True, eq=False)
class RequestState:
    """The engine's view of one request; schedulers read it and must never modify it.

    Rows of ``routing`` (int16 ``[prompt_tokens + output_tokens, n_layers, k]``): ``0 ..
    prompt_tokens-1`` are the prompt (prefill); the prefill's last row emits output token 1 (time
    to first token); decode step ``j = 1 .. output_tokens-1`` processes row ``prompt_tokens + j - 1``
    and emits token ``j + 1``. ``prefilled`` counts prompt rows processed, ``generated`` output
    tokens emitted. ``kv_paged`` is set by the engine under ``batching.kv = "paged"``: the request
    then holds KV as it grows (`kv_admit_tokens` is its prompt), not its final length. A request
    preempted under that policy comes back as a request whose prompt is everything it had processed
    plus its last output token, and whose outputs are the ones still to emit (recomputation, as
    vLLM and TensorRT-LLM do); its routing rows are unchanged.
    """

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    routing: npt.NDArray[np.int16]
    prefilled: int = 0
    generated: int = 0
    admitted_s: float = float("nan")
    first_token_s: float = float("nan")
    finish_s: float = float("nan")
    kv_paged: bool = False

    @property
    def in_prefill(self) -> bool:
        return self.prefilled < self.prompt_tokens

    @property
    def remaining_prompt(self) -> int:
        return self.prompt_tokens - self.prefilled

    @property
    def done(self) -> bool:
        return self.generated >= self.output_tokens

    @property
    def next_row(self) -> int:
        """Row of ``routing`` that the request's next token processes."""
        return self.prefilled if self.in_prefill else self.prompt_tokens + self.generated - 1

    @property
    def context_tokens(self) -> int:
        """Tokens in the request's KV cache now."""
        return self.prefilled + max(self.generated - 1, 0)

    @property
    def kv_tokens_max(self) -> int:
        """KV-cache tokens the request holds at its end."""
        return self.prompt_tokens + self.output_tokens - 1

    @property
    def kv_admit_tokens(self) -> int:
        """KV-cache tokens the engine sets aside when it admits the request: its final length
        (`kv_tokens_max`, ``batching.kv = "reserve"``) or its prompt (``"paged"``: the rest is
        taken a token per step, and a step that would overflow preempts the latest admitted)."""
        return self.prompt_tokens if self.kv_paged else self.kv_tokens_max


@dataclass(frozen=True)
class Batch:
    """One step's batch: ``n_tokens[i]`` tokens of request ``request_ids[i]``."""

    request_ids: tuple[int, ...]
    n_tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.request_ids) != len(self.n_tokens):
            raise ValueError("Batch: request_ids and n_tokens differ in length")

    def __len__(self) -> int:
        return len(self.request_ids)

    @property
    def total_tokens(self) -> int:
        return int(sum(self.n_tokens))


class TokenScheduler(ABC):
    """Chooses which requests (and how many of their tokens) form each step's batch.

    Construction (keyword-only): ``Policy(max_batch=B, max_tokens=T, seed=0, **options)``:
    at most ``B`` requests running (admitted, holding KV cache) at once and at most ``T`` tokens
    per step.

    Call: ``schedule(now, waiting, running, kv_free_tokens)`` at the start of every step.
    ``waiting``: arrived requests not admitted yet (arrival order); ``running``: admitted, not
    finished (admission order); ``kv_free_tokens``: KV-cache tokens still free in HBM.

    Return a `Batch` such that: each id appears once and is in ``waiting`` or ``running``; a
    request in decode gets exactly 1 token, one in prefill ``1 .. remaining_prompt`` (chunked
    prefill); ``total_tokens <= max_tokens``; ``len(running) + (waiting ids chosen) <= max_batch``;
    the chosen waiting requests' ``kv_admit_tokens`` sum to at most ``kv_free_tokens`` (the engine
    sets it aside at admission). A chosen waiting request is admitted when the engine finds room
    for it (under ``batching.kv = "paged"`` after this step's growth of the running requests; a
    step whose growth does not fit preempts the latest admitted running requests back to the head
    of ``waiting``). Running requests left out simply do not advance this step. The batch may be empty only when
    nothing can run; the engine then waits for the next arrival (an empty batch with runnable
    requests and no arrival to come is a deadlock error). Deterministic under the seed.
    """

    def __init__(self, *, max_batch: int, max_tokens: int, seed: int = 0) -> None:
        if max_batch <= 0 or max_tokens <= 0:
            raise ValueError(f"max_batch and max_tokens must be > 0, got {max_batch}, {max_tokens}")
        self.max_batch = int(max_batch)
        self.max_tokens = int(max_tokens)
        self.rng = np.random.default_rng(seed)

    @abstractmethod
    def schedule(
        self, now: float, waiting: Sequence[RequestState], running: Sequence[RequestState], kv_free_tokens: int
    ) -> Batch:
        """The next step's batch (see class doc)."""


#: Alias kept for readers of the issue text ("placement", "scheduling" kinds).
SchedulingPolicy = TokenScheduler


# ------------------------------------------------------------------------- incremental caches
class IncrementalCachePolicy(CachePolicy):
    """A `CachePolicy` whose bookkeeping is incremental: O(1) or O(log n) work per expert touched,
    no scan over all keys. A subclass keeps its own victim order (an ordered dict, a heap with lazy
    deletion) up to date through four hooks on flat keys, and picks victims from it:

    - `_touch` (an `access`: the used experts, which were resident), `_inserted` (experts became
      resident, sorted keys), `_removed` (experts were evicted), `_rebuild` (after `warm`);
    - `_pick(n, only_layer, excluded)`: up to ``n`` distinct evictable residents (resident, not
      pinned, not in ``excluded``; of layer ``only_layer`` when >= 0), best victim first.

    The public API and its guarantees are those of `CachePolicy`; the list methods (`access_list`,
    `admit_list`) are the native ones and the array methods wrap them, so both give the same answers.
    The generic `_on_access` / `_choose_victims` hooks are implemented with the same order (for
    callers that use them directly).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pinned_flat: bytes = self.pinned.astype(np.uint8).tobytes()
        self._layer_cap: list[int] = self.layer_capacity.tolist()
        self._layer_n: list[int] = self.resident.sum(axis=1).tolist()

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _touch(self, layer: int, experts: list[int], hits: list[bool]) -> None:
        """``experts`` (ascending) of ``layer`` were used; ``hits[i]``: ``experts[i]`` was resident."""

    @abstractmethod
    def _inserted(self, keys: list[int], prefetch: bool) -> None:
        """Flat ``keys`` (ascending) became resident (none is pinned)."""

    @abstractmethod
    def _removed(self, keys: list[int]) -> None:
        """Flat ``keys`` were evicted."""

    @abstractmethod
    def _rebuild(self) -> None:
        """The residents were set by `warm`: rebuild the victim order from ``resident``."""

    @abstractmethod
    def _pick(self, n: int, only_layer: int, excluded: set[int]) -> list[int]:
        """Up to ``n`` distinct evictable residents, best victim first (see class doc)."""

    def _evictable(self) -> list[int]:
        """Flat keys of the evictable residents (resident and not pinned), ascending."""
        return np.flatnonzero((self.resident & ~self.pinned).ravel()).tolist()

    # ------------------------------------------------------------------ native list API
    def access_list(self, layer: int, experts: list[int], now: float) -> list[bool]:
        res = self._res
        base = layer * self.n_experts
        hits = [res[base + e] == 1 for e in experts]
        self._touch(layer, experts, hits)
        self.n_accessed += len(experts)
        return hits

    def admit_list(
        self,
        layer: int,
        experts: list[int],
        now: float,
        *,
        protect: list[int] | None = None,
        prefetch: bool = False,
        protect_keys: Collection[int] | None = None,
    ) -> tuple[list[bool], list[int]]:
        res = self._res
        base = layer * self.n_experts
        admitted = [res[base + e] == 1 for e in experts]
        new = [i for i, a in enumerate(admitted) if not a]
        if new and self._filters:
            ok = np.asarray(
                self._admission_filter(layer, np.asarray([experts[i] for i in new], dtype=np.int64), now, prefetch),
                dtype=bool,
            ).tolist()
            new = [i for i, o in zip(new, ok, strict=True) if o]
        victims: list[int] = []
        if new:
            need = len(new) - self._free_for(layer)
            if need > 0:
                excluded = {base + e for e in protect} if protect is not None else set()
                if protect_keys is not None:
                    excluded.update(protect_keys)
                victims = self._evict_keys(need, layer if self.per_layer else -1, excluded)
            take = new[: min(len(new), self._free_for(layer))]
            if take:
                keys = sorted([base + experts[i] for i in take])
                for k in keys:
                    res[k] = 1
                for i in take:
                    admitted[i] = True
                self._n_resident += len(take)
                self._layer_n[layer] += len(take)
                self._inserted(keys, prefetch)
        return admitted, victims

    def _evict_keys(self, n: int, only_layer: int, excluded: set[int]) -> list[int]:
        keys = self._pick(n, only_layer, excluded)[:n]
        res = self._res
        pinned = self._pinned_flat
        E = self.n_experts
        layer_n = self._layer_n
        for k in keys:
            if res[k] != 1 or pinned[k] or k in excluded or (only_layer >= 0 and k // E != only_layer):
                raise RuntimeError(f"{type(self).__name__} chose victims that are not evictable residents: {keys}")
            res[k] = 0  # a key chosen twice fails the residency check the second time
            layer_n[k // E] -= 1
        self._n_resident -= len(keys)
        if keys:
            self._removed(keys)
        return keys

    # ------------------------------------------------------------------ array API (wrappers)
    def access(self, layer: int, experts: npt.NDArray[np.integer], now: float) -> BoolArray:
        return np.asarray(self.access_list(layer, np.asarray(experts, dtype=np.int64).tolist(), now), dtype=bool)

    def admit(
        self,
        layer: int,
        experts: npt.NDArray[np.integer],
        now: float,
        *,
        protect: npt.NDArray[np.integer] | None = None,
        prefetch: bool = False,
        protect_keys: npt.NDArray[np.integer] | None = None,
    ) -> Admission:
        admitted, victims = self.admit_list(
            layer,
            np.asarray(experts, dtype=np.int64).tolist(),
            now,
            protect=None if protect is None else np.asarray(protect, dtype=np.int64).tolist(),
            prefetch=prefetch,
            protect_keys=None if protect_keys is None else np.asarray(protect_keys, dtype=np.int64).tolist(),
        )
        return Admission(admitted=np.asarray(admitted, dtype=bool), victims=self._pairs(victims))

    def evict(
        self,
        n: int,
        now: float,
        *,
        layer: int = -1,
        protect: npt.NDArray[np.integer] | None = None,
        protect_keys: npt.NDArray[np.integer] | None = None,
    ) -> IntArray:
        excluded: set[int] = set()
        if protect is not None and layer >= 0:
            excluded.update((layer * self.n_experts + np.asarray(protect, dtype=np.int64)).tolist())
        if protect_keys is not None:
            excluded.update(np.asarray(protect_keys, dtype=np.int64).tolist())
        if n <= 0:
            return _NO_VICTIMS
        return self._pairs(self._evict_keys(n, -1, excluded))

    def _pairs(self, keys: list[int]) -> IntArray:
        if not keys:
            return _NO_VICTIMS
        k = np.asarray(keys, dtype=np.int64)
        return np.column_stack((k // self.n_experts, k % self.n_experts))

    def _free_for(self, layer: int) -> int:
        if self.per_layer:
            return self._layer_cap[layer] - self._layer_n[layer]
        return self.capacity - self._n_resident

    def _on_warm(self, resident: BoolArray) -> None:
        self._layer_n = self.resident.sum(axis=1).tolist()
        self._rebuild()

    # ------------------------------------------------------------------ generic hooks, same order
    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        self._touch(layer, experts.tolist(), hits.tolist())

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        allowed = np.flatnonzero(candidates.ravel()).tolist()
        excluded = set(self._evictable()) - set(allowed)
        return np.asarray(self._pick(n, -1, excluded)[:n], dtype=np.int64)
