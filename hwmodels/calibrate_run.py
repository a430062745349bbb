"""Run real torch kernels on the local device (CPU or CUDA GPU) and fit a calibration profile.

What is measured (:class:`SweepPlan`): GEMM sweeps over tokens per expert ``m`` (log-spaced
1..4096) for expert-FFN shapes (the up/gate GEMM ``(m x d) @ (d x f)`` and the down GEMM
``(m x f) @ (f x d)``); a whole gated expert FFN; several experts run back to back (grouped); the
gated activation ``silu(g) * u``; memory bandwidth (a tensor copy); and on CUDA host->device copies
from pinned and from pageable host memory. Expert weights are streamed *cold*: each kernel cycles
through enough copies of its weights to exceed ``cold_bytes`` (64 MiB by default, an assumption
chosen above this machine's 32 MiB L3 and a GPU's 40-50 MB L2), as in an MoE layer where each
expert's weights are read once per step.

Timing: ``warmup`` untimed runs, then ``repeats`` timed measurements, each of ``inner`` back-to-back
calls (chosen so one measurement lasts at least ``min_time_s``); the per-call time is the median
after rejecting outliers beyond 5 scaled MADs (:func:`hwmodels.calibration.robust_median`). CPU
measurements use ``time.perf_counter_ns``; CUDA ones ``torch.cuda.Event`` pairs around the calls.

torch is imported lazily (only when a run starts), with a clear message when it is missing. The
CPU and CUDA paths share the sweep (:func:`run_sweep`); only the backend (:class:`TorchBackend`)
and the timer (:class:`CpuTimer`, :class:`CudaEventTimer`) differ, so the CUDA logic is tested on
the CPU with fake timers and backends.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from hwmodels.calibration import (
    CalibrationError,
    CalibrationProfile,
    Peaks,
    Sample,
    fit_profile,
    robust_median,
)

log = logging.getLogger(__name__)

Kernel = Callable[[], Any]

DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}


def log_tokens(lo: int, hi: int, count: int) -> tuple[int, ...]:
    """``count`` distinct integers log-spaced from ``lo`` to ``hi`` inclusive."""
    vals = np.unique(np.round(np.geomspace(lo, hi, count)).astype(int))
    return tuple(int(v) for v in vals)


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """What to measure and how (all sizes in elements or bytes, times in seconds).

    ``expert_shapes`` are ``(d_model, d_ff)`` pairs; each yields an ``up`` GEMM ``(m x d) @ (d x f)``
    and a ``down`` GEMM ``(m x f) @ (f x d)`` for every ``m`` in ``tokens``. Samples of the
    ``heldout_shapes`` and of every ``heldout_every``-th token count (from index
    ``heldout_every - 1``) are marked held out, i.e. not fitted. ``ffn_shape`` with ``ffn_tokens``
    gives the whole-FFN samples, ``grouped_tokens`` several experts run back to back at
    ``ffn_shape``; ``stream_bytes`` the copy sizes for memory bandwidth (above the last-level
    cache, so they measure DRAM or HBM); ``copy_bytes`` the host->device copy sizes (CUDA only).
    """

    name: str
    expert_shapes: tuple[tuple[int, int], ...]
    heldout_shapes: tuple[tuple[int, int], ...]
    tokens: tuple[int, ...]
    heldout_every: int
    ffn_shape: tuple[int, int]
    ffn_tokens: tuple[int, ...]
    grouped_tokens: tuple[tuple[int, ...], ...]
    act_tokens: tuple[int, ...]
    stream_bytes: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    warmup: int = 1
    repeats: int = 5
    min_time_s: float = 2e-3
    cold_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0:
            raise CalibrationError(f"sweep plan {self.name!r}: repeats must be >= 1 and warmup >= 0")
        if not self.tokens or min(self.tokens) < 1:
            raise CalibrationError(f"sweep plan {self.name!r}: tokens must be positive")
        if self.heldout_every < 2:
            raise CalibrationError(f"sweep plan {self.name!r}: heldout_every must be >= 2")

    @property
    def heldout_rule(self) -> str:
        """How held-out samples are chosen, in words."""
        return (
            f"held out: GEMM shapes (d_model, d_ff) {list(self.heldout_shapes)}, and every "
            f"{self.heldout_every}th token count of the other shapes; ffn, grouped samples are "
            "never fitted"
        )

    @staticmethod
    def quick() -> SweepPlan:
        """The ``--quick`` sweep: under a minute on one core of this machine's CPU when it is idle."""
        return SweepPlan(
            name="quick",
            expert_shapes=((512, 1408), (1024, 2816)),
            heldout_shapes=((768, 2048),),
            tokens=log_tokens(1, 4096, 13),
            heldout_every=4,
            ffn_shape=(1024, 3584),
            ffn_tokens=(1, 8, 64, 256, 1024),
            grouped_tokens=((64, 3, 17, 0, 200, 31, 9, 120), (16,) * 8),
            act_tokens=(1, 16, 128, 1024, 4096),
            stream_bytes=tuple(2**i for i in range(25, 29)),
            copy_bytes=tuple(2**i for i in range(12, 27, 2)),
            warmup=1,
            repeats=4,
        )

    @staticmethod
    def full() -> SweepPlan:
        """The full sweep: more shapes, token counts and repeats (several minutes on one CPU core)."""
        return SweepPlan(
            name="full",
            expert_shapes=((512, 1408), (1024, 2816), (1536, 4096), (2048, 5632), (1024, 1024)),
            heldout_shapes=((768, 2048), (2048, 1408)),
            tokens=log_tokens(1, 4096, 25),
            heldout_every=4,
            ffn_shape=(1024, 3584),
            ffn_tokens=(1, 4, 16, 64, 256, 1024, 4096),
            grouped_tokens=((64, 3, 17, 0, 200, 31, 9, 120), (16,) * 8, (512, 1, 1, 1, 2, 0, 0, 5)),
            act_tokens=(1, 4, 16, 64, 256, 1024, 4096),
            stream_bytes=tuple(2**i for i in range(25, 31)),
            copy_bytes=tuple(2**i for i in range(10, 31)),
            warmup=1,
            repeats=7,
        )

    @staticmethod
    def tiny() -> SweepPlan:
        """A seconds-long sweep for tests (small shapes, few repeats)."""
        return SweepPlan(
            name="tiny",
            expert_shapes=((64, 176), (128, 352)),
            heldout_shapes=((96, 256),),
            tokens=log_tokens(1, 256, 8),
            heldout_every=4,
            ffn_shape=(128, 448),
            ffn_tokens=(1, 32),
            grouped_tokens=((8, 0, 3, 20),),
            act_tokens=(1, 64),
            stream_bytes=(2**20, 2**22),
            copy_bytes=(2**12, 2**16, 2**20),
            warmup=1,
            repeats=3,
            min_time_s=5e-4,
            cold_bytes=2**20,
        )

    def n_kernels(self, *, with_copies: bool) -> int:
        """How many kernel configurations the sweep times (for progress bars)."""
        n = 2 * (len(self.expert_shapes) + len(self.heldout_shapes)) * len(self.tokens)  # GEMMs
        n += len(self.ffn_tokens) + len(self.grouped_tokens) + len(self.act_tokens) + len(self.stream_bytes)
        if with_copies:
            n += 2 * len(self.copy_bytes)
        return n


class Timer(Protocol):
    """Times ``inner`` back-to-back calls of a kernel; returns seconds per call."""

    def time(self, kernel: Kernel, inner: int) -> float: ...


#: CPU clocks: ``"wall"`` (``time.perf_counter_ns``, the default) or ``"process"`` (the process's CPU
#: time, ``time.process_time_ns``: with one compute thread it excludes the time other processes
#: take the core away, so timings on a shared machine approach those of a quiet one; it still
#: includes their cache and memory-bandwidth interference).
CPU_CLOCKS = ("wall", "process")


class CpuTimer:
    """Wall-clock timing with ``time.perf_counter_ns`` (kernels are synchronous on the CPU).

    ``clock="process"`` times with the process CPU time instead (one compute thread only, see
    :data:`CPU_CLOCKS`); then no retries are needed and ``check_threads`` is ignored.

    On a shared machine another process may take the core for part of a measurement. With
    ``check_threads`` set to the number of compute threads, each measurement also reads the
    process CPU time (``time.process_time_ns``); when it is below ``min_busy`` x wall x threads the
    process was descheduled, and the measurement is retried (up to ``max_retries`` times and while
    the disturbed attempts took less than ``retry_budget_s`` in all, then the least disturbed
    attempt is kept). ``rejected`` counts the disturbed attempts. Only reliable
    with one compute thread (several threads may idle legitimately), so callers enable it only then.
    """

    def __init__(
        self,
        *,
        check_threads: int | None = None,
        min_busy: float = 0.95,
        max_retries: int = 5,
        retry_budget_s: float = 0.25,
        clock: str = "wall",
    ) -> None:
        if clock not in CPU_CLOCKS:
            raise CalibrationError(f"clock must be one of {CPU_CLOCKS}, got {clock!r}")
        self.clock = clock
        self.check_threads = check_threads
        self.min_busy = min_busy
        self.max_retries = max_retries
        self.retry_budget_s = retry_budget_s
        self.rejected = 0

    def time(self, kernel: Kernel, inner: int) -> float:
        """Seconds per call over ``inner`` calls (wall clock).

        With the check on, a measurement whose CPU/wall ratio is below ``min_busy`` is retried; when
        every attempt was disturbed, the least disturbed one (highest ratio) is returned.
        """
        if self.clock == "process":
            cpu0 = time.process_time_ns()
            for _ in range(inner):
                kernel()
            return (time.process_time_ns() - cpu0) * 1e-9 / inner
        best_ratio, best_wall, spent = -1.0, 0, 0
        for _ in range(self.max_retries + 1):
            cpu0 = time.process_time_ns()
            start = time.perf_counter_ns()
            for _ in range(inner):
                kernel()
            wall = time.perf_counter_ns() - start
            cpu = time.process_time_ns() - cpu0
            if self.check_threads is None:
                return wall * 1e-9 / inner
            ratio = cpu / max(wall * self.check_threads, 1)
            if ratio >= self.min_busy:
                return wall * 1e-9 / inner
            self.rejected += 1
            if ratio > best_ratio:
                best_ratio, best_wall = ratio, wall
            spent += wall
            if spent * 1e-9 >= self.retry_budget_s:
                break  # long kernels: the interleaved repeats and the median handle the rest
        return best_wall * 1e-9 / inner


class CudaEventTimer:
    """GPU timing with a pair of ``torch.cuda.Event(enable_timing=True)`` around the calls.

    ``torch`` is the torch module (injected, so tests pass a fake). ``elapsed_time`` is in ms.
    """

    def __init__(self, torch: Any) -> None:
        self._torch = torch

    def time(self, kernel: Kernel, inner: int) -> float:
        """Seconds per call over ``inner`` calls, measured on the GPU's stream."""
        start = self._torch.cuda.Event(enable_timing=True)
        end = self._torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            kernel()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) * 1e-3 / inner


class KernelBackend(Protocol):
    """Builds kernels on one device. Each method returns a zero-argument callable running it once."""

    device_kind: str  # "cpu" or "gpu"
    dtype: str
    supports_copies: bool  # host->device copies exist (a GPU)

    def gemm_family(self, ms: Sequence[int], k: int, n: int, cold_bytes: int) -> list[Kernel]: ...
    def ffn(self, m: int, d: int, f: int, cold_bytes: int) -> Kernel: ...
    def grouped(self, tokens: Sequence[int], d: int, f: int) -> Kernel: ...
    def act(self, m: int, f: int) -> Kernel: ...
    def stream(self, n_bytes: int) -> Kernel: ...
    def h2d(self, n_bytes: int, pinned: bool) -> Kernel: ...
    def timer(self) -> Timer: ...


def run_sweep(backend: KernelBackend, plan: SweepPlan, *, progress: bool = False) -> list[Sample]:
    """Time every kernel of ``plan`` on ``backend``; returns the samples (held-out ones marked).

    Kernels come in families that share their buffers (the GEMMs of one weight shape over all
    token counts); the repeats of a family are interleaved (repeat r of every member, then r + 1),
    so a burst of interference from other processes spreads over many samples instead of shifting
    every repeat of one, and the median rejects it.
    """
    timer = backend.timer()
    out: list[Sample] = []
    families = list(_families(backend, plan))
    bar = tqdm(
        total=sum(len(f[0]) for f in families), desc=f"calibrate {plan.name}", unit="kernel", disable=not progress
    )
    try:
        for members, build in families:
            kind, op, shape, _ = members[0]
            bar.set_postfix_str(f"{kind}:{op} {_short(shape)}", refresh=False)
            kernels = build()
            inners = [
                calibrate_inner(kernel, timer, warmup=plan.warmup, min_time_s=plan.min_time_s) for kernel in kernels
            ]
            times: list[list[float]] = [[] for _ in kernels]
            for _ in range(plan.repeats):
                for i, kernel in enumerate(kernels):
                    times[i].append(timer.time(kernel, inners[i]))
            del kernels
            for (kind, op, shape, heldout), ts in zip(members, times, strict=True):
                med, mad, kept = robust_median(ts)
                out.append(
                    Sample(kind=kind, op=op, shape=shape, time_s=med, repeats=kept, spread_s=mad, heldout=heldout)
                )
            bar.update(len(members))
    finally:
        bar.close()
    return out


def calibrate_inner(kernel: Kernel, timer: Timer, *, warmup: int, min_time_s: float) -> int:
    """Run ``warmup`` untimed-for-the-result calls; return how many back-to-back calls make one
    measurement last at least ``min_time_s`` (1 for slow kernels, at most 1000)."""
    probe = math.inf
    for _ in range(max(1, warmup)):
        probe = min(probe, timer.time(kernel, 1))
    return 1 if probe >= min_time_s else min(1000, math.ceil(min_time_s / max(probe, 1e-9)))


def measure(kernel: Kernel, timer: Timer, *, warmup: int, repeats: int, min_time_s: float) -> tuple[float, float, int]:
    """``(median_s, mad_s, kept)`` per call of one ``kernel`` (see the module docstring)."""
    inner = calibrate_inner(kernel, timer, warmup=warmup, min_time_s=min_time_s)
    return robust_median([timer.time(kernel, inner) for _ in range(repeats)])


def _short(shape: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items() if k not in ("tokens", "m"))


Member = tuple[str, str, dict[str, Any], bool]
Family = tuple[list[Member], Callable[[], list[Kernel]]]


def _single(kind: str, op: str, shape: dict[str, Any], heldout: bool, build: Callable[[], Kernel]) -> Family:
    return [(kind, op, shape, heldout)], lambda: [build()]


def _families(backend: KernelBackend, plan: SweepPlan) -> Iterator[Family]:
    held_m = set(plan.tokens[plan.heldout_every - 1 :: plan.heldout_every])
    for d, f in (*plan.expert_shapes, *plan.heldout_shapes):
        shape_held = (d, f) in plan.heldout_shapes
        for op, k, n in (("up", d, f), ("down", f, d)):
            members: list[Member] = [
                ("gemm", op, {"m": m, "k": k, "n": n}, shape_held or m in held_m) for m in plan.tokens
            ]
            yield members, partial(backend.gemm_family, plan.tokens, k, n, plan.cold_bytes)
    d, f = plan.ffn_shape
    for m in plan.ffn_tokens:
        yield _single(
            "ffn",
            "gated",
            {"m": m, "d": d, "f": f, "gated": True},
            True,
            partial(backend.ffn, m, d, f, plan.cold_bytes),
        )
    for tokens in plan.grouped_tokens:
        yield _single(
            "grouped",
            "gated",
            {"tokens": list(tokens), "d": d, "f": f, "gated": True},
            True,
            partial(backend.grouped, tokens, d, f),
        )
    b = DTYPE_BYTES[backend.dtype]
    for m in plan.act_tokens:
        yield _single(
            "memory", "act", {"n_bytes": int(3 * m * f * b), "m": m, "f": f}, False, partial(backend.act, m, f)
        )
    for n_bytes in plan.stream_bytes:
        yield _single("memory", "stream", {"n_bytes": 2 * n_bytes}, False, partial(backend.stream, n_bytes))
    if backend.supports_copies:
        for pinned in (True, False):
            for n_bytes in plan.copy_bytes:
                yield _single(
                    "copy", "h2d", {"n_bytes": n_bytes, "pinned": pinned}, False, partial(backend.h2d, n_bytes, pinned)
                )


# ----------------------------------------------------------------------------------------------
# The torch backend (CPU and CUDA)
# ----------------------------------------------------------------------------------------------


def import_torch() -> Any:
    """torch, or a clear error naming the extra to install."""
    try:
        import torch  # optional dependency, imported lazily
    except ModuleNotFoundError as exc:
        raise CalibrationError("calibration runs need torch: pip install 'moe-codesign[torch]'") from exc
    return torch


class TorchBackend:
    """Kernels built with torch on ``device`` ``"cpu"`` or ``"cuda"`` at ``dtype``.

    ``torch`` may be injected (tests); by default it is imported lazily. Weights are random (a
    seeded generator on the host); timings do not depend on their values.
    """

    def __init__(
        self,
        device: str,
        *,
        dtype: str | None = None,
        threads: int | None = None,
        seed: int = 0,
        clock: str = "wall",
        torch: Any = None,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise CalibrationError(f"--device must be 'cpu' or 'cuda', got {device!r}")
        self._torch = torch if torch is not None else import_torch()
        if device == "cuda" and not self._torch.cuda.is_available():
            raise CalibrationError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
        self.device = device
        self.device_kind = "gpu" if device == "cuda" else "cpu"
        self.dtype = dtype or ("bf16" if device == "cuda" else "fp32")
        if self.dtype not in DTYPE_BYTES:
            raise CalibrationError(f"--dtype must be one of {sorted(DTYPE_BYTES)}, got {self.dtype!r}")
        self._tdtype = {"fp32": self._torch.float32, "bf16": self._torch.bfloat16, "fp16": self._torch.float16}[
            self.dtype
        ]
        self.supports_copies = device == "cuda"
        self._previous_threads = int(self._torch.get_num_threads())
        if threads is not None:
            if threads < 1:
                raise CalibrationError(f"--threads must be >= 1, got {threads}")
            self._torch.set_num_threads(threads)
        self._gen = self._torch.Generator().manual_seed(seed)
        if clock not in CPU_CLOCKS:
            raise CalibrationError(f"--clock must be one of {CPU_CLOCKS}, got {clock!r}")
        if clock == "process" and (device != "cpu" or int(self._torch.get_num_threads()) != 1):
            self.close()
            raise CalibrationError(
                "--clock process needs --device cpu and --threads 1 (process CPU time sums all threads)"
            )
        self.clock = clock

    def close(self) -> None:
        """Restore torch's thread count as it was before this backend set it."""
        self._torch.set_num_threads(self._previous_threads)

    # -- helpers
    def _rand(self, *shape: int) -> Any:
        t = self._torch.randn(*shape, generator=self._gen, dtype=self._torch.float32)
        return t.to(device=self.device, dtype=self._tdtype)

    def _copies(self, n_elems_each: int, cold_bytes: int) -> int:
        return max(1, min(64, math.ceil(cold_bytes / (n_elems_each * DTYPE_BYTES[self.dtype]))))

    def _sync(self) -> None:
        if self.device == "cuda":
            self._torch.cuda.synchronize()

    # -- kernels
    def gemm_family(self, ms: Sequence[int], k: int, n: int, cold_bytes: int) -> list[Kernel]:
        """``(m x k) @ (k x n)`` for each ``m``, cycling through shared cold copies of the weights."""
        ws = [self._rand(k, n) for _ in range(self._copies(k * n, cold_bytes))]
        mm = self._torch.matmul

        def make(m: int) -> Kernel:
            x = self._rand(m, k)
            out = self._torch.empty(m, n, device=self.device, dtype=self._tdtype)
            state = [0]

            def run() -> Any:
                i = state[0] = (state[0] + 1) % len(ws)
                return mm(x, ws[i], out=out)

            return run

        kernels = [make(m) for m in ms]
        self._sync()
        return kernels

    def _ffn_weights(self, d: int, f: int) -> tuple[Any, Any, Any]:
        return self._rand(d, f), self._rand(d, f), self._rand(f, d)

    def _ffn_call(self, x: Any, w: tuple[Any, Any, Any]) -> Any:
        silu = self._torch.nn.functional.silu
        return (silu(x @ w[0]) * (x @ w[1])) @ w[2]

    def ffn(self, m: int, d: int, f: int, cold_bytes: int) -> Kernel:
        """One gated expert FFN ``down(silu(x Wg) * (x Wu))`` on ``m`` tokens, cold weights."""
        x = self._rand(m, d)
        weights = [self._ffn_weights(d, f) for _ in range(self._copies(3 * d * f, cold_bytes))]
        state = [0]

        def run() -> Any:
            i = state[0] = (state[0] + 1) % len(weights)
            return self._ffn_call(x, weights[i])

        self._sync()
        return run

    def grouped(self, tokens: Sequence[int], d: int, f: int) -> Kernel:
        """Experts run back to back, ``tokens[i]`` tokens to expert i (0 = skipped)."""
        groups = [(self._rand(m, d), self._ffn_weights(d, f)) for m in tokens if m > 0]

        def run() -> Any:
            return [self._ffn_call(x, w) for x, w in groups]

        self._sync()
        return run

    def act(self, m: int, f: int) -> Kernel:
        """The gated activation ``silu(g) * u`` over two ``m x f`` tensors."""
        g, u = self._rand(m, f), self._rand(m, f)
        silu = self._torch.nn.functional.silu
        self._sync()
        return lambda: silu(g) * u

    def stream(self, n_bytes: int) -> Kernel:
        """A device-memory copy of ``n_bytes`` (reads and writes ``n_bytes`` each)."""
        n = max(1, n_bytes // 4)
        src = self._torch.ones(n, dtype=self._torch.float32, device=self.device)
        dst = self._torch.empty_like(src)
        self._sync()
        return lambda: dst.copy_(src)

    def h2d(self, n_bytes: int, pinned: bool) -> Kernel:
        """A host->device copy of ``n_bytes`` from pinned or pageable host memory (CUDA only)."""
        if self.device != "cuda":
            raise CalibrationError("host->device copies need --device cuda")
        src = self._torch.empty(n_bytes, dtype=self._torch.uint8, pin_memory=pinned).fill_(1)
        dst = self._torch.empty(n_bytes, dtype=self._torch.uint8, device=self.device)
        self._sync()
        return lambda: dst.copy_(src, non_blocking=pinned)

    def timer(self) -> Timer:
        """CUDA events on a GPU, ``perf_counter_ns`` on the CPU."""
        if self.device == "cuda":
            return CudaEventTimer(self._torch)
        threads = int(self._torch.get_num_threads())
        return CpuTimer(check_threads=1 if threads == 1 else None, clock=self.clock)

    # -- description
    def fingerprint(self) -> dict[str, Any]:
        """Machine description: CPU model and cores, torch threads; GPU name and CUDA version."""
        fp: dict[str, Any] = cpu_fingerprint()
        fp["torch_threads"] = int(self._torch.get_num_threads())
        fp["clock"] = "cuda-events" if self.device == "cuda" else self.clock
        fp["torch_version"] = str(self._torch.__version__)
        if self.device == "cuda":
            fp.update(gpu_fingerprint(self._torch))
        return fp

    def device_name(self) -> str:
        """The device as the hardware names it."""
        if self.device == "cuda":
            return str(self._torch.cuda.get_device_name(0))
        return str(cpu_fingerprint().get("cpu_model", platform.processor() or "cpu"))


def read_cpuinfo(text: str | None = None) -> dict[str, str]:
    """The first processor block of ``/proc/cpuinfo`` as a dict (empty when unavailable)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def cpu_fingerprint(cpuinfo: Mapping[str, str] | None = None) -> dict[str, Any]:
    """CPU model, clock, SIMD flags of interest, logical CPUs and the CPUs this process may use."""
    info = dict(cpuinfo) if cpuinfo is not None else read_cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    mhz = info.get("cpu MHz", "")
    return {
        "cpu_model": info.get("model name", platform.processor() or "unknown"),
        "cpu_mhz": float(mhz) if re.fullmatch(r"[0-9.]+", mhz or "") else None,
        "simd": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"}),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "machine": platform.machine(),
    }


def gpu_fingerprint(torch: Any) -> dict[str, Any]:
    """GPU name, compute capability, memory, SM count, CUDA version, PCIe link (when nvidia-smi answers)."""
    props = torch.cuda.get_device_properties(0)
    fp: dict[str, Any] = {
        "gpu_name": str(torch.cuda.get_device_name(0)),
        "gpu_capability": ".".join(str(v) for v in torch.cuda.get_device_capability(0)),
        "gpu_memory_bytes": int(getattr(props, "total_memory", 0)),
        "gpu_sms": int(getattr(props, "multi_processor_count", 0)),
        "cuda_version": str(torch.version.cuda),
    }
    fp.update(query_pcie())
    return fp


def query_pcie(run: Callable[[list[str]], str] | None = None) -> dict[str, Any]:
    """PCIe generation and width of GPU 0 from ``nvidia-smi`` (empty when it is unavailable)."""
    if run is None:
        if shutil.which("nvidia-smi") is None:
            return {}

        def run(cmd: list[str]) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout

    try:
        text = run(["nvidia-smi", "--query-gpu=pcie.link.gen.max,pcie.link.width.max", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi did not answer (%s); PCIe link unknown", exc)
        return {}
    parts = [p.strip() for p in text.strip().splitlines()[0].split(",")] if text.strip() else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        log.info("unexpected nvidia-smi answer %r; PCIe link unknown", text)
        return {}
    return {"pcie_gen": int(parts[0]), "pcie_width": int(parts[1])}


#: Per-direction x16 PCIe bandwidth by generation [S] reference 1.1 (glennklockwood: Gen4 x16
#: "32+32 GB/s"; Gen5 x16 128 GB/s bidirectional); Gen3 is half of Gen4 [D].
PCIE_X16_Bps: dict[int, float] = {3: 16e9, 4: 32e9, 5: 64e9}


def cpu_peaks(fp: Mapping[str, Any], threads: int, dtype: str) -> Peaks:
    """Nominal CPU peak FLOP/s [D] from the fingerprint; memory peak filled in later from measurement.

    FLOP/cycle per core (fp32): AVX-512 2 FMA x 16 lanes x 2 = 64; AVX2+FMA 2 x 8 x 2 = 32; else 8
    (formula "(FMAs per clock) * (vector elements / instruction) * 2": reference 1.3, stackoverflow
    15655835 [S]); bf16/fp16 count the same vector width as fp32 unless AMX is present (1024 BF16
    ops/cycle, reference 1.3). Clock: ``cpu MHz`` of /proc/cpuinfo (2.6 GHz when unknown, an
    assumption). Cores: the torch threads used.
    """
    simd = set(fp.get("simd", []))
    if dtype in ("bf16", "fp16") and "amx_bf16" in simd:
        per_cycle, what = 1024.0, "AMX 1024 BF16 ops/cycle/core (reference 1.3)"
    elif "avx512f" in simd:
        per_cycle, what = 64.0, "AVX-512 64 FLOP/cycle/core"
    elif {"avx2", "fma"} <= simd:
        per_cycle, what = 32.0, "AVX2+FMA 32 FLOP/cycle/core"
    else:
        per_cycle, what = 8.0, "SSE 8 FLOP/cycle/core (assumption)"
    mhz = fp.get("cpu_mhz") or 2600.0
    flops = threads * per_cycle * float(mhz) * 1e6
    return Peaks(
        flops=flops,
        flops_source=f"[D] {threads} thread(s) x {what} x {float(mhz):.0f} MHz (/proc/cpuinfo)",
        memory_Bps=1.0,
        memory_source="placeholder, replaced by the measured copy bandwidth",
    )


def resolve_cpu_timing(device: str, threads: int | None, clock: str | None) -> tuple[int | None, str]:
    """Thread count and clock of a run: the given ones, else the defaults ``(1, "process")`` on a CPU.

    Why one thread and the process clock by default, always (not only when the machine looks busy):
    with the wall clock and several threads, any other work on the machine lengthens the measured
    times by however long it holds a core, and a load average read at the start says nothing about
    the rest of the sweep. A measured case: ``--quick`` with the old defaults (wall clock, 2
    threads) on a busy 2-core machine fitted a GEMM t0 of 4648 us, held-out median error 26%, max
    2545%, and a whole-layer error of 60%; with one thread and the process clock on the same
    machine, 4.4% and 11.2%. The process CPU time of one compute thread excludes the time the core
    is taken away, so one-thread profiles are reproducible on shared machines. Multi-thread
    profiles remain available with ``threads`` > 1 (then the wall clock, the only one valid for
    several threads). On a GPU the thread count is left to torch and the clock is unused
    (CUDA events); ``"wall"`` is returned for it.
    """
    if device != "cpu":
        return threads, clock or "wall"
    if threads is None:
        threads = 1
    if clock is None:
        clock = "process" if threads == 1 else "wall"
    return threads, clock


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Options of :func:`run_calibration` (see the CLI ``codesign calibrate run``).

    ``threads`` and ``clock`` left ``None`` take :func:`resolve_cpu_timing`'s defaults (one thread
    and the process CPU clock on a CPU).
    """

    device: str = "cpu"
    quick: bool = False
    plan: SweepPlan | None = None  # overrides quick/full
    dtype: str | None = None
    threads: int | None = None
    seed: int = 0
    name: str | None = None
    peak_flops: float | None = None
    peak_memory_Bps: float | None = None
    link_Bps: float | None = None
    clock: str | None = None  # CPU only: "wall" or "process" (see CPU_CLOCKS); None: default
    extra_fingerprint: Mapping[str, Any] = field(default_factory=dict)


def run_calibration(config: RunConfig, *, progress: bool = False, backend: Any = None) -> CalibrationProfile:
    """Measure the sweep on the local device and fit a :class:`CalibrationProfile`.

    Reference peaks: given ones win; otherwise a CPU uses the nominal peak of :func:`cpu_peaks` and,
    for memory, the best measured copy bandwidth (no datasheet value exists for an arbitrary
    machine, and the source says so); a GPU needs ``peak_flops`` and ``peak_memory_Bps`` (from its
    datasheet) unless its name matches a known one (A100, H100, H200), and its link peak comes from
    the PCIe generation nvidia-smi reports. A peak below what was measured is raised to the
    measurement (logged and recorded in the source), so efficiencies stay in (0, 1].
    """
    plan = config.plan or (SweepPlan.quick() if config.quick else SweepPlan.full())
    threads, clock = resolve_cpu_timing(config.device, config.threads, config.clock)
    be = (
        backend
        if backend is not None
        else TorchBackend(config.device, dtype=config.dtype, threads=threads, seed=config.seed, clock=clock)
    )
    try:
        fp = dict(be.fingerprint())
        fp.update(config.extra_fingerprint)
        started = time.perf_counter()
        fp["loadavg_start"] = _loadavg()
        samples = run_sweep(be, plan, progress=progress)
        fp["loadavg_end"] = _loadavg()
    finally:
        if backend is None:
            be.close()
    fp["sweep"] = plan.name
    fp["sweep_seconds"] = round(time.perf_counter() - started, 2)
    return profile_from_samples(
        samples,
        config=config,
        plan=plan,
        fingerprint=fp,
        device_kind=be.device_kind,
        dtype=be.dtype,
        device_name=be.device_name(),
    )


def profile_from_samples(
    samples: Sequence[Sample],
    *,
    config: RunConfig,
    plan: SweepPlan,
    fingerprint: Mapping[str, Any],
    device_kind: str,
    dtype: str,
    device_name: str,
) -> CalibrationProfile:
    """The fit half of :func:`run_calibration`: reference peaks and a :class:`CalibrationProfile`
    from measured ``samples`` (times in seconds) of ``plan`` run on ``device_name``.

    Pure (no timing, no torch): tests check the fit logic on recorded or synthetic samples with it,
    so that no test depends on how busy its machine is. ``fingerprint`` is copied into the profile
    (``torch_threads`` sets the nominal CPU peak); ``config`` supplies given peaks and the name.
    """
    fp = dict(fingerprint)
    peaks = _peaks_for(device_kind, dtype, fp, config, samples)
    return fit_profile(
        name=config.name or f"{device_kind}-{plan.name}",
        device_name=device_name,
        device_kind=device_kind,
        dtype=dtype,
        dtype_bytes=DTYPE_BYTES[dtype],
        peaks=peaks,
        samples=list(samples),
        fingerprint=fp,
        torch_version=str(fp.get("torch_version", "")),
        source=f"codesign calibrate run --device {config.device} ({plan.name} sweep) on {device_name}",
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        heldout_rule=plan.heldout_rule,
    )


def _loadavg() -> float | None:
    """The 1-minute load average (other work on the machine disturbs CPU timings), None if unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


#: Datasheet peaks of GPUs recognised by name (16-bit dense tensor FLOP/s, HBM B/s), reference 1.1 [S].
#: Matched in order: every substring of the key must occur in the lower-cased GPU name.
KNOWN_GPU_PEAKS: tuple[tuple[tuple[str, ...], float, float, str], ...] = (
    (("h100", "pcie"), 756e12, 2000e9, "H100 PCIe: 756 TFLOP/s BF16 dense, 2,000 GB/s [S] reference 1.1"),
    (("h100",), 989e12, 3350e9, "H100 SXM5: 989 TFLOP/s BF16 dense, 3,350 GB/s [S] reference 1.1 (hpctech)"),
    (("h200",), 989e12, 4.8e12, "H200 SXM: ~989 TFLOP/s BF16 dense, 4.8 TB/s [S] reference 1.1"),
    (("a100", "pcie"), 312e12, 1935e9, "A100 PCIe 80GB: 312 TFLOP/s BF16 dense, 1,935 GB/s [S] reference 1.1"),
    (("a100",), 312e12, 2039e9, "A100 SXM 80GB: 312 TFLOP/s BF16 dense, 2,039 GB/s [S] reference 1.1"),
)


def known_gpu_peaks(name: str) -> tuple[float, float, str] | None:
    """Datasheet ``(flops, memory_Bps, source)`` of a GPU by its name, or None when unknown."""
    low = name.lower()
    for keys, flops, mem, source in KNOWN_GPU_PEAKS:
        if all(k in low for k in keys):
            return flops, mem, source
    return None


def _peaks_for(
    device_kind: str, dtype: str, fp: Mapping[str, Any], config: RunConfig, samples: Sequence[Sample]
) -> Peaks:
    gemms = [s for s in samples if s.kind == "gemm"]
    best_flops = max((2.0 * s.shape["m"] * s.shape["k"] * s.shape["n"] / s.time_s for s in gemms), default=0.0)
    streams = [s for s in samples if s.kind == "memory" and s.op == "stream"]
    best_bw = max((s.shape["n_bytes"] / s.time_s for s in streams), default=0.0)
    copies = [s for s in samples if s.kind == "copy"]
    best_link = max((s.shape["n_bytes"] / s.time_s for s in copies), default=0.0)
    if device_kind == "cpu":
        nominal = cpu_peaks(fp, int(fp.get("torch_threads", 1)), dtype)
        flops, flops_src = (
            (config.peak_flops, "given (--peak-tflops)") if config.peak_flops else (nominal.flops, nominal.flops_source)
        )
        mem, mem_src = (
            (config.peak_memory_Bps, "given (--peak-memory-gbps)")
            if config.peak_memory_Bps
            else (best_bw, "measured: best tensor-copy bandwidth of this run (no datasheet value for this machine)")
        )
        if mem <= 0:
            raise CalibrationError(
                f"sweep {fp.get('sweep')!r} measured no memory bandwidth (no stream sizes); pass --peak-memory-gbps"
            )
        link, link_src = 0.0, "none (CPU)"
    else:
        name = str(fp.get("gpu_name", "")).lower()
        known = known_gpu_peaks(name)
        if config.peak_flops:
            flops, flops_src = config.peak_flops, "given (--peak-tflops)"
        elif known:
            flops, flops_src = known[0], known[2]
        else:
            raise CalibrationError(
                f"GPU {name!r} has no known datasheet peak; pass --peak-tflops and --peak-memory-gbps"
            )
        if config.peak_memory_Bps:
            mem, mem_src = config.peak_memory_Bps, "given (--peak-memory-gbps)"
        elif known:
            mem, mem_src = known[1], known[2]
        else:
            raise CalibrationError(f"GPU {name!r} has no known datasheet memory bandwidth; pass --peak-memory-gbps")
        gen = fp.get("pcie_gen")
        if config.link_Bps:
            link, link_src = config.link_Bps, "given (--link-gbps)"
        elif isinstance(gen, int) and gen in PCIE_X16_Bps:
            link = PCIE_X16_Bps[gen] * min(16, int(fp.get("pcie_width", 16))) / 16
            link_src = f"PCIe Gen{gen} x{fp.get('pcie_width', 16)} per direction [S] reference 1.1"
        else:
            link, link_src = PCIE_X16_Bps[4], "assumption: PCIe Gen4 x16 32 GB/s (nvidia-smi gave no link)"
    if best_flops > flops:
        log.warning("measured %.3g FLOP/s above the reference peak %.3g; using the measurement", best_flops, flops)
        flops, flops_src = best_flops, f"measured maximum (above the reference: {flops_src})"
    if best_bw > mem:
        mem, mem_src = best_bw, f"measured maximum (above the reference: {mem_src})"
    if best_link > link > 0:
        link, link_src = best_link, f"measured maximum (above the reference: {link_src})"
    return Peaks(
        flops=flops, flops_source=flops_src, memory_Bps=mem, memory_source=mem_src, link_Bps=link, link_source=link_src
    )
