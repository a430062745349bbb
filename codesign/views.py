"""Plotly views of a simulation: a timeline (Gantt) and a cost breakdown, as standalone HTML.

Figure data first, drawing second (STYLE item 14): `timeline_info` and `cost_breakdown_info`
compute what to draw from a `codesign.result.Result` (its event log and summary) and are tested;
`plot_timeline` and `plot_cost_breakdown` only draw; `write_html` writes a self-contained file
(plotly.js inline, opens offline).

Events are the engine's records ``(device, resource, kind, start_s, end_s, label)``
(`codesign.result.Event`): ``device`` like ``"0:h100-sxm"`` or ``"host"``; ``resource`` one of
``compute``, ``copy``, ``cpu``, ``peer_link``; ``kind`` among ``attention``, ``router``,
``dense``, ``experts``, ``expert``, ``shared``, ``fetch``, ``prefetch``, ``cpu_expert``,
``all_to_all``. A lane of the timeline is one (device, resource) pair.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

__all__ = [
    "KIND_COLOURS",
    "CostBreakdownInfo",
    "TimelineInfo",
    "cost_breakdown_info",
    "plot_cost_breakdown",
    "plot_timeline",
    "timeline_info",
    "write_html",
]

#: Colour of each event kind (unknown kinds get grey).
KIND_COLOURS: dict[str, str] = {
    "attention": "#4C78A8",
    "router": "#9ECAE9",
    "dense": "#72B7B2",
    "shared": "#54A24B",
    "experts": "#F58518",
    "expert": "#FFBF79",
    "fetch": "#E45756",
    "prefetch": "#FF9DA6",
    "cpu_expert": "#B279A2",
    "all_to_all": "#EECA3B",
}
_RESOURCE_ORDER = {"compute": 0, "copy": 1, "peer_link": 2, "cpu": 3}

EventLike = Sequence[Any]


def _events_of(source: Any) -> list[tuple[str, str, str, float, float, str]]:
    """Event tuples from a `Result` (its ``events``) or an iterable of 6-field records."""
    events = getattr(source, "events", source)
    if events is None:
        raise ValueError("the result has no event log: run simulate(..., record_events=True)")
    out: list[tuple[str, str, str, float, float, str]] = []
    for i, ev in enumerate(events):
        if len(ev) != 6:
            raise ValueError(
                f"event {i} has {len(ev)} fields; expected (device, resource, kind, start_s, end_s, label)"
            )
        dev, res, kind, start, end, label = ev
        start_f, end_f = float(start), float(end)
        if not (math.isfinite(start_f) and math.isfinite(end_f)) or end_f < start_f:
            raise ValueError(
                f"event {i} ({dev}, {res}, {kind}) has start_s={start_f}, end_s={end_f}; "
                "expected finite times with end_s >= start_s"
            )
        out.append((str(dev), str(res), str(kind), start_f, end_f, str(label)))
    return out


def _lane_key(lane: tuple[str, str]) -> tuple[int, str, int, str]:
    dev, res = lane
    host = 1 if dev == "host" else 0
    try:
        idx = int(dev.split(":", 1)[0])
    except ValueError:
        idx = 0
    return (host, f"{idx:06d}{dev}", _RESOURCE_ORDER.get(res, 9), res)


# ------------------------------------------------------------------------------------ timeline
@dataclass(frozen=True)
class TimelineInfo:
    """What the timeline draws.

    ``bars``: one dict per drawn event with ``lane`` ("device / resource"), ``device``,
    ``resource``, ``kind``, ``start_s``, ``end_s``, ``duration_s``, ``label``, in start order.
    ``lanes``: lane names top to bottom (devices in index order, compute before copy before
    peer link; the host last). ``kinds``: kinds present, in `KIND_COLOURS` order. ``t0_s`` and
    ``t1_s``: the drawn window. ``busy_s``: lane -> busy seconds inside the window (overlaps on
    one lane are merged, so busy <= window length). ``n_events``: events in the window before
    truncation; ``truncated``: True when only the first ``max_events`` were kept.
    """

    bars: list[dict[str, Any]]
    lanes: list[str]
    kinds: list[str]
    t0_s: float
    t1_s: float
    busy_s: dict[str, float]
    n_events: int
    truncated: bool
    title: str = ""


def _merged_length(intervals: Iterable[tuple[float, float]]) -> float:
    total = 0.0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None and cur_s is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None and cur_s is not None:
        total += cur_e - cur_s
    return total


def timeline_info(
    result: Any,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    steps: tuple[int, int] | None = None,
    max_events: int = 20_000,
    title: str = "",
) -> TimelineInfo:
    """Timeline data of ``result`` (a `Result` with events, or a sequence of event records),
    clipped to ``[start_s, end_s]`` (default: all), or to the simulator steps ``steps = (first,
    last)`` (inclusive, by the result's step records), and limited to the first ``max_events``
    events (by start time) so that the HTML stays small."""
    if max_events <= 0:
        raise ValueError(f"max_events must be > 0, got {max_events}")
    if steps is not None:
        if start_s is not None or end_s is not None:
            raise ValueError("give either steps or start_s/end_s, not both")
        table = getattr(result, "steps", None)
        if table is None or len(table) == 0:
            raise ValueError("steps= needs a Result with step records")
        first, last = steps
        if not 0 <= first <= last < len(table):
            raise ValueError(f"steps={steps} outside the result's {len(table)} steps (0..{len(table) - 1})")
        start_s = float(table["start_s"].iloc[first])
        end_s = float(table["end_s"].iloc[last])
    events = _events_of(result)
    lo = min((e[3] for e in events), default=0.0) if start_s is None else float(start_s)
    hi = max((e[4] for e in events), default=0.0) if end_s is None else float(end_s)
    if hi < lo:
        raise ValueError(f"end_s={hi} is before start_s={lo}")
    inside = [e for e in events if (e[4] > lo and e[3] < hi) or (e[3] == e[4] and lo <= e[3] <= hi)]
    inside.sort(key=lambda e: (e[3], e[4]))
    n_events = len(inside)
    kept = inside[:max_events]
    bars: list[dict[str, Any]] = []
    lanes_set: set[tuple[str, str]] = set()
    per_lane: dict[str, list[tuple[float, float]]] = {}
    for dev, res, kind, s, e, label in kept:
        s_c, e_c = max(s, lo), min(e, hi)
        lane = f"{dev} / {res}"
        lanes_set.add((dev, res))
        per_lane.setdefault(lane, []).append((s_c, e_c))
        bars.append(
            {
                "lane": lane,
                "device": dev,
                "resource": res,
                "kind": kind,
                "start_s": s_c,
                "end_s": e_c,
                "duration_s": e_c - s_c,
                "label": label,
            }
        )
    lanes = [f"{d} / {r}" for d, r in sorted(lanes_set, key=_lane_key)]
    present = {b["kind"] for b in bars}
    kinds = [k for k in KIND_COLOURS if k in present] + sorted(present - set(KIND_COLOURS))
    busy = {lane: _merged_length(per_lane.get(lane, [])) for lane in lanes}
    return TimelineInfo(
        bars=bars,
        lanes=lanes,
        kinds=kinds,
        t0_s=lo,
        t1_s=hi,
        busy_s=busy,
        n_events=n_events,
        truncated=n_events > len(kept),
        title=title,
    )


def plot_timeline(info: TimelineInfo) -> go.Figure:
    """A Gantt chart: one row per lane, one bar per event, coloured by kind (time in ms)."""
    fig = go.Figure()
    for kind in info.kinds:
        bars = [b for b in info.bars if b["kind"] == kind]
        fig.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[b["lane"] for b in bars],
                x=[b["duration_s"] * 1e3 for b in bars],
                base=[b["start_s"] * 1e3 for b in bars],
                marker_color=KIND_COLOURS.get(kind, "#BAB0AC"),
                customdata=[[b["label"], b["start_s"] * 1e3, b["end_s"] * 1e3] for b in bars],
                hovertemplate="%{y}<br>" + kind + " %{customdata[0]}<br>%{customdata[1]:.4f} - %{customdata[2]:.4f} ms"
                "<extra></extra>",
            )
        )
    title = info.title or "Timeline"
    if info.truncated:
        title += f" (first {len(info.bars)} of {info.n_events} events)"
    fig.update_layout(
        title=title,
        barmode="overlay",
        xaxis_title="time (ms)",
        legend_title="operation",
        yaxis={"categoryorder": "array", "categoryarray": list(reversed(info.lanes))},
        height=max(300, 40 * len(info.lanes) + 150),
    )
    return fig


# ----------------------------------------------------------------------------- cost breakdown
@dataclass(frozen=True)
class CostBreakdownInfo:
    """Where the time went, per device and operation kind, plus the run's totals.

    ``seconds[device][kind]``: busy seconds of each kind on each device (sum of event durations;
    the host CPU is the device ``"host"``; the all-to-all appears once per device it occupies).
    ``share[kind]``: share of all busy seconds. ``makespan_s``, ``energy_J``,
    ``energy_j_per_token``, ``bytes_moved`` (link -> bytes), ``hit_rate`` (tier -> share) come
    from the summary.
    """

    seconds: dict[str, dict[str, float]]
    share: dict[str, float]
    kinds: list[str]
    devices: list[str]
    makespan_s: float
    energy_J: float
    energy_j_per_token: float
    bytes_moved: dict[str, float] = field(default_factory=dict)
    hit_rate: dict[str, float] = field(default_factory=dict)
    title: str = ""


def cost_breakdown_info(result: Any, *, title: str = "") -> CostBreakdownInfo:
    """Busy time per device and kind from ``result``'s events, with the summary's totals."""
    events = _events_of(result)
    summary: dict[str, Any] = getattr(result, "summary", {}) or {}
    seconds: dict[str, dict[str, float]] = {}
    for dev, _res, kind, s, e, _label in events:
        seconds.setdefault(dev, {})
        seconds[dev][kind] = seconds[dev].get(kind, 0.0) + (e - s)
    totals: dict[str, float] = {}
    for per in seconds.values():
        for kind, v in per.items():
            totals[kind] = totals.get(kind, 0.0) + v
    grand = sum(totals.values())
    kinds = [k for k in KIND_COLOURS if k in totals] + sorted(set(totals) - set(KIND_COLOURS))
    devices = [d for d, _ in sorted(((d, "compute") for d in seconds), key=_lane_key)]

    def num(key: str) -> float:
        v = summary.get(key)
        return float(v) if isinstance(v, int | float) and v is not None else float("nan")

    return CostBreakdownInfo(
        seconds=seconds,
        share={k: (totals[k] / grand if grand > 0 else 0.0) for k in kinds},
        kinds=kinds,
        devices=devices,
        makespan_s=num("makespan_s"),
        energy_J=num("energy_J"),
        energy_j_per_token=num("energy_j_per_token"),
        bytes_moved={str(k): float(v) for k, v in (summary.get("bytes_moved") or {}).items()},
        hit_rate={str(k): float(v) for k, v in (summary.get("hit_rate") or {}).items()},
        title=title,
    )


def plot_cost_breakdown(info: CostBreakdownInfo) -> go.Figure:
    """Stacked bars: busy seconds per device, split by operation kind."""
    fig = go.Figure()
    for kind in info.kinds:
        fig.add_trace(
            go.Bar(
                name=kind,
                x=info.devices,
                y=[info.seconds.get(d, {}).get(kind, 0.0) for d in info.devices],
                marker_color=KIND_COLOURS.get(kind, "#BAB0AC"),
                hovertemplate="%{x}<br>" + kind + ": %{y:.4g} s (" + f"{100 * info.share[kind]:.1f}" + "% of busy time)"
                "<extra></extra>",
            )
        )
    parts = [info.title or "Cost breakdown"]
    if math.isfinite(info.makespan_s):
        parts.append(f"makespan {info.makespan_s:.4g} s")
    if math.isfinite(info.energy_j_per_token):
        parts.append(f"{info.energy_j_per_token:.3g} J/token")
    if info.bytes_moved:
        parts.append(", ".join(f"{k}: {v / 1e9:.3g} GB" for k, v in sorted(info.bytes_moved.items())))
    fig.update_layout(title=" · ".join(parts), barmode="stack", yaxis_title="busy time (s)", legend_title="operation")
    return fig


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a standalone HTML file (plotly.js inline: opens without a network);
    parent folders are created; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(p), include_plotlyjs=True, full_html=True)
    return p
