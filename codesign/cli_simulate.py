"""``codesign simulate``: play a workload on a model x platform x mapping and print the summary.

    codesign simulate --model mixtral-8x7b --platform h100-pcie5-host --trace mixtral.npz \\
        --hbm-expert-fraction 0.25 --cache lru --prefetch pregate --requests 4 --json

``--model`` is a preset name or a JSON file of `workloads.model.MoEModel` fields (``name``,
``n_layers``, ``d_model``, ...; unknown or missing fields are listed); ``--platform`` a preset or a
``.toml`` platform file.

The workload is a `workloads.requests.RequestStream`: requests replay a routing trace
(``--trace``, a canonical ``.npz``) or sample a fitted routing process (``--process``, JSON, by
default the embedded workload of the model); its layers, experts and top-k are checked against the
model before the run. Arrivals (``--arrivals``): ``closed`` (all at t = 0, the default),
``poisson`` (``--rate`` per second; ``--rate`` alone implies it), ``bursty`` (Gamma renewal at
``--rate`` with inter-arrival coefficient of variation ``--burstiness``) or ``replay`` (arrival
times and lengths of a Splitwise-format CSV, ``--arrival-trace``, times multiplied by
``--time-scale``). Lengths (``--prompt-len``, ``--output-len``): an int, ``uniform:A:B``
(inclusive), or ``splitwise`` (drawn from the lengths of ``--arrival-trace``) / ``splitwise:CSV``;
with ``replay`` they default to the CSV's lengths.

Trace replay (``--trace``): request ``i`` replays recorded request ``--trace-offset + i`` (in
recorded id order, or shuffled with ``--trace-shuffle``, seeded by ``--seed``); by default every
request past the offset is simulated once. Asking for more requests than the trace holds past the
offset is an error naming the numbers and the flags, unless ``--trace-cycle`` (recorded requests are
then reused, so two requests share routing, and a warning gives the counts). Lengths with
``--trace``: each request's own recorded prompt (prefill tokens) and output (decode tokens) unless
``--prompt-len`` / ``--output-len`` is given (with ``--arrivals replay``, the CSV's). A phase the
trace did not record takes the flag's default (64 prompt, 128 output tokens): a decode-only trace
(Mixtral) has no recorded prompt, and its prompt rows replay the request's first recorded decode
tokens (prompt routing approximated by decode routing, as before); its output rows are the recorded
decode tokens in order (`workloads.requests.TraceReplay` with ``phase_rows="aligned"``). The table
says where the lengths came from. Requests whose KV cache (prompt + output - 1
tokens) exceeds what one device can hold under the mapping are clipped to it, with a warning that
gives the numbers.

Training data: policies that need it (``--placement exflow|load-balanced``, trained caches and
prefetchers such as ``--prefetch affinity``) train, with ``--process``, on a separate sample of the
process (as many tokens as the run, a fresh seed; see `codesign.simulate`); with ``--trace``, on
the first ``--train-fraction`` of the requests, which must then be given. ``--ep-execution`` picks
how tokens move between expert-parallel devices (`codesign.mapping.Mapping.ep_execution`).

Precision and serving mechanisms (issue 8): ``--precision`` sets the model-wide weight precision and
clears any per-component precision of ``--model``; then ``--<component>-precision`` (a name or bytes
per weight, metadata included) and ``--<component>-format`` (a dequantisation kernel, ``codesign
presets formats``) override one of attention, expert, shared, dense, embedding
(`workloads.model.WEIGHT_COMPONENTS`), and ``--dispatch-precision`` / ``--combine-precision`` the
all-to-all activations; a ``--model FILE.toml`` (or ``.json``) may hold the same fields.
``--stack`` names the serving stack (``codesign presets stacks``, or a stack ``.toml``),
``--kv paged`` admits a request by its prompt's KV and takes the rest a token per step, preempting
the latest admitted (which recompute) when a step would overflow (`codesign.mapping.BatchingSpec.kv`),
``--eviction copy-back`` copies victims back before a fetch, ``--offload-non-expert`` streams the
non-expert weights per layer and ``--fetch-whole-layer`` fetches every offloaded expert of a layer
(`codesign.mapping.Mapping`). The table shows each of them when it is not the default.

Every bad value is reported as one ``error: ...`` line naming the flag (or file) and what was
expected: policy options are checked against the policy's constructor (the valid ones listed),
``--out`` must be a directory, ``--seed`` a non-negative integer.

``--json`` prints one JSON object (the summary: ``tpot_p50_s``, ``tpot_p99_s``, ``ttft_p50_s``,
``throughput_tok_s``, ``hit_rate`` per tier, ``bytes_moved`` per link, ``energy_j_per_token`` ...,
plus ``config_hash``); ``--out DIR`` writes ``requests.csv``, ``steps.csv``, ``summary.json``,
``config.json``, ``events.csv``, ``timeline.html`` and ``cost_breakdown.html`` with the
``plotly.min.js`` they share (events are recorded for the timeline).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Weight components with a ``--<component>-precision`` / ``--<component>-format`` flag, and the
#: formats (`workloads.model.WEIGHT_COMPONENTS` / ``WEIGHT_FORMATS``; a test keeps them equal; kept
#: literal so that building the parser imports nothing).
_WEIGHT_COMPONENTS = ("attention", "expert", "shared", "dense", "embedding")
_WEIGHT_FORMATS = ("none", "marlin", "llamacpp-mmvq", "hqq-triton", "hqq-triton-g64", "hqq-unfused")

#: Rows of the printed summary table: (key, label, scale, unit); unit "" marks a count.
_TABLE: tuple[tuple[str, str, float, str], ...] = (
    ("n_requests", "requests", 1.0, ""),
    ("output_tokens", "output tokens", 1.0, ""),
    ("n_steps", "simulator steps", 1.0, ""),
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
        "simulate",
        parents=parents,
        help="simulate serving a workload on a platform",
        description="Simulate MoE inference: a request stream (trace replay or routing process) served by a "
        "model laid out on a platform by a mapping; prints the summary.",
    )
    p.add_argument(
        "--design",
        type=Path,
        default=None,
        metavar="DESIGN.json",
        help="replay a design file (written by codesign search/explore): model, platform, mapping, workload and "
        "cost all come from it; --out, --json, --no-progress still apply",
    )
    p.add_argument(
        "--model", default=None, help="model preset (codesign presets models) or a JSON file of MoEModel fields"
    )
    p.add_argument("--platform", default=None, help="platform preset (codesign presets platforms)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--trace",
        type=Path,
        help="routing trace to replay (.npz, canonical format); each request keeps its recorded prompt/output "
        "lengths unless --prompt-len/--output-len are given",
    )
    src.add_argument(
        "--process",
        default="default",
        help="fitted routing process to sample: PROCESS.json, or 'default' (the embedded "
        "workload of --model, the default) or 'default:MODEL'",
    )
    p.add_argument(
        "--trace-offset",
        type=int,
        default=0,
        metavar="N",
        help="--trace: start at recorded request N (0-based, default 0)",
    )
    p.add_argument(
        "--trace-shuffle",
        action="store_true",
        help="--trace: replay the recorded requests in a shuffled order (seeded by --seed)",
    )
    p.add_argument(
        "--trace-cycle",
        action="store_true",
        help="--trace: reuse recorded requests when --requests exceeds what the trace holds (requests then "
        "share routing; a warning gives the counts); without it that is an error",
    )
    p.add_argument("--cache", default="lru", help="cache policy (default lru; codesign presets policies)")
    p.add_argument(
        "--cache-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="cache policy option, repeatable (e.g. per_layer=true)",
    )
    p.add_argument("--prefetch", default="none", help="prefetch policy (default none)")
    p.add_argument(
        "--prefetch-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="prefetch policy option, repeatable (e.g. accuracy=0.9)",
    )
    p.add_argument("--miss", default="fetch", help="miss policy: fetch | cpu | cost (default fetch)")
    p.add_argument(
        "--miss-option", action="append", default=[], metavar="KEY=VALUE", help="miss policy option, repeatable"
    )
    p.add_argument(
        "--placement",
        default="round-robin",
        help="placement across devices (default round-robin; exflow and load-balanced train on "
        "routing: see --train-fraction)",
    )
    p.add_argument(
        "--placement-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="placement option, repeatable (e.g. exflow method=sequential, time_limit_s=10)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a policy plug-in module first (its policies register by name), repeatable; "
        "modules of the 'moe_codesign.policies' entry-point group load by themselves",
    )
    p.add_argument(
        "--placement-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep computed placements in DIR and reuse them in later runs with the same routing "
        "statistics, devices, policy, options and model",
    )
    p.add_argument("--scheduler", default="fifo", help="token scheduler (default fifo)")
    p.add_argument(
        "--hbm-expert-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="fraction of each device's experts held in its HBM cache, in [0, 1] (default 1)",
    )
    p.add_argument("--near-tier", default=None, help="faster tier above the cache caching used experts (e.g. sram)")
    p.add_argument("--near-experts", type=int, default=None, help="slots of the near tier per device")
    p.add_argument("--near-policy", default="lru", help="replacement policy of the near tier (default lru)")
    p.add_argument("--devices", type=int, default=None, help="expert-parallel degree (default: all accelerators)")
    p.add_argument(
        "--ep-execution",
        default="classic",
        choices=("classic", "context-coherent"),
        help="expert-parallel execution: classic (dispatch + combine all-to-all per MoE layer, the "
        "default) or context-coherent (ExFlow: a token stays on its top-1 expert's device; one "
        "all-to-all per layer)",
    )
    p.add_argument(
        "--execution",
        default="auto",
        help="kernel execution model: auto (grouped-eager on GPUs, per-expert elsewhere), grouped-eager, "
        "grouped-graph, grouped-graph-fused, per-expert-eager, per-expert-graph (hwmodels.execution)",
    )
    p.add_argument("--backing", default="host", help="where offloaded experts live: host | a device tier (ddr)")
    p.add_argument("--batch", type=int, default=64, metavar="N", help="max requests per batch (default 64)")
    p.add_argument("--max-tokens", type=int, default=8192, help="token budget per step (default 8192)")
    p.add_argument(
        "--kv",
        choices=("reserve", "paged"),
        default="reserve",
        help="KV-cache admission: reserve a request's final length (default) or take it as it grows, "
        "preempting the latest admitted (recompute) when a step would overflow (paged: vLLM, TensorRT-LLM "
        "MAX_UTILIZATION)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        metavar="N",
        help="number of requests (default: every request of --trace past --trace-offset, every row of "
        "--arrival-trace with --arrivals replay, or 16 for a process)",
    )
    p.add_argument(
        "--prompt-len",
        default=None,
        metavar="LEN",
        help="prompt tokens per request: N, uniform:A:B, splitwise (lengths of --arrival-trace) or "
        "splitwise:CSV (default: with --trace each request's recorded prompt, with --arrivals replay the "
        "CSV's, else 64)",
    )
    p.add_argument(
        "--output-len",
        default=None,
        metavar="LEN",
        help="output tokens per request, same forms as --prompt-len (default: with --trace each request's "
        "recorded output, with --arrivals replay the CSV's, else 128)",
    )
    p.add_argument(
        "--arrivals",
        default=None,
        choices=("closed", "poisson", "bursty", "replay"),
        help="arrival process (default closed: all at t=0; poisson when --rate is given)",
    )
    p.add_argument("--rate", type=float, default=None, help="mean arrivals per second (poisson, bursty)")
    p.add_argument(
        "--burstiness",
        type=float,
        default=None,
        metavar="CV",
        help="bursty: coefficient of variation of inter-arrival times (1 = Poisson, > 1 bursty)",
    )
    p.add_argument(
        "--arrival-trace",
        type=Path,
        default=None,
        metavar="CSV",
        help="Splitwise-format CSV (arrived_at, num_prefill_tokens, num_decode_tokens), e.g. "
        "shared/workloads/splitwise_code.csv: arrivals for replay, lengths for 'splitwise'",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="replay: multiply the CSV's arrival times (0.5 = twice the load; default 1)",
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=0.0,
        help="share of the requests (by arrival) used only to fit policies, in [0, 1) (default 0; "
        "needed with --trace by policies that train)",
    )
    p.add_argument(
        "--precision",
        default=None,
        help="model-wide weight precision: bf16 | fp16 | fp32 | fp8 | int4 (clears any per-component precision "
        "of --model; the --<component>-precision flags below apply after it)",
    )
    comp = p.add_argument_group(
        "precision per component",
        "override one weight component of --model (workloads.model: attention = q/k/v/o projections, expert = "
        "routed experts, shared = shared experts, dense = router + dense-layer FFNs, embedding = embeddings + "
        "LM head): PREC is a precision name or bytes per weight including quantisation metadata (0.325 = 2-bit "
        "HQQ with group-16 scales); FORMAT is the kernel that dequantises it: "
        f"{', '.join(_WEIGHT_FORMATS)} (codesign presets formats)",
    )
    for component in _WEIGHT_COMPONENTS:
        comp.add_argument(
            f"--{component}-precision", default=None, metavar="PREC", help=f"precision of the {component} weights"
        )
        comp.add_argument(
            f"--{component}-format",
            default=None,
            choices=_WEIGHT_FORMATS,
            metavar="FORMAT",
            help=f"dequantisation format of the {component} weights",
        )
    for what, role in (("dispatch", "tokens sent to their experts"), ("combine", "expert outputs sent back")):
        comp.add_argument(
            f"--{what}-precision",
            default=None,
            metavar="PREC",
            help=f"all-to-all {what} activations ({role}): a precision name or bytes per element (default bf16)",
        )
    stack = p.add_argument_group("serving stack and offloading")
    stack.add_argument(
        "--stack",
        default=None,
        metavar="NAME|PATH",
        help="serving stack charged per step (LM head, MoE permute, host CPU time): a preset (codesign presets "
        "stacks: none, trt-llm, vllm, llama.cpp, hf-eager, deepspeed-zero3) or a stack .toml file (default none)",
    )
    stack.add_argument(
        "--eviction",
        default="discard",
        choices=("discard", "copy-back"),
        help="a fetch that evicts a cached expert: discard it (the backing tier keeps a copy; default) or "
        "copy-back (copied back over the same link first, as Mixtral-offloading's swap)",
    )
    stack.add_argument(
        "--offload-non-expert",
        action="store_true",
        help="stream every layer's non-expert weights (attention, router, shared, dense) from --backing each "
        "step (ZeRO-3 offload_param); embeddings and LM head stay resident",
    )
    stack.add_argument(
        "--fetch-whole-layer",
        action="store_true",
        help="fetch every offloaded expert of an MoE layer each step whatever the routing (ZeRO-3); needs "
        "--hbm-expert-fraction < 1",
    )
    p.add_argument("--fidelity", default="calibrated", choices=("calibrated", "roofline"), help="cost model fidelity")
    p.add_argument(
        "--profile",
        default=None,
        metavar="NAME|PATH",
        help="calibration profile for every accelerator (calibrated fidelity): a shipped name (a100, h100, "
        "and h200, h100-nvl derived from h100) or a profile JSON (codesign calibrate run|import-vidur); "
        "default: the default efficiency curves with the device file's [efficiency] over them",
    )
    p.add_argument(
        "--power-limit",
        type=float,
        default=None,
        metavar="W",
        help="run the accelerators under this power limit in watts (nvidia-smi -pl, MLPerf MaxQ): the --profile's "
        "power law slows compute-bound work, memory is unchanged (needs a profile with one: h100 and those derived "
        "from it)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every policy and stream (default 0)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write records, summary, config, timeline")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # every flag that --design's file fixes: given with --design, it is refused (even at its default
    # value: the file's value would silently win over what was typed)
    fixed_actions = [
        a for a in p._actions if a.option_strings and a.dest not in _DESIGN_KEEPS and a.default is not argparse.SUPPRESS
    ]
    for a in fixed_actions:
        a.__class__ = _noting(type(a))
    fixed = tuple((max(a.option_strings, key=len), a.dest) for a in fixed_actions)
    p.set_defaults(func=_cmd_simulate, design_fixed_flags=fixed, flags_given=frozenset())


#: Destinations of the flags that apply with ``--design`` (the rest come from the design file).
_DESIGN_KEEPS = frozenset({"design", "profile", "power_limit", "out", "json", "no_progress", "plugin", "help"})


def parse_length(spec: str | None, flag: str, csv_path: Path | None, default: int) -> Any:
    """A length spec -> an int or a `workloads.requests.LengthDist`: ``N`` (>= 1), ``uniform:A:B``
    (inclusive, 1 <= A <= B), ``splitwise`` (the empirical lengths of ``csv_path``, the
    ``--arrival-trace``) or ``splitwise:CSV``; None gives ``default``."""
    from workloads.requests import LengthDist

    if spec is None:
        return default
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if kind == "uniform":
        parts = rest.split(":")
        try:
            low, high = (int(x) for x in parts)
        except ValueError:
            raise ValueError(f"{flag} {spec!r}: expected uniform:A:B with integers 1 <= A <= B") from None
        if not 1 <= low <= high:
            raise ValueError(f"{flag} {spec!r}: expected uniform:A:B with integers 1 <= A <= B")
        return LengthDist.uniform(low, high)
    if kind == "splitwise":
        path = Path(rest) if rest else csv_path
        if path is None:
            raise ValueError(
                f"{flag} splitwise draws from the lengths of --arrival-trace CSV; give --arrival-trace "
                "or use splitwise:CSV"
            )
        if flag == "--prompt-len":
            return LengthDist.from_splitwise(path, "prompt", kind="empirical")
        return LengthDist.from_splitwise(path, "output", kind="empirical")
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{flag} {spec!r}: expected an integer >= 1, uniform:A:B or splitwise[:CSV]") from None
    if n < 1:
        raise ValueError(f"{flag} {spec!r}: expected an integer >= 1")
    return n


def check_stream_args(args: argparse.Namespace) -> tuple[str, Any, Any]:
    """The arrival and length flags checked (cheap: nothing is sampled or derived); returns the
    arrival process and the prompt and output length specs (`parse_length`)."""
    arrivals = args.arrivals or ("poisson" if args.rate is not None else "closed")
    if arrivals in ("poisson", "bursty") and args.rate is None:
        raise ValueError(f"--arrivals {arrivals} needs --rate (mean requests per second)")
    if arrivals in ("closed", "replay") and args.rate is not None:
        raise ValueError(f"--rate is not used with --arrivals {arrivals}")
    if arrivals == "bursty" and args.burstiness is None:
        raise ValueError("--arrivals bursty needs --burstiness CV (coefficient of variation of inter-arrival times)")
    if arrivals != "bursty" and args.burstiness is not None:
        raise ValueError(f"--burstiness is only used with --arrivals bursty (got --arrivals {arrivals})")
    if arrivals == "replay" and args.arrival_trace is None:
        raise ValueError("--arrivals replay needs --arrival-trace CSV (Splitwise format)")
    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise ValueError(f"--rate must be a finite number of requests per second > 0, got {args.rate}")
    if args.burstiness is not None and not (args.burstiness > 0 and math.isfinite(args.burstiness)):
        raise ValueError(f"--burstiness (coefficient of variation) must be finite and > 0, got {args.burstiness}")
    if args.requests is not None and args.requests <= 0:
        raise ValueError(f"--requests must be > 0, got {args.requests}")
    offset = getattr(args, "trace_offset", 0)
    if getattr(args, "trace", None) is None:
        given = [
            flag
            for flag, on in (
                ("--trace-offset", offset != 0),
                ("--trace-shuffle", getattr(args, "trace_shuffle", False)),
                ("--trace-cycle", getattr(args, "trace_cycle", False)),
            )
            if on
        ]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --trace replay only (no --trace given)")
    elif offset < 0:
        raise ValueError(f"--trace-offset must be a non-negative recorded request number, got {offset}")
    prompt = parse_length(args.prompt_len, "--prompt-len", args.arrival_trace, 64)
    output = parse_length(args.output_len, "--output-len", args.arrival_trace, 128)
    return arrivals, prompt, output


def build_stream(args: argparse.Namespace, model: Any) -> Any:
    """The `RequestStream` the arguments describe (routing source, arrivals, lengths), checked
    against ``model`` (layers, experts, top-k) before any request is built (`build_stream_described`
    without the description)."""
    return build_stream_described(args, model)[0]


def build_stream_described(args: argparse.Namespace, model: Any) -> tuple[Any, dict[str, str]]:
    """The `RequestStream` the arguments describe and where its lengths came from
    (``{"prompt": ..., "output": ...}``, e.g. ``"recorded in --trace"``, ``"--prompt-len 16"``).

    With ``--trace``: replay per `workloads.requests.TraceReplay` (``--trace-offset``,
    ``--trace-shuffle`` seeded by ``--seed``, ``--trace-cycle``; ``phase_rows="aligned"``), more
    requests than the trace holds past the offset refused without ``--trace-cycle``, and each
    request's recorded prompt / output lengths used where the trace has them and the flag is not
    given (module docstring)."""
    from workloads.requests import ProcessRouting, RequestFormatError, RequestStream, TraceReplay

    replay: Any = None
    if args.trace is not None:
        from workloads.trace import RoutingTrace

        trace = RoutingTrace.load(args.trace)
        _check_shape(
            f"--trace {args.trace}", "trace", trace.n_moe_layers, trace.n_experts, trace.k, model, check_k=False
        )
        offset = int(getattr(args, "trace_offset", 0))
        n_rec = TraceReplay(trace).n_recorded_requests
        if offset >= n_rec:
            raise ValueError(
                f"--trace-offset {offset}: --trace {args.trace} holds {n_rec} requests (offsets 0..{n_rec - 1})"
            )
        replay = TraceReplay(
            trace,
            cycle=bool(getattr(args, "trace_cycle", False)),
            offset=offset,
            shuffle_seed=args.seed if getattr(args, "trace_shuffle", False) else None,
            phase_rows="aligned",
        )
        routing: Any = replay
        default_n = replay.n_available
    else:
        process = _load_process(str(args.process), model.name)
        _check_shape(
            f"--process {args.process}",
            "routing process",
            process.n_moe_layers,
            process.n_experts,
            process.top_k,
            model,
            check_k=True,
        )
        routing = ProcessRouting(process, seed=args.seed)
        default_n = 16
    arrivals, prompt, output = check_stream_args(args)
    if arrivals == "replay":
        try:
            stream = RequestStream.replay(
                args.arrival_trace, n_requests=args.requests, time_scale=args.time_scale, routing=routing
            )
        except RequestFormatError:
            raise
        except ValueError as exc:  # e.g. more --requests than rows
            raise ValueError(f"--arrivals replay --arrival-trace {args.arrival_trace}: {exc}") from None
        if args.prompt_len is not None or args.output_len is not None:
            stream = _relength(
                stream,
                prompt if args.prompt_len is not None else None,
                output if args.output_len is not None else None,
                args.seed,
            )
        _check_trace_count(args, replay, len(stream.requests))
        csv_source = f"--arrival-trace {args.arrival_trace}"
        return stream, {
            "prompt": f"--prompt-len {args.prompt_len}" if args.prompt_len is not None else csv_source,
            "output": f"--output-len {args.output_len}" if args.output_len is not None else csv_source,
        }
    n = args.requests if args.requests is not None else default_n
    _check_trace_count(args, replay, n)
    kwargs: dict[str, Any] = {
        "n_requests": n,
        "routing": routing,
        "seed": args.seed,
        "prompt_len": prompt,
        "output_len": output,
    }
    if arrivals == "poisson":
        stream = RequestStream.poisson(rate_per_s=args.rate, **kwargs)
    elif arrivals == "bursty":
        stream = RequestStream.bursty(mean_rate_per_s=args.rate, burstiness=args.burstiness, **kwargs)
    else:
        stream = RequestStream.closed(**kwargs)
    sources = {
        "prompt": f"--prompt-len {args.prompt_len}" if args.prompt_len is not None else "--prompt-len default 64",
        "output": f"--output-len {args.output_len}" if args.output_len is not None else "--output-len default 128",
    }
    if replay is None or (args.prompt_len is not None and args.output_len is not None):
        return stream, sources
    return _recorded_lengths(stream, replay, args, sources)


def _check_trace_count(args: argparse.Namespace, replay: Any, n: int) -> None:
    """Refuse ``n`` requests when the trace holds fewer past ``--trace-offset`` and ``--trace-cycle``
    was not given (one line naming the numbers and the flags)."""
    if replay is None or replay.cycle or n <= replay.n_available:
        return
    offset = int(getattr(args, "trace_offset", 0))
    past = f" ({replay.n_available} past --trace-offset {offset})" if offset else ""
    asked = f"--requests {n}" if args.requests is not None else f"{n} requests (one per --arrival-trace row)"
    earlier = ", start earlier (--trace-offset)" if offset else ""
    raise ValueError(
        f"{asked}: --trace {args.trace} holds {replay.n_recorded_requests} requests{past}; ask for at most "
        f"{replay.n_available} (--requests){earlier}, or pass --trace-cycle to reuse recorded requests (two "
        "requests then share routing)"
    )


def _recorded_lengths(
    stream: Any, replay: Any, args: argparse.Namespace, sources: dict[str, str]
) -> tuple[Any, dict[str, str]]:
    """``stream`` with each request's prompt (output) length set to the one recorded in the trace
    for the request it replays, where the trace recorded that phase and ``--prompt-len``
    (``--output-len``) was not given; ``sources`` updated to say so."""
    from dataclasses import replace

    from workloads.requests import RequestStream

    reqs, used = [], {"prompt": 0, "output": 0}
    for r in stream.requests:
        rec_p, rec_o = replay.recorded_lengths(r.request_id)
        p = rec_p if rec_p is not None and args.prompt_len is None else r.prompt_tokens
        o = rec_o if rec_o is not None and args.output_len is None else r.output_tokens
        used["prompt"] += rec_p is not None and args.prompt_len is None
        used["output"] += rec_o is not None and args.output_len is None
        reqs.append(replace(r, prompt_tokens=int(p), output_tokens=int(o)))
    n = len(reqs)
    for phase, what in (("prompt", "prefill"), ("output", "decode")):
        if used[phase] == n:
            sources[phase] = f"each request's recorded {what} tokens, --trace"
        elif used[phase]:
            sources[phase] = f"recorded in --trace for {used[phase]} of {n} requests, else {sources[phase]}"
        if used[phase] < n and (args.prompt_len if phase == "prompt" else args.output_len) is None:
            other = "decode" if phase == "prompt" else "prefill"
            sources[phase] += f"; the trace records no {what} tokens: {phase} rows replay the recorded {other} tokens"
    return RequestStream(requests=tuple(reqs), routing_source=stream.routing_source), sources


def _relength(stream: Any, prompt: Any, output: Any, seed: int) -> Any:
    """``stream`` with its prompt (output) lengths redrawn from ``prompt`` (``output``) where not None."""
    from dataclasses import replace

    import numpy as np

    from workloads.requests import LengthDist, RequestStream

    rng = np.random.default_rng(seed)
    n = len(stream.requests)

    def draw(spec: Any, old: list[int]) -> list[int]:
        if spec is None:
            return old
        dist = spec if isinstance(spec, LengthDist) else LengthDist.fixed(int(spec))
        return [int(v) for v in dist.sample(n, rng)]

    ps = draw(prompt, [r.prompt_tokens for r in stream.requests])
    os_ = draw(output, [r.output_tokens for r in stream.requests])
    reqs = tuple(replace(r, prompt_tokens=p, output_tokens=o) for r, p, o in zip(stream.requests, ps, os_, strict=True))
    return RequestStream(requests=reqs, routing_source=stream.routing_source)


def _check_shape(
    where: str, what: str, n_layers: int, n_experts: int, top_k: int, model: Any, *, check_k: bool
) -> None:
    """Raise naming ``where`` when the routing's MoE layers, experts (or top-k) differ from the model's."""
    bad = n_layers != model.n_moe_layers or n_experts != model.n_experts or (check_k and top_k != model.top_k)
    if bad:
        raise ValueError(
            f"{where}: the {what} routes {n_layers} MoE layers x {n_experts} experts, top-{top_k}; "
            f"model {model.name!r} has {model.n_moe_layers} x {model.n_experts}, top-{model.top_k} "
            "(use a trace or process of this model)"
        )


def clip_to_kv(stream: Any, model: Any, platform: Any, mapping: Any, seed: int) -> Any:
    """``stream`` with every request's KV cache (prompt + output - 1 tokens) clipped to what one
    device holds under ``mapping`` (a probe binding with round-robin placement and no statistics;
    the memory budget does not depend on which experts are homed where, only on how many). Output
    is first clipped to half the capacity, then the prompt to the rest. A warning gives the counts.
    When even the probe does not fit, the stream is returned unchanged (the run's own binding then
    reports the numbers)."""
    from dataclasses import replace

    from codesign.mapping import MappingError
    from workloads.requests import RequestStream

    try:
        probe = mapping.with_(
            placement="round-robin", placement_options=(), initial="empty", pinned=(), resident=()
        ).bind(model, platform, stats=None, min_kv_tokens=1, seed=seed)
    except MappingError:
        return stream
    cap = int(min(probe.kv_capacity_tokens))
    if cap < 1:
        return stream
    reqs, n_clip = [], 0
    for r in stream.requests:
        p, o = int(r.prompt_tokens), int(r.output_tokens)
        if p + o - 1 > cap:
            n_clip += 1
            o = min(o, max(1, cap // 2))
            p = max(1, min(p, cap + 1 - o))
            r = replace(r, prompt_tokens=p, output_tokens=o)
        reqs.append(r)
    if not n_clip:
        return stream
    log.warning(
        "%d of %d requests exceed the KV capacity of %d tokens per request (prompt + output - 1) on %s "
        "under this mapping; clipped them (output to at most %d, prompt to the rest)",
        n_clip,
        len(reqs),
        cap,
        platform.name,
        max(1, cap // 2),
    )
    return RequestStream(requests=tuple(reqs), routing_source=stream.routing_source)


def _load_process(spec: str, model_name: str) -> Any:
    """A routing process from a JSON file, or the package's embedded default workload:
    ``default`` (the one of ``model_name``) or ``default:MODEL``."""
    from workloads.defaults import default_process
    from workloads.process import RoutingProcess

    if spec == "default":
        try:
            return default_process(model_name)
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"--process default: no embedded workload for model {model_name!r} ({exc}); give "
                "--process PROCESS.json, --process default:MODEL (a preset of the same shape) or "
                "--trace"
            ) from None
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


#: Constructor arguments the engine itself passes to each policy kind (not user options).
_RESERVED: dict[str, frozenset[str]] = {
    "cache": frozenset({"self", "capacity", "n_layers", "n_experts", "pinned", "seed"}),
    "prefetch": frozenset({"self", "n_layers", "n_experts", "top_k", "seed"}),
    "miss": frozenset({"self", "seed"}),
    "placement": frozenset({"self", "seed"}),
}


def policy_options(kind: str, name: str) -> list[str] | None:
    """The user options of policy ``name`` of ``kind``: keyword parameters of its ``__init__`` (and
    of the bases it forwards ``**kwargs`` to) other than those the engine passes; None when the
    chain ends in ``**kwargs`` (anything goes)."""
    import inspect

    from codesign.policies import REGISTRIES

    cls = REGISTRIES[kind].get(name)
    names: set[str] = set()
    # an __init__ that forwards **kwargs to its base takes the base's parameters too
    for klass in getattr(cls, "__mro__", (cls,)):
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names.update(
            prm.name
            for prm in params
            if prm.name not in _RESERVED[kind]
            and prm.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        if not any(prm.kind is inspect.Parameter.VAR_KEYWORD for prm in params):
            return sorted(names)
    return None


def check_options(kind: str, name: str, options: tuple[tuple[str, Any], ...], flag: str) -> None:
    """Raise naming ``flag`` and the valid options when an option is not a parameter of the policy."""
    valid = policy_options(kind, name)
    if valid is None:
        return
    for key, _ in options:
        if key not in valid:
            raise ValueError(
                f"{flag} {key}: {kind} policy {name!r} has no option {key!r}; valid options: "
                f"{', '.join(valid) if valid else '(none)'}"
            )


def build_mapping(args: argparse.Namespace) -> Any:
    """The `Mapping` the arguments describe (policy options checked against each policy's
    constructor: unknown ones are named with the valid ones)."""
    from codesign.mapping import BatchingSpec, CacheSpec, Mapping
    from codesign.policies import REGISTRIES

    cache_opts = parse_options(args.cache_option, "--cache-option")
    prefetch_opts = parse_options(args.prefetch_option, "--prefetch-option")
    REGISTRIES["cache"].get(args.cache)  # unknown names first, listing the valid ones
    check_options("cache", args.cache, cache_opts, "--cache-option")
    if args.prefetch != "none":
        REGISTRIES["prefetch"].get(args.prefetch)
        check_options("prefetch", args.prefetch, prefetch_opts, "--prefetch-option")
    elif prefetch_opts:
        raise ValueError("--prefetch-option given without --prefetch POLICY")
    miss_opts = parse_options(args.miss_option, "--miss-option")
    placement_opts = parse_options(args.placement_option, "--placement-option")
    for kind, name, opts, flag in (
        ("miss", args.miss, miss_opts, "--miss-option"),
        ("placement", args.placement, placement_opts, "--placement-option"),
    ):
        REGISTRIES[kind].get(name)
        check_options(kind, name, opts, flag)
    if not 0.0 <= args.train_fraction < 1.0:
        raise ValueError(f"--train-fraction must be in [0, 1), got {args.train_fraction}")

    from hwmodels import EXECUTIONS

    if args.execution != "auto" and args.execution not in EXECUTIONS:
        raise ValueError(f"--execution {args.execution!r}: expected auto or one of {', '.join(EXECUTIONS)}")
    near = None
    if args.near_tier is not None:
        if args.near_experts is None:
            raise ValueError("--near-tier needs --near-experts N (slots per device)")
        near = CacheSpec(policy=args.near_policy, tier=args.near_tier, capacity_experts=args.near_experts)
    return Mapping(
        n_devices=args.devices,
        placement=args.placement,
        backing=args.backing,
        near=near,
        cache=CacheSpec(
            policy=args.cache,
            expert_fraction=args.hbm_expert_fraction,
            options=cache_opts,
            eviction=getattr(args, "eviction", "discard"),
        ),
        stack=getattr(args, "stack", None) or "none",
        offload_non_expert=bool(getattr(args, "offload_non_expert", False)),
        fetch_whole_layer=bool(getattr(args, "fetch_whole_layer", False)),
        prefetch=args.prefetch,
        prefetch_options=prefetch_opts,
        ep_execution=args.ep_execution,
        execution=args.execution,
        miss=args.miss,
        miss_options=miss_opts,
        placement_options=placement_opts,
        train_fraction=args.train_fraction,
        batching=BatchingSpec(scheduler=args.scheduler, max_batch=args.batch, max_tokens=args.max_tokens, kv=args.kv),
    )


def _fixed(x: float) -> str:
    """A number in plain decimal notation (never scientific), digits by magnitude."""
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax >= 0.001 or ax == 0:
        return f"{x:.4f}".rstrip("0").rstrip(".") if ax else "0"
    return f"{x:.7f}"


def _fmt(value: Any, scale: float, unit: str) -> str:
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if not unit:  # a count
        return f"{round(float(value) * scale):,}"
    return f"{_fixed(float(value) * scale)} {unit}"


def _lengths(values: Any) -> str:
    vals = [int(v) for v in values]
    if not vals:
        return "-"
    lo, hi = min(vals), max(vals)
    if lo == hi:
        return f"{lo:,}"
    return f"{lo:,}-{hi:,} (mean {sum(vals) / len(vals):,.1f})"


def _what_ran(config: dict[str, Any], requests: Any, platform: Any, sources: dict[str, Any] | None = None) -> list[str]:
    """The rows saying what was simulated: model and precision, platform, workload (lengths, and
    where they came from when ``sources`` names it: ``{"prompt": ..., "output": ...}``), mapping."""
    src = sources or {}
    from workloads.precision import precision_label

    m = config.get("model", {})
    mp = config.get("mapping", {})
    n_dev = mp.get("n_devices") or (getattr(platform, "n_accelerators", None) if platform is not None else None)
    plat = config.get("platform", {}).get("name", "-")
    rows = [
        (
            "model",
            f"{m.get('name', '-')} ({m.get('n_experts', '?')} experts, top-{m.get('top_k', '?')}, "
            f"{m.get('n_layers', '?')} layers)",
        ),
        ("precision", precision_label(m, kv=True)),
        ("platform", f"{plat} x {n_dev}" if n_dev else str(plat)),
    ]
    if requests is not None and len(requests):
        for phase in ("prompt", "output"):
            text = _lengths(requests[f"{phase}_tokens"])
            rows.append((f"{phase} tokens / request", f"{text} ({src[phase]})" if src.get(phase) else text))
    batching = mp.get("batching") or {}
    if batching:
        rows.append(
            (
                "batch",
                f"up to {_fmt(batching.get('max_batch'), 1.0, '')} requests, "
                f"{_fmt(batching.get('max_tokens'), 1.0, '')} tokens/step ({batching.get('scheduler', '?')}"
                f"{', KV paged' if batching.get('kv') == 'paged' else ''})",
            )
        )
    cache = mp.get("cache") or {}
    if cache:
        frac = cache.get("expert_fraction")
        size = (
            f"{100 * float(frac):.0f}% of experts" if frac is not None else f"{cache.get('capacity_experts')} experts"
        )
        evict = ", copy-back eviction" if cache.get("eviction") == "copy-back" else ""
        rows.append(
            ("expert cache", f"{cache.get('policy', '?')}, {size} resident (backing {mp.get('backing', '?')}){evict}")
        )
    streamed = [
        text
        for key, text in (
            ("offload_non_expert", "non-expert weights streamed per layer"),
            ("fetch_whole_layer", "every offloaded expert of a layer fetched per step"),
        )
        if mp.get(key)
    ]
    if streamed:
        rows.append(("weights offloaded", f"{', '.join(streamed)} (from {mp.get('backing', '?')})"))
    stack = mp.get("stack")
    if stack not in (None, "none"):
        rows.append(("serving stack", _stack_text(stack)))
    policies = [f"{k} {mp[k]}" for k in ("miss", "prefetch", "placement", "ep_execution", "execution") if k in mp]
    if policies:
        rows.append(("policies", ", ".join(policies)))
    return [f"{label:<26} {text}" for label, text in rows]


def _stack_text(spec: Any) -> str:
    """The serving stack of a run's mapping (name, path or inline object) with the numbers it charges."""
    from hwmodels.stacks import StackError, resolve_stack

    try:
        st = resolve_stack(spec)
    except StackError:
        return str(spec)
    charged = [label for on, label in ((st.lm_head, "LM head"), (st.moe_permute, "MoE permute")) if on]
    where = f"{spec} = " if isinstance(spec, str) and spec != st.name else ""
    at_zero = [p.field.removesuffix("_s") for p in st.params if p.free and not getattr(st, p.field, 0.0)]
    return (
        f"{where}{st.name} (host {_fixed(st.per_step_s * 1e3)} ms/step + {_fixed(st.per_layer_s * 1e6)} us/layer + "
        f"{_fixed(st.per_sequence_s * 1e6)} us/sequence, overlap {st.cpu_overlap:g}"
        + (f"; kernels +{st.compute_slowdown:.0%} compute time" if st.compute_slowdown else "")
        + (f"; {' + '.join(charged)}" if charged else "")
        + ")"
        + (f"; unfitted, run at 0: {', '.join(at_zero)}" if at_zero else "")
    )


def _copy_busy_s(events: Any) -> float | None:
    """Busy seconds of the busiest host-link copy engine (the ``copy`` lanes of the event log,
    overlaps merged); None when the log has no copy lane."""
    from codesign.views import utilisation_info

    info = utilisation_info(events, bins=1)
    lanes = [v for lane, v in info.busy_s.items() if lane.endswith(" / copy")]
    return max(lanes) if lanes else None


def _what_dominated(summary: dict[str, Any], platform: Any, events: Any = None) -> list[str]:
    """Where the time went: experts computed on the host CPU, and the busy time of the busiest
    accelerator, the host CPU and the host link (PCIe: the busiest copy engine's busy time from
    ``events`` when the run recorded them, else bytes moved / peak link bandwidth, a lower bound),
    each as a share of the makespan."""
    lines: list[str] = []
    dev, cpu = summary.get("assignments_device"), summary.get("assignments_cpu")
    if isinstance(dev, int | float) and isinstance(cpu, int | float) and dev + cpu > 0:
        lines.append(
            f"{'experts computed on CPU':<26} {100 * cpu / (dev + cpu):.1f} % "
            f"({round(cpu):,} of {round(dev + cpu):,} token-expert assignments)"
        )
    makespan = summary.get("makespan_s")
    span = float(makespan) if isinstance(makespan, int | float) and makespan and math.isfinite(makespan) else None
    busy: list[tuple[str, float]] = []
    if isinstance(summary.get("device_busy_s"), int | float):
        busy.append(("busiest accelerator busy", float(summary["device_busy_s"])))
    if isinstance(summary.get("host_busy_s"), int | float):
        busy.append(("host CPU busy", float(summary["host_busy_s"])))
    link = getattr(platform, "host_link", None) if platform is not None else None
    moved = (summary.get("bytes_moved") or {}).get(getattr(link, "name", None)) if link is not None else None
    copies = _copy_busy_s(events) if events is not None else None
    if copies is not None:
        busy.append(("PCIe busy (copy engine)", copies))
    elif link is not None and isinstance(moved, int | float):
        busy.append(("PCIe busy >= bytes/peak", float(moved) / float(link.bandwidth_Bps)))
    for label, seconds in busy:
        share = f" ({100 * seconds / span:.1f} % of makespan)" if span else ""
        lines.append(f"{label:<26} {_fixed(seconds)} s{share}")
    if busy and max(s for _, s in busy) > 0:
        top, seconds = max(busy, key=lambda b: b[1])
        lines.append(f"{'dominated by':<26} {top.split(' busy')[0]} ({_fixed(seconds)} s busy)")
    if span and sum(s for _, s in busy) > span:
        lines.append(
            f"{'':<26} (busy times overlap: the accelerator, the host CPU and the PCIe link run in parallel, "
            "so they add up to more than the makespan)"
        )
    return lines


def summary_table(summary: dict[str, Any], result: Any = None, platform: Any = None) -> str:
    """The human-readable summary: what was simulated (from ``result``'s config and requests,
    when given), the figures (counts with thousands separators, times in plain decimals, never
    scientific notation), and what dominated (CPU-computed experts; accelerator, host CPU and
    PCIe busy time, the last from ``result``'s events or ``platform``'s host link)."""
    lines: list[str] = []
    if result is not None:
        sources = {"prompt": summary.get("prompt_len_source"), "output": summary.get("output_len_source")}
        lines += _what_ran(getattr(result, "config", {}) or {}, getattr(result, "requests", None), platform, sources)
    lines += [f"{label:<26} {_fmt(summary.get(key), scale, unit)}" for key, label, scale, unit in _TABLE]
    for tier, rate in sorted(summary.get("hit_rate", {}).items()):
        lines.append(f"{'hit rate ' + tier:<26} {100 * rate:.1f} %")
    for link, b in sorted(summary.get("bytes_moved", {}).items()):
        lines.append(f"{'bytes over ' + link:<26} {b / 1e9:,.3f} GB")
    for tier, b in sorted(summary.get("peak_memory_bytes", {}).items()):
        lines.append(f"{'peak memory ' + tier:<26} {b / 1e9:,.3f} GB")
    lines += _what_dominated(summary, platform, getattr(result, "events", None))
    if summary.get("train_source"):
        lines.append(
            f"{'training routing':<26} {summary['train_source']} ({round(summary.get('train_tokens', 0)):,} tokens)"
        )
    lines.append(f"{'config hash':<26} {summary.get('config_hash', '-')}")
    return "\n".join(lines)


def write_views(result: Any, out_dir: Path) -> dict[str, Path]:
    """``timeline.html`` (utilisation of compute, transfers and all-to-all per device over time;
    zoom for the events: `codesign.views.write_timeline_html`) and ``cost_breakdown.html``, sharing
    one ``plotly.min.js`` written beside them (the pages stay small and open offline)."""
    from codesign import views

    return {
        "timeline": views.write_timeline_html(result, out_dir / "timeline.html", plotlyjs="directory"),
        "cost_breakdown": views.write_html(
            views.plot_cost_breakdown(views.cost_breakdown_info(result)),
            out_dir / "cost_breakdown.html",
            plotlyjs="directory",
        ),
        "plotly": out_dir / "plotly.min.js",
    }


def load_model(spec: str) -> Any:
    """A model preset name, a JSON file (``*.json`` or an existing path) holding one object of
    `workloads.model.MoEModel` fields, or a ``*.toml`` file of the same fields
    (`workloads.model.load_model`; ``MoEModel.to_toml`` writes one). Errors name the file and the
    field: unknown fields are listed with the valid ones, missing required fields are listed, and
    the model's own validation message is prefixed with the file."""
    import dataclasses
    import typing

    from workloads.model import AttentionKind, MoEModel, UnknownPresetError, get_model

    path = Path(spec)
    if spec.lower().endswith(".toml"):
        return _load_toml_model(path)
    if not spec.lower().endswith(".json"):
        try:
            return get_model(spec)
        except UnknownPresetError:
            if not path.is_file():
                raise
    if not path.is_file():
        raise ValueError(
            f"--model {spec}: no such file (expected a model preset name or a JSON file of MoEModel fields)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model {path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"--model {path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ValueError(f"--model {path}: expected a JSON object of MoEModel fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(MoEModel)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"--model {path}: unknown field(s) {unknown}; valid fields: {', '.join(fields)}")
    required = [
        n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise ValueError(f"--model {path}: missing required field(s) {missing}")
    kinds: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
    for name, value in data.items():
        ann = str(fields[name].type)
        if ann == "AttentionKind" and value not in typing.get_args(AttentionKind):
            raise ValueError(
                f"--model {path}: field {name} = {value!r}: expected one of {list(typing.get_args(AttentionKind))}"
            )
        want = kinds.get(ann, (str,) if ann == "AttentionKind" else None)
        if want is None:
            continue
        bad = not isinstance(value, want) or (isinstance(value, bool) and bool not in want)
        if bad:
            expected = "a string" if want == (str,) else f"{ann}"
            raise ValueError(f"--model {path}: field {name} = {value!r}: expected {expected}")
    try:
        return MoEModel(**data)
    except ValueError as exc:
        raise ValueError(f"--model {path}: {exc}") from None


def _load_toml_model(path: Path) -> Any:
    """A model from a TOML file of MoEModel fields (`workloads.model.load_model`), errors as ``--model PATH: ...``."""
    from workloads.model import load_model as load_model_file

    if not path.is_file():
        raise ValueError(f"--model {path}: no such file (expected a model preset name or a JSON/TOML file)")
    try:
        return load_model_file(path)
    except UnicodeDecodeError:
        raise ValueError(f"--model {path}: not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(str(exc).replace(f"model file {path}", f"--model {path}", 1)) from None


def parse_bytes(spec: str, flag: str, unit: str = "weight") -> float:
    """``spec`` as bytes per ``unit``: a precision name (`workloads.model.PRECISION_BYTES`) or a
    finite number > 0 (bytes, quantisation metadata included); a one-line error naming ``flag``."""
    from workloads.model import PRECISION_BYTES

    text = spec.strip().lower()
    if text in PRECISION_BYTES:
        return PRECISION_BYTES[text]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        example = "0.325 for 2-bit HQQ with group-16 scales" if unit == "weight" else "1 for fp8"
        raise ValueError(
            f"{flag} {spec!r}: expected a precision name ({', '.join(sorted(PRECISION_BYTES))}) or bytes per "
            f"{unit} > 0 (e.g. {example})"
        )
    return value


def model_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The `MoEModel` field changes of the per-component precision flags (``--<component>-precision``,
    ``--<component>-format``, ``--dispatch-precision``, ``--combine-precision``), checked (cheap; a
    one-line error naming the flag). Applied after ``--precision`` (which clears the overrides of
    ``--model``), so ``--precision fp8 --expert-precision int4`` gives int4 experts in an fp8 model."""
    from workloads.model import PRECISION_BYTES

    model_wide = getattr(args, "precision", None)
    if model_wide and model_wide not in PRECISION_BYTES:
        raise ValueError(f"--precision {model_wide!r}: expected one of {', '.join(sorted(PRECISION_BYTES))}")
    changes: dict[str, Any] = {}
    for component in _WEIGHT_COMPONENTS:
        prec = getattr(args, f"{component}_precision", None)
        if prec is not None:
            changes[f"{component}_bytes_per_weight"] = parse_bytes(prec, f"--{component}-precision")
        fmt = getattr(args, f"{component}_format", None)
        if fmt is not None:
            changes[f"{component}_format"] = fmt
    for what in ("dispatch", "combine"):
        prec = getattr(args, f"{what}_precision", None)
        if prec is not None:
            changes[f"{what}_bytes_per_elem"] = parse_bytes(prec, f"--{what}-precision", "element")
    return changes


def apply_model_flags(model: Any, args: argparse.Namespace) -> Any:
    """``model`` at ``--precision`` (model-wide, clearing per-component overrides) and then with the
    per-component flags of `model_changes`."""
    if getattr(args, "precision", None):
        try:
            model = model.with_precision(args.precision)
        except ValueError as exc:
            raise ValueError(f"--precision {args.precision}: {exc}") from None
    changes = model_changes(args)
    if not changes:
        return model
    try:
        return model.with_(**changes)
    except ValueError as exc:  # e.g. a packed format on weights of >= 1 byte: name the flags
        message = str(exc)
        for field, flag in _model_flag_names():
            message = message.replace(field, flag)
        raise ValueError(message) from None


def _model_flag_names() -> list[tuple[str, str]]:
    """`MoEModel` field names -> the flags of this command that set them (for error messages)."""
    pairs = [(f"{c}_bytes_per_weight", f"--{c}-precision") for c in _WEIGHT_COMPONENTS]
    pairs += [(f"{c}_format", f"--{c}-format") for c in _WEIGHT_COMPONENTS]
    pairs += [(f"{w}_bytes_per_elem", f"--{w}-precision") for w in ("dispatch", "combine")]
    return pairs


def check_stack(spec: str | None) -> None:
    """``--stack``: a serving-stack preset or a ``.toml`` stack file (read now; a one-line error
    naming the flag and the valid presets otherwise). None passes (the default stack ``none``)."""
    if spec is None:
        return
    from hwmodels.stacks import StackError, get_stack

    if spec.lower().endswith(".toml") and not Path(spec).is_file():
        raise ValueError(f"--stack {spec}: no such file (expected a stack preset name or a stack .toml file)")
    try:
        get_stack(spec)
    except StackError as exc:
        raise ValueError(f"--stack {spec}: {exc}") from None


def _check_args(args: argparse.Namespace) -> None:
    """Command-line values checked before anything is built (each error names its flag)."""
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(
            f"--out {args.out}: exists and is not a directory; --out must be a directory (created "
            "if absent) to write the records, summary, config and views into"
        )
    if args.batch < 1 or args.max_tokens < 1:
        raise ValueError(f"--batch and --max-tokens must be >= 1, got {args.batch}, {args.max_tokens}")
    if args.devices is not None and args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")
    if not args.time_scale > 0:
        raise ValueError(f"--time-scale must be > 0, got {args.time_scale}")
    model_changes(args)
    check_stack(args.stack)
    if args.fetch_whole_layer and args.hbm_expert_fraction >= 1.0:
        raise ValueError(
            "--fetch-whole-layer fetches the offloaded experts of every layer, but --hbm-expert-fraction is 1 "
            "(nothing offloaded); give --hbm-expert-fraction < 1"
        )
    if args.eviction == "copy-back" and args.hbm_expert_fraction >= 1.0:
        raise ValueError(
            "--eviction copy-back copies evicted experts back to host memory, but --hbm-expert-fraction is 1 "
            "(nothing offloaded, nothing evicted); give --hbm-expert-fraction < 1"
        )
    if args.fetch_whole_layer and args.miss != "fetch":
        raise ValueError(
            f"--fetch-whole-layer puts every offloaded expert on the device, so --miss {args.miss} (compute misses "
            "on the host CPU) does not apply; use --miss fetch or drop --fetch-whole-layer"
        )
    _check_more_args(args)


#: Estimated memory per simulated request (bytes): the request stream measured ~360 B per request
#: (tracemalloc, closed stream of a routing process); the rest is an assumption for the per-request
#: records of the result.
REQUEST_BYTES = 1024.0
#: A memory tier above this capacity (bytes; 1 EB) is a unit typo, not a machine (assumption: the
#: largest memory systems are petabytes).
MAX_TIER_BYTES = 1e18


def _check_more_args(args: argparse.Namespace) -> None:
    """The checks of `_check_args` that need `codesign.cli_checks`: ranges of fractions and counts,
    input files that must exist, the output folder, and the memory a request count needs."""
    from codesign import cli_checks as checks

    checks.float_range(args.hbm_expert_fraction, "--hbm-expert-fraction", low=0.0, high=1.0)
    checks.float_range(args.train_fraction, "--train-fraction", low=0.0, high=1.0, high_open=True)
    checks.float_range(args.time_scale, "--time-scale", low=0.0, high=1e12, low_open=True)
    checks.int_range(args.near_experts, "--near-experts", low=1, why=" (slots of the near tier per device)")
    if args.out is not None:
        checks.output_dir(args.out, "--out")
    if args.trace is not None:
        checks.input_path(args.trace, "--trace", what="a routing trace .npz (codesign trace import|synth|record)")
    process = str(getattr(args, "process", "default") or "default")
    if args.trace is None and not process.startswith("default"):
        checks.input_path(process, "--process", what="a routing process .json, 'default' or 'default:MODEL'")
    if args.arrival_trace is not None:
        checks.input_path(args.arrival_trace, "--arrival-trace", what="a Splitwise-format CSV")
    if args.requests is not None and args.requests > 0:
        checks.fits_in_memory(REQUEST_BYTES * args.requests, f"simulating {args.requests} requests", "--requests")


def check_platform(platform: Any, flag: str) -> None:
    """Refuse a platform whose memory capacities cannot be real (a unit typo in its file)."""
    for dev in platform.devices:
        for tier in dev.tiers:
            if not tier.capacity_bytes <= MAX_TIER_BYTES:
                raise ValueError(
                    f"{flag}: device {dev.name!r} tier {tier.name!r} has capacity {tier.capacity_bytes:.3g} B, "
                    f"beyond any real memory (> {MAX_TIER_BYTES:.0e} B); check the units in its file"
                )


def check_fits(model: Any, platform: Any, mapping: Any, seed: int) -> None:
    """Bind the mapping once with round-robin placement and no routing statistics (memory does not
    depend on which experts are homed where) and raise its `MappingError` now, before a routing
    process is derived or a stream built, when the model cannot be laid out at all."""
    from codesign.design import check_fits as fits
    from codesign.mapping import MappingError

    try:
        fits(model, platform, mapping, seed=seed)
    except MappingError as exc:
        raise MappingError(f"--model {model.name} on --platform {platform.name}: {user_flags(str(exc))}") from None


#: Internal mapping field names in library messages -> the flag a command-line user types.
_FLAG_NAMES = (
    ("cache.expert_fraction", "--hbm-expert-fraction"),
    ("batching.max_tokens", "--max-tokens"),
    ("batching.max_batch", "--batch"),
    ("n_devices", "--devices"),
    ("near.capacity_experts", "--near-experts"),
    ("offload_non_expert", "--offload-non-expert"),
    ("fetch_whole_layer", "--fetch-whole-layer"),
)


def user_flags(message: str) -> str:
    """``message`` with the mapping's internal field names replaced by their command-line flags."""
    for internal, flag in _FLAG_NAMES:
        message = message.replace(internal, flag)
    return message


def _load_profile_arg(spec: str | None, fidelity: str) -> Any:
    """The calibration profile of ``--profile`` (None without it), loaded before any expensive work;
    a one-line error naming the flag and listing the shipped profiles otherwise."""
    if spec is None:
        return None
    if fidelity == "roofline":
        raise ValueError(f"--profile {spec}: a calibration profile applies to --fidelity calibrated, not roofline")
    from hwmodels.calibration import CalibrationError, resolve_profile

    try:
        return resolve_profile(spec)
    except CalibrationError as exc:
        raise ValueError(f"--profile {spec}: {exc}") from None


def _power_limited(profile: Any, watts: float) -> Any:
    """``profile`` under a power limit of ``watts`` (`hwmodels.calibration.limit_power`); a one-line error
    naming ``--power-limit`` otherwise."""
    from hwmodels.calibration import CalibrationError, limit_power

    try:
        return limit_power(profile, watts)
    except CalibrationError as exc:
        raise ValueError(f"--power-limit {watts:g}: {exc}") from None


def _check_profile_device(spec: str | None, platform: Any) -> None:
    """Refuse a shipped ``--profile`` measured on (or derived for) a device the platform does not have,
    naming both and the shipped profiles that fit. A profile file is taken as given (its device name is
    what the measurement reported, not a preset name)."""
    from hwmodels.calibration import default_profile_names, shipped_profile_device

    if spec is None or Path(spec).suffix == ".json" or Path(spec).exists():
        return
    names = {d.name for d in platform.accelerators}
    device = shipped_profile_device(spec)
    if device is None or device in names:
        return
    fit = [n for n in default_profile_names() if shipped_profile_device(n) in names]
    raise ValueError(
        f"--profile {spec}: describes device {device}, but platform {platform.name} has {', '.join(sorted(names))}; "
        f"profiles that fit: {', '.join(fit) or 'none shipped (pass a profile JSON from codesign calibrate)'}"
    )


def _cmd_design(args: argparse.Namespace) -> int:
    """``simulate --design F``: replay a design file through `codesign.design.simulate_design`
    (``--profile`` replaces the design's ``cost.profile``)."""
    from codesign.design import Design, EvalCache, simulate_design

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a directory")
    design = Design.load(args.design)
    if args.profile is not None:
        _load_profile_arg(args.profile, design.cost.fidelity)
        _check_profile_device(args.profile, design.platform)
        design = dataclasses.replace(design, cost=dataclasses.replace(design.cost, profile=args.profile))
    if args.power_limit is not None:
        if design.cost.profile is None:
            raise ValueError(f"--power-limit {args.power_limit:g}: the design names no cost.profile; pass --profile")
        from codesign.design import DesignError

        try:
            cost = dataclasses.replace(design.cost, power_limit=args.power_limit)
            cost.load_profile()  # refuses a profile without a power law, before any work
        except DesignError as exc:
            raise ValueError(f"--power-limit {args.power_limit:g}: {exc}") from None
        design = dataclasses.replace(design, cost=cost)
    log.info("design %s: %s", design.content_hash, design.describe())
    result = simulate_design(
        design,
        cache=EvalCache(),
        progress=not args.no_progress and not args.json and sys.stderr.isatty(),
        record_events=args.out is not None,
    )
    return _emit(args, result, design.platform, design=design)


def _emit(
    args: argparse.Namespace,
    result: Any,
    platform: Any,
    *,
    design: Any = None,
    sources: dict[str, str] | None = None,
) -> int:
    """Write ``--out`` (records, summary, views) and print the summary (``--json`` or the table);
    ``sources`` (where the prompt and output lengths came from) go into the summary as
    ``prompt_len_source`` / ``output_len_source``; ``--profile`` as ``cost_profile``."""
    summary = result.summary_json()
    if design is not None:
        summary["design_hash"] = design.content_hash
    if sources:
        summary["prompt_len_source"], summary["output_len_source"] = sources["prompt"], sources["output"]
    profile = getattr(args, "profile", None)
    if profile is not None:
        summary["cost_profile"] = profile
    power_limit = getattr(args, "power_limit", None)
    if design is not None and design.cost.power_limit is not None:
        power_limit = design.cost.power_limit  # --power-limit or the design file's cost.power_limit
    if power_limit is not None:
        summary["power_limit_W"] = power_limit
    if args.out is not None:
        paths = result.save(args.out)
        paths.update(write_views(result, args.out))
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        if design is not None:
            print(f"design {design.content_hash}: {design.describe()}")
        print(summary_table(summary, result, platform))
        if profile is not None:
            print(f"{'calibration profile':<26} {profile} (every accelerator, --profile)")
        if power_limit is not None:
            print(f"{'power limit':<26} {power_limit:g} W (every accelerator)")
        if args.out is not None:
            print(f"{'written to':<26} {args.out}")
    return 0


def _load_plugins(modules: list[str]) -> None:
    """Import each ``--plugin`` module (one-line error naming it when it cannot be imported)."""
    from codesign.policies import PluginError, load_plugin

    for module in modules:
        try:
            load_plugin(module)
        except PluginError as exc:
            raise ValueError(f"--plugin {module}: {exc}") from None


def _placement_memo(directory: Path | None) -> Any:
    """A `PlacementMemo` keeping placements in ``--placement-cache DIR`` (None without the flag)."""
    if directory is None:
        return None
    from codesign.policies.placement import PlacementMemo

    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--placement-cache {directory}: exists and is not a directory")
    return PlacementMemo(directory=directory)


def _noting(cls: type[argparse.Action]) -> type[argparse.Action]:
    """A subclass of ``cls`` that also notes its ``dest`` in the namespace's ``flags_given`` when its
    option is on the command line (what a default value cannot tell apart)."""

    def __call__(  # noqa: N807 - the argparse.Action protocol
        self: argparse.Action,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        namespace.flags_given = frozenset(getattr(namespace, "flags_given", frozenset())) | {self.dest}
        cls.__call__(self, parser, namespace, values, option_string)

    return type(f"Noting{cls.__name__}", (cls,), {"__call__": __call__})


def _design_conflicts(args: argparse.Namespace) -> list[str]:
    """The flags given with ``--design`` whose values its file fixes (workload, model, mapping, cost):
    every simulate flag but those of `_DESIGN_KEEPS` that is on the command line, whatever its value."""
    given: frozenset[str] = getattr(args, "flags_given", frozenset())
    return [flag for flag, dest in getattr(args, "design_fixed_flags", ()) if dest in given]


def _cmd_simulate(args: argparse.Namespace) -> int:
    from codesign.simulate import TrainingDataError, simulate
    from hwmodels import CostModel, get_platform
    from workloads.progress import stage

    _load_plugins(args.plugin)
    if args.design is not None:
        given = _design_conflicts(args)
        if given:
            raise ValueError(f"--design replays a whole design; drop {', '.join(given)} (they come from the file)")
        return _cmd_design(args)
    if args.model is None or args.platform is None:
        missing = [f for f, v in (("--model", args.model), ("--platform", args.platform)) if v is None]
        raise ValueError(f"{' and '.join(missing)} required (or --design DESIGN.json)")
    _check_args(args)
    profile = _load_profile_arg(args.profile, args.fidelity)
    if args.power_limit is not None:
        if profile is None:
            raise ValueError(f"--power-limit {args.power_limit:g}: needs --profile (the power law is the profile's)")
        profile = _power_limited(profile, args.power_limit)
    memo = _placement_memo(args.placement_cache)
    model = apply_model_flags(load_model(args.model), args)
    platform = get_platform(args.platform)
    check_platform(platform, f"--platform {args.platform}")
    _check_profile_device(args.profile, platform)
    mapping = build_mapping(args)
    check_stream_args(args)
    check_fits(model, platform, mapping, args.seed)
    stream, sources = build_stream_described(args, model)
    stream = clip_to_kv(stream, model, platform, mapping, args.seed)
    profiles = {d.name: profile for d in platform.accelerators} if profile is not None else None
    cost = CostModel(platform, fidelity=args.fidelity, profiles=profiles)
    bar = not args.no_progress and not args.json and sys.stderr.isatty()
    # off a terminal (CI logs, pipes) the run logs a start and an end line instead of the bar
    lines = stage(f"simulating {len(stream.requests)} requests of {model.name} on {platform.name}", tty=False)
    try:
        with lines if not bar and not args.no_progress else contextlib.nullcontext():
            result = simulate(
                model,
                platform,
                stream,
                mapping,
                cost_model=cost,
                seed=args.seed,
                record_events=args.out is not None,
                progress=bar,
                placements=memo,
            )
    except TrainingDataError as exc:
        verb = "needs" if len(exc.policies) == 1 else "need"
        raise ValueError(
            f"{' and '.join(exc.policies)} {verb} training routing: with --trace, pass "
            "--train-fraction F (the first F of the trace's requests train the policies and are not "
            "served), or sample a routing process with --process"
        ) from None
    return _emit(args, result, platform, sources=sources)
