"""Calibration profiles: measured kernel timings, fitted efficiency curves, JSON files.

A :class:`CalibrationProfile` holds what a calibration measured on one device (raw samples, each
marked as used for fitting or held out for validation), the reference peaks its efficiencies are
relative to, and the fitted parameters. It implements the ``EfficiencyModel`` protocol of
:mod:`hwmodels.costs` (``gemm``, ``memory``, ``copy``, ``name``) and predicts times directly
(:meth:`CalibrationProfile.predict_gemm_s`, :meth:`~CalibrationProfile.predict_ffn_s`, ...).

Models fitted (all in log space with a robust soft-L1 loss, :func:`scipy.optimize.least_squares`):

GEMM, ``(m x k) @ (k x n)``, ``F = 2 m k n`` FLOPs and ``Q = b (m k + k n + m n)`` bytes at ``b``
bytes per element::

    t(m, k, n) = t0 + (tc^p + tm^p)^(1/p)
    tc = F / (peak_flops * e_c * occ),   occ = m n / (m n + s_half)       (compute, with occupancy)
    tm = Q / B_gemm                                                        (operand streaming)

``t0`` is a per-call overhead (launch), ``e_c`` in (0, 1] the best compute efficiency, ``s_half``
the output size (m x n elements) at which half the device is busy, ``B_gemm`` the bandwidth at which
operands stream, and ``p >= 1`` the sharpness of the compute/memory transition (``p -> inf`` is the
roofline max). ``t`` is monotone non-decreasing in m, and ``t >= F / peak_flops``, so the GEMM
efficiency ``F / (peak_flops * t)`` lies in (0, 1]: a calibrated cost is never below the roofline.

Memory and copies: ``t(bytes) = t0 + bytes / B`` (one fit for memory-bound streaming kernels, one
per pinned/pageable host<->device copy); efficiencies are ``bytes / t / peak`` clipped to (0, 1].

Derived profiles (:func:`derive_profile`: ``h200``, ``h100-nvl``, ``h100-pcie``, ``gh200`` from
``h100``) keep the GEMM curve and scale the compute and memory peaks by the devices' ratios. A
profile may carry a :class:`PowerLaw` (the ``h100`` one does): the compute rate under a power limit,
``(limit / power_W) ** exponent`` below the power it describes, with the exponent fitted on
power-limited measurements (``codesign validate-e2e --fit-power``); :func:`limit_power` applies a
limit, and a derived profile takes the smaller of its datasheet ratio and its own TDP's rate.

This module does not import torch (measurements come from :mod:`hwmodels.calibrate_run` and
:mod:`hwmodels.vidur_import`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

log = logging.getLogger(__name__)

#: File format tag and version of profile JSON files (bumped on incompatible changes).
FORMAT_TAG = "moe-codesign-calibration"
FORMAT_VERSION = 1

#: Required shape keys of each sample kind (``time_s`` is the median measured time, seconds).
SAMPLE_KINDS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "k", "n"),  # (m x k) @ (k x n)
    "ffn": ("m", "d", "f"),  # one gated expert FFN: m tokens, d_model d, hidden f
    "grouped": ("tokens", "d", "f"),  # several gated experts, tokens[i] routed to expert i
    "memory": ("n_bytes",),  # a memory-bound kernel moving n_bytes (read + write)
    "copy": ("n_bytes", "pinned"),  # a host -> device copy of n_bytes
}

#: Ops of memory samples that get their own fit: a plain streaming kernel (copy, add) and the
#: gated activation ``silu(g) * u`` of an expert FFN (reads two m x f tensors, writes one).
MEMORY_OPS = ("stream", "act")

FloatArray = npt.NDArray[np.float64]


class CalibrationError(ValueError):
    """A malformed profile, an unusable measurement set, or a fit that cannot be done."""


class MissingCalibrationError(LookupError):
    """The profile has no measurements for the quantity asked (e.g. copies on a CPU profile)."""


# ----------------------------------------------------------------------------------------------
# Samples and fitted parameters
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One measured kernel configuration.

    ``kind`` is a key of :data:`SAMPLE_KINDS` and ``shape`` holds that kind's keys; ``op`` names
    what was run (``"up"``, ``"down"``, ``"qkv"``, ``"memcpy"``, ...). ``time_s`` is the median of
    ``repeats`` timed runs after outlier rejection, ``spread_s`` their median absolute deviation.
    ``heldout`` marks samples kept out of the fit for validation. ``tag`` is free provenance
    (e.g. ``"tp=4"``).
    """

    kind: str
    op: str
    shape: Mapping[str, Any]
    time_s: float
    repeats: int = 1
    spread_s: float = 0.0
    heldout: bool = False
    tag: str = ""

    def __post_init__(self) -> None:
        if self.kind not in SAMPLE_KINDS:
            raise CalibrationError(f"sample kind {self.kind!r} unknown; expected one of {sorted(SAMPLE_KINDS)}")
        missing = [key for key in SAMPLE_KINDS[self.kind] if key not in self.shape]
        if missing:
            raise CalibrationError(f"{self.kind} sample {self.op!r}: shape lacks {missing} (has {sorted(self.shape)})")
        if not (isinstance(self.time_s, int | float) and math.isfinite(self.time_s) and self.time_s > 0):
            raise CalibrationError(
                f"{self.kind} sample {self.op!r}: time_s must be a positive finite number, got {self.time_s!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "op": self.op,
            "shape": dict(self.shape),
            "time_s": self.time_s,
            "repeats": self.repeats,
            "spread_s": self.spread_s,
            "heldout": self.heldout,
            "tag": self.tag,
        }


@dataclass(frozen=True, kw_only=True)
class GemmFit:
    """Fitted GEMM time model (see the module docstring); units in the names."""

    t0_s: float
    eff_compute: float
    bandwidth_Bps: float
    sharpness: float
    half_occupancy_elems: float

    def predict_s(
        self, m: npt.ArrayLike, k: npt.ArrayLike, n: npt.ArrayLike, *, peak_flops: float, dtype_bytes: float
    ) -> FloatArray:
        """Predicted seconds of ``(m x k) @ (k x n)`` GEMMs (broadcast over array arguments)."""
        mf = np.asarray(m, dtype=np.float64)
        kf = np.asarray(k, dtype=np.float64)
        nf = np.asarray(n, dtype=np.float64)
        return _gemm_time(
            mf,
            kf,
            nf,
            self.t0_s,
            self.eff_compute,
            self.bandwidth_Bps,
            self.sharpness,
            self.half_occupancy_elems,
            peak_flops,
            dtype_bytes,
        )


@dataclass(frozen=True, kw_only=True)
class LinearFit:
    """``t(bytes) = t0_s + bytes / bandwidth_Bps``: a streaming kernel or a copy."""

    t0_s: float
    bandwidth_Bps: float

    def predict_s(self, n_bytes: npt.ArrayLike) -> FloatArray:
        """Predicted seconds for moving ``n_bytes``."""
        return self.t0_s + np.asarray(n_bytes, dtype=np.float64) / self.bandwidth_Bps


def _gemm_time(
    m: FloatArray,
    k: FloatArray,
    n: FloatArray,
    t0: float,
    ec: float,
    bw: float,
    p: float,
    s_half: float,
    peak: float,
    b: float,
) -> FloatArray:
    m = np.maximum(m, 1.0)
    flops = 2.0 * m * k * n
    occ = (m * n) / (m * n + s_half)
    tc = flops / (peak * ec * occ)
    tm = b * (m * k + k * n + m * n) / bw
    # (tc^p + tm^p)^(1/p) computed stably as hi * (1 + (lo/hi)^p)^(1/p)
    hi = np.maximum(tc, tm)
    lo = np.minimum(tc, tm)
    return np.asarray(t0 + hi * (1.0 + (lo / hi) ** p) ** (1.0 / p), dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def fit_gemm(
    m: npt.ArrayLike,
    k: npt.ArrayLike,
    n: npt.ArrayLike,
    time_s: npt.ArrayLike,
    *,
    peak_flops: float,
    dtype_bytes: float,
    f_scale: float = 0.05,
) -> GemmFit:
    """Fit :class:`GemmFit` to measured GEMM times (seconds), robustly in log space.

    ``f_scale`` is the log-residual beyond which the soft-L1 loss grows linearly (0.05 ~ 5%), so
    outliers (a noisy neighbour, a slow kernel choice) pull the fit little. Several starting points
    are tried and the best is kept. Needs at least 6 samples spanning small and large m.
    """
    mf, kf, nf, tf = (np.asarray(a, dtype=np.float64).ravel() for a in (m, k, n, time_s))
    if not (mf.size == kf.size == nf.size == tf.size):
        raise CalibrationError("fit_gemm: m, k, n and time_s must have the same length")
    if mf.size < 6:
        raise CalibrationError(f"fit_gemm: need at least 6 GEMM samples, got {mf.size}")
    if np.any(~np.isfinite(tf)) or np.any(tf <= 0):
        raise CalibrationError("fit_gemm: times must be positive and finite")
    if peak_flops <= 0 or dtype_bytes <= 0:
        raise CalibrationError(f"fit_gemm: peak_flops and dtype_bytes must be > 0, got {peak_flops}, {dtype_bytes}")
    log_t = np.log(tf)
    flops = 2.0 * mf * kf * nf
    nbytes = dtype_bytes * (mf * kf + kf * nf + mf * nf)
    # scales for the parameters, from the data
    t_min = float(np.min(tf))
    bw_guess = float(np.max(nbytes / tf))
    s_guess = float(np.median(mf * nf))

    def unpack(x: FloatArray) -> tuple[float, float, float, float, float]:
        return (
            t_min * math.exp(x[0]),
            _sigmoid(x[1]),
            bw_guess * math.exp(x[2]),
            1.0 + math.exp(x[3]),
            s_guess * math.exp(x[4]),
        )

    def residuals(x: FloatArray) -> FloatArray:
        t0, ec, bw, p, sh = unpack(x)
        return np.log(_gemm_time(mf, kf, nf, t0, ec, bw, p, sh, peak_flops, dtype_bytes)) - log_t

    best = None
    ec_guess = min(0.95, max(0.02, float(np.max(flops / tf)) / peak_flops))
    for t0_frac in (0.5, 0.05):
        for p0 in (0.0, 1.5):
            for s_f in (-3.0, 0.0):
                x0 = np.array([math.log(t0_frac), math.log(ec_guess / (1 - ec_guess)), 0.0, p0, s_f])
                res = least_squares(
                    residuals,
                    x0,
                    loss="soft_l1",
                    f_scale=f_scale,
                    max_nfev=2000,
                    bounds=(np.array([-30, -12, -8, -6, -25.0]), np.array([3, 12, 8, 6, 12.0])),
                )
                if best is None or res.cost < best.cost:
                    best = res
    assert best is not None
    t0, ec, bw, p, sh = unpack(best.x)
    return GemmFit(t0_s=t0, eff_compute=ec, bandwidth_Bps=bw, sharpness=p, half_occupancy_elems=sh)


def fit_linear(n_bytes: npt.ArrayLike, time_s: npt.ArrayLike, *, f_scale: float = 0.05) -> LinearFit:
    """Fit ``t = t0 + bytes / B`` (seconds, bytes) robustly in log space; needs >= 2 sizes."""
    nb, tf = (np.asarray(a, dtype=np.float64).ravel() for a in (n_bytes, time_s))
    if nb.size != tf.size or nb.size < 2:
        raise CalibrationError(f"fit_linear: need >= 2 (bytes, time) pairs of equal length, got {nb.size}, {tf.size}")
    if np.any(tf <= 0) or np.any(nb <= 0) or not np.all(np.isfinite(tf)):
        raise CalibrationError("fit_linear: bytes and times must be positive and finite")
    t_min = float(np.min(tf))
    bw_guess = float(np.max(nb / tf))
    log_t = np.log(tf)

    def residuals(x: FloatArray) -> FloatArray:
        return np.log(t_min * math.exp(x[0]) + nb / (bw_guess * math.exp(x[1]))) - log_t

    best = None
    for t0_frac in (0.5, 0.01):
        res = least_squares(
            residuals,
            np.array([math.log(t0_frac), 0.0]),
            loss="soft_l1",
            f_scale=f_scale,
            bounds=(np.array([-30.0, -8.0]), np.array([3.0, 8.0])),
        )
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    return LinearFit(t0_s=t_min * math.exp(best.x[0]), bandwidth_Bps=bw_guess * math.exp(best.x[1]))


# ----------------------------------------------------------------------------------------------
# The profile
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Peaks:
    """Reference peaks the efficiencies are relative to, each with its source.

    ``flops`` (FLOP/s at the profile's dtype), ``memory_Bps`` (device memory), ``link_Bps``
    (host<->device link, per direction; 0 when the device has none).
    """

    flops: float
    flops_source: str
    memory_Bps: float
    memory_source: str
    link_Bps: float = 0.0
    link_source: str = ""

    def __post_init__(self) -> None:
        for name in ("flops", "memory_Bps"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise CalibrationError(f"peaks.{name} must be a positive number, got {value!r}")
        if not (isinstance(self.link_Bps, int | float) and math.isfinite(self.link_Bps) and self.link_Bps >= 0):
            raise CalibrationError(f"peaks.link_Bps must be >= 0, got {self.link_Bps!r}")


@dataclass(frozen=True, kw_only=True)
class PowerLaw:
    """How a profile's compute rate falls under a power limit (DVFS: the clocks drop until the
    board draws no more than its limit).

    Below ``power_W`` (the power limit of the device the profile describes, e.g. the H100 SXM's
    700 W), compute-bound work runs at ``(limit / power_W) ** exponent`` of the profile's rate; at
    or above it, at the profile's rate (no extrapolation upwards). Memory-bound work is unchanged
    (HBM has its own clock). ``exponent`` is a fitted number (``source`` says on what,
    ``fitted_on`` names the cases); one law per compute die, carried by `derive_profile` to the
    devices derived from it.
    """

    exponent: float
    power_W: float
    source: str = ""
    fitted_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        e, p = self.exponent, self.power_W
        if isinstance(e, bool) or not isinstance(e, int | float) or not (math.isfinite(e) and 0.0 <= e <= 3.0):
            raise CalibrationError(f"power_law.exponent must be a number in [0, 3], got {e!r}")
        if isinstance(p, bool) or not isinstance(p, int | float) or not (math.isfinite(p) and p > 0):
            raise CalibrationError(f"power_law.power_W must be a positive number of watts, got {p!r}")
        object.__setattr__(self, "fitted_on", tuple(str(c) for c in self.fitted_on))

    def rate(self, limit_W: float) -> float:
        """Compute rate at a power limit of ``limit_W`` watts, relative to the profile's (<= 1)."""
        if not (math.isfinite(limit_W) and limit_W > 0):
            raise CalibrationError(f"power limit must be a positive number of watts, got {limit_W!r}")
        return 1.0 if limit_W >= self.power_W else (limit_W / self.power_W) ** self.exponent

    def rebased(self, ratio: float) -> PowerLaw:
        """The same law for a profile that runs at ``ratio`` of this one's rate (a derived or a
        power-limited profile): it binds below ``power_W * min(1, ratio) ** (1 / exponent)``, the
        limit that allows just that rate (its own limit when power-limited, the reference's power for
        a device at or above it: no extrapolation upwards)."""
        if self.exponent == 0 or ratio >= 1.0:
            return self
        return replace(self, power_W=round(self.power_W * ratio ** (1.0 / self.exponent), 6))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "exponent": self.exponent,
            "power_W": self.power_W,
            "source": self.source,
            "fitted_on": list(self.fitted_on),
        }


@dataclass(kw_only=True)
class CalibrationProfile:
    """What a calibration measured and fitted on one device; an ``EfficiencyModel``.

    Not frozen only because the ``EfficiencyModel`` protocol declares ``name`` as a settable
    attribute; treat a profile as immutable (:meth:`without_samples` and
    :func:`dataclasses.replace` make changed copies).

    ``name`` is the profile's name (``source`` of calibrated costs reads ``calibrated:<name>``),
    ``device_name`` the device as the data names it (``"a100"``, ``"AMD EPYC"``, ``"NVIDIA H100
    80GB HBM3"``), ``device_kind`` ``"cpu"`` or ``"gpu"``, ``dtype`` the element type of the runs
    (``dtype_bytes`` bytes each). ``fingerprint`` describes the machine (CPU model, cores, threads,
    GPU name, CUDA version), ``torch_version`` the torch that ran the kernels (``""`` for imported
    data). ``samples`` are the raw measurements (may be empty in shipped profiles, which keep the
    fitted parameters only); ``heldout_rule`` says how held-out samples were chosen.
    """

    name: str
    device_name: str
    device_kind: str
    dtype: str
    dtype_bytes: float
    peaks: Peaks
    gemm_fit: GemmFit
    memory_fits: Mapping[str, LinearFit] = field(default_factory=dict)  # keys "stream", "act"
    copy_fits: Mapping[str, LinearFit] = field(default_factory=dict)  # keys "pinned", "pageable"
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    torch_version: str = ""
    source: str = ""
    created_utc: str = ""
    heldout_rule: str = ""
    samples: tuple[Sample, ...] = ()
    quality: Mapping[str, Any] = field(default_factory=dict)  # assess_fit's verdict ({} when unknown)
    power_law: PowerLaw | None = None  # compute rate under a power limit (None: not calibrated)
    # energy per FLOP relative to the device file's, under a power limit (`limit_power`): lower clocks
    # run at a lower voltage, so an operation costs less energy; 1 = the device's own figure
    flop_energy_scale: float = 1.0

    # ---- EfficiencyModel protocol --------------------------------------------------------------

    def gemm(self, m: npt.ArrayLike, k: int, n: int) -> FloatArray:
        """Achieved / peak FLOP rate of ``(m x k) @ (k x n)`` GEMMs, in (0, 1] (m = 0 reads as 1).

        This is the efficiency of the whole call: per-call overhead and the memory-bound regime at
        small m are included, so ``FLOPs / (peaks.flops * gemm(m, k, n))`` equals
        :meth:`predict_gemm_s`.
        """
        mf = np.maximum(np.asarray(m, dtype=np.float64), 1.0)
        t = self.predict_gemm_s(mf, k, n)
        eff = 2.0 * mf * float(k) * float(n) / (self.peaks.flops * t)
        return np.clip(eff, 1e-12, 1.0)

    @property
    def gemm_call_overhead_s(self) -> float:
        """The fitted per-call overhead of a GEMM (``t0``, seconds), folded into :meth:`gemm`'s
        efficiency; `hwmodels.costs.CostModel` keeps it when it caps a small-m GEMM at its memory time."""
        return float(self.gemm_fit.t0_s)

    def gemm_at(self, m: npt.ArrayLike, k: int, n: int, *, dtype_bytes: float, flops_scale: float = 1.0) -> FloatArray:
        """`gemm` for operands of ``dtype_bytes`` bytes per element on compute ``flops_scale`` times the
        profile's rate: the efficiency of the whole call relative to ``peaks.flops * flops_scale``, in
        (0, 1]. The fitted model is kept (``t0``, occupancy, compute/streaming blend) with the peak
        scaled and the operand bytes at ``dtype_bytes`` (how `hwmodels.costs.CostModel` reads a BF16
        profile for FP8 GEMMs; labelled assumption there). ``gemm_at(m, k, n, dtype_bytes=
        self.dtype_bytes)`` equals ``gemm(m, k, n)``.
        """
        if not all(v > 0 and math.isfinite(v) for v in (dtype_bytes, flops_scale)):
            raise CalibrationError(
                f"profile {self.name!r}: gemm_at needs dtype_bytes and flops_scale > 0, "
                f"got {dtype_bytes!r}, {flops_scale!r}"
            )
        mf = np.maximum(np.asarray(m, dtype=np.float64), 1.0)
        peak = self.peaks.flops * flops_scale
        t = self.gemm_fit.predict_s(mf, k, n, peak_flops=peak, dtype_bytes=dtype_bytes)
        eff = 2.0 * mf * float(k) * float(n) / (peak * t)
        return np.clip(eff, 1e-12, 1.0)

    def memory(self) -> float:
        """Achieved / peak memory bandwidth of streaming kernels, in (0, 1].

        From the ``"stream"`` memory fit (a plain copy or add) when there is one, else from the
        GEMM operand-streaming bandwidth.
        """
        fit = self.memory_fits.get("stream")
        bw = fit.bandwidth_Bps if fit is not None else self.gemm_fit.bandwidth_Bps
        return float(min(1.0, max(1e-12, bw / self.peaks.memory_Bps)))

    def copy(self, n_bytes: npt.ArrayLike, *, pinned: bool = True) -> FloatArray:
        """Achieved / peak link rate of a host->device copy of ``n_bytes``, in (0, 1].

        Raises :class:`MissingCalibrationError` when the profile measured no such copies (a CPU
        calibration, an imported GEMM table): callers fall back to their default link curves.
        """
        key = "pinned" if pinned else "pageable"
        fit = self.copy_fits.get(key)
        if fit is None or self.peaks.link_Bps <= 0:
            raise MissingCalibrationError(f"calibration profile {self.name!r} has no {key} copy measurements")
        nb = np.maximum(np.asarray(n_bytes, dtype=np.float64), 1.0)
        eff = nb / fit.predict_s(nb) / self.peaks.link_Bps
        return np.clip(eff, 1e-12, 1.0)

    @property
    def has_copy(self) -> bool:
        """Whether :meth:`copy` is calibrated (pinned copies measured)."""
        return "pinned" in self.copy_fits and self.peaks.link_Bps > 0

    # ---- direct predictors (seconds) -----------------------------------------------------------

    def predict_gemm_s(self, m: npt.ArrayLike, k: npt.ArrayLike, n: npt.ArrayLike) -> FloatArray:
        """Predicted seconds of ``(m x k) @ (k x n)`` GEMMs; monotone in m, >= roofline compute."""
        return self.gemm_fit.predict_s(m, k, n, peak_flops=self.peaks.flops, dtype_bytes=self.dtype_bytes)

    def predict_memory_s(self, n_bytes: npt.ArrayLike, op: str = "stream") -> FloatArray:
        """Predicted seconds of a memory-bound kernel that reads plus writes ``n_bytes``.

        ``op`` ``"stream"`` (copy, add) or ``"act"`` (the gated activation ``silu(g) * u``); an op
        without its own fit uses the ``"stream"`` fit, then the GEMM operand bandwidth.
        """
        fit = self.memory_fits.get(op) or self.memory_fits.get("stream")
        if fit is not None:
            return fit.predict_s(n_bytes)
        return np.asarray(n_bytes, dtype=np.float64) / self.gemm_fit.bandwidth_Bps

    def predict_ffn_s(self, m: npt.ArrayLike, d: int, f: int, *, gated: bool = True) -> FloatArray:
        """Predicted seconds of one expert FFN on ``m`` tokens (d_model ``d``, hidden ``f``).

        Gated: gate and up GEMMs ``(m x d) @ (d x f)``, the elementwise ``silu(g) * u`` (reads two
        ``m x f`` tensors, writes one), and the down GEMM ``(m x f) @ (f x d)``. Not gated: one
        up GEMM, an activation over ``m x f`` (read + write) and the down GEMM. ``m == 0`` costs 0.
        """
        mf = np.asarray(m, dtype=np.float64)
        n_up = 2 if gated else 1
        elem_bytes = (3.0 if gated else 2.0) * mf * f * self.dtype_bytes
        t = (
            n_up * self.predict_gemm_s(mf, d, f)
            + self.predict_gemm_s(mf, f, d)
            + self.predict_memory_s(np.maximum(elem_bytes, 1.0), "act")
        )
        return np.where(mf > 0, t, 0.0)

    def predict_grouped_s(self, tokens: Sequence[int] | npt.ArrayLike, d: int, f: int, *, gated: bool = True) -> float:
        """Predicted seconds of several experts run one after another (``tokens[i]`` to expert i)."""
        return float(np.sum(self.predict_ffn_s(np.asarray(tokens, dtype=np.float64), d, f, gated=gated)))

    def predict_copy_s(self, n_bytes: npt.ArrayLike, *, pinned: bool = True) -> FloatArray:
        """Predicted seconds of a host->device copy (raises when copies were not measured)."""
        fit = self.copy_fits.get("pinned" if pinned else "pageable")
        if fit is None:
            raise MissingCalibrationError(f"calibration profile {self.name!r} has no copy measurements")
        return fit.predict_s(n_bytes)

    def predict_sample_s(self, sample: Sample) -> float:
        """The profile's prediction for a measured sample of any kind (seconds)."""
        s = sample.shape
        if sample.kind == "gemm":
            return float(self.predict_gemm_s(s["m"], s["k"], s["n"]))
        if sample.kind == "ffn":
            return float(self.predict_ffn_s(s["m"], int(s["d"]), int(s["f"]), gated=bool(s.get("gated", True))))
        if sample.kind == "grouped":
            return self.predict_grouped_s(s["tokens"], int(s["d"]), int(s["f"]), gated=bool(s.get("gated", True)))
        if sample.kind == "memory":
            return float(self.predict_memory_s(s["n_bytes"], sample.op if sample.op in MEMORY_OPS else "stream"))
        return float(self.predict_copy_s(s["n_bytes"], pinned=bool(s["pinned"])))

    # ---- construction, files -------------------------------------------------------------------

    def without_samples(self) -> CalibrationProfile:
        """The same fitted profile without raw samples (what the package ships)."""
        return replace(self, samples=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (with format tag and version)."""
        return {
            "format": FORMAT_TAG,
            "version": FORMAT_VERSION,
            "name": self.name,
            "device_name": self.device_name,
            "device_kind": self.device_kind,
            "dtype": self.dtype,
            "dtype_bytes": self.dtype_bytes,
            "source": self.source,
            "created_utc": self.created_utc,
            "torch_version": self.torch_version,
            "fingerprint": dict(self.fingerprint),
            "peaks": vars(self.peaks).copy(),
            "fit": {
                "gemm": vars(self.gemm_fit).copy(),
                "memory": {key: vars(fit).copy() for key, fit in self.memory_fits.items()},
                "copy": {key: vars(fit).copy() for key, fit in self.copy_fits.items()},
            },
            "heldout_rule": self.heldout_rule,
            "quality": dict(self.quality),
            "samples": [sample.to_dict() for sample in self.samples],
            **({"power_law": self.power_law.to_dict()} if self.power_law is not None else {}),
            **({"flop_energy_scale": self.flop_energy_scale} if self.flop_energy_scale != 1.0 else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (indented); returns the path."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "<dict>") -> CalibrationProfile:
        """Build from :meth:`to_dict`'s form; errors name ``where`` and the field."""
        return _profile_from_dict(data, where)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationProfile:
        """Read a profile JSON file; a malformed file raises :class:`CalibrationError` naming it."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise CalibrationError(f"{p}: cannot read calibration profile: {exc.strerror or exc}") from exc
        if raw.startswith(b"PK\x03\x04"):
            raise CalibrationError(
                f"{p}: not a calibration profile JSON (a zip/.npz archive, e.g. a routing "
                "trace); expected the JSON written by 'codesign calibrate run|import-vidur'"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CalibrationError(
                f"{p}: not a calibration profile JSON (binary data: byte {raw[exc.start]:#04x} "
                f"at offset {exc.start} is not UTF-8 text); expected the JSON written by "
                "'codesign calibrate run|import-vidur'"
            ) from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CalibrationError(
                f"{p}: line {exc.lineno}: not valid JSON ({exc.msg}); not a calibration profile JSON"
            ) from exc
        return _profile_from_dict(data, str(p))


def _need(data: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise CalibrationError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise CalibrationError(f"{where}: field {key!r} must be {_type_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise CalibrationError(f"{where}: field {key!r} must be {_type_name(kind)}, got {value!r}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _positive(data: Mapping[str, Any], key: str, where: str, *, allow_zero: bool = False) -> float:
    value = float(_need(data, key, where, (int, float)))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise CalibrationError(f"{where}: field {key!r} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _profile_from_dict(data: Any, where: str) -> CalibrationProfile:
    if not isinstance(data, Mapping):
        raise CalibrationError(f"{where}: expected a JSON object at top level, got {type(data).__name__}")
    if data.get("format") != FORMAT_TAG:
        raise CalibrationError(
            f"{where}: field 'format' must be {FORMAT_TAG!r}, got {data.get('format')!r} (not a calibration profile)"
        )
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise CalibrationError(
            f"{where}: unsupported profile version {version!r}; this code reads version {FORMAT_VERSION}"
        )
    peaks_d = _need(data, "peaks", where, dict)
    pw = f"{where}: peaks"
    try:
        peaks = Peaks(
            flops=_positive(peaks_d, "flops", pw),
            flops_source=str(peaks_d.get("flops_source", "")),
            memory_Bps=_positive(peaks_d, "memory_Bps", pw),
            memory_source=str(peaks_d.get("memory_source", "")),
            link_Bps=_positive(peaks_d, "link_Bps", pw, allow_zero=True) if "link_Bps" in peaks_d else 0.0,
            link_source=str(peaks_d.get("link_source", "")),
        )
    except CalibrationError as exc:
        raise CalibrationError(str(exc) if str(exc).startswith(where) else f"{pw}: {exc}") from exc
    fit_d = _need(data, "fit", where, dict)
    g = _need(fit_d, "gemm", f"{where}: fit", dict)
    gw = f"{where}: fit.gemm"
    eff = _positive(g, "eff_compute", gw)
    if eff > 1.0:
        raise CalibrationError(f"{gw}: field 'eff_compute' must be in (0, 1], got {eff}")
    sharp = _positive(g, "sharpness", gw)
    if sharp < 1.0:
        raise CalibrationError(f"{gw}: field 'sharpness' must be >= 1, got {sharp}")
    gemm_fit = GemmFit(
        t0_s=_positive(g, "t0_s", gw, allow_zero=True),
        eff_compute=eff,
        bandwidth_Bps=_positive(g, "bandwidth_Bps", gw),
        sharpness=sharp,
        half_occupancy_elems=_positive(g, "half_occupancy_elems", gw, allow_zero=True),
    )
    memory_d = fit_d.get("memory") or {}
    if not isinstance(memory_d, dict):
        raise CalibrationError(f"{where}: field 'fit.memory' must be an object, got {memory_d!r}")
    memory_fits: dict[str, LinearFit] = {}
    for key, value in memory_d.items():
        if key not in MEMORY_OPS:
            raise CalibrationError(f"{where}: fit.memory key {key!r} unknown; expected one of {list(MEMORY_OPS)}")
        if not isinstance(value, dict):
            raise CalibrationError(f"{where}: fit.memory.{key} must be an object, got {value!r}")
        memory_fits[key] = _linear_from(value, f"{where}: fit.memory.{key}")
    copy_d = fit_d.get("copy") or {}
    if not isinstance(copy_d, dict):
        raise CalibrationError(f"{where}: field 'fit.copy' must be an object, got {copy_d!r}")
    copy_fits: dict[str, LinearFit] = {}
    for key, value in copy_d.items():
        if key not in ("pinned", "pageable"):
            raise CalibrationError(f"{where}: fit.copy key {key!r} unknown; expected 'pinned' or 'pageable'")
        if not isinstance(value, dict):
            raise CalibrationError(f"{where}: fit.copy.{key} must be an object, got {value!r}")
        copy_fits[key] = _linear_from(value, f"{where}: fit.copy.{key}")
    samples_raw = data.get("samples", [])
    if not isinstance(samples_raw, list):
        raise CalibrationError(f"{where}: field 'samples' must be a list, got {type(samples_raw).__name__}")
    samples = []
    for i, raw in enumerate(samples_raw):
        sw = f"{where}: samples[{i}]"
        if not isinstance(raw, dict):
            raise CalibrationError(f"{sw}: expected an object, got {raw!r}")
        try:
            samples.append(
                Sample(
                    kind=str(_need(raw, "kind", sw, str)),
                    op=str(raw.get("op", "")),
                    shape=dict(_need(raw, "shape", sw, dict)),
                    time_s=_need(raw, "time_s", sw, (int, float)),
                    repeats=int(raw.get("repeats", 1)),
                    spread_s=float(raw.get("spread_s", 0.0)),
                    heldout=bool(raw.get("heldout", False)),
                    tag=str(raw.get("tag", "")),
                )
            )
        except CalibrationError as exc:
            raise CalibrationError(str(exc) if str(exc).startswith(sw) else f"{sw}: {exc}") from exc
    fingerprint = data.get("fingerprint", {})
    if not isinstance(fingerprint, dict):
        raise CalibrationError(f"{where}: field 'fingerprint' must be an object")
    quality = data.get("quality", {})
    if not isinstance(quality, dict):
        raise CalibrationError(f"{where}: field 'quality' must be an object, got {quality!r}")
    power_law = _power_law_from(data.get("power_law"), f"{where}: power_law")
    kind = str(_need(data, "device_kind", where, str))
    if kind not in ("cpu", "gpu"):
        raise CalibrationError(f"{where}: field 'device_kind' must be 'cpu' or 'gpu', got {kind!r}")
    return CalibrationProfile(
        name=str(_need(data, "name", where, str)),
        device_name=str(_need(data, "device_name", where, str)),
        device_kind=kind,
        dtype=str(_need(data, "dtype", where, str)),
        dtype_bytes=_positive(data, "dtype_bytes", where),
        peaks=peaks,
        gemm_fit=gemm_fit,
        memory_fits=memory_fits,
        copy_fits=copy_fits,
        fingerprint=fingerprint,
        torch_version=str(data.get("torch_version", "")),
        source=str(data.get("source", "")),
        created_utc=str(data.get("created_utc", "")),
        heldout_rule=str(data.get("heldout_rule", "")),
        samples=tuple(samples),
        quality=quality,
        power_law=power_law,
        flop_energy_scale=_positive(data, "flop_energy_scale", where) if "flop_energy_scale" in data else 1.0,
    )


def _power_law_from(raw: Any, where: str) -> PowerLaw | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise CalibrationError(f"{where}: expected an object, got {raw!r}")
    fitted_on = raw.get("fitted_on", [])
    if not isinstance(fitted_on, list):
        raise CalibrationError(f"{where}: field 'fitted_on' must be a list of case names, got {fitted_on!r}")
    try:
        return PowerLaw(
            exponent=_need(raw, "exponent", where, (int, float)),
            power_W=_need(raw, "power_W", where, (int, float)),
            source=str(raw.get("source", "")),
            fitted_on=tuple(fitted_on),
        )
    except CalibrationError as exc:
        raise CalibrationError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None


def _linear_from(d: Mapping[str, Any], where: str) -> LinearFit:
    return LinearFit(
        t0_s=_positive(d, "t0_s", where, allow_zero=True), bandwidth_Bps=_positive(d, "bandwidth_Bps", where)
    )


def fit_profile(
    *,
    name: str,
    device_name: str,
    device_kind: str,
    dtype: str,
    dtype_bytes: float,
    peaks: Peaks,
    samples: Iterable[Sample],
    fingerprint: Mapping[str, Any] | None = None,
    torch_version: str = "",
    source: str = "",
    created_utc: str = "",
    heldout_rule: str = "",
) -> CalibrationProfile:
    """Fit every model the samples allow (GEMM required; memory and copies when measured).

    Only samples with ``heldout == False`` are fitted. Raises :class:`CalibrationError` when there
    are too few GEMM samples. The result's ``quality`` is :func:`assess_fit`'s verdict.
    """
    all_samples = tuple(samples)
    fit_set = [s for s in all_samples if not s.heldout]
    gemms = [s for s in fit_set if s.kind == "gemm"]
    if not gemms:
        raise CalibrationError(f"profile {name!r}: no GEMM samples to fit (of {len(all_samples)} samples)")
    gemm_fit = fit_gemm(
        [s.shape["m"] for s in gemms],
        [s.shape["k"] for s in gemms],
        [s.shape["n"] for s in gemms],
        [s.time_s for s in gemms],
        peak_flops=peaks.flops,
        dtype_bytes=dtype_bytes,
    )
    memory_fits: dict[str, LinearFit] = {}
    for op in MEMORY_OPS:
        mems = [s for s in fit_set if s.kind == "memory" and s.op == op]
        if len(mems) >= 2:
            memory_fits[op] = fit_linear([s.shape["n_bytes"] for s in mems], [s.time_s for s in mems])
    copy_fits: dict[str, LinearFit] = {}
    for key, flag in (("pinned", True), ("pageable", False)):
        copies = [s for s in fit_set if s.kind == "copy" and bool(s.shape["pinned"]) == flag]
        if len(copies) >= 2:
            copy_fits[key] = fit_linear([s.shape["n_bytes"] for s in copies], [s.time_s for s in copies])
    profile = CalibrationProfile(
        name=name,
        device_name=device_name,
        device_kind=device_kind,
        dtype=dtype,
        dtype_bytes=dtype_bytes,
        peaks=peaks,
        gemm_fit=gemm_fit,
        memory_fits=memory_fits,
        copy_fits=copy_fits,
        fingerprint=dict(fingerprint or {}),
        torch_version=torch_version,
        source=source,
        created_utc=created_utc,
        heldout_rule=heldout_rule,
        samples=all_samples,
    )
    return replace(profile, quality=assess_fit(profile))


#: Held-out GEMM median absolute error (percent) above which a fit is "suspect": the accuracy
#: target of the calibration (15%, the project's target for GEMM and whole-layer predictions).
SUSPECT_MEDIAN_PCT = 15.0
#: ... and above which it is "absurd" (an assumption: several times the target, far beyond the
#: 5-25% run-to-run noise of a loaded shared machine; such fits come from timings disturbed by
#: other work, e.g. wall-clock timing with 2 threads on a busy 2-core machine).
ABSURD_MEDIAN_PCT = 50.0
#: A fitted GEMM t0 above this multiple of the fastest measured GEMM is "absurd" (an assumption:
#: a robust fit may put t0 a little above the fastest sample when that one is noisy or quantised,
#: e.g. Vidur's H100 table, in ms with 3 decimals, gives t0 5.0 us against a fastest 4 us).
T0_TOLERANCE = 1.5


def assess_fit(
    profile: CalibrationProfile,
    *,
    suspect_median_pct: float = SUSPECT_MEDIAN_PCT,
    absurd_median_pct: float = ABSURD_MEDIAN_PCT,
    t0_tolerance: float = T0_TOLERANCE,
) -> dict[str, Any]:
    """Sanity checks of a fitted profile against its own GEMM samples: the ``quality`` block.

    Returns ``{"status": "ok" | "suspect" | "absurd" | "unchecked", "problems": [str, ...],
    "gemm_t0_s", "min_gemm_time_s", "heldout_gemm_median_abs_pct_error",
    "fit_gemm_median_abs_pct_error", "thresholds": {...}}`` (times in seconds, errors in percent).

    Checks: the per-call overhead ``t0`` must not exceed the fastest measured GEMM by more than
    ``t0_tolerance`` times (every call costs at least ``t0``, so a larger one contradicts the data:
    "absurd"); the median absolute
    error of the held-out GEMMs, and of the fitted ones, must be at most ``suspect_median_pct``
    ("suspect" above, "absurd" above ``absurd_median_pct``). "unchecked" when the profile keeps no
    GEMM samples (a shipped profile).
    """
    gemms = [s for s in profile.samples if s.kind == "gemm"]
    thresholds = {
        "suspect_median_pct": suspect_median_pct,
        "absurd_median_pct": absurd_median_pct,
        "t0_tolerance": t0_tolerance,
    }
    t0 = profile.gemm_fit.t0_s
    out: dict[str, Any] = {
        "status": "unchecked",
        "problems": [],
        "gemm_t0_s": t0,
        "min_gemm_time_s": None,
        "heldout_gemm_median_abs_pct_error": None,
        "fit_gemm_median_abs_pct_error": None,
        "thresholds": thresholds,
    }
    if not gemms:
        return out
    problems: list[str] = []
    severe = False
    t_min = min(s.time_s for s in gemms)
    out["min_gemm_time_s"] = t_min
    if t0 > t0_tolerance * t_min:
        severe = True
        problems.append(
            f"GEMM t0 {t0 * 1e6:.2f} us exceeds the fastest measured GEMM ({t_min * 1e6:.2f} us) "
            f"by more than {t0_tolerance:g}x: the timings are inconsistent (disturbed by other work?)"
        )
    held = [s for s in gemms if s.heldout]
    fitted = [s for s in gemms if not s.heldout]
    for label, subset in (("held-out", held), ("fitted", fitted)):
        if not subset:
            continue
        pred = np.array([profile.predict_sample_s(s) for s in subset])
        meas = np.array([s.time_s for s in subset])
        med = float(np.median(np.abs(100.0 * (pred - meas) / meas)))
        out["heldout_gemm_median_abs_pct_error" if label == "held-out" else "fit_gemm_median_abs_pct_error"] = med
        if med > suspect_median_pct:
            severe = severe or med > absurd_median_pct
            problems.append(
                f"{label} GEMM median error {med:.1f}% above {suspect_median_pct:g}% ({len(subset)} samples)"
            )
    out["problems"] = problems
    out["status"] = "absurd" if severe else ("suspect" if problems else "ok")
    return out


# ----------------------------------------------------------------------------------------------
# Shipped default profiles
# ----------------------------------------------------------------------------------------------

#: Names of the profiles shipped in ``hwmodels/data`` (fitted from Vidur's measured tables).
_DEFAULT_FILES: dict[str, str] = {"a100": "calibration-vidur-a100.json", "h100": "calibration-vidur-h100.json"}

#: Profiles derived by :func:`derive_profile` from a shipped one: name -> (base profile, device preset
#: the base was measured on, device preset of the derived profile). Same compute architecture only.
_DERIVED: dict[str, tuple[str, str, str]] = {
    "h200": ("h100", "h100-sxm", "h200"),
    "h100-nvl": ("h100", "h100-sxm", "h100-nvl"),
    "h100-pcie": ("h100", "h100-sxm", "h100-pcie"),
    "gh200": ("h100", "h100-sxm", "gh200"),
}


#: Device preset each shipped profile was measured on (Vidur's a100 / h100 tables: A100 80GB, H100 SXM).
_SHIPPED_DEVICES: dict[str, str] = {"a100": "a100-80gb", "h100": "h100-sxm"}


def shipped_profile_device(name: str) -> str | None:
    """The device preset a shipped or derived profile ``name`` describes (None for an unknown name)."""
    key = name.lower()
    if key in _DERIVED:
        return _DERIVED[key][2]
    return _SHIPPED_DEVICES.get(key)


def base_profile_name(name: str) -> str | None:
    """The shipped profile a shipped or derived profile ``name`` comes from (``h200`` -> ``h100``,
    ``h100`` -> ``h100``); None for a name that is neither."""
    key = name.lower()
    if key in _DERIVED:
        return _DERIVED[key][0]
    return key if key in _DEFAULT_FILES else None


def shipped_profile_file(name: str) -> Path:
    """The package file of a shipped profile (a derived name resolves to its base's file); raises
    `CalibrationError` for another name."""
    base = base_profile_name(name)
    if base is None:
        raise CalibrationError(f"no shipped calibration profile {name!r}; valid: {default_profile_names()}")
    return Path(str(resources.files("hwmodels").joinpath("data", _DEFAULT_FILES[base])))


def default_profile_names() -> list[str]:
    """Names accepted by :func:`load_default_profile` (shipped files and derived profiles)."""
    return sorted([*_DEFAULT_FILES, *_DERIVED])


def derive_profile(base: CalibrationProfile, base_device: Any, target_device: Any, *, name: str) -> CalibrationProfile:
    """A profile for ``target_device`` derived from ``base``, measured on ``base_device`` (both
    `hwmodels.devices.Device` of one compute architecture, e.g. H100 SXM -> H200, H100 NVL or H100 PCIe).

    The rule: the GEMM curve is carried over unchanged as efficiencies (``eff_compute``, occupancy,
    sharpness, per-call ``t0``), applied to the target's sustained compute rate: ``peaks.flops``
    scaled by the smaller of the datasheet ratio (target / base peak of the profile's dtype: its
    boost clock and SM count) and, when ``base`` has a `PowerLaw`, the rate the target's TDP allows
    (the H100 NVL at 400 W against the SXM's 700 W; a run under a lower limit is `limit_power`'s; a
    power law assumes the target has the base's SM count, true of the H200 and H100 NVL, not of the
    H100 PCIe's 114 SMs, whose rate it then overstates by ~(132/114)**(1 - exponent));
    every memory-bound part (the GEMM operand-streaming bandwidth, the ``stream`` and ``act`` memory
    fits, ``peaks.memory_Bps``) scaled by the ratio of the weights tiers' bandwidths (H200 4.8 / 3.35
    TB/s); copy fits (host link) kept. The power law is carried over at the target's limit. Peaks and
    ratios are read from the two device descriptions, so the derived profile carries their sources.
    Raises `CalibrationError` when a device lacks the profile's dtype or the two devices are of
    different kinds.
    """
    if base_device.kind != target_device.kind:
        raise CalibrationError(f"derive_profile: {base_device.name!r} and {target_device.name!r} differ in kind")
    dtype = base.dtype
    for dev in (base_device, target_device):
        if dtype not in dev.peak_flops:
            raise CalibrationError(
                f"derive_profile: device {dev.name!r} has no {dtype} peak (has {sorted(dev.peak_flops)})"
            )
    datasheet_ratio = target_device.flops(dtype) / base_device.flops(dtype)
    flops_ratio = datasheet_ratio
    compute_why = f"{dtype} {target_device.flops(dtype) / 1e12:.4g} / {base_device.flops(dtype) / 1e12:.4g} TFLOP/s"
    law = base.power_law
    if law is not None:
        limit_W = float(target_device.tdp_W)
        power_ratio = law.rate(limit_W)
        if power_ratio < datasheet_ratio:
            flops_ratio = power_ratio
            compute_why = (
                f"power-limited: ({limit_W:g} / {law.power_W:g} W) ** {law.exponent:.4g}, "
                f"below the datasheet's {compute_why} = {datasheet_ratio:.4g}"
            )
        law = law.rebased(flops_ratio)
    bw_ratio = target_device.weights_memory.bandwidth_Bps / base_device.weights_memory.bandwidth_Bps
    rule = (
        f"derived from profile {base.name!r} ({base_device.name} -> {target_device.name}, "
        f"hwmodels.calibration.derive_profile): GEMM efficiencies kept, compute peak x {flops_ratio:.4g} "
        f"({compute_why}), "
        f"memory-bound parts x {bw_ratio:.4g} ({target_device.weights_memory.bandwidth_Bps / 1e9:.4g} / "
        f"{base_device.weights_memory.bandwidth_Bps / 1e9:.4g} GB/s), device figures from the presets' sources"
    )
    peaks = replace(
        base.peaks,
        flops=base.peaks.flops * flops_ratio,
        flops_source=f"{base.peaks.flops_source} x {flops_ratio:.4g} ({target_device.name} preset)",
        memory_Bps=base.peaks.memory_Bps * bw_ratio,
        memory_source=f"{base.peaks.memory_source} x {bw_ratio:.4g} ({target_device.name} preset)",
    )
    gemm_fit = replace(base.gemm_fit, bandwidth_Bps=base.gemm_fit.bandwidth_Bps * bw_ratio)
    memory_fits = {k: replace(f, bandwidth_Bps=f.bandwidth_Bps * bw_ratio) for k, f in base.memory_fits.items()}
    return replace(
        base,
        name=name,
        device_name=target_device.name,
        peaks=peaks,
        gemm_fit=gemm_fit,
        memory_fits=memory_fits,
        source=f"{rule}; base: {base.source}",
        samples=(),
        quality={},
        power_law=law,
    )


def limit_power(profile: CalibrationProfile, limit_W: float, *, exponent: float | None = None) -> CalibrationProfile:
    """``profile`` on the same device run under a power limit of ``limit_W`` watts (``nvidia-smi
    -pl``, MLPerf's MaxQ): its compute peak scaled by its `PowerLaw` (``exponent`` overrides the
    law's, for calibration and sensitivity studies) and its energy per FLOP by ``rate ** (1/e - 1)``
    (the dynamic power ``~ rate ** (1/e)`` the law implies, over the rate); memory and copies
    unchanged. A limit at or above the law's ``power_W`` changes nothing. Raises `CalibrationError`
    for a profile without a power law or a limit that is not a positive number of watts."""
    law = profile.power_law
    if law is None:
        raise CalibrationError(
            f"profile {profile.name!r} has no power law (power_law in its JSON), so a power limit cannot be "
            "applied to it; the shipped 'h100' profile and those derived from it have one"
        )
    if exponent is not None:
        law = replace(law, exponent=float(exponent))
    ratio = law.rate(float(limit_W))
    peaks = replace(
        profile.peaks,
        flops=profile.peaks.flops * ratio,
        flops_source=f"{profile.peaks.flops_source} x {ratio:.4g} (power limit {limit_W:g} W: "
        f"({limit_W:g} / {law.power_W:g}) ** {law.exponent:.4g})"
        if ratio < 1.0
        else profile.peaks.flops_source,
    )
    energy = ratio ** (1.0 / law.exponent - 1.0) if law.exponent > 0 and ratio < 1.0 else 1.0
    return replace(
        profile,
        name=f"{profile.name}@{limit_W:g}W",
        peaks=peaks,
        power_law=law.rebased(ratio),
        flop_energy_scale=profile.flop_energy_scale * energy,
        samples=(),
        quality={},
    )


def resolve_profile(spec: str) -> CalibrationProfile:
    """A calibration profile from a shipped (or derived) name or a profile JSON path.

    A spec ending in ``.json`` or naming an existing file is loaded as a file; anything else must be
    one of :func:`default_profile_names`. Raises :class:`CalibrationError` (one line, listing the
    shipped names for an unknown one).
    """
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        return CalibrationProfile.load(path)
    if spec.lower() not in default_profile_names():
        raise CalibrationError(
            f"no such calibration profile: not a file and not a shipped profile; valid names: "
            f"{', '.join(default_profile_names())} (or a profile JSON written by codesign calibrate)"
        )
    return load_default_profile(spec)


def load_default_profile(name: str, *, power_exponent: float | None = None) -> CalibrationProfile:
    """A profile shipped with the package (fitted parameters only), e.g. ``"a100"`` or ``"h100"``, or
    one derived from a shipped profile by :func:`derive_profile` (``"h200"``, ``"h100-nvl"``,
    ``"h100-pcie"``, ``"gh200"``). ``power_exponent`` replaces the shipped power law's exponent before
    anything is derived from it (calibration and sensitivity studies: a derived profile's own rate
    then follows the same exponent as a power limit applied on top); `CalibrationError` when the
    profile has no power law."""
    key = name.lower()
    if key in _DERIVED:
        from hwmodels.devices import get_device

        base_name, base_dev, target_dev = _DERIVED[key]
        base = load_default_profile(base_name, power_exponent=power_exponent)
        return derive_profile(base, get_device(base_dev), get_device(target_dev), name=key)
    if key not in _DEFAULT_FILES:
        raise CalibrationError(f"no shipped calibration profile {name!r}; valid: {default_profile_names()}")
    ref = resources.files("hwmodels").joinpath("data", _DEFAULT_FILES[key])
    text = ref.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{ref}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    prof = _profile_from_dict(data, str(ref))
    if power_exponent is not None:
        if prof.power_law is None:
            raise CalibrationError(f"profile {name!r} has no power law whose exponent could be replaced")
        prof = replace(prof, power_law=replace(prof.power_law, exponent=float(power_exponent)))
    return prof


def relative_errors(predicted: npt.ArrayLike, measured: npt.ArrayLike) -> FloatArray:
    """Signed relative errors ``(predicted - measured) / measured`` (fractions)."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    return np.asarray((p - m) / m, dtype=np.float64)


def robust_median(times: Sequence[float], *, mad_k: float = 5.0) -> tuple[float, float, int]:
    """``(median, MAD, kept)`` of repeated timings after outlier rejection.

    Values farther than ``mad_k`` scaled MADs (1.4826 MAD ~ one standard deviation for normal noise)
    from the median are dropped, then the median and MAD of the rest are returned with their count.
    """
    arr = np.asarray(times, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise CalibrationError(f"robust_median: need finite timings, got {list(times)!r}")
    med = float(np.median(arr))
    mad = 1.4826 * float(np.median(np.abs(arr - med)))
    if mad > 0:
        arr = arr[np.abs(arr - med) <= mad_k * mad]
    med = float(np.median(arr))
    return med, float(np.median(np.abs(arr - med))), int(arr.size)
