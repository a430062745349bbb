"""`Mapping`: how an MoE model is laid out on a platform and served (a frozen config tree).

Validated twice (STYLE item 7): the arguments when a `Mapping` is built (fractions in [0, 1],
sizes > 0, policy names registered), and the fit to a model and a platform when it is bound
(`Mapping.bind` -> `BoundMapping`): every expert has a home device, the resident experts, the
non-expert weights, the staging buffers and at least one request's KV cache fit in the cache tier
of every device, the offloaded experts fit in their backing memory. Errors name the field, the
value and what was expected, with the numbers.

The config is a tree of frozen dataclasses with a JSON round trip (`to_dict`/`from_dict`,
`to_json`/`from_json`) and a stable hash (`config_hash`, SHA-256 of the canonical JSON).

Memory model (per accelerator, in its cache tier ``cache.tier``, by default the device's
``weights_tier``, e.g. HBM): ``non_expert_bytes`` (attention, shared experts, router, dense layers
and embeddings, replicated on each expert-parallel device) + ``slots x bytes_per_expert`` (the
expert cache, resident experts included) + ``staging_experts x bytes_per_expert`` (buffers for
experts streamed without being cached; only when experts are offloaded) + the KV cache, which gets
all that is left (``kv_fraction`` of it). Offloaded experts live in their *backing* memory:
``"host"`` = the host's weights tier (host DRAM) over the platform's ``host_link``; or a slower tier
of the same device (e.g. ``"ddr"`` on an RDU).

Starting cache contents (``initial``): ``"popular"`` fills each device's slots with its most used
experts in the training routing (``"spread"`` when there is none), ``"spread"`` takes expert rank
``r`` of every layer before rank ``r + 1`` of any layer, ``"empty"`` starts cold, ``"listed"``
takes exactly ``resident``; ``pinned`` experts are always resident and never evicted. Cache
policy options (``cache.options``) go to the policy's constructor, e.g. ``{"per_layer": True}``
splits the slots evenly over the layers.

Example::

    Mapping(cache=CacheSpec(policy="lru", expert_fraction=0.25), prefetch="pregate", miss="cost",
            batching=BatchingSpec(max_batch=32))
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from codesign.policies import REGISTRIES
from codesign.policies.base import RoutingStats
from codesign.policies.placement import PlacedLayout, PlacementMemo, run_placement
from codesign.policies.registry import UnknownOptionError, check_options
from hwmodels.execution import EXECUTIONS
from hwmodels.stacks import ServingStack, StackError, resolve_stack, stack_from_dict

if TYPE_CHECKING:
    from hwmodels.devices import Device, MemoryTier, Platform
    from workloads.model import MoEModel

__all__ = [
    "KV_POLICIES",
    "BatchingSpec",
    "BoundMapping",
    "CacheSpec",
    "EpExecution",
    "Mapping",
    "MappingError",
    "Options",
]

#: KV-cache admission policies of `BatchingSpec.kv`.
KV_POLICIES = ("reserve", "paged")

#: JSON-able option values (policy keyword arguments).
OptionValue = bool | int | float | str
Options = tuple[tuple[str, OptionValue], ...]
#: What an options field accepts: sorted pairs (stored form) or a dict (normalised at construction).
OptionsArg = Options | dict[str, OptionValue]
#: A precomputed layout: stored as a tuple of per-layer tuples of device ids; nested lists or an
#: integer array are accepted at construction (normalised).
LayoutArg = tuple[tuple[int, ...], ...] | Sequence[Sequence[int]] | npt.NDArray[np.integer[Any]]
InitialFill = Literal["popular", "spread", "empty", "listed"]
EpExecution = Literal["classic", "context-coherent"]
Eviction = Literal["discard", "copy-back"]


class MappingError(ValueError):
    """A mapping that is malformed or does not fit the model and platform (message has the numbers)."""


def _options(value: Any, where: str) -> Options:
    """Normalise a dict or pair sequence into sorted ``((key, value), ...)`` with JSON scalars."""
    items = value.items() if isinstance(value, dict) else value
    out: list[tuple[str, OptionValue]] = []
    for item in items:
        try:
            key, val = item
        except (TypeError, ValueError):
            raise MappingError(f"{where}: options must be a dict or (key, value) pairs, got {item!r}") from None
        if not isinstance(key, str) or not key.isidentifier():
            raise MappingError(f"{where}: option name must be an identifier string, got {key!r}")
        if not isinstance(val, bool | int | float | str):
            raise MappingError(f"{where}: option {key!r} must be a bool, int, float or str, got {val!r}")
        out.append((key, val))
    return tuple(sorted(out))


def _check_policy(kind: str, name: str, where: str, options: OptionsArg = ()) -> None:
    """The policy exists (`UnknownPolicyError` lists the valid names) and takes ``options`` (the
    constructor's keyword parameters; `MappingError` lists the valid ones)."""
    REGISTRIES[kind].get(name)  # raises UnknownPolicyError listing the valid names
    if not name:
        raise MappingError(f"{where}: empty policy name")
    try:
        check_options(kind, name, (k for k, _ in _options(options, where)), f"{where} options")
    except UnknownOptionError as exc:
        raise MappingError(str(exc)) from None


def _layout(value: Any) -> tuple[tuple[int, ...], ...] | None:
    """Normalise a precomputed expert-to-device layout (nested sequence or array) to a tuple of
    equal-length tuples of ints >= 0; None stays None."""
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.size == 0:
        raise MappingError(
            f"expert_home must be a non-empty [moe_layers][n_experts] table of device ids, got shape {arr.shape}"
        )
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or _integral(arr)):
        raise MappingError(f"expert_home must hold integer device ids, got dtype {arr.dtype}")
    if arr.min() < 0:
        bad = np.argwhere(arr < 0)[0]
        raise MappingError(f"expert_home[{bad[0]}][{bad[1]}] = {arr[tuple(bad)]} is not a device id (must be >= 0)")
    return tuple(tuple(int(v) for v in row) for row in arr.astype(np.int64))


def _integral(arr: npt.NDArray[Any]) -> bool:
    return bool(np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))


def _positive_int(value: Any, where: str, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise MappingError(f"{where} must be an int {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """The expert cache of each accelerator (one tier of device memory)."""

    policy: str = field(default="lru", metadata={"help": "cache replacement policy (codesign presets policies)"})
    tier: str | None = field(default=None, metadata={"help": "device tier of the cache; None = weights_tier"})
    expert_fraction: float = field(
        default=1.0, metadata={"help": "fraction of each device's homed experts that the cache holds, in [0, 1]"}
    )
    capacity_experts: int | None = field(
        default=None, metadata={"help": "cache slots per device; overrides expert_fraction when set"}
    )
    options: OptionsArg = field(default=(), metadata={"help": "keyword options of the policy"})
    eviction: Eviction = field(
        default="discard",
        metadata={
            "help": "what a fetch that evicts a resident expert does with the victim: 'discard' (the backing "
            "tier keeps a copy) or 'copy-back' (the victim is first copied back to the backing tier over "
            "the same link and stream, as Mixtral-offloading's swap does)"
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _options(self.options, "cache.options"))
        _check_policy("cache", self.policy, "cache.policy", self.options)
        if self.eviction not in ("discard", "copy-back"):
            raise MappingError(f"cache.eviction must be 'discard' or 'copy-back', got {self.eviction!r}")
        f = self.expert_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 <= float(f) <= 1.0:
            raise MappingError(f"cache.expert_fraction must be in [0, 1], got {f!r}")
        if self.capacity_experts is not None:
            _positive_int(self.capacity_experts, "cache.capacity_experts", allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class BatchingSpec:
    """Continuous batching: scheduler and its budgets."""

    scheduler: str = field(default="fifo", metadata={"help": "token scheduler"})
    max_batch: int = field(default=64, metadata={"help": "max requests running (holding KV) at once"})
    max_tokens: int = field(default=8192, metadata={"help": "max tokens per step (prefill chunks + decode)"})
    options: OptionsArg = ()
    kv: str = field(
        default="reserve",
        metadata={
            "help": "KV-cache admission: 'reserve' (a request's final length set aside when admitted, "
            "never preempted) or 'paged' (its prompt when admitted, a token per step after; a step that "
            "would overflow preempts the latest admitted, which recompute: vLLM, TensorRT-LLM "
            "MAX_UTILIZATION)"
        },
    )

    def __post_init__(self) -> None:
        if self.kv not in KV_POLICIES:
            raise MappingError(f"batching.kv must be one of {KV_POLICIES}, got {self.kv!r}")
        object.__setattr__(self, "options", _options(self.options, "batching.options"))
        _check_policy("scheduling", self.scheduler, "batching.scheduler", self.options)
        _positive_int(self.max_batch, "batching.max_batch")
        _positive_int(self.max_tokens, "batching.max_tokens")


@dataclass(frozen=True, kw_only=True)
class Mapping:
    """How a model is placed on a platform and served. All fields have defaults; see `bind`."""

    n_devices: int | None = field(
        default=None, metadata={"help": "expert-parallel degree; None = all accelerators of the platform"}
    )
    placement: str = field(default="round-robin", metadata={"help": "placement policy across devices"})
    placement_options: OptionsArg = ()
    cache: CacheSpec = field(default_factory=CacheSpec)
    near: CacheSpec | None = field(
        default=None,
        metadata={
            "help": "optional faster tier above the cache tier (e.g. an RDU's 'sram') that "
            "caches experts promoted after use; compute reads them from it"
        },
    )
    backing: str = field(
        default="host",
        metadata={
            "help": "where offloaded experts live: 'host' (host memory over host_link) "
            "or a slower tier of the device, e.g. 'ddr'"
        },
    )
    prefetch: str = field(default="none", metadata={"help": "prefetch policy"})
    prefetch_options: OptionsArg = ()
    miss: str = field(default="fetch", metadata={"help": "miss policy: fetch weights or compute on the CPU"})
    miss_options: OptionsArg = ()
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    pinned: tuple[tuple[int, int], ...] = field(
        default=(), metadata={"help": "(moe_layer, expert) pairs pinned in their home device's cache"}
    )
    initial: InitialFill = field(
        default="popular",
        metadata={
            "help": "starting cache contents: 'popular' (by training load; "
            "'spread' without training data), 'spread', 'empty' or "
            "'listed' (exactly `resident`)"
        },
    )
    resident: tuple[tuple[int, int], ...] = field(
        default=(), metadata={"help": "(moe_layer, expert) pairs cached at start when initial='listed'"}
    )
    staging_experts: int = field(
        default=2, metadata={"help": "expert-sized staging buffers for uncached fetches (double buffer)"}
    )
    kv_fraction: float = field(
        default=1.0, metadata={"help": "share of the memory left after weights that the KV cache may use"}
    )
    fpga_reorder: bool = field(
        default=True, metadata={"help": "FPGA: expert-by-expert reordering (M3ViT/Edge-MoE) vs per-token"}
    )
    train_fraction: float = field(
        default=0.0,
        metadata={
            "help": "share of the requests (the first ones) used only to fit policies "
            "(placement stats, popularity, predictors), never served"
        },
    )
    expert_home: LayoutArg | None = field(
        default=None,
        metadata={
            "help": "precomputed expert-to-device layout, [moe_layer][expert] -> device id (e.g. a placement "
            "computed once and reused); None = run the placement policy at bind. When given, the "
            "placement policy is not run (`placement` then only records where the layout came from)"
        },
    )
    ep_execution: EpExecution = field(
        default="classic",
        metadata={
            "help": "expert-parallel execution: 'classic' (each token returns to "
            "its request's device after every MoE layer: dispatch + "
            "combine all-to-all) or 'context-coherent' (ExFlow: the token "
            "stays on the device of its top-1 expert; one all-to-all per "
            "layer)"
        },
    )
    execution: str = field(
        default="auto",
        metadata={
            "help": "kernel execution (hwmodels.execution presets: grouped-eager, grouped-graph, "
            "grouped-graph-fused, per-expert-eager, per-expert-graph); 'auto' = each device kind's default"
        },
    )

    stack: str | ServingStack = field(
        default="none",
        metadata={
            "help": "serving stack (hwmodels presets stacks: none, trt-llm, vllm, llama.cpp, hf-eager, "
            "deepspeed-zero3; or a .toml path, or an inline stack object): the LM head, MoE permute and "
            "host CPU time it charges per step; 'none' charges nothing"
        },
    )
    offload_non_expert: bool = field(
        default=False,
        metadata={
            "help": "stream the non-expert weights (attention, router, shared experts, dense FFNs) of every "
            "layer from the backing tier each step instead of keeping them resident (ZeRO-3 offload_param); "
            "embeddings and the LM head stay resident"
        },
    )
    fetch_whole_layer: bool = field(
        default=False,
        metadata={
            "help": "fetch every offloaded expert of an MoE layer each step whatever the routing (ZeRO-3 "
            "gathers all parameters of a module); needs offloaded experts"
        },
    )

    def __post_init__(self) -> None:
        if self.n_devices is not None:
            _positive_int(self.n_devices, "n_devices")
        if isinstance(self.stack, dict):
            try:
                object.__setattr__(self, "stack", stack_from_dict(self.stack, where="mapping.stack"))
            except StackError as exc:
                raise MappingError(str(exc)) from None
        if not isinstance(self.stack, ServingStack):
            try:
                resolve_stack(self.stack)
            except StackError as exc:
                raise MappingError(f"mapping.stack: {exc}") from None
        for name in ("offload_non_expert", "fetch_whole_layer"):
            if not isinstance(getattr(self, name), bool):
                raise MappingError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.execution != "auto" and self.execution not in EXECUTIONS:
            raise MappingError(f"execution must be 'auto' or one of {sorted(EXECUTIONS)}, got {self.execution!r}")
        for name in ("placement_options", "prefetch_options", "miss_options"):
            object.__setattr__(self, name, _options(getattr(self, name), name))
        _check_policy("placement", self.placement, "placement", self.placement_options)
        _check_policy("prefetch", self.prefetch, "prefetch", self.prefetch_options)
        _check_policy("miss", self.miss, "miss", self.miss_options)
        if self.fetch_whole_layer and self.miss != "fetch":
            # a whole-layer fetch (ZeRO-3's gather) brings every offloaded expert of the layer to the device,
            # the needed ones included: computing those on the host CPU instead would move them and not use
            # them (no system does both: ZeRO-3 has no CPU expert path, Fiddler never gathers a whole layer)
            raise MappingError(
                f"fetch_whole_layer puts every offloaded expert on the device, so miss={self.miss!r} (compute "
                "misses on the host CPU) does not apply; use miss='fetch' or drop fetch_whole_layer"
            )
        object.__setattr__(self, "expert_home", _layout(self.expert_home))
        if isinstance(self.cache, dict):
            object.__setattr__(self, "cache", CacheSpec(**self.cache))
        if isinstance(self.batching, dict):
            object.__setattr__(self, "batching", BatchingSpec(**self.batching))
        if isinstance(self.near, dict):
            object.__setattr__(self, "near", CacheSpec(**self.near))
        if self.near is not None and (not isinstance(self.near, CacheSpec) or not self.near.tier):
            raise MappingError(f"near must be a CacheSpec naming its tier (e.g. tier='sram'), got {self.near!r}")
        if not isinstance(self.cache, CacheSpec):
            raise MappingError(f"cache must be a CacheSpec, got {type(self.cache).__name__}")
        if not isinstance(self.batching, BatchingSpec):
            raise MappingError(f"batching must be a BatchingSpec, got {type(self.batching).__name__}")
        if not isinstance(self.backing, str) or not self.backing:
            raise MappingError(f"backing must be 'host' or a device tier name, got {self.backing!r}")
        for name in ("pinned", "resident"):
            pairs: list[tuple[int, int]] = []
            for i, pair in enumerate(getattr(self, name)):
                if (
                    not isinstance(pair, tuple | list)
                    or len(pair) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)
                ):
                    raise MappingError(f"{name}[{i}] must be a (moe_layer, expert) pair of ints >= 0, got {pair!r}")
                pairs.append((int(pair[0]), int(pair[1])))
            if len(set(pairs)) != len(pairs):
                raise MappingError(f"{name} lists an expert twice")
            object.__setattr__(self, name, tuple(sorted(pairs)))
        if self.initial not in ("popular", "spread", "empty", "listed"):
            raise MappingError(f"initial must be 'popular', 'spread', 'empty' or 'listed', got {self.initial!r}")
        if self.resident and self.initial != "listed":
            raise MappingError(f"resident experts are listed but initial={self.initial!r}; set initial='listed'")
        _positive_int(self.staging_experts, "staging_experts", allow_zero=True)
        for name in ("kv_fraction", "train_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
                raise MappingError(f"{name} must be in [0, 1], got {v!r}")
        if self.kv_fraction == 0:
            raise MappingError("kv_fraction must be > 0 (requests need a KV cache)")
        if self.train_fraction >= 1.0:
            raise MappingError("train_fraction must be < 1 (some requests must be served)")
        if not isinstance(self.fpga_reorder, bool):
            raise MappingError(f"fpga_reorder must be a bool, got {self.fpga_reorder!r}")
        if self.ep_execution not in ("classic", "context-coherent"):
            raise MappingError(f"ep_execution must be 'classic' or 'context-coherent', got {self.ep_execution!r}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able nested dict (options as objects)."""
        d = asdict(self)

        def fix(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: (dict(v) if k.endswith("options") else fix(v)) for k, v in node.items()}
            if isinstance(node, tuple):
                return [fix(v) for v in node]
            return node

        out: dict[str, Any] = fix(d)
        if self.batching.kv == "reserve":  # the default before the field existed: designs keep their hash
            del out["batching"]["kv"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mapping:
        """Inverse of `to_dict`; unknown keys are an error naming them and the valid keys."""
        if not isinstance(data, dict):
            raise MappingError(f"mapping must be a JSON object, got {type(data).__name__}")
        kw = dict(data)
        _known(kw, cls, "mapping")
        if "cache" in kw:
            c = dict(kw["cache"])
            _known(c, CacheSpec, "mapping.cache")
            kw["cache"] = CacheSpec(**c)
        if "batching" in kw:
            b = dict(kw["batching"])
            _known(b, BatchingSpec, "mapping.batching")
            kw["batching"] = BatchingSpec(**b)
        if kw.get("near") is not None:
            n = dict(kw["near"])
            _known(n, CacheSpec, "mapping.near")
            kw["near"] = CacheSpec(**n)
        for name in ("pinned", "resident"):
            if name in kw:
                kw[name] = tuple(tuple(p) if isinstance(p, list) else p for p in kw[name])
        if kw.get("expert_home") is not None and not isinstance(kw["expert_home"], list | tuple):
            raise MappingError(f"mapping.expert_home must be a list of lists, got {type(kw['expert_home']).__name__}")
        return cls(**kw)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what `config_hash` hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Mapping:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MappingError(f"mapping JSON is malformed: {exc}") from None
        return cls.from_dict(data)

    @property
    def config_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the canonical JSON; equal mappings hash equal across runs."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def with_(self, **changes: Any) -> Mapping:
        """A copy with fields changed (validated again)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(changes)
        return Mapping(**d)

    # ---------------------------------------------------------------------------- bind
    def bind(
        self,
        model: MoEModel,
        platform: Platform,
        *,
        stats: RoutingStats | None = None,
        min_kv_tokens: int = 1,
        seed: int = 0,
        placements: PlacementMemo | None = None,
    ) -> BoundMapping:
        """Fit the mapping to ``model`` and ``platform`` (see module doc); `MappingError` with the
        numbers when it does not fit. ``stats`` (training routing statistics) feed placement and
        the ``popular`` initial fill; ``min_kv_tokens`` is the KV cache (tokens) that the largest
        request needs, which must fit on one device. The layout is ``expert_home`` when the
        mapping has one (checked: one row per MoE layer, one device id in ``[0, n_devices)`` per
        expert, so every expert is homed exactly once), else the placement policy's, through
        ``placements`` (a `PlacementMemo`: computed once per inputs) when given."""
        return _bind(self, model, platform, stats, int(min_kv_tokens), seed, placements)

    def placed(
        self,
        model: MoEModel,
        platform: Platform,
        *,
        stats: RoutingStats | None = None,
        seed: int = 0,
        placements: PlacementMemo | None = None,
    ) -> Mapping:
        """A copy whose ``expert_home`` is the placement policy's layout for ``model`` on
        ``platform`` (``n_devices`` of its accelerators): place once, then reuse the mapping in
        many runs without placing again. Returns ``self`` when it already has a layout."""
        if self.expert_home is not None:
            return self
        n_dev = _n_devices(self, platform)
        layout = _placement(self, model, n_dev, stats, seed, placements)
        return self.with_(expert_home=layout.expert_home)


def _known(d: dict[str, Any], cls: type, where: str) -> None:
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        raise MappingError(f"{where}: unknown key(s) {unknown}; valid: {sorted(valid)}")


# ------------------------------------------------------------------------------------ binding
@dataclass(frozen=True, eq=False)
class BoundMapping:
    """A `Mapping` fitted to a model and a platform: everything the engine needs, checked.

    Arrays: ``expert_home`` int64 ``[n_moe_layers, n_experts]`` (device index); ``initial`` and
    ``pinned`` bool ``[n_devices, n_moe_layers, n_experts]``. ``slots[d]`` expert slots of device
    ``d``'s cache; ``kv_capacity_tokens[d]`` KV tokens it can hold. ``offloaded`` is True when some
    expert is not resident at start (then fetches come from ``backing``). ``memory`` has the
    byte budget per device (for errors and the Result). ``placement``: where the layout came from
    (computed, memo, disk or given) with the policy's report.
    """

    mapping: Mapping
    model: MoEModel
    platform: Platform
    devices: tuple[Device, ...]
    cache_tier: tuple[str, ...]
    near_tier: str | None
    near_slots: tuple[int, ...]
    backing: str
    expert_home: npt.NDArray[np.int64]
    slots: tuple[int, ...]
    homed: tuple[int, ...]
    initial: npt.NDArray[np.bool_]
    pinned: npt.NDArray[np.bool_]
    kv_capacity_tokens: tuple[int, ...]
    offloaded: bool
    memory: tuple[dict[str, float], ...]
    placement: PlacedLayout | None = None

    @property
    def n_devices(self) -> int:
        return len(self.devices)


def _tier(device: Device, name: str, what: str) -> MemoryTier:
    if not device.has_tier(name):
        raise MappingError(
            f"{what}: device {device.name!r} has no memory tier {name!r}; tiers: {[t.name for t in device.tiers]}"
        )
    return device.tier(name)


def _n_devices(m: Mapping, platform: Platform) -> int:
    n_acc = platform.n_accelerators
    n_dev = m.n_devices if m.n_devices is not None else n_acc
    if n_dev > n_acc:
        raise MappingError(f"n_devices={n_dev} exceeds the {n_acc} accelerators of platform {platform.name!r}")
    if not platform.whole_nodes(n_dev):
        per_node = platform.devices_per_node
        raise MappingError(
            f"n_devices={n_dev} spans nodes of {per_node} accelerators on platform {platform.name!r} but is not a "
            f"multiple of {per_node} (whole nodes only)"
        )
    return n_dev


def _given_layout(m: Mapping, model: MoEModel, n_dev: int) -> PlacedLayout:
    """The mapping's own ``expert_home`` checked against the model and the device count."""
    assert m.expert_home is not None
    home = np.asarray(m.expert_home, dtype=np.int64)
    n_l, n_e = model.n_moe_layers, model.n_experts
    if home.shape != (n_l, n_e):
        raise MappingError(
            f"expert_home has {home.shape[0]} rows of {home.shape[1]} device ids; model {model.name!r} "
            f"needs {n_l} (MoE layers) x {n_e} (experts): every expert homed exactly once"
        )
    if home.max() >= n_dev:
        bad = np.argwhere(home >= n_dev)[0]
        raise MappingError(
            f"expert_home[{bad[0]}][{bad[1]}] = {home[tuple(bad)]} is not a device of this mapping: "
            f"device ids must be in [0, {n_dev})"
        )
    home.setflags(write=False)
    return PlacedLayout(expert_home=home, source="given")


def _placement(
    m: Mapping,
    model: MoEModel,
    n_dev: int,
    stats: RoutingStats | None,
    seed: int,
    placements: PlacementMemo | None,
) -> PlacedLayout:
    n_l, n_e = model.n_moe_layers, model.n_experts
    if stats is not None and (stats.n_layers != n_l or stats.n_experts != n_e):
        raise MappingError(
            f"routing statistics are {stats.n_layers} layers x {stats.n_experts} experts; "
            f"model {model.name!r} has {n_l} x {n_e}"
        )
    if m.expert_home is not None:
        return _given_layout(m, model, n_dev)
    options = dict(m.placement_options)
    if placements is not None:
        return placements.place(m.placement, options, model, n_dev, stats, seed=seed)
    return run_placement(m.placement, options, model, n_dev, stats, seed=seed)


def _non_expert_split(m: Mapping, model: MoEModel) -> tuple[float, float, float]:
    """(resident, staging, streamed) bytes of the non-expert weights on each device. Resident: all
    of them, or with ``offload_non_expert`` only the embeddings and the LM head, plus two buffers of
    the largest layer's non-expert weights (the layer being computed and the next one arriving);
    streamed: the per-layer non-expert weights that then live in the backing tier."""
    total = float(model.non_expert_bytes)
    if not m.offload_non_expert:
        return total, 0.0, 0.0
    from codesign.costplan import non_expert_layer_bytes

    moe_b, dense_b = non_expert_layer_bytes(model)
    streamed = model.n_moe_layers * moe_b + model.n_dense_layers * dense_b
    resident = max(total - streamed, 0.0)
    return resident, 2.0 * max(moe_b, dense_b if model.n_dense_layers else 0.0), streamed


def _bind(
    m: Mapping,
    model: MoEModel,
    platform: Platform,
    stats: RoutingStats | None,
    min_kv_tokens: int,
    seed: int,
    placements: PlacementMemo | None = None,
) -> BoundMapping:
    n_dev = _n_devices(m, platform)
    devices = platform.accelerators[:n_dev]
    n_l, n_e = model.n_moe_layers, model.n_experts
    layout = _placement(m, model, n_dev, stats, seed, placements)
    home = layout.expert_home
    homed = tuple(int((home == d).sum()) for d in range(n_dev))
    # pinned experts
    pinned = np.zeros((n_dev, n_l, n_e), dtype=bool)
    for layer, expert in m.pinned:
        if layer >= n_l or expert >= n_e:
            raise MappingError(
                f"pinned expert ({layer}, {expert}) does not exist: model {model.name!r} has "
                f"{n_l} MoE layers x {n_e} experts"
            )
        pinned[home[layer, expert], layer, expert] = True
    # cache slots
    bpe = float(model.bytes_per_expert)
    slots: list[int] = []
    for d in range(n_dev):
        if m.cache.capacity_experts is not None:
            s = min(int(m.cache.capacity_experts), homed[d])
        else:
            s = math.floor(m.cache.expert_fraction * homed[d] + 1e-9)
        n_pin = int(pinned[d].sum())
        if n_pin > s:
            raise MappingError(
                f"device {d} ({devices[d].name}): {n_pin} pinned experts exceed its {s} cache slots "
                f"(cache.expert_fraction={m.cache.expert_fraction}, "
                f"capacity_experts={m.cache.capacity_experts})"
            )
        slots.append(s)
    offloaded = any(s < h for s, h in zip(slots, homed, strict=True))
    if m.fetch_whole_layer and not offloaded:
        raise MappingError(
            "fetch_whole_layer fetches the offloaded experts of every layer each step, but every expert is "
            f"resident (cache.expert_fraction={m.cache.expert_fraction}); lower expert_fraction"
        )
    if m.cache.eviction == "copy-back" and not offloaded:
        raise MappingError(
            "cache.eviction='copy-back' copies evicted experts back to the backing tier, but every expert is "
            f"resident (cache.expert_fraction={m.cache.expert_fraction}): nothing is ever evicted; lower "
            "expert_fraction or use eviction='discard'"
        )
    # non-expert weights: resident, or streamed per layer (offload_non_expert) through two layer buffers
    resident_ne, staged_ne, streamed_ne = _non_expert_split(m, model)
    if m.offload_non_expert and m.backing == "host" and (platform.host is None or platform.host_link is None):
        raise MappingError(
            f"offload_non_expert streams the non-expert weights from host memory, but platform {platform.name!r} "
            "has no host or host link"
        )
    # backing memory for offloaded experts (and streamed non-expert weights)
    if offloaded or (m.offload_non_expert and m.backing == "host"):
        n_off = sum(h - s for s, h in zip(slots, homed, strict=True))
        if m.backing == "host":
            if platform.host is None or platform.host_link is None:
                raise MappingError(
                    f"{n_off} experts do not fit the device caches (cache.expert_fraction="
                    f"{m.cache.expert_fraction}) and platform {platform.name!r} has no host memory to offload "
                    "them to; raise expert_fraction to 1 or use a platform with a host"
                )
            host_tier = platform.host.weights_memory
            need = n_off * bpe + streamed_ne
            if need > host_tier.capacity_bytes:
                raise MappingError(
                    f"offloaded experts (and streamed non-expert weights) need {need / 1e9:.2f} GB of host "
                    f"{host_tier.name}; "
                    f"host {platform.host.name!r} has {host_tier.capacity_bytes / 1e9:.2f} GB"
                )
    tiers: list[str] = []
    memory: list[dict[str, float]] = []
    kv_cap: list[int] = []
    kvb = float(model.kv_bytes_per_token)
    for d, dev in enumerate(devices):
        tname = m.cache.tier or dev.weights_tier
        tier = _tier(dev, tname, "cache.tier")
        tiers.append(tname)
        if (offloaded or m.offload_non_expert) and m.backing != "host":
            back = _tier(dev, m.backing, "backing")
            if back.name == tname:
                raise MappingError(f"backing tier {m.backing!r} is the cache tier itself")
            off_bytes = (homed[d] - slots[d]) * bpe + streamed_ne
            if off_bytes > back.capacity_bytes:
                raise MappingError(
                    f"device {d} ({dev.name}): offloaded experts need {off_bytes / 1e9:.2f} GB of "
                    f"{back.name}, which has {back.capacity_bytes / 1e9:.2f} GB"
                )
        staging = m.staging_experts * bpe if slots[d] < homed[d] else 0.0
        weights = resident_ne + staged_ne + slots[d] * bpe + staging
        left = tier.capacity_bytes - weights
        kv_bytes = left * m.kv_fraction
        need_kv = min_kv_tokens * kvb
        budget = {
            "capacity_bytes": tier.capacity_bytes,
            "non_expert_bytes": resident_ne + staged_ne,
            "expert_cache_bytes": slots[d] * bpe,
            "staging_bytes": staging,
            "kv_cache_bytes": max(kv_bytes, 0.0),
        }
        memory.append(budget)
        if kv_bytes < need_kv:
            # min_kv_tokens <= 1 is the check made before the requests are known (weights alone)
            kv_need = (
                f"the KV cache of one token ({kvb / 1e3:.1f} kB) does not fit"
                if min_kv_tokens <= 1
                else f"the KV cache of the largest request ({min_kv_tokens} tokens x {kvb / 1e3:.1f} kB) needs "
                f"{need_kv / 1e9:.3f} GB"
            )
            raise MappingError(
                f"mapping does not fit device {d} ({dev.name}) {tname}: capacity {tier.capacity_bytes / 1e9:.2f} GB; "
                f"non-expert weights {(resident_ne + staged_ne) / 1e9:.2f} GB + {slots[d]} resident experts x "
                f"{bpe / 1e6:.1f} MB = {slots[d] * bpe / 1e9:.2f} GB + staging {staging / 1e9:.2f} GB leaves "
                f"{left / 1e9:.2f} GB; {kv_need} (kv_fraction={m.kv_fraction}). Lower "
                "cache.expert_fraction, use more devices or a lower precision"
            )
        kv_cap.append(int(kv_bytes // kvb))
    # the near tier (faster, above the cache tier): experts only, checked against its capacity
    near_slots: list[int] = []
    if m.near is not None:
        assert m.near.tier is not None
        for d, dev in enumerate(devices):
            if dev.kind == "fpga":
                raise MappingError(
                    f"near: device {d} ({dev.name}) is an FPGA, whose on-chip buffering the cost "
                    "model already includes; a near tier is not supported there"
                )
            near = _tier(dev, m.near.tier, "near.tier")
            if near.name == tiers[d]:
                raise MappingError(f"near.tier {near.name!r} is the cache tier itself")
            if [t.name for t in dev.tiers].index(near.name) > [t.name for t in dev.tiers].index(tiers[d]):
                raise MappingError(
                    f"near.tier {near.name!r} is slower than the cache tier {tiers[d]!r} of "
                    f"{dev.name}; tiers fastest first: {[t.name for t in dev.tiers]}"
                )
            if m.near.capacity_experts is not None:
                ns = min(int(m.near.capacity_experts), homed[d])
            else:
                ns = math.floor(m.near.expert_fraction * homed[d] + 1e-9)
            if ns * bpe > near.capacity_bytes:
                raise MappingError(
                    f"near tier {near.name!r} of device {d} ({dev.name}) holds {near.capacity_bytes / 1e6:.1f} MB; "
                    f"{ns} experts x {bpe / 1e6:.1f} MB = {ns * bpe / 1e6:.1f} MB do not fit"
                )
            near_slots.append(ns)
            memory[d][f"near_{near.name}_bytes"] = ns * bpe
    # starting residents
    initial = pinned.copy()
    if m.initial == "listed":
        for layer, expert in m.resident:
            if layer >= n_l or expert >= n_e:
                raise MappingError(
                    f"resident expert ({layer}, {expert}) does not exist: model {model.name!r} has "
                    f"{n_l} MoE layers x {n_e} experts"
                )
            initial[home[layer, expert], layer, expert] = True
        for d in range(n_dev):
            if int(initial[d].sum()) > slots[d]:
                raise MappingError(
                    f"device {d} ({devices[d].name}): {int(initial[d].sum())} listed resident and "
                    f"pinned experts exceed its {slots[d]} cache slots"
                )
    elif m.initial != "empty":
        load = stats.load if (stats is not None and m.initial == "popular") else None
        for d in range(n_dev):
            free = slots[d] - int(initial[d].sum())
            if free <= 0:
                continue
            mine = (home == d) & ~initial[d]
            if load is not None:
                score = load.astype(np.float64)
            else:  # spread: expert rank r of every layer before rank r+1 of any layer
                score = -np.argsort(np.argsort(np.arange(n_e)))[None, :].repeat(n_l, 0).astype(np.float64)
            flat = np.flatnonzero(mine.ravel())
            # stable: higher score first, then lower layer, then lower expert
            order = np.lexsort((flat, -score.ravel()[flat]))
            chosen = flat[order[:free]]
            initial[d].ravel()[chosen] = True
    return BoundMapping(
        mapping=m,
        model=model,
        platform=platform,
        devices=tuple(devices),
        cache_tier=tuple(tiers),
        near_tier=m.near.tier if m.near is not None else None,
        near_slots=tuple(near_slots),
        backing=m.backing,
        expert_home=home,
        slots=tuple(slots),
        homed=homed,
        initial=initial,
        pinned=pinned,
        kv_capacity_tokens=tuple(kv_cap),
        offloaded=offloaded,
        memory=tuple(memory),
        placement=layout,
    )
