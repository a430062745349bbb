"""Scenario 2: DeepSeek-V2-Lite on 8 H100s, expert parallel with all-to-all: round-robin vs ExFlow.

Data: the real DeepSeek-V2-Lite-Chat routing (`shared/traces/deepseek-v2-lite`, 200 prompts,
19,520 prefill tokens, top-6 of 64 routed experts, 26 MoE layers) read by
``import_trace("deepseek-csv", ...)``. The first half of the prompts (by id) trains the
placements (routing statistics: per-layer load and the joint inter-layer affinity counts); every
figure is measured on the other, held-out half.

Placements: ``round-robin`` (expert e on GPU e mod 8), ``load-balanced`` (greedy bin packing of
the per-layer load) and ``exflow`` (Yao et al., IPDPS 2024: the integer program of
`codesign.policies.placement`, solved layer by layer, sequentially conditioned, with
block-coordinate sweeps; its solve time is reported).

What is measured, per placement:

1. **Cross-device routing on held-out tokens** (`cross_device_stats`): the share of
   consecutive-layer expert transitions whose experts sit on different GPUs, and the share of
   token-expert assignments whose expert is on none of the GPUs holding the token's experts of
   the previous layer (ExFlow's context-coherent expert parallelism keeps a token where its
   previous experts ran; every such assignment needs a cross-GPU transfer).
2. **The simulator** (`codesign.simulate`, platform ``dgx-h100``: 8 H100 SXM on NVLink 4, all
   experts in HBM): held-out prompts as requests, all at t = 0, prompt = the recorded tokens but
   the last 8, output = 8 tokens whose routing is the last 8 recorded prompt tokens (the trace
   has prefill tokens only: an approximation, stated). The engine plays classic expert
   parallelism: each token lives on its request's GPU, is dispatched to its experts' GPUs and
   combined back (two all-to-alls per MoE layer); its cross-device share does not depend on
   the placement (about 7/8), only the load balance does.
3. **Context-coherent expert parallelism (ExFlow's execution model), as a documented composition**
   of the classic run's step time and `CostModel.all_to_all` (written before the engine had
   item 4; its token-stays-where-any-previous-expert-ran share is ExFlow's own measure): the step
   time is re-composed as the classic run's mean step time
   minus its mean all-to-all time per step, plus one all-to-all per MoE layer carrying the
   held-out context-coherent cross-device assignments of a step of the same size (ExFlow: "only
   uses one Alltoall communication", [P] ExFlow, hardware-and-papers.md s.4). Kept beside item 4
   as the closed-form figure.
4. **Context-coherent expert parallelism played by the engine** (``Mapping(ep_execution=
   "context-coherent")``): each token stays on the GPU of its top-1 expert of the previous MoE
   layer, is dispatched from there (one all-to-all), and its other experts' partial outputs go to
   its next GPU; the engine reports the cross-device share of token-expert assignments, the
   all-to-all time and the step time itself, for every placement.

Both on the DGX H100 (NVLink 4) and, to see the regime where the all-to-all matters, on the same 8
H100s with a PCIe Gen5 x16 peer fabric instead of NVLink (a topology assumption; the link numbers
are the ``pcie-gen5-x16`` preset's).

Paper (ExFlow, [P] hardware-and-papers.md s.4): "reduce up to 67% of tokens' cross-GPU routing
latency", "up to 2.2x improvement in inference throughput" over DeepSpeed-MoE on GPT MoE models
with 8 to 64 experts (hardware NR). The README beside this file states ours beside theirs.

Run: ``python studies/scenario2_deepseek_exflow/run.py [--out DIR] [--requests N] [--seed S] [--timelines]``;
writes ``summary.json`` (and with ``--timelines`` a Plotly timeline of the first steps per
placement) into ``--out`` (default ``runs/scenario2_deepseek_exflow/`` under the current directory, see
``studies/_study.py``; the committed figures are in ``results/`` beside this file) and prints a table.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from codesign.mapping import BatchingSpec, Mapping
from codesign.policies.base import RoutingStats
from codesign.policies.placement import ExflowPlacement, cross_device_stats
from codesign.policies.registry import REGISTRIES
from codesign.simulate import simulate
from codesign.views import cost_breakdown_info, plot_timeline, timeline_info, write_html
from hwmodels import ACTIVATION_BYTES, CostModel, Platform, get_link, get_platform
from workloads import RoutingTrace, get_model
from workloads.importers import import_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _study import finish, start, study_parser

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MOE_CODESIGN_SHARED", Path(__file__).resolve().parents[3] / "shared"))
PLACEMENTS = ("round-robin", "load-balanced", "exflow")
DECODE_TOKENS = 8


@dataclass(frozen=True)
class Request:
    """One request of the replayed prompts (all arrive at t = 0)."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class PromptReplay:
    """Each held-out prompt is one request; its rows are the recorded rows (see module doc)."""

    def __init__(self, trace: RoutingTrace, request_ids: npt.NDArray[np.integer[Any]]) -> None:
        self._rows: list[npt.NDArray[np.int16]] = []
        reqs = []
        for rid in request_ids.tolist():
            rows = trace.select_requests([rid]).experts
            if rows.shape[0] < 2 * DECODE_TOKENS:
                continue
            reqs.append(Request(len(self._rows), 0.0, rows.shape[0] - DECODE_TOKENS, DECODE_TOKENS))
            self._rows.append(rows)
        self.requests = tuple(reqs)

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        return self._rows[request.request_id]


def load_trace(shared: Path = SHARED) -> RoutingTrace:
    trace = import_trace("deepseek-csv", shared / "traces" / "deepseek-v2-lite")
    if not isinstance(trace, RoutingTrace):
        raise TypeError("deepseek-csv import did not return a RoutingTrace")
    return trace


def _play(
    platform: Platform,
    *,
    trace: RoutingTrace,
    train: RoutingTrace,
    test: RoutingTrace,
    stats: RoutingStats,
    stream: PromptReplay,
    batch: int,
    seed: int,
    out: Path | None,
    tag: str,
) -> dict[str, Any]:
    """Every placement on one platform (see module docstring); results by placement name."""
    model = get_model("deepseek-v2-lite")
    cost = CostModel(platform)
    n_dev = platform.n_accelerators
    peer = platform.peer_link
    if peer is None:
        raise ValueError(f"platform {platform.name!r} has no peer link for the all-to-all")
    results: dict[str, Any] = {}
    for name in PLACEMENTS:
        policy = REGISTRIES["placement"].create(name, seed=seed)
        home = policy.place(model, n_dev, stats)
        routing = cross_device_stats(test, home)
        entry: dict[str, Any] = {
            "transition_cross_share": routing.transition,
            "assignment_cross_share": routing.assignment,
            "held_out_tokens": test.n_tokens,
        }
        if isinstance(policy, ExflowPlacement) and policy.solution is not None:
            sol = policy.solution
            entry |= {
                "solve_method": sol.method,
                "solve_s": sol.solve_s,
                "sweeps": sol.sweeps,
                "train_expected_cross_share": sol.expected_cross_share,
            }
        mapping = Mapping(placement=name, batching=BatchingSpec(max_batch=batch, max_tokens=8192))
        res = simulate(model, platform, stream, mapping, cost_model=cost, seed=seed, train=train, record_events=True)
        n_steps = len(res.steps)
        tokens = res.steps["prefill_tokens"] + res.steps["decode_tokens"]
        n_tok_per_step = float(tokens.mean())
        step_mean = float(res.steps["duration_s"].mean())
        a2a_per_step = _all_to_all_per_step(res)
        # context-coherent EP: one all-to-all per MoE layer carrying the held-out cross assignments
        unit = model.d_model * ACTIVATION_BYTES
        per_dev_bytes = n_tok_per_step / n_dev * model.top_k * routing.assignment * unit
        cc = cost.all_to_all(peer, per_dev_bytes, n_dev)
        cc_per_step = float(cc.total_s) * model.n_moe_layers
        busy = cost_breakdown_info(res)
        entry |= {
            "sim_step_mean_s": step_mean,
            "sim_all_to_all_per_step_s": a2a_per_step,
            "sim_cross_device_share": res["cross_device_share"],
            "sim_ttft_p50_s": res["ttft_p50_s"],
            "sim_tpot_p50_s": res["tpot_p50_s"],
            "sim_throughput_tok_s": res["throughput_tok_s"],
            "sim_energy_j_per_token": res["energy_j_per_token"],
            "sim_steps": n_steps,
            "sim_tokens_per_step": n_tok_per_step,
            "busy_share": busy.share,
            "cc_all_to_all_per_step_s": cc_per_step,
            "cc_step_mean_s": step_mean - a2a_per_step + cc_per_step,
            "config_hash": res.config_hash,
        }
        # context-coherent EP played by the engine itself (Mapping.ep_execution): each token stays
        # on the GPU of its top-1 expert of the previous MoE layer; one dispatch all-to-all per layer
        # plus the other experts' partial outputs sent to the token's next GPU
        cc_map = mapping.with_(ep_execution="context-coherent")
        cc_res = simulate(model, platform, stream, cc_map, cost_model=cost, seed=seed, train=train, record_events=True)
        entry |= {
            "engine_cc_step_mean_s": float(cc_res.steps["duration_s"].mean()),
            "engine_cc_all_to_all_per_step_s": _all_to_all_per_step(cc_res),
            "engine_cc_cross_device_share": cc_res["cross_device_share"],
            "engine_cc_peer_bytes": float(cc_res["bytes_moved"].get(peer.name, 0.0)),
            "engine_cc_ttft_p50_s": cc_res["ttft_p50_s"],
            "engine_cc_tpot_p50_s": cc_res["tpot_p50_s"],
            "engine_cc_throughput_tok_s": cc_res["throughput_tok_s"],
            "engine_cc_steps": len(cc_res.steps),
            "sim_peer_bytes": float(res["bytes_moved"].get(peer.name, 0.0)),
            "engine_cc_config_hash": cc_res.config_hash,
        }
        results[name] = entry
        if out is not None:
            info = timeline_info(
                res,
                steps=(0, min(1, n_steps - 1)),
                title=f"DeepSeek-V2-Lite on {platform.name}, {name} placement (first steps)",
            )
            write_html(plot_timeline(info), out / f"timeline_{tag}{name}.html")
    return results


def _all_to_all_per_step(res: Any) -> float:
    """Mean time per step that the all-to-alls hold the peer fabric (from device 0's event lane:
    every all-to-all is recorded on every device), seconds."""
    ev = res.events_frame()
    lane0 = ev[(ev.device == ev.device.iloc[0]) & (ev.kind == "all_to_all")] if len(ev) else ev
    total = float((lane0.end_s - lane0.start_s).sum()) if len(lane0) else 0.0
    return total / max(len(res.steps), 1)


def _compare(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    rr, ex = results["round-robin"], results["exflow"]
    return {
        f"{prefix}assignment_cross_reduction": 1 - ex["assignment_cross_share"] / rr["assignment_cross_share"],
        f"{prefix}transition_cross_reduction": 1 - ex["transition_cross_share"] / rr["transition_cross_share"],
        f"{prefix}cc_all_to_all_reduction": 1 - ex["cc_all_to_all_per_step_s"] / rr["cc_all_to_all_per_step_s"],
        f"{prefix}cc_step_speedup_vs_sim_round_robin": rr["sim_step_mean_s"] / ex["cc_step_mean_s"],
        f"{prefix}cc_step_speedup_vs_cc_round_robin": rr["cc_step_mean_s"] / ex["cc_step_mean_s"],
        f"{prefix}sim_step_ratio_exflow_over_round_robin": ex["sim_step_mean_s"] / rr["sim_step_mean_s"],
        f"{prefix}sim_all_to_all_share_round_robin": rr["sim_all_to_all_per_step_s"] / rr["sim_step_mean_s"],
        f"{prefix}engine_cc_cross_reduction": 1
        - ex["engine_cc_cross_device_share"] / rr["engine_cc_cross_device_share"],
        f"{prefix}engine_cc_all_to_all_reduction": 1
        - ex["engine_cc_all_to_all_per_step_s"] / rr["engine_cc_all_to_all_per_step_s"],
        f"{prefix}engine_cc_step_speedup_vs_sim_round_robin": rr["sim_step_mean_s"] / ex["engine_cc_step_mean_s"],
        f"{prefix}engine_cc_step_speedup_vs_engine_cc_round_robin": rr["engine_cc_step_mean_s"]
        / ex["engine_cc_step_mean_s"],
    }


def pcie_platform() -> Platform:
    """The DGX H100 with its NVLink fabric replaced by PCIe Gen5 x16 (8 H100s without NVLink, as in
    PCIe servers; a topology assumption, the link's numbers are the ``pcie-gen5-x16`` preset's)."""
    base = get_platform("dgx-h100")
    return dataclasses.replace(
        base,
        name="8xh100-pcie5-fabric",
        peer_link=get_link("pcie-gen5-x16"),
        source=base.source + "; peer link replaced by pcie-gen5-x16 (assumption)",
    )


def run_scenario(
    *,
    n_requests: int = 100,
    batch: int = 64,
    seed: int = 0,
    shared: Path = SHARED,
    out: Path | None = None,
    pcie: bool = True,
) -> dict[str, Any]:
    """Run the scenario; returns the summary dict (see module docstring). ``pcie`` adds the variant
    with a PCIe Gen5 peer fabric instead of NVLink (``results_pcie``, ``pcie_*`` comparison keys)."""
    trace = load_trace(shared)
    ids = np.unique(trace.request)
    train_ids, test_ids = ids[: ids.size // 2], ids[ids.size // 2 :]
    train = trace.select_requests(train_ids)
    test = trace.select_requests(test_ids)
    stats = RoutingStats.from_trace(train)
    platform = get_platform("dgx-h100")
    stream = PromptReplay(trace, test_ids[:n_requests])
    kw: dict[str, Any] = {
        "trace": trace,
        "train": train,
        "test": test,
        "stats": stats,
        "stream": stream,
        "batch": batch,
        "seed": seed,
        "out": out,
    }
    results = _play(platform, tag="", **kw)
    comparison = _compare(results)
    summary: dict[str, Any] = {
        "setting": {
            "model": "deepseek-v2-lite",
            "platform": platform.name,
            "n_devices": platform.n_accelerators,
            "seed": seed,
            "trace": "shared/traces/deepseek-v2-lite (real, 200 prompts, prefill routing)",
            "train_prompts": int(train_ids.size),
            "held_out_prompts": int(test_ids.size),
            "served_requests": len(stream.requests),
            "decode_tokens_per_request": DECODE_TOKENS,
            "batch": batch,
        },
        "paper": {
            "source": "ExFlow, Yao et al., IPDPS 2024, arXiv 2401.08383 ([P] hardware-and-papers.md s.4)",
            "cross_gpu_routing_latency_reduction": "up to 67%",
            "throughput": "up to 2.2x vs DeepSpeed-MoE",
        },
        "results": results,
        "comparison": comparison,
    }
    if pcie:
        pl = pcie_platform()
        summary["results_pcie"] = _play(pl, tag="pcie_", **kw)
        summary["setting"]["pcie_platform"] = pl.name
        comparison |= _compare(summary["results_pcie"], "pcie_")
    return summary


def table(summary: dict[str, Any]) -> str:
    out = [_table(summary["results"], summary["comparison"], "", "NVLink 4 (dgx-h100)")]
    if "results_pcie" in summary:
        out.append(_table(summary["results_pcie"], summary["comparison"], "pcie_", "PCIe Gen5 fabric"))
    return "\n".join(out)


def _table(results: dict[str, Any], comp: dict[str, float], prefix: str, title: str) -> str:
    rows = [
        title,
        f"{'placement':<14} {'trans x%':>8} {'assign x%':>9} {'sim step ms':>11} {'sim a2a ms':>10} "
        f"{'CC a2a ms':>9} {'CC step ms':>10} {'eng x%':>6} {'eng CC x%':>9} {'eng CC a2a':>10} "
        f"{'eng CC step':>11} {'solve s':>7}",
    ]
    for name, r in results.items():
        rows.append(
            f"{name:<14} {100 * r['transition_cross_share']:>8.1f} {100 * r['assignment_cross_share']:>9.1f} "
            f"{1e3 * r['sim_step_mean_s']:>11.3f} {1e3 * r['sim_all_to_all_per_step_s']:>10.3f} "
            f"{1e3 * r['cc_all_to_all_per_step_s']:>9.3f} {1e3 * r['cc_step_mean_s']:>10.3f} "
            f"{100 * r['sim_cross_device_share']:>6.1f} {100 * r['engine_cc_cross_device_share']:>9.1f} "
            f"{1e3 * r['engine_cc_all_to_all_per_step_s']:>10.3f} {1e3 * r['engine_cc_step_mean_s']:>11.3f} "
            f"{r.get('solve_s', 0.0):>7.2f}"
        )
    rows.append(
        f"ExFlow vs round-robin: assignment cross-device share "
        f"-{100 * comp[prefix + 'assignment_cross_reduction']:.1f}%, context-coherent all-to-all "
        f"-{100 * comp[prefix + 'cc_all_to_all_reduction']:.1f}%, step speedup "
        f"{comp[prefix + 'cc_step_speedup_vs_sim_round_robin']:.2f}x over classic EP round-robin "
        f"(all-to-all = {100 * comp[prefix + 'sim_all_to_all_share_round_robin']:.0f}% of a classic step)"
    )
    rows.append(
        f"engine, context-coherent EP: ExFlow vs round-robin cross-device share "
        f"-{100 * comp[prefix + 'engine_cc_cross_reduction']:.1f}%, all-to-all "
        f"-{100 * comp[prefix + 'engine_cc_all_to_all_reduction']:.1f}%, step speedup "
        f"{comp[prefix + 'engine_cc_step_speedup_vs_engine_cc_round_robin']:.2f}x (both context-coherent), "
        f"{comp[prefix + 'engine_cc_step_speedup_vs_sim_round_robin']:.2f}x over classic EP round-robin"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = study_parser("scenario2_deepseek_exflow", __doc__)
    ap.add_argument("--requests", type=int, default=None, help="requests (default 100; --reduced 8)")
    ap.add_argument("--batch", type=int, default=None, help="max batch (default 64; --reduced 8)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--timelines", action="store_true", help="also write timeline_<placement>.html")
    args = ap.parse_args(argv)
    start(args)
    summary = run_scenario(
        n_requests=args.requests or (8 if args.reduced else 100),
        batch=args.batch or (8 if args.reduced else 64),
        seed=args.seed,
        shared=args.shared,
        out=args.out if args.timelines else None,
    )
    return finish(args, summary, table(summary))


if __name__ == "__main__":
    sys.exit(main())
