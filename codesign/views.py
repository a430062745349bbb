"""Plotly views of a simulation: a timeline (Gantt) and a cost breakdown, as standalone HTML.

Figure data first, drawing second (STYLE item 14): `timeline_info` and `cost_breakdown_info`
compute what to draw from a `codesign.result.Result` (its event log and summary) and are tested;
`plot_timeline` and `plot_cost_breakdown` only draw; `write_html` writes a self-contained file
(plotly.js inline, opens offline).

A long run's timeline is aggregated (`utilisation_info`, `write_timeline_html`): per lane, the
share of each time bin the lane was busy (overlaps on a lane merged), drawn as a heatmap; the
page also carries every event, packed (gzip, base64: ~2-4 bytes an event), and on zoom it
redraws the utilisation of the visible window from them, or, once the window holds at most
`DETAIL_EVENTS` events, the events themselves as Gantt bars. Busy time is per lane; lanes run in
parallel (devices, copy engines, links, the host), so busy time summed over lanes can exceed the
makespan: the figures say so when it does.

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
    "DETAIL_EVENTS",
    "KIND_COLOURS",
    "CostBreakdownInfo",
    "TimelineInfo",
    "UtilisationInfo",
    "cost_breakdown_info",
    "pack_events",
    "plot_cost_breakdown",
    "plot_timeline",
    "plot_utilisation",
    "timeline_fragment",
    "timeline_info",
    "unpack_events",
    "utilisation_info",
    "write_html",
    "write_timeline_html",
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


class _Checked(list[tuple[str, str, str, float, float, str]]):
    """Event tuples already validated by `_events_of` (not validated again)."""


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


def write_html(fig: go.Figure, path: str | Path, *, plotlyjs: str = "inline") -> Path:
    """Write ``fig`` as an HTML file that opens without a network; parent folders are created;
    returns the path. ``plotlyjs``: ``"inline"`` (standalone, +4.8 MB) or ``"directory"``
    (``plotly.min.js`` written once beside it and shared by the views in that folder)."""
    if plotlyjs not in ("inline", "directory"):
        raise ValueError(f"plotlyjs must be 'inline' or 'directory', got {plotlyjs!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(p), include_plotlyjs=True if plotlyjs == "inline" else "directory", full_html=True)
    return p


# ------------------------------------------------------------------- aggregated timeline (long runs)
#: On zoom, the page draws the events themselves once the visible window holds at most this many.
DETAIL_EVENTS = 3000


@dataclass(frozen=True)
class UtilisationInfo:
    """Per-lane utilisation over time (what the aggregated timeline draws first).

    ``lanes``: as in `TimelineInfo`; ``edges_s``: ``bins + 1`` bin edges over ``[t0_s, t1_s]``;
    ``utilisation[lane][bin]``: share of the bin the lane was busy (its overlapping events merged,
    so in [0, 1]); ``dominant[lane][bin]``: the kind with the most busy time in the bin ("" when
    idle); ``busy_s``: lane -> merged busy seconds in the window; ``stacked_busy_s``: their sum;
    ``parallel_note``: why that sum exceeds the window when it does (lanes run in parallel), else
    ""; ``kinds``: kinds present; ``n_events``: events in the window.
    """

    lanes: list[str]
    edges_s: list[float]
    utilisation: list[list[float]]
    dominant: list[list[str]]
    busy_s: dict[str, float]
    stacked_busy_s: float
    parallel_note: str
    kinds: list[str]
    n_events: int
    t0_s: float
    t1_s: float
    title: str = ""


def _merge_sorted(starts: Any, ends: Any) -> tuple[Any, Any]:
    """Disjoint intervals covering the union of ``[starts, ends)`` (arrays sorted by start)."""
    import numpy as np

    if starts.size == 0:
        return starts, ends
    run_end = np.maximum.accumulate(ends)
    new = np.ones(starts.size, dtype=bool)
    new[1:] = starts[1:] > run_end[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, starts.size - 1)
    return starts[first], run_end[last]


def _busy_until(ms: Any, me: Any, t: Any) -> Any:
    """Busy seconds of disjoint sorted intervals ``[ms, me)`` before each time in ``t``."""
    import numpy as np

    if ms.size == 0:
        return np.zeros_like(t)
    cum = np.concatenate([[0.0], np.cumsum(me - ms)])
    idx = np.searchsorted(ms, t, side="right") - 1
    safe = np.clip(idx, 0, None)
    part = np.clip(t - ms[safe], 0.0, me[safe] - ms[safe])
    return np.where(idx >= 0, cum[safe] + part, 0.0)


def utilisation_info(
    result: Any, *, bins: int = 400, start_s: float | None = None, end_s: float | None = None, title: str = ""
) -> UtilisationInfo:
    """Utilisation of each lane in ``bins`` equal bins over ``[start_s, end_s]`` (default: the
    whole run) from ``result``'s events (a `Result` or event records). Exact: the busy seconds of
    a lane's bins add up to its merged busy time in the window."""
    import numpy as np

    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    events = result if isinstance(result, _Checked) else _events_of(result)
    lo = min((e[3] for e in events), default=0.0) if start_s is None else float(start_s)
    hi = max((e[4] for e in events), default=0.0) if end_s is None else float(end_s)
    if hi < lo:
        raise ValueError(f"end_s={hi} is before start_s={lo}")
    width = hi - lo
    edges = np.linspace(lo, hi, bins + 1) if width > 0 else np.full(bins + 1, lo)
    inside = [e for e in events if e[4] > lo and e[3] < hi]
    by_lane: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for dev, res, kind, s, e, _label in inside:
        by_lane.setdefault((dev, res), []).append((max(s, lo), min(e, hi), kind))
    lane_keys = sorted(by_lane, key=_lane_key)
    present = {k for v in by_lane.values() for _, _, k in v}
    kinds = [k for k in KIND_COLOURS if k in present] + sorted(present - set(KIND_COLOURS))
    util: list[list[float]] = []
    dominant: list[list[str]] = []
    busy: dict[str, float] = {}
    bin_w = width / bins if width > 0 else 1.0
    kind_ix = {k: i for i, k in enumerate(kinds)}
    for key in lane_keys:
        arr = by_lane[key]
        st = np.array([a[0] for a in arr])
        en = np.array([a[1] for a in arr])
        kd = np.array([kind_ix[a[2]] for a in arr], dtype=np.int64)
        order = np.lexsort((en, st))
        st, en, kd = st[order], en[order], kd[order]
        ms, me = _merge_sorted(st, en)
        b = np.diff(_busy_until(ms, me, edges))
        util.append([float(x) for x in np.clip(b / bin_w, 0.0, 1.0)])
        busy[f"{key[0]} / {key[1]}"] = float(np.sum(me - ms))
        per_kind = np.zeros((len(kinds), bins))
        for ki in np.unique(kd):
            sel = kd == ki
            ks, ke = _merge_sorted(st[sel], en[sel])
            per_kind[ki] = np.diff(_busy_until(ks, ke, edges))
        top = per_kind.argmax(axis=0)
        dominant.append([kinds[int(t)] if per_kind[int(t), j] > 0 else "" for j, t in enumerate(top)])
    stacked = float(sum(busy.values()))
    note = ""
    if stacked > width * (1 + 1e-9) and width > 0:
        note = (
            f"busy time summed over the {len(lane_keys)} lanes ({stacked:.6g} s) exceeds the "
            f"{width:.6g} s window because the lanes run in parallel; each lane's own busy time is at "
            "most the window"
        )
    return UtilisationInfo(
        lanes=[f"{d} / {r}" for d, r in lane_keys],
        edges_s=[float(x) for x in edges],
        utilisation=util,
        dominant=dominant,
        busy_s=busy,
        stacked_busy_s=stacked,
        parallel_note=note,
        kinds=kinds,
        n_events=len(inside),
        t0_s=lo,
        t1_s=hi,
        title=title,
    )


def pack_events(result: Any, lanes: Sequence[str], kinds: Sequence[str]) -> dict[str, Any]:
    """The events of ``result`` on ``lanes`` packed for the page: sorted by start, times quantised
    to ``tick_s`` (the run's span / 2^32, at least 1 ns), as little-endian arrays ``start deltas
    (uint32 ticks) | durations (uint32 ticks) | lane index (uint8) | kind index (uint8)``, gzipped
    (mtime 0: the same run gives the same bytes) and base64-encoded. Returns ``{"n", "t0_s",
    "tick_s", "lanes", "kinds", "data"}``. At most 255 lanes and 255 kinds."""
    import base64
    import gzip

    import numpy as np

    if len(lanes) > 255 or len(kinds) > 255:
        raise ValueError(f"pack_events: {len(lanes)} lanes and {len(kinds)} kinds; at most 255 of each")
    lane_ix = {lane: i for i, lane in enumerate(lanes)}
    kind_ix = {k: i for i, k in enumerate(kinds)}
    evs = sorted(
        (
            e
            for e in (result if isinstance(result, _Checked) else _events_of(result))
            if f"{e[0]} / {e[1]}" in lane_ix and e[2] in kind_ix
        ),
        key=lambda e: (e[3], e[4]),
    )
    t0 = evs[0][3] if evs else 0.0
    span = max((e[4] for e in evs), default=t0) - t0
    tick = max(span / (2**32 - 1), 1e-9)
    st = np.rint((np.array([e[3] for e in evs], dtype=float) - t0) / tick).astype(np.int64)
    du = np.rint((np.array([e[4] - e[3] for e in evs], dtype=float)) / tick).astype(np.int64)
    deltas = np.diff(st, prepend=0)
    raw = b"".join(
        [
            deltas.astype("<u4").tobytes(),
            np.clip(du, 0, 2**32 - 1).astype("<u4").tobytes(),
            np.array([lane_ix[f"{e[0]} / {e[1]}"] for e in evs], dtype=np.uint8).tobytes(),
            np.array([kind_ix[e[2]] for e in evs], dtype=np.uint8).tobytes(),
        ]
    )
    return {
        "n": len(evs),
        "t0_s": t0,
        "tick_s": tick,
        "lanes": list(lanes),
        "kinds": list(kinds),
        "data": base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii"),
    }


def unpack_events(packed: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """Inverse of `pack_events` (what the page's script does): ``(lane, kind, start_s, end_s)``
    in start order, times within one ``tick_s`` of the originals."""
    import base64
    import gzip

    import numpy as np

    n = int(packed["n"])
    raw = gzip.decompress(base64.b64decode(packed["data"]))
    st = np.cumsum(np.frombuffer(raw, dtype="<u4", count=n, offset=0).astype(np.int64))
    du = np.frombuffer(raw, dtype="<u4", count=n, offset=4 * n).astype(np.int64)
    ln = np.frombuffer(raw, dtype=np.uint8, count=n, offset=8 * n)
    kd = np.frombuffer(raw, dtype=np.uint8, count=n, offset=9 * n)
    t0, tick = float(packed["t0_s"]), float(packed["tick_s"])
    return [
        (packed["lanes"][int(lane)], packed["kinds"][int(k)], t0 + s * tick, t0 + (s + d) * tick)
        for s, d, lane, k in zip(st, du, ln, kd, strict=True)
    ]


def plot_utilisation(info: UtilisationInfo) -> go.Figure:
    """Heatmap of utilisation (%) per lane over time (ms), the dominant kind on hover; plus one
    empty horizontal-bar trace per kind that the page fills with events on zoom."""
    centres = [(a + b) / 2 * 1e3 for a, b in zip(info.edges_s[:-1], info.edges_s[1:], strict=True)]
    fig = go.Figure(
        go.Heatmap(
            name="utilisation",
            x=centres,
            y=info.lanes,
            z=[[round(100 * u, 2) for u in row] for row in info.utilisation],
            customdata=info.dominant,
            zmin=0,
            zmax=100,
            colorscale="Blues",
            colorbar={"title": "busy %"},
            hovertemplate="%{y}<br>%{x:.3f} ms: busy %{z:.1f}% (mostly %{customdata})<extra></extra>",
        )
    )
    for kind in info.kinds:
        fig.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[],
                x=[],
                base=[],
                marker_color=KIND_COLOURS.get(kind, "#BAB0AC"),
                hovertemplate="%{y}<br>" + kind + " %{base:.4f} ms + %{x:.4f} ms<extra></extra>",
            )
        )
    window = info.t1_s - info.t0_s
    ticks = [f"{lane} ({100 * info.busy_s[lane] / window:.0f}% busy)" if window > 0 else lane for lane in info.lanes]
    sub = f"window {window:.6g} s; per lane: its busy share of the window (overlaps on a lane merged)"
    if info.parallel_note:
        sub += "<br>" + info.parallel_note
    fig.update_layout(
        title=f"{info.title or 'Timeline'}: utilisation per resource ({info.n_events} events; zoom in for detail,"
        f" events drawn once at most {DETAIL_EVENTS} are in view)<br><sup>{sub}</sup>",
        xaxis_title="time (ms)",
        barmode="overlay",
        yaxis={
            "categoryorder": "array",
            "categoryarray": list(reversed(info.lanes)),
            "tickvals": info.lanes,
            "ticktext": ticks,
        },
        height=max(360, 40 * len(info.lanes) + 220),
        legend_title="operation",
    )
    return fig


_ZOOM_JS = """
(function(){
var P=JSON.parse(document.getElementById('%(id)s-events').textContent);
var gd=document.getElementById('%(id)s');var E=null;var NB=%(bins)d;var MAXD=0;
function bytes(s){var b=atob(s),a=new Uint8Array(b.length);for(var i=0;i<b.length;i++)a[i]=b.charCodeAt(i);return a;}
async function decode(){var ds=new DecompressionStream('gzip');
 var buf=await new Response(new Blob([bytes(P.data)]).stream().pipeThrough(ds)).arrayBuffer();
 var n=P.n,dv=new DataView(buf),st=new Float64Array(n),en=new Float64Array(n),t=0,ms=P.tick_s*1e3,t0=P.t0_s*1e3;
 for(var i=0;i<n;i++){t+=dv.getUint32(4*i,true);st[i]=t0+t*ms;en[i]=st[i]+dv.getUint32(4*n+4*i,true)*ms;
  if(en[i]-st[i]>MAXD)MAXD=en[i]-st[i];}
 return {n:n,st:st,en:en,ln:new Uint8Array(buf,8*n,n),kd:new Uint8Array(buf,9*n,n)};}
function first(a){var lo=0,hi=E.n;while(lo<hi){var m=(lo+hi)>>1;if(E.st[m]<a)lo=m+1;else hi=m;}return lo;}
function draw(a,b){var i0=first(a-MAXD),i1=first(b),idx=[];
 for(var i=i0;i<i1;i++){if(E.en[i]>a)idx.push(i);}
 var K=P.kinds.length,L=P.lanes.length;
 if(idx.length<=%(detail)d){var ys=[],xs=[],bs=[];for(var k=0;k<K;k++){ys.push([]);xs.push([]);bs.push([]);}
  idx.forEach(function(i){var k=E.kd[i];ys[k].push(P.lanes[E.ln[i]]);bs[k].push(E.st[i]);xs[k].push(E.en[i]-E.st[i]);});
  var tr=[];for(var k=0;k<K;k++)tr.push(k+1);
  Plotly.restyle(gd,{y:ys,x:xs,base:bs},tr);Plotly.restyle(gd,{opacity:0.25},[0]);gd.dataset.view='events:'+idx.length;return;}
 var w=(b-a)/NB,z=[],cd=[],kb=[],cur=[];
 for(var l=0;l<L;l++){z.push(new Array(NB).fill(0));cd.push(new Array(NB).fill(''));cur.push(-Infinity);kb.push([]);
  for(var j=0;j<NB;j++)kb[l].push(new Float64Array(K));}
 idx.forEach(function(i){var l=E.ln[i],s=Math.max(E.st[i],a,cur[l]),e=Math.min(E.en[i],b);
  if(E.en[i]>cur[l])cur[l]=E.en[i];if(e<=s)return;
  for(var j=Math.floor((s-a)/w);j<NB&&a+j*w<e;j++){var o=Math.min(e,a+(j+1)*w)-Math.max(s,a+j*w);
   if(o>0){z[l][j]+=o;kb[l][j][E.kd[i]]+=o;}}});
 var x=[];for(var j=0;j<NB;j++)x.push(a+(j+0.5)*w);
 for(var l=0;l<L;l++)for(var j=0;j<NB;j++){z[l][j]=Math.min(100,100*z[l][j]/w);var best=-1,bv=0;
  for(var k=0;k<K;k++)if(kb[l][j][k]>bv){bv=kb[l][j][k];best=k;}cd[l][j]=best<0?'':P.kinds[best];}
 var empty=[],tr=[];for(var k=0;k<K;k++){empty.push([]);tr.push(k+1);}
 Plotly.restyle(gd,{y:empty,x:empty,base:empty},tr);
 Plotly.restyle(gd,{x:[x],y:[P.lanes],z:[z],customdata:[cd],opacity:1},[0]);gd.dataset.view='bins:'+idx.length;}
decode().then(function(d){E=d;
 var full=[P.t0_s*1e3,(P.t0_s*1e3)+MAXD];for(var i=0;i<E.n;i++)if(E.en[i]>full[1])full[1]=E.en[i];
 gd.on('plotly_relayout',function(r){
  if(r['xaxis.autorange']){draw(full[0],full[1]);return;}
  var a=r['xaxis.range[0]'],b=r['xaxis.range[1]'];if(r['xaxis.range']){a=r['xaxis.range'][0];b=r['xaxis.range'][1];}
  if(a!==undefined&&b!==undefined)draw(+a,+b);});
 var m=/zoom=([0-9.eE+-]+),([0-9.eE+-]+)/.exec(location.hash);
 if(m){Plotly.relayout(gd,{'xaxis.range':[+m[1],+m[2]]});}else{gd.dataset.view='initial';}
});
})();
"""


def timeline_fragment(result: Any, *, div_id: str = "timeline", bins: int = 400, title: str = "") -> str:
    """The aggregated timeline of ``result`` as an HTML fragment for a page that already loads
    plotly.js: the figure's div, the packed events and the zoom script (see `write_timeline_html`)."""
    import json

    import plotly.io as pio

    events = _Checked(_events_of(result))  # validated once for both
    info = utilisation_info(events, bins=bins, title=title)
    packed = pack_events(events, info.lanes, info.kinds)
    div = pio.to_html(
        plot_utilisation(info), full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True}
    )
    data = json.dumps(packed, separators=(",", ":")).replace("</", "<\\/")
    script = _ZOOM_JS % {"id": div_id, "bins": bins, "detail": DETAIL_EVENTS}
    return f'{div}<script type="application/json" id="{div_id}-events">{data}</script><script>{script}</script>'


def write_timeline_html(
    result: Any, path: str | Path, *, bins: int = 400, title: str = "", plotlyjs: str = "inline"
) -> Path:
    """Write the aggregated timeline of ``result`` (see the module doc) and return the path.

    The page opens at the utilisation of the whole run; zooming redraws the visible window from
    the packed events (bins, or the events themselves once at most `DETAIL_EVENTS` are in view);
    a double click goes back. ``#zoom=A,B`` (ms) in the page's address opens it zoomed.
    ``plotlyjs``: ``"inline"`` (the page stands alone, +4.8 MB) or ``"directory"`` (the page
    loads ``plotly.min.js`` from its own folder, written there once, so that several views of one
    run share it)."""
    import html

    from plotly.offline import get_plotlyjs

    if plotlyjs not in ("inline", "directory"):
        raise ValueError(f"plotlyjs must be 'inline' or 'directory', got {plotlyjs!r}")
    body = timeline_fragment(result, bins=bins, title=title)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if plotlyjs == "directory":
        if not (p.parent / "plotly.min.js").is_file():
            (p.parent / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
        head = '<script src="plotly.min.js"></script>'
    else:
        head = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title or 'Timeline')}</title>{head}</head><body>{body}</body></html>"
    )
    p.write_text(page, encoding="utf-8")
    return p
