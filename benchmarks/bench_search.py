"""Benchmark: search throughput, and hypervolume recovered vs exhaustive enumeration and vs random.

    python benchmarks/bench_search.py [--trials 100] [--budgets 0.05,0.1,0.2] [--seeds 5] [--out DIR]

1. Trials per minute with analytic screening: ``--trials`` trials of the default space (all its
   knobs) at ``fidelity = "analytic"`` (designs the closed form cannot model go to the simulator,
   as in a search), in one process on the SQLite storage, after a warm-up pass that fills the
   routing-process cache (retargeting is paid once per model shape and then cached on disk: its
   cost is reported apart). Wall-clock and process CPU seconds are both printed: on a loaded machine
   the CPU rate is the one to compare.
2. Recovery: `ENUM_SPACE` (432 designs, every one analytically modelled) is enumerated and every
   design evaluated (analytic fidelity); the feasible Pareto front's hypervolume is the reference.
   Then NSGA-II, TPE and random sampling run with budgets of ``--budgets`` x 432 evaluations
   (``--seeds`` seeds each, in-memory studies), and the share of the exhaustive hypervolume their
   feasible fronts reach is printed per budget (mean and min over seeds). Hypervolume: objectives
   normalised to [0, 1] between the exhaustive front's ideal and nadir points, reference point 1.1
   in each (points beyond it count nothing).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume

from codesign.design import routing_process
from search.space import load_space
from search.study import SearchConfig, TrialEvaluator, candidate_design, dominates, make_sampler, run_search

ENUM_SPACE = """
[study]
fidelity = "analytic"
population_size = 12
[workload]
base_model = ["mixtral-8x7b", "deepseek-v2-lite"]
[model]
experts_scale = 1
granularity = [1, 2]
shared_experts = 0
weight_precision = ["bf16", "fp8"]
[platform]
preset = ["h100-pcie5-host", "dgx-h100"]
[platform.dgx-h100]
devices = [2, 8]
[mapping]
fast_tier_share = [0.25, 0.5, 1.0]
cache_policy = ["lru", "lfu"]
prefetch = "none"
miss = ["fetch", "cpu"]
placement = "round-robin"
ep_execution = "classic"
max_batch = [4, 8]
max_tokens = 8192
"""


def throughput(n_trials: int, out: Path) -> None:
    space = load_space("analytic.toml", text='[study]\nfidelity = "analytic"\n')
    evaluator = TrialEvaluator(space, out)
    t0, c0 = time.perf_counter(), time.process_time()
    warmed: set[tuple[str, int, int]] = set()
    for cand in space.enumerate():  # one design per routing shape derives (and files) its process
        if cand.routing_shape not in warmed:
            warmed.add(cand.routing_shape)
            routing_process(candidate_design(cand), evaluator.cache)
        if len(warmed) == len(space.routing_shapes()):
            break
    print(
        f"routing cache warm-up: {len(space.routing_shapes())} shapes in {time.perf_counter() - t0:.1f} s wall, "
        f"{time.process_time() - c0:.1f} s CPU (once; later runs read {out / 'cache'})"
    )
    w0, c0 = time.perf_counter(), time.process_time()
    outcome = run_search(
        SearchConfig(space=space, out_dir=out, n_trials=n_trials, seed=0, study_name="throughput", progress=False)
    )
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    fid: dict[str, int] = {}
    for t in outcome.study.trials:
        f = str(t.user_attrs.get("fidelity"))
        fid[f] = fid.get(f, 0) + 1
    print(
        f"throughput: {n_trials} trials in {wall:.1f} s wall ({60 * n_trials / wall:.0f}/min), "
        f"{cpu:.1f} s CPU ({60 * n_trials / cpu:.0f}/min of CPU); values by fidelity {fid}"
    )


def _front(points: np.ndarray) -> np.ndarray:
    keep = [i for i, p in enumerate(points) if not any(dominates(q, p, ["minimize"] * len(p)) for q in points)]
    return points[keep]


def recovery(budgets: list[float], seeds: int, out: Path) -> None:
    space = load_space("enum.toml", text=ENUM_SPACE)
    evaluator = TrialEvaluator(space, out)
    directions = evaluator.directions
    assert all(d == "minimize" for d in directions)
    cands = list(space.enumerate())
    n = len(cands)
    t0 = time.perf_counter()
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    for cand in cands:  # exhaustive: every design once, through the same evaluator as the search
        study.enqueue_trial(dict(cand.params))
    study.optimize(evaluator, n_trials=n)
    feasible = [t for t in study.trials if all(c <= 0 for c in t.user_attrs["constraints"].values())]
    pts = np.array([t.values for t in feasible])
    print(f"exhaustive: {n} designs, {len(feasible)} feasible, evaluated in {time.perf_counter() - t0:.1f} s")
    front = _front(pts)
    # normalise by the exhaustive front's box (ideal to nadir): a reference point beyond the whole
    # feasible set would make most of the volume trivially dominated (random search then recovers
    # 98 % with 5 % of the evaluations and the figure says nothing)
    lo, hi = front.min(axis=0), front.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    ref = np.full(pts.shape[1], 1.1)

    def hv(values: list[list[float]]) -> float:
        if not values:
            return 0.0
        p = (np.array(values) - lo) / span
        p = p[np.all(p < ref, axis=1)]
        return float(compute_hypervolume(_front(p), ref)) if len(p) else 0.0

    full = hv(pts.tolist())
    print(f"exhaustive front: {len(front)} designs, hypervolume {full:.4f} (front box normalised, reference 1.1)")
    for sampler_name in ("nsga2", "tpe", "random"):
        sp = load_space("enum.toml", text=ENUM_SPACE.replace("[study]", f'[study]\nsampler = "{sampler_name}"'))
        for frac in budgets:
            budget = max(2, round(frac * n))
            ratios = []
            for seed in range(seeds):
                s = optuna.create_study(directions=directions, sampler=make_sampler(sp, seed))
                s.optimize(evaluator, n_trials=budget)
                vals = [t.values for t in s.trials if all(c <= 0 for c in t.user_attrs["constraints"].values())]
                ratios.append(hv(vals) / full)
            print(
                f"{sampler_name:7s} {budget:4d} evaluations ({100 * budget / n:4.1f} %): hypervolume "
                f"{100 * np.mean(ratios):5.1f} % of exhaustive (min {100 * min(ratios):5.1f} %, {seeds} seeds)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--budgets", default="0.05,0.1,0.2")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-search-"))
    print(f"output folder {out}")
    if not args.skip_throughput:
        throughput(args.trials, out / "throughput")
    recovery([float(b) for b in args.budgets.split(",")], args.seeds, out / "recovery")


if __name__ == "__main__":
    main()
