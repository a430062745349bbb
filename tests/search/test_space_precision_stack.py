"""The search space's precision semantics and its optional ``expert_precision``, ``stack`` and ``kv``
knobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from codesign.design import evaluate
from search.space import SpaceError, default_space, load_space, params_chooser, parse_component_precision, scale_model
from search.study import candidate_design
from workloads import WEIGHT_COMPONENTS, get_model

#: One shape on one platform, a tiny closed batch; the precision and stack knobs varied.
SPACE = """
[study]
fidelity = "analytic"
[workload]
base_model = "mixtral-8x7b"
n_requests = 2
prompt_tokens = 16
output_tokens = 4
[model]
experts_scale = 1
granularity = 1
shared_experts = 0
weight_precision = "fp8"
expert_precision = ["same", "int4:marlin", "0.325:hqq-triton"]
[platform]
preset = ["h100-pcie5-host"]
[mapping]
fast_tier_share = 0.5
cache_policy = "lru"
prefetch = "none"
miss = "fetch"
max_batch = 2
max_tokens = 2048
stack = ["none", "llama.cpp"]
"""


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SPACE, encoding="utf-8")
    return path


def test_default_space_keeps_one_precision_and_no_stack() -> None:
    space = default_space()
    assert space.knobs["model.expert_precision"].choices == ("same",)
    assert space.knobs["mapping.stack"].choices == ("none",)
    assert space.knobs["mapping.kv"].choices == ("reserve",) and space.knobs["mapping.kv"].fixed
    cand = next(space.enumerate())
    assert cand.mapping().stack == "none" and cand.mapping().batching.kv == "reserve"
    assert "mapping.kv" not in cand.params  # a fixed knob is no Optuna parameter: older studies replay
    assert all(getattr(cand.model, f"{c}_bytes_per_weight") is None for c in WEIGHT_COMPONENTS)


def test_weight_precision_clears_component_overrides_then_expert_precision_applies() -> None:
    base = get_model("mixtral-8x7b").with_(
        attention_bytes_per_weight=0.5, attention_format="hqq-triton-g64", expert_bytes_per_weight=0.325
    )
    fp8 = scale_model(base, weight_precision="fp8")
    assert fp8.bytes_per_weight == 1.0
    for comp in WEIGHT_COMPONENTS:
        assert fp8.weight_bytes_of(comp) == 1.0 and fp8.format_of(comp) == "none"
    mixed = scale_model(base, weight_precision="fp8", expert_precision="int4:marlin")
    assert mixed.weight_bytes_of("expert") == 0.5 and mixed.format_of("expert") == "marlin"
    assert mixed.weight_bytes_of("attention") == 1.0 and mixed.name.endswith("-fp8-experts-int4:marlin")
    assert scale_model(base, expert_precision="same") == scale_model(base)
    # without a weight_precision knob the base's own overrides stay
    assert scale_model(base).weight_bytes_of("attention") == 0.5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("same", None),
        ("int4", (0.5, "none")),
        ("int4:marlin", (0.5, "marlin")),
        ("0.325:hqq-triton", (0.325, "hqq-triton")),
    ],
)
def test_parse_component_precision(spec: str, expected: tuple[float, str] | None) -> None:
    assert parse_component_precision(spec) == expected


@pytest.mark.parametrize("spec", ["int2", "0", "-1:marlin", "int4:gptq", "nan", "fp8:marlin", "1:hqq-triton"])
def test_parse_component_precision_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="'same', 'PREC' or 'PREC:FORMAT'"):
        parse_component_precision(spec)


def test_knobs_reach_the_designs(tmp_path: Path) -> None:
    space = load_space(_space(tmp_path))
    assert not space.knobs["model.expert_precision"].fixed and not space.knobs["mapping.stack"].fixed
    cands = list(space.enumerate())
    seen = {(c.model.weight_bytes_of("expert"), c.model.format_of("expert"), c.mapping().stack) for c in cands}
    assert seen == {
        (b, f, s) for b, f in ((1.0, "none"), (0.5, "marlin"), (0.325, "hqq-triton")) for s in ("none", "llama.cpp")
    }
    # the knobs are Optuna parameters: a replayed assignment gives the same design
    cand = next(c for c in cands if c.mapping().stack == "llama.cpp" and c.model.format_of("expert") == "marlin")
    assert cand.params["model.expert_precision"] == "int4:marlin" and cand.params["mapping.stack"] == "llama.cpp"
    again = space.build(params_chooser(cand.params))
    assert candidate_design(again).content_hash == candidate_design(cand).content_hash
    # the stack's host time reaches the metrics (analytic model: llama.cpp pays per layer per step)
    plain = next(
        c
        for c in cands
        if c.mapping().stack == "none"
        and c.model.format_of("expert") == "marlin"
        and c.params == {**cand.params, "mapping.stack": "none"}
    )
    assert (
        evaluate(candidate_design(cand), "analytic").tpot_p50_s
        > evaluate(candidate_design(plain), "analytic").tpot_p50_s
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[model]\nexpert_precision = 'int2'\n", "s.toml:model.expert_precision: expected 'same', 'PREC' or"),
        ("[model]\nexpert_precision = ['same', 'int4:gptq']\n", "s.toml:model.expert_precision: expected 'same'"),
        ("[mapping]\nstack = 'sglang'\n", "s.toml:mapping.stack: expected a serving stack among"),
        ("[mapping]\nstack = ['none', 'missing.toml']\n", "s.toml:mapping.stack: expected a serving stack among"),
        ("[mapping]\nkv = ['reserve', 'lru']\n", "s.toml:mapping.kv:"),
    ],
)
def test_bad_knob_values_name_file_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(str(tmp_path / where))


def test_search_cli_shows_the_knobs_in_the_pareto_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    from codesign.cli import main
    from codesign.design import Design

    out = tmp_path / "out"
    args = ["search", "--space", str(_space(tmp_path)), "--trials", "6", "--out", str(out), "--no-progress"]
    assert main([*args, "--no-report"]) == 0
    assert "stack=" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "pareto.csv").open(encoding="utf-8")))
    assert rows
    for row in rows:
        design = Design.load(out / "pareto" / f"{row['design_hash']}.json")
        assert row["stack"] == design.mapping.stack
        fmt = design.model.format_of("expert")
        own = design.model.expert_bytes_per_weight is not None or fmt != "none"
        expected = f"{design.model.weight_bytes_of('expert'):g}" + (f":{fmt}" if fmt != "none" else "")
        assert row["expert_precision"] == (expected if own else "")


def test_kv_knob_reaches_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    text = SPACE.replace('stack = ["none", "llama.cpp"]', 'kv = ["reserve", "paged"]')
    path.write_text(text.replace('fidelity = "analytic"', 'fidelity = "sim"'), encoding="utf-8")
    space = load_space(path)
    assert not space.knobs["mapping.kv"].fixed
    kvs = {c.params["mapping.kv"]: c.mapping().batching.kv for c in space.enumerate()}
    assert kvs == {"reserve": "reserve", "paged": "paged"}


def test_kv_paged_needs_a_fidelity_that_models_it_and_multi_node_counts_are_whole_nodes(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SPACE.replace('stack = ["none", "llama.cpp"]', 'kv = "paged"'), encoding="utf-8")
    with pytest.raises(SpaceError, match=r"s\.toml:mapping\.kv: expected 'reserve' with study\.fidelity 'analytic'"):
        load_space(path)
    text = SPACE.replace('preset = ["h100-pcie5-host"]', 'preset = ["h800-4node-ib"]\n[platform.h800-4node-ib]\n')
    path.write_text(text.replace("[platform.h800-4node-ib]\n", "[platform.h800-4node-ib]\ndevices = [8, 12]\n"))
    with pytest.raises(SpaceError, match="whole nodes of 8"):
        load_space(path)
    path.write_text(text.replace("[platform.h800-4node-ib]\n", "[platform.h800-4node-ib]\ndevices = [8, 16]\n"))
    assert load_space(path).platforms["h800-4node-ib"]


def test_pareto_rows_name_the_kv_policy() -> None:
    from types import SimpleNamespace

    from codesign.design import Design
    from codesign.mapping import BatchingSpec, Mapping
    from search.export import pareto_rows

    base = Design.from_presets("mixtral-8x7b", "h100-pcie5-host")
    rows = []
    for kv in ("reserve", "paged"):
        design = base.with_(mapping=Mapping(batching=BatchingSpec(kv=kv)))
        trial = SimpleNamespace(number=0, values=[1.0], user_attrs={"design": design.to_dict(), "design_hash": "x"})
        rows.append(pareto_rows([trial], ["tpot_p99"])[0])  # type: ignore[list-item]
    assert [r["kv"] for r in rows] == ["reserve", "paged"]
