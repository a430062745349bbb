"""The CLI frame: sub-commands registered, clean errors without traceback, --debug re-raises."""

from __future__ import annotations

import subprocess
import sys

import pytest

from codesign.cli import build_parser, main


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: codesign" in capsys.readouterr().err


def test_subcommands_registered() -> None:
    text = build_parser().format_help()
    for command in ("trace", "presets", "calibrate", "simulate"):
        assert command in text


def test_error_is_one_line_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "codesign.cli", "trace", "stats", "/nonexistent/trace.npz"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "error:" in proc.stderr
    assert "/nonexistent/trace.npz" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "codesign.cli", "--debug", "trace", "stats", "/nonexistent/trace.npz"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
