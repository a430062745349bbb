"""Result: summary figures from hand-made records, strict JSON, files written by save()."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codesign.result import REQUEST_COLUMNS, STEP_COLUMNS, Event, Result, summarize


def _records() -> tuple[pd.DataFrame, pd.DataFrame]:
    req = pd.DataFrame(
        [
            (0, 0.0, 0.0, 1.0, 3.0, 10, 3, 1.0, 1.0, 3.0, 0),
            (1, 1.0, 1.0, 2.0, 4.0, 10, 1, 1.0, float("nan"), 3.0, 0),
            (2, 2.0, 2.0, 5.0, 9.0, 10, 5, 3.0, 1.0, 7.0, 0),
        ],
        columns=list(REQUEST_COLUMNS),
    )
    steps = pd.DataFrame(
        [
            # step, start, end, duration, n_req, prefill, decode, needed, hits, misses, fetched, cpu, streamed,
            # prefetched, prefetch_late, prefetch_on_time, prefetch_wasted, bytes_host, bytes_peer, cross, assign, J
            (0, 0.0, 1.0, 1.0, 1, 10, 0, 4, 2, 2, 2, 0, 0, 4, 0, 0, 0, 200.0, 0.0, 3, 10, 5.0),
            (1, 1.0, 3.0, 2.0, 2, 10, 1, 4, 2, 0, 0, 0, 0, 0, 2, 1, 1, 0.0, 0.0, 1, 10, 6.0),
        ],
        columns=list(STEP_COLUMNS),
    )
    return req, steps


def test_summary_figures() -> None:
    req, steps = _records()
    s = summarize(
        req,
        steps,
        makespan_s=9.0,
        hit_rate={"hbm": 0.75},
        bytes_moved={"pcie": 200.0},
        peak_memory_bytes={"hbm": 1e9},
        energy_J=18.0,
        cost_per_hour_usd=3.6,
        mean_requests_in_system=13.0 / 9.0,
    )
    assert s["output_tokens"] == 9
    assert s["throughput_tok_s"] == pytest.approx(1.0)
    assert s["ttft_p50_s"] == pytest.approx(1.0)
    assert s["ttft_p99_s"] == pytest.approx(np.percentile([1, 1, 3], 99))
    assert s["tpot_mean_s"] == pytest.approx(1.0)  # NaN (1-token request) ignored
    assert s["latency_p90_s"] == pytest.approx(np.percentile([3, 3, 7], 90))
    assert s["energy_j_per_token"] == pytest.approx(2.0)
    # 3.6 $/h over 9 s = 0.009 $ for 9 tokens -> 1000 $ per million tokens
    assert s["cost_per_million_tokens_usd"] == pytest.approx(1000.0)
    assert s["cross_device_share"] == pytest.approx(4 / 20)
    assert s["hit_rate"] == {"hbm": 0.75} and s["bytes_moved"] == {"pcie": 200.0}
    assert s["step_mean_s"] == pytest.approx(1.5)
    # 4 prefetches: 1 on time, 2 late, 1 evicted unused, none left over; late ones are not hits
    assert s["prefetch"] == {"issued": 4.0, "on_time": 1.0, "late": 2.0, "wasted": 1.0, "unused_at_end": 0.0}
    assert s["late_prefetch_share"] == pytest.approx(2 / 8)


def test_empty_records_give_nan_not_crash() -> None:
    s = summarize(
        pd.DataFrame(columns=list(REQUEST_COLUMNS)),
        pd.DataFrame(columns=list(STEP_COLUMNS)),
        makespan_s=0.0,
        hit_rate={},
        bytes_moved={},
        peak_memory_bytes={},
        energy_J=0.0,
        cost_per_hour_usd=1.0,
        mean_requests_in_system=0.0,
    )
    assert math.isnan(s["tpot_p50_s"]) and math.isnan(s["throughput_tok_s"])


def test_json_and_save(tmp_path: Path) -> None:
    req, steps = _records()
    s = summarize(
        req,
        steps,
        makespan_s=9.0,
        hit_rate={"hbm": 0.75},
        bytes_moved={},
        peak_memory_bytes={},
        energy_J=1.0,
        cost_per_hour_usd=0.0,
        mean_requests_in_system=1.0,
    )
    s["weird"] = float("nan")
    ev = [Event("0:h100", "compute", "attention", 0.0, 0.5, "L0")]
    r = Result(requests=req, steps=steps, summary=s, config={"seed": 1}, config_hash="abc", events=ev)
    data = json.loads(r.to_json())  # strict: NaN became null
    assert data["summary"]["weird"] is None and data["config_hash"] == "abc"
    assert r["throughput_tok_s"] == pytest.approx(1.0)
    paths = r.save(tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == [
        "config.json",
        "events.csv",
        "requests.csv",
        "steps.csv",
        "summary.json",
    ]
    back = pd.read_csv(paths["requests"])
    assert list(back.columns) == list(REQUEST_COLUMNS) and len(back) == 3
    assert json.loads(paths["summary"].read_text())["config_hash"] == "abc"
    assert r.events_frame().iloc[0]["kind"] == "attention"
    r.events = None
    assert "events" not in r.save(tmp_path / "noev")
