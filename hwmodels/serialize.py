"""JSON round trip of hardware descriptions, and their content fingerprint.

`platform_to_dict` / `platform_from_dict` turn a `Platform` (its accelerators, host, links, with
every number and its source) into plain JSON-able dicts and back; `hardware_numbers` keeps only
what changes a cost (names and numbers, not sources, notes or provenance), which is what a content
hash of a design must cover: two platforms that differ in one number hash differently, two that
differ only in a source string do not.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from hwmodels.devices import Device, DeviceEfficiency, Link, MemoryTier, Platform

__all__ = [
    "device_from_dict",
    "device_to_dict",
    "hardware_numbers",
    "link_from_dict",
    "link_to_dict",
    "platform_from_dict",
    "platform_to_dict",
]

#: Fields that describe where a number came from, not the number: left out of `hardware_numbers`.
_DESCRIPTIVE = frozenset({"source", "notes", "provenance", "assumption"})


def _tier_to_dict(tier: MemoryTier) -> dict[str, Any]:
    return {f.name: getattr(tier, f.name) for f in fields(tier)}


def device_to_dict(device: Device) -> dict[str, Any]:
    """A `Device` as a JSON-able dict (tiers as dicts, provenance as lists; ``efficiency`` only when the
    device file set it)."""
    out: dict[str, Any] = {}
    for f in fields(device):
        value = getattr(device, f.name)
        if f.name in ("peak_flops", "energy_J_per_flop"):
            value = {str(k): float(v) for k, v in sorted(value.items())}
        elif f.name == "tiers":
            value = [_tier_to_dict(t) for t in value]
        elif f.name == "provenance":
            value = [list(p) for p in value]
        elif f.name == "efficiency":
            if value is None:
                continue  # absent when unset: descriptions (and content hashes) of older devices unchanged
            value = _efficiency_to_dict(value)
        out[f.name] = value
    return out


def _efficiency_to_dict(eff: DeviceEfficiency) -> dict[str, Any]:
    return {
        "gemm_e_max": {str(k): float(v) for k, v in sorted(eff.gemm_e_max.items())},
        "gemm_m_half": {str(k): float(v) for k, v in sorted(eff.gemm_m_half.items())},
        "memory_eff": eff.memory_eff,
        "launch_overhead_s": eff.launch_overhead_s,
        "gemv_max_rows": eff.gemv_max_rows,
        "source": eff.source,
    }


def device_from_dict(data: dict[str, Any], *, where: str = "device") -> Device:
    """The `Device` of `device_to_dict`; `ValueError` naming ``where`` and the field otherwise."""
    try:
        d = dict(data)
        d["tiers"] = tuple(MemoryTier(**t) for t in d["tiers"])
        d["provenance"] = tuple(tuple(p) for p in d.get("provenance", ()))
        if d.get("efficiency") is not None:
            if not isinstance(d["efficiency"], dict):
                raise TypeError(f"field 'efficiency' must be an object, got {d['efficiency']!r}")
            d["efficiency"] = DeviceEfficiency(**d["efficiency"])
        return Device(**d)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{where}: not a valid device description: {exc}") from None


def link_to_dict(link: Link) -> dict[str, Any]:
    """A `Link` as a JSON-able dict (points as lists of [bytes, value]; ``collective_latency_s`` only when
    non-zero)."""
    out: dict[str, Any] = {}
    for f in fields(link):
        value = getattr(link, f.name)
        if f.name == "collective_latency_s" and value == 0.0:
            continue  # absent when unset: descriptions (and content hashes) of older links unchanged
        if isinstance(value, tuple):
            value = [list(p) for p in value]
        out[f.name] = value
    return out


def link_from_dict(data: dict[str, Any], *, where: str = "link") -> Link:
    """The `Link` of `link_to_dict`; `ValueError` naming ``where`` otherwise."""
    try:
        d = dict(data)
        for key, value in list(d.items()):
            if isinstance(value, list):
                d[key] = tuple(tuple(p) for p in value)
        return Link(**d)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"{where}: not a valid link description: {exc}") from None


def platform_to_dict(platform: Platform) -> dict[str, Any]:
    """A `Platform` as a JSON-able dict with every device and link in full (``scale_out_link`` and
    ``devices_per_node`` only on a multi-node platform, so one-node platforms keep their hash)."""
    out = {
        "name": platform.name,
        "accelerators": [device_to_dict(d) for d in platform.accelerators],
        "host": device_to_dict(platform.host) if platform.host is not None else None,
        "host_link": link_to_dict(platform.host_link) if platform.host_link is not None else None,
        "peer_link": link_to_dict(platform.peer_link) if platform.peer_link is not None else None,
        "cost_per_hour_usd": platform.cost_per_hour_usd,
        "source": platform.source,
        "notes": platform.notes,
        "provenance": [list(p) for p in platform.provenance],
    }
    if platform.scale_out_link is not None:
        out["scale_out_link"] = link_to_dict(platform.scale_out_link)
        out["devices_per_node"] = platform.devices_per_node
    return out


def platform_from_dict(data: dict[str, Any], *, where: str = "platform") -> Platform:
    """The `Platform` of `platform_to_dict`; `ValueError` naming ``where`` and the part otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a platform object, got {type(data).__name__}")
    try:
        accs = tuple(
            device_from_dict(d, where=f"{where}.accelerators[{i}]") for i, d in enumerate(data["accelerators"])
        )
        host = data.get("host")
        return Platform(
            name=data["name"],
            accelerators=accs,
            host=device_from_dict(host, where=f"{where}.host") if host is not None else None,
            host_link=link_from_dict(data["host_link"], where=f"{where}.host_link") if data.get("host_link") else None,
            peer_link=link_from_dict(data["peer_link"], where=f"{where}.peer_link") if data.get("peer_link") else None,
            cost_per_hour_usd=float(data["cost_per_hour_usd"]),
            source=str(data.get("source", "")),
            notes=str(data.get("notes", "")),
            provenance=tuple(tuple(p) for p in data.get("provenance", ())),
            scale_out_link=(
                link_from_dict(data["scale_out_link"], where=f"{where}.scale_out_link")
                if data.get("scale_out_link")
                else None
            ),
            devices_per_node=data.get("devices_per_node"),
        )
    except KeyError as exc:
        raise ValueError(f"{where}: missing field {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def hardware_numbers(obj: Any) -> Any:
    """``obj`` (a dict from the functions above) without its descriptive fields (sources, notes,
    provenance, assumption flags): the part of a hardware description that changes a cost."""
    if isinstance(obj, dict):
        return {k: hardware_numbers(v) for k, v in obj.items() if k not in _DESCRIPTIVE}
    if isinstance(obj, list):
        return [hardware_numbers(v) for v in obj]
    return obj
