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
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from codesign.policies.base import CachePolicy
from hwmodels.opcost import OpCost

if TYPE_CHECKING:
    from codesign.engine import Engine

__all__ = ["ArithmeticStep", "StepInputs"]

FloatArray = npt.NDArray[np.float64]
#: `ArithmeticStep._resident_costs`: each device's per-layer attention + router / dense FFN times
#: (``[n_dev][n_layers]``), the longest device's of each layer, their energy, each device's group
#: energy, the shared experts' energy, each device's shared + group time summed over MoE layers, the
#: longest device's shared + group time of each MoE layer, and the active (layer, expert) pairs.
_ResidentCosts = tuple[list[list[float]], list[float], float, list[float], float, list[float], list[float], int]


@dataclass(frozen=True, eq=False)
class StepInputs:
    """What a step needs that does not depend on time, as arrays (built by `Engine._prepare`).

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
        self._tables: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
        self._resident_memo: dict[tuple[Any, ...], _ResidentCosts] = {}  # see _resident

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
        moe_pre = (si.attn_s[0] + si.router_s[0]).tolist()
        dense_pre = (si.attn_s[0] + si.dense_s[0]).tolist()
        moe_max, dense_max = max(moe_pre), max(dense_pre)
        a_j = float(si.attn_J[0].sum())
        n_moe = self.L
        n_dense = self.n_layers - n_moe
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
        eng._add_bytes(eng.platform.peer_link, si.bytes_peer)
        eng._c.bytes_peer += si.bytes_peer
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
        eng = self.eng
        L = self.L
        per_dev, pre_max, e_pre = self._pre_costs(si)
        first = np.array(si.shared_s[:L], dtype=np.float64)  # [L, n_dev]; shared experts, then the group
        group_J = []
        n_needed = 0
        for d in range(self.n_dev):
            group_s, g_J, n_active = eng._resident_experts(d, self._device_counts(si.counts, d))
            first[:, d] += group_s
            group_J.append(g_J)
            n_needed += n_active
        e_shared = float(np.sum(si.shared_J[:L]))
        return (
            per_dev,
            pre_max,
            e_pre,
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
        L, E, n_dev = self.L, self.E, self.n_dev
        counts = si.counts
        c_step = eng._c
        staging = eng.bound.mapping.staging_experts
        # needed experts per (layer, device), ascending: group id (layer * n_dev + d) * E + expert
        nz = np.flatnonzero(counts)
        if n_dev > 1:
            nz = np.sort((nz // E * n_dev + eng.home_flat[nz]) * E + nz % E)
        bounds: list[int] = np.searchsorted(nz, self.group_starts).tolist()
        grp: list[int] = nz.tolist()
        # ---- pass A
        cnt_list: list[int] = counts.tolist()
        ready: dict[tuple[int, int], list[int]] = {}  # (layer, d) -> token counts of its hits, expert order
        fetches: dict[tuple[int, int], tuple[list[int], int]] = {}  # (layer, d) -> (keys, n cached)
        energy = 0.0
        n_needed = n_hit_all = 0
        n_fetched = [0] * n_dev
        exp_cost: dict[int, OpCost] = {}
        fetch_only = eng._fetch_only and all(link is not None for link in eng.fetch_link)
        for g in range(L * n_dev):
            lo, hi = bounds[g], bounds[g + 1]
            if lo == hi:
                continue
            layer, d = divmod(g, n_dev)
            base = layer * E
            gb = g * E
            ex = [k - gb for k in grp[lo:hi]]
            cache = eng.caches[d]
            if self.observes[d]:
                cache.observe(layer, si.rows[:, layer, :], t0)
            hits = cache.access_list(layer, ex, t0)
            if eng.record_access:
                eng._access_log[d].append(np.asarray(ex, dtype=np.int64) + base)
            n_hit = sum(hits)
            n_needed += len(ex)
            n_hit_all += n_hit
            if n_hit:
                ready[(layer, d)] = [cnt_list[base + e] for e, h in zip(ex, hits, strict=True) if h]
            if n_hit == len(ex):
                continue
            miss = [e for e, h in zip(ex, hits, strict=True) if not h]
            c_step.misses += len(miss)
            fetch_ex = miss if fetch_only else self._decide(d, layer, miss, counts, exp_cost)
            admitted, _victims = cache.admit_list(layer, fetch_ex, t0, protect=ex)
            cached = [e for e, a in zip(fetch_ex, admitted, strict=True) if a]
            streamed = [e for e, a in zip(fetch_ex, admitted, strict=True) if not a]
            n_str = len(streamed)
            if n_str and staging == 0:
                raise RuntimeError(
                    f"device {d}: {n_str} fetched experts of MoE layer {layer} cannot be cached "
                    "(cache full of protected or pinned experts, or the policy refuses them) and "
                    "staging_experts=0; raise staging_experts"
                )
            eng.peak_staging[d] = max(eng.peak_staging[d], min(n_str, staging))
            n_f = len(fetch_ex)
            c_step.fetched += n_f
            c_step.streamed += n_str
            n_fetched[d] += n_f
            eng.peak_resident[d] = max(eng.peak_resident[d], cache.n_resident)
            fetches[(layer, d)] = ([base + e for e in cached + streamed], len(cached))
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
        comp: dict[tuple[int, int], list[float]] = {}
        if fetches:
            max_count = int(counts.max())
            tables = [self._expert_table(d, max_count) for d in range(n_dev)]
            for item, (fkeys, _n_cached) in fetches.items():
                t_tab, j_tab = tables[item[1]]
                cs = [cnt_list[k] for k in fkeys]
                comp[item] = [t_tab[n] for n in cs]
                for n in cs:
                    energy += j_tab[n]
        shared = si.shared_s[:L].tolist()
        # ---- pass B: times
        a2a = si.a2a
        multi = n_dev > 1
        busy = eng.busy_s
        fetch_s = eng.fetch_s
        group_cost = eng._group_cost
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
            start = now
            sh = shared[layer]
            for d in range(n_dev):
                item = (layer, d)
                g_t, g_j = group_cost(d, ready[item]) if item in ready else (0.0, 0.0)
                energy += g_j
                first = sh[d] + g_t
                end = start
                if first > 0:
                    end = start + first
                    busy[d] += first
                if item in fetches:
                    end = self._chain(d, fetches[item][1], comp[item], start, end, fetch_s[d], staging)
                if end > now:
                    now = end
            if multi:
                dt = a2a[layer][2]
                if dt > 0:
                    now = now + dt
        eng.energy_J += energy
        c_step.energy += energy
        return now

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
        return tab

    def _chain(
        self, d: int, n_cached: int, comp_s: list[float], t_link: float, end: float, f: float, staging: int
    ) -> float:
        """End time of device ``d``'s layer: its fetched experts (the first ``n_cached`` cached, the rest
        streamed) arrive back to back over the copy engine from ``t_link``; each runs (``comp_s``)
        when it has arrived and the previous one has run; its compute stream is free from ``end``."""
        c_end = end
        done_streamed: list[float] = []
        busy = 0.0
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
