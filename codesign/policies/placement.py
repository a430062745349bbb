"""Placement of experts across devices: round-robin, load-balanced and ExFlow affinity placement.

A placement is an ``expert_home`` array ``int64[moe_layers, n_experts]`` giving, for every MoE
layer, the device index (``0 .. n_devices-1``) that holds each routed expert's weights.

ExFlow (Yao et al., IPDPS 2024, arXiv 2401.08383; "[P] ExFlow" in
shared/reference/hardware-and-papers.md s.4) places experts so that a token's expert at layer
``l+1`` tends to live on the device of its expert at layer ``l``: with context-coherent expert
parallelism the token then stays where it is and the cross-device all-to-all shrinks ("reduce up
to 67% of tokens' cross-GPU routing latency"). The placement is an integer program:

    binary x[l, e, d]  (expert e of layer l on device d)
    sum_d x[l, e, d] = 1                     every expert has exactly one home
    floor(E/D) <= sum_e x[l, e, d] <= ceil(E/D)   balanced capacity per device and layer
    y[l, i, j, d] <= x[l, i, d],  y[l, i, j, d] <= x[l+1, j, d]   (linearised product)
    maximise  sum W[l, i, j] * y[l, i, j, d]  = expected co-located transitions

with ``W[l, i, j]`` the expected number of (layer-l expert i -> layer-(l+1) expert j) transitions
per token, ``W = load * P(e_{l+1} | e_l)`` (the inter-layer affinity). Minimising the expected
cross-device traffic is the same problem since the total ``sum W`` is constant. Because the
objective is maximised, the upper bounds suffice to linearise ``y = x * x'``.

Large instances (DeepSeek-V2-Lite: 64 experts x 26 layers x 8 devices gives 850k product
variables with a very weak LP relaxation) are solved by **sequential conditioning**: layer 0 is
placed by load balance, then each next layer is an exact assignment MILP conditioned on the
previous layer's placement (linear, totally unimodular, solved to optimality by HiGHS), followed
by block-coordinate sweeps that re-solve each layer conditioned on *both* neighbours until the
objective stops improving. Every sweep step is exact, so the objective never decreases; the
result is a local optimum of the joint program, not a certified global one. `exflow_placement`
records which method answered, the objective and the solve time in an `ExflowSolution`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linear_sum_assignment, milp

from codesign.policies.base import PlacementPolicy, RoutingStats
from codesign.policies.registry import REGISTRIES
from workloads.trace import RoutingTrace

if TYPE_CHECKING:
    from workloads.model import MoEModel

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Above this many product variables ``y`` the joint MILP is not attempted (method "auto"). The LP
#: relaxation of the linearised product is weak (x = 1/D everywhere makes every pair "co-located"),
#: so HiGHS proves optimality only for small instances: 320 product variables (4 layers x 8
#: experts x 2 devices) take about 7 s, 424 (3 x 8 x 4) do not finish in 60 s on this machine.
JOINT_MAX_PRODUCT_VARS = 250
#: Above this many experts per layer, method "auto" solves the layer sub-problems by greedy-plus-swap
#: instead of an exact assignment: the exact rectangular assignment (`linear_sum_assignment`) on an
#: ``E x E`` matrix grows as ``E^3`` (256 experts: ~2 ms per layer solve on this machine, 2048
#: experts would be ~1 s, times layers times sweeps).
GREEDY_ABOVE_EXPERTS = 1024
#: A sweep first improves a layer from its current placement by cancelling at most this many
#: positive cycles (exact when none is left); beyond it the exact assignment is solved afresh.
WARM_CYCLES = 12


# --------------------------------------------------------------------------- statistics
def expert_load(trace: RoutingTrace) -> FloatArray:
    """Token-expert assignments per (MoE layer, expert): ``float64[moe_layers, n_experts]``."""
    n_exp = trace.n_experts
    e = trace.experts.astype(np.int64)
    out = np.zeros((trace.n_moe_layers, n_exp))
    for layer in range(trace.n_moe_layers):
        col = e[:, layer, :].ravel()
        out[layer] = np.bincount(col[col >= 0], minlength=n_exp)
    return out


def transition_counts(trace: RoutingTrace) -> FloatArray:
    """Counts of (expert i at layer l, expert j at layer l+1) pairs over tokens and slot pairs.

    ``float64[moe_layers-1, E, E]``; with top-k routing each token contributes ``k x k`` pairs per
    layer transition (slots holding -1 are skipped).
    """
    n_exp = trace.n_experts
    e = trace.experts.astype(np.int64)
    n_l = trace.n_moe_layers
    out = np.zeros((max(n_l - 1, 0), n_exp, n_exp))
    for layer in range(n_l - 1):
        a = e[:, layer, :, None]
        b = e[:, layer + 1, None, :]
        valid = (a >= 0) & (b >= 0)
        idx = (a * n_exp + b)[valid]
        out[layer] = np.bincount(idx, minlength=n_exp * n_exp).reshape(n_exp, n_exp)
    return out


def affinity_weights(load: npt.ArrayLike, conditional: npt.ArrayLike) -> FloatArray:
    """ExFlow's transition weights from the per-layer load ``[L, E]`` and the inter-layer affinity
    ``P(e_{l+1} = b | e_l = a)`` ``[L-1, E, E]`` (e.g. ``workloads.stats.affinity(trace)``):
    ``W[l, a, b] = load[l, a] * P(b | a)``. With top-k routing the joint counts are ``k`` times this
    (each token pairs its expert with its ``k`` next ones), a constant that leaves the optimum
    unchanged."""
    ld = np.asarray(load, dtype=np.float64)
    cond = np.asarray(conditional, dtype=np.float64)
    if ld.ndim != 2 or cond.shape != (ld.shape[0] - 1, ld.shape[1], ld.shape[1]):
        raise ValueError(f"load [L, E] and conditional [L-1, E, E] do not match: {ld.shape} vs {cond.shape}")
    return ld[:-1, :, None] * cond


def _check_home(expert_home: npt.ArrayLike, n_layers: int, n_experts: int) -> IntArray:
    home = np.asarray(expert_home)
    if home.shape != (n_layers, n_experts):
        raise ValueError(
            f"expert_home must have shape (moe_layers={n_layers}, n_experts={n_experts}), got {home.shape}"
        )
    if not np.issubdtype(home.dtype, np.integer) or (home.size and home.min() < 0):
        raise ValueError(
            f"expert_home must hold non-negative device indices, got dtype {home.dtype}, "
            f"min {home.min() if home.size else None}"
        )
    return home.astype(np.int64)


@dataclass(frozen=True)
class CrossDeviceShare:
    """How much routing crosses devices under a placement (both shares in [0, 1]).

    ``transition``: share of consecutive-layer (expert at l, expert at l+1) pairs, over tokens and
    ``k x k`` slot pairs, whose two experts live on different devices.
    ``assignment``: share of token-expert assignments at layers ``1..L-1`` whose expert lives on
    none of the devices that hold the token's experts of the previous layer (with context-coherent
    expert parallelism the token's activations are there; the assignment needs a cross-device
    dispatch). ``n_transitions`` and ``n_assignments`` are the denominators.
    """

    transition: float
    assignment: float
    n_transitions: int
    n_assignments: int


def cross_device_stats(trace: RoutingTrace, expert_home: npt.ArrayLike) -> CrossDeviceShare:
    """Both cross-device shares of ``trace`` under ``expert_home`` (see `CrossDeviceShare`)."""
    home = _check_home(expert_home, trace.n_moe_layers, trace.n_experts)
    e = trace.experts.astype(np.int64)
    cross_t = total_t = cross_a = total_a = 0
    for layer in range(trace.n_moe_layers - 1):
        a, b = e[:, layer, :], e[:, layer + 1, :]
        da = np.where(a >= 0, home[layer][np.maximum(a, 0)], -1)  # [T, k]
        db = np.where(b >= 0, home[layer + 1][np.maximum(b, 0)], -2)  # [T, k]
        pair_valid = (da[:, :, None] >= 0) & (db[:, None, :] >= 0)
        total_t += int(pair_valid.sum())
        cross_t += int((pair_valid & (da[:, :, None] != db[:, None, :])).sum())
        b_valid = b >= 0
        has_prev: npt.NDArray[np.bool_] = np.any(da >= 0, axis=1)
        local = np.any(db[:, :, None] == da[:, None, :], axis=2)  # [T, k]
        counted = b_valid & has_prev[:, None]
        total_a += int(counted.sum())
        cross_a += int((counted & ~local).sum())
    return CrossDeviceShare(
        transition=cross_t / total_t if total_t else 0.0,
        assignment=cross_a / total_a if total_a else 0.0,
        n_transitions=total_t,
        n_assignments=total_a,
    )


def cross_device_share(
    trace: RoutingTrace, expert_home: npt.ArrayLike, *, kind: Literal["transition", "assignment"] = "transition"
) -> float:
    """Share of routing that crosses devices under ``expert_home`` (``float`` in [0, 1]).

    ``kind="transition"`` (default): share of consecutive-layer token-expert transitions whose
    experts live on different devices; ``kind="assignment"``: share of token-expert assignments
    whose expert lives off the token's current device(s). See `CrossDeviceShare`.
    """
    stats = cross_device_stats(trace, expert_home)
    if kind == "transition":
        return stats.transition
    if kind == "assignment":
        return stats.assignment
    raise ValueError(f"kind must be 'transition' or 'assignment', got {kind!r}")


# --------------------------------------------------------------------------- simple placements
def _capacity_bounds(n_experts: int, n_devices: int) -> tuple[int, int]:
    if n_devices <= 0:
        raise ValueError(f"n_devices must be a positive int, got {n_devices}")
    if n_devices > n_experts:
        raise ValueError(f"n_devices={n_devices} exceeds n_experts={n_experts}: some device would hold no expert")
    return n_experts // n_devices, -(-n_experts // n_devices)


def round_robin_placement(n_layers: int, n_experts: int, n_devices: int) -> IntArray:
    """Expert ``e`` of every layer on device ``e mod n_devices``."""
    _capacity_bounds(n_experts, n_devices)
    return np.tile(np.arange(n_experts, dtype=np.int64) % n_devices, (n_layers, 1))


def load_balanced_placement(load: npt.ArrayLike, n_devices: int) -> IntArray:
    """Greedy bin packing per layer (longest processing time first) under balanced capacity.

    ``load`` is ``[moe_layers, n_experts]`` (token-expert assignments, or probabilities). Experts
    are taken heaviest first and put on the least-loaded device that still has room (at most
    ``ceil(E / D)`` experts); ties go to the lowest device index, so the result is deterministic.
    """
    w = np.asarray(load, dtype=np.float64)
    if w.ndim != 2 or (w.size and (not np.all(np.isfinite(w)) or w.min() < 0)):
        raise ValueError(f"load must be a finite non-negative [moe_layers, n_experts] array, got shape {w.shape}")
    n_layers, n_exp = w.shape
    _, hi = _capacity_bounds(n_exp, n_devices)
    home = np.empty((n_layers, n_exp), dtype=np.int64)
    for layer in range(n_layers):
        dev_load = np.zeros(n_devices)
        dev_count = np.zeros(n_devices, dtype=np.int64)
        for e in np.argsort(-w[layer], kind="stable"):
            room = dev_count < hi
            cand = np.flatnonzero(room)
            d = int(cand[np.argmin(dev_load[cand])])
            home[layer, e] = d
            dev_load[d] += w[layer, e]
            dev_count[d] += 1
    return home


# --------------------------------------------------------------------------- ExFlow MILP
@dataclass(frozen=True)
class ExflowSolution:
    """Result of `exflow_placement`.

    ``expert_home``: ``int64[moe_layers, n_experts]``. ``colocated``: objective, the expected
    co-located transitions (same units as the weights); ``total``: sum of all weights, so the
    expected cross-device share is ``1 - colocated / total``. ``method``: which solver answered:
    ``"joint"`` (one MILP, ``optimal`` says whether HiGHS proved optimality within the time limit),
    ``"sequential"`` (exact layer sub-problems, conditioned layer by layer plus ``sweeps``
    refinement sweeps), ``"greedy"`` (the same with greedy-plus-swap layer solves) or ``"trivial"``
    (one device or one layer). ``converged``: the last sweep improved nothing (or the joint MILP
    was proved optimal); ``stopped``: ``"converged"``, ``"max_sweeps"`` or ``"budget"`` (the wall
    budget ran out); ``greedy_layers``: layer solves answered by greedy-plus-swap (the fallback
    when the budget ran out during the sequential method). ``solve_s``: wall seconds.
    """

    expert_home: IntArray
    colocated: float
    total: float
    method: str
    optimal: bool
    sweeps: int
    solve_s: float
    converged: bool = True
    stopped: str = "converged"
    greedy_layers: int = 0

    @property
    def expected_cross_share(self) -> float:
        return 1.0 - self.colocated / self.total if self.total > 0 else 0.0


def placement_objective(weights: FloatArray, expert_home: IntArray) -> float:
    """Expected co-located transitions ``sum_l sum_ij W[l,i,j] [home[l,i] == home[l+1,j]]``."""
    home = np.asarray(expert_home)
    if weights.shape[0] == 0:
        return 0.0
    same = home[:-1, :, None] == home[1:, None, :]  # [L-1, E, E]
    return float(np.einsum("lij,lij->", weights, same, optimize=False))


def _validate_weights(weights: npt.ArrayLike) -> FloatArray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"transition weights must be [moe_layers-1, E, E], got shape {w.shape}")
    if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
        raise ValueError("transition weights must be finite and non-negative")
    return w


def _solve_joint(w: FloatArray, n_devices: int, time_limit_s: float, strict: bool = True) -> tuple[IntArray, bool]:
    """One MILP over all layers with linearised products (small instances); ``(home, optimal)``.
    Without an incumbent at the time limit: raises when ``strict``, else returns round-robin."""
    n_trans, n_exp, _ = w.shape
    n_layers = n_trans + 1
    lo, hi = _capacity_bounds(n_exp, n_devices)
    n_x = n_layers * n_exp * n_devices

    def xi(layer: int, e: int, d: int) -> int:
        return (layer * n_exp + e) * n_devices + d

    pairs = [
        (layer, i, j) for layer in range(n_trans) for i in range(n_exp) for j in range(n_exp) if w[layer, i, j] > 0
    ]
    n_y = len(pairs) * n_devices
    n_var = n_x + n_y
    c = np.zeros(n_var)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lb: list[float] = []
    ub: list[float] = []
    r = 0
    # every expert one home
    for layer in range(n_layers):
        for e in range(n_exp):
            for d in range(n_devices):
                rows.append(r)
                cols.append(xi(layer, e, d))
                vals.append(1.0)
            lb.append(1.0)
            ub.append(1.0)
            r += 1
    # capacity
    for layer in range(n_layers):
        for d in range(n_devices):
            for e in range(n_exp):
                rows.append(r)
                cols.append(xi(layer, e, d))
                vals.append(1.0)
            lb.append(lo)
            ub.append(hi)
            r += 1
    # linearised products
    for p, (layer, i, j) in enumerate(pairs):
        for d in range(n_devices):
            y = n_x + p * n_devices + d
            c[y] = -w[layer, i, j]
            for x in (xi(layer, i, d), xi(layer + 1, j, d)):
                rows += [r, r]
                cols += [y, x]
                vals += [1.0, -1.0]
                lb.append(-np.inf)
                ub.append(0.0)
                r += 1
    a = sp.csr_array((vals, (rows, cols)), shape=(r, n_var))
    integrality = np.zeros(n_var)
    integrality[:n_x] = 1
    lower = np.zeros(n_var)
    upper = np.ones(n_var)
    # device labels are interchangeable (equal capacities): expert e of layer 0 may only use
    # devices 0..e (standard symmetry breaking; keeps at least one optimum)
    for e in range(min(n_exp, n_devices)):
        for d in range(e + 1, n_devices):
            upper[xi(0, e, d)] = 0.0
    res = milp(
        c,
        constraints=LinearConstraint(a, lb, ub),
        integrality=integrality,
        bounds=Bounds(lower, upper),
        options={"time_limit": time_limit_s, "disp": False},
    )
    if res.x is None:
        if not strict:  # auto: no incumbent within the time limit; the caller falls back
            return round_robin_placement(n_layers, n_exp, n_devices), False
        raise RuntimeError(f"ExFlow joint MILP found no feasible placement: {res.message}; raise time_limit_s")
    xs = np.asarray(res.x[:n_x]).reshape(n_layers, n_exp, n_devices)
    return np.argmax(xs, axis=2).astype(np.int64), bool(res.status == 0)


def _assign_layer(
    score: FloatArray,
    lo: int,
    hi: int,
    load: FloatArray | None = None,
    load_cap: float | None = None,
    time_limit_s: float | None = None,
) -> tuple[IntArray, bool]:
    """Exact assignment of E experts to D devices maximising ``sum score[e, home[e]]`` under the
    count capacity ``lo..hi`` and, when given, ``sum_e load[e] [home[e] == d] <= load_cap``.

    Returns ``(home, exact)``. Without a load cap this is a rectangular linear assignment (each
    device is ``hi`` interchangeable slots, its first ``lo`` carry a bonus larger than any score
    difference so that every device gets at least ``lo``), solved exactly by
    `scipy.optimize.linear_sum_assignment` in milliseconds. With a load cap it is a MILP (HiGHS)
    stopped after ``time_limit_s``; ``exact`` is False when the limit stopped it with an incumbent.
    """
    n_exp, n_dev = score.shape
    if load is None or load_cap is None:
        slot_dev = np.repeat(np.arange(n_dev), hi)  # column -> device
        gain = score[:, slot_dev]
        if lo < hi:
            span = float(score.max() - score.min()) if score.size else 0.0
            bonus = (span * n_exp + 1.0) * (np.tile(np.arange(hi), n_dev) < lo)
            gain = gain + bonus[None, :]
        rows, cols = linear_sum_assignment(gain, maximize=True)
        home = np.empty(n_exp, dtype=np.int64)
        home[rows] = slot_dev[cols]
        return home, True
    n_var = n_exp * n_dev
    rows_i = np.concatenate([np.repeat(np.arange(n_exp), n_dev), n_exp + np.tile(np.arange(n_dev), n_exp)])
    cols_i = np.concatenate([np.arange(n_var), np.arange(n_var)])
    vals = np.ones(2 * n_var)
    lb = np.concatenate([np.ones(n_exp), np.full(n_dev, lo)])
    ub = np.concatenate([np.ones(n_exp), np.full(n_dev, hi)])
    n_rows = n_exp + n_dev
    rows_i = np.concatenate([rows_i, n_rows + np.tile(np.arange(n_dev), n_exp)])
    cols_i = np.concatenate([cols_i, np.arange(n_var)])
    vals = np.concatenate([vals, np.repeat(load, n_dev)])
    lb = np.concatenate([lb, np.full(n_dev, -np.inf)])
    ub = np.concatenate([ub, np.full(n_dev, load_cap)])
    n_rows += n_dev
    a = sp.csr_array((vals, (rows_i, cols_i)), shape=(n_rows, n_var))
    options: dict[str, Any] = {"disp": False}
    if time_limit_s is not None:
        options["time_limit"] = max(float(time_limit_s), 1e-3)
    res = milp(
        -score.ravel(),
        constraints=LinearConstraint(a, lb, ub),
        integrality=np.ones(n_var),
        bounds=Bounds(0, 1),
        options=options,
    )
    if res.x is None:
        extra = f" and load cap {load_cap:.4g}"
        why = "no feasible placement within the time budget" if res.status == 1 else res.message
        raise RuntimeError(
            f"ExFlow layer assignment infeasible under capacity {lo}..{hi}{extra}: {why}; raise load_slack"
            + (" or budget_s" if res.status == 1 else "")
        )
    home = np.argmax(np.asarray(res.x).reshape(n_exp, n_dev), axis=1).astype(np.int64)
    return home, bool(res.status == 0)


def _cancel_cycles(
    score: FloatArray, home: IntArray, lo: int, hi: int, max_iter: int = 100_000
) -> tuple[IntArray, bool]:
    """Exact improvement of a feasible layer assignment by cycle cancelling (warm start).

    The layer sub-problem is a transportation problem (experts -> devices, counts in ``lo..hi``).
    In the residual graph over devices, edge ``u -> v`` moves the expert of ``u`` that gains most by
    moving to ``v`` (gain ``score[x, v] - score[x, u]``); a virtual node closes paths that start on a
    device above ``lo`` and end on one below ``hi``. A positive-gain cycle (Bellman-Ford, ``D + 1``
    nodes) is applied until none is left, which is the optimality condition of the transportation
    LP (integral), so the result is an exact optimum (up to a gain tolerance of ``1e-12`` of the
    largest score) and its objective never below the start's. Each cycle costs ``O(E D)`` numpy
    work plus ``O(D^3)`` Python steps; a warm start (the previous sweep's layer) needs few.
    Returns ``(home, optimal)``; ``optimal`` is False when ``max_iter`` cycles did not finish.
    """
    n_exp, n_dev = score.shape
    home = home.astype(np.int64).copy()
    tol = 1e-12 * max(float(np.abs(score).max()) if score.size else 0.0, 1e-300)
    idx = np.arange(n_exp)
    n_nodes = n_dev + 1
    src = n_dev  # virtual node
    for _ in range(max_iter):
        delta = score - score[idx, home][:, None]  # [E, D] gain of moving each expert to each device
        gain = np.full((n_nodes, n_nodes), -np.inf)
        arg = np.zeros((n_dev, n_dev), dtype=np.int64)
        for u in range(n_dev):
            mine = np.flatnonzero(home == u)
            if mine.size == 0:
                continue
            best = np.argmax(delta[mine], axis=0)
            gain[u, :n_dev] = delta[mine[best], np.arange(n_dev)]
            arg[u] = mine[best]
            gain[u, u] = -np.inf
        count = np.bincount(home, minlength=n_dev)
        gain[:n_dev, src] = np.where(count < hi, 0.0, -np.inf)  # path ends on v: v gains one expert
        gain[src, :n_dev] = np.where(count > lo, 0.0, -np.inf)  # path starts on u: u loses one
        dist = np.zeros(n_nodes)
        pred = np.full(n_nodes, -1, dtype=np.int64)
        last = -1
        for _it in range(n_nodes):
            cand = dist[:, None] + gain  # [u, v]
            best_u = np.argmax(cand, axis=0)
            best_val = cand[best_u, np.arange(n_nodes)]
            upd = best_val > dist + tol
            if not upd.any():
                last = -1
                break
            dist = np.where(upd, best_val, dist)
            pred = np.where(upd, best_u, pred)
            last = int(np.flatnonzero(upd)[0])
        if last < 0:
            return home, True
        v = last
        for _it in range(n_nodes):  # walk back into the cycle
            v = int(pred[v])
            if v < 0:  # no cycle on this pred chain: let the exact assignment answer
                return home, False
        cycle = [v]
        u = int(pred[v])
        while u != v and u >= 0 and len(cycle) <= n_nodes:
            cycle.append(u)
            u = int(pred[u])
        if u != v:
            return home, False
        cycle.reverse()  # edges cycle[i] -> cycle[i+1]
        total = sum(gain[cycle[i], cycle[(i + 1) % len(cycle)]] for i in range(len(cycle)))
        if not total > tol:  # not an improving cycle: let the exact assignment answer
            return home, False
        moves = [
            (int(arg[a, b]), b)
            for a, b in ((cycle[i], cycle[(i + 1) % len(cycle)]) for i in range(len(cycle)))
            if a != src and b != src
        ]
        for x, b in moves:
            home[x] = b
    return home, False


def _greedy_swap_layer(score: FloatArray, lo: int, hi: int, start: IntArray | None = None) -> IntArray:
    """Greedy-plus-swap assignment (the fallback for instances too large for the exact solvers).

    Without ``start``: (expert, device) pairs are taken best score first and accepted while the
    expert is unplaced, the device has fewer than ``hi`` experts and enough unplaced experts remain
    to bring every device to ``lo``; experts left over (all their pairs came while their devices
    were full) go to the best device with room. Then pairwise swaps of two experts on different
    devices are applied, best gain first, while one gains more than ``1e-12`` of the largest score;
    from ``start`` only the swaps run, so the score never decreases. Each swap costs ``O(E^2)``
    numpy work; at most ``4 E`` swaps.
    """
    n_exp, n_dev = score.shape
    if start is None:
        home = np.full(n_exp, -1, dtype=np.int64)
        count = np.zeros(n_dev, dtype=np.int64)
        deficit = lo * n_dev  # experts still needed to bring every device to lo
        unplaced = n_exp
        for flat in np.argsort(-score, axis=None, kind="stable"):
            e, d = divmod(int(flat), n_dev)
            if home[e] >= 0 or count[d] >= hi:
                continue
            fills = count[d] < lo
            if unplaced - 1 < deficit - int(fills):
                continue
            home[e] = d
            count[d] += 1
            deficit -= int(fills)
            unplaced -= 1
            if unplaced == 0:
                break
        for e in np.flatnonzero(home < 0):
            cand = np.flatnonzero(count < lo)
            if cand.size == 0:
                cand = np.flatnonzero(count < hi)
            d = int(cand[np.argmax(score[e, cand])])
            home[e] = d
            count[d] += 1
    else:
        home = start.astype(np.int64).copy()
    idx = np.arange(n_exp)
    tol = 1e-12 * max(float(np.abs(score).max()) if score.size else 0.0, 1e-300)
    for _ in range(4 * n_exp):
        own = score[idx, home]  # [E]
        # gain of swapping a and b: score[a, home[b]] + score[b, home[a]] - own[a] - own[b]
        cross = score[:, home]  # [a, b] = score[a, home[b]]
        gain = cross + cross.T - own[:, None] - own[None, :]
        a, b = divmod(int(np.argmax(gain)), n_exp)
        if gain[a, b] <= tol:
            break
        home[a], home[b] = home[b], home[a]
    return home


def _score_from_prev(w_prev: FloatArray, home_prev: IntArray, n_devices: int) -> FloatArray:
    """``[E, D]``: weight of the transitions into each expert from the experts homed on each device
    (``w_prev.T @ onehot(home_prev)``, as row sums: no BLAS call on a transposed view)."""
    out = np.empty((w_prev.shape[1], n_devices))
    for d in range(n_devices):
        out[:, d] = w_prev[home_prev == d].sum(axis=0)
    return out


def _score_from_next(w_next: FloatArray, home_next: IntArray, n_devices: int) -> FloatArray:
    """``[E, D]``: weight of the transitions from each expert to the experts homed on each device."""
    out = np.empty((w_next.shape[0], n_devices))
    for d in range(n_devices):
        out[:, d] = w_next[:, home_next == d].sum(axis=1)
    return out


def _onehot(home: IntArray, n_devices: int) -> FloatArray:
    out = np.zeros((home.size, n_devices))
    out[np.arange(home.size), home] = 1.0
    return out


@dataclass
class _Budget:
    """Wall-clock budget of one placement solve (``time.perf_counter`` seconds)."""

    deadline: float

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def spent(self) -> bool:
        return self.left() <= 0.0


def _solve_sequential(
    w: FloatArray,
    n_devices: int,
    first: IntArray,
    max_sweeps: int,
    budget: _Budget,
    load: FloatArray | None = None,
    load_slack: float | None = None,
    greedy: bool = False,
) -> tuple[IntArray, int, bool, int]:
    """Sequential conditioning plus block-coordinate sweeps (module doc).

    Each layer's sub-problem is solved exactly (`_assign_layer`) unless ``greedy`` or the budget is
    spent, in which case greedy-plus-swap (`_greedy_swap_layer`) answers it: from scratch in the
    forward pass, from the current layer placement in a sweep (so the objective never decreases).
    Returns ``(home, sweeps, converged, greedy_layers)``: ``converged`` is True when the last
    sweep improved nothing; ``greedy_layers`` counts the layer solves greedy-plus-swap answered.
    """
    n_trans, n_exp, _ = w.shape
    n_layers = n_trans + 1
    lo, hi = _capacity_bounds(n_exp, n_devices)
    capped = load is not None and load_slack is not None
    greedy_layers = 0

    def solve(layer: int, score: FloatArray, start: IntArray | None) -> IntArray:
        nonlocal greedy_layers
        if capped:
            assert load is not None and load_slack is not None
            cap = (1.0 + load_slack) * float(load[layer].sum()) / n_devices
            home_l, _ = _assign_layer(score, lo, hi, load[layer], cap, time_limit_s=max(budget.left(), 1.0))
            return home_l
        if greedy or budget.spent():
            greedy_layers += 1
            return _greedy_swap_layer(score, lo, hi, start)
        if start is not None:  # a sweep: warm start, exact by cycle cancelling when few cycles remain
            home_l, done = _cancel_cycles(score, start, lo, hi, max_iter=WARM_CYCLES)
            if done:
                return home_l
        return _assign_layer(score, lo, hi)[0]

    home = np.empty((n_layers, n_exp), dtype=np.int64)
    home[0] = first
    if capped:  # the first layer too must respect the load cap
        home[0] = solve(0, _onehot(first, n_devices), None)
    for layer in range(1, n_layers):  # forward pass, each layer conditioned on the previous one
        home[layer] = solve(layer, _score_from_prev(w[layer - 1], home[layer - 1], n_devices), None)
    best = placement_objective(w, home)
    sweeps = 0
    converged = False
    # a layer whose neighbours did not change since it was last solved has the same sub-problem
    # and the same (exact) answer: it is skipped (stamp = sweep position of the last change)
    changed_at = np.zeros(n_layers, dtype=np.int64)
    solved_at = np.full(n_layers, -1, dtype=np.int64)
    clock = 0
    for _ in range(max_sweeps):  # block-coordinate refinement, both neighbours fixed
        if budget.spent() and not greedy:
            break
        sweeps += 1
        for layer in range(n_layers):
            clock += 1
            nb = max(changed_at[max(layer - 1, 0)], changed_at[min(layer + 1, n_layers - 1)])
            if not capped and not greedy and solved_at[layer] > nb and not budget.spent():
                continue
            score = np.zeros((n_exp, n_devices))
            if layer > 0:
                score += _score_from_prev(w[layer - 1], home[layer - 1], n_devices)
            if layer < n_trans:
                score += _score_from_next(w[layer], home[layer + 1], n_devices)
            new_home = solve(layer, score, home[layer].copy())
            if not np.array_equal(new_home, home[layer]):
                home[layer] = new_home
                changed_at[layer] = clock
            solved_at[layer] = clock
        value = placement_objective(w, home)
        if value <= best * (1 + 1e-12):
            best = max(best, value)
            converged = True
            break
        best = value
        if greedy and budget.spent():
            break
    return home, sweeps, converged, greedy_layers


def exflow_placement(
    weights: npt.ArrayLike,
    n_devices: int,
    *,
    load: npt.ArrayLike | None = None,
    method: Literal["auto", "joint", "sequential", "greedy"] = "auto",
    time_limit_s: float = 30.0,
    max_sweeps: int = 20,
    load_slack: float | None = None,
    budget_s: float = 60.0,
) -> ExflowSolution:
    """ExFlow placement maximising expected co-located layer transitions (see module docstring).

    ``weights``: ``[moe_layers-1, E, E]`` expected transition counts (e.g. `transition_counts`, or
    the per-layer load times the affinity ``P(e_{l+1} | e_l)``). ``load`` (``[moe_layers, E]``,
    optional) only seeds the sequential method's first layer by `load_balanced_placement`
    (round-robin without it). ``method="auto"`` uses the joint MILP when it has at most
    `JOINT_MAX_PRODUCT_VARS` product variables, greedy-plus-swap when a layer has more than
    `GREEDY_ABOVE_EXPERTS` experts, the sequential method otherwise; when its joint MILP stops at
    its time limit without proof of optimality, the sequential method also runs and the better
    placement is returned. ``method="joint"`` returns the MILP's incumbent as is (``optimal``
    False when the time limit stopped it); ``"greedy"`` solves every layer sub-problem by
    greedy-plus-swap (`_greedy_swap_layer`) instead of exactly.

    Budgets: ``time_limit_s`` caps the joint MILP (HiGHS ``time_limit``); ``budget_s`` caps the
    whole solve in wall seconds: once spent, the sweeps stop (``converged`` False, ``stopped``
    ``"budget"``) and any layer of the forward pass still to solve is answered by
    greedy-plus-swap (counted in ``greedy_layers``). ``max_sweeps`` caps the refinement sweeps.

    ``load_slack`` (an extension, not in the paper; needs ``load``): every device's share of a
    layer's load may exceed the mean by at most this fraction (``0.1`` = 10 %), so that affinity
    does not unbalance the compute; it forces the sequential method with a per-layer MILP.
    """
    w = _validate_weights(weights)
    n_trans, n_exp, _ = w.shape
    n_layers = n_trans + 1
    _capacity_bounds(n_exp, n_devices)
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int | np.integer) or max_sweeps < 0:
        raise ValueError(f"max_sweeps must be an int >= 0, got {max_sweeps!r}")
    if method not in ("auto", "joint", "sequential", "greedy"):
        raise ValueError(f"method must be 'auto', 'joint', 'sequential' or 'greedy', got {method!r}")
    if load_slack is not None:
        if load is None:
            raise ValueError("load_slack needs the per-layer load (load=...)")
        if load_slack < 0:
            raise ValueError(f"load_slack must be >= 0, got {load_slack}")
        if method in ("joint", "greedy"):
            raise ValueError("load_slack is supported by the sequential method only")
        method = "sequential"
    ld_arr: FloatArray | None = None
    if load is not None:
        ld_arr = np.asarray(load, dtype=np.float64)
        if ld_arr.shape != (n_layers, n_exp):
            raise ValueError(f"load must have shape ({n_layers}, {n_exp}), got {ld_arr.shape}")
    n_prod = int((w > 0).sum()) * n_devices
    use: str = method
    if method == "auto":
        if n_prod <= JOINT_MAX_PRODUCT_VARS:
            use = "joint"
        elif n_exp > GREEDY_ABOVE_EXPERTS:
            use = "greedy"
        else:
            use = "sequential"
    t0 = time.perf_counter()
    budget = _Budget(t0 + float(budget_s))
    sweeps, converged, greedy_layers = 0, True, 0
    if n_trans == 0 or n_devices == 1:
        home = (
            round_robin_placement(n_layers, n_exp, n_devices)
            if ld_arr is None
            else load_balanced_placement(ld_arr, n_devices)
        )
        optimal, use = True, "trivial"
    else:
        optimal = False
        home = np.empty((n_layers, n_exp), dtype=np.int64)
        if use == "joint":
            home, optimal = _solve_joint(
                w, n_devices, min(time_limit_s, max(budget.left(), 1e-3)), strict=method == "joint"
            )
            converged = optimal
        if use in ("sequential", "greedy") or (method == "auto" and not optimal):
            if ld_arr is not None:
                first = load_balanced_placement(ld_arr[:1], n_devices)[0]
            else:
                first = round_robin_placement(1, n_exp, n_devices)[0]
            seq_home, sweeps, converged, greedy_layers = _solve_sequential(
                w, n_devices, first, max_sweeps, budget, ld_arr, load_slack, greedy=use == "greedy"
            )
            if use != "joint" or placement_objective(w, seq_home) > placement_objective(w, home):
                home = seq_home
                if use == "joint":
                    use = "sequential"
    solve_s = time.perf_counter() - t0
    value = placement_objective(w, home)
    stopped = "converged" if converged else ("budget" if budget.spent() else "max_sweeps")
    log.info(
        "exflow placement: method=%s (%s, %d sweeps, %d greedy layer solves), %d layers x %d experts x %d devices, "
        "co-located %.4g of %.4g (%.1f%%), %.2f s",
        use,
        stopped,
        sweeps,
        greedy_layers,
        n_layers,
        n_exp,
        n_devices,
        value,
        float(w.sum()),
        100 * value / max(float(w.sum()), 1e-300),
        solve_s,
    )
    return ExflowSolution(
        expert_home=home,
        colocated=value,
        total=float(w.sum()),
        method=use,
        optimal=optimal,
        sweeps=sweeps,
        solve_s=solve_s,
        converged=converged,
        stopped=stopped,
        greedy_layers=greedy_layers,
    )


def brute_force_placement(weights: npt.ArrayLike, n_devices: int) -> tuple[IntArray, float]:
    """Exhaustive optimum of the ExFlow objective (tiny instances only: for tests).

    Enumerates every balanced placement of every layer; raises when more than 200,000 joint
    placements would be enumerated.
    """
    w = _validate_weights(weights)
    n_trans, n_exp, _ = w.shape
    n_layers = n_trans + 1
    lo, hi = _capacity_bounds(n_exp, n_devices)
    layer_options: list[IntArray] = []
    for assign in product(range(n_devices), repeat=n_exp):
        counts = np.bincount(np.asarray(assign), minlength=n_devices)
        if counts.min() >= lo and counts.max() <= hi:
            layer_options.append(np.asarray(assign, dtype=np.int64))
    n_total = len(layer_options) ** n_layers
    if n_total > 200_000:
        raise ValueError(f"brute force over {n_total} placements is too large")
    best_val, best = -1.0, None
    for combo in product(range(len(layer_options)), repeat=n_layers):
        home = np.stack([layer_options[c] for c in combo])
        v = placement_objective(w, home)
        if v > best_val:
            best_val, best = v, home
    assert best is not None
    return best, best_val


# --------------------------------------------------------------------------- registered policies
def _require_stats(name: str, model: MoEModel, stats: RoutingStats | None) -> RoutingStats:
    if stats is None:
        raise ValueError(f"placement policy {name!r} needs routing statistics (a training trace); none were given")
    if stats.load.shape != (model.n_moe_layers, model.n_experts):
        raise ValueError(
            f"placement policy {name!r}: routing stats are {stats.load.shape} (layers, experts) but "
            f"model {model.name!r} has ({model.n_moe_layers}, {model.n_experts})"
        )
    return stats


@REGISTRIES["placement"].register("round-robin", "expert e on device e mod n_devices, every layer")
class RoundRobinPlacement(PlacementPolicy):
    """Expert ``e`` of every MoE layer on device ``e mod n_devices``; needs no statistics."""

    def place(self, model: MoEModel, n_devices: int, stats: RoutingStats | None) -> IntArray:
        home = round_robin_placement(model.n_moe_layers, model.n_experts, n_devices)
        return self.check(home, model, n_devices)


@REGISTRIES["placement"].register("load-balanced", "greedy bin packing of per-layer expert load across devices")
class LoadBalancedPlacement(PlacementPolicy):
    """Per layer, heaviest expert first onto the least-loaded device with room (`load_balanced_placement`)."""

    needs_stats = True

    def place(self, model: MoEModel, n_devices: int, stats: RoutingStats | None) -> IntArray:
        st = _require_stats("load-balanced", model, stats)
        return self.check(load_balanced_placement(st.load, n_devices), model, n_devices)


@REGISTRIES["placement"].register(
    "exflow", "ExFlow: integer program (scipy milp) maximising same-device consecutive-layer expert pairs"
)
class ExflowPlacement(PlacementPolicy):
    """ExFlow affinity placement (`exflow_placement` on the stats' joint affinity counts).

    Options: ``method`` ("auto", "joint", "sequential", "greedy"), ``time_limit_s`` (joint MILP),
    ``budget_s`` (wall budget of the whole solve; greedy-plus-swap answers what is left when it
    runs out), ``max_sweeps`` (sequential refinement), ``load_slack`` (negative, the default = off:
    the paper's count-balanced capacity; a fraction >= 0 adds a per-device load cap, see
    `exflow_placement`; a float because mapping options are JSON scalars). The last solution
    (method, objective, solve time, convergence) is kept in ``self.solution`` for reporting.
    """

    needs_stats = True

    def __init__(
        self,
        *,
        seed: int = 0,
        method: Literal["auto", "joint", "sequential", "greedy"] = "auto",
        time_limit_s: float = 30.0,
        max_sweeps: int = 20,
        load_slack: float = -1.0,
        budget_s: float = 60.0,
    ) -> None:
        super().__init__(seed=seed)
        if method not in ("auto", "joint", "sequential", "greedy"):
            raise ValueError(f"exflow method must be 'auto', 'joint', 'sequential' or 'greedy', got {method!r}")
        for name, v in (("time_limit_s", time_limit_s), ("budget_s", budget_s)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"exflow {name} must be a number > 0, got {v!r}")
        if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 0:
            raise ValueError(f"exflow max_sweeps must be an int >= 0, got {max_sweeps!r}")
        self.load_slack = None if load_slack < 0 else float(load_slack)
        self.method: Literal["auto", "joint", "sequential", "greedy"] = method
        self.time_limit_s = float(time_limit_s)
        self.budget_s = float(budget_s)
        self.max_sweeps = max_sweeps
        self.solution: ExflowSolution | None = None

    def place(self, model: MoEModel, n_devices: int, stats: RoutingStats | None) -> IntArray:
        st = _require_stats("exflow", model, stats)
        if n_devices == 1:
            return np.zeros((model.n_moe_layers, model.n_experts), dtype=np.int64)
        self.solution = exflow_placement(
            st.affinity,
            n_devices,
            load=st.load,
            method=self.method,
            time_limit_s=self.time_limit_s,
            max_sweeps=self.max_sweeps,
            load_slack=self.load_slack,
            budget_s=self.budget_s,
        )
        return self.check(self.solution.expert_home, model, n_devices)


# --------------------------------------------------------------------------- placement memo
#: Bumped when the stored layout format changes (part of every memo key).
MEMO_FORMAT = 1


def stats_digest(stats: RoutingStats | None) -> str:
    """SHA-256 (hex) of routing statistics: shapes, ``n_tokens`` and every count (``"none"`` for None)."""
    if stats is None:
        return "none"
    h = hashlib.sha256()
    for arr in (stats.load, stats.affinity):
        a = np.ascontiguousarray(arr, dtype=np.float64)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    h.update(str(int(stats.n_tokens)).encode())
    return h.hexdigest()


def _model_fingerprint(model: MoEModel) -> str:
    if is_dataclass(model) and not isinstance(model, type):
        body = json.dumps(asdict(model), sort_keys=True, default=str)
    else:
        body = f"{getattr(model, 'name', type(model).__name__)}:{model.n_moe_layers}x{model.n_experts}"
    return hashlib.sha256(body.encode()).hexdigest()


def _code_fingerprint(factory: Any) -> str:
    """SHA-256 of the source file that defines ``factory`` (a disk entry from other code is not reused)."""
    module = sys.modules.get(getattr(factory, "__module__", ""), None)
    path = getattr(module, "__file__", None)
    if not path:
        return "unknown"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unknown"


def placement_key(
    policy: str,
    options: Mapping[str, Any],
    model: MoEModel,
    n_devices: int,
    stats: RoutingStats | None,
    *,
    seed: int = 0,
) -> str:
    """The memo key (SHA-256 hex) of a placement: policy name, its class and the source file that
    defines it, options, seed, device count, the model's fields (its shape among them) and
    `stats_digest`."""
    factory = REGISTRIES["placement"].get(policy)
    body = {
        "format": MEMO_FORMAT,
        "policy": policy,
        "factory": f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}",
        "code": _code_fingerprint(factory),
        "options": {str(k): options[k] for k in sorted(options)},
        "seed": int(seed),
        "n_devices": int(n_devices),
        "model": _model_fingerprint(model),
        "shape": [int(model.n_moe_layers), int(model.n_experts)],
        "stats": stats_digest(stats),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class PlacedLayout:
    """A placement and where it came from.

    ``expert_home``: read-only ``int64[moe_layers, n_experts]``. ``source``: ``"computed"`` (the
    policy ran now), ``"memo"`` (in-process memo), ``"disk"`` (memo directory) or ``"given"`` (a
    layout in the `Mapping`). ``solve_s``: wall seconds of the policy when it ran (0 for
    ``"given"``). ``info``: what the policy reported (for ExFlow: method, converged, stopped,
    sweeps, greedy_layers, expected_cross_share); JSON scalars only.
    """

    expert_home: IntArray
    source: str
    solve_s: float = 0.0
    info: tuple[tuple[str, bool | int | float | str], ...] = ()


def run_placement(
    policy: str,
    options: Mapping[str, Any],
    model: MoEModel,
    n_devices: int,
    stats: RoutingStats | None,
    *,
    seed: int = 0,
) -> PlacedLayout:
    """Run the placement policy ``policy`` (no memo): the checked layout, its solve time and info."""
    t0 = time.perf_counter()
    pol: PlacementPolicy = REGISTRIES["placement"].create(policy, seed=seed, **dict(options))
    if n_devices == 1:
        home = np.zeros((model.n_moe_layers, model.n_experts), dtype=np.int64)
    else:
        home = PlacementPolicy.check(pol.place(model, n_devices, stats), model, n_devices)
    solve_s = time.perf_counter() - t0
    info: dict[str, bool | int | float | str] = {}
    sol = getattr(pol, "solution", None)
    if isinstance(sol, ExflowSolution):
        info = {
            "method": sol.method,
            "optimal": sol.optimal,
            "converged": sol.converged,
            "stopped": sol.stopped,
            "sweeps": sol.sweeps,
            "greedy_layers": sol.greedy_layers,
            "expected_cross_share": sol.expected_cross_share,
        }
    home = np.array(home, dtype=np.int64)
    home.setflags(write=False)
    return PlacedLayout(expert_home=home, source="computed", solve_s=solve_s, info=tuple(sorted(info.items())))


class PlacementMemo:
    """Placements computed once: an in-process LRU memo plus an optional directory of ``.npz`` files.

    Keyed by `placement_key` (policy + class + source file + options + seed, device count, model,
    routing-statistics digest), so a memo never answers for different inputs; placement policies
    are deterministic under their seed, so a memo hit equals a fresh run. ``maxsize`` layouts are
    kept in memory (least recently used dropped first; 0 = none); ``directory`` (created on the
    first write) keeps them across processes, one ``<key>.npz`` per layout written atomically
    (temporary file + rename); an unreadable or mismatched file is ignored with a warning and
    overwritten. The memo is an object that callers own and pass (`codesign.simulate.simulate`
    ``placements=``, `codesign.mapping.Mapping.bind`); there is no process-wide memo.
    ``hits``/``misses`` count lookups.
    """

    def __init__(self, *, maxsize: int = 32, directory: str | os.PathLike[str] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"PlacementMemo maxsize must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None and self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"PlacementMemo directory {str(self.directory)!r} exists and is not a directory")
        self._memo: OrderedDict[str, PlacedLayout] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memo)

    def place(
        self,
        policy: str,
        options: Mapping[str, Any],
        model: MoEModel,
        n_devices: int,
        stats: RoutingStats | None,
        *,
        seed: int = 0,
    ) -> PlacedLayout:
        """The layout of ``policy`` for these inputs: from memory, from the directory, or computed
        (`run_placement`) and stored in both."""
        key = placement_key(policy, options, model, n_devices, stats, seed=seed)
        shape = (int(model.n_moe_layers), int(model.n_experts))
        hit = self._memo.get(key)
        if hit is not None:
            self._memo.move_to_end(key)
            self.hits += 1
            return PlacedLayout(hit.expert_home, "memo", hit.solve_s, hit.info)
        disk = self._read(key, shape, n_devices)
        if disk is not None:
            self.hits += 1
            self._remember(key, disk)
            return disk
        self.misses += 1
        layout = run_placement(policy, options, model, n_devices, stats, seed=seed)
        self._remember(key, layout)
        self._write(key, layout)
        return layout

    def _remember(self, key: str, layout: PlacedLayout) -> None:
        if self.maxsize == 0:
            return
        self._memo[key] = layout
        self._memo.move_to_end(key)
        while len(self._memo) > self.maxsize:
            self._memo.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"placement-{key}.npz"

    def _read(self, key: str, shape: tuple[int, int], n_devices: int) -> PlacedLayout | None:
        path = self._path(key)
        if path is None or not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                home = np.array(data["expert_home"], dtype=np.int64)
                meta = json.loads(str(data["meta"]))
            if home.shape != shape or (home.size and (home.min() < 0 or home.max() >= n_devices)):
                raise ValueError(f"layout shape {home.shape} or device ids do not fit {shape} on {n_devices} devices")
            info = tuple(sorted((str(k), v) for k, v in dict(meta.get("info", {})).items()))
            solve_s = float(meta.get("solve_s", 0.0))
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            log.warning("placement memo: ignoring unreadable %s (%s); recomputing", path, exc)
            return None
        home.setflags(write=False)
        return PlacedLayout(expert_home=home, source="disk", solve_s=solve_s, info=info)

    def _write(self, key: str, layout: PlacedLayout) -> None:
        path = self._path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"solve_s": layout.solve_s, "info": dict(layout.info)}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".placement-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, expert_home=np.asarray(layout.expert_home), meta=np.asarray(meta))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


__all__ = [
    "GREEDY_ABOVE_EXPERTS",
    "JOINT_MAX_PRODUCT_VARS",
    "MEMO_FORMAT",
    "CrossDeviceShare",
    "ExflowPlacement",
    "ExflowSolution",
    "LoadBalancedPlacement",
    "PlacedLayout",
    "PlacementMemo",
    "RoundRobinPlacement",
    "affinity_weights",
    "brute_force_placement",
    "cross_device_share",
    "cross_device_stats",
    "exflow_placement",
    "expert_load",
    "load_balanced_placement",
    "placement_key",
    "placement_objective",
    "round_robin_placement",
    "run_placement",
    "stats_digest",
    "transition_counts",
]
