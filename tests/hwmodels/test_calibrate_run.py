"""calibrate_run: the fit logic on recorded and synthetic samples, a real (tiny) CPU sweep checked for
shape only, and the CUDA path's logic on fakes.

No test here judges a real run's timings or fit quality: those depend on the machine's load and are
measured by ``benchmarks/bench_calibrate.py``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hwmodels.calibrate_run import (
    CpuTimer,
    CudaEventTimer,
    Kernel,
    RunConfig,
    SweepPlan,
    TorchBackend,
    cpu_fingerprint,
    cpu_peaks,
    gpu_fingerprint,
    log_tokens,
    profile_from_samples,
    query_pcie,
    read_cpuinfo,
    resolve_cpu_timing,
    run_calibration,
    run_sweep,
)
from hwmodels.calibration import CalibrationError, GemmFit, Sample
from hwmodels.validate import validate_heldout

# ------------------------------------------------------------------------------------ real CPU run


@pytest.fixture(scope="module")
def cpu_profile() -> Any:
    """One real tiny sweep with the CPU defaults (no threads or clock given)."""
    import torch

    before = torch.get_num_threads()
    prof = run_calibration(RunConfig(device="cpu", plan=SweepPlan.tiny(), name="tiny-test"))
    assert torch.get_num_threads() == before
    return prof


def test_real_cpu_calibration_tiny(cpu_profile: Any) -> None:
    """The real sweep's shape: which kernels, which fingerprint; never its speed or fit quality."""
    prof = cpu_profile
    plan = SweepPlan.tiny()
    assert prof.device_kind == "cpu" and prof.dtype == "fp32" and prof.name == "tiny-test"
    assert len(prof.samples) == plan.n_kernels(with_copies=False)
    kinds = {s.kind for s in prof.samples}
    assert kinds == {"gemm", "ffn", "grouped", "memory"}  # no copies on a CPU
    fp = prof.fingerprint
    assert fp["torch_threads"] == 1 and fp["clock"] == "process"  # the CPU defaults
    assert fp["cpu_model"] and fp["logical_cpus"] >= 1 and fp["sweep"] == "tiny"
    assert prof.torch_version and prof.torch_version == fp["torch_version"]
    assert "[D]" in prof.peaks.flops_source or "measured" in prof.peaks.flops_source
    assert 0 < prof.gemm_fit.eff_compute <= 1 and "stream" in prof.memory_fits
    assert all(s.time_s > 0 and s.repeats >= 1 for s in prof.samples)
    assert prof.quality["status"] in ("ok", "suspect", "absurd") and "gemm_t0_s" in prof.quality
    held = [s for s in prof.samples if s.heldout and s.kind == "gemm"]
    assert held and any(s.shape["k"] == 96 or s.shape["n"] == 96 for s in held)
    report = validate_heldout(prof)
    assert report.n == sum(s.heldout and s.kind in ("gemm", "ffn", "grouped") for s in prof.samples)


def test_fit_logic_on_recorded_samples(recorded_cpu_profile: Any) -> None:
    """The fit of a real tiny sweep's recorded timings (fixed data: the same verdict on any machine)."""
    prof = recorded_cpu_profile
    assert prof.quality["status"] == "ok" and prof.quality["problems"] == []
    assert "measured" in prof.peaks.memory_source  # a CPU has no datasheet bandwidth
    assert prof.peaks.memory_Bps == pytest.approx(
        max(s.shape["n_bytes"] / s.time_s for s in prof.samples if s.kind == "memory" and s.op == "stream")
    )
    report = validate_heldout(prof)
    assert report.per_op["gemm:up"].median_abs_pct_error < 15  # the calibration's accuracy target
    assert report.per_op["gemm:down"].median_abs_pct_error < 15
    # recorded timings grow with tokens, and so does the fit
    up = sorted((s.shape["m"], s.time_s) for s in prof.samples if s.op == "up" and s.shape["k"] == 128)
    assert up[-1][1] > 3 * up[0][1]
    assert prof.gemm_fit.predict_s(
        256, 128, 352, peak_flops=prof.peaks.flops, dtype_bytes=4.0
    ) > prof.gemm_fit.predict_s(1, 128, 352, peak_flops=prof.peaks.flops, dtype_bytes=4.0)


def test_fit_logic_flags_timings_disturbed_by_load() -> None:
    """Synthetic samples of a known CPU, then the same with a busy machine's +5 ms on the fitted
    ones: the first fit is ok and recovers the truth, the second is judged absurd."""
    true = GemmFit(t0_s=20e-6, eff_compute=0.6, bandwidth_Bps=12e9, sharpness=2.0, half_occupancy_elems=3000.0)
    plan = SweepPlan.tiny()
    fp = {"torch_threads": 1, "simd": ["avx2", "fma"], "cpu_mhz": 3000.0, "sweep": "tiny"}
    peak = cpu_peaks(fp, 1, "fp32").flops

    def samples(disturb_s: float) -> list[Sample]:
        out = []
        for d, f in (*plan.expert_shapes, *plan.heldout_shapes):
            held_shape = (d, f) in plan.heldout_shapes
            for i, m in enumerate(plan.tokens):
                held = held_shape or (i % plan.heldout_every == plan.heldout_every - 1)
                for op, k, n in (("up", d, f), ("down", f, d)):
                    t = float(true.predict_s(m, k, n, peak_flops=peak, dtype_bytes=4.0))
                    extra = disturb_s if (m > 1 and not held) else 0.0
                    out.append(
                        Sample(kind="gemm", op=op, shape={"m": m, "k": k, "n": n}, heldout=held, time_s=t + extra)
                    )
        out += [
            Sample(kind="memory", op="stream", shape={"n_bytes": b}, heldout=False, time_s=2e-6 + 2 * b / 10e9)
            for b in plan.stream_bytes
        ]
        return out

    def fit(disturb_s: float) -> Any:
        return profile_from_samples(
            samples(disturb_s),
            config=RunConfig(device="cpu", plan=plan),
            plan=plan,
            fingerprint=fp,
            device_kind="cpu",
            dtype="fp32",
            device_name="synthetic-cpu",
        )

    clean = fit(0.0)
    assert clean.quality["status"] == "ok" and clean.name == "cpu-tiny"
    assert clean.gemm_fit.eff_compute == pytest.approx(true.eff_compute, rel=0.05)
    assert validate_heldout(clean).per_op["gemm:up"].median_abs_pct_error < 1
    busy = fit(5e-3)
    assert busy.quality["status"] == "absurd" and busy.quality["problems"]


def test_cuda_requested_without_gpu_is_a_clear_error() -> None:
    fake = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    with pytest.raises(CalibrationError, match="no CUDA GPU"):
        TorchBackend("cuda", torch=fake)
    with pytest.raises(CalibrationError, match="'cpu' or 'cuda'"):
        TorchBackend("tpu", torch=fake)


def test_cpu_backend_bad_dtype() -> None:
    with pytest.raises(CalibrationError, match="--dtype"):
        TorchBackend("cpu", dtype="int3")


# ------------------------------------------------------------------------------------ timers


class FakeEvent:
    """Stands for torch.cuda.Event: record() reads the fake GPU clock (ms)."""

    def __init__(self, clock: list[float], enable_timing: bool = False) -> None:
        assert enable_timing
        self.clock = clock
        self.t: float | None = None
        self.synced = False

    def record(self) -> None:
        self.t = self.clock[0]

    def synchronize(self) -> None:
        self.synced = True

    def elapsed_time(self, other: FakeEvent) -> float:
        assert other.synced and self.t is not None and other.t is not None
        return other.t - self.t


def test_cuda_event_timer_uses_events_and_ms() -> None:
    clock = [0.0]
    fake_torch = SimpleNamespace(
        cuda=SimpleNamespace(Event=lambda enable_timing=False: FakeEvent(clock, enable_timing))
    )

    def kernel() -> None:
        clock[0] += 0.25  # 0.25 ms of GPU time per call

    assert CudaEventTimer(fake_torch).time(kernel, 4) == pytest.approx(0.25e-3)


def test_cpu_timer_retries_descheduled_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    """A measurement during which the process got little CPU time is retried, then kept."""
    wall = iter([0, 1000, 2000, 3000, 4000, 5000])  # 1000 ns wall per measurement
    cpu = iter([0, 300, 1000, 2000, 2000, 2990])  # 300 ns, 1000 ns, 990 ns of CPU
    monkeypatch.setattr("time.perf_counter_ns", lambda: next(wall))
    monkeypatch.setattr("time.process_time_ns", lambda: next(cpu))
    timer = CpuTimer(check_threads=1, min_busy=0.95)
    assert timer.time(lambda: None, 1) == pytest.approx(1e-6)
    assert timer.rejected == 1
    # every attempt disturbed: the least disturbed one (ratio 0.8, 1250 ns) is kept
    walls = iter([0, 2000, 0, 1250, 0, 3000])
    cpus = iter([0, 400, 0, 1000, 0, 900])
    monkeypatch.setattr("time.perf_counter_ns", lambda: next(walls))
    monkeypatch.setattr("time.process_time_ns", lambda: next(cpus))
    disturbed = CpuTimer(check_threads=1, max_retries=2)
    assert disturbed.time(lambda: None, 1) == pytest.approx(1.25e-6)
    assert disturbed.rejected == 3
    # long kernels: no retries beyond the time budget
    monkeypatch.setattr("time.perf_counter_ns", iter([0, 10**9]).__next__)
    monkeypatch.setattr("time.process_time_ns", iter([0, 10**8]).__next__)
    long_kernel = CpuTimer(check_threads=1, retry_budget_s=0.25)
    assert long_kernel.time(lambda: None, 1) == pytest.approx(1.0)
    assert long_kernel.rejected == 1
    unchecked = CpuTimer()
    monkeypatch.setattr("time.perf_counter_ns", iter([0, 500]).__next__)
    monkeypatch.setattr("time.process_time_ns", iter([0, 1]).__next__)
    assert unchecked.time(lambda: None, 1) == pytest.approx(5e-7)


# ------------------------------------------------------------------------------------ fake GPU sweep


TRUE_GPU = GemmFit(t0_s=6e-6, eff_compute=0.75, bandwidth_Bps=1.8e12, sharpness=1.6, half_occupancy_elems=1.2e5)


class FakeClockTimer:
    """Times a kernel by the simulated duration it reports (the kernel returns seconds)."""

    def __init__(self) -> None:
        self.calls = 0
        self.rng = np.random.default_rng(0)

    def time(self, kernel: Kernel, inner: int) -> float:
        self.calls += inner
        return float(kernel()) * float(np.exp(self.rng.normal(0, 0.01)))


class FakeGpuBackend:
    """A GPU that follows a known model: exercises the CUDA branch of the sweep and the fit."""

    device_kind = "gpu"
    dtype = "bf16"
    supports_copies = True

    def __init__(self) -> None:
        self.built: list[str] = []

    def _t(self, m: float, k: int, n: int) -> float:
        return float(TRUE_GPU.predict_s(m, k, n, peak_flops=312e12, dtype_bytes=2))

    def gemm_family(self, ms: Sequence[int], k: int, n: int, cold_bytes: int) -> list[Kernel]:
        self.built.append(f"gemm{k}x{n}")
        return [partial(self._t, m, k, n) for m in ms]

    def ffn(self, m: int, d: int, f: int, cold_bytes: int) -> Kernel:
        return lambda: 2 * self._t(m, d, f) + self._t(m, f, d) + 3 * m * f * 2 / 1e12

    def grouped(self, tokens: Sequence[int], d: int, f: int) -> Kernel:
        return lambda: sum(2 * self._t(m, d, f) + self._t(m, f, d) + 3 * m * f * 2 / 1e12 for m in tokens if m)

    def act(self, m: int, f: int) -> Kernel:
        return lambda: 3e-6 + 3 * m * f * 2 / 1e12

    def stream(self, n_bytes: int) -> Kernel:
        return lambda: 2e-6 + 2 * n_bytes / 1.6e12

    def h2d(self, n_bytes: int, pinned: bool) -> Kernel:
        self.built.append(f"h2d{'p' if pinned else 'u'}{n_bytes}")
        return lambda: 10e-6 + n_bytes / (25e9 if pinned else 12e9)

    def timer(self) -> FakeClockTimer:
        return FakeClockTimer()

    def fingerprint(self) -> dict[str, Any]:
        return {
            "gpu_name": "NVIDIA A100-SXM4-80GB",
            "cuda_version": "12.4",
            "pcie_gen": 4,
            "pcie_width": 16,
            "torch_version": "fake",
        }

    def device_name(self) -> str:
        return "NVIDIA A100-SXM4-80GB"


def test_gpu_sweep_with_fake_backend_measures_copies_and_fits() -> None:
    backend = FakeGpuBackend()
    plan = SweepPlan.quick()  # the real quick plan: the fake GPU makes it instant
    prof = run_calibration(RunConfig(device="cuda", plan=plan), backend=backend)
    assert prof.device_kind == "gpu" and prof.device_name == "NVIDIA A100-SXM4-80GB"
    copies = [s for s in prof.samples if s.kind == "copy"]
    assert len(copies) == 2 * len(plan.copy_bytes)
    assert {s.shape["pinned"] for s in copies} == {True, False}
    assert prof.has_copy and set(prof.copy_fits) == {"pinned", "pageable"}
    # reference peaks: the A100 datasheet by name, PCIe Gen4 x16 from the fingerprint
    assert prof.peaks.flops == 312e12 and prof.peaks.link_Bps == 32e9
    assert "PCIe Gen4" in prof.peaks.link_source
    assert prof.copy_fits["pinned"].bandwidth_Bps == pytest.approx(25e9, rel=0.05)
    assert prof.copy_fits["pageable"].bandwidth_Bps == pytest.approx(12e9, rel=0.05)
    assert float(prof.copy(2**30)) == pytest.approx(25 / 32, rel=0.05)
    assert prof.gemm_fit.eff_compute == pytest.approx(TRUE_GPU.eff_compute, rel=0.1)
    report = validate_heldout(prof)
    assert report.per_op["gemm:up"].median_abs_pct_error < 5
    assert report.per_op["ffn:gated"].median_abs_pct_error < 10


def test_unknown_gpu_needs_given_peaks() -> None:
    class Unknown(FakeGpuBackend):
        def fingerprint(self) -> dict[str, Any]:
            return {"gpu_name": "Mystery GPU", "torch_version": "fake"}

    plan = SweepPlan.tiny()
    with pytest.raises(CalibrationError, match="--peak-tflops"):
        run_calibration(RunConfig(device="cuda", plan=plan), backend=Unknown())
    prof = run_calibration(
        RunConfig(device="cuda", plan=plan, peak_flops=400e12, peak_memory_Bps=3e12), backend=Unknown()
    )
    assert prof.peaks.flops == 400e12 and "assumption" in prof.peaks.link_source


def test_sweep_interleaves_repeats_within_a_family() -> None:
    order: list[int] = []

    class Recording(FakeGpuBackend):
        def gemm_family(self, ms: Sequence[int], k: int, n: int, cold_bytes: int) -> list[Kernel]:
            def make(m: int) -> Kernel:
                def run() -> float:
                    order.append(m)
                    return 1e-3

                return run

            return [make(m) for m in ms]

    plan = SweepPlan(
        name="t",
        expert_shapes=((8, 8),),
        heldout_shapes=(),
        tokens=(1, 2),
        heldout_every=2,
        ffn_shape=(8, 8),
        ffn_tokens=(),
        grouped_tokens=(),
        act_tokens=(),
        stream_bytes=(),
        copy_bytes=(),
        warmup=1,
        repeats=3,
        min_time_s=0.0,
    )
    samples = run_sweep(Recording(), plan)
    assert len(samples) == 4
    up = order[: len(order) // 2]
    assert up == [1, 2, 1, 2, 1, 2, 1, 2]  # warm-up 1, 2, then repeats interleaved
    assert [s.heldout for s in samples] == [False, True, False, True]


# ------------------------------------------------------------------------------------ fingerprints


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
cpu MHz\t\t: 2400.000
flags\t\t: fpu sse avx2 fma avx512f avx512_bf16

processor\t: 1
model name\t: ignored
"""


def test_cpu_fingerprint_and_nominal_peak() -> None:
    info = read_cpuinfo(CPUINFO)
    assert info["model name"] == "AMD EPYC 9654 96-Core Processor"
    fp = cpu_fingerprint(info)
    assert fp["cpu_mhz"] == 2400.0 and fp["simd"] == ["avx2", "avx512_bf16", "avx512f", "fma"]
    peaks = cpu_peaks(fp, 4, "fp32")
    assert peaks.flops == pytest.approx(4 * 64 * 2400e6)
    assert "[D]" in peaks.flops_source
    avx2 = cpu_peaks({"simd": ["avx2", "fma"], "cpu_mhz": 3000.0}, 1, "fp32")
    assert avx2.flops == pytest.approx(32 * 3e9)


def test_gpu_fingerprint_with_fake_torch() -> None:
    props = SimpleNamespace(total_memory=80 * 2**30, multi_processor_count=132)
    fake = SimpleNamespace(
        cuda=SimpleNamespace(
            get_device_properties=lambda i: props,
            get_device_name=lambda i: "NVIDIA H100 80GB HBM3",
            get_device_capability=lambda i: (9, 0),
        ),
        version=SimpleNamespace(cuda="12.4"),
    )
    fp = gpu_fingerprint(fake)
    assert fp["gpu_name"] == "NVIDIA H100 80GB HBM3" and fp["gpu_capability"] == "9.0"
    assert fp["gpu_sms"] == 132 and fp["cuda_version"] == "12.4"


def test_query_pcie_parses_and_tolerates_failures() -> None:
    assert query_pcie(lambda cmd: "5, 16\n") == {"pcie_gen": 5, "pcie_width": 16}
    assert query_pcie(lambda cmd: "[N/A], [N/A]\n") == {}

    def failing(cmd: list[str]) -> str:
        raise subprocess.CalledProcessError(9, cmd)

    assert query_pcie(failing) == {}


def test_log_tokens_and_plans() -> None:
    assert log_tokens(1, 4096, 13) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    quick = SweepPlan.quick()
    assert min(quick.tokens) == 1 and max(quick.tokens) == 4096
    assert quick.n_kernels(with_copies=True) > quick.n_kernels(with_copies=False)
    with pytest.raises(CalibrationError, match="repeats"):
        SweepPlan(
            name="bad",
            expert_shapes=(),
            heldout_shapes=(),
            tokens=(1,),
            heldout_every=2,
            ffn_shape=(1, 1),
            ffn_tokens=(),
            grouped_tokens=(),
            act_tokens=(),
            stream_bytes=(),
            copy_bytes=(),
            repeats=0,
        )


def test_module_does_not_import_torch_at_import_time() -> None:
    code = "import sys, hwmodels.calibrate_run, hwmodels.calibration, hwmodels.validate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------------------------ CUDA backend on a fake torch


class FakeTensor:
    """Records what the CUDA backend asks torch to do (device, pinned host memory, async copies)."""

    def __init__(
        self, log: list[tuple[Any, ...]], shape: tuple[int, ...], device: str = "cpu", pinned: bool = False
    ) -> None:
        self.log, self.shape, self.device, self.pinned = log, shape, device, pinned

    def to(self, device: str = "cpu", dtype: Any = None) -> FakeTensor:
        return FakeTensor(self.log, self.shape, device)

    def fill_(self, value: float) -> FakeTensor:
        return self

    def copy_(self, src: FakeTensor, non_blocking: bool = False) -> FakeTensor:
        self.log.append(("copy", src.device, src.pinned, self.device, non_blocking))
        return self

    def __mul__(self, other: FakeTensor) -> FakeTensor:
        return self

    def __matmul__(self, other: FakeTensor) -> FakeTensor:
        self.log.append(("matmul", self.device, other.device))
        return FakeTensor(self.log, (self.shape[0], other.shape[1]), self.device)


def make_fake_torch(log: list[tuple[Any, ...]]) -> SimpleNamespace:
    def tensor(
        *shape: int, device: str = "cpu", dtype: Any = None, pin_memory: bool = False, generator: Any = None
    ) -> FakeTensor:
        if pin_memory:
            log.append(("pinned_alloc", shape))
        return FakeTensor(log, tuple(shape), device, pin_memory)

    def matmul(x: FakeTensor, w: FakeTensor, out: FakeTensor | None = None) -> FakeTensor:
        log.append(("matmul", x.device, w.device, out is not None))
        return x

    class Gen:
        def manual_seed(self, seed: int) -> Gen:
            return self

    return SimpleNamespace(
        float32="f32",
        bfloat16="bf16",
        float16="f16",
        uint8="u8",
        __version__="fake",
        cuda=SimpleNamespace(
            is_available=lambda: True,
            synchronize=lambda: log.append(("sync",)),
            Event=lambda enable_timing=False: FakeEvent([0.0], enable_timing),
        ),
        Generator=Gen,
        randn=tensor,
        empty=tensor,
        ones=tensor,
        empty_like=lambda t: FakeTensor(log, t.shape, t.device),
        matmul=matmul,
        nn=SimpleNamespace(functional=SimpleNamespace(silu=lambda t: t)),
        set_num_threads=lambda n: None,
        get_num_threads=lambda: 1,
    )


def test_cuda_backend_builds_device_kernels_and_async_pinned_copies() -> None:
    log: list[tuple[Any, ...]] = []
    be = TorchBackend("cuda", torch=make_fake_torch(log))
    assert be.dtype == "bf16" and be.supports_copies and be.device_kind == "gpu"
    assert isinstance(be.timer(), CudaEventTimer)
    kernels = be.gemm_family([1, 8], 64, 128, cold_bytes=64 * 128 * 2 * 3)
    assert ("sync",) in log  # buffers are ready before timing starts
    kernels[1]()
    assert log[-1] == ("matmul", "cuda", "cuda", True)
    be.h2d(4096, pinned=True)()
    assert ("pinned_alloc", (4096,)) in log
    assert log[-1] == ("copy", "cpu", True, "cuda", True)  # pinned host -> device, asynchronous
    be.h2d(4096, pinned=False)()
    assert log[-1] == ("copy", "cpu", False, "cuda", False)  # pageable host -> device
    be.stream(1 << 20)()
    assert log[-1][0] == "copy" and log[-1][1] == "cuda" and log[-1][3] == "cuda"
    be.ffn(4, 64, 128, cold_bytes=1)()
    assert [e for e in log[-3:] if e[0] == "matmul"] and all(e[1] == "cuda" for e in log[-3:])


def test_cpu_backend_refuses_host_copies() -> None:
    be = TorchBackend("cpu", threads=1)
    with pytest.raises(CalibrationError, match="--device cuda"):
        be.h2d(1024, pinned=True)


def test_known_gpu_peaks_by_name() -> None:
    from hwmodels.calibrate_run import known_gpu_peaks

    h100 = known_gpu_peaks("NVIDIA H100 80GB HBM3")
    assert h100 is not None and h100[:2] == (989e12, 3350e9)
    pcie = known_gpu_peaks("NVIDIA H100 PCIe")
    assert pcie is not None and pcie[:2] == (756e12, 2000e9)
    a100 = known_gpu_peaks("NVIDIA A100-SXM4-80GB")
    assert a100 is not None and a100[1] == 2039e9
    assert known_gpu_peaks("Tesla T4") is None


def test_process_clock_times_cpu_time_and_needs_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.process_time_ns", iter([0, 4000]).__next__)
    assert CpuTimer(clock="process").time(lambda: None, 2) == pytest.approx(2e-6)
    with pytest.raises(CalibrationError, match="clock"):
        CpuTimer(clock="tsc")
    import torch

    before = torch.get_num_threads()
    with pytest.raises(CalibrationError, match="--threads 1"):
        TorchBackend("cpu", threads=2, clock="process")
    assert torch.get_num_threads() == before
    be = TorchBackend("cpu", threads=1, clock="process")
    assert be.fingerprint()["clock"] == "process"
    assert isinstance(be.timer(), CpuTimer) and be.timer().clock == "process"  # type: ignore[attr-defined]
    be.close()
    assert torch.get_num_threads() == before


def test_run_calibration_restores_torch_threads() -> None:
    import torch

    before = torch.get_num_threads()
    plan = SweepPlan(
        name="t",
        expert_shapes=((16, 32),),
        heldout_shapes=(),
        tokens=(1, 2, 4, 8, 16, 32),
        heldout_every=9,
        ffn_shape=(16, 32),
        ffn_tokens=(),
        grouped_tokens=(),
        act_tokens=(),
        stream_bytes=(),
        copy_bytes=(),
        repeats=1,
        min_time_s=1e-5,
    )
    with pytest.raises(CalibrationError, match="no memory bandwidth"):
        run_calibration(RunConfig(device="cpu", plan=plan, threads=1))
    assert torch.get_num_threads() == before
    prof = run_calibration(RunConfig(device="cpu", plan=plan, threads=1, peak_memory_Bps=50e9))
    assert prof.peaks.memory_Bps == 50e9 and torch.get_num_threads() == before


def test_cpu_runs_default_to_one_thread_and_the_process_clock() -> None:
    assert resolve_cpu_timing("cpu", None, None) == (1, "process")
    assert resolve_cpu_timing("cpu", 2, None) == (2, "wall")  # several threads: wall clock only
    assert resolve_cpu_timing("cpu", None, "wall") == (1, "wall")  # the flags override
    assert resolve_cpu_timing("cpu", 1, "process") == (1, "process")
    assert resolve_cpu_timing("cuda", None, None) == (None, "wall")  # GPU: torch's threads, CUDA events
