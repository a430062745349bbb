"""Simulator speed: 1,000 decode steps at batch 64 of Mixtral-8x7B with offloading.

64 requests arrive together (prompt 16 tokens, 1,001 output tokens: one prefill step, then 1,000
decode steps of 64 tokens x 32 MoE layers = 2.05 M token-layer routings), routing drawn from the
package's default Mixtral process; one H100 holds a quarter of the experts (LRU) and fetches the
rest from host DRAM over PCIe Gen5. Prints wall time, CPU time, simulated events per second, the
peak RSS of the process (``resource.getrusage``) and, beside it, the analytic model's time for the
same mapping. Target: under 10 s on one core (run with ``taskset -c 0``), under 1 GB.

    taskset -c 0 python benchmarks/bench_simulator.py [--steps 1000] [--batch 64]

Not a test: it prints figures and exits 0 (exit 1 only when a target is missed with --check).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np
import numpy.typing as npt

from codesign.analytic import analytic_summary
from codesign.mapping import BatchingSpec, CacheSpec, Mapping
from codesign.policies import RoutingStats
from codesign.simulate import simulate, training_trace
from hwmodels import CostModel, get_platform
from workloads import get_model
from workloads.defaults import default_process
from workloads.requests import ProcessRouting, Request, RequestStream


class _Drawn:
    """A request stream whose routing rows are drawn once, up front (sampling is not timed)."""

    def __init__(self, stream: RequestStream) -> None:
        self.requests = stream.requests
        self._rows = {r.request_id: stream.routing(r) for r in stream.requests}

    def routing(self, request: Request) -> npt.NDArray[np.int16]:
        return self._rows[request.request_id]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="simulator speed benchmark")
    ap.add_argument("--steps", type=int, default=1000, help="decode steps (default 1000)")
    ap.add_argument("--batch", type=int, default=64, help="requests in the batch (default 64)")
    ap.add_argument("--policy", default="lru")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target (10 s CPU, 1 GB) is missed")
    args = ap.parse_args(argv)
    model = get_model("mixtral-8x7b")
    platform = get_platform("h100-pcie5-host")
    cost = CostModel(platform)
    routing = ProcessRouting(default_process("mixtral-8x7b"), seed=0)
    drawn = RequestStream.closed(
        n_requests=args.batch, prompt_len=16, output_len=args.steps + 1, routing=routing, seed=0
    )
    mapping = Mapping(
        cache=CacheSpec(policy=args.policy, expert_fraction=0.25),
        batching=BatchingSpec(max_batch=args.batch, max_tokens=8192),
    )
    # routing is drawn before the clock starts (it is the workload, not the simulator)
    stream = _Drawn(drawn)
    w0, c0 = time.perf_counter(), time.process_time()
    result = simulate(model, platform, stream, mapping, cost_model=cost, seed=0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    s = result.summary
    decode_steps = int((result.steps.decode_tokens > 0).sum())
    routings = int(result.steps.prefill_tokens.sum() + result.steps.decode_tokens.sum()) * model.n_moe_layers
    events = s["sim_events"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB
    train = training_trace(stream, list(stream.requests[:8]), model.n_moe_layers, model.n_experts, model.top_k)
    stats = RoutingStats.from_trace(train)
    a0 = time.perf_counter()
    n_analytic = 100
    for _ in range(n_analytic):
        analytic_summary(
            model,
            platform,
            mapping,
            stats,
            batch_size=args.batch,
            prompt_tokens=16,
            output_tokens=args.steps + 1,
            cost_model=cost,
        )
    analytic_s = (time.perf_counter() - a0) / n_analytic
    print(
        f"steps: {len(result.steps)} ({decode_steps} decode) at batch {args.batch}; token-layer routings: {routings:,}"
    )
    print(
        f"simulate: wall {wall:.2f} s, CPU {cpu:.2f} s; simpy events {events:,.0f} "
        f"({events / cpu:,.0f} events per CPU second); {routings / cpu:,.0f} routings per CPU second"
    )
    print(f"peak RSS: {rss_mb:.0f} MB")
    print(
        f"analytic model, same mapping: {1e3 * analytic_s:.2f} ms per evaluation "
        f"({cpu / analytic_s:,.0f}x faster than the simulation)"
    )
    print(
        f"simulated: TPOT p50 {1e3 * s['tpot_p50_s']:.1f} ms, hit rate {s['hit_rate']}, "
        f"throughput {s['throughput_tok_s']:.1f} tok/s"
    )
    if args.check and (cpu > 10.0 or rss_mb > 1024.0):
        print("TARGET MISSED (10 s CPU, 1 GB)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
