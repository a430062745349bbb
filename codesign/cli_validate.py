"""``codesign validate-e2e``: run the measured-system cases (`codesign.validation`) and report.

    codesign validate-e2e                               # every shipped case, full size (minutes)
    codesign validate-e2e --reduced                     # small request counts: structure only (seconds)
    codesign validate-e2e --case mlperf41-offline-h100 --case nccl-alltoall-4xh100
    codesign validate-e2e --json                        # one JSON object: results + summary
    codesign validate-e2e --out validation-out          # also validation-out/validate-e2e.html (+ .json)
    codesign validate-e2e --list                        # the case names, stacks, metrics and sources

Prints, per case, the measured value, the simulator's and the analytic model's answers, their
signed errors ``(model - measured) / measured`` and the simulator's dominant cost category.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``validate-e2e`` top-level command."""
    p = sub.add_parser(
        "validate-e2e",
        parents=parents,
        help="run the end-to-end validation cases against measured systems (simulated vs measured)",
        description="Run the measured-system cases shipped in codesign/validation_cases (or --cases-dir) "
        "through the simulator and the analytic model; print simulated vs measured, signed error and "
        "the dominant cost.",
    )
    p.add_argument("--case", action="append", default=None, metavar="NAME", help="run only this case (repeatable)")
    p.add_argument("--cases-dir", type=Path, default=None, help="folder of case JSON files (default: the shipped)")
    p.add_argument("--reduced", action="store_true", help="small request counts (structure check; not comparable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write DIR/validate-e2e.html and .json")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from codesign.validation import format_table, load_cases, run_suite, suite_summary, write_html

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    if args.cases_dir is not None and not args.cases_dir.is_dir():
        raise ValueError(f"--cases-dir {args.cases_dir}: no such folder")
    cases = load_cases(args.case, args.cases_dir)
    if args.list:
        for c in cases:
            print(f"{c.name}\t{c.stack}\t{c.metric}\t{c.source}")
        return 0
    results = run_suite(cases, reduced=args.reduced)
    payload = {"results": [r.to_dict() for r in results], "summary": suite_summary(results)}
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        html = write_html(results, args.out / "validate-e2e.html")
        (args.out / "validate-e2e.json").write_text(json.dumps(payload, indent=2) + "\n")
        log.info("wrote %s", html)
        if not args.json:
            print(f"wrote {html} and {args.out / 'validate-e2e.json'}")
    return 0
