"""The stack calibration tool (`codesign.validation_fit`, ``codesign validate-e2e --fit``): a real
least-squares optimisation over the simulator recovers a known per-step time from "measurements"
the simulator itself produced with that time; it refuses a fit on one case per parameter, a case of
another stack, an unknown parameter; it writes the fitted value with ``fitted_on`` into the TOML
(re-readable, other lines untouched); the CLI reports fit and held-out cases apart.

The synthetic cases are batch-1 decodes of 12 tokens (a fraction of a second each).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codesign.cli import main
from codesign.validation import load_cases
from codesign.validation_fit import (
    FitError,
    case_stack_name,
    default_fit_params,
    default_fit_set,
    evaluate_cases,
    fit_stack,
    stacked_design,
    write_fitted,
)
from hwmodels.stacks import get_stack, load_stack_file

TRUE_PER_STEP_S = 2.5e-3

_STACK_TOML = """# test stack
name = "fit-test"
source = "synthetic stack of tests/codesign/test_validation_fit.py"
lm_head = false
moe_permute = false
per_step = { value = "0 ms", source = "free, to be fitted: synthetic", free = true }
per_layer = { value = "0 us", source = "[P] none" }
per_sequence = { value = "0 us", source = "[P] none" }
cpu_overlap = { value = 0.0, source = "[P] none" }
"""


def _case(name: str, stack_path: Path, output_tokens: int, metric: str, measured: float) -> dict:
    return {
        "name": name,
        "kind": "serving",
        "description": "synthetic",
        "stack": "fit-test",
        "metric": metric,
        "measured": {"value": measured, "unit": "s", "source": "synthetic (simulated)", "conditions": "test"},
        "design": {
            "model": "mixtral-8x7b",
            "model_overrides": {"bytes_per_weight": 1.0},
            "platform": "h100-pcie5-host",
            "mapping": {"stack": str(stack_path), "batching": {"max_batch": 1, "max_tokens": 512}},
            "workload": {"n_requests": 1, "prompt_tokens": 16, "output_tokens": output_tokens},
        },
        "assumptions": [{"what": "all", "value": "-", "why": "synthetic"}],
        "gaps": ["none"],
        "reduced": {"output_tokens": 4},
        "fit": {"output_tokens": 8},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A stack file (per_step free at 0) and three cases whose "measurements" are the simulator's
    answers with the true per-step time."""
    d = tmp_path_factory.mktemp("fit")
    stack_path = d / "fit-test.toml"
    stack_path.write_text(_STACK_TOML)
    cases_dir = d / "cases"
    cases_dir.mkdir()
    specs = [("fit-a", 12, "tpot_p50_s"), ("fit-b", 12, "throughput_tok_s"), ("fit-c", 10, "tpot_p50_s")]
    true_stack = get_stack(str(stack_path)).__class__(
        **{**_fields(get_stack(str(stack_path))), "per_step_s": TRUE_PER_STEP_S}
    )
    for name, out, metric in specs:
        (cases_dir / f"{name}.json").write_text(json.dumps(_case(name, stack_path, out, metric, 1.0)))
    for c in load_cases(None, cases_dir):
        from codesign.design import evaluate

        value = float(getattr(evaluate(stacked_design(c, true_stack)), c.metric))
        doc = json.loads(Path(c.path).read_text())
        doc["measured"]["value"] = value
        Path(c.path).write_text(json.dumps(doc))
    return stack_path, cases_dir


def _fields(stack: object) -> dict:
    from dataclasses import fields

    return {f.name: getattr(stack, f.name) for f in fields(stack)}  # type: ignore[arg-type]


def test_fit_recovers_a_known_per_step_time(setup: tuple[Path, Path]) -> None:
    stack_path, cases_dir = setup
    stack = get_stack(str(stack_path))
    assert default_fit_params(stack) == ("per_step_s",) and default_fit_set(stack, ("per_step_s",)) == ()
    cases = load_cases(["fit-a", "fit-b"], cases_dir)
    assert {case_stack_name(c) for c in cases} == {"fit-test"}
    seen: list[dict] = []
    res = fit_stack(stack, cases, ("per_step_s",), size="full", max_evals=30, progress=seen.append)
    assert res.start == {"per_step_s": 0.0}
    assert res.values["per_step_s"] == pytest.approx(TRUE_PER_STEP_S, rel=0.03)
    assert res.rms_log_error < 0.01 and res.n_evals == len(seen) == len(res.history) >= 3
    assert seen[0]["rms_log_error"] > 0.1  # it started far away: the optimiser did the work
    assert res.fitted_on == ("fit-a", "fit-b")
    # the held-out case is predicted by the fitted value, at full size
    held = evaluate_cases(stack.__class__(**{**_fields(stack), **res.values}), load_cases(["fit-c"], cases_dir))
    assert abs(held[0].error) < 0.03


def test_fit_refuses_what_it_must_not_do(setup: tuple[Path, Path]) -> None:
    stack_path, cases_dir = setup
    stack = get_stack(str(stack_path))
    one = load_cases(["fit-a"], cases_dir)
    with pytest.raises(FitError, match="need >= 2 fit cases"):
        fit_stack(stack, one, ("per_step_s",))
    two = load_cases(["fit-a", "fit-b"], cases_dir)
    with pytest.raises(FitError, match="need >= 4 fit cases"):
        fit_stack(stack, two, ("per_step_s", "per_sequence_s"))
    with pytest.raises(FitError, match="unknown stack parameter"):
        fit_stack(stack, two, ("per_token_s",))
    with pytest.raises(FitError, match="runs stack 'fit-test', not 'trt-llm'"):
        fit_stack(get_stack("trt-llm"), two, ("per_step_s",))
    with pytest.raises(FitError, match="listed twice"):
        fit_stack(stack, [two[0], two[0]], ("per_step_s",))


def test_write_fitted_keeps_the_other_lines(setup: tuple[Path, Path], tmp_path: Path) -> None:
    stack_path, _ = setup
    copy = tmp_path / "fit-test.toml"
    copy.write_text(stack_path.read_text())
    with pytest.raises(FitError, match="two or more"):
        write_fitted(copy, {"per_step_s": 1e-3}, ["fit-a"], how="test")
    write_fitted(copy, {"per_step_s": 1.234e-3}, ["fit-b", "fit-a"], how="test fit")
    st = load_stack_file(copy)
    assert st.per_step_s == pytest.approx(1.234e-3)
    prm = st.param("per_step_s")
    assert prm is not None and prm.fitted_on == ("fit-a", "fit-b") and not prm.free
    assert prm.source.startswith("fitted: test fit | was: synthetic")
    old, new = stack_path.read_text().splitlines(), copy.read_text().splitlines()
    assert [a for a, b in zip(old, new, strict=True) if a != b] == [old[5]]  # only the per_step line moved
    # a second fit rewrites the same line and keeps the original source once
    write_fitted(copy, {"per_step_s": 2e-3}, ["fit-a", "fit-b"], how="again")
    assert load_stack_file(copy).param("per_step_s").source == "fitted: again | was: synthetic"  # type: ignore[union-attr]


def test_cli_fit_reports_fit_and_held_out(setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    stack_path, cases_dir = setup
    args = ["validate-e2e", "--cases-dir", str(cases_dir), "--fit", str(stack_path), "--on", "fit-a", "--on", "fit-c"]
    assert main([*args, "--max-evals", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fit"]["fitted_on"] == ["fit-a", "fit-c"]
    assert [r["name"] for r in out["fit_cases"]] == ["fit-a", "fit-c"]
    assert [r["name"] for r in out["held_out"]] == ["fit-b"]
    assert main(["validate-e2e", "--cases-dir", str(cases_dir), "--fit", str(stack_path)]) == 1
    assert "give them with --on" in capsys.readouterr().err
    assert main(["validate-e2e", "--cases-dir", str(cases_dir), "--on", "fit-a"]) == 1
    assert "go with --fit" in capsys.readouterr().err


def test_write_fitted_keeps_the_final_newline(tmp_path: Path) -> None:
    """A fitted key on the file's last line is rewritten in place; the newline that ends it stays."""
    p = tmp_path / "last.toml"
    p.write_text(
        'name = "last"\nsource = "test"\n'
        'per_step = { value = "1 ms", source = "free, to be fitted", free = true }\n'
        'compute_slowdown = { value = 0.0, source = "free, to be fitted", free = true }\n'
    )
    write_fitted(p, {"compute_slowdown": 0.25, "per_step_s": 2e-3}, ["fit-a", "fit-b"], how="test")
    text = p.read_text()
    assert text.endswith("}\n") and text.count("\n") == 4
    st = load_stack_file(p)
    assert st.compute_slowdown == 0.25 and st.per_step_s == pytest.approx(2e-3)


def test_fit_a_collective_latency_on_collective_cases() -> None:
    """``collective_latency_s`` fits on collective cases (microseconds per evaluation): from zero,
    the fit on the two EP8 DeepEP cases lands on the preset's value and the other rows are predicted."""
    from dataclasses import replace

    stack = get_stack("deepep-low-latency")
    assert default_fit_params(stack) == ("collective_latency_s",)
    fit_set = default_fit_set(stack, ("collective_latency_s",))
    assert fit_set == ("deepep-ll-ep8-combine", "deepep-ll-ep8-dispatch")
    cases = load_cases(list(fit_set))
    assert all(case_stack_name(c) == stack.name for c in cases)
    res = fit_stack(replace(stack, collective_latency_s=None), cases, ("collective_latency_s",), max_evals=20)
    assert res.start == {"collective_latency_s": 0.0}
    assert res.values["collective_latency_s"] == pytest.approx(stack.collective_latency_s, rel=0.02)
    held = evaluate_cases(stack, load_cases(["deepep-ll-ep64-combine", "deepep-ll-ep16-dispatch"]))
    assert all(abs(r.error) < 0.2 for r in held)
    assert case_stack_name(load_cases(["nccl-alltoall-4xh100"])[0]) is None
    # a field the fit cases cannot move is refused, not "fitted" to whatever value it started at
    with pytest.raises(FitError, match="per_step_s changes the answer of 0 of the fit cases"):
        fit_stack(stack, cases, ("per_step_s",))
    llama = load_cases(["llamacpp-q5km-a100-b1", "llamacpp-q5km-h100-b1"])  # one GPU: no all-to-all
    with pytest.raises(FitError, match="collective_latency_s changes the answer of 0"):
        fit_stack(get_stack("llama.cpp"), llama, ("collective_latency_s",))


# ------------------------------------------------------------------------------ power-law exponent
def _true_exponent() -> float:
    """An exponent 0.3 away from the shipped one (which is fitted and may move): the fit has work to do."""
    from hwmodels.calibration import load_default_profile

    law = load_default_profile("h100").power_law
    assert law is not None
    return law.exponent + 0.3 if law.exponent < 1.0 else law.exponent - 0.3


TRUE_EXPONENT = _true_exponent()


def _power_case(name: str, prompt: int, measured: float, power_limit: float | None = 350.0) -> dict:
    """A prefill-bound case (compute-bound: its TTFT moves with the power limit) on the H100 SXM profile."""
    cost: dict = {"profile": "h100"}
    if power_limit is not None:
        cost["power_limit"] = power_limit
    return {
        "name": name,
        "kind": "serving",
        "description": "synthetic power-limited prefill",
        "stack": "none",
        "metric": "ttft_p50_s",
        "measured": {"value": measured, "unit": "s", "source": "synthetic (simulated)", "conditions": "test"},
        "design": {
            "model": "mixtral-8x7b",
            "model_overrides": {"bytes_per_weight": 1.0},
            "platform": "h100-pcie5-host",
            "mapping": {"batching": {"max_batch": 4, "max_tokens": 8192}},
            "workload": {"n_requests": 4, "prompt_tokens": prompt, "output_tokens": 2},
            "cost": cost,
        },
        "assumptions": [{"what": "all", "value": "-", "why": "synthetic"}],
        "gaps": ["none"],
        "reduced": {"n_requests": 2},
    }


@pytest.fixture(scope="module")
def power_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two power-limited cases whose "measurements" are the simulator's answers at TRUE_EXPONENT, and
    one at the device's own power."""
    from dataclasses import replace

    from codesign.design import evaluate
    from codesign.validation import build_design

    d = tmp_path_factory.mktemp("power")
    for name, prompt, limit in (("pw-a", 1024, 350.0), ("pw-b", 2048, 450.0), ("pw-free", 1024, None)):
        (d / f"{name}.json").write_text(json.dumps(_power_case(name, prompt, 1.0, limit)))
    for c in load_cases(None, d):
        design = build_design(c)
        if design.cost.power_limit is not None:
            design = design.with_(cost=replace(design.cost, power_exponent=TRUE_EXPONENT))
        doc = json.loads(Path(c.path).read_text())
        doc["measured"]["value"] = float(getattr(evaluate(design), c.metric))
        Path(c.path).write_text(json.dumps(doc))
    return d


def test_fit_power_exponent_recovers_a_known_exponent(power_cases: Path) -> None:
    from codesign.validation_fit import fit_power_exponent
    from hwmodels.calibration import load_default_profile

    cases = load_cases(["pw-a", "pw-b"], power_cases)
    start = load_default_profile("h100").power_law
    assert start is not None and abs(start.exponent - TRUE_EXPONENT) > 0.25  # it has work to do
    seen: list[dict] = []
    res = fit_power_exponent(cases, size="full", max_evals=14, progress=seen.append)
    assert res.profile == "h100" and res.start == start.exponent
    assert res.exponent == pytest.approx(TRUE_EXPONENT, abs=0.02)
    assert res.rms_log_error < 0.005 < seen[0]["rms_log_error"]
    assert res.n_evals == len(seen) <= 14 and res.fitted_on == ("pw-a", "pw-b")


def test_fit_power_exponent_refuses_what_it_must_not_do(power_cases: Path) -> None:
    from codesign.validation_fit import fit_power_exponent

    a, b, free = (load_cases([n], power_cases)[0] for n in ("pw-a", "pw-b", "pw-free"))
    with pytest.raises(FitError, match=r"needs >= 2 fit cases \(never one\)"):
        fit_power_exponent([a])
    with pytest.raises(FitError, match=r"sets no cost\.power_limit"):
        fit_power_exponent([a, free])
    with pytest.raises(FitError, match="listed twice"):
        fit_power_exponent([a, a])
    with pytest.raises(FitError, match="max_evals must be >= 4"):
        fit_power_exponent([a, b], max_evals=2)


def test_write_power_law_keeps_the_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from codesign.validation_fit import write_power_law
    from hwmodels import calibration
    from hwmodels.calibration import CalibrationProfile

    copy = tmp_path / "h100.json"
    copy.write_text(calibration.shipped_profile_file("h200").read_text())
    monkeypatch.setattr(calibration, "shipped_profile_file", lambda name: copy)
    before = CalibrationProfile.load(copy)
    with pytest.raises(FitError, match="two or more distinct cases"):
        write_power_law("h100", 0.5, ["only"], how="test")
    write_power_law("h100", 0.71234, ["b", "a"], how="test fit")
    after = CalibrationProfile.load(copy)
    assert after.power_law is not None and after.power_law.exponent == 0.7123
    assert after.power_law.fitted_on == ("a", "b") and after.power_law.source.startswith("fitted: test fit | was: ")
    assert after.peaks == before.peaks and after.gemm_fit == before.gemm_fit
    assert copy.read_text().endswith("}\n")


def test_cli_fit_power_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-e2e", "--fit-power"]) != 0
    assert "--fit-power needs the fit cases" in capsys.readouterr().err
    assert main(["validate-e2e", "--fit-power", "--fit", "trt-llm", "--on", "x"]) != 0
    assert "--fit-power takes --on CASE" in capsys.readouterr().err


def test_cli_fit_power_scores_fit_and_moved_cases(power_cases: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from codesign.validation_fit import power_law_cases

    args = ["validate-e2e", "--fit-power", "--on", "pw-a", "--on", "pw-b", "--cases-dir", str(power_cases)]
    assert main([*args, "--max-evals", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["fit_cases"]] == ["pw-a", "pw-b"] and out["held_out"] == []
    assert abs(out["fit"]["exponent"] - TRUE_EXPONENT) < 0.1 and out["fit"]["n_evals"] <= 8
    # on the shipped cases: every power-limited case, and the derived profiles the law limits (NVL, PCIe)
    shipped = {c.name for c in power_law_cases(load_cases(None), "h100")}
    assert {"mlperf41-offline-h200-maxq", "mlperf41-server-h200-maxq-tpot", "mlperf41-offline-h100nvl"} <= shipped
    assert "mlperf41-offline-h200" not in shipped and "mlperf41-offline-gh200" not in shipped
