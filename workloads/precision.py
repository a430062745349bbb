"""Human-readable labels of a model's weight precision, per component where they differ.

`precision_label` turns a `workloads.model.MoEModel` (or its ``to_dict`` fields, as a simulation's
saved config holds them) into one line: ``"fp8 (1 B/weight)"`` when every component follows the
model-wide ``bytes_per_weight`` with no dequantisation format, else the model-wide precision
followed by each component that differs, e.g.
``"bf16 (2 B/weight); attention int4 (0.5 B/weight, hqq-triton-g64), expert custom (0.325 B/weight,
hqq-triton)"``, and the all-to-all activation bytes when they differ from bf16. Precision names come
from `workloads.model.PRECISION_BYTES` (``custom`` when no name has those bytes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workloads.model import DEFAULT_A2A_BYTES, PRECISION_BYTES, WEIGHT_COMPONENTS, MoEModel

__all__ = ["mixed_precision", "precision_label", "precision_name"]


def precision_name(bytes_per_weight: float) -> str:
    """The precision names with ``bytes_per_weight`` bytes (``"bf16/fp16"``), or ``"custom"``."""
    return "/".join(k for k, v in PRECISION_BYTES.items() if v == float(bytes_per_weight)) or "custom"


def _fields(model: MoEModel | Mapping[str, Any]) -> Mapping[str, Any]:
    return model.to_dict() if isinstance(model, MoEModel) else model


def _components(fields: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    """``(component, bytes per weight, format)`` of each component that differs from the model-wide
    precision or names a dequantisation format, in `WEIGHT_COMPONENTS` order."""
    bpw = float(fields.get("bytes_per_weight", 0.0))
    out = []
    for comp in WEIGHT_COMPONENTS:
        own = fields.get(f"{comp}_bytes_per_weight")
        value = bpw if own is None else float(own)
        fmt = str(fields.get(f"{comp}_format", "none") or "none")
        if value != bpw or fmt != "none":
            out.append((comp, value, fmt))
    return out


def _a2a(fields: Mapping[str, Any]) -> tuple[float, float]:
    return (
        float(fields.get("dispatch_bytes_per_elem", DEFAULT_A2A_BYTES)),
        float(fields.get("combine_bytes_per_elem", DEFAULT_A2A_BYTES)),
    )


def mixed_precision(model: MoEModel | Mapping[str, Any]) -> bool:
    """True when some weight component differs from the model-wide precision (or names a format), or
    the all-to-all activations are not bf16."""
    fields = _fields(model)
    return bool(_components(fields)) or _a2a(fields) != (DEFAULT_A2A_BYTES, DEFAULT_A2A_BYTES)


def _one(bytes_per_weight: float, fmt: str, extra: str = "") -> str:
    inner = [f"{bytes_per_weight:g} B/weight"]
    if fmt != "none":
        inner.append(fmt)
    if extra:
        inner.append(extra)
    return f"{precision_name(bytes_per_weight)} ({', '.join(inner)})"


def precision_label(model: MoEModel | Mapping[str, Any], *, kv: bool = False) -> str:
    """One line naming the weight precision of ``model`` (a model or its ``to_dict`` fields; absent
    per-component fields follow the model-wide precision): the model-wide precision, then
    ``"; "`` and each differing component (see the module docstring), then the all-to-all dispatch /
    combine bytes per element when either is not 2 (bf16). ``kv`` adds the KV-cache bytes per
    element inside the first parentheses (``"fp8 (1 B/weight, KV 2 B/element)"``)."""
    fields = _fields(model)
    bpw = float(fields.get("bytes_per_weight", 0.0))
    kv_text = f"KV {float(fields.get('kv_bytes_per_elem', 0.0)):g} B/element" if kv else ""
    text = _one(bpw, "none", kv_text)
    parts = [f"{comp} {_one(value, fmt)}" for comp, value, fmt in _components(fields)]
    dispatch, combine = _a2a(fields)
    if (dispatch, combine) != (DEFAULT_A2A_BYTES, DEFAULT_A2A_BYTES):
        parts.append(f"all-to-all dispatch {dispatch:g} B/element, combine {combine:g} B/element")
    return f"{text}; {', '.join(parts)}" if parts else text
