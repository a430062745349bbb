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

import logging
import time
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

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
    expected cross-device share is ``1 - colocated / total``. ``method``: ``"joint"`` (one MILP,
    ``optimal`` says whether HiGHS proved optimality within the time limit) or ``"sequential"``
    (conditioned layer by layer plus ``sweeps`` refinement sweeps). ``solve_s``: wall seconds.
    """

    expert_home: IntArray
    colocated: float
    total: float
    method: str
    optimal: bool
    sweeps: int
    solve_s: float

    @property
    def expected_cross_share(self) -> float:
        return 1.0 - self.colocated / self.total if self.total > 0 else 0.0


def placement_objective(weights: FloatArray, expert_home: IntArray) -> float:
    """Expected co-located transitions ``sum_l sum_ij W[l,i,j] [home[l,i] == home[l+1,j]]``."""
    total = 0.0
    for layer in range(weights.shape[0]):
        same = expert_home[layer][:, None] == expert_home[layer + 1][None, :]
        total += float(weights[layer][same].sum())
    return total


def _validate_weights(weights: npt.ArrayLike) -> FloatArray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 3 or w.shape[1] != w.shape[2]:
        raise ValueError(f"transition weights must be [moe_layers-1, E, E], got shape {w.shape}")
    if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
        raise ValueError("transition weights must be finite and non-negative")
    return w


def _solve_joint(w: FloatArray, n_devices: int, time_limit_s: float) -> tuple[IntArray, bool]:
    """One MILP over all layers with linearised products (small instances)."""
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
        raise RuntimeError(f"ExFlow joint MILP found no feasible placement: {res.message}")
    xs = np.asarray(res.x[:n_x]).reshape(n_layers, n_exp, n_devices)
    return np.argmax(xs, axis=2).astype(np.int64), bool(res.status == 0)


def _assign_layer(
    score: FloatArray, lo: int, hi: int, load: FloatArray | None = None, load_cap: float | None = None
) -> IntArray:
    """Exact assignment of E experts to D devices maximising ``sum score[e, home[e]]`` under the
    count capacity ``lo..hi`` and, when given, ``sum_e load[e] [home[e] == d] <= load_cap``."""
    n_exp, n_dev = score.shape
    n_var = n_exp * n_dev
    rows = np.concatenate([np.repeat(np.arange(n_exp), n_dev), n_exp + np.tile(np.arange(n_dev), n_exp)])
    cols = np.concatenate([np.arange(n_var), np.arange(n_var)])
    vals = np.ones(2 * n_var)
    lb = np.concatenate([np.ones(n_exp), np.full(n_dev, lo)])
    ub = np.concatenate([np.ones(n_exp), np.full(n_dev, hi)])
    n_rows = n_exp + n_dev
    if load is not None and load_cap is not None:
        rows = np.concatenate([rows, n_rows + np.tile(np.arange(n_dev), n_exp)])
        cols = np.concatenate([cols, np.arange(n_var)])
        vals = np.concatenate([vals, np.repeat(load, n_dev)])
        lb = np.concatenate([lb, np.full(n_dev, -np.inf)])
        ub = np.concatenate([ub, np.full(n_dev, load_cap)])
        n_rows += n_dev
    a = sp.csr_array((vals, (rows, cols)), shape=(n_rows, n_var))
    res = milp(
        -score.ravel(),
        constraints=LinearConstraint(a, lb, ub),
        integrality=np.ones(n_var),
        bounds=Bounds(0, 1),
        options={"disp": False},
    )
    if res.x is None:
        extra = f" and load cap {load_cap:.4g}" if load_cap is not None else ""
        raise RuntimeError(
            f"ExFlow layer assignment infeasible under capacity {lo}..{hi}{extra}: {res.message}; raise load_slack"
        )
    return np.argmax(np.asarray(res.x).reshape(n_exp, n_dev), axis=1).astype(np.int64)


def _onehot(home: IntArray, n_devices: int) -> FloatArray:
    out = np.zeros((home.size, n_devices))
    out[np.arange(home.size), home] = 1.0
    return out


def _solve_sequential(
    w: FloatArray,
    n_devices: int,
    first: IntArray,
    max_sweeps: int,
    load: FloatArray | None = None,
    load_slack: float | None = None,
) -> tuple[IntArray, int]:
    n_trans, n_exp, _ = w.shape
    n_layers = n_trans + 1
    lo, hi = _capacity_bounds(n_exp, n_devices)

    def cap(layer: int) -> tuple[FloatArray | None, float | None]:
        if load is None or load_slack is None:
            return None, None
        return load[layer], (1.0 + load_slack) * float(load[layer].sum()) / n_devices

    home = np.empty((n_layers, n_exp), dtype=np.int64)
    home[0] = first
    if load is not None and load_slack is not None:  # the first layer too must respect the load cap
        home[0] = _assign_layer(np.zeros((n_exp, n_devices)) + _onehot(first, n_devices), lo, hi, *cap(0))
    for layer in range(1, n_layers):  # forward pass, each layer conditioned on the previous one
        score = w[layer - 1].T @ _onehot(home[layer - 1], n_devices)  # [E_next, D]
        home[layer] = _assign_layer(score, lo, hi, *cap(layer))
    best = placement_objective(w, home)
    sweeps = 0
    for _ in range(max_sweeps):  # block-coordinate refinement, both neighbours fixed
        sweeps += 1
        for layer in range(n_layers):
            score = np.zeros((n_exp, n_devices))
            if layer > 0:
                score += w[layer - 1].T @ _onehot(home[layer - 1], n_devices)
            if layer < n_trans:
                score += w[layer] @ _onehot(home[layer + 1], n_devices)
            home[layer] = _assign_layer(score, lo, hi, *cap(layer))
        value = placement_objective(w, home)
        if value <= best * (1 + 1e-12):
            best = max(best, value)
            break
        best = value
    return home, sweeps


def exflow_placement(
    weights: npt.ArrayLike,
    n_devices: int,
    *,
    load: npt.ArrayLike | None = None,
    method: Literal["auto", "joint", "sequential"] = "auto",
    time_limit_s: float = 30.0,
    max_sweeps: int = 20,
    load_slack: float | None = None,
) -> ExflowSolution:
    """ExFlow placement maximising expected co-located layer transitions (see module docstring).

    ``weights``: ``[moe_layers-1, E, E]`` expected transition counts (e.g. `transition_counts`, or
    the per-layer load times the affinity ``P(e_{l+1} | e_l)``). ``load`` (``[moe_layers, E]``,
    optional) only seeds the sequential method's first layer by `load_balanced_placement`
    (round-robin without it). ``method="auto"`` uses the joint MILP when it has at most
    `JOINT_MAX_PRODUCT_VARS` product variables, the sequential method otherwise; when its joint MILP
    stops at ``time_limit_s`` without proof of optimality, the sequential method also runs and the
    better placement is returned. ``method="joint"`` returns the MILP's incumbent as is
    (``optimal`` False when the time limit stopped it).

    ``load_slack`` (an extension, not in the paper; needs ``load``): every device's share of a
    layer's load may exceed the mean by at most this fraction (``0.1`` = 10 %), so that affinity
    does not unbalance the compute; it forces the sequential method.
    """
    w = _validate_weights(weights)
    n_trans, n_exp, _ = w.shape
    n_layers = n_trans + 1
    _capacity_bounds(n_exp, n_devices)
    if time_limit_s <= 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    if method not in ("auto", "joint", "sequential"):
        raise ValueError(f"method must be 'auto', 'joint' or 'sequential', got {method!r}")
    if load_slack is not None:
        if load is None:
            raise ValueError("load_slack needs the per-layer load (load=...)")
        if load_slack < 0:
            raise ValueError(f"load_slack must be >= 0, got {load_slack}")
        if method == "joint":
            raise ValueError("load_slack is supported by the sequential method only")
        method = "sequential"
    n_prod = int((w > 0).sum()) * n_devices
    use: str = method if method != "auto" else ("joint" if n_prod <= JOINT_MAX_PRODUCT_VARS else "sequential")
    t0 = time.perf_counter()
    if n_trans == 0 or n_devices == 1:
        home = (
            round_robin_placement(n_layers, n_exp, n_devices)
            if load is None
            else load_balanced_placement(load, n_devices)
        )
        optimal, sweeps, use = True, 0, "trivial"
    else:
        sweeps = 0
        optimal = False
        if use == "joint":
            home, optimal = _solve_joint(w, n_devices, time_limit_s)
        if use == "sequential" or (method == "auto" and not optimal):
            if load is not None:
                ld = np.asarray(load, dtype=np.float64)
                if ld.shape != (n_layers, n_exp):
                    raise ValueError(f"load must have shape ({n_layers}, {n_exp}), got {ld.shape}")
                first = load_balanced_placement(ld[:1], n_devices)[0]
            else:
                first = round_robin_placement(1, n_exp, n_devices)[0]
            ld_arr = None if load is None else np.asarray(load, dtype=np.float64)
            seq_home, sweeps = _solve_sequential(w, n_devices, first, max_sweeps, ld_arr, load_slack)
            if use == "sequential" or placement_objective(w, seq_home) > placement_objective(w, home):
                home, use = seq_home, "sequential"
    solve_s = time.perf_counter() - t0
    value = placement_objective(w, home)
    log.info(
        "exflow placement: method=%s, %d layers x %d experts x %d devices, co-located %.4g of %.4g (%.1f%%), %.2f s",
        use,
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

    def place(self, model: MoEModel, n_devices: int, stats: RoutingStats | None) -> IntArray:
        st = _require_stats("load-balanced", model, stats)
        return self.check(load_balanced_placement(st.load, n_devices), model, n_devices)


@REGISTRIES["placement"].register(
    "exflow", "ExFlow: integer program (scipy milp) maximising same-device consecutive-layer expert pairs"
)
class ExflowPlacement(PlacementPolicy):
    """ExFlow affinity placement (`exflow_placement` on the stats' joint affinity counts).

    Options: ``method`` ("auto", "joint", "sequential"), ``time_limit_s`` (joint MILP),
    ``max_sweeps`` (sequential refinement), ``load_slack`` (negative, the default = off: the
    paper's count-balanced capacity; a fraction >= 0 adds a per-device load cap, see
    `exflow_placement`; a float because mapping options are JSON scalars). The last solution
    (method, objective, solve time) is kept in ``self.solution`` for reporting.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        method: Literal["auto", "joint", "sequential"] = "auto",
        time_limit_s: float = 30.0,
        max_sweeps: int = 20,
        load_slack: float = -1.0,
    ) -> None:
        super().__init__(seed=seed)
        self.load_slack = None if load_slack < 0 else float(load_slack)
        self.method: Literal["auto", "joint", "sequential"] = method
        self.time_limit_s = time_limit_s
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
        )
        return self.check(self.solution.expert_home, model, n_devices)


__all__ = [
    "JOINT_MAX_PRODUCT_VARS",
    "CrossDeviceShare",
    "ExflowPlacement",
    "ExflowSolution",
    "LoadBalancedPlacement",
    "RoundRobinPlacement",
    "affinity_weights",
    "brute_force_placement",
    "cross_device_share",
    "cross_device_stats",
    "exflow_placement",
    "expert_load",
    "load_balanced_placement",
    "placement_objective",
    "round_robin_placement",
    "transition_counts",
]
