"""``codesign search`` and ``codesign explore``: the co-design search from the command line.

    codesign explore                      # the default space, ~200 trials, writes codesign-out/
    codesign search --space SPACE.toml --trials 100 --seed 1 --jobs 2 --out runs/a
    codesign search --storage postgresql+psycopg2://u@host/db --study shared --jobs 4   # many machines

Both run `search.run_search` (Optuna; the study persists in ``OUT/study.db`` or ``--storage`` and
resumes by ``--study`` name), then write ``OUT/pareto.csv`` and ``OUT/pareto/<hash>.json`` (design
files that ``codesign simulate --design`` replays), the report ``OUT/report.html`` (the views),
and print the Pareto set as a table with the next commands to run. ``--verify-top K`` runs the
expert kernels of the K best designs on the local torch device (``search.verify``).

Cheap checks come first (space file valid, output folder writable, storage URL well formed,
torch present for ``--verify-top``), so bad input fails in a second, not after the search.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import textwrap
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPLORE_TRIALS = 200
#: Width (characters) the ``constant: ...`` line below the Pareto table wraps at.
TABLE_WIDTH = 160
#: Shorter headers of the printed Pareto table (``pareto.csv`` keeps the full column names).
SHORT_HEADS: dict[str, str] = {
    "bytes_per_weight": "B/weight",
    "expert_ffn": "ffn",
    "devices": "dev",
    "max_batch": "batch",
    "granularity_G": "G",
    "cost_per_mtok [$/Mtok]": "cost [$/Mtok]",  # the unit says it: per million tokens
}


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``search`` and ``explore`` top-level commands."""
    s = sub.add_parser(
        "search",
        parents=parents,
        help="co-design search (Optuna) over model x hardware mapping",
        description="Search a co-design space (TOML; defaults: the shipped space) with Optuna; write the study, "
        "the Pareto designs (CSV and design JSON) and the report into --out.",
    )
    _common(s, trials=50)
    s.add_argument("--space", default=None, help="search space TOML (merged over the default space)")
    s.add_argument("--jobs", type=int, default=1, help="worker processes on the study (default 1)")
    s.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL (default: sqlite:///OUT/study.db), e.g. postgresql+psycopg2://user@host/db",
    )
    s.add_argument("--study", default="codesign", help="study name; an existing study resumes (default codesign)")
    s.set_defaults(func=_cmd_search)
    e = sub.add_parser(
        "explore",
        parents=parents,
        help=f"explore the default co-design space ({EXPLORE_TRIALS} trials) and print the Pareto set",
        description="Run the default co-design space (embedded Mixtral-8x7B and DeepSeek-V2-Lite workloads on the "
        "H100-with-host-offload, 8x H100, SN40L-node and CPU-server presets) and write codesign-out/.",
    )
    _common(e, trials=EXPLORE_TRIALS)
    e.set_defaults(func=_cmd_explore, space=None, jobs=1, storage=None, study="explore")


def _common(p: argparse.ArgumentParser, *, trials: int) -> None:
    p.add_argument("--trials", type=int, default=trials, help=f"new trials to run (default {trials})")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--out", default="codesign-out", help="output folder (default codesign-out)")
    p.add_argument("--verify-top", type=int, default=0, metavar="K", help="run the K best designs' expert kernels")
    p.add_argument(
        "--verify-device", default="cpu", choices=("cpu", "cuda"), help="torch device for --verify-top (default cpu)"
    )
    p.add_argument(
        "--verify-profile",
        default=None,
        help="calibration profile JSON of the local device (codesign calibrate run); default: a quick sweep first",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")


class SearchInputError(ValueError):
    """Bad command-line input found by the cheap checks."""


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-check"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise SearchInputError(f"--out {out}: not a writable folder ({exc.strerror or exc})") from None


def _check_storage(url: str | None) -> None:
    if url is None:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url.startswith("journal:") or url.endswith(".log"):
        return
    try:
        make_url(url)
    except ArgumentError:
        raise SearchInputError(
            f"--storage {url!r}: not a storage URL (expected e.g. sqlite:///path/study.db, "
            "postgresql+psycopg2://user@host/db or journal:PATH.log)"
        ) from None


def _checks(args: argparse.Namespace) -> Any:
    """The cheap checks (module doc); returns the loaded space."""
    from search.space import load_space

    for flag, value, low in (("--trials", args.trials, 0), ("--seed", args.seed, 0), ("--jobs", args.jobs, 1)):
        if value < low:
            raise SearchInputError(f"{flag} must be >= {low}, got {value}")
    if args.verify_top < 0:
        raise SearchInputError(f"--verify-top must be >= 0, got {args.verify_top}")
    if args.verify_top and importlib.util.find_spec("torch") is None:
        raise SearchInputError("--verify-top runs torch kernels: pip install 'moe-codesign[torch]'")
    if args.verify_profile is not None and not Path(args.verify_profile).is_file():
        raise SearchInputError(f"--verify-profile {args.verify_profile}: no such file")
    space = load_space(args.space)
    _check_out(Path(args.out))
    _check_storage(args.storage)
    return space


def _cmd_explore(args: argparse.Namespace) -> int:
    return _cmd_search(args)


def _cmd_search(args: argparse.Namespace) -> int:
    from search.export import pareto_rows, write_pareto
    from search.study import SearchConfig, run_search

    space = _checks(args)
    out = Path(args.out)
    config = SearchConfig(
        space=space,
        out_dir=out,
        n_trials=args.trials,
        seed=args.seed,
        jobs=args.jobs,
        storage=args.storage,
        study_name=args.study,
        progress=not args.no_progress,
    )
    outcome = run_search(config)
    csv_path, files = write_pareto(outcome.pareto, space.objectives, out)
    c = outcome.counts
    rate = 60 * outcome.new_trials / max(outcome.wall_s, 1e-9)
    print(
        f"{outcome.new_trials} trials in {outcome.wall_s:.0f} s ({rate:.0f}/min); study {args.study!r}: "
        f"{c.get('complete', 0)} complete, {c.get('fail', 0)} failed, "
        f"{c.get('running', 0)} running; storage {outcome.storage}"
    )
    for line in outcome.failures[:5]:
        print(f"  failed: {line}")
    rows = pareto_rows(outcome.pareto, space.objectives)
    print(f"\n{_pareto_title(rows)}:")
    print(_table(rows, fixed=("design_hash", *(c for c in rows[0] if c.endswith("]")), "fidelity") if rows else ()))
    report = None
    if not args.no_report:
        report = _write_report(out, args)
    print(f"\nwrote {csv_path} and {len(files)} design files in {out / 'pareto'}")
    if report is not None:
        print(f"wrote {report}")
    if rows:
        print("\nnext:")
        print(f"  codesign simulate --design {files[0]}     # replay the first design in the simulator")
        print(f"  codesign view {out}                      # the interactive report")
    if args.verify_top:
        _verify(outcome.pareto[: args.verify_top], args)
    return 0


def _write_report(out: Path, args: argparse.Namespace) -> Path | None:
    try:
        from search.views import write_report
    except ImportError as exc:
        log.warning("report not written: search.views is not importable (%s)", exc)
        return None
    storage = args.storage
    path: Path = write_report(out, storage=storage, study_name=args.study)
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


def _pareto_title(rows: list[dict[str, Any]]) -> str:
    """The table's title, truthful about fidelity: how many rows the simulator evaluated and how
    many carry the analytic model's values only."""
    n_sim = sum(1 for r in rows if r.get("fidelity") == "sim")
    n_analytic = len(rows) - n_sim
    noun = "design" if len(rows) == 1 else "designs"
    if not rows:
        return "Pareto set (no feasible design)"
    if n_analytic == 0:
        return f"Pareto set ({len(rows)} feasible {noun}, all evaluated by the simulator)"
    if n_sim == 0:
        return f"Pareto set ({len(rows)} feasible {noun}, analytic model only: none confirmed by the simulator)"
    return (
        f"Pareto set ({len(rows)} feasible {noun}: {n_sim} evaluated by the simulator, {n_analytic} by the analytic "
        "model only; see the fidelity column)"
    )


def _table(rows: list[dict[str, Any]], fixed: tuple[str, ...] = ()) -> str:
    """A fixed-width text table of the Pareto rows: the ``fixed`` columns (objectives, hash,
    fidelity) and the knobs that differ among the rows; knobs constant across the rows go to one
    ``constant: name=value, ...`` line below (trial number and design file left out)."""
    if not rows:
        return "  (none: no feasible design was found; relax the SLOs or run more trials)"
    cols = [c for c in rows[0] if c not in ("design_file", "trial")]
    varying = [c for c in cols if c in fixed or len({_fmt(r.get(c)) for r in rows}) > 1]
    constant = [c for c in cols if c not in varying]
    if "granularity_G" in varying and "expert_ffn" in varying:  # G = the model's d_ff / expert_ffn: implied
        varying.remove("granularity_G")
    heads = [SHORT_HEADS.get(c, c) for c in varying]
    cells = [[_fmt(r.get(c)) for c in varying] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    if constant:
        text = "constant: " + ", ".join(f"{SHORT_HEADS.get(c, c)}={_fmt(rows[0].get(c))}" for c in constant)
        lines.append(textwrap.fill(text, width=TABLE_WIDTH, subsequent_indent=" " * 10, break_long_words=False))
    return "\n".join(lines)


def _verify(trials: list[Any], args: argparse.Namespace) -> None:
    from codesign.design import Design
    from search.verify import verify_designs

    profile = None
    if args.verify_profile is not None:
        from hwmodels.calibration import CalibrationProfile

        profile = CalibrationProfile.load(args.verify_profile)
    designs = [(str(t.user_attrs["design_hash"]), Design.from_dict(t.user_attrs["design"])) for t in trials]
    checks = verify_designs(designs, device=args.verify_device, profile=profile, progress=not args.no_progress)
    print(f"\nexpert kernels of the {len(designs)} best designs on the local device:")
    head = (
        f"{'design':16}  {'accelerator':12}  {'d x d_ff':>11}  {'tokens':>6}  {'design model ms':>15}  "
        f"{'local predicted ms':>18}  {'measured ms':>11}  {'error':>7}  profile / local device"
    )
    print(head)
    for c in checks:
        print(
            f"{c.design_hash:16}  {c.accelerator:12}  {f'{c.d_model}x{c.d_ff}':>11}  {c.tokens:>6}  "
            f"{1e3 * c.predicted_design_s:>15.3f}  {1e3 * c.predicted_local_s:>18.3f}  {1e3 * c.measured_s:>11.3f}  "
            f"{c.local_error_pct:>+6.0f}%  {c.profile} / {c.local_device} {c.local_dtype}"
        )
    if checks:
        print(f"design model source: {checks[0].predicted_design_source}")
