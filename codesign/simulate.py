"""`simulate`: the Python API of the simulator (one call -> one `Result`).

    from codesign.simulate import simulate
    result = simulate(model, platform, stream, mapping, seed=0)
    result.summary["tpot_p50_s"]

``stream`` is a `workloads.requests.RequestStream` (anything with ``.requests`` and
``.routing(request)``). The first ``mapping.train_fraction`` of its requests (by arrival) are not
served: their routing trains the policies that need it (placement statistics, the ``popular``
initial cache contents, trained caches and prefetchers); the rest are replayed.

Training data, in order of precedence: ``train=`` (a `RoutingTrace`); the training split
(``mapping.train_fraction > 0``); otherwise, when a policy needs training data
(`policies_needing_training`: a cache/near/prefetch policy with ``needs_training``, or a
placement that needs routing statistics, e.g. ``load-balanced``, ``exflow``) and the stream
samples a routing process (its ``routing_source`` is a `workloads.requests.ProcessRouting`), a
*separate sample* of that process: one training request per served request, with the same
prompt and output lengths (so as many tokens as the run), sampled with a fresh seed derived from
the process seed (``SeedSequence([seed, 0x747261696E])``), so the served routing is never seen in
training. A replayed trace is never split implicitly: without ``train_fraction`` or ``train=``,
such policies raise `TrainingDataError`. ``summary["train_source"]`` says which was used
(``"given"``, ``"split"``, ``"process-sample"`` or None) and ``summary["train_tokens"]`` how many
rows.

Offline cache policies (Belady) need the future: `simulate` first records each device's access
sequence in a pass with LRU of the same capacity, then replays with the oracle prepared on it,
repeating (at most 3 passes) until the oracle's own access sequence equals the one it was
prepared with; ``summary["oracle_exact"]`` says whether it converged (it always does when the
batching does not depend on timing, e.g. all requests present at t = 0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, is_dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from codesign.engine import Engine, EngineOutput, SimRequest
from codesign.mapping import Mapping, MappingError
from codesign.policies import policy_flag
from codesign.policies.base import AccessSequence, RoutingStats
from codesign.policies.placement import PlacementMemo
from codesign.result import Result, summarize
from hwmodels.devices import Platform
from hwmodels.serialize import hardware_numbers, platform_to_dict
from workloads.trace import RoutingTrace

log = logging.getLogger(__name__)

__all__ = [
    "TrainingDataError",
    "policies_needing_training",
    "process_training_trace",
    "simulate",
    "split_requests",
    "training_trace",
]

_MAX_ORACLE_PASSES = 3
#: Tag mixed with the process seed for the separate training sample ("train" in ASCII).
_TRAIN_SEED_TAG = 0x747261696E


class TrainingDataError(ValueError):
    """Policies need training data and none is available; ``policies`` names them (e.g.
    ``["placement 'exflow'"]``)."""

    def __init__(self, message: str, policies: list[str]) -> None:
        super().__init__(message)
        self.policies = policies


def _placement_needs_stats(mapping: Mapping) -> bool:
    """Whether the mapping's placement needs routing statistics: the policy's class flag
    ``needs_stats`` (`PlacementPolicy`), False when the mapping carries its own ``expert_home``."""
    if mapping.expert_home is not None:
        return False
    return policy_flag("placement", mapping.placement, "needs_stats")


def policies_needing_training(mapping: Mapping, model: Any, platform: Any = None) -> list[str]:
    """The policies of ``mapping`` that need training routing, as ``"<kind> '<name>'"`` strings
    (empty when none does), read from their class flags (``needs_stats`` of a placement,
    ``needs_training`` of a cache or prefetch policy). The placement counts only with more than
    one device (``n_devices``, else the accelerators of ``platform`` when given; one device needs
    no placement) and when the mapping has no ``expert_home`` of its own. The ``popular`` initial
    fill is not listed: without statistics it falls back to ``spread``. ``model`` is unused (kept
    for callers)."""
    del model
    out: list[str] = []
    n_dev = mapping.n_devices
    if n_dev is None and platform is not None:
        n_dev = int(platform.n_accelerators)
    if (n_dev is None or n_dev > 1) and _placement_needs_stats(mapping):
        out.append(f"placement {mapping.placement!r}")
    if policy_flag("cache", mapping.cache.policy, "needs_training"):
        out.append(f"cache policy {mapping.cache.policy!r}")
    if mapping.near is not None and policy_flag("cache", mapping.near.policy, "needs_training"):
        out.append(f"near cache policy {mapping.near.policy!r}")
    if mapping.prefetch != "none" and policy_flag("prefetch", mapping.prefetch, "needs_training"):
        out.append(f"prefetch policy {mapping.prefetch!r}")
    return out


def process_training_trace(source: Any, requests: list[Any], n_layers: int, n_experts: int, top_k: int) -> RoutingTrace:
    """A training trace sampled from ``source`` (a `ProcessRouting`) independently of the served
    routing: one request per element of ``requests`` with the same prompt and output lengths (ids
    ``0..n-1``, arrival 0), sampled from the same process with the seed
    ``SeedSequence([source.seed, 0x747261696E])``."""
    from workloads.requests import ProcessRouting, Request, RequestStream

    seed = int(np.random.SeedSequence([int(source.seed), _TRAIN_SEED_TAG]).generate_state(1, np.uint32)[0])
    fresh = ProcessRouting(source.process, seed=seed)
    reqs = tuple(
        Request(request_id=i, arrival_s=0.0, prompt_tokens=int(r.prompt_tokens), output_tokens=int(r.output_tokens))
        for i, r in enumerate(requests)
    )
    return training_trace(
        RequestStream(requests=reqs, routing_source=fresh),
        list(reqs),
        n_layers,
        n_experts,
        top_k,
        source=f"separate sample of the routing process (seed {seed})",
    )


class _Request(Protocol):
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class _Stream(Protocol):
    @property
    def requests(self) -> tuple[Any, ...]: ...

    def routing(self, request: Any) -> npt.NDArray[np.int16]: ...


def _routing(stream: _Stream, req: _Request, n_layers: int, n_experts: int) -> npt.NDArray[np.int16]:
    r = np.asarray(stream.routing(req))
    rows = int(req.prompt_tokens) + int(req.output_tokens)
    if r.ndim != 3 or r.shape[0] != rows or r.shape[1] != n_layers:
        raise ValueError(
            f"request {req.request_id}: routing has shape {r.shape}, expected ({rows}, {n_layers}, k) "
            f"(prompt {req.prompt_tokens} + output {req.output_tokens} rows, {n_layers} MoE layers)"
        )
    if r.size and (r.min() < -1 or r.max() >= n_experts):
        raise ValueError(
            f"request {req.request_id}: routing holds expert ids outside [-1, {n_experts}): [{r.min()}, {r.max()}]"
        )
    return r.astype(np.int16, copy=False)


def split_requests(requests: tuple[Any, ...], train_fraction: float) -> tuple[list[Any], list[Any]]:
    """(train, serve): the first ``floor(train_fraction * n)`` requests by arrival, and the rest."""
    reqs = sorted(requests, key=lambda r: (float(r.arrival_s), int(r.request_id)))
    n_train = math.floor(train_fraction * len(reqs))
    return reqs[:n_train], reqs[n_train:]


def training_trace(
    stream: _Stream,
    requests: list[Any],
    n_layers: int,
    n_experts: int,
    top_k: int,
    *,
    source: str = "training split of the request stream",
) -> RoutingTrace:
    """The routing of ``requests`` as one `RoutingTrace` (prefill rows phase 0, decode rows phase 1);
    ``source`` goes to its ``meta["source"]``."""
    parts, req_ids, pos, phase = [], [], [], []
    for r in requests:
        rt = _routing(stream, r, n_layers, n_experts)
        parts.append(rt)
        n = rt.shape[0]
        req_ids.append(np.full(n, int(r.request_id), dtype=np.int32))
        pos.append(np.arange(n, dtype=np.int32))
        phase.append((np.arange(n) >= int(r.prompt_tokens)).astype(np.uint8))
    return RoutingTrace(
        experts=np.concatenate(parts),
        request=np.concatenate(req_ids),
        position=np.concatenate(pos),
        phase=np.concatenate(phase),
        meta={"n_experts": n_experts, "top_k": top_k, "source": source, "licence": "derived"},
    )


def _platform_numbers(platform: Any) -> Any:
    """Every number of the platform that changes a cost (devices, tiers, links and their measured
    points, price), without sources and notes: what `config_hash` hashes, so two platforms that
    differ in one number hash differently (`hwmodels.serialize.hardware_numbers`)."""
    if isinstance(platform, Platform):
        return hardware_numbers(platform_to_dict(platform))
    if is_dataclass(platform) and not isinstance(platform, type):
        return hardware_numbers(_plain(asdict(platform)))
    return {"name": getattr(platform, "name", type(platform).__name__)}


def _describe(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        try:
            return {"name": getattr(obj, "name", type(obj).__name__), **_plain(asdict(obj))}
        except TypeError:
            return {"name": getattr(obj, "name", type(obj).__name__)}
    return {"name": getattr(obj, "name", type(obj).__name__)}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float | int | str | bool) or x is None:
        return x
    if hasattr(x, "items"):
        return {str(k): _plain(v) for k, v in x.items()}
    return str(x)


def simulate(
    model: Any,
    platform: Any,
    stream: _Stream,
    mapping: Mapping,
    *,
    cost_model: Any = None,
    seed: int = 0,
    record_events: bool = False,
    progress: bool = False,
    train: RoutingTrace | None = None,
    placements: PlacementMemo | None = None,
) -> Result:
    """Simulate serving ``stream`` with ``model`` on ``platform`` laid out by ``mapping``.

    ``cost_model`` defaults to ``hwmodels.CostModel(platform)`` (calibrated fidelity with the
    package's default efficiency curves). ``seed`` seeds every policy. ``train`` (a routing trace)
    replaces the training split of the stream; without either, a process stream trains on a
    separate sample of its process (module doc). ``placements`` (a `PlacementMemo`) computes the
    placement once per (routing statistics, devices, policy and options, model) and reuses it in
    later calls given the same memo (a mapping with its own ``expert_home`` skips placement);
    ``summary["placement_source"]`` says whether it was computed, found in the memo or given (its
    wall time, not deterministic, is logged, never put in the result). Returns a `Result`; deterministic
    for a seed.
    Raises `MappingError` when the mapping does not fit, `UnknownPolicyError` for unknown policy
    names (both list the valid choices or the numbers) and `TrainingDataError` when policies need
    training data that is absent.
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a codesign.mapping.Mapping, got {type(mapping).__name__}")
    if cost_model is None:
        from hwmodels import CostModel

        cost_model = CostModel(platform)
    n_l, n_e = model.n_moe_layers, model.n_experts
    train_reqs, serve_reqs = split_requests(tuple(stream.requests), mapping.train_fraction)
    if not serve_reqs:
        raise ValueError(
            f"no request to serve: the stream has {len(stream.requests)} requests and "
            f"train_fraction={mapping.train_fraction}"
        )
    train_source: str | None = "given" if train is not None else None
    if train is None and train_reqs:
        train = training_trace(stream, train_reqs, n_l, n_e, model.top_k)
        train_source = "split"
    if train is None:
        needing = policies_needing_training(mapping, model, platform)
        if needing:
            from workloads.requests import ProcessRouting

            source = getattr(stream, "routing_source", None)
            if not isinstance(source, ProcessRouting):
                raise TrainingDataError(
                    f"{' and '.join(needing)} need(s) training routing and none is available: the stream replays "
                    "a trace, which is split only on request; set mapping train_fraction > 0 or pass train=",
                    needing,
                )
            train = process_training_trace(source, serve_reqs, n_l, n_e, model.top_k)
            train_source = "process-sample"
            log.info(
                "%s: trained on a separate sample of the routing process (%d tokens)",
                ", ".join(needing),
                train.n_tokens,
            )
    if train is not None and (train.n_moe_layers != n_l or train.n_experts != n_e):
        raise ValueError(
            f"training trace has {train.n_moe_layers} MoE layers x {train.n_experts} experts; model "
            f"{model.name!r} has {n_l} x {n_e}"
        )
    stats = RoutingStats.from_trace(train) if train is not None else None
    sim_reqs = []
    for r in serve_reqs:
        if int(r.prompt_tokens) < 1 or int(r.output_tokens) < 1:
            raise ValueError(
                f"request {r.request_id}: prompt_tokens and output_tokens must be >= 1, got "
                f"{r.prompt_tokens}, {r.output_tokens}"
            )
        sim_reqs.append(
            SimRequest(
                int(r.request_id),
                float(r.arrival_s),
                int(r.prompt_tokens),
                int(r.output_tokens),
                _routing(stream, r, n_l, n_e),
            )
        )
    min_kv = max(s.prompt_tokens + s.output_tokens - 1 for s in sim_reqs)
    try:
        bound = mapping.bind(model, platform, stats=stats, min_kv_tokens=min_kv, seed=seed, placements=placements)
    except MappingError:
        raise
    if bound.placement is not None and bound.placement.source == "computed":
        log.info("placement %r computed in %.3f s", mapping.placement, bound.placement.solve_s)
    oracle_exact: bool | None = None
    passes = 1
    needs_future = policy_flag("cache", mapping.cache.policy, "needs_future")
    if needs_future:
        rec_mapping = mapping.with_(
            cache=mapping.cache.__class__(
                policy="lru",
                tier=mapping.cache.tier,
                expert_fraction=mapping.cache.expert_fraction,
                capacity_experts=mapping.cache.capacity_experts,
            )
        )
        rec_bound = rec_mapping.with_(expert_home=bound.expert_home).bind(
            model, platform, stats=stats, min_kv_tokens=min_kv, seed=seed
        )
        rec = Engine(rec_bound, cost_model, seed=seed, train=train, record_access=True).run(sim_reqs)
        futures: list[AccessSequence] = rec.access or []
        out: EngineOutput | None = None
        for _ in range(_MAX_ORACLE_PASSES):
            eng = Engine(
                bound,
                cost_model,
                seed=seed,
                record_events=record_events,
                progress=progress,
                train=train,
                futures=futures,
                record_access=True,
            )
            out = eng.run(sim_reqs)
            got = out.access or []
            oracle_exact = all(np.array_equal(a.keys, b.keys) for a, b in zip(got, futures, strict=True))
            if oracle_exact:
                break
            futures = got
            passes += 1
        assert out is not None
        if not oracle_exact:
            log.warning(
                "oracle cache: the access sequence still changed after %d passes; the result is an "
                "approximation of Belady",
                _MAX_ORACLE_PASSES,
            )
    else:
        out = Engine(bound, cost_model, seed=seed, record_events=record_events, progress=progress, train=train).run(
            sim_reqs
        )
    extra: dict[str, Any] = {
        "oracle_exact": oracle_exact,
        "oracle_passes": passes if needs_future else 0,
        "hits": out.counters["hits"],
        "accesses": out.counters["accesses"],
        "assignments_device": out.counters["assignments_device"],
        "assignments_cpu": out.counters["assignments_cpu"],
        "device_busy_s": out.counters["device_busy_s"],
        "host_busy_s": out.counters["host_busy_s"],
        "sim_events": out.counters["sim_events"],
        "idle_static_energy_J": out.counters["idle_static_energy_J"],
        "cache_slots": out.counters["cache_slots"],
        "peak_resident_experts": out.counters["peak_resident_experts"],
        "offloaded": bound.offloaded,
        "n_devices": bound.n_devices,
        "train_requests": len(train_reqs),
        "train_source": train_source,
        "train_tokens": train.n_tokens if train is not None else 0,
        "kv_capacity_tokens": int(sum(bound.kv_capacity_tokens)),
        "kv_policy": bound.mapping.batching.kv,
        "kv_preemptions": int(out.counters["kv_preemptions"]),
        "kv_recomputed_tokens": int(out.counters["kv_recomputed_tokens"]),
        "kv_peak_set_aside_tokens": int(out.counters["kv_peak_set_aside_tokens"]),
        "all_to_all_s": out.counters["all_to_all_s"],
        "placement_source": bound.placement.source if bound.placement is not None else None,
    }
    summary = summarize(
        out.requests,
        out.steps,
        makespan_s=out.makespan_s,
        hit_rate=out.hit_rate,
        bytes_moved=out.bytes_moved,
        peak_memory_bytes=out.peak_memory_bytes,
        energy_J=out.energy_J,
        cost_per_hour_usd=float(platform.cost_per_hour_usd),
        mean_requests_in_system=out.mean_requests_in_system,
        extra=extra,
    )
    digest = hashlib.sha256()
    for sr in sim_reqs:
        digest.update(np.asarray([sr.request_id, sr.prompt_tokens, sr.output_tokens], dtype=np.int64).tobytes())
        digest.update(np.float64(sr.arrival_s).tobytes())
        digest.update(np.ascontiguousarray(sr.routing).tobytes())
    config = {
        "model": _describe(model),
        "platform": _platform_numbers(platform),
        "mapping": mapping.to_dict(),
        "seed": seed,
        "cost_model": {"type": type(cost_model).__name__, "fidelity": getattr(cost_model, "fidelity", None)},
        "workload": {
            "n_requests": len(stream.requests),
            "served": len(serve_reqs),
            "stream": type(stream).__name__,
            "digest": digest.hexdigest()[:16],
        },
    }
    config_hash = hashlib.sha256(json.dumps(_plain(config), sort_keys=True).encode()).hexdigest()[:16]
    return Result(
        requests=out.requests,
        steps=out.steps,
        summary=summary,
        config=_plain(config),
        config_hash=config_hash,
        events=out.events,
    )
