"""Shared fixtures: where the real data of ``../shared`` lies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
