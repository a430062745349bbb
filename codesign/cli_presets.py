"""``codesign presets [models|devices|platforms|policies|all] [--json]``: what is built in.

Models come from `workloads` (one line each: name, total/active parameters, experts, top-k,
source); devices and platforms from `hwmodels` (``device_preset_names``/``get_device``,
``platform_preset_names``/``get_platform``); policies from `codesign.policies.list_policies`.
``--json`` prints one JSON object ``{category: {name: {...}}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any

CATEGORIES = ("models", "devices", "platforms", "policies")


class PresetsUnavailableError(RuntimeError):
    """A preset category whose provider is not importable (yet)."""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``presets`` top-level command."""
    p = sub.add_parser("presets", parents=parents, help="list built-in models, devices, platforms and policies",
                       description="List the preset names with one line each (or one JSON object with --json).")
    p.add_argument("category", nargs="?", default="models", choices=(*CATEGORIES, "all"),
                   help="which presets (default: models)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_presets)


def _fmt_params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def models_info() -> dict[str, dict[str, Any]]:
    """name -> summary of each model preset (parameters as counts, bytes at the preset precision)."""
    from workloads.model import get_model, model_preset_names

    out: dict[str, dict[str, Any]] = {}
    for name in model_preset_names():
        m = get_model(name)
        out[name] = {
            "total_params": m.total_params, "active_params": m.active_params, "n_experts": m.n_experts,
            "top_k": m.top_k, "n_shared_experts": m.n_shared_experts, "n_layers": m.n_layers,
            "n_moe_layers": m.n_moe_layers, "bytes_per_expert": m.bytes_per_expert,
            "bytes_per_weight": m.bytes_per_weight, "source": m.source,
        }
    return out


def _model_line(name: str, d: dict[str, Any]) -> str:
    shared = f"+{d['n_shared_experts']} shared" if d["n_shared_experts"] else ""
    return (f"{name:<20} total {_fmt_params(d['total_params']):>8}  active {_fmt_params(d['active_params']):>7}  "
            f"experts {d['n_experts']:>3}{shared:<9} top-{d['top_k']:<2}  source: {d['source']}")


def _import_hw(func_names: tuple[str, str], what: str) -> tuple[Callable[[], list[str]], Callable[[str], Any]]:
    try:
        mod = import_module("hwmodels")
    except ImportError as exc:  # pragma: no cover - hwmodels is part of the distribution
        raise PresetsUnavailableError(f"{what} presets unavailable: cannot import hwmodels ({exc})") from exc
    names_fn = getattr(mod, func_names[0], None)
    get_fn = getattr(mod, func_names[1], None)
    if names_fn is None or get_fn is None:
        raise PresetsUnavailableError(
            f"{what} presets unavailable: hwmodels does not provide {func_names[0]}() and {func_names[1]}() yet")
    return names_fn, get_fn


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def hw_info(category: str) -> dict[str, dict[str, Any]]:
    """name -> fields of each device or platform preset (``category`` is "devices" or "platforms")."""
    funcs = ("device_preset_names", "get_device") if category == "devices" else \
        ("platform_preset_names", "get_platform")
    names_fn, get_fn = _import_hw(funcs, category[:-1])
    out: dict[str, dict[str, Any]] = {}
    for name in names_fn():
        obj = get_fn(name)
        d = _jsonable(obj)
        out[name] = d if isinstance(d, dict) else {"value": d}
    return out


def _hw_line(name: str, d: dict[str, Any]) -> str:
    keys = [k for k in d if k.endswith(("_Bps", "_bytes", "_W")) and isinstance(d[k], (int, float))]
    parts = []
    for k in keys[:4]:
        v = float(d[k])
        if k.endswith("_Bps"):
            parts.append(f"{k} {v / 1e9:.0f} GB/s")
        elif k.endswith("_bytes"):
            parts.append(f"{k} {v / 2**30:.1f} GiB")
        else:
            parts.append(f"{k} {v:.0f} W")
    if "devices" in d and isinstance(d["devices"], (list, dict)):
        parts.append(f"{len(d['devices'])} devices")
    src = d.get("source", "")
    return f"{name:<20} {'  '.join(parts)}" + (f"  source: {src}" if src else "")


def policies_info() -> dict[str, dict[str, str]]:
    """kind -> {name: description} of every registered policy."""
    from codesign.policies import list_policies

    return list_policies()


def _collect(category: str) -> dict[str, Any]:
    if category == "models":
        return models_info()
    if category in ("devices", "platforms"):
        return hw_info(category)
    return policies_info()


def _text(category: str, data: dict[str, Any]) -> list[str]:
    if category == "models":
        return [_model_line(n, d) for n, d in data.items()]
    if category in ("devices", "platforms"):
        return [_hw_line(n, d) for n, d in data.items()]
    lines = []
    for kind, entries in data.items():
        if not entries:
            lines.append(f"{kind}: (none registered)")
        for n, desc in entries.items():
            lines.append(f"{kind:<11} {n:<22} {desc}")
    return lines


def _cmd_presets(args: argparse.Namespace) -> int:
    categories = CATEGORIES if args.category == "all" else (args.category,)
    collected: dict[str, Any] = {}
    errors: list[str] = []
    for cat in categories:
        try:
            collected[cat] = _collect(cat)
        except PresetsUnavailableError as exc:
            if len(categories) == 1:
                raise
            errors.append(str(exc))
    if args.json:
        print(json.dumps(collected, indent=1, sort_keys=False, default=str))
    else:
        for cat, data in collected.items():
            if len(categories) > 1:
                print(f"[{cat}]")
            for line in _text(cat, data):
                print(line)
    for err in errors:
        print(f"error: {err}", file=sys.stderr)
    return 1 if errors else 0
