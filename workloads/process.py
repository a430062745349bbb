"""`RoutingProcess`: a generative model of MoE routing, fitted to a real trace.

What it learns from a trace (``L`` MoE layers, ``E`` experts, top-``k``):

- per-layer popularity ``p_l`` (share of routed slots per expert, add-``smoothing`` counts);
- inter-layer affinity ``A_l[a, b] = P(e_{l+1} = b | e_l = a)`` over all ``k x k`` pairs (as in
  ExFlow), smoothed towards the next layer's popularity;
- temporal locality: per layer, the share of a token's experts that the previous token of the same
  request also used (``reuse_rate``), the distribution of how many of its ``k`` experts a token
  reuses (``overlap``), and the share it shares with the token ``d`` back for ``d = 1..D``
  (``lag_target``, the lag overlap of `workloads.stats.lag_overlap`; ``D`` = ``max_lag`` of `fit`).

How it samples (vectorised over tokens, one pass per layer, deterministic under a seed):

1. *Fresh* experts for every token at layer ``l`` are drawn without replacement (Plackett-Luce,
   equivalently Gumbel-top-k) from weights ``exp(log p_l + bias_l + beta_{l-1} * sum_{a in S}
   PMI_{l-1}[a, :])`` where ``S`` is the token's expert set at layer ``l-1`` and ``PMI`` the
   pointwise mutual information of the fitted affinity (so popularity and affinity mix in the
   logits, each previous expert adding its evidence). At the first layer, each pick adds
   ``gamma0 * PMI`` of the first layer's within-layer co-activation to the remaining experts, so
   that sets are coherent (real first-layer sets are: a pairwise affinity cannot be reached from
   incoherent random sets).
2. *Temporal reuse at several lags*: a token with a predecessor in its request copies ``m`` experts
   of an earlier token of the request at that layer, ``m ~ copy_dist_l``, from the token ``d`` back
   with probability ``lag_weights[l, d-1]`` (a reuse-distance distribution; ``d`` is capped at the
   token's position). ``m = k``: the source's whole set; ``0 < m < k``: ``m`` of the source's
   experts chosen in proportion to the token's own weights, plus its best-ranked fresh experts not
   among them (resolved exactly, see `workloads._routing_sampler.apply_copies`); the other tokens
   keep their fresh draw.
3. ``bias`` (load per expert), ``beta`` (strength of affinity, matched on the mutual information
   between consecutive layers), ``gamma0``, ``copy_scale`` and ``lag_weights`` (the per-lag copy
   rates, matched on the lag overlap at ``d = 1..D``) are calibrated by simulation, layer by layer
   with common random numbers, so that sampled traces reproduce the fitted statistics.

`retarget` and `relayer` map a fitted process to another expert count / top-k / depth; their
assumptions are stated in `ASSUMPTIONS` (saved in every JSON file) and in their docstrings.

JSON format (version 1)::

    {"format": "moe-codesign/routing-process", "version": 1, "n_experts": E, "top_k": k,
     "n_moe_layers": L, "phase": 0|1, "tokens_per_request": int, "gamma0": float,
     "co_mi_target0": float, "assumptions": "...", "meta": {...provenance...},
     "arrays": {"popularity": ..., "affinity": ..., "bias": ..., "beta": ..., "reuse_rate": ...,
                "overlap": ..., "copy_scale": ..., "mi_target": ..., "coact0": ...,
                "lag_weights": ..., "lag_target": ...}}

(``coact0``, ``gamma0`` and ``co_mi_target0`` are optional on reading: absent means no
first-layer co-activation; ``lag_weights [L, D]`` and ``lag_target [L, D]`` are optional: absent
means copies from the previous token only, as written by earlier versions.)

An array is a nested list, or ``{"dtype": "float16"|"float32"|"float64", "shape": [...],
"zlib_base64": "..."}`` (little-endian bytes, zlib, base64) for compact files.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from workloads import _routing_sampler as _rs
from workloads import stats
from workloads.trace import DECODE, RoutingTrace

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

FORMAT_NAME = "moe-codesign/routing-process"
FORMAT_VERSION = 1

#: Stated assumptions of the process, saved in every file.
ASSUMPTIONS = (
    "Routing is modelled as: per-layer expert popularity; within-layer co-activation at the first "
    "layer only (later layers inherit set coherence through the affinity); a first-order inter-layer dependence "
    "(a token's experts at layer l+1 depend only on its experts at layer l, through the pointwise "
    "mutual information of the fitted affinity P(e_{l+1}|e_l), each previous expert adding its "
    "evidence with a calibrated strength beta); and temporal reuse at lags 1..D (a token copies m of "
    "the experts of the token d back at the same layer, m drawn from the fitted overlap distribution, d "
    "from a per-layer lag distribution calibrated on the overlap with the token d back). "
    "Longer-range dependences (across several layers, beyond D tokens, on token content) are not modelled. "
    "retarget(n_experts, top_k): experts are ordered by popularity at each layer and placed on a "
    "[0, 1] rank axis, each old expert owning an equal slice; a new expert owns an equal slice of the "
    "same axis and inherits the popularity and affinity mass of the old slices it overlaps. With "
    "n_experts = m * E (fine-grained split) each child inherits 1/m of its parent's popularity and "
    "its parent's affinity row and column spread evenly over siblings; with fewer experts, neighbours "
    "in popularity rank merge. Popularity is capped at 1/top_k per expert. The temporal reuse rate per "
    "layer (share of a token's experts used by the previous token) and the inter-layer mutual "
    "information (scaled by what the mapping itself keeps) are kept, and the model is recalibrated. "
    "relayer(n_layers): each new layer takes the statistics of the old layer at the nearest relative "
    "depth; each new transition maps that layer's experts to the next one's: the old affinity, the "
    "product of old affinities over skipped layers, or for a duplicated layer the there-and-back chain "
    "through a neighbouring layer; then the process is recalibrated."
)

_BETA_MAX = 2.0  # assumption: caps the affinity strength where the pairwise model cannot reach the MI
_ARRAY_NAMES = ("popularity", "affinity", "bias", "beta", "reuse_rate", "overlap", "copy_scale", "mi_target")


class ProcessFormatError(ValueError):
    """A routing-process file or parameter set is malformed; the message names what and where."""


def _as_float(name: str, value: npt.ArrayLike, shape: tuple[int, ...], where: str) -> FloatArray:
    a = np.array(value, dtype=np.float64)
    if a.size == 0 and math.prod(shape) == 0:  # empty nested lists lose their trailing dimensions
        a = a.reshape(shape)
    if a.shape != shape:
        raise ProcessFormatError(f"{where}: {name} has shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)):
        bad = [int(i) for i in np.argwhere(~np.isfinite(a))[0]]
        raise ProcessFormatError(f"{where}: {name}{bad} is not finite ({a[tuple(bad)]})")
    a.setflags(write=False)
    return a


def _check_distribution(name: str, a: FloatArray, where: str, tol: float = 1e-3) -> FloatArray:
    """Rows of ``a`` must be >= 0 and sum to 1 within ``tol``; returns them renormalised."""
    if a.size and a.min() < 0:
        bad = [int(i) for i in np.argwhere(a < 0)[0]]
        raise ProcessFormatError(f"{where}: {name}{bad} = {a[tuple(bad)]} is negative")
    s = a.sum(axis=-1, keepdims=True)
    if a.size and np.max(np.abs(s - 1.0)) > tol:
        bad = [int(i) for i in np.argwhere(np.abs(s[..., 0] - 1.0) > tol)[0]]
        raise ProcessFormatError(
            f"{where}: {name} row {bad} sums to {float(s[tuple(bad)][0]):.6f}, expected 1 (+-{tol})"
        )
    out = a / s if a.size and np.max(np.abs(s - 1.0)) > 1e-12 else a  # idempotent: exact round trips
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class RoutingProcess:
    """Fitted routing process (module docstring): sample traces of any length, retarget, relayer.

    Arrays (``L`` layers, ``E`` experts, ``k = top_k``), validated and made read-only at construction:

    - ``popularity[L, E]``: target share of routed slots per expert (rows sum to 1, each <= 1/k);
    - ``affinity[L-1, E, E]``: row-stochastic ``P(e_{l+1} = b | e_l = a)``, all entries > 0;
    - ``bias[L, E]``: calibrated logit correction; ``beta[L-1]`` >= 0: calibrated affinity strength;
    - ``reuse_rate[L]`` in [0, 1]: target share of a token's experts reused from the previous token;
    - ``overlap[L, k+1]``: observed distribution of reused-expert counts (rows sum to 1);
    - ``copy_scale[L]`` in ``[0, 1/(1-overlap[:, 0])]``: calibrated; ``copy_dist = copy_scale *
      overlap`` for ``m >= 1``, the rest at ``m = 0``;
    - ``mi_target[L-1]``: target mutual information (bits) between consecutive layers;
    - ``lag_weights[L, D]`` (rows sum to 1): given that a token copies, the probability that it
      copies from the token ``d = 1..D`` back (None: ``[[1]] * L``, the previous token only);
    - ``lag_target[L, D]`` in [0, 1] or nan (not measured): target overlap with the token ``d`` back
      (None: ``reuse_rate`` at ``d = 1``).

    ``tokens_per_request`` is the typical request length (used for calibration), ``phase`` the phase
    written into sampled traces, ``meta`` provenance (model, source, licence, fit figures).

    First-layer coherence: ``coact0[E, E]`` is the within-layer co-activation pair distribution of
    the first layer (off-diagonal, symmetric, sums to 1; all zero = none), ``gamma0 >= 0`` the
    calibrated strength with which each first-layer pick adds ``gamma0 * PMI(coact0)`` to the
    others' log-weights, and ``co_mi_target0`` its target mutual information (bits). Later layers
    get their coherence from the previous layer's (coherent) set through the affinity.
    """

    popularity: FloatArray
    affinity: FloatArray
    bias: FloatArray
    beta: FloatArray
    reuse_rate: FloatArray
    overlap: FloatArray
    copy_scale: FloatArray
    mi_target: FloatArray
    top_k: int
    phase: int = DECODE
    tokens_per_request: int = 256
    meta: dict[str, Any] = field(default_factory=dict)
    coact0: FloatArray | None = None
    gamma0: float = 0.0
    co_mi_target0: float = 0.0
    lag_weights: FloatArray | None = None
    lag_target: FloatArray | None = None

    def __post_init__(self) -> None:
        where = f"RoutingProcess({self.meta.get('model', '?')})"
        pop = np.asarray(self.popularity, dtype=np.float64)
        if pop.ndim != 2 or pop.shape[0] < 1 or pop.shape[1] < 1:
            raise ProcessFormatError(f"{where}: popularity must be [layers >= 1, experts >= 1], got {pop.shape}")
        n_l, n_e = pop.shape
        k = self.top_k
        if not isinstance(k, int | np.integer) or not 1 <= k <= n_e:
            raise ProcessFormatError(f"{where}: top_k must be an int in [1, n_experts={n_e}], got {k!r}")
        k = int(k)
        object.__setattr__(self, "top_k", k)
        if self.phase not in (0, 1):
            raise ProcessFormatError(f"{where}: phase must be 0 (prefill) or 1 (decode), got {self.phase!r}")
        if int(self.tokens_per_request) < 1:
            raise ProcessFormatError(f"{where}: tokens_per_request must be >= 1, got {self.tokens_per_request}")
        object.__setattr__(self, "tokens_per_request", int(self.tokens_per_request))
        pop = _check_distribution("popularity", _as_float("popularity", pop, (n_l, n_e), where), where)
        if pop.max() > (1.0 / k) * (1 + 1e-3):
            bad = [int(i) for i in np.argwhere(pop > (1.0 / k) * (1 + 1e-3))[0]]
            raise ProcessFormatError(
                f"{where}: popularity{bad} = {pop[tuple(bad)]:.4f} exceeds 1/top_k = {1.0 / k:.4f}"
            )
        aff = _as_float("affinity", self.affinity, (n_l - 1, n_e, n_e), where)
        aff = _check_distribution("affinity", aff, where)
        if aff.size and aff.min() <= 0:  # smoothed fits are > 0; float16 files may round tiny ones to 0
            aff = np.maximum(aff, 1e-12)
            aff = aff / aff.sum(axis=-1, keepdims=True)
        overlap = _check_distribution("overlap", _as_float("overlap", self.overlap, (n_l, k + 1), where), where)
        arrays = {
            "popularity": pop,
            "affinity": aff,
            "overlap": overlap,
            "bias": _as_float("bias", self.bias, (n_l, n_e), where),
            "beta": _as_float("beta", self.beta, (n_l - 1,), where),
            "reuse_rate": _as_float("reuse_rate", self.reuse_rate, (n_l,), where),
            "copy_scale": _as_float("copy_scale", self.copy_scale, (n_l,), where),
            "mi_target": _as_float("mi_target", self.mi_target, (n_l - 1,), where),
        }
        for name in ("beta", "copy_scale", "mi_target"):
            if arrays[name].size and arrays[name].min() < 0:
                raise ProcessFormatError(f"{where}: {name} must be >= 0, got min {arrays[name].min()}")
        rr = arrays["reuse_rate"]
        if rr.size and (rr.min() < 0 or rr.max() > 1):
            raise ProcessFormatError(f"{where}: reuse_rate must be in [0, 1], got [{rr.min()}, {rr.max()}]")
        smax = self._copy_scale_max(overlap)
        if np.any(arrays["copy_scale"] > smax + 1e-9):
            at = int(np.argmax(arrays["copy_scale"] - smax))
            raise ProcessFormatError(
                f"{where}: copy_scale[{at}] = {arrays['copy_scale'][at]} exceeds 1/(1 - overlap[{at}, 0]) = {smax[at]}"
            )
        for name, arr in arrays.items():
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "meta", dict(self.meta))
        co = np.zeros((n_e, n_e)) if self.coact0 is None else _as_float("coact0", self.coact0, (n_e, n_e), where)
        if co.size and co.min() < 0:
            raise ProcessFormatError(f"{where}: coact0 must be >= 0, got min {co.min()}")
        total = float(co.sum())
        if total > 0 and abs(total - 1.0) > 1e-3:
            raise ProcessFormatError(f"{where}: coact0 must sum to 1 (or be all zero), sums to {total:.6f}")
        co = co / total if total > 0 and abs(total - 1.0) > 1e-12 else co
        co.setflags(write=False)
        object.__setattr__(self, "coact0", co)
        for name in ("gamma0", "co_mi_target0"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ProcessFormatError(f"{where}: {name} must be finite and >= 0, got {v}")
            object.__setattr__(self, name, v)
        lw_in = np.ones((n_l, 1)) if self.lag_weights is None else np.asarray(self.lag_weights, dtype=np.float64)
        if lw_in.ndim != 2 or lw_in.shape[0] != n_l or lw_in.shape[1] < 1:
            raise ProcessFormatError(f"{where}: lag_weights must be [layers={n_l}, lags >= 1], got {lw_in.shape}")
        n_lag = lw_in.shape[1]
        lw = _check_distribution("lag_weights", _as_float("lag_weights", lw_in, (n_l, n_lag), where), where)
        object.__setattr__(self, "lag_weights", lw)
        if self.lag_target is None:
            lt = np.full((n_l, n_lag), np.nan)
            lt[:, 0] = arrays["reuse_rate"]
        else:
            lt = np.array(self.lag_target, dtype=np.float64)
            if lt.shape != (n_l, n_lag):
                raise ProcessFormatError(f"{where}: lag_target has shape {lt.shape}, expected {(n_l, n_lag)}")
            if np.any(np.isinf(lt)) or np.nanmin(np.append(lt, 0.0)) < 0 or np.nanmax(np.append(lt, 0.0)) > 1:
                raise ProcessFormatError(f"{where}: lag_target must be in [0, 1] (nan = not measured)")
        lt.setflags(write=False)
        object.__setattr__(self, "lag_target", lt)

    # ------------------------------------------------------------------ shape
    @property
    def n_moe_layers(self) -> int:
        return int(self.popularity.shape[0])

    @property
    def n_experts(self) -> int:
        return int(self.popularity.shape[1])

    @property
    def max_lag(self) -> int:
        """``D``: how many tokens back a token may copy from."""
        return int(np.asarray(self.lag_weights).shape[1])

    def __repr__(self) -> str:
        return (
            f"RoutingProcess(model={self.meta.get('model')!r}, moe_layers={self.n_moe_layers}, "
            f"n_experts={self.n_experts}, top_k={self.top_k})"
        )

    @staticmethod
    def _copy_scale_max(overlap: FloatArray) -> FloatArray:
        with np.errstate(divide="ignore"):
            return np.where(overlap[:, 0] < 1.0, 1.0 / np.maximum(1.0 - overlap[:, 0], 1e-12), 0.0)

    @property
    def copy_dist(self) -> FloatArray:
        """``[L, k+1]``: probability that a token with a predecessor copies ``m`` experts from it."""
        q = self.overlap * self.copy_scale[:, None]
        q[:, 0] = 0.0
        q[:, 0] = np.clip(1.0 - q.sum(axis=1), 0.0, 1.0)
        return np.asarray(q / q.sum(axis=1, keepdims=True), dtype=np.float64)

    def pmi(self) -> FloatArray:
        """``[L-1, E, E]`` pointwise mutual information ``log(P(a, b) / (P(a) P(b)))`` (natural log)
        of the joint ``popularity_l[a] * affinity_l[a, b]``."""
        joint = self.popularity[:-1, :, None] * self.affinity
        pa = joint.sum(axis=2, keepdims=True)
        pb = joint.sum(axis=1, keepdims=True)
        return np.asarray(np.log(joint / (pa * pb)), dtype=np.float64)

    def co_pmi(self) -> FloatArray:
        """``[E, E]`` pointwise mutual information of the first layer's co-activation pairs (0 where
        there is none; the diagonal is 0)."""
        co = np.asarray(self.coact0, dtype=np.float64)
        if co.sum() <= 0:
            return np.zeros_like(co)
        p = co.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(co > 0, np.log(co / np.maximum(np.outer(p, p), 1e-300)), 0.0)
        np.fill_diagonal(out, 0.0)
        return np.asarray(out, dtype=np.float64)

    def _co_log(self, gamma: float) -> npt.NDArray[np.float32] | None:
        if gamma <= 0 or self.top_k < 2 or float(np.asarray(self.coact0).sum()) <= 0:
            return None
        return np.clip(gamma * self.co_pmi(), -20.0, 20.0).astype(np.float32)

    # -------------------------------------------------------------------- fit
    @classmethod
    def fit(
        cls,
        trace: RoutingTrace,
        *,
        smoothing: float = 1.0,
        shrinkage: float | None = None,
        calibration_iterations: int = 8,
        calibration_tokens: int | None = None,
        seed: int = 0,
        max_lag: int = 4,
    ) -> RoutingProcess:
        """Fit popularity, affinity and temporal reuse to ``trace``, then calibrate by simulation.

        ``max_lag`` (``D`` >= 1) is how many tokens back a token may copy experts from; the copy
        rate per lag is calibrated on the trace's overlap with the token ``d`` back (``d <= D``;
        lags that no request of the trace is long enough to show are not copied from).

        ``smoothing`` is an add-``smoothing`` pseudo-count per expert (popularity) and per affinity
        cell (distributed like the next layer's popularity). ``shrinkage`` is the weight ``lambda``
        of the fitted popularity against uniform (``p = lambda p_hat + (1 - lambda) / E``): expert
        popularity varies from one set of prompts to another, so the trace's own load over-fits it;
        ``None`` chooses ``lambda`` by cross-validation over the trace's requests (`shrinkage_cv`;
        1 when it has fewer than 4 requests). ``calibration_tokens`` defaults to the
        8192 tokens. Deterministic for a given ``seed``.
        Raises ValueError if the trace has no routed expert.
        """
        if smoothing <= 0:
            raise ValueError(f"RoutingProcess.fit: smoothing must be > 0, got {smoothing}")
        if isinstance(max_lag, bool) or not isinstance(max_lag, int) or max_lag < 1:
            raise ValueError(f"RoutingProcess.fit: max_lag must be an int >= 1, got {max_lag!r}")
        if trace.n_tokens == 0 or not np.any(trace.experts >= 0):
            raise ValueError(f"RoutingProcess.fit: trace {trace.meta.get('source', '')!r} has no routed expert")
        k = trace.top_k
        if trace.k != k:
            log.info("trace has %d slots per layer but top_k=%d; fitting top_k=%d", trace.k, k, k)
        n_e = trace.n_experts
        load = stats.expert_load(trace).astype(np.float64)
        pop = (load + smoothing) / (load.sum(axis=1, keepdims=True) + smoothing * n_e)
        lam = shrinkage_cv(trace, seed=seed) if shrinkage is None else float(shrinkage)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"RoutingProcess.fit: shrinkage must be in [0, 1], got {lam}")
        pop = _cap_popularity(lam * pop + (1.0 - lam) / n_e, k)
        joint = stats.affinity_counts(trace).astype(np.float64)
        aff = _smooth_affinity(joint, pop, smoothing)
        reuse = stats.temporal_reuse(trace, distances=False)
        pooled = reuse.mean_rate
        rate = np.where(np.isfinite(reuse.rate), reuse.rate, pooled if math.isfinite(pooled) else 0.0)
        oh = reuse.overlap_hist.astype(np.float64)
        if oh.shape[1] != k + 1:  # trace with more slots than top_k: fold the excess into m = k
            oh = np.concatenate([oh[:, :k], oh[:, k:].sum(axis=1, keepdims=True)], axis=1)
        oh = np.where(oh.sum(axis=1, keepdims=True) > 0, oh, np.eye(1, k + 1))
        overlap = oh / oh.sum(axis=1, keepdims=True)
        lag_target = stats.lag_overlap(trace, max_lag)
        lag_target[:, 0] = np.clip(rate, 0.0, 1.0)
        # start: copy rate per lag in proportion to the overlap above chance (calibration refines it)
        chance = k * (pop**2).sum(axis=1, keepdims=True)
        excess = np.where(np.isfinite(lag_target), np.maximum(lag_target - chance, 0.0), 0.0)
        excess[:, 0] = np.maximum(excess[:, 0], 1e-3)
        lag_weights = excess / excess.sum(axis=1, keepdims=True)
        mi = _mi_corrected(joint, trace.n_tokens * k)
        co_raw = stats.coactivation(trace)[0].astype(np.float64)
        np.fill_diagonal(co_raw, 0.0)
        if k >= 2 and co_raw.sum() > 0:
            co_mi = float(_mi_corrected(co_raw[None], trace.n_tokens * k)[0])
            co_p = co_raw.sum(axis=1) / co_raw.sum()
            co_s = co_raw + smoothing * n_e * np.outer(co_p, co_p)
            np.fill_diagonal(co_s, 0.0)
            coact0 = co_s / co_s.sum()
        else:
            co_mi, coact0 = 0.0, np.zeros((n_e, n_e))
        lengths = np.bincount(np.unique(trace.request, return_inverse=True)[1])
        tpr = int(max(1, round(float(np.median(lengths))))) if lengths.size else 1
        phase = DECODE if (trace.phase == DECODE).sum() * 2 >= trace.n_tokens else 0
        n_cal = calibration_tokens or 8192
        meta = {
            "model": trace.meta.get("model"),
            "source": trace.meta.get("source"),
            "licence": trace.meta.get("licence"),
            "fitted_from": {
                "tokens": trace.n_tokens,
                "requests": trace.n_requests,
                "source": trace.meta.get("source"),
                "smoothing": smoothing,
                "popularity_shrinkage": lam,
                "max_lag": max_lag,
            },
            "calibration": {"tokens": n_cal, "iterations": calibration_iterations, "seed": seed},
        }
        init = cls(
            popularity=pop,
            affinity=aff,
            bias=np.zeros_like(pop),
            beta=np.full(pop.shape[0] - 1, 0.7),
            reuse_rate=np.clip(rate, 0.0, 1.0),
            overlap=overlap,
            copy_scale=np.minimum(0.8, cls._copy_scale_max(overlap)),
            mi_target=mi,
            top_k=k,
            phase=phase,
            tokens_per_request=tpr,
            meta=meta,
            coact0=coact0,
            gamma0=0.5 if co_mi > 0 else 0.0,
            co_mi_target0=co_mi,
            lag_weights=lag_weights,
            lag_target=lag_target,
        )
        return init.calibrate(iterations=calibration_iterations, n_tokens=n_cal, seed=seed)

    # -------------------------------------------------------------- calibrate
    def calibrate(
        self, *, iterations: int = 8, n_tokens: int = 16384, seed: int = 0, refine_passes: int = 4
    ) -> RoutingProcess:
        """Adjust ``bias``, ``beta``, ``copy_scale`` and ``lag_weights`` so that sampled traces match
        ``popularity``, ``mi_target``, ``reuse_rate`` and ``lag_target``.

        Layer by layer, on ``n_tokens`` tokens in requests of ``tokens_per_request``: the layer is
        sampled ``iterations`` times with fresh random numbers (upstream layers fixed), and
        after each draw ``bias_l += 0.8 log(p / q)``, ``beta_{l-1} *= sqrt(MI_target / MI)``
        (bounded steps; ``gamma0`` likewise on the first layer's co-activation MI; the last three
        iterations adjust bias and reuse only) and the per-lag copy rates ``copy_scale_l *
        lag_weights[l, d]`` each take a Newton step on the overlap with the token ``d`` back (their
        sum capped at the largest valid ``copy_scale``; ``d = 1`` alone is the reuse rate); the
        layer's bias is the Polyak average of its iterates over the second half of the
        iterations. Then ``refine_passes`` whole-chain samples of ``n_tokens`` (fresh random numbers
        each) correct every layer's bias by ``log(p / q) / (j + 1)`` (Robbins-Monro), so the bias
        targets the population popularity, not the noise of one sample. Returns a new
        process; the achieved errors are recorded in ``meta["calibration"]``. Deterministic.
        """
        if iterations < 0 or n_tokens < 1:
            raise ValueError(f"calibrate: iterations must be >= 0 and n_tokens >= 1, got {iterations}, {n_tokens}")
        k, n_e, n_l = self.top_k, self.n_experts, self.n_moe_layers
        lengths = _request_lengths(n_tokens, None, self.tokens_per_request, None)
        tokens = _rs.Tokens.from_lengths(lengths)
        rng = np.random.default_rng(seed)
        bias, beta, scale = self.bias.copy(), self.beta.copy(), self.copy_scale.copy()
        lag_w = np.array(self.lag_weights, dtype=np.float64)
        lag_t = np.asarray(self.lag_target)
        n_lag = lag_w.shape[1]
        lag_err = np.zeros(n_l)
        gamma = self.gamma0
        co_err = 0.0
        smax = self._copy_scale_max(self.overlap)
        mean_m = (self.overlap * np.arange(k + 1)).sum(axis=1) / k  # copied share per unit of copy_scale
        pmi = self.pmi()
        load_err = np.zeros(n_l)
        mi_err = np.zeros(max(n_l - 1, 0))
        reuse_err = np.zeros(n_l)
        hp = np.flatnonzero(tokens.has_prev)
        prev: npt.NDArray[np.int16] | None = None
        avg_from = iterations // 2  # Polyak averaging of the bias over the second half of the iterations
        for layer in range(n_l):
            bias_sum, n_avg = np.zeros(n_e), 0
            for it in range(iterations + 1):
                if it == iterations and n_avg:
                    bias[layer] = bias_sum / n_avg
                log_r = (
                    None
                    if prev is None
                    else _rs.log_factor(pmi[layer - 1], beta[layer - 1], self.popularity[layer - 1])
                )
                q_copy = self.overlap[layer] * scale[layer]
                q_copy[0] = max(0.0, 1.0 - q_copy[1:].sum())
                model = _rs.LayerModel.build(
                    np.log(self.popularity[layer]) + bias[layer],
                    log_r,
                    q_copy / q_copy.sum(),
                    k,
                    co_log=self._co_log(gamma) if layer == 0 else None,
                    lag_dist=lag_w[layer] if n_lag > 1 else None,
                )
                cur = _rs.sample_layer(model, prev, rng, tokens)
                load = np.bincount(cur.ravel(), minlength=n_e).astype(np.float64)
                q = (load + 0.5) / (load.sum() + 0.5 * n_e)
                load_err[layer] = float(np.max(np.abs(q / self.popularity[layer] - 1.0)))
                match = np.zeros((k, hp.size), dtype=bool)
                for j in range(k):
                    match |= cur[:, hp] == cur[j, hp - 1]
                r_sim = float(match.mean()) if hp.size else 0.0
                reuse_err[layer] = abs(r_sim - self.reuse_rate[layer])
                ov_sim = _lag_overlap_sim(cur, tokens.pos, n_lag) if n_lag > 1 else np.array([r_sim])
                ov_sim[0] = r_sim
                measured = np.isfinite(lag_t[layer]) & np.isfinite(ov_sim)
                lag_err[layer] = float(np.max(np.abs(ov_sim - lag_t[layer])[measured], initial=0.0))
                mi = 0.0
                if prev is not None:
                    joint = np.zeros(n_e * n_e)
                    for i in range(k):
                        for j in range(k):
                            joint += np.bincount(prev[i].astype(np.intp) * n_e + cur[j], minlength=n_e * n_e)
                    mi = float(_mi_corrected(joint.reshape(1, n_e, n_e), n_tokens * k)[0])
                    mi_err[layer - 1] = abs(mi - self.mi_target[layer - 1])
                co_mi = 0.0
                if layer == 0 and self.co_mi_target0 > 0:
                    co = np.zeros(n_e * n_e)
                    for i in range(k):
                        for j in range(k):
                            if i != j:
                                co += np.bincount(cur[i].astype(np.intp) * n_e + cur[j], minlength=n_e * n_e)
                    co_mi = float(_mi_corrected(co.reshape(1, n_e, n_e), n_tokens * k)[0])
                    co_err = abs(co_mi - self.co_mi_target0)
                if it == iterations:
                    break
                if layer == 0 and self.co_mi_target0 > 0 and it < iterations - 3:
                    ratio = math.sqrt(self.co_mi_target0 / co_mi) if co_mi > 1e-6 else 2.0
                    gamma = float(np.clip(max(gamma, 0.05) * np.clip(ratio, 0.5, 2.0), 0.0, _BETA_MAX))
                bias[layer] += 0.8 * np.log(self.popularity[layer] / q)
                bias[layer] -= bias[layer].mean()
                if it >= avg_from:
                    bias_sum += bias[layer]
                    n_avg += 1
                if prev is not None and it < iterations - 3:  # the last steps settle bias and reuse only
                    target = self.mi_target[layer - 1]
                    ratio = math.sqrt(target / mi) if mi > 1e-6 else 2.0
                    beta[layer - 1] = float(np.clip(beta[layer - 1] * np.clip(ratio, 0.5, 2.0), 0.0, _BETA_MAX))
                chance = k * float((q**2).sum())
                slope = max(float(mean_m[layer]) * (1.0 - chance), 1e-3)
                if n_lag == 1:
                    scale[layer] = float(
                        np.clip(scale[layer] + (self.reuse_rate[layer] - r_sim) / slope, 0.0, smax[layer])
                    )
                else:  # a Newton step per lag on its copy rate; lags without a target are not copied from
                    per_lag = scale[layer] * lag_w[layer]
                    step = np.where(measured, (lag_t[layer] - np.where(measured, ov_sim, 0.0)) / slope, -per_lag)
                    # the previous token (d = 1) takes full steps; longer lags, which also move each
                    # other through chains of copies, take half steps and stay fixed in the last steps
                    step[1:] *= 0.5 if it < iterations - 3 else 0.0
                    per_lag = np.maximum(per_lag + step, 0.0)
                    total = float(per_lag.sum())
                    if total > smax[layer]:  # over the cap: the longer lags give way first
                        rest = max(float(smax[layer]) - per_lag[0], 0.0)
                        per_lag[0] = min(per_lag[0], float(smax[layer]))
                        tail = float(per_lag[1:].sum())
                        per_lag[1:] *= rest / tail if tail > 0 else 0.0
                        total = float(per_lag.sum())
                    scale[layer] = total
                    lag_w[layer] = per_lag / total if total > 0 else np.eye(1, n_lag)[0]
            prev = cur
        # Whole-chain refinement: the bias above was fitted against one fixed upstream sample per
        # layer, so it also absorbed that sample's noise. Fresh full-chain samples (new random
        # numbers each pass) correct all layers at once with Robbins-Monro gains 1/(j+1), so the
        # bias converges to the population target rather than to any single sample.
        for j in range(refine_passes if iterations > 0 else 0):
            cur_proc = replace(self, bias=bias.copy(), beta=beta, copy_scale=scale, gamma0=gamma, lag_weights=lag_w)
            drawn = cur_proc._sample_experts(lengths, rng)  # [n, L, k]
            for layer in range(n_l):
                load = np.bincount(drawn[:, layer].ravel(), minlength=n_e).astype(np.float64)
                q = (load + 0.5) / (load.sum() + 0.5 * n_e)
                load_err[layer] = float(np.max(np.abs(q / self.popularity[layer] - 1.0)))
                bias[layer] += np.log(self.popularity[layer] / q) / (j + 1)
                bias[layer] -= bias[layer].mean()
        errors = {
            "load_max_rel_error": float(load_err.max()),
            "mi_abs_error_bits": float(mi_err.max()) if mi_err.size else 0.0,
            "reuse_abs_error": float(reuse_err.max()),
            "first_layer_co_mi_abs_error_bits": co_err,
            "lag_overlap_abs_error": float(lag_err.max()),
        }
        log.debug("calibration: %s", errors)
        meta = dict(self.meta)
        meta["calibration"] = {
            **dict(meta.get("calibration") or {}),
            "tokens": n_tokens,
            "iterations": iterations,
            "seed": seed,
            "achieved": errors,
        }
        return replace(self, bias=bias, beta=beta, copy_scale=scale, gamma0=gamma, lag_weights=lag_w, meta=meta)

    # ----------------------------------------------------------------- sample
    def sample(
        self,
        n_tokens: int,
        seed: int | None = 0,
        *,
        n_requests: int | None = None,
        tokens_per_request: int | None = None,
        request_lengths: Sequence[int] | None = None,
        phase: int | None = None,
    ) -> RoutingTrace:
        """A synthetic `RoutingTrace` of ``n_tokens`` tokens (vectorised, deterministic under ``seed``).

        Requests: give at most one of ``n_requests`` (tokens split as evenly as possible, at most
        ``n_tokens`` requests: more is a ValueError),
        ``tokens_per_request`` (the last request takes the remainder) or ``request_lengths`` (must sum
        to ``n_tokens``); none means one request. ``phase`` defaults to the fitted trace's phase.
        """
        lengths = _request_lengths(n_tokens, n_requests, tokens_per_request, request_lengths)
        rng = np.random.default_rng(seed)
        experts = self._sample_experts(lengths, rng)
        req = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        pos = (np.arange(n_tokens, dtype=np.int64) - np.repeat(starts, lengths)).astype(np.int32)
        ph = self.phase if phase is None else phase
        if ph not in (0, 1):
            raise ValueError(f"sample: phase must be 0 or 1, got {ph!r}")
        meta = {
            "model": self.meta.get("model"),
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "source": f"RoutingProcess({self.meta.get('model')}) seed={seed}",
            "licence": self.meta.get("licence"),
            "synthetic": True,
        }
        return RoutingTrace(
            experts=experts, request=req, position=pos, phase=np.full(n_tokens, ph, dtype=np.uint8), meta=meta
        )

    def sample_experts(self, lengths: Sequence[int] | npt.ArrayLike, rng: np.random.Generator) -> npt.NDArray[np.int16]:
        """Experts ``int16 [sum(lengths), L, k]`` for consecutive requests of the given lengths."""
        return self._sample_experts(np.asarray(lengths, dtype=np.int64), rng)

    def _layer_models(self) -> list[_rs.LayerModel]:
        """Per-layer sampling tables, built once per process (cached on the instance)."""
        cached = self.__dict__.get("_layer_cache")
        if cached is not None:
            return cast(list[_rs.LayerModel], cached)
        log_base = np.log(self.popularity) + self.bias
        pmi = self.pmi()
        dist = self.copy_dist
        models = [
            _rs.LayerModel.build(
                log_base[layer],
                None
                if layer == 0
                else _rs.log_factor(pmi[layer - 1], float(self.beta[layer - 1]), self.popularity[layer - 1]),
                dist[layer],
                self.top_k,
                co_log=self._co_log(self.gamma0) if layer == 0 else None,
                lag_dist=np.asarray(self.lag_weights)[layer] if self.max_lag > 1 else None,
            )
            for layer in range(self.n_moe_layers)
        ]
        object.__setattr__(self, "_layer_cache", models)
        return models

    def _sample_experts(self, lengths: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.int16]:
        tokens = _rs.Tokens.from_lengths(lengths)
        n_l, k = self.n_moe_layers, self.top_k
        if tokens.n == 0:
            return np.empty((0, n_l, k), dtype=np.int16)
        buf = np.empty((n_l, k, tokens.n), dtype=np.int16)  # layer-major while sampling
        prev: npt.NDArray[np.int16] | None = None
        for layer, model in enumerate(self._layer_models()):
            buf[layer] = _rs.sample_layer(model, prev, rng, tokens)
            prev = buf[layer]
        return np.ascontiguousarray(buf.transpose(2, 0, 1))

    # -------------------------------------------------------------- retarget
    def retarget(
        self,
        n_experts: int,
        top_k: int,
        *,
        calibration_iterations: int = 6,
        calibration_tokens: int = 8192,
        seed: int = 0,
    ) -> RoutingProcess:
        """This process mapped to ``n_experts`` experts and top-``top_k`` routing.

        Assumption (also in `ASSUMPTIONS`): experts of each layer are ordered by popularity on a
        [0, 1] rank axis, each old expert owning a slice of width 1/E; new expert ``j`` (labels in
        popularity order) owns ``[j/E', (j+1)/E']`` and inherits the popularity and affinity mass
        of the old slices it overlaps, in proportion to the overlap. For ``E' = m E`` (DeepSeekMoE
        fine-grained split) each child gets 1/m of its parent's popularity and its parent's affinity
        row; for ``E' < E`` neighbours in rank merge. Popularity is capped at ``1/top_k``. Kept: the
        per-layer temporal reuse rate; the inter-layer mutual information scaled by the share the
        mapping keeps; the overlap distribution's shape (counts rescaled to ``top_k``). The result
        is recalibrated by simulation.
        """
        if not isinstance(n_experts, int) or not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
            raise ValueError(
                f"retarget: need ints 1 <= top_k <= n_experts, got n_experts={n_experts!r}, top_k={top_k!r}"
            )
        n_l, e_old, k_old = self.n_moe_layers, self.n_experts, self.top_k
        maps = [_rank_map(self.popularity[layer], n_experts) for layer in range(n_l)]
        pop = np.stack([self.popularity[layer] @ maps[layer] for layer in range(n_l)])
        pop = _cap_popularity(pop, top_k)
        joint_old = self.popularity[:-1, :, None] * self.affinity
        aff = np.empty((n_l - 1, n_experts, n_experts))
        mi = np.empty(n_l - 1)
        for t in range(n_l - 1):
            j_new = maps[t].T @ joint_old[t] @ maps[t + 1]
            aff[t] = stats.normalise_rows(j_new)
            keep = stats.mutual_information(j_new) / max(float(stats.mutual_information(joint_old[t])), 1e-12)
            mi[t] = self.mi_target[t] * min(1.0, float(keep))
        aff = np.maximum(aff, 1e-9)
        aff /= aff.sum(axis=2, keepdims=True)
        m_new = np.rint(np.arange(k_old + 1) * top_k / k_old).astype(int)
        overlap = np.zeros((n_l, top_k + 1))
        for m_old in range(k_old + 1):
            overlap[:, m_new[m_old]] += self.overlap[:, m_old]
        co_old = np.asarray(self.coact0, dtype=np.float64).copy()
        co_new = np.zeros((n_experts, n_experts))
        co_mi = 0.0
        if co_old.sum() > 0 and top_k >= 2:
            p0 = co_old.sum(axis=1)
            np.fill_diagonal(co_old, p0**2)  # self-pairs at independence: split siblings get PMI 0
            co_new = maps[0].T @ co_old @ maps[0]
            np.fill_diagonal(co_new, 0.0)
            co_new /= co_new.sum()
            np.fill_diagonal(co_old, 0.0)
            keep_co = float(stats.mutual_information(co_new)) / max(float(stats.mutual_information(co_old)), 1e-12)
            co_mi = self.co_mi_target0 * min(1.0, keep_co)
        meta = dict(self.meta)
        meta["retargeted_from"] = {
            "model": self.meta.get("model"),
            "n_experts": e_old,
            "top_k": k_old,
            "assumption": "rank-axis split/merge of popularity and affinity; reuse rate kept",
        }
        new = RoutingProcess(
            popularity=pop,
            affinity=aff,
            bias=np.zeros_like(pop),
            beta=np.full(n_l - 1, float(np.mean(self.beta)) if n_l > 1 else 0.0),
            reuse_rate=self.reuse_rate,
            overlap=overlap,
            copy_scale=np.minimum(np.asarray(self.copy_scale), self._copy_scale_max(overlap)),
            mi_target=mi,
            top_k=top_k,
            phase=self.phase,
            tokens_per_request=self.tokens_per_request,
            meta=meta,
            coact0=co_new,
            gamma0=self.gamma0 if co_mi > 0 else 0.0,
            co_mi_target0=co_mi,
            lag_weights=self.lag_weights,
            lag_target=self.lag_target,
        )
        return new.calibrate(iterations=calibration_iterations, n_tokens=calibration_tokens, seed=seed)

    def relayer(
        self, n_layers: int, *, calibration_iterations: int = 6, calibration_tokens: int = 8192, seed: int = 0
    ) -> RoutingProcess:
        """This process stretched or compressed to ``n_layers`` MoE layers.

        Assumption (also in `ASSUMPTIONS`): new layer ``i`` is old layer ``s(i) = round(i (L-1) /
        (n-1))`` (nearest relative depth: popularity, reuse, overlap, bias). Expert labels stay
        those of the old layer, so each new transition ``i`` must map ``s(i)``'s experts to
        ``s(i+1)``'s: for ``s(i+1) = s(i) + 1`` it is the old affinity; for a longer step the
        product of the old affinities in between (a Markov chain over the skipped layers, which
        weakens the association as depth is compressed); for ``s(i+1) = s(i)`` (a duplicated
        layer) the there-and-back chain ``P(e'|e) = sum_b A[e, b] P(e' | b)`` through the next old
        layer (the previous one at the last layer). The mutual-information targets are those of
        the new joints scaled by the old target-to-model ratio. Then the process is recalibrated.
        """
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"relayer: n_layers must be an int >= 1, got {n_layers!r}")
        n_l, n_e = self.n_moe_layers, self.n_experts
        src = np.rint(np.linspace(0, n_l - 1, n_layers)).astype(int) if n_layers > 1 else np.array([0])
        n_t = n_layers - 1
        aff = np.empty((n_t, n_e, n_e))
        mi = np.zeros(n_t)
        beta = np.zeros(n_t)
        joints = self.popularity[:-1, :, None] * self.affinity  # [L-1, E, E]
        model_mi = stats.mutual_information(joints) if n_l > 1 else np.zeros(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(model_mi > 1e-9, self.mi_target / np.maximum(model_mi, 1e-12), 1.0)
        for i in range(n_t):
            a, b = int(src[i]), int(src[i + 1])
            if n_l == 1:
                aff[i] = self.popularity[0][None, :]
                continue
            if b > a:
                m = self.affinity[a]
                for t in range(a + 1, b):
                    m = m @ self.affinity[t]
                used = list(range(a, b))
            else:  # duplicated layer: there and back through a neighbouring layer
                t = a if a < n_l - 1 else a - 1
                rev = stats.normalise_rows(joints[t].T)  # P(e_t = . | e_{t+1})
                m = self.affinity[t] @ rev if t == a else stats.normalise_rows(joints[t].T) @ self.affinity[t]
                used = [t]
            aff[i] = m
            joint = self.popularity[a][:, None] * m
            mi[i] = max(0.0, float(stats.mutual_information(joint)) * float(np.mean(ratio[used])))
            beta[i] = float(np.mean(self.beta[used]))
        aff = np.maximum(aff, 1e-12)
        aff /= aff.sum(axis=2, keepdims=True)
        meta = dict(self.meta)
        meta["relayered_from"] = {
            "moe_layers": n_l,
            "layer_map": src.tolist(),
            "assumption": "nearest relative depth; chained affinities keep expert labels",
        }
        new = RoutingProcess(
            popularity=self.popularity[src],
            affinity=aff,
            bias=self.bias[src],
            beta=beta,
            reuse_rate=self.reuse_rate[src],
            overlap=self.overlap[src],
            copy_scale=self.copy_scale[src],
            mi_target=mi,
            top_k=self.top_k,
            phase=self.phase,
            tokens_per_request=self.tokens_per_request,
            meta=meta,
            coact0=self.coact0,
            gamma0=self.gamma0,
            co_mi_target0=self.co_mi_target0,
            lag_weights=np.asarray(self.lag_weights)[src],
            lag_target=np.asarray(self.lag_target)[src],
        )
        return new.calibrate(iterations=calibration_iterations, n_tokens=calibration_tokens, seed=seed)

    def window(self, start: int, stop: int) -> RoutingProcess:
        """The consecutive MoE layers ``start .. stop-1`` of this process (their real transitions,
        no recalibration; the first-layer co-activation is kept only when ``start == 0``, so a later
        window should be recalibrated with `calibrate`)."""
        n_l = self.n_moe_layers
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= n_l):
            raise ValueError(f"window: need 0 <= start < stop <= {n_l}, got {start}, {stop}")
        meta = dict(self.meta)
        meta["window_of"] = {"moe_layers": n_l, "start": start, "stop": stop}
        keep_co = start == 0
        return RoutingProcess(
            popularity=self.popularity[start:stop],
            affinity=self.affinity[start : stop - 1],
            bias=self.bias[start:stop],
            beta=self.beta[start : stop - 1],
            reuse_rate=self.reuse_rate[start:stop],
            overlap=self.overlap[start:stop],
            copy_scale=self.copy_scale[start:stop],
            mi_target=self.mi_target[start : stop - 1],
            top_k=self.top_k,
            phase=self.phase,
            tokens_per_request=self.tokens_per_request,
            meta=meta,
            coact0=self.coact0 if keep_co else None,
            gamma0=self.gamma0 if keep_co else 0.0,
            co_mi_target0=self.co_mi_target0 if keep_co else 0.0,
            lag_weights=np.asarray(self.lag_weights)[start:stop],
            lag_target=np.asarray(self.lag_target)[start:stop],
        )

    # ------------------------------------------------------------------- JSON
    def to_dict(self, *, precision: str = "float64") -> dict[str, Any]:
        """JSON-able dict (module docstring). ``precision`` ``"float64"`` writes nested lists;
        ``"float32"``/``"float16"`` write compact zlib+base64 arrays (for shipped data files), the
        affinity at that precision and the other arrays at float32."""
        if precision not in ("float64", "float32", "float16"):
            raise ValueError(f"to_dict: precision must be float64, float32 or float16, got {precision!r}")
        arrays = {
            name: _encode(
                getattr(self, name),
                precision if name == "affinity" else "float64" if precision == "float64" else "float32",
            )
            for name in _ARRAY_NAMES
        }
        arrays["coact0"] = _encode(np.asarray(self.coact0), precision)
        if self.max_lag > 1:  # lag-1-only processes keep the earlier file layout
            small = "float64" if precision == "float64" else "float32"
            arrays["lag_weights"] = _encode(np.asarray(self.lag_weights), small)
            lt = np.asarray(self.lag_target)
            arrays["lag_target"] = (
                [[None if not math.isfinite(v) else float(v) for v in row] for row in lt.tolist()]
                if precision == "float64"
                else _encode(lt, "float32")
            )
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "n_moe_layers": self.n_moe_layers,
            "phase": self.phase,
            "gamma0": self.gamma0,
            "co_mi_target0": self.co_mi_target0,
            "tokens_per_request": self.tokens_per_request,
            "assumptions": ASSUMPTIONS,
            "meta": _jsonable(self.meta),
            "arrays": arrays,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "<dict>") -> RoutingProcess:
        """Inverse of `to_dict`; raises `ProcessFormatError` naming ``where`` and the bad field."""
        if not isinstance(d, dict):
            raise ProcessFormatError(f"{where}: expected a JSON object, got {type(d).__name__}")
        if d.get("format") != FORMAT_NAME:
            raise ProcessFormatError(f"{where}: 'format' is {d.get('format')!r}, expected {FORMAT_NAME!r}")
        version = d.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ProcessFormatError(f"{where}: unsupported version {version!r} (this reader: {FORMAT_VERSION})")
        for key in ("top_k", "arrays"):
            if key not in d:
                raise ProcessFormatError(f"{where}: missing field {key!r}")
        arrays_in = d["arrays"]
        if not isinstance(arrays_in, dict):
            raise ProcessFormatError(f"{where}: 'arrays' must be an object")
        arrays: dict[str, FloatArray] = {}
        for name in _ARRAY_NAMES:
            if name not in arrays_in:
                raise ProcessFormatError(f"{where}: arrays lacks {name!r}")
            arrays[name] = _decode(arrays_in[name], f"{where}: arrays.{name}")
        coact0 = _decode(arrays_in["coact0"], f"{where}: arrays.coact0") if "coact0" in arrays_in else None
        lags = {
            name: _decode(_nan_for_null(arrays_in[name]), f"{where}: arrays.{name}")
            for name in ("lag_weights", "lag_target")
            if name in arrays_in
        }
        try:
            proc = cls(
                **arrays,
                top_k=int(d["top_k"]),
                phase=int(d.get("phase", DECODE)),
                coact0=coact0,
                gamma0=float(d.get("gamma0", 0.0)),
                co_mi_target0=float(d.get("co_mi_target0", 0.0)),
                tokens_per_request=int(d.get("tokens_per_request", 256)),
                meta=dict(d.get("meta") or {}),
                **lags,
            )
        except ProcessFormatError as exc:
            raise ProcessFormatError(f"{where}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ProcessFormatError(f"{where}: {exc}") from exc
        for key in ("n_experts", "n_moe_layers"):
            if key in d and int(d[key]) != getattr(proc, key):
                raise ProcessFormatError(f"{where}: {key} is {d[key]} but the arrays say {getattr(proc, key)}")
        return proc

    def save(self, path: str | os.PathLike[str], *, precision: str = "float64") -> Path:
        """Write the JSON file; returns the path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_dict(precision=precision), separators=(",", ":")) + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RoutingProcess:
        """Read a JSON file written by `save`; raises `ProcessFormatError` naming the file."""
        p = Path(path)
        if not p.exists():
            raise ProcessFormatError(f"{p}: no such file")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProcessFormatError(f"{p}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
        except UnicodeDecodeError as exc:
            raise ProcessFormatError(f"{p}: not UTF-8 text ({exc})") from exc
        return cls.from_dict(d, where=str(p))


# ---------------------------------------------------------------------- helpers
def shrinkage_cv(
    trace: RoutingTrace, *, seed: int = 0, repeats: int = 4, grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 21))
) -> float:
    """Popularity shrinkage ``lambda`` that best predicts unseen requests' load.

    ``repeats`` times, the requests are split at random into halves A and B (balanced by tokens:
    requests sorted by length are dealt in pairs); for each ``lambda`` in ``grid`` the JS distance
    between ``lambda p_A + (1 - lambda) / E`` and B's load (and vice versa), averaged over layers,
    is accumulated; the ``lambda_h`` with the least mean distance wins. ``lambda_h`` is the best
    weight for an estimate from *half* of the requests; the returned weight is for the full trace.
    With between-request variation as noise (variance ``N`` for the full trace, ``2 N`` for a half)
    and a signal of variance ``S`` (the population load's spread around uniform), the optimal
    shrinkage is ``S / (S + noise)``, so ``S / N = 2 lambda_h / (1 - lambda_h)`` and the full-trace
    weight is ``lambda = 2 lambda_h / (1 + lambda_h)`` (exact for squared error; the JS criterion is
    locally quadratic). A trace with fewer than 4 requests is validated on contiguous blocks of its
    requests (8 blocks in all), which shares prompts between the halves and so already tends to
    shrink too little: there ``lambda_h`` is returned as is.
    """
    ids, inv = np.unique(trace.request, return_inverse=True)
    by_blocks = ids.size < 4
    if by_blocks:  # too few requests: validate on contiguous blocks of them instead
        blocks = -(-8 // max(ids.size, 1))
        order = request_order_of(trace.request, trace.position)
        rank = np.empty(trace.n_tokens, dtype=np.int64)
        lengths0 = np.bincount(inv)
        starts0 = np.concatenate([[0], np.cumsum(lengths0)[:-1]])
        rank[order] = np.arange(trace.n_tokens) - np.repeat(starts0, lengths0)
        pseudo = inv * blocks + (rank * blocks) // lengths0[inv]
        ids, inv = np.unique(pseudo, return_inverse=True)
        if ids.size < 4:
            return 1.0
    n_e = trace.n_experts
    per_req = _load_per_request(trace.experts, inv, ids.size, n_e)  # [R, L, E]
    lengths = np.bincount(inv)
    by_len = np.argsort(-lengths, kind="stable")
    rng = np.random.default_rng(seed)
    lams = np.asarray(grid, dtype=np.float64)
    score = np.zeros(lams.size)
    for _ in range(repeats):
        flip = rng.integers(0, 2, size=(by_len.size + 1) // 2).repeat(2)[: by_len.size].astype(bool)
        side = np.zeros(ids.size, dtype=bool)
        side[by_len[0::2]] = True
        side[by_len[1::2]] = False
        side[by_len] ^= flip
        a, b = per_req[side].sum(axis=0), per_req[~side].sum(axis=0)
        for x, y in ((a, b), (b, a)):
            ok = (x.sum(axis=1) > 0) & (y.sum(axis=1) > 0)
            if not ok.any():
                continue
            px = x[ok] / x[ok].sum(axis=1, keepdims=True)
            for i, lam in enumerate(lams):
                score[i] += float(np.nanmean(stats.js_distance(lam * px + (1 - lam) / n_e, y[ok])))
    lam_h = float(lams[int(np.argmin(score))])
    return lam_h if by_blocks else 2.0 * lam_h / (1.0 + lam_h)


def request_order_of(request: npt.NDArray[np.int32], position: npt.NDArray[np.int32]) -> npt.NDArray[np.intp]:
    """Row order sorting tokens by (request, position)."""
    return np.lexsort((position.astype(np.int64), request.astype(np.int64)))


def _load_per_request(
    experts: npt.NDArray[np.int16], inv: npt.NDArray[np.intp], n_req: int, n_e: int
) -> npt.NDArray[np.int64]:
    n_l = experts.shape[1]
    e1 = n_e + 1
    ex = experts.astype(np.int64)
    ex[ex < 0] = n_e
    idx = (inv[:, None, None] * n_l + np.arange(n_l)[None, :, None]) * e1 + ex
    counts = np.bincount(idx.ravel(), minlength=n_req * n_l * e1).reshape(n_req, n_l, e1)
    return counts[:, :, :n_e]


def _request_lengths(
    n_tokens: int, n_requests: int | None, tokens_per_request: int | None, request_lengths: Sequence[int] | None
) -> npt.NDArray[np.int64]:
    if not isinstance(n_tokens, int | np.integer) or n_tokens < 0:
        raise ValueError(f"sample: n_tokens must be an int >= 0, got {n_tokens!r}")
    given = [x is not None for x in (n_requests, tokens_per_request, request_lengths)]
    if sum(given) > 1:
        raise ValueError("sample: give at most one of n_requests, tokens_per_request, request_lengths")
    if request_lengths is not None:
        lengths = np.asarray(request_lengths, dtype=np.int64)
        if lengths.ndim != 1 or (lengths.size and lengths.min() < 0) or int(lengths.sum()) != n_tokens:
            raise ValueError(
                f"sample: request_lengths must be >= 0 and sum to n_tokens={n_tokens}, got sum {int(lengths.sum())}"
            )
        return lengths
    if tokens_per_request is not None:
        if tokens_per_request < 1:
            raise ValueError(f"sample: tokens_per_request must be >= 1, got {tokens_per_request}")
        full, rest = divmod(n_tokens, tokens_per_request)
        return np.array([tokens_per_request] * full + ([rest] if rest else []), dtype=np.int64)
    r = 1 if n_requests is None else n_requests
    if r < 1:
        raise ValueError(f"sample: n_requests must be >= 1, got {r}")
    if r > max(n_tokens, 1):
        raise ValueError(f"sample: n_requests={r} exceeds n_tokens={n_tokens}; each request needs at least one token")
    base, rest = divmod(n_tokens, r)
    return np.array([base + 1] * rest + [base] * (r - rest), dtype=np.int64)


def _cap_popularity(pop: FloatArray, k: int) -> FloatArray:
    """Rows renormalised with no entry above ``1/k`` (water-filling the excess to the others)."""
    p = np.asarray(pop, dtype=np.float64) / np.asarray(pop, dtype=np.float64).sum(axis=1, keepdims=True)
    cap = 1.0 / k
    for _ in range(p.shape[1]):
        over = p > cap
        if not over.any():
            break
        excess = np.where(over, p - cap, 0.0).sum(axis=1, keepdims=True)
        p = np.where(over, cap, p)
        free = np.where(p < cap, p, 0.0)
        fs = free.sum(axis=1, keepdims=True)
        p = np.where(p < cap, p + excess * free / np.where(fs > 0, fs, 1.0), p)
    return np.asarray(np.minimum(p, cap) / np.minimum(p, cap).sum(axis=1, keepdims=True), dtype=np.float64)


def _smooth_affinity(joint: FloatArray, pop: FloatArray, smoothing: float) -> FloatArray:
    """Row-normalised ``joint + smoothing * E * pop_{l+1}`` (rows without data = next popularity)."""
    n_e = pop.shape[1]
    if joint.shape[0] == 0:
        return np.zeros((0, n_e, n_e))
    prior = smoothing * n_e * pop[1:, None, :]
    a = joint + prior
    return np.asarray(a / a.sum(axis=2, keepdims=True), dtype=np.float64)


def _mi_corrected(joint: FloatArray, n_samples: int) -> FloatArray:
    """Mutual information (bits) per layer pair, minus the Miller-Madow plug-in bias computed with
    ``n_samples`` (tokens x k, an approximation: a token's k x k pairs are not independent); >= 0."""
    if joint.shape[0] == 0:
        return np.zeros(0)
    mi = stats.mutual_information(joint)
    cells = (joint > 0).sum(axis=(1, 2))
    rows = (joint.sum(axis=2) > 0).sum(axis=1)
    cols = (joint.sum(axis=1) > 0).sum(axis=1)
    bias = (cells - rows - cols + 1) / (2.0 * max(n_samples, 1) * math.log(2))
    return np.asarray(np.maximum(mi - bias, 0.0), dtype=np.float64)


def _rank_map(pop: FloatArray, n_new: int) -> FloatArray:
    """``[E, n_new]`` share of each old expert's rank slice that falls into each new expert's slice."""
    n_old = pop.size
    rank = np.empty(n_old, dtype=np.int64)
    rank[np.argsort(-pop, kind="stable")] = np.arange(n_old)
    lo_old, hi_old = rank / n_old, (rank + 1) / n_old
    j = np.arange(n_new)
    lo_new, hi_new = j / n_new, (j + 1) / n_new
    overlap = np.clip(
        np.minimum(hi_old[:, None], hi_new[None, :]) - np.maximum(lo_old[:, None], lo_new[None, :]), 0.0, None
    )
    return np.asarray(overlap * n_old, dtype=np.float64)


def _encode(a: FloatArray, precision: str) -> Any:
    if precision == "float64":
        return np.asarray(a).tolist()
    raw = np.ascontiguousarray(a, dtype=np.dtype(precision).newbyteorder("<")).tobytes()
    return {
        "dtype": precision,
        "shape": list(a.shape),
        "zlib_base64": base64.b64encode(zlib.compress(raw, 9)).decode("ascii"),
    }


def _decode(v: Any, where: str) -> FloatArray:
    if isinstance(v, dict):
        dtype, shape, data = v.get("dtype"), v.get("shape"), v.get("zlib_base64")
        if dtype not in ("float16", "float32", "float64") or not isinstance(shape, list) or not isinstance(data, str):
            raise ProcessFormatError(f"{where}: encoded array needs dtype float16/32/64, shape and zlib_base64")
        try:
            raw = zlib.decompress(base64.b64decode(data, validate=True))
        except (ValueError, zlib.error) as exc:
            raise ProcessFormatError(f"{where}: corrupt zlib_base64 data ({exc})") from exc
        dt = np.dtype(dtype).newbyteorder("<")
        size = int(np.prod(shape)) if shape else 1
        if len(raw) != size * dt.itemsize:
            raise ProcessFormatError(f"{where}: {len(raw)} bytes do not make a {dtype} array of shape {shape}")
        return np.frombuffer(raw, dtype=dt).reshape(shape).astype(np.float64)
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProcessFormatError(f"{where}: not a numeric array ({exc})") from exc


def _nan_for_null(v: Any) -> Any:
    """Nested lists with JSON ``null`` (a statistic that was not measured) turned into nan."""
    if isinstance(v, list):
        return [_nan_for_null(x) for x in v]
    return math.nan if v is None else v


def _lag_overlap_sim(cur: npt.NDArray[np.int16], pos: npt.NDArray[np.int64], n_lag: int) -> FloatArray:
    """Overlap with the token ``d = 1..n_lag`` back of sampled experts ``cur [k, n]`` (tokens in
    request order, ``pos`` their index in the request); nan where no token has ``d`` predecessors."""
    k, n = cur.shape
    out = np.full(n_lag, np.nan)
    for d in range(1, min(n_lag, n - 1) + 1):
        ok = pos[d:] >= d
        if not ok.any():
            continue
        a, b = cur[:, d:][:, ok], cur[:, :-d][:, ok]
        match = np.zeros(a.shape, dtype=bool)
        for j in range(k):
            match |= a == b[j]
        out[d - 1] = float(match.mean())
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


__all__ = ["ASSUMPTIONS", "FORMAT_VERSION", "ProcessFormatError", "RoutingProcess"]
