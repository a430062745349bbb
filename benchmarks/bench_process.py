"""Benchmark: sampling from the fitted Mixtral process, and routing statistics over 10M token-layer entries.

Run pinned to one core (the figures in the README were taken this way)::

    taskset -c 0 python benchmarks/bench_process.py [--tokens 1000000] [--stat-entries 10000000] [--repeat 3]
                                                   [--stat-model deepseek-v2-lite]

Prints, for each step, the wall-clock and the process CPU seconds (best of ``--repeat``): sampling
``--tokens`` tokens x 32 layers from the embedded Mixtral-8x7B process (in requests of 256 tokens),
then each statistic of `workloads.stats` and `trace_stats` over a Mixtral-shaped trace of
``--stat-entries`` token-layer entries (tokens x 32 layers, top-2; or the shape of ``--stat-model``),
and sampling from the embedded
DeepSeek-V2-Lite process (64 experts, top-6) for comparison.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from workloads import stats
from workloads.defaults import default_process


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(best wall s, best CPU s, last result) over ``repeat`` runs."""
    walls, cpus = [], []
    out = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--stat-entries", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--stat-model",
        default="mixtral-8x7b",
        help="embedded process whose shape the statistics trace takes (e.g. deepseek-v2-lite: top-6)",
    )
    args = ap.parse_args()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    print(f"cores available to this process: {sorted(cores)}; load average {os.getloadavg()}")

    mix = default_process("mixtral-8x7b")
    wall, cpu, _ = best(lambda: mix.sample(args.tokens, seed=0, tokens_per_request=256), args.repeat)
    print(
        f"sample {args.tokens:,} tokens x {mix.n_moe_layers} layers (Mixtral, 8 experts, top-2): "
        f"wall {wall:.2f} s, CPU {cpu:.2f} s"
    )

    shape = mix if args.stat_model == "mixtral-8x7b" else default_process(args.stat_model)
    n_tok = max(1, args.stat_entries // shape.n_moe_layers)
    t = shape.sample(n_tok, seed=1, tokens_per_request=256)
    entries = t.n_tokens * t.n_moe_layers
    print(
        f"statistics over {entries:,} token-layer entries ({t.n_tokens:,} tokens x {t.n_moe_layers} layers, "
        f"{t.n_experts} experts, top-{t.top_k}):"
    )
    total_w = total_c = 0.0
    for name, fn in (
        ("expert_load + load_skew", lambda: stats.load_skew(stats.expert_load(t))),
        ("affinity", lambda: stats.affinity(t)),
        ("temporal_reuse (rates + distances)", lambda: stats.temporal_reuse(t)),
        ("coactivation", lambda: stats.coactivation(t)),
    ):
        wall, cpu, _ = best(fn, args.repeat)
        total_w += wall
        total_c += cpu
        print(f"  {name:36s} wall {wall:.2f} s, CPU {cpu:.2f} s")
    print(f"  {'sum of the four':36s} wall {total_w:.2f} s, CPU {total_c:.2f} s")
    wall, cpu, _ = best(lambda: stats.trace_stats(t), args.repeat)
    print(f"  {'trace_stats (all, JSON summary)':36s} wall {wall:.2f} s, CPU {cpu:.2f} s")

    ds = default_process("deepseek-v2-lite")
    n_ds = max(1, args.tokens // 10)
    wall, cpu, _ = best(lambda: ds.sample(n_ds, seed=0, tokens_per_request=256), args.repeat)
    print(
        f"sample {n_ds:,} tokens x {ds.n_moe_layers} layers (DeepSeek-V2-Lite, 64 experts, top-6): "
        f"wall {wall:.2f} s, CPU {cpu:.2f} s"
    )


if __name__ == "__main__":
    main()
