"""Build the embedded default workload (``default_routing.json``) from the real traces in ``../shared``.

Run from the repository root::

    python studies/default_workload/build.py                       # -> runs/default_workload/default_routing.json
    python studies/default_workload/build.py --write-package-data  # -> workloads/data/default_routing.json
    python studies/default_workload/build.py --reduced             # small, fast build (what the tests re-check)

It fits a `RoutingProcess` (temporal reuse at lags ``1..--max-lag``) to the Mixtral-8x7B-Instruct
trace and to the DeepSeek-V2-Lite prompts, composes the OLMoE-1B-7B process (measured popularity
from the aggregated counts, affinity and reuse of the DeepSeek process rank-matched, see
`workloads.defaults.process_from_counts`), measures the hold-out fidelity of the two trace fits (fit
on half of the requests, compare with the other half, beside uniform random) and the LRU hit rates
of the shipped (float16) process against the whole real trace, and writes the data file (affinity
in float16, zlib + base64) with its provenance.

By default the file goes to ``runs/default_workload/`` under the current directory (git-ignored):
the shipped package data changes every default run of an editable install, so it is written only
with ``--write-package-data``. The output is byte-reproducible: seeded, no timestamps, sources
named relative to the shared folder (``shared/traces/...``), sorted keys, and every reported float
(provenance, meta, fidelity) rounded to 6 significant digits. ``--reduced`` builds from the first
16 DeepSeek prompts with 3 calibration iterations on 1,024 tokens (a few seconds of CPU instead of
about a minute); it is for checks and never goes into the package data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from workloads import stats
from workloads.aggregated import AggregatedRoutingStats
from workloads.defaults import DATA_NAME, FORMAT_NAME, FORMAT_VERSION, process_from_counts
from workloads.fidelity import holdout_evaluation
from workloads.importers import import_trace
from workloads.process import RoutingProcess
from workloads.progress import stage
from workloads.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DATA = REPO / "workloads" / "data" / DATA_NAME
DEFAULT_OUT = Path("runs") / "default_workload" / DATA_NAME
#: Significant digits of every reported float (provenance, meta, fidelity), so that last-bit noise
#: of the arithmetic does not change the bytes.
SIGNIFICANT_DIGITS = 6
#: The reduced build: DeepSeek prompts used, calibration tokens and iterations (fits, OLMoE composition).
REDUCED_PROMPTS = 16
REDUCED_CALIBRATION_TOKENS = 1024
REDUCED_CALIBRATION_ITERATIONS = 3
#: Cache sizes (fraction of a layer's experts) of the shipped-process LRU check.
LRU_FRACTIONS = (0.25, 0.5)
log = logging.getLogger("build_default_workload")


def olmoe_process(
    counts: AggregatedRoutingStats, base: RoutingProcess, *, seed: int = 0, **calibration: int
) -> RoutingProcess:
    """OLMoE-1B-7B (16 MoE layers): measured popularity, ``base``'s affinity and reuse (all lags) by
    rank; ``calibration`` goes to `process_from_counts` (``calibration_tokens``, ``calibration_iterations``)."""
    return process_from_counts(counts, base, n_layers=16, seed=seed, model="olmoe-1b-7b", **calibration)


def _relative(x: Any, root: str) -> Any:
    """``x`` with every string that starts with ``root`` rewritten to start with ``shared``."""
    if isinstance(x, dict):
        return {k: _relative(v, root) for k, v in x.items()}
    if isinstance(x, list):
        return [_relative(v, root) for v in x]
    if isinstance(x, str) and x.startswith(root):
        return "shared" + x[len(root) :]
    return x


def _rounded(x: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """``x`` with every finite float rounded to ``digits`` significant digits (numpy scalars too)."""
    if isinstance(x, dict):
        return {k: _rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v, digits) for v in x]
    if isinstance(x, bool | int | np.integer):
        return x if isinstance(x, bool) else int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return float(f"{v:.{digits}g}") if math.isfinite(v) else v
    return x


def _lru_pair(trace: RoutingTrace) -> list[float]:
    """Mean over layers of the LRU hit rate at each of `LRU_FRACTIONS` (cold at each request start)."""
    rates = stats.lru_hit_rate(trace, LRU_FRACTIONS)
    return [float(np.nanmean(r)) for r in rates]


def shipped_lru(proc: RoutingProcess, trace: RoutingTrace, *, seed: int, factor: int = 2) -> dict[str, Any]:
    """LRU hit rates of ``proc`` (as shipped) sampled with ``factor`` x the real request lengths,
    against the whole real ``trace`` it was fitted to (in-sample: the hold-out figures are in
    ``fidelity``)."""
    lengths = np.tile(np.bincount(np.unique(trace.request, return_inverse=True)[1]), factor)
    synth = proc.sample(int(lengths.sum()), seed=seed + 11, request_lengths=lengths.tolist())
    real, proc_rates = _lru_pair(trace), _lru_pair(synth)
    out: dict[str, Any] = {"synth_tokens": synth.n_tokens, "real_tokens": trace.n_tokens}
    for f, r, s in zip(LRU_FRACTIONS, real, proc_rates, strict=True):
        tag = f"{round(100 * f)}"
        out[f"lru_hit_{tag}_real"] = r
        out[f"lru_hit_{tag}_process"] = s
        out[f"lru_hit_{tag}_error"] = abs(s - r)
    return out


def _fit(
    trace: RoutingTrace, name: str, *, seed: int, max_lag: int, reduced: bool
) -> tuple[RoutingProcess, dict[str, Any]]:
    fit_kwargs: dict[str, Any] = {"max_lag": max_lag}
    if reduced:
        fit_kwargs |= {
            "calibration_tokens": REDUCED_CALIBRATION_TOKENS,
            "calibration_iterations": REDUCED_CALIBRATION_ITERATIONS,
        }
    with stage(f"{name}: fitting the routing process to {trace.n_tokens} tokens"):
        proc = RoutingProcess.fit(trace, seed=seed, **fit_kwargs)
    with stage(f"{name}: hold-out fidelity (fit on half of the requests, compare with the rest)"):
        hold = holdout_evaluation(trace, 0.5, seed=seed, **fit_kwargs)
    return proc, hold


def build(
    shared: Path, *, seed: int = 0, max_lag: int = 4, reduced: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data file's content (``{"format", "version", "generated_by", "seed", "build",
    "provenance", "fidelity", "processes"}``, floats rounded) and the raw hold-out results by model."""
    shared = shared.resolve()  # the importers record the paths they are given; _relative maps this root
    traces = shared / "traces"
    for sub in ("mixtral-8x7b-instruct", "deepseek-v2-lite", "olmoe-mixtral-routing-stats/counts.json"):
        if not (traces / sub).exists():
            raise SystemExit(f"error: --shared {shared}: {traces / sub} is missing")
    mixtral = import_trace("mixtral-jsonl", [traces / "mixtral-8x7b-instruct"])
    if reduced:
        files = sorted((traces / "deepseek-v2-lite").glob("prompt_*_data.csv"))[:REDUCED_PROMPTS]
        deepseek = import_trace("deepseek-csv", files)
    else:
        deepseek = import_trace("deepseek-csv", [traces / "deepseek-v2-lite"])
    counts = import_trace("olmoe-counts", [traces / "olmoe-mixtral-routing-stats" / "counts.json"])
    assert isinstance(mixtral, RoutingTrace) and isinstance(deepseek, RoutingTrace)
    assert isinstance(counts, AggregatedRoutingStats)

    procs: dict[str, RoutingProcess] = {}
    fidelity: dict[str, Any] = {}
    real: dict[str, RoutingTrace] = {"mixtral-8x7b": mixtral, "deepseek-v2-lite": deepseek}
    for name, trace in real.items():
        procs[name], fidelity[name] = _fit(trace, name, seed=seed, max_lag=max_lag, reduced=reduced)
    with stage("olmoe-1b-7b: composing the process from the aggregated counts and the DeepSeek-V2-Lite process"):
        cal = (
            {"calibration_tokens": REDUCED_CALIBRATION_TOKENS, "calibration_iterations": REDUCED_CALIBRATION_ITERATIONS}
            if reduced
            else {}
        )
        procs["olmoe-1b-7b"] = olmoe_process(counts, procs["deepseek-v2-lite"], seed=seed, **cal)
    # provenance names the files relative to the shared data folder, not this machine's paths
    root = str(shared.resolve())
    procs = {name: dataclasses.replace(p, meta=_relative(p.meta, root)) for name, p in procs.items()}
    dicts = {name: p.to_dict(precision="float16") for name, p in procs.items()}
    for d in dicts.values():
        d["meta"] = _rounded(d["meta"])

    shipped: dict[str, Any] = {}
    for name, trace in real.items():
        with stage(f"{name}: LRU hit rates of the shipped process vs the real trace"):
            as_shipped = RoutingProcess.from_dict(json.loads(json.dumps(dicts[name])), where=name)
            shipped[name] = shipped_lru(as_shipped, trace, seed=seed)

    data = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "generated_by": "studies/default_workload/build.py",
        "seed": seed,
        "build": {
            "max_lag": max_lag,
            "reduced": reduced,
            "deepseek_prompts": deepseek.n_requests,
            "calibration": (
                {"tokens": REDUCED_CALIBRATION_TOKENS, "iterations": REDUCED_CALIBRATION_ITERATIONS}
                if reduced
                else "defaults of RoutingProcess.fit and process_from_counts"
            ),
        },
        "provenance": {
            name: {k: d["meta"].get(k) for k in ("source", "licence", "fitted_from", "composed_from", "calibration")}
            for name, d in dicts.items()
        },
        "fidelity": _rounded(
            {
                name: {
                    "train_fraction": f["train_fraction"],
                    "heldout_tokens": f["heldout_tokens"],
                    "fitted": f["fitted"],
                    "uniform": f["uniform"],
                    "popularity_only": f["popularity_only"],
                    "train_vs_heldout": f.get("train_vs_heldout"),
                    "shipped_lru": shipped[name],
                }
                for name, f in fidelity.items()
            }
        ),
        "processes": dicts,
    }
    return data, fidelity


def render(data: dict[str, Any]) -> str:
    """The file's bytes (as text): compact JSON, sorted keys, a trailing newline."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studies/default_workload/build.py", description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared data folder")
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--out", type=Path, default=None, help=f"output file (default {DEFAULT_OUT}, under the current directory)"
    )
    where.add_argument(
        "--write-package-data",
        action="store_true",
        help=f"overwrite the shipped {PACKAGE_DATA.relative_to(REPO)} (every default run then uses it)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    ap.add_argument("--max-lag", type=int, default=4, help="temporal reuse modelled at lags 1..N (default 4)")
    ap.add_argument("--reduced", action="store_true", help="a small, fast build (what the tests re-check)")
    ap.add_argument("-q", "--quiet", action="store_true", help="warnings only (no progress lines, no table)")
    args = ap.parse_args(argv)
    if args.seed < 0:
        ap.error(f"--seed must be a non-negative integer, got {args.seed}")
    if args.max_lag < 1:
        ap.error(f"--max-lag must be an integer >= 1, got {args.max_lag}")
    if args.write_package_data and args.reduced:
        ap.error("--reduced builds are for checks; they never go into the package data")
    out: Path = PACKAGE_DATA if args.write_package_data else (args.out or DEFAULT_OUT)
    try:  # cheap check before minutes of work: the output's folder takes a file
        if out.is_dir():
            raise IsADirectoryError("it is a folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.parent / f".{out.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        ap.error(f"--out {out}: not writable ({exc.strerror or exc})")
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    data, fidelity = build(args.shared, seed=args.seed, max_lag=args.max_lag, reduced=args.reduced)
    text = render(data)
    out.write_text(text, encoding="utf-8")
    if args.quiet:
        return 0
    lines = [f"wrote {out} ({len(text.encode()) / 1024:.0f} KiB)"]
    for name, f in fidelity.items():
        lines.append(
            f"\n{name}: hold-out fidelity (fit on {f['train_requests']} requests, compare with "
            f"{f['heldout_requests']} held-out requests = {f['heldout_tokens']} tokens); lower is closer"
        )
        lines.append(f"  {'metric':18s} {'fitted':>8s} {'uniform':>8s} {'pop-only':>8s}")
        for m in ("load_js", "affinity_js", "reuse_error", "coactivation_js", "reuse_distance_js"):
            vals = [f[s][m] for s in ("fitted", "uniform", "popularity_only")]
            lines.append(f"  {m:18s} " + " ".join(f"{v:8.4f}" if v is not None else "     n/a" for v in vals))
        fit = f["fitted"]
        ship = data["fidelity"][name]["shipped_lru"]
        for tag in ("25", "50"):
            lines.append(
                f"  LRU {tag}%: held-out real {fit[f'lru_hit_{tag}_b']:.3f}, process fitted on the other half "
                f"{fit[f'lru_hit_{tag}_a']:.3f}; shipped process {ship[f'lru_hit_{tag}_process']:.3f} vs the "
                f"whole real trace {ship[f'lru_hit_{tag}_real']:.3f}"
            )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
