"""Regenerate the embedded default workload ``workloads/data/default_routing.json`` from ``../shared``.

Run from the repository root::

    python studies/default_workload/build.py [--shared ../shared] [--out workloads/data/default_routing.json]

It fits a `RoutingProcess` to the Mixtral-8x7B-Instruct trace and to the DeepSeek-V2-Lite prompts
(helper A's importers), composes the OLMoE-1B-7B process (measured popularity from the aggregated
counts, affinity and reuse of the DeepSeek process rank-matched, see `workloads.defaults`), measures
the hold-out fidelity of the two trace fits (fit on half of the requests, compare with the other
half, beside uniform random), writes the data file (affinity in float16, zlib + base64) with its
provenance, and prints a summary. Seeded: the same inputs give the same file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from workloads.aggregated import AggregatedRoutingStats
from workloads.defaults import DATA_NAME, FORMAT_NAME, FORMAT_VERSION, process_from_counts
from workloads.fidelity import holdout_evaluation
from workloads.importers import import_trace
from workloads.process import RoutingProcess
from workloads.trace import RoutingTrace

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("build_default_workload")


def olmoe_process(counts: AggregatedRoutingStats, base: RoutingProcess, *, seed: int = 0) -> RoutingProcess:
    """OLMoE-1B-7B (16 MoE layers): measured popularity, ``base``'s affinity and reuse by rank."""
    return process_from_counts(counts, base, n_layers=16, seed=seed, model="olmoe-1b-7b")


def _relative(x: Any, root: str) -> Any:
    """``x`` with every string that starts with ``root`` rewritten to start with ``shared``."""
    if isinstance(x, dict):
        return {k: _relative(v, root) for k, v in x.items()}
    if isinstance(x, list):
        return [_relative(v, root) for v in x]
    if isinstance(x, str) and x.startswith(root):
        return "shared" + x[len(root) :]
    return x


def _fit(trace: RoutingTrace, name: str, seed: int) -> tuple[RoutingProcess, dict[str, Any]]:
    t0 = time.process_time()
    proc = RoutingProcess.fit(trace, seed=seed)
    fit_s = time.process_time() - t0
    t0 = time.process_time()
    hold = holdout_evaluation(trace, 0.5, seed=seed)
    log.info("%s: fit %.1f s, hold-out %.1f s (CPU)", name, fit_s, time.process_time() - t0)
    return proc, hold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--out", type=Path, default=REPO / "workloads" / "data" / DATA_NAME)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    traces = args.shared / "traces"
    mixtral = import_trace("mixtral-jsonl", [traces / "mixtral-8x7b-instruct"])
    deepseek = import_trace("deepseek-csv", [traces / "deepseek-v2-lite"])
    counts = import_trace("olmoe-counts", [traces / "olmoe-mixtral-routing-stats" / "counts.json"])
    assert isinstance(mixtral, RoutingTrace) and isinstance(deepseek, RoutingTrace)
    assert isinstance(counts, AggregatedRoutingStats)

    procs: dict[str, RoutingProcess] = {}
    fidelity: dict[str, Any] = {}
    procs["mixtral-8x7b"], fidelity["mixtral-8x7b"] = _fit(mixtral, "mixtral-8x7b", args.seed)
    procs["deepseek-v2-lite"], fidelity["deepseek-v2-lite"] = _fit(deepseek, "deepseek-v2-lite", args.seed)
    procs["olmoe-1b-7b"] = olmoe_process(counts, procs["deepseek-v2-lite"], seed=args.seed)
    # provenance names the files relative to the shared data folder, not this machine's paths
    root = str(args.shared.resolve())
    procs = {name: dataclasses.replace(p, meta=_relative(p.meta, root)) for name, p in procs.items()}

    data = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "generated_by": "studies/default_workload/build.py",
        "seed": args.seed,
        "provenance": {
            name: {k: p.meta.get(k) for k in ("source", "licence", "fitted_from", "composed_from", "calibration")}
            for name, p in procs.items()
        },
        "fidelity": {
            name: {
                "train_fraction": f["train_fraction"],
                "heldout_tokens": f["heldout_tokens"],
                "fitted": f["fitted"],
                "uniform": f["uniform"],
                "popularity_only": f["popularity_only"],
            }
            for name, f in fidelity.items()
        },
        "processes": {name: p.to_dict(precision="float16") for name, p in procs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    for name, f in fidelity.items():
        print(
            f"\n{name}: hold-out fidelity (fit on {f['train_requests']} requests, compare with "
            f"{f['heldout_requests']} held-out requests = {f['heldout_tokens']} tokens); lower is closer"
        )
        print(f"  {'metric':18s} {'fitted':>8s} {'uniform':>8s} {'pop-only':>8s}")
        for m in ("load_js", "affinity_js", "reuse_error", "coactivation_js", "reuse_distance_js"):
            vals = [f[s][m] for s in ("fitted", "uniform", "popularity_only")]
            print(f"  {m:18s} " + " ".join(f"{v:8.4f}" if v is not None else "     n/a" for v in vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
