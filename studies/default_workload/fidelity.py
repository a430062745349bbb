"""Hold-out fidelity of the fitted routing process on the real traces, over several request splits.

Run from the repository root::

    python studies/default_workload/fidelity.py [--shared ../shared] [--seeds 5] [--json OUT.json]

For each seed, the DeepSeek-V2-Lite prompts (and the Mixtral-8x7B-Instruct trace) are split in half
by requests, a `RoutingProcess` is fitted on one half, 4x the held-out token count is sampled with
the held-out request lengths, and the statistics are compared with the held-out half, beside
uniform-random and popularity-only baselines (`workloads.fidelity.holdout_evaluation`). Prints the
mean and range of each distance and the fitted/uniform ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from workloads.fidelity import METRICS, holdout_evaluation
from workloads.importers import import_trace
from workloads.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[2]


def evaluate(trace: RoutingTrace, seeds: list[int]) -> dict[str, Any]:
    runs = [holdout_evaluation(trace, 0.5, seed=s) for s in seeds]
    out: dict[str, Any] = {
        "seeds": seeds,
        "heldout_tokens": [r["heldout_tokens"] for r in runs],
        "popularity_shrinkage": [r["popularity_shrinkage"] for r in runs],
    }
    for m in METRICS:
        row: dict[str, Any] = {}
        for side in ("fitted", "uniform", "popularity_only"):
            v = np.array([r[side][m] for r in runs], dtype=float)
            row[side] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        ratio = np.array([r["fitted"][m] / r["uniform"][m] for r in runs], dtype=float)
        row["fitted_over_uniform"] = {"mean": float(ratio.mean()), "max": float(ratio.max())}
        row["fitted_closer_in"] = int(sum(r["fitted"][m] < r["uniform"][m] for r in runs))
        out[m] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    traces = args.shared / "traces"
    data = {
        "deepseek-v2-lite": import_trace("deepseek-csv", [traces / "deepseek-v2-lite"]),
        "mixtral-8x7b": import_trace("mixtral-jsonl", [traces / "mixtral-8x7b-instruct"]),
    }
    result: dict[str, Any] = {}
    for name, trace in data.items():
        assert isinstance(trace, RoutingTrace)
        t0 = time.process_time()
        res = evaluate(trace, list(range(args.seeds)))
        result[name] = res
        print(
            f"\n{name}: {args.seeds} splits by request (half/half), {np.mean(res['heldout_tokens']):.0f} held-out "
            f"tokens on average, {time.process_time() - t0:.0f} s CPU; mean [min, max], lower is closer"
        )
        print(f"  {'metric':18s} {'fitted':>24s} {'uniform':>24s} {'fitted/uniform':>15s} {'closer':>7s}")
        for m in METRICS:
            r = res[m]
            f, u = r["fitted"], r["uniform"]
            print(
                f"  {m:18s} {f['mean']:.4f} [{f['min']:.4f}, {f['max']:.4f}] "
                f"{u['mean']:.4f} [{u['min']:.4f}, {u['max']:.4f}] {r['fitted_over_uniform']['mean']:15.2f} "
                f"{r['fitted_closer_in']:>3d}/{args.seeds}"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
