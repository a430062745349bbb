"""``codesign simulate``: JSON keys, summary table, --out files, clean errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from codesign.cli import main
from workloads.importers import import_trace
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def trace_npz(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    trace = import_trace("mixtral-jsonl", shared_dir / "traces" / "mixtral-8x7b-instruct")
    assert isinstance(trace, RoutingTrace)
    return trace.save(tmp_path_factory.mktemp("trace") / "mixtral.npz")


BASE = [
    "simulate",
    "--model",
    "mixtral-8x7b",
    "--platform",
    "h100-pcie5-host",
    "--precision",
    "fp8",
    "--requests",
    "2",
    "--prompt-len",
    "4",
    "--output-len",
    "6",
    "--no-progress",
]


def test_json_has_the_issue_keys(trace_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            *BASE,
            "--trace",
            str(trace_npz),
            "--hbm-expert-fraction",
            "0.25",
            "--cache",
            "lfu",
            "--prefetch",
            "pregate",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    for key in (
        "tpot_p50_s",
        "tpot_p99_s",
        "ttft_p50_s",
        "throughput_tok_s",
        "hit_rate",
        "bytes_moved",
        "energy_j_per_token",
        "config_hash",
    ):
        assert key in data, key
    assert set(data["hit_rate"]) == {"hbm"} and data["bytes_moved"]["pcie-gen5-x16"] > 0
    assert data["n_requests"] == 2 and data["output_tokens"] == 12


def test_table_and_out_dir(trace_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    rc = main(
        [*BASE, "--trace", str(trace_npz), "--hbm-expert-fraction", "0.25", "--miss", "cost", "--out", str(out_dir)]
    )
    text = capsys.readouterr().out
    assert rc == 0
    assert "TPOT p50" in text and "hit rate hbm" in text and "bytes over pcie-gen5-x16" in text
    names = {p.name for p in out_dir.iterdir()}
    assert {
        "requests.csv",
        "steps.csv",
        "summary.json",
        "config.json",
        "events.csv",
        "timeline.html",
        "cost_breakdown.html",
    } <= names
    cfg = json.loads((out_dir / "config.json").read_text())
    assert cfg["config"]["mapping"]["miss"] == "cost"
    assert "<html" in (out_dir / "timeline.html").read_text()[:2000].lower()


def test_process_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.defaults import default_process

    proc = default_process("mixtral-8x7b").save(tmp_path / "proc.json")
    rc = main([*BASE, "--process", str(proc), "--rate", "5", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["n_requests"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cache", "arc"], "unknown cache policy 'arc'; valid:"),
        (["--hbm-expert-fraction", "1.5"], "--hbm-expert-fraction 1.5: expected a finite number in [0, 1]"),
        (["--hbm-expert-fraction", "1.0", "--precision", "bf16"], "mapping does not fit device 0"),
        (["--platform", "tpu"], "unknown platform"),
    ],
)
def test_clean_errors(trace_npz: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    rc = main([*BASE, "--trace", str(trace_npz), *extra])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_policy_options(trace_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            *BASE,
            "--trace",
            str(trace_npz),
            "--hbm-expert-fraction",
            "0.25",
            "--cache-option",
            "per_layer=true",
            "--prefetch",
            "pregate",
            "--prefetch-option",
            "accuracy=0.5",
            "--json",
        ]
    )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cache_slots"] == 64
    rc = main([*BASE, "--trace", str(trace_npz), "--cache-option", "per_layer"])
    assert rc == 1 and "--cache-option expects KEY=VALUE" in capsys.readouterr().err


def test_near_tier_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.defaults import default_process

    proc = default_process("deepseek-v2-lite").save(tmp_path / "ds.json")
    args = [
        "simulate",
        "--model",
        "deepseek-v2-lite",
        "--platform",
        "sn40l-node",
        "--devices",
        "1",
        "--process",
        str(proc),
        "--requests",
        "1",
        "--batch",
        "1",
        "--prompt-len",
        "2",
        "--output-len",
        "8",
        "--no-progress",
    ]
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


# ------------------------------------------------------------------ training data (defect #2)
DS = [
    "simulate",
    "--model",
    "deepseek-v2-lite",
    "--platform",
    "dgx-h100",
    "--requests",
    "2",
    "--prompt-len",
    "4",
    "--output-len",
    "4",
    "--no-progress",
    "--json",
]


@pytest.mark.parametrize(
    "extra, source",
    [
        (["--placement", "exflow"], "process-sample"),
        (["--prefetch", "affinity"], "process-sample"),
        ([], None),
    ],
)
def test_process_trains_on_a_separate_sample(
    extra: list[str], source: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main([*DS, "--process", "default", *extra])
    data = json.loads(capsys.readouterr().out)
    if source:  # the table says where the training routing came from
        assert main([a for a in DS if a != "--json"] + ["--process", "default", *extra]) == 0
        assert "training routing           process-sample (16 tokens)" in capsys.readouterr().out
    assert rc == 0 and data["n_requests"] == 2 and data["train_requests"] == 0
    assert data["train_source"] == source
    # as many tokens as the run: 2 requests x (4 + 4) rows
    assert data["train_tokens"] == (16 if source else 0)


def test_trace_needs_train_fraction_named(trace_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "simulate",
        "--model",
        "mixtral-8x7b",
        "--platform",
        "dgx-h100",
        "--precision",
        "fp8",
        "--trace",
        str(trace_npz),
        "--requests",
        "4",
        "--prompt-len",
        "4",
        "--output-len",
        "6",
        "--no-progress",
        "--placement",
        "exflow",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "placement 'exflow' needs training routing" in err and "--train-fraction" in err
    assert "train=" not in err and "Traceback" not in err
    assert main([*args, "--train-fraction", "0.5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["train_source"] == "split" and data["train_requests"] == 2 and data["n_requests"] == 2


# ------------------------------------------------------------------ one-line errors naming the flag (defect #7)
def test_unknown_cache_option_lists_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--cache-option", "foo=1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --cache-option foo: cache policy 'lru' has no option 'foo'; valid options: per_layer")
    assert main([*BASE, "--prefetch", "pregate", "--prefetch-option", "bogus=2"]) == 1
    err = capsys.readouterr().err
    assert "--prefetch-option bogus" in err and "accuracy" in err and "depth" in err


def test_negative_seed_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--seed", "-5"]) == 1
    assert "--seed must be a non-negative integer, got -5" in capsys.readouterr().err


def test_process_of_another_model_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workloads.defaults import default_process

    proc = default_process("deepseek-v2-lite").save(tmp_path / "ds_proc.json")
    assert main([*BASE, "--process", str(proc)]) == 1
    err = capsys.readouterr().err
    assert "ds_proc.json" in err and "26 MoE layers x 64 experts, top-6" in err and "32 x 8, top-2" in err
    assert err.count("\n") == 1


def test_out_must_be_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "existing_file"
    existing.write_text("x")
    assert main([*BASE, "--out", str(existing)]) == 1
    err = capsys.readouterr().err
    assert "--out" in err and "must be a directory" in err and "Errno" not in err


# ------------------------------------------------------------------ model files, arrivals, lengths (defect #8)
def test_model_json_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from workloads.model import get_model

    preset = get_model("mixtral-8x7b")
    fields = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset)}
    fields["name"] = "my-mixtral"
    good = tmp_path / "model.json"
    good.write_text(json.dumps(fields))
    args = [a if a != "mixtral-8x7b" else str(good) for a in BASE]
    assert main(args) == 1  # no embedded workload for a user-defined model: named
    assert "--process default: no embedded workload for model 'my-mixtral'" in capsys.readouterr().err
    assert main([*args, "--process", "default:mixtral-8x7b", "--hbm-expert-fraction", "0.25", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_requests"] == 2 and data["output_tokens"] == 12
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**fields, "n_expertz": 8, "colour": "red"}))
    assert main([a if a != "mixtral-8x7b" else str(bad) for a in BASE]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "['colour', 'n_expertz']" in err and "valid fields:" in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**fields, "top_k": "two"}))
    assert main([a if a != "mixtral-8x7b" else str(wrong) for a in BASE]) == 1
    assert "wrong.json: field top_k = 'two': expected int" in capsys.readouterr().err
    attn = tmp_path / "attn.json"
    attn.write_text(json.dumps({**fields, "attention": "mha"}))
    assert main([a if a != "mixtral-8x7b" else str(attn) for a in BASE]) == 1
    assert "attn.json: field attention = 'mha': expected one of ['gqa', 'mla']" in capsys.readouterr().err
    del fields["d_model"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(fields))
    assert main([a if a != "mixtral-8x7b" else str(missing) for a in BASE]) == 1
    assert "missing.json: missing required field(s) ['d_model']" in capsys.readouterr().err


def _stream(argv: list[str]) -> tuple[Any, ...]:
    """The request stream the simulate arguments describe (no run)."""
    import argparse

    from codesign import cli_simulate
    from workloads.model import get_model

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_simulate.register(sub, [])
    args = parser.parse_args(argv)
    return cli_simulate.build_stream(args, get_model(args.model)).requests


def test_arrival_processes(shared_dir: Path) -> None:
    csv = shared_dir / "workloads" / "splitwise_code.csv"
    base = ["simulate", "--model", "mixtral-8x7b", "--platform", "h100-pcie5-host", "--requests", "200"]
    closed = _stream(base)
    assert all(r.arrival_s == 0.0 for r in closed) and {r.prompt_tokens for r in closed} == {64}
    poisson = _stream([*base, "--arrivals", "poisson", "--rate", "10"])
    gaps = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(poisson)]
    assert 0.07 < sum(gaps) / len(gaps) < 0.13
    bursty = _stream([*base, "--arrivals", "bursty", "--rate", "10", "--burstiness", "4"])
    bg = [b.arrival_s - a.arrival_s for a, b in itertools.pairwise(bursty)]
    mean = sum(bg) / len(bg)
    cv = (sum((g - mean) ** 2 for g in bg) / len(bg)) ** 0.5 / mean
    assert cv > 2.0  # far burstier than Poisson (CV 1)
    replay = _stream([*base, "--arrivals", "replay", "--arrival-trace", str(csv), "--time-scale", "0.5"])
    # first rows of splitwise_code.csv: 0.0,4808,10 / 0.052,3180,8 / 0.098189,110,27
    assert [(r.prompt_tokens, r.output_tokens) for r in replay[:3]] == [(4808, 10), (3180, 8), (110, 27)]
    assert replay[1].arrival_s == pytest.approx(0.026)
    short = _stream([*base, "--arrivals", "replay", "--arrival-trace", str(csv), "--prompt-len", "7"])
    assert {r.prompt_tokens for r in short} == {7} and short[0].output_tokens == 10


def test_length_specs(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    csv = shared_dir / "workloads" / "splitwise_code.csv"
    base = ["simulate", "--model", "mixtral-8x7b", "--platform", "h100-pcie5-host", "--requests", "300"]
    uni = _stream([*base, "--prompt-len", "uniform:3:9", "--output-len", "5"])
    assert {r.prompt_tokens for r in uni} == set(range(3, 10)) and {r.output_tokens for r in uni} == {5}
    sw = _stream([*base, "--prompt-len", "splitwise", "--output-len", "splitwise", "--arrival-trace", str(csv)])
    data = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert {r.prompt_tokens for r in sw} <= set(data[:, 1].astype(int).tolist())
    assert {r.output_tokens for r in sw} <= set(data[:, 2].astype(int).tolist())
    assert max(r.prompt_tokens for r in sw) > 1000  # real long prompts, not a default
    for spec, message in (
        ("uniform:9:3", "--prompt-len 'uniform:9:3': expected uniform:A:B"),
        ("0", "--prompt-len '0': expected an integer >= 1"),
        ("lots", "--prompt-len 'lots': expected an integer >= 1, uniform:A:B or splitwise"),
        ("splitwise", "--prompt-len splitwise draws from the lengths of --arrival-trace"),
    ):
        assert main([*base, "--prompt-len", spec, "--no-progress"]) == 1
        assert message in capsys.readouterr().err


def test_arrival_flag_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_csv = tmp_path / "arrivals.csv"
    bad_csv.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,12,3\n0.5,x,4\n")
    for extra, message in (
        (["--arrivals", "poisson"], "--arrivals poisson needs --rate"),
        (["--arrivals", "bursty", "--rate", "2"], "--arrivals bursty needs --burstiness"),
        (["--arrivals", "replay"], "--arrivals replay needs --arrival-trace"),
        (["--rate", "-1"], "--rate must be a finite number of requests per second > 0, got -1.0"),
        (["--arrivals", "bursty", "--rate", "2", "--burstiness", "0"], "--burstiness (coefficient of variation)"),
        (["--rate", "2", "--burstiness", "2"], "--burstiness is only used with --arrivals bursty"),
        (["--model", str(tmp_path / "none.json")], "none.json: no such file"),
        (
            ["--arrivals", "replay", "--arrival-trace", str(bad_csv)],
            "arrivals.csv, line 3: field num_prefill_tokens = 'x' is not a number",
        ),
    ):
        assert main([*BASE, *extra]) == 1
        assert message in capsys.readouterr().err


def test_lengths_clipped_to_kv_capacity(
    shared_dir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Splitwise prompts (up to 7.4k tokens) on a mapping that leaves ~2.5k KV tokens per device."""
    csv = shared_dir / "workloads" / "splitwise_code.csv"
    args = [
        "simulate",
        "--model",
        "mixtral-8x7b",
        "--platform",
        "h100-pcie5-host",
        "--hbm-expert-fraction",
        "0.84",
        "--arrivals",
        "replay",
        "--arrival-trace",
        str(csv),
        "--requests",
        "8",
        "--output-len",
        "4",
        "--no-progress",
        "--json",
    ]
    with caplog.at_level("WARNING"):
        rc = main(args)
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["n_requests"] == 8
    msg = " ".join(r.getMessage() for r in caplog.records)
    # rows 0, 1, 3 and 6 (4808, 3180, 7433, 6985 prompt tokens) exceed the 2559-token KV capacity
    assert "4 of 8 requests exceed the KV capacity of 2559 tokens" in msg
    assert data["prompt_tokens"] == 110 + 34 + 374 + 34 + 4 * (2559 + 1 - 4)


def test_ep_execution_flag(trace_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "simulate",
        "--model",
        "mixtral-8x7b",
        "--platform",
        "dgx-h100",
        "--precision",
        "fp8",
        "--trace",
        str(trace_npz),
        "--requests",
        "2",
        "--prompt-len",
        "4",
        "--output-len",
        "6",
        "--no-progress",
        "--json",
    ]
    outs = {}
    for mode in ("classic", "context-coherent"):
        assert main([*args, "--ep-execution", mode]) == 0
        outs[mode] = json.loads(capsys.readouterr().out)
    assert outs["classic"]["config_hash"] != outs["context-coherent"]["config_hash"]


def test_placement_and_miss_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*DS, "--process", "default", "--devices", "2", "--placement", "exflow"]
    assert main([*args, "--placement-option", "method=sequential"]) == 0
    cfg_seq = json.loads(capsys.readouterr().out)["config_hash"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["config_hash"] != cfg_seq  # the option reaches the mapping
    assert main([*args, "--placement-option", "bogus=1"]) == 1
    err = capsys.readouterr().err
    assert "--placement-option bogus: placement policy 'exflow' has no option 'bogus'" in err
    assert "load_slack, max_sweeps, method, time_limit_s" in err
    assert main([*BASE, "--miss", "cost", "--miss-option", "x=1"]) == 1
    assert "miss policy 'cost' has no option 'x'; valid options: (none)" in capsys.readouterr().err
