"""Benchmark: real CPU calibration runs, timed on this machine (run on demand, never in the tests).

The tests check the calibration *fit logic* on recorded samples (``tests/hwmodels/data``) and on
synthetic ones, so that no test depends on how busy its machine is. Whether a *real* run on this
machine gives a sane fit is a property of the machine and its load; this script measures it:

    python benchmarks/bench_calibrate.py [--runs 5] [--sweep tiny|quick] [--layer-trace DIR]
    python benchmarks/bench_calibrate.py --record tests/hwmodels/data/cpu_tiny_recorded.json

For each of ``--runs`` real sweeps it prints the fit quality status (ok / suspect / absurd), the
held-out GEMM median and max absolute percentage error, the sweep's wall time, the 1-minute load
average before and after, and the ratio of the slowest to the fastest ``up`` GEMM time of the
first shape (more tokens must take longer: the measurements are real). With ``--layer-trace``
(a Mixtral JSONL folder, e.g. ``../shared/traces/mixtral-8x7b-instruct``), also the error of a
whole real MoE layer (d_model 256, d_ff 896, 48 tokens) timed against the profile's prediction.
``--record PATH`` runs one tiny sweep and writes its profile with every sample (the recorded
fixture of the tests); record it on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hwmodels.calibrate_run import RunConfig, SweepPlan, run_calibration
from hwmodels.calibration import CalibrationProfile
from hwmodels.validate import read_trace_routing, validate_heldout, validate_moe_layer


def _growth(profile: CalibrationProfile) -> float:
    """Slowest over fastest ``up`` GEMM time of the first expert shape (> 1 when time grows with tokens)."""
    first_k = min(s.shape["k"] for s in profile.samples if s.kind == "gemm" and s.op == "up")
    ups = sorted(
        (s.shape["m"], s.time_s)
        for s in profile.samples
        if s.kind == "gemm" and s.op == "up" and s.shape["k"] == first_k
    )
    return ups[-1][1] / ups[0][1]


def _one_run(sweep: str, layer_trace: Path | None) -> CalibrationProfile:
    plan = {"tiny": SweepPlan.tiny, "quick": SweepPlan.quick}[sweep]()
    prof = run_calibration(RunConfig(device="cpu", plan=plan, name=f"bench-{sweep}"))
    rep = validate_heldout(prof)
    gemm = rep.per_op.get("gemm:up")
    med, worst = (gemm.median_abs_pct_error, gemm.max_abs_pct_error) if gemm else (float("nan"), float("nan"))
    fp = prof.fingerprint
    line = (
        f"{sweep}: quality {prof.quality.get('status')}, held-out gemm:up median {med:.1f}% max {worst:.1f}%, "
        f"all held-out MAPE {rep.mape:.1f}%, sweep {fp.get('sweep_seconds')} s, load {fp.get('loadavg_start')} -> "
        f"{fp.get('loadavg_end')}, up-GEMM growth x{_growth(prof):.1f}"
    )
    if layer_trace is not None:
        routings = read_trace_routing(layer_trace, layers=[3, 20], max_tokens=48)
        stats, _ = validate_moe_layer(prof, routings, d_model=256, d_ff=896, repeats=3, threads=1)
        line += f", whole layer MAPE {stats.mape:.1f}% max {stats.max_abs_pct_error:.1f}%"
    print(line, flush=True)
    return prof


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="real sweeps to run (default 5)")
    ap.add_argument("--sweep", choices=("tiny", "quick"), default="tiny")
    ap.add_argument("--layer-trace", type=Path, default=None, help="Mixtral JSONL folder for the whole-layer check")
    ap.add_argument("--record", type=Path, default=None, help="write one tiny run's profile (with samples) here")
    args = ap.parse_args(argv)
    if args.record is not None:
        prof = run_calibration(RunConfig(device="cpu", plan=SweepPlan.tiny(), name="cpu-tiny-recorded"))
        out = prof.save(args.record)
        print(f"recorded {out}: {len(prof.samples)} samples, quality {prof.quality.get('status')}")
        return 0
    print(f"{os.cpu_count()} logical CPUs, python {sys.version.split()[0]}")
    statuses = [_one_run(args.sweep, args.layer_trace).quality.get("status") for _ in range(args.runs)]
    print(f"{args.runs} runs: " + ", ".join(f"{s} {statuses.count(s)}" for s in ("ok", "suspect", "absurd")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
