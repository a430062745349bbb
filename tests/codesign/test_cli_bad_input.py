"""Bad command-line input: one ``error:`` line naming the flag or file and what was expected, given
before any expensive work starts (the expensive steps are replaced by tripwires that fail the test)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import codesign.cli_checks as checks
import hwmodels.calibrate_run
import workloads.defaults
from codesign.cli import main
from codesign.cli_simulate import check_platform
from workloads.process import RoutingProcess


def _tripwire(what: str) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"expensive work started despite bad input: {what}")

    return fail


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI; it must fail with one ``error:`` line on stderr (returned without the prefix)."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: ") :]


@pytest.fixture
def no_expensive_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deriving a default workload, fitting, sampling, calibrating, importing: all forbidden."""
    monkeypatch.setattr(workloads.defaults, "_derive", _tripwire("deriving a default workload"))
    monkeypatch.setattr("codesign.cli_trace_analysis.default_process", _tripwire("loading a default workload"))
    monkeypatch.setattr(RoutingProcess, "fit", _tripwire("fitting a process"))
    monkeypatch.setattr(RoutingProcess, "sample", _tripwire("sampling"))
    monkeypatch.setattr(hwmodels.calibrate_run, "run_calibration", _tripwire("a calibration sweep"))
    monkeypatch.setattr("codesign.cli_trace_io.import_trace", _tripwire("importing"))
    monkeypatch.setattr(checks, "available_memory_bytes", lambda: 8 * 2**30)  # the same on every machine


@pytest.mark.usefixtures("no_expensive_work")
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--tokens", "10", "--requests", "100"], "--requests 100: expected an integer in [1, 10] (at most --tokens"),
        (["--tokens", "1000", "--requests", "100000000"], "--requests 100000000: expected an integer in [1, 1000]"),
        (["--tokens", "50", "--tokens-per-request", "0"], "--tokens-per-request 0: expected an integer in [1, 50]"),
        (["--tokens", "0"], "--tokens 0: expected an integer >= 1"),
        (["--tokens", "50", "--seed", "-3"], "--seed -3: expected a non-negative integer seed"),
        (["--tokens", "50", "--layers", "0"], "--layers 0: expected an integer >= 1"),
        (["--tokens", "50", "--n-experts", "8", "--top-k", "9"], "--top-k 9: expected an integer in [1, 8]"),
        (["--tokens", "50", "--n-experts", "8"], "--n-experts/--top-k: give both"),
        (
            ["--tokens", "10000000000"],
            "--tokens 10000000000: sampling 10000000000 tokens x 32 MoE layers x top-2 needs",
        ),
    ],
)
def test_synth_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str) -> None:
    out = tmp_path / "s.npz"
    assert expected in _error(["trace", "synth", "default", *extra, "-o", str(out)], capsys)
    assert not out.exists()


@pytest.mark.usefixtures("no_expensive_work")
def test_synth_paths_checked_before_deriving(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["trace", "synth", "default:deepseek-v3", "--tokens", "200000"]
    err = _error([*argv, "-o", str(tmp_path / "nodir" / "s.npz")], capsys)
    assert err.startswith(f"-o {tmp_path / 'nodir' / 's.npz'}: folder {tmp_path / 'nodir'} does not exist")
    assert "expected a path ending in .npz" in _error([*argv, "-o", str(tmp_path / "s.txt")], capsys)
    assert "unknown model preset 'nope'" in _error(
        ["trace", "synth", "default:nope", "--tokens", "5", "-o", "x.npz"], capsys
    )
    err = _error(["trace", "synth", str(tmp_path / "p.json"), "--tokens", "5", "-o", str(tmp_path / "x.npz")], capsys)
    assert err.startswith(f"PROCESS {tmp_path / 'p.json'}: no such file")


@pytest.mark.usefixtures("no_expensive_work")
def test_fit_stats_holdout_compare_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = RoutingProcess.load  # any existing file works for the path checks below
    existing = Path(trace.__code__.co_filename)  # process.py: exists, is a file
    missing = tmp_path / "missing.npz"
    assert _error(["trace", "fit", str(missing), "-o", str(tmp_path / "p.json")], capsys).startswith(
        f"{missing}: no such file; expected a routing trace .npz"
    )
    err = _error(["trace", "fit", str(existing), "-o", str(tmp_path / "nodir" / "p.json")], capsys)
    assert err.startswith(f"-o {tmp_path / 'nodir' / 'p.json'}: folder")
    assert "--seed -1" in _error(["trace", "fit", str(existing), "-o", "p.json", "--seed", "-1"], capsys)
    assert "--shrinkage 2.0: expected a finite number in [0, 1]" in _error(
        ["trace", "fit", str(existing), "-o", "p.json", "--shrinkage", "2"], capsys
    )
    assert "--calibration-iterations -1" in _error(
        ["trace", "fit", str(existing), "-o", "p.json", "--calibration-iterations", "-1"], capsys
    )
    assert "--max-distance 0: expected an integer >= 1" in _error(
        ["trace", "stats", str(existing), "--max-distance", "0"], capsys
    )
    assert "--train-fraction 2.0: expected a finite number in (0, 1)" in _error(
        ["trace", "holdout", str(existing), "--train-fraction", "2"], capsys
    )
    assert _error(["trace", "compare", str(existing), str(missing)], capsys).startswith(f"B {missing}: no such file")


@pytest.mark.usefixtures("no_expensive_work")
def test_import_and_record_paths_checked_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(
        ["trace", "import", "-f", "mixtral-jsonl", str(tmp_path), "-o", str(tmp_path / "no" / "x.npz")], capsys
    )
    assert "folder" in err and "does not exist" in err
    err = _error(
        ["trace", "import", "-f", "mixtral-jsonl", str(tmp_path / "nope"), "-o", str(tmp_path / "x.npz")], capsys
    )
    assert err.startswith(f"SRC {tmp_path / 'nope'}: no such file")
    err = _error(
        ["trace", "record", "--hf-config", "tiny-mixtral", "--seed", "-2", "-o", str(tmp_path / "r.npz")], capsys
    )
    assert err.startswith("--seed -2: expected a non-negative integer seed")

    err = _error(
        ["trace", "record", "--hf-config", "tiny-mixtral", "--hf-model", str(tmp_path / "w"), "-o", "r.npz"], capsys
    )
    assert err.startswith(f"--hf-model {tmp_path / 'w'}: no such file or folder")


def test_record_prompt_ids_parsed_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("workloads.tracer.load_model", _tripwire("loading a Hugging Face model"))
    argv = ["trace", "record", "--hf-config", "tiny-mixtral", "--prompt-ids", "4,x", "-o", str(tmp_path / "r.npz")]
    assert _error(argv, capsys).startswith("--prompt-ids item 1 is 'x', expected a non-negative integer")


@pytest.mark.usefixtures("no_expensive_work")
def test_calibrate_flags_checked_before_the_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n = checks.usable_cpus()
    out = str(tmp_path / "c.json")
    assert f"--threads {n + 2}: expected 1 to {n}" in _error(
        ["calibrate", "run", "--threads", str(n + 2), "-o", out], capsys
    )
    assert "folder" in _error(["calibrate", "run", "-o", str(tmp_path / "no" / "c.json")], capsys)
    assert "--seed -3" in _error(["calibrate", "run", "--seed", "-3", "-o", out], capsys)
    assert "--peak-tflops -1.0" in _error(["calibrate", "run", "--peak-tflops", "-1", "-o", out], capsys)
    assert f"--threads {n + 2}" in _error(["calibrate", "validate", "a100", "--threads", str(n + 2)], capsys)
    err = _error(["calibrate", "validate", "a100", "--layer", str(tmp_path / "t")], capsys)
    assert err.startswith(f"--layer {tmp_path / 't'}: no such file")
    err = _error(["calibrate", "validate", "a100", "--layer", str(tmp_path), "--layers", "a,b"], capsys)
    assert err.startswith("--layers 'a,b': expected comma-separated layer indices")
    assert "--shape '0x5'" in _error(
        ["calibrate", "validate", "a100", "--layer", str(tmp_path), "--shape", "0x5"], capsys
    )


SIM = ["simulate", "--model", "mixtral-8x7b", "--platform", "dgx-h100", "--no-progress"]


@pytest.mark.usefixtures("no_expensive_work")
def test_simulate_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _error([*SIM, "--hbm-expert-fraction", "2"], capsys).startswith(
        "--hbm-expert-fraction 2.0: expected a finite number in [0, 1]"
    )
    assert "--hbm-expert-fraction nan" in _error([*SIM, "--hbm-expert-fraction", "nan"], capsys)
    err = _error([*SIM, "--requests", "100000000"], capsys)
    assert err.startswith("--requests: simulating 100000000 requests needs about")
    assert "--near-experts -1" in _error([*SIM, "--near-tier", "sram", "--near-experts", "-1"], capsys)
    assert _error([*SIM, "--trace", str(tmp_path / "t.npz")], capsys).startswith(
        f"--trace {tmp_path / 't.npz'}: no such"
    )
    err = _error([*SIM, "--process", str(tmp_path / "p.json")], capsys)
    assert err.startswith(f"--process {tmp_path / 'p.json'}: no such file")
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    assert _error([*SIM, "--out", str(blocker / "sub")], capsys).startswith(f"--out {blocker / 'sub'}: cannot create")


@pytest.mark.usefixtures("no_expensive_work")
def test_simulate_says_it_does_not_fit_before_deriving_the_workload(capsys: pytest.CaptureFixture[str]) -> None:
    """DeepSeek-V3 on one H100: the mapping cannot fit, said at once in the flags the user typed
    (deriving its default workload would take minutes first)."""
    err = _error(["simulate", "--model", "deepseek-v3", "--platform", "h100-pcie5-host", "--no-progress"], capsys)
    assert err.startswith("--model deepseek-v3 on --platform h100-pcie5-host: mapping does not fit")
    assert "--hbm-expert-fraction" in err and "cache.expert_fraction" not in err


def test_platform_with_impossible_capacity_is_refused() -> None:
    from hwmodels import get_platform

    plat = get_platform("dgx-h100")
    dev = plat.accelerators[0]
    huge = dataclasses.replace(dev, tiers=tuple(dataclasses.replace(t, capacity_bytes=1e39) for t in dev.tiers))
    bad = dataclasses.replace(plat, accelerators=(huge, *plat.accelerators[1:]))
    check_platform(plat, "--platform dgx-h100")
    with pytest.raises(ValueError, match=r"--platform x.toml: device 'h100-sxm' tier '\w+' has capacity 1e\+39 B"):
        check_platform(bad, "--platform x.toml")


def test_synth_shows_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.npz"
    assert main(["trace", "synth", "default", "--tokens", "40", "--requests", "2", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and out.exists()
    assert "sampling 40 tokens x 32 MoE layers x top-2 from default ..." in captured.err
    assert "sampling 40 tokens x 32 MoE layers x top-2 from default: done in" in captured.err
