"""Devices, memory tiers, links and platforms, and their TOML presets.

Every hardware description is a frozen, keyword-only dataclass whose field names carry their unit
(``bandwidth_Bps`` is bytes per second, ``latency_s`` seconds, ``energy_J_per_byte`` joules per
byte, ``peak_flops`` FLOP/s). Presets are TOML files shipped in ``hwmodels/presets/{devices,links,
platforms}/``; a user adds hardware by writing such a file (see ``load_device_file``,
``load_link_file``, ``load_platform_file``; ``get_device`` and friends also accept a path to a
``.toml`` file).

TOML format (the full grammar is in the module ``_load_*`` docstrings and the shipped presets):
every number is a *quantity* table ``{ value = "3350 GB/s", source = "..." }`` (or
``{ value = 3350, unit = "GB/s", source = "..." }``) with a ``source`` string and an optional
``assumption = true`` flag for numbers no source gives. A quantity without a source must say
``assumption = true``. Units are checked against the field's dimension; an unknown unit, a missing
field, a negative or zero bandwidth, or tiers out of order (each tier must be no larger and no
slower than the one below it) raise `PresetError` naming the file and the field.

Loading is cached per process with `functools.lru_cache` on pure loaders keyed by the file's path,
modification time and size (an edited file is read again; the dataclasses are immutable). A
platform file's cache entry does not track the device and link files it references.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEVICE_KINDS",
    "DTYPES",
    "Device",
    "DeviceEfficiency",
    "FrozenMap",
    "Link",
    "MemoryTier",
    "Platform",
    "PresetError",
    "UnknownHardwareError",
    "check_tier_order",
    "device_preset_names",
    "efficiencies_from_rates",
    "get_device",
    "get_link",
    "get_platform",
    "link_preset_names",
    "load_device_file",
    "load_link_file",
    "load_platform_file",
    "parse_quantity",
    "platform_preset_names",
]

#: Data types a device may list peak FLOP/s for.
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp8", "int8")
#: Kinds of device.
DEVICE_KINDS: tuple[str, ...] = ("gpu", "cpu", "rdu", "fpga")


class PresetError(ValueError):
    """A malformed or inconsistent hardware description; the message names the file and field."""


class UnknownHardwareError(KeyError):
    """An unknown preset name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------- frozen mapping
class FrozenMap(Mapping[str, float]):
    """An immutable, hashable, picklable ``str -> float`` mapping (dtype -> FLOP/s and the like)."""

    __slots__ = ("_d", "_items")
    _items: tuple[tuple[str, float], ...]
    _d: dict[str, float]

    def __init__(self, items: Mapping[str, float] | None = None, **kwargs: float) -> None:
        merged = dict(items or {}, **kwargs)
        pairs = tuple(sorted((str(k), float(v)) for k, v in merged.items()))
        object.__setattr__(self, "_items", pairs)
        object.__setattr__(self, "_d", dict(pairs))

    def __getitem__(self, key: str) -> float:
        return self._d[key]

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("FrozenMap is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (dict(self._items),))


def _frozen(mapping: Mapping[str, float]) -> FrozenMap:
    return mapping if isinstance(mapping, FrozenMap) else FrozenMap(mapping)


def _check_positive(owner: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        expected = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be finite and {expected}, got {value!r}")


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True, kw_only=True)
class MemoryTier:
    """One level of a device's local memory.

    ``bandwidth_Bps`` is the sustained (datasheet peak unless the source says measured) read
    bandwidth of the tier to its device's compute; ``energy_J_per_byte`` the dynamic energy of
    moving one byte out of it. ``assumption`` is true when any of its numbers is an assumption.
    """

    name: str
    capacity_bytes: float
    bandwidth_Bps: float
    latency_s: float
    energy_J_per_byte: float
    source: str
    assumption: bool = False

    def __post_init__(self) -> None:
        owner = f"MemoryTier {self.name!r}"
        if not self.name:
            raise ValueError("MemoryTier: name must be non-empty")
        _check_positive(owner, "capacity_bytes", self.capacity_bytes)
        _check_positive(owner, "bandwidth_Bps", self.bandwidth_Bps)
        _check_positive(owner, "latency_s", self.latency_s, allow_zero=True)
        _check_positive(owner, "energy_J_per_byte", self.energy_J_per_byte, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class DeviceEfficiency:
    """Efficiency-curve parameters a device file may set (the ``[efficiency]`` table).

    They replace the package's default curve of the device's kind (``hwmodels.costs.DEFAULT_CURVES``
    and the per-dtype ``DTYPE_CURVES``) when no calibration profile answers for the device; a
    parameter left unset (``None``, or a dtype missing from ``gemm_e_max``) keeps the default.

    ``gemm_e_max[dtype]`` and ``gemm_m_half[dtype]`` are the saturating GEMM curve
    ``e(m) = e_max * m / (m + m_half)`` of that compute dtype (fraction of the dtype's peak, rows);
    both or neither are given for a dtype. ``memory_eff`` is the achieved fraction of the weights
    tier's bandwidth for streaming kernels, ``launch_overhead_s`` the serial overhead per kernel,
    ``gemv_max_rows`` the row count up to which a GEMM runs as a memory-bound GEMV (its compute
    hidden under the weight stream). ``source`` names where the numbers come from.
    """

    gemm_e_max: Mapping[str, float] = field(default_factory=dict)
    gemm_m_half: Mapping[str, float] = field(default_factory=dict)
    memory_eff: float | None = None
    launch_overhead_s: float | None = None
    gemv_max_rows: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        owner = "DeviceEfficiency"
        object.__setattr__(self, "gemm_e_max", _frozen(self.gemm_e_max))
        object.__setattr__(self, "gemm_m_half", _frozen(self.gemm_m_half))
        if set(self.gemm_e_max) != set(self.gemm_m_half):
            raise ValueError(
                f"{owner}: gemm e_max and m_half must list the same dtypes, got {sorted(self.gemm_e_max)} "
                f"and {sorted(self.gemm_m_half)}"
            )
        for dtype, e in self.gemm_e_max.items():
            if dtype not in DTYPES:
                raise ValueError(f"{owner}: gemm dtype {dtype!r} unknown; expected one of {DTYPES}")
            if not (math.isfinite(e) and 0 < e <= 1):
                raise ValueError(f"{owner}: gemm.{dtype}.e_max must be in (0, 1], got {e!r}")
            _check_positive(owner, f"gemm.{dtype}.m_half", self.gemm_m_half[dtype], allow_zero=True)
        if self.memory_eff is not None and not (math.isfinite(self.memory_eff) and 0 < self.memory_eff <= 1):
            raise ValueError(f"{owner}: memory_eff must be in (0, 1], got {self.memory_eff!r}")
        if self.launch_overhead_s is not None:
            _check_positive(owner, "launch_overhead_s", self.launch_overhead_s, allow_zero=True)
        if self.gemv_max_rows is not None:
            _check_positive(owner, "gemv_max_rows", self.gemv_max_rows, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class Device:
    """A compute device with its local memory tiers (fastest first).

    ``peak_flops`` maps a dtype (one of `DTYPES`) to dense peak FLOP/s; ``energy_J_per_flop`` the
    dynamic energy per FLOP for the same dtypes. ``weights_tier`` names the tier that holds the
    weights compute normally reads. ``static_power_W`` is drawn whenever the device is busy
    (energy = static power x time + dynamic energy). FPGA-only fields (zero otherwise):
    ``dsp_count``, ``clock_Hz``, ``macs_per_dsp_per_cycle`` (16-bit MACs), ``on_chip_buffer_bytes``
    (the on-chip buffer for expert weights, both halves of the double buffer).
    ``efficiency`` (optional) carries efficiency-curve parameters from the device file
    (`DeviceEfficiency`), used by the calibrated cost model when no calibration profile is given.
    ``provenance`` records ``(field, source, assumption)`` for every number read from a file.
    """

    name: str
    kind: str
    peak_flops: Mapping[str, float]
    tiers: tuple[MemoryTier, ...]
    weights_tier: str
    static_power_W: float
    energy_J_per_flop: Mapping[str, float]
    tdp_W: float
    source: str
    dsp_count: int = 0
    clock_Hz: float = 0.0
    macs_per_dsp_per_cycle: float = 0.0
    on_chip_buffer_bytes: float = 0.0
    efficiency: DeviceEfficiency | None = None
    notes: str = field(default="", compare=False)
    provenance: tuple[tuple[str, str, bool], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        owner = f"Device {self.name!r}"
        if self.kind not in DEVICE_KINDS:
            raise ValueError(f"{owner}: kind must be one of {DEVICE_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "peak_flops", _frozen(self.peak_flops))
        object.__setattr__(self, "energy_J_per_flop", _frozen(self.energy_J_per_flop))
        object.__setattr__(self, "tiers", tuple(self.tiers))
        if not self.peak_flops:
            raise ValueError(f"{owner}: peak_flops must list at least one dtype")
        for dtype, value in self.peak_flops.items():
            if dtype not in DTYPES:
                raise ValueError(f"{owner}: peak_flops dtype {dtype!r} unknown; expected one of {DTYPES}")
            _check_positive(owner, f"peak_flops[{dtype}]", value)
        for dtype, value in self.energy_J_per_flop.items():
            if dtype not in self.peak_flops:
                raise ValueError(f"{owner}: energy_J_per_flop has dtype {dtype!r} that peak_flops lacks")
            _check_positive(owner, f"energy_J_per_flop[{dtype}]", value, allow_zero=True)
        missing = [d for d in self.peak_flops if d not in self.energy_J_per_flop]
        if missing:
            raise ValueError(f"{owner}: energy_J_per_flop lacks dtypes {missing}")
        if not self.tiers:
            raise ValueError(f"{owner}: needs at least one memory tier")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"{owner}: duplicate tier names {names}")
        if self.weights_tier not in names:
            raise ValueError(f"{owner}: weights_tier {self.weights_tier!r} is not a tier; tiers: {names}")
        check_tier_order(self.tiers, owner)
        _check_positive(owner, "static_power_W", self.static_power_W, allow_zero=True)
        _check_positive(owner, "tdp_W", self.tdp_W)
        if self.static_power_W > self.tdp_W:
            raise ValueError(f"{owner}: static_power_W={self.static_power_W} exceeds tdp_W={self.tdp_W}")
        if self.efficiency is not None:
            if not isinstance(self.efficiency, DeviceEfficiency):
                raise ValueError(f"{owner}: efficiency must be a DeviceEfficiency, got {self.efficiency!r}")
            unknown = [d for d in self.efficiency.gemm_e_max if d not in self.peak_flops]
            if unknown:
                raise ValueError(
                    f"{owner}: efficiency.gemm lists dtypes {unknown} that peak_flops lacks ({sorted(self.peak_flops)})"
                )
        fpga_fields = ("dsp_count", "clock_Hz", "macs_per_dsp_per_cycle", "on_chip_buffer_bytes")
        if self.kind == "fpga":
            for name in fpga_fields:
                _check_positive(owner, name, float(getattr(self, name)))
        else:
            for name in fpga_fields:
                if getattr(self, name) != 0:
                    raise ValueError(f"{owner}: {name} is FPGA-only; must be 0 for kind {self.kind!r}")

    def tier(self, name: str) -> MemoryTier:
        """The tier called ``name``; `KeyError` listing the device's tiers otherwise."""
        for t in self.tiers:
            if t.name == name:
                return t
        raise UnknownHardwareError(
            f"device {self.name!r} has no memory tier {name!r}; tiers: {[t.name for t in self.tiers]}"
        )

    def has_tier(self, name: str) -> bool:
        """Whether the device has a tier called ``name``."""
        return any(t.name == name for t in self.tiers)

    def flops(self, dtype: str = "bf16") -> float:
        """Dense peak FLOP/s for ``dtype``; `KeyError` listing the known dtypes otherwise."""
        try:
            return self.peak_flops[dtype]
        except KeyError:
            raise UnknownHardwareError(
                f"device {self.name!r} has no peak FLOP/s for dtype {dtype!r}; dtypes: {sorted(self.peak_flops)}"
            ) from None

    @property
    def weights_memory(self) -> MemoryTier:
        """The tier named by ``weights_tier``."""
        return self.tier(self.weights_tier)

    @property
    def dsp_peak_flops(self) -> float:
        """FPGA DSP-bound peak: ``dsp_count x macs_per_dsp_per_cycle x clock_Hz x 2`` FLOP/s (0 otherwise)."""
        return self.dsp_count * self.macs_per_dsp_per_cycle * self.clock_Hz * 2.0

    @property
    def assumptions(self) -> tuple[str, ...]:
        """Fields whose numbers are labelled assumptions (from ``provenance``)."""
        return tuple(f for f, _, a in self.provenance if a)


def check_tier_order(tiers: tuple[MemoryTier, ...], owner: str) -> None:
    """Tiers are fastest first: each must be no larger and no slower than the next one below it.

    Raises `ValueError` naming the two tiers and the offending numbers.
    """
    for upper, lower in itertools.pairwise(tiers):
        if upper.capacity_bytes > lower.capacity_bytes:
            raise ValueError(
                f"{owner}: tier {upper.name!r} (capacity {upper.capacity_bytes:.4g} B) is larger than tier "
                f"{lower.name!r} below it ({lower.capacity_bytes:.4g} B); tiers must be listed fastest "
                "(smallest) first"
            )
        if upper.bandwidth_Bps < lower.bandwidth_Bps:
            raise ValueError(
                f"{owner}: tier {upper.name!r} (bandwidth {upper.bandwidth_Bps:.4g} B/s) is slower than tier "
                f"{lower.name!r} below it ({lower.bandwidth_Bps:.4g} B/s); tiers must be listed fastest first"
            )


@dataclass(frozen=True, kw_only=True)
class Link:
    """A point-to-point link (host PCIe, NVLink, RDU peer link).

    ``bandwidth_Bps`` is the peak per direction. ``efficiency_points`` are measured pinned-memory
    copies as ``(bytes, efficiency)`` pairs, ``efficiency = achieved / bandwidth_Bps`` in (0, 1]
    (ascending in bytes, may be empty); ``pageable_efficiency_points`` the same for pageable host
    memory. Storing efficiencies, not rates, makes a change of ``bandwidth_Bps`` scale the measured
    curve (a hardware sweep of the bandwidth moves the copy times); `achieved_points` gives the
    rates back. Preset files list achieved rates (readable, as measured) and `load_link_file`
    converts them; `efficiencies_from_rates` converts measured ``(bytes, achieved_Bps)`` pairs.
    ``energy_J_per_byte`` is the dynamic energy of moving a byte over the link.
    ``collective_latency_s`` is the fixed cost of one collective call (all-to-all, all-reduce) over
    the link on top of the per-message ``latency_s``: the collective library's kernel launch and
    cross-rank synchronisation (0 when not given); small collectives are bound by it.
    """

    name: str
    bandwidth_Bps: float
    latency_s: float
    duplex: bool
    efficiency_points: tuple[tuple[float, float], ...]
    energy_J_per_byte: float
    source: str
    pageable_efficiency_points: tuple[tuple[float, float], ...] = ()
    collective_latency_s: float = 0.0
    notes: str = field(default="", compare=False)
    provenance: tuple[tuple[str, str, bool], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        owner = f"Link {self.name!r}"
        _check_positive(owner, "bandwidth_Bps", self.bandwidth_Bps)
        _check_positive(owner, "latency_s", self.latency_s, allow_zero=True)
        _check_positive(owner, "collective_latency_s", self.collective_latency_s, allow_zero=True)
        _check_positive(owner, "energy_J_per_byte", self.energy_J_per_byte, allow_zero=True)
        for attr in ("efficiency_points", "pageable_efficiency_points"):
            points = tuple((float(b), float(e)) for b, e in getattr(self, attr))
            object.__setattr__(self, attr, points)
            for i, (n_bytes, eff) in enumerate(points):
                _check_positive(owner, f"{attr}[{i}] bytes", n_bytes)
                _check_positive(owner, f"{attr}[{i}] efficiency", eff)
                if eff > 1 + 1e-9:
                    raise ValueError(
                        f"{owner}: {attr}[{i}] efficiency {eff:.4g} exceeds the peak (must be achieved / "
                        "bandwidth_Bps in (0, 1]; convert measured rates with efficiencies_from_rates)"
                    )
            sizes = [b for b, _ in points]
            if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
                raise ValueError(f"{owner}: {attr} must be strictly ascending in bytes, got sizes {sizes}")

    @property
    def achieved_points(self) -> tuple[tuple[float, float], ...]:
        """``efficiency_points`` as ``(bytes, achieved_Bps)`` at this link's ``bandwidth_Bps``."""
        return tuple((b, e * self.bandwidth_Bps) for b, e in self.efficiency_points)

    @property
    def pageable_achieved_points(self) -> tuple[tuple[float, float], ...]:
        """``pageable_efficiency_points`` as ``(bytes, achieved_Bps)`` at this link's ``bandwidth_Bps``."""
        return tuple((b, e * self.bandwidth_Bps) for b, e in self.pageable_efficiency_points)


def efficiencies_from_rates(
    points: Sequence[tuple[float, float]], peak_Bps: float, *, where: str = "points"
) -> tuple[tuple[float, float], ...]:
    """Measured ``(bytes, achieved_Bps)`` pairs as ``(bytes, achieved / peak_Bps)`` for
    ``Link.efficiency_points``; a rate above the peak is an error naming ``where`` and the index."""
    if not (peak_Bps > 0 and math.isfinite(peak_Bps)):
        raise ValueError(f"{where}: peak_Bps must be finite and > 0, got {peak_Bps!r}")
    out: list[tuple[float, float]] = []
    for i, (n_bytes, rate) in enumerate(points):
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"{where}[{i}]: achieved rate must be finite and > 0, got {rate!r}")
        if rate > peak_Bps * (1 + 1e-9):
            raise ValueError(f"{where}[{i}]: achieved {rate:.4g} B/s exceeds the peak bandwidth {peak_Bps:.4g} B/s")
        out.append((float(n_bytes), min(float(rate) / peak_Bps, 1.0)))
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class Platform:
    """A machine: the accelerators that run the model, an optional host, and the links.

    ``host_link`` connects each accelerator to host memory (one link per accelerator);
    ``peer_link`` connects accelerators to each other (None for a single device); on a multi-node
    platform it joins the ``devices_per_node`` accelerators of one node, and ``scale_out_link``
    (each accelerator's own NIC) the nodes (`hwmodels.costs.CostModel.all_to_all_nodes`); both
    None for one node. ``cost_per_hour_usd`` prices the whole platform (for cost per million tokens).
    """

    name: str
    accelerators: tuple[Device, ...]
    host: Device | None
    host_link: Link | None
    peer_link: Link | None
    cost_per_hour_usd: float
    source: str
    notes: str = field(default="", compare=False)
    provenance: tuple[tuple[str, str, bool], ...] = field(default=(), compare=False, repr=False)
    scale_out_link: Link | None = None
    devices_per_node: int | None = None

    def __post_init__(self) -> None:
        owner = f"Platform {self.name!r}"
        object.__setattr__(self, "accelerators", tuple(self.accelerators))
        if not self.accelerators:
            raise ValueError(f"{owner}: needs at least one accelerator")
        if self.host is None and self.host_link is not None:
            raise ValueError(f"{owner}: host_link given without a host")
        if self.host is not None and self.host_link is None:
            raise ValueError(f"{owner}: a host needs a host_link")
        if len(self.accelerators) > 1 and self.peer_link is None:
            raise ValueError(f"{owner}: {len(self.accelerators)} accelerators need a peer_link")
        _check_positive(owner, "cost_per_hour_usd", self.cost_per_hour_usd, allow_zero=True)
        if (self.scale_out_link is None) != (self.devices_per_node is None):
            raise ValueError(f"{owner}: scale_out_link and devices_per_node go together (a multi-node platform)")
        so = self.scale_out_link
        if so is not None and any(lk is not None and lk.name == so.name for lk in (self.host_link, self.peer_link)):
            raise ValueError(
                f"{owner}: scale_out_link {so.name!r} has the name of the host or peer link (bytes are counted "
                "per link name); give the NIC its own link preset"
            )
        g = self.devices_per_node
        if g is not None:
            n = len(self.accelerators)
            if isinstance(g, bool) or not isinstance(g, int) or not 1 <= g < n or n % g:
                raise ValueError(
                    f"{owner}: scale_out devices_per_node must be an int that divides the {n} accelerators into "
                    f"two or more nodes, got {g!r}"
                )

    def nodes_of(self, n_devices: int) -> int | None:
        """Accelerators per node when an expert-parallel group of ``n_devices`` (the first ones)
        spans several nodes of this platform, else None (one node: the peer link only)."""
        g = self.devices_per_node
        return g if g is not None and n_devices > g else None

    def whole_nodes(self, n_devices: int) -> bool:
        """Whether an expert-parallel group of ``n_devices`` fits in one node or fills whole nodes
        (a group spanning nodes must: `codesign.mapping` and the search space refuse the others)."""
        g = self.nodes_of(n_devices)
        return g is None or n_devices % g == 0

    @property
    def n_accelerators(self) -> int:
        """Number of accelerators."""
        return len(self.accelerators)

    @property
    def devices(self) -> tuple[Device, ...]:
        """Accelerators, then the host if any."""
        return self.accelerators + ((self.host,) if self.host is not None else ())


# --------------------------------------------------------------------------- units and quantities
_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}


def _build_units() -> dict[str, dict[str, float]]:
    bytes_: dict[str, float] = {}
    bw: dict[str, float] = {}
    for p, f in _PREFIX.items():
        bytes_[f"{p}B"] = f
        bytes_[f"{p}b"] = f / 8.0
        bw[f"{p}B/s"] = f
        bw[f"{p}b/s"] = f / 8.0
    for p, f in _BIN.items():
        bytes_[f"{p}B"] = f
        bw[f"{p}B/s"] = f
    flops: dict[str, float] = {}
    for p, f in _PREFIX.items():
        flops[f"{p}FLOP/s"] = f
        flops[f"{p}FLOPS"] = f
        flops[f"{p}OP/s"] = f
        flops[f"{p}OPS"] = f
    return {
        "bytes": bytes_,
        "bandwidth": bw,
        "time": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9},
        "flops": flops,
        "power": {"W": 1.0, "kW": 1e3, "mW": 1e-3},
        "energy_per_byte": {"J/B": 1.0, "nJ/B": 1e-9, "pJ/B": 1e-12, "pJ/bit": 8e-12, "fJ/bit": 8e-15, "nJ/bit": 8e-9},
        "energy_per_flop": {"J/FLOP": 1.0, "nJ/FLOP": 1e-9, "pJ/FLOP": 1e-12, "fJ/FLOP": 1e-15, "pJ/OP": 1e-12},
        "frequency": {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
        "count": {"": 1.0, "count": 1.0},
        "usd_per_hour": {"USD/h": 1.0, "$/h": 1.0},
    }


#: dimension -> unit -> factor to SI (bytes, B/s, s, FLOP/s, W, J/B, J/FLOP, Hz, 1, USD/h).
UNITS: dict[str, dict[str, float]] = _build_units()

_NUMBER_UNIT = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def parse_quantity(value: object, unit: str | None, dimension: str, *, where: str) -> float:
    """Parse ``value`` (a number, or a ``"<number> <unit>"`` string) in ``dimension``'s SI unit.

    ``unit`` is the separate unit when ``value`` is a bare number. ``where`` names the file and
    field for error messages. Raises `PresetError` for unknown units, units of another dimension,
    unparsable strings and non-finite numbers.
    """
    table = UNITS[dimension]
    if isinstance(value, bool):
        raise PresetError(f"{where}: expected a number with a unit, got boolean {value!r}")
    if isinstance(value, int | float):
        number = float(value)
        unit_text = "" if unit is None else str(unit).strip()
    elif isinstance(value, str):
        match = _NUMBER_UNIT.match(value.replace("_", "").replace(",", ""))
        if match is None:
            raise PresetError(
                f"{where}: cannot parse {value!r}; expected '<number> <unit>', e.g. '{_example(dimension)}'"
            )
        number = float(match.group(1))
        unit_text = match.group(2)
        if unit is not None and unit_text and unit_text != unit:
            raise PresetError(f"{where}: value {value!r} has unit {unit_text!r} but unit = {unit!r}")
        unit_text = unit_text or ("" if unit is None else str(unit).strip())
    else:
        raise PresetError(f"{where}: expected a number or a '<number> <unit>' string, got {value!r}")
    if unit_text not in table:
        valid = ", ".join(repr(u) for u in table if u)
        what = "missing unit" if not unit_text else f"unknown unit {unit_text!r}"
        raise PresetError(f"{where}: {what} for a {dimension.replace('_', ' ')} quantity; valid units: {valid}")
    result = number * table[unit_text]
    if not math.isfinite(result):
        raise PresetError(f"{where}: value {value!r} is not finite")
    return result


def _example(dimension: str) -> str:
    return {
        "bytes": "80 GiB",
        "bandwidth": "3350 GB/s",
        "time": "5 us",
        "flops": "989 TFLOP/s",
        "power": "700 W",
        "energy_per_byte": "4 pJ/bit",
        "energy_per_flop": "0.3 pJ/FLOP",
        "frequency": "200 MHz",
        "count": "1728",
        "usd_per_hour": "2.5 USD/h",
    }[dimension]


@dataclass
class _Reader:
    """Reads quantities out of one TOML document, recording provenance and naming the file."""

    path: str
    provenance: list[tuple[str, str, bool]] = field(default_factory=list)

    def where(self, key: str) -> str:
        return f"{self.path}: field '{key}'"

    def table(self, doc: Mapping[str, Any], key: str, *, required: bool = True) -> Mapping[str, Any] | None:
        value = doc.get(key.rsplit(".", 1)[-1])
        if value is None:
            if required:
                raise PresetError(f"{self.where(key)}: missing (a table is required)")
            return None
        if not isinstance(value, Mapping):
            raise PresetError(f"{self.where(key)}: expected a table, got {value!r}")
        return value

    def text(self, doc: Mapping[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
        value = doc.get(key.rsplit(".", 1)[-1])
        if value is None:
            if required:
                raise PresetError(f"{self.where(key)}: missing (a string is required)")
            return default
        if not isinstance(value, str):
            raise PresetError(f"{self.where(key)}: expected a string, got {value!r}")
        return value

    def quantity(
        self,
        doc: Mapping[str, Any],
        key: str,
        dimension: str,
        *,
        required: bool = True,
        default: float | None = None,
        positive: bool = True,
    ) -> float:
        """Read the quantity ``key`` (dotted path for messages; last part looked up in ``doc``)."""
        raw = doc.get(key.rsplit(".", 1)[-1])
        where = self.where(key)
        if raw is None:
            if required:
                raise PresetError(f'{where}: missing; write {{ value = "{_example(dimension)}", source = "..." }}')
            assert default is not None
            return default
        if not isinstance(raw, Mapping):
            raise PresetError(
                f"{where}: every number needs a source; write {{ value = {raw!r}, "
                'source = "..." }} (or assumption = true with a note)'
            )
        unknown = set(raw) - {"value", "unit", "source", "assumption", "note", "alternatives"}
        if unknown:
            raise PresetError(
                f"{where}: unknown keys {sorted(unknown)}; allowed: value, unit, source, assumption, note, alternatives"
            )
        if "value" not in raw:
            raise PresetError(f"{where}: missing 'value'")
        assumption = raw.get("assumption", False)
        if not isinstance(assumption, bool):
            raise PresetError(f"{self.where(key + '.assumption')}: expected true or false, got {assumption!r}")
        source = raw.get("source")
        if source is not None and not isinstance(source, str):
            raise PresetError(f"{self.where(key + '.source')}: expected a string, got {source!r}")
        if not source and not assumption:
            raise PresetError(f"{where}: missing 'source' (every number needs a source, or assumption = true)")
        unit = raw.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise PresetError(f"{self.where(key + '.unit')}: expected a string, got {unit!r}")
        value = parse_quantity(raw["value"], unit, dimension, where=where)
        if positive and value <= 0:
            raise PresetError(f"{where}: must be > 0, got {raw['value']!r}")
        if value < 0:
            raise PresetError(f"{where}: must be >= 0, got {raw['value']!r}")
        alternatives = raw.get("alternatives", [])
        if not isinstance(alternatives, list):
            raise PresetError(f"{self.where(key + '.alternatives')}: expected a list of {{ value, source }} tables")
        for i, alt in enumerate(alternatives):
            if not isinstance(alt, Mapping) or "value" not in alt or not alt.get("source"):
                alt_where = self.where(f"{key}.alternatives[{i}]")
                raise PresetError(f'{alt_where}: expected {{ value = ..., source = "..." }}')
            parse_quantity(alt["value"], alt.get("unit"), dimension, where=self.where(f"{key}.alternatives[{i}]"))
        label = source or "assumption"
        if raw.get("note"):
            label = f"{label} ({raw['note']})"
        self.provenance.append((key, label, assumption))
        return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise PresetError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path}: invalid TOML: {exc}") from None


def _check_keys(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise PresetError(f"{where}: unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")


# --------------------------------------------------------------------------- device files
_DEVICE_KEYS = {
    "name",
    "kind",
    "weights_tier",
    "source",
    "notes",
    "tdp",
    "static_power",
    "peak_flops",
    "energy_per_flop",
    "tier",
    "fpga",
    "efficiency",
}
_EFFICIENCY_KEYS = {"source", "memory", "launch_overhead", "gemv_max_rows", "gemm"}
_TIER_KEYS = {"name", "capacity", "bandwidth", "latency", "energy_per_byte", "source"}
_FPGA_KEYS = {"dsp_count", "clock", "macs_per_dsp_per_cycle", "on_chip_buffer"}


def load_device_file(path: str | Path) -> Device:
    """Load a device TOML file (any path; presets live in ``hwmodels/presets/devices``).

    Format::

        name = "h100-sxm"            # preset name
        kind = "gpu"                 # gpu | cpu | rdu | fpga
        weights_tier = "hbm"
        source = "..."
        tdp = { value = "700 W", source = "..." }
        static_power = { value = "175 W", assumption = true, source = "assumption: ..." }
        [peak_flops]                 # not for FPGAs: derived from [fpga]
        bf16 = { value = "989 TFLOP/s", source = "..." }
        [energy_per_flop]
        bf16 = { value = "0.27 pJ/FLOP", assumption = true, source = "..." }
        [[tier]]                     # fastest first
        name = "hbm"
        capacity = { value = "80 GB", source = "..." }
        bandwidth = { value = "3350 GB/s", source = "..." }
        latency = { value = "600 ns", assumption = true, source = "..." }
        energy_per_byte = { value = "4 pJ/bit", assumption = true, source = "..." }
        [fpga]                       # kind = "fpga" only
        dsp_count = { value = 1728, source = "..." }
        clock = { value = "200 MHz", ... }
        macs_per_dsp_per_cycle = { value = 1, ... }
        on_chip_buffer = { value = "1.4 MB", ... }
        [efficiency]                 # optional: efficiency-curve parameters (any subset)
        source = "..."               # where they come from (text)
        memory = { value = 0.9, source = "..." }          # achieved / peak weights-tier bandwidth
        launch_overhead = { value = "7 us", source = "..." }  # serial overhead per kernel
        gemv_max_rows = { value = 8, source = "..." }     # rows up to which a GEMM is a memory-bound GEMV
        [efficiency.gemm.fp8]        # per compute dtype: e(m) = e_max * m / (m + m_half)
        e_max = { value = 0.61, source = "..." }
        m_half = { value = 202, source = "..." }

    ``[efficiency]`` replaces the default curve of the device's kind, parameter by parameter, when
    the calibrated cost model has no calibration profile for the device (`DeviceEfficiency`).

    For an FPGA, ``peak_flops`` is derived (``dsp_count x macs x clock x 2`` for the 16-bit
    dtypes ``fp16`` and ``bf16``, standing for the 16-bit fixed-point datapath). Raises
    `PresetError` naming the file and field for anything malformed or inconsistent.
    """
    return _load_device(*_cache_key(path))


def _cache_key(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, mtime in ns, size): loaders are cached on the file's identity and version, so
    an edited file is read again; a missing file gets a key that fails to load with a clear error."""
    resolved = Path(path).resolve()
    try:
        st = resolved.stat()
    except OSError:
        return str(resolved), -1, -1
    return str(resolved), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=256)
def _load_device(path_text: str, mtime_ns: int = 0, size: int = 0) -> Device:
    path = Path(path_text)
    doc = _read_toml(path)
    r = _Reader(str(path))
    _check_keys(doc, _DEVICE_KEYS, str(path))
    name = r.text(doc, "name")
    kind = r.text(doc, "kind")
    if kind not in DEVICE_KINDS:
        raise PresetError(f"{r.where('kind')}: {kind!r} is not one of {DEVICE_KINDS}")
    weights_tier = r.text(doc, "weights_tier")
    source = r.text(doc, "source")
    tdp = r.quantity(doc, "tdp", "power")
    static = r.quantity(doc, "static_power", "power", positive=False)
    if static > tdp:
        raise PresetError(f"{r.where('static_power')}: {static} W exceeds tdp {tdp} W")
    raw_tiers = doc.get("tier")
    if not isinstance(raw_tiers, list) or not raw_tiers:
        raise PresetError(f"{r.where('tier')}: missing; give at least one [[tier]] table (fastest first)")
    tiers: list[MemoryTier] = []
    for i, raw in enumerate(raw_tiers):
        key = f"tier[{i}]"
        if not isinstance(raw, Mapping):
            raise PresetError(f"{r.where(key)}: expected a table")
        _check_keys(raw, _TIER_KEYS, r.where(key))
        tname = r.text(raw, f"{key}.name")
        key = f"tier[{i}] ({tname})"
        start = len(r.provenance)
        capacity = r.quantity(raw, f"{key}.capacity", "bytes")
        bandwidth = r.quantity(raw, f"{key}.bandwidth", "bandwidth")
        latency = r.quantity(raw, f"{key}.latency", "time", positive=False)
        energy = r.quantity(raw, f"{key}.energy_per_byte", "energy_per_byte", positive=False)
        mine = r.provenance[start:]
        tier_source = r.text(raw, f"{key}.source", required=False) or "; ".join(
            f"{f.rsplit('.', 1)[-1]}: {s}" for f, s, _ in mine
        )
        tiers.append(
            MemoryTier(
                name=tname,
                capacity_bytes=capacity,
                bandwidth_Bps=bandwidth,
                latency_s=latency,
                energy_J_per_byte=energy,
                source=tier_source,
                assumption=any(a for _, _, a in mine),
            )
        )
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise PresetError(f"{r.where('tier')}: duplicate tier names {names}")
    if weights_tier not in names:
        raise PresetError(f"{r.where('weights_tier')}: {weights_tier!r} is not one of the tiers {names}")
    try:
        check_tier_order(tuple(tiers), "tiers")
    except ValueError as exc:
        raise PresetError(f"{r.where('tier')}: {exc}") from None
    fpga_values: dict[str, Any] = {}
    fpga = r.table(doc, "fpga", required=kind == "fpga")
    if fpga is not None and kind != "fpga":
        raise PresetError(f'{r.where("fpga")}: an [fpga] table is only valid for kind = "fpga"')
    peak: dict[str, float] = {}
    energy_flop: dict[str, float] = {}
    if fpga is not None:
        _check_keys(fpga, _FPGA_KEYS, r.where("fpga"))
        dsp = r.quantity(fpga, "fpga.dsp_count", "count")
        if dsp != int(dsp):
            raise PresetError(f"{r.where('fpga.dsp_count')}: must be an integer, got {dsp}")
        fpga_values = {
            "dsp_count": int(dsp),
            "clock_Hz": r.quantity(fpga, "fpga.clock", "frequency"),
            "macs_per_dsp_per_cycle": r.quantity(fpga, "fpga.macs_per_dsp_per_cycle", "count"),
            "on_chip_buffer_bytes": r.quantity(fpga, "fpga.on_chip_buffer", "bytes"),
        }
        if "peak_flops" in doc:
            raise PresetError(
                f"{r.where('peak_flops')}: an FPGA's peak is derived from [fpga] "
                "(dsp_count x macs_per_dsp_per_cycle x clock x 2); remove [peak_flops]"
            )
        dsp_peak = fpga_values["dsp_count"] * fpga_values["macs_per_dsp_per_cycle"] * fpga_values["clock_Hz"] * 2
        peak = {"fp16": dsp_peak, "bf16": dsp_peak}
    else:
        flops_table = r.table(doc, "peak_flops")
        assert flops_table is not None
        for dtype in flops_table:
            if dtype not in DTYPES:
                raise PresetError(f"{r.where('peak_flops.' + dtype)}: unknown dtype; expected one of {DTYPES}")
            peak[dtype] = r.quantity(flops_table, f"peak_flops.{dtype}", "flops")
        if not peak:
            raise PresetError(f"{r.where('peak_flops')}: lists no dtype")
    energy_table = r.table(doc, "energy_per_flop")
    assert energy_table is not None
    for dtype in energy_table:
        if dtype not in peak:
            raise PresetError(f"{r.where('energy_per_flop.' + dtype)}: dtype not in peak_flops {sorted(peak)}")
        energy_flop[dtype] = r.quantity(energy_table, f"energy_per_flop.{dtype}", "energy_per_flop", positive=False)
    for dtype in peak:
        if dtype not in energy_flop:
            raise PresetError(f"{r.where('energy_per_flop.' + dtype)}: missing (peak_flops lists {dtype!r})")
    efficiency = _read_efficiency(r, doc, peak)
    try:
        return Device(
            name=name,
            kind=kind,
            efficiency=efficiency,
            peak_flops=peak,
            tiers=tuple(tiers),
            weights_tier=weights_tier,
            static_power_W=static,
            energy_J_per_flop=energy_flop,
            tdp_W=tdp,
            source=source,
            notes=r.text(doc, "notes", required=False),
            provenance=tuple(r.provenance),
            **fpga_values,
        )
    except ValueError as exc:
        raise PresetError(f"{path}: {exc}") from None


def _read_efficiency(r: _Reader, doc: Mapping[str, Any], peak: Mapping[str, float]) -> DeviceEfficiency | None:
    """The ``[efficiency]`` table of a device file (None when absent); errors name the field."""
    table = r.table(doc, "efficiency", required=False)
    if table is None:
        return None
    _check_keys(table, _EFFICIENCY_KEYS, r.where("efficiency"))
    values: dict[str, Any] = {"source": r.text(table, "efficiency.source", required=False)}
    for key, attr, dim in (
        ("memory", "memory_eff", "count"),
        ("launch_overhead", "launch_overhead_s", "time"),
        ("gemv_max_rows", "gemv_max_rows", "count"),
    ):
        if key in table:
            value = r.quantity(table, f"efficiency.{key}", dim, positive=key == "memory")
            if key == "memory" and value > 1:
                raise PresetError(f"{r.where('efficiency.memory')}: must be in (0, 1] (achieved / peak), got {value}")
            values[attr] = value
    e_max: dict[str, float] = {}
    m_half: dict[str, float] = {}
    gemm = r.table(table, "efficiency.gemm", required=False)
    for dtype, curve in (gemm or {}).items():
        key = f"efficiency.gemm.{dtype}"
        if dtype not in peak:
            raise PresetError(f"{r.where(key)}: dtype not in peak_flops {sorted(peak)}")
        if not isinstance(curve, Mapping):
            raise PresetError(f"{r.where(key)}: expected a table with e_max and m_half")
        _check_keys(curve, {"e_max", "m_half"}, r.where(key))
        e_max[dtype] = r.quantity(curve, f"{key}.e_max", "count")
        if e_max[dtype] > 1:
            raise PresetError(f"{r.where(key + '.e_max')}: must be in (0, 1] (achieved / peak), got {e_max[dtype]}")
        m_half[dtype] = r.quantity(curve, f"{key}.m_half", "count", positive=False)
    try:
        return DeviceEfficiency(gemm_e_max=e_max, gemm_m_half=m_half, **values)
    except ValueError as exc:
        raise PresetError(f"{r.where('efficiency')}: {exc}") from None


# --------------------------------------------------------------------------- link files
_LINK_KEYS = {
    "name",
    "source",
    "notes",
    "bandwidth",
    "latency",
    "duplex",
    "energy_per_byte",
    "efficiency_points",
    "pageable_efficiency_points",
    "collective_latency",
}


def load_link_file(path: str | Path) -> Link:
    """Load a link TOML file.

    Format::

        name = "pcie-gen4-x16"
        source = "..."
        duplex = true
        bandwidth = { value = "32 GB/s", source = "..." }      # peak per direction
        latency = { value = "10 us", assumption = true, source = "..." }
        energy_per_byte = { value = "5 pJ/bit", assumption = true, source = "..." }
        efficiency_points = [   # measured pinned copies: size and achieved rate (or efficiency = 0.56)
          { bytes = "1 MB", achieved = "18.0 GB/s", source = "..." },
        ]
        pageable_efficiency_points = [ ... ]   # optional, same form
        collective_latency = { value = "8.4 us", source = "..." }  # optional: fixed cost per collective call

    Achieved rates are stored as efficiencies (achieved / bandwidth): a link derived with another
    ``bandwidth_Bps`` keeps the measured curve's shape at the new peak.
    """
    return _load_link(*_cache_key(path))


@functools.lru_cache(maxsize=256)
def _load_link(path_text: str, mtime_ns: int = 0, size: int = 0) -> Link:
    path = Path(path_text)
    doc = _read_toml(path)
    r = _Reader(str(path))
    _check_keys(doc, _LINK_KEYS, str(path))
    name = r.text(doc, "name")
    duplex = doc.get("duplex")
    if not isinstance(duplex, bool):
        raise PresetError(f"{r.where('duplex')}: expected true or false, got {duplex!r}")
    bandwidth = r.quantity(doc, "bandwidth", "bandwidth")
    latency = r.quantity(doc, "latency", "time", positive=False)
    energy = r.quantity(doc, "energy_per_byte", "energy_per_byte", positive=False)
    collective_latency = r.quantity(doc, "collective_latency", "time", required=False, default=0.0, positive=False)
    points: dict[str, tuple[tuple[float, float], ...]] = {}
    for key in ("efficiency_points", "pageable_efficiency_points"):
        raw = doc.get(key, [])
        if not isinstance(raw, list):
            raise PresetError(f"{r.where(key)}: expected a list of {{ bytes = ..., achieved = ..., source = ... }}")
        parsed: list[tuple[float, float]] = []
        for i, item in enumerate(raw):
            where = r.where(f"{key}[{i}]")
            if not isinstance(item, Mapping):
                raise PresetError(f"{where}: expected {{ bytes = ..., achieved = ..., source = ... }}")
            _check_keys(item, {"bytes", "achieved", "efficiency", "source", "assumption", "note"}, where)
            assumption = item.get("assumption", False)
            if not item.get("source") and assumption is not True:
                raise PresetError(f"{where}: missing 'source' (or assumption = true)")
            if "bytes" not in item or ("achieved" in item) == ("efficiency" in item):
                raise PresetError(f"{where}: needs 'bytes' and exactly one of 'achieved' (a rate) or 'efficiency'")
            n_bytes = parse_quantity(item["bytes"], None, "bytes", where=r.where(f"{key}[{i}].bytes"))
            if "achieved" in item:
                rate = parse_quantity(item["achieved"], None, "bandwidth", where=r.where(f"{key}[{i}].achieved"))
                if rate > bandwidth * (1 + 1e-9):
                    raise PresetError(
                        f"{r.where(f'{key}[{i}].achieved')}: {rate:.4g} B/s exceeds the peak bandwidth "
                        f"{bandwidth:.4g} B/s"
                    )
                eff = rate / bandwidth  # stored relative to the peak: a bandwidth change scales it
            else:
                eff = item["efficiency"]
                if isinstance(eff, bool) or not isinstance(eff, int | float) or not 0 < eff <= 1:
                    raise PresetError(f"{r.where(f'{key}[{i}].efficiency')}: expected a number in (0, 1], got {eff!r}")
                eff = float(eff)
            if n_bytes <= 0 or eff <= 0:
                raise PresetError(f"{where}: bytes and achieved must be > 0")
            r.provenance.append((f"{key}[{i}]", str(item.get("source", "assumption")), bool(assumption)))
            parsed.append((n_bytes, min(eff, 1.0)))
        sizes = [b for b, _ in parsed]
        if sizes != sorted(sizes) or len(set(sizes)) != len(sizes):
            raise PresetError(f"{r.where(key)}: points must be strictly ascending in bytes, got {sizes}")
        points[key] = tuple(parsed)
    try:
        return Link(
            name=name,
            bandwidth_Bps=bandwidth,
            latency_s=latency,
            duplex=duplex,
            efficiency_points=points["efficiency_points"],
            energy_J_per_byte=energy,
            source=r.text(doc, "source"),
            notes=r.text(doc, "notes", required=False),
            pageable_efficiency_points=points["pageable_efficiency_points"],
            collective_latency_s=collective_latency,
            provenance=tuple(r.provenance),
        )
    except ValueError as exc:
        raise PresetError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- platform files
_PLATFORM_KEYS = {"name", "source", "notes", "accelerator", "host", "peer", "scale_out", "cost_per_hour"}


def load_platform_file(path: str | Path) -> Platform:
    """Load a platform TOML file; devices and links are referenced by preset name or by a path
    to a ``.toml`` file (relative to the platform file).

    Format::

        name = "dgx-h100"
        source = "..."
        cost_per_hour = { value = "20 USD/h", assumption = true, source = "..." }
        [accelerator]
        device = "h100-sxm"
        count = 8
        [host]                    # optional
        device = "spr-2s"
        link = "pcie-gen5-x16"    # one such link per accelerator
        [peer]                    # required when count > 1
        link = "nvlink4"
        [scale_out]               # optional: several nodes of devices_per_node accelerators
        link = "ib-cx7-400g"      # each accelerator's NIC
        devices_per_node = 8
    """
    return _load_platform(*_cache_key(path))


def _resolve(ref: str, base: Path, loader: Any, getter: Any, where: str) -> Any:
    try:
        if ref.endswith(".toml"):
            ref_path = Path(ref)
            return loader(ref_path if ref_path.is_absolute() else base / ref_path)
        return getter(ref)
    except (PresetError, UnknownHardwareError) as exc:
        raise PresetError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=256)
def _load_platform(path_text: str, mtime_ns: int = 0, size: int = 0) -> Platform:
    path = Path(path_text)
    doc = _read_toml(path)
    r = _Reader(str(path))
    _check_keys(doc, _PLATFORM_KEYS, str(path))
    name = r.text(doc, "name")
    acc = r.table(doc, "accelerator")
    assert acc is not None
    _check_keys(acc, {"device", "count"}, r.where("accelerator"))
    count = acc.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise PresetError(f"{r.where('accelerator.count')}: expected a positive integer, got {count!r}")
    device = _resolve(
        r.text(acc, "accelerator.device"), path.parent, load_device_file, get_device, r.where("accelerator.device")
    )
    host = host_link = peer_link = None
    host_table = r.table(doc, "host", required=False)
    if host_table is not None:
        _check_keys(host_table, {"device", "link"}, r.where("host"))
        host = _resolve(
            r.text(host_table, "host.device"), path.parent, load_device_file, get_device, r.where("host.device")
        )
        host_link = _resolve(
            r.text(host_table, "host.link"), path.parent, load_link_file, get_link, r.where("host.link")
        )
    peer = r.table(doc, "peer", required=False)
    if peer is not None:
        _check_keys(peer, {"link"}, r.where("peer"))
        peer_link = _resolve(r.text(peer, "peer.link"), path.parent, load_link_file, get_link, r.where("peer.link"))
    if count > 1 and peer_link is None:
        raise PresetError(f"{r.where('peer')}: missing; {count} accelerators need a [peer] link")
    scale_out_link = per_node = None
    so = r.table(doc, "scale_out", required=False)
    if so is not None:
        _check_keys(so, {"link", "devices_per_node"}, r.where("scale_out"))
        scale_out_link = _resolve(
            r.text(so, "scale_out.link"), path.parent, load_link_file, get_link, r.where("scale_out.link")
        )
        per_node = so.get("devices_per_node")  # checked by Platform (its message names the field)
    cost = r.quantity(doc, "cost_per_hour", "usd_per_hour", positive=False)
    try:
        return Platform(
            name=name,
            accelerators=(device,) * count,
            host=host,
            host_link=host_link,
            peer_link=peer_link,
            cost_per_hour_usd=cost,
            source=r.text(doc, "source"),
            notes=r.text(doc, "notes", required=False),
            provenance=tuple(r.provenance),
            scale_out_link=scale_out_link,
            devices_per_node=per_node,
        )
    except ValueError as exc:
        raise PresetError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- presets by name
def _preset_dir(kind: str) -> Path:
    return Path(str(resources.files("hwmodels") / "presets" / kind))


@functools.lru_cache(maxsize=8)
def _preset_index(kind: str) -> dict[str, Path]:
    """Preset name -> file for ``kind`` (devices, links, platforms); names are file stems."""
    directory = _preset_dir(kind)
    return {p.stem: p for p in sorted(directory.glob("*.toml"))}


def _get(kind: str, name: str, loader: Any) -> Any:
    if name.endswith(".toml"):
        return loader(name)
    index = _preset_index(kind)
    key = name.strip().lower()
    if key not in index:
        raise UnknownHardwareError(
            f"unknown {kind[:-1]} preset {name!r}; valid: {', '.join(sorted(index))} (or a path to a .toml file)"
        )
    obj = loader(index[key])
    if obj.name != key:
        raise PresetError(f"{index[key]}: field 'name' is {obj.name!r} but the file is named {key!r}")
    return obj


def get_device(name: str) -> Device:
    """The device preset ``name`` (or a device file path ending in ``.toml``)."""
    result: Device = _get("devices", name, load_device_file)
    return result


def get_link(name: str) -> Link:
    """The link preset ``name`` (or a link file path ending in ``.toml``)."""
    result: Link = _get("links", name, load_link_file)
    return result


def get_platform(name: str) -> Platform:
    """The platform preset ``name`` (or a platform file path ending in ``.toml``)."""
    result: Platform = _get("platforms", name, load_platform_file)
    return result


def device_preset_names() -> list[str]:
    """Names of the shipped device presets, sorted."""
    return sorted(_preset_index("devices"))


def link_preset_names() -> list[str]:
    """Names of the shipped link presets, sorted."""
    return sorted(_preset_index("links"))


def platform_preset_names() -> list[str]:
    """Names of the shipped platform presets, sorted."""
    return sorted(_preset_index("platforms"))
