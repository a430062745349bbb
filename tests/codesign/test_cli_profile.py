"""``codesign simulate --profile NAME|PATH`` (issue 8): a shipped, derived or file profile applied to
every accelerator, one-line errors before any work, and ``--design`` replays with another profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codesign.cli import main
from hwmodels.calibration import load_default_profile

RUN = [
    "simulate",
    "--model",
    "mixtral-8x7b",
    "--platform",
    "h200-pcie5-host",
    "--precision",
    "fp8",
    "--process",
    "default",
    "--requests",
    "2",
    "--prompt-len",
    "4",
    "--output-len",
    "6",
    "--no-progress",
    "--json",
]


def _tpot(capsys: pytest.CaptureFixture[str], *extra: str) -> float:
    assert main([*RUN, *extra]) == 0
    data = json.loads(capsys.readouterr().out)
    return float(data["tpot_p50_s"])


def test_profile_changes_the_answer_and_a_file_equals_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _tpot(capsys)
    derived = _tpot(capsys, "--profile", "h200")
    assert derived != plain
    table = [a for a in RUN if a != "--json"]
    assert main([*table, "--profile", "h200"]) == 0
    assert "calibration profile        h200 (every accelerator, --profile)" in capsys.readouterr().out
    path = load_default_profile("h200").save(tmp_path / "h200.json")
    assert _tpot(capsys, "--profile", str(path)) == pytest.approx(derived)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--profile", "h300"], "--profile h300: no such calibration profile"),
        (["--profile", "h300"], "valid names: a100, gh200, h100, h100-nvl, h100-pcie, h200"),
        (["--profile", "h200", "--fidelity", "roofline"], "applies to --fidelity calibrated"),
    ],
)
def test_profile_errors_are_one_line(capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    assert main([*RUN, *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_profile_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert main([*RUN, "--profile", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"--profile {missing}" in err and "cannot read calibration profile" in err


def test_design_replays_with_another_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from codesign.design import Design, evaluate

    d = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host", n_requests=2, prompt_tokens=16, output_tokens=4)
    path = d.save(tmp_path / "design.json")
    args = ["simulate", "--design", str(path), "--json", "--no-progress"]
    assert main([*args, "--profile", "h100"]) == 0
    out = json.loads(capsys.readouterr().out)
    with_profile = dataclasses.replace(d, cost=dataclasses.replace(d.cost, profile="h100"))
    assert out["design_hash"] == with_profile.content_hash != d.content_hash
    assert out["tpot_p50_s"] == pytest.approx(evaluate(with_profile, "sim").tpot_p50_s)
    assert main([*args, "--profile", "h300"]) == 1
    assert "--profile h300: no such calibration profile" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("platform", "profile", "message"),
    [
        ("h100-pcie5-host", "h200", "--profile h200: describes device h200, but platform h100-pcie5-host has h100-sxm"),
        ("h100-pcie5-host", "a100", "profiles that fit: h100"),
        ("rtx6000ada-pcie4-host", "a100", "profiles that fit: none shipped"),
    ],
)
def test_a_shipped_profile_of_another_device_is_refused(
    platform: str, profile: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a if a != "h200-pcie5-host" else platform for a in RUN]
    assert main([*args, "--profile", profile]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_design_replayed_with_a_profile_of_another_device_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from codesign.design import Design

    path = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host").save(tmp_path / "d.json")
    assert main(["simulate", "--design", str(path), "--profile", "h200"]) == 1
    assert "describes device h200" in capsys.readouterr().err


def test_power_limit_slows_a_prefill_and_is_refused_without_a_power_law(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--power-limit W``: the profile's power law slows a compute-bound prefill (TTFT of 4 x 2,048
    tokens), the summary says the limit; without a profile, or with one that has no law, a one-line error."""
    run = [a if a != "4" else "2048" for a in RUN] + ["--batch", "2", "--max-tokens", "8192"]

    def ttft(*extra: str) -> dict:
        assert main([*run, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    full, capped = ttft("--profile", "h200"), ttft("--profile", "h200", "--power-limit", "500")
    assert capped["power_limit_W"] == 500.0 and "power_limit_W" not in full
    assert capped["ttft_p50_s"] > full["ttft_p50_s"] * 1.05
    assert ttft("--profile", "h200", "--power-limit", "700")["ttft_p50_s"] == pytest.approx(full["ttft_p50_s"])
    assert main([*run, "--power-limit", "500"]) == 1
    assert "--power-limit 500: needs --profile" in capsys.readouterr().err
    assert main([*run, "--profile", "a100", "--power-limit", "300"]) == 1
    assert "has no power law" in capsys.readouterr().err
    # a design file without a profile: the limit needs one
    from codesign.design import Design

    design_path = Design.from_presets("mixtral-8x7b", "h200-pcie5-host").save(tmp_path / "d.json")
    assert main(["simulate", "--design", str(design_path), "--power-limit", "500", "--no-progress", "--json"]) == 1
    assert "names no cost.profile; pass --profile" in capsys.readouterr().err
