"""`Result` of a simulation: per-request and per-step records, a summary, the config, events.

Records are pandas DataFrames (one row per request, one per step; columns below). The summary is
a flat JSON-able dict (nested dicts for per-tier and per-link figures); `summarize` computes it
from the records and the engine's counters, so every figure can be re-derived from the records.

Units: seconds (``*_s``), bytes, joules (``*_J``/``energy_j_*``), US dollars.

Request records (`REQUEST_COLUMNS`): ``request_id, arrival_s, admitted_s, first_token_s,
finish_s, prompt_tokens, output_tokens, ttft_s, tpot_s, latency_s, device``.
Step records (`STEP_COLUMNS`): ``step, start_s, end_s, duration_s, n_requests, prefill_tokens,
decode_tokens, experts_needed, hits, misses, fetched, cpu_computed, streamed, prefetched,
prefetch_late, prefetch_on_time, prefetch_wasted, bytes_host, bytes_peer, cross_device, assignments,
energy_J``. Per step, ``experts_needed = hits + prefetch_late + misses``: a *hit* is an expert whose
weights were resident when its layer needed them; a *late prefetch* was admitted by a prefetch whose
copy was still in flight (the layer waited for it); a *miss* was not resident at all. ``prefetched``
counts prefetches issued; each is resolved once, at its first use (``prefetch_on_time`` or
``prefetch_late``) or when it is evicted unused (``prefetch_wasted``).
Events (optional): `Event` tuples ``(device, resource, kind, start_s, end_s, label)``; kinds are
``attention``, ``router``, ``dense``, ``experts``, ``expert``, ``shared``, ``fetch``,
``prefetch``, ``cpu_expert``, ``all_to_all``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from codesign.records import RequestRecord, StepRecord, field_names

__all__ = ["REQUEST_COLUMNS", "STEP_COLUMNS", "Event", "Result", "summarize"]

#: Columns of `Result.requests`: the fields of `codesign.records.RequestRecord`, in order.
REQUEST_COLUMNS: tuple[str, ...] = field_names(RequestRecord)
#: Columns of `Result.steps`: the fields of `codesign.records.StepRecord`, in order.
STEP_COLUMNS: tuple[str, ...] = field_names(StepRecord)


class Event(NamedTuple):
    """One interval of work on a resource (what the timeline view draws)."""

    device: str
    resource: str
    kind: str
    start_s: float
    end_s: float
    label: str


def _pct(values: pd.Series, q: float) -> float:
    v = values.dropna().to_numpy(dtype=float)
    return float(np.percentile(v, q)) if v.size else float("nan")


def _mean(values: pd.Series) -> float:
    v = values.dropna().to_numpy(dtype=float)
    return float(v.mean()) if v.size else float("nan")


def summarize(
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    *,
    makespan_s: float,
    hit_rate: dict[str, float],
    bytes_moved: dict[str, float],
    peak_memory_bytes: dict[str, float],
    energy_J: float,
    cost_per_hour_usd: float,
    mean_requests_in_system: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary dict from the records and counters (see module doc for units).

    Throughput counts output tokens over the makespan (first arrival to last finish).
    ``energy_j_per_token`` and ``cost_per_million_tokens_usd`` divide by output tokens;
    ``cross_device_share`` is cross-device token-expert assignments (dispatched to an expert off the
    token's current device: its request's device in classic EP, the device it moved to in
    context-coherent EP, see `codesign.engine`) over all assignments.
    ``prefetch`` = ``{issued, on_time, late, wasted, unused_at_end}`` (counts of expert prefetches;
    ``unused_at_end = issued - on_time - late - wasted``: still neither used nor evicted when the run
    ended) and ``late_prefetch_share`` = late prefetches over expert accesses (``experts_needed``);
    ``hit_rate`` (from the engine) counts true hits only, never a late prefetch.
    """
    out_tokens = float(requests["output_tokens"].sum()) if len(requests) else 0.0
    prompt_tokens = float(requests["prompt_tokens"].sum()) if len(requests) else 0.0
    s: dict[str, Any] = {
        "n_requests": len(requests),
        "n_steps": len(steps),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "makespan_s": makespan_s,
    }
    for col, key in (("ttft_s", "ttft"), ("tpot_s", "tpot"), ("latency_s", "latency")):
        series = requests[col] if len(requests) else pd.Series(dtype=float)
        for q in (50, 90, 99):
            s[f"{key}_p{q}_s"] = _pct(series, q)
        s[f"{key}_mean_s"] = _mean(series)
    s["throughput_tok_s"] = out_tokens / makespan_s if makespan_s > 0 else float("nan")
    s["throughput_req_s"] = len(requests) / makespan_s if makespan_s > 0 else float("nan")
    s["step_mean_s"] = _mean(steps["duration_s"]) if len(steps) else float("nan")
    s["hit_rate"] = dict(hit_rate)
    s["bytes_moved"] = dict(bytes_moved)
    s["peak_memory_bytes"] = dict(peak_memory_bytes)
    s["energy_J"] = energy_J
    s["energy_j_per_token"] = energy_J / out_tokens if out_tokens else float("nan")
    hours = makespan_s / 3600.0
    s["cost_usd"] = cost_per_hour_usd * hours
    s["cost_per_million_tokens_usd"] = (cost_per_hour_usd * hours / out_tokens * 1e6) if out_tokens else float("nan")
    assignments = float(steps["assignments"].sum()) if len(steps) else 0.0
    s["cross_device_share"] = float(steps["cross_device"].sum()) / assignments if assignments else 0.0
    s["mean_requests_in_system"] = mean_requests_in_system
    pf = {
        name: float(steps[col].sum()) if len(steps) else 0.0
        for name, col in (
            ("issued", "prefetched"),
            ("on_time", "prefetch_on_time"),
            ("late", "prefetch_late"),
            ("wasted", "prefetch_wasted"),
        )
    }
    pf["unused_at_end"] = pf["issued"] - pf["on_time"] - pf["late"] - pf["wasted"]
    s["prefetch"] = pf
    needed = float(steps["experts_needed"].sum()) if len(steps) else 0.0
    s["late_prefetch_share"] = pf["late"] / needed if needed else 0.0
    if extra:
        s.update(extra)
    return s


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass(eq=False)
class Result:
    """What a simulation returns (see module doc for the columns and units).

    ``config`` is the JSON-able description of the run (model, platform, mapping, seed, workload)
    and ``config_hash`` its stable hash; ``events`` is None unless events were recorded.
    """

    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: dict[str, Any]
    config: dict[str, Any]
    config_hash: str
    events: list[Event] | None = None

    def __getitem__(self, key: str) -> Any:
        """Shortcut to a summary figure: ``result["tpot_p50_s"]``."""
        return self.summary[key]

    def events_frame(self) -> pd.DataFrame:
        """The event log as a DataFrame (empty with the columns when no events were recorded)."""
        return pd.DataFrame(self.events or [], columns=list(Event._fields))

    def summary_json(self) -> dict[str, Any]:
        """The summary with the config hash, NaN/inf as null."""
        d = dict(self.summary)
        d["config_hash"] = self.config_hash
        out: dict[str, Any] = _jsonable(d)
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        """``{"summary": ..., "config": ..., "config_hash": ...}`` as strict JSON (NaN -> null)."""
        return json.dumps(
            _jsonable({"summary": self.summary, "config": self.config, "config_hash": self.config_hash}),
            indent=indent,
            allow_nan=False,
        )

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``requests.csv``, ``steps.csv``, ``summary.json``, ``config.json`` and, when events
        were recorded, ``events.csv`` into ``out_dir`` (created); returns name -> path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "requests": out / "requests.csv",
            "steps": out / "steps.csv",
            "summary": out / "summary.json",
            "config": out / "config.json",
        }
        self.requests.to_csv(paths["requests"], index=False)
        self.steps.to_csv(paths["steps"], index=False)
        paths["summary"].write_text(json.dumps(self.summary_json(), indent=2, allow_nan=False) + "\n")
        cfg = {"config": self.config, "config_hash": self.config_hash}
        paths["config"].write_text(json.dumps(_jsonable(cfg), indent=2, allow_nan=False) + "\n")
        if self.events is not None:
            paths["events"] = out / "events.csv"
            self.events_frame().to_csv(paths["events"], index=False)
        return paths
