"""Class flags of the cache policies: ``needs_lookahead`` (documented) and its alias ``needs_future``.

The engine reads ``needs_lookahead``; a policy (or a plug-in written against the earlier name) may
set either one and both then agree; setting them to different values is refused at class creation.
"""

from __future__ import annotations

from typing import Any

import pytest

from codesign.engine import Engine
from codesign.mapping import CacheSpec, Mapping
from codesign.policies import REGISTRIES
from codesign.policies.base import CachePolicy
from codesign.policies.cache import BeladyCache, LRUCache
from codesign.policies.registry import policy_flag
from hwmodels import get_platform
from hwmodels.costs import CostModel
from workloads import get_model


@pytest.mark.parametrize("name", REGISTRIES["cache"].names())
def test_registered_policies_flags_agree(name: str) -> None:
    cls = REGISTRIES["cache"].get(name)
    assert policy_flag("cache", name, "needs_lookahead") == policy_flag("cache", name, "needs_future")
    assert policy_flag("cache", name, "needs_lookahead") == (cls is BeladyCache)


def test_either_name_sets_both() -> None:
    class Old(LRUCache):
        needs_future = True

    class New(LRUCache):
        needs_lookahead = True

    class Child(New):
        pass

    for cls in (Old, New, Child):
        assert cls.needs_lookahead and cls.needs_future
    assert not LRUCache.needs_lookahead and not CachePolicy.needs_future


def test_disagreeing_flags_are_refused() -> None:
    with pytest.raises(TypeError, match="Bad: needs_lookahead=True and its alias needs_future=False disagree"):

        class Bad(LRUCache):
            needs_lookahead = True
            needs_future = False


def test_engine_reads_needs_lookahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy flagged only through ``needs_lookahead`` is refused by the engine without the future."""

    class Oracle(LRUCache):
        needs_lookahead = True

    reg = REGISTRIES["cache"]
    original = reg.get

    def get(name: str) -> Any:
        return Oracle if name == "test-oracle" else original(name)

    monkeypatch.setattr(reg, "get", get)
    platform = get_platform("h100-pcie5-host")
    bound = Mapping(cache=CacheSpec(policy="test-oracle", expert_fraction=0.25)).bind(
        get_model("mixtral-8x7b"), platform
    )
    with pytest.raises(ValueError, match="needs the future access sequence"):
        Engine(bound, CostModel(platform))
