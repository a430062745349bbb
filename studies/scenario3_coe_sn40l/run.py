"""Scenario 3: a Composition of Experts (150 Llama-2-7B-sized experts) on an SN40L node vs a DGX H100.

Setting (SN40L paper, Prabhakar et al., MICRO 2024, [P] hardware-and-papers.md s.2): Samba-CoE
serves "150 experts" derived from Llama2-7B; a router picks one expert per request; experts live
in DDR (SN40L) or host memory (DGX) and the selected one is copied into HBM, HBM-resident experts
being evicted LRU (the policy comes from secondary notes [S], s.2.2). The paper: the SN40L "speeds
up model switching time by 15x to 31x, and achieves an overall speedup of 3.7x to 6.6x over DGX
H100 and DGX A100, respectively"; Hot Chips: "0.01s for llama3.1 8B" switching [S].

How the simulator expresses it (a documented modelling choice, the engine has no "whole model
is the expert" mode): both machines run each expert with 8-way tensor parallelism, so each of the
8 sockets / GPUs holds 1/8 of every expert and they run in lockstep. One simulated device stands
for all 8 (a *TP-8 shard* model): a `MoEModel` of 32 layers whose per-layer "expert" is 1/8 of
one Llama-2-7B layer, with *all* of the 7B model's weights (6,738,415,616 parameters, Llama-2-7B
config [assumption: public config, not in the reference file; d_model 4096 and FFN 11008 match
the Vidur Llama-2-7B table in shared/calibration]) folded into the 32 per-layer experts
(``expert_ffn_dim = 2142``: 6,738,415,616 / 8 / 32 / (3 x 4096)), so a switch moves exactly a
7B shard and a token reads exactly a 7B shard; a request routes to the same expert id at every
layer (top-1). Attention keeps one 128-wide head per shard (KV cache and score work of 1 of the
4 heads of a TP-8 shard; its projection weights add 8 % to the per-layer bytes): an
underestimate of attention at long context, small for these short requests. The TP all-reduces
(two per layer) are not in the engine; they are added per step from `CostModel.all_reduce` over
the platform's peer link (a composition; reported separately).

Three tiers on the SN40L (DDR -> HBM -> SRAM, [P] s.2.1: "520 MiB of on-chip PMU SRAM, 64 GiB of
co-packaged HBM, and up to 1.5 TiB of DDR DRAM"): the engine's *near* tier (``Mapping.near``) is the
socket's SRAM above the HBM expert cache. A per-layer expert shard used from HBM is promoted into
SRAM (a copy over the HBM -> SRAM path, counted in ``bytes_moved``) and a shard found in SRAM is
computed with its weights read from SRAM. SRAM holds as many shards as fit in 90 % of its 520 MiB
(the same 10 % reserve as HBM, assumption); the replacement policy is LRU (``--sram-policy``).
What it shows: one expert's shard (1.685 GB per socket) is 3.1x the SRAM, so its 32 per-layer
pieces cycle through the 9 SRAM slots and every token streams the weights HBM -> SRAM again (SRAM
hit rate ~0, HBM -> SRAM traffic ~ one shard per expert per step). The DGX H100 has no such tier
in the simulator (its on-chip SRAM is inside the kernel efficiency of the cost model).

Switching time (composition of `CostModel.transfer`): one expert = 8 shards of 1.685 GB loaded in
parallel, over each SN40L socket's DDR -> HBM path (DDR tier bandwidth of the ``sn40l`` preset)
vs each H100's PCIe Gen5 x16 host link (the measured ~35 GB/s H2D curve of the preset). The
"paper setting" line restates the DGX host-to-GPU figures used in the SN40L comparison (DGX H100
64 GB/s for the whole node, [S] s.1.2, not verified in the paper text).

Request latency (the simulator): ``n_requests`` requests with Poisson arrivals (``rate`` per
second), prompt 512 tokens, 20 output tokens (the paper's Fig. 1 generates 20 tokens), the expert
of each request drawn from a Zipf(1) popularity over the 150 experts (assumption), seeded; and,
as the switching-bound case, a uniform popularity (most requests then switch experts). HBM
holds as many whole experts as fit after a 10 % reserve for KV cache and buffers (SN40L: 64 GiB
per socket; H100: 80 GB per GPU). Schedulers: FIFO, and Symbolic-MoE grouping (requests grouped
by expert, "loading each model only once", [P] s.4).

Run: ``python studies/scenario3_coe_sn40l/run.py [--out DIR] [--requests N] [--rate R] [--seed S]
[--sram-policy lru]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from codesign.mapping import BatchingSpec, CacheSpec, Mapping
from codesign.simulate import simulate
from hwmodels import ACTIVATION_BYTES, CostModel, Link, get_platform
from workloads import MoEModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _study import finish, start, study_parser

HERE = Path(__file__).resolve().parent
N_EXPERTS = 150
TP = 8
LLAMA2_7B_PARAMS = 6_738_415_616
PROMPT = 512
OUTPUT = 20

COE_SHARD = MoEModel(
    name="coe-150x-llama2-7b-tp8-shard",
    n_layers=32,
    d_model=4096,
    n_heads=1,
    n_kv_heads=1,
    head_dim=128,
    expert_ffn_dim=round(LLAMA2_7B_PARAMS / TP / 32 / (3 * 4096)),
    n_experts=N_EXPERTS,
    top_k=1,
    gated=True,
    vocab_size=1,
    tie_embeddings=True,
    bytes_per_weight=2.0,
    source="Composition of Experts of 150 Llama-2-7B-sized experts (SN40L paper [P] s.2.2), TP-8 shard; all 7B "
    "weights folded into the per-layer experts; one attention head per shard (see scenario 3 docstring)",
)


@dataclass(frozen=True)
class Request:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class CoEStream:
    """Poisson arrivals; each request routes all its tokens to one expert (Zipf(1) popularity)."""

    def __init__(self, n_requests: int, rate_per_s: float, seed: int, popularity: str = "zipf") -> None:
        rng = np.random.default_rng(seed)
        if popularity == "zipf":
            pop = 1.0 / np.arange(1, N_EXPERTS + 1)
        elif popularity == "uniform":
            pop = np.ones(N_EXPERTS)
        else:
            raise ValueError(f"popularity must be 'zipf' or 'uniform', got {popularity!r}")
        pop /= pop.sum()
        perm = rng.permutation(N_EXPERTS)  # which expert id is the k-th most popular
        self.experts = perm[rng.choice(N_EXPERTS, size=n_requests, p=pop)]
        arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n_requests))
        self.requests = tuple(Request(i, float(arrivals[i]), PROMPT, OUTPUT) for i in range(n_requests))

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        e = int(self.experts[request.request_id])
        return np.full((PROMPT + OUTPUT, COE_SHARD.n_moe_layers, 1), e, dtype=np.int16)


def shard_bytes() -> float:
    """Bytes of one expert's TP-8 shard (what each socket / GPU loads on a switch)."""
    return COE_SHARD.n_moe_layers * float(COE_SHARD.bytes_per_expert)


def switching_times(sn_cost: CostModel, dgx_cost: CostModel) -> dict[str, Any]:
    """Model switching time on each machine (seconds), by `CostModel.transfer` (see docstring)."""
    sn = sn_cost.platform.accelerators[0]
    ddr = sn.tier("ddr")
    ddr_link = Link(
        name="sn40l:ddr->hbm",
        bandwidth_Bps=ddr.bandwidth_Bps,
        latency_s=ddr.latency_s,
        duplex=False,
        efficiency_points=(),
        energy_J_per_byte=ddr.energy_J_per_byte,
        source=ddr.source,
    )
    b = shard_bytes()
    t_sn = float(sn_cost.transfer(ddr_link, b).total_s)
    host_link = dgx_cost.platform.host_link
    if host_link is None:
        raise ValueError("dgx-h100 preset has no host link")
    t_dgx = float(dgx_cost.transfer(host_link, b).total_s)
    # the paper's setting: the whole 7B expert over one 64 GB/s host-to-GPU path per DGX H100 node [S]
    paper_link = Link(
        name="dgx-h100-node-host-64GBps",
        bandwidth_Bps=64e9,
        latency_s=host_link.latency_s,
        duplex=True,
        efficiency_points=(),
        energy_J_per_byte=host_link.energy_J_per_byte,
        source="[S] hardware-and-papers.md s.1.2: 'DGX H100 64 GB/s' as restated from the SN40L paper",
    )
    t_paper = float(dgx_cost.transfer(paper_link, b * TP).total_s)
    return {
        "expert_bytes": b * TP,
        "shard_bytes": b,
        "sn40l_s": t_sn,
        "dgx_h100_s": t_dgx,
        "speedup": t_dgx / t_sn,
        "sn40l_node_rate_Bps": b * TP / t_sn,
        "dgx_h100_node_rate_Bps": b * TP / t_dgx,
        "dgx_h100_paper_setting_s": t_paper,
        "speedup_paper_setting": t_paper / t_sn,
    }


def _slots(platform_name: str, cost: CostModel) -> tuple[int, int]:
    """(cache slots, whole experts) of one device's HBM after a 10 % reserve (assumption)."""
    dev = cost.platform.accelerators[0]
    cap = dev.tier("hbm").capacity_bytes * 0.9 - float(COE_SHARD.non_expert_bytes)
    n_models = int(cap // shard_bytes())
    return n_models * COE_SHARD.n_moe_layers, n_models


def sram_slots(cost: CostModel) -> int:
    """Expert shards that one SN40L socket's SRAM holds after a 10 % reserve (assumption) for
    activations and pipeline buffers: 520 MiB [P] s.2.1 (the ``sn40l`` preset's ``sram`` tier)."""
    sram = cost.platform.accelerators[0].tier("sram")
    return int(sram.capacity_bytes * 0.9 // float(COE_SHARD.bytes_per_expert))


def tp_all_reduce_per_token_s(cost: CostModel, n_tokens: int) -> float:
    """Two all-reduces per layer of ``n_tokens`` activations over the peer link (TP-8), seconds."""
    link = cost.platform.peer_link
    if link is None:
        return 0.0
    c = cost.all_reduce(link, n_tokens * COE_SHARD.d_model * ACTIVATION_BYTES, TP)
    return 2 * COE_SHARD.n_layers * float(c.total_s)


def run_scenario(
    *, n_requests: int = 200, rate_per_s: float = 4.0, seed: int = 0, sram_policy: str = "lru"
) -> dict[str, Any]:
    """All runs of the study (see module doc); ``sram_policy`` is the SN40L SRAM tier's replacement
    policy (a registered cache policy that needs no future)."""
    platforms = {"sn40l": get_platform("sn40l-node"), "dgx-h100": get_platform("dgx-h100")}
    costs = {k: CostModel(p) for k, p in platforms.items()}
    switch = switching_times(costs["sn40l"], costs["dgx-h100"])
    streams = {
        "zipf": CoEStream(n_requests, rate_per_s, seed, "zipf"),
        "uniform": CoEStream(n_requests, rate_per_s, seed, "uniform"),
    }
    runs = [
        (pop, sched)
        for pop in ("zipf", "uniform")
        for sched in ("fifo", "symbolic-moe")
        if pop == "zipf" or sched == "fifo"
    ]
    results: dict[str, Any] = {}
    for name, platform in platforms.items():
        slots, n_models = _slots(name, costs[name])
        backing = "ddr" if name == "sn40l" else "host"
        n_sram = sram_slots(costs[name]) if name == "sn40l" else 0
        dev_name = platform.accelerators[0].name
        # the engine's names of its copy paths: DDR -> HBM (SN40L) or the host link (DGX); HBM -> SRAM
        host_link = platform.host_link
        fetch_link = f"{dev_name}:ddr->hbm" if name == "sn40l" else (host_link.name if host_link else "")
        sram_link = f"{dev_name}:hbm->sram"
        near = CacheSpec(policy=sram_policy, tier="sram", capacity_experts=n_sram) if name == "sn40l" else None
        ar_decode = tp_all_reduce_per_token_s(costs[name], 1)
        ar_prefill = tp_all_reduce_per_token_s(costs[name], PROMPT)
        for pop, sched in runs:
            stream = streams[pop]
            mapping = Mapping(
                n_devices=1,
                backing=backing,
                initial="empty",
                near=near,
                cache=CacheSpec(policy="lru", capacity_experts=slots),
                batching=BatchingSpec(scheduler=sched, max_batch=8, max_tokens=4096),
            )
            res = simulate(COE_SHARD, platform, stream, mapping, cost_model=costs[name], seed=seed)
            req = res.requests
            key = f"{name}/{sched}" if pop == "zipf" else f"{name}/{sched}/uniform"
            moved = res["bytes_moved"]
            switched = moved.get(fetch_link, 0.0) / shard_bytes()
            to_sram = moved.get(sram_link, 0.0)
            results[key] = {
                "resident_experts": n_models,
                "cache_slots": slots,
                "sram_slots": n_sram,
                "sram_policy": sram_policy if near is not None else None,
                "experts_switched_in": switched,
                "steps": len(res.steps),
                "hbm_to_sram_bytes": to_sram,
                "hbm_to_sram_per_step_shards": to_sram / len(res.steps) / shard_bytes() if len(res.steps) else 0.0,
                "peak_memory_bytes": res["peak_memory_bytes"],
                "latency_mean_s": float(req["latency_s"].mean()),
                "latency_p50_s": res["latency_p50_s"],
                "latency_p99_s": res["latency_p99_s"],
                "ttft_p50_s": res["ttft_p50_s"],
                "tpot_p50_s": res["tpot_p50_s"],
                "throughput_tok_s": res["throughput_tok_s"],
                "hit_rate": res["hit_rate"],
                "bytes_moved": res["bytes_moved"],
                "energy_j_per_token": res["energy_j_per_token"],
                "tp_all_reduce_per_decode_step_s": ar_decode,
                "tp_all_reduce_per_prefill_s": ar_prefill,
                # composition: the request's own steps' all-reduces added to its latency (no queueing)
                "latency_mean_with_tp_s": float(req["latency_s"].mean()) + ar_prefill + (OUTPUT - 1) * ar_decode,
                "config_hash": res.config_hash,
            }
    sn, dgx = results["sn40l/fifo"], results["dgx-h100/fifo"]
    return {
        "setting": {
            "experts": N_EXPERTS,
            "expert": "Llama-2-7B-sized (6.74e9 weights, bf16)",
            "tensor_parallel": TP,
            "requests": n_requests,
            "rate_per_s": rate_per_s,
            "prompt_tokens": PROMPT,
            "output_tokens": OUTPUT,
            "popularity": "Zipf(1) over the 150 experts (assumption); 'uniform' rows: uniform",
            "seed": seed,
            "model": COE_SHARD.name,
        },
        "paper": {
            "source": "SN40L, Prabhakar et al., arXiv 2405.07518 ([P] hardware-and-papers.md s.2.2)",
            "switching_speedup": "15x (vs DGX H100) to 31x (vs DGX A100)",
            "overall_speedup": "3.7x (vs DGX H100) to 6.6x (vs DGX A100)",
            "hot_chips_switching": "0.01 s for llama3.1 8B [S]",
        },
        "switching": switch,
        "results": results,
        "comparison": {
            "switching_speedup": switch["speedup"],
            "switching_speedup_paper_setting": switch["speedup_paper_setting"],
            "latency_mean_speedup_fifo": dgx["latency_mean_s"] / sn["latency_mean_s"],
            "latency_p50_speedup_fifo": dgx["latency_p50_s"] / sn["latency_p50_s"],
            "symbolic_moe_latency_gain_dgx": dgx["latency_mean_s"] / results["dgx-h100/symbolic-moe"]["latency_mean_s"],
            "symbolic_moe_latency_gain_sn40l": sn["latency_mean_s"] / results["sn40l/symbolic-moe"]["latency_mean_s"],
            "latency_mean_speedup_uniform": results["dgx-h100/fifo/uniform"]["latency_mean_s"]
            / results["sn40l/fifo/uniform"]["latency_mean_s"],
            "latency_mean_speedup_fifo_with_tp": dgx["latency_mean_with_tp_s"] / sn["latency_mean_with_tp_s"],
            "sn40l_hbm_hit_rate_fifo": sn["hit_rate"]["hbm"],
            "sn40l_sram_hit_rate_fifo": sn["hit_rate"]["sram"],
            "sn40l_hbm_to_sram_shards_per_step_fifo": sn["hbm_to_sram_per_step_shards"],
            "dgx_hbm_hit_rate_fifo": dgx["hit_rate"]["hbm"],
        },
    }


def table(summary: dict[str, Any]) -> str:
    sw = summary["switching"]
    rows = [
        f"model switch (7B expert, {sw['expert_bytes'] / 1e9:.2f} GB): SN40L {1e3 * sw['sn40l_s']:.2f} ms "
        f"({sw['sn40l_node_rate_Bps'] / 1e12:.2f} TB/s), DGX H100 {1e3 * sw['dgx_h100_s']:.2f} ms "
        f"({sw['dgx_h100_node_rate_Bps'] / 1e9:.0f} GB/s): {sw['speedup']:.1f}x; paper setting (64 GB/s node): "
        f"{1e3 * sw['dgx_h100_paper_setting_s']:.0f} ms, {sw['speedup_paper_setting']:.1f}x",
        f"{'machine/scheduler':<30} {'in HBM':>6} {'HBM hit %':>9} {'SRAM hit %':>10} {'switches':>8} "
        f"{'HBM->SRAM shards/step':>21} {'lat mean s':>10} {'lat p50 s':>9} "
        f"{'lat p99 s':>9} {'TTFT p50':>8} {'TPOT ms':>7} {'J/tok':>6}",
    ]
    for name, r in summary["results"].items():
        hit = r["hit_rate"]
        sram = f"{100 * hit['sram']:.1f}" if "sram" in hit else "-"
        rows.append(
            f"{name:<30} {r['resident_experts']:>6} {100 * hit['hbm']:>9.1f} {sram:>10} "
            f"{r['experts_switched_in']:>8.0f} {r['hbm_to_sram_per_step_shards']:>21.2f} "
            f"{r['latency_mean_s']:>10.3f} "
            f"{r['latency_p50_s']:>9.3f} {r['latency_p99_s']:>9.3f} {r['ttft_p50_s']:>8.3f} "
            f"{1e3 * r['tpot_p50_s']:>7.2f} {r['energy_j_per_token']:>6.2f}"
        )
    c = summary["comparison"]
    rows.append(
        f"SN40L vs DGX H100 (FIFO): mean request latency {c['latency_mean_speedup_fifo']:.2f}x, "
        f"p50 {c['latency_p50_speedup_fifo']:.2f}x; uniform popularity "
        f"{c['latency_mean_speedup_uniform']:.2f}x (paper: 3.7x overall)"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = study_parser("scenario3_coe_sn40l", __doc__)
    ap.add_argument("--requests", type=int, default=None, help="requests (default 200; --reduced 12)")
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--sram-policy", default="lru", help="replacement policy of the SN40L SRAM tier (default lru)")
    args = ap.parse_args(argv)
    start(args)
    summary = run_scenario(
        n_requests=args.requests or (12 if args.reduced else 200),
        rate_per_s=args.rate,
        seed=args.seed,
        sram_policy=args.sram_policy,
    )
    return finish(args, summary, table(summary))


if __name__ == "__main__":
    sys.exit(main())
