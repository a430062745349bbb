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

Deriving takes seconds to minutes (DeepSeek-V3's 256 experts x 58 layers: ~2 min on the 2-core dev
machine), so derived processes are cached on disk, exactly (float64), in `cache_dir` (``$MOE_CODESIGN_CACHE_DIR``,
else ``$XDG_CACHE_HOME/moe-codesign``, else ``~/.cache/moe-codesign``; ``MOE_CODESIGN_CACHE_DIR=off``
disables the cache), under a key hashing everything the result depends on: the embedded data file,
the source of the derivation code (this module, `workloads.process`, `workloads._routing_sampler`),
the target shape and the seed. A changed input is a new key; an unreadable entry is derived again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from workloads.aggregated import AggregatedRoutingStats
from workloads.model import get_model
from workloads.process import ProcessFormatError, RoutingProcess
from workloads.progress import stage

log = logging.getLogger(__name__)

DATA_NAME = "default_routing.json"
FORMAT_NAME = "moe-codesign/default-workload"
FORMAT_VERSION = 1

#: Environment variable relocating the cache of derived default workloads (``off`` disables it).
CACHE_ENV = "MOE_CODESIGN_CACHE_DIR"
#: Sources whose content keys the cache of derived processes (the derivation code).
_DERIVATION_SOURCES = ("defaults.py", "process.py", "_routing_sampler.py")


def _data_text() -> str:
    try:
        return (resources.files("workloads") / "data" / DATA_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ProcessFormatError(
            f"embedded default workload workloads/data/{DATA_NAME} is missing "
            f"(regenerate it with studies/default_workload/build.py): {exc}"
        ) from exc


def load_default_data() -> dict[str, Any]:
    """The parsed data file (``{"format", "version", "processes": {model: process}, "provenance",
    "fidelity", ...}``); raises `ProcessFormatError` if it is missing or malformed."""
    return _parse_data(_data_text())


def _parse_data(text: str) -> dict[str, Any]:
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


def cache_dir() -> Path | None:
    """Where derived default workloads are cached: ``$MOE_CODESIGN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/moe-codesign``, else ``~/.cache/moe-codesign``; None when the variable is
    ``off`` (or empty)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moe-codesign"


def default_process(model: str = "mixtral-8x7b", *, seed: int = 0) -> RoutingProcess:
    """The embedded routing process of ``model`` (a fitted one, or derived for other presets).

    For a preset without its own process: the fitted process nearest in ``|log(E/E0)| +
    |log(k/k0)|`` is retargeted to the preset's experts and top-k and relayered to its MoE layer
    count (recalibrated with ``seed``; seconds to minutes for large expert counts, shown as
    progress, and cached on disk: see the module docstring, so later calls load it in well under
    a second). Raises `workloads.UnknownPresetError` (listing the names) for an unknown model.
    """
    text = _data_text()
    data = _parse_data(text)
    procs = data["processes"]
    if model in procs:
        return RoutingProcess.from_dict(procs[model], where=f"{DATA_NAME}:{model}")
    spec = get_model(model)
    shapes = {name: (int(p["n_experts"]), int(p["top_k"])) for name, p in procs.items()}
    nearest = min(
        sorted(shapes),
        key=lambda n: abs(math.log(spec.n_experts / shapes[n][0])) + abs(math.log(spec.top_k / shapes[n][1])),
    )
    target = {"model": model, "n_experts": spec.n_experts, "top_k": spec.top_k, "n_moe_layers": spec.n_moe_layers}
    key = _derivation_key(text, {**target, "nearest": nearest, "seed": seed})
    folder = cache_dir()
    cached = folder / "default-workload" / f"{model}-{key[:20]}.json" if folder is not None else None
    if cached is not None and cached.is_file():
        try:
            proc = _read_cached(cached)
        except (OSError, ValueError) as exc:  # ProcessFormatError is a ValueError
            log.warning("cached default workload %s unreadable (%s); deriving it again", cached, exc)
        else:
            log.debug("default workload of %s from the cache %s", model, cached)
            return proc
    where = f"; cached in {cached.parent} afterwards" if cached is not None else ""
    desc = (
        f"deriving the default workload of {model} ({spec.n_experts} experts, top-{spec.top_k}, "
        f"{spec.n_moe_layers} MoE layers) from {nearest}'s fitted process (once{where})"
    )
    with stage(desc):
        proc = _derive(RoutingProcess.from_dict(procs[nearest], where=f"{DATA_NAME}:{nearest}"), model, nearest, seed)
    if cached is not None:
        _write_cached(proc, cached)
    return proc


def _derive(proc: RoutingProcess, model: str, nearest: str, seed: int) -> RoutingProcess:
    """``proc`` (the fitted process ``nearest``) retargeted and relayered to preset ``model``."""
    spec = get_model(model)
    n_e0, k0 = proc.n_experts, proc.top_k
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
        "n_experts": n_e0,
        "top_k": k0,
        "how": "retarget(n_experts, top_k) and relayer(n_moe_layers) of the embedded process",
    }
    return dataclasses.replace(proc, meta=meta)


def _derivation_key(data_text: str, target: dict[str, Any]) -> str:
    """SHA-256 (hex) of everything a derived process depends on: the data file, the derivation
    code's source and ``target`` (shape, source model, seed)."""
    h = hashlib.sha256()
    h.update(data_text.encode("utf-8"))
    here = Path(__file__).resolve().parent
    for name in _DERIVATION_SOURCES:
        try:
            h.update((here / name).read_bytes())
        except OSError:  # not installed as files: the package version stands for the code
            from importlib.metadata import PackageNotFoundError, version

            try:
                h.update(version("moe-codesign").encode())
            except PackageNotFoundError:
                h.update(b"unknown")
    h.update(json.dumps(target, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def _encode_exact(a: Any) -> dict[str, Any]:
    """A float64 array as the process format's compact encoding (exact, unlike float32/16)."""
    arr = np.ascontiguousarray(a, dtype="<f8")
    return {
        "dtype": "float64",
        "shape": list(arr.shape),
        "zlib_base64": base64.b64encode(zlib.compress(arr.tobytes(), 1)).decode("ascii"),
    }


def _write_cached(proc: RoutingProcess, path: Path) -> None:
    """Write ``proc`` to the cache file ``path`` atomically; a cache that cannot be written is
    logged and skipped (the result is returned all the same)."""
    d = proc.to_dict(precision="float32")
    d["arrays"] = {name: _encode_exact(getattr(proc, name)) for name in d["arrays"]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(d, separators=(",", ":")))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        log.warning("could not cache the derived default workload in %s (%s); set %s", path, exc, CACHE_ENV)


def _read_cached(path: Path) -> RoutingProcess:
    """A process written by `_write_cached` (raises `ProcessFormatError` or `OSError`)."""
    return RoutingProcess.load(path)


def process_from_counts(
    counts: AggregatedRoutingStats,
    base: RoutingProcess,
    *,
    n_layers: int,
    seed: int = 0,
    model: str | None = None,
    calibration_tokens: int = 16384,
    calibration_iterations: int = 8,
) -> RoutingProcess:
    """A process for a model known only by aggregated counts (e.g. OLMoE's published counts).

    Popularity comes from ``counts.load`` (add-one smoothed; a layer without counts takes the
    nearest measured layer). Inter-layer affinity, temporal reuse (the reuse rate, the overlap
    distribution and the reuse at lags ``1..base.max_lag``: ``lag_weights``, ``lag_target``) and
    first-layer co-activation come from ``base`` (a process fitted to per-token data of a similar model),
    retargeted to the counts' experts and top-k, cut to its first ``n_layers`` layers (or relayered
    when it has fewer), and matched to the counted model's experts by popularity rank: at each
    layer the expert of rank r takes the role of ``base``'s expert of rank r. That matching is the
    assumption (aggregated counts carry no per-token data); it is recorded in ``meta``. The result
    is calibrated (``calibration_iterations`` per layer) on ``calibration_tokens`` sampled tokens
    (the retargeting on at most 8,192), seeded by ``seed``.
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
    shaped = (
        base
        if (base.n_experts, base.top_k) == (n_e, k)
        else base.retarget(
            n_e,
            k,
            calibration_iterations=min(6, calibration_iterations),
            calibration_tokens=min(calibration_tokens, 8192),
            seed=seed,
        )
    )
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
            "affinity_reuse_overlap": f"{base_name} fitted process (with its first-layer co-activation and its "
            f"reuse at lags 1..{shaped.max_lag}) retargeted "
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
        lag_weights=shaped.lag_weights,
        lag_target=shaped.lag_target,
    )
    return proc.calibrate(iterations=calibration_iterations, n_tokens=calibration_tokens, seed=seed)


__all__ = ["CACHE_ENV", "cache_dir", "default_process", "fitted_models", "load_default_data", "process_from_counts"]
