"""Views: the figure data (timeline and cost breakdown) of real simulator runs; the HTML files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from codesign.mapping import CacheSpec, Mapping
from codesign.result import Event, Result
from codesign.simulate import simulate
from codesign.views import (
    cost_breakdown_info,
    pack_events,
    plot_cost_breakdown,
    plot_timeline,
    plot_utilisation,
    timeline_info,
    unpack_events,
    utilisation_info,
    write_html,
    write_timeline_html,
)
from hwmodels import CostModel, get_platform
from tests.codesign.sim_helpers import rows_stream
from workloads import RoutingTrace, get_model
from workloads.importers import import_trace


@pytest.fixture(scope="module")
def offload_result(shared_dir: Path) -> Result:
    t = import_trace("mixtral-jsonl", shared_dir / "traces" / "mixtral-8x7b-instruct")
    assert isinstance(t, RoutingTrace)
    rows = [t.select_requests([i]).experts[:12] for i in range(2)]
    model = get_model("mixtral-8x7b")
    platform = get_platform("h100-pcie5-host")
    m = Mapping(n_devices=1, cache=CacheSpec(policy="lru", expert_fraction=0.25))
    return simulate(
        model, platform, rows_stream(rows, 4), m, cost_model=CostModel(platform), train=t, record_events=True
    )


@pytest.fixture(scope="module")
def ep_result(shared_dir: Path) -> Result:
    t = import_trace("deepseek-csv", shared_dir / "traces" / "deepseek-v2-lite")
    assert isinstance(t, RoutingTrace)
    rows = [r for r in (t.select_requests([i]).experts[:10] for i in np.unique(t.request)[:12]) if r.shape[0] == 10][:4]
    model = get_model("deepseek-v2-lite")
    platform = get_platform("dgx-h100")
    return simulate(
        model, platform, rows_stream(rows, 4), Mapping(), cost_model=CostModel(platform), record_events=True
    )


def test_timeline_data_of_an_offload_run(offload_result: Result) -> None:
    info = timeline_info(offload_result)
    events = offload_result.events
    assert events is not None and info.n_events == len(events) and not info.truncated
    assert info.lanes == ["0:h100-sxm / compute", "0:h100-sxm / copy"]
    assert {"attention", "router", "fetch"} <= set(info.kinds)
    assert info.kinds.index("attention") < info.kinds.index("fetch")  # fixed legend order
    # every bar lies in the window, and busy time per lane never exceeds the window
    assert all(info.t0_s <= b["start_s"] <= b["end_s"] <= info.t1_s for b in info.bars)
    for lane, busy in info.busy_s.items():
        assert 0 < busy <= info.t1_s - info.t0_s + 1e-12, lane
    # the copy engine is busy for exactly the fetches it made: bytes / per-expert transfer
    fetch_s = sum(b["duration_s"] for b in info.bars if b["kind"] in ("fetch", "prefetch"))
    assert info.busy_s["0:h100-sxm / copy"] == pytest.approx(fetch_s)
    n_fetched = int(offload_result.steps["fetched"].sum() + offload_result.steps["prefetched"].sum())
    assert sum(1 for b in info.bars if b["kind"] == "fetch") == n_fetched
    # the compute lane never overlaps itself (one stream): busy equals the sum of its bars
    comp = [b for b in info.bars if b["lane"].endswith("compute")]
    assert info.busy_s["0:h100-sxm / compute"] == pytest.approx(sum(b["duration_s"] for b in comp))
    fig = plot_timeline(info)
    assert len(fig.data) == len(info.kinds)


def test_timeline_window_and_truncation(offload_result: Result) -> None:
    full = timeline_info(offload_result)
    mid = (full.t0_s + full.t1_s) / 2
    half = timeline_info(offload_result, end_s=mid)
    assert half.t1_s == mid and half.n_events < full.n_events
    assert all(b["end_s"] <= mid for b in half.bars)
    one = timeline_info(offload_result, steps=(1, 1))
    step1 = offload_result.steps.iloc[1]
    assert one.t0_s == step1["start_s"] and one.t1_s == step1["end_s"] and 0 < one.n_events < full.n_events
    with pytest.raises(ValueError, match="outside"):
        timeline_info(offload_result, steps=(0, 10_000))
    small = timeline_info(offload_result, max_events=5)
    assert small.truncated and len(small.bars) == 5
    with pytest.raises(ValueError, match="before start_s"):
        timeline_info(offload_result, start_s=1.0, end_s=0.5)


def test_ep_run_has_all_to_all_on_every_device(ep_result: Result) -> None:
    info = timeline_info(ep_result)
    peer_lanes = [lane for lane in info.lanes if lane.endswith("peer_link")]
    assert "all_to_all" in info.kinds
    assert len(peer_lanes) == 8
    cb = cost_breakdown_info(ep_result)
    assert len(cb.devices) == 8 and cb.devices[0].startswith("0:")
    assert cb.seconds[cb.devices[0]]["all_to_all"] > 0
    assert sum(cb.share.values()) == pytest.approx(1.0)


def test_cost_breakdown_matches_events_and_summary(offload_result: Result) -> None:
    cb = cost_breakdown_info(offload_result, title="Mixtral offload")
    ev = offload_result.events_frame()
    for kind in cb.kinds:
        assert sum(per.get(kind, 0.0) for per in cb.seconds.values()) == pytest.approx(
            float((ev.end_s - ev.start_s)[ev.kind == kind].sum())
        )
    assert cb.makespan_s == pytest.approx(offload_result["makespan_s"])
    assert cb.bytes_moved == pytest.approx(offload_result["bytes_moved"])
    assert cb.energy_j_per_token > 0
    # offloading Mixtral to host memory over PCIe: fetching dominates the busy time
    assert cb.share["fetch"] == max(cb.share.values())
    fig = plot_cost_breakdown(cb)
    assert len(fig.data) == len(cb.kinds)


def test_errors_and_html(tmp_path: Path, offload_result: Result) -> None:
    with pytest.raises(ValueError, match="record_events=True"):
        timeline_info(
            Result(
                requests=offload_result.requests,
                steps=offload_result.steps,
                summary=offload_result.summary,
                config={},
                config_hash="x",
                events=None,
            )
        )
    with pytest.raises(ValueError, match="end_s >= start_s"):
        timeline_info([Event("0:x", "compute", "attention", 2.0, 1.0, "bad")])
    with pytest.raises(ValueError, match="fields"):
        timeline_info([("0:x", "compute", 1.0)])
    info = timeline_info(
        [
            Event("0:x", "compute", "attention", 0.0, 1.0, "a"),
            Event("0:x", "compute", "attention", 0.5, 1.5, "b"),
            Event("host", "cpu", "cpu_expert", 0.2, 0.4, "c"),
        ]
    )
    assert info.busy_s == {"0:x / compute": pytest.approx(1.5), "host / cpu": pytest.approx(0.2)}
    assert info.lanes == ["0:x / compute", "host / cpu"]
    path = write_html(plot_timeline(timeline_info(offload_result)), tmp_path / "sub" / "timeline.html")
    text = path.read_text()
    assert "<html>" in text[:200] and "plotly" in text and len(text) > 1_000_000  # plotly.js inline


# ------------------------------------------------------------------------ aggregated timeline
def test_utilisation_by_hand_and_the_parallel_note() -> None:
    evs = [
        Event("0:x", "compute", "attention", 0.0, 1.0, "a"),
        Event("0:x", "compute", "experts", 0.5, 1.5, "b"),  # overlaps the first: merged
        Event("0:x", "copy", "fetch", 0.2, 0.4, "c"),
    ]
    info = utilisation_info(evs, bins=4, start_s=0.0, end_s=2.0)
    assert info.lanes == ["0:x / compute", "0:x / copy"]
    assert info.edges_s == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert info.utilisation[0] == pytest.approx([1.0, 1.0, 1.0, 0.0])
    assert info.utilisation[1] == pytest.approx([0.4, 0.0, 0.0, 0.0])
    assert info.dominant[0] == ["attention", "attention", "experts", ""]
    assert info.busy_s == pytest.approx({"0:x / compute": 1.5, "0:x / copy": 0.2})
    assert info.stacked_busy_s == pytest.approx(1.7) and info.parallel_note == ""
    both = utilisation_info([*evs, Event("host", "cpu", "cpu_expert", 0.0, 2.0, "d")], bins=4)
    assert both.stacked_busy_s == pytest.approx(3.7)
    assert "exceeds" in both.parallel_note and "parallel" in both.parallel_note and "3 lanes" in both.parallel_note
    with pytest.raises(ValueError, match="bins"):
        utilisation_info(evs, bins=0)


def test_utilisation_of_a_real_run_adds_up(offload_result: Result) -> None:
    info = utilisation_info(offload_result, bins=97)
    window = info.t1_s - info.t0_s
    width = window / 97
    gantt = timeline_info(offload_result)
    for lane, row in zip(info.lanes, info.utilisation, strict=True):
        assert all(0.0 <= u <= 1.0 for u in row)
        assert sum(row) * width == pytest.approx(info.busy_s[lane], rel=1e-9)
        assert info.busy_s[lane] == pytest.approx(gantt.busy_s[lane]) and info.busy_s[lane] <= window
    makespan = offload_result["makespan_s"]
    assert info.t1_s <= makespan + 1e-12
    assert (info.stacked_busy_s > window) == bool(info.parallel_note)
    fig = plot_utilisation(info)
    assert len(fig.data) == 1 + len(info.kinds) and len(fig.data[0].z) == len(info.lanes)


def test_pack_events_round_trip(offload_result: Result) -> None:
    info = utilisation_info(offload_result)
    packed = pack_events(offload_result, info.lanes, info.kinds)
    back = unpack_events(packed)
    orig = sorted(((f"{e[0]} / {e[1]}", e[2], e[3], e[4]) for e in offload_result.events or []), key=lambda r: r[2:])
    assert packed["n"] == len(orig) == len(back)
    tol = packed["tick_s"] + 1e-12  # start and duration each rounded to the tick
    for (la, ka, sa, ea), (lb, kb, sb, eb) in zip(orig, back, strict=True):
        assert la == lb and ka == kb and abs(sa - sb) <= tol and abs(ea - eb) <= tol
    assert pack_events(offload_result, info.lanes, info.kinds) == packed  # same run, same bytes


def _long_run(n: int, seed: int = 0) -> list[Event]:
    """A synthetic event log shaped like an 8-device run (compute, copies and all-to-all per
    step), ``n`` events: what a long run would record without simulating one."""
    rng = np.random.default_rng(seed)
    evs: list[Event] = []
    t = 0.0
    kinds = ("attention", "router", "experts", "shared")
    while len(evs) < n:
        for d in range(8):
            dur = float(rng.uniform(2e-5, 3e-4))
            evs.append(Event(f"{d}:h100-sxm", "compute", kinds[int(rng.integers(4))], t, t + dur, "L3"))
            if rng.random() < 0.3:
                evs.append(Event(f"{d}:h100-sxm", "copy", "fetch", t + dur / 2, t + 3 * dur, "e5"))
            if rng.random() < 0.2:
                evs.append(Event(f"{d}:h100-sxm", "peer_link", "all_to_all", t + dur, t + 1.2 * dur, "a2a"))
        t += 3e-4
    return evs[:n]


def test_timeline_of_a_100k_event_run_stays_small(tmp_path: Path) -> None:
    evs = _long_run(100_000)
    path = write_timeline_html(evs, tmp_path / "run" / "timeline.html", plotlyjs="directory")
    assert (tmp_path / "run" / "plotly.min.js").is_file()
    size = path.stat().st_size
    assert size < 1_000_000, size  # aggregated utilisation + every event packed, plotly.js beside it
    text = path.read_text()
    packed = json.loads(re.search(r'id="timeline-events">(.*?)</script>', text, re.S).group(1))  # type: ignore[union-attr]
    assert packed["n"] == 100_000
    cb = write_html(plot_cost_breakdown(cost_breakdown_info(evs)), tmp_path / "run" / "cost.html", plotlyjs="directory")
    assert cb.stat().st_size < 100_000
    with pytest.raises(ValueError, match="plotlyjs"):
        write_timeline_html(evs[:10], tmp_path / "x.html", plotlyjs="cdn")
