"""The arithmetic step: a whole step's times from its costs, when nothing in it contends across time.

`Engine` plays a step with simpy processes per layer and device only when something in the step
can outlive its layer or be shared with another step's work: prefetches (copies that overlap later
layers), the host CPU path, near-tier promotions, or an event log to write. Otherwise (the common
case: every expert resident, or demand fetches only) the layers of a step run one after the other
and each device's work in a layer depends only on that layer's costs, so `ArithmeticStep` computes
the step in two passes and the engine waits once, until the step's end:

A. the cache decisions of every (layer, device), in layer order: ``observe``, ``access``, the miss
   policy (fetch only) and ``admit`` for the misses. Only caches whose decisions do not read the
   time (`CachePolicy.time_independent`) are allowed here; they are given the step's start time.
   With nothing offloaded the caches are not consulted at all: every needed expert is resident by
   construction (the engine checks it once, when it is built).
B. the costs, vectorised: one `StepCostPlan.layer_experts` call per device for the resident (hit)
   experts of all layers, one `StepCostPlan.experts` call per device for the fetched ones; then the
   times, layer by layer, with exactly the float operations by which the simpy path advances
   ``env.now`` (so both paths give the same times, to the last bit where the costs are the same).

Contract with the simpy path (`Engine._step_general`, a test pins it): the same step times, the
same hit, miss, fetch and byte counts, the same cache states, and energies equal up to float
summation order. A layer of the simpy path: attention (+ router or dense FFN) for the longest
device; the dispatch all-to-all; on each device the shared experts and the layer's resident experts
as one group, then each fetched expert when its weights have arrived (demand fetches hold the copy
engine back to back from the start of the device's layer; a streamed expert beyond the staging
buffers waits for the buffer of the streamed expert ``staging_experts`` places earlier); the layer
waits for its slowest device; then the combine (or gather) all-to-all.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, compress
from operator import not_
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from codesign.policies.base import CachePolicy
from hwmodels.opcost import OpCost

#: A step's fetched experts as arrays: group ids (ascending), each group's count of fetched
#: experts, then per fetched expert (group by group) its tokens and its device.
_FetchArrays = tuple[list[int], list[int], npt.NDArray[np.int64], npt.NDArray[np.int64]]

if TYPE_CHECKING:
    from codesign.costplan import StepCostPlan
    from codesign.engine import Engine

__all__ = ["AllToAllMemo", "ArithmeticStep", "DecodeAttention", "StepInputs"]

FloatArray = npt.NDArray[np.float64]
#: `ArithmeticStep._resident_costs`: each device's per-layer attention + router / dense FFN times
#: (``[n_dev][n_layers]``), the longest device's of each layer, their energy, each device's group
#: energy, the shared experts' energy, each device's shared + group time summed over MoE layers, the
#: longest device's shared + group time of each MoE layer, and the active (layer, expert) pairs.
_ResidentCosts = tuple[list[list[float]], list[float], float, list[float], float, list[float], list[float], int]


class AllToAllMemo:
    """`StepCostPlan.all_to_all` answers (seconds, joules) by bytes value.

    The all-to-all cost is element-wise in the bytes (its contract: one answer per element, from
    that element alone), and a step's per-layer bytes are multiples of one token's activations, so
    they repeat across steps: each distinct value is asked once (the step's new values in one
    vectorised call) and looked up afterwards. The memo is cleared past 65,536 values."""

    def __init__(self, plan: StepCostPlan) -> None:
        self.plan = plan
        self._memo: dict[float, tuple[float, float]] = {}

    def __call__(self, nbytes: FloatArray) -> tuple[list[float], list[float]]:
        """Seconds and joules of the all-to-all of each element of ``nbytes`` (bytes per device)."""
        vals: list[float] = nbytes.tolist()
        memo = self._memo
        new = [v for v in dict.fromkeys(vals) if v not in memo]
        if new:
            if len(memo) > 65536:
                memo.clear()
                new = list(dict.fromkeys(vals))
            c = self.plan.all_to_all(np.asarray(new, dtype=np.float64))
            n = len(new)
            ts = np.broadcast_to(np.asarray(c.total_s, dtype=np.float64), (n,)).tolist()
            js = np.broadcast_to(np.asarray(c.energy_J, dtype=np.float64), (n,)).tolist()
            for v, t, j in zip(new, ts, js, strict=True):
                memo[v] = (t, j)
        pairs = [memo[v] for v in vals]
        return [t for t, _ in pairs], [j for _, j in pairs]


class DecodeAttention:
    """`StepCostPlan.attention_decode` answers (seconds, joules) of ``n`` decode tokens whose contexts
    sum to ``total`` (mean context ``total / n``, exactly numpy's mean while sums are exact in
    float64) on device ``d``, memoised by (device spec, ``n``, ``total``). Each decode step adds one
    token to every request's context, so the sum grows by ``n`` per step: on a miss the next
    ``AHEAD`` sums are asked in one vectorised call (the answer is element-wise in the context: the
    same bits as the scalar call). Cleared past 65,536 entries."""

    AHEAD = 64

    def __init__(self, plan: StepCostPlan, dev_key: list[int]) -> None:
        self.plan = plan
        self.dev_key = dev_key
        self._memo: dict[tuple[int, int, int], tuple[float, float]] = {}

    def __call__(self, d: int, contexts: list[int]) -> tuple[float, float]:
        """Seconds and joules of one layer's decode attention for the (non-empty) ``contexts`` of
        the decode tokens on device ``d``, at their mean context (``float(np.mean(contexts))``)."""
        n = len(contexts)
        total = sum(contexts)
        key = (self.dev_key[d], n, total)
        hit = self._memo.get(key)
        if hit is None:
            if abs(total) + self.AHEAD * n >= 2**53:  # sums no longer exact in float64: numpy's mean
                c = self.plan.attention_decode(d, n, float(np.mean(contexts)))
                return float(c.total_s), float(c.energy_J)
            memo = self._memo
            if len(memo) > 65536:
                memo.clear()
            totals = [total + j * n for j in range(self.AHEAD)]
            c = self.plan.attention_decode(d, n, np.array([t / n for t in totals], dtype=np.float64))
            ts = np.broadcast_to(np.asarray(c.total_s, dtype=np.float64), (self.AHEAD,)).tolist()
            js = np.broadcast_to(np.asarray(c.energy_J, dtype=np.float64), (self.AHEAD,)).tolist()
            dk = key[0]
            for t, s_, j in zip(totals, ts, js, strict=True):
                memo[(dk, n, t)] = (s_, j)
            hit = memo[key]
        return hit


@dataclass(slots=True, eq=False)
class StepInputs:
    """What a step needs that does not depend on time, as arrays (built by `Engine._prepare`; read,
    never modified, by the step paths: not ``frozen``, which makes building one per step ~10x slower).

    ``rows``: the step's routing rows (int16 ``[n_tokens, L, k]``); ``counts``: tokens per flat key
    ``layer * E + expert`` (int64 ``[L * E]``); ``n_assign``: token-expert assignments; ``cross``:
    those dispatched off the token's device. ``attn_s`` ... ``dense_J``: per token position (before
    MoE layer ``0 .. L``) and device, ``[L + 1, n_dev]``, seconds and joules of one layer's attention,
    router, shared experts and dense FFN; ``per_position`` False when every row is the same (classic
    execution: tokens stay on their request's device). ``a2a[l]``: (dispatch s, dispatch J, combine s, combine J)
    of MoE layer ``l`` (empty on one device); ``bytes_peer``: bytes over the peer link this step.
    ``shape_key``: in classic execution, what the cost arrays depend on (the step's prefill chunks, decode
    tokens and context sum per device; `Engine._classic_costs`), so a step with the same key and counts
    has the same costs; None otherwise.
    """

    per_position: bool
    rows: npt.NDArray[np.int16]
    counts: npt.NDArray[np.int64]
    n_prefill: int
    n_decode: int
    n_assign: int
    cross: int
    attn_s: FloatArray
    attn_J: FloatArray
    router_s: FloatArray
    router_J: FloatArray
    shared_s: FloatArray
    shared_J: FloatArray
    dense_s: FloatArray
    dense_J: FloatArray
    a2a: list[tuple[float, float, float, float]]
    bytes_peer: float
    shape_key: tuple[Any, ...] | None = None


class ArithmeticStep:
    """Plays a step of ``engine`` without simpy processes (see the module docstring for when and how).

    `play` updates the engine's counters, caches and access log exactly as the simpy path would and
    returns the step's end time; the engine then waits until then (one event per step).
    """

    def __init__(self, engine: Engine) -> None:
        eng = engine
        self.eng = eng
        self.L, self.E, self.n_dev = eng.L, eng.E, eng.n_dev
        model = eng.model
        self.n_layers = model.n_layers
        self.moe_index: list[int] = list(eng.moe_index)
        self.position = np.asarray(eng.position, dtype=np.int64)
        self.is_moe_list = [i >= 0 for i in self.moe_index]
        self.group_starts = np.arange(eng.L * eng.n_dev + 1, dtype=np.int64) * eng.E
        self.is_moe = np.asarray(self.is_moe_list, dtype=bool)
        self.home_masks: list[npt.NDArray[np.bool_]] | None = None
        if eng.n_dev > 1:
            self.home_masks = [eng.home_flat == d for d in range(eng.n_dev)]
        self.observes = [type(c).observe is not CachePolicy.observe for c in eng.caches]
        # devices whose group costs are the same function of the token counts (equal device spec,
        # cache tier, kernel execution; not an FPGA, whose stream order matters) share one
        # vectorised `layer_experts` call per step in the resident path
        plan = eng.plan
        by_key: dict[tuple[object, ...], list[int]] = {}
        for d in range(eng.n_dev):
            key: tuple[object, ...]
            if eng.bound.devices[d].kind == "fpga":
                key = ("own", d)
            else:
                key = (eng._dev_key[d], eng.bound.cache_tier[d], repr(plan.executions[d]))
            by_key.setdefault(key, []).append(d)
        self.device_groups: list[tuple[int, npt.NDArray[np.int64]]] = [
            (devs[0], np.asarray(devs, dtype=np.int64)) for devs in by_key.values()
        ]
        # cost class of each device for the group costs of `_group_costs` (-1: an FPGA, asked one by one)
        self._cost_class = [-1] * eng.n_dev
        self._class_device: list[int] = []
        for key, devs in by_key.items():
            if key[0] == "own":
                continue
            for d in devs:
                self._cost_class[d] = len(self._class_device)
            self._class_device.append(devs[0])
        # per class of alike devices: a layer's ready experts' (seconds, joules) by their token counts
        # in expert order (`Engine._group_cost`'s answer; it depends on the multiset of counts only)
        self._ready_memo: list[dict[tuple[int, ...], tuple[float, float]]] = [{} for _ in range(eng.n_dev)]
        # per class: its experts are costed one by one and summed (per-expert execution), not grouped
        self._serial_class = [bool(eng.plan.serial_experts(d)) for d in self._class_device]
        self.home_onehot = np.stack([eng.home_flat == d for d in range(eng.n_dev)])  # [n_dev, L * E]
        self._tables: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
        self._tables_version = 0  # bumped when a table grows (see `_fetched_costs`)
        self._stacked: tuple[int, FloatArray, FloatArray, int] | None = None
        self._resident_memo: dict[tuple[Any, ...], _ResidentCosts] = {}  # see _resident
        self._group_memo: dict[tuple[Any, ...], tuple[list[float], float, list[float], list[float], int]] = {}

    # ----------------------------------------------------------------------------- shared
    def _device_counts(self, counts: npt.NDArray[np.int64], d: int) -> npt.NDArray[np.int64]:
        """Tokens per flat key of the experts homed on device ``d`` (zeros elsewhere)."""
        if self.home_masks is None:
            return counts
        return np.where(self.home_masks[d], counts, 0)

    def _pre_costs(self, si: StepInputs) -> tuple[list[list[float]], list[float], float]:
        """Attention + router (MoE layer) or dense FFN (dense layer) per model layer: each device's
        time of each layer (``[n_dev][n_layers]``), the longest device's time of each layer, and the
        energy of all."""
        if si.per_position:
            pos = self.position
            moe = self.is_moe[:, None]
            pre = si.attn_s[pos] + np.where(moe, si.router_s[pos], si.dense_s[pos])  # [n_layers, n_dev]
            pre_J = si.attn_J[pos] + np.where(moe, si.router_J[pos], si.dense_J[pos])
            return pre.T.tolist(), pre.max(axis=1).tolist(), float(pre_J.sum())
        n_moe = self.L
        n_dense = self.n_layers - n_moe
        if self.n_dev == 1:  # the same float operations on Python floats (numpy's sum of one x is x + 0.0)
            a_s, r_s, d_s = float(si.attn_s[0, 0]), float(si.router_s[0, 0]), float(si.dense_s[0, 0])
            a_j, r_j, d_j = float(si.attn_J[0, 0]) + 0.0, float(si.router_J[0, 0]) + 0.0, float(si.dense_J[0, 0]) + 0.0
            moe_pre, dense_pre = [a_s + r_s], [a_s + d_s]
            moe_max, dense_max = moe_pre[0], dense_pre[0]
            energy = n_moe * (a_j + r_j) + n_dense * (a_j + d_j)
        else:
            moe_pre = (si.attn_s[0] + si.router_s[0]).tolist()
            dense_pre = (si.attn_s[0] + si.dense_s[0]).tolist()
            moe_max, dense_max = max(moe_pre), max(dense_pre)
            a_j = float(si.attn_J[0].sum())
            energy = n_moe * (a_j + float(si.router_J[0].sum())) + n_dense * (a_j + float(si.dense_J[0].sum()))
        per_dev = [[m_d if m else d_d for m in self.is_moe_list] for m_d, d_d in zip(moe_pre, dense_pre, strict=True)]
        return per_dev, [moe_max if m else dense_max for m in self.is_moe_list], energy

    def _add_busy(self, per_dev: list[list[float]]) -> None:
        """Add each device's per-layer times to its busy time, layer by layer (the simpy path's order
        of float additions)."""
        busy = self.eng.busy_s
        for d, times in enumerate(per_dev):
            b = busy[d]
            for t in times:
                b += t
            busy[d] = b

    def _pre(self, si: StepInputs) -> tuple[list[float], float]:
        """`_pre_costs` with each device's busy time added: the longest device's time of each layer
        and the energy of all."""
        per_dev, pre_max, energy = self._pre_costs(si)
        self._add_busy(per_dev)
        return pre_max, energy

    def play(self, si: StepInputs, t0: float) -> float:
        """Play the step that starts at ``t0``; returns its end time (simulated seconds)."""
        if self.eng.bound.offloaded:
            return self._offloaded(si, t0)
        return self._resident(si, t0)

    def _a2a_energy(self, si: StepInputs) -> float:
        if self.n_dev < 2:
            return 0.0
        eng = self.eng
        eng._count_all_to_all(si)
        return float(sum(j1 + j2 for _, j1, _, j2 in si.a2a))

    def _log_access(self, d: int, keys: npt.NDArray[np.int64]) -> None:
        """Record device ``d``'s accesses of a step (sorted flat keys) as one call per layer."""
        if keys.size == 0:
            return
        cuts = np.flatnonzero(np.diff(keys // self.E)) + 1
        self.eng._access_log[d].extend(np.split(keys.astype(np.int64), cuts))

    # ----------------------------------------------------------------------------- resident
    def _resident_costs(self, si: StepInputs) -> _ResidentCosts:
        """What a resident step's times and energy follow from (see `_ResidentCosts`)."""
        per_dev, pre_max, e_pre = self._pre_costs(si)
        key = None
        if si.shape_key is not None and self.eng._one_expert:  # the group part depends on tokens and counts only
            key = (tuple(sum(p) + n for p, n, _ in si.shape_key), si.counts.tobytes())
        group = self._group_memo.get(key) if key is not None else None
        if group is None:
            group = self._resident_groups(si)
            if key is not None:
                if len(self._group_memo) > 8192:
                    self._group_memo.clear()
                self._group_memo[key] = group
        return per_dev, pre_max, e_pre, *group

    def _resident_groups(self, si: StepInputs) -> tuple[list[float], float, list[float], list[float], int]:
        """The shared experts and the resident experts' groups of a step (the last five items of
        `_ResidentCosts`)."""
        eng = self.eng
        L = self.L
        first = np.array(si.shared_s[:L], dtype=np.float64)  # [L, n_dev]; shared experts, then the group
        counts = si.counts
        n_dev = self.n_dev
        group_J: list[float]
        if n_dev == 1:
            group_s, g_J, n_needed = eng._resident_experts(0, counts)  # memoised `plan.layer_experts`
            first[:, 0] += group_s
            group_J = [g_J]
        else:
            dev_counts = np.where(self.home_onehot, counts[None, :], 0).reshape(n_dev, L, self.E)
            groups_s = np.empty((n_dev, L), dtype=np.float64)
            dev_J = np.empty(n_dev, dtype=np.float64)
            plan = eng.plan
            for d0, devs in self.device_groups:  # one cost call per group of alike devices: [n_g, L, E] -> [n_g, L]
                c = plan.layer_experts(d0, dev_counts[devs])
                groups_s[devs] = np.broadcast_to(np.asarray(c.total_s, dtype=np.float64), (devs.size, L))
                e_j = np.broadcast_to(np.asarray(c.energy_J, dtype=np.float64), (devs.size, L))
                for i, d in enumerate(devs.tolist()):
                    dev_J[d] = np.sum(e_j[i])  # as one call per device would sum it
            first += groups_s.T
            group_J = dev_J.tolist()
            n_needed = int(np.count_nonzero(counts))
        e_shared = float(np.sum(si.shared_J[:L]))
        return (
            group_J,
            e_shared,
            first.sum(axis=0).tolist(),
            first.max(axis=1).tolist(),
            n_needed,
        )

    def _resident(self, si: StepInputs, t0: float) -> float:
        """Every expert resident: no cache decision changes anything; one vectorised pass. For a one-
        expert model (a dense model's steps repeat their shapes) `_resident_costs` is memoised by the
        step's shape and counts; the float operations and their order are the same either way."""
        eng = self.eng
        n_dev = self.n_dev
        key = None if si.shape_key is None or not eng._one_expert else (si.shape_key, si.counts.tobytes())
        rc = self._resident_memo.get(key) if key is not None else None
        if rc is None:
            rc = self._resident_costs(si)
            if key is not None:
                if len(self._resident_memo) > 8192:
                    self._resident_memo.clear()
                self._resident_memo[key] = rc
        per_dev, pre_max, energy, group_J, e_shared, first_sum, longest, n_needed = rc
        self._add_busy(per_dev)
        energy += self._a2a_energy(si)
        for g_J in group_J:
            energy += g_J
        energy += e_shared
        if eng.record_access:
            for d in range(n_dev):
                self._log_access(d, np.flatnonzero(self._device_counts(si.counts, d)))
        busy = eng.busy_s
        for d, b in enumerate(first_sum):
            busy[d] += b
        eng.n_access += n_needed
        eng.n_hits += n_needed
        eng.assign_device += si.n_assign
        c_step = eng._c
        c_step.needed += n_needed
        c_step.hits += n_needed
        a2a = si.a2a
        multi = n_dev > 1
        now = t0
        for abs_layer, layer in enumerate(self.moe_index):
            dt = pre_max[abs_layer]
            if dt > 0:
                now = now + dt
            if layer < 0:
                continue
            if multi:
                dt = a2a[layer][0]
                if dt > 0:
                    now = now + dt
            dt = longest[layer]
            if dt > 0:
                now = now + dt
            if multi:
                dt = a2a[layer][2]
                if dt > 0:
                    now = now + dt
        eng.energy_J += energy
        c_step.energy += energy
        return now

    # ----------------------------------------------------------------------------- offloaded
    def _offloaded(self, si: StepInputs, t0: float) -> float:
        """Demand fetches only: pass A (cache decisions, layer order), pass B (costs, then times)."""
        eng = self.eng
        E, n_dev = self.E, self.n_dev
        L = self.L
        counts = si.counts
        c_step = eng._c
        staging = eng.bound.mapping.staging_experts
        # needed experts per (layer, device), ascending: group id g = layer * n_dev + d, key g * E + expert
        flat = np.flatnonzero(counts)
        if n_dev > 1:
            gkey = (flat // E * n_dev + eng.home_flat[flat]) * E + flat % E
            order = np.argsort(gkey)
            nz = gkey[order]
            flat = flat[order]
        else:
            nz = flat
        bounds_a = np.searchsorted(nz, self.group_starts)
        grp = np.flatnonzero(bounds_a[1:] > bounds_a[:-1])
        # ---- pass A
        ready: dict[int, list[int]] = {}  # g -> token counts of its hits, expert order
        fetches: dict[int, int] = {}  # g -> how many of its fetched experts are cached (the rest streamed)
        fetch_cnt_of: list[list[int]] = []  # token counts of each fetching group (order of ``fetches``)
        energy = 0.0
        n_needed = int(flat.size)
        n_hit_all = n_miss_all = n_fetch_all = n_str_all = 0
        n_fetched = [0] * n_dev
        exp_cost: dict[int, OpCost] = {}
        fetch_only = eng._fetch_only and all(link is not None for link in eng.fetch_link)
        caches = eng.caches
        fused = [c.access_admit_list for c in caches]
        observes = self.observes
        observe_any = any(observes)
        record = eng.record_access
        peak_staging = eng.peak_staging
        peak_resident = eng.peak_resident
        fetch_arrays: _FetchArrays | None = None  # the step path's fetches as arrays
        if fetch_only and not observe_any and not record:  # the whole step's cache decisions at once
            ready, fetches, n_hit_all, n_miss_all, n_str_all, n_fetched, fetch_arrays = self._step_decisions(
                flat, nz, counts[flat], t0
            )
            n_fetch_all = n_miss_all
            grp = grp[:0]  # nothing left for the layer-by-layer loop below
        ex_all: list[int] = (flat % E).tolist() if grp.size else []  # expert of each needed (layer, device, expert)
        cnt_all: list[int] = counts[flat].tolist() if grp.size else []  # and its tokens
        for g, lo, hi, layer, d in zip(
            grp.tolist(),
            bounds_a[grp].tolist(),
            bounds_a[grp + 1].tolist(),
            (grp // n_dev).tolist(),
            (grp % n_dev).tolist(),
            strict=True,
        ):
            ex = ex_all[lo:hi]
            if observe_any and observes[d]:
                caches[d].observe(layer, si.rows[:, layer, :], t0)
            if fetch_only:  # every miss is fetched: one fused call
                hits, admitted = fused[d](layer, ex, t0)
            else:
                hits = caches[d].access_list(layer, ex, t0)
            if record:
                eng._access_log[d].append(np.asarray(ex, dtype=np.int64) + layer * E)
            n_ex = hi - lo
            n_hit = sum(hits)
            n_hit_all += n_hit
            if n_hit == n_ex:
                ready[g] = cnt_all[lo:hi]
                continue
            cnt = cnt_all[lo:hi]
            if n_hit:
                ready[g] = list(compress(cnt, hits))
            n_miss_all += n_ex - n_hit
            if fetch_only:
                fetch_cnt = list(compress(cnt, map(not_, hits))) if n_hit else cnt
            else:
                miss = [e for e, h in zip(ex, hits, strict=True) if not h]
                fetch_ex = self._decide(d, layer, miss, counts, exp_cost)
                admitted, _victims = caches[d].admit_list(layer, fetch_ex, t0, protect=ex)
                by_ex = dict(zip(ex, cnt, strict=True))
                fetch_cnt = [by_ex[e] for e in fetch_ex]
            n_f = len(fetch_cnt)
            if all(admitted):
                n_str = 0
            else:
                n_str = n_f - sum(admitted)
                if staging == 0:
                    raise RuntimeError(
                        f"device {d}: {n_str} fetched experts of MoE layer {layer} cannot be cached "
                        "(cache full of protected or pinned experts, or the policy refuses them) and "
                        "staging_experts=0; raise staging_experts"
                    )
                fetch_cnt = [c for c, a in zip(fetch_cnt, admitted, strict=True) if a] + [
                    c for c, a in zip(fetch_cnt, admitted, strict=True) if not a
                ]
                if min(n_str, staging) > peak_staging[d]:
                    peak_staging[d] = min(n_str, staging)
            n_fetch_all += n_f
            n_str_all += n_str
            n_fetched[d] += n_f
            n_res = caches[d].n_resident
            if n_res > peak_resident[d]:
                peak_resident[d] = n_res
            fetches[g] = n_f - n_str
            fetch_cnt_of.append(fetch_cnt)
        c_step.misses += n_miss_all
        c_step.fetched += n_fetch_all
        c_step.streamed += n_str_all
        for d, n_f in enumerate(n_fetched):
            if n_f:
                nbytes = eng.bpe * n_f
                eng._add_bytes(eng.fetch_link[d], nbytes)
                c_step.bytes_host += nbytes
                energy += eng.fetch_J[d] * n_f
        eng.n_access += n_needed
        eng.n_hits += n_hit_all
        eng.assign_device += si.n_assign
        c_step.needed += n_needed
        c_step.hits += n_hit_all
        # ---- pass B: costs
        pre_max, e_pre = self._pre(si)
        energy += e_pre + self._a2a_energy(si) + float(np.sum(si.shared_J[:L]))
        comp: dict[int, list[float]] = {}
        if fetches:
            if fetch_arrays is None:  # the layer-by-layer loop's lists, as arrays
                gs = list(fetches)
                lens = [len(c) for c in fetch_cnt_of]
                fetch_arrays = (
                    gs,
                    lens,
                    np.fromiter(chain.from_iterable(fetch_cnt_of), dtype=np.int64, count=sum(lens)),
                    np.repeat(np.asarray(gs, dtype=np.int64) % n_dev, lens),
                )
            comp, energy = self._fetched_costs(fetch_arrays, int(counts.max()), energy)
        shared = si.shared_s[:L].tolist()
        # ---- pass B: times
        a2a = si.a2a
        multi = n_dev > 1
        busy = eng.busy_s
        fetch_s = eng.fetch_s
        gcost = self._group_costs(ready)
        now = t0
        g = 0
        for abs_layer, layer in enumerate(self.moe_index):
            dt = pre_max[abs_layer]
            if dt > 0:
                now = now + dt
            if layer < 0:
                continue
            if multi:
                dt = a2a[layer][0]
                if dt > 0:
                    now = now + dt
            start = now
            sh = shared[layer]
            g = layer * n_dev
            for d in range(n_dev):
                gc = gcost.get(g)
                if gc is not None:
                    g_t = gc[0]
                    energy += gc[1]
                else:
                    g_t = 0.0
                first = sh[d] + g_t
                end = start
                if first > 0:
                    end = start + first
                    busy[d] += first
                n_cached = fetches.get(g)
                if n_cached is not None:
                    comp_s = comp[g]
                    if n_cached == len(comp_s):  # nothing streamed: `_chain` inlined, the same float operations
                        t_link = start
                        f = fetch_s[d]
                        c_end = end
                        b = 0.0
                        for ce in comp_s:
                            t_link = t_link + f
                            if t_link > c_end:  # max(c_end, t_link)
                                c_end = t_link
                            c_end = c_end + ce
                            b += ce
                        busy[d] += b
                        if c_end > end:
                            end = end + (c_end - end)
                    else:
                        end = self._chain(d, n_cached, comp_s, start, end, fetch_s[d], staging)
                if end > now:
                    now = end
                g += 1
            if multi:
                dt = a2a[layer][2]
                if dt > 0:
                    now = now + dt
        eng.energy_J += energy
        c_step.energy += energy
        return now

    def _step_decisions(
        self, flat: npt.NDArray[np.int64], nz: npt.NDArray[np.int64], tokens: npt.NDArray[np.int64], t0: float
    ) -> tuple[dict[int, list[int]], dict[int, int], int, int, int, list[int], _FetchArrays | None]:
        """Pass A of `_offloaded` for a demand-fetching step (every miss fetched, no observer, no
        access log): each device's cache decides the whole step in one `access_admit_step` call,
        then the ready and fetched groups are cut from arrays. ``flat``: the step's needed flat keys
        in group order (``nz // E`` = group id ``layer * n_dev + device``, ascending), ``tokens``
        their token counts. The same answers, effects and bookkeeping as the layer-by-layer loop:
        ``ready``, a group's hits' token counts in expert order; ``fetches``, how many of its misses
        were admitted (they come first in the fetch order, the streamed ones after). Returns (ready,
        fetches, hits, misses, streamed, fetched experts per device, the fetches as
        `_fetched_costs`'s arrays)."""
        eng = self.eng
        E, n_dev = self.E, self.n_dev
        caches = eng.caches
        n = int(flat.size)
        gid = nz // E
        if n_dev == 1:
            hits, adm = caches[0].access_admit_step(flat, t0)
            dev = np.zeros(n, dtype=np.int64)
        else:
            dev = gid % n_dev
            by_dev = np.argsort(dev, kind="stable")  # each device's keys stay ascending: layer, then expert
            keys = flat[by_dev]
            cuts = np.searchsorted(dev[by_dev], np.arange(n_dev + 1)).tolist()
            parts = [
                caches[d].access_admit_step(keys[cuts[d] : cuts[d + 1]], t0)
                for d in range(n_dev)
                if cuts[d + 1] > cuts[d]
            ]
            hits = np.empty(n, dtype=bool)
            adm = np.empty(n, dtype=bool)
            hits[by_dev] = np.concatenate([h for h, _ in parts])
            adm[by_dev] = np.concatenate([a for _, a in parts])
        miss = ~hits
        n_hit = int(np.count_nonzero(hits))
        ready: dict[int, list[int]] = {}
        fetches: dict[int, int] = {}
        fetched = np.bincount(dev[miss], minlength=n_dev).tolist()
        if n_hit:  # each group's hits, in expert order
            where = np.flatnonzero(hits)
            cnt = tokens[where].tolist()
            for g, a, k in zip(*_runs(gid[where]), strict=True):
                ready[g] = cnt[a : a + k]
        n_str = 0
        arrays: _FetchArrays | None = None
        if n_hit < n:
            where = np.flatnonzero(miss)
            streamed = miss & ~adm
            if streamed.any():  # a group's admitted misses first, then those that are streamed
                where = where[np.argsort(gid[where] * 2 + streamed[where], kind="stable")]
            groups, starts, lengths = _runs(gid[where])
            cached = np.add.reduceat(adm[where].astype(np.int64), starts).tolist()
            staging = eng.bound.mapping.staging_experts
            peak_staging = eng.peak_staging
            for g, k, n_c in zip(groups, lengths, cached, strict=True):
                if n_c < k:
                    d, layer = g % n_dev, g // n_dev
                    if staging == 0:
                        raise RuntimeError(
                            f"device {d}: {k - n_c} fetched experts of MoE layer {layer} cannot be cached "
                            "(cache full of protected or pinned experts, or the policy refuses them) and "
                            "staging_experts=0; raise staging_experts"
                        )
                    if min(k - n_c, staging) > peak_staging[d]:
                        peak_staging[d] = min(k - n_c, staging)
                    n_str += k - n_c
                fetches[g] = n_c
            peak_resident = eng.peak_resident
            for d, n_f in enumerate(fetched):
                if n_f and caches[d].n_resident > peak_resident[d]:
                    peak_resident[d] = caches[d].n_resident
            arrays = (groups, lengths, tokens[where], dev[where])
        return ready, fetches, n_hit, n - n_hit, n_str, fetched, arrays

    def _group_costs(self, ready: dict[int, list[int]]) -> dict[int, tuple[float, float]]:
        """Seconds and joules of each layer's ready experts run as a group (`Engine._group_cost`'s
        answers, by group id ``g = layer * n_dev + d``), from a memo by token counts per class of
        alike devices; the step's misses are computed together, one plan call per class (per class
        and group size for per-expert execution of 8 or more experts), each row exactly as the
        one-group call on the sorted counts. FPGA groups (their stream order matters) are asked
        one by one."""
        n_dev = self.n_dev
        memos = self._ready_memo
        cls_of = self._cost_class
        out: dict[int, tuple[float, float]] = {}
        todo: dict[tuple[int, int], list[tuple[int, tuple[int, ...]]]] = {}
        plan = self.eng.plan
        serial = self._serial_class
        for g, r in ready.items():
            d = g % n_dev
            rk = tuple(r)
            ci = cls_of[d]
            if ci < 0:
                out[g] = self.eng._group_cost(d, r)
                continue
            hit = memos[ci].get(rk)
            if hit is not None:
                out[g] = hit
            else:  # groups share one call (see below)
                m = len(rk)
                todo.setdefault((ci, m if m >= 8 and serial[ci] else 0), []).append((g, rk))
        if todo:
            for (ci, m_key), items in todo.items():
                d0 = self._class_device[ci]
                memo = memos[ci]
                if len(memo) > 65536:
                    memo.clear()
                if m_key:
                    arr = np.array([sorted(rk) for _g, rk in items], dtype=np.int64)  # [n, m]
                else:  # zeros in front: an expert with no tokens costs nothing, a grouped call sums its
                    # experts left to right (`hwmodels.costs._rowsum`) and a per-expert one's sums of
                    # fewer than 8 terms are sequential, so a leading +0.0 changes no bit of the
                    # one-group answer
                    width = max(len(rk) for _g, rk in items)
                    arr = np.array([(0,) * (width - len(rk)) + tuple(sorted(rk)) for _g, rk in items], dtype=np.int64)
                if serial[ci]:
                    per = plan.experts(d0, arr)
                    t = np.broadcast_to(np.asarray(per.total_s, dtype=np.float64), arr.shape)
                    j = np.broadcast_to(np.asarray(per.energy_J, dtype=np.float64), arr.shape)
                    vals = [(float(np.sum(t[i])), float(np.sum(j[i]))) for i in range(arr.shape[0])]
                else:
                    c = plan.layer_experts(d0, arr)
                    n = arr.shape[0]
                    ts = np.broadcast_to(np.asarray(c.total_s, dtype=np.float64), (n,)).tolist()
                    js = np.broadcast_to(np.asarray(c.energy_J, dtype=np.float64), (n,)).tolist()
                    vals = list(zip(ts, js, strict=True))
                for (g, rk), v in zip(items, vals, strict=True):
                    memo[rk] = v
                    out[g] = v
        return out

    def _fetched_costs(
        self, arrays: _FetchArrays, max_count: int, energy: float
    ) -> tuple[dict[int, list[float]], float]:
        """Each fetched expert's seconds alone on its tokens (by group id; ``arrays``: group ids,
        their counts of fetched experts, then each fetched expert's tokens and device, group by
        group), from the per-device tables of `_expert_table` in one numpy look-up over the step;
        ``energy`` plus their joules, added one by one in that order (a cumulative sum is a
        sequential sum: the same float operations as a Python loop)."""
        n_dev = self.n_dev
        tabs = [self._expert_table(d, max_count) for d in range(n_dev)]
        st = self._stacked
        if st is None or st[0] != self._tables_version:
            width = max(len(t) for t, _ in tabs)
            t_all = np.zeros((n_dev, width))
            j_all = np.zeros((n_dev, width))
            for d, (t, j) in enumerate(tabs):
                t_all[d, : len(t)] = t
                j_all[d, : len(j)] = j
            st = self._stacked = (self._tables_version, t_all.ravel(), j_all.ravel(), width)
        _, t_flat, j_flat, width = st
        gs, lens, idx, devs = arrays
        if n_dev > 1:
            idx = idx + devs * width
        t_list: list[float] = t_flat[idx].tolist()
        if idx.size:
            energy = float(np.cumsum(np.concatenate(([energy], j_flat[idx])))[-1])
        comp: dict[int, list[float]] = {}
        o = 0
        for g, n in zip(gs, lens, strict=True):
            comp[g] = t_list[o : o + n]
            o += n
        return comp, energy

    def _expert_table(self, d: int, max_count: int) -> tuple[list[float], list[float]]:
        """Seconds and joules of one expert of device ``d`` run alone on ``c`` tokens, for ``c`` in
        ``0 .. >= max_count``: `StepCostPlan.experts` is element-wise in the token counts (its
        contract), so a table of its answers replaces a cost call per step."""
        key = (self.eng._dev_key[d], self.eng.bound.cache_tier[d])
        tab = self._tables.get(key)
        if tab is None or len(tab[0]) <= max_count:
            n = max(64, 2 * (max_count + 1), len(tab[0]) * 2 if tab else 0)
            c = self.eng.plan.experts(d, np.arange(n, dtype=np.int64))
            tab = (
                np.broadcast_to(np.asarray(c.total_s, dtype=np.float64), (n,)).tolist(),
                np.broadcast_to(np.asarray(c.energy_J, dtype=np.float64), (n,)).tolist(),
            )
            self._tables[key] = tab
            self._tables_version += 1
        return tab

    def _chain(
        self, d: int, n_cached: int, comp_s: list[float], t_link: float, end: float, f: float, staging: int
    ) -> float:
        """End time of device ``d``'s layer: its fetched experts (the first ``n_cached`` cached, the rest
        streamed) arrive back to back over the copy engine from ``t_link``; each runs (``comp_s``)
        when it has arrived and the previous one has run; its compute stream is free from ``end``."""
        c_end = end
        busy = 0.0
        if n_cached == len(comp_s):  # nothing streamed: no staging-buffer waits (same float operations)
            for ce in comp_s:
                t_link = t_link + f
                c_end = max(c_end, t_link) + ce
                busy += ce
            self.eng.busy_s[d] += busy
            if c_end > end:
                end = end + (c_end - end)
            return end
        done_streamed: list[float] = []
        for i, ce in enumerate(comp_s):
            t_start = t_link
            streamed = i >= n_cached
            if streamed:
                j = len(done_streamed)
                if j >= staging:
                    t_start = max(t_start, done_streamed[j - staging])
            arrive = t_start + f
            t_link = arrive
            c_end = max(c_end, arrive) + ce
            busy += ce
            if streamed:
                done_streamed.append(c_end)
        self.eng.busy_s[d] += busy
        if c_end > end:
            end = end + (c_end - end)
        return end

    def _decide(
        self, d: int, layer: int, miss: list[int], counts: npt.NDArray[np.int64], memo: dict[int, OpCost]
    ) -> list[int]:
        """The misses to fetch (all of them: no CPU path here); asks the miss policy unless it is
        ``fetch``, with the same arguments as the simpy path."""
        eng = self.eng
        if eng.fetch_link[d] is None:
            raise RuntimeError(
                f"device {d}: expert ({layer}, {miss[0]}) is not resident and there is no "
                "backing memory to fetch it from (the mapping offloads nothing)"
            )
        if eng._fetch_only:
            return miss
        per = memo.get(d)
        if per is None:
            per = eng.plan.experts(d, self._device_counts(counts, d))
            memo[d] = per
        miss_ex = np.asarray(miss, dtype=np.int64)
        lo = layer * self.E
        comp_J = np.broadcast_to(np.asarray(per.energy_J, dtype=np.float64), (self.L * self.E,))
        cnt = counts[lo : lo + self.E]
        fetch_ex, cpu_ex = eng.simpy_step._decide(d, layer, miss_ex, cnt, per, comp_J[lo : lo + self.E], None, None)
        if cpu_ex.size:
            raise RuntimeError(f"miss policy {eng.bound.mapping.miss!r} chose CPU compute on a platform without a host")
        return fetch_ex.tolist()


def _runs(keys: npt.NDArray[np.int64]) -> tuple[list[int], list[int], list[int]]:
    """The runs of equal values of a non-decreasing, non-empty int array: (value, start, length)
    of each, as lists."""
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    lengths = np.diff(np.append(starts, keys.size))
    return keys[starts].tolist(), starts.tolist(), lengths.tolist()
