"""``--verify-top K``: run the expert kernels of the best designs on the local torch device.

For each design, its routed expert FFN (``d_model x expert_ffn_dim``, gated or not) is built
with torch on the local device (``cpu``, or ``cuda`` where present) by the calibration machinery
(`hwmodels.calibrate_run.TorchBackend`: random weights streamed cold, robust median of repeated
timings) at a few token counts: 1 (a decode step's expert) and the design's typical decode tokens
per active expert (``max_batch x top_k / n_experts``, at least 1). Beside the measured time the
report gives

- the time the *design's* cost model predicts for that kernel on the design's accelerator (what
  the search used; its ``source`` names the model and profile that answered), and
- the time the *local* calibration profile predicts on this device (``CalibrationProfile.
  predict_ffn_s``), with the profile's name: the error of that column is the calibration error
  at the design's own shapes. The local profile is the one given, else a ``quick`` calibration
  sweep run first (under a minute on one CPU core).

The design's accelerator is usually not the local device (an H100 design checked on a laptop
CPU): then only the local columns compare like with like; on the design's own hardware (CUDA on an
H100) both do. torch is an optional extra: without it `VerifyError` says how to install it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["KernelCheck", "VerifyError", "decode_tokens_per_expert", "verify_designs"]


class VerifyError(RuntimeError):
    """Verification cannot run here (torch missing, no such device)."""


@dataclass(frozen=True, kw_only=True)
class KernelCheck:
    """One expert kernel of one design: predicted and measured seconds per call."""

    design_hash: str
    accelerator: str
    d_model: int
    d_ff: int
    gated: bool
    tokens: int
    predicted_design_s: float
    predicted_design_source: str
    local_device: str
    local_dtype: str
    profile: str
    predicted_local_s: float
    measured_s: float

    @property
    def local_error_pct(self) -> float:
        """``(predicted_local - measured) / measured`` in percent."""
        return 100.0 * (self.predicted_local_s - self.measured_s) / self.measured_s


def decode_tokens_per_expert(design: Any) -> int:
    """Typical tokens per active expert in a full decode step: ``max_batch x top_k / n_experts``, >= 1."""
    m = design.model
    batch = min(design.mapping.batching.max_batch, design.workload.n_requests)
    return max(1, round(batch * m.top_k / m.n_experts))


def verify_designs(
    designs: Sequence[tuple[str, Any]],
    *,
    device: str = "cpu",
    profile: Any = None,
    threads: int | None = None,
    repeats: int = 5,
    min_time_s: float = 0.02,
    progress: bool = False,
) -> list[KernelCheck]:
    """Measure each ``(hash, Design)``'s expert kernels on ``device`` (module doc).

    ``profile`` is a `hwmodels.calibration.CalibrationProfile` of this device (``None``: a quick
    sweep is run). Raises `VerifyError` when torch is missing or the device is absent."""
    from hwmodels.calibrate_run import RunConfig, TorchBackend, measure, resolve_cpu_timing, run_calibration
    from hwmodels.calibration import CalibrationError

    try:
        threads_, clock = resolve_cpu_timing(device, threads, None)
        if profile is None:
            log.warning("no local calibration profile given: running the quick sweep on %s first", device)
            profile = run_calibration(RunConfig(device=device, quick=True, threads=threads_), progress=progress)
        backend = TorchBackend(device, dtype=profile.dtype, threads=threads_, clock=clock)
    except CalibrationError as exc:
        raise VerifyError(f"--verify-top: {exc}") from None
    from codesign.design import cost_model

    out: list[KernelCheck] = []
    try:
        timer = backend.timer()
        local = backend.device_name()
        for design_hash, design in designs:
            model = design.model
            acc = design.platform.accelerators[0]
            cost = cost_model(design)
            d, f = int(model.d_model), int(model.expert_ffn_dim)
            for m in sorted({1, decode_tokens_per_expert(design)}):
                pred = cost.expert_ffn(acc, model, m)
                kernel = backend.ffn(m, d, f, 64 * 2**20) if model.gated else _plain_ffn(backend, m, d, f)
                measured, _, _ = measure(kernel, timer, warmup=1, repeats=repeats, min_time_s=min_time_s)
                out.append(
                    KernelCheck(
                        design_hash=design_hash,
                        accelerator=acc.name,
                        d_model=d,
                        d_ff=f,
                        gated=bool(model.gated),
                        tokens=m,
                        predicted_design_s=float(pred.total_s),
                        predicted_design_source=str(pred.source),
                        local_device=f"{device} ({local})",
                        local_dtype=str(profile.dtype),
                        profile=str(profile.name),
                        predicted_local_s=float(profile.predict_ffn_s(m, d, f, gated=bool(model.gated))),
                        measured_s=float(measured),
                    )
                )
                del kernel
    finally:
        backend.close()
    return out


def _plain_ffn(backend: Any, m: int, d: int, f: int) -> Any:
    """A non-gated FFN ``down(gelu(x W_up))`` with the backend's torch (cold weights as `ffn`)."""
    torch = backend._torch
    x = backend._rand(m, d)
    copies = backend._copies(2 * d * f, 64 * 2**20)
    weights = [(backend._rand(d, f), backend._rand(f, d)) for _ in range(copies)]
    state = [0]

    def run() -> Any:
        i = state[0] = (state[0] + 1) % len(weights)
        up, down = weights[i]
        return torch.nn.functional.gelu(x @ up) @ down

    return run
