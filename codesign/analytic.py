"""A closed-form (analytic) model of the same mapping the simulator plays.

Given a model, a platform, a `Mapping` and routing statistics, it computes the *expected* step
time of a prefill step and of a decode step from the same `codesign.costplan.StepCostPlan` the
engine asks (every operation cost comes from it: nothing is computed twice), without simulating
anything: microseconds instead of seconds, so the search can prune designs with it, and tests can
cross-check the simulator with it. `supports` lists what it cannot model (a cache policy without a
closed form, prefetching, a near tier, context-coherent expert parallelism, LRU reuse at batch 1,
...): `codesign.design.evaluate` refuses such designs instead of answering wrongly.

Closed forms (``L`` MoE layers, ``E`` experts, ``k`` top-k, a step of ``B`` tokens):

- per-token selection probability ``p[l, e] = load[l, e] / n_tokens`` (``sum_e p = k``);
- expert ``e`` is active in the step with probability ``a = 1 - (1 - p)^B`` (tokens pick
  independently: the mean-field assumption), and then serves ``B p / a`` tokens on average;
  expected distinct experts per layer ``sum_e a[l, e]``;
- hit probability per expert ``h``: 1 when nothing is offloaded; the starting resident set for
  the ``static`` cache; the most active experts for ``lfu``; for LRU (and, approximately, the
  other policies) **Che's approximation in steps** (`che_step_hit_rates`): each device's cache of
  ``C`` slots sees every needed expert once per step in layer order, so an expert hits iff its
  reuse gap ``j`` (whole steps) is at most ``T``, ``sum_i (1 - (1 - a_i)^T) = C``; nothing hits
  when one step alone needs more than ``C`` experts (LRU's cyclic-scan cliff). The classic
  continuous-time Che (Che, Tung, Wang 2002; independent references) is `che_hit_rates`;
- per MoE layer and device (as the engine plays it): ``first = shared + G``, ``G`` the expected
  cost of the resident active experts run together (`StepCostPlan.layer_experts` with activity
  ``a h``: one grouped call on GPUs by default, ``sum_hit a * c(B p / a)`` per expert);
  with several devices the layer waits for the slowest: its resident-expert compute is the mean
  cost of an active expert times ``E[max_d N_d]``, the expected largest number of active experts
  on one device (exact for independent activities: each ``N_d`` is a Poisson-binomial sum);
  ``M = sum_miss a`` expected misses are fetched one after the other over the fetch link
  (``t_f`` each) and computed as they arrive, so the layer's expert phase takes
  ``max(first + C_miss, M t_f + C_miss / M)``; with CPU compute on a miss (``miss="cpu"``, or
  ``"cost"`` for the experts where the host is faster than fetch + compute, Fiddler's rule) those
  misses run on the host in parallel: ``max(device, cpu)``; the layer adds attention and router
  (longest device) and, with several devices, the all-to-all dispatch and combine of the
  expected cross-device assignments of the busiest device;
- streamed weights (``Mapping.offload_non_expert``, ``fetch_whole_layer``: ZeRO-3): per layer the
  link carries the layer's non-expert weights then its fetches (with a whole-layer fetch also the
  expected offloaded experts no token needs, ``sum (1 - a)(1 - h)``), and compute waits for them
  with one layer of lookahead, as the engine plays it: a two-stage pipeline over the layers,
  ``step = max(W_0 + sum_l C_l, sum_l W_l + C_last)`` (``W`` link, ``C`` compute per layer);
- copy-back eviction (a swap cache): every fetch moves two experts' bytes, whatever the slot count
  (Mixtral-offloading's ``_swap``, src/expert_cache.py);
- the serving stack's tail (`StepCostPlan.step_tail`): LM head of the emitting sequences and the
  exposed host CPU time, added to every step; the MoE permute with the router;
- a closed batch of ``B`` requests arriving together (prompt ``P``, output ``O`` tokens): TTFT =
  one prefill step of ``B x P`` tokens; TPOT = the decode step at the mean context
  ``P + O / 2``; throughput = ``B O / (TTFT + (O - 1) TPOT)``.

At zero load (one request, every expert resident) each decode token has exactly ``k`` experts
with one token each, so the decode step equals the engine's (the test pins the agreement); with
offloading and larger batches the mean-field terms make it an estimate, whose error against the
simulator the tests and the README report.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq

from codesign.costplan import StepCostPlan
from codesign.mapping import BoundMapping, Mapping
from codesign.policies.base import RoutingStats
from hwmodels.costs import CostModel
from hwmodels.execution import EXPERT_STRATEGIES

if TYPE_CHECKING:
    from hwmodels.devices import Platform
    from workloads.model import MoEModel

FloatArray = npt.NDArray[np.float64]
log = logging.getLogger(__name__)

__all__ = [
    "MODELLED_CACHE_POLICIES",
    "AnalyticStep",
    "analytic_step",
    "analytic_summary",
    "che_hit_rates",
    "che_step_hit_rates",
    "expected_distinct_experts",
    "hit_probability",
    "selection_probability",
    "supports",
]

#: Cache policies whose residents never change (the starting set is the resident set).
STATIC_POLICIES = frozenset({"static"})


# ------------------------------------------------------------------------------ closed forms
def selection_probability(stats: RoutingStats) -> FloatArray:
    """``p[l, e]``: probability that one token selects expert ``e`` at MoE layer ``l`` (rows sum to
    the mean number of experts per token, ``k`` without null experts)."""
    if stats.n_tokens <= 0:
        raise ValueError("routing statistics hold no token")
    return np.clip(stats.load / float(stats.n_tokens), 0.0, 1.0)


def active_probability(p: npt.ArrayLike, n_tokens: float) -> FloatArray:
    """``1 - (1 - p)^B``: probability that an expert is used by at least one of ``B`` tokens."""
    pp = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    with np.errstate(divide="ignore"):
        return -np.expm1(n_tokens * np.log1p(-np.minimum(pp, 1.0 - 1e-15)))


def expected_distinct_experts(p: npt.ArrayLike, n_tokens: float) -> FloatArray:
    """Expected number of distinct experts per layer for a step of ``n_tokens`` tokens: ``[L]``."""
    return active_probability(p, n_tokens).sum(axis=-1)


def che_hit_rates(rates: npt.ArrayLike, capacity: float) -> FloatArray:
    """Che's approximation of the LRU hit probability of each item.

    ``rates``: access rate of each item (any time unit, e.g. accesses per step); ``capacity``:
    cache size in items. Returns ``h_i = 1 - exp(-rate_i T)`` with ``T`` solving
    ``sum_i (1 - exp(-rate_i T)) = capacity``; all ones when the cache holds every item with a
    positive rate, all zeros for a zero capacity.
    """
    r = np.asarray(rates, dtype=np.float64)
    if r.size and (r.min() < 0 or not np.all(np.isfinite(r))):
        raise ValueError("access rates must be finite and >= 0")
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    n_pos = int((r > 0).sum())
    if capacity >= n_pos:
        return np.where(r > 0, 1.0, 0.0)
    if capacity <= 0:
        return np.zeros_like(r)

    def occupied(t: float) -> float:
        return float(np.sum(-np.expm1(-r * t))) - capacity

    hi = 1.0 / max(float(r[r > 0].min()), 1e-300)
    while occupied(hi) < 0:
        hi *= 2.0
    t_c = brentq(occupied, 0.0, hi, xtol=1e-12 * hi, rtol=1e-12)
    return np.asarray(-np.expm1(-r * t_c), dtype=np.float64)


def _expected_max_active(active: FloatArray, home: npt.NDArray[np.int64], n_dev: int) -> FloatArray:
    """``E[max_d N_d]`` per layer, ``N_d`` = number of active experts homed on device ``d`` (a sum of
    independent Bernoulli(``active[l, e]``)): exact, by convolving each device's distribution
    (vectorised over layers and devices; experts padded with activity 0)."""
    n_l, n_e = active.shape
    order = np.argsort(home, axis=1, kind="stable")  # experts grouped by device
    dev_sorted = np.take_along_axis(home, order, axis=1)
    act_sorted = np.take_along_axis(active, order, axis=1)
    counts = np.stack([np.bincount(home[layer], minlength=n_dev) for layer in range(n_l)])  # [L, D]
    width = int(counts.max()) if counts.size else 0
    starts = np.concatenate([np.zeros((n_l, 1), dtype=np.int64), np.cumsum(counts, axis=1)[:, :-1]], axis=1)
    slot = np.arange(n_e)[None, :] - np.take_along_axis(starts, dev_sorted, axis=1)  # rank within device
    padded = np.zeros((n_l, n_dev, max(width, 1)))
    padded[np.repeat(np.arange(n_l), n_e), dev_sorted.ravel(), slot.ravel()] = act_sorted.ravel()
    pmf = np.zeros((n_l, n_dev, width + 1))
    pmf[:, :, 0] = 1.0
    for j in range(width):
        a = padded[:, :, j : j + 1]
        shifted = np.concatenate([np.zeros((n_l, n_dev, 1)), pmf[:, :, :-1]], axis=2)
        pmf = pmf * (1.0 - a) + shifted * a
    prod = np.prod(np.cumsum(pmf, axis=2), axis=1)  # P(max <= n), [L, width+1]
    return np.asarray(np.sum(1.0 - prod[:, :-1], axis=1), dtype=np.float64)


def che_step_hit_rates(active: npt.ArrayLike, capacity: float, *, protected: bool = False) -> FloatArray:
    """LRU hit probability of each key when keys are accessed at most once per step, in a fixed
    (layer) order: the simulator's access pattern.

    ``active[i]``: probability that key ``i`` is accessed in a step. Between two uses of a key, a
    whole number ``j >= 1`` of steps passes (geometric with parameter ``active[i]``), and LRU hits
    iff fewer than ``capacity`` distinct keys were used meanwhile; about ``U(j) = sum_k (1 - (1 -
    active[k])^j)`` distinct keys are used in ``j`` steps, so a key hits iff ``j <= T`` with
    ``U(T) = capacity``: ``h_i = 1 - (1 - active[i])^floor(T)``. When one step alone touches more
    distinct keys than the cache holds (``T < 1``) nothing hits: the LRU "cliff" of a cyclic scan,
    which the continuous-time `che_hit_rates` (independent references) misses.

    ``protected=True``: the cache holds the keys of one layer only (a per-layer partition) and the
    keys used in a step cannot be evicted during it (the engine protects the current layer's
    experts). Beyond the cliff the cache then keeps ``capacity`` keys of the previous step, each
    resident with probability ``min(1, capacity * active[i] / sum(active))``: its hit probability.
    """
    a = np.clip(np.asarray(active, dtype=np.float64), 0.0, 1.0)
    if capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {capacity}")
    n_pos = int((a > 0).sum())
    if capacity >= n_pos:
        return np.where(a > 0, 1.0, 0.0)
    if capacity <= 0:
        return np.zeros_like(a)
    log1m = np.log1p(-np.minimum(a, 1.0 - 1e-15))

    def used(t: float) -> float:
        return float(np.sum(-np.expm1(t * log1m))) - capacity

    if used(1.0) >= 0:
        if protected:
            return np.asarray(np.minimum(1.0, capacity * a / max(float(a.sum()), 1e-300)), dtype=np.float64)
        return np.zeros_like(a)
    hi = 2.0
    while used(hi) < 0:
        hi *= 2.0
    t_c = brentq(used, 1.0, hi, xtol=1e-9)
    return np.asarray(-np.expm1(math.floor(t_c + 1e-9) * log1m), dtype=np.float64)


# --------------------------------------------------------------------------------- the step
@dataclass(frozen=True)
class AnalyticStep:
    """Expected cost of one step (all layers), seconds and joules, with its parts.

    The parts are summed over layers: ``attention_s`` (attention, router and dense FFN layers:
    the longest device), ``experts_s`` (the MoE expert phase: shared, resident and fetched experts,
    CPU experts; the longest device), ``all_to_all_s`` (dispatch + combine). ``step_s`` is their
    sum. ``fetch_link_s``: expected busy time of the busiest fetch link; ``distinct_experts``:
    expected distinct experts per MoE layer (mean over layers); ``hit_rate``: expected share of
    the step's expert accesses that hit; ``misses``: expected misses per step (all devices);
    ``bytes_fetched``: expected bytes over the fetch links; ``energy_J``: expected energy: the
    operations' `OpCost.energy_J` plus, as the engine counts it, the static power of every
    accelerator and of the host over the part of the step each one is not computing.
    ``lm_head_s`` and ``host_cpu_s``: the serving stack's step tail (`StepCostPlan.step_tail`: the
    LM head + sampling of the emitting sequences, the exposed host CPU time), included in
    ``step_s``; ``host_cpu_total_s`` the host CPU time of the stack, hidden part included.
    """

    n_tokens: int
    step_s: float
    attention_s: float
    experts_s: float
    all_to_all_s: float
    fetch_link_s: float
    distinct_experts: float
    hit_rate: float
    misses: float
    bytes_fetched: float
    energy_J: float
    lm_head_s: float = 0.0
    host_cpu_s: float = 0.0
    host_cpu_total_s: float = 0.0


def hit_probability(bound: BoundMapping, active: FloatArray, *, cache_model: str = "auto") -> FloatArray:
    """Hit probability ``[L, E]`` of each expert on its home device (see module docstring).

    ``cache_model``: ``"static"`` (the mapping's starting residents stay), ``"popular"`` (the
    ``slots`` most active experts of each device stay: what LFU converges to under stable
    popularity), ``"che-step"`` (`che_step_hit_rates`, LRU under the per-step cyclic access
    order), ``"che"`` (continuous-time Che, independent references), or ``"auto"``: static for
    `STATIC_POLICIES`, popular for ``lfu`` (optimistic when every expert is active in every step:
    then LFU's counts tie and it scans like LRU), che-step for every other policy (LRU's model; an
    approximation for the predictive and oracle caches)."""
    valid = ("auto", "static", "popular", "che-step", "che")
    if cache_model not in valid:
        raise ValueError(f"cache_model must be one of {valid}, got {cache_model!r}")
    if not bound.offloaded:
        return np.ones_like(active)
    model = cache_model
    if model == "auto":
        policy = bound.mapping.cache.policy
        model = "static" if policy in STATIC_POLICIES else ("popular" if policy == "lfu" else "che-step")
    per_layer = bool(dict(bound.mapping.cache.options).get("per_layer", False))
    h = np.zeros_like(active)
    for d in range(bound.n_devices):
        mine = bound.expert_home == d
        if model == "static":
            h[mine] = bound.initial[d][mine].astype(np.float64)
            continue
        pinned = bound.pinned[d] & mine
        h[pinned] = 1.0
        if per_layer:  # each layer has its own share of the slots (CachePolicy per_layer option)
            share = np.full(bound.model.n_moe_layers, bound.slots[d] // bound.model.n_moe_layers)
            share[: bound.slots[d] % bound.model.n_moe_layers] += 1
            for layer in range(bound.model.n_moe_layers):
                rest_l = mine[layer] & ~pinned[layer]
                free_l = int(share[layer]) - int(pinned[layer].sum())
                h[layer, rest_l] = _hits(model, active[layer, rest_l], free_l, protected=True)
            continue
        free = bound.slots[d] - int(pinned.sum())
        rest = mine & ~pinned
        h[rest] = _hits(model, active[rest], free)
    return h


def _misses_never_cached(plan: StepCostPlan, per_active: FloatArray, act: FloatArray) -> bool:
    """True when the miss policy sends every active expert's miss to the host CPU (``miss="cpu"``,
    or ``"cost"`` for all of them: the host is faster than fetch + compute): nothing new is then
    ever admitted, and the starting residents are the cache."""
    bound = plan.bound
    if bound.mapping.miss not in ("cpu", "cost"):
        return False
    cpu = plan.cpu_experts(per_active)
    if cpu is None:
        return False
    if bound.mapping.miss == "cpu":
        return True
    cpu_s = np.asarray(cpu.total_s)
    for d in range(bound.n_devices):
        if plan.fetch_links[d] is None:
            continue
        t_f = float(plan.fetch(d).total_s)
        c_s = np.asarray(plan.experts(d, per_active).total_s, dtype=np.float64)
        mine = (bound.expert_home == d) & (act > 0)
        if np.any(cpu_s[mine] >= t_f + c_s[mine]):
            return False
    return True


def _hits(model: str, active: FloatArray, capacity: int, *, protected: bool = False) -> FloatArray:
    """Hit probabilities of keys with activities ``active`` in a cache of ``capacity`` slots."""
    if model == "popular":
        out = np.zeros_like(active)
        out[np.argsort(-active, kind="stable")[: max(capacity, 0)]] = 1.0
        return out
    if model == "che-step":
        return che_step_hit_rates(active, max(capacity, 0), protected=protected)
    return che_hit_rates(active, max(capacity, 0))


#: Cache policies the closed form has a model for (`hit_probability`): Che in steps (lru), the
#: popular set (lfu), the starting set (static).
MODELLED_CACHE_POLICIES = frozenset({"lru", "lfu", "static"})
#: Cache policy options the closed form honours.
MODELLED_CACHE_OPTIONS = frozenset({"per_layer"})
#: Miss policies it models: fetch (serial over the fetch link), cpu, cost (Fiddler's rule).
MODELLED_MISS_POLICIES = frozenset({"fetch", "cpu", "cost"})
#: Token schedulers it models (a closed batch served in arrival order).
MODELLED_SCHEDULERS = frozenset({"fifo"})


def _may_offload(mapping: Mapping, model: MoEModel, n_devices: int) -> bool:
    """Whether ``mapping`` leaves experts out of the device caches (without binding it: a cache
    below every homed expert, by fraction or by slots)."""
    c = mapping.cache
    if c.capacity_experts is not None:
        return c.capacity_experts * n_devices < model.n_moe_layers * model.n_experts
    return float(c.expert_fraction) < 1.0


def supports(design_or_bound: Any, *, batch_size: int | None = None) -> list[str]:
    """Why the closed form cannot model a design (empty list: it can), one sentence per reason.

    ``design_or_bound``: a `codesign.design.Design` or a `BoundMapping` (anything with
    ``mapping``, ``model`` and ``platform``). ``batch_size``: the decode batch (default: a design's
    ``min(workload.n_requests, batching.max_batch)``, a bound mapping's ``batching.max_batch``).
    Workload-level limits (open arrivals, trace replay) are checked by
    `codesign.design.analytic_reasons`, which adds these.

    Refused, instead of answered wrongly: a cache policy other than `MODELLED_CACHE_POLICIES`
    when experts are offloaded (it used to be answered as LRU: Belady on Mixtral fp8, 25% cached,
    batch 1: 75% above the simulated TPOT), unknown cache options, any prefetch policy (prefetching is
    not modelled), a miss or scheduling policy it has no model for, a near tier, context-coherent
    expert parallelism (only the classic dispatch + combine is modelled), a device kind without a
    registered expert strategy, and an LRU-type cache at batch 1 (consecutive tokens of one
    request reuse experts; the closed form assumes routing independent across steps and
    underestimates the hits: Mixtral fp8, 25% cached, LRU: 0.25 vs 0.33 simulated, TPOT +11%).
    """
    mapping = getattr(design_or_bound, "mapping", None)
    model = getattr(design_or_bound, "model", None)
    platform = getattr(design_or_bound, "platform", None)
    if not isinstance(mapping, Mapping) or model is None or platform is None:
        raise TypeError(
            "supports() needs a Design or a BoundMapping (mapping, model, platform), "
            f"got {type(design_or_bound).__name__}"
        )
    reasons: list[str] = []
    n_dev = mapping.n_devices or platform.n_accelerators
    if isinstance(design_or_bound, BoundMapping):
        offloaded = design_or_bound.offloaded
        n_dev = design_or_bound.n_devices
        devices = design_or_bound.devices
    else:
        offloaded = _may_offload(mapping, model, n_dev)
        devices = platform.accelerators[:n_dev]
    if batch_size is None:
        batch_size = mapping.batching.max_batch
        workload = getattr(design_or_bound, "workload", None)
        n_requests = getattr(workload, "n_requests", None)
        if isinstance(n_requests, int):
            batch_size = min(batch_size, n_requests)
    cache = mapping.cache
    if offloaded:
        if cache.policy not in MODELLED_CACHE_POLICIES:
            reasons.append(
                f"cache policy {cache.policy!r}: the closed form models only {sorted(MODELLED_CACHE_POLICIES)} "
                "(another policy would be answered as LRU)"
            )
        unknown = sorted(k for k in dict(cache.options) if k not in MODELLED_CACHE_OPTIONS)
        if unknown:
            reasons.append(f"cache options {unknown}: not modelled (only {sorted(MODELLED_CACHE_OPTIONS)})")
        if mapping.prefetch != "none":
            reasons.append(f"prefetch {mapping.prefetch!r}: prefetching is not modelled (misses are fetched on demand)")
        if cache.policy == "lru" and batch_size <= 1:
            reasons.append(
                "LRU cache at batch 1: consecutive tokens reuse experts, the closed form assumes routing "
                "independent across steps (it underestimates the hits)"
            )
        if mapping.miss not in MODELLED_MISS_POLICIES:
            reasons.append(f"miss policy {mapping.miss!r}: not modelled (only {sorted(MODELLED_MISS_POLICIES)})")
    if mapping.near is not None:
        reasons.append(f"near tier {mapping.near.tier!r}: promotion into a near tier is not modelled")
    if mapping.ep_execution != "classic" and n_dev > 1:
        reasons.append(
            f"ep_execution {mapping.ep_execution!r}: only classic expert parallelism (dispatch + combine) is modelled"
        )
    if mapping.batching.scheduler not in MODELLED_SCHEDULERS:
        reasons.append(
            f"token scheduler {mapping.batching.scheduler!r}: the closed form serves a closed batch in arrival order"
        )
    for kind in sorted({dev.kind for dev in devices}):
        if kind not in EXPERT_STRATEGIES:
            reasons.append(f"device kind {kind!r}: no registered expert-execution strategy")
    return reasons


def analytic_step(
    cost: CostModel | StepCostPlan,
    bound: BoundMapping,
    p: npt.ArrayLike,
    *,
    n_tokens: int,
    prefill: bool,
    context_len: float = 0.0,
    prompt_lengths: npt.ArrayLike | None = None,
    hit: npt.ArrayLike | None = None,
    cache_model: str = "auto",
) -> AnalyticStep:
    """Expected cost of one step of ``n_tokens`` tokens on ``bound`` (see module docstring).

    ``cost``: a `CostModel` (a `StepCostPlan` is built from it) or a plan for ``bound``; every
    operation cost comes from the plan, as in the engine. ``p``: per-token selection probability
    ``[L, E]`` (`selection_probability`). ``prefill``: a prefill step (attention over
    ``prompt_lengths``, default one prompt of ``n_tokens``) or a decode step of ``n_tokens``
    requests at mean ``context_len``. ``hit``: hit probabilities ``[L, E]`` (default
    `hit_probability` of the step's own access probabilities). It does not check `supports`.
    """
    plan = cost if isinstance(cost, StepCostPlan) else StepCostPlan(cost, bound)
    if plan.bound is not bound:
        raise ValueError("the StepCostPlan was built for another bound mapping")
    model = bound.model
    n_l, n_e = model.n_moe_layers, model.n_experts
    pp = np.asarray(p, dtype=np.float64)
    if pp.shape != (n_l, n_e):
        raise ValueError(f"p must have shape ({n_l}, {n_e}), got {pp.shape}")
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be > 0, got {n_tokens}")
    n_dev = bound.n_devices
    act = active_probability(pp, n_tokens)
    per_active = np.where(act > 0, n_tokens * pp / np.maximum(act, 1e-300), 0.0)
    if hit is None:
        model_for_cache = cache_model
        if cache_model == "auto" and bound.offloaded and _misses_never_cached(plan, per_active, act):
            model_for_cache = "static"  # every miss is computed on the host: the cache never changes
        h = hit_probability(bound, act, cache_model=model_for_cache)
    else:
        h = np.asarray(hit, dtype=np.float64)
    if h.shape != (n_l, n_e):
        raise ValueError(f"hit must have shape ({n_l}, {n_e}), got {h.shape}")
    # requests are spread over the devices one by one (the engine admits each on the device with
    # the most free KV cache, which round-robins equal requests); a device's tokens are its requests'
    if prefill:
        prompts = np.asarray([n_tokens] if prompt_lengths is None else prompt_lengths, dtype=np.float64)
        if prompts.ndim != 1 or prompts.size == 0 or prompts.min() <= 0:
            raise ValueError("prompt_lengths must be a non-empty 1-D array of positive lengths")
        dev_prompts = [prompts[d::n_dev] for d in range(n_dev)]
        dev_tokens = np.array([float(p_.sum()) for p_ in dev_prompts])
    else:
        dev_tokens = np.array([float(len(range(d, n_tokens, n_dev))) for d in range(n_dev)])
    pre_s = np.zeros(n_dev)
    pre_J = np.zeros(n_dev)
    dense_s = np.zeros(n_dev)
    dense_J = np.zeros(n_dev)
    shared_s = np.zeros(n_dev)
    shared_J = np.zeros(n_dev)
    router_s = np.zeros(n_dev)
    router_J = np.zeros(n_dev)
    for d in range(n_dev):
        t = dev_tokens[d]
        if t <= 0:
            continue
        c = plan.attention_prefill(d, dev_prompts[d]) if prefill else plan.attention_decode(d, t, float(context_len))
        pre_s[d], pre_J[d] = float(np.sum(c.total_s)), float(np.sum(c.energy_J))
        r_s, r_j = plan.router_and_permute(d, t)  # the stack's MoE permute with the router, as the engine
        router_s[d], router_J[d] = float(r_s), float(r_j)
        if model.n_shared_experts:
            c = plan.shared(d, t)
            shared_s[d], shared_J[d] = float(c.total_s), float(c.energy_J)
        if model.n_dense_layers:
            c = plan.dense(d, t)
            dense_s[d], dense_J[d] = float(c.total_s), float(c.energy_J)
    # expert phase per device and layer
    experts_layer = np.zeros((n_l, n_dev))
    hit_layer = np.zeros((n_l, n_dev))  # expected compute of resident experts per layer and device
    hit_active = np.zeros((n_l, n_dev))  # expected number of resident active experts
    hit_fixed = np.zeros((n_l, n_dev))  # expected once-per-group part of hit_layer (launches, fill)
    fixed_s = np.zeros(n_dev)
    fetch_busy = np.zeros(n_dev)
    busy = np.zeros(n_dev)  # compute-stream busy seconds per device (for idle power)
    host_busy = 0.0
    energy = 0.0
    misses_total = 0.0
    bytes_fetched = 0.0
    miss_policy = bound.mapping.miss
    whole = bound.mapping.fetch_whole_layer
    comp_layer = np.zeros((n_l, n_dev))  # expert-phase compute per MoE layer (streamed-weights pipeline)
    link_layer = np.zeros((n_l, n_dev))  # expert bytes' link time per MoE layer (same)
    cpu = plan.cpu_experts(per_active) if miss_policy in ("cpu", "cost") else None
    bpe = plan.bytes_per_expert
    for d in range(n_dev):
        mine = bound.expert_home == d
        c = plan.experts(d, per_active)  # each expert alone: fetched experts run as they arrive
        c_s = np.asarray(c.total_s, dtype=np.float64) * mine
        c_j = np.asarray(c.energy_J, dtype=np.float64) * mine
        a_d = act * mine
        # the resident (hit) experts of a layer run together, as the device kind's strategy runs them
        group = plan.layer_experts(d, per_active * mine, active=a_d * h)
        hit_c = np.asarray(group.total_s, dtype=np.float64)
        energy += float(np.sum(group.energy_J))
        miss_n = (a_d * (1.0 - h)).sum(axis=1)
        misses_total += float(miss_n.sum())
        fixed_s[d] = plan.group_fixed_s(d)
        hit_fixed[:, d] = fixed_s[d] * (1.0 - np.prod(1.0 - a_d * h, axis=1))
        first = shared_s[d] + hit_c
        busy[d] += float(hit_c.sum())
        hit_layer[:, d] = hit_c
        hit_active[:, d] = (a_d * h).sum(axis=1)
        has_link = plan.fetch_links[d] is not None
        miss_w = a_d * (1.0 - h)  # expected misses per (layer, expert)
        f = plan.fetch(d)
        # copy-back eviction: every fetch is a swap, one copy in and one back over the same link,
        # whatever the slot count (a 0-slot cache swaps through a staging buffer), as
        # dvmazur/mixtral-offloading src/expert_cache.py loads every expert through _swap
        swap = 2.0 if bound.mapping.cache.eviction == "copy-back" else 1.0
        t_f, e_f = swap * float(f.total_s), swap * float(f.energy_J)
        cpu_mask = np.zeros_like(miss_w, dtype=bool)
        cpu_s = cpu_j = np.zeros_like(miss_w)
        if cpu is not None:
            cpu_s = np.asarray(cpu.total_s, dtype=np.float64)
            cpu_j = np.asarray(cpu.energy_J, dtype=np.float64)
            # "cpu": every miss on the host; "cost" (Fiddler): where the host is faster than fetch + compute
            cpu_mask = np.ones_like(cpu_mask) if miss_policy == "cpu" else cpu_s < t_f + c_s
        w_f = np.where(cpu_mask, 0.0, miss_w)
        w_c = np.where(cpu_mask, miss_w, 0.0)
        n_f = w_f.sum(axis=1)
        c_f = (w_f * c_s).sum(axis=1)
        cpu_layer = (w_c * cpu_s).sum(axis=1)
        last = np.where(n_f > 0, c_f / np.maximum(n_f, 1e-300), 0.0)
        fetch_path = np.where(n_f > 0, n_f * t_f + np.minimum(last, c_f), 0.0) if has_link else 0.0
        experts_layer[:, d] = np.maximum(np.maximum(first + c_f, fetch_path), cpu_layer)
        fetch_busy[d] = float(n_f.sum()) * t_f
        comp_layer[:, d] = np.maximum(first + c_f, cpu_layer)
        link_layer[:, d] = n_f * t_f if has_link else 0.0
        if whole and has_link:
            # whole-layer fetch: the offloaded experts no token needs cross the link too (not computed)
            unneeded = (mine * (1.0 - act) * (1.0 - h)).sum(axis=1)
            link_layer[:, d] += unneeded * float(f.total_s)
            fetch_busy[d] += float(unneeded.sum()) * float(f.total_s)
            energy += float(unneeded.sum()) * float(f.energy_J)
            bytes_fetched += float(unneeded.sum()) * bpe
        busy[d] += float(c_f.sum())
        host_busy += float(cpu_layer.sum())
        energy += float((w_f * c_j).sum()) + float(n_f.sum()) * e_f + float((w_c * cpu_j).sum())
        bytes_fetched += swap * float(n_f.sum()) * bpe if has_link else 0.0
    # all-to-all (expected cross-device assignments of the busiest device)
    a2a_s = 0.0
    if n_dev > 1 and bound.platform.peer_link is not None:
        loads = np.stack([(pp * (bound.expert_home == d)).sum(axis=1) for d in range(n_dev)], axis=1)  # [L, D]
        k_eff = pp.sum(axis=1)  # [L]
        send = dev_tokens[None, :] * (k_eff[:, None] - loads)  # tokens on d to experts elsewhere
        recv = loads * (n_tokens - dev_tokens[None, :])  # assignments to d from elsewhere
        c1 = plan.all_to_all(send.max(axis=1) * model.dispatch_bytes_per_token)
        c2 = plan.all_to_all(recv.max(axis=1) * model.combine_bytes_per_token)
        a2a_s = float(np.sum(c1.total_s) + np.sum(c2.total_s))
        energy += float(np.sum(c1.energy_J) + np.sum(c2.energy_J))
    attention_s = n_l * float((pre_s + router_s).max()) + model.n_dense_layers * float((pre_s + dense_s).max())
    energy += n_l * float((pre_J + router_J + shared_J).sum()) + model.n_dense_layers * float((pre_J + dense_J).sum())
    experts_l = experts_layer.max(axis=1)
    if n_dev > 1:
        # the layer waits for its slowest device: a device's resident group costs a fixed part F (once
        # when any expert is active: grouped launches, a pipeline fill; 0 per expert) plus a marginal
        # cost per active expert; replace the largest *expected* group by F P(any) + marginal x
        # E[max_d N_d], N_d the number of active resident experts of device d (independent
        # Bernoulli activities, exact distribution)
        emax = _expected_max_active(act * h, bound.expert_home, n_dev)
        n_act = hit_active.sum(axis=1)
        marginal = np.where(n_act > 0, (hit_layer - hit_fixed).sum(axis=1) / np.maximum(n_act, 1e-300), 0.0)
        p_any = 1.0 - np.prod(1.0 - act * h, axis=1)
        slowest = float(fixed_s.max()) * p_any + marginal * emax
        experts_l = experts_l + np.maximum(0.0, slowest - hit_layer.max(axis=1))
    experts_s = float(experts_l.sum())
    step_s = attention_s + experts_s + a2a_s
    if bound.mapping.offload_non_expert or whole:
        # streamed weights (ZeRO-3): the link carries, layer by layer, the layer's non-expert weights
        # then its expert fetches; compute waits for them with one layer of lookahead. A two-stage
        # pipeline over the layers: max(first link stage + all compute, all link + last compute)
        link_w: list[float] = []
        comp_w: list[float] = []
        moe_index = {a: i for i, a in enumerate(model.moe_layers)}
        for abs_layer in range(model.n_layers):
            li = moe_index.get(abs_layer)
            moe = li is not None
            t_ne = max(float(plan.non_expert_fetch(d, moe=moe).total_s) for d in range(n_dev))
            if moe:
                link_w.append(t_ne + float(link_layer[li].max()))
                comp_w.append(float((pre_s + router_s).max()) + float(comp_layer[li].max()))
            else:
                link_w.append(t_ne)
                comp_w.append(float((pre_s + dense_s).max()))
        step_s = max(link_w[0] + sum(comp_w), sum(link_w) + comp_w[-1]) + a2a_s
        if bound.mapping.offload_non_expert:
            moe_b, dense_b = plan.stream_bytes
            for d in range(n_dev):
                ne_s = n_l * float(plan.non_expert_fetch(d, moe=True).total_s) + model.n_dense_layers * float(
                    plan.non_expert_fetch(d, moe=False).total_s
                )
                fetch_busy[d] += ne_s
                energy += n_l * float(plan.non_expert_fetch(d, moe=True).energy_J) + model.n_dense_layers * float(
                    plan.non_expert_fetch(d, moe=False).energy_J
                )
                bytes_fetched += n_l * moe_b + model.n_dense_layers * dense_b
    # the serving stack's tail: LM head of the emitting sequences (every decode token; every prompt
    # of a prefill step, which is taken whole) and the exposed host CPU time
    emitting = [float(len(dev_prompts[d])) if prefill else float(dev_tokens[d]) for d in range(n_dev)]
    lm_s, lm_J, cpu_exposed, cpu_total = plan.step_tail(emitting, step_s)
    step_s += lm_s + cpu_exposed
    energy += lm_J
    busy += np.where(np.asarray(emitting) > 0, lm_s, 0.0)
    host_busy += cpu_total
    # static power while idle (as the engine counts it): every accelerator and the host draw their
    # static power over the part of the step they are not computing
    busy += n_l * (pre_s + router_s + shared_s) + model.n_dense_layers * (pre_s + dense_s)
    energy += sum(dev.static_power_W * max(step_s - float(busy[d]), 0.0) for d, dev in enumerate(bound.devices))
    host = bound.platform.host
    if host is not None:
        energy += host.static_power_W * max(step_s - host_busy, 0.0)
        energy += host.static_power_W * cpu_total  # the stack's CPU time, booked as the engine does
    n_access = float(act.sum())
    hit_rate = float((act * h).sum() / n_access) if n_access > 0 else 1.0
    return AnalyticStep(
        n_tokens=int(n_tokens),
        step_s=step_s,
        attention_s=attention_s,
        experts_s=experts_s,
        all_to_all_s=a2a_s,
        fetch_link_s=float(fetch_busy.max()),
        distinct_experts=float(act.sum(axis=1).mean()),
        hit_rate=hit_rate,
        misses=misses_total,
        bytes_fetched=bytes_fetched,
        energy_J=energy,
        lm_head_s=lm_s,
        host_cpu_s=cpu_exposed,
        host_cpu_total_s=cpu_total,
    )


def analytic_summary(
    model: MoEModel,
    platform: Platform,
    mapping: Mapping,
    stats: RoutingStats,
    *,
    batch_size: int,
    prompt_tokens: int,
    output_tokens: int,
    cost_model: CostModel | None = None,
    cache_model: str = "auto",
    bound: BoundMapping | None = None,
) -> dict[str, Any]:
    """Closed-form summary of serving a closed batch (``batch_size`` requests of ``prompt_tokens``
    + ``output_tokens`` arriving together), keys named as in ``Result.summary``:
    ``ttft_p50_s``, ``tpot_p50_s`` (= the expected decode step), ``throughput_tok_s``,
    ``hit_rate`` (per cache tier), ``energy_j_per_token``, ``step_mean_s``; plus ``decode`` and
    ``prefill`` (the `AnalyticStep` fields as dicts) and ``expected_distinct_experts``.

    ``stats`` give the routing popularity (training data, as for the simulator's policies);
    ``bound`` (optional) reuses an already bound mapping.
    """
    if batch_size <= 0 or prompt_tokens <= 0 or output_tokens <= 0:
        raise ValueError(
            f"batch_size, prompt_tokens and output_tokens must be > 0, got {batch_size}, "
            f"{prompt_tokens}, {output_tokens}"
        )
    cost = cost_model if cost_model is not None else CostModel(platform)
    if bound is None:
        bound = mapping.bind(model, platform, stats=stats, min_kv_tokens=prompt_tokens + output_tokens - 1)
    unsupported = supports(bound, batch_size=batch_size)
    if unsupported:
        log.warning("analytic model of an unsupported mapping (an estimate at best): %s", "; ".join(unsupported))
    plan = StepCostPlan(cost, bound)
    p = selection_probability(stats)
    prompts = np.full(batch_size, float(prompt_tokens))
    pre = analytic_step(
        plan,
        bound,
        p,
        n_tokens=batch_size * prompt_tokens,
        prefill=True,
        prompt_lengths=prompts,
        cache_model=cache_model,
    )
    ctx = prompt_tokens + output_tokens / 2.0
    dec = analytic_step(plan, bound, p, n_tokens=batch_size, prefill=False, context_len=ctx, cache_model=cache_model)
    ttft = pre.step_s
    tpot = dec.step_s if output_tokens > 1 else float("nan")
    total_s = ttft + (output_tokens - 1) * dec.step_s
    out_tok = batch_size * output_tokens
    energy = pre.energy_J + (output_tokens - 1) * dec.energy_J
    n_access = pre.distinct_experts + (output_tokens - 1) * dec.distinct_experts
    hit = (
        (pre.hit_rate * pre.distinct_experts + (output_tokens - 1) * dec.hit_rate * dec.distinct_experts) / n_access
        if n_access > 0
        else 1.0
    )
    tiers = sorted(set(bound.cache_tier))
    return {
        "model": model.name,
        "platform": platform.name,
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "ttft_p50_s": ttft,
        "tpot_p50_s": tpot,
        "tpot_mean_s": tpot,
        "latency_p50_s": total_s,
        "step_mean_s": total_s / output_tokens,
        "throughput_tok_s": out_tok / total_s if total_s > 0 else math.nan,
        "hit_rate": dict.fromkeys(tiers, hit),
        "energy_j_per_token": energy / out_tok,
        "expected_distinct_experts": dec.distinct_experts,
        "prefill": asdict(pre),
        "decode": asdict(dec),
        "cache_model": cache_model,
        "unsupported": unsupported,
        "source": "codesign.analytic (closed form, mean-field)",
    }
