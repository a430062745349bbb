"""``codesign calibrate run|import-vidur|validate`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hwmodels.calibrate_run
from codesign.cli import build_parser, main
from hwmodels.calibrate_run import RunConfig
from hwmodels.calibration import CalibrationProfile, GemmFit, Peaks, Sample, fit_profile


def test_subcommands_registered() -> None:
    parser = build_parser()
    for argv in (
        ["calibrate", "run", "-o", "x.json"],
        ["calibrate", "import-vidur", "d", "-o", "x.json"],
        ["calibrate", "validate", "p.json"],
    ):
        args = parser.parse_args(argv)
        assert callable(args.func)
    args = parser.parse_args(["calibrate", "run", "--quick", "--device", "cuda", "-o", "x.json"])
    assert args.quick and args.device == "cuda"


def test_import_vidur_then_validate_json(tmp_path: Path, shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a100.json"
    root = shared_dir / "calibration" / "vidur-a100-h100"
    assert main(["calibrate", "import-vidur", str(root), "--device", "a100", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "device a100" in text and "gemm:up" in text
    prof = CalibrationProfile.load(out)
    assert prof.device_name == "a100" and len(prof.samples) == 6264

    assert main(["calibrate", "validate", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"mape", "max_abs_pct_error", "n", "per_op", "median_abs_pct_error"} <= set(data)
    assert data["n"] == sum(s.heldout and s.kind == "gemm" for s in prof.samples)
    assert data["all_kinds"]["n"] == sum(s.heldout for s in prof.samples)
    assert data["per_op"]["gemm:up"]["median_abs_pct_error"] <= 10
    assert data["max_abs_pct_error"] >= data["mape"] > 0


def test_validate_shipped_profile_against_table(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = shared_dir / "calibration" / "vidur-a100-h100" / "compute" / "h100" / "llama-2-7b-mlp.csv"
    assert main(["calibrate", "validate", "h100", "--against", str(table)]) == 0
    text = capsys.readouterr().out
    assert "gemm:qkv" in text and "ALL" in text and "4176" in text and "6264" in text


def test_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "validate", str(tmp_path / "nope.json")]) == 1
    assert "nope.json: no such profile file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "moe-codesign-calibration", "version": 1}', encoding="utf-8")
    assert main(["calibrate", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json: missing field 'peaks'" in err
    assert main(["calibrate", "validate", "a100"]) == 1
    assert "keeps no samples" in capsys.readouterr().err
    assert main(["calibrate", "import-vidur", str(tmp_path), "-o", str(tmp_path / "o.json")]) == 1
    assert "no Vidur CSV tables" in capsys.readouterr().err


def test_run_writes_and_validates_a_profile(
    tmp_path: Path,
    shared_dir: Path,
    recorded_cpu_profile: CalibrationProfile,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``calibrate run`` end to end on the recorded samples of a real tiny sweep (the sweep itself
    is in benchmarks/bench_calibrate.py: its fit quality depends on the machine's load), then
    ``validate --layer`` timing a real MoE layer (checked for shape, never for speed)."""
    seen: list[RunConfig] = []

    def recorded_run(config: RunConfig, progress: bool = False) -> CalibrationProfile:
        seen.append(config)
        return recorded_cpu_profile

    monkeypatch.setattr(hwmodels.calibrate_run, "run_calibration", recorded_run)
    out = tmp_path / "cpu.json"
    argv = ["calibrate", "run", "--device", "cpu", "--sweep", "tiny", "--threads", "1", "--no-progress", "-o", str(out)]
    assert main(argv) == 0
    assert seen[0].plan is not None and seen[0].plan.name == "tiny" and seen[0].threads == 1
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "MAPE" in captured.out and "fit quality: ok" in captured.out
    assert "WARNING" not in captured.err
    prof = CalibrationProfile.load(out)
    assert prof.fingerprint["sweep"] == "tiny" and prof.device_kind == "cpu"
    assert len(prof.samples) == len(recorded_cpu_profile.samples)
    trace = shared_dir / "traces" / "mixtral-8x7b-instruct"
    layer_argv = ["--layer", str(trace), "--layers", "0,5", "--tokens", "32", "--shape", "128x448"]
    assert main(["calibrate", "validate", str(out), *layer_argv, "--repeats", "2", "--threads", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layer"]["n"] == 2 and data["layer"]["d_model"] == 128
    assert data["layer"]["tokens"] == 32 and data["warnings"] == []
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in data["layer"]["results"])
    assert main(["calibrate", "validate", str(out), "--layer", str(trace), "--shape", "big"]) == 1
    assert "--shape" in capsys.readouterr().err


def _disturbed_profile() -> CalibrationProfile:
    """A fit on GEMM timings disturbed as on a busy machine: +4.6 ms on all fitted ones but m = 1."""
    true = GemmFit(t0_s=20e-6, eff_compute=0.6, bandwidth_Bps=12e9, sharpness=2.0, half_occupancy_elems=3000.0)
    samples = []
    for k, n in ((512, 1408), (1408, 512), (1024, 2816), (2816, 1024)):
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
            t = float(true.predict_s(m, k, n, peak_flops=100e9, dtype_bytes=4.0))
            held = m in (8, 512)
            samples.append(
                Sample(
                    kind="gemm",
                    op="up",
                    shape={"m": m, "k": k, "n": n},
                    heldout=held,
                    time_s=t + (4.6e-3 if m > 1 and not held else 0.0),
                )
            )
    return fit_profile(
        name="busy",
        device_name="test-cpu",
        device_kind="cpu",
        dtype="fp32",
        dtype_bytes=4.0,
        peaks=Peaks(flops=100e9, flops_source="test", memory_Bps=25e9, memory_source="test"),
        samples=samples,
    )


def test_run_refuses_an_absurd_fit_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[RunConfig] = []

    def fake_run(config: RunConfig, progress: bool = False) -> CalibrationProfile:
        seen.append(config)
        return _disturbed_profile()

    monkeypatch.setattr(hwmodels.calibrate_run, "run_calibration", fake_run)
    out = tmp_path / "cpu.json"
    assert main(["calibrate", "run", "--no-progress", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert not out.exists()
    assert "WARNING: profile 'busy' fit is absurd: GEMM t0" in err and "exceeds the fastest measured GEMM" in err
    assert "cpu.json: not written" in err and "--force" in err
    assert main(["calibrate", "run", "--no-progress", "--force", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "writing" in captured.err and "fit quality: absurd" in captured.out
    assert CalibrationProfile.load(out).quality["status"] == "absurd"
    # the CLI leaves threads and clock to the CPU defaults unless given
    assert seen[0].threads is None and seen[0].clock is None
    main(["calibrate", "run", "--no-progress", "--threads", "1", "--clock", "wall", "-o", str(out)])
    assert seen[-1].threads == 1 and seen[-1].clock == "wall"


def test_validate_warns_when_profile_and_table_devices_differ(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = shared_dir / "calibration" / "vidur-a100-h100" / "compute" / "h100" / "llama-2-7b-mlp.csv"
    assert main(["calibrate", "validate", "a100", "--against", str(table), "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert len(data["warnings"]) == 1 and "calibrated on 'a100'" in data["warnings"][0]
    assert "measured on 'h100'" in data["warnings"][0] and "WARNING: profile 'vidur-a100'" in captured.err
    assert main(["calibrate", "validate", "h100", "--against", str(table), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["warnings"] == [] and "WARNING" not in captured.err


def test_validate_rejects_non_profiles_and_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    npz = tmp_path / "mix.npz"
    np.savez(npz, experts=np.zeros((2, 3), dtype=np.int16))
    assert main(["calibrate", "validate", str(npz)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mix.npz: not a calibration profile JSON" in err
    for flag, value in (("--tokens", "-5"), ("--tokens", "0"), ("--repeats", "0"), ("--threads", "x")):
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", "validate", "a100", "--layer", "t", flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: must be a positive integer" in err and value in err
