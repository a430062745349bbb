"""Scenarios 1 and 5 run end to end (reduced sizes) and show the expected orderings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO


def _load(name: str) -> ModuleType:
    path = REPO / "studies" / name / "run.py"
    spec = importlib.util.spec_from_file_location(f"study_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def scenario1(shared_dir: Path) -> dict[str, Any]:
    mod = _load("scenario1_mixtral_offload")
    out: dict[str, Any] = mod.run_scenario(n_requests=4, batch=4, prompt_len=4, output_len=24, shared=shared_dir)
    return out


def test_scenario1_bf16_all_in_hbm_is_refused_with_numbers(scenario1: dict[str, Any]) -> None:
    note = scenario1["setting"]["bf16_all_in_hbm"]
    assert "does not fit" in note and "256 resident experts" in note and "80.00 GB" in note


def test_scenario1_orderings(scenario1: dict[str, Any]) -> None:
    r = scenario1["results"]
    assert set(r) == {
        "all-hbm",
        "quarter-lru",
        "quarter-lru-per-layer",
        "quarter-lfu",
        "quarter-belady",
        "quarter-lru-pregate",
        "quarter-cpu-on-miss",
        "quarter-fiddler-cost",
    }
    hit = {k: v["hit_rate"]["hbm"] for k, v in r.items()}
    tpot = {k: v["tpot_p50_s"] for k, v in r.items()}
    assert hit["all-hbm"] == 1.0 and r["all-hbm"]["bytes_moved"] == {}
    assert all(tpot["all-hbm"] < t for k, t in tpot.items() if k != "all-hbm")
    # Belady bounds the online policies on the same trace and capacity, and is exact here (closed batch)
    assert hit["quarter-belady"] >= max(hit["quarter-lru"], hit["quarter-lfu"], hit["quarter-lru-per-layer"])
    assert r["quarter-belady"]["oracle_exact"] is True
    assert tpot["quarter-belady"] <= min(tpot["quarter-lru"], tpot["quarter-lfu"])
    # pre-gating predicts the misses, but its copies are still in flight when the layer needs them:
    # late prefetches, not hits (the link stays the bottleneck; reviewer defect #4)
    pg = r["quarter-lru-pregate"]
    assert pg["late_prefetch_share"] > 0.5 and pg["prefetch"]["late"] > 0.9 * pg["prefetch"]["issued"]
    assert hit["quarter-lru-pregate"] < hit["quarter-lru"] + 0.05
    assert tpot["quarter-lru-pregate"] <= tpot["quarter-lru"]
    # CPU compute on a miss moves activations, not weights: far fewer bytes, faster at this small batch
    lru_bytes = r["quarter-lru"]["bytes_moved"]["pcie-gen5-x16"]
    assert r["quarter-cpu-on-miss"]["bytes_moved"]["pcie-gen5-x16"] < 1e-3 * lru_bytes
    assert r["quarter-cpu-on-miss"]["assignments_cpu"] > 0
    assert tpot["quarter-cpu-on-miss"] < tpot["quarter-lru"]
    assert tpot["quarter-fiddler-cost"] <= tpot["quarter-lru"]


def test_scenario1_main_writes_summary(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("scenario1_mixtral_offload")
    rc = mod.main(
        [
            "--out",
            str(tmp_path),
            "--requests",
            "2",
            "--batch",
            "2",
            "--prompt-len",
            "2",
            "--output-len",
            "4",
            "--shared",
            str(shared_dir),
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["setting"]["n_requests"] == 2 and len(data["results"]) == 8
    assert "quarter-belady" in capsys.readouterr().out


def test_scenario5_cpu_only(shared_dir: Path) -> None:
    mod = _load("scenario5_cpu_only")
    out = mod.run_scenario(batches=(1, 4), prompt_len=8, output_len=12, shared=shared_dir)
    r = out["results"]
    assert len(r) == 2 * 2 * 3
    for key, s in r.items():
        assert s["tpot_p50_s"] > 0 and s["energy_j_per_token"] > 0, key
    cpu1 = r["mixtral-8x7b/cpu-server/batch1"]
    assert cpu1["bytes_moved"] == {} and cpu1["hit_rate"] == {"ddr": 1.0}
    assert cpu1["peak_memory_bytes"]["ddr"] > 90e9  # BF16 Mixtral lives in the server's DDR
    # DDR-bandwidth-bound decode: the CPU server beats an H100 that streams 3/4 of the experts over PCIe
    assert cpu1["tpot_p50_s"] < r["mixtral-8x7b/h100-offload-lru/batch1"]["tpot_p50_s"]
    # batching amortises weight reads on the CPU too
    olmoe = "olmoe-1b-7b/cpu-server/batch"
    assert r[olmoe + "4"]["throughput_tok_s"] > r[olmoe + "1"]["throughput_tok_s"]
