"""``codesign simulate``: play a workload on a model x platform x mapping and print the summary.

    codesign simulate --model mixtral-8x7b --platform h100-pcie5-host --trace mixtral.npz \\
        --hbm-expert-fraction 0.25 --cache lru --prefetch pregate --requests 4 --json

The workload is a `workloads.requests.RequestStream`: requests replay a routing trace
(``--trace``, a canonical ``.npz``) or sample a fitted routing process (``--process``, JSON). All
requests arrive at t = 0 (a closed batch) unless ``--rate`` gives Poisson arrivals per second.
``--json`` prints one JSON object (the summary: ``tpot_p50_s``, ``tpot_p99_s``, ``ttft_p50_s``,
``throughput_tok_s``, ``hit_rate`` per tier, ``bytes_moved`` per link, ``energy_j_per_token`` ...,
plus ``config_hash``); ``--out DIR`` writes ``requests.csv``, ``steps.csv``, ``summary.json``,
``config.json``, ``events.csv``, ``timeline.html`` and ``cost_breakdown.html`` (events are recorded
for the timeline).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Rows of the printed summary table: (key, label, scale, unit).
_TABLE: tuple[tuple[str, str, float, str], ...] = (
    ("n_requests", "requests", 1.0, ""),
    ("output_tokens", "output tokens", 1.0, ""),
    ("makespan_s", "makespan", 1.0, "s"),
    ("ttft_p50_s", "TTFT p50", 1e3, "ms"),
    ("ttft_p99_s", "TTFT p99", 1e3, "ms"),
    ("tpot_p50_s", "TPOT p50", 1e3, "ms"),
    ("tpot_p90_s", "TPOT p90", 1e3, "ms"),
    ("tpot_p99_s", "TPOT p99", 1e3, "ms"),
    ("throughput_tok_s", "throughput", 1.0, "tok/s"),
    ("energy_j_per_token", "energy per token", 1.0, "J"),
    ("cost_per_million_tokens_usd", "cost per 1M tokens", 1.0, "USD"),
    ("cross_device_share", "cross-device assignments", 100.0, "%"),
)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` top-level command."""
    p = sub.add_parser(
        "simulate", parents=parents, help="simulate serving a workload on a platform",
        description="Simulate MoE inference: a request stream (trace replay or routing process) served by a "
                    "model laid out on a platform by a mapping; prints the summary.")
    p.add_argument("--model", required=True, help="model preset (codesign presets models)")
    p.add_argument("--platform", required=True, help="platform preset (codesign presets platforms)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--trace", type=Path, help="routing trace to replay (.npz, canonical format)")
    src.add_argument("--process", default="default",
                     help="fitted routing process to sample: PROCESS.json, or 'default' (the embedded "
                          "workload of --model, the default) or 'default:MODEL'")
    p.add_argument("--cache", default="lru", help="cache policy (default lru; codesign presets policies)")
    p.add_argument("--cache-option", action="append", default=[], metavar="KEY=VALUE",
                   help="cache policy option, repeatable (e.g. per_layer=true)")
    p.add_argument("--prefetch", default="none", help="prefetch policy (default none)")
    p.add_argument("--prefetch-option", action="append", default=[], metavar="KEY=VALUE",
                   help="prefetch policy option, repeatable (e.g. accuracy=0.9)")
    p.add_argument("--miss", default="fetch", help="miss policy: fetch | cpu | cost (default fetch)")
    p.add_argument("--placement", default="round-robin", help="placement across devices (default round-robin)")
    p.add_argument("--scheduler", default="fifo", help="token scheduler (default fifo)")
    p.add_argument("--hbm-expert-fraction", type=float, default=1.0, metavar="F",
                   help="fraction of each device's experts held in its HBM cache, in [0, 1] (default 1)")
    p.add_argument("--near-tier", default=None, help="faster tier above the cache caching used experts (e.g. sram)")
    p.add_argument("--near-experts", type=int, default=None, help="slots of the near tier per device")
    p.add_argument("--near-policy", default="lru", help="replacement policy of the near tier (default lru)")
    p.add_argument("--devices", type=int, default=None, help="expert-parallel degree (default: all accelerators)")
    p.add_argument("--backing", default="host", help="where offloaded experts live: host | a device tier (ddr)")
    p.add_argument("--batch", type=int, default=64, metavar="N", help="max requests per batch (default 64)")
    p.add_argument("--max-tokens", type=int, default=8192, help="token budget per step (default 8192)")
    p.add_argument("--requests", type=int, default=None, metavar="N",
                   help="number of requests (default: every request of the trace, or 16 for a process)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per request (default 64)")
    p.add_argument("--output-len", type=int, default=128, help="output tokens per request (default 128)")
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second (default: all at t=0)")
    p.add_argument("--train-fraction", type=float, default=0.0,
                   help="share of the requests used only to fit policies (default 0)")
    p.add_argument("--precision", default=None, help="weight precision override: bf16 | fp8 | int4 ...")
    p.add_argument("--fidelity", default="calibrated", choices=("calibrated", "roofline"), help="cost model fidelity")
    p.add_argument("--seed", type=int, default=0, help="seed of every policy and stream (default 0)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write records, summary, config, timeline")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def build_stream(args: argparse.Namespace, model: Any) -> Any:
    """The `RequestStream` the arguments describe."""
    from workloads.requests import ProcessRouting, RequestStream, TraceReplay

    if args.trace is not None:
        from workloads.trace import RoutingTrace

        trace = RoutingTrace.load(args.trace)
        if trace.n_moe_layers != model.n_moe_layers or trace.n_experts != model.n_experts:
            raise ValueError(f"{args.trace}: trace has {trace.n_moe_layers} MoE layers x {trace.n_experts} experts; "
                             f"model {model.name!r} has {model.n_moe_layers} x {model.n_experts}")
        routing: Any = TraceReplay(trace)
        default_n = trace.n_requests
    else:
        process = _load_process(str(args.process), model.name)
        routing = ProcessRouting(process, seed=args.seed)
        default_n = 16
    n = args.requests if args.requests is not None else default_n
    if n <= 0:
        raise ValueError(f"--requests must be > 0, got {n}")
    if args.prompt_len < 1 or args.output_len < 1:
        raise ValueError(f"--prompt-len and --output-len must be >= 1, got {args.prompt_len}, {args.output_len}")
    kwargs: dict[str, Any] = {"n_requests": n, "routing": routing, "seed": args.seed,
                              "prompt_len": args.prompt_len, "output_len": args.output_len}
    if args.rate is not None:
        return RequestStream.poisson(rate_per_s=args.rate, **kwargs)
    return RequestStream.closed(**kwargs)


def _load_process(spec: str, model_name: str) -> Any:
    """A routing process from a JSON file, or the package's embedded default workload:
    ``default`` (the one of ``model_name``) or ``default:MODEL``."""
    from workloads.defaults import default_process
    from workloads.process import RoutingProcess

    if spec == "default":
        return default_process(model_name)
    if spec.startswith("default:"):
        return default_process(spec.split(":", 1)[1])
    return RoutingProcess.load(spec)


def parse_options(items: list[str], flag: str) -> tuple[tuple[str, bool | int | float | str], ...]:
    """``KEY=VALUE`` strings -> sorted option pairs; values parse as bool (true/false), int, float,
    else str."""
    out: dict[str, bool | int | float | str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        value: bool | int | float | str
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        out[key] = value
    return tuple(sorted(out.items()))


def build_mapping(args: argparse.Namespace) -> Any:
    """The `Mapping` the arguments describe."""
    from codesign.mapping import BatchingSpec, CacheSpec, Mapping

    near = None
    if args.near_tier is not None:
        if args.near_experts is None:
            raise ValueError("--near-tier needs --near-experts N (slots per device)")
        near = CacheSpec(policy=args.near_policy, tier=args.near_tier, capacity_experts=args.near_experts)
    return Mapping(
        n_devices=args.devices, placement=args.placement, backing=args.backing, near=near,
        cache=CacheSpec(policy=args.cache, expert_fraction=args.hbm_expert_fraction,
                        options=parse_options(args.cache_option, "--cache-option")),
        prefetch=args.prefetch, prefetch_options=parse_options(args.prefetch_option, "--prefetch-option"),
        miss=args.miss, train_fraction=args.train_fraction,
        batching=BatchingSpec(scheduler=args.scheduler, max_batch=args.batch, max_tokens=args.max_tokens),
    )


def _fmt(value: Any, scale: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, int) and scale == 1.0:
        return f"{value}{(' ' + unit) if unit else ''}"
    return f"{float(value) * scale:.4g}{(' ' + unit) if unit else ''}"


def summary_table(summary: dict[str, Any]) -> str:
    """The human-readable summary (one figure per line)."""
    lines = [f"{label:<26} {_fmt(summary.get(key), scale, unit)}" for key, label, scale, unit in _TABLE]
    for tier, rate in sorted(summary.get("hit_rate", {}).items()):
        lines.append(f"{'hit rate ' + tier:<26} {100 * rate:.1f} %")
    for link, b in sorted(summary.get("bytes_moved", {}).items()):
        lines.append(f"{'bytes over ' + link:<26} {b / 1e9:.3f} GB")
    for tier, b in sorted(summary.get("peak_memory_bytes", {}).items()):
        lines.append(f"{'peak memory ' + tier:<26} {b / 1e9:.3f} GB")
    lines.append(f"{'config hash':<26} {summary.get('config_hash', '-')}")
    return "\n".join(lines)


def write_views(result: Any, out_dir: Path) -> dict[str, Path]:
    """``timeline.html`` (Gantt of compute, transfers and all-to-all per device) and
    ``cost_breakdown.html`` through `codesign.views`."""
    from codesign import views

    return {
        "timeline": views.write_html(views.plot_timeline(views.timeline_info(result)), out_dir / "timeline.html"),
        "cost_breakdown": views.write_html(views.plot_cost_breakdown(views.cost_breakdown_info(result)),
                                           out_dir / "cost_breakdown.html"),
    }


def _cmd_simulate(args: argparse.Namespace) -> int:
    from codesign.simulate import simulate
    from hwmodels import CostModel, get_platform
    from workloads.model import get_model

    model = get_model(args.model)
    if args.precision:
        model = model.with_precision(args.precision)
    platform = get_platform(args.platform)
    mapping = build_mapping(args)
    stream = build_stream(args, model)
    cost = CostModel(platform, fidelity=args.fidelity)
    result = simulate(model, platform, stream, mapping, cost_model=cost, seed=args.seed,
                      record_events=args.out is not None,
                      progress=not args.no_progress and not args.json and sys.stderr.isatty())
    summary = result.summary_json()
    if args.out is not None:
        paths = result.save(args.out)
        paths.update(write_views(result, args.out))
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print(summary_table(summary))
        if args.out is not None:
            print(f"{'written to':<26} {args.out}")
    return 0
