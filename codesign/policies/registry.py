"""Registries of policies by name, one per extension point.

A `Registry` maps a name to a policy class (or factory) and a one-line description. Policy
modules register themselves with ``@REGISTRIES["cache"].register("lru", "least recently used")``.
An unknown name raises `UnknownPolicyError` listing the valid choices. Registries are filled at
import time of the policy modules and never mutated afterwards (no run-time global state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: The extension points of the simulator.
KINDS: tuple[str, ...] = ("cache", "prefetch", "miss", "placement", "scheduling")


class UnknownPolicyError(ValueError):
    """Unknown policy name; the message lists the valid names."""


class Registry(Generic[T]):
    """Name -> (factory, description) for one extension point (``kind``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], str]] = {}

    def register(self, name: str, description: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Class/function decorator that registers ``name``; a duplicate name is an error."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} policy {name!r} registered twice")
            self._entries[name] = (factory, description)
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """name -> one-line description."""
        return {n: self._entries[n][1] for n in self.names()}

    def get(self, name: str) -> Callable[..., T]:
        """The factory for ``name``; `UnknownPolicyError` lists the valid names."""
        try:
            return self._entries[name][0]
        except KeyError:
            raise UnknownPolicyError(
                f"unknown {self.kind} policy {name!r}; valid: {', '.join(self.names()) or '(none)'}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Instantiate the policy ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)


REGISTRIES: dict[str, Registry[Any]] = {kind: Registry(kind) for kind in KINDS}
