"""`simulate`: the Python API of the simulator (one call -> one `Result`).

    from codesign.simulate import simulate
    result = simulate(model, platform, stream, mapping, seed=0)
    result.summary["tpot_p50_s"]

``stream`` is a `workloads.requests.RequestStream` (anything with ``.requests`` and
``.routing(request)``). The first ``mapping.train_fraction`` of its requests (by arrival) are not
served: their routing trains the policies that need it (placement statistics, the ``popular``
initial cache contents, trained caches and prefetchers); the rest are replayed.

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
from codesign.policies import REGISTRIES
from codesign.policies.base import AccessSequence, RoutingStats
from codesign.result import Result, summarize
from workloads.trace import RoutingTrace

log = logging.getLogger(__name__)

__all__ = ["simulate", "split_requests", "training_trace"]

_MAX_ORACLE_PASSES = 3


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
        raise ValueError(f"request {req.request_id}: routing has shape {r.shape}, expected ({rows}, {n_layers}, k) "
                         f"(prompt {req.prompt_tokens} + output {req.output_tokens} rows, {n_layers} MoE layers)")
    if r.size and (r.min() < -1 or r.max() >= n_experts):
        raise ValueError(f"request {req.request_id}: routing holds expert ids outside [-1, {n_experts}): "
                         f"[{r.min()}, {r.max()}]")
    return r.astype(np.int16, copy=False)


def split_requests(requests: tuple[Any, ...], train_fraction: float) -> tuple[list[Any], list[Any]]:
    """(train, serve): the first ``floor(train_fraction * n)`` requests by arrival, and the rest."""
    reqs = sorted(requests, key=lambda r: (float(r.arrival_s), int(r.request_id)))
    n_train = math.floor(train_fraction * len(reqs))
    return reqs[:n_train], reqs[n_train:]


def training_trace(stream: _Stream, requests: list[Any], n_layers: int, n_experts: int, top_k: int) -> RoutingTrace:
    """The routing of ``requests`` as one `RoutingTrace` (prefill rows phase 0, decode rows phase 1)."""
    parts, req_ids, pos, phase = [], [], [], []
    for r in requests:
        rt = _routing(stream, r, n_layers, n_experts)
        parts.append(rt)
        n = rt.shape[0]
        req_ids.append(np.full(n, int(r.request_id), dtype=np.int32))
        pos.append(np.arange(n, dtype=np.int32))
        phase.append((np.arange(n) >= int(r.prompt_tokens)).astype(np.uint8))
    return RoutingTrace(experts=np.concatenate(parts), request=np.concatenate(req_ids),
                        position=np.concatenate(pos), phase=np.concatenate(phase),
                        meta={"n_experts": n_experts, "top_k": top_k, "source": "training split of the request stream",
                              "licence": "derived"})


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


def simulate(model: Any, platform: Any, stream: _Stream, mapping: Mapping, *, cost_model: Any = None,
             seed: int = 0, record_events: bool = False, progress: bool = False,
             train: RoutingTrace | None = None) -> Result:
    """Simulate serving ``stream`` with ``model`` on ``platform`` laid out by ``mapping``.

    ``cost_model`` defaults to ``hwmodels.CostModel(platform)`` (calibrated fidelity with the
    package's default efficiency curves). ``seed`` seeds every policy. ``train`` (a routing trace)
    replaces the training split of the stream. Returns a `Result`; deterministic for a seed.
    Raises `MappingError` when the mapping does not fit and `UnknownPolicyError` for unknown policy
    names (both list the valid choices or the numbers).
    """
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a codesign.mapping.Mapping, got {type(mapping).__name__}")
    if cost_model is None:
        from hwmodels import CostModel

        cost_model = CostModel(platform)
    n_l, n_e = model.n_moe_layers, model.n_experts
    train_reqs, serve_reqs = split_requests(tuple(stream.requests), mapping.train_fraction)
    if not serve_reqs:
        raise ValueError(f"no request to serve: the stream has {len(stream.requests)} requests and "
                         f"train_fraction={mapping.train_fraction}")
    if train is None and train_reqs:
        train = training_trace(stream, train_reqs, n_l, n_e, model.top_k)
    if train is not None and (train.n_moe_layers != n_l or train.n_experts != n_e):
        raise ValueError(f"training trace has {train.n_moe_layers} MoE layers x {train.n_experts} experts; model "
                         f"{model.name!r} has {n_l} x {n_e}")
    stats = RoutingStats.from_trace(train) if train is not None else None
    sim_reqs = []
    for r in serve_reqs:
        if int(r.prompt_tokens) < 1 or int(r.output_tokens) < 1:
            raise ValueError(f"request {r.request_id}: prompt_tokens and output_tokens must be >= 1, got "
                             f"{r.prompt_tokens}, {r.output_tokens}")
        sim_reqs.append(SimRequest(int(r.request_id), float(r.arrival_s), int(r.prompt_tokens),
                                   int(r.output_tokens), _routing(stream, r, n_l, n_e)))
    min_kv = max(s.prompt_tokens + s.output_tokens - 1 for s in sim_reqs)
    try:
        bound = mapping.bind(model, platform, stats=stats, min_kv_tokens=min_kv, seed=seed)
    except MappingError:
        raise
    cache_cls = REGISTRIES["cache"].get(mapping.cache.policy)
    oracle_exact: bool | None = None
    passes = 1
    if getattr(cache_cls, "needs_future", False):
        rec_mapping = mapping.with_(cache=mapping.cache.__class__(
            policy="lru", tier=mapping.cache.tier, expert_fraction=mapping.cache.expert_fraction,
            capacity_experts=mapping.cache.capacity_experts))
        rec_bound = rec_mapping.bind(model, platform, stats=stats, min_kv_tokens=min_kv, seed=seed)
        rec = Engine(rec_bound, cost_model, seed=seed, train=train, record_access=True).run(sim_reqs)
        futures: list[AccessSequence] = rec.access or []
        out: EngineOutput | None = None
        for _ in range(_MAX_ORACLE_PASSES):
            eng = Engine(bound, cost_model, seed=seed, record_events=record_events, progress=progress, train=train,
                         futures=futures, record_access=True)
            out = eng.run(sim_reqs)
            got = out.access or []
            oracle_exact = all(np.array_equal(a.keys, b.keys) for a, b in zip(got, futures, strict=True))
            if oracle_exact:
                break
            futures = got
            passes += 1
        assert out is not None
        if not oracle_exact:
            log.warning("oracle cache: the access sequence still changed after %d passes; the result is an "
                        "approximation of Belady", _MAX_ORACLE_PASSES)
    else:
        out = Engine(bound, cost_model, seed=seed, record_events=record_events, progress=progress,
                     train=train).run(sim_reqs)
    extra: dict[str, Any] = {
        "oracle_exact": oracle_exact, "oracle_passes": passes if getattr(cache_cls, "needs_future", False) else 0,
        "hits": out.counters["hits"], "accesses": out.counters["accesses"],
        "assignments_device": out.counters["assignments_device"], "assignments_cpu": out.counters["assignments_cpu"],
        "device_busy_s": out.counters["device_busy_s"], "host_busy_s": out.counters["host_busy_s"],
        "sim_events": out.counters["sim_events"], "idle_static_energy_J": out.counters["idle_static_energy_J"],
        "cache_slots": out.counters["cache_slots"], "peak_resident_experts": out.counters["peak_resident_experts"],
        "offloaded": bound.offloaded, "n_devices": bound.n_devices, "train_requests": len(train_reqs),
        "kv_capacity_tokens": int(sum(bound.kv_capacity_tokens)),
    }
    summary = summarize(out.requests, out.steps, makespan_s=out.makespan_s, hit_rate=out.hit_rate,
                        bytes_moved=out.bytes_moved, peak_memory_bytes=out.peak_memory_bytes,
                        energy_J=out.energy_J, cost_per_hour_usd=float(platform.cost_per_hour_usd),
                        mean_requests_in_system=out.mean_requests_in_system, extra=extra)
    digest = hashlib.sha256()
    for sr in sim_reqs:
        digest.update(np.asarray([sr.request_id, sr.prompt_tokens, sr.output_tokens], dtype=np.int64).tobytes())
        digest.update(np.float64(sr.arrival_s).tobytes())
        digest.update(np.ascontiguousarray(sr.routing).tobytes())
    config = {
        "model": _describe(model), "platform": {"name": platform.name}, "mapping": mapping.to_dict(),
        "seed": seed, "cost_model": {"type": type(cost_model).__name__,
                                     "fidelity": getattr(cost_model, "fidelity", None)},
        "workload": {"n_requests": len(stream.requests), "served": len(serve_reqs),
                     "stream": type(stream).__name__, "digest": digest.hexdigest()[:16]},
    }
    config_hash = hashlib.sha256(json.dumps(_plain(config), sort_keys=True).encode()).hexdigest()[:16]
    return Result(requests=out.requests, steps=out.steps, summary=summary, config=_plain(config),
                  config_hash=config_hash, events=out.events)
