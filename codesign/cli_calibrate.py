"""``codesign calibrate run|import-vidur|validate``: measure, import and check calibration profiles.

- ``run --device cpu|cuda [--quick] -o PROFILE.json``: time real torch kernels on this machine
  (:mod:`hwmodels.calibrate_run`) and write the fitted :class:`~hwmodels.calibration.CalibrationProfile`.
  On the CPU it runs one thread timed with the process CPU clock unless ``--threads``/``--clock``
  say otherwise (:func:`hwmodels.calibrate_run.resolve_cpu_timing` says why). The fit's sanity
  checks (:func:`hwmodels.calibration.assess_fit`) are printed and kept in the profile's
  ``quality`` block; problems are warnings on stderr, and an "absurd" fit is not written unless
  ``--force``.
- ``import-vidur DIR -o PROFILE.json [--device a100|h100]``: fit a GPU profile to Vidur's measured
  tables (:mod:`hwmodels.vidur_import`), keeping the data's device name.
- ``validate PROFILE [--against CSV_OR_DIR] [--layer TRACE] [--json]``: predicted vs measured on the
  profile's held-out shapes (or every GEMM of another table), and optionally on a whole real torch
  MoE layer timed on this CPU with routing from a real trace (:mod:`hwmodels.validate`). PROFILE is a
  JSON file or the name of a shipped profile (``a100``, ``h100``). Warnings (stderr, and the
  ``warnings`` list of ``--json``) when the profile's fit quality is suspect or absurd, and when
  ``--against`` holds another device's measurements than the profile's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from codesign import cli_checks as checks


def _positive_int(text: str) -> int:
    """argparse ``type`` for integers >= 1 (argparse prefixes its errors with ``argument <flag>:``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (>= 1), got {value}")
    return value


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``calibrate`` with its three sub-commands."""
    cal = sub.add_parser(
        "calibrate",
        parents=parents,
        help="calibrate device models against real kernel runs",
        description="Measure kernels (run), import measured GPU tables (import-vidur), and check "
        "a profile's predictions (validate).",
    )
    cal_sub = cal.add_subparsers(dest="calibrate_command", metavar="CALIBRATE_COMMAND")
    cal.set_defaults(func=lambda args: _help(cal))

    run = cal_sub.add_parser(
        "run",
        parents=parents,
        help="time real torch kernels here and fit a profile",
        description="GEMM sweeps over tokens per expert (1..4096) for expert-FFN shapes, a gated "
        "expert FFN, grouped experts, memory bandwidth and (CUDA) host->device "
        "copies; fits the efficiency curves and writes a CalibrationProfile JSON.",
    )
    run.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    size = run.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="short sweep (20-50 s on one core of the 2-core dev machine)"
    )
    size.add_argument(
        "--sweep", choices=("quick", "full", "tiny"), default=None, help="sweep size (default full; tiny is for tests)"
    )
    run.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help="element type (default fp32 on cpu, bf16 on cuda)",
    )
    run.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch threads (default 1 on the CPU, torch's choice on CUDA)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the random operands")
    run.add_argument("--name", default=None, help="profile name (default <kind>-<sweep>)")
    run.add_argument("--peak-tflops", type=float, default=None, help="reference peak TFLOP/s at the dtype")
    run.add_argument("--peak-memory-gbps", type=float, default=None, help="reference memory bandwidth, GB/s")
    run.add_argument("--link-gbps", type=float, default=None, help="reference host link bandwidth per direction")
    run.add_argument(
        "--clock",
        choices=("wall", "process"),
        default=None,
        help="CPU timer: the process CPU time (default with one thread: robust on machines shared "
        "with other work) or the wall clock (default with --threads > 1)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="write the profile even when its fit fails the sanity checks (quality 'absurd')",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-o", "--output", required=True, help="profile JSON to write")
    run.set_defaults(func=_cmd_run)

    imp = cal_sub.add_parser(
        "import-vidur",
        parents=parents,
        help="fit a GPU profile to Vidur's measured tables",
        description="Read compute/<device>/*.csv of a Vidur profiling folder (times in ms), "
        "derive the QKV, O, up and down GEMM shapes at every TP degree, fit, and "
        "write a profile (held-out: TP 4 and every 5th token count).",
    )
    imp.add_argument("path", help="Vidur folder (root, compute/, compute/<device>/) or one CSV")
    imp.add_argument("--device", default=None, help="which device's tables when several (e.g. a100, h100)")
    imp.add_argument("--name", default=None, help="profile name (default vidur-<device>)")
    imp.add_argument("--no-samples", action="store_true", help="keep fitted parameters only (small file)")
    imp.add_argument("-o", "--output", required=True, help="profile JSON to write")
    imp.set_defaults(func=_cmd_import)

    val = cal_sub.add_parser(
        "validate",
        parents=parents,
        help="predicted vs measured errors of a profile",
        description="Errors (MAPE, median, max, n, per op) on the profile's held-out shapes, "
        "or with --against on every GEMM of another measured table; with --layer, "
        "also a whole real torch MoE layer timed on this CPU (CPU profiles).",
    )
    val.add_argument("profile", help="profile JSON, or a shipped profile name (a100, h100)")
    val.add_argument("--against", default=None, help="another table: Vidur CSV or folder, or a profile JSON")
    val.add_argument("--device", default=None, help="device of --against when its folder holds several")
    val.add_argument(
        "--layer",
        default=None,
        metavar="TRACE",
        help="time a real MoE layer routed by this trace (Mixtral JSONL or DeepSeek CSV folder)",
    )
    val.add_argument(
        "--layers",
        default="0,8,16,24,-1",
        help="which trace layers (indices into its sorted layers; default 0,8,16,24,-1)",
    )
    val.add_argument("--tokens", type=_positive_int, default=256, help="tokens per layer batch (default 256)")
    val.add_argument("--shape", default="1024x3584", help="d_model x d_ff of the layer's experts (default 1024x3584)")
    val.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads for the layer (default: the profile's)"
    )
    val.add_argument("--repeats", type=_positive_int, default=5, help="timed runs per layer (default 5)")
    val.add_argument(
        "--clock",
        choices=("wall", "process"),
        default=None,
        help="CPU timer for the layer (default: the one the profile was measured with)",
    )
    val.add_argument("--json", action="store_true", help="print one JSON object")
    val.set_defaults(func=_cmd_validate)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from hwmodels.calibrate_run import RunConfig, SweepPlan, run_calibration
    from hwmodels.calibration import CalibrationError
    from hwmodels.validate import quality_warnings, validate_heldout

    checks.output_file(args.output, "-o", suffixes=(".json",), what="the calibration profile")
    checks.seed(args.seed)
    if args.device == "cpu":
        checks.threads(args.threads)
    for flag, value in (
        ("--peak-tflops", args.peak_tflops),
        ("--peak-memory-gbps", args.peak_memory_gbps),
        ("--link-gbps", args.link_gbps),
    ):
        checks.float_range(value, flag, low=0.0, high=1e9, low_open=True)
    sweep = "quick" if args.quick else (args.sweep or "full")
    plan = {"quick": SweepPlan.quick, "full": SweepPlan.full, "tiny": SweepPlan.tiny}[sweep]()
    config = RunConfig(
        device=args.device,
        plan=plan,
        dtype=args.dtype,
        threads=args.threads,
        seed=args.seed,
        name=args.name,
        peak_flops=args.peak_tflops * 1e12 if args.peak_tflops else None,
        peak_memory_Bps=args.peak_memory_gbps * 1e9 if args.peak_memory_gbps else None,
        link_Bps=args.link_gbps * 1e9 if args.link_gbps else None,
        clock=args.clock,
    )
    profile = run_calibration(config, progress=not args.no_progress)
    quality = profile.quality
    for warning in quality_warnings(profile):
        print(f"WARNING: {warning}", file=sys.stderr)
    if quality.get("status") == "absurd":
        hint = (
            "rerun on a quieter machine, with one thread and the process clock (the defaults: no --threads "
            "or --clock flags), or pinned to a core (taskset -c 1)"
        )
        if not args.force:
            raise CalibrationError(
                f"{args.output}: not written: the fit failed its sanity checks (quality "
                f"'absurd'; see the warnings above); {hint}; or pass --force to write it anyway"
            )
        print(f"WARNING: writing {args.output} anyway (--force); its quality block says 'absurd'", file=sys.stderr)
    out = profile.save(args.output)
    report = validate_heldout(profile)
    fp = profile.fingerprint
    print(
        f"wrote {out}: {len(profile.samples)} samples on {profile.device_name} ({profile.dtype}, "
        f"{fp.get('torch_threads')} thread(s), clock {fp.get('clock')}, {fp.get('sweep_seconds')} s, "
        f"1-min load average "
        f"{fp.get('loadavg_start')} -> {fp.get('loadavg_end')})"
    )
    _print_fit(profile)
    _print_quality(profile)
    print(report.format_text())
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from hwmodels.validate import quality_warnings, validate_heldout
    from hwmodels.vidur_import import import_vidur

    checks.output_file(args.output, "-o", suffixes=(".json",), what="the calibration profile")
    checks.input_path(args.path, "PATH", what="a Vidur profiling folder or CSV", folder_ok=True)
    profile = import_vidur(args.path, device=args.device, name=args.name)
    report = validate_heldout(profile)
    saved = profile.without_samples() if args.no_samples else profile
    out = saved.save(args.output)
    print(
        f"wrote {out}: device {profile.device_name}, {len(profile.samples)} samples "
        f"({sum(s.heldout for s in profile.samples)} held out)"
    )
    for warning in quality_warnings(profile):
        print(f"WARNING: {warning}", file=sys.stderr)
    _print_fit(profile)
    _print_quality(profile)
    print(report.format_text())
    return 0


def _print_fit(profile: Any) -> None:
    g = profile.gemm_fit
    print(
        f"fit: GEMM t0 {g.t0_s * 1e6:.2f} us, compute efficiency {g.eff_compute:.3f} of "
        f"{profile.peaks.flops / 1e12:.3g} TFLOP/s, operand bandwidth {g.bandwidth_Bps / 1e9:.1f} GB/s, "
        f"sharpness {g.sharpness:.2f}, half occupancy {g.half_occupancy_elems:.3g} elements; "
        f"memory efficiency {profile.memory():.3f} of {profile.peaks.memory_Bps / 1e9:.1f} GB/s"
    )
    for key, fit in profile.copy_fits.items():
        print(f"fit: {key} host->device copy {fit.bandwidth_Bps / 1e9:.2f} GB/s + {fit.t0_s * 1e6:.1f} us")


def _print_quality(profile: Any) -> None:
    q = profile.quality
    print(f"fit quality: {q.get('status')}" + "".join(f"; {p}" for p in q.get("problems", [])))


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _load_profile(spec: str) -> Any:
    from hwmodels.calibration import CalibrationError, CalibrationProfile, default_profile_names, load_default_profile

    path = Path(spec)
    if path.exists():
        return CalibrationProfile.load(path)
    if spec.lower() in default_profile_names():
        return load_default_profile(spec)
    raise CalibrationError(f"{spec}: no such profile file, and not a shipped profile ({default_profile_names()})")


def _parse_layer_flags(layers_text: str, shape_text: str) -> tuple[list[int], int, int]:
    """``--layers`` (comma-separated integers) and ``--shape`` (``D_MODELxD_FF``, both >= 1)."""
    from hwmodels.calibration import CalibrationError

    try:
        layers = [int(v) for v in layers_text.split(",") if v.strip()]
    except ValueError:
        raise CalibrationError(
            f"--layers {layers_text!r}: expected comma-separated layer indices, e.g. '0,8,16'"
        ) from None
    if not layers:
        raise CalibrationError(f"--layers {layers_text!r}: expected at least one layer index, e.g. '0,8,16'")
    try:
        d_model, d_ff = (int(v) for v in shape_text.lower().split("x"))
    except ValueError:
        raise CalibrationError(f"--shape {shape_text!r}: expected D_MODELxD_FF, e.g. '1024x3584'") from None
    if d_model < 1 or d_ff < 1:
        raise CalibrationError(f"--shape {shape_text!r}: expected positive sizes, e.g. '1024x3584'")
    return layers, d_model, d_ff


def _cmd_validate(args: argparse.Namespace) -> int:
    from hwmodels.calibration import CalibrationError
    from hwmodels.validate import (
        ErrorStats,
        against_device,
        device_mismatch,
        quality_warnings,
        read_trace_routing,
        validate_heldout,
        validate_moe_layer,
        validate_samples,
    )
    from hwmodels.validate import load_against as load_against_samples

    checks.threads(args.threads)
    if args.against:
        checks.input_path(args.against, "--against", what="a Vidur CSV or folder, or a profile JSON", folder_ok=True)
    if args.layer:
        checks.input_path(args.layer, "--layer", what="a Mixtral JSONL or DeepSeek CSV trace folder", folder_ok=True)
        _parse_layer_flags(args.layers, args.shape)
    profile = _load_profile(args.profile)
    warnings = quality_warnings(profile)
    if args.against:
        mismatch = device_mismatch(profile, against_device(args.against, device=args.device))
        if mismatch:
            warnings.append(mismatch)
        report = validate_samples(
            profile, load_against_samples(args.against, device=args.device), against=str(args.against)
        )
    elif profile.samples:
        report = validate_heldout(profile)
    elif args.layer is None:
        raise CalibrationError(f"profile {profile.name!r} keeps no samples; pass --against TABLE or --layer TRACE")
    else:
        report = None
    result: dict[str, Any] = report.to_dict() if report is not None else {"profile": profile.name}
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    result["warnings"] = warnings
    if args.layer:
        layers, d_model, d_ff = _parse_layer_flags(args.layers, args.shape)
        routings = read_trace_routing(args.layer, layers=layers, max_tokens=args.tokens)
        counts = sorted({int(r.experts.shape[0]) for r in routings})
        if counts[0] < args.tokens:
            print(
                f"WARNING: --tokens {args.tokens}: the trace {args.layer} has only {counts[0]} tokens at some "
                "chosen layer; timing what it has",
                file=sys.stderr,
            )
        load_start = _loadavg()
        stats, results = validate_moe_layer(
            profile, routings, d_model=d_model, d_ff=d_ff, repeats=args.repeats, threads=args.threads, clock=args.clock
        )
        load_end = _loadavg()
        layer_stats: ErrorStats = stats
        result["layer"] = {
            **layer_stats.to_dict(),
            "d_model": d_model,
            "d_ff": d_ff,
            "tokens": counts[0] if len(counts) == 1 else counts,
            "tokens_requested": args.tokens,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "results": [
                {
                    "source": r.source,
                    "measured_s": r.measured_s,
                    "predicted_s": r.predicted_s,
                    "predicted_gemm_s": r.predicted_gemm_s,
                    "pct_error": r.pct_error,
                    "tokens_per_expert": list(r.tokens_per_expert),
                }
                for r in results
            ],
        }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    if report is not None:
        print(report.format_text())
    if args.layer:
        lay = result["layer"]
        print(
            f"whole MoE layer (d_model {lay['d_model']}, d_ff {lay['d_ff']}, {lay['tokens']} tokens, "
            f"routing {args.layer}):"
        )
        for r in lay["results"]:
            print(
                f"  {r['source']}: measured {r['measured_s'] * 1e3:.2f} ms, predicted "
                f"{r['predicted_s'] * 1e3:.2f} ms ({r['pct_error']:+.1f}%)"
            )
        print(
            f"  layers n={lay['n']}: MAPE {lay['mape']:.2f}%, median {lay['median_abs_pct_error']:.2f}%, "
            f"max {lay['max_abs_pct_error']:.2f}% (1-min load average {load_start} -> {load_end})"
        )
    return 0
