"""The simpy engine: plays requests on a `BoundMapping` with costs from a `StepCostPlan`.

The kernel knows time, not hardware: every ``yield env.timeout(t)`` uses a time that a
`CostModel` call returned. Links (copy engines), compute streams, the host CPU and the peer fabric
are simpy resources, so fetches overlap compute and contend where they share a link.

What one step does (continuous batching, one step at a time):

1. the token scheduler picks the batch (prefill chunks and decode tokens) from the waiting and
   running requests; admitted requests reserve their whole KV cache (``batching.kv = "reserve"``,
   no preemption) or their prompt's, then a token per step (``"paged"``: a step that would overflow
   a device preempts its latest admitted requests, which recompute; that step admits no one);
2. for every model layer in order: attention (per device: ``attention_prefill`` of each prefill
   chunk + ``attention_decode`` of the decode tokens at their mean context) and, for an MoE layer,
   the ``router``, for a dense layer its FFN (``expert_ffn`` of a model whose expert width is the
   dense FFN width); the layer's attention phase lasts the longest device's time;
3. for an MoE layer: prefetch decisions (the prefetch policy, right after the router), the
   all-to-all dispatch over the peer link when experts live on several devices, then on every
   device holding needed experts: cache lookup (a *hit* is an expert resident with its weights
   there; one admitted by a prefetch whose copy is still in flight is a *late prefetch*, not a hit:
   the layer waits for its arrival; each prefetch is resolved once as on time, late or wasted, i.e.
   evicted unused); each miss goes to the miss policy (fetch the
   weights over the device's copy engine, or compute on the host CPU); the device's compute
   stream runs the shared experts and the resident experts (one group: `StepCostPlan.group`,
   as the device kind's expert strategy runs them), then each fetched expert as soon as
   its weights arrive; the CPU computes its experts in parallel (``cpu_expert`` plus the
   activations over the host link both ways); then the all-to-all combine. With a *near* tier
   (``Mapping.near``, e.g. an RDU's SRAM above HBM) an expert found there is computed with its
   weights read from that tier, and experts used from the cache tier are promoted into it in the
   background (a copy over the tier path, then usable); promotions do not contend with compute
   for the cache tier's bandwidth (an approximation).

Expert-parallel execution (``Mapping.ep_execution``, several devices):

- ``"classic"`` (DeepSpeed-MoE style): a token lives on its request's device (attention, router,
  shared experts and dense layers run there); at every MoE layer its assignments whose expert lives
  elsewhere are dispatched (all-to-all) and their outputs come back (combine all-to-all). The
  cross-device share is then about ``1 - 1/n_devices`` whatever the placement.
- ``"context-coherent"`` (ExFlow, Yao et al. IPDPS 2024: "only uses one Alltoall communication"):
  a token starts the step on its request's device; after MoE layer ``l`` it stays on the home of
  its *top-1* expert there (the first valid slot of its routing row, the router's highest-ranked
  choice; a token with no expert at a layer stays where it is), and its next attention, router,
  shared experts (and any dense layer) run there. At layer ``l + 1`` only the assignments whose
  expert lives off that device cross (the dispatch all-to-all); there is no combine back. With
  top-k > 1 the other ``k - 1`` partial outputs still have to reach the token's new device: they
  are sent there (a ``gather`` all-to-all, only for those whose expert lives elsewhere). So an
  affinity-aware placement (ExFlow) lowers the cross-device share. Assumptions (labelled): the
  token's KV cache is usable wherever the token is (ExFlow keeps the context coherent across
  GPUs); neither replica memory nor the traffic to keep the replicas coherent is charged (KV
  memory stays reserved on the request's device), which favours this mode; a prefill chunk whose
  tokens are spread over devices charges each device its share of tokens of the chunk's
  ``attention_prefill`` cost; the next step's token starts again on its request's device (the
  sampled token id is not costed). On one device both modes are identical.

Hence at zero load with every expert resident, a step's latency is exactly the sum over layers
of ``attention + router (or dense FFN) + shared + sum of expert costs`` (`zero_load_step_s`
computes that sum independently; a test pins the equality).

Costs: every operation's cost comes from one `codesign.costplan.StepCostPlan` (the same plan
the analytic model and `zero_load_step_s` use): the resident experts of a layer on a device run
as one group (grouped GEMM or per expert, as the mapping's kernel execution says; an FPGA stream),
a fetched expert alone when its weights arrive.

Granularity: the step is the unit of work. `_prepare` evaluates what a step needs as arrays (one
``bincount`` over its routing rows, per-token costs per device, memoised for devices with equal
specs). When nothing in the step contends across time (no prefetch, no host CPU path, no near
tier, no event log; caches whose decisions do not read the time), `codesign._engine_fast.
ArithmeticStep` computes the whole step (cache decisions layer by layer, then costs vectorised over
layers and devices, then the times) and the engine waits once; otherwise `_step_general` plays it
with simpy events per layer and device (a layer's demand fetches are one link hold and one compute
chain; prefetches one transfer each). Both give the same results (a test pins it). Steps and
requests are written as typed records (`codesign.records`).

Assumptions (labelled): activations are `hwmodels.costs.ACTIVATION_BYTES` per element (bf16) for
the all-to-all and the CPU path; the embedding lookup is not costed, the LM head and the serving
stack's MoE permute and host CPU time only when ``Mapping.stack`` charges them (issue 8: `_step_tail`,
`StepCostPlan.moe_permute`; the default stack ``none`` charges nothing); chunked prefill attends
only to its own chunk. Energy is the sum of ``OpCost.energy_J`` of every operation played, which
includes each device's static power over the operation (hwmodels.costs), plus the static power
of every accelerator and of the host over the rest of the makespan (idle: waiting for transfers,
arrivals or other devices), so energy per token is that of the whole powered system. On an FPGA
the resident experts of a layer run as one `CostModel.fpga_layer` (double-buffered, with its
pipeline fill).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from heapq import heappush
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import simpy
from simpy.core import NORMAL
from tqdm import tqdm

from codesign._engine_fast import AllToAllMemo, ArithmeticStep, DecodeAttention, StepInputs
from codesign._engine_simpy import ProcGen, SimpyStep, _arr
from codesign.costplan import StepCostPlan, zero_load_step_s
from codesign.mapping import BoundMapping
from codesign.policies import REGISTRIES
from codesign.policies.base import (
    AccessSequence,
    Batch,
    CachePolicy,
    MissPolicy,
    PrefetchPolicy,
    RequestState,
    TokenScheduler,
)
from codesign.records import RequestRecord, StepCounters, StepRecord, records_frame
from codesign.result import Event
from hwmodels.costs import ACTIVATION_BYTES, intranode_share

if TYPE_CHECKING:
    from hwmodels.devices import Link
    from workloads.trace import RoutingTrace

log = logging.getLogger(__name__)

__all__ = ["ACTIVATION_BYTES", "Engine", "EngineOutput", "SimRequest", "zero_load_step_s"]


@dataclass(frozen=True)
class SimRequest:
    """A request to play: its arrival and its routing rows (see `RequestState`)."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    routing: npt.NDArray[np.int16]


@dataclass
class EngineOutput:
    """Raw output of one engine run (turned into a `Result` by `codesign.simulate`)."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    events: list[Event] | None
    makespan_s: float
    hit_rate: dict[str, float]
    bytes_moved: dict[str, float]
    peak_memory_bytes: dict[str, float]
    energy_J: float
    mean_requests_in_system: float
    access: list[AccessSequence] | None
    counters: dict[str, float] = field(default_factory=dict)


def _mean_int(values: list[int]) -> float:
    """``float(np.mean(values))`` of a non-empty list of ints, bit for bit, without numpy's overhead:
    while the sum is below 2**53 it is exact in float64 (numpy's float sum is then exact too), and
    both divisions are correctly rounded."""
    total = sum(values)
    if abs(total) < 2**53:
        return total / len(values)
    return float(np.mean(values))


class _CountingEnvironment(simpy.Environment):
    """A simpy environment that counts the events it schedules (for the events/s figure)."""

    def __init__(self) -> None:
        super().__init__()
        self.n_events = 0

    def schedule(self, event: simpy.Event, priority: Any = 1, delay: float = 0) -> None:
        self.n_events += 1
        super().schedule(event, priority, delay)

    def timeout_at(self, when: float) -> simpy.Event:
        """An event that fires at the absolute time ``when`` (>= now): a `Timeout` whose end time is
        exactly ``when`` (``now + (when - now)`` can differ from ``when`` in the last bit, and the
        arithmetic step path computes its end time exactly as the process path advances ``now``)."""
        if when < self.now:
            raise ValueError(f"timeout_at({when!r}) is before now ({self.now!r})")
        ev = simpy.Event(self)
        ev._ok = True
        ev._value = None
        self.n_events += 1
        heappush(self._queue, (when, NORMAL, next(self._eid), ev))
        return ev


class Engine:
    """One simulation run. Build, then call `run` once. All state lives on the instance.

    ``futures`` (one `AccessSequence` per device) is required when the cache policy needs the
    future; ``record_access`` records each device's access sequence (for such a policy's next run).
    ``fast=False`` plays every step with simpy processes (`SimpyStep`) even where the arithmetic
    path (`ArithmeticStep`, chosen by `_arithmetic_ok`) would give the same results: for cross-checks.

    Pieces: this class owns the run's state (caches, policies, simpy resources, counters) and plays
    arrivals, batching and steps; `_prepare` turns a step's batch into `StepInputs`; `ArithmeticStep`
    (`codesign._engine_fast`) or `SimpyStep` (`codesign._engine_simpy`) plays the step's layers;
    `_finish_step` writes its `StepRecord`; `_output` builds the `EngineOutput`.
    """

    def __init__(
        self,
        bound: BoundMapping,
        cost: Any,
        *,
        seed: int = 0,
        record_events: bool = False,
        progress: bool = False,
        train: RoutingTrace | None = None,
        futures: Sequence[AccessSequence] | None = None,
        record_access: bool = False,
        fast: bool = True,
    ) -> None:
        self.bound = bound
        self.model = bound.model
        self.platform = bound.platform
        self.cost = cost
        self.plan = StepCostPlan(cost, bound)
        self.seed = seed
        self.record_events = record_events
        self.progress = progress
        m = bound.mapping
        model = self.model
        self.L = model.n_moe_layers
        self.E = model.n_experts
        self.n_dev = bound.n_devices
        self.home_flat = bound.expert_home.ravel()
        moe_index = np.full(model.n_layers, -1, dtype=np.int64)
        moe_index[list(model.moe_layers)] = np.arange(self.L)
        self.moe_index = moe_index.tolist()
        # token position of each model layer: the number of MoE layers before it (0..L); a token's
        # device can change only at an MoE layer (context-coherent execution)
        self.position = np.cumsum(np.concatenate([[0], moe_index[:-1] >= 0])).astype(np.int64).tolist()
        self.coherent = m.ep_execution == "context-coherent"
        # policies
        cache_cls = REGISTRIES["cache"].get(m.cache.policy)
        self.caches: list[CachePolicy] = []
        for d in range(self.n_dev):
            c: CachePolicy = cache_cls(
                capacity=bound.slots[d],
                n_layers=self.L,
                n_experts=self.E,
                pinned=bound.pinned[d],
                seed=seed + d,
                **dict(m.cache.options),
            )
            if c.needs_training:
                if train is None:
                    raise ValueError(
                        f"cache policy {m.cache.policy!r} must be trained: set mapping "
                        "train_fraction > 0 or pass train="
                    )
                c.fit(train)
            if c.needs_lookahead:
                if futures is None or len(futures) != self.n_dev:
                    raise ValueError(
                        f"cache policy {m.cache.policy!r} needs the future access sequence "
                        "(simulate() records it in a first pass)"
                    )
                c.prepare(futures[d])
            c.warm(bound.initial[d])
            self.caches.append(c)
        self.near_caches: list[CachePolicy] | None = None
        if m.near is not None:
            near_cls = REGISTRIES["cache"].get(m.near.policy)
            self.near_caches = []
            for d in range(self.n_dev):
                nc: CachePolicy = near_cls(
                    capacity=bound.near_slots[d],
                    n_layers=self.L,
                    n_experts=self.E,
                    seed=seed + 1000 + d,
                    **dict(m.near.options),
                )
                if nc.needs_lookahead:
                    raise ValueError(f"near tier: oracle cache policy {m.near.policy!r} is not supported there")
                if nc.needs_training:
                    if train is None:
                        raise ValueError(
                            f"near cache policy {m.near.policy!r} must be trained: set mapping "
                            "train_fraction > 0 or pass train="
                        )
                    nc.fit(train)
                nc.warm(np.zeros((self.L, self.E), dtype=bool))
                self.near_caches.append(nc)
        self.prefetcher: PrefetchPolicy | None = None
        if m.prefetch != "none":
            self.prefetcher = REGISTRIES["prefetch"].create(
                m.prefetch, n_layers=self.L, n_experts=self.E, top_k=model.top_k, seed=seed, **dict(m.prefetch_options)
            )
            if self.prefetcher.needs_training:
                if train is None:
                    raise ValueError(
                        f"prefetch policy {m.prefetch!r} must be trained: set mapping train_fraction > 0 or pass train="
                    )
                self.prefetcher.fit(train)
        self.miss: MissPolicy = REGISTRIES["miss"].create(m.miss, seed=seed, **dict(m.miss_options))
        self.scheduler: TokenScheduler = REGISTRIES["scheduling"].create(
            m.batching.scheduler,
            max_batch=m.batching.max_batch,
            max_tokens=m.batching.max_tokens,
            seed=seed,
            **dict(m.batching.options),
        )
        # simpy world
        self.env = _CountingEnvironment()
        env = self.env
        self.compute = [simpy.Resource(env, 1) for _ in range(self.n_dev)]
        self.copy = [simpy.PriorityResource(env, 1) for _ in range(self.n_dev)]
        host = self.platform.host
        self.host_cpu = simpy.Resource(env, 1) if host is not None else None
        self.fabric = simpy.Resource(env, 1) if self.n_dev > 1 else None
        # fetch paths (costs of one expert's copy, from the plan)
        plan = self.plan
        bpe = float(model.bytes_per_expert)
        self.bpe = bpe
        self.fetch_link: list[Link | None] = list(plan.fetch_links)
        self.fetch_s: list[float] = [float(plan.fetch(d).total_s) for d in range(self.n_dev)]
        self.fetch_J: list[float] = [float(plan.fetch(d).energy_J) for d in range(self.n_dev)]
        self.cpu_possible = host is not None and self.platform.host_link is not None and bound.offloaded
        self._fetch_only = m.miss == "fetch"
        self.near_link: list[Link] = []
        self.near_copy_s: list[float] = []
        self.near_copy_J: list[float] = []
        self.near_copy = [simpy.Resource(env, 1) for _ in range(self.n_dev)] if self.near_caches else []
        self.near_inflight: list[dict[int, simpy.Event]] = [{} for _ in range(self.n_dev)]
        if self.near_caches is not None and bound.near_tier is not None:
            self.near_link = list(plan.near_links)
            for d in range(self.n_dev):
                nc_cost = plan.near_copy(d)
                self.near_copy_s.append(float(nc_cost.total_s))
                self.near_copy_J.append(float(nc_cost.energy_J))
        self.n_near_access = 0
        self.n_near_hits = 0
        self.peak_near = [0] * self.n_dev
        self._near_s: list[npt.NDArray[np.float64]] = []
        self._near_J: list[npt.NDArray[np.float64]] = []
        # state
        self.waiting: list[RequestState] = []
        self.running: list[RequestState] = []
        self.by_id: dict[int, RequestState] = {}
        self.req_device: dict[int, int] = {}
        self.kv_used = [0] * self.n_dev  # KV tokens set aside per device (see BatchingSpec.kv)
        self._kv_paged = bound.mapping.batching.kv == "paged"
        self._kv_held: dict[int, int] = {}  # paged: KV tokens each running request holds
        self._orig_len: dict[int, tuple[int, int]] = {}  # preempted requests' own (prompt, output) tokens
        self.n_preemptions = 0
        self.n_recomputed = 0  # KV tokens preempted requests had, processed again
        self.a2a_s = 0.0  # seconds of all-to-all calls (dispatch + combine) over the run, one device's
        self.peak_kv_set_aside = 0  # most KV tokens set aside on one device (kv_used) after a step's admission
        self.inflight: list[dict[int, simpy.Event]] = [{} for _ in range(self.n_dev)]
        # prefetched experts (keys layer * E + expert) not used yet, per device: each prefetch is
        # resolved once, as on time (resident when first needed), late (still in flight when first
        # needed) or wasted (evicted before any use); the rest are unused at the end of the run
        self.pf_unused: list[set[int]] = [set() for _ in range(self.n_dev)]
        self.n_pf_issued = 0
        self.n_pf_on_time = 0
        self.n_pf_late = 0
        self.n_pf_wasted = 0
        self.finished: list[RequestState] = []
        self.arrivals_done = False
        self._wake: simpy.Event = env.event()
        self.events: list[Event] | None = [] if record_events else None
        self.dev_names = [f"{d}:{dev.name}" for d, dev in enumerate(bound.devices)]
        # counters
        self.n_access = 0
        self.assign_device = 0
        self.assign_cpu = 0
        self.n_hits = 0
        self.bytes: dict[str, float] = {}
        self.energy_J = 0.0
        self.busy_s = [0.0] * self.n_dev
        self.host_busy_s = 0.0
        self.peak_resident = [int(c.n_resident) for c in self.caches]
        self.peak_kv_tokens = [0] * self.n_dev
        self.peak_staging = [0] * self.n_dev
        self._area = 0.0
        self._area_t = 0.0
        self._in_system = 0
        self.record_access = record_access
        self._access_log: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(self.n_dev)]
        self.step_records: list[StepRecord] = []
        self.step_idx = 0
        self._recent_load = np.zeros((self.L, self.E))
        # counters of the step being played
        self._c = StepCounters()
        self._layer_base = np.arange(self.L, dtype=np.int64) * self.E
        # devices with equal specs share per-token cost answers (memoised per step shape)
        self._dev_key = [bound.devices.index(dev) for dev in bound.devices]
        self._dev_cost_memo: dict[tuple[Any, ...], tuple[float, ...]] = {}  # see _device_costs
        self._group_memo: dict[tuple[Any, ...], tuple[float, float]] = {}  # see _group_cost
        self._pos_memo: dict[tuple[Any, ...], tuple[npt.NDArray[np.float64], ...]] = {}  # see _classic_costs
        self._resident_memo: dict[tuple[Any, ...], tuple[npt.NDArray[np.float64], float, int]] = {}
        # one expert on one device: requests whose routing rows are all expert 0 (every token of every
        # layer goes there) need no routing work in a step (see `_prepare`)
        self._one_expert = self.E == 1 and self.n_dev == 1
        self._zero_routing: set[int] = set()
        self._zero_steps: dict[tuple[int, int], tuple[npt.NDArray[np.int16], npt.NDArray[np.int64]]] = {}
        # ids of the waiting and running requests (kept with the lists, for `_admit`'s checks), and the
        # KV-cache tokens in use per device (the sum of the running requests' context tokens)
        self._waiting_ids: set[int] = set()
        self._running_ids: set[int] = set()
        self._ctx_in_use = [0] * self.n_dev
        if not bound.offloaded:
            for d, cache in enumerate(self.caches):
                missing = (bound.expert_home == d) & ~cache.resident
                if missing.any():
                    layer, expert = (int(x[0]) for x in np.nonzero(missing))
                    raise RuntimeError(
                        f"device {d}: expert ({layer}, {expert}) is homed there but not resident although "
                        "the mapping offloads nothing (cache policy bug)"
                    )
        self._a2a = AllToAllMemo(self.plan)  # the all-to-all costs by bytes value
        self._attn_decode = DecodeAttention(self.plan, self._dev_key)  # decode attention by context sum
        self.simpy_step = SimpyStep(self)
        self._tail_on = self.plan.stack.charges_anything  # issue 8: see _step_tail
        self.fast: ArithmeticStep | None = None
        if fast and self._arithmetic_ok():
            self.fast = ArithmeticStep(self)

    def _group_cost(self, d: int, counts: list[int]) -> tuple[float, float]:
        """Seconds and joules of one layer's ready experts on device ``d`` run as a group (demand-
        fetching mappings; both step paths ask here). ``counts``: their tokens, in expert order.

        The plan's group cost depends on the experts' token counts only (experts of a model are
        alike), so answers are memoised by the sorted counts and computed on them (a canonical
        order: the sum is the same whatever the order, to the last bit only in that order). An
        FPGA streams experts in the given order, so its groups are asked as they are."""
        if not counts:
            return 0.0, 0.0
        plan = self.plan
        if self.bound.devices[d].kind == "fpga":
            c = plan.layer_experts(d, np.asarray(counts, dtype=np.int64))
            return float(c.total_s), float(c.energy_J)
        key = (self._dev_key[d], self.bound.cache_tier[d], tuple(sorted(counts)))
        hit = self._group_memo.get(key)
        if hit is None:
            arr = np.asarray(key[2], dtype=np.int64)
            if plan.serial_experts(d):
                per = plan.experts(d, arr)
                hit = (float(np.sum(per.total_s)), float(np.sum(per.energy_J)))
            else:
                c = plan.layer_experts(d, arr)
                hit = (float(c.total_s), float(c.energy_J))
            if len(self._group_memo) > 65536:
                self._group_memo.clear()
            self._group_memo[key] = hit
        return hit

    def _resident_experts(self, d: int, counts: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], float, int]:
        """Every expert resident: device ``d``'s experts of each layer run as one group on ``counts``
        (tokens per flat key ``layer * E + expert``, zeros for experts homed elsewhere): the ``[L]``
        seconds of each layer's group (read-only), the joules of all, and the number of active
        (layer, expert) pairs. The plan's answer depends on the counts only, so it is memoised by
        them (a dense model's steps repeat their counts; the memo holds at most ~32 MB of keys)."""
        key = (self._dev_key[d], self.bound.cache_tier[d], counts.tobytes())
        hit = self._resident_memo.get(key)
        if hit is None:
            c = self.plan.layer_experts(d, counts.reshape(self.L, self.E))
            total = np.array(c.total_s, dtype=np.float64)
            total.flags.writeable = False
            hit = (total, float(np.sum(c.energy_J)), int(np.count_nonzero(counts)))
            if len(self._resident_memo) * counts.nbytes > 32 * 2**20:
                self._resident_memo.clear()
            self._resident_memo[key] = hit
        return hit

    def _arithmetic_ok(self) -> bool:
        """True when nothing in a step contends across time, so a step's times follow from its costs
        by arithmetic (`ArithmeticStep`): no prefetches (transfers that outlive their layer), no host
        CPU path, no near tier (background promotions), no event log, and caches whose decisions do
        not read the time (`CachePolicy.time_independent`) when anything is offloaded. Issue 8: copy-back
        eviction, streamed non-expert weights and whole-layer fetches are played by `SimpyStep` only."""
        if self.prefetcher is not None or self.near_caches is not None or self.events is not None:
            return False
        if self.cpu_possible and not self._fetch_only:
            return False
        m = self.bound.mapping  # issue 8: mechanisms of the simpy path only (see `codesign._engine_simpy`)
        if m.offload_non_expert or m.fetch_whole_layer or (m.cache.eviction == "copy-back" and self.bound.offloaded):
            return False
        return not self.bound.offloaded or all(type(c).time_independent for c in self.caches)

    # ------------------------------------------------------------------ helpers
    def _event(self, d: int, resource: str, kind: str, start: float, end: float, label: str) -> None:
        if self.events is not None and end > start:
            self.events.append(Event(self.dev_names[d] if d >= 0 else "host", resource, kind, start, end, label))

    def _add_bytes(self, link: Link | None, n: float) -> None:
        if link is not None and n > 0:
            self.bytes[link.name] = self.bytes.get(link.name, 0.0) + float(n)

    def _count_all_to_all(self, si: StepInputs) -> None:
        """Book a step's all-to-alls: the bytes that leave their device (on the peer link, or across
        nodes split with the scale-out link as `hwmodels.costs.CostModel.all_to_all_nodes` splits
        them: `hwmodels.costs.intranode_share`), and their seconds (dispatch + combine per layer)."""
        plat, n = self.platform, si.bytes_peer
        per_node = plat.nodes_of(self.n_dev)
        if per_node is None:
            self._add_bytes(plat.peer_link, n)
        else:
            intra = float(n) * intranode_share(self.n_dev, per_node)
            self._add_bytes(plat.peer_link, intra)
            self._add_bytes(plat.scale_out_link, float(n) - intra)
        self._c.bytes_peer += n
        self.a2a_s += float(sum(d + c for d, _, c, _ in si.a2a))

    def _mark(self, delta: int) -> None:
        now = self.env.now
        self._area += self._in_system * (now - self._area_t)
        self._area_t = now
        self._in_system += delta

    # --------------------------------------------------------------------- run
    def run(self, requests: Sequence[SimRequest]) -> EngineOutput:
        """Play ``requests`` (any order; sorted by arrival) to completion."""
        reqs = sorted(requests, key=lambda r: (r.arrival_s, r.request_id))
        total_out = int(sum(r.output_tokens for r in reqs))
        # no bar object at all without progress: tqdm's first instance in a process creates a
        # multiprocessing lock (milliseconds), even when disabled
        self._bar = (
            tqdm(total=total_out, unit="tok", desc="simulate", mininterval=0.5, leave=False) if self.progress else None
        )
        try:
            self.env.process(self._arrivals(reqs))
            server = self.env.process(self._serve())
            self.env.run(until=server)
        finally:
            if self._bar is not None:
                self._bar.close()
        return self._output()

    def _arrivals(self, reqs: Sequence[SimRequest]) -> ProcGen:
        env = self.env
        for r in reqs:
            if r.arrival_s > env.now:
                yield env.timeout(r.arrival_s - env.now)
            st = RequestState(
                request_id=r.request_id,
                arrival_s=r.arrival_s,
                prompt_tokens=r.prompt_tokens,
                output_tokens=r.output_tokens,
                routing=r.routing,
                kv_paged=self._kv_paged,
            )
            self.waiting.append(st)
            self._waiting_ids.add(r.request_id)
            self.by_id[r.request_id] = st
            if self._one_expert and not r.routing.any():
                self._zero_routing.add(r.request_id)
            self._mark(+1)
            if not self._wake.triggered:
                self._wake.succeed()
        self.arrivals_done = True
        if not self._wake.triggered:
            self._wake.succeed()

    def _serve(self) -> ProcGen:
        env = self.env
        while True:
            if not self.waiting and not self.running:
                if self.arrivals_done:
                    return
                self._wake = env.event()
                yield self._wake
                continue
            # the running requests that decode this step (paged KV: each takes a token), found once
            # for the scheduler's KV budget and the step's KV growth
            decoding = self._decoding(r.request_id for r in self.running) if self._kv_paged else set()
            batch = self.scheduler.schedule(env.now, tuple(self.waiting), tuple(self.running), self._kv_free(decoding))
            preempted_before = self.n_preemptions
            plan = self._admit(batch, decoding)
            if not plan and self.n_preemptions > preempted_before:
                continue  # the step preempted all it had chosen: the freed KV lets the scheduler choose again
            if not plan:
                if self.arrivals_done:
                    ids = [r.request_id for r in self.waiting][:5]
                    raise RuntimeError(
                        f"scheduler {self.bound.mapping.batching.scheduler!r} returned an empty batch with "
                        f"{len(self.waiting)} waiting (e.g. {ids}) and {len(self.running)} running requests and "
                        "no arrival to come (a request's KV cache may exceed the free KV memory)"
                    )
                self._wake = env.event()
                yield self._wake
                continue
            yield from self._step(plan)

    def _admit(self, batch: Batch, decoding: set[int]) -> list[tuple[RequestState, int]]:
        """Validate the scheduler's batch against its contract and admit chosen waiting requests;
        ``decoding`` are the running requests that decode this step (`_decoding`, paged KV only)."""
        name = self.bound.mapping.batching.scheduler
        if len(set(batch.request_ids)) != len(batch.request_ids):
            raise RuntimeError(f"scheduler {name!r} put a request twice in one batch: {batch.request_ids}")
        if batch.total_tokens > self.scheduler.max_tokens:
            raise RuntimeError(
                f"scheduler {name!r} exceeded max_tokens: {batch.total_tokens} > {self.scheduler.max_tokens}"
            )
        running_ids = self._running_ids
        waiting_ids = self._waiting_ids
        by_id = self.by_id
        plan: list[tuple[RequestState, int]] = []
        admitted: set[int] = set()
        preempted = self._make_room(batch, decoding) if self._kv_paged else set()
        for rid, n in zip(batch.request_ids, batch.n_tokens, strict=True):
            if rid in preempted:
                continue
            st = by_id.get(rid)
            if st is None or (rid not in running_ids and rid not in waiting_ids):
                raise RuntimeError(f"scheduler {name!r} chose request {rid}, which is neither waiting nor running")
            # RequestState's in_prefill / remaining_prompt inlined (a hot loop)
            limit = st.prompt_tokens - st.prefilled if st.prefilled < st.prompt_tokens else 1
            if not 1 <= n <= limit:
                raise RuntimeError(f"scheduler {name!r} gave request {rid} {n} tokens; expected 1..{limit}")
            if rid in waiting_ids:
                if preempted:
                    continue  # a step that preempts admits no one (vLLM): the preempted go first next step
                if len(self.running) + len(admitted) >= self.scheduler.max_batch:
                    raise RuntimeError(f"scheduler {name!r} exceeded max_batch={self.scheduler.max_batch}")
                free = [self.bound.kv_capacity_tokens[d] - self.kv_used[d] for d in range(self.n_dev)]
                d = int(np.argmax(free))
                need = st.kv_admit_tokens
                if free[d] < need:
                    continue  # does not fit any device now; stays waiting
                self.kv_used[d] += need
                if self._kv_paged:
                    self._kv_held[rid] = need
                self.req_device[rid] = d
                if st.admitted_s != st.admitted_s:  # NaN: the first admission (not a preempted one's)
                    st.admitted_s = self.env.now
                admitted.add(rid)
            plan.append((st, int(n)))
        if admitted:
            self.waiting = [r for r in self.waiting if r.request_id not in admitted]
            self.running.extend(self.by_id[i] for i in batch.request_ids if i in admitted)
            waiting_ids -= admitted
            running_ids |= admitted
        top = max(self.kv_used)
        if top > self.peak_kv_set_aside:
            self.peak_kv_set_aside = top
        return plan

    def _kv_free(self, decoding: set[int]) -> int:
        """The KV tokens a scheduler may hand out to waiting requests: under ``"reserve"`` the free
        tokens of all devices; under ``"paged"`` those of the freest device once each running
        decoder there (``decoding``) has taken its next token (what `_admit` will find, so a waiting
        request the scheduler chooses is admitted)."""
        cap, used = self.bound.kv_capacity_tokens, self.kv_used
        if not self._kv_paged:
            return sum(cap) - sum(used)
        growth = self._growth(decoding)
        return max(cap[d] - used[d] - growth[d] for d in range(self.n_dev))

    def _decoding(self, ids: Iterable[int]) -> set[int]:
        """The running requests among ``ids`` that are decoding (each adds one KV token a step)."""
        running_ids, by_id = self._running_ids, self.by_id
        return {rid for rid in ids if rid in running_ids and by_id[rid].prefilled >= by_id[rid].prompt_tokens}

    def _growth(self, decoding: Iterable[int]) -> list[int]:
        """KV tokens the ``decoding`` requests (`_decoding`) add this step, per device."""
        growth = [0] * self.n_dev
        for rid in decoding:
            growth[self.req_device[rid]] += 1
        return growth

    def _make_room(self, batch: Batch, running_decoding: set[int]) -> set[int]:
        """``batching.kv = "paged"``: take this step's KV token for each decoding request of
        ``batch``, after preempting, on a device where they would not fit, its latest admitted
        running requests (LIFO, as vLLM does); returns the preempted ids. A preempted request frees
        its KV, returns to the head of ``waiting`` and will recompute what it had processed (see
        `RequestState`). It never preempts the last running request of a device: one request's
        final KV fits its device (`codesign.mapping.Mapping.bind` checks the largest).
        ``running_decoding`` are the running requests that decode this step (`_decoding`)."""
        cap, used, dev = self.bound.kv_capacity_tokens, self.kv_used, self.req_device
        decoding = running_decoding.intersection(batch.request_ids)  # the batch's decoders
        growth = self._growth(decoding)
        preempted: set[int] = set()
        for d in range(self.n_dev):
            if used[d] + growth[d] <= cap[d]:
                continue
            victims = [r for r in reversed(self.running) if dev[r.request_id] == d]
            for st in victims[:-1]:
                if used[d] + growth[d] <= cap[d]:
                    break
                if st.request_id in decoding:
                    growth[d] -= 1
                self._preempt(st, d)
                preempted.add(st.request_id)
            if used[d] + growth[d] > cap[d]:
                raise RuntimeError(
                    f"device {d}: one running request's KV cache ({used[d] + growth[d]} tokens) exceeds its "
                    f"{cap[d]}-token KV capacity (the mapping was bound without the largest request's KV)"
                )
        for rid in decoding - preempted:  # the decoding requests' next KV token, taken as the step is planned
            self._kv_held[rid] += 1
            used[dev[rid]] += 1
        return preempted

    def _preempt(self, st: RequestState, d: int) -> None:
        """Free ``st``'s KV on device ``d`` and put it back at the head of ``waiting`` as a request
        that recomputes its prompt and the outputs it fed back, plus its last output token."""
        rid = st.request_id
        context = st.prefilled + max(st.generated - 1, 0)  # context_tokens inlined
        self._ctx_in_use[d] -= context
        self.n_recomputed += context
        self.kv_used[d] -= self._kv_held.pop(rid)
        self.running.remove(st)
        self._running_ids.discard(rid)
        self._orig_len.setdefault(rid, (st.prompt_tokens, st.output_tokens))
        g = st.generated
        st.prompt_tokens += g
        st.output_tokens -= g
        st.prefilled = 0
        st.generated = 0
        self.waiting.insert(0, st)
        self._waiting_ids.add(rid)
        self.n_preemptions += 1

    # ------------------------------------------------------------------------- one step
    def _prepare(self, plan: list[tuple[RequestState, int]]) -> StepInputs:
        """Everything about a step that does not depend on time, as arrays (see `StepInputs`)."""
        n_dev, L, E = self.n_dev, self.L, self.E
        tok_dev_parts = []
        prefill_n: list[list[int]] = [[] for _ in range(n_dev)]
        dec_ctx: list[list[int]] = [[] for _ in range(n_dev)]
        plan_n: list[int] = []  # tokens of each plan entry (several devices)
        plan_ctx: list[int] = []  # context of a decode entry, 0 for a prefill chunk (several devices)
        n_prefill = n_decode = 0
        # one expert on one device, every request's routing all expert 0: the rows are zeros, known
        # without reading them (the counts follow from the token count; exact, not an approximation)
        zero = self._zero_routing
        all_zero = self._one_expert
        if n_dev == 1:
            pf, dc = prefill_n[0], dec_ctx[0]
            for st, n in plan:  # RequestState's in_prefill inlined: a hot loop
                if all_zero and st.request_id not in zero:
                    all_zero = False
                if st.prefilled < st.prompt_tokens:
                    pf.append(n)
                    n_prefill += n
                else:
                    dc.append(st.prompt_tokens + st.generated)
            n_decode = len(dc)
        else:
            req_device = self.req_device
            for st, n in plan:
                d = req_device[st.request_id]
                plan_n.append(n)
                if st.prefilled < st.prompt_tokens:
                    prefill_n[d].append(n)
                    plan_ctx.append(0)
                    n_prefill += n
                else:
                    ctx = st.prompt_tokens + st.generated
                    dec_ctx[d].append(ctx)
                    plan_ctx.append(ctx)
                    n_decode += 1
                tok_dev_parts.append(np.full(n, d, dtype=np.int64))
        tok_dev = np.concatenate(tok_dev_parts) if n_dev > 1 else None
        if all_zero:
            k = plan[0][0].routing.shape[2]
            n_tok = n_prefill + n_decode
            n_assign = n_tok * L * k
            zr = self._zero_steps.get((n_tok, k))
            if zr is None:  # read-only: a zero-stride view of one row of zeros, and the counts
                counts = np.full(L * E, n_tok * k, dtype=np.int64)
                counts.flags.writeable = False
                zr = self._zero_steps[(n_tok, k)] = (
                    np.broadcast_to(np.zeros((1, L, k), np.int16), (n_tok, L, k)),
                    counts,
                )
            rows, counts = zr
            valid: npt.NDArray[np.bool_] | None = None
            keys: npt.NDArray[np.int64] | None = None
        else:
            parts = []
            for st, n in plan:  # the rows each entry processes (RequestState.next_row inlined)
                r0 = st.prefilled if st.prefilled < st.prompt_tokens else st.prompt_tokens + st.generated - 1
                parts.append(st.routing[r0 : r0 + n])
            rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
            k = rows.shape[2]
            # vectorised routing: counts per (layer, expert), cross-device assignments
            keys = (self._layer_base[None, :, None] + rows).reshape(-1)
            valid = None  # one device with every slot routed needs no mask
            if n_dev > 1 or rows.min() < 0:
                valid = rows >= 0
                keys = keys[valid.reshape(-1)]
            counts = np.bincount(keys, minlength=L * E)
            n_assign = int(keys.size)
        cross = 0
        n_gather = 0
        coherent = self.coherent and n_dev > 1
        cur: npt.NDArray[np.int64] | None = None  # [n_tok, L + 1] device of each token before MoE layer l
        send_dev = recv_dev = gather_dev = None
        if n_dev > 1 and tok_dev is not None and valid is not None and keys is not None:
            send_dev = np.zeros((L, n_dev))
            recv_dev = np.zeros((L, n_dev))
            gather_dev = np.zeros((L, n_dev))
            if coherent:
                cur = self._token_devices(rows, valid, tok_dev)
                src = np.broadcast_to(cur[:, :L, None], rows.shape)[valid]
            else:
                src = np.broadcast_to(tok_dev[:, None, None], rows.shape)[valid]
            dst = self.home_flat[keys]
            layer_of = keys // E
            is_cross = src != dst
            cross = int(is_cross.sum())
            send_dev += np.bincount(layer_of[is_cross] * n_dev + src[is_cross], minlength=L * n_dev).reshape(L, n_dev)
            recv_dev += np.bincount(layer_of[is_cross] * n_dev + dst[is_cross], minlength=L * n_dev).reshape(L, n_dev)
            if cur is not None and k > 1:
                # partial outputs of the token's other experts go to its next device (its top-1
                # expert's home); the top-1 expert's output is already there
                first = np.argmax(valid, axis=2)
                not_top = (np.arange(k)[None, None, :] != first[:, :, None])[valid]
                nxt = np.broadcast_to(cur[:, 1:, None], rows.shape)[valid]
                g = not_top & (dst != nxt)
                n_gather = int(g.sum())
                gather_dev += np.bincount(layer_of[g] * n_dev + dst[g], minlength=L * n_dev).reshape(L, n_dev)
        if self.prefetcher is not None:
            self._recent_load *= 0.5
            self._recent_load += counts.reshape(L, E)
        # per-device layer costs, one row per token position (before MoE layer 0..L): identical rows
        # in classic execution, where every token stays on its request's device
        shape_key: tuple[Any, ...] | None = None
        if cur is not None:
            per_pos = self._coherent_costs(cur, plan_n, plan_ctx)
        else:
            shape_key, per_pos = self._classic_costs(prefill_n, dec_ctx)
        attn_s, attn_J, router_s, router_J, shared_s, shared_J, dense_s, dense_J = per_pos
        a2a: list[tuple[float, float, float, float]] = []
        bytes_peer = 0.0
        if n_dev > 1 and send_dev is not None and recv_dev is not None and gather_dev is not None:
            unit, unit_c = self.model.dispatch_bytes_per_token, self.model.combine_bytes_per_token
            send_max = send_dev.max(axis=1) * unit
            recv_max = recv_dev.max(axis=1) * unit_c
            s1, j1 = self._a2a(send_max)
            # classic: the combine sends the dispatched tokens back; context-coherent: only the other
            # experts' partial outputs travel, to the token's next device (none for top-1 routing)
            s2, j2 = self._a2a(gather_dev.max(axis=1) * unit_c if coherent else recv_max)
            a2a = list(zip(s1, j1, s2, j2, strict=True))
            bytes_peer = cross * unit + (n_gather if coherent else cross) * unit_c
        return StepInputs(
            per_position=cur is not None,
            rows=rows,
            counts=counts,
            n_prefill=n_prefill,
            n_decode=n_decode,
            n_assign=n_assign,
            cross=cross,
            attn_s=attn_s,
            attn_J=attn_J,
            router_s=router_s,
            router_J=router_J,
            shared_s=shared_s,
            shared_J=shared_J,
            dense_s=dense_s,
            dense_J=dense_J,
            a2a=a2a,
            bytes_peer=bytes_peer,
            shape_key=shape_key,
        )

    def _classic_costs(
        self, prefill_n: list[list[int]], dec_ctx: list[list[int]]
    ) -> tuple[tuple[Any, ...], tuple[npt.NDArray[np.float64], ...]]:
        """Classic execution: the step's shape on every device (its prefill chunk sizes, decode token
        count and decode context sum: what the costs depend on) and `_device_costs` as the eight
        ``[L + 1, n_dev]`` arrays of `StepInputs` (read-only views whose rows are all the same),
        memoised by that shape."""
        key = tuple((tuple(p), len(c), sum(c)) for p, c in zip(prefill_n, dec_ctx, strict=True))
        hit = self._pos_memo.get(key)
        if hit is None:
            rows = np.repeat(self._device_costs(prefill_n, dec_ctx)[:, None, :], self.L + 1, axis=1)
            rows.flags.writeable = False
            hit = tuple(rows)
            if len(self._pos_memo) > 8192:
                self._pos_memo.clear()
            self._pos_memo[key] = hit
        return key, hit

    def _device_costs(self, prefill_n: list[list[int]], dec_ctx: list[list[int]]) -> npt.NDArray[np.float64]:
        """Classic execution: ``[8, n_dev]`` time and energy per device of one layer's attention, router,
        shared experts and dense FFN (rows in that order, seconds then joules of each) for the tokens
        of the requests it holds. Answers are memoised by (device spec, token shape): devices with
        equal specs and repeated batch shapes ask the plan once."""
        n_dev = self.n_dev
        plan = self.plan
        out = [[0.0] * n_dev for _ in range(8)]
        memo = self._dev_cost_memo
        if len(memo) > 8192:
            memo.clear()
        has_shared = self.model.n_shared_experts > 0
        has_dense = plan.dense_model is not None
        for d in range(n_dev):
            n_tok = sum(prefill_n[d]) + len(dec_ctx[d])
            if n_tok == 0:
                continue
            dk = self._dev_key[d]
            akey = ("attn", dk, tuple(prefill_n[d]), len(dec_ctx[d]), sum(dec_ctx[d]))
            attn = memo.get(akey)
            if attn is None:
                a_s = a_j = 0.0
                if prefill_n[d]:
                    c = plan.attention_prefill(d, np.asarray(prefill_n[d], dtype=np.int64))
                    a_s += float(np.sum(c.total_s))
                    a_j += float(np.sum(c.energy_J))
                if dec_ctx[d]:
                    t_s, t_j = self._attn_decode(d, dec_ctx[d])
                    a_s += t_s
                    a_j += t_j
                attn = memo[akey] = (a_s, a_j)
            tkey = ("tok", dk, n_tok)
            tok = memo.get(tkey)
            if tok is None:
                vals = [0.0] * 6
                r_s, r_j = plan.router_and_permute(d, n_tok)  # the stack's MoE permute rides with the router
                vals[0], vals[1] = float(r_s), float(r_j)
                if has_shared:
                    c = plan.shared(d, n_tok)
                    vals[2], vals[3] = float(c.total_s), float(c.energy_J)
                if has_dense:
                    c = plan.dense(d, n_tok)
                    vals[4], vals[5] = float(c.total_s), float(c.energy_J)
                tok = memo[tkey] = tuple(vals)
            for i, v in enumerate(attn + tok):
                out[i][d] = v
        return np.array(out)

    def _step(self, plan: list[tuple[RequestState, int]]) -> ProcGen:
        """Play one step: the arithmetic path when nothing in it contends across time, else the simpy
        path (`_step_general`); both end with `_finish_step`."""
        t0 = self.env.now
        self._c = StepCounters()
        inputs = self._prepare(plan)
        if self.fast is not None:
            end = self.fast.play(inputs, t0)
            if self._tail_on:  # issue 8: LM head + the stack's host CPU time after the layers
                end += self._step_tail(plan, end - t0)
            if end > t0:
                yield self.env.timeout_at(end)
        else:
            yield from self.simpy_step.step(inputs)
            if self._tail_on:  # issue 8: as above
                tail = self._step_tail(plan, self.env.now - t0)
                if tail > 0:
                    yield self.env.timeout(tail)
        self._finish_step(plan, t0, inputs)

    def _step_tail(self, plan: list[tuple[RequestState, int]], layers_s: float) -> float:
        """Issue 8: seconds the step pays after its layers (``layers_s``): the LM head + sampling of
        its token-emitting sequences (decode tokens, prompts whose last chunk is in the step) on
        their devices, then the serving stack's exposed host CPU time (`StepCostPlan.step_tail`).
        Books the LM head as device busy time and energy, the CPU time as host busy time (with the
        host's static power as its energy)."""
        emitting = [0.0] * self.n_dev
        for st, n in plan:
            if st.prefilled >= st.prompt_tokens or st.prefilled + n >= st.prompt_tokens:
                emitting[self.req_device[st.request_id]] += 1.0
        lm_s, lm_J, exposed, cpu = self.plan.step_tail(emitting, layers_s)
        for d, e in enumerate(emitting):
            if e > 0:
                self.busy_s[d] += lm_s
        host = self.platform.host
        cpu_J = cpu * host.static_power_W if host is not None else 0.0
        self.host_busy_s += cpu
        self.energy_J += lm_J + cpu_J
        self._c.energy += lm_J + cpu_J
        return lm_s + exposed

    def _token_devices(
        self, rows: npt.NDArray[np.int16], valid: npt.NDArray[np.bool_], tok_dev: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Context-coherent execution: ``[n_tok, L + 1]`` device of each token before MoE layer ``l``
        (column ``L``: after the last one). A token starts the step on its request's device; after
        MoE layer ``l`` it is on the home of its top-1 expert there (the first valid slot of its
        routing row, the router's highest-ranked choice); a token with no expert at a layer stays."""
        L = self.L
        n_tok = rows.shape[0]
        first = np.argmax(valid, axis=2)  # [n_tok, L]
        top = np.take_along_axis(rows, first[:, :, None], axis=2)[:, :, 0].astype(np.int64)
        has: npt.NDArray[np.bool_] = np.asarray(valid.any(axis=2), dtype=bool)
        top_home = self.home_flat[np.arange(L, dtype=np.int64)[None, :] * self.E + np.maximum(top, 0)]
        cur = np.empty((n_tok, L + 1), dtype=np.int64)
        cur[:, 0] = tok_dev
        for layer in range(L):
            cur[:, layer + 1] = np.where(has[:, layer], top_home[:, layer], cur[:, layer])
        return cur

    def _coherent_costs(
        self, cur: npt.NDArray[np.int64], plan_n: list[int], plan_ctx: list[int]
    ) -> tuple[npt.NDArray[np.float64], ...]:
        """Per-position, per-device ``[L + 1, n_dev]`` time and energy of attention, router, shared
        experts and dense FFN when each token is processed on the device where it is (``cur``).

        Decode tokens: ``attention_decode`` of the tokens on the device at their mean context.
        Prefill chunks whose tokens are spread over devices: each device is charged its share of
        tokens of the chunk's ``attention_prefill`` cost (assumption: the chunk's attention work
        splits evenly per query token; the attention weights are not re-read per device)."""
        L1, n_dev = self.L + 1, self.n_dev
        plan = self.plan
        n_entries = len(plan_n)
        entry = np.repeat(np.arange(n_entries), plan_n)  # plan entry of each token
        ctx = np.asarray(plan_ctx, dtype=np.float64)[entry]
        is_dec = ctx > 0
        pos = np.broadcast_to(np.arange(L1)[None, :], cur.shape)
        flat = (pos * n_dev + cur).ravel()
        n_on = np.bincount(flat, minlength=L1 * n_dev).reshape(L1, n_dev)
        dec_flat = flat[np.repeat(is_dec, L1)]
        n_dec = np.bincount(dec_flat, minlength=L1 * n_dev).reshape(L1, n_dev).astype(np.float64)
        ctx_sum = np.bincount(dec_flat, weights=np.repeat(ctx[is_dec], L1), minlength=L1 * n_dev).reshape(L1, n_dev)
        mean_ctx = ctx_sum / np.maximum(n_dec, 1.0)
        pre_entries = np.flatnonzero(np.asarray(plan_ctx) == 0)
        pre_tok = ~is_dec
        # share[p, d, chunk]: fraction of prefill chunk's tokens on device d at position p
        share = np.zeros((L1, n_dev, max(pre_entries.size, 1)))
        if pre_entries.size:
            chunk_of = np.searchsorted(pre_entries, entry[pre_tok])
            sizes = np.asarray(plan_n, dtype=np.float64)[pre_entries]
            idx = ((pos[pre_tok] * n_dev + cur[pre_tok]) * pre_entries.size + chunk_of[:, None]).ravel()
            share = (
                np.bincount(idx, minlength=L1 * n_dev * pre_entries.size).reshape(L1, n_dev, pre_entries.size)
                / sizes[None, None, :]
            )
        out = [np.zeros((L1, n_dev)) for _ in range(8)]
        attn_s, attn_J, router_s, router_J, shared_s, shared_J, dense_s, dense_J = out
        for d in range(n_dev):
            on = n_on[:, d]
            if not on.any():
                continue
            if pre_entries.size:
                c = plan.attention_prefill(d, np.asarray(plan_n, dtype=np.int64)[pre_entries])
                attn_s[:, d] += share[:, d, :] @ _arr(c.total_s, pre_entries.size)
                attn_J[:, d] += share[:, d, :] @ _arr(c.energy_J, pre_entries.size)
            if is_dec.any():
                nd = n_dec[:, d]
                c = plan.attention_decode(d, nd.astype(np.int64), np.where(nd > 0, mean_ctx[:, d], 0.0))
                attn_s[:, d] += np.where(nd > 0, _arr(c.total_s, L1), 0.0)
                attn_J[:, d] += np.where(nd > 0, _arr(c.energy_J, L1), 0.0)
            r_s, r_j = plan.router_and_permute(d, on)  # the stack's MoE permute rides with the router
            router_s[:, d] = np.where(on > 0, _arr(r_s, L1), 0.0)
            router_J[:, d] = np.where(on > 0, _arr(r_j, L1), 0.0)
            ops = []
            if self.model.n_shared_experts > 0:
                ops.append((shared_s, shared_J, plan.shared(d, on)))
            if self.plan.dense_model is not None:
                ops.append((dense_s, dense_J, plan.dense(d, on)))
            for t_out, j_out, c in ops:
                t_out[:, d] = np.where(on > 0, _arr(c.total_s, L1), 0.0)
                j_out[:, d] = np.where(on > 0, _arr(c.energy_J, L1), 0.0)
        return tuple(out)

    def _finish_step(self, plan: list[tuple[RequestState, int]], t0: float, si: StepInputs) -> None:
        """Advance the requests of the finished step, retire the done ones, write the `StepRecord`."""
        now = self.env.now
        emitted = 0
        done: list[RequestState] = []
        in_use = self._ctx_in_use
        req_device = self.req_device
        for st, n in plan:  # RequestState's properties inlined (in_prefill, done): a hot loop
            # the request's context grows by its n tokens (prompt rows, or the previous output token)
            in_use[req_device[st.request_id]] += n
            if st.prefilled < st.prompt_tokens:
                st.prefilled += n
                if st.prefilled == st.prompt_tokens:
                    st.generated = 1
                    if st.first_token_s != st.first_token_s:  # NaN: not a recomputation's prefill
                        st.first_token_s = now
                    emitted += 1
            else:
                st.generated += 1
                emitted += 1
            if st.generated >= st.output_tokens:
                st.finish_s = now
                done.append(st)
        # KV tokens in use at the step's end (its finished requests included), then theirs released
        peak = self.peak_kv_tokens
        for d, used in enumerate(in_use):
            if used > peak[d]:
                peak[d] = used
        if done:
            ids = {r.request_id for r in done}
            self.running = [r for r in self.running if r.request_id not in ids]
            self._running_ids -= ids
            for r in done:
                d = req_device[r.request_id]
                self.kv_used[d] -= self._kv_held.pop(r.request_id) if self._kv_paged else r.kv_tokens_max
                in_use[d] -= r.prefilled + max(r.generated - 1, 0)  # context_tokens inlined
                self._mark(-1)
            self.finished.extend(done)
        self.step_records.append(
            StepRecord.of(
                step=self.step_idx,
                start_s=t0,
                end_s=now,
                n_requests=len(plan),
                prefill_tokens=si.n_prefill,
                decode_tokens=si.n_decode,
                counters=self._c,
                cross_device=si.cross,
                assignments=si.n_assign,
            )
        )
        self.step_idx += 1
        if emitted and self._bar is not None:
            self._bar.update(emitted)

    # --------------------------------------------------------------------------- output
    def _output(self) -> EngineOutput:
        self._mark(0)
        records = []
        for r in sorted(self.finished, key=lambda x: x.request_id):
            n_prompt, n_out = self._orig_len.get(r.request_id, (r.prompt_tokens, r.output_tokens))
            tpot = (r.finish_s - r.first_token_s) / (n_out - 1) if n_out > 1 else float("nan")
            records.append(
                RequestRecord(
                    request_id=r.request_id,
                    arrival_s=r.arrival_s,
                    admitted_s=r.admitted_s,
                    first_token_s=r.first_token_s,
                    finish_s=r.finish_s,
                    prompt_tokens=n_prompt,
                    output_tokens=n_out,
                    ttft_s=r.first_token_s - r.arrival_s,
                    tpot_s=tpot,
                    latency_s=r.finish_s - r.arrival_s,
                    device=self.req_device[r.request_id],
                )
            )
        requests = records_frame(records, RequestRecord)
        steps = records_frame(self.step_records, StepRecord)
        first = min((r.arrival_s for r in self.finished), default=0.0)
        last = max((r.finish_s for r in self.finished), default=0.0)
        makespan = max(last - first, 0.0)
        # OpCost energies include static power during each operation; the devices also draw their
        # static power while idle (waiting for a transfer, an arrival or the other devices)
        idle = sum(dev.static_power_W * max(makespan - self.busy_s[d], 0.0) for d, dev in enumerate(self.bound.devices))
        if self.platform.host is not None:
            idle += self.platform.host.static_power_W * max(makespan - self.host_busy_s, 0.0)
        energy = self.energy_J + idle
        tier_names = sorted(set(self.bound.cache_tier))
        hit = {t: (self.n_hits / self.n_access if self.n_access else 1.0) for t in tier_names}
        if self.near_caches is not None and self.bound.near_tier is not None:
            hit[self.bound.near_tier] = self.n_near_hits / self.n_near_access if self.n_near_access else 0.0
        model = self.model
        peak: dict[str, float] = {}
        for d in range(self.n_dev):
            tier = self.bound.cache_tier[d]
            b = (
                self.bound.memory[d]["non_expert_bytes"]  # issue 8: resident part (streamed weights excluded)
                + self.peak_resident[d] * self.bpe
                + self.peak_staging[d] * self.bpe
                + self.peak_kv_tokens[d] * float(model.kv_bytes_per_token)
            )
            peak[tier] = max(peak.get(tier, 0.0), b)
        if self.near_caches is not None and self.bound.near_tier is not None:
            peak[self.bound.near_tier] = max(self.peak_near) * self.bpe
        if self.bound.offloaded:
            off = float(sum(h - s for h, s in zip(self.bound.homed, self.bound.slots, strict=True))) * self.bpe
            back = (
                self.platform.host.weights_tier
                if self.bound.backing == "host" and self.platform.host
                else self.bound.backing
            )
            key = f"host_{back}" if self.bound.backing == "host" else back
            peak[key] = peak.get(key, 0.0) + off
        area = self._area
        mean_in_system = area / (self.env.now - first) if self.env.now > first else 0.0
        access = None
        if self.record_access:
            access = []
            for log_d in self._access_log:
                keys = np.concatenate(log_d) if log_d else np.zeros(0, dtype=np.int64)
                lens = np.array([a.size for a in log_d], dtype=np.int64)
                starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if lens.size else lens
                access.append(AccessSequence(keys=keys.astype(np.int64), call_starts=starts))
        counters = {
            "accesses": float(self.n_access),
            "hits": float(self.n_hits),
            "assignments_device": float(self.assign_device),
            "assignments_cpu": float(self.assign_cpu),
            "sim_events": float(self.env.n_events),
            "idle_static_energy_J": idle,
            "device_busy_s": float(max(self.busy_s)),
            "host_busy_s": float(self.host_busy_s),
            "peak_resident_experts": float(max(self.peak_resident) if self.peak_resident else 0),
            "cache_slots": float(sum(self.bound.slots)),
            "prefetch_issued": float(self.n_pf_issued),
            "prefetch_on_time": float(self.n_pf_on_time),
            "prefetch_late": float(self.n_pf_late),
            "prefetch_wasted": float(self.n_pf_wasted),
            "prefetch_unused_at_end": float(sum(len(u) for u in self.pf_unused)),
            "kv_preemptions": float(self.n_preemptions),
            "kv_recomputed_tokens": float(self.n_recomputed),
            "kv_peak_set_aside_tokens": float(self.peak_kv_set_aside),
            "all_to_all_s": float(self.a2a_s),
        }
        return EngineOutput(
            requests=requests,
            steps=steps,
            events=self.events,
            makespan_s=makespan,
            hit_rate=hit,
            bytes_moved=dict(self.bytes),
            peak_memory_bytes=peak,
            energy_J=energy,
            mean_requests_in_system=mean_in_system,
            access=access,
            counters=counters,
        )
