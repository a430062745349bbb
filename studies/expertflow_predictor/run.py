"""ExpertFlow-style routing-path prediction on held-out real traces, and what it buys a cache.

1. Accuracy: `RoutingPathPredictor` (per-layer conditional frequency tables, see
   `codesign/policies/expertflow.py`) fitted on the first half of the requests of a real trace
   (DeepSeek-V2-Lite: 100 prompts; Mixtral-8x7B-Instruct: 2 of 4 problems) and scored on the
   other half: recall@k of a token's experts 1, 2 and 3 layers ahead, beside the popularity
   baseline (the k most loaded experts of the layer in training).
2. Offloading: DeepSeek-V2-Lite on one H100 with a quarter of the experts in HBM and the rest in
   host DRAM over PCIe Gen5 (``h100-pcie5-host``), 16 held-out prompts (24 tokens each: 4 prompt
   tokens, 20 "decode" tokens routed like the recorded prompt tokens, an approximation), batch 4,
   all at t = 0: cache and prefetch policies compared on hit rate, TPOT and PCIe bytes. The
   predictor-based policies are trained on the 100 training prompts.

3. Token scheduling: 48 held-out-or-not DeepSeek prompts of at least 20 tokens (2 prompt tokens, 18
   "decode" tokens routed like recorded tokens), all at t = 0, 48 running, 12 tokens per step:
   FIFO vs ExpertFlow regrouping vs Symbolic-MoE grouping, all experts in HBM and with a quarter in
   HBM (LFU): expert loads (sum over steps of the distinct experts a step needs), TPOT, throughput
   and PCIe bytes.

Run: ``python studies/expertflow_predictor/run.py [--out DIR]`` (seeded; about 40 s).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from codesign.mapping import BatchingSpec, CacheSpec, Mapping
from codesign.policies.expertflow import RoutingPathPredictor, split_by_request
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from workloads import RoutingTrace, get_model
from workloads.importers import import_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _study import finish, start, study_parser

log = logging.getLogger("studies.expertflow_predictor")
HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MOE_CODESIGN_SHARED", Path(__file__).resolve().parents[3] / "shared"))

POLICIES: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...] = (
    ("lru", "none", ()),
    ("lfu", "none", ()),
    ("expertflow", "none", ()),
    ("belady", "none", ()),
    ("lru", "pregate", ()),
    ("lru", "affinity", ()),
    ("lru", "expertflow", ()),
    ("lru", "expertflow", (("threshold", 0.9),)),
)


@dataclass(frozen=True)
class Request:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class Replay:
    def __init__(self, rows: list[npt.NDArray[np.int16]], prompt: int) -> None:
        self._rows = rows
        self.requests = tuple(Request(i, 0.0, prompt, r.shape[0] - prompt) for i, r in enumerate(rows))

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        return self._rows[request.request_id]


def _trace(fmt: str, folder: str, shared: Path) -> RoutingTrace:
    t = import_trace(fmt, shared / "traces" / folder)
    if not isinstance(t, RoutingTrace):
        raise TypeError(f"{fmt} import did not return a RoutingTrace")
    return t


def run(shared: Path = SHARED, seed: int = 0, *, reduced: bool = False) -> dict[str, Any]:
    """The study; ``reduced`` keeps only the Mixtral predictor accuracy and 4 / 12 replayed requests."""
    ds = _trace("deepseek-csv", "deepseek-v2-lite", shared)
    mx = _trace("mixtral-jsonl", "mixtral-8x7b-instruct", shared)
    accuracy: dict[str, Any] = {}
    traces = (("mixtral-8x7b", mx),) if reduced else (("deepseek-v2-lite", ds), ("mixtral-8x7b", mx))
    for name, trace in traces:
        log.info("predictor accuracy on %s", name)
        train, test = split_by_request(trace, 0.5)
        acc = RoutingPathPredictor.fit(train, horizon=3, context=2).evaluate(test)
        accuracy[name] = {
            "recall_at_k": list(acc.recall),
            "popularity_recall_at_k": list(acc.baseline_recall),
            "predictions": list(acc.n_predictions),
            "k": trace.k,
            "train_tokens": train.n_tokens,
            "test_tokens": test.n_tokens,
        }
    ids = np.unique(ds.request)
    train = ds.select_requests(ids[:100])
    rows = [r for r in (ds.select_requests([i]).experts[:24] for i in ids[100:140]) if r.shape[0] == 24][
        : 4 if reduced else 16
    ]
    model = get_model("deepseek-v2-lite")
    platform = get_platform("h100-pcie5-host")
    cost = CostModel(platform)
    offload: dict[str, Any] = {}
    for cache, prefetch, opts in POLICIES:
        m = Mapping(
            n_devices=1,
            cache=CacheSpec(policy=cache, expert_fraction=0.25),
            prefetch=prefetch,
            prefetch_options=opts,
            batching=BatchingSpec(max_batch=4),
        )
        log.info("offload %s+%s", cache, prefetch)
        r = simulate(model, platform, Replay(rows, 4), m, cost_model=cost, train=train, seed=seed)
        key = f"{cache}+{prefetch}" + "".join(f"[{k}={v}]" for k, v in opts)
        offload[key] = {
            "hit_rate": r["hit_rate"]["hbm"],
            "tpot_p50_s": r["tpot_p50_s"],
            "pcie_bytes": sum(r["bytes_moved"].values()),
            "config_hash": r.config_hash,
        }
    rows20 = [r for r in (ds.select_requests([i]).experts[:20] for i in ids) if r.shape[0] == 20][
        : 12 if reduced else 48
    ]
    scheduling: dict[str, Any] = {}
    for frac in (1.0, 0.25):
        for sched in ("fifo", "expertflow", "symbolic-moe"):
            m = Mapping(
                n_devices=1,
                cache=CacheSpec(policy="lfu", expert_fraction=frac),
                batching=BatchingSpec(scheduler=sched, max_batch=48, max_tokens=12),
            )
            r = simulate(model, platform, Replay(rows20, 2), m, cost_model=cost, seed=seed)
            scheduling[f"{sched}@hbm{frac:g}"] = {
                "expert_loads": float(r.steps["experts_needed"].sum()),
                "tpot_p50_s": r["tpot_p50_s"],
                "throughput_tok_s": r["throughput_tok_s"],
                "hit_rate": r["hit_rate"]["hbm"],
                "pcie_bytes": sum(r["bytes_moved"].values()),
                "config_hash": r.config_hash,
            }
    return {
        "accuracy": accuracy,
        "offload": offload,
        "scheduling": scheduling,
        "setting": {
            "offload_model": model.name,
            "platform": platform.name,
            "hbm_expert_fraction": 0.25,
            "requests": len(rows),
            "batch": 4,
            "seed": seed,
        },
    }


def table(summary: dict[str, Any]) -> str:
    rows = ["held-out recall@k (1, 2, 3 layers ahead) vs popularity:"]
    for name, a in summary["accuracy"].items():
        rec = ", ".join(f"{x:.3f}" for x in a["recall_at_k"])
        base = ", ".join(f"{x:.3f}" for x in a["popularity_recall_at_k"])
        rows.append(f"  {name:<18} k={a['k']}: {rec}   (popularity {base})")
    rows.append(f"{'cache+prefetch':<36} {'hit %':>6} {'TPOT ms':>8} {'PCIe GB':>8}")
    for key, r in summary["offload"].items():
        rows.append(
            f"{key:<36} {100 * r['hit_rate']:>6.1f} {1e3 * r['tpot_p50_s']:>8.1f} {r['pcie_bytes'] / 1e9:>8.1f}"
        )
    rows.append(f"{'scheduler@HBM share':<26} {'expert loads':>12} {'TPOT ms':>8} {'tok/s':>7} {'PCIe GB':>8}")
    for key, r in summary["scheduling"].items():
        rows.append(
            f"{key:<26} {r['expert_loads']:>12.0f} {1e3 * r['tpot_p50_s']:>8.1f} "
            f"{r['throughput_tok_s']:>7.1f} {r['pcie_bytes'] / 1e9:>8.1f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = study_parser("expertflow_predictor", __doc__)
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args(argv)
    start(args)
    summary = run(args.shared, args.seed, reduced=args.reduced)
    return finish(args, summary, table(summary))


if __name__ == "__main__":
    sys.exit(main())
