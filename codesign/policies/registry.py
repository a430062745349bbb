"""Registries of policies by name, one per extension point.

A `Registry` maps a name to a policy class (or factory) and a one-line description. Policy
modules register themselves with ``@REGISTRIES["cache"].register("lru", "least recently used")``.
An unknown name raises `UnknownPolicyError` listing the valid choices. Registries are filled at
import time of the policy modules (the package's own, and plug-ins: see below) and only grow.

Plug-ins: a module outside this package registers its policies the same way, with the decorator,
when it is imported. `load_plugin` imports one by module name (the ``--plugin MODULE`` flag of
``codesign simulate``); `load_entry_point_plugins` imports every module advertised in the entry
point group ``moe_codesign.policies`` of the installed distributions (in a plug-in's
``pyproject.toml``: ``[project.entry-points."moe_codesign.policies"] mine = "my_pkg.policies"``).
``import codesign.policies`` loads the entry points once. A plug-in that fails to import raises
`PluginError` naming it.

`policy_options` lists the user options of a policy: the keyword parameters of its constructor
(and of the bases it forwards ``**kwargs`` to) other than those the simulator itself passes
(`RESERVED_ARGS`); `check_options` raises naming the unknown ones and the valid ones.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The extension points of the simulator.
KINDS: tuple[str, ...] = ("cache", "prefetch", "miss", "placement", "scheduling")


class UnknownPolicyError(ValueError):
    """Unknown policy name; the message lists the valid names."""


class UnknownOptionError(ValueError):
    """A policy option that the policy does not take; the message lists the valid ones."""


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

#: The entry-point group that plug-in distributions advertise their policy modules in.
ENTRY_POINT_GROUP = "moe_codesign.policies"

#: Constructor arguments the simulator itself passes to each policy kind (not user options).
RESERVED_ARGS: dict[str, frozenset[str]] = {
    "cache": frozenset({"self", "capacity", "n_layers", "n_experts", "pinned", "seed"}),
    "prefetch": frozenset({"self", "n_layers", "n_experts", "top_k", "seed"}),
    "miss": frozenset({"self", "seed"}),
    "placement": frozenset({"self", "seed"}),
    "scheduling": frozenset({"self", "max_batch", "max_tokens", "seed"}),
}


class PluginError(ImportError):
    """A policy plug-in module could not be imported (the message names it and the cause)."""


def load_plugin(module_name: str) -> list[str]:
    """Import the plug-in module ``module_name`` (its import registers its policies) and return the
    ``"kind/name"`` entries it added. Importing the same module again adds nothing (Python caches
    modules). Raises `PluginError` naming the module when it cannot be imported."""
    if not isinstance(module_name, str) or not module_name.strip():
        raise PluginError(f"plug-in module name must be a non-empty string, got {module_name!r}")
    before = {kind: set(REGISTRIES[kind].names()) for kind in KINDS}
    try:
        importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise PluginError(f"policy plug-in {module_name!r} cannot be imported: {exc}") from exc
    return [f"{kind}/{n}" for kind in KINDS for n in REGISTRIES[kind].names() if n not in before[kind]]


def load_entry_point_plugins(entry_points: Iterable[metadata.EntryPoint] | None = None) -> list[str]:
    """Import every module advertised in `ENTRY_POINT_GROUP` (or the given ``entry_points``) and
    return the ``"kind/name"`` entries added. A module that fails to import raises `PluginError`."""
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    added: list[str] = []
    for ep in sorted(eps, key=lambda e: e.name):
        added += load_plugin(ep.module)
    if added:
        log.info("policy plug-ins from entry points: %s", ", ".join(added))
    return added


def policy_options(kind: str, name: str) -> list[str] | None:
    """The user options of policy ``name`` of ``kind``: keyword parameters of its ``__init__`` (and
    of the bases it forwards ``**kwargs`` to) other than `RESERVED_ARGS`; None when the chain ends
    in ``**kwargs`` (anything goes) or the factory has no inspectable signature."""
    factory = REGISTRIES[kind].get(name)
    reserved = RESERVED_ARGS.get(kind, frozenset({"self", "seed"}))
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names: set[str] = set()
    if not isinstance(factory, type):  # a plain factory function
        try:
            params = list(inspect.signature(factory).parameters.values())
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return sorted(p.name for p in params if p.name not in reserved and p.kind in keyword)
    for klass in factory.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(vars(klass)["__init__"]).parameters.values())
        names.update(p.name for p in params if p.name not in reserved and p.kind in keyword)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return sorted(names)
    return None


def check_options(kind: str, name: str, options: Iterable[str], where: str) -> None:
    """Raise `UnknownOptionError` naming ``where``, the unknown option(s) and the valid ones when an
    option is not a parameter of the policy (or is one the simulator passes itself)."""
    valid = policy_options(kind, name)
    given = list(options)
    reserved = sorted(set(given) & RESERVED_ARGS.get(kind, frozenset()))
    if reserved:
        raise UnknownOptionError(
            f"{where}: option(s) {reserved} of {kind} policy {name!r} are set by the simulator, not by options"
        )
    if valid is None:
        return
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise UnknownOptionError(
            f"{where}: {kind} policy {name!r} has no option(s) {unknown}; valid options: "
            f"{', '.join(valid) if valid else '(none)'}"
        )


def policy_flag(kind: str, name: str, flag: str) -> bool:
    """A class flag of a registered policy (e.g. ``needs_stats``, ``needs_training``,
    ``needs_lookahead`` and its alias ``needs_future``); False for a factory that does not define it."""
    return bool(getattr(REGISTRIES[kind].get(name), flag, False))
