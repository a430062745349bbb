"""The declarative search space: a TOML file over model knobs x mapping knobs.

A space file overrides the shipped defaults (``search/data/default_space.toml``, read by
`default_space`): every key it leaves out keeps its default, every unknown key is an error. A
knob's value is a scalar (fixed), an array (a categorical choice) or a table ``{low, high,
step?, log?}`` (an int or float range). Errors name the file, the key, what was expected and what
was found (``space.toml:model.granularity: expected a number > 0, got 'two'``) and come from
`load_space`, before any trial runs.

Sections:

- ``[study]``: ``objectives`` (names from `search.objectives.OBJECTIVES`), ``sampler``
  (``"nsga2"``, ``"tpe"``, ``"random"``), ``population_size`` (NSGA-II), ``quality_law`` (from
  `search.quality.QUALITY_LAWS`), ``fidelity`` (``"multi"``: the analytic model screens, the
  simulator confirms promising designs; ``"analytic"``; ``"sim"``), ``confirm_margin``
  (optimism applied to analytic values before the dominance test, 0.25 = 25 %), ``cost_fidelity``
  (``"calibrated"`` or ``"roofline"``).
- ``[constraints]``: SLO upper bounds in seconds (``tpot_p99_s``, ``tpot_p50_s``, ``ttft_p50_s``).
- ``[workload]``: ``base_model`` (a knob over the embedded default workloads), the closed or
  Poisson request stream (``n_requests``, ``prompt_tokens``, ``output_tokens``, ``arrivals``,
  ``rate_per_s``, ``seed``), ``training_tokens`` (``D`` of the quality law; an assumption: every
  candidate is trained on the same number of tokens). A candidate's routing process is derived
  by `codesign.design.routing_process` (its fixed recalibration budget), so a saved design
  replays exactly; ``routing_calibration_*`` keys of older space files are refused.
- ``[model]`` (relative to the base model): ``experts_scale`` (routed experts x this, width kept),
  ``top_k_scale``, ``granularity`` (split factor ``s``: experts and top-k x ``s``, expert width /
  ``s``, so the active parameters are unchanged; the model's Krajewski granularity
  ``G = d_ff / expert width`` is ``s`` times the base's), ``shared_experts`` (count; width = the
  base's shared width, else its expert width), ``weight_precision`` (the model-wide weight precision:
  it clears any per-component precision and format of the base model, so a candidate at ``fp8`` is
  fp8 throughout), ``expert_precision`` (optional, default ``"same"``: the routed experts follow
  ``weight_precision``; else ``"PREC"`` or ``"PREC:FORMAT"`` with PREC a precision name or bytes per
  weight, quantisation metadata included, and FORMAT a dequantisation kernel of
  `workloads.model.WEIGHT_FORMATS`, e.g. ``["same", "int4:marlin", "0.325:hqq-triton"]``; applied
  after ``weight_precision``), ``kv_precision``. The quality law does not see precision.
- ``[platform]``: ``preset`` (a knob over platform presets) and per preset a table
  ``[platform.<preset>]`` with ``devices`` (expert-parallel degrees to try; default all its
  accelerators) and ``backing`` (where offloaded experts live; default ``"host"`` when it has a
  host, else the device's slowest tier, else no offloading).
- ``[mapping]``: ``fast_tier_share`` (share of each device's experts in its fast tier; only where
  offloading is possible), ``cache_policy`` and ``prefetch`` (only when experts are offloaded),
  ``miss`` (only when offloading to a host), ``placement`` and ``ep_execution`` (only with several
  devices), ``max_batch``, ``max_tokens``, ``stack`` (optional, default ``"none"``: the serving stack
  whose per-step costs every candidate pays, a preset of `hwmodels.stacks.stack_preset_names` or a
  stack ``.toml`` path; a list makes it a knob), ``kv`` (optional, default ``"reserve"``: KV-cache
  admission, `codesign.mapping.BatchingSpec.kv`, ``"reserve"`` or ``"paged"``; a list makes it a knob).

Conditional knobs are simply not asked when they do not apply, and a knob whose choices differ
per platform (``devices``) is named per platform (``platform.n_devices@dgx-h100``), because an
Optuna parameter keeps one distribution for the whole study.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from codesign.mapping import KV_POLICIES
from codesign.policies import REGISTRIES
from hwmodels.devices import Platform, get_platform, platform_preset_names
from hwmodels.stacks import StackError, get_stack, stack_preset_names
from search.objectives import CONSTRAINT_METRICS, OBJECTIVES, SloConstraint
from search.quality import QUALITY_LAWS
from workloads.model import (
    PRECISION_BYTES,
    WEIGHT_COMPONENTS,
    WEIGHT_FORMATS,
    MoEModel,
    get_model,
    model_preset_names,
)

__all__ = [
    "Candidate",
    "Knob",
    "SearchSpace",
    "SpaceError",
    "default_space",
    "load_space",
    "parse_component_precision",
    "scale_model",
]

Scalar = bool | int | float | str
SAMPLERS = ("nsga2", "tpe", "random")
FIDELITIES = ("multi", "analytic", "sim")
DEFAULT_SPACE = "default_space.toml"
#: ``expert_precision`` value meaning "follow ``weight_precision``" (no per-component override).
SAME_PRECISION = "same"


class SpaceError(ValueError):
    """A malformed search space; the message is ``file:key: expected ..., got ...``."""


# ------------------------------------------------------------------------------------------ knobs
@dataclass(frozen=True, kw_only=True)
class Knob:
    """One dimension: ``choices`` (categorical, a 1-tuple = fixed) or a range ``low..high``."""

    name: str
    choices: tuple[Scalar, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    integer: bool = False

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1

    @property
    def is_range(self) -> bool:
        return not self.choices

    def values(self) -> tuple[Scalar, ...]:
        """Every value (categorical knobs, integer ranges with a step); `SpaceError` otherwise."""
        if self.choices:
            return self.choices
        if self.integer:
            assert self.low is not None and self.high is not None
            step = int(self.step or 1)
            return tuple(range(int(self.low), int(self.high) + 1, step))
        raise SpaceError(f"{self.name}: a float range cannot be enumerated; give a list of values")


class Chooser(Protocol):
    """Picks a knob's value (an Optuna trial, an enumerator, a fixed assignment)."""

    def __call__(self, knob: Knob) -> Scalar: ...


def suggest_with(trial: Any) -> Chooser:
    """A `Chooser` asking an `optuna.Trial` (fixed knobs are not Optuna parameters)."""

    def choose(knob: Knob) -> Scalar:
        if knob.fixed:
            return knob.choices[0]
        if knob.choices:
            return trial.suggest_categorical(knob.name, list(knob.choices))
        assert knob.low is not None and knob.high is not None
        if knob.integer:
            return int(
                trial.suggest_int(knob.name, int(knob.low), int(knob.high), step=int(knob.step or 1), log=knob.log)
            )
        return float(trial.suggest_float(knob.name, knob.low, knob.high, step=knob.step, log=knob.log))

    return choose


def params_chooser(params: Mapping[str, Scalar]) -> Chooser:
    """A `Chooser` replaying a parameter assignment (``study.best_trials[i].params``)."""

    def choose(knob: Knob) -> Scalar:
        if knob.fixed:
            return knob.choices[0]
        if knob.name not in params:
            raise SpaceError(f"parameter {knob.name!r} is missing from the assignment")
        return params[knob.name]

    return choose


# ------------------------------------------------------------------------------------ candidate
@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One point of the space, before it becomes a `codesign.design.Design`.

    ``params`` are the non-fixed knob values chosen (Optuna's ``trial.params``); ``routing_shape``
    is ``(base_model, n_experts, top_k)``, the routing process the design needs."""

    params: dict[str, Scalar]
    base_model: str
    model: MoEModel
    platform_name: str
    platform: Platform
    mapping_kw: dict[str, Any]
    workload_kw: dict[str, Any]
    cost_fidelity: str
    training_tokens: float

    @property
    def routing_shape(self) -> tuple[str, int, int]:
        return (self.base_model, self.model.n_experts, self.model.top_k)

    def mapping(self) -> Any:
        """The `codesign.mapping.Mapping` of this candidate."""
        from codesign.mapping import BatchingSpec, CacheSpec, Mapping

        kw = dict(self.mapping_kw)
        cache = CacheSpec(policy=kw.pop("cache_policy"), expert_fraction=float(kw.pop("fast_tier_share")))
        batching = BatchingSpec(
            max_batch=int(kw.pop("max_batch")), max_tokens=int(kw.pop("max_tokens")), kv=str(kw.pop("kv", "reserve"))
        )
        return Mapping(cache=cache, batching=batching, **kw)


def scale_model(
    base: MoEModel,
    *,
    experts_scale: float = 1.0,
    top_k_scale: float = 1.0,
    granularity: float = 1.0,
    shared_experts: int | None = None,
    weight_precision: str | None = None,
    kv_precision: str | None = None,
    expert_precision: str | None = None,
) -> MoEModel:
    """``base`` with its experts varied (see the module doc for each knob).

    ``weight_precision`` sets the model-wide precision and clears every per-component precision and
    format of ``base`` (`workloads.model.WEIGHT_COMPONENTS`); ``expert_precision`` (see
    `parse_component_precision`; None or ``"same"``: none) then sets the routed experts' bytes per
    weight and format.

    Coarse experts ``E = round(E0 * experts_scale)``, top-k ``k = max(1, round(k0 * top_k_scale))``;
    split by ``s = granularity``: ``top_k = max(1, round(k s))``, expert width
    ``round(k * w0 / top_k)`` (active routed width ``k w0`` kept; exact when ``k s`` is an
    integer), ``n_experts = max(top_k, round(E s))``. Raises `ValueError` for knob values out of range."""
    for what, v in (("experts_scale", experts_scale), ("top_k_scale", top_k_scale), ("granularity", granularity)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{what} must be a number > 0, got {v!r}")
    e_coarse = max(1, round(base.n_experts * experts_scale))
    k_coarse = min(e_coarse, max(1, round(base.top_k * top_k_scale)))
    top_k = max(1, round(k_coarse * granularity))
    width = max(1, round(k_coarse * base.expert_ffn_dim / top_k))
    n_experts = max(top_k, round(e_coarse * granularity))
    changes: dict[str, Any] = {"n_experts": n_experts, "top_k": top_k, "expert_ffn_dim": width}
    if shared_experts is not None:
        if not isinstance(shared_experts, int) or isinstance(shared_experts, bool) or shared_experts < 0:
            raise ValueError(f"shared_experts must be an int >= 0, got {shared_experts!r}")
        changes["n_shared_experts"] = shared_experts
        changes["shared_ffn_dim"] = (base.shared_ffn_dim or base.expert_ffn_dim) if shared_experts else 0
    if weight_precision is not None:
        changes["bytes_per_weight"] = PRECISION_BYTES[weight_precision]
        for comp in WEIGHT_COMPONENTS:
            changes[f"{comp}_bytes_per_weight"] = None
            changes[f"{comp}_format"] = "none"
    expert = parse_component_precision(expert_precision) if expert_precision is not None else None
    if expert is not None:
        changes["expert_bytes_per_weight"], changes["expert_format"] = expert
    if kv_precision is not None:
        changes["kv_bytes_per_elem"] = PRECISION_BYTES[kv_precision]
    parts = [base.name, f"E{n_experts}k{top_k}w{width}"]
    if changes.get("n_shared_experts"):
        parts.append(f"s{changes['n_shared_experts']}")
    if weight_precision:
        parts.append(weight_precision)
    if expert is not None:
        parts.append(f"experts-{expert_precision}")
    changes["name"] = "-".join(parts)
    changes["source"] = f"search: {base.name} ({base.source}) with experts varied by search.space.scale_model"
    return base.with_(**changes)


def parse_component_precision(spec: str) -> tuple[float, str] | None:
    """A component precision knob value -> ``(bytes per weight, format)``; None for ``"same"``.

    ``spec`` is ``"same"``, ``"PREC"`` or ``"PREC:FORMAT"``: PREC a name of
    `workloads.model.PRECISION_BYTES` or a number of bytes per weight > 0 (metadata included: 2-bit
    HQQ with group-16 scales is 0.325), FORMAT one of `workloads.model.WEIGHT_FORMATS` (default
    ``"none"``: no dequantisation charged; a packed format needs PREC < 1 byte, as `MoEModel`
    requires). Raises `ValueError` saying what was expected."""
    if spec == SAME_PRECISION:
        return None
    prec, _, fmt = spec.partition(":")
    fmt = fmt or "none"
    if prec in PRECISION_BYTES:
        value = PRECISION_BYTES[prec]
    else:
        try:
            value = float(prec)
        except ValueError:
            value = math.nan
    packed_ok = fmt == "none" or value < 1.0  # a packed format names sub-8-bit weights (workloads.model)
    if not (math.isfinite(value) and value > 0) or fmt not in WEIGHT_FORMATS or not packed_ok:
        raise ValueError(f"expected {_COMPONENT_PRECISION}, got {spec!r}")
    return value, fmt


#: What `parse_component_precision` accepts, for error messages.
_COMPONENT_PRECISION = (
    f"'{SAME_PRECISION}', 'PREC' or 'PREC:FORMAT' with PREC in {sorted(PRECISION_BYTES)} or bytes per weight > 0 "
    f"and FORMAT in {list(WEIGHT_FORMATS)} (a packed format only with PREC < 1 byte)"
)


# --------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True, kw_only=True)
class PlatformOptions:
    """Per-preset mapping options: expert-parallel degrees to try, and where offloaded experts live."""

    devices: Knob
    backing: str | None  # None: nothing can be offloaded
    has_host: bool


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A parsed, validated space. Build with `load_space` / `default_space`; sample with `build`."""

    source: str
    objectives: tuple[str, ...]
    sampler: str
    population_size: int
    quality_law: str
    fidelity: str
    confirm_margin: float
    cost_fidelity: str
    slos: tuple[SloConstraint, ...]
    workload: dict[str, Any]
    knobs: dict[str, Knob]
    platforms: dict[str, PlatformOptions]
    raw: dict[str, Any] = field(repr=False, compare=False)

    # ------------------------------------------------------------------ sampling
    def build(self, choose: Chooser) -> Candidate:
        """One candidate, asking ``choose`` for each knob that applies (conditional order: base
        model, model knobs, platform, devices, then the mapping knobs that the earlier choices
        enable). Deterministic given the choices."""
        params: dict[str, Scalar] = {}

        def pick(name: str) -> Any:
            knob = self.knobs[name]
            value = choose(knob)
            if not knob.fixed:
                params[knob.name] = value
            return value

        base_name = str(pick("workload.base_model"))
        base = get_model(base_name)
        model = scale_model(
            base,
            experts_scale=float(pick("model.experts_scale")),
            top_k_scale=float(pick("model.top_k_scale")),
            granularity=float(pick("model.granularity")),
            shared_experts=int(pick("model.shared_experts")),
            weight_precision=str(pick("model.weight_precision")),
            kv_precision=str(pick("model.kv_precision")),
            expert_precision=str(pick("model.expert_precision")),
        )
        preset = str(pick("platform.preset"))
        opts = self.platforms[preset]
        dev_knob = opts.devices
        n_dev = int(choose(dev_knob))
        if not dev_knob.fixed:
            params[dev_knob.name] = n_dev
        mapping_kw: dict[str, Any] = {"n_devices": n_dev, "stack": str(pick("mapping.stack"))}
        share = float(pick("mapping.fast_tier_share")) if opts.backing is not None else 1.0
        mapping_kw["fast_tier_share"] = share
        if share < 1.0:
            assert opts.backing is not None
            mapping_kw["backing"] = opts.backing
            mapping_kw["cache_policy"] = str(pick("mapping.cache_policy"))
            mapping_kw["prefetch"] = str(pick("mapping.prefetch"))
            mapping_kw["miss"] = str(pick("mapping.miss")) if opts.has_host else "fetch"
        else:
            mapping_kw["cache_policy"] = "lru"
        if n_dev > 1:
            mapping_kw["placement"] = str(pick("mapping.placement"))
            mapping_kw["ep_execution"] = str(pick("mapping.ep_execution"))
        mapping_kw["max_batch"] = int(pick("mapping.max_batch"))
        mapping_kw["max_tokens"] = int(pick("mapping.max_tokens"))
        mapping_kw["kv"] = str(pick("mapping.kv"))
        w = self.workload
        workload_kw = {
            "base_model": base_name,
            "n_requests": w["n_requests"],
            "arrivals": w["arrivals"],
            "rate_per_s": w["rate_per_s"],
            "prompt_tokens": w["prompt_tokens"],
            "output_tokens": w["output_tokens"],
            "seed": w["seed"],
        }
        return Candidate(
            params=params,
            base_model=base_name,
            model=model,
            platform_name=preset,
            platform=get_platform(preset),
            mapping_kw=mapping_kw,
            workload_kw=workload_kw,
            cost_fidelity=self.cost_fidelity,
            training_tokens=float(w["training_tokens"]),
        )

    def enumerate(self, limit: int = 100_000) -> Iterator[Candidate]:
        """Every candidate of a fully categorical space (depth-first over the choices, each
        distinct assignment once); `SpaceError` for float ranges or more than ``limit`` designs."""
        stack: list[list[int]] = [[]]
        seen = 0
        while stack:
            path = stack.pop()
            taken: list[int] = []
            sizes: list[int] = []

            def choose(
                knob: Knob, path: list[int] = path, taken: list[int] = taken, sizes: list[int] = sizes
            ) -> Scalar:
                values = knob.values()
                i = path[len(taken)] if len(taken) < len(path) else 0
                taken.append(i)
                sizes.append(len(values))
                return values[i]

            cand = self.build(choose)
            # branch on every knob first reached beyond the given prefix
            for depth in range(len(taken) - 1, len(path) - 1, -1):
                for j in range(sizes[depth] - 1, 0, -1):
                    stack.append([*taken[:depth], j])
            seen += 1
            if seen > limit:
                raise SpaceError(f"{self.source}: more than {limit} designs; too large to enumerate")
            yield cand

    def size(self, limit: int = 100_000) -> int:
        """Number of distinct designs (`enumerate`)."""
        return sum(1 for _ in self.enumerate(limit))

    def routing_shapes(self) -> list[tuple[str, int, int]]:
        """The ``(base_model, n_experts, top_k)`` shapes the categorical model knobs can produce
        (what the routing-process cache may need), sorted."""
        shapes = set()
        names = ("model.experts_scale", "model.top_k_scale", "model.granularity")
        for base_name in self.knobs["workload.base_model"].values():
            base = get_model(str(base_name))
            for es in self.knobs[names[0]].values():
                for ks in self.knobs[names[1]].values():
                    for g in self.knobs[names[2]].values():
                        m = scale_model(base, experts_scale=float(es), top_k_scale=float(ks), granularity=float(g))
                        shapes.add((str(base_name), m.n_experts, m.top_k))
        return sorted(shapes)


# ---------------------------------------------------------------------------- TOML -> SearchSpace
_SECTIONS: dict[str, tuple[str, ...]] = {
    "study": (
        "objectives",
        "sampler",
        "population_size",
        "quality_law",
        "fidelity",
        "confirm_margin",
        "cost_fidelity",
    ),
    "constraints": tuple(CONSTRAINT_METRICS),
    "workload": (
        "base_model",
        "n_requests",
        "prompt_tokens",
        "output_tokens",
        "arrivals",
        "rate_per_s",
        "seed",
        "training_tokens",
    ),
    "model": (
        "experts_scale",
        "top_k_scale",
        "granularity",
        "shared_experts",
        "weight_precision",
        "kv_precision",
        "expert_precision",
    ),
    "platform": ("preset",),
    "mapping": (
        "fast_tier_share",
        "cache_policy",
        "prefetch",
        "miss",
        "placement",
        "ep_execution",
        "max_batch",
        "max_tokens",
        "stack",
        "kv",
    ),
}
_PLATFORM_KEYS = ("devices", "backing")


class _Ctx:
    """Error context: the file name, for ``file:key: ...`` messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, expected: str, got: Any) -> SpaceError:
        return SpaceError(f"{self.source}:{key}: expected {expected}, got {got!r}")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpaceError(f"{source}: not valid TOML ({exc})") from None


def _check_keys(ctx: _Ctx, data: Mapping[str, Any]) -> None:
    for section, value in data.items():
        if section not in _SECTIONS:
            raise ctx.error(section, f"a section among {sorted(_SECTIONS)}", section)
        if not isinstance(value, Mapping):
            raise ctx.error(section, "a table", value)
        for key, item in value.items():
            if section == "platform" and key not in _SECTIONS["platform"]:
                if not isinstance(item, Mapping):
                    raise ctx.error(f"platform.{key}", f"a preset options table with keys {list(_PLATFORM_KEYS)}", item)
                for sub in item:
                    if sub not in _PLATFORM_KEYS:
                        raise ctx.error(f"platform.{key}.{sub}", f"one of {list(_PLATFORM_KEYS)}", sub)
                continue
            if section == "workload" and key.startswith("routing_calibration_"):
                raise ctx.error(
                    f"workload.{key}",
                    "absent (a design's routing process is derived by codesign.design.routing_process with its "
                    "own fixed budget, so saved designs replay exactly)",
                    item,
                )
            if key not in _SECTIONS[section]:
                raise ctx.error(f"{section}.{key}", f"a key among {list(_SECTIONS[section])}", key)


def _knob(
    ctx: _Ctx, key: str, value: Any, *, kind: str, valid: Sequence[Scalar] | None = None, name: str | None = None
) -> Knob:
    """A knob from the TOML value at ``key`` (named ``name``, default ``key``); ``kind`` is
    ``"int"``, ``"float"`` or ``"str"``; ``valid`` restricts categorical values; numbers must be
    > 0 unless the key allows 0 (``shared_experts``)."""
    name = name or key

    def check(v: Any) -> Scalar:
        if kind == "str":
            if not isinstance(v, str):
                raise ctx.error(key, "a string", v)
            if valid is not None and v not in valid:
                raise ctx.error(key, f"one of {sorted(str(x) for x in valid)}", v)
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ctx.error(key, f"{'an int' if kind == 'int' else 'a number'}", v)
        if kind == "int" and (not isinstance(v, int) and not float(v).is_integer()):
            raise ctx.error(key, "an int", v)
        lowest = 0 if key.endswith("shared_experts") else None
        if (lowest is None and v <= 0) or (lowest is not None and v < lowest):
            raise ctx.error(
                key, f"{'an int' if kind == 'int' else 'a number'} {'>= 0' if lowest is not None else '> 0'}", v
            )
        if key.endswith("fast_tier_share") and v > 1:
            raise ctx.error(key, "a share in (0, 1]", v)
        return int(v) if kind == "int" else float(v)

    if isinstance(value, list):
        if not value:
            raise ctx.error(key, "a non-empty list of values", value)
        choices = tuple(check(v) for v in value)
        if len(set(choices)) != len(choices):
            raise ctx.error(key, "distinct values", value)
        return Knob(name=name, choices=choices)
    if isinstance(value, Mapping):
        if kind == "str":
            raise ctx.error(key, "a string or a list of strings", dict(value))
        extra = set(value) - {"low", "high", "step", "log"}
        if extra or "low" not in value or "high" not in value:
            raise ctx.error(key, "a range table {low, high, step?, log?}", dict(value))
        low, high = check(value["low"]), check(value["high"])
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if low >= high:
            raise ctx.error(key, "low < high", dict(value))
        step = value.get("step")
        if step is not None:
            check(step)
        log = value.get("log", False)
        if not isinstance(log, bool) or (log and step is not None):
            raise ctx.error(key, "log = true or false (not with a step)", dict(value))
        return Knob(
            name=name,
            low=float(low),
            high=float(high),
            step=None if step is None else float(step),
            log=log,
            integer=kind == "int",
        )
    return Knob(name=name, choices=(check(value),))


def _platform_options(ctx: _Ctx, preset: str, table: Mapping[str, Any]) -> PlatformOptions:
    plat = get_platform(preset)
    n_acc = plat.n_accelerators
    key = f"platform.{preset}.devices"
    raw = table.get("devices", [n_acc])
    knob = _knob(ctx, key, raw, kind="int", name=f"platform.n_devices@{preset}")
    for v in knob.values():
        if int(v) > n_acc:
            raise ctx.error(key, f"device counts <= {n_acc} (the accelerators of {preset})", raw)
        if not plat.whole_nodes(int(v)):
            per_node = plat.devices_per_node
            raise ctx.error(
                key, f"device counts <= {per_node} or whole nodes of {per_node} ({preset} spans nodes)", raw
            )
    dev = plat.accelerators[0]
    has_host = plat.host is not None and plat.host_link is not None
    tiers = [t.name for t in dev.tiers]
    slower = tiers[tiers.index(dev.weights_tier) + 1 :]
    if "backing" in table:
        backing = table["backing"]
        if backing != "host" and backing not in slower:
            raise ctx.error(
                f"platform.{preset}.backing",
                f"'host' or a tier of {dev.name} slower than {dev.weights_tier} {slower}",
                backing,
            )
        if backing == "host" and not has_host:
            raise ctx.error(f"platform.{preset}.backing", f"a device tier ({preset} has no host)", backing)
    else:
        backing = "host" if has_host else (slower[-1] if slower else None)
    return PlatformOptions(devices=knob, backing=backing, has_host=has_host)


def _parse(data: dict[str, Any], source: str) -> SearchSpace:
    ctx = _Ctx(source)
    _check_keys(ctx, data)
    st, wl = data["study"], data["workload"]
    objectives = st["objectives"]
    if not isinstance(objectives, list) or not objectives or not all(isinstance(o, str) for o in objectives):
        raise ctx.error("study.objectives", "a non-empty list of objective names", objectives)
    for o in objectives:
        if o not in OBJECTIVES:
            raise ctx.error("study.objectives", f"names among {sorted(OBJECTIVES)}", o)
    if len(set(objectives)) != len(objectives):
        raise ctx.error("study.objectives", "distinct names", objectives)
    if st["sampler"] not in SAMPLERS:
        raise ctx.error("study.sampler", f"one of {list(SAMPLERS)}", st["sampler"])
    pop = st["population_size"]
    if isinstance(pop, bool) or not isinstance(pop, int) or pop < 2:
        raise ctx.error("study.population_size", "an int >= 2", pop)
    if st["quality_law"] not in QUALITY_LAWS.names():
        raise ctx.error("study.quality_law", f"one of {QUALITY_LAWS.names()}", st["quality_law"])
    if st["fidelity"] not in FIDELITIES:
        raise ctx.error("study.fidelity", f"one of {list(FIDELITIES)}", st["fidelity"])
    margin = st["confirm_margin"]
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
        raise ctx.error("study.confirm_margin", "a number in [0, 1)", margin)
    if st["cost_fidelity"] not in ("calibrated", "roofline"):
        raise ctx.error("study.cost_fidelity", "'calibrated' or 'roofline'", st["cost_fidelity"])
    slos = []
    for metric, limit in data.get("constraints", {}).items():
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not math.isfinite(limit) or limit <= 0:
            raise ctx.error(f"constraints.{metric}", "a limit in seconds > 0", limit)
        slos.append(SloConstraint(metric=metric, limit=float(limit)))
    # workload
    workload: dict[str, Any] = {}
    for key in ("n_requests", "prompt_tokens", "output_tokens", "seed"):
        v = wl[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "seed" else 1):
            raise ctx.error(f"workload.{key}", f"an int {'>= 0' if key == 'seed' else '>= 1'}", v)
        workload[key] = v
    if wl["arrivals"] not in ("closed", "poisson"):
        raise ctx.error("workload.arrivals", "'closed' or 'poisson'", wl["arrivals"])
    workload["arrivals"] = wl["arrivals"]
    rate = wl.get("rate_per_s")
    if wl["arrivals"] == "poisson" and (
        rate is None or isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0
    ):
        raise ctx.error("workload.rate_per_s", "a rate > 0 (requests/s) with poisson arrivals", rate)
    workload["rate_per_s"] = None if wl["arrivals"] == "closed" else float(rate)
    d = wl["training_tokens"]
    if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0:
        raise ctx.error("workload.training_tokens", "a number of tokens > 0", d)
    workload["training_tokens"] = float(d)
    # knobs
    knobs: dict[str, Knob] = {}
    knobs["workload.base_model"] = _knob(
        ctx, "workload.base_model", wl["base_model"], kind="str", valid=model_preset_names()
    )
    m = data["model"]
    for key in ("experts_scale", "top_k_scale", "granularity"):
        knobs[f"model.{key}"] = _knob(ctx, f"model.{key}", m[key], kind="float")
    knobs["model.shared_experts"] = _knob(ctx, "model.shared_experts", m["shared_experts"], kind="int")
    for key in ("weight_precision", "kv_precision"):
        knobs[f"model.{key}"] = _knob(ctx, f"model.{key}", m[key], kind="str", valid=sorted(PRECISION_BYTES))
    knobs["model.expert_precision"] = _knob(
        ctx, "model.expert_precision", m.get("expert_precision", SAME_PRECISION), kind="str"
    )
    for value in knobs["model.expert_precision"].values():
        try:
            parse_component_precision(str(value))
        except ValueError:
            raise ctx.error("model.expert_precision", _COMPONENT_PRECISION, value) from None
    knobs["platform.preset"] = _knob(
        ctx, "platform.preset", data["platform"]["preset"], kind="str", valid=platform_preset_names()
    )
    mp = data["mapping"]
    knobs["mapping.fast_tier_share"] = _knob(ctx, "mapping.fast_tier_share", mp["fast_tier_share"], kind="float")
    for key, kind in (
        ("cache_policy", "cache"),
        ("prefetch", "prefetch"),
        ("miss", "miss"),
        ("placement", "placement"),
    ):
        knobs[f"mapping.{key}"] = _knob(ctx, f"mapping.{key}", mp[key], kind="str", valid=REGISTRIES[kind].names())
    knobs["mapping.ep_execution"] = _knob(
        ctx, "mapping.ep_execution", mp["ep_execution"], kind="str", valid=["classic", "context-coherent"]
    )
    for key in ("max_batch", "max_tokens"):
        knobs[f"mapping.{key}"] = _knob(ctx, f"mapping.{key}", mp[key], kind="int")
    knobs["mapping.kv"] = _knob(ctx, "mapping.kv", mp.get("kv", "reserve"), kind="str", valid=list(KV_POLICIES))
    knobs["mapping.stack"] = _knob(ctx, "mapping.stack", mp.get("stack", "none"), kind="str")
    for value in knobs["mapping.stack"].values():
        try:
            get_stack(str(value))
        except StackError:
            raise ctx.error(
                "mapping.stack", f"a serving stack among {stack_preset_names()} or a stack .toml file", value
            ) from None
    for name in ("workload.base_model", "platform.preset"):
        if knobs[name].is_range:
            raise ctx.error(name, "a name or a list of names", data)
    if st["fidelity"] == "analytic" and "paged" in knobs["mapping.kv"].values():
        raise ctx.error(
            "mapping.kv",
            "'reserve' with study.fidelity 'analytic' (the analytic model does not model KV admission; "
            "use 'sim' or 'multi' to search 'paged')",
            mp.get("kv"),
        )
    platforms = {
        str(p): _platform_options(ctx, str(p), data["platform"].get(str(p), {}))
        for p in knobs["platform.preset"].values()
    }
    return SearchSpace(
        source=source,
        objectives=tuple(objectives),
        sampler=st["sampler"],
        population_size=pop,
        quality_law=st["quality_law"],
        fidelity=st["fidelity"],
        confirm_margin=float(margin),
        cost_fidelity=st["cost_fidelity"],
        slos=tuple(slos),
        workload=workload,
        knobs=knobs,
        platforms=platforms,
        raw=data,
    )


def _default_data() -> dict[str, Any]:
    text = (resources.files("search") / "data" / DEFAULT_SPACE).read_text(encoding="utf-8")
    return _read_toml(text, f"search/data/{DEFAULT_SPACE}")


def default_space() -> SearchSpace:
    """The shipped default space (``search/data/default_space.toml``)."""
    return _parse(_default_data(), f"search/data/{DEFAULT_SPACE}")


def load_space(path: str | Path | None = None, *, text: str | None = None) -> SearchSpace:
    """The space of a TOML file (or ``text``) merged over the defaults; ``None`` = the defaults.

    A ``[platform] preset`` list given by the user replaces the default one, and the per-preset
    tables of the defaults only apply to presets still listed. Raises `SpaceError`
    (``file:key: expected ..., got ...``) for any malformed or unknown entry."""
    if path is None and text is None:
        return default_space()
    if text is None:
        p = Path(path)  # type: ignore[arg-type]
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpaceError(f"{p}: cannot read the search space ({exc.strerror})") from None
        source = str(p)
    else:
        source = str(path) if path is not None else "<space>"
    user = _read_toml(text, source)
    _check_keys(_Ctx(source), user)
    return _parse(_merge(_default_data(), user), source)
