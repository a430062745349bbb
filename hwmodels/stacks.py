"""`ServingStack`: the per-step costs a serving framework adds to the kernels, and its TOML presets.

A real server pays, every step, time that no kernel model sees: the scheduler and input
preparation of the framework (Python or C++ on the host CPU), the launch / Python dispatch of
each decoder layer in eager stacks, the sampler and detokeniser per token-emitting sequence, and
the LM head and the MoE token permute / unpermute kernels. A `ServingStack` holds the host-side
numbers (seconds) and which of the device-side per-step ops the engine charges; the engine
(`codesign.engine`), `codesign.costplan.StepCostPlan.zero_load_step_s` and the analytic model
(`codesign.analytic`) all charge it through `StepCostPlan` (one formula, `ServingStack.cpu_s` /
`ServingStack.exposed_s`).

Fields (all seconds unless stated):

- ``per_step_s``: host/framework CPU time per step (scheduler, batch bookkeeping, input prep);
- ``per_layer_s``: host time per decoder layer per step (Python dispatch and kernel launches of an
  eager stack; ~0 when the step is a CUDA graph or a compiled engine);
- ``per_sequence_s``: host time per token-emitting sequence per step (sampling bookkeeping,
  detokenisation, stop checks);
- ``cpu_overlap``: fraction in [0, 1] of that CPU time that runs while the GPU computes (an
  asynchronous / overlap scheduler); 0 for eager stacks, whose Python drives the GPU serially;
- ``lm_head``: charge the LM head + sampling kernels per emitting sequence
  (`hwmodels.costs.CostModel.lm_head`);
- ``moe_permute``: charge the token permute / unpermute around each MoE layer's experts
  (`codesign.costplan.StepCostPlan.moe_permute`; the top-k itself is in the router's cost);
- ``compute_slowdown``: device time, not host time: the stack's kernels (its kernel library:
  TensorRT-LLM's CUTLASS MoE GEMMs, vLLM's Triton MoE, ...) take ``1 + compute_slowdown`` times the
  compute time of the reference curves the cost model reads (a calibration profile, or the default
  curve of the dtype: FP8 fitted on DeepGEMM's table); a fraction >= 0, 0 = the curves. It scales
  GPU compute (GEMMs, attention FLOPs) at the calibrated fidelity only
  (`hwmodels.costs.CostModel.with_compute_scale`); memory and copy times, and GEMVs capped at their
  weight stream, are unchanged.
- ``collective_latency_s``: the fixed cost of one collective call of the stack's collective
  library (kernel launch, cross-rank signalling, completion polling: DeepEP's low-latency kernels,
  NCCL), charged once per all-to-all on top of the bytes; absent (None) = the link's own
  ``collective_latency_s`` (`hwmodels.costs.CostModel.all_to_all`'s ``call_latency_s``).

A step whose device-side time is ``gpu_s`` then lasts ``gpu_s + exposed_s(cpu_s, gpu_s)`` with
``cpu_s = per_step_s + n_layers * per_layer_s + n_emitting * per_sequence_s`` and
``exposed_s = cpu_s - min(cpu_overlap * cpu_s, gpu_s)``: the overlapped share hides behind the GPU
only as far as the GPU is busy.

The preset ``none`` (the default of `codesign.mapping.Mapping.stack`) charges nothing: the
idealised engine as it was before issue 8 (no LM head, no permute, no CPU time).

TOML format (``hwmodels/presets/stacks/<name>.toml``; the file stem is the name)::

    name = "vllm"
    source = "what the stack is (version, mode)"
    notes = "optional"
    lm_head = true
    moe_permute = true
    per_step = { value = "0 ms", source = "free, to be fitted", free = true }
    per_layer = { value = "0 us", source = "[P] ...citation..." }
    per_sequence = { value = "20 us", source = "fitted", fitted_on = ["case-a", "case-b"] }
    collective_latency = { value = "15 us", source = "fitted", fitted_on = ["case-c", "case-d"] }
    cpu_overlap = { value = 0.0, source = "[P] ...", assumption = true }
    compute_slowdown = { value = 0.0, source = "free, to be fitted", free = true }

Every number is a table with ``value`` (a time with its unit; ``cpu_overlap`` and ``compute_slowdown`` plain fractions)
and a non-empty ``source``; optional ``fitted_on`` (the validation case names it was fitted on),
``free = true`` (no source gives it: a placeholder to be fitted, never fitted on one case alone),
``assumption = true`` and ``note``. Unknown keys, a missing source, a negative time or an overlap
outside [0, 1] raise `StackError` naming the file and the field. ``get_stack(name)`` takes a preset
name or a path to a ``.toml`` file; ``stack_from_dict`` / ``stack_to_dict`` are the JSON round trip
(used for inline stacks in mapping / design JSON); ``stack_numbers`` keeps what changes a cost
(what a design's content hash covers).
"""

from __future__ import annotations

import functools
import math
import tomllib
from collections.abc import Mapping as AbcMapping
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from hwmodels.devices import PresetError, parse_quantity

__all__ = [
    "STACK_TIME_FIELDS",
    "ServingStack",
    "StackError",
    "StackParam",
    "get_stack",
    "load_stack_file",
    "resolve_stack",
    "stack_from_dict",
    "stack_numbers",
    "stack_preset_names",
    "stack_to_dict",
]

#: The time fields of a stack (TOML key without ``_s`` -> dataclass field).
STACK_TIME_FIELDS: tuple[str, ...] = ("per_step_s", "per_layer_s", "per_sequence_s")
_NUMBER_FIELDS = (*STACK_TIME_FIELDS, "cpu_overlap", "compute_slowdown")
#: Stack numbers that are plain fractions, not times (TOML key = dataclass field).
_PLAIN_FIELDS = ("cpu_overlap", "compute_slowdown")
_PARAM_KEYS = {"value", "unit", "source", "fitted_on", "free", "assumption", "note"}
_OPTIONAL_TIME_FIELDS = ("collective_latency_s",)
_DOC_KEYS = {
    "name",
    "source",
    "notes",
    "lm_head",
    "moe_permute",
    "per_step",
    "per_layer",
    "per_sequence",
    "cpu_overlap",
    "compute_slowdown",
    "collective_latency",
}


class StackError(PresetError):
    """A malformed serving-stack description or an unknown stack name (message names file/field)."""


@dataclass(frozen=True, kw_only=True)
class StackParam:
    """Where one number of a stack comes from: ``source`` (a citation, or how it was fitted),
    ``fitted_on`` (validation case names it was fitted on; empty when cited), ``free`` (no source
    gives it: a placeholder to be fitted), ``assumption`` (a labelled assumption), ``note`` (what the
    number does and does not stand for; shown by ``codesign presets stacks``)."""

    field: str
    source: str
    fitted_on: tuple[str, ...] = ()
    free: bool = False
    assumption: bool = False
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class ServingStack:
    """A serving framework's per-step costs (see the module docstring for the fields and formula)."""

    name: str
    source: str = ""
    notes: str = ""
    per_step_s: float = 0.0
    per_layer_s: float = 0.0
    per_sequence_s: float = 0.0
    cpu_overlap: float = 0.0
    compute_slowdown: float = 0.0
    collective_latency_s: float | None = None
    lm_head: bool = False
    moe_permute: bool = False
    params: tuple[StackParam, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise StackError(f"stack: name must be a non-empty string, got {self.name!r}")
        for f in STACK_TIME_FIELDS:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise StackError(f"stack {self.name!r}: {f} must be a finite number of seconds >= 0, got {v!r}")
            object.__setattr__(self, f, float(v))
        o = self.cpu_overlap
        if isinstance(o, bool) or not isinstance(o, int | float) or not 0.0 <= float(o) <= 1.0:
            raise StackError(f"stack {self.name!r}: cpu_overlap must be a fraction in [0, 1], got {o!r}")
        object.__setattr__(self, "cpu_overlap", float(o))
        g = self.compute_slowdown
        if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g) or g < 0:
            raise StackError(f"stack {self.name!r}: compute_slowdown must be a finite fraction >= 0, got {g!r}")
        object.__setattr__(self, "compute_slowdown", float(g))
        c = self.collective_latency_s
        if c is not None:
            if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c < 0:
                raise StackError(
                    f"stack {self.name!r}: collective_latency_s must be a finite number of seconds >= 0 "
                    f"or None (the link's), got {c!r}"
                )
            object.__setattr__(self, "collective_latency_s", float(c))
        for f in ("lm_head", "moe_permute"):
            if not isinstance(getattr(self, f), bool):
                raise StackError(f"stack {self.name!r}: {f} must be true or false, got {getattr(self, f)!r}")
        object.__setattr__(
            self, "params", tuple(p if isinstance(p, StackParam) else _param_from_dict(p) for p in self.params)
        )

    @property
    def charges_anything(self) -> bool:
        """False for a stack that adds nothing to a step's kernels or tail (``none``); a
        ``collective_latency_s`` is charged inside each all-to-all, not here."""
        return (
            self.lm_head
            or self.moe_permute
            or self.compute_slowdown > 0
            or any(getattr(self, f) > 0 for f in STACK_TIME_FIELDS)
        )

    @property
    def compute_scale(self) -> float:
        """Compute-rate multiplier of this stack's GPU kernels: ``1 / (1 + compute_slowdown)``."""
        return 1.0 / (1.0 + self.compute_slowdown)

    def cpu_s(self, n_layers: int, n_emitting: float) -> float:
        """Host CPU seconds of one step: ``per_step + n_layers * per_layer + n_emitting * per_sequence``
        (zero for a step without tokens is the caller's business: the engine only plays non-empty steps)."""
        return self.per_step_s + n_layers * self.per_layer_s + float(n_emitting) * self.per_sequence_s

    def exposed_s(self, cpu_s: float, gpu_s: float) -> float:
        """Seconds the host CPU time ``cpu_s`` adds to a step whose device time is ``gpu_s``: the
        ``cpu_overlap`` share hides behind the device work, as far as that lasts."""
        return cpu_s - min(self.cpu_overlap * cpu_s, max(gpu_s, 0.0))

    def param(self, name: str) -> StackParam | None:
        """The provenance of field ``name`` (``per_step_s`` ...), or None when none was recorded."""
        return next((p for p in self.params if p.field == name), None)


def _param_from_dict(d: Any) -> StackParam:
    if not isinstance(d, AbcMapping):
        raise StackError(f"stack params: expected an object per parameter, got {d!r}")
    try:
        return StackParam(
            field=str(d["field"]),
            source=str(d.get("source", "")),
            fitted_on=tuple(str(x) for x in d.get("fitted_on", ())),
            free=bool(d.get("free", False)),
            assumption=bool(d.get("assumption", False)),
            note=str(d.get("note", "")),
        )
    except KeyError as exc:
        raise StackError(f"stack params: missing {exc}") from None


def stack_to_dict(stack: ServingStack) -> dict[str, Any]:
    """A JSON-able dict of every field (params as a list of objects)."""
    out: dict[str, Any] = {}
    for f in fields(stack):
        v = getattr(stack, f.name)
        if f.name == "params":
            v = [{**asdict(p), "fitted_on": list(p.fitted_on)} for p in v]
        out[f.name] = v
    return out


def stack_from_dict(data: Any, *, where: str = "stack") -> ServingStack:
    """The `ServingStack` of `stack_to_dict` (an inline stack in JSON); `StackError` naming ``where``
    and the field otherwise. Only ``name`` is required; absent numbers are 0 / false."""
    if not isinstance(data, AbcMapping):
        raise StackError(f"{where}: expected a stack object or a preset name, got {type(data).__name__}")
    valid = {f.name for f in fields(ServingStack)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise StackError(f"{where}: unknown field(s) {unknown}; valid: {sorted(valid)}")
    if "name" not in data:
        raise StackError(f"{where}: missing 'name'")
    try:
        kwargs: dict[str, Any] = {k: (tuple(v) if k == "params" else v) for k, v in data.items()}
        return ServingStack(**kwargs)
    except StackError as exc:
        raise StackError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise StackError(f"{where}: {exc}") from None


def stack_numbers(stack: ServingStack) -> dict[str, Any]:
    """What changes a cost (name, numbers and flags; not sources): what a content hash covers. An
    optional number left at None (the link's) is left out, so older designs keep their hash."""
    out = {
        "name": stack.name,
        **{f: getattr(stack, f) for f in _NUMBER_FIELDS},
        "lm_head": stack.lm_head,
        "moe_permute": stack.moe_permute,
    }
    out.update({f: getattr(stack, f) for f in _OPTIONAL_TIME_FIELDS if getattr(stack, f) is not None})
    return out


# --------------------------------------------------------------------------- TOML files
def _param(doc: AbcMapping[str, Any], key: str, path: str) -> tuple[Any, StackParam | None]:
    """Read the number ``key`` (a table with value + source); absent -> (0, None). A time is parsed
    here (its unit); a plain fraction (`_PLAIN_FIELDS`) is passed on as written and range-checked
    by `ServingStack` (one check for files, JSON and code)."""
    where = f"{path}: field '{key}'"
    raw = doc.get(key)
    if raw is None:
        return 0.0, None
    if not isinstance(raw, AbcMapping):
        raise StackError(f'{where}: every number needs a source; write {{ value = {raw!r}, source = "..." }}')
    unknown = sorted(set(raw) - _PARAM_KEYS)
    if unknown:
        raise StackError(f"{where}: unknown keys {unknown}; allowed: {sorted(_PARAM_KEYS)}")
    if "value" not in raw:
        raise StackError(f"{where}: missing 'value'")
    source = raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise StackError(f"{where}: missing 'source' (a citation, or 'free, to be fitted' with free = true)")
    fitted = raw.get("fitted_on", [])
    if not isinstance(fitted, list) or not all(isinstance(x, str) and x for x in fitted):
        raise StackError(f"{where}.fitted_on: expected a list of validation case names, got {fitted!r}")
    if len(fitted) == 1:
        raise StackError(f"{where}.fitted_on: fitted on one case only ({fitted[0]!r}); fit on two or more")
    for flag in ("free", "assumption"):
        if not isinstance(raw.get(flag, False), bool):
            raise StackError(f"{where}.{flag}: expected true or false, got {raw[flag]!r}")
    value = raw["value"]
    number: Any
    if key in _PLAIN_FIELDS:
        number = value
    else:
        try:
            number = parse_quantity(value, raw.get("unit"), "time", where=where)
        except PresetError as exc:
            raise StackError(str(exc)) from None
        if number < 0:
            raise StackError(f"{where}: must be >= 0, got {value!r}")
    fld = key if key in _PLAIN_FIELDS else f"{key}_s"
    return number, StackParam(
        field=fld,
        source=source,
        fitted_on=tuple(fitted),
        free=bool(raw.get("free", False)),
        assumption=bool(raw.get("assumption", False)),
        note=str(raw.get("note", "")),
    )


def load_stack_file(path: str | Path) -> ServingStack:
    """Load a stack TOML file (format in the module docstring); `StackError` naming file and field."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise StackError(f"{p}: file not found") from None
    return _load_stack(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _load_stack(path_text: str, mtime_ns: int = 0, size: int = 0) -> ServingStack:
    path = Path(path_text)
    try:
        with path.open("rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise StackError(f"{path}: invalid TOML: {exc}") from None
    unknown = sorted(set(doc) - _DOC_KEYS)
    if unknown:
        raise StackError(f"{path}: unknown fields {unknown}; allowed: {sorted(_DOC_KEYS)}")
    for key in ("name", "source"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise StackError(f"{path}: field '{key}': missing (a non-empty string is required)")
    for key in ("lm_head", "moe_permute"):
        if key in doc and not isinstance(doc[key], bool):
            raise StackError(f"{path}: field '{key}': expected true or false, got {doc[key]!r}")
    values: dict[str, Any] = {}
    params: list[StackParam] = []
    collective_latency: float | None = None
    for key in ("per_step", "per_layer", "per_sequence", *_PLAIN_FIELDS, "collective_latency"):
        number, prm = _param(doc, key, str(path))
        fld = key if key in _PLAIN_FIELDS else f"{key}_s"
        if fld == "collective_latency_s":
            collective_latency = number if prm is not None else None
        else:
            values[fld] = number
        if prm is not None:
            params.append(prm)
    try:
        return ServingStack(
            name=doc["name"],
            source=doc["source"],
            notes=str(doc.get("notes", "")),
            lm_head=bool(doc.get("lm_head", False)),
            moe_permute=bool(doc.get("moe_permute", False)),
            params=tuple(params),
            collective_latency_s=collective_latency,
            **values,
        )
    except StackError as exc:
        raise StackError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- presets by name
@functools.lru_cache(maxsize=1)
def _stack_index() -> dict[str, Path]:
    directory = Path(str(resources.files("hwmodels") / "presets" / "stacks"))
    return {p.name[: -len(".toml")]: p for p in sorted(directory.glob("*.toml"))}


def stack_preset_names() -> list[str]:
    """Names of the shipped serving-stack presets, sorted."""
    return sorted(_stack_index())


def get_stack(name: str) -> ServingStack:
    """The stack preset ``name`` (or a stack file path ending in ``.toml``); `StackError` listing the
    valid names for an unknown one."""
    if not isinstance(name, str) or not name:
        raise StackError(f"stack must be a preset name or a .toml path, got {name!r}")
    if name.endswith(".toml"):
        return load_stack_file(name)
    index = _stack_index()
    key = name.strip().lower()
    if key not in index:
        raise StackError(f"unknown serving stack {name!r}; valid: {', '.join(sorted(index))} (or a path to a .toml)")
    stack = load_stack_file(index[key])
    if stack.name != key:
        raise StackError(f"{index[key]}: field 'name' is {stack.name!r} but the file is named {key!r}")
    return stack


def resolve_stack(spec: str | ServingStack | AbcMapping[str, Any]) -> ServingStack:
    """A `ServingStack` from a preset name / ``.toml`` path, an inline dict, or a stack itself."""
    if isinstance(spec, ServingStack):
        return spec
    if isinstance(spec, AbcMapping):
        return stack_from_dict(spec)
    return get_stack(spec)
