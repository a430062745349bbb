"""Mapping.stack / eviction / non-expert offload fields: validation, JSON round trip, design hash."""

from __future__ import annotations

import pytest

from codesign.design import Design
from codesign.mapping import CacheSpec, Mapping, MappingError
from hwmodels.stacks import get_stack, stack_to_dict


def test_stack_default_and_errors() -> None:
    assert Mapping().stack == "none"
    assert Mapping(stack="vllm").stack == "vllm"
    with pytest.raises(MappingError, match="unknown serving stack 'nope'"):
        Mapping(stack="nope")
    with pytest.raises(MappingError, match=r"cache\.eviction"):
        CacheSpec(eviction="keep")
    with pytest.raises(MappingError, match="offload_non_expert must be a bool"):
        Mapping(offload_non_expert=1)  # type: ignore[arg-type]


def test_json_round_trip_with_inline_stack() -> None:
    inline = stack_to_dict(get_stack("hf-eager")) | {"per_layer_s": 2e-4}
    m = Mapping(
        stack=inline,  # type: ignore[arg-type]
        cache=CacheSpec(expert_fraction=0.5, eviction="copy-back"),
        offload_non_expert=True,
        fetch_whole_layer=True,
    )
    again = Mapping.from_json(m.to_json())
    assert again == m
    assert again.config_hash == m.config_hash
    assert again.cache.eviction == "copy-back"


def test_design_hash_covers_the_stack_numbers() -> None:
    d = Design.from_presets("mixtral-8x7b", "h100-pcie5-host")
    named = d.with_(mapping=Mapping(stack="hf-eager"))
    inline_same = d.with_(mapping=Mapping(stack=stack_to_dict(get_stack("hf-eager"))))  # type: ignore[arg-type]
    inline_other = d.with_(
        mapping=Mapping(stack=stack_to_dict(get_stack("hf-eager")) | {"per_step_s": 1e-3})  # type: ignore[arg-type]
    )
    assert len({d.content_hash, named.content_hash, inline_other.content_hash}) == 3
    assert inline_same.hash_payload()["stack"] == named.hash_payload()["stack"]
    assert Design.from_json(inline_other.to_json()).content_hash == inline_other.content_hash
