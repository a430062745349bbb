"""`workloads.precision`: one line naming a model's weight precision, per component where they differ."""

from __future__ import annotations

from pathlib import Path

from workloads import get_model, mixed_precision, precision_label


def test_uniform_model_reads_as_before() -> None:
    m = get_model("mixtral-8x7b").with_precision("fp8")
    assert not mixed_precision(m)
    assert precision_label(m) == "fp8 (1 B/weight)"
    assert precision_label(m, kv=True) == "fp8 (1 B/weight, KV 2 B/element)"
    assert precision_label(m.to_dict()) == precision_label(m)


def test_components_that_differ_are_named_in_order() -> None:
    m = get_model("mixtral-8x7b").with_(
        expert_bytes_per_weight=0.325,
        expert_format="hqq-triton",
        attention_bytes_per_weight=0.5,
        attention_format="hqq-triton-g64",
        embedding_bytes_per_weight=2.0,  # equal to the model-wide precision: not named
    )
    assert mixed_precision(m)
    assert precision_label(m) == (
        "bf16/fp16 (2 B/weight); attention int4 (0.5 B/weight, hqq-triton-g64), "
        "expert custom (0.325 B/weight, hqq-triton)"
    )
    # a format on the model-wide precision is named too (its dequantisation is charged)
    marlin = get_model("mixtral-8x7b").with_precision("int4").with_(expert_format="marlin")
    assert precision_label(marlin) == "int4 (0.5 B/weight); expert int4 (0.5 B/weight, marlin)"


def test_all_to_all_bytes_named_when_not_bf16() -> None:
    m = get_model("deepseek-v2-lite").with_(dispatch_bytes_per_elem=1.0)
    assert mixed_precision(m)
    assert precision_label(m).endswith("; all-to-all dispatch 1 B/element, combine 2 B/element")


def test_package_exports_the_model_file_reader(tmp_path: Path) -> None:
    import workloads
    from workloads import model as model_module

    assert workloads.load_model is model_module.load_model
    assert workloads.WEIGHT_COMPONENTS == model_module.WEIGHT_COMPONENTS
    assert workloads.WEIGHT_FORMATS == model_module.WEIGHT_FORMATS
    m = get_model("mixtral-8x7b").with_(expert_bytes_per_weight=0.5, expert_format="marlin")
    path = tmp_path / "m.toml"
    path.write_text(m.to_toml(), encoding="utf-8")
    assert workloads.load_model(path) == m
    assert precision_label(workloads.load_model(path)) == "bf16/fp16 (2 B/weight); expert int4 (0.5 B/weight, marlin)"
