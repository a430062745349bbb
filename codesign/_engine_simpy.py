"""The simpy step: a step played with simpy processes per layer and device (the general path).

`Engine` plays a step here when something in it contends across time (prefetches whose copies
outlive their layer, the host CPU path, near-tier promotions) or when it records an event log;
otherwise `codesign._engine_fast.ArithmeticStep` computes the same step by arithmetic. `SimpyStep`
holds no state of its own: it reads and updates its engine's (caches, counters, copy engines,
in-flight copies, the step's `StepCounters`), so the engine's docstring describes what a layer does.

Issue 8 mechanisms played only here (`Engine._arithmetic_ok` routes such designs to this path):

- copy-back eviction (``CacheSpec.eviction = "copy-back"``, Mixtral-offloading's swap): a fetch or
  prefetch whose admission evicts resident experts first copies each victim back to the backing
  tier over the same link, on the same copy stream (one expert's transfer time and bytes each,
  `StepCostPlan.fetch`; the link's cost is taken as symmetric), before its own transfers; a fetch
  streamed past a full cache swaps with a resident expert too (`_copy_back`);
- streamed non-expert weights (``Mapping.offload_non_expert``, ZeRO-3 ``offload_param``): every
  layer's attention / router / shared / dense weights cross the backing link each step
  (`StepCostPlan.non_expert_fetch`) and the layer's attention waits for them. Layer ``l + 1``'s
  copy is queued once layer ``l`` has queued its own demand fetches, or when layer ``l`` starts if
  it has none (a dense layer, resident experts): one layer of lookahead, at prefetch priority, the
  overlap of ZeRO-3's parameter prefetch ("stage3_prefetch_bucket_size: the
  size of the fixed buffer for prefetching parameters", DeepSpeed configuration docs), whose
  default of 5e7 parameters holds about one layer's attention weights (Mixtral: 4.2e7);
- whole-layer fetch (``Mapping.fetch_whole_layer``, ZeRO-3 gathers every parameter of a module): the
  offloaded experts of an MoE layer that no token needs also cross the link each step (after the
  needed ones, not computed, not cached).

Contracts: `step` is a simpy process generator that ends when the step's last layer has ended; it
adds the step's energy, busy times and counts to the engine; it never holds a hardware number (every
time is an answer of the engine's `StepCostPlan`). Demand fetches of a layer hold the device's copy
engine once (priority over prefetches); prefetches are one transfer each, queued behind them.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import simpy

from codesign._engine_fast import StepInputs
from codesign.policies.base import PrefetchContext
from hwmodels.costs import ACTIVATION_BYTES
from hwmodels.opcost import OpCost

if TYPE_CHECKING:
    from codesign.engine import Engine

__all__ = ["ProcGen", "SimpyStep"]

ProcGen = Generator[simpy.Event, Any, None]


def _arr(x: Any, n: int) -> npt.NDArray[np.float64]:
    """``x`` (a float or an array) as a read-only float array of length ``n``."""
    return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))


class SimpyStep:
    """The general step path of ``engine`` (see the module docstring); `step` is its entry point."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine

    def step(self, si: StepInputs) -> ProcGen:
        """The step with simpy processes per layer and device (prefetches, CPU path, near tier, events)."""
        env = self.eng.env
        model = self.eng.model
        n_dev, L, E = self.eng.n_dev, self.eng.L, self.eng.E
        rows, counts = si.rows, si.counts
        attn_s, attn_J, router_s, router_J = si.attn_s, si.attn_J, si.router_s, si.router_J
        shared_s, shared_J, dense_s, dense_J = si.shared_s, si.shared_J, si.dense_s, si.dense_J
        coherent = self.eng.coherent and n_dev > 1
        # expert costs, per device, for every (layer, expert) at once
        exp_cost: list[OpCost] = []
        exp_s: list[npt.NDArray[np.float64]] = []
        exp_J: list[npt.NDArray[np.float64]] = []
        for d in range(n_dev):
            cnt = counts if n_dev == 1 else np.where(self.eng.home_flat == d, counts, 0)
            c = self.eng.plan.experts(d, cnt)
            exp_cost.append(c)
            exp_s.append(_arr(c.total_s, L * E))
            exp_J.append(_arr(c.energy_J, L * E))
        if self.eng.near_caches is not None:
            self.eng._near_s, self.eng._near_J = [], []
            for d in range(n_dev):
                cnt = counts if n_dev == 1 else np.where(self.eng.home_flat == d, counts, 0)
                c = self.eng.plan.experts(d, cnt, tier=self.eng.bound.near_tier)
                self.eng._near_s.append(_arr(c.total_s, L * E))
                self.eng._near_J.append(_arr(c.energy_J, L * E))
        cpu_s = cpu_J = None
        act_bytes = (counts * (model.d_model * ACTIVATION_BYTES)).astype(np.float64)
        if self.eng.cpu_possible and self.eng.bound.mapping.miss != "fetch":
            cc = self.eng.plan.cpu_experts(counts)
            if cc is not None:
                cpu_s = _arr(cc.total_s, L * E)
                cpu_J = _arr(cc.energy_J, L * E)
        a2a = si.a2a
        if n_dev > 1:
            self.eng._count_all_to_all(si)
        # compute streams held for the whole step
        holds = [self.eng.compute[d].request() for d in range(n_dev)]
        yield env.all_of(holds) if n_dev > 1 else holds[0]
        # streamed non-expert weights: per device, one arrival event per layer and the permission
        # to queue layer l's copy (granted when layer l - 1 has queued its demand fetches)
        self._arrive: list[list[simpy.Event]] = []
        self._permit: list[list[simpy.Event]] = []
        if self.eng.bound.mapping.offload_non_expert:
            for d in range(n_dev):
                self._arrive.append([env.event() for _ in range(model.n_layers)])
                self._permit.append([env.event() for _ in range(model.n_layers)])
                self._permit[d][0].succeed()
                env.process(self._stream_layers(d))
        energy = 0.0
        comb_label = "gather" if coherent else "combine"
        for abs_layer in range(model.n_layers):
            layer = self.eng.moe_index[abs_layer]
            is_moe = layer >= 0
            pos = self.eng.position[abs_layer]
            a_s = attn_s[pos]
            pre = a_s + (router_s[pos] if is_moe else dense_s[pos])
            if self._arrive:  # the layer's streamed weights must have arrived
                waits = [self._arrive[d][abs_layer] for d in range(n_dev) if not self._arrive[d][abs_layer].processed]
                if waits:
                    yield env.all_of(waits)
                if not is_moe or not self.eng.bound.offloaded:  # no demand fetches to queue first
                    self._open_stream(range(n_dev), abs_layer)
            dt = float(pre.max())
            if dt > 0:
                start = env.now
                yield env.timeout(dt)
                for d in range(n_dev):
                    self.eng.busy_s[d] += float(pre[d])
                    if self.eng.events is not None:
                        self.eng._event(d, "compute", "attention", start, start + float(a_s[d]), f"L{abs_layer}")
                        self.eng._event(
                            d,
                            "compute",
                            "router" if is_moe else "dense",
                            start + float(a_s[d]),
                            start + float(pre[d]),
                            f"L{abs_layer}",
                        )
            energy += float(attn_J[pos].sum()) + float((router_J[pos] if is_moe else dense_J[pos]).sum())
            if not is_moe:
                continue
            sh_s, sh_J = shared_s[layer], shared_J[layer]
            lo, hi = layer * E, (layer + 1) * E
            if n_dev > 1:
                disp_s, disp_J, comb_s, comb_J = a2a[layer]
                energy += disp_J + comb_J
                yield from self._all_to_all(disp_s, f"dispatch L{abs_layer}")
            if not self.eng.bound.offloaded:  # every expert resident: no fetch, no CPU; one timeout per layer
                longest = 0.0
                for d in range(n_dev):
                    cnt = counts[lo:hi] if n_dev == 1 else np.where(self.eng.home_flat[lo:hi] == d, counts[lo:hi], 0)
                    if sh_s[d] > 0 or cnt.any():
                        longest = max(
                            longest,
                            self._moe_resident(
                                d,
                                layer,
                                abs_layer,
                                rows,
                                cnt,
                                exp_s[d][lo:hi],
                                exp_J[d][lo:hi],
                                float(sh_s[d]),
                                float(sh_J[d]),
                            ),
                        )
                if longest > 0:
                    yield env.timeout(longest)
                if n_dev > 1:
                    yield from self._all_to_all(comb_s, f"{comb_label} L{abs_layer}")
            elif n_dev == 1:
                yield from self._moe_device(
                    0,
                    layer,
                    abs_layer,
                    rows,
                    counts[lo:hi],
                    exp_s[0][lo:hi],
                    exp_J[0][lo:hi],
                    exp_cost[0],
                    float(sh_s[0]),
                    float(sh_J[0]),
                    cpu_s,
                    cpu_J,
                    act_bytes[lo:hi],
                )
            else:
                procs = []
                idle_devs = []
                for d in range(n_dev):
                    cnt = np.where(self.eng.home_flat[lo:hi] == d, counts[lo:hi], 0)
                    if cnt.any() or sh_s[d] > 0:
                        procs.append(
                            env.process(
                                self._moe_device(
                                    d,
                                    layer,
                                    abs_layer,
                                    rows,
                                    cnt,
                                    exp_s[d][lo:hi],
                                    exp_J[d][lo:hi],
                                    exp_cost[d],
                                    float(sh_s[d]),
                                    float(sh_J[d]),
                                    cpu_s,
                                    cpu_J,
                                    act_bytes[lo:hi],
                                )
                            )
                        )
                    else:
                        idle_devs.append(d)
                if self.eng.prefetcher is not None and idle_devs:
                    self._prefetch(layer, rows, idle_devs)
                if procs:
                    yield env.all_of(procs)
                yield from self._all_to_all(comb_s, f"{comb_label} L{abs_layer}")
            if self._arrive:
                self._open_stream(range(n_dev), abs_layer)  # devices without experts at this layer
        for d in range(n_dev):
            self.eng.compute[d].release(holds[d])
        self.eng.energy_J += energy
        self.eng._c.energy += energy

    def _open_stream(self, devices: Any, abs_layer: int) -> None:
        """Let the streamed weights of layer ``abs_layer + 1`` be queued on ``devices``' links."""
        nxt = abs_layer + 1
        if not self._permit or nxt >= self.eng.model.n_layers:
            return
        for d in devices:
            if not self._permit[d][nxt].triggered:
                self._permit[d][nxt].succeed()

    def _stream_layers(self, d: int) -> ProcGen:
        """Device ``d``'s non-expert weights of every layer, in layer order, over its backing link
        (prefetch priority, behind demand fetches); each layer's copy waits for its permission."""
        env = self.eng.env
        plan = self.eng.plan
        link = plan.stream_links[d]
        moe_index = self.eng.moe_index
        for abs_layer in range(self.eng.model.n_layers):
            permit = self._permit[d][abs_layer]
            if not permit.processed:
                yield permit
            c = plan.non_expert_fetch(d, moe=moe_index[abs_layer] >= 0)
            dt = float(c.total_s)
            nbytes = plan.stream_bytes[0 if moe_index[abs_layer] >= 0 else 1]
            self.eng._add_bytes(link, nbytes)
            self.eng._c.bytes_host += nbytes
            self.eng._c.energy += float(c.energy_J)
            self.eng.energy_J += float(c.energy_J)
            if dt > 0:
                with self.eng.copy[d].request(priority=1) as req:
                    yield req
                    start = env.now
                    yield env.timeout(dt)
                    self.eng._event(d, "copy", "weights", start, env.now, f"L{abs_layer} non-expert")
            self._arrive[d][abs_layer].succeed()

    def _copy_back(self, d: int, victims: npt.NDArray[np.int64], streamed: int = 0) -> int:
        """Copy-back eviction (a swap cache, as Mixtral-offloading's): book the copies back to the
        backing tier of the ``victims`` and of one expert per ``streamed`` fetch -- bytes and energy
        of one expert transfer each over device ``d``'s fetch link -- and return how many transfers
        the copy stream plays first; 0 with ``discard`` eviction.

        Rule: every copy-back fetch is a swap (one copy in, one copy out), whatever the cache's slot
        count. Source: dvmazur/mixtral-offloading ``src/expert_cache.py``, where every load goes
        through ``_swap`` (one copy in, one out, on the default stream) and ``load_experts`` needs at
        least one on-GPU slot, so a fetch streamed past a full cache, or through a cache configured
        with 0 slots (the slot is then a staging buffer), still sends one expert back."""
        if self.eng.bound.mapping.cache.eviction != "copy-back":
            return 0
        n = int(victims.shape[0]) + int(streamed)
        if n == 0:
            return 0
        nbytes = self.eng.bpe * n
        self.eng._add_bytes(self.eng.fetch_link[d], nbytes)
        self.eng._c.bytes_host += nbytes
        e_j = self.eng.fetch_J[d] * n
        self.eng._c.energy += e_j
        self.eng.energy_J += e_j
        return n

    def _all_to_all(self, dt: float, label: str) -> ProcGen:
        if dt <= 0 or self.eng.fabric is None:
            return
        with self.eng.fabric.request() as req:
            yield req
            start = self.eng.env.now
            yield self.eng.env.timeout(dt)
            for d in range(self.eng.n_dev):
                self.eng._event(d, "peer_link", "all_to_all", start, start + dt, label)

    def _moe_resident(
        self,
        d: int,
        layer: int,
        abs_layer: int,
        rows: npt.NDArray[np.int16],
        cnt: npt.NDArray[np.int64],
        comp_s: npt.NDArray[np.float64],
        comp_J: npt.NDArray[np.float64],
        shared_s: float,
        shared_J: float,
    ) -> float:
        """One MoE layer on device ``d`` when every expert is resident (nothing offloaded): the
        same bookkeeping as `_moe_device` without a process; returns the device's busy time."""
        env = self.eng.env
        ex_all = ex = np.flatnonzero(cnt).astype(np.int64)
        now = env.now
        near_s = near_J = 0.0
        if self.eng.near_caches is not None and ex.size:
            ex, near_s, near_J = self._near_split(d, layer, ex)
        if ex.size:
            cache = self.eng.caches[d]
            cache.observe(layer, rows[:, layer, :], now)
            hits = cache.access(layer, ex, now)
            if not hits.all():
                raise RuntimeError(
                    f"device {d}: experts {ex[~hits].tolist()} of MoE layer {layer} are not resident "
                    "although the mapping offloads nothing (cache policy bug)"
                )
            if self.eng.record_access:
                self.eng._access_log[d].append(layer * self.eng.E + ex)
            self.eng.n_access += int(ex.size)
            self.eng.n_hits += int(ex.size)
            self.eng._c.needed += ex.size
            self.eng._c.hits += ex.size
        self.eng.assign_device += int(cnt[ex_all].sum())
        g_s, g_J = self.eng.plan.group(d, cnt, ex, comp_s, comp_J)
        first = shared_s + g_s + near_s
        energy = shared_J + g_J + near_J
        if self.eng.near_caches is not None and ex.size:
            self._promote(d, layer, ex, ex_all)
        self.eng.busy_s[d] += first
        if self.eng.events is not None:
            if shared_s > 0:
                self.eng._event(d, "compute", "shared", now, now + shared_s, f"L{abs_layer}")
            self.eng._event(d, "compute", "experts", now + shared_s, now + first, f"L{abs_layer} {ex.size} experts")
        self.eng._c.energy += energy
        self.eng.energy_J += energy
        return first

    def _moe_device(
        self,
        d: int,
        layer: int,
        abs_layer: int,
        rows: npt.NDArray[np.int16],
        cnt: npt.NDArray[np.int64],
        comp_s: npt.NDArray[np.float64],
        comp_J: npt.NDArray[np.float64],
        comp_cost: OpCost,
        shared_s: float,
        shared_J: float,
        cpu_s: npt.NDArray[np.float64] | None,
        cpu_J: npt.NDArray[np.float64] | None,
        act_bytes: npt.NDArray[np.float64],
    ) -> ProcGen:
        """One MoE layer on device ``d``: cache lookup, miss handling, fetches, compute.

        Demand fetches of the layer hold the device's copy engine once (priority over prefetches)
        for back-to-back transfers; their arrival times follow from the grant time, so the compute
        chain "expert i starts at max(its arrival, end of expert i-1)" is evaluated arithmetically
        (one timeout) instead of one simpy event per expert. Streamed (uncached) experts beyond
        ``staging_experts`` buffers wait for the buffer of the streamed expert ``staging`` places
        earlier to be computed; the link is then held until the last transfer.
        """
        env = self.eng.env
        E = self.eng.E
        ex_all = ex = np.flatnonzero(cnt).astype(np.int64)
        cache = self.eng.caches[d]
        now = env.now
        energy = shared_J
        near_s = 0.0
        if self.eng.near_caches is not None and ex.size:
            ex, near_s, near_J = self._near_split(d, layer, ex)
            energy += near_J
        inflight = self.eng.inflight[d]
        pending: list[tuple[int, simpy.Event]] = []  # resident experts whose prefetch is in flight
        fetch_ex = cpu_ex = ex[:0]
        streamed_mask: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        ready = ex
        cpu_done = None
        req = None
        n_back = 0  # copy-back transfers played before this layer's fetches
        grant: list[float] = []
        if ex.size:
            cache.observe(layer, rows[:, layer, :], now)
            hits = cache.access(layer, ex, now)
            if self.eng.record_access:
                self.eng._access_log[d].append(layer * E + ex)
            s = self.eng._c
            ready = ex[hits]
            # an expert admitted by a prefetch whose copy is still in flight is not a hit: it is a
            # late prefetch (the layer waits for its arrival below)
            if inflight and ready.size:
                pend = [(int(e), inflight[layer * E + int(e)]) for e in ready.tolist() if layer * E + e in inflight]
                if pend:
                    pending = pend
                    pset = {e for e, _ in pend}
                    ready = np.array([e for e in ready.tolist() if e not in pset], dtype=np.int64)
            n_hit = int(ready.size)
            self.eng.n_access += int(ex.size)
            self.eng.n_hits += n_hit
            s.needed += ex.size
            s.hits += n_hit
            late_now: set[int] = set()
            if self.eng.pf_unused[d]:
                late_now = self._resolve_prefetches(d, layer, ex, hits)
            miss_ex = ex[~hits]
            if miss_ex.size:
                s.misses += miss_ex.size
                fetch_ex, cpu_ex = self._decide(d, layer, miss_ex, cnt, comp_cost, comp_J, cpu_s, cpu_J)
            if fetch_ex.size:
                prot = np.fromiter(inflight.keys(), dtype=np.int64, count=len(inflight)) if inflight else None
                adm = cache.admit(layer, fetch_ex, now, protect=ex, protect_keys=prot)
                self._evicted(d, adm.victims)
                order = np.argsort(~adm.admitted, kind="stable")  # cached first, streamed last
                fetch_ex = fetch_ex[order]
                streamed_mask = ~adm.admitted[order]
                n_str = int(streamed_mask.sum())
                n_back = self._copy_back(d, adm.victims, n_str)
                if n_str and self.eng.bound.mapping.staging_experts == 0:
                    raise RuntimeError(
                        f"device {d}: {n_str} fetched experts of MoE layer {layer} cannot be cached "
                        "(cache full of protected or pinned experts, or the policy refuses them) and "
                        "staging_experts=0; raise staging_experts"
                    )
                self.eng.peak_staging[d] = max(
                    self.eng.peak_staging[d], min(n_str, self.eng.bound.mapping.staging_experts)
                )
                s.fetched += fetch_ex.size
                s.streamed += n_str
                nbytes = self.eng.bpe * fetch_ex.size
                self.eng._add_bytes(self.eng.fetch_link[d], nbytes)
                s.bytes_host += nbytes
                energy += self.eng.fetch_J[d] * fetch_ex.size
                self.eng.peak_resident[d] = max(self.eng.peak_resident[d], cache.n_resident)
                req = self.eng.copy[d].request(priority=0)
                hold = (n_back + fetch_ex.size) * self.eng.fetch_s[d]  # copy-backs first, same stream
                staged_wait = n_str > self.eng.bound.mapping.staging_experts
                copy_res = self.eng.copy[d]

                def granted(
                    ev: simpy.Event,
                    req: Any = req,
                    hold: float = hold,
                    staged_wait: bool = staged_wait,
                    copy_res: Any = copy_res,
                    grant: list[float] = grant,
                ) -> None:
                    grant.append(env.now)
                    if not staged_wait:
                        self._release_later(copy_res, req, hold)

                req.callbacks.append(granted)
            if pending and cpu_s is not None and not self.eng._fetch_only:
                # a late prefetch is a miss to the miss policy: its copy has not arrived, so the
                # layer may compute the expert on the host CPU instead of waiting (the copy still
                # completes and caches it). The policy weighs a whole fetch: the remaining wait of
                # a copy in flight is not known here (it may be queued behind others).
                late = np.array([e for e, _ in pending], dtype=np.int64)
                _wait, to_cpu = self._decide(d, layer, late, cnt, comp_cost, comp_J, cpu_s, cpu_J)
                if to_cpu.size:
                    moved = set(to_cpu.tolist())
                    # a copy still in flight from a prefetch already counted late at an earlier use:
                    # computed on the CPU now, it is a miss of this access
                    s.misses += len(moved - late_now)
                    pending = [(e, ev) for e, ev in pending if e not in moved]
                    cpu_ex = np.sort(np.concatenate((cpu_ex, to_cpu)))
            if cpu_ex.size and cpu_s is not None and cpu_J is not None:
                s.cpu += cpu_ex.size
                ab = float(act_bytes[cpu_ex].sum()) * 2.0
                self.eng._add_bytes(self.eng.platform.host_link, ab)
                s.bytes_host += ab
                energy += float(cpu_J[layer * E + cpu_ex].sum())
                cpu_done = env.process(self._cpu(layer, cpu_ex, cpu_s[layer * E + cpu_ex], abs_layer))
        if self.eng.bound.mapping.fetch_whole_layer and self.eng.fetch_link[d] is not None:
            lo = layer * E
            unneeded = (self.eng.home_flat[lo : lo + E] == d) & ~cache.resident[layer]
            unneeded[ex_all] = False
            n_extra = int(unneeded.sum())
            if n_extra:
                nbytes = self.eng.bpe * n_extra
                self.eng._add_bytes(self.eng.fetch_link[d], nbytes)
                self.eng._c.bytes_host += nbytes
                energy += self.eng.fetch_J[d] * n_extra
                env.process(self._transfer_only(d, n_extra, abs_layer))
        if self._permit:
            self._open_stream((d,), abs_layer)  # the next layer's weights queue behind these fetches
        # prefetches are decided after the router and queued behind this layer's demand fetches
        if self.eng.prefetcher is not None:
            self._prefetch(layer, rows, (d,))
        # token-expert assignments computed here (each exactly once: device or host CPU)
        if ex_all.size:
            self.eng.assign_cpu += int(cnt[cpu_ex].sum())
            self.eng.assign_device += int(cnt[ex_all].sum()) - int(cnt[cpu_ex].sum())
        # device compute: shared + resident experts, then pending prefetches, then the fetched chain
        g_s, g_J = self.eng._group_cost(d, cnt[ready].tolist())
        first = shared_s + g_s + near_s
        energy += g_J
        if first > 0:
            start = env.now
            yield env.timeout(first)
            self.eng.busy_s[d] += first
            if self.eng.events is not None:
                if shared_s > 0:
                    self.eng._event(d, "compute", "shared", start, start + shared_s, f"L{abs_layer}")
                self.eng._event(
                    d, "compute", "experts", start + shared_s, env.now, f"L{abs_layer} {ready.size} experts"
                )
        for e, ev in pending:
            if not ev.processed:
                yield ev
            c = float(comp_s[e])
            energy += float(comp_J[e])
            if c > 0:
                start = env.now
                yield env.timeout(c)
                self.eng.busy_s[d] += c
                self.eng._event(d, "compute", "expert", start, env.now, f"L{abs_layer} e{e}")
        if req is not None:
            if not grant:
                yield req
            f = self.eng.fetch_s[d]
            t_link = grant[0] + n_back * f
            if n_back and self.eng.events is not None:
                self.eng._event(d, "copy", "copy-back", grant[0], t_link, f"L{abs_layer} {n_back} evicted")
            staging = self.eng.bound.mapping.staging_experts
            c_end = env.now
            done_streamed: list[float] = []
            busy = 0.0
            evs = self.eng.events
            for i, e in enumerate(fetch_ex.tolist()):
                t_start = t_link
                if streamed_mask[i]:
                    j = len(done_streamed)
                    if j >= staging:
                        t_start = max(t_start, done_streamed[j - staging])
                arrive = t_start + f
                t_link = arrive
                ce = float(comp_s[e])
                c_start = max(c_end, arrive)
                c_end = c_start + ce
                busy += ce
                if streamed_mask[i]:
                    done_streamed.append(c_end)
                if evs is not None:
                    self.eng._event(d, "copy", "fetch", t_start, arrive, f"L{abs_layer} e{e}")
                    self.eng._event(d, "compute", "expert", c_start, c_end, f"L{abs_layer} e{e}")
            energy += float(comp_J[fetch_ex].sum())
            self.eng.busy_s[d] += busy
            if staged_wait:
                self._release_later(self.eng.copy[d], req, max(t_link - env.now, 0.0))
            if c_end > env.now:
                yield env.timeout(c_end - env.now)
        if cpu_done is not None:
            yield cpu_done
        if self.eng.near_caches is not None and ex.size:
            used = np.setdiff1d(ex, cpu_ex, assume_unique=True)
            if used.size:
                self._promote(d, layer, used, ex_all)
        self.eng._c.energy += energy
        self.eng.energy_J += energy

    def _near_split(self, d: int, layer: int, ex: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], float, float]:
        """Look ``ex`` up in device ``d``'s near tier; returns (experts left for the cache tier, time and
        energy of the near hits computed from the near tier). Promotions still in flight do not hit."""
        assert self.eng.near_caches is not None
        near = self.eng.near_caches[d]
        hits = near.access(layer, ex, self.eng.env.now)
        inflight = self.eng.near_inflight[d]
        if inflight and hits.any():
            for i in np.flatnonzero(hits).tolist():
                if layer * self.eng.E + int(ex[i]) in inflight:
                    hits[i] = False
        self.eng.n_near_access += int(ex.size)
        n_hit = int(hits.sum())
        self.eng.n_near_hits += n_hit
        self.eng._c.needed += n_hit
        self.eng._c.hits += n_hit
        if n_hit == 0:
            return ex, 0.0, 0.0
        keys = layer * self.eng.E + ex[hits]
        t = float(self.eng._near_s[d][keys].sum())
        return ex[~hits], t, float(self.eng._near_J[d][keys].sum())

    def _promote(self, d: int, layer: int, used: npt.NDArray[np.int64], protect: npt.NDArray[np.int64]) -> None:
        """Offer experts just used from the cache tier to the near tier; copies run in the background."""
        assert self.eng.near_caches is not None
        near = self.eng.near_caches[d]
        inflight = self.eng.near_inflight[d]
        new = used[~near.resident[layer, used]]
        if new.size == 0:
            return
        prot = np.fromiter(inflight.keys(), dtype=np.int64, count=len(inflight)) if inflight else None
        adm = near.admit(layer, new, self.eng.env.now, protect=protect, protect_keys=prot)
        for lv, ev in adm.victims.tolist():
            inflight.pop(lv * self.eng.E + ev, None)
        got = new[adm.admitted]
        if got.size == 0:
            return
        self.eng.peak_near[d] = max(self.eng.peak_near[d], near.n_resident)
        events = [self.eng.env.event() for _ in range(got.size)]
        for e, ev in zip(got.tolist(), events, strict=True):
            inflight[layer * self.eng.E + e] = ev
        nbytes = self.eng.bpe * got.size
        self.eng._add_bytes(self.eng.near_link[d], nbytes)
        e_j = self.eng.near_copy_J[d] * got.size
        self.eng._c.energy += e_j
        self.eng.energy_J += e_j
        self.eng.env.process(self._near_copy_proc(d, layer, got, events))

    def _near_copy_proc(self, d: int, layer: int, experts: npt.NDArray[np.int64], events: list[simpy.Event]) -> ProcGen:
        env = self.eng.env
        inflight = self.eng.near_inflight[d]
        with self.eng.near_copy[d].request() as req:
            yield req
            for e, ev in zip(experts.tolist(), events, strict=True):
                start = env.now
                yield env.timeout(self.eng.near_copy_s[d])
                self.eng._event(d, "near_copy", "promote", start, env.now, f"L{self.eng.model.moe_layers[layer]} e{e}")
                ev.succeed()
                if inflight.get(layer * self.eng.E + e) is ev:
                    del inflight[layer * self.eng.E + e]

    def _evicted(self, d: int, victims: npt.NDArray[np.int64]) -> None:
        """Bookkeeping for experts ``victims`` (``[n, 2]`` (layer, expert)) evicted from device ``d``'s
        cache: an in-flight copy no longer makes them resident; an unused prefetch was wasted."""
        if victims.size == 0:
            return
        inflight = self.eng.inflight[d]
        unused = self.eng.pf_unused[d]
        for lv, ev in victims.tolist():
            key = lv * self.eng.E + ev
            inflight.pop(key, None)
            if key in unused:
                unused.discard(key)
                self.eng.n_pf_wasted += 1
                self.eng._c.pf_wasted += 1

    def _resolve_prefetches(
        self, d: int, layer: int, ex: npt.NDArray[np.int64], hits: npt.NDArray[np.bool_]
    ) -> set[int]:
        """First use of prefetched experts among ``ex`` (accessed at MoE ``layer`` on device ``d``;
        ``hits``: resident, copy possibly in flight): on time when the copy had arrived, late when
        it is still in flight; a prefetched expert found not resident was evicted unused (wasted).
        Returns the experts counted late by this call."""
        unused = self.eng.pf_unused[d]
        inflight = self.eng.inflight[d]
        late: set[int] = set()
        for e, h in zip(ex.tolist(), hits.tolist(), strict=True):
            key = layer * self.eng.E + e
            if key not in unused:
                continue
            unused.discard(key)
            if not h:
                self.eng.n_pf_wasted += 1
                self.eng._c.pf_wasted += 1
            elif key in inflight:
                self.eng.n_pf_late += 1
                self.eng._c.pf_late += 1
                late.add(e)
            else:
                self.eng.n_pf_on_time += 1
                self.eng._c.pf_on_time += 1
        return late

    def _release_later(self, res: simpy.PriorityResource, req: Any, delay: float) -> None:
        """Release ``req`` of ``res`` after ``delay`` seconds (one timeout, no process)."""

        def release(_ev: simpy.Event) -> None:
            res.release(req)

        self.eng.env.timeout(delay).callbacks.append(release)

    def _decide(
        self,
        d: int,
        layer: int,
        miss_ex: npt.NDArray[np.int64],
        cnt: npt.NDArray[np.int64],
        comp_cost: OpCost,
        comp_J: npt.NDArray[np.float64],
        cpu_s: npt.NDArray[np.float64] | None,
        cpu_J: npt.NDArray[np.float64] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Ask the miss policy; returns (experts to fetch, experts to compute on the CPU)."""
        E = self.eng.E
        if self.eng.fetch_link[d] is None:
            raise RuntimeError(
                f"device {d}: expert ({layer}, {miss_ex[0]}) is not resident and there is no "
                "backing memory to fetch it from (the mapping offloads nothing)"
            )
        if cpu_s is None and self.eng._fetch_only:
            return miss_ex, miss_ex[:0]
        n_miss = int(miss_ex.size)
        keys = layer * E + miss_ex
        fetch_cost = OpCost(
            compute_s=_arr(comp_cost.compute_s, self.eng.L * E)[keys],
            memory_s=_arr(comp_cost.memory_s, self.eng.L * E)[keys],
            comm_s=np.full(n_miss, self.eng.fetch_s[d]),
            energy_J=comp_J[miss_ex] + self.eng.fetch_J[d],
            source="engine:fetch+compute",
        )
        cpu_cost = None
        if cpu_s is not None and cpu_J is not None:
            cpu_cost = OpCost(
                compute_s=cpu_s[keys],
                memory_s=np.zeros(n_miss),
                comm_s=np.zeros(n_miss),
                energy_J=cpu_J[keys],
                source="engine:cpu_expert+activations",
            )
        mask = np.asarray(self.eng.miss.decide(layer, miss_ex, cnt[miss_ex], fetch_cost, cpu_cost), dtype=bool)
        if mask.shape != miss_ex.shape:
            raise RuntimeError(
                f"miss policy {self.eng.bound.mapping.miss!r} returned a mask of shape {mask.shape}, "
                f"expected {miss_ex.shape}"
            )
        if cpu_cost is None and not mask.all():
            raise RuntimeError(
                f"miss policy {self.eng.bound.mapping.miss!r} chose CPU compute on a platform without a host"
            )
        return miss_ex[mask], miss_ex[~mask]

    def _fetch(
        self,
        d: int,
        layer: int,
        experts: npt.NDArray[np.int64],
        arrivals: list[simpy.Event],
        abs_layer: int,
        *,
        priority: int,
        writeback: int = 0,
    ) -> ProcGen:
        env = self.eng.env
        dt = self.eng.fetch_s[d]
        inflight = self.eng.inflight[d]
        E = self.eng.E
        kind = "fetch" if priority == 0 else "prefetch"
        with self.eng.copy[d].request(priority=priority) as req:
            yield req
            if writeback:  # copy-back eviction: the victims go back first, on the same stream
                start = env.now
                yield env.timeout(writeback * dt)
                self.eng._event(d, "copy", "copy-back", start, env.now, f"{writeback} evicted")
            for e, ev in zip(experts.tolist(), arrivals, strict=True):
                start = env.now
                yield env.timeout(dt)
                self.eng._event(d, "copy", kind, start, env.now, f"L{abs_layer} e{e}")
                ev.succeed()
                if inflight.get(layer * E + e) is ev:
                    del inflight[layer * E + e]

    def _transfer_only(self, d: int, n: int, abs_layer: int, *, priority: int = 0) -> ProcGen:
        """``n`` expert-sized transfers on device ``d``'s copy stream that nothing waits for (the
        unneeded experts of a whole-layer fetch; copy-backs of a prefetch that admitted nothing)."""
        env = self.eng.env
        with self.eng.copy[d].request(priority=priority) as req:
            yield req
            start = env.now
            yield env.timeout(n * self.eng.fetch_s[d])
            self.eng._event(d, "copy", "fetch", start, env.now, f"L{abs_layer} {n} unneeded")

    def _cpu(
        self, layer: int, experts: npt.NDArray[np.int64], times: npt.NDArray[np.float64], abs_layer: int
    ) -> ProcGen:
        env = self.eng.env
        assert self.eng.host_cpu is not None
        with self.eng.host_cpu.request() as req:
            yield req
            start = env.now
            total = float(times.sum())
            yield env.timeout(total)
            self.eng.host_busy_s += total
            self.eng._event(-1, "cpu", "cpu_expert", start, env.now, f"L{abs_layer} {experts.size} experts")

    def _prefetch(self, layer: int, rows: npt.NDArray[np.int16], devices: Sequence[int]) -> None:
        """Ask the prefetch policy for ``devices`` at MoE ``layer``; admit and queue the transfers."""
        assert self.eng.prefetcher is not None
        E = self.eng.E
        for d in devices:
            if self.eng.fetch_link[d] is None:
                continue
            cache = self.eng.caches[d]
            ctx = PrefetchContext(
                step=self.eng.step_idx,
                layer=layer,
                routing=rows[:, layer, :],
                step_routing=rows,
                recent_load=self.eng._recent_load,
                resident=cache.resident,
                now=self.eng.env.now,
            )
            pairs = np.asarray(self.eng.prefetcher.prefetch(ctx), dtype=np.int64).reshape(-1, 2)
            if pairs.size == 0:
                continue
            if pairs[:, 0].min() <= layer or pairs[:, 0].max() >= self.eng.L:
                raise RuntimeError(
                    f"prefetch policy {self.eng.bound.mapping.prefetch!r} returned layers outside "
                    f"({layer}, {self.eng.L}): {np.unique(pairs[:, 0]).tolist()}"
                )
            fk = pairs[:, 0] * E + pairs[:, 1]
            mine = self.eng.home_flat[fk] == d
            # every predicted expert is protected, the resident ones too: a prefetch must not evict
            # an expert it expects to be used (it would turn a hit into a miss)
            predicted = fk[mine]
            pairs = pairs[mine & ~cache.resident.ravel()[fk]]
            if pairs.size == 0:
                continue
            inflight = self.eng.inflight[d]
            cur = np.flatnonzero(rows[:, layer, :].ravel() >= 0)
            cur_keys = layer * E + np.unique(rows[:, layer, :].ravel()[cur]).astype(np.int64)
            for tgt in np.unique(pairs[:, 0]).tolist():
                exs = pairs[pairs[:, 0] == tgt, 1]
                prot_list = [cur_keys, predicted]
                if inflight:
                    prot_list.append(np.fromiter(inflight.keys(), dtype=np.int64, count=len(inflight)))
                adm = cache.admit(
                    int(tgt), exs, self.eng.env.now, prefetch=True, protect_keys=np.concatenate(prot_list)
                )
                self._evicted(d, adm.victims)
                n_back = self._copy_back(d, adm.victims)
                got = exs[adm.admitted]
                if got.size == 0:
                    if n_back:
                        self.eng.env.process(self._transfer_only(d, n_back, -1, priority=1))
                    continue
                arrivals = [self.eng.env.event() for _ in range(got.size)]
                unused = self.eng.pf_unused[d]
                for e, ev in zip(got.tolist(), arrivals, strict=True):
                    inflight[int(tgt) * E + e] = ev
                    unused.add(int(tgt) * E + e)
                self.eng.n_pf_issued += int(got.size)
                self.eng._c.prefetched += got.size
                nbytes = self.eng.bpe * got.size
                self.eng._add_bytes(self.eng.fetch_link[d], nbytes)
                self.eng._c.bytes_host += nbytes
                e_j = self.eng.fetch_J[d] * got.size
                self.eng._c.energy += e_j
                self.eng.energy_J += e_j
                self.eng.peak_resident[d] = max(self.eng.peak_resident[d], cache.n_resident)
                self.eng.env.process(
                    self._fetch(
                        d,
                        int(tgt),
                        got,
                        arrivals,
                        int(self.eng.model.moe_layers[int(tgt)]),
                        priority=1,
                        writeback=n_back,
                    )
                )
