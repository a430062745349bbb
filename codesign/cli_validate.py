"""``codesign validate-e2e``: run the measured-system cases (`codesign.validation`) and report.

    codesign validate-e2e                               # every shipped case, full size (minutes)
    codesign validate-e2e --reduced                     # small request counts: structure only (seconds)
    codesign validate-e2e --case mlperf41-offline-h100 --case nccl-alltoall-4xh100
    codesign validate-e2e --json                        # one JSON object: results + summary
    codesign validate-e2e --out validation-out          # also validation-out/validate-e2e.html (+ .json)
    codesign validate-e2e --list                        # the case names, stacks, metrics and sources
    codesign validate-e2e --fit trt-llm                 # fit the stack's free parameters (see below)
    codesign validate-e2e --fit llama.cpp --param per_layer_s --on CASE_A --on CASE_B --write
    codesign validate-e2e --fit-power --on CASE_A --on CASE_B --write   # a profile's power-law exponent

Prints, per case, the measured value, the simulator's and the analytic model's answers, their
signed errors ``(model - measured) / measured`` and the simulator's dominant cost category.

``--fit STACK`` fits the stack preset's free parameters (`codesign.validation_fit.fit_stack`: least
squares on log(sim/measured), every evaluation re-simulating the fit cases at their ``fit`` size)
on the cases the preset names (its ``fitted_on``) or those given with ``--on`` (two or more per
parameter), then scores the fitted stack at full size on the fit cases and, separately, on the
held-out cases of that stack; ``--write`` stores the values with ``fitted_on`` in the preset file.

``--fit-power`` fits the exponent of the power law of the shipped profile that the ``--on`` cases
(two or more, each with ``cost.power_limit``) derive from (`codesign.validation_fit.fit_power_exponent`),
scores them at full size, and with ``--write`` stores it with ``fitted_on`` in that profile's JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
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
    p.add_argument("--fit", default=None, metavar="STACK", help="fit this stack preset's free parameters")
    p.add_argument(
        "--param", action="append", default=None, metavar="FIELD", help="with --fit: a field to fit (repeatable)"
    )
    p.add_argument("--on", action="append", default=None, metavar="CASE", help="with --fit: a fit case (repeatable)")
    p.add_argument(
        "--max-evals", type=int, default=40, help="with --fit or --fit-power: simulator evaluations of the fit set"
    )
    p.add_argument(
        "--fit-power",
        action="store_true",
        help="fit the power-law exponent of the profile the --on cases (with cost.power_limit) derive from",
    )
    p.add_argument("--write", action="store_true", help="with --fit: write the fitted values into the preset file")
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from codesign.validation import format_table, load_cases, run_suite, suite_summary, write_html

    if args.out is not None:
        _check_out(args.out)
    if args.case:
        args.case = list(dict.fromkeys(args.case))  # a case named twice runs once
    if args.on:
        args.on = list(dict.fromkeys(args.on))
    if args.cases_dir is not None and not args.cases_dir.is_dir():
        raise ValueError(f"--cases-dir {args.cases_dir}: no such folder")
    if args.fit_power:
        if args.fit is not None or args.param or args.case:
            raise ValueError("--fit-power takes --on CASE (two or more), not --fit, --param or --case")
        return _cmd_fit_power(args)
    if args.fit is not None:
        return _cmd_fit(args)
    if args.param or args.on or args.write:
        raise ValueError("--param, --on and --write go with --fit STACK (or --on and --write with --fit-power)")
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


def _check_out(out: Path) -> None:
    """Refuse ``--out`` before any case runs when it cannot become a folder: it, or the nearest of its
    parents that exists, is not a folder (one line naming it)."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "exists and is not a folder" if p == out else f"{p} is not a folder"
                raise ValueError(f"--out {out}: {what}")
            return


def _fit_params(stack: Any, given: list[str] | None) -> tuple[str, ...]:
    """The stack fields ``--param`` names (TOML names such as ``per_layer`` or internal ones such as
    ``per_layer_s``) as internal names; the preset's fittable fields without ``--param``."""
    from codesign.validation_fit import FIT_FIELDS, default_fit_params

    if not given:
        return default_fit_params(stack)
    toml = {key: fld for fld, (_, _, key) in FIT_FIELDS.items()}
    out = []
    for name in given:
        fld = name if name in FIT_FIELDS else toml.get(name)
        if fld is None:
            raise ValueError(f"--param {name}: not a fittable stack field; valid: {', '.join(sorted(toml))}")
        out.append(fld)
    return tuple(out)


def _progress(label: str, max_evals: int) -> Any:
    """A fit's progress callback: one line per evaluation of the whole fit set, on stderr."""

    def progress(rec: dict) -> None:
        vals = ", ".join(f"{k}={v:.4g}" for k, v in rec["values"].items())
        print(
            f"{label} eval {rec['eval']}/{max_evals}: {vals} -> rms log error "
            f"{rec['rms_log_error']:.4f} ({rec['wall_s']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    return progress


def _cmd_fit(args: argparse.Namespace) -> int:
    from codesign.validation import format_table, load_cases, suite_summary
    from codesign.validation_fit import (
        case_stack_name,
        default_fit_set,
        evaluate_cases,
        fit_stack,
        write_fitted,
    )
    from hwmodels.stacks import get_stack

    if args.case:
        raise ValueError("--case does not go with --fit (use --on for the fit cases)")
    stack = get_stack(args.fit)
    params = _fit_params(stack, args.param)
    every = load_cases(None, args.cases_dir)
    of_stack = [c for c in every if case_stack_name(c) == stack.name]
    names = tuple(args.on) if args.on else default_fit_set(stack, params)
    if not names:
        raise ValueError(
            f"--fit {stack.name}: the preset names no fit cases (fitted_on) for {list(params)}; give them with --on "
            f"(cases of this stack: {[c.name for c in of_stack]})"
        )
    fit_cases = load_cases(list(names), args.cases_dir)
    if not args.param and len(params) > 1 and len(fit_cases) < 2 * len(params):
        from codesign.validation_fit import FIT_FIELDS

        with_cases = [FIT_FIELDS[p.field][2] for p in stack.params if p.field in params and p.fitted_on]
        raise ValueError(
            f"--fit {stack.name}: {len(params)} free parameters need >= {2 * len(params)} fit cases, got "
            f"{len(fit_cases)}; pass --param FIELD (fields with fitted_on cases: {', '.join(with_cases) or 'none'})"
        )

    log.info("fitting %s %s on %s", stack.name, list(params), list(names))
    progress = _progress(f"fit {stack.name}", args.max_evals)
    result = fit_stack(stack, fit_cases, params, max_evals=args.max_evals, progress=progress)
    values: dict[str, Any] = dict(result.values)
    fitted = replace(stack, **values)
    held = [c for c in of_stack if c.name not in set(names)]
    on_fit = evaluate_cases(fitted, fit_cases, reduced=args.reduced)
    on_held = evaluate_cases(fitted, held, reduced=args.reduced)
    payload = {
        "fit": result.to_dict(),
        "fit_cases": [r.to_dict() for r in on_fit],
        "held_out": [r.to_dict() for r in on_held],
        "summary": {"fit_cases": suite_summary(on_fit), "held_out": suite_summary(on_held) if on_held else None},
    }
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        vals = ", ".join(f"{k} = {v:.4g}" for k, v in result.values.items())
        print(
            f"stack {stack.name}: {vals} (fit on {len(names)} cases, {result.n_evals} evaluations, "
            f"{result.wall_s:.0f} s, rms log error {result.rms_log_error:.3f}: {result.status})"
        )
        print("\nfit cases (full size):")
        print(format_table(on_fit))
        if on_held:
            print("\nheld-out cases (predicted, full size):")
            print(format_table(on_held))
        else:
            print("\nno held-out case of this stack")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"fit-{stack.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.write:
        from importlib import resources

        path = Path(args.fit) if args.fit.endswith(".toml") else None
        if path is None:
            path = Path(str(resources.files("hwmodels"))) / "presets" / "stacks" / f"{stack.name}.toml"
        if not path.is_file():
            raise ValueError(f"--write: no preset file for stack {stack.name!r} at {path}")
        how = (
            f"least squares on log(sim/measured), codesign validate-e2e --fit {stack.name}, "
            f"{result.n_evals} evaluations, rms log error {result.rms_log_error:.3f} on the fit cases"
        )
        write_fitted(path, result.values, names, how=how)
        log.info("wrote %s", path)
        if not args.json:
            print(f"wrote {path}")
    return 0


def _cmd_fit_power(args: argparse.Namespace) -> int:
    """``--fit-power``: the power-law exponent on the ``--on`` cases, scored at full size."""
    from codesign.validation import format_table, load_cases, run_case, suite_summary
    from codesign.validation_fit import fit_power_exponent, power_law_cases, write_power_law

    if not args.on:
        raise ValueError("--fit-power needs the fit cases: --on CASE (two or more, each with cost.power_limit)")
    cases = load_cases(list(args.on), args.cases_dir)
    result = fit_power_exponent(cases, max_evals=args.max_evals, progress=_progress("fit-power", args.max_evals))
    names = set(result.fitted_on)
    held = [c for c in power_law_cases(load_cases(None, args.cases_dir), result.profile) if c.name not in names]

    def score(group: list) -> list:  # full size (or reduced) with the fitted exponent
        out = []
        for c in group:
            spec = json.loads(json.dumps(c.spec))
            spec["cost"]["power_exponent"] = result.exponent  # reaches a derived profile's own limit too
            out.append(run_case(replace(c, spec=spec), reduced=args.reduced))
        return out

    scored, predicted = score(cases), score(held)
    payload = {
        "fit": result.to_dict(),
        "fit_cases": [r.to_dict() for r in scored],
        "held_out": [r.to_dict() for r in predicted],
        "summary": {"fit_cases": suite_summary(scored), "held_out": suite_summary(predicted) if predicted else None},
    }
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        print(
            f"profile {result.profile}: power-law exponent {result.exponent:.4f} (was {result.start:.4g}; fit on "
            f"{len(cases)} cases, {result.n_evals} evaluations, {result.wall_s:.0f} s, rms log error "
            f"{result.rms_log_error:.3f})"
        )
        print(format_table(scored))
        if predicted:
            print("\nother cases this exponent moves (predicted, full size):")
            print(format_table(predicted))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"fit-power-{result.profile}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.write:
        how = (
            f"bounded least squares on log(sim/measured), codesign validate-e2e --fit-power, {result.n_evals} "
            f"evaluations, rms log error {result.rms_log_error:.3f} on the fit cases"
        )
        path = write_power_law(result.profile, result.exponent, result.fitted_on, how=how)
        log.info("wrote %s", path)
        if not args.json:
            print(f"wrote {path}")
    return 0
