"""Shared fixtures: where the real data of ``../shared`` lies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workloads.importers import import_trace
from workloads.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    """``$MOE_CODESIGN_SHARED`` or ``../shared`` beside the checkout (CI always has it)."""
    return Path(os.environ.get("MOE_CODESIGN_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not (path / "traces").is_dir():
        raise RuntimeError(f"real data folder not found at {path}; set MOE_CODESIGN_SHARED")
    return path


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
