"""Simulator policies, one ABC per extension point, registered by name.

Importing this package imports every policy module so that the registries are complete.
"""

from codesign.policies.registry import KINDS, REGISTRIES, Registry, UnknownPolicyError

__all__ = ["KINDS", "REGISTRIES", "Registry", "UnknownPolicyError", "list_policies"]


def list_policies() -> dict[str, dict[str, str]]:
    """kind -> {name: description} for every registered policy."""
    return {kind: REGISTRIES[kind].describe() for kind in KINDS}
