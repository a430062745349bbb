"""``codesign view OUT_DIR``: write the interactive report of a search (`search.views.write_report`).

    codesign view codesign-out                         # OUT_DIR/report.html, best design by objective 1
    codesign view codesign-out --design 3f2a...        # detail another design (its content hash)
    codesign view runs/a --storage postgresql+psycopg2://u@host/db --study shared --out shared.html

The report is one HTML file with plotly.js inline (opens offline): Pareto front (hover: hash,
objectives, knobs; the whole design in the panel under it), parallel coordinates, parameter
importance, hypervolume history, a bottleneck line per Pareto design, and the chosen design's cost
breakdown and timeline (re-simulated with events; ``--no-timeline`` skips that simulation).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``view`` top-level command."""
    p = sub.add_parser(
        "view",
        parents=parents,
        help="write the interactive HTML report of a search (Pareto front, importance, timelines)",
        description="Write OUT_DIR/report.html (or --out): the views of the search study stored in OUT_DIR "
        "(its study.db) or at --storage.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the output folder of `codesign search`/`explore`")
    p.add_argument("--study", default=None, help="study name (needed when the storage holds several)")
    p.add_argument("--storage", default=None, help="Optuna storage URL instead of OUT_DIR's study.db")
    p.add_argument("--design", default=None, metavar="HASH", help="design to detail (default: best by objective 1)")
    p.add_argument("--out", type=Path, default=None, help="report file (default OUT_DIR/report.html)")
    p.add_argument("--no-timeline", action="store_true", help="do not re-simulate the chosen design for its timeline")
    p.set_defaults(func=_cmd_view)


def _cmd_view(args: argparse.Namespace) -> int:
    from search.views import design_timeline, write_report

    if args.storage is None and not args.out_dir.is_dir():
        raise ValueError(f"OUT_DIR {args.out_dir}: no such folder (expected the --out folder of `codesign search`)")
    if args.out is not None and args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a folder; expected the report's file name (e.g. report.html)")
    path = write_report(
        args.out_dir,
        study_name=args.study,
        storage=args.storage,
        design_hash=args.design,
        path=args.out,
        timeline=None if args.no_timeline else design_timeline,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; open it in a browser, works offline)")
    return 0
