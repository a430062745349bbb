"""Scenario 5: a CPU-only server (2-socket Sapphire Rapids, AMX, 8 DDR5-4800 channels per socket)
serving MoE models from its DDR, beside one H100 that offloads three quarters of the experts to
the same kind of host over PCIe Gen5.

Workloads: Mixtral-8x7B (BF16, 93 GB: fits the server's 2 TB DDR) on the real Mixtral routing
trace (`TraceReplay`), and OLMoE-1B-7B (64 small experts, top-8) on the package's default routing
process for it (`workloads.defaults.default_process`). Batches of 1 (interactive) and 8
(offline); all requests at t = 0. The CPU's cost is the calibrated roofline of `hwmodels`
(AMX bf16 peak and DDR5 bandwidth of the ``spr-2s`` preset; its efficiency curve is the package
default for CPUs unless a calibration profile is given), so decode is DDR-bandwidth bound.

Run: ``python studies/scenario5_cpu_only/run.py [--out DIR]``; writes ``summary.json`` and prints a
table (TPOT, throughput, energy per token, cost per million tokens). Seeded; takes seconds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from codesign.mapping import BatchingSpec, CacheSpec, Mapping
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from workloads import get_model
from workloads.defaults import default_process
from workloads.importers import import_trace
from workloads.requests import ProcessRouting, RequestStream, TraceReplay
from workloads.trace import RoutingTrace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _study import finish, start, study_parser

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MOE_CODESIGN_SHARED", Path(__file__).resolve().parents[3] / "shared"))
KEYS = (
    "tpot_p50_s",
    "ttft_p50_s",
    "throughput_tok_s",
    "energy_j_per_token",
    "cost_per_million_tokens_usd",
    "hit_rate",
    "bytes_moved",
    "peak_memory_bytes",
)


def run_scenario(
    *,
    batches: tuple[int, ...] = (1, 8),
    prompt_len: int = 32,
    output_len: int = 64,
    seed: int = 0,
    shared: Path = SHARED,
) -> dict[str, Any]:
    """Every (model, platform, batch) cell; returns ``{"setting": ..., "results": {key: summary subset}}``."""
    trace = import_trace("mixtral-jsonl", shared / "traces" / "mixtral-8x7b-instruct")
    if not isinstance(trace, RoutingTrace):
        raise TypeError("mixtral-jsonl import did not return a RoutingTrace")
    cpu = get_platform("cpu-server")
    gpu = get_platform("h100-pcie5-host")
    workloads = {
        "mixtral-8x7b": (get_model("mixtral-8x7b"), TraceReplay(trace, cycle=True)),
        "olmoe-1b-7b": (get_model("olmoe-1b-7b"), ProcessRouting(default_process("olmoe-1b-7b"), seed=seed)),
    }
    results: dict[str, Any] = {}
    for mname, (model, routing) in workloads.items():
        for batch in batches:
            stream = RequestStream.closed(
                n_requests=batch, prompt_len=prompt_len, output_len=output_len, routing=routing, seed=seed
            )
            b = BatchingSpec(max_batch=batch)
            cells = {
                "cpu-server": (cpu, Mapping(batching=b)),
                "h100-offload-lru": (gpu, Mapping(cache=CacheSpec(expert_fraction=0.25), batching=b)),
                "h100-offload-fiddler": (
                    gpu,
                    Mapping(cache=CacheSpec(policy="static", expert_fraction=0.25), miss="cost", batching=b),
                ),
            }
            for cname, (platform, mapping) in cells.items():
                r = simulate(model, platform, stream, mapping, cost_model=CostModel(platform), seed=seed)
                s = r.summary_json()
                results[f"{mname}/{cname}/batch{batch}"] = {k: s.get(k) for k in KEYS} | {"config_hash": r.config_hash}
    return {
        "setting": {
            "prompt_len": prompt_len,
            "output_len": output_len,
            "batches": list(batches),
            "seed": seed,
            "cpu_platform": cpu.name,
            "gpu_platform": gpu.name,
        },
        "results": results,
    }


def table(summary: dict[str, Any]) -> str:
    rows = [f"{'model/platform/batch':<44} {'TPOT p50 ms':>11} {'tok/s':>8} {'J/tok':>8} {'$/1M tok':>9}"]
    for key, s in summary["results"].items():
        rows.append(
            f"{key:<44} {1e3 * s['tpot_p50_s']:>11.2f} {s['throughput_tok_s']:>8.1f} "
            f"{s['energy_j_per_token']:>8.3f} {s['cost_per_million_tokens_usd']:>9.2f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = study_parser("scenario5_cpu_only", __doc__)
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args(argv)
    start(args)
    if args.reduced:
        summary = run_scenario(batches=(1,), output_len=8, seed=args.seed, shared=args.shared)
    else:
        summary = run_scenario(seed=args.seed, shared=args.shared)
    return finish(args, summary, table(summary))


if __name__ == "__main__":
    sys.exit(main())
