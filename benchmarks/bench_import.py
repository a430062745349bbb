"""Benchmark: import the real routing data of ../shared/traces and print the seconds taken.

Run: ``python benchmarks/bench_import.py [--shared DIR] [--repeat N]``. Prints, for each format,
the best and median wall time over N runs (a fresh import each time, files read from disk; the
OS page cache is warm after the first run) and the throughput. Target (issue 2): all 200
DeepSeek-V2-Lite CSVs in under 10 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from workloads import RoutingTrace, import_trace


def _time(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    times: list[float] = []
    result: object = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def _report(name: str, times: list[float], what: str) -> None:
    print(f"{name:<34} best {min(times):7.3f} s   median {statistics.median(times):7.3f} s   {what}")


def main() -> None:
    default = Path(os.environ.get("MOE_CODESIGN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--shared", type=Path, default=default, help="the shared data folder (default ../shared)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (default 5)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the Mixtral importer warns about its 8 incomplete tokens
    traces = args.shared / "traces"
    print(f"data: {traces}  cpu count: {os.cpu_count()}  repeats: {args.repeat}")

    ds_dir = traces / "deepseek-v2-lite"
    n_files = len(list(ds_dir.glob("prompt_*_data.csv")))
    times, ds = _time(lambda: import_trace("deepseek-csv", ds_dir), args.repeat)
    assert isinstance(ds, RoutingTrace)
    rows = ds.n_tokens * ds.n_moe_layers
    _report(
        "deepseek-csv (all files)",
        times,
        f"{n_files} files, {ds.n_tokens} tokens, {rows / min(times) / 1e6:.2f} M rows/s",
    )

    mx_dir = traces / "mixtral-8x7b-instruct"
    times, mx = _time(lambda: import_trace("mixtral-jsonl", mx_dir), args.repeat)
    assert isinstance(mx, RoutingTrace)
    _report("mixtral-jsonl (both files)", times, f"{mx.n_tokens} tokens x {mx.n_moe_layers} layers")

    times, _ = _time(lambda: import_trace("olmoe-counts", traces / "olmoe-mixtral-routing-stats"), args.repeat)
    _report("olmoe-counts (olmoe, all domains)", times, "counts.json, 1.1 MB")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds.npz"
        times, _ = _time(lambda: ds.save(path), args.repeat)
        _report("save deepseek .npz (compressed)", times, f"{path.stat().st_size / 1e6:.2f} MB")
        times, _ = _time(lambda: RoutingTrace.load(path), args.repeat)
        _report("load deepseek .npz", times, "")


if __name__ == "__main__":
    main()
