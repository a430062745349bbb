"""Shared fixtures: where the real data of ``../shared`` lies, and a recorded CPU calibration.

The tests need the real data folder (traces, calibration tables): ``../shared`` beside the checkout,
or ``$MOE_CODESIGN_SHARED``. Without it the session stops at collection with one line saying so and
where it looked (instead of an error in every test that reads it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwmodels.calibrate_run import RunConfig, SweepPlan, profile_from_samples
from hwmodels.calibration import CalibrationProfile
from workloads.importers import import_trace
from workloads.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[1]

#: A real tiny CPU calibration sweep (``SweepPlan.tiny()``, one thread, process CPU clock) recorded
#: on the 2-core dev machine (AMD EPYC, 1-min load average 15 from other work; fit quality "ok") by
#: ``python benchmarks/bench_calibrate.py --record PATH``.
RECORDED_CPU_TINY = REPO / "tests" / "hwmodels" / "data" / "cpu_tiny_recorded.json"


def shared_path() -> Path:
    """``$MOE_CODESIGN_SHARED`` or ``../shared`` beside the checkout (CI always has it)."""
    return Path(os.environ.get("MOE_CODESIGN_SHARED", REPO.parent / "shared"))


def missing_shared_message(path: Path) -> str | None:
    """The one-line reason the tests cannot run without ``path`` (None when it holds ``traces/``)."""
    if (path / "traces").is_dir():
        return None
    return (
        f"the tests need the real data folder ../shared (traces, calibration tables); looked at {path} "
        "and found no traces/ there: put it beside the checkout or set MOE_CODESIGN_SHARED=/path/to/shared"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Stop before collection, in one line (``ERROR: ...``, exit status 4), when the real data
    folder is missing."""
    message = missing_shared_message(shared_path().resolve())
    if message is not None:
        raise pytest.UsageError(message)


@pytest.fixture(scope="session", autouse=True)
def workload_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Derived default workloads are cached in a folder of this test session (``$MOE_CODESIGN_CACHE_DIR``,
    inherited by subprocesses), never in the user's cache."""
    path = tmp_path_factory.mktemp("moe-codesign-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_CODESIGN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    message = missing_shared_message(path)
    if message is not None:
        raise RuntimeError(message)
    return path


@pytest.fixture(scope="session")
def recorded_cpu_profile() -> CalibrationProfile:
    """The profile fitted, here and now, to the recorded samples of a real tiny CPU sweep.

    The timings are fixed data, so the fit (and every check on it) is the same on any machine under
    any load; real-kernel runs are in ``benchmarks/bench_calibrate.py``."""
    rec = CalibrationProfile.load(RECORDED_CPU_TINY)
    return profile_from_samples(
        rec.samples,
        config=RunConfig(device="cpu", plan=SweepPlan.tiny(), threads=1, name="cpu-tiny"),
        plan=SweepPlan.tiny(),
        fingerprint=rec.fingerprint,
        device_kind=rec.device_kind,
        dtype=rec.dtype,
        device_name=rec.device_name,
    )


@pytest.fixture(scope="session")
def mixtral(shared_dir: Path) -> RoutingTrace:
    """The real Mixtral-8x7B decode trace (default import: incomplete tokens kept, marked -1).

    Imported once per test session; tests must treat it as read-only."""
    trace = import_trace("mixtral-jsonl", shared_dir / "traces" / "mixtral-8x7b-instruct")
    assert isinstance(trace, RoutingTrace)
    return _read_only(trace)


@pytest.fixture(scope="session")
def deepseek(shared_dir: Path) -> RoutingTrace:
    """The real DeepSeek-V2-Lite prefill trace (200 prompts), imported once; read-only."""
    trace = import_trace("deepseek-csv", shared_dir / "traces" / "deepseek-v2-lite")
    assert isinstance(trace, RoutingTrace)
    return _read_only(trace)


def _read_only(trace: RoutingTrace) -> RoutingTrace:
    """Freeze the arrays of a session-wide trace, so that code mutating it in place fails loudly."""
    for arr in (trace.experts, trace.request, trace.position, trace.phase, trace.weights):
        if arr is not None:
            arr.flags.writeable = False
    return trace
