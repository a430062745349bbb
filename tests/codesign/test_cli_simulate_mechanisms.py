"""``codesign simulate``: the issue-8 mechanisms reachable from the command line (precision per
component, ``--model FILE.toml``, ``--stack``, ``--eviction``, ``--offload-non-expert``,
``--fetch-whole-layer``), shown in the summary table and in `Design.describe`, bad values refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from codesign.cli import build_parser, main
from codesign.design import Design
from codesign.mapping import CacheSpec
from hwmodels.stacks import get_stack
from workloads import WEIGHT_COMPONENTS, WEIGHT_FORMATS, get_model

#: Small runs: 2 requests of 4 + 4 tokens, a quarter of the experts resident (so experts are fetched).
BASE = [
    "simulate",
    "--model",
    "mixtral-8x7b",
    "--platform",
    "h100-pcie5-host",
    "--requests",
    "2",
    "--prompt-len",
    "4",
    "--output-len",
    "4",
    "--hbm-expert-fraction",
    "0.25",
    "--no-progress",
]
LINK = "pcie-gen5-x16"


def _json(capsys: pytest.CaptureFixture[str], *extra: str, base: list[str] = BASE) -> dict[str, Any]:
    assert main([*base, *extra, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _table(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, str]:
    assert main([*BASE, *extra]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        label, text = line[:26].strip(), line[26:].strip()
        rows[label] = text
    return rows


def test_parser_flags_follow_the_model_components_and_formats() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    simulate = sub.choices["simulate"]  # type: ignore[union-attr]
    dests = {a.dest: a for a in simulate._actions}
    for comp in WEIGHT_COMPONENTS:
        assert f"{comp}_precision" in dests
        assert tuple(dests[f"{comp}_format"].choices) == WEIGHT_FORMATS


def test_expert_precision_scales_the_fetched_bytes_and_the_table_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    bf16 = _json(capsys)
    int4 = _json(capsys, "--expert-precision", "int4", "--expert-format", "marlin")
    # same routing and cache decisions (slots count experts, not bytes): 1/4 of the bytes cross the link
    assert bf16["bytes_moved"][LINK] > 0
    assert int4["bytes_moved"][LINK] == pytest.approx(bf16["bytes_moved"][LINK] / 4, rel=1e-9)
    # attention precision moves no fetched byte
    attn = _json(capsys, "--attention-precision", "fp8")
    assert attn["bytes_moved"][LINK] == pytest.approx(bf16["bytes_moved"][LINK], rel=1e-9)
    rows = _table(capsys, "--expert-precision", "0.325", "--expert-format", "hqq-triton")
    assert rows["precision"] == ("bf16/fp16 (2 B/weight, KV 2 B/element); expert custom (0.325 B/weight, hqq-triton)")


def test_model_wide_precision_clears_then_components_apply(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _table(capsys, "--precision", "fp8", "--expert-precision", "int4", "--dispatch-precision", "fp8")
    assert rows["precision"] == (
        "fp8 (1 B/weight, KV 2 B/element); expert int4 (0.5 B/weight), "
        "all-to-all dispatch 1 B/element, combine 2 B/element"
    )
    rows = _table(capsys, "--precision", "fp8")
    assert rows["precision"] == "fp8 (1 B/weight, KV 2 B/element)"


def test_model_toml_file_equals_the_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = get_model("mixtral-8x7b").with_(expert_bytes_per_weight=0.5, expert_format="marlin")
    path = tmp_path / "mixtral-int4-experts.toml"
    path.write_text(model.to_toml(), encoding="utf-8")
    base = [a if a != "mixtral-8x7b" else str(path) for a in BASE]
    from_file = _json(capsys, base=base)
    from_flags = _json(capsys, "--expert-precision", "int4", "--expert-format", "marlin")
    assert from_file["config_hash"] == from_flags["config_hash"]
    assert from_file["tpot_p50_s"] == from_flags["tpot_p50_s"]
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layers = 'two'\n", encoding="utf-8")
    assert main(["simulate", "--model", str(bad), "--platform", "h100-pcie5-host"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --model {bad}:")


def test_stack_by_name_or_file_charges_its_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    none = _json(capsys)
    llama = _json(capsys, "--stack", "llama.cpp")
    copy = tmp_path / "llama.cpp.toml"
    shutil.copy(Path(__file__).parents[2] / "hwmodels" / "presets" / "stacks" / "llama.cpp.toml", copy)
    by_file = _json(capsys, "--stack", str(copy))
    stack = get_stack("llama.cpp")
    assert stack.per_layer_s > 0
    # every decode step pays at least the stack's per-layer host time (no overlap in llama.cpp)
    assert llama["tpot_p50_s"] >= none["tpot_p50_s"] + 32 * stack.per_layer_s * (1 - 1e-9)
    assert by_file["tpot_p50_s"] == llama["tpot_p50_s"]
    rows = _table(capsys, "--stack", "llama.cpp")
    assert rows["serving stack"].startswith("llama.cpp (host ") and "LM head + MoE permute" in rows["serving stack"]
    assert "serving stack" not in _table(capsys)
    assert rows["serving stack"].endswith("; unfitted, run at 0: per_step, per_sequence")
    vllm = _table(capsys, "--stack", "vllm")["serving stack"]
    assert vllm.endswith("; unfitted, run at 0: per_step, per_sequence, cpu_overlap"), vllm


def test_eviction_and_streamed_weights_move_more_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    discard = _json(capsys)
    copy_back = _json(capsys, "--eviction", "copy-back")
    streamed = _json(capsys, "--offload-non-expert")
    whole = _json(capsys, "--fetch-whole-layer")
    for other in (copy_back, streamed, whole):
        assert other["bytes_moved"][LINK] > discard["bytes_moved"][LINK]
    rows = _table(capsys, "--eviction", "copy-back", "--offload-non-expert", "--fetch-whole-layer")
    assert rows["expert cache"].endswith("copy-back eviction")
    assert rows["weights offloaded"] == (
        "non-expert weights streamed per layer, every offloaded expert of a layer fetched per step (from host)"
    )


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--expert-precision", "int2"], "--expert-precision 'int2'"),
        (["--attention-precision", "0"], "--attention-precision '0'"),
        (["--combine-precision", "inf"], "--combine-precision 'inf'"),
        (["--precision", "int3"], "--precision 'int3'"),
        (["--stack", "sglang"], "--stack sglang"),
        (["--stack", "missing.toml"], "--stack missing.toml"),
        (["--fetch-whole-layer", "--hbm-expert-fraction", "1"], "--fetch-whole-layer"),
        (["--fetch-whole-layer", "--hbm-expert-fraction", "0.5", "--miss", "cpu"], "--fetch-whole-layer"),
        (["--eviction", "copy-back", "--hbm-expert-fraction", "1"], "--eviction copy-back"),
        (["--fetch-whole-layer", "--hbm-expert-fraction", "0.5", "--miss", "cost"], "--fetch-whole-layer"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(
    extra: list[str], flag: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import codesign.cli_simulate as cli_simulate

    def no_model(spec: str) -> None:
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(cli_simulate, "load_model", no_model)
    assert main([*BASE, *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag}"), err


def test_a_packed_format_on_16_bit_weights_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--expert-format", "marlin"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--expert-format" in err[0] and "expert_format" not in err[0], err


def test_bad_choices_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--eviction", "swap"], ["--expert-format", "gptq"], ["--kv", "lru"]):
        with pytest.raises(SystemExit) as exc:
            main([*BASE, *extra])
        assert exc.value.code == 2
        assert f"argument {extra[0]}: invalid choice" in capsys.readouterr().err


def test_design_refuses_the_flags_its_file_fixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Design.from_presets("deepseek-v2-lite", "h100-pcie5-host").save(tmp_path / "d.json")
    args = ["simulate", "--design", str(path), "--expert-precision", "int4", "--stack", "vllm", "--offload-non-expert"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "drop --expert-precision, --stack, --offload-non-expert" in err


def test_describe_names_component_precision_and_stack() -> None:
    d = Design.from_presets("mixtral-8x7b", "h100-pcie5-host")
    assert "(E=8, k=2, 2 B/weight)" in d.describe() and "stack" not in d.describe()
    model = d.model.with_(expert_bytes_per_weight=0.325, expert_format="hqq-triton")
    mapping = d.mapping.with_(
        stack="hf-eager", offload_non_expert=True, cache=CacheSpec(expert_fraction=0.25, eviction="copy-back")
    )
    text = Design(model=model, platform=d.platform, mapping=mapping, workload=d.workload, cost=d.cost).describe()
    assert "expert custom (0.325 B/weight, hqq-triton)" in text
    assert "stack hf-eager" in text and "non-expert streamed" in text and "cache lru 25% copy-back" in text


def test_kv_policy_flag_reaches_the_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    """``--kv paged`` runs `BatchingSpec.kv = "paged"`: the summary says so (with its preemption
    counters) and the table's batch row names it; the default stays ``reserve``."""
    paged = _json(capsys, "--kv", "paged")
    assert paged["kv_policy"] == "paged" and paged["kv_preemptions"] == 0 and paged["kv_recomputed_tokens"] == 0
    assert _json(capsys)["kv_policy"] == "reserve"
    assert _table(capsys, "--kv", "paged")["batch"].endswith("(fifo, KV paged)")
    assert _table(capsys)["batch"].endswith("(fifo)")
