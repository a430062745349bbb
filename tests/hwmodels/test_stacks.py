"""Serving-stack presets: loading, one-line errors, JSON round trip, the CPU-time formula."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwmodels.stacks import (
    ServingStack,
    StackError,
    get_stack,
    load_stack_file,
    resolve_stack,
    stack_from_dict,
    stack_numbers,
    stack_preset_names,
    stack_to_dict,
)

REQUIRED = {"none", "trt-llm", "vllm", "llama.cpp", "hf-eager", "deepspeed-zero3"}


def test_presets_load_and_every_number_has_a_source() -> None:
    assert set(stack_preset_names()) >= REQUIRED
    for name in stack_preset_names():
        s = get_stack(name)
        assert s.name == name
        fields = {p.field for p in s.params}
        assert {"per_step_s", "per_layer_s", "per_sequence_s", "cpu_overlap"} <= fields
        plain = {"per_step_s", "per_layer_s", "per_sequence_s", "cpu_overlap", "compute_slowdown"}
        assert fields <= plain | {"collective_latency_s"}
        if s.compute_slowdown > 0:
            assert "compute_slowdown" in fields, f"{name}: a GEMM slowdown without its source"
        for p in s.params:
            assert p.source.strip()
            assert not (p.free and p.fitted_on), f"{name}.{p.field}: free and fitted at once"
            if p.free:
                assert "free" in p.source
    assert not get_stack("none").charges_anything
    assert get_stack("trt-llm").lm_head and get_stack("trt-llm").moe_permute


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(StackError, match=r"unknown serving stack .nope.; valid: .*trt-llm"):
        get_stack("nope")


def _write(tmp: Path, body: str) -> Path:
    p = tmp / "s.toml"
    p.write_text('name = "s"\nsource = "test"\n' + body)
    return p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('per_step = { value = "1 ms" }', "per_step.*missing 'source'"),
        ('per_step = "1 ms"', "per_step.*every number needs a source"),
        ('per_step = { value = "-1 ms", source = "x" }', "per_step.*>= 0"),
        ('per_step = { value = "1 GB", source = "x" }', "per_step"),
        ('cpu_overlap = { value = 1.5, source = "x" }', "cpu_overlap.*fraction"),
        ('per_layer = { value = "1 us", source = "x", fitted_on = ["one"] }', "one case only"),
        ('per_layer = { value = "1 us", source = "x", colour = 1 }', "unknown keys"),
        ("speed = 3", "unknown fields"),
        ('lm_head = "yes"', "lm_head.*true or false"),
    ],
)
def test_bad_files_name_the_field(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(StackError, match=message):
        get_stack(str(_write(tmp_path, body)))


def test_file_units_and_fitted_on(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        'per_step = { value = "2 ms", source = "fit", fitted_on = ["a", "b"] }\n'
        'per_layer = { value = 30, unit = "us", source = "[P] x" }\n'
        'cpu_overlap = { value = 0.5, source = "[P] y" }\nlm_head = true\n',
    )
    s = get_stack(str(p))
    assert s.per_step_s == pytest.approx(2e-3)
    assert s.per_layer_s == pytest.approx(30e-6)
    assert s.per_sequence_s == 0.0
    assert s.cpu_overlap == 0.5
    prm = s.param("per_step_s")
    assert prm is not None and prm.fitted_on == ("a", "b")


def test_round_trip_and_numbers() -> None:
    s = get_stack("hf-eager")
    again = stack_from_dict(stack_to_dict(s))
    assert again == s
    assert resolve_stack(stack_to_dict(s)) == s
    assert stack_numbers(s) == stack_numbers(again)
    t = ServingStack(name="hf-eager", per_layer_s=1e-4, lm_head=True, moe_permute=True)
    assert stack_numbers(t) != stack_numbers(s)
    with pytest.raises(StackError, match="unknown field"):
        stack_from_dict({"name": "x", "per_token_s": 1.0})


def test_cpu_and_exposed_time() -> None:
    s = ServingStack(name="x", per_step_s=1e-3, per_layer_s=1e-4, per_sequence_s=1e-5, cpu_overlap=0.0)
    cpu = s.cpu_s(32, 4)
    assert cpu == pytest.approx(1e-3 + 32e-4 + 4e-5)
    assert s.exposed_s(cpu, 0.01) == pytest.approx(cpu)  # serial: all of it adds
    full = ServingStack(name="y", per_step_s=1e-3, cpu_overlap=1.0)
    assert full.exposed_s(1e-3, 5e-3) == 0.0  # hidden behind a longer GPU step
    assert full.exposed_s(1e-3, 4e-4) == pytest.approx(6e-4)  # only as far as the GPU is busy: max(cpu, gpu)
    with pytest.raises(StackError, match="cpu_overlap"):
        ServingStack(name="z", cpu_overlap=2.0)


def test_fitted_on_names_shipped_validation_cases() -> None:
    """Every ``fitted_on`` of a preset stack names a validation case file that exists (a renamed or
    mistyped case would leave a fitted number without its evidence) and that names this stack."""
    import json

    from codesign.validation import case_dir

    cases = {p.stem: p for p in case_dir().glob("*.json")}
    for name in stack_preset_names():
        for p in get_stack(name).params:
            for case in p.fitted_on:
                assert case in cases, f"{name}.{p.field}: fitted_on names unknown case {case!r}"
                doc = json.loads(cases[case].read_text())
                stack = (doc["design"]["mapping"] if "design" in doc else doc["collective"]).get("stack")
                assert stack == name, f"{name}.{p.field}: case {case!r} runs stack {stack!r}"


def test_compute_slowdown_is_a_sourced_fraction(tmp_path: Path) -> None:
    """``compute_slowdown``: a plain fraction >= 0 with a source; the stack's GEMM rate is 1 / (1 + it)."""
    p = _write(tmp_path, 'compute_slowdown = { value = 0.25, source = "fitted", fitted_on = ["a", "b"] }\n')
    s = load_stack_file(p)
    assert s.compute_slowdown == 0.25 and s.compute_scale == pytest.approx(0.8) and s.charges_anything
    assert s.param("compute_slowdown") is not None and s.param("compute_slowdown").fitted_on == ("a", "b")
    assert stack_from_dict(stack_to_dict(s)) == s
    for bad in ("-0.1", "true", '"10 ms"'):
        q = tmp_path / f"bad{abs(hash(bad))}.toml"
        q.write_text(f'name = "s"\nsource = "t"\ncompute_slowdown = {{ value = {bad}, source = "x" }}\n')
        with pytest.raises(StackError, match="compute_slowdown"):
            load_stack_file(q)
    with pytest.raises(StackError, match="compute_slowdown"):
        ServingStack(name="s", compute_slowdown=-1.0)
    assert get_stack("none").compute_scale == 1.0


def test_collective_latency_is_an_optional_sourced_time(tmp_path: Path) -> None:
    """``collective_latency``: absent -> None (the link's own), a time with a source otherwise; an
    absent one leaves the content hash (`stack_numbers`) as it was."""
    assert get_stack("none").collective_latency_s is None
    assert "collective_latency_s" not in stack_numbers(get_stack("none"))
    p = _write(tmp_path, 'collective_latency = { value = "17 us", source = "fitted", fitted_on = ["a", "b"] }\n')
    s = load_stack_file(p)
    assert s.collective_latency_s == pytest.approx(17e-6)
    assert stack_numbers(s)["collective_latency_s"] == pytest.approx(17e-6)
    assert s.param("collective_latency_s") is not None and s.param("collective_latency_s").fitted_on == ("a", "b")
    assert stack_from_dict(stack_to_dict(s)) == s
    q = tmp_path / "bad.toml"
    q.write_text('name = "s"\nsource = "t"\ncollective_latency = { value = "-3 us", source = "x" }\n')
    with pytest.raises(StackError, match="collective_latency"):
        load_stack_file(q)
    with pytest.raises(StackError, match="collective_latency_s"):
        ServingStack(name="s", collective_latency_s=float("nan"))
    assert get_stack("deepep-low-latency").collective_latency_s > 0
