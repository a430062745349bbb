"""Simulator policies, one ABC per extension point, registered by name.

Importing this package imports every policy module so that the registries are complete: cache
(`cache`, `expertflow`), prefetch (`prefetch`), miss (`miss`), placement (`placement`) and
scheduling (`scheduling_fifo`, `scheduling`), then the plug-in modules advertised in the entry-point
group ``moe_codesign.policies`` (`registry.load_entry_point_plugins`). The ABCs and their contracts
are in `base`.
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
from codesign.policies.registry import (
    ENTRY_POINT_GROUP,
    KINDS,
    REGISTRIES,
    PluginError,
    Registry,
    UnknownOptionError,
    UnknownPolicyError,
    check_options,
    load_entry_point_plugins,
    load_plugin,
    policy_flag,
    policy_options,
)

load_entry_point_plugins()

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "REGISTRIES",
    "AccessSequence",
    "Admission",
    "Batch",
    "CachePolicy",
    "MissPolicy",
    "PlacementPolicy",
    "PluginError",
    "PrefetchContext",
    "PrefetchPolicy",
    "Registry",
    "RequestState",
    "RoutingStats",
    "TokenScheduler",
    "UnknownOptionError",
    "UnknownPolicyError",
    "cache",
    "check_options",
    "expertflow",
    "list_policies",
    "load_entry_point_plugins",
    "load_plugin",
    "miss",
    "placement",
    "policy_flag",
    "policy_options",
    "prefetch",
    "scheduling",
    "scheduling_fifo",
]


def list_policies() -> dict[str, dict[str, str]]:
    """kind -> {name: description} for every registered policy."""
    return {kind: REGISTRIES[kind].describe() for kind in KINDS}
