"""Simulator policies, one ABC per extension point, registered by name.

Importing this package imports every policy module so that the registries are complete: cache
(`cache`, `expertflow`), prefetch (`prefetch`), miss (`miss`), placement (`placement`) and
scheduling (`scheduling_fifo`, `scheduling`). The ABCs and their contracts are in `base`.
"""

from codesign.policies import cache, expertflow, miss, placement, prefetch, scheduling, scheduling_fifo
from codesign.policies.base import (
    AccessSequence,
    Admission,
    Batch,
    CachePolicy,
    MissPolicy,
    PlacementPolicy,
    PrefetchContext,
    PrefetchPolicy,
    RequestState,
    RoutingStats,
    TokenScheduler,
)
from codesign.policies.registry import KINDS, REGISTRIES, Registry, UnknownPolicyError

__all__ = [
    "KINDS",
    "REGISTRIES",
    "AccessSequence",
    "Admission",
    "Batch",
    "CachePolicy",
    "MissPolicy",
    "PlacementPolicy",
    "PrefetchContext",
    "PrefetchPolicy",
    "Registry",
    "RequestState",
    "RoutingStats",
    "TokenScheduler",
    "UnknownPolicyError",
    "cache",
    "expertflow",
    "list_policies",
    "miss",
    "placement",
    "prefetch",
    "scheduling",
    "scheduling_fifo",
]


def list_policies() -> dict[str, dict[str, str]]:
    """kind -> {name: description} for every registered policy."""
    return {kind: REGISTRIES[kind].describe() for kind in KINDS}
