"""The end-to-end validation suite: case files load and are complete, the reduced suite runs every
case and the table has its structure, bad case files fail naming the field, the CLI answers.

These tests check structure only, never that the errors are small: they are not yet (issue 8), and
the full-size table is reported by ``codesign validate-e2e``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from codesign.cli import main
from codesign.validation import (
    SERVING_METRICS,
    CaseError,
    CaseResult,
    case_dir,
    format_table,
    load_case,
    load_cases,
    run_suite,
    suite_summary,
    write_html,
)


@pytest.fixture(scope="module")
def cases() -> list:
    return load_cases()


@pytest.fixture(scope="module")
def reduced_results(cases: list) -> list[CaseResult]:
    return run_suite(cases, reduced=True)


def test_every_case_file_is_complete(cases: list) -> None:
    names = {c.name for c in cases}
    assert len(cases) == len(list(case_dir().glob("*.json")))
    # the rows issue 8 asks for are present
    for prefix in (
        "mlperf41-offline-h100",
        "mlperf41-offline-h200",
        "mlperf41-server-h100-tpot",
        "fiddler-mixtral-offloading-ada6000-b1",
        "fiddler-zero3-",
        "mixtral-offloading-paper-2bit-t4",
        "mixtral-offloading-paper-2bit-rtx3060",
        "llamacpp-q5km-h100",
        "llamacpp-q5km-a100",
        "nccl-alltoall-4xh100",
        "deepep-ll-ep8-dispatch",
        "deepep-ll-ep8-combine",
    ):
        assert any(n.startswith(prefix) for n in names), prefix
    for c in cases:
        assert c.source and c.conditions and c.stack
        assert "measured-systems.md" in c.source or "arXiv" in c.source
        assert c.measured_low <= c.measured_value <= c.measured_high
        assert c.assumptions, f"{c.name}: every case states what it had to assume"
        assert c.gaps, f"{c.name}: every case names the mechanisms it is known to lack"


def test_cases_use_the_mechanisms_of_issue_8(cases: list) -> None:
    """Every serving case names its serving stack; the MLPerf cases draw the 1-1024 output spread
    and read Offline in its steady state; Mixtral-offloading evicts copy-back; ZeRO-3 streams every
    parameter; fit-size overrides build a design."""
    from codesign.validation import build_design
    from codesign.validation_fit import case_stack_name, stacked_design

    for c in cases:
        if c.kind != "serving":
            continue
        design = build_design(c)
        stack = design.mapping.stack
        name = case_stack_name(c)
        assert name not in (None, "none"), f"{c.name}: a measured system runs a serving stack"
        assert getattr(stack, "name", stack) == name
        if c.fit:
            assert stacked_design(c, design.mapping.stack, size="fit").workload != design.workload
        w = design.workload
        if c.name.startswith("mlperf41-"):
            assert w.output_tokens == 145 and w.output_dist is not None and "max=1024" in w.output_dist
            assert w.prompt_dist is not None and "max=2048" in w.prompt_dist
            if "-offline-" in c.name:
                assert c.metric == "steady_throughput_tok_s"
        if name == "hf-eager" and design.mapping.cache.expert_fraction != 0.0:
            assert design.mapping.cache.eviction == "copy-back", c.name
        if name == "deepspeed-zero3":
            assert design.mapping.offload_non_expert and design.mapping.fetch_whole_layer, c.name


def test_steady_throughput_window() -> None:
    """The steady-state throughput counts the tokens between the end of the start-up transient (as
    many finishes as the first fill admitted) and the last admission."""
    from types import SimpleNamespace

    import pandas as pd

    from codesign.validation import steady_throughput

    run = SimpleNamespace(
        requests=pd.DataFrame(
            {
                "admitted_s": [0.0, 0.0, 3.0, 4.0, 6.0],
                "finish_s": [2.0, 3.0, 5.0, 7.0, 8.0],
                "first_token_s": [0.5, 0.5, 3.5, 4.5, 6.5],
            }
        ),
        steps=pd.DataFrame(
            {"end_s": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], "decode_tokens": [2, 2, 2, 1, 1, 1, 2, 1]}
        ),
        summary={"throughput_tok_s": 1.0},
    )
    # two requests admitted before the first finish (t = 2): the window opens at the second finish
    # (t = 3), not the first, and closes at the last admission (t = 6): steps ending at 4, 5, 6
    # (1 + 1 + 1 decode tokens) and the first tokens at 3.5 and 4.5, over 3 s
    assert steady_throughput(run) == (pytest.approx(5 / 3.0), True)
    run.requests = pd.DataFrame({"finish_s": [2.0, 5.0], "admitted_s": [0.0, 0.0], "first_token_s": [0.5, 0.5]})
    assert steady_throughput(run) == (1.0, False)


def test_steady_request_mean_skips_fill_and_drain() -> None:
    """Server means count the requests that arrive after the first L99 seconds of arrivals and
    before the last L99 (L99: 99th percentile of time in system), skipping NaN TPOTs; a run too
    short for that window falls back to every request, flagged."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from codesign.validation import steady_request_mean

    arrival = np.arange(11, dtype=float)  # 0 .. 10 s
    tpot = np.array([0.05, 0.06, 0.1, 0.1, np.nan, 0.1, 0.1, 0.1, 0.1, 0.07, 0.05])
    run = SimpleNamespace(
        requests=pd.DataFrame(
            {"arrival_s": arrival, "finish_s": arrival + 2.0, "tpot_s": tpot, "ttft_s": np.full(11, 0.2)}
        )
    )
    # L99 = 2 s: arrivals in [2, 8], the NaN skipped: six requests at 0.1 s
    assert steady_request_mean(run, "tpot_s") == (pytest.approx(0.1), True)
    assert steady_request_mean(run, "ttft_s") == (pytest.approx(0.2), True)
    run.requests["finish_s"] = arrival + 6.0  # L99 = 6 s > half the arrival span: no window
    value, steady = steady_request_mean(run, "tpot_s")
    assert not steady and value == pytest.approx(np.nanmean(tpot))


def test_reduced_suite_runs_every_case(cases: list, reduced_results: list[CaseResult]) -> None:
    assert [r.name for r in reduced_results] == [c.name for c in cases]
    for r in reduced_results:
        assert math.isfinite(r.simulated) and r.simulated > 0, r.name
        assert r.error == pytest.approx((r.simulated - r.measured) / r.measured)
        assert r.bottleneck in r.breakdown_s, r.name
        assert r.breakdown_s[r.bottleneck] == max(r.breakdown_s.values())
        if r.analytic is None:
            assert r.analytic_error is None and r.analytic_note.startswith("analytic model refuses:")
        else:
            assert r.analytic_error == pytest.approx((r.analytic - r.measured) / r.measured)
        if r.kind == "serving":
            assert r.metric in SERVING_METRICS
            assert r.reduced
        else:
            assert not r.reduced and r.bottleneck == "all_to_all"


def test_table_and_summary_structure(reduced_results: list[CaseResult]) -> None:
    table = format_table(reduced_results)
    lines = table.splitlines()
    assert lines[0].startswith("| case") and "error" in lines[0] and "bottleneck" in lines[0]
    body = [ln for ln in lines[2:] if ln.startswith("|")]
    assert len(body) == len(reduced_results)
    for r, ln in zip(reduced_results, body, strict=True):
        assert r.name in ln and f"{100 * r.error:+.1f}%" in ln
    assert "REDUCED run" in lines[-1]
    s = suite_summary(reduced_results)
    assert s["cases"] == len(reduced_results)
    errs = sorted(abs(r.error) for r in reduced_results)
    assert s["sim"]["within_20pct"] == sum(e <= 0.2 for e in errs)
    json.dumps([r.to_dict() for r in reduced_results])  # JSON-able


def test_html_report(reduced_results: list[CaseResult], tmp_path: Path) -> None:
    path = write_html(reduced_results[:3], tmp_path / "v.html")
    text = path.read_text()
    assert "plotly" in text.lower() and reduced_results[0].name in text


def test_collective_case_matches_cost_model(cases: list, reduced_results: list[CaseResult]) -> None:
    from hwmodels import CostModel
    from hwmodels.devices import Platform, get_device, get_link

    r = next(r for r in reduced_results if r.name == "nccl-alltoall-4xh100")
    link = get_link("nvlink4")
    plat = Platform(
        name="t",
        accelerators=(get_device("h100-sxm"),) * 4,
        host=None,
        host_link=None,
        peer_link=link,
        cost_per_hour_usd=0.0,
        source="test",
    )
    want = CostModel(plat, fidelity="calibrated").all_to_all(link, 524288000, 4).total_s
    assert r.simulated == pytest.approx(want)


def _write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / f"{doc['name']}.json"
    p.write_text(json.dumps(doc))
    return p


def test_bad_case_files_name_the_field(tmp_path: Path) -> None:
    good = json.loads((case_dir() / "nccl-alltoall-4xh100.json").read_text())
    load_case(_write(tmp_path, good))
    bad = dict(good, metric="tpot_p50_s")
    with pytest.raises(CaseError, match="metric 'tpot_p50_s'"):
        load_case(_write(tmp_path, bad))
    bad = dict(good, measured=dict(good["measured"], value=-1.0))
    with pytest.raises(CaseError, match="'value' must be a positive"):
        load_case(_write(tmp_path, bad))
    bad = dict(good, collective=dict(good["collective"], link="no-such-link"))
    with pytest.raises(CaseError, match="collective"):
        load_case(_write(tmp_path, bad))
    bad = dict(good, extra=1)
    with pytest.raises(CaseError, match="unknown keys"):
        load_case(_write(tmp_path, bad))
    serving = json.loads((case_dir() / "llamacpp-q5km-h100-b1.json").read_text())
    bad = dict(serving, design=dict(serving["design"], mapping={"cache": {"policy": "nope"}}))
    with pytest.raises(CaseError, match="design"):
        load_case(_write(tmp_path, bad))
    bad = dict(serving, name="other")
    other = tmp_path / "x.json"
    other.write_text(json.dumps(bad))
    with pytest.raises(CaseError, match="file stem"):
        load_case(other)
    with pytest.raises(CaseError, match="unknown case"):
        load_cases(["no-such-case"])


def test_cli_validate_one_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["validate-e2e", "--case", "nccl-alltoall-4xh100", "--case", "deepep-ll-ep8-dispatch", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["results"]] == ["nccl-alltoall-4xh100", "deepep-ll-ep8-dispatch"]
    assert out["summary"]["cases"] == 2
    rc = main(["validate-e2e", "--case", "nccl-alltoall-4xh100", "--out", str(tmp_path / "o")])
    assert rc == 0
    assert (tmp_path / "o" / "validate-e2e.html").is_file() and (tmp_path / "o" / "validate-e2e.json").is_file()
    assert "| nccl-alltoall-4xh100" in capsys.readouterr().out
    assert main(["validate-e2e", "--case", "nope"]) == 1
    assert "unknown case" in capsys.readouterr().err


def test_cli_validate_checks_out_first_and_runs_a_repeated_case_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import codesign.validation as validation

    blocker = tmp_path / "file"
    blocker.write_text("")
    real = validation.run_suite

    def no_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("cases ran before --out was checked")

    monkeypatch.setattr(validation, "run_suite", no_run)
    assert main(["validate-e2e", "--case", "nccl-alltoall-4xh100", "--out", str(blocker / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {blocker / 'o'}: {blocker} is not a folder" in err[0], err
    monkeypatch.setattr(validation, "run_suite", real)
    assert main(["validate-e2e", "--case", "nccl-alltoall-4xh100", "--case", "nccl-alltoall-4xh100", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["results"]] == ["nccl-alltoall-4xh100"]


def test_cli_fit_takes_toml_field_names_and_says_to_pass_param(capsys: pytest.CaptureFixture[str]) -> None:
    from codesign.cli_validate import _fit_params
    from hwmodels.stacks import get_stack

    trt = get_stack("trt-llm")
    assert _fit_params(trt, ["per_step", "cpu_overlap"]) == ("per_step_s", "cpu_overlap")
    assert _fit_params(trt, ["per_layer_s"]) == ("per_layer_s",)
    with pytest.raises(
        ValueError,
        match="--param per_stp: not a fittable stack field; valid: collective_latency, compute_slowdown, cpu_overlap",
    ):
        _fit_params(trt, ["per_stp"])
    assert main(["validate-e2e", "--fit", "trt-llm"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --param FIELD (fields with fitted_on cases: " in err[0], err
    assert "per_step" in err[0].split("fields with fitted_on cases: ")[1], err


def test_server_cases_read_the_steady_mean(reduced_results: list[CaseResult]) -> None:
    """MLPerf's Server logs report the mean TTFT and TPOT of a >= 40-minute run: those cases compare
    the mean over the simulated requests that arrive in the run's steady window
    (`steady_request_mean`), not its p50 and not a mean over its fill and drain."""
    from codesign.design import simulate_design
    from codesign.validation import STEADY_MEAN_METRICS, build_design, steady_request_mean

    by_name = {r.name: r for r in reduced_results}
    for name, metric in (
        ("mlperf41-server-h100-ttft", "ttft_steady_mean_s"),
        ("mlperf41-server-h100-tpot", "tpot_steady_mean_s"),
        ("mlperf41-server-h200-tpot", "tpot_steady_mean_s"),
    ):
        case = load_case(case_dir() / f"{name}.json")
        assert case.metric == metric
        run = simulate_design(build_design(case, reduced=True))
        assert by_name[name].simulated == steady_request_mean(run, STEADY_MEAN_METRICS[metric])[0]
        assert build_design(case).workload.n_requests >= 10_000  # long enough for a steady window


def test_multi_node_collective_cases(tmp_path: Path) -> None:
    """A collective across nodes (``scale_out_link`` + ``devices_per_node``) runs
    `CostModel.all_to_all_nodes` and pays its ``collective.stack``'s call latency; the two fields go
    together and the node size must divide the devices."""
    from dataclasses import replace

    from codesign.validation import collective_time
    from hwmodels.stacks import get_stack

    case = load_cases(["deepep-ll-ep32-dispatch"])[0]
    stack = get_stack("deepep-low-latency")
    t = collective_time(case)
    bare = collective_time(case, stack=replace(stack, collective_latency_s=0.0))
    assert t - bare == pytest.approx(stack.collective_latency_s)
    one_node = dict(case.spec, n_devices=8)
    del one_node["scale_out_link"], one_node["devices_per_node"]
    assert collective_time(replace(case, spec=one_node)) < t  # the NIC is the slower path
    good = json.loads((case_dir() / "deepep-ll-ep32-dispatch.json").read_text())
    for change, message in (
        ({"devices_per_node": 5}, "devices_per_node must divide n_devices"),
        ({"scale_out_link": "no-such-link"}, "no-such-link"),
        ({"stack": "no-such-stack"}, "collective.stack"),
        ({"nodes": 4}, "unknown field"),
    ):
        bad = dict(good, collective=dict(good["collective"], **change))
        with pytest.raises(CaseError, match=message):
            load_case(_write(tmp_path, bad))
    half = dict(good["collective"])
    del half["devices_per_node"]
    with pytest.raises(CaseError, match="go together"):
        load_case(_write(tmp_path, dict(good, collective=half)))
