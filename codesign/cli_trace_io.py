"""``codesign trace import`` and ``codesign trace record``: routing traces in.

``trace import --format FORMAT SRC... -o OUT`` reads real routing data with a registered importer
(`workloads.importers`) and writes the canonical ``.npz`` (traces) or ``.json`` (aggregated
statistics). ``trace record --hf-config CONFIG_OR_PRESET ... -o OUT.npz`` runs a Hugging Face MoE
model (random weights from a config, or local pretrained weights with ``--hf-model``) and records
its routing with forward hooks (`workloads.tracer`). Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

from codesign import cli_checks as checks
from workloads.aggregated import AggregatedRoutingStats
from workloads.importers import (
    import_trace,
    importer_descriptions,
    importer_names,
    importer_options,
    load_plugin,
)
from workloads.trace import RoutingTrace

log = logging.getLogger(__name__)

#: Tiny presets of ``trace record --hf-config`` (kept here so that --help needs no torch import;
#: a test checks it equals `workloads.tracer.TINY_PRESETS`).
TINY_PRESET_NAMES = (
    "tiny-mixtral",
    "tiny-qwen2-moe",
    "tiny-olmoe",
    "tiny-deepseek-v2",
    "tiny-qwen3-moe",
    "tiny-gpt-oss",
)


def register_trace(trace_sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``import`` and ``record`` to the ``codesign trace`` sub-parsers."""
    formats = "; ".join(f"{k}: {v}" for k, v in importer_descriptions().items())
    p = trace_sub.add_parser(
        "import",
        parents=parents,
        help="import real routing data (Mixtral JSONL, DeepSeek CSV, OLMoE counts)",
        description=f"Import routing data into the canonical format. Formats: {formats}.",
    )
    p.add_argument(
        "--format",
        "-f",
        required=True,
        dest="fmt",
        help=f"input format: {', '.join(importer_names())}, or one that a --plugin module registers",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this Python module first (an importer plug-in registering more formats); repeatable",
    )
    p.add_argument("--n-experts", type=int, default=None, help="table: experts per MoE layer (instead of --model)")
    p.add_argument("--top-k", type=int, default=None, help="table: slots per token and layer (default: most ids seen)")
    p.add_argument("src", nargs="+", metavar="SRC", help="input files or directories")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file: .npz for traces, .json for aggregated counts (olmoe-counts)",
    )
    p.add_argument(
        "--missing",
        choices=("mark", "drop"),
        default=None,
        help="mixtral-jsonl: keep tokens lacking layers marked -1 (mark, default) or drop them",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model preset the data must fit (trace formats), or counts.json model key "
        "(olmoe-counts: olmoe, olmoe-sft, olmoe-dpo, mistral)",
    )
    p.add_argument("--domain", default=None, help="olmoe-counts: a text domain or 'all' (default)")
    p.set_defaults(func=_cmd_import)

    r = trace_sub.add_parser(
        "record",
        parents=parents,
        help="record the routing of a Hugging Face MoE model (forward hooks)",
        description="Run a Hugging Face MoE model offline and record its router decisions for the prompt "
        "(prefill) and for greedy generation (decode). Needs the extras: "
        "pip install moe-codesign[torch,hf].",
    )
    r.add_argument(
        "--hf-config",
        required=True,
        metavar="CONFIG_OR_PRESET",
        help="config.json, a directory holding one, or a tiny preset (random weights): " + ", ".join(TINY_PRESET_NAMES),
    )
    r.add_argument(
        "--hf-model",
        metavar="DIR",
        default=None,
        help="directory with local pretrained weights (from_pretrained, offline)",
    )
    src = r.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="prompt text (needs a tokenizer in --hf-model DIR)")
    src.add_argument("--prompt-ids", default=None, metavar="IDS", help="comma-separated token ids, e.g. 1,2,3")
    r.add_argument(
        "--prompt-len",
        type=int,
        default=16,
        help="length of the random prompt drawn from --seed when no prompt is given (default 16)",
    )
    r.add_argument("--max-new-tokens", type=int, default=8, help="decode tokens to generate (default 8)")
    r.add_argument("--seed", type=int, default=0, help="seed of random weights and random prompt ids")
    r.add_argument("--no-stop-at-eos", action="store_true", help="keep generating after an end-of-sequence token")
    r.add_argument(
        "--max-params",
        type=float,
        default=2e9,
        help="largest model built with random weights from a config (default 2e9 parameters)",
    )
    r.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="output trace (.npz)")
    r.set_defaults(func=_cmd_record)


def _summary(obj: RoutingTrace | AggregatedRoutingStats) -> str:
    if isinstance(obj, RoutingTrace):
        extra = ""
        if "n_incomplete_tokens" in obj.meta:
            extra = f", incomplete_tokens={obj.meta['n_incomplete_tokens']} ({obj.meta.get('missing')})"
        return (
            f"model={obj.meta.get('model')} tokens={obj.n_tokens} requests={obj.n_requests} "
            f"moe_layers={obj.n_moe_layers} n_experts={obj.n_experts} top_k={obj.top_k} "
            f"weights={'yes' if obj.weights is not None else 'no'}{extra}"
        )
    return (
        f"model={obj.model} ({obj.source_model}) domain={obj.domain} [{','.join(obj.domains)}] "
        f"n_experts={obj.n_experts} top_k={obj.top_k} layers={obj.layers} pairs={obj.layer_pairs}"
    )


def _cmd_import(args: argparse.Namespace) -> int:
    for module in args.plugin:
        load_plugin(module)
    if args.fmt not in importer_names():  # a usage error, as argparse's choices would give (plug-ins load first)
        print(
            f"codesign trace import: error: argument --format/-f: invalid choice: {args.fmt!r} "
            f"(choose from {', '.join(importer_names())}, or load a plug-in with --plugin MODULE)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    options: dict[str, Any] = {}
    for flag, key in (("--n-experts", "n_experts"), ("--top-k", "top_k")):
        value = getattr(args, key)
        if value is not None:
            if key not in importer_options(args.fmt):
                raise ValueError(f"{flag} applies to formats taking {key} (table), not {args.fmt}")
            options[key] = value
    if args.missing is not None:
        if args.fmt != "mixtral-jsonl":
            raise ValueError(f"--missing applies to mixtral-jsonl only, not {args.fmt}")
        options["missing"] = args.missing
    if args.model is not None:
        options["model"] = args.model
    if args.fmt == "table" and args.model is None and args.n_experts is None:
        raise ValueError("-f table needs --model PRESET or --n-experts E (the expert ids must fit; --top-k optional)")
    if args.fmt == "table" and args.model is not None and (args.n_experts is not None or args.top_k is not None):
        raise ValueError("-f table: give --model PRESET, or --n-experts E (and --top-k K), not both")
    if args.domain is not None:
        if args.fmt != "olmoe-counts":
            raise ValueError(f"--domain applies to olmoe-counts only, not {args.fmt}")
        options["domain"] = args.domain
    # aggregated counts are JSON, traces .npz: checked with the other cheap checks, before importing
    counts = args.fmt == "olmoe-counts"
    out = checks.output_file(
        args.output,
        "-o",
        suffixes=(".json",) if counts else (".npz",),
        what=f"the {'aggregated counts' if counts else 'trace'} ({args.fmt})",
    )
    for src in args.src:
        checks.input_path(src, "SRC", what=f"{args.fmt} input files or a folder of them", folder_ok=True)
    obj = import_trace(args.fmt, args.src, **options)
    if isinstance(obj, AggregatedRoutingStats):
        if out.suffix != ".json":
            raise ValueError(f"{out}: aggregated counts ({args.fmt}) are written as JSON; give a .json output")
        obj.save(out)
    else:
        if out.suffix != ".npz":
            raise ValueError(f"{out}: traces are written as .npz; give a .npz output")
        obj.save(out)
    print(f"wrote {out}: {_summary(obj)}")
    return 0


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for i, part in enumerate(text.split(",")):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"--prompt-ids item {i} is {part!r}, expected a non-negative integer (e.g. 1,2,3)")
        ids.append(int(part))
    if not ids:
        raise ValueError("--prompt-ids is empty")
    return ids


def _cmd_record(args: argparse.Namespace) -> int:
    # No network: everything below must come from local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from workloads import tracer

    out = checks.output_file(args.output, "-o", suffixes=(".npz",), what="the recorded trace")
    checks.seed(args.seed)
    checks.float_range(args.max_params, "--max-params", low=0.0, high=math.inf, low_open=True, high_open=True)
    if args.hf_model is not None:
        checks.input_path(args.hf_model, "--hf-model", what="a folder of local pretrained weights", folder_ok=True)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt_len < 1:
        raise ValueError(f"--prompt-len must be >= 1, got {args.prompt_len}")
    if args.prompt is not None and args.hf_model is None:
        raise ValueError("--prompt needs a tokenizer: give --hf-model DIR with tokenizer files, or use --prompt-ids")
    ids = _parse_ids(args.prompt_ids) if args.prompt_ids is not None else None  # before loading a model
    model, name = tracer.load_model(args.hf_config, hf_model=args.hf_model, seed=args.seed, max_params=args.max_params)
    if args.prompt is not None:
        inputs: Any = tracer.load_tokenizer(args.hf_model)
    elif ids is not None:
        inputs = ids
    else:
        inputs = tracer.random_prompt_ids(model, args.prompt_len, seed=args.seed)
    trace = tracer.record_routing(
        model,
        inputs,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        stop_at_eos=not args.no_stop_at_eos,
        model_name=name,
    )
    trace.save(out)
    n_pre = int((trace.phase == 0).sum())
    print(f"wrote {out}: {_summary(trace)} prefill={n_pre} decode={trace.n_tokens - n_pre}")
    return 0
