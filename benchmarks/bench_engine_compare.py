"""Old engine vs current engine, side by side in one run, plus a vectorised numpy "floor".

Each engine runs in its own subprocess whose ``PYTHONPATH`` points at its source tree (the old one
is a git worktree outside the repo, e.g. ``git worktree add /work/old-engine 725c1c8``), so the two
never share an import; the child checks that ``codesign`` really came from the tree it was given.
Both are driven only through the public API that both have: ``codesign.simulate.simulate``, the
model/platform presets, ``Mapping``/``CacheSpec``/``BatchingSpec`` and ``workloads.requests.Request``.

Routing is drawn ONCE, before any clock starts, by a subprocess of the current tree (the package's
default routing process of each model, ``ProcessRouting(seed=0)``) and saved to an ``.npz``; every
engine replays exactly the same rows, so the cases are the same work for both.

Cases (sized so that the whole run takes a few minutes on 2 cores):

* ``mixtral-b1``   Mixtral-8x7B on ``h100-pcie5-host``, LRU over 25 % of the experts, the rest
  fetched from host DRAM (as benchmarks/bench_simulator.py), 1 request, prompt 16, 1,000 decode steps.
* ``mixtral-b64``  the same platform and mapping, 64 requests together, prompt 16, 300 decode steps.
* ``dsv3-ep8-rr``  DeepSeek-V3 (fp8) on ``dgx-h100`` (8 x H100-SXM), expert parallel with
  ``round-robin`` placement; 671 B parameters do not fit in 8 x 80 GB, so 75 % of each GPU's
  experts are resident (LRU) and the rest are fetched from host DRAM; 8 requests, prompt 16,
  8 decode steps. Its routing is a numpy stand-in (`_SkewedRouting`: Zipf(0.8) popularity per
  layer, Gumbel-top-8), because deriving DeepSeek-V3's default routing process takes many minutes.
* ``dsv3-ep8-rr-64`` the same with 64 decode steps (65 output tokens): with 9 steps the one prefill
  step (128 tokens, most of the run's cache work) and the call's set-up weigh on the per-step
  figure; 64 decode steps measure the decode step itself. Both engines run both cases.
* ``poisson-1000`` 1,000 Poisson requests (100 req/s; prompt uniform 16..64, output uniform 4..16)
  to Mixtral-8x7B on ``dgx-h100``, expert parallel round-robin, every expert resident, max batch 32.

Per case and engine: simulated steps, ms of CPU per simulated step, token-layers per CPU second
(tokens processed x MoE layers), peak RSS of the child (``resource.getrusage``, before and after the
simulate call), and the old/new speed-up. CPU time (``time.process_time``) is the figure of merit
because a shared 2-core machine makes wall time noisy; wall time is reported as well.

The floor: one vectorised numpy pass over the same trace (no engine, no simpy): the experts of
every step, layer by layer, through an LRU of the same capacity per device (round-robin homes),
computed exactly from LRU stack distances (an access hits when fewer than ``capacity`` distinct
keys were touched since its previous access; the distinct count comes from an inversion count
done by radix levels, all in numpy). In the closed fixed-length cases the batching is known
without an engine (step 0 holds every prompt, decode step s token s of every request), so each
step touches the unique experts of its tokens and the floor's hit rate and memory-roofline TPOT
(median over decode steps of the slowest device's ``(non-expert bytes + unique experts x expert
bytes) / HBM bandwidth + misses x expert bytes / host-link bandwidth``; an estimate, not the
engine's cost model: no attention, KV, launches or all-to-all) are comparable with the engine's.
For the Poisson case, whose batching depends on timing, it is a serial (batch-1) estimate and
only its run time is comparable.

    python benchmarks/bench_engine_compare.py --old /work/old-engine [--json out.json] [--cases a,b] [--repeat 3]

``--repeat N`` runs each engine N times per case, old and new alternating, and keeps each engine's
run with the least CPU (the one least disturbed by other processes on a shared machine); the CPU of
every run is printed under the table and kept in the JSON (``cpu_runs_s``).

Not a test: prints a markdown table (and writes JSON with ``--json``) and exits 0; exit 1 if an
engine failed on a case (the table shows the last line of its error; the other cases still run).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """One benchmark case: what is simulated (see the module docstring)."""

    name: str
    model: str
    platform: str
    expert_fraction: float
    placement: str
    max_batch: int
    n_requests: int
    prompt: tuple[int, int]  # inclusive range (low == high: fixed)
    output: tuple[int, int]
    rate_per_s: float  # 0: all requests at t = 0
    synthetic_routing: bool = False  # True: `_SkewedRouting` instead of the model's default process


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("mixtral-b1", "mixtral-8x7b", "h100-pcie5-host", 0.25, "round-robin", 1, 1, (16, 16), (1001, 1001), 0.0),
        Case("mixtral-b64", "mixtral-8x7b", "h100-pcie5-host", 0.25, "round-robin", 64, 64, (16, 16), (301, 301), 0.0),
        Case("dsv3-ep8-rr", "deepseek-v3", "dgx-h100", 0.75, "round-robin", 8, 8, (16, 16), (9, 9), 0.0, True),
        Case("dsv3-ep8-rr-64", "deepseek-v3", "dgx-h100", 0.75, "round-robin", 8, 8, (16, 16), (65, 65), 0.0, True),
        Case("poisson-1000", "mixtral-8x7b", "dgx-h100", 1.0, "round-robin", 32, 1000, (16, 64), (4, 16), 100.0),
    )
}


# ----------------------------------------------------------------------------------------------
# child: draw the routing once (current tree)


def _draw(case: Case, out: Path) -> None:
    """Draw the case's requests and routing with the current tree and save them to ``out`` (npz)."""
    from workloads.requests import LengthDist, ProcessRouting, Request, RequestStream

    lo_p, hi_p = case.prompt
    lo_o, hi_o = case.output
    stream: Any
    if case.synthetic_routing:
        if case.rate_per_s > 0 or lo_p != hi_p or lo_o != hi_o:
            raise ValueError(f"case {case.name}: synthetic routing is for closed fixed-length cases only")
        reqs_ = tuple(
            Request(request_id=i, arrival_s=0.0, prompt_tokens=lo_p, output_tokens=lo_o) for i in range(case.n_requests)
        )
        skewed = _SkewedRouting(case.model)
        rows_ = [skewed.routing(r) for r in reqs_]
    else:
        from workloads.defaults import default_process

        routing = ProcessRouting(default_process(case.model), seed=0)
        prompt = LengthDist.fixed(lo_p) if lo_p == hi_p else LengthDist.uniform(lo_p, hi_p)
        output = LengthDist.fixed(lo_o) if lo_o == hi_o else LengthDist.uniform(lo_o, hi_o)
        if case.rate_per_s > 0:
            stream = RequestStream.poisson(
                rate_per_s=case.rate_per_s,
                n_requests=case.n_requests,
                prompt_len=prompt,
                output_len=output,
                routing=routing,
                seed=0,
            )
        else:
            stream = RequestStream.closed(
                n_requests=case.n_requests, prompt_len=prompt, output_len=output, routing=routing, seed=0
            )
        reqs_ = tuple(stream.requests)
        rows_ = [stream.routing(r) for r in reqs_]
    reqs = reqs_
    rows = [np.asarray(r, dtype=np.int16) for r in rows_]
    np.savez(
        out,
        arrival_s=np.array([r.arrival_s for r in reqs], dtype=np.float64),
        prompt=np.array([r.prompt_tokens for r in reqs], dtype=np.int64),
        output=np.array([r.output_tokens for r in reqs], dtype=np.int64),
        routing=np.concatenate(rows),
    )


class _SkewedRouting:
    """A routing source drawn directly with numpy (for models whose default routing process must
    first be derived, minutes of set-up): per MoE layer a fixed Zipf(0.8) expert popularity under a
    random permutation, each token's top-k drawn without replacement by Gumbel-top-k. Deterministic
    per request id (seed 0). A stand-in of realistic skew, not a fitted process."""

    def __init__(self, model_name: str) -> None:
        from workloads import get_model

        model = get_model(model_name)
        self.n_moe_layers, self.n_experts, self.top_k = int(model.n_moe_layers), int(model.n_experts), int(model.top_k)
        rng = np.random.default_rng(0)
        ranks = np.argsort(rng.random((self.n_moe_layers, self.n_experts)), axis=1)
        self._logp = -0.8 * np.log1p(ranks.astype(np.float64))

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        rows = int(request.prompt_tokens) + int(request.output_tokens)
        rng = np.random.default_rng([0, int(request.request_id)])
        scores = self._logp[None, :, :] + rng.gumbel(size=(rows, self.n_moe_layers, self.n_experts))
        top = np.argpartition(-scores, self.top_k - 1, axis=2)[:, :, : self.top_k]
        return top.astype(np.int16)


class _Replay:
    """A request stream (``.requests``, ``.routing(request)``) replaying rows loaded from an npz."""

    def __init__(self, path: Path) -> None:
        from workloads.requests import Request

        d = np.load(path)
        routing = d["routing"]  # once: every d[...] access re-reads the whole array from the npz
        self._rows: dict[int, npt.NDArray[np.int16]] = {}
        reqs = []
        start = 0
        for i, (a, p, o) in enumerate(zip(d["arrival_s"], d["prompt"], d["output"], strict=True)):
            n = int(p) + int(o)
            self._rows[i] = routing[start : start + n]
            start += n
            reqs.append(Request(request_id=i, arrival_s=float(a), prompt_tokens=int(p), output_tokens=int(o)))
        self.requests = tuple(reqs)

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        return self._rows[int(request.request_id)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _hit_rate(value: Any) -> float:
    """The summary's hit rate as one number: a float, or the first tier of a ``{tier: rate}`` dict
    (the cache tier, e.g. ``"hbm"``; the old engine reports one rate per tier)."""
    if isinstance(value, dict):
        return float(next(iter(value.values()))) if value else float("nan")
    return float("nan") if value is None else float(value)


def _simulate(case: Case, trace: Path, tree: Path) -> dict[str, Any]:
    """Run one engine (the ``codesign`` importable from ``tree``) on the case; figures as a dict."""
    import codesign

    origin = Path(codesign.__file__).resolve()
    if tree.resolve() not in origin.parents:
        raise RuntimeError(f"codesign imported from {origin}, not from {tree} (PYTHONPATH not honoured)")
    from codesign.mapping import BatchingSpec, CacheSpec, Mapping
    from codesign.simulate import simulate
    from hwmodels import get_platform
    from workloads import get_model

    model = get_model(case.model)
    platform = get_platform(case.platform)
    stream = _Replay(trace)
    mapping = Mapping(
        placement=case.placement,
        cache=CacheSpec(policy="lru", expert_fraction=case.expert_fraction),
        batching=BatchingSpec(max_batch=case.max_batch, max_tokens=8192),
    )
    rss0 = _rss_mb()
    w0, c0 = time.perf_counter(), time.process_time()
    result = simulate(model, platform, stream, mapping, seed=0)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    steps = result.steps
    tokens = int(np.asarray(steps.prefill_tokens).sum() + np.asarray(steps.decode_tokens).sum())
    s = result.summary
    return {
        "tree": str(tree),
        "steps": len(steps),
        "decode_steps": int((np.asarray(steps.decode_tokens) > 0).sum()),
        "tokens": tokens,
        "token_layers": tokens * int(model.n_moe_layers),
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_mb": rss0,
        "rss_peak_mb": _rss_mb(),
        "tpot_p50_s": float(s.get("tpot_p50_s", float("nan"))),
        "ttft_p50_s": float(s.get("ttft_p50_s", float("nan"))),
        "hit_rate": _hit_rate(s.get("hit_rate")),
    }


# ----------------------------------------------------------------------------------------------
# the numpy floor


def _smaller_to_left(r: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """For a permutation ``r`` of ``0..n-1``: ``out[a] = #{b < a : r[b] < r[a]}``, by radix levels
    (at level t, an element with bit t set counts the earlier elements that share its higher bits
    and have bit t clear), vectorised: O(n log^2 n) numpy work, no Python loop over elements."""
    n = r.size
    out = np.zeros(n, dtype=np.int64)
    if n < 2:
        return out
    for t in range(int(n - 1).bit_length()):
        high = r >> (t + 1)
        bit = (r >> t) & 1
        idx = np.argsort(high, kind="stable")  # groups by high bits, time order inside a group
        h = high[idx]
        zero = (bit[idx] == 0).astype(np.int64)
        cs = np.cumsum(zero)
        starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
        group_base = np.repeat(np.r_[0, cs[starts[1:] - 1]], np.diff(np.r_[starts, n]))
        before = cs - zero - group_base
        out[idx] += np.where(zero == 0, before, 0)
    return out


def lru_hits(keys: npt.NDArray[np.int64], capacity: int) -> npt.NDArray[np.bool_]:
    """Whether each access of ``keys`` (in order) hits an LRU cache of ``capacity`` keys started
    empty: exact, from stack distances. ``d(i) = (i - p(i) - 1) - #{m : p(i) < p(m), m < i}`` with
    ``p`` the previous access to the same key (the subtracted term counts repeats nested inside the
    window), and a hit is ``p(i) >= 0 and d(i) < capacity``."""
    n = keys.size
    order = np.argsort(keys, kind="stable")
    prev = np.full(n, -1, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    has = np.flatnonzero(prev >= 0)  # in time order
    if np.unique(keys).size <= capacity:  # everything fits: only first accesses miss
        return prev >= 0
    q = prev[has]
    rank = np.empty(q.size, dtype=np.int64)
    rank[np.argsort(q, kind="stable")] = np.arange(q.size)
    smaller = _smaller_to_left(rank)
    nested = np.arange(q.size) - smaller  # earlier repeats whose previous access is later than q
    dist = (has - q - 1) - nested
    hits = np.zeros(n, dtype=bool)
    hits[has] = dist < capacity
    return hits


def _floor_child(case: Case, trace: Path) -> dict[str, Any]:
    """The numpy pass (timed) with its hit rate and memory-roofline TPOT estimate, from presets of
    the current tree (only stable attributes: expert bytes, non-expert bytes, HBM and host-link
    peaks). Steps: in a closed fixed-length case (all requests at t = 0, equal lengths) the batch
    is known without an engine (step 0: every prompt; step s: token ``prompt + s - 1`` of every
    request), so each step touches the unique (layer, expert) keys of its tokens, layer by layer;
    otherwise every token is its own step in arrival order (a serial, batch-1 estimate)."""
    from hwmodels import get_platform
    from workloads import get_model

    model = get_model(case.model)
    platform = get_platform(case.platform)
    d = np.load(trace)
    routing = np.asarray(d["routing"], dtype=np.int64)  # (rows, layers, k), requests concatenated
    prompt, output, arrival = d["prompt"], d["output"], d["arrival_s"]
    n_dev = int(platform.n_accelerators)
    n_l, n_e = int(model.n_moe_layers), int(model.n_experts)
    per_dev_keys = n_l * ((n_e + n_dev - 1) // n_dev)
    capacity = round(case.expert_fraction * per_dev_keys)
    closed = bool((arrival == 0).all() and (prompt == prompt[0]).all() and (output == output[0]).all())
    c0 = time.process_time()
    rows, layers, k = routing.shape
    if closed:
        pos = np.arange(rows) % int(prompt[0] + output[0])
        step_of_row = np.maximum(0, pos - int(prompt[0]) + 1)
    else:
        step_of_row = np.arange(rows)
        starts = np.r_[0, np.cumsum(prompt + output)[:-1]]
        is_prompt = np.zeros(rows, dtype=bool)
        for s0, p in zip(starts, prompt, strict=True):
            is_prompt[s0 : s0 + int(p)] = True
        step_of_row = np.where(is_prompt, -1, step_of_row)  # prompt rows: not decode steps
    experts = routing.reshape(-1)
    layer = np.tile(np.repeat(np.arange(layers), k), rows)
    step = np.repeat(step_of_row, layers * k)
    valid = experts >= 0
    n_keys = n_l * n_e
    # unique (step, layer, expert) in step-major, layer-major order; prompt rows of the serial
    # estimate keep their own order (offset so that they never merge)
    order_step = np.where(step >= 0, step, np.repeat(np.arange(rows), layers * k))
    code = np.unique((order_step * n_keys + layer * n_e + experts)[valid])
    step_u = code // n_keys
    keys = code % n_keys
    expert_u = keys % n_e
    device = expert_u % n_dev  # round-robin home (one device: all 0)
    is_decode = step_u >= 1 if closed else np.isin(step_u, step_of_row[step_of_row >= 0])
    hits = np.zeros(keys.size, dtype=bool)
    for dev in range(n_dev):
        sel = np.flatnonzero(device == dev)
        if sel.size:
            hits[sel] = lru_hits(keys[sel], capacity)
    hit_rate = float(hits[is_decode].mean()) if is_decode.any() else float("nan")
    # per decode step and device: HBM reads (non-expert weights + unique experts) + host fetches
    bpe = float(model.bytes_per_expert)
    hbm = float(platform.accelerators[0].weights_memory.bandwidth_Bps)
    link = float(platform.host_link.bandwidth_Bps) if platform.host_link is not None else float("inf")
    dec_steps, slot = np.unique(step_u[is_decode], return_inverse=True)
    cell = slot * n_dev + device[is_decode]
    used = np.bincount(cell, minlength=dec_steps.size * n_dev).reshape(-1, n_dev)
    miss = np.bincount(cell, weights=~hits[is_decode], minlength=dec_steps.size * n_dev).reshape(-1, n_dev)
    t_step = ((float(model.non_expert_bytes) + used * bpe) / hbm + miss * bpe / link).max(axis=1)
    tpot = float(np.median(t_step)) if t_step.size else float("nan")
    cpu = time.process_time() - c0
    return {
        "cpu_s": cpu,
        "accesses": int(keys.size),
        "hit_rate": hit_rate,
        "tpot_s": tpot,
        "capacity": capacity,
        "batched": closed,
    }


# ----------------------------------------------------------------------------------------------
# parent


def _run_child(tree: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args, "--child-out", str(out)],
            env=env,
            cwd=str(tree),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"child {args} in {tree} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return dict(json.loads(out.read_text()))
    finally:
        out.unlink(missing_ok=True)


def _fmt(x: float, nd: int = 2) -> str:
    if x != x:  # nan
        return "-"
    return f"{x:,.{nd}f}"


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| case | engine | steps | token-layers | CPU s | ms/step | token-layers/s | peak RSS MB | "
        "speed-up (old/new) | x floor | TPOT p50 ms | hit rate |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        for eng in ("old", "new"):
            e = r.get(eng)
            if e is None:
                continue
            if "error" in e:
                lines.append(f"| {r['case']} | {eng} | failed: {e['error'][:160]} |" + " |" * 10)
                continue
            ms = 1e3 * e["cpu_s"] / max(1, e["steps"])
            tls = e["token_layers"] / e["cpu_s"] if e["cpu_s"] > 0 else float("nan")
            speed = r.get("speedup", float("nan")) if eng == "new" else float("nan")
            xf = e["cpu_s"] / r["floor"]["cpu_s"] if r.get("floor") and r["floor"]["cpu_s"] > 0 else float("nan")
            lines.append(
                f"| {r['case']} | {eng} | {e['steps']:,} | {e['token_layers']:,} | {_fmt(e['cpu_s'])} | "
                f"{_fmt(ms, 3)} | {_fmt(tls, 0)} | {_fmt(e['rss_peak_mb'], 0)} | {_fmt(speed, 1)} | "
                f"{_fmt(xf, 0)} | {_fmt(1e3 * e['tpot_p50_s'], 2)} | {_fmt(e['hit_rate'], 3)} |"
            )
        f = r.get("floor")
        if f:
            batched = bool(f.get("batched"))
            lines.append(
                f"| {r['case']} | numpy floor | - | {f['accesses']:,} accesses | {_fmt(f['cpu_s'], 3)} | - | - | - | - "
                f"| 1 | {_fmt(1e3 * f['tpot_s'], 2) if batched else '- (serial)'} | "
                f"{_fmt(f['hit_rate'], 3)}{'' if batched else ' (serial)'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="old vs new simulator engine, side by side")
    ap.add_argument("--old", type=Path, help="source tree of the old engine (a git worktree)")
    ap.add_argument(
        "--new",
        type=Path,
        default=REPO,
        help="source tree of the new engine (default: this repo; a worktree of a commit avoids half-done edits)",
    )
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per child (default 1800)")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each engine per case, old and new alternating; the figures are each engine's run "
        "with the least CPU, every run's CPU is listed under the table (default 1)",
    )
    ap.add_argument("--child", choices=("draw", "sim", "floor"), help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--trace", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        case = CASES[args.case]
        if args.child == "draw":
            _draw(case, args.trace)
            out: dict[str, Any] = {"ok": True}
        elif args.child == "sim":
            out = _simulate(case, args.trace, Path.cwd())
        else:
            out = _floor_child(case, args.trace)
        args.child_out.write_text(json.dumps(out))
        return 0

    if args.old is None:
        ap.error("--old PATH is required (e.g. `git worktree add /work/old-engine 725c1c8`)")
    if args.repeat < 1:
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    for label, tree in (("--old", args.old), ("--new", args.new)):
        if not (tree / "codesign" / "simulate.py").is_file():
            ap.error(f"{label} {tree}: no codesign/simulate.py there")
    old, new = args.old.resolve(), args.new.resolve()
    rows: list[dict[str, Any]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for name in names:
            trace = Path(tmp) / f"{name}.npz"
            t0 = time.perf_counter()
            _run_child(new, ["--child", "draw", "--case", name, "--trace", str(trace)], args.timeout)
            print(f"[{name}] routing drawn in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            row: dict[str, Any] = {"case": name, "spec": CASES[name].__dict__}
            runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
            for _ in range(args.repeat):  # old and new alternate, so load drifts hit both alike
                for label, tree in (("old", old), ("new", new)):
                    if runs[label] and "error" in runs[label][-1]:
                        continue
                    t0 = time.perf_counter()
                    try:
                        res = _run_child(tree, ["--child", "sim", "--case", name, "--trace", str(trace)], args.timeout)
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:  # one engine failing is a figure too
                        res = {"error": str(exc).strip().splitlines()[-1]}
                        failed = True
                    runs[label].append(res)
                    print(f"[{name}] {label} engine done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for label, results in runs.items():
                ok = [r for r in results if "error" not in r]
                if ok:  # the run with the least CPU (the least disturbed by other processes)
                    row[label] = dict(min(ok, key=lambda r: r["cpu_s"]), cpu_runs_s=[r["cpu_s"] for r in ok])
                else:
                    row[label] = results[-1]
            row["floor"] = _run_child(new, ["--child", "floor", "--case", name, "--trace", str(trace)], args.timeout)
            o, n = row["old"], row["new"]
            if "error" not in o and "error" not in n:
                ms_old = o["cpu_s"] / max(1, o["steps"])
                ms_new = n["cpu_s"] / max(1, n["steps"])
                row["speedup"] = ms_old / ms_new if ms_new > 0 else float("nan")
            rows.append(row)
            if args.json:  # after every case, so a long run killed half-way keeps what it measured
                args.json.write_text(json.dumps({"old": str(old), "new": str(new), "cases": rows}, indent=1))
    head = subprocess.run(["git", "-C", str(new), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"old: {old}; new: {new} (HEAD {head.stdout.strip() or '?'}, plus uncommitted edits if any)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (CPU time is the figure of merit)\n")
    print(_table(rows))
    if args.repeat > 1:
        print(f"\nCPU s of each run ({args.repeat} per engine, alternating; the table shows the least):")
        for r in rows:
            spread = "; ".join(
                f"{eng} " + ", ".join(f"{c:.3f}" for c in r[eng].get("cpu_runs_s", [])) for eng in ("old", "new")
            )
            print(f"- {r['case']}: {spread}")
    if args.json:
        args.json.write_text(json.dumps({"old": str(old), "new": str(new), "cases": rows}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
