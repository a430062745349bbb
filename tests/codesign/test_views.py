"""Views: the figure data (timeline and cost breakdown) of real simulator runs; the HTML files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codesign.mapping import CacheSpec, Mapping
from codesign.result import Event, Result
from codesign.simulate import simulate
from codesign.views import (
    cost_breakdown_info,
    plot_cost_breakdown,
    plot_timeline,
    timeline_info,
    write_html,
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
