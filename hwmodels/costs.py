"""Cost models: what each operation of MoE inference costs on a device or a link.

`CostModel` answers, for a `Platform`, the time and energy of: one expert FFN on ``n`` tokens
(`CostModel.expert_ffn`), several experts in one grouped call, the shared experts, the router,
attention prefill and decode (GQA; DeepSeek MLA approximated, and labelled so in ``source``),
a transfer of ``b`` bytes over a link, all-to-all and all-reduce collectives, an FPGA expert with
double-buffered weight streaming (M3ViT reordering or per-token execution), an RDU expert with its
operands in SRAM, HBM or DDR, and an expert computed on the host CPU.

Every method is vectorised: a token-count or byte-count argument may be a scalar or a numpy array,
and the `OpCost` fields are then floats or arrays of that shape. Zero tokens or bytes cost zero.

Two fidelities:

``roofline``
    ``compute_s = FLOPs / peak_flops[dtype]``, ``memory_s = bytes / tier bandwidth``, ``comm_s =
    latency + bytes / link bandwidth``. A lower bound.
``calibrated``
    the roofline divided by efficiencies in (0, 1] from an `EfficiencyModel` per device (a fitted
    ``hwmodels.calibration.CalibrationProfile`` when given, else `DefaultEfficiency`: the default
    curve of the op's compute dtype, `DTYPE_CURVES`, with the device file's ``[efficiency]`` over
    it), plus per-kernel launch overheads for the default curves, plus a per-call latency for
    collectives (``Link.collective_latency_s``). GEMMs of at most ``gemv_max_rows`` rows are
    memory-bound GEMVs (compute capped at their memory time). Always >= the roofline (tests pin it).
    hwmodels/presets/EFFICIENCY.md says where each parameter comes from and how to set it.

Energy (joules): ``static_power_W x total_s + energy_J_per_flop[dtype] x FLOPs + sum over tiers of
bytes x energy_J_per_byte`` (links: bytes x the link's ``energy_J_per_byte``).

Conventions and assumptions (labelled): activations are bf16 (`ACTIVATION_BYTES` = 2); an expert
FFN reads its weights once per call and its input/output activations and the intermediate
activation once each (a fused gate/up kernel); serial per-kernel overheads of the default curves
are added to both ``compute_s`` and ``memory_s`` so that ``total_s`` includes them exactly once.
Each op reads its own component's weights at that component's precision
(`MoEModel.weight_bytes_of`: attention, expert, shared, dense = router and dense FFNs, embedding = LM
head) and picks its compute dtype from it (`_dtype_for`: fp8 weights use fp8 where the device has
it, 4-bit weights are upcast to bf16; bytes per weight include scales, so each width is a band,
`FP8_BYTES_BAND`); attention's score FLOPs (QK^T, PV) run at the KV cache's dtype
(``kv_bytes_per_elem``), its projections at the weights'; a component's ``<component>_format`` adds the
dequantisation cost of its packed weights (`hwmodels.dequant`; ``"none"``, the default, adds
nothing). FPGA ops put their pipeline fill (an off-chip load, not a link)
in ``comm_s`` of `CostModel.fpga_layer`, labelled in ``source``.

Validation against real measurements (tests/hwmodels/test_costs.py, data in ``../shared``): the
roofline never exceeds a measured A100/H100 gated-MLP time (Vidur tables) nor an NCCL all-reduce
inside a DGX node; the default GPU curve, fitted on TP 1 and 4, predicts the held-out TP 2 and 8
MLP shapes with a median error of 4-6.5%.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from hwmodels.dequant import DequantTerms, dequant_terms, vector_ops_per_s
from hwmodels.devices import Device, DeviceEfficiency, Link, Platform
from hwmodels.execution import KernelExecution, resolve_execution
from hwmodels.opcost import OpCost
from workloads.model import MoEModel

__all__ = [
    "ACTIVATION_BYTES",
    "CostModel",
    "DefaultEfficiency",
    "EfficiencyModel",
    "Fidelity",
    "GemmCurve",
    "LinkCurve",
    "intranode_share",
    "offchip_bytes",
]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
Fidelity = Literal["roofline", "calibrated"]

#: Bytes per activation element (bf16). Assumption: activations and KV stay in 16-bit.
ACTIVATION_BYTES = 2.0


@runtime_checkable
class EfficiencyModel(Protocol):
    """What a calibration supplies; every method returns efficiencies in (0, 1].

    ``gemm(m, k, n)``: achieved / peak FLOP rate of an ``(m x k) @ (k x n)`` GEMM, vectorised in
    ``m`` (an array of token counts gives an array). ``memory()``: achieved / peak bandwidth of the
    device's memory. ``copy(n_bytes, pinned=)``: achieved / peak rate of a host<->device copy of
    ``n_bytes`` (may raise `LookupError` when not measured; the cost model then falls back to the
    link's curve). ``name`` appears in ``OpCost.source`` as ``calibrated:<name>``.

    Optional duck-typed extras that `CostModel` honours: ``peaks`` (with ``flops``,
    ``memory_Bps``, ``link_Bps``: the reference peaks the efficiencies are relative to; the cost
    model rescales them to the device's own peaks), ``launch_overhead_s`` (added per kernel), and
    ``dtype`` with ``gemm_at(m, k, n, *, dtype_bytes, flops_scale)`` (a profile measured at one dtype
    is read for GEMMs of another width through `_ProfileAtDtype`).
    """

    name: str

    def gemm(self, m: ArrayLike, k: int, n: int) -> npt.NDArray[np.float64]: ...

    def memory(self) -> float: ...

    def copy(self, n_bytes: ArrayLike, *, pinned: bool = True) -> npt.NDArray[np.float64]: ...


# --------------------------------------------------------------------------- default curves
@dataclass(frozen=True)
class GemmCurve:
    """Saturating GEMM efficiency ``e(m) = e_max * m / (m + m_half)`` (time linear in m, so monotone).

    ``e_max`` is a fraction of the peak of the compute dtype the curve is for (`DTYPE_CURVES`),
    ``memory_eff`` the achieved fraction of the tier bandwidth, ``launch_overhead_s`` the serial
    overhead per kernel. ``gemv_max_rows``: a GEMM of at most that many rows runs as a GEMV (or
    split-K) kernel whose compute hides under its weight stream, so its compute time is capped at
    its memory time (memory-bound at the achieved bandwidth; 0 = no cap). All are assumptions unless
    ``source`` says otherwise.
    """

    e_max: float
    m_half: float
    memory_eff: float
    launch_overhead_s: float
    source: str
    gemv_max_rows: float = 0.0


#: Default curves per device kind (labelled assumptions; a calibration replaces them).
DEFAULT_CURVES: dict[str, GemmCurve] = {
    "gpu": GemmCurve(
        e_max=0.706,
        m_half=78.6,
        memory_eff=0.898,
        launch_overhead_s=7.0e-6,
        source="fitted (soft-L1 in log space) to measured gate/up + act + down times of the Vidur "
        "A100 and H100 llama-2-7b-mlp tables at TP 1 and 4 (shared/calibration/vidur-a100-h100, "
        "[P measurement], MIT); held-out TP 2 and 8: median error 4.0-6.5% "
        "(tests/hwmodels/test_costs.py); bf16/fp16 GEMMs. gemv_max_rows: see GEMV_SOURCE",
        gemv_max_rows=8.0,
    ),
    "cpu": GemmCurve(
        e_max=0.50,
        m_half=8.0,
        memory_eff=0.75,
        launch_overhead_s=2e-6,
        source="assumption: CPU AMX/AVX-512 GEMM reaches ~50% of peak; ~75% of DDR peak in "
        "STREAM-like kernels; ~2 us per parallel-region fork/join",
    ),
    "rdu": GemmCurve(
        e_max=0.70,
        m_half=32.0,
        memory_eff=0.85,
        launch_overhead_s=5e-6,
        source="assumption: RDU dataflow pipeline reaches ~70% of peak; ~85% of HBM/DDR peak; "
        "~5 us per graph section switch",
    ),
    "fpga": GemmCurve(
        e_max=0.90,
        m_half=1.0,
        memory_eff=0.80,
        launch_overhead_s=1e-6,
        source="assumption: HLS DSP array ~90% busy once its pipeline is full; ~80% of DDR/HBM "
        "peak over AXI bursts; ~1 us per kernel start",
    ),
}

#: Where the GPU curve's ``gemv_max_rows`` (8) and its memory efficiency at small m come from.
GEMV_SOURCE = (
    "llama.cpp ggml-cuda runs batches of up to 8 rows as mat-vec kernels (MMVQ_MAX_BATCH_SIZE 8); "
    "measured decode GEMVs stream weights at 64-78% of HBM/DRAM peak (kekzl/imp PR #380 ncu: 64-73% on "
    "an RTX-class GPU; lablup/mlxcel PR #684: 74-78% on GB10) and the Vidur-fitted GPU curve's "
    "memory_eff 0.898 covers the small-m MLP rows of the A100/H100 tables; below ~8 rows a GEMM's "
    "arithmetic intensity (<= 8 FLOP/B at 16-bit) is far under every GPU's ridge point (A100 153, "
    "H100 295 FLOP/B, hardware-and-papers.md s.1.1), so compute cannot bind"
)

#: Default curves per (device kind, compute dtype) that differ from the kind's `DEFAULT_CURVES`
#: entry (which stands for the 16-bit dtypes and any dtype not listed here).
DTYPE_CURVES: dict[tuple[str, str], GemmCurve] = {
    ("gpu", "fp8"): GemmCurve(
        e_max=0.613,
        m_half=202.0,
        memory_eff=0.898,
        launch_overhead_s=7.0e-6,
        source="e_max, m_half fitted (soft-L1 in log space, t = max(FLOPs / (1979 TFLOP/s x e(m)), "
        "bytes / (3.35 TB/s x 0.898))) to the 18 'Normal GEMMs for dense models' of DeepGEMM's README "
        "@ 55ab91f (deepseek-ai/DeepGEMM, H800 SXM5 = H100 SXM FP8 compute, 1979 TFLOP/s dense FP8; "
        "206-1426 TFLOPS measured, m 64-4096) [P measurement]; median |error| 13%, max 37% "
        "(tests/hwmodels/test_efficiency_dtype.py); the BF16 curve at the FP8 peak is 21% too fast on "
        "the same shapes. DeepGEMM scales FP8 in fine-grained blocks (as DeepSeek-V3); per-tensor scaled "
        "kernels (TRT-LLM) may be a few % faster: not measured here. memory_eff, launch_overhead_s: as "
        "the GPU bf16 curve",
        gemv_max_rows=8.0,
    ),
}

#: Pageable copies without measured points run at this fraction of the pinned rate.
PAGEABLE_FACTOR = 0.5
PAGEABLE_FACTOR_SOURCE = (
    "[S] rapidsai/dask-cuda PR #98: 'transfers at 5-6 GB/s, and 11-12 GB/s with' pinned (hardware-and-papers.md s.1.2)"
)
#: Bound on memoised scalar answers per CostModel.
_MEMO_MAX = 65536
#: Efficiency of a link without measured points (assumption).
LINK_DEFAULT_EFF = 0.80


class LinkCurve:
    """Size-dependent copy efficiency of a link, interpolated from measured ``(bytes, efficiency)``
    points (``Link.efficiency_points``: achieved / peak), read at the link's own ``bandwidth_Bps``
    (``achieved_i = efficiency_i x bandwidth_Bps``), so a faster link of the same kind is faster.

    The copy times ``t_i = bytes_i / achieved_i`` (made non-decreasing) are interpolated
    log-log between points; below the first point the time rises linearly from the link latency,
    above the last one it continues at the last achieved rate; the time never drops below
    ``latency + bytes / peak``. The efficiency is then ``(bytes / peak) / (t - latency)``, in
    (0, 1], so that ``latency + bytes / (peak * eff)`` reproduces the measured times.
    """

    def __init__(self, link: Link, points: tuple[tuple[float, float], ...]) -> None:
        self.peak_Bps = link.bandwidth_Bps
        self.latency_s = link.latency_s
        if not points:
            raise ValueError(f"link {link.name!r}: no efficiency points to interpolate")
        sizes = np.array([p[0] for p in points], dtype=np.float64)
        rates = np.array([p[1] for p in points], dtype=np.float64) * self.peak_Bps
        times = np.maximum.accumulate(sizes / rates)
        self._log_n = np.log(sizes)
        self._log_t = np.log(times)
        self._log_n_list = [float(x) for x in self._log_n]
        self._log_t_list = [float(x) for x in self._log_t]
        self._n0, self._t0 = float(sizes[0]), float(times[0])
        self._n1, self._t1 = float(sizes[-1]), float(times[-1])
        self._rate_last = float(rates[-1])

    def time_s(self, n_bytes: FloatArray) -> FloatArray:
        """Copy time of ``n_bytes`` (> 0) including the latency."""
        n = np.asarray(n_bytes, dtype=np.float64)
        safe = np.maximum(n, 1e-300)
        t = np.exp(np.interp(np.log(safe), self._log_n, self._log_t))
        slope0 = max(self._t0 - self.latency_s, 0.0) / self._n0
        t = np.where(n < self._n0, self.latency_s + n * slope0, t)
        t = np.where(n > self._n1, self._t1 + (n - self._n1) / self._rate_last, t)
        return np.asarray(np.maximum(t, self.latency_s + n / self.peak_Bps), dtype=np.float64)

    def _time_scalar(self, n: float) -> float:
        """`time_s` for one size, in plain Python (the simulator's frequent one-off question)."""
        if n < self._n0:
            t = self.latency_s + n * max(self._t0 - self.latency_s, 0.0) / self._n0
        elif n > self._n1:
            t = self._t1 + (n - self._n1) / self._rate_last
        else:
            x = math.log(n)
            i = min(bisect.bisect_right(self._log_n_list, x) - 1, len(self._log_n_list) - 2)
            if i < 0:
                t = self._t0
            else:
                x0, x1 = self._log_n_list[i], self._log_n_list[i + 1]
                y0, y1 = self._log_t_list[i], self._log_t_list[i + 1]
                t = math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
        return max(t, self.latency_s + n / self.peak_Bps)

    def efficiency(self, n_bytes: ArrayLike) -> Any:
        """Achieved / peak rate excluding the latency, in (0, 1] (1 for zero bytes); a float for a
        Python scalar, else an array of the input's shape."""
        if isinstance(n_bytes, float | int):
            n0 = float(n_bytes)
            if n0 <= 0:
                return 1.0
            e0 = (n0 / self.peak_Bps) / max(self._time_scalar(n0) - self.latency_s, 1e-300)
            return min(max(e0, 1e-9), 1.0)
        n = np.asarray(n_bytes, dtype=np.float64)
        t = self.time_s(n) - self.latency_s
        with np.errstate(divide="ignore", invalid="ignore"):
            eff = np.where(n > 0, (n / self.peak_Bps) / np.maximum(t, 1e-300), 1.0)
        return np.asarray(np.clip(eff, 1e-9, 1.0), dtype=np.float64)


class DefaultEfficiency:
    """The package's fallback `EfficiencyModel` for a device kind (and optionally a link).

    GEMM: `GemmCurve` of the kind per compute dtype (`curve_for`: `DTYPE_CURVES`, else
    `DEFAULT_CURVES`), each parameter replaced by the device file's ``[efficiency]`` table when
    ``params`` (a `DeviceEfficiency`) sets it. ``gemm`` (the protocol method, no dtype) answers with
    the 16-bit curve. Memory: the curve's ``memory_eff``. Copies: the link's measured
    ``efficiency_points`` via `LinkCurve` (pageable copies use the measured pageable points, else
    `PAGEABLE_FACTOR` times the pinned efficiency), or `LINK_DEFAULT_EFF` (assumption) when the link
    has no points or no link is given.
    """

    def __init__(self, kind: str = "gpu", link: Link | None = None, *, params: DeviceEfficiency | None = None) -> None:
        if kind not in DEFAULT_CURVES:
            raise ValueError(f"no default efficiency curve for device kind {kind!r}; valid: {sorted(DEFAULT_CURVES)}")
        self.kind = kind
        self.params = params
        self._curves: dict[str, GemmCurve] = {}
        self.curve = self.curve_for("bf16")
        self.launch_overhead_s = self.curve.launch_overhead_s
        self.link = link
        self.name = f"default-{kind}" + ("+device-file" if params is not None else "")
        self.name += f"+{link.name}" if link is not None else ""
        self._pinned = LinkCurve(link, link.efficiency_points) if link is not None and link.efficiency_points else None
        self._pageable = (
            LinkCurve(link, link.pageable_efficiency_points)
            if link is not None and link.pageable_efficiency_points
            else None
        )

    def curve_for(self, dtype: str) -> GemmCurve:
        """The `GemmCurve` of compute dtype ``dtype``: `DTYPE_CURVES` of (kind, dtype), else the kind's
        `DEFAULT_CURVES` entry, with the device file's parameters (``params``) put over it."""
        hit = self._curves.get(dtype)
        if hit is not None:
            return hit
        curve = DTYPE_CURVES.get((self.kind, dtype), DEFAULT_CURVES[self.kind])
        p = self.params
        if p is not None:
            changes: dict[str, Any] = {}
            if dtype in p.gemm_e_max:
                changes.update(e_max=p.gemm_e_max[dtype], m_half=p.gemm_m_half[dtype])
            if p.memory_eff is not None:
                changes["memory_eff"] = p.memory_eff
            if p.launch_overhead_s is not None:
                changes["launch_overhead_s"] = p.launch_overhead_s
            if p.gemv_max_rows is not None:
                changes["gemv_max_rows"] = p.gemv_max_rows
            if changes:
                curve = replace(
                    curve,
                    source=f"device file [efficiency] ({p.source or 'no source given'}) over: " + curve.source,
                    **changes,
                )
        self._curves[dtype] = curve
        return curve

    def gemm(self, m: ArrayLike, k: int, n: int) -> Any:
        """``e_max * m / (m + m_half)`` of the 16-bit curve, with ``m < 1`` read as 1 (no FLOPs are spent
        at m = 0); a float for a Python scalar ``m``, else an array of its shape."""
        c = self.curve
        if isinstance(m, float | int):
            mm = max(float(m), 1.0)
            return c.e_max * mm / (mm + c.m_half)
        mf = np.maximum(np.asarray(m, dtype=np.float64), 1.0)
        return np.asarray(c.e_max * mf / (mf + c.m_half), dtype=np.float64)

    def memory(self) -> float:
        return self.curve.memory_eff

    def copy(self, n_bytes: ArrayLike, *, pinned: bool = True) -> Any:
        """Link efficiency for copies of ``n_bytes`` (float for a Python scalar, else an array)."""
        if isinstance(n_bytes, float | int):
            curve = self._pageable if not pinned and self._pageable is not None else self._pinned
            e = curve.efficiency(float(n_bytes)) if curve is not None else LINK_DEFAULT_EFF
            factor = 1.0 if pinned or self._pageable is not None else PAGEABLE_FACTOR
            return float(e) * factor
        n = np.asarray(n_bytes, dtype=np.float64)
        if not pinned and self._pageable is not None:
            return self._pageable.efficiency(n)
        base = self._pinned.efficiency(n) if self._pinned is not None else np.full(n.shape, LINK_DEFAULT_EFF)
        return np.asarray(base if pinned else base * PAGEABLE_FACTOR, dtype=np.float64)

    def __repr__(self) -> str:
        return f"DefaultEfficiency({self.name!r})"


# --------------------------------------------------------------------------- helpers
def intranode_share(n_devices: int, devices_per_node: int) -> float:
    """Share of a device's all-to-all bytes that leave it but stay in its node, with uniform
    destinations over ``n_devices`` in nodes of ``devices_per_node``: ``(g-1)/(n-1)``; the rest,
    ``(n-g)/(n-1)``, crosses nodes (`CostModel.all_to_all_nodes`)."""
    return (devices_per_node - 1) / (n_devices - 1) if n_devices > 1 else 0.0


def _counts(value: ArrayLike, what: str) -> FloatArray:
    """``value`` as a float array, checked finite and >= 0 (names ``what`` otherwise)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{what} must be finite and >= 0, got {v!r}")
        return arr
    if arr.size and not (np.minimum.reduce(arr, axis=None) >= 0 and math.isfinite(np.maximum.reduce(arr, axis=None))):
        bad = arr[~(np.isfinite(arr) & (arr >= 0))].ravel()[:3]
        raise ValueError(f"{what} must be finite and >= 0, got {bad.tolist()}")
    return arr


def _out(x: Any) -> Any:
    """Scalars (0-d) become floats; arrays stay arrays."""
    return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=np.float64)


def _check_eff(eff: Any, who: str, what: str) -> Any:
    e = np.asarray(eff, dtype=np.float64)
    if e.size and not (np.all(e > 0) and np.all(e <= 1.0 + 1e-9)):
        raise ValueError(
            f"efficiency model {who!r}: {what} efficiency must be in (0, 1], got "
            f"min {float(e.min()):.4g}, max {float(e.max()):.4g}"
        )
    return np.minimum(e, 1.0) if e.ndim else min(float(e), 1.0)


#: Upper end (exclusive) of the bytes-per-weight band read as 8-bit weights with their scales.
FP8_BYTES_BAND = 1.125


def _dtype_for(device: Device, bytes_per_weight: float) -> str:
    """The compute dtype for weights of ``bytes_per_weight`` on ``device``.

    Bytes per weight include the format's scales (`workloads.model.MoEModel`), so each width is a
    band, not a point: ``[4, inf)`` fp32; ``[1, 1.125)`` 8-bit (fp8 where the device has it, else
    16-bit, i.e. weights upcast; the band admits one fp32 scale per 32 weights, 1 + 4/32, exclusive:
    FP8 with 128-block scales is 1 + 4/128 B/weight); everything else -- ``[2, 4)`` 16-bit with or
    without scales, and sub-8-bit (weight-only quantised, upcast) -- bf16. Falls back along
    ``bf16, fp16, fp32`` and then any listed dtype.
    """
    if bytes_per_weight >= 4:
        prefs: tuple[str, ...] = ("fp32", "bf16", "fp16")
    elif 1.0 <= bytes_per_weight < FP8_BYTES_BAND:
        prefs = ("fp8", "bf16", "fp16", "fp32")
    else:
        prefs = ("bf16", "fp16", "fp32")
    for d in prefs:
        if d in device.peak_flops:
            return d
    return next(iter(device.peak_flops))


def _component_dq(model: MoEModel, component: str, n_weights: float, n_matrices: int) -> DequantTerms | None:
    """Dequantisation terms of ``component``'s format for ``n_weights`` weights in ``n_matrices``."""
    fmt = model.format_of(component)
    return None if fmt == "none" else dequant_terms(fmt, n_weights, n_matrices)


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Per (device, tiers, dtype) constants of one fidelity: effective bandwidths, energies, peaks."""

    eff: EfficiencyModel | None
    peak: float
    e_flop: float
    static_W: float
    w_bw: float
    w_e: float
    a_bw: float
    a_e: float
    overhead_s: float
    gemm_ratio: float
    trusted: bool
    tag: str
    curve: GemmCurve | None = None
    gemv_rows: float = 0.0
    gemv_call_s: float = 0.0


#: Bytes per element of each compute dtype (a profile read for another dtype streams its operands at this size).
_DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0}


@dataclass(frozen=True)
class _ShiftedPeaks:
    flops: float
    memory_Bps: float
    link_Bps: float


class _ProfileAtDtype:
    """A calibration profile measured at one dtype, read for GEMMs of another compute dtype.

    Rule (labelled assumption): the profile's fitted GEMM time model is kept (per-call overhead,
    occupancy, compute/memory blend) with its compute rate multiplied by ``flops_scale`` = (device peak
    of the new dtype / of the profile's dtype) x (default-curve ``e_max`` of the new dtype / of the
    profile's dtype), and its operands streamed at the new dtype's bytes per element
    (`CalibrationProfile.gemm_at`). For FP8 on an H100 with the BF16-fitted ``h100`` profile:
    2 x 0.613 / 0.706 = 1.74x the BF16 compute rate at saturation, half the operand bytes.
    Memory and copies answer as the profile does.
    """

    def __init__(self, profile: Any, dtype: str, flops_scale: float) -> None:
        self.profile = profile
        self.name = str(profile.name)
        self.dtype = dtype
        self.flops_scale = float(flops_scale)
        self.flop_energy_scale = float(getattr(profile, "flop_energy_scale", 1.0))  # a power limit's, if any
        self.elem_bytes = _DTYPE_BYTES[dtype]
        peaks = profile.peaks
        self.peaks = _ShiftedPeaks(
            flops=float(peaks.flops) * self.flops_scale,
            memory_Bps=float(peaks.memory_Bps),
            link_Bps=float(getattr(peaks, "link_Bps", 0.0)),
        )

    @property
    def gemm_call_overhead_s(self) -> float:
        return float(getattr(self.profile, "gemm_call_overhead_s", 0.0))

    def gemm(self, m: ArrayLike, k: int, n: int) -> Any:
        return self.profile.gemm_at(m, k, n, dtype_bytes=self.elem_bytes, flops_scale=self.flops_scale)

    def memory(self) -> float:
        return float(self.profile.memory())

    def copy(self, n_bytes: ArrayLike, *, pinned: bool = True) -> Any:
        return self.profile.copy(n_bytes, pinned=pinned)


def _rowsum(x: Any) -> Any:
    """Sum over the last axis, left to right (a cumulative sum's last entry), where ``np.sum``
    sums pairwise: adding experts with no tokens (exact zeros) anywhere in a group then changes no
    bit of its answer, so groups of different sizes can share one call padded with zeros and
    still answer exactly as one call per group (the engine's fast path relies on it)."""
    a = np.asarray(x, dtype=np.float64)
    if a.shape[-1] == 0:
        return np.zeros(a.shape[:-1])
    return np.cumsum(a, axis=-1)[..., -1]


def _gemv_cap(compute: Any, memory: Any, rows: Any, max_rows: float, scalar: bool) -> Any:
    """Compute time of GEMMs over ``rows`` rows with those of at most ``max_rows`` rows capped at their
    memory time (a GEMV's compute hides under its weight stream: memory-bound at the achieved
    bandwidth; see `GemmCurve.gemv_max_rows`)."""
    if scalar:
        return min(compute, memory) if float(rows) <= max_rows else compute
    return np.where(np.asarray(rows) <= max_rows, np.minimum(compute, memory), compute)


@dataclass(frozen=True)
class _Gemm:
    """One GEMM of an op: FLOPs per row (token) and its (k, n) shape."""

    flops_per_row: float
    k: int
    n: int


# --------------------------------------------------------------------------- the cost model
class CostModel:
    """Costs of MoE inference operations on one platform, at one fidelity.

    Cheap to construct; pure (no state but caches of derived constants); picklable. ``profiles``
    maps a device name (or a link name) to an `EfficiencyModel`; calibrated costs of a device
    without a profile use `DefaultEfficiency` of its kind. Copies over a link use, in order: a
    profile keyed by the link's name; on the host link, the first accelerator's profile if it
    measured copies; the link's measured points; the default constant.

    Scalar questions are answered on Python floats and memoised per instance (bounded), array
    questions element-wise in numpy; both give the same numbers (tests pin it).
    """

    def __init__(
        self,
        platform: Platform,
        *,
        fidelity: Fidelity = "calibrated",
        profiles: Mapping[str, EfficiencyModel] | None = None,
        execution: str | KernelExecution | None = None,
        compute_scale: float = 1.0,
    ) -> None:
        if fidelity not in ("roofline", "calibrated"):
            raise ValueError(f"fidelity must be 'roofline' or 'calibrated', got {fidelity!r}")
        self.platform = platform
        self.fidelity: Fidelity = fidelity
        self.profiles: dict[str, EfficiencyModel] = dict(profiles or {})
        for key, prof in self.profiles.items():
            if not all(hasattr(prof, a) for a in ("gemm", "memory", "copy", "name")):
                raise TypeError(
                    f"profile {key!r} ({type(prof).__name__}) does not implement EfficiencyModel "
                    "(gemm, memory, copy, name)"
                )
        if execution is not None and execution != "auto":
            resolve_execution(execution, "gpu")  # an unknown preset name fails here, before any work
        self.execution: str | KernelExecution | None = execution
        if (
            isinstance(compute_scale, bool)
            or not isinstance(compute_scale, int | float)
            or not 0.0 < compute_scale <= 10.0
        ):
            raise ValueError(f"compute_scale must be a number in (0, 10], got {compute_scale!r}")
        #: compute-rate multiplier of GPU kernels (GEMMs, attention) at the calibrated fidelity (a
        #: serving stack's kernel library against the reference curves:
        #: `hwmodels.stacks.ServingStack.compute_scale`)
        self.compute_scale = float(compute_scale)
        self._exec_cache: dict[str, KernelExecution] = {}
        self._defaults: dict[tuple[Any, ...], DefaultEfficiency] = {}
        self._ctx_cache: dict[tuple[int, str, str, str], tuple[Device, _Ctx]] = {}

        self._memo: dict[tuple[Any, ...], tuple[Any, OpCost, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_ctx_cache"] = {}  # keyed by object ids: meaningless in another process
        state["_memo"] = {}
        return state

    def _remember(self, key: tuple[Any, ...], owner: Any, cost: OpCost, other: Any = None) -> None:
        """Memoise a scalar answer (bounded; keys hold object ids, the entry holds the objects)."""
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = (owner, cost, other)

    def __repr__(self) -> str:
        return (
            f"CostModel({self.platform.name!r}, fidelity={self.fidelity!r}, profiles={sorted(self.profiles)}, "
            f"execution={self.execution!r}"
            + (f", compute_scale={self.compute_scale:.4g})" if self.compute_scale != 1.0 else ")")
        )

    def with_execution(self, execution: str | KernelExecution | None) -> CostModel:
        """The same cost model (platform, fidelity, profiles) with another kernel execution (a
        `hwmodels.execution` preset name, ``"auto"``/None for each device kind's default, or a
        `KernelExecution`); ``self`` when it is already that one."""
        if execution == self.execution:
            return self
        return self._with(execution=execution)

    def with_compute_scale(self, scale: float) -> CostModel:
        """The same cost model with GPU compute (GEMMs, attention FLOPs, dequantisation arithmetic) at
        ``scale`` x the reference curves' rate (calibrated fidelity only: roofline is the peak by
        definition); ``self`` when unchanged. Memory and copy times, and GEMVs capped at their weight
        stream, are unchanged."""
        if scale == self.compute_scale:
            return self
        return self._with(compute_scale=scale)

    def _with(self, **changes: Any) -> CostModel:
        """A new cost model with this one's settings but ``changes`` (fresh caches)."""
        settings: dict[str, Any] = {
            "fidelity": self.fidelity,
            "profiles": self.profiles,
            "execution": self.execution,
            "compute_scale": self.compute_scale,
        }
        return CostModel(self.platform, **{**settings, **changes})

    def execution_for(self, device: Device) -> KernelExecution:
        """The `KernelExecution` this cost model applies to ``device`` (by its kind when ``"auto"``)."""
        if isinstance(self.execution, KernelExecution):
            return self.execution
        hit = self._exec_cache.get(device.kind)
        if hit is None:
            hit = self._exec_cache[device.kind] = resolve_execution(self.execution, device.kind)
        return hit

    # ---------------------------------------------------------------- efficiency lookup
    def _default(
        self, kind: str, link: Link | None = None, params: DeviceEfficiency | None = None
    ) -> DefaultEfficiency:
        key = (kind, link, params)
        eff = self._defaults.get(key)
        if eff is None:
            eff = self._defaults[key] = DefaultEfficiency(kind, link, params=params)
        return eff

    def efficiency_for(self, device: Device) -> EfficiencyModel | None:
        """The efficiency model the calibrated fidelity uses for ``device`` (None for roofline): its
        profile, else the default curves of its kind with the device file's ``[efficiency]`` over them."""
        if self.fidelity == "roofline":
            return None
        return self.profiles.get(device.name) or self._default(device.kind, params=device.efficiency)

    def _profile_at(self, eff: EfficiencyModel, device: Device, dtype: str) -> EfficiencyModel:
        """``eff`` read for compute dtype ``dtype`` (`_ProfileAtDtype`) when it is a calibration profile
        measured at a dtype of another width (fp16 and bf16 count as one) on a GPU; ``eff`` itself
        otherwise (CPU profiles keep their measured rate: the dtype curves are GPU measurements)."""
        prof_dtype = getattr(eff, "dtype", None)
        if device.kind != "gpu" or not isinstance(prof_dtype, str) or not hasattr(eff, "gemm_at"):
            return eff
        if dtype not in _DTYPE_BYTES:
            return eff
        if _DTYPE_BYTES.get(prof_dtype) == _DTYPE_BYTES[dtype]:
            return eff
        base = next((d for d in (prof_dtype, "bf16", "fp16") if d in device.peak_flops), None)
        if base is None or base == dtype:
            return eff
        curves = self._default(device.kind, params=device.efficiency)
        scale = (device.flops(dtype) / device.flops(base)) * (
            curves.curve_for(dtype).e_max / curves.curve_for(base).e_max
        )
        return _ProfileAtDtype(eff, dtype, scale)

    def _tag(self, eff: EfficiencyModel | None, op: str) -> str:
        return f"roofline:{op}" if eff is None else f"calibrated:{eff.name}:{op}"

    @staticmethod
    def _peak_ratio(eff: EfficiencyModel, attr: str, device_value: float) -> float:
        """Profile peak / device peak for ``attr`` of the profile's ``peaks`` (1 when absent)."""
        peaks = getattr(eff, "peaks", None)
        ref = getattr(peaks, attr, None) if peaks is not None else None
        if ref is None or not isinstance(ref, int | float) or ref <= 0 or device_value <= 0:
            return 1.0
        return float(ref) / device_value

    def _gemm_eff(self, eff: EfficiencyModel, device: Device, dtype: str, m: FloatArray, k: int, n: int) -> Any:
        e = _check_eff(eff.gemm(m, k, n), eff.name, "gemm")
        ratio = self._peak_ratio(eff, "flops", device.flops(dtype))
        return np.minimum(e * ratio, 1.0) if ratio != 1.0 else e

    def _mem_eff(self, eff: EfficiencyModel, tier_bw: float, *, measured_tier: bool = True) -> float:
        """Memory efficiency for a tier of ``tier_bw``; a profile's reference peak (``peaks.memory_Bps``)
        is rescaled only for the tier it measured (the device's ``weights_tier``); other tiers take
        the efficiency as a plain fraction of their own peak."""
        e = float(_check_eff(eff.memory(), eff.name, "memory"))
        if not measured_tier:
            return e
        ratio = self._peak_ratio(eff, "memory_Bps", tier_bw)
        return min(e * ratio, 1.0)

    @staticmethod
    def _gemm_call_overhead(eff: EfficiencyModel) -> float:
        """Per-GEMM call overhead a profile folds into its GEMM efficiency (``gemm_call_overhead_s``;
        0 for the default curves, whose launches are charged separately): a GEMV capped at its
        memory time still pays it."""
        if isinstance(eff, DefaultEfficiency):
            return 0.0
        value = getattr(eff, "gemm_call_overhead_s", 0.0)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else 0.0

    def _overhead(self, eff: EfficiencyModel | None) -> float:
        if eff is None:
            return 0.0
        value = getattr(eff, "launch_overhead_s", 0.0)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) and value > 0 else 0.0

    def launch_s(self, device: Device, op: str, unfused_kernels: int) -> float:
        """Serial launch overhead (seconds) of one call of ``op`` on ``device``: its kernel count under
        the device's `KernelExecution` times the per-kernel overhead (0 at roofline)."""
        eff = self.efficiency_for(device)
        if eff is None:
            return 0.0
        exe = self.execution_for(device)
        return exe.kernels(op, unfused_kernels) * exe.kernel_overhead_s(self._overhead(eff))

    # ---------------------------------------------------------------- generic GEMM-shaped op
    def _context(self, device: Device, weights_tier: str, act_tier: str, dtype: str) -> _Ctx:
        """Constants of (device, tiers, dtype) at this fidelity, cached per instance."""
        key = (id(device), weights_tier, act_tier, dtype)
        hit = self._ctx_cache.get(key)
        if hit is not None and hit[0] is device:
            return hit[1]
        eff = self.efficiency_for(device)
        if eff is not None and not isinstance(eff, DefaultEfficiency):
            eff = self._profile_at(eff, device, dtype)
        w_tier = device.tier(weights_tier)
        a_tier = device.tier(act_tier)
        peak = device.flops(dtype)
        if eff is None:
            ctx = _Ctx(
                eff=None,
                peak=peak,
                e_flop=device.energy_J_per_flop[dtype],
                static_W=device.static_power_W,
                w_bw=w_tier.bandwidth_Bps,
                w_e=w_tier.energy_J_per_byte,
                a_bw=a_tier.bandwidth_Bps,
                a_e=a_tier.energy_J_per_byte,
                overhead_s=0.0,
                gemm_ratio=1.0,
                trusted=True,
                tag="roofline",
            )
        else:
            ctx = _Ctx(
                eff=eff,
                # a serving stack's kernels (`with_compute_scale`): GPU compute at that share of the
                # curve's rate; memory, copies and the GEMV cap (a weight stream) are unchanged
                peak=peak * (self.compute_scale if device.kind == "gpu" else 1.0),
                # a profile under a power limit (`hwmodels.calibration.limit_power`) costs less per FLOP
                e_flop=device.energy_J_per_flop[dtype] * float(getattr(eff, "flop_energy_scale", 1.0)),
                static_W=device.static_power_W,
                w_bw=w_tier.bandwidth_Bps
                * self._mem_eff(eff, w_tier.bandwidth_Bps, measured_tier=weights_tier == device.weights_tier),
                w_e=w_tier.energy_J_per_byte,
                a_bw=a_tier.bandwidth_Bps
                * self._mem_eff(eff, a_tier.bandwidth_Bps, measured_tier=act_tier == device.weights_tier),
                a_e=a_tier.energy_J_per_byte,
                overhead_s=self.execution_for(device).kernel_overhead_s(self._overhead(eff)),
                gemm_ratio=self._peak_ratio(eff, "flops", peak),
                trusted=isinstance(eff, DefaultEfficiency),
                tag=f"calibrated:{eff.name}",
                curve=eff.curve_for(dtype) if type(eff) is DefaultEfficiency else None,
                gemv_rows=self._default(device.kind, params=device.efficiency).curve_for(dtype).gemv_max_rows,
                gemv_call_s=self._gemm_call_overhead(eff),
            )
        self._ctx_cache[key] = (device, ctx)
        return ctx

    @staticmethod
    def _ctx_gemm(ctx: _Ctx, m: Any, k: int, n: int) -> Any:
        assert ctx.eff is not None
        e = ctx.eff.gemm(m, k, n)
        if not ctx.trusted:
            e = _check_eff(e, ctx.eff.name, "gemm")
        if ctx.gemm_ratio != 1.0:
            e = np.minimum(e * ctx.gemm_ratio, 1.0)
        return e

    def _op(
        self,
        device: Device,
        *,
        op: str,
        rows: FloatArray,
        gemms: tuple[_Gemm, ...],
        extra_flops: Any,
        weight_bytes: float,
        weights_tier: str,
        act_bytes: Any,
        act_tier: str,
        n_kernels: int,
        dtype: str,
        label: str = "",
        dequant: DequantTerms | None = None,
        extra_dtype: str | None = None,
    ) -> OpCost:
        """Cost of an op made of GEMMs over ``rows`` tokens plus ``extra_flops`` (score FLOPs).

        The GEMMs run at ``dtype`` (the weights'); ``extra_flops`` at ``extra_dtype`` (default
        ``dtype``): attention's QK^T and PV products take the KV cache's precision, not the weights'.

        ``weight_bytes`` are read from ``weights_tier`` and ``act_bytes`` moved in ``act_tier``;
        the op is active (costs anything) where ``rows > 0``. ``dequant`` (from
        `hwmodels.dequant.dequant_terms`) adds the dequantisation of packed weights. Scalars run on
        Python floats (fast path for the simulator's one-off questions), arrays element-wise.
        """
        ctx = self._context(device, weights_tier, act_tier, dtype)
        cx = ctx if extra_dtype in (None, dtype) else self._context(device, weights_tier, act_tier, str(extra_dtype))
        split = cx is not ctx  # the extra FLOPs at another dtype's peak, curve and energy
        n_kernels = self.execution_for(device).kernels(op, n_kernels)
        scalar = rows.ndim == 0
        if scalar:
            r = float(rows)
            active: Any = 1.0 if r > 0 else 0.0
            m: Any = r
            extra: Any = float(extra_flops)
            a_bytes: Any = float(act_bytes) * active
        else:
            active = (rows > 0).astype(np.float64)
            m = rows
            extra = extra_flops
            a_bytes = act_bytes  # every op's activation bytes vanish with its rows
        w_bytes = weight_bytes * active
        total_flops = extra
        gemm_flops: Any = 0.0
        for g in gemms:
            total_flops = total_flops + g.flops_per_row * m
            gemm_flops = gemm_flops + g.flops_per_row * m
        if ctx.eff is None:
            compute = gemm_flops / ctx.peak + extra / cx.peak if split else total_flops / ctx.peak
            memory = w_bytes / ctx.w_bw + a_bytes / ctx.a_bw
        elif ctx.curve is not None:
            # default curve: efficiency depends on m only, t = FLOPs (m' + m_half) / (m' peak e_max), m' = max(m, 1)
            c = ctx.curve
            mm = max(m, 1.0) if scalar else np.maximum(m, 1.0)
            if split and cx.curve is not None:
                cc = cx.curve
                compute = gemm_flops * ((mm + c.m_half) / (mm * (ctx.peak * c.e_max))) + extra * (
                    (mm + cc.m_half) / (mm * (cx.peak * cc.e_max))
                )
            else:
                compute = total_flops * ((mm + c.m_half) / (mm * (ctx.peak * c.e_max)))
            memory = w_bytes * (1.0 / ctx.w_bw) + a_bytes * (1.0 / ctx.a_bw)
            if ctx.overhead_s:
                overhead = (n_kernels * ctx.overhead_s) * active
                compute = compute + overhead
                memory = memory + overhead
        else:
            compute = 0.0
            e0 = None
            for g in gemms:
                e = self._ctx_gemm(ctx, m, g.k, g.n)
                e0 = e if e0 is None else e0
                compute = compute + (g.flops_per_row * m) / (ctx.peak * e)
            if e0 is None:
                e0 = self._ctx_gemm(ctx, m, 128, 128)
            if split:
                k0, n0 = (gemms[0].k, gemms[0].n) if gemms else (128, 128)
                compute = compute + extra / (cx.peak * self._ctx_gemm(cx, m, k0, n0))
            else:
                compute = compute + extra / (ctx.peak * e0)
            memory = w_bytes / ctx.w_bw + a_bytes / ctx.a_bw
            if ctx.overhead_s:
                overhead = (n_kernels * ctx.overhead_s) * active
                compute = compute + overhead
                memory = memory + overhead
        if ctx.gemv_rows > 0:  # small-m GEMMs run as GEMVs: memory-bound at the achieved bandwidth
            cap = memory + (len(gemms) * ctx.gemv_call_s) * active if ctx.gemv_call_s else memory
            compute = _gemv_cap(compute, cap, m, ctx.gemv_rows, scalar)
        dq_J: Any = 0.0
        if dequant is not None:
            dq_c, serial, m_add, dq_J = self._dequant_add(device, ctx, dequant, m, active, scalar)
            compute = (max(compute, dq_c) if scalar else np.maximum(compute, dq_c)) + serial
            memory = memory + m_add + serial
        flop_J: Any = ctx.e_flop * gemm_flops + cx.e_flop * extra if split else ctx.e_flop * total_flops
        if scalar:
            compute, memory = float(compute), float(memory)
            total = max(compute, memory)
            energy = ctx.static_W * total + float(flop_J) + w_bytes * ctx.w_e + a_bytes * ctx.a_e + float(dq_J)
            return OpCost(
                compute_s=compute, memory_s=memory, comm_s=0.0, energy_J=float(energy), source=f"{ctx.tag}:{op}{label}"
            )
        compute = np.asarray(compute, dtype=np.float64)
        memory = np.asarray(memory, dtype=np.float64)
        if compute.shape != rows.shape:
            compute = np.broadcast_to(compute, rows.shape).copy()
        if memory.shape != rows.shape:
            memory = np.broadcast_to(memory, rows.shape).copy()
        total = np.maximum(compute, memory)
        energy = ctx.static_W * total + flop_J + w_bytes * ctx.w_e + a_bytes * ctx.a_e + dq_J
        return OpCost(
            compute_s=compute,
            memory_s=memory,
            comm_s=np.zeros(rows.shape),
            energy_J=np.asarray(energy, dtype=np.float64),
            source=f"{ctx.tag}:{op}{label}",
        )

    def _dequant_add(
        self, device: Device, ctx: _Ctx, dq: DequantTerms, rows: Any, active: Any, scalar: bool
    ) -> tuple[Any, Any, Any, Any]:
        """What dequantisation adds to an op over ``rows`` rows (see `hwmodels.dequant`), as
        ``(vector_s, serial_s, memory_s, energy_J)``: a fused format dequantises each weight tile once
        per ``rows_per_dequant`` rows on the vector units (``vector_s``, which overlaps the op's
        tensor-core compute: the caller takes ``max(compute, vector_s)``; assumption, as Marlin
        overlaps dequantisation with its MMAs) and moves its metadata bytes (``memory_s``); an
        unfused pass runs before the GEMM (``serial_s``, added to both compute and memory) and the
        GEMM reads the 16-bit copy (``memory_s``). Extra kernels pay the per-kernel overhead in
        ``serial_s`` (none at roofline). The vector units run at their peak at both fidelities
        (assumption: no measured efficiency). Energy: the extra bytes at the weights tier's energy,
        the lane-ops at the compute dtype's energy per FLOP (assumption)."""
        vec = vector_ops_per_s(device)
        if scalar:
            r = float(rows)
            tiles: Any = math.ceil(r / dq.rows_per_dequant) if r > 0 else 0.0
        else:
            tiles = np.where(rows > 0, np.ceil(rows / dq.rows_per_dequant), 0.0)
        serial = dq.kernels * ctx.overhead_s * active
        if dq.fused:
            ops = dq.ops_per_tile * tiles * active
            vector = ops / vec
            moved = dq.extra_bytes * active
        else:
            ops = dq.ops_per_tile * active
            vector = 0.0 * active
            serial = serial + max(dq.ops_per_tile / vec, dq.serial_bytes / ctx.w_bw) * active
            moved = (dq.serial_bytes + dq.extra_bytes) * active
        memory = (dq.extra_bytes / ctx.w_bw) * active
        energy = moved * ctx.w_e + ops * ctx.e_flop
        return vector, serial, memory, energy

    @staticmethod
    def _act_tier(device: Device) -> str:
        """Where activations live: the fastest tier on RDUs and FPGAs, the weights tier otherwise."""
        return device.tiers[0].name if device.kind in ("rdu", "fpga") else device.weights_tier

    @staticmethod
    def _ffn_gemms(model: MoEModel, width: int) -> tuple[_Gemm, ...]:
        d = model.d_model
        up_n = width * (model.matrices_per_expert - 1)
        return (_Gemm(2.0 * d * up_n, d, up_n), _Gemm(2.0 * width * d, width, d))

    @staticmethod
    def _ffn_act_bytes(model: MoEModel, rows: FloatArray, width: int) -> FloatArray:
        # input + output rows of d_model, intermediate written and read once (fused gate/up)
        return rows * ACTIVATION_BYTES * (2.0 * model.d_model + 2.0 * width)

    # ---------------------------------------------------------------- expert FFNs
    def expert_ffn(
        self, device: Device, model: MoEModel, n_tokens: ArrayLike, *, weights_tier: str | None = None
    ) -> OpCost:
        """One routed expert on ``n_tokens`` tokens; weights read once from ``weights_tier``
        (default ``device.weights_tier``). Vectorised over ``n_tokens``; zero tokens cost zero."""
        if isinstance(n_tokens, int | float | np.integer | np.floating):
            key = ("expert_ffn", id(device), id(model), float(n_tokens), weights_tier)
            hit = self._memo.get(key)
            if hit is not None and hit[0] is device and hit[2] is model:
                return hit[1]
        rows = _counts(n_tokens, "n_tokens")
        tier = weights_tier or device.weights_tier
        cost = self._op(
            device,
            op="expert_ffn",
            rows=rows,
            gemms=self._ffn_gemms(model, model.expert_ffn_dim),
            extra_flops=0.0,
            weight_bytes=model.bytes_per_expert,
            weights_tier=tier,
            act_bytes=self._ffn_act_bytes(model, rows, model.expert_ffn_dim),
            act_tier=self._act_tier(device),
            n_kernels=3,
            dtype=_dtype_for(device, model.weight_bytes_of("expert")),
            dequant=_component_dq(model, "expert", model.params_per_expert, model.matrices_per_expert),
        )
        if rows.ndim == 0:
            self._remember(("expert_ffn", id(device), id(model), float(rows), weights_tier), device, cost, model)
        return cost

    def experts_grouped(
        self,
        device: Device,
        model: MoEModel,
        tokens_per_expert: ArrayLike,
        *,
        weights_tier: str | None = None,
        active: ArrayLike | None = None,
    ) -> OpCost:
        """Several experts in one grouped call (one launch of each kernel for the group).

        ``tokens_per_expert`` is ``[..., E]``: one entry per expert along the last axis (zeros
        allowed: such experts read no weights); the result has the leading shape (a float `OpCost`
        for 1-D input). Each active expert's weights are read once; its GEMM efficiency is that of
        its own row count (a ragged grouped GEMM); the kernels' launch overhead is paid once per
        group with any active expert (the count of kernels follows the device's `KernelExecution`).

        Sums over the experts run left to right (`_rowsum`): experts with no tokens, wherever they
        are, change no bit of the answer.

        ``active`` (same shape, in [0, 1]; default ``tokens > 0``) makes it an expectation for the
        analytic model: expert ``e`` is in the group with probability ``active[..., e]`` and then
        has ``tokens_per_expert[..., e]`` tokens; the launches are paid with probability
        ``1 - prod(1 - active)``. (Assumption of that expectation: ``max(E[compute], E[memory])``
        stands for ``E[max(compute, memory)]``.)
        """
        rows = _counts(tokens_per_expert, "tokens_per_expert")
        if rows.ndim == 0:
            rows = rows.reshape(1)
        if active is None:
            w = (rows > 0).astype(np.float64)
            p_any = (np.count_nonzero(rows, axis=-1) > 0).astype(np.float64)
        else:
            a = _counts(active, "active")
            if a.size and float(a.max()) > 1.0 + 1e-12:
                raise ValueError(f"active must be probabilities in [0, 1], got max {float(a.max())!r}")
            w = np.broadcast_to(np.minimum(a, 1.0), rows.shape)
            w = np.where(rows > 0, w, 0.0)
            p_any = 1.0 - np.prod(1.0 - w, axis=-1)
        tier = weights_tier or device.weights_tier
        dtype = _dtype_for(device, model.weight_bytes_of("expert"))
        ctx = self._context(device, tier, self._act_tier(device), dtype)
        source = f"{ctx.tag}:experts_grouped"
        flops_per_row = float(model.expert_flops_per_token)
        if ctx.eff is not None and ctx.curve is None:  # a calibration profile: element-wise efficiencies
            per = self._op(
                device,
                op="experts_grouped",
                rows=rows,
                gemms=self._ffn_gemms(model, model.expert_ffn_dim),
                extra_flops=0.0,
                weight_bytes=model.bytes_per_expert,
                weights_tier=tier,
                act_bytes=self._ffn_act_bytes(model, rows, model.expert_ffn_dim),
                act_tier=self._act_tier(device),
                n_kernels=0,
                dtype=dtype,
            )
            compute = _rowsum(w * np.asarray(per.compute_s))
        elif ctx.curve is None:
            compute = _rowsum(w * rows) * flops_per_row / ctx.peak
        else:
            c = ctx.curve
            mm = np.maximum(rows, 1.0)
            per_expert = flops_per_row * rows * (mm + c.m_half) / mm / (ctx.peak * c.e_max)
            if ctx.gemv_rows > 0:  # experts with few rows run as GEMVs: capped at their own memory time
                mem_e = (
                    model.bytes_per_expert / ctx.w_bw
                    + self._ffn_act_bytes(model, rows, model.expert_ffn_dim) / ctx.a_bw
                )
                per_expert = _gemv_cap(per_expert, mem_e, rows, ctx.gemv_rows, False)
            compute = _rowsum(w * per_expert)
        total_rows = _rowsum(w * rows)
        flops = total_rows * flops_per_row
        w_bytes = _rowsum(w) * model.bytes_per_expert
        a_bytes = total_rows * ACTIVATION_BYTES * (2.0 * model.d_model + 2.0 * model.expert_ffn_dim)
        memory = w_bytes / ctx.w_bw + a_bytes / ctx.a_bw
        kernels = self.execution_for(device).kernels("experts_grouped", 3)
        overhead = kernels * ctx.overhead_s * p_any  # one grouped launch of each kernel
        compute = compute + overhead
        memory = memory + overhead
        dq_J: Any = 0.0
        dq = _component_dq(model, "expert", model.params_per_expert, model.matrices_per_expert)
        if dq is not None:  # each active expert dequantises its own weights (expected over ``active``)
            dq_c, serial, m_add, j_add = self._dequant_add(device, ctx, dq, rows, w, False)
            serial_sum = _rowsum(serial)
            compute = np.maximum(compute, _rowsum(dq_c)) + serial_sum
            memory = memory + _rowsum(m_add) + serial_sum
            dq_J = _rowsum(j_add)
        energy = (
            ctx.static_W * np.maximum(compute, memory)
            + ctx.e_flop * flops
            + w_bytes * ctx.w_e
            + a_bytes * ctx.a_e
            + dq_J
        )
        if np.ndim(tokens_per_expert) <= 1:
            return OpCost(
                compute_s=float(compute), memory_s=float(memory), comm_s=0.0, energy_J=float(energy), source=source
            )
        return OpCost(
            compute_s=np.asarray(compute, dtype=np.float64),
            memory_s=np.asarray(memory, dtype=np.float64),
            comm_s=np.zeros(np.shape(compute)),
            energy_J=np.asarray(energy, dtype=np.float64),
            source=source,
        )

    def shared_experts(self, device: Device, model: MoEModel, n_tokens: ArrayLike) -> OpCost:
        """All shared experts of one MoE layer on ``n_tokens`` tokens, as one fused FFN of width
        ``n_shared_experts x shared_ffn_dim`` (zero for models without shared experts)."""
        rows = _counts(n_tokens, "n_tokens")
        width = model.n_shared_experts * model.shared_ffn_dim
        if width == 0:
            rows = np.zeros_like(rows)
            width = 1
        return self._op(
            device,
            op="shared_experts",
            rows=rows,
            gemms=self._ffn_gemms(model, width),
            extra_flops=0.0,
            weight_bytes=model.bytes_shared_experts,
            weights_tier=device.weights_tier,
            act_bytes=self._ffn_act_bytes(model, rows, width),
            act_tier=self._act_tier(device),
            n_kernels=3,
            dtype=_dtype_for(device, model.weight_bytes_of("shared")),
            dequant=_component_dq(model, "shared", model.params_shared_experts, model.matrices_per_expert),
        )

    def router(self, device: Device, model: MoEModel, n_tokens: ArrayLike) -> OpCost:
        """The router (gate GEMM ``d_model x n_experts`` and top-k) of one MoE layer on ``n_tokens``."""
        rows = _counts(n_tokens, "n_tokens")
        e = model.n_experts
        act = rows * (ACTIVATION_BYTES * model.d_model + 4.0 * e)  # fp32 logits
        return self._op(
            device,
            op="router",
            rows=rows,
            gemms=(_Gemm(2.0 * model.d_model * e, model.d_model, e),),
            extra_flops=0.0,
            weight_bytes=model.router_bytes,
            weights_tier=device.weights_tier,
            act_bytes=act,
            act_tier=self._act_tier(device),
            n_kernels=2,
            dtype=_dtype_for(device, model.weight_bytes_of("dense")),
            dequant=_component_dq(model, "dense", model.router_params, 1),
        )

    def lm_head(self, device: Device, model: MoEModel, n_sequences: ArrayLike) -> OpCost:
        """The LM head and sampling of one step for ``n_sequences`` sequences that emit a token.

        The final hidden row of each sequence (``d_model``) times the unembedding
        (``d_model x vocab_size``, weights read once per step from ``device.weights_tier`` at the
        model's ``embedding`` precision, with its format's dequantisation), then the sampler
        (argmax / softmax / top-k) over fp32 logits, which are written once and read back:
        memory-bound, so its FLOPs are neglected and only its
        bytes are charged. Two kernels (GEMM, sampling). Only sequences that emit a token need it
        (decode tokens and the last chunk of a prompt). Vectorised; zero sequences cost zero.
        """
        rows = _counts(n_sequences, "n_sequences")
        d, v = model.d_model, model.vocab_size
        act = rows * (ACTIVATION_BYTES * d + 2.0 * 4.0 * v)  # hidden rows in; fp32 logits written + read
        return self._op(
            device,
            op="lm_head",
            rows=rows,
            gemms=(_Gemm(2.0 * d * v, d, v),),
            extra_flops=0.0,
            weight_bytes=model.lm_head_bytes,
            weights_tier=device.weights_tier,
            act_bytes=act,
            act_tier=self._act_tier(device),
            n_kernels=2,
            dtype=_dtype_for(device, model.weight_bytes_of("embedding")),
            dequant=_component_dq(model, "embedding", model.params_lm_head, 1),
        )

    def cpu_expert(self, host: Device, model: MoEModel, n_tokens: ArrayLike) -> OpCost:
        """An expert computed on the host CPU (Fiddler), weights in the host's DRAM."""
        if host.kind != "cpu":
            raise ValueError(f"cpu_expert needs a CPU device, got {host.name!r} of kind {host.kind!r}")
        return self.expert_ffn(host, model, n_tokens)

    def rdu_expert(self, device: Device, model: MoEModel, n_tokens: ArrayLike, *, weights_tier: str) -> OpCost:
        """An expert on an RDU with its weights in ``weights_tier`` (``"sram"``, ``"hbm"`` or ``"ddr"``);
        activations stay in SRAM. Compute at the RDU's bf16 peak (638 TFLOP/s for the SN40L [P])."""
        if device.kind != "rdu":
            raise ValueError(f"rdu_expert needs an RDU device, got {device.name!r} of kind {device.kind!r}")
        if not device.has_tier(weights_tier):
            raise ValueError(
                f"rdu_expert: weights_tier {weights_tier!r} is not a tier of {device.name!r}; "
                f"tiers: {[t.name for t in device.tiers]}"
            )
        return self.expert_ffn(device, model, n_tokens, weights_tier=weights_tier)

    # ---------------------------------------------------------------- attention
    def _attn_shape(self, model: MoEModel) -> tuple[float, float, float]:
        """(score FLOPs factor per query per key, KV bytes per token per layer, proj width)."""
        h = model.n_heads
        if model.attention == "mla":
            qk = model.qk_nope_head_dim + model.qk_rope_head_dim
            score = 2.0 * h * (qk + model.v_head_dim)
            kv = (model.kv_lora_rank + model.qk_rope_head_dim) * model.kv_bytes_per_elem
        else:
            score = 2.0 * h * 2.0 * model.head_dim
            kv = 2.0 * model.n_kv_heads * model.head_dim * model.kv_bytes_per_elem
        return score, kv, float(model.params_attention) / model.d_model

    def attention_prefill(self, device: Device, model: MoEModel, n_tokens: ArrayLike) -> OpCost:
        """Self-attention of one layer over a prompt of ``n_tokens`` tokens (causal, flash-style:
        the score matrix is not stored): projections plus ``n^2/2`` query-key pairs, KV written once.
        MLA is approximated as attention over decompressed heads (labelled ``[MLA approx]``)."""
        rows = _counts(n_tokens, "n_tokens")
        score, kv, _ = self._attn_shape(model)
        proj = float(model.attention_flops_per_token_proj)
        extra = score * rows * rows / 2.0
        act = rows * (4.0 * ACTIVATION_BYTES * model.d_model + kv)
        label = "[MLA approx: decompressed heads]" if model.attention == "mla" else ""
        d = model.d_model
        return self._op(
            device,
            op="attention_prefill",
            rows=rows,
            gemms=(_Gemm(proj, d, max(1, int(model.params_attention // d))),),
            extra_flops=extra,
            weight_bytes=model.attention_bytes,
            weights_tier=device.weights_tier,
            act_bytes=act,
            act_tier=self._act_tier(device),
            n_kernels=4,
            dtype=_dtype_for(device, model.weight_bytes_of("attention")),
            label=label,
            dequant=_component_dq(model, "attention", model.params_attention, 4),
            extra_dtype=_dtype_for(device, model.kv_bytes_per_elem),
        )

    def attention_decode(
        self, device: Device, model: MoEModel, batch_size: ArrayLike, context_len: ArrayLike
    ) -> OpCost:
        """Self-attention of one layer for ``batch_size`` decode tokens whose KV caches hold
        ``context_len`` tokens on average: projections, ``batch x context`` query-key pairs, and the
        whole KV cache read. MLA uses the absorbed form (scores over the compressed latent; labelled)."""
        b = _counts(batch_size, "batch_size")
        c = _counts(context_len, "context_len")
        b, c = np.broadcast_arrays(b, c)
        b = np.array(b, dtype=np.float64)
        c = np.array(c, dtype=np.float64)
        if model.attention == "mla":
            h, r, rope = model.n_heads, model.kv_lora_rank, model.qk_rope_head_dim
            score = 2.0 * h * (2.0 * r + rope)
            kv = (r + rope) * model.kv_bytes_per_elem
            label = "[MLA approx: absorbed latent attention]"
        else:
            score, kv, _ = self._attn_shape(model)
            label = ""
        proj = float(model.attention_flops_per_token_proj)
        extra = score * b * c
        act = np.where(b > 0, b * (4.0 * ACTIVATION_BYTES * model.d_model) + b * c * kv, 0.0)
        d = model.d_model
        return self._op(
            device,
            op="attention_decode",
            rows=b,
            gemms=(_Gemm(proj, d, max(1, int(model.params_attention // d))),),
            extra_flops=extra,
            weight_bytes=model.attention_bytes,
            weights_tier=device.weights_tier,
            act_bytes=act,
            act_tier=device.weights_tier,
            n_kernels=4,
            dtype=_dtype_for(device, model.weight_bytes_of("attention")),
            label=label,
            dequant=_component_dq(model, "attention", model.params_attention, 4),
            extra_dtype=_dtype_for(device, model.kv_bytes_per_elem),
        )

    # ---------------------------------------------------------------- links
    def _copy_eff(self, link: Link, sizes: FloatArray, pinned: bool) -> tuple[Any, str]:
        """Copy efficiency over ``link`` and the name of the model that gave it.

        Order: a profile keyed by the link's name; on the platform's host link, the first
        accelerator's profile when it measured copies (a local calibration beats literature points);
        the link's measured points (`LinkCurve`); the default constant. Profiles without copy
        measurements raise `LookupError` and are skipped.
        """
        candidates = [self.profiles.get(link.name)]
        host_link = self.platform.host_link
        if host_link is not None and (link is host_link or link.name == host_link.name):
            candidates.append(self.profiles.get(self.platform.accelerators[0].name))
        for prof in candidates:
            if prof is None:
                continue
            try:
                e = _check_eff(prof.copy(sizes, pinned=pinned), prof.name, "copy")
            except LookupError:
                continue
            return np.minimum(e * self._peak_ratio(prof, "link_Bps", link.bandwidth_Bps), 1.0), prof.name
        default = self._link_default(link)
        return default.copy(sizes, pinned=pinned), default.name

    def _link_default(self, link: Link) -> DefaultEfficiency:
        key = ("link", link)  # the link itself (frozen, hashable): two links of one name differ by their numbers
        eff = self._defaults.get(key)
        if eff is None:
            eff = self._defaults[key] = DefaultEfficiency("gpu", link)
            eff.name = f"link-curve:{link.name}"
        return eff

    def _link_eff(self, link: Link, n_bytes: FloatArray, pinned: bool = True) -> tuple[Any, str]:
        """Achieved / peak rate for transfers of ``n_bytes`` (1 at roofline) and the answering tag."""
        if self.fidelity == "roofline":
            return 1.0, "roofline"
        eff, name = self._copy_eff(link, n_bytes, pinned)
        return eff, f"calibrated:{name}"

    def _link_time(self, link: Link, message_bytes: FloatArray, pinned: bool = True) -> tuple[FloatArray, str]:
        """Time of one message of ``message_bytes`` (0 for 0 bytes) and the answering model's tag."""
        if message_bytes.ndim == 0:
            n = float(message_bytes)
            e_s, tag = self._link_eff(link, n, pinned)  # type: ignore[arg-type]
            t_s = link.latency_s + n / (link.bandwidth_Bps * float(e_s)) if n > 0 else 0.0
            return t_s, tag  # type: ignore[return-value]
        eff, tag = self._link_eff(link, message_bytes, pinned)
        t = np.where(message_bytes > 0, link.latency_s + message_bytes / (link.bandwidth_Bps * eff), 0.0)
        return t, tag

    @staticmethod
    def _link_cost(comm: FloatArray, moved_bytes: FloatArray, link: Link, tag: str, op: str) -> OpCost:
        zero = np.zeros_like(comm)
        return OpCost(
            compute_s=_out(zero),
            memory_s=_out(zero),
            comm_s=_out(comm),
            energy_J=_out(moved_bytes * link.energy_J_per_byte),
            source=f"{tag}:{op}",
        )

    def transfer(self, link: Link, n_bytes: ArrayLike, *, pinned: bool = True) -> OpCost:
        """A copy of ``n_bytes`` over ``link``: latency plus size-dependent efficiency (``comm_s``).
        ``pinned=False`` models pageable host memory."""
        if isinstance(n_bytes, int | float | np.integer | np.floating):
            key = ("transfer", id(link), float(n_bytes), pinned)
            hit = self._memo.get(key)
            if hit is not None and hit[0] is link:
                return hit[1]
        n = _counts(n_bytes, "n_bytes")
        t, tag = self._link_time(link, n, pinned)
        cost = self._link_cost(t, n, link, tag, "transfer")
        if n.ndim == 0:
            self._remember(("transfer", id(link), float(n), pinned), link, cost)
        return cost

    def _call_latency(self, link: Link, call_latency_s: float | None) -> float:
        """Fixed cost of one collective call (0 at roofline): ``call_latency_s`` when given (a serving
        stack's collective library), else the link's ``collective_latency_s``."""
        if self.fidelity == "roofline":
            return 0.0
        value = link.collective_latency_s if call_latency_s is None else call_latency_s
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ValueError(f"call_latency_s must be finite and >= 0 seconds, got {value!r}")
        return float(value)

    def all_to_all(
        self, link: Link, bytes_per_device: ArrayLike, n_devices: int, *, call_latency_s: float | None = None
    ) -> OpCost:
        """All-to-all dispatch (or combine) of ``bytes_per_device`` from each of ``n_devices`` devices
        over a switched ``link`` (NVSwitch-like: every device sends at the full per-direction rate).

        Each device sends ``(n-1)/n`` of its bytes (and receives as much; a half-duplex link carries
        both, so it takes twice as long); one collective call pays the link latency once.
        Calibrated: the link efficiency at the bytes each device sends, plus the per-call fixed latency
        of the collective (``call_latency_s``, default the link's ``collective_latency_s``: kernel
        launch and cross-rank synchronisation, which bind small messages). Energy counts every
        device's traffic. One device, or zero bytes, costs zero.
        """
        n = _counts(bytes_per_device, "bytes_per_device")
        devices = self._n_devices(n_devices)
        share = n * (devices - 1) / devices
        wire = share if link.duplex else 2.0 * share  # half duplex: sends and receives share the wire
        eff, tag = self._link_eff(link, share)
        fixed = link.latency_s + self._call_latency(link, call_latency_s)
        t = np.where(share > 0, fixed + wire / (link.bandwidth_Bps * eff), 0.0)
        return self._link_cost(t, share * devices, link, tag, "all_to_all")

    def all_to_all_nodes(
        self,
        link: Link,
        scale_out: Link,
        bytes_per_device: ArrayLike,
        n_devices: int,
        devices_per_node: int,
        *,
        call_latency_s: float | None = None,
    ) -> OpCost:
        """All-to-all of ``bytes_per_device`` from each of ``n_devices`` devices spread over nodes of
        ``devices_per_node``: the destinations on the same node are reached over ``link`` (the node's
        NVLink / NVSwitch), the others over ``scale_out`` (each device's own NIC).

        With uniform destinations a device sends ``(g-1)/n`` of its bytes inside its node and
        ``(n-g)/n`` across nodes (``g = devices_per_node``; ``1/n`` stays local). The two paths run
        concurrently (DeepEP's kernels issue NVLink and RDMA writes at once: DeepEP docs/legacy.md),
        so a call lasts the slower path, each at its link's efficiency for the bytes it carries, plus
        one fixed cost: the larger of the two link latencies and the per-call latency
        (``call_latency_s``, default ``scale_out``'s ``collective_latency_s``). ``devices_per_node``
        must divide ``n_devices``; equal to it, this is `all_to_all` over ``link``. Energy counts every
        device's bytes on each path at that link's energy per byte.
        """
        devices = self._n_devices(n_devices)
        g = self._n_devices(devices_per_node)
        if devices % g:
            raise ValueError(f"devices_per_node ({g}) must divide n_devices ({devices})")
        if g == devices:
            return self.all_to_all(link, bytes_per_device, devices, call_latency_s=call_latency_s)
        n = _counts(bytes_per_device, "bytes_per_device")
        off = n * (devices - 1) / devices  # the bytes that leave the device
        intra = off * intranode_share(devices, g)
        parts = []
        for lk, share in ((link, intra), (scale_out, off - intra)):
            wire = share if lk.duplex else 2.0 * share
            eff, tag = self._link_eff(lk, share)
            parts.append((np.where(share > 0, wire / (lk.bandwidth_Bps * eff), 0.0), share, lk, tag))
        fixed = max(link.latency_s, scale_out.latency_s) + self._call_latency(scale_out, call_latency_s)
        t = np.where(n > 0, fixed + np.maximum(parts[0][0], parts[1][0]), 0.0)
        energy = sum(share * devices * lk.energy_J_per_byte for _, share, lk, _ in parts)
        return OpCost(
            compute_s=_out(np.zeros_like(t)),
            memory_s=_out(np.zeros_like(t)),
            comm_s=_out(t),
            energy_J=_out(np.asarray(energy, dtype=np.float64)),
            source=f"{parts[0][3]}+{parts[1][3]}:all_to_all_nodes",
        )

    def ep_all_to_all(
        self, bytes_per_device: ArrayLike, n_devices: int, *, call_latency_s: float | None = None
    ) -> OpCost:
        """An all-to-all among the first ``n_devices`` accelerators of this cost model's platform:
        `all_to_all` over its peer link, or `all_to_all_nodes` (peer link inside a node, scale-out
        link between) when the group spans several nodes of a multi-node platform
        (`hwmodels.devices.Platform.nodes_of`). ``ValueError`` when the platform has no peer link."""
        plat = self.platform
        if plat.peer_link is None:
            raise ValueError(f"platform {plat.name!r} has no peer link for an all-to-all")
        per_node = plat.nodes_of(n_devices)
        if per_node is None or plat.scale_out_link is None:
            return self.all_to_all(plat.peer_link, bytes_per_device, n_devices, call_latency_s=call_latency_s)
        return self.all_to_all_nodes(
            plat.peer_link, plat.scale_out_link, bytes_per_device, n_devices, per_node, call_latency_s=call_latency_s
        )

    def all_reduce(
        self, link: Link, n_bytes: ArrayLike, n_devices: int, *, call_latency_s: float | None = None
    ) -> OpCost:
        """All-reduce of ``n_bytes`` per device across ``n_devices`` over a switched ``link`` (ring
        bandwidth term: each device sends and receives ``2(n-1)/n x bytes``).

        Roofline: one link latency plus the ring bytes at peak (a lower bound of NCCL all-reduce
        times measured on DGX A100 and H100 nodes). Calibrated: the per-call fixed latency
        (``call_latency_s``, default the link's ``collective_latency_s``), ``(n-1)`` link latencies
        (ring steps that the protocol cannot hide for small messages) plus the ring bytes at the
        link's measured efficiency for that size; checked against the Vidur NCCL all-reduce tables in
        the tests.
        """
        n = _counts(n_bytes, "n_bytes")
        devices = self._n_devices(n_devices)
        share = 2.0 * n * (devices - 1) / devices
        wire = share if link.duplex else 2.0 * share
        eff, tag = self._link_eff(link, share)
        latency = link.latency_s * (1 if self.fidelity == "roofline" else devices - 1)
        latency += self._call_latency(link, call_latency_s)
        t = np.where(share > 0, latency + wire / (link.bandwidth_Bps * eff), 0.0)
        return self._link_cost(t, share * devices, link, tag, "all_reduce")

    @staticmethod
    def _n_devices(n_devices: int) -> int:
        if isinstance(n_devices, bool) or not isinstance(n_devices, int | np.integer) or n_devices < 1:
            raise ValueError(f"n_devices must be a positive int, got {n_devices!r}")
        return int(n_devices)

    def tier_copy(self, device: Device, src: str, dst: str, n_bytes: ArrayLike) -> OpCost:
        """A copy of ``n_bytes`` between two memory tiers of one device (e.g. an SN40L's DDR -> HBM, or
        a GPU's HBM -> L2), in ``comm_s``: the slower tier's latency plus the bytes at the slower
        tier's bandwidth (times the device's memory efficiency when calibrated). Energy: the bytes
        read out of ``src`` and written into ``dst`` (each at its tier's energy per byte)."""
        n = _counts(n_bytes, "n_bytes")
        a, b = device.tier(src), device.tier(dst)
        slow = a if a.bandwidth_Bps <= b.bandwidth_Bps else b
        eff = self.efficiency_for(device)
        rate = slow.bandwidth_Bps * (
            self._mem_eff(eff, slow.bandwidth_Bps, measured_tier=slow.name == device.weights_tier)
            if eff is not None
            else 1.0
        )
        t = np.where(n > 0, slow.latency_s + n / rate, 0.0)
        energy = n * (a.energy_J_per_byte + b.energy_J_per_byte) + device.static_power_W * t
        zero = np.zeros_like(n)
        return OpCost(
            compute_s=_out(zero),
            memory_s=_out(zero),
            comm_s=_out(t),
            energy_J=_out(energy),
            source=self._tag(eff, f"tier_copy[{src}->{dst}]"),
        )

    # ---------------------------------------------------------------- FPGA
    def fpga_expert(self, device: Device, model: MoEModel, n_tokens: ArrayLike, *, reorder: bool) -> OpCost:
        """One expert on an FPGA over its queue of ``n_tokens`` tokens, in the steady state of a
        double-buffered stream of experts (the next expert's weights load while this one computes).

        Compute is DSP-bound: ``FLOPs / (dsp_count x macs_per_dsp_per_cycle x clock x 2)``.
        ``reorder=True`` (M3ViT): the expert's weights stream from off-chip once for its whole token
        queue. ``reorder=False``: per-token execution reloads the weights for every token, unless the
        whole layer's experts fit in the on-chip buffer (then they load once). ``memory_s`` is the
        off-chip weight stream (see `offchip_bytes`); ``total_s = max(compute, stream)`` per expert.
        The pipeline fill (first weight load) is paid once per layer: see `fpga_layer`.
        """
        if device.kind != "fpga":
            raise ValueError(f"fpga_expert needs an FPGA device, got {device.name!r} of kind {device.kind!r}")
        rows = _counts(n_tokens, "n_tokens")
        eff = self.efficiency_for(device)
        dtype = _dtype_for(device, model.weight_bytes_of("expert"))
        peak = device.dsp_peak_flops
        tier = device.weights_memory
        flops = rows * model.expert_flops_per_token
        traffic = offchip_bytes(device, model, rows, reorder=reorder)
        if eff is None:
            compute = flops / peak
            memory = traffic / tier.bandwidth_Bps
        else:
            compute = flops / (peak * self._gemm_eff(eff, device, dtype, rows, model.d_model, model.expert_ffn_dim))
            memory = traffic / (tier.bandwidth_Bps * self._mem_eff(eff, tier.bandwidth_Bps))
        total = np.maximum(compute, memory)
        onchip = device.tiers[0]
        act = rows * ACTIVATION_BYTES * 2.0 * (model.d_model + model.expert_ffn_dim)
        energy = (
            device.static_power_W * total
            + device.energy_J_per_flop[dtype] * flops
            + traffic * tier.energy_J_per_byte
            + (traffic + act) * onchip.energy_J_per_byte
        )
        label = "reordered" if reorder else "per-token"
        return OpCost(
            compute_s=_out(compute),
            memory_s=_out(memory),
            comm_s=_out(np.zeros_like(rows)),
            energy_J=_out(energy),
            source=self._tag(eff, f"fpga_expert[{label}]"),
        )

    def fpga_first_load_s(self, device: Device, model: MoEModel) -> float:
        """Pipeline fill of the double buffer: one buffer half (or the whole expert if smaller) loaded
        from off-chip before the first expert can start (seconds)."""
        tier = device.weights_memory
        eff = self.efficiency_for(device)
        bw = tier.bandwidth_Bps * (self._mem_eff(eff, tier.bandwidth_Bps) if eff is not None else 1.0)
        tile = min(model.bytes_per_expert, device.on_chip_buffer_bytes / 2.0)
        return tier.latency_s + tile / bw

    def fpga_layer(self, device: Device, model: MoEModel, tokens_per_expert: ArrayLike, *, reorder: bool) -> OpCost:
        """A whole MoE layer on an FPGA: the experts with tokens run one after the other, double-
        buffered, plus one pipeline fill (in ``comm_s``, labelled: it is an off-chip load, not a link).
        Scalar `OpCost`."""
        rows = _counts(tokens_per_expert, "tokens_per_expert").ravel()
        per = self.fpga_expert(device, model, rows, reorder=reorder)
        busy = rows > 0
        fill = self.fpga_first_load_s(device, model) if np.any(busy) else 0.0
        compute = float(np.sum(per.compute_s))
        memory = float(np.sum(per.memory_s))
        steady = float(np.sum(np.maximum(per.compute_s, per.memory_s)))
        # comm_s carries the fill plus the part of the per-expert overlap that max(sum, sum) hides
        comm = fill + steady - max(compute, memory)
        energy = float(np.sum(per.energy_J)) + device.static_power_W * fill
        return OpCost(
            compute_s=compute,
            memory_s=memory,
            comm_s=comm,
            energy_J=energy,
            source=per.source.replace("fpga_expert", "fpga_layer") + "(comm_s=pipeline fill)",
        )


def offchip_bytes(device: Device, model: MoEModel, n_tokens: ArrayLike, *, reorder: bool) -> FloatArray | float:
    """Off-chip weight bytes one FPGA expert reads for a queue of ``n_tokens`` tokens.

    ``reorder=True``: the weights once (if any token). ``reorder=False``: once per token, unless all
    ``n_experts`` experts of a layer fit in ``device.on_chip_buffer_bytes`` (then once). Token
    activations stay on chip (assumption: a ViT-sized token queue fits in URAM).
    """
    rows = _counts(n_tokens, "n_tokens")
    w = model.bytes_per_expert
    resident = model.n_experts * w <= device.on_chip_buffer_bytes
    if reorder or resident:
        out = np.where(rows > 0, w, 0.0)
    else:
        out = rows * w
    return _out(out)
