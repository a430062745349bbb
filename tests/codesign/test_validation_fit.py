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
