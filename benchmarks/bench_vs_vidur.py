"""Simulation speed against Vidur (microsoft/vidur) on Vidur's own kind of workload.

A dense Llama-2-7B served on one H100, 300 Poisson requests, the same arrivals and lengths for
both simulators (drawn here with numpy, seed 0, and handed to Vidur as a trace-replay CSV):

* ours: the dense model expressed as an MoE with ONE expert per layer and top-1 (every token is
  routed to expert 0, whose FFN is Llama-2-7B's: d_model 4096, FFN 11008, 32 layers, 32 heads,
  bf16), on the ``h100-pcie5-host`` platform, every expert resident, continuous batching with
  ``max_batch`` and ``max_tokens`` equal to Vidur's ``vllm`` scheduler caps.
* Vidur: its own source tree (a checkout of the git repository, NOT the PyPI build), run offline in
  its own virtual environment (``--vidur-python``), ``WANDB_MODE=disabled``, device ``h100``,
  ``h100_pairwise_nvlink``, TP 1, the ``vllm`` replica scheduler, the random-forest execution-time
  predictor reduced to one grid point (250 trees, depth 16, min split 2; 2-fold CV) so that its
  one-off training fits the run, plots and chrome trace off (both make Vidur slower, so turning
  them off favours Vidur).

Vidur's predictor is trained on profiling CSVs under ``data/profiling`` of its repository. The
attention profiles (``data/profiling/compute/<sku>/<model>/attention.csv``, ~10 MB each) are
absent from the offline snapshot available here (files of 4 MiB and more are not mirrored), are
not in its PyPI wheel or sdist, and re-profiling needs a GPU. Unless ``--attention-csv`` gives the
real file, the runner writes a STAND-IN attention table in Vidur's schema into a temporary
directory: a roofline of Llama-2-7B attention on an H100 (decode: KV bytes / 3.35 TB/s HBM;
prefill: 4 x chunk x context x 4096 FLOPs at 60 % of 989 TFLOP/s bf16; plus 9 us per call, the
decode latency at batch 1 and context 32 in the first rows of Vidur's A100 file) -- an
ASSUMPTION, labelled in the output. Vidur's MLP, norm and projection costs come from its real
shipped profiles. The speed comparison does not depend on the attention numbers (Vidur tabulates
every prediction before it simulates); its predicted TTFT/TPOT partly do.

Reported: for each simulator, simulated tokens (prompt + output), wall and CPU seconds, CPU and
wall microseconds per simulated token (Vidur: the ``Simulator.run`` loop alone, and set-up
included; CPU time is the figure of merit, a shared 2-core machine makes wall time noisy), and
the predicted TTFT / TPOT (mean and p50; Vidur's TPOT is its
``decode_time_execution_plus_preemption_normalized``, ours ``tpot``).

    python benchmarks/bench_vs_vidur.py --vidur /work/vidur --vidur-python /work/vidur-venv/bin/python \\
        [--tree /path/to/a/worktree] [--repeat 3] [--json out.json] [--n-requests 300] [--qps 2.0]

Ours is the ``codesign`` of ``--tree`` (default: the repository this script lives in, put first on
``sys.path``; checked after the import, and its git commit printed), so a clean ``git worktree`` of
a commit can be measured while the main checkout is being edited.

Environment variables ``VIDUR_SRC`` and ``VIDUR_PYTHON`` stand for the two flags. Not a test:
prints a markdown table and exits 0; exits 1 with Vidur's stderr tail when Vidur fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Llama-2-7B (HF meta-llama/Llama-2-7b-hf config.json): the numbers Vidur's
#: ``Llama2_7BModelConfig`` also uses.
LLAMA2_7B = {"n_layers": 32, "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "head_dim": 128, "ffn": 11008}

# H100-SXM datasheet peaks used only by the stand-in attention table (assumptions, see module doc).
_H100_HBM_BPS = 3.35e12
_H100_BF16_FLOPS = 989e12
_PREFILL_EFFICIENCY = 0.6
_CALL_OVERHEAD_MS = 0.009


def draw_workload(n: int, qps: float, prompt: tuple[int, int], output: tuple[int, int], seed: int) -> dict[str, Any]:
    """Poisson arrivals (first one after one inter-arrival gap) and uniform integer lengths."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, size=n))
    p = rng.integers(prompt[0], prompt[1] + 1, size=n)
    o = rng.integers(output[0], output[1] + 1, size=n)
    return {"arrival_s": arrivals, "prompt": p, "output": o}


def write_standin_attention(path: Path, *, max_tokens: int, max_batch: int) -> None:
    """A roofline attention table for Llama-2-7B on an H100 in Vidur's ``attention.csv`` schema
    (times in ms per layer call). An assumption standing in for the absent profile."""
    d, h, hd = LLAMA2_7B["d_model"], LLAMA2_7B["n_heads"], LLAMA2_7B["head_dim"]
    kv_bytes_per_token = 2 * LLAMA2_7B["n_kv_heads"] * hd * 2  # K and V, bf16
    rows = []
    kv_grid = [0, *range(64, max_tokens + 1, 128)]
    for batch in sorted({1, 2, 4, 8, 16, 32, 64, 96, 128, max_batch}):
        for kv in kv_grid:
            if kv == 0:
                continue
            t = _CALL_OVERHEAD_MS + 1e3 * batch * kv * kv_bytes_per_token / _H100_HBM_BPS
            rows.append((batch, 0, kv, "", f"{t:.6f}"))
    for chunk in sorted({1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096}):
        for kv in kv_grid:
            if kv + chunk > max_tokens:
                continue
            flops = 4.0 * chunk * (kv + chunk / 2.0) * h * hd
            t = _CALL_OVERHEAD_MS + 1e3 * flops / (_PREFILL_EFFICIENCY * _H100_BF16_FLOPS)
            rows.append((1, chunk, kv, f"{t:.6f}", ""))
    head = (
        "time_stats.attn_prefill.median,time_stats.attn_decode.median,time_stats.attn_kv_cache_save.median,"
        "n_embd,n_q_head,n_kv_head,block_size,num_tensor_parallel_workers,max_model_len,batch_size,"
        "prefill_chunk_size,kv_cache_size,is_prefill,attention_backend"
    )
    with path.open("w") as fh:
        fh.write(head + "\n")
        for batch, chunk, kv, tp, tdec in rows:
            fh.write(
                f"{tp},{tdec},0,{d},{h},{LLAMA2_7B['n_kv_heads']},16,1,{max_tokens},{batch},{chunk},{kv},"
                f"{chunk > 0},AttentionBackend.FLASH_ATTENTION\n"
            )


# The driver runs inside Vidur's venv with Vidur's checkout as the working directory; it is the
# runner's code, not Vidur's. argv[1] is a JSON list of Vidur CLI arguments.
_VIDUR_DRIVER = r"""
import json, resource, sys, time
sys.argv = ["vidur"] + json.loads(sys.argv[1])
sys.path.insert(0, ".")
t0, c0 = time.perf_counter(), time.process_time()
from vidur.config import SimulationConfig
from vidur.simulator import Simulator
from vidur.utils.random import set_seeds
config = SimulationConfig.create_from_cli_args()
set_seeds(config.seed)
sim = Simulator(config)
t1, c1 = time.perf_counter(), time.process_time()
sim.run()
t2, c2 = time.perf_counter(), time.process_time()
store = sim.metric_store
series = {}
for ds in list(store._request_metrics_time_distributions.values()):
    df = ds._to_df()
    series[ds._y_name] = [float(x) for x in df[ds._y_name].tolist()]
print("VIDUR_RESULT " + json.dumps({
    "setup_wall_s": t1 - t0, "setup_cpu_s": c1 - c0, "run_wall_s": t2 - t1, "run_cpu_s": c2 - c1,
    "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    "output_dir": config.metrics_config.output_dir, "series": series,
}))
"""


def run_vidur(
    vidur: Path, python: str, work: dict[str, Any], tmp: Path, attention_csv: Path | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Run Vidur on the workload; timings, its per-request TTFT/TPOT series and what it used."""
    trace = tmp / "trace.csv"
    with trace.open("w") as fh:
        fh.write("arrived_at,num_prefill_tokens,num_decode_tokens\n")
        for a, p, o in zip(work["arrival_s"], work["prompt"], work["output"], strict=True):
            fh.write(f"{a:.9f},{int(p)},{int(o)}\n")
    standin = attention_csv is None
    if attention_csv is None:
        attention_csv = tmp / "attention_standin.csv"
        write_standin_attention(attention_csv, max_tokens=args.max_model_len, max_batch=args.max_batch)
    rf = "random_forrest_execution_time_predictor_config"
    cli = [
        "--replica_config_device", "h100",
        "--replica_config_network_device", "h100_pairwise_nvlink",
        "--replica_config_model_name", "meta-llama/Llama-2-7b-hf",
        "--replica_config_tensor_parallel_size", "1",
        "--replica_config_num_pipeline_stages", "1",
        "--cluster_config_num_replicas", "1",
        "--request_generator_config_type", "trace_replay",
        "--trace_request_generator_config_trace_file", str(trace),
        "--trace_request_generator_config_max_tokens", str(args.max_model_len),
        "--replica_scheduler_config_type", "vllm",
        "--vllm_scheduler_config_batch_size_cap", str(args.max_batch),
        "--vllm_scheduler_config_max_tokens_in_batch", str(args.max_tokens),
        "--execution_time_predictor_config_type", "random_forrest",
        f"--{rf}_attention_input_file", str(attention_csv),
        f"--{rf}_num_estimators", "250",
        f"--{rf}_max_depth", "16",
        f"--{rf}_min_samples_split", "2",
        f"--{rf}_k_fold_cv_splits", "2",
        f"--{rf}_prediction_max_batch_size", str(args.max_batch),
        f"--{rf}_prediction_max_tokens_per_request", str(args.max_model_len),
        f"--{rf}_prediction_max_prefill_chunk_size", str(args.max_model_len),
        "--metrics_config_output_dir", str(tmp / "vidur-out"),
        "--metrics_config_cache_dir", str(args.vidur_cache or tmp / "vidur-cache"),
        "--no-metrics_config_store_plots",
        "--no-metrics_config_enable_chrome_trace",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(vidur)}
    proc = subprocess.run(
        [python, "-c", _VIDUR_DRIVER, json.dumps(cli)],
        cwd=str(vidur),
        env=env,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VIDUR_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"Vidur failed (exit {proc.returncode}):\n{proc.stderr[-6000:]}")
    out = dict(json.loads(line[len("VIDUR_RESULT ") :]))
    out["attention_table"] = "roofline stand-in (assumption)" if standin else str(attention_csv)
    out["cli"] = cli
    return out


class _Stream:
    """Requests plus all-zeros routing (one expert, top-1): ``.requests`` and ``.routing(r)``."""

    def __init__(self, work: dict[str, Any], n_layers: int) -> None:
        from workloads.requests import Request

        self.requests = tuple(
            Request(request_id=i, arrival_s=float(a), prompt_tokens=int(p), output_tokens=int(o))
            for i, (a, p, o) in enumerate(zip(work["arrival_s"], work["prompt"], work["output"], strict=True))
        )
        self._n_layers = n_layers

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        rows = int(request.prompt_tokens) + int(request.output_tokens)
        return np.zeros((rows, self._n_layers, 1), dtype=np.int16)


def run_ours(work: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Our simulator on the dense-as-MoE Llama-2-7B; timings and summary figures."""
    import codesign

    origin = Path(codesign.__file__).resolve()
    if args.tree.resolve() not in origin.parents:
        raise RuntimeError(f"codesign imported from {origin}, not from --tree {args.tree}")
    from codesign.mapping import BatchingSpec, CacheSpec, Mapping
    from codesign.simulate import simulate
    from hwmodels import get_platform
    from workloads.model import MoEModel

    model = MoEModel(
        name="llama-2-7b-as-moe",
        n_layers=LLAMA2_7B["n_layers"],
        d_model=LLAMA2_7B["d_model"],
        n_heads=LLAMA2_7B["n_heads"],
        n_kv_heads=LLAMA2_7B["n_kv_heads"],
        head_dim=LLAMA2_7B["head_dim"],
        expert_ffn_dim=LLAMA2_7B["ffn"],
        n_experts=1,
        top_k=1,
        vocab_size=32000,
        source="HF meta-llama/Llama-2-7b-hf config.json as a 1-expert top-1 MoE (bench_vs_vidur)",
    )
    platform = get_platform("h100-pcie5-host")
    stream = _Stream(work, model.n_moe_layers)
    mapping = Mapping(
        cache=CacheSpec(policy="lru", expert_fraction=1.0),
        batching=BatchingSpec(max_batch=args.max_batch, max_tokens=args.max_tokens),
    )
    w0, c0 = time.perf_counter(), time.process_time()
    result = simulate(model, platform, stream, mapping, seed=0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    s = result.summary
    req = result.requests
    ttft = np.asarray(getattr(req, "ttft_s", []), dtype=float)
    tpot = np.asarray(getattr(req, "tpot_s", []), dtype=float)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": len(result.steps),
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "ttft_mean_s": float(np.nanmean(ttft)) if ttft.size else float(s.get("ttft_mean_s", float("nan"))),
        "ttft_p50_s": float(s.get("ttft_p50_s", float("nan"))),
        "tpot_mean_s": float(np.nanmean(tpot)) if tpot.size else float(s.get("tpot_mean_s", float("nan"))),
        "tpot_p50_s": float(s.get("tpot_p50_s", float("nan"))),
    }


def _git_rev(tree: Path) -> str:
    """Short commit of the checkout at ``tree`` (with ``+dirty`` when it has uncommitted changes), or ''."""
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if rev.returncode != 0:
        return ""
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def _vidur_metric(series: dict[str, list[float]], *names: str) -> tuple[float, float]:
    for n in names:
        if series.get(n):
            v = np.asarray(series[n], dtype=float)
            return float(np.mean(v)), float(np.median(v))
    return float("nan"), float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="our simulator vs Vidur, dense Llama-2-7B, Poisson requests")
    ap.add_argument("--vidur", type=Path, default=os.environ.get("VIDUR_SRC"), help="Vidur checkout (or VIDUR_SRC)")
    ap.add_argument("--vidur-python", default=os.environ.get("VIDUR_PYTHON", "python"), help="python of Vidur's venv")
    ap.add_argument("--attention-csv", type=Path, help="Vidur's real attention.csv for Llama-2-7B on H100, if at hand")
    ap.add_argument(
        "--tree",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the repository (or git worktree) whose codesign is measured (default: this script's)",
    )
    ap.add_argument("--n-requests", type=int, default=300)
    ap.add_argument("--qps", type=float, default=2.0, help="Poisson arrival rate, requests/s (default 2)")
    ap.add_argument("--prompt", type=int, nargs=2, default=(128, 1024), metavar=("LO", "HI"))
    ap.add_argument("--output", type=int, nargs=2, default=(32, 256), metavar=("LO", "HI"))
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch (both simulators)")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument(
        "--vidur-cache",
        type=Path,
        help="keep Vidur's trained predictors here between runs (default: a temporary directory, so set-up is timed)",
    )
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each simulator this many times, alternating (Vidur in a fresh process each time); the "
        "table shows each one's run of median CPU time, every run's CPU time is listed (default 1)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.vidur is None or not (args.vidur / "vidur" / "simulator.py").is_file():
        ap.error(f"--vidur (or VIDUR_SRC) must be a Vidur source checkout with vidur/simulator.py, got {args.vidur}")
    if args.attention_csv is not None and not args.attention_csv.is_file():
        ap.error(f"--attention-csv {args.attention_csv}: no such file")
    if args.prompt[1] + args.output[1] > args.max_model_len:
        ap.error(f"--prompt HI + --output HI must be <= --max-model-len {args.max_model_len}")
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    if not (args.tree / "codesign" / "engine.py").is_file():
        ap.error(f"--tree {args.tree}: not a checkout of this repository (no codesign/engine.py)")
    sys.path.insert(0, str(args.tree.resolve()))
    work = draw_workload(args.n_requests, args.qps, tuple(args.prompt), tuple(args.output), seed=0)
    tokens = int(work["prompt"].sum() + work["output"].sum())
    ours_runs: list[dict[str, Any]] = []
    vid_runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):  # alternating, so that both see the same machine load
        ours_runs.append(run_ours(work, args))
        with tempfile.TemporaryDirectory(prefix="bench-vidur-") as tmp:
            vid_runs.append(
                run_vidur(args.vidur.resolve(), args.vidur_python, work, Path(tmp), args.attention_csv, args)
            )
    ours = sorted(ours_runs, key=lambda r: r["cpu_s"])[(len(ours_runs) - 1) // 2]
    vid = sorted(vid_runs, key=lambda r: r["run_cpu_s"])[(len(vid_runs) - 1) // 2]
    v_ttft = _vidur_metric(vid["series"], "prefill_e2e_time")
    v_tpot = _vidur_metric(vid["series"], "decode_time_execution_plus_preemption_normalized")
    git = _git_rev(args.vidur)
    ours_git = _git_rev(args.tree)
    print(
        f"workload: {args.n_requests} Poisson requests at {args.qps} req/s, prompt U{list(args.prompt)}, "
        f"output U{list(args.output)}; {tokens:,} simulated tokens; one H100; batch cap {args.max_batch}, "
        f"{args.max_tokens} tokens/batch"
    )
    print(
        f"ours: {args.tree} (git {ours_git or '?'}); Vidur: {args.vidur} (git {git or '?'}), "
        f"attention table: {vid['attention_table']}\n"
    )
    print(
        "| simulator | wall s | CPU s | us CPU / sim. token | us wall / sim. token | TTFT mean ms | TTFT p50 ms "
        "| TPOT mean ms | TPOT p50 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| ours (1 expert, top-1; {ours['steps']:,} steps) | {ours['wall_s']:.2f} | {ours['cpu_s']:.2f} | "
        f"{1e6 * ours['cpu_s'] / tokens:.2f} | {1e6 * ours['wall_s'] / tokens:.2f} | "
        f"{1e3 * ours['ttft_mean_s']:.1f} | {1e3 * ours['ttft_p50_s']:.1f} | "
        f"{1e3 * ours['tpot_mean_s']:.2f} | {1e3 * ours['tpot_p50_s']:.2f} |"
    )
    print(
        f"| Vidur, simulation loop | {vid['run_wall_s']:.2f} | {vid['run_cpu_s']:.2f} | "
        f"{1e6 * vid['run_cpu_s'] / tokens:.2f} | {1e6 * vid['run_wall_s'] / tokens:.2f} | "
        f"{1e3 * v_ttft[0]:.1f} | {1e3 * v_ttft[1]:.1f} | "
        f"{1e3 * v_tpot[0]:.2f} | {1e3 * v_tpot[1]:.2f} |"
    )
    total_w = vid["setup_wall_s"] + vid["run_wall_s"]
    total_c = vid["setup_cpu_s"] + vid["run_cpu_s"]
    print(
        f"| Vidur, incl. set-up (predictor training) | {total_w:.2f} | {total_c:.2f} | "
        f"{1e6 * total_c / tokens:.2f} | {1e6 * total_w / tokens:.2f} | | | | |"
    )
    ratio = vid["run_cpu_s"] / ours["cpu_s"] if ours["cpu_s"] > 0 else float("nan")
    print(
        f"\nCPU per simulated token, Vidur's simulation loop / ours: {ratio:.2f} (>1: ours faster); CPU time is "
        f"the figure of merit on a shared machine (load average now {os.getloadavg()[0]:.1f})"
    )
    if args.repeat > 1:
        ours_cpu = ", ".join(f"{r['cpu_s']:.2f}" for r in ours_runs)
        vid_cpu = ", ".join(f"{r['run_cpu_s']:.2f}" for r in vid_runs)
        ratios = sorted(v["run_cpu_s"] / o["cpu_s"] for o, v in zip(ours_runs, vid_runs, strict=True))
        print(
            f"{args.repeat} alternating runs (rows above: each one's median), CPU s: ours {ours_cpu}; Vidur's loop "
            f"{vid_cpu}; per-pair ratio {ratios[0]:.2f} .. {ratios[-1]:.2f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "workload": {k: np.asarray(v).tolist() for k, v in work.items()},
                    "tokens": tokens,
                    "ours": ours | {"tree": str(args.tree), "git": ours_git},
                    "vidur": {k: v for k, v in vid.items() if k != "series"}
                    | {"git": git}
                    | {
                        "ttft_mean_s": v_ttft[0],
                        "ttft_p50_s": v_ttft[1],
                        "tpot_mean_s": v_tpot[0],
                        "tpot_p50_s": v_tpot[1],
                    },
                    "cpu_ratio_vidur_loop_over_ours": ratio,
                    "runs": {
                        "ours_cpu_s": [r["cpu_s"] for r in ours_runs],
                        "vidur_loop_cpu_s": [r["run_cpu_s"] for r in vid_runs],
                        "vidur_setup_cpu_s": [r["setup_cpu_s"] for r in vid_runs],
                    },
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
