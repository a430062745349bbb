"""Predicted vs measured: held-out shapes of a profile, other tables, and a whole real MoE layer.

Errors are relative, ``(predicted - measured) / measured``, reported in percent: MAPE (mean of
the absolute errors), median and maximum absolute error, and the count ``n``, overall and per op.

The whole-layer check (:func:`validate_moe_layer`) times a real torch MoE layer on the CPU: gated
experts (SwiGLU: ``down(silu(x W_gate) * (x W_up))``) with random weights of a small, Mixtral-like
shape, whose routing (expert ids and gate weights per token) is taken from a real routing trace in
``shared/traces`` (Mixtral-8x7B JSONL or DeepSeek-V2-Lite CSV); tokens are gathered per expert,
each expert runs on its group, and the outputs are combined with the gate weights. The profile's
prediction is the sum over experts of its FFN prediction (three GEMMs and the elementwise
``silu * mul``) plus the memory traffic of the gather and weighted scatter-add.
torch is imported lazily there, only by that function.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hwmodels.calibration import CalibrationError, CalibrationProfile, MissingCalibrationError, Sample, robust_median

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ErrorStats:
    """Absolute relative errors in percent over ``n`` predictions."""

    n: int
    mape: float
    median_abs_pct_error: float
    max_abs_pct_error: float
    mean_signed_pct_error: float

    @staticmethod
    def of(predicted: npt.ArrayLike, measured: npt.ArrayLike) -> ErrorStats:
        """Statistics of ``predicted`` vs ``measured`` (same shape, measured > 0)."""
        p = np.asarray(predicted, dtype=np.float64).ravel()
        m = np.asarray(measured, dtype=np.float64).ravel()
        if p.size != m.size:
            raise ValueError(f"predicted has {p.size} values, measured {m.size}")
        if p.size == 0:
            return ErrorStats(
                n=0,
                mape=math.nan,
                median_abs_pct_error=math.nan,
                max_abs_pct_error=math.nan,
                mean_signed_pct_error=math.nan,
            )
        if np.any(m <= 0):
            raise ValueError("measured times must be > 0")
        signed = 100.0 * (p - m) / m
        err = np.abs(signed)
        return ErrorStats(
            n=int(p.size),
            mape=float(err.mean()),
            median_abs_pct_error=float(np.median(err)),
            max_abs_pct_error=float(err.max()),
            mean_signed_pct_error=float(signed.mean()),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "n": self.n,
            "mape": self.mape,
            "median_abs_pct_error": self.median_abs_pct_error,
            "max_abs_pct_error": self.max_abs_pct_error,
            "mean_signed_pct_error": self.mean_signed_pct_error,
        }


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """Overall and per-op error statistics of a profile on a set of measured samples."""

    profile: str
    against: str
    overall: ErrorStats
    per_op: Mapping[str, ErrorStats]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mape(self) -> float:
        """Mean absolute percentage error over all samples."""
        return self.overall.mape

    @property
    def n(self) -> int:
        """Number of predictions."""
        return self.overall.n

    def to_dict(self) -> dict[str, Any]:
        """One JSON object: ``mape``, ``max_abs_pct_error``, ``median_abs_pct_error``, ``n``, ``per_op``..."""
        return {
            "profile": self.profile,
            "against": self.against,
            **self.overall.to_dict(),
            "per_op": {op: stats.to_dict() for op, stats in self.per_op.items()},
            **dict(self.extra),
        }

    def format_text(self) -> str:
        """A human-readable table."""
        lines = [
            f"profile {self.profile} vs {self.against}",
            f"{'op':<24}{'n':>6}{'MAPE %':>10}{'median %':>10}{'max %':>10}{'bias %':>10}",
        ]
        rows = [*self.per_op.items(), ("ALL (gemm+ffn+grouped)", self.overall)]
        for op, s in rows:
            lines.append(
                f"{op:<24}{s.n:>6}{s.mape:>10.2f}{s.median_abs_pct_error:>10.2f}"
                f"{s.max_abs_pct_error:>10.2f}{s.mean_signed_pct_error:>+10.2f}"
            )
        every = self.extra.get("all_kinds")
        if isinstance(every, dict) and every.get("n", 0) != self.overall.n:
            lines.append(
                f"{'all kinds (incl. memory)':<24}{every['n']:>6}{every['mape']:>10.2f}"
                f"{every['median_abs_pct_error']:>10.2f}{every['max_abs_pct_error']:>10.2f}"
                f"{every['mean_signed_pct_error']:>+10.2f}"
            )
        for key, value in self.extra.items():
            if not isinstance(value, dict | list):
                lines.append(f"{key}: {value}")
        return "\n".join(lines)


#: Sample kinds that make the headline figures (compute: GEMMs and their compositions); memory
#: and copy samples appear in the per-op breakdown and in ``extra["all_kinds"]``.
HEADLINE_KINDS = ("gemm", "ffn", "grouped")


def validate_samples(
    profile: CalibrationProfile, samples: Iterable[Sample], *, against: str, group_by: str = "kind_op"
) -> ValidationReport:
    """Predict every sample and compare; ``group_by`` ``"kind_op"`` (``gemm:up``) or ``"kind_op_tag"``.

    ``overall`` covers the :data:`HEADLINE_KINDS` samples (all samples when there are none of
    those); ``per_op`` every group; ``extra["all_kinds"]`` all samples together. Copy samples are
    skipped (with a log line) when the profile has no copy fit.
    """
    head: tuple[list[float], list[float]] = ([], [])
    every: tuple[list[float], list[float]] = ([], [])
    groups: dict[str, tuple[list[float], list[float]]] = {}
    skipped = 0
    for sample in samples:
        try:
            pred = profile.predict_sample_s(sample)
        except MissingCalibrationError:
            skipped += 1
            continue
        key = f"{sample.kind}:{sample.op}" + (f"[{sample.tag}]" if group_by == "kind_op_tag" and sample.tag else "")
        targets = [groups.setdefault(key, ([], [])), every]
        if sample.kind in HEADLINE_KINDS:
            targets.append(head)
        for pred_list, meas_list in targets:
            pred_list.append(pred)
            meas_list.append(sample.time_s)
    if skipped:
        log.info("skipped %d samples the profile cannot predict", skipped)
    if not every[0]:
        raise CalibrationError(f"profile {profile.name!r}: nothing to validate against {against}")
    per_op = {key: ErrorStats.of(p, m) for key, (p, m) in sorted(groups.items())}
    all_stats = ErrorStats.of(*every)
    overall = ErrorStats.of(*head) if head[0] else all_stats
    return ValidationReport(
        profile=profile.name, against=against, overall=overall, per_op=per_op, extra={"all_kinds": all_stats.to_dict()}
    )


def validate_heldout(profile: CalibrationProfile) -> ValidationReport:
    """Errors on the profile's own held-out samples (those not used for fitting)."""
    held = [s for s in profile.samples if s.heldout]
    if not held:
        raise CalibrationError(
            f"profile {profile.name!r} has no held-out samples (a shipped profile keeps none); "
            "use --against with a measured table"
        )
    report = validate_samples(profile, held, against=f"held-out samples ({profile.heldout_rule or 'as marked'})")
    fit_set = [s for s in profile.samples if not s.heldout and s.kind == "gemm"]
    extra: dict[str, Any] = dict(report.extra)
    if fit_set:
        fit_report = validate_samples(profile, fit_set, against="fit")
        extra["fit_gemm_median_abs_pct_error"] = fit_report.overall.median_abs_pct_error
    return ValidationReport(
        profile=report.profile, against=report.against, overall=report.overall, per_op=report.per_op, extra=extra
    )


def load_against(path: str | Path, *, device: str | None = None) -> list[Sample]:
    """Measured samples of another table: a Vidur CSV or folder, or a profile JSON (all its samples)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return list(CalibrationProfile.load(p).samples)
    from hwmodels.vidur_import import against_samples  # sibling module, imported on use

    return against_samples(p, device)


def against_device(path: str | Path, *, device: str | None = None) -> str:
    """The device that measured the table :func:`load_against` reads (lower case).

    A profile JSON: its ``device_name``; a Vidur CSV or folder: the device folder's name
    (``compute/<device>/``), as :func:`hwmodels.vidur_import.find_tables` finds it.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return CalibrationProfile.load(p).device_name.lower()
    from hwmodels.vidur_import import find_tables  # sibling module, imported on use

    return find_tables(p, device)[0].lower()


def device_mismatch(profile: CalibrationProfile, table_device: str) -> str | None:
    """A warning when ``profile`` was calibrated on another device than ``table_device``, else None.

    Names match when one contains the other, case-insensitively (``"h100"`` matches ``"NVIDIA
    H100 80GB HBM3"``); an empty name is not judged.
    """
    mine, theirs = profile.device_name.strip().lower(), table_device.strip().lower()
    if not mine or not theirs or mine in theirs or theirs in mine:
        return None
    return (
        f"profile {profile.name!r} was calibrated on {profile.device_name!r} but the table was measured on "
        f"{table_device!r}: the errors compare different devices, not the profile's accuracy"
    )


def quality_warnings(profile: CalibrationProfile) -> list[str]:
    """The problems recorded in the profile's ``quality`` block (empty when it is ok or unchecked)."""
    status = profile.quality.get("status")
    if status not in ("suspect", "absurd"):
        return []
    problems = profile.quality.get("problems") or []
    return [f"profile {profile.name!r} fit is {status}: {problem}" for problem in problems] or [
        f"profile {profile.name!r} fit is {status}"
    ]


# ----------------------------------------------------------------------------------------------
# Whole MoE layer on the CPU
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LayerRouting:
    """Routing of ``n_tokens`` tokens at one layer: ``experts[t, j]`` (-1 = none) and weights."""

    experts: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    n_experts: int
    source: str

    def tokens_per_expert(self) -> npt.NDArray[np.int64]:
        """How many tokens each expert receives."""
        ids = self.experts[self.experts >= 0]
        return np.bincount(ids, minlength=self.n_experts).astype(np.int64)


def read_trace_routing(
    path: str | Path, *, layers: Sequence[int] | None = None, max_tokens: int | None = None
) -> list[LayerRouting]:
    """Per-layer routing from a real trace: Mixtral JSONL (file or folder) or DeepSeek CSV folder.

    Mixtral (``*_routing.jsonl``): tokens are (problem, token_idx) pairs in file order, weights are
    the renormalised gate probabilities. DeepSeek (``prompt_*_data.csv``): ids only, so weights are
    uniform ``1/k``. ``layers`` picks layers by index into the sorted layer ids (default all);
    ``max_tokens`` keeps the first tokens (files are read in name order until every layer has that
    many). Malformed rows are errors naming file and line.
    """
    if max_tokens is not None and max_tokens < 1:
        raise CalibrationError(f"max_tokens (--tokens) must be >= 1, got {max_tokens}")
    p = Path(path)
    files = sorted(p.glob("*_routing.jsonl")) if p.is_dir() else [p]
    if p.is_dir() and not files:
        files = sorted(p.glob("prompt_*_data.csv"))
    if not files or not all(f.is_file() for f in files):
        raise CalibrationError(f"{p}: no Mixtral *_routing.jsonl or DeepSeek prompt_*_data.csv files")
    per_layer: dict[int, list[tuple[list[int], list[float]]]] = {}
    n_experts = 0
    for file in files:
        if file.suffix == ".jsonl":
            n_experts = max(n_experts, _read_mixtral(file, per_layer))
        elif file.suffix == ".csv":
            n_experts = max(n_experts, _read_deepseek(file, per_layer))
        else:
            raise CalibrationError(f"{file}: unknown trace format (expected .jsonl or .csv)")
        if max_tokens and per_layer and all(len(v) >= max_tokens for v in per_layer.values()):
            break  # enough tokens at every layer: the remaining files are not needed
    layer_ids = sorted(per_layer)
    chosen = layer_ids if layers is None else [layer_ids[i] for i in layers]
    out = []
    for layer in chosen:
        rows = per_layer[layer][:max_tokens] if max_tokens else per_layer[layer]
        k = max(len(ids) for ids, _ in rows)
        experts = np.full((len(rows), k), -1, dtype=np.int64)
        weights = np.zeros((len(rows), k), dtype=np.float32)
        for i, (ids, ws) in enumerate(rows):
            experts[i, : len(ids)] = ids
            weights[i, : len(ws)] = ws
        out.append(
            LayerRouting(
                experts=experts, weights=weights, n_experts=n_experts, source=f"{p} layer {layer} ({len(rows)} tokens)"
            )
        )
    return out


def _read_mixtral(file: Path, per_layer: dict[int, list[tuple[list[int], list[float]]]]) -> int:
    n_experts = 0
    with file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                layer = int(rec["layer"])
                ids = [int(e) for e in rec["experts"]]
                ws = [float(w) for w in rec["gating_probs"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise CalibrationError(f"{file}:{line_no}: malformed Mixtral routing record ({exc})") from exc
            if len(ids) != len(ws) or any(e < 0 for e in ids):
                raise CalibrationError(f"{file}:{line_no}: experts {ids} and gating_probs {ws} do not match")
            per_layer.setdefault(layer, []).append((ids, ws))
            n_experts = max(n_experts, max(ids) + 1)
    return max(n_experts, 8)  # Mixtral-8x7B has 8 experts per layer


def _read_deepseek(file: Path, per_layer: dict[int, list[tuple[list[int], list[float]]]]) -> int:
    n_experts = 0
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[0] != "Layer ID":
            raise CalibrationError(f"{file}:1: expected header 'Layer ID,...', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            try:
                layer = int(row[0])
                ids = [int(e) for e in json.loads(row[-1])]
            except (IndexError, ValueError, TypeError, json.JSONDecodeError) as exc:
                raise CalibrationError(f"{file}:{line_no}: malformed DeepSeek routing row ({exc})") from exc
            if any(e < 0 for e in ids) or not ids:
                raise CalibrationError(f"{file}:{line_no}: bad expert ids {ids}")
            per_layer.setdefault(layer, []).append((ids, [1.0 / len(ids)] * len(ids)))
            n_experts = max(n_experts, max(ids) + 1)
    return max(n_experts, 64)  # DeepSeek-V2-Lite has 64 routed experts


@dataclass(frozen=True, kw_only=True)
class LayerResult:
    """One timed layer: measured and predicted seconds, tokens per expert."""

    source: str
    measured_s: float
    predicted_s: float
    predicted_gemm_s: float
    tokens_per_expert: tuple[int, ...]

    @property
    def pct_error(self) -> float:
        """Signed error of the prediction, percent."""
        return 100.0 * (self.predicted_s - self.measured_s) / self.measured_s


def predict_moe_layer_s(
    profile: CalibrationProfile, tokens_per_expert: npt.ArrayLike, *, d_model: int, d_ff: int
) -> tuple[float, float]:
    """Profile prediction of one MoE layer: ``(total_s, gemm_only_s)``.

    Sum over experts with tokens of the gated FFN (3 GEMMs + ``silu * mul``), plus three
    elementwise kernels per expert: the gather (``m x d`` read and written), the multiply by the
    gate weights (``m x d`` read and written) and the scatter-add (``m x d`` read, ``m`` output rows
    read and written), each at the profile's ``"act"`` memory fit (elementwise kernels measured at
    activation sizes; the ``"stream"`` fit of large copies leaves its per-call time unidentified at
    these sizes).
    """
    tpe = np.asarray(tokens_per_expert, dtype=np.float64)
    tpe = tpe[tpe > 0]
    gemm = float(np.sum(2 * profile.predict_gemm_s(tpe, d_model, d_ff) + profile.predict_gemm_s(tpe, d_ff, d_model)))
    ffn = profile.predict_grouped_s(tpe, d_model, d_ff)
    b = profile.dtype_bytes
    # activation-sized elementwise kernels: the "act" fit, measured over the same sizes (tens of KB
    # up), not the "stream" fit of large copies, whose per-call t0 is not identified at small sizes
    md = tpe * d_model * b
    gather = profile.predict_memory_s(2.0 * md, "act")  # index_select: read and write m x d
    weigh = profile.predict_memory_s(2.0 * md, "act")  # y * gate weight: read and write m x d
    scatter = profile.predict_memory_s(3.0 * md, "act")  # index_add_: read y, read+write m output rows
    return ffn + float(np.sum(gather) + np.sum(weigh) + np.sum(scatter)), gemm


def validate_moe_layer(
    profile: CalibrationProfile,
    routings: Sequence[LayerRouting],
    *,
    d_model: int = 1024,
    d_ff: int = 3584,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    seed: int = 0,
    clock: str | None = None,
) -> tuple[ErrorStats, list[LayerResult]]:
    """Time a real torch MoE layer per routing on the CPU and compare with the profile's prediction.

    The default shape keeps Mixtral-8x7B's ratio d_ff / d_model = 14336 / 4096 = 3.5 at a quarter
    of its width (an assumption chosen so a layer runs in a fraction of a second here). Weights are
    random (seeded; the time does not depend on their values), at the profile's dtype. Each layer
    is timed ``repeats`` times after ``warmup`` runs, the repeats of all layers interleaved, with
    the same wall-clock timer and contention check as the calibration (one thread); the median
    after outlier rejection is the measurement. ``threads`` sets ``torch.set_num_threads`` for the
    duration (default: the thread count recorded in the profile's fingerprint, else torch's);
    ``clock`` ``"wall"`` or ``"process"`` (default: the clock the profile was measured with), as in
    :class:`hwmodels.calibrate_run.CpuTimer`.
    """
    if profile.device_kind != "cpu":
        raise CalibrationError(
            f"profile {profile.name!r} is a {profile.device_kind} profile; the whole-layer "
            "validation runs on this CPU and needs a CPU profile"
        )
    if not routings:
        raise CalibrationError("validate_moe_layer: no layer routings given")
    if repeats < 1 or warmup < 0:
        raise CalibrationError(
            f"validate_moe_layer: repeats (--repeats) must be >= 1 and warmup >= 0, got {repeats}, {warmup}"
        )
    from hwmodels.calibrate_run import CpuTimer, import_torch  # torch-using sibling, imported on use

    torch = import_torch()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(profile.dtype)
    if dtype is None:
        raise CalibrationError(f"profile dtype {profile.dtype!r} unsupported for the layer run")
    old_threads = torch.get_num_threads()
    if threads is None and isinstance(profile.fingerprint.get("torch_threads"), int):
        threads = int(profile.fingerprint["torch_threads"])
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        clock = clock or str(profile.fingerprint.get("clock", "wall"))
        if clock == "process" and torch.get_num_threads() != 1:
            raise CalibrationError("the process clock needs one thread (--threads 1)")
        timer = CpuTimer(check_threads=1 if torch.get_num_threads() == 1 else None, clock=clock)
        gen = torch.Generator().manual_seed(seed)
        n_exp = max(r.n_experts for r in routings)
        scale = 1.0 / math.sqrt(d_model)

        def rand(*shape: int) -> Any:
            return torch.randn(*shape, generator=gen, dtype=torch.float32).mul_(scale).to(dtype)

        w_gate = [rand(d_model, d_ff) for _ in range(n_exp)]
        w_up = [rand(d_model, d_ff) for _ in range(n_exp)]
        w_down = [rand(d_ff, d_model) for _ in range(n_exp)]
        silu = torch.nn.functional.silu

        def make_layer(routing: LayerRouting) -> Any:
            x = rand(routing.experts.shape[0], d_model)
            experts = torch.from_numpy(routing.experts)
            weights = torch.from_numpy(routing.weights).to(dtype)
            # the router's output, turned into per-expert index lists once (not expert compute)
            groups = []
            for e in range(n_exp):
                tok, slot = torch.nonzero(experts == e, as_tuple=True)
                if tok.numel():
                    groups.append((e, tok, weights[tok, slot].unsqueeze(1)))

            def layer() -> Any:
                out = torch.zeros_like(x)
                for e, tok, w in groups:
                    xe = x.index_select(0, tok)
                    h = silu(xe @ w_gate[e]) * (xe @ w_up[e])
                    out.index_add_(0, tok, (h @ w_down[e]) * w)
                return out

            return layer

        layers = [make_layer(r) for r in routings]
        times: list[list[float]] = [[] for _ in layers]
        with torch.inference_mode():
            for layer in layers:
                for _ in range(warmup):
                    layer()
            for _ in range(repeats):
                for i, layer in enumerate(layers):
                    times[i].append(timer.time(layer, 1))
        results: list[LayerResult] = []
        for routing, ts in zip(routings, times, strict=True):
            measured = robust_median(ts)[0]
            tpe = routing.tokens_per_expert()
            pred, pred_gemm = predict_moe_layer_s(profile, tpe, d_model=d_model, d_ff=d_ff)
            results.append(
                LayerResult(
                    source=routing.source,
                    measured_s=measured,
                    predicted_s=pred,
                    predicted_gemm_s=pred_gemm,
                    tokens_per_expert=tuple(int(t) for t in tpe),
                )
            )
            log.info("layer %s: measured %.3f ms, predicted %.3f ms", routing.source, measured * 1e3, pred * 1e3)
    finally:
        torch.set_num_threads(old_threads)
    stats = ErrorStats.of([r.predicted_s for r in results], [r.measured_s for r in results])
    log.info("layer timing: %d disturbed attempts retried", timer.rejected)
    return stats, results
