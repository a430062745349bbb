"""Precision per weight component and all-to-all activation precision on `MoEModel`: defaults keep
every preset's numbers, per-component bytes, round trips through JSON and TOML, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from workloads import MoEModel, get_model, model_preset_names
from workloads.model import WEIGHT_COMPONENTS, load_model

MO_2BIT = {  # Mixtral-offloading paper s.4.3: 4-bit HQQ attention, 2-bit HQQ experts (~2.6 bits)
    "attention_bytes_per_weight": 0.5,
    "attention_format": "hqq-triton-g64",
    "expert_bytes_per_weight": 0.325,
    "expert_format": "hqq-triton",
}


@pytest.mark.parametrize("name", model_preset_names())
def test_defaults_reproduce_the_single_precision_model(name: str) -> None:
    m = get_model(name)
    bpw = m.bytes_per_weight
    assert all(m.weight_bytes_of(c) == bpw for c in WEIGHT_COMPONENTS)
    assert all(m.format_of(c) == "none" for c in WEIGHT_COMPONENTS)
    assert sum(m.params_of(c) for c in WEIGHT_COMPONENTS) == m.total_params
    assert m.total_bytes == m.total_params * bpw
    assert m.non_expert_bytes == (m.total_params - m.n_moe_layers * m.n_experts * m.params_per_expert) * bpw
    assert m.bytes_per_expert == m.params_per_expert * bpw
    assert m.dispatch_bytes_per_token == m.combine_bytes_per_token == m.d_model * 2.0


def test_two_bit_experts_are_an_eighth_of_bf16() -> None:
    bf16 = get_model("mixtral-8x7b")
    two = bf16.with_(expert_bytes_per_weight=0.25)
    assert two.bytes_per_expert == bf16.bytes_per_expert / 8
    assert two.non_expert_bytes == bf16.non_expert_bytes  # only the experts changed
    assert two.total_bytes == pytest.approx(bf16.non_expert_bytes + bf16.bytes_of("expert") / 8)


def test_each_component_counts_its_own_bytes() -> None:
    base = get_model("deepseek-v2-lite")  # attention (MLA), shared experts, a dense first layer
    for comp in WEIGHT_COMPONENTS:
        m = base.with_(**{f"{comp}_bytes_per_weight": 0.5})
        delta = base.total_bytes - m.total_bytes
        assert delta == pytest.approx(base.params_of(comp) * 1.5), comp
    m = base.with_(attention_bytes_per_weight=0.5, shared_bytes_per_weight=1.0, dense_bytes_per_weight=4.0)
    assert m.attention_bytes == base.params_attention * 0.5
    assert m.bytes_shared_experts == base.params_shared_experts * 1.0
    assert m.router_bytes == base.router_params * 4.0
    assert m.with_(embedding_bytes_per_weight=1.0).lm_head_bytes == base.vocab_size * base.d_model * 1.0
    dense = m.dense_ffn_model()
    assert dense.expert_ffn_dim == base.dense_ffn_dim and dense.bytes_per_expert == base.params_dense_ffn * 4.0
    with pytest.raises(ValueError, match="no dense FFN"):
        get_model("mixtral-8x7b").dense_ffn_model()


def test_with_precision_whole_model_or_components() -> None:
    m = get_model("mixtral-8x7b").with_(**MO_2BIT)
    fp8 = m.with_precision("fp8")
    assert all(fp8.weight_bytes_of(c) == 1.0 for c in WEIGHT_COMPONENTS)  # overrides cleared
    int4 = get_model("mixtral-8x7b").with_precision("int4", components=("expert", "shared"))
    assert int4.weight_bytes_of("expert") == 0.5 and int4.weight_bytes_of("attention") == 2.0
    with pytest.raises(ValueError, match="unknown weight component"):
        m.with_precision("fp8", components=("experts",))


def test_fp8_dispatch_bf16_combine() -> None:
    m = get_model("deepseek-v3").with_(dispatch_bytes_per_elem=1.0)
    assert m.dispatch_bytes_per_token == 7168 * 1.0
    assert m.combine_bytes_per_token == 7168 * 2.0


def test_json_round_trip(tmp_path: Path) -> None:
    m = get_model("mixtral-8x7b").with_(**MO_2BIT, dispatch_bytes_per_elem=1.0)
    back = MoEModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m
    path = tmp_path / "m.json"
    path.write_text(json.dumps(m.to_dict()))
    assert load_model(path) == m


def test_toml_round_trip(tmp_path: Path) -> None:
    m = get_model("deepseek-v2-lite").with_(expert_bytes_per_weight=0.325, expert_format="marlin")
    path = tmp_path / "m.toml"
    path.write_text(m.to_toml())
    back = load_model(path)
    assert back == m and back.attention_bytes_per_weight is None
    assert load_model("mixtral") == get_model("mixtral-8x7b")  # a preset name still works


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expert_bytes_per_weight", 0.0),
        ("attention_bytes_per_weight", -1.0),
        ("shared_bytes_per_weight", math.nan),
        ("embedding_bytes_per_weight", True),
        ("dense_bytes_per_weight", "2"),
        ("dispatch_bytes_per_elem", 0.0),
        ("combine_bytes_per_elem", None),
        ("bytes_per_weight", math.inf),
        ("expert_format", "hqq"),
        ("attention_format", None),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field) as err:
        get_model("mixtral-8x7b").with_(**{field: value})
    assert "\n" not in str(err.value)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**get_model("olmoe").to_dict(), "expert_precision": 0.5}))
    with pytest.raises(ValueError, match=r"bad.json: unknown field\(s\) \['expert_precision'\]"):
        load_model(bad)
    bad.write_text(json.dumps({**get_model("olmoe").to_dict(), "expert_format": "gguf"}))
    with pytest.raises(ValueError, match=r"bad\.json: .*expert_format='gguf' unknown"):
        load_model(bad)
    toml = tmp_path / "bad.toml"
    toml.write_text('name = "x"\nn_layers = ')
    with pytest.raises(ValueError, match=r"bad\.toml: not valid TOML"):
        load_model(toml)
    with pytest.raises(ValueError, match="missing required field"):
        MoEModel.from_dict({"name": "x"})
    with pytest.raises(ValueError, match="no such file"):
        load_model(tmp_path / "absent.toml")


def test_with_precision_resets_the_formats() -> None:
    """A format names the packing of the old precision: a new precision resets it to 'none'."""
    hqq = get_model("mixtral-8x7b").with_(
        expert_bytes_per_weight=0.325, expert_format="hqq-triton", attention_bytes_per_weight=0.5
    )
    hqq = hqq.with_(attention_format="hqq-triton-g64")
    whole = hqq.with_precision("fp8")
    assert all(whole.format_of(c) == "none" for c in WEIGHT_COMPONENTS)
    assert whole.weight_bytes_of("expert") == 1.0
    part = hqq.with_precision("int4", components=("expert",))
    assert part.format_of("expert") == "none" and part.weight_bytes_of("expert") == 0.5
    assert part.format_of("attention") == "hqq-triton-g64"  # untouched component keeps its format


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"expert_format": "marlin"}, "expert_format"),  # bf16 experts
        ({"bytes_per_weight": 1.0, "attention_format": "hqq-triton"}, "attention_format"),  # fp8
        ({"embedding_bytes_per_weight": 1.0 + 4 / 128, "embedding_format": "llamacpp-mmvq"}, "embedding_format"),
    ],
)
def test_a_packed_format_needs_sub_8_bit_weights(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}=.*packs sub-8-bit weights") as info:
        get_model("mixtral-8x7b").with_(**changes)
    assert "\n" not in str(info.value)


def test_sub_8_bit_with_format_none_is_the_idealised_kernel() -> None:
    """int4 with format 'none' is allowed (a plain precision): no dequantisation is charged."""
    int4 = get_model("mixtral-8x7b").with_precision("int4")
    assert int4.format_of("expert") == "none"
    assert int4.with_(expert_format="marlin").format_of("expert") == "marlin"
