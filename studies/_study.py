"""What every study's ``run.py`` shares: its command line, where it writes, and how.

- ``--out DIR``: where ``summary.json`` goes; by default ``runs/<study>/`` under the current
  directory (git-ignored), never the committed ``results/`` (refresh those on purpose with
  ``--out studies/<study>/results``).
- ``--reduced``: a small, fast version of the study (a few requests, short outputs) whose summary
  is committed as ``results/reduced/summary.json``; ``tests/studies`` re-runs it and compares.
- Progress: one log line per configuration (``logging`` at INFO; ``-q`` for warnings only).
- ``summary.json`` is written with sorted keys and a trailing newline, so the same run gives the
  same bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["finish", "study_parser"]


def study_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the shared flags (``--out``, ``--reduced``, ``--seed``, ``-q``)."""
    ap = argparse.ArgumentParser(prog=f"studies/{name}/run.py", description=(doc or "").split("\n")[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("runs") / name,
        help=f"output folder (default runs/{name}; the committed figures are in studies/{name}/results)",
    )
    ap.add_argument("--reduced", action="store_true", help="a small, fast run (what the tests re-check)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only (no progress lines)")
    return ap


def start(args: argparse.Namespace) -> None:
    """Cheap checks before the work: the output folder is writable; logging set up."""
    if args.seed < 0:
        raise SystemExit(f"error: --seed must be a non-negative integer, got {args.seed}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"error: --out {args.out}: not a writable folder ({exc.strerror or exc})") from None
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")


def finish(args: argparse.Namespace, summary: dict[str, Any], table: str) -> int:
    """Write ``summary.json`` (sorted keys) into ``--out`` and print the table; returns 0."""
    path = args.out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
    sys.stdout.write(table + "\n")
    logging.getLogger("studies").info("wrote %s", path)
    return 0
