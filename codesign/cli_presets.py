"""``codesign presets [models|devices|links|platforms|policies|stacks|formats|profiles|all] [--json]``.

What is built in, one line each. Models come from `workloads` (name, total/active parameters,
experts, top-k, source); devices, links and platforms from `hwmodels` (``device_preset_names``/
``get_device``, ``link_preset_names``/``get_link``, ``platform_preset_names``/``get_platform``);
policies from `codesign.policies.list_policies`; serving stacks (``simulate --stack``, a mapping's
``stack``) from `hwmodels.stacks` (per-step, per-layer, per-sequence host time, CPU overlap, what
device work it charges, which numbers are free or fitted and on which cases, source); weight formats
(a model's ``<component>_format``, ``simulate --expert-format`` ...) from `hwmodels.dequant.FORMATS`;
calibration profiles (``simulate --profile``) from `hwmodels.calibration` (shipped and derived).
``--json`` prints one JSON object ``{category: {name: {...}}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

CATEGORIES = ("models", "devices", "links", "platforms", "policies", "stacks", "formats", "profiles")


class PresetsUnavailableError(RuntimeError):
    """A preset category whose provider is not importable (yet)."""


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``presets`` top-level command."""
    p = sub.add_parser(
        "presets",
        parents=parents,
        help="list built-in models, devices, platforms, policies, serving stacks, weight formats and profiles",
        description="List the preset names with one line each (or one JSON object with --json).",
    )
    p.add_argument(
        "category", nargs="?", default="models", choices=(*CATEGORIES, "all"), help="which presets (default: models)"
    )
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
            "total_params": m.total_params,
            "active_params": m.active_params,
            "n_experts": m.n_experts,
            "top_k": m.top_k,
            "n_shared_experts": m.n_shared_experts,
            "n_layers": m.n_layers,
            "n_moe_layers": m.n_moe_layers,
            "bytes_per_expert": m.bytes_per_expert,
            "bytes_per_weight": m.bytes_per_weight,
            "source": m.source,
        }
    return out


def _model_line(name: str, d: dict[str, Any]) -> str:
    shared = f"+{d['n_shared_experts']} shared" if d["n_shared_experts"] else ""
    return (
        f"{name:<20} total {_fmt_params(d['total_params']):>8}  active {_fmt_params(d['active_params']):>7}  "
        f"experts {d['n_experts']:>3}{shared:<9} top-{d['top_k']:<2}  source: {d['source']}"
    )


def _import_hw(func_names: tuple[str, str], what: str) -> tuple[Callable[[], list[str]], Callable[[str], Any]]:
    try:
        mod = import_module("hwmodels")
    except ImportError as exc:  # pragma: no cover - hwmodels is part of the distribution
        raise PresetsUnavailableError(f"{what} presets unavailable: cannot import hwmodels ({exc})") from exc
    names_fn = getattr(mod, func_names[0], None)
    get_fn = getattr(mod, func_names[1], None)
    if names_fn is None or get_fn is None:
        raise PresetsUnavailableError(
            f"{what} presets unavailable: hwmodels does not provide {func_names[0]}() and {func_names[1]}() yet"
        )
    return names_fn, get_fn


def _jsonable(value: Any) -> Any:
    """Plain JSON data from dataclasses, mappings (FrozenMap too), tuples and scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping) or (hasattr(value, "items") and callable(value.items)):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def hw_info(category: str) -> dict[str, dict[str, Any]]:
    """name -> fields of each device, link or platform preset (``category``: devices, links, platforms)."""
    funcs = {
        "devices": ("device_preset_names", "get_device"),
        "links": ("link_preset_names", "get_link"),
        "platforms": ("platform_preset_names", "get_platform"),
    }[category]
    names_fn, get_fn = _import_hw(funcs, category[:-1])
    out: dict[str, dict[str, Any]] = {}
    for name in names_fn():
        obj = get_fn(name)
        d = _jsonable(obj)
        out[name] = d if isinstance(d, dict) else {"value": d}
    return out


def _device_summary(d: dict[str, Any]) -> str:
    parts = [str(d.get("kind", ""))]
    flops = d.get("peak_flops")
    if isinstance(flops, dict) and flops:
        dtype = "bf16" if "bf16" in flops else next(iter(flops))
        parts.append(f"{float(flops[dtype]) / 1e12:.0f} TFLOP/s {dtype}")
    for tier in d.get("tiers", []) or []:
        if isinstance(tier, dict) and "capacity_bytes" in tier:
            parts.append(
                f"{tier.get('name')} {float(tier['capacity_bytes']) / 1e9:.4g} GB"
                + (f" @ {float(tier['bandwidth_Bps']) / 1e9:g} GB/s" if "bandwidth_Bps" in tier else "")
            )
    if "tdp_W" in d:
        parts.append(f"TDP {float(d['tdp_W']):g} W")
    return "  ".join(p for p in parts if p)


def _hw_line(category: str, name: str, d: dict[str, Any]) -> str:
    if category == "devices":
        text = _device_summary(d)
    elif category == "links":
        duplex = "duplex" if d.get("duplex") else "half duplex"
        text = (
            f"{float(d.get('bandwidth_Bps', 0.0)) / 1e9:g} GB/s per direction  "
            f"latency {float(d.get('latency_s', 0.0)) * 1e6:g} us  {duplex}"
        )
    else:
        acc = d.get("accelerators", []) or []
        names = [a.get("name", "?") for a in acc if isinstance(a, dict)]
        parts = [f"{len(names)} x {names[0]}" if names else "no accelerator"]
        host = d.get("host")
        if isinstance(host, dict):
            parts.append(f"host {host.get('name')}")
        for key in ("host_link", "peer_link", "scale_out_link"):
            link = d.get(key)
            if isinstance(link, dict):
                parts.append(f"{key.replace('_', ' ')} {link.get('name')}")
        if d.get("devices_per_node"):
            parts.append(f"nodes of {d['devices_per_node']}")
        if "cost_per_hour_usd" in d:
            parts.append(f"${float(d['cost_per_hour_usd']):g}/h")
        text = "  ".join(parts)
    src = d.get("source", "")
    return f"{name:<20} {text}" + (f"  source: {src}" if src else "")


def policies_info() -> dict[str, dict[str, str]]:
    """kind -> {name: description} of every registered policy."""
    from codesign.policies import list_policies

    return list_policies()


def stacks_info() -> dict[str, dict[str, Any]]:
    """name -> fields of each serving-stack preset (`hwmodels.stacks.stack_to_dict`: seconds, flags,
    ``params`` with each number's source, ``fitted_on`` cases, ``free`` and ``assumption`` marks)."""
    from hwmodels.stacks import get_stack, stack_preset_names, stack_to_dict

    return {name: stack_to_dict(get_stack(name)) for name in stack_preset_names()}


def _stack_line(name: str, d: dict[str, Any]) -> str:
    times = (
        f"step {float(d['per_step_s']) * 1e3:g} ms  layer {float(d['per_layer_s']) * 1e6:g} us  "
        f"sequence {float(d['per_sequence_s']) * 1e6:g} us  overlap {float(d['cpu_overlap']):g}"
    )
    if float(d.get("compute_slowdown", 0.0)):
        times += f"  kernels +{float(d['compute_slowdown']):.0%} compute time"
    if d.get("collective_latency_s") is not None:
        times += f"  collective call {float(d['collective_latency_s']) * 1e6:g} us"
    charged = [label for key, label in (("lm_head", "LM head"), ("moe_permute", "MoE permute")) if d.get(key)]
    parts = [f"{name:<16} {times}", f"charges {' + '.join(charged) if charged else 'no device work'}"]
    params = d.get("params") or []
    free = [p["field"].removesuffix("_s") for p in params if p.get("free")]
    fitted = sorted({case for p in params for case in p.get("fitted_on", [])})
    if free:
        at_zero = [p["field"].removesuffix("_s") for p in params if p.get("free") and not d.get(p["field"])]
        parts.append(f"free: {', '.join(free)}" + (f" (unfitted; {', '.join(at_zero)} run at 0)" if at_zero else ""))
    if fitted:
        parts.append(f"fitted on: {', '.join(fitted)}")
    parts += [f"{p['field'].removesuffix('_s')}: {p['note']}" for p in params if p.get("note")]
    src = d.get("source", "")
    return "  ".join(parts) + (f"  source: {src}" if src else "")


def formats_info() -> dict[str, dict[str, Any]]:
    """name -> fields of each weight format (`hwmodels.dequant.WeightFormat`, with its source)."""
    from hwmodels.dequant import FORMATS

    return {name: _jsonable(fmt) for name, fmt in FORMATS.items()}


def _format_line(name: str, d: dict[str, Any]) -> str:
    costs = ("ops_per_weight", "extra_bytes_per_weight", "copy_bytes_per_weight", "extra_kernels")
    if not any(d.get(k) for k in costs):
        how = "no dequantisation charged"
    elif d.get("fused"):
        how = f"fused, {float(d['ops_per_weight']):g} lane-ops/weight per {int(d['rows_per_dequant'])}-row tile"
    else:
        how = (
            f"unfused pass, {float(d['ops_per_weight']):g} lane-ops/weight, "
            f"{float(d['copy_bytes_per_weight']):g} B/weight 16-bit copy"
        )
    extra = f"  +{float(d['extra_bytes_per_weight']):g} B/weight traffic" if d.get("extra_bytes_per_weight") else ""
    kernels = f"  +{int(d['extra_kernels'])} kernel(s)/matrix" if d.get("extra_kernels") else ""
    return f"{name:<16} {how}{extra}{kernels}  source: {d.get('source', '')}"


def profiles_info() -> dict[str, dict[str, Any]]:
    """name -> summary of each shipped or derived calibration profile (``simulate --profile NAME``):
    the profile's own name, device, dtype, peaks and source (samples left out)."""
    from hwmodels.calibration import default_profile_names, resolve_profile

    out: dict[str, dict[str, Any]] = {}
    for name in default_profile_names():
        prof = resolve_profile(name)
        out[name] = {
            "profile": prof.name,
            "device": prof.device_name,
            "dtype": prof.dtype,
            "peak_flops": float(prof.peaks.flops),
            "peak_memory_Bps": float(prof.peaks.memory_Bps),
            "source": prof.source,
            "power_law": prof.power_law.to_dict() if prof.power_law is not None else None,
        }
    return out


def _profile_line(name: str, d: dict[str, Any]) -> str:
    law = d.get("power_law")
    power = (
        f"  power limit: compute x (W / {law['power_W']:.4g} W) ** {law['exponent']:.4g} below {law['power_W']:.4g} W"
        if law
        else ""
    )
    return (
        f"{name:<16} device {d['device']}  {d['dtype']}  {d['peak_flops'] / 1e12:.4g} TFLOP/s  "
        f"{d['peak_memory_Bps'] / 1e9:.4g} GB/s{power}  source: {d['source']}"
    )


_INFO: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {
    "stacks": stacks_info,
    "formats": formats_info,
    "profiles": profiles_info,
}
_LINE: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "stacks": _stack_line,
    "formats": _format_line,
    "profiles": _profile_line,
}


def _collect(category: str) -> dict[str, Any]:
    if category == "models":
        return models_info()
    if category in ("devices", "links", "platforms"):
        return hw_info(category)
    if category in _INFO:
        return _INFO[category]()
    return policies_info()


def _text(category: str, data: dict[str, Any]) -> list[str]:
    if category == "models":
        return [_model_line(n, d) for n, d in data.items()]
    if category in ("devices", "links", "platforms"):
        return [_hw_line(category, n, d) for n, d in data.items()]
    if category in _LINE:
        return [_LINE[category](n, d) for n, d in data.items()]
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
