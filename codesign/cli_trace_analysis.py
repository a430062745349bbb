"""``codesign trace stats|fit|synth|compare|holdout``: routing statistics and the fitted routing process.

- ``trace stats TRACE.npz [--json] [--full]``: per-layer load skew, affinity concentration,
  temporal reuse and co-activation (`workloads.stats`); ``--json`` prints one JSON object with the
  shape keys ``tokens, moe_layers, n_experts, top_k, requests`` and the statistics.
- ``trace fit TRACE.npz -o PROCESS.json``: fit a `RoutingProcess`.
- ``trace synth PROCESS.json|default|default:MODEL --tokens N --seed S -o OUT.npz``: sample a
  synthetic trace, optionally retargeted (``--n-experts E --top-k K``) and relayered (``--layers L``).
- ``trace compare A.npz B.npz [--json]``: fidelity distances between two traces (`workloads.fidelity`).
- ``trace holdout TRACE.npz [--json]``: fit on part of the requests, compare with the rest and with
  uniform random.

Every value is checked before the work starts (`codesign.cli_checks`: files exist, the output
folder is writable, sizes fit in memory), and long steps show progress (`workloads.progress`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from codesign import cli_checks as checks
from workloads.aggregated import AggregatedRoutingStats, looks_like_counts, process_from_aggregated
from workloads.defaults import default_process
from workloads.fidelity import METRICS, compare, holdout_evaluation
from workloads.process import RoutingProcess
from workloads.progress import stage
from workloads.stats import trace_stats
from workloads.trace import RoutingTrace, TraceFormatError

log = logging.getLogger(__name__)


def register_trace(trace_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``stats``, ``fit``, ``synth``, ``compare`` and ``holdout`` to ``codesign trace``."""
    p = trace_sub.add_parser(
        "stats",
        parents=parents,
        help="routing statistics of a trace",
        description="Per-layer expert load skew, inter-layer affinity, temporal reuse and "
        "co-activation of a canonical .npz trace.",
    )
    p.add_argument("trace", type=Path, metavar="TRACE.npz")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--full", action="store_true", help="with --json: include the affinity and co-activation matrices")
    p.add_argument("--max-distance", type=int, default=64, help="reuse-distance histogram range (tokens)")
    p.set_defaults(func=_cmd_stats)

    f = trace_sub.add_parser(
        "fit",
        parents=parents,
        help="fit a routing process to a trace",
        description="Fit a RoutingProcess (popularity, affinity, temporal reuse) to a trace and write it as JSON.",
    )
    f.add_argument("trace", type=Path, metavar="TRACE.npz")
    f.add_argument("-o", "--output", type=Path, required=True, metavar="PROCESS.json")
    f.add_argument("--smoothing", type=float, default=1.0, help="add-s pseudo-count (default 1)")
    f.add_argument(
        "--shrinkage",
        type=float,
        default=None,
        help="popularity weight against uniform in [0, 1] (default: cross-validated)",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--calibration-iterations", type=int, default=8)
    f.set_defaults(func=_cmd_fit)

    s = trace_sub.add_parser(
        "synth",
        parents=parents,
        help="sample a synthetic trace from a routing process",
        description="Sample a trace from PROCESS.json, or from the embedded default "
        "workload with 'default' or 'default:MODEL'.",
    )
    s.add_argument("process", metavar="PROCESS", help="PROCESS.json, 'default' or 'default:MODEL'")
    s.add_argument("--tokens", type=int, required=True, help="tokens to sample")
    s.add_argument("--seed", type=int, default=0)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--requests", type=int, default=None, help="split the tokens into R requests")
    g.add_argument("--tokens-per-request", type=int, default=None)
    s.add_argument("--n-experts", type=int, default=None, help="retarget to E experts (needs --top-k)")
    s.add_argument("--top-k", type=int, default=None, help="retarget to top-K (needs --n-experts)")
    s.add_argument("--layers", type=int, default=None, help="relayer to L MoE layers")
    s.add_argument("--phase", choices=("prefill", "decode"), default=None, help="phase written into the trace")
    s.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.npz")
    s.set_defaults(func=_cmd_synth)

    c = trace_sub.add_parser(
        "compare",
        parents=parents,
        help="fidelity distances between two traces",
        description="Jensen-Shannon distances of load, affinity rows, co-activation and "
        "reuse distances, and the reuse-rate error, between two traces.",
    )
    c.add_argument("a", type=Path, metavar="A.npz")
    c.add_argument("b", type=Path, metavar="B.npz")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_compare)

    h = trace_sub.add_parser(
        "holdout",
        parents=parents,
        help="hold-out fidelity of a process fitted to a trace",
        description="Fit on a share of the requests, sample, and compare with the held-out "
        "requests beside uniform random and popularity-only baselines.",
    )
    h.add_argument("trace", type=Path, metavar="TRACE.npz")
    h.add_argument("--train-fraction", type=float, default=0.5)
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=_cmd_holdout)


# ------------------------------------------------------------------------ handlers
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


#: Estimated peak memory of sampling, bytes per (token, MoE layer, top-k slot): measured 5-6.3 on
#: the dev machine (tracemalloc, Mixtral and DeepSeek-V2-Lite processes), plus the saved copy.
SAMPLE_BYTES_PER_SLOT = 10.0

_TRACE_WHAT = "a routing trace .npz (written by `codesign trace import|synth|record`)"


def _load_trace(path: Path) -> RoutingTrace:
    checks.input_path(path, "", what=_TRACE_WHAT)
    return RoutingTrace.load(path)


def _cmd_stats(args: argparse.Namespace) -> int:
    checks.int_range(args.max_distance, "--max-distance", low=1, why=" (reuse distances in tokens)")
    if looks_like_counts(args.trace):  # aggregated counts (e.g. OLMoE's): their own summary
        return _stats_counts(args)
    trace = _load_trace(args.trace)
    st = trace_stats(trace, full=args.full, max_distance=args.max_distance)
    if args.json:
        print(json.dumps(st))
        return 0
    print(
        f"{args.trace}: model {st['model']}, {st['tokens']} tokens, {st['requests']} requests, "
        f"{st['moe_layers']} MoE layers, {st['n_experts']} experts, top-{st['top_k']}, "
        f"null slots {_fmt(st['null_fraction'] or 0.0, 4)}"
    )
    print("col = MoE-layer column of the trace, layer = the model's layer number (moe_layer_ids)")
    load, aff, reuse, co = st["load"], st["affinity"], st["temporal_reuse"], st["coactivation"]
    ids = st["moe_layer_ids"]
    print(
        f"{'col':>3} {'layer':>5} {'gini':>6} {'entropy':>7} {'max/mean':>8} {'reuse':>6} {'aff_top1':>8} "
        f"{'aff_MI':>7} {'co_lift':>7}"
    )
    for layer in range(st["moe_layers"]):
        a_top = aff.get("top1", [])[layer] if layer < len(aff.get("top1", [])) else None
        a_mi = aff.get("mutual_information_bits", [])[layer] if layer < len(aff.get("top1", [])) else None
        print(
            f"{layer:3d} {ids[layer]:5d} {_fmt(load['gini'][layer]):>6} {_fmt(load['entropy'][layer]):>7} "
            f"{_fmt(load['max_over_mean'][layer], 2):>8} {_fmt(reuse['rate'][layer]):>6} {_fmt(a_top):>8} "
            f"{_fmt(a_mi):>7} {_fmt(co['max_lift'][layer], 2):>7}"
        )
    print(
        f"mean: gini {_fmt(load['mean_gini'])}, entropy {_fmt(load['mean_entropy'])}, "
        f"max/mean {_fmt(load['mean_max_over_mean'], 2)}, reuse {_fmt(reuse['mean_rate'])}, "
        f"affinity top-1 {_fmt(aff.get('mean_top1'))} (uniform {1 / st['n_experts']:.3f}), "
        f"MI {_fmt(aff.get('mean_mutual_information_bits'))} bits"
    )
    hist = reuse["reuse_distance"]
    total = sum(hist["counts"]) + hist["first_use"]
    if total:
        pairs = zip(hist["distances"][:4], hist["counts"][:4], strict=True)
        head = ", ".join(f"{d}: {c / total:.3f}" for d, c in pairs)
        print(f"reuse distance (share of uses): {head}, first use: {hist['first_use'] / total:.3f}")
    lru = st["lru_hit_rate"]
    print(
        "LRU hit rate (per-layer cache, cold per request): "
        + ", ".join(f"{c} experts {_fmt(v)}" for c, v in zip(lru["cache_experts"], lru["mean"], strict=True))
    )
    return 0


def _stats_counts(args: argparse.Namespace) -> int:
    """``trace stats COUNTS.json``: the summary of aggregated counts (`AggregatedRoutingStats.summary`)."""
    st = AggregatedRoutingStats.load_json(args.trace).summary()
    if args.json:
        print(json.dumps(st))
        return 0
    print(
        f"{args.trace}: aggregated counts of {st['model']} ({st['domain']}), {st['n_experts']} experts, "
        f"top-{st['top_k']}; no per-token routing (no reuse or LRU statistics)"
    )
    print(f"{'layer':>5} {'tokens':>10} {'gini':>6} {'entropy':>7} {'max/mean':>8}")
    for i, layer in enumerate(st["layers"]):
        load = st["load"]
        print(
            f"{layer:5d} {st['tokens'][i]:10d} {_fmt(load['gini'][i]):>6} {_fmt(load['entropy'][i]):>7} "
            f"{_fmt(load['max_over_mean'][i], 2):>8}"
        )
    for pr, mi, t1 in zip(
        st["layer_pairs"], st["pair_mutual_information_bits"], st["pair_top1_conditional"], strict=True
    ):
        print(f"layers {pr[0]} -> {pr[1]}: MI {_fmt(mi)} bits, top-1 conditional {_fmt(t1)} (rank-aligned pairs)")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    checks.seed(args.seed)
    checks.float_range(args.smoothing, "--smoothing", low=0.0, high=math.inf, low_open=True, high_open=True)
    checks.float_range(args.shrinkage, "--shrinkage", low=0.0, high=1.0)
    checks.int_range(args.calibration_iterations, "--calibration-iterations", low=0)
    checks.output_file(args.output, "-o", suffixes=(".json",), what="the routing process")
    if looks_like_counts(args.trace):  # popularity from the counts, the rest from the model's default
        counts = AggregatedRoutingStats.load_json(args.trace)
        with stage(f"composing a routing process for {counts.model} from the counts in {args.trace}"):
            proc = process_from_aggregated(counts, seed=args.seed)
        proc.save(args.output)
        print(f"wrote {args.output}: {proc!r}; {proc.meta['composed_from']['popularity']}")
        return 0
    trace = _load_trace(args.trace)
    desc = (
        f"fitting a routing process to {args.trace} ({trace.n_tokens} tokens, {trace.n_moe_layers} MoE layers, "
        f"{trace.n_experts} experts)"
    )
    with stage(desc):
        proc = RoutingProcess.fit(
            trace,
            smoothing=args.smoothing,
            shrinkage=args.shrinkage,
            seed=args.seed,
            calibration_iterations=args.calibration_iterations,
        )
    proc.save(args.output)
    ach = proc.meta.get("calibration", {}).get("achieved", {})
    print(
        f"wrote {args.output}: {proc!r}; calibration max errors: load {_fmt(ach.get('load_max_rel_error'))} "
        f"(relative), MI {_fmt(ach.get('mi_abs_error_bits'))} bits, reuse {_fmt(ach.get('reuse_abs_error'))}"
    )
    return 0


def _load_process(spec: str) -> RoutingProcess:
    if spec == "default":
        return default_process()
    if spec.startswith("default:"):
        return default_process(spec.split(":", 1)[1])
    return RoutingProcess.load(spec)


def _process_shape(spec: str) -> tuple[int, int, int, RoutingProcess | None]:
    """``(n_moe_layers, n_experts, top_k, process or None)`` of PROCESS without deriving anything: a
    default workload's shape is its model preset's; a file is loaded (cheap) and returned."""
    from workloads.model import get_model

    if spec == "default" or spec.startswith("default:"):
        name = spec.split(":", 1)[1] if ":" in spec else "mixtral-8x7b"
        try:
            model = get_model(name)
        except (KeyError, ValueError) as exc:
            raise checks.BadInputError(f"PROCESS {spec}: {exc}") from None
        return model.n_moe_layers, model.n_experts, model.top_k, None
    checks.input_path(
        spec, "PROCESS", what="a routing process .json (codesign trace fit), 'default' or 'default:MODEL'"
    )
    proc = RoutingProcess.load(spec)
    return proc.n_moe_layers, proc.n_experts, proc.top_k, proc


def _check_synth(args: argparse.Namespace) -> RoutingProcess | None:
    """Every flag of ``trace synth`` checked before a process is derived or sampled; returns the
    process when PROCESS is a file (already loaded)."""
    if (args.n_experts is None) != (args.top_k is None):
        raise checks.BadInputError("--n-experts/--top-k: give both to retarget, or neither")
    checks.int_range(args.tokens, "--tokens", low=1)
    checks.seed(args.seed)
    many = " (at most --tokens: each request needs at least one token)"
    checks.int_range(args.requests, "--requests", low=1, high=args.tokens, why=many)
    checks.int_range(
        args.tokens_per_request, "--tokens-per-request", low=1, high=args.tokens, why=" (at most --tokens)"
    )
    checks.int_range(args.n_experts, "--n-experts", low=1)
    checks.int_range(args.top_k, "--top-k", low=1, high=args.n_experts, why=" (at most --n-experts)")
    checks.int_range(args.layers, "--layers", low=1)
    checks.output_file(args.output, "-o", suffixes=(".npz",), what="the synthetic trace")
    n_layers, _, top_k, proc = _process_shape(args.process)
    n_layers = args.layers or n_layers
    top_k = args.top_k or top_k
    checks.fits_in_memory(
        SAMPLE_BYTES_PER_SLOT * args.tokens * n_layers * top_k,
        f"sampling {args.tokens} tokens x {n_layers} MoE layers x top-{top_k}",
        f"--tokens {args.tokens}",
    )
    return proc


def _cmd_synth(args: argparse.Namespace) -> int:
    loaded = _check_synth(args)
    proc = loaded if loaded is not None else _load_process(args.process)
    if args.n_experts is not None:
        with stage(f"retargeting {args.process} to {args.n_experts} experts, top-{args.top_k}"):
            proc = proc.retarget(args.n_experts, args.top_k, seed=args.seed)
    if args.layers is not None:
        with stage(f"relayering {args.process} to {args.layers} MoE layers"):
            proc = proc.relayer(args.layers, seed=args.seed)
    phase = None if args.phase is None else (0 if args.phase == "prefill" else 1)
    desc = f"sampling {args.tokens} tokens x {proc.n_moe_layers} MoE layers x top-{proc.top_k} from {args.process}"
    with stage(desc):
        trace = proc.sample(
            args.tokens,
            seed=args.seed,
            n_requests=args.requests,
            tokens_per_request=args.tokens_per_request,
            phase=phase,
        )
    trace.save(args.output)
    print(f"wrote {args.output}: {trace!r}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    checks.input_path(args.a, "A", what=_TRACE_WHAT)
    checks.input_path(args.b, "B", what=_TRACE_WHAT)
    a, b = RoutingTrace.load(args.a), RoutingTrace.load(args.b)
    if (a.n_moe_layers, a.n_experts) != (b.n_moe_layers, b.n_experts):
        raise TraceFormatError(
            f"{args.a} ({a.meta.get('model')}) has {a.n_moe_layers} MoE layers x {a.n_experts} experts but "
            f"{args.b} ({b.meta.get('model')}) has {b.n_moe_layers} x {b.n_experts}; expected two traces of the "
            "same model shape"
        )
    rep = compare(a, b).to_dict()
    if args.json:
        print(json.dumps({"a": str(args.a), "b": str(args.b), **rep}))
        return 0
    print(f"{args.a} vs {args.b} (lower is closer; JS distances in [0, 1])")
    for m in METRICS:
        print(f"  {m:18s} {_fmt(rep[m], 4)}")
    print(f"  reuse rate: {_fmt(rep['reuse_rate_a'])} vs {_fmt(rep['reuse_rate_b'])}")
    return 0


def _cmd_holdout(args: argparse.Namespace) -> int:
    checks.float_range(args.train_fraction, "--train-fraction", low=0.0, high=1.0, low_open=True, high_open=True)
    checks.seed(args.seed)
    trace = _load_trace(args.trace)
    if trace.n_requests < 2:
        raise TraceFormatError(
            f"{args.trace}: {trace.n_requests} request(s); holdout splits by request and expected at least 2"
        )
    desc = (
        f"hold-out evaluation of {args.trace} ({trace.n_requests} requests, {trace.n_tokens} tokens): fit on "
        f"{args.train_fraction:g} of the requests, sample, compare"
    )
    with stage(desc):
        res = holdout_evaluation(trace, args.train_fraction, seed=args.seed)
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"{args.trace}: fit on {res['train_requests']} requests ({res['train_tokens']} tokens), compared with "
        f"{res['heldout_requests']} held-out requests ({res['heldout_tokens']} tokens); lower is closer"
    )
    print(f"  {'metric':18s} {'fitted':>8s} {'uniform':>8s} {'pop-only':>8s}")
    for m in METRICS:
        print(
            f"  {m:18s} {_fmt(res['fitted'][m], 4):>8s} {_fmt(res['uniform'][m], 4):>8s} "
            f"{_fmt(res['popularity_only'][m], 4):>8s}"
        )
    f, tv = res["fitted"], res["train_vs_heldout"]
    print(
        f"  LRU hit rate, cache of 25% / 50% of experts: held-out {_fmt(f['lru_hit_25_b'])} / "
        f"{_fmt(f['lru_hit_50_b'])}, fitted {_fmt(f['lru_hit_25_a'])} / {_fmt(f['lru_hit_50_a'])}, "
        f"training requests {_fmt(tv['lru_hit_25_train'])} / {_fmt(tv['lru_hit_50_train'])} (noise floor)"
    )
    return 0
