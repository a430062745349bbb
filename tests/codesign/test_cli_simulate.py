"""``codesign simulate``: JSON keys, summary table, --out files, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codesign.cli import main
from workloads.importers import import_trace
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def trace_npz(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    trace = import_trace("mixtral-jsonl", shared_dir / "traces" / "mixtral-8x7b-instruct")
    assert isinstance(trace, RoutingTrace)
    return trace.save(tmp_path_factory.mktemp("trace") / "mixtral.npz")


BASE = ["simulate", "--model", "mixtral-8x7b", "--platform", "h100-pcie5-host", "--precision", "fp8",
        "--requests", "2", "--prompt-len", "4", "--output-len", "6", "--no-progress"]


def test_json_has_the_issue_keys(trace_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*BASE, "--trace", str(trace_npz), "--hbm-expert-fraction", "0.25", "--cache", "lfu",
               "--prefetch", "pregate", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    for key in ("tpot_p50_s", "tpot_p99_s", "ttft_p50_s", "throughput_tok_s", "hit_rate", "bytes_moved",
                "energy_j_per_token", "config_hash"):
        assert key in data, key
    assert set(data["hit_rate"]) == {"hbm"} and data["bytes_moved"]["pcie-gen5-x16"] > 0
    assert data["n_requests"] == 2 and data["output_tokens"] == 12


def test_table_and_out_dir(trace_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    rc = main([*BASE, "--trace", str(trace_npz), "--hbm-expert-fraction", "0.25", "--miss", "cost",
               "--out", str(out_dir)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "TPOT p50" in text and "hit rate hbm" in text and "bytes over pcie-gen5-x16" in text
    names = {p.name for p in out_dir.iterdir()}
    assert {"requests.csv", "steps.csv", "summary.json", "config.json", "events.csv", "timeline.html",
            "cost_breakdown.html"} <= names
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["config"]["mapping"]["miss"] == "cost"
    assert "<html" in (out_dir / "timeline.html").read_text()[:2000].lower()


def test_process_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.defaults import default_process

    proc = default_process("mixtral-8x7b").save(tmp_path / "proc.json")
    rc = main([*BASE, "--process", str(proc), "--rate", "5", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["n_requests"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--cache", "arc"], "unknown cache policy 'arc'; valid:"),
    (["--hbm-expert-fraction", "1.5"], "expert_fraction must be in [0, 1]"),
    (["--hbm-expert-fraction", "1.0", "--precision", "bf16"], "mapping does not fit device 0"),
    (["--platform", "tpu"], "unknown platform"),
])
def test_clean_errors(trace_npz: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    rc = main([*BASE, "--trace", str(trace_npz), *extra])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_policy_options(trace_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*BASE, "--trace", str(trace_npz), "--hbm-expert-fraction", "0.25", "--cache-option", "per_layer=true",
               "--prefetch", "pregate", "--prefetch-option", "accuracy=0.5", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cache_slots"] == 64
    rc = main([*BASE, "--trace", str(trace_npz), "--cache-option", "per_layer"])
    assert rc == 1 and "--cache-option expects KEY=VALUE" in capsys.readouterr().err


def test_near_tier_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.defaults import default_process

    proc = default_process("deepseek-v2-lite").save(tmp_path / "ds.json")
    args = ["simulate", "--model", "deepseek-v2-lite", "--platform", "sn40l-node", "--devices", "1", "--process",
            str(proc), "--requests", "1", "--batch", "1", "--prompt-len", "2", "--output-len", "8", "--no-progress"]
    assert main([*args, "--near-tier", "sram", "--near-experts", "24", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["hit_rate"]) == {"hbm", "sram"} and "sn40l:hbm->sram" in data["bytes_moved"]
    assert main([*args, "--near-tier", "sram"]) == 1
    assert "--near-tier needs --near-experts" in capsys.readouterr().err


def test_missing_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*BASE, "--trace", str(tmp_path / "nope.npz")])
    assert rc == 1 and "nope.npz" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [[], ["--process", "default"], ["--process", "default:mixtral-8x7b"]])
def test_embedded_default_workload(spec: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Without --trace the embedded default workload of the model drives the run (no ../shared needed)."""
    rc = main([*BASE, *spec, "--hbm-expert-fraction", "0.25", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert data["n_requests"] == 2 and 0.0 <= data["hit_rate"]["hbm"] < 1.0


def test_unknown_default_model_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*BASE, "--process", "default:no-such-model"])
    assert rc == 1
    assert "no-such-model" in capsys.readouterr().err
