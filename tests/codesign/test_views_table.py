"""The printed ``simulate`` table: what was simulated, what dominated, and no scientific notation."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pandas as pd

from codesign.cli_simulate import summary_table
from codesign.result import Event
from hwmodels import get_platform

SUMMARY = {
    "n_requests": 12000,
    "output_tokens": 1_536_000.0,
    "n_steps": 250_000,
    "makespan_s": 112.5,
    "ttft_p50_s": 0.000012,
    "ttft_p99_s": 2.59436,
    "tpot_p50_s": 1.2e-5,
    "tpot_p90_s": 0.0421,
    "tpot_p99_s": 31.5,
    "throughput_tok_s": 13653.3,
    "energy_j_per_token": 0.0000071,
    "cost_per_million_tokens_usd": 1234567.0,
    "cross_device_share": 0.0,
    "hit_rate": {"hbm": 0.25},
    "bytes_moved": {"pcie-gen5-x16": 3.2e12},
    "peak_memory_bytes": {"hbm": 7.9e10},
    "assignments_device": 1_500_000.0,
    "assignments_cpu": 500_000.0,
    "device_busy_s": 80.0,
    "host_busy_s": 60.0,
    "train_source": None,
    "config_hash": "abc",
}
CONFIG = {
    "model": {"name": "mixtral-8x7b", "n_experts": 8, "top_k": 2, "n_layers": 32, "bytes_per_weight": 1.0},
    "platform": {"name": "h100-pcie5-host"},
    "mapping": {
        "n_devices": 1,
        "cache": {"policy": "lru", "expert_fraction": 0.25},
        "backing": "host",
        "miss": "cpu",
        "prefetch": "pregate",
        "placement": "round-robin",
        "batching": {"scheduler": "fifo", "max_batch": 64, "max_tokens": 8192},
    },
}


def test_table_says_what_ran_and_what_dominated_in_plain_numbers() -> None:
    requests = pd.DataFrame({"prompt_tokens": [100, 300, 200], "output_tokens": [128, 128, 128]})
    result = SimpleNamespace(config=CONFIG, requests=requests)
    platform = get_platform("h100-pcie5-host")
    text = summary_table(SUMMARY, result, platform)
    assert not re.search(r"\d[eE][+-]?\d", text), text  # no scientific notation anywhere
    rows = {line[:26].strip(): line[27:] for line in text.splitlines()}
    assert rows["model"].startswith("mixtral-8x7b (8 experts, top-2")
    assert rows["precision"].startswith("fp8 (1 B/weight")
    assert rows["platform"] == "h100-pcie5-host x 1"
    assert rows["prompt tokens / request"] == "100-300 (mean 200.0)" and rows["output tokens / request"] == "128"
    assert rows["batch"] == "up to 64 requests, 8,192 tokens/step (fifo)"
    assert rows["expert cache"] == "lru, 25% of experts resident (backing host)"
    assert "miss cpu" in rows["policies"] and "prefetch pregate" in rows["policies"]
    assert rows["requests"] == "12,000" and rows["simulator steps"] == "250,000"
    assert rows["TTFT p50"] == "0.012 ms" and rows["TPOT p50"] == "0.012 ms"
    assert rows["TPOT p99"] == "31,500 ms" and rows["TPOT p90"] == "42.10 ms" and rows["TTFT p99"] == "2,594 ms"
    assert rows["cost per 1M tokens"] == "1,234,567 USD"
    assert rows["experts computed on CPU"] == "25.0 % (500,000 of 2,000,000 token-expert assignments)"
    pcie_s = 3.2e12 / platform.host_link.bandwidth_Bps  # type: ignore[union-attr]
    assert rows["PCIe busy >= bytes/peak"].startswith(f"{pcie_s:.2f} s (")  # no event log: a lower bound
    assert rows["host CPU busy"] == "60.00 s (53.3 % of makespan)"
    assert rows["dominated by"].startswith("busiest accelerator (80.00 s")
    # accelerator + host + PCIe exceed the makespan: the table says why
    assert "run in parallel" in text and "more than the makespan" in text
    # with an event log, the busiest copy engine's merged busy time instead
    events = [
        Event("0:h100-sxm", "copy", "fetch", 0.0, 40.0, "e1"),
        Event("0:h100-sxm", "copy", "prefetch", 30.0, 70.0, "e2"),  # overlaps: merged to 70 s
        Event("0:h100-sxm", "compute", "experts", 0.0, 80.0, "x"),
    ]
    text = summary_table(SUMMARY, SimpleNamespace(config=CONFIG, requests=requests, events=events), platform)
    rows = {line[:26].strip(): line[27:] for line in text.splitlines()}
    assert rows["PCIe busy (copy engine)"] == "70.00 s (62.2 % of makespan)"


def test_table_without_the_run_details_still_reads() -> None:
    text = summary_table({"n_requests": 0, "makespan_s": float("nan"), "tpot_p50_s": None, "config_hash": "x"})
    rows = {line[:26].strip(): line[27:] for line in text.splitlines()}
    assert rows["requests"] == "0" and rows["makespan"] == "-" and rows["TPOT p50"] == "-"
    assert "model" not in rows and "parallel" not in text
