"""MoEModel presets: derived parameter counts against published totals, derived sizes, validation.

Published totals are the model cards' headline numbers, rounded as published (hence the 2 %
tolerance): Mixtral-8x7B 46.7B total / 12.9B active, Mixtral-8x22B 141B / 39B, DeepSeek-V2-Lite
15.7B, DeepSeek-V3 671B / 37B, Qwen1.5-MoE-A2.7B 14.3B / 2.7B, Qwen3-30B-A3B 30.5B / 3.3B,
OLMoE-1B-7B 6.9B / 1.3B, gpt-oss-20b 21B, gpt-oss-120b 117B, Switch-base-128 ~7.4B.
"""

from __future__ import annotations

import pytest

from workloads import MoEModel, UnknownPresetError, get_model, model_preset_names

PUBLISHED = {  # name: (total params, active params or None)
    "mixtral-8x7b": (46.7e9, 12.9e9),
    "mixtral-8x22b": (141e9, 39e9),
    "deepseek-v2-lite": (15.7e9, None),
    "deepseek-v3": (671e9, 37e9),
    "qwen1.5-moe-a2.7b": (14.3e9, 2.7e9),
    "qwen3-30b-a3b": (30.5e9, 3.3e9),
    "olmoe-1b-7b": (6.9e9, 1.3e9),
    "gpt-oss-20b": (21e9, None),
    "gpt-oss-120b": (117e9, None),
    "switch-base-128": (7.4e9, None),
}


def test_every_preset_is_checked() -> None:
    assert set(PUBLISHED) == set(model_preset_names())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_total_params_match_published(name: str) -> None:
    total, active = PUBLISHED[name]
    m = get_model(name)
    assert m.total_params == pytest.approx(total, rel=0.02)
    if active is not None:
        assert m.active_params == pytest.approx(active, rel=0.02)


@pytest.mark.parametrize(("name", "published_active"), [("gpt-oss-20b", 3.6e9), ("gpt-oss-120b", 5.1e9)])
def test_gpt_oss_active_without_input_embedding(name: str, published_active: float) -> None:
    """NeMo docs quote active params "3.6B" / "5.1B" ([S] hardware-and-papers.md s.5, gpt-oss-120b row):
    they leave out the input-embedding lookup (no FLOPs), which our active count includes."""
    m = get_model(name)
    assert m.active_params - m.vocab_size * m.d_model == pytest.approx(published_active, rel=0.02)


def test_mixtral_bytes_per_expert_and_flops() -> None:
    m = get_model("mixtral-8x7b")
    assert m.bytes_per_expert == 3 * 4096 * 14336 * 2
    assert m.expert_flops_per_token == 2 * 3 * 4096 * 14336
    assert m.with_precision("int4").bytes_per_expert == 3 * 4096 * 14336 * 0.5


def test_kv_bytes_per_token() -> None:
    # GQA: 2 (K and V) x kv heads x head dim x layers x 2 bytes
    assert get_model("mixtral-8x7b").kv_bytes_per_token == 2 * 8 * 128 * 32 * 2
    assert get_model("olmoe-1b-7b").kv_bytes_per_token == 2 * 16 * 128 * 16 * 2
    # MLA: compressed latent (512) + rope key (64) per layer
    assert get_model("deepseek-v2-lite").kv_bytes_per_token == (512 + 64) * 27 * 2


def test_moe_layers_dense_first_and_step() -> None:
    assert get_model("deepseek-v2-lite").moe_layers == tuple(range(1, 27))
    assert get_model("deepseek-v3").n_moe_layers == 58
    assert get_model("switch-base-128").moe_layers == tuple(range(1, 24, 2))


def test_shared_experts() -> None:
    q = get_model("qwen1.5-moe-a2.7b")
    assert q.params_shared_experts == 3 * 2048 * 5632  # 34,603,008 in the reference table
    assert get_model("deepseek-v2-lite").params_shared_experts == 2 * 3 * 2048 * 1408


def test_aliases_and_case() -> None:
    assert get_model("Mixtral").name == "mixtral-8x7b"
    assert get_model("olmoe").name == "olmoe-1b-7b"


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(UnknownPresetError) as err:
        get_model("mixtral-9x9b")
    text = str(err.value)
    assert "mixtral-9x9b" in text
    for name in model_preset_names():
        assert name in text


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"top_k": 9}, "top_k"),
        ({"n_experts": 0}, "n_experts"),
        ({"n_kv_heads": 64}, "n_kv_heads"),
        ({"first_dense_layers": 1}, "dense_ffn_dim"),
        ({"n_shared_experts": 1}, "shared"),
        ({"bytes_per_weight": 0.0}, "bytes_per_weight"),
    ],
)
def test_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        get_model("mixtral-8x7b").with_(**changes)


def test_unknown_precision() -> None:
    with pytest.raises(ValueError, match="fp3"):
        get_model("mixtral-8x7b").with_precision("fp3")


def test_frozen() -> None:
    m = get_model("mixtral-8x7b")
    with pytest.raises(AttributeError):
        m.top_k = 3  # type: ignore[misc]
    assert isinstance(m, MoEModel)
