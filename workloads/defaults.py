"""The embedded default workload: routing processes fitted from real traces, shipped in the package.

``workloads/data/default_routing.json`` (written by ``studies/default_workload/build.py``, which
reads ``../shared/traces``) holds `RoutingProcess` parameters, their provenance and the fidelity
measured when they were built:

- ``mixtral-8x7b``: fitted to the Mixtral-8x7B-Instruct decode trace (585 tokens, 4 requests);
- ``deepseek-v2-lite``: fitted to the DeepSeek-V2-Lite prompts (19,520 prefill tokens, 200 requests);
- ``olmoe-1b-7b``: popularity from the OLMoE-1B-7B aggregated counts (measured at layers 0, 7 and 15;
  other layers take the nearest measured layer), with the inter-layer affinity and temporal reuse of
  the DeepSeek-V2-Lite process (also 64 experts) retargeted to top-8, its first 16 layers, matched to
  OLMoE's experts by popularity rank (an assumption: the counts have no per-token data).

`default_process(model)` returns one of these, or for any other preset of `workloads.get_model`
the nearest fitted process (by expert count and top-k) retargeted and relayered to the preset's
shape, labelled in ``meta["derived_from"]`` (see `RoutingProcess.retarget` for the assumption).
Nothing here reads ``../shared``: the package runs without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from typing import Any

import numpy as np

from workloads.aggregated import AggregatedRoutingStats
from workloads.model import get_model
from workloads.process import ProcessFormatError, RoutingProcess

DATA_NAME = "default_routing.json"
FORMAT_NAME = "moe-codesign/default-workload"
FORMAT_VERSION = 1


def load_default_data() -> dict[str, Any]:
    """The parsed data file (``{"format", "version", "processes": {model: process}, "provenance",
    "fidelity", ...}``); raises `ProcessFormatError` if it is missing or malformed."""
    try:
        text = (resources.files("workloads") / "data" / DATA_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ProcessFormatError(
            f"embedded default workload workloads/data/{DATA_NAME} is missing "
            f"(regenerate it with studies/default_workload/build.py): {exc}"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProcessFormatError(f"{DATA_NAME}: not JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ProcessFormatError(f"{DATA_NAME}: 'format' is not {FORMAT_NAME!r}")
    if int(data.get("version", 0)) > FORMAT_VERSION:
        raise ProcessFormatError(f"{DATA_NAME}: version {data.get('version')} is newer than {FORMAT_VERSION}")
    if not isinstance(data.get("processes"), dict) or not data["processes"]:
        raise ProcessFormatError(f"{DATA_NAME}: no 'processes'")
    return data


def fitted_models() -> list[str]:
    """Models with a process of their own in the data file (others are derived)."""
    return sorted(load_default_data()["processes"])


def default_process(model: str = "mixtral-8x7b", *, seed: int = 0) -> RoutingProcess:
    """The embedded routing process of ``model`` (a fitted one, or derived for other presets).

    For a preset without its own process: the fitted process nearest in ``|log(E/E0)| +
    |log(k/k0)|`` is retargeted to the preset's experts and top-k and relayered to its MoE layer
    count (recalibrated with ``seed``; this takes a few seconds for large expert counts).
    Raises `workloads.UnknownPresetError` (listing the names) for an unknown model.
    """
    data = load_default_data()
    procs = data["processes"]
    if model in procs:
        return RoutingProcess.from_dict(procs[model], where=f"{DATA_NAME}:{model}")
    spec = get_model(model)
    shapes = {name: (int(p["n_experts"]), int(p["top_k"])) for name, p in procs.items()}
    nearest = min(
        sorted(shapes),
        key=lambda n: abs(math.log(spec.n_experts / shapes[n][0])) + abs(math.log(spec.top_k / shapes[n][1])),
    )
    proc = RoutingProcess.from_dict(procs[nearest], where=f"{DATA_NAME}:{nearest}")
    # enough calibration tokens to estimate E x E pair statistics (sparse for many experts, top-1)
    n_cal = int(np.clip(2 * spec.n_experts**2 // spec.top_k, 4096, 16384))
    if (proc.n_experts, proc.top_k) != (spec.n_experts, spec.top_k):
        proc = proc.retarget(spec.n_experts, spec.top_k, calibration_iterations=6, calibration_tokens=n_cal, seed=seed)
    if proc.n_moe_layers != spec.n_moe_layers:
        proc = proc.relayer(spec.n_moe_layers, calibration_iterations=5, calibration_tokens=n_cal, seed=seed)
    meta = dict(proc.meta)
    meta["model"] = model
    meta["derived_from"] = {
        "model": nearest,
        "n_experts": shapes[nearest][0],
        "top_k": shapes[nearest][1],
        "how": "retarget(n_experts, top_k) and relayer(n_moe_layers) of the embedded process",
    }
    return dataclasses.replace(proc, meta=meta)


def process_from_counts(
    counts: AggregatedRoutingStats, base: RoutingProcess, *, n_layers: int, seed: int = 0, model: str | None = None
) -> RoutingProcess:
    """A process for a model known only by aggregated counts (e.g. OLMoE's published counts).

    Popularity comes from ``counts.load`` (add-one smoothed; a layer without counts takes the
    nearest measured layer). Inter-layer affinity, temporal reuse, overlap and first-layer
    co-activation come from ``base`` (a process fitted to per-token data of a similar model),
    retargeted to the counts' experts and top-k, cut to its first ``n_layers`` layers (or relayered
    when it has fewer), and matched to the counted model's experts by popularity rank: at each
    layer the expert of rank r takes the role of ``base``'s expert of rank r. That matching is the
    assumption (aggregated counts carry no per-token data); it is recorded in ``meta``.
    """
    n_e, k = counts.n_experts, counts.top_k
    measured = sorted(counts.load)
    if not measured:
        raise ValueError(f"process_from_counts: {counts.source!r} has no per-layer load counts")
    if measured[-1] >= n_layers:
        raise ValueError(f"process_from_counts: counts measure layer {measured[-1]} but n_layers={n_layers}")
    src = [min(measured, key=lambda m: (abs(m - layer), m)) for layer in range(n_layers)]
    load = np.stack([counts.load[s].astype(np.float64) for s in src])
    pop = (load + 1.0) / (load.sum(axis=1, keepdims=True) + n_e)
    shaped = base if (base.n_experts, base.top_k) == (n_e, k) else base.retarget(n_e, k, seed=seed)
    # consecutive real layers keep the set coherence that carries the affinity; relayer() chains
    # transitions and weakens it, so cut a window when the base is deep enough
    if shaped.n_moe_layers >= n_layers:
        shaped = shaped.window(0, n_layers)
        how = f"its first {n_layers} MoE layers"
    else:
        shaped = shaped.relayer(n_layers, seed=seed)
        how = f"relayered to {n_layers} MoE layers"
    perm = np.empty((n_layers, n_e), dtype=np.int64)  # counted expert o plays shaped expert perm[l, o]
    for layer in range(n_layers):
        perm[layer, np.argsort(-pop[layer], kind="stable")] = np.argsort(-shaped.popularity[layer], kind="stable")
    aff = (
        np.stack([shaped.affinity[t][np.ix_(perm[t], perm[t + 1])] for t in range(n_layers - 1)])
        if n_layers > 1
        else np.zeros((0, n_e, n_e))
    )
    base_name = base.meta.get("model")
    meta = {
        "model": model or counts.model,
        "source": counts.source,
        "licence": counts.licence,
        "composed_from": {
            "popularity": f"aggregated expert counts of {counts.model} ({counts.domain}), measured at layers "
            f"{measured}; layer l uses the nearest measured layer {src}",
            "affinity_reuse_overlap": f"{base_name} fitted process (with its first-layer co-activation) retargeted "
            f"to {n_e} experts top-{k}, {how}, experts matched by popularity rank "
            "(assumption: the counts have no per-token data)",
        },
    }
    co = np.asarray(shaped.coact0)[np.ix_(perm[0], perm[0])]
    proc = RoutingProcess(
        popularity=pop,
        affinity=aff,
        bias=np.zeros_like(pop),
        beta=shaped.beta,
        reuse_rate=shaped.reuse_rate,
        overlap=shaped.overlap,
        copy_scale=shaped.copy_scale,
        mi_target=shaped.mi_target,
        top_k=k,
        phase=shaped.phase,
        tokens_per_request=shaped.tokens_per_request,
        meta=meta,
        coact0=co,
        gamma0=shaped.gamma0,
        co_mi_target0=shaped.co_mi_target0,
    )
    return proc.calibrate(seed=seed)


__all__ = ["default_process", "fitted_models", "load_default_data", "process_from_counts"]
