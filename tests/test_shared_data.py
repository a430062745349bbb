"""Without the real data folder the test session stops at once, in one line saying where it looked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, missing_shared_message, shared_path


def test_the_real_data_folder_is_found() -> None:
    assert missing_shared_message(shared_path()) is None


def test_session_without_shared_stops_in_one_line(tmp_path: Path) -> None:
    nowhere = tmp_path / "no-shared"
    env = {**os.environ, "MOE_CODESIGN_SHARED": str(nowhere)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/workloads/test_trace.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 4  # pytest's usage error: nothing was collected or run
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "need the real data folder ../shared" in lines[0] and str(nowhere) in lines[0]
    assert "MOE_CODESIGN_SHARED" in lines[0]
