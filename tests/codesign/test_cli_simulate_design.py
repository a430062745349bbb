"""``codesign simulate --design F`` replays a design file (as written by search/explore)."""

from __future__ import annotations

import json

import pytest

from codesign.cli import main
from codesign.design import Design, evaluate


def test_design_file_replays_to_the_same_metrics(tmp_path, capsys):
    d = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host", n_requests=2, prompt_tokens=16, output_tokens=4)
    path = d.save(tmp_path / "design.json")
    assert main(["simulate", "--design", str(path), "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["design_hash"] == d.content_hash
    assert out["tpot_p50_s"] == pytest.approx(evaluate(d, "sim").tpot_p50_s)


def test_design_with_model_flags_or_a_missing_file_is_one_error_line(tmp_path, capsys):
    path = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host").save(tmp_path / "d.json")
    assert main(["simulate", "--design", str(path), "--model", "mixtral-8x7b"]) != 0
    assert "drop --model" in capsys.readouterr().err
    assert main(["simulate", "--design", str(tmp_path / "none.json")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.json" in err[0]
    assert main(["simulate", "--platform", "dgx-h100"]) != 0
    assert "--model required" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--batch", "2"], "--batch"),
        (["--requests", "3"], "--requests"),
        (["--seed", "5"], "--seed"),
        (["--prompt-len", "40"], "--prompt-len"),
        (["--output-len", "9"], "--output-len"),
        (["--hbm-expert-fraction", "0.5"], "--hbm-expert-fraction"),
        (["--cache", "lfu"], "--cache"),
        (["--fidelity", "roofline"], "--fidelity"),
        (["--arrivals", "poisson", "--rate", "2"], "--arrivals, --rate"),
        (["--eviction", "copy-back"], "--eviction"),
        (["--batch", "64"], "--batch"),  # its default value: still typed, and the file's would win
        (["--seed", "0"], "--seed"),
    ],
)
def test_design_refuses_each_flag_its_file_fixes(tmp_path, capsys, extra: list[str], flag: str) -> None:
    path = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host").save(tmp_path / "d.json")
    assert main(["simulate", "--design", str(path), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"drop {flag} (they come from the file)" in err[0], err


def test_execution_flag_reaches_the_mapping_and_bad_values_name_the_flag(capsys):
    args = ["simulate", "--model", "deepseek-v2-lite", "--platform", "dgx-h100", "--requests", "2"]
    args += ["--output-len", "3", "--prompt-len", "8", "--json", "--no-progress"]
    assert main([*args, "--execution", "grouped-graph"]) == 0
    graph = json.loads(capsys.readouterr().out)["tpot_p50_s"]
    assert main([*args, "--execution", "per-expert-eager"]) == 0
    eager = json.loads(capsys.readouterr().out)["tpot_p50_s"]
    assert graph < eager
    assert main([*args, "--execution", "magic"]) != 0
    assert "--execution 'magic'" in capsys.readouterr().err
