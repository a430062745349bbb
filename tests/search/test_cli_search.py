"""``codesign search`` / ``codesign explore``: cheap checks first, outputs, the printed table;
``--verify-top`` machinery on a tiny design."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from codesign.cli import build_parser, main
from codesign.cli_search import _pareto_title, _table
from codesign.design import CostSpec, Design, WorkloadSpec
from codesign.mapping import Mapping
from hwmodels import get_platform
from hwmodels.calibration import CalibrationProfile
from search.verify import decode_tokens_per_expert, verify_designs
from tests.conftest import RECORDED_CPU_TINY
from tests.search.search_helpers import write_space
from workloads.model import get_model


def test_search_and_explore_are_registered() -> None:
    parser = build_parser()
    args = parser.parse_args(["explore"])
    assert args.trials == 200 and args.out == "codesign-out" and args.space is None
    args = parser.parse_args(["search", "--trials", "3", "--jobs", "2", "--study", "s", "--verify-top", "2"])
    assert (args.trials, args.jobs, args.study, args.verify_top) == (3, 2, "s", 2)


def test_bad_space_fails_fast_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ngranularity = 0\n", encoding="utf-8")
    assert main(["search", "--space", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:model.granularity: expected a number > 0") and "\n" not in err
    assert not (tmp_path / "o" / "study.db").exists()


def test_unwritable_out_and_bad_storage_fail_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert main(["search", "--out", str(blocker / "sub"), "--no-progress"]) == 1
    assert "not a writable folder" in capsys.readouterr().err
    assert main(["search", "--out", str(tmp_path / "o"), "--storage", "not a url", "--no-progress"]) == 1
    assert "not a storage URL" in capsys.readouterr().err
    assert main(["search", "--trials", "-1", "--no-progress"]) == 1
    assert "--trials must be >= 0" in capsys.readouterr().err


def test_search_writes_study_csv_designs_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, fidelity="multi")
    out = tmp_path / "out"
    flags = ["--space", str(space), "--out", str(out), "--no-progress", "--no-report"]
    assert main(["search", "--trials", "4", *flags]) == 0
    text = capsys.readouterr().out
    assert "4 trials in" in text and "Pareto set (" in text and "codesign simulate --design" in text
    rows = list(csv.DictReader((out / "pareto.csv").open(encoding="utf-8")))
    assert rows and all(Path(r["design_file"]).is_file() for r in rows)
    assert all(r["design_hash"] in text for r in rows)
    assert (out / "study.db").is_file()
    # the same study resumes by name: 2 more trials
    assert main(["search", "--trials", "2", *flags]) == 0
    assert "6 complete" in capsys.readouterr().out


def test_verify_measures_each_design_kernel_beside_both_predictions() -> None:
    small = get_model("mixtral-8x7b").with_(name="tiny", d_model=64, expert_ffn_dim=176, n_layers=2)
    design = Design(
        model=small,
        platform=get_platform("h100-pcie5-host"),
        mapping=Mapping(),
        workload=WorkloadSpec(n_requests=4, prompt_tokens=8, output_tokens=2),
        cost=CostSpec(),
    )
    assert decode_tokens_per_expert(design) == 1  # 4 x top-2 / 8 experts
    profile = CalibrationProfile.load(RECORDED_CPU_TINY)
    (check,) = verify_designs([("h", design)], profile=profile, repeats=3, min_time_s=1e-3)
    assert (check.design_hash, check.d_model, check.d_ff, check.tokens) == ("h", 64, 176, 1)
    assert check.accelerator == "h100-sxm" and check.profile == "cpu-tiny-recorded"
    assert check.measured_s > 0 and check.predicted_local_s > 0 and check.predicted_design_s > 0
    assert check.predicted_local_s == pytest.approx(float(profile.predict_ffn_s(1, 64, 176)))


def test_pareto_title_says_which_fidelity_the_rows_have() -> None:
    sim, analytic = {"fidelity": "sim"}, {"fidelity": "analytic"}
    assert _pareto_title([sim, sim]) == "Pareto set (2 feasible designs, all evaluated by the simulator)"
    only = _pareto_title([analytic])
    assert "analytic model only" in only and "none confirmed by the simulator" in only
    assert "1 evaluated by the simulator, 2 by the analytic model only" in _pareto_title([sim, analytic, analytic])
    assert _pareto_title([]) == "Pareto set (no feasible design)"


def test_pareto_table_keeps_objectives_and_the_knobs_that_differ() -> None:
    rows = [
        {
            "trial": i,
            "design_hash": f"{i:016x}",
            "tpot_p99 [ms]": 10.0 + i,
            "cost_per_mtok [$]": 5.0 - i,
            "fidelity": "sim",
            "model": "mixtral-8x7b",
            "experts": 8,
            "platform": "h100-pcie5-host",
            "fast_share": 0.5 + 0.25 * i,
            "cache": "lru" if i else None,
            "placement": None,
            "design_file": f"/somewhere/{i}.json",
        }
        for i in range(3)
    ]
    text = _table(rows, fixed=("design_hash", "tpot_p99 [ms]", "cost_per_mtok [$]", "fidelity"))
    header, *body, constant = text.splitlines()
    assert header.split() == [
        "design_hash", "tpot_p99", "[ms]", "cost_per_mtok", "[$]", "fidelity", "fast_share", "cache"
    ]  # fmt: skip
    assert len(body) == 3 and body[0].split()[-1] == "-"  # no cache policy on the first design
    assert constant == "constant: model=mixtral-8x7b, experts=8, platform=h100-pcie5-host, placement=-"
    assert "/somewhere" not in text


def test_analytic_search_title_and_table_are_truthful_and_fit_160_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, fidelity="analytic")
    out = tmp_path / "out"
    flags = ["--space", str(space), "--out", str(out), "--no-progress", "--no-report"]
    assert main(["search", "--trials", "6", *flags]) == 0
    text = capsys.readouterr().out
    rows = list(csv.DictReader((out / "pareto.csv").open(encoding="utf-8")))
    assert rows and {r["fidelity"] for r in rows} == {"analytic"}
    assert "analytic model only: none confirmed by the simulator" in text
    table = text.split("Pareto set (", 1)[1].split("\nwrote ", 1)[0]
    assert max(len(line) for line in table.splitlines()) <= 160
    assert "\nconstant: " in table and "platform=h100-pcie5-host" in table  # one platform in the tiny space


def test_pareto_table_uses_short_knob_headers_and_leaves_out_implied_granularity() -> None:
    rows = [
        {"design_hash": f"h{i}", "cost_per_mtok [$/Mtok]": 1.0 + i, "fidelity": "sim", "expert_ffn": 7168 * (i + 1)}
        | {"granularity_G": 2.0 / (i + 1), "bytes_per_weight": 1 + i, "max_batch": 4}
        for i in range(2)
    ]
    header, *_, constant = _table(rows, fixed=("design_hash", "cost_per_mtok [$/Mtok]", "fidelity")).splitlines()
    assert header.split() == ["design_hash", "cost", "[$/Mtok]", "fidelity", "ffn", "B/weight"]
    assert constant == "constant: batch=4"


def test_explore_runs_the_embedded_default_space_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command, shortened to a few trials: default space, both embedded
    workloads, no ../shared (MOE_CODESIGN_SHARED points nowhere), outputs written."""
    monkeypatch.setenv("MOE_CODESIGN_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.chdir(tmp_path)
    assert main(["explore", "--trials", "4", "--no-progress", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "4 trials in" in out and "codesign simulate --design codesign-out/pareto/" in out
    rows = list(csv.DictReader((tmp_path / "codesign-out" / "pareto.csv").open()))
    assert rows, "explore wrote an empty Pareto set"
    for row in rows:
        design = Design.load(tmp_path / "codesign-out" / "pareto" / f"{row['design_hash']}.json")
        assert design.content_hash == row["design_hash"]
    assert (tmp_path / "codesign-out" / "study.db").is_file()
