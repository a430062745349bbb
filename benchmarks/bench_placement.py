"""Benchmark: ExFlow placement of DeepSeek-V3 on 8 GPUs placed once and reused, and routing drawn in
one batch versus one request at a time.

Run (figures in the report were taken this way)::

    python benchmarks/bench_placement.py [--stats V3_STATS.npz] [--tokens 4096] [--requests 400]
                                         [--json OUT.json]

Steps, each with wall-clock and process CPU seconds:

1. Routing statistics of DeepSeek-V3 (58 MoE layers x 256 experts, top-8): ``--tokens`` tokens
   in 32 requests sampled from the embedded process derived for ``deepseek-v3``
   (`workloads.defaults.default_process`, which retargets and relayers a fitted process: slow, so
   ``--stats FILE`` keeps the load and affinity counts in FILE and reuses them).
2. ``Mapping(placement="exflow", n_devices=8, 3/4 of the experts in HBM).bind`` of DeepSeek-V3 on
   ``dgx-h100`` through a `PlacementMemo`:
   the first bind places (method, sweeps, convergence and the number of ``scipy.optimize.milp``
   calls are reported), the second finds the layout in the memo, a third one in a fresh memo
   reading the same directory finds it on disk, and ``Mapping.placed`` carries it as
   ``expert_home`` (no policy run at all).
3. Routing of ``--requests`` requests (prompt 64, output 16 tokens) of the embedded Mixtral-8x7B
   process: ``ProcessRouting.routing`` per request versus one ``routing_batch``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import codesign.policies.placement as placement_mod
from codesign.mapping import CacheSpec, Mapping
from codesign.policies.base import RoutingStats
from codesign.policies.placement import PlacementMemo
from hwmodels import get_platform
from workloads import get_model
from workloads.defaults import default_process
from workloads.requests import ProcessRouting, Request


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall s, process CPU s, result) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def v3_stats(path: Path | None, tokens: int) -> tuple[RoutingStats, dict[str, Any]]:
    """DeepSeek-V3 routing statistics, from ``path`` when it exists, else sampled (and saved there)."""
    if path is not None and path.exists():
        with np.load(path) as d:
            return RoutingStats(load=d["load"], affinity=d["affinity"], n_tokens=int(d["n_tokens"])), {
                "source": str(path)
            }
    wall_p, cpu_p, proc = timed(lambda: default_process("deepseek-v3"))
    wall_s, cpu_s, trace = timed(lambda: proc.sample(tokens, seed=1, n_requests=32))
    stats = RoutingStats.from_trace(trace)
    if path is not None:
        np.savez(path, load=stats.load, affinity=stats.affinity, n_tokens=stats.n_tokens)
    info = {"process_wall_s": wall_p, "process_cpu_s": cpu_p, "sample_wall_s": wall_s, "sample_cpu_s": cpu_s}
    return stats, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stats", type=Path, default=None, help="DeepSeek-V3 statistics cache (.npz)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out: dict[str, Any] = {}

    stats, out["stats"] = v3_stats(args.stats, args.tokens)
    model = get_model("deepseek-v3")
    # all experts do not fit 8 x 80 GB: 3/4 of each GPU's experts in HBM, the rest on the host
    # (the DeepSeek-V3 case of bench_engine_compare.py)
    platform = get_platform("dgx-h100")
    mapping = Mapping(placement="exflow", n_devices=8, cache=CacheSpec(expert_fraction=0.75))

    calls = {"milp": 0}
    real_milp = placement_mod.milp

    def counting_milp(*a: Any, **k: Any) -> Any:
        calls["milp"] += 1
        return real_milp(*a, **k)

    placement_mod.milp = counting_milp
    with tempfile.TemporaryDirectory() as tmp:
        memo = PlacementMemo(directory=tmp)
        w1, c1, b1 = timed(lambda: mapping.bind(model, platform, stats=stats, placements=memo))
        w2, c2, b2 = timed(lambda: mapping.bind(model, platform, stats=stats, placements=memo))
        w3, _, b3 = timed(lambda: mapping.bind(model, platform, stats=stats, placements=PlacementMemo(directory=tmp)))
        placed = mapping.placed(model, platform, stats=stats, placements=memo)
        w4, _, b4 = timed(lambda: placed.bind(model, platform))
    placement_mod.milp = real_milp
    assert all(np.array_equal(b1.expert_home, b.expert_home) for b in (b2, b3, b4))
    out["placement"] = {
        "first_bind_wall_s": w1,
        "first_bind_cpu_s": c1,
        "memo_bind_wall_s": w2,
        "memo_bind_cpu_s": c2,
        "disk_bind_wall_s": w3,
        "given_layout_bind_wall_s": w4,
        "sources": [b.placement.source for b in (b1, b2, b3, b4) if b.placement is not None],
        "solve_s": b1.placement.solve_s if b1.placement is not None else None,
        "info": dict(b1.placement.info) if b1.placement is not None else {},
        "milp_calls": calls["milp"],
    }

    proc = default_process("mixtral-8x7b")
    reqs = [Request(request_id=i, arrival_s=0.0, prompt_tokens=64, output_tokens=16) for i in range(args.requests)]
    src = ProcessRouting(proc, seed=0)
    src.routing(reqs[0])  # build the sampling tables once, outside the timings
    ws, cs, _ = timed(lambda: [src.routing(r) for r in reqs])
    wb, cb, _ = timed(lambda: src.routing_batch(reqs))
    out["routing"] = {
        "requests": args.requests,
        "tokens": 80 * args.requests,
        "one_at_a_time_wall_s": ws,
        "one_at_a_time_cpu_s": cs,
        "batched_wall_s": wb,
        "batched_cpu_s": cb,
        "speedup_cpu": cs / cb if cb > 0 else None,
    }
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
