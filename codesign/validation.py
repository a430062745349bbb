"""End-to-end validation against measured systems: the case suite as data, and its runner.

Each case is one JSON file in ``codesign/validation_cases/`` (shipped as package data): a system
someone measured, written as the simulator's own inputs, with the measurement, its source and its
conditions. Two kinds:

``"serving"``: a whole inference system, given as a `codesign.design.Design`: ``design.model`` (a
model preset name, with ``model_overrides`` for fields such as ``bytes_per_weight``),
``design.platform`` (a platform preset name), ``design.mapping`` (`codesign.mapping.Mapping.from_dict`),
``design.workload`` (`codesign.design.WorkloadSpec` fields) and ``design.cost``. It is evaluated by
`codesign.design.evaluate` at the ``"sim"`` fidelity, and at ``"analytic"`` where the closed form
supports it (else its reasons are reported). The measured ``metric`` is one of `SERVING_METRICS`.

``"collective"``: a collective micro-benchmark, evaluated directly by `hwmodels.costs.CostModel`
(``all_to_all`` over a link preset, ``bytes_per_device`` from each of ``n_devices``; across nodes
of ``devices_per_node`` with a ``scale_out_link`` between them, `CostModel.all_to_all_nodes`; the
call pays the ``collective_latency_s`` of the stack named by ``collective.stack``, else the link's)
at the ``"calibrated"`` fidelity (reported as the simulator's answer: the engine charges exactly
this cost for one node) and the ``"roofline"`` fidelity (reported in the analytic column). Metric
``time_s`` (`collective_time`).

Every case file states ``measured`` (``value``, optional ``low``/``high`` range, ``unit``,
``source``, ``conditions``), ``assumptions`` (what the measurement does not state and the case
had to choose, each with why), ``stack`` (the serving stack or library), and ``gaps`` (the
mechanisms the simulator is known to lack for this case, with their cause; documentation, never
used to adjust an answer). ``reduced`` holds workload overrides for a quick structural run (CI):
its answers are not comparable with the measurement, and `CaseResult.reduced` says so. ``fit``
(optional) holds workload overrides for the evaluations of a stack fit (`codesign.validation_fit`):
smaller runs that still show what the case measures.

The signed error is ``(simulated - measured) / measured``. No number here is fitted to a case.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hwmodels.costs import Fidelity

log = logging.getLogger(__name__)

__all__ = [
    "CASE_KINDS",
    "COLLECTIVE_METRICS",
    "SERVING_METRICS",
    "STEADY_MEAN_METRICS",
    "SUMMARY_METRICS",
    "Case",
    "CaseError",
    "CaseResult",
    "build_design",
    "case_dir",
    "collective_time",
    "format_table",
    "load_case",
    "load_cases",
    "run_case",
    "run_suite",
    "simulated_metric",
    "steady_request_mean",
    "steady_throughput",
    "suite_summary",
    "write_html",
]

CASE_KINDS = ("serving", "collective")
#: Metrics a serving case may name: a `codesign.design.Metrics` field (seconds or tokens/s), or
#: ``steady_throughput_tok_s`` (see `steady_throughput`).
SERVING_METRICS = (
    "throughput_tok_s",
    "steady_throughput_tok_s",
    "tpot_p50_s",
    "ttft_p50_s",
    "tpot_mean_s",
    "ttft_mean_s",
    "tpot_steady_mean_s",
    "ttft_steady_mean_s",
)
#: Metrics read from the simulation's summary (`codesign.result.summarize`), not from `Metrics`:
#: means over the requests, for measurements that report a mean (MLPerf's Server TPOT and TTFT).
SUMMARY_METRICS = ("tpot_mean_s", "ttft_mean_s")
#: Means over the requests that arrive in an open-arrival run's steady window
#: (`steady_request_mean`), for a measured run whose mean is a steady-state mean (MLPerf's 40-min
#: Server runs); metric -> per-request column.
STEADY_MEAN_METRICS = {"tpot_steady_mean_s": "tpot_s", "ttft_steady_mean_s": "ttft_s"}
#: Metrics a collective case may name.
COLLECTIVE_METRICS = ("time_s",)
_COLLECTIVE_OPS = ("all_to_all",)
_TOP_KEYS = {
    "name",
    "kind",
    "description",
    "stack",
    "metric",
    "measured",
    "assumptions",
    "gaps",
    "design",
    "collective",
    "reduced",
    "fit",
}


class CaseError(ValueError):
    """A malformed case file (the message names the file and the field)."""


@dataclass(frozen=True)
class Case:
    """One measured case (see the module doc for the file format).

    ``measured_value`` is in the metric's unit (seconds for ``*_s``, tokens/s for ``*_tok_s``);
    ``measured_low``/``measured_high`` the range the source reports (equal to the value when it
    reports one number).
    """

    name: str
    kind: str
    description: str
    stack: str
    metric: str
    measured_value: float
    measured_low: float
    measured_high: float
    source: str
    conditions: str
    assumptions: tuple[dict[str, str], ...]
    gaps: tuple[str, ...]
    spec: dict[str, Any]
    reduced: dict[str, Any]
    path: str = ""
    fit: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseResult:
    """The answer for one case: simulated and analytic values in the metric's unit.

    ``error`` is the simulator's signed relative error ``(sim - measured) / measured``;
    ``analytic_error`` the analytic model's, or None with ``analytic_note`` saying why it did not
    answer. ``bottleneck`` and ``breakdown_s`` are the simulator's (`codesign.design.Metrics`).
    ``reduced`` marks a structural run whose numbers are not comparable with the measurement.
    """

    name: str
    kind: str
    stack: str
    metric: str
    measured: float
    measured_low: float
    measured_high: float
    simulated: float
    error: float
    analytic: float | None
    analytic_error: float | None
    analytic_note: str
    bottleneck: str
    breakdown_s: dict[str, float]
    reduced: bool
    wall_s: float
    source: str
    gaps: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "stack": self.stack,
            "metric": self.metric,
            "measured": self.measured,
            "measured_low": self.measured_low,
            "measured_high": self.measured_high,
            "simulated": self.simulated,
            "error": self.error,
            "analytic": self.analytic,
            "analytic_error": self.analytic_error,
            "analytic_note": self.analytic_note,
            "bottleneck": self.bottleneck,
            "breakdown_s": dict(self.breakdown_s),
            "reduced": self.reduced,
            "wall_s": self.wall_s,
            "source": self.source,
            "gaps": list(self.gaps),
        }


# ------------------------------------------------------------------------------ loading
def case_dir() -> Path:
    """The folder of the shipped case files."""
    return Path(str(resources.files("codesign") / "validation_cases"))


def _need(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise CaseError(f"{where}: missing '{key}'")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CaseError(f"{where}: '{key}' must be {kind}, got {type(value).__name__}")
    return value


def _number(doc: dict[str, Any], key: str, where: str, default: float | None = None) -> float:
    if key not in doc and default is not None:
        return default
    value = _need(doc, key, (int, float), where)
    if not math.isfinite(value) or value <= 0:
        raise CaseError(f"{where}: '{key}' must be a positive finite number, got {value!r}")
    return float(value)


def load_case(path: str | Path) -> Case:
    """Read and check one case file; `CaseError` names the file and field on bad input."""
    p = Path(path)
    where = str(p)
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaseError(f"{where}: cannot read case file: {exc}") from None
    if not isinstance(doc, dict):
        raise CaseError(f"{where}: expected a JSON object")
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise CaseError(f"{where}: unknown keys {unknown}; valid: {sorted(_TOP_KEYS)}")
    name = _need(doc, "name", str, where)
    if name != p.stem:
        raise CaseError(f"{where}: name {name!r} must equal the file stem {p.stem!r}")
    kind = _need(doc, "kind", str, where)
    if kind not in CASE_KINDS:
        raise CaseError(f"{where}: kind {kind!r} is not one of {CASE_KINDS}")
    metric = _need(doc, "metric", str, where)
    allowed = SERVING_METRICS if kind == "serving" else COLLECTIVE_METRICS
    if metric not in allowed:
        raise CaseError(f"{where}: metric {metric!r} is not one of {allowed} for a {kind} case")
    measured = _need(doc, "measured", dict, where)
    mw = f"{where}: measured"
    value = _number(measured, "value", mw)
    low = _number(measured, "low", mw, value)
    high = _number(measured, "high", mw, value)
    if not low <= value <= high:
        raise CaseError(f"{mw}: need low <= value <= high, got {low}, {value}, {high}")
    source = _need(measured, "source", str, mw)
    conditions = _need(measured, "conditions", str, mw)
    assumptions = _need(doc, "assumptions", list, where)
    for i, a in enumerate(assumptions):
        if not isinstance(a, dict) or not {"what", "value", "why"} <= set(a):
            raise CaseError(f"{where}: assumptions[{i}] must be an object with what, value, why")
    gaps = _need(doc, "gaps", list, where)
    if not all(isinstance(g, str) for g in gaps):
        raise CaseError(f"{where}: gaps must be a list of strings")
    spec_key = "design" if kind == "serving" else "collective"
    spec = _need(doc, spec_key, dict, where)
    reduced = doc.get("reduced", {})
    if not isinstance(reduced, dict):
        raise CaseError(f"{where}: reduced must be an object of workload overrides")
    fit = doc.get("fit", {})
    if not isinstance(fit, dict):
        raise CaseError(f"{where}: fit must be an object of workload overrides")
    case = Case(
        name=name,
        kind=kind,
        description=_need(doc, "description", str, where),
        stack=_need(doc, "stack", str, where),
        metric=metric,
        measured_value=value,
        measured_low=low,
        measured_high=high,
        source=source,
        conditions=conditions,
        assumptions=tuple({k: str(v) for k, v in a.items()} for a in assumptions),
        gaps=tuple(gaps),
        spec=spec,
        reduced=reduced,
        path=where,
        fit=fit,
    )
    if kind == "serving":
        build_design(case)  # fail on a bad design here, before any case runs
        build_design(case, reduced=True)
        if fit:
            build_design(replace(case, reduced=fit), reduced=True)
    elif fit:
        raise CaseError(f"{where}: fit overrides are for serving cases only")
    else:
        _collective_args(case)
    return case


def load_cases(names: list[str] | None = None, folder: str | Path | None = None) -> list[Case]:
    """All cases of ``folder`` (default: the shipped ones), sorted by name, or only ``names``.

    An unknown name raises `CaseError` listing the valid ones.
    """
    d = Path(folder) if folder is not None else case_dir()
    paths = {p.stem: p for p in sorted(d.glob("*.json"))}
    if not paths:
        raise CaseError(f"{d}: no case files (*.json)")
    if names:
        missing = [n for n in names if n not in paths]
        if missing:
            raise CaseError(f"unknown case(s) {missing}; valid: {sorted(paths)}")
        return [load_case(paths[n]) for n in names]
    return [load_case(p) for p in paths.values()]


# ------------------------------------------------------------------------------ building
def build_design(case: Case, *, reduced: bool = False) -> Any:
    """The `codesign.design.Design` of a serving case (``reduced`` applies the case's overrides)."""
    from codesign.design import CostSpec, Design, DesignError, WorkloadSpec
    from codesign.mapping import Mapping, MappingError
    from hwmodels import get_platform
    from workloads import get_model

    where = f"{case.path}: design"
    spec = case.spec
    try:
        model = get_model(_need(spec, "model", str, where))
        overrides = spec.get("model_overrides", {})
        if not isinstance(overrides, dict):
            raise CaseError(f"{where}: model_overrides must be an object")
        if overrides:
            model = replace(model, **overrides)
        platform = get_platform(_need(spec, "platform", str, where))
        mapping = Mapping.from_dict(spec.get("mapping", {}))
        wl = dict(spec.get("workload", {}))
        if reduced:
            wl.update(case.reduced)
        workload = WorkloadSpec(**wl)
        cost = CostSpec(**spec.get("cost", {}))
        return Design(model=model, platform=platform, mapping=mapping, workload=workload, cost=cost)
    except CaseError:
        raise
    except (DesignError, MappingError, KeyError, TypeError, ValueError) as exc:
        raise CaseError(f"{where}: {exc}") from None


_COLLECTIVE_KEYS = {
    "op",
    "device",
    "link",
    "bytes_per_device",
    "n_devices",
    "scale_out_link",
    "devices_per_node",
    "stack",
}


@dataclass(frozen=True)
class _Collective:
    """A collective case's inputs, resolved: ``link`` inside a node, ``scale_out`` between nodes
    (None: one node), ``stack`` the library whose ``collective_latency_s`` a call pays (None: the
    link's)."""

    op: str
    device: Any
    link: Any
    scale_out: Any
    devices_per_node: int
    bytes_per_device: float
    n_devices: int
    stack: Any


def _collective_args(case: Case, stack: Any = None) -> _Collective:
    """The resolved collective of ``case``; ``stack`` (a `hwmodels.stacks.ServingStack`) replaces the
    one the case names (a stack fit's candidate). `CaseError` naming the file and field otherwise."""
    from hwmodels.devices import get_device, get_link
    from hwmodels.stacks import StackError, resolve_stack

    where = f"{case.path}: collective"
    spec = case.spec
    unknown = sorted(set(spec) - _COLLECTIVE_KEYS)
    if unknown:
        raise CaseError(f"{where}: unknown field(s) {unknown}; valid: {sorted(_COLLECTIVE_KEYS)}")
    op = _need(spec, "op", str, where)
    if op not in _COLLECTIVE_OPS:
        raise CaseError(f"{where}: op {op!r} is not one of {_COLLECTIVE_OPS}")
    try:
        link = get_link(_need(spec, "link", str, where))
        device = get_device(_need(spec, "device", str, where))
        scale_out = get_link(_need(spec, "scale_out_link", str, where)) if "scale_out_link" in spec else None
    except (KeyError, ValueError) as exc:
        raise CaseError(f"{where}: {exc}") from None
    n_bytes = _number(spec, "bytes_per_device", where)
    n_dev = _need(spec, "n_devices", int, where)
    if n_dev < 2:
        raise CaseError(f"{where}: n_devices must be >= 2, got {n_dev}")
    if (scale_out is None) != ("devices_per_node" not in spec):
        raise CaseError(f"{where}: scale_out_link and devices_per_node go together (a multi-node collective)")
    per_node = n_dev
    if scale_out is not None:
        per_node = _need(spec, "devices_per_node", int, where)
        if per_node < 1 or n_dev % per_node:
            raise CaseError(f"{where}: devices_per_node must divide n_devices ({n_dev}), got {per_node}")
    if stack is None and "stack" in spec:
        try:
            stack = resolve_stack(_need(spec, "stack", (str, dict), where))
        except StackError as exc:
            raise CaseError(f"{where}.stack: {exc}") from None
    return _Collective(op, device, link, scale_out, per_node, n_bytes, n_dev, stack)


def collective_time(case: Case, *, stack: Any = None, fidelity: Fidelity = "calibrated") -> float:
    """Seconds of a collective case's call at ``fidelity`` (`hwmodels.costs.CostModel`): over one
    node's link, or `CostModel.all_to_all_nodes` when the case spans nodes; the call pays the
    ``collective_latency_s`` of ``stack`` (default: the case's ``collective.stack``), else the link's."""
    from hwmodels import CostModel
    from hwmodels.devices import Platform

    c = _collective_args(case, stack)
    multi_node = c.scale_out is not None and c.devices_per_node < c.n_devices
    platform = Platform(
        name=f"{case.name}-platform",
        accelerators=(c.device,) * c.n_devices,
        host=None,
        host_link=None,
        peer_link=c.link,
        cost_per_hour_usd=0.0,
        source=f"validation case {case.name}: {c.n_devices} x {c.device.name} over {c.link.name}",
        scale_out_link=c.scale_out if multi_node else None,
        devices_per_node=c.devices_per_node if multi_node else None,
    )
    call = None if c.stack is None else c.stack.collective_latency_s
    cost = CostModel(platform, fidelity=fidelity)
    return float(cost.ep_all_to_all(c.bytes_per_device, c.n_devices, call_latency_s=call).total_s)


# ------------------------------------------------------------------------------ running
def _rel(sim: float, measured: float) -> float:
    return (sim - measured) / measured


def _run_collective(case: Case) -> CaseResult:
    t0 = time.perf_counter()
    fidelities: tuple[Fidelity, ...] = ("calibrated", "roofline")
    values = {fid: collective_time(case, fidelity=fid) for fid in fidelities}
    sim = values["calibrated"]
    return CaseResult(
        name=case.name,
        kind=case.kind,
        stack=case.stack,
        metric=case.metric,
        measured=case.measured_value,
        measured_low=case.measured_low,
        measured_high=case.measured_high,
        simulated=sim,
        error=_rel(sim, case.measured_value),
        analytic=values["roofline"],
        analytic_error=_rel(values["roofline"], case.measured_value),
        analytic_note="roofline fidelity of the same collective",
        bottleneck="all_to_all",
        breakdown_s={"all_to_all": sim},
        reduced=False,
        wall_s=time.perf_counter() - t0,
        source=case.source,
        gaps=case.gaps,
    )


def _steady_start(req: Any) -> float:
    """When a run's start-up transient is over: the time by which as many requests have finished
    as were admitted before the first finish (the initial batch has turned over once). Until then
    the batch is the synchronised first fill (every sequence at age 0, one prefill burst) and the
    early finishes are the short requests (length bias), so admissions, and their prefills, come
    faster than one per mean output length; a measured 40-minute run never sees that."""
    first_finish = float(req["finish_s"].min())
    k = int((req["admitted_s"] < first_finish).sum())
    finishes = np.sort(req["finish_s"].to_numpy(dtype=np.float64))
    return float(finishes[min(max(k, 1), len(finishes)) - 1])


def steady_throughput(result: Any) -> tuple[float, bool]:
    """Output tokens per second of a simulator `codesign.result.Result` in its steady state.

    The window runs from the end of the start-up transient (`_steady_start`: as many requests have
    finished as the first fill admitted) to the last request's admission (after it the batch only
    drains). Tokens in the window are the decode tokens of the steps that end inside it plus the
    first tokens emitted inside it. Why: a measured Offline run (MLPerf: >= 40 min, ~10^5 samples)
    spends well under 1% of its time filling and draining, a simulated one of a few thousand
    requests a large part of it (the fill is prefill-heavy, the drain runs a shrinking batch).
    Returns ``(tokens/s, True)``, or the whole run's throughput and False when the window is empty
    (a run too short to turn its batch over before its last admission).
    """
    req, steps = result.requests, result.steps
    if len(req) == 0 or len(steps) == 0:
        raise ValueError("steady_throughput: the run has no requests or no steps")
    t0 = _steady_start(req)
    t1 = float(req["admitted_s"].max())
    if t1 <= t0:
        return float(result.summary["throughput_tok_s"]), False
    inside = (steps["end_s"] > t0) & (steps["end_s"] <= t1)
    first = ((req["first_token_s"] > t0) & (req["first_token_s"] <= t1)).sum()
    tokens = float(steps.loc[inside, "decode_tokens"].sum()) + float(first)
    return tokens / (t1 - t0), True


def steady_request_mean(result: Any, column: str) -> tuple[float, bool]:
    """Mean of the per-request ``column`` (``tpot_s``, ``ttft_s``: seconds) over the requests that
    arrive in the steady window of an open-arrival run: after the first ``L99`` seconds of
    arrivals and before the last ``L99``, ``L99`` = the 99th percentile of time in system
    (``finish_s - arrival_s``). A request arriving earlier met a system still filling (fewer
    sequences per step, shorter steps), one arriving later a system draining after the arrivals
    stop; a measured Server run (MLPerf: >= 40 min) is steady for all but a few % of its requests.
    NaN values (a 1-token request's TPOT) are skipped. Returns ``(mean, True)``, or the mean over
    every request and False when the window holds no request (a run shorter than ~2 x ``L99``)."""
    req = result.requests
    if len(req) == 0:
        raise ValueError("steady_request_mean: the run has no requests")
    values = req[column].astype(np.float64)
    l99 = float((req["finish_s"] - req["arrival_s"]).quantile(0.99))
    a0, a1 = float(req["arrival_s"].min()), float(req["arrival_s"].max())
    inside = (req["arrival_s"] >= a0 + l99) & (req["arrival_s"] <= a1 - l99) & values.notna()
    if not bool(inside.any()):
        return float(values.mean()), False
    return float(values[inside].mean()), True


def _simulate(design: Any, cache: Any) -> Any:
    """The simulator's run of ``design``, kept in ``cache`` (an `EvalCache`, or None) under its
    content hash, so that cases differing only in their metric simulate once."""
    from codesign.design import simulate_design

    if cache is None:
        return simulate_design(design)
    return cache.get_or_make(f"validation-run:{design.content_hash}", lambda: simulate_design(design, cache=cache))


def simulated_metric(case: Case, design: Any, cache: Any = None) -> tuple[float, Any, list[str]]:
    """The simulator's value of a serving case's metric for ``design``: (value in the metric's
    unit, the run's `Metrics`, notes). ``steady_throughput_tok_s`` is read from the steps
    (`steady_throughput`), the `STEADY_MEAN_METRICS` from the requests (`steady_request_mean`), the
    `SUMMARY_METRICS` from the run's summary, the others from `Metrics`. With a ``cache``
    (`codesign.design.EvalCache`) a design's run is kept there, so cases that differ only in their
    metric (MLPerf Server TPOT / TTFT) simulate once."""
    from codesign.design import evaluate, sim_metrics

    notes: list[str] = []
    if case.metric == "steady_throughput_tok_s":
        run = _simulate(design, cache)
        value, steady = steady_throughput(run)
        if not steady:
            notes.append("steady window empty (small run): whole-run throughput")
        return value, sim_metrics(design, run), notes
    if case.metric in STEADY_MEAN_METRICS:
        run = _simulate(design, cache)
        value, steady = steady_request_mean(run, STEADY_MEAN_METRICS[case.metric])
        if not steady:
            notes.append("steady window empty (short run): mean over every request")
        return value, sim_metrics(design, run), notes
    if case.metric in SUMMARY_METRICS:
        run = _simulate(design, cache)
        return float(run.summary[case.metric]), sim_metrics(design, run), notes
    sim = evaluate(design, "sim", cache=cache)
    return float(getattr(sim, case.metric)), sim, notes


def _run_serving(case: Case, reduced: bool, cache: Any) -> CaseResult:
    from codesign.design import UnsupportedDesignError, evaluate

    t0 = time.perf_counter()
    design = build_design(case, reduced=reduced)
    sim_value, sim, notes = simulated_metric(case, design, cache)
    analytic: float | None = None
    analytic_error: float | None = None
    try:
        am = evaluate(design, "analytic", cache=cache)
        # the closed form has no drain tail: its throughput is the steady one; it has one latency
        # per request kind, its p50 stands for the mean
        analytic = float(getattr(am, case.metric.removeprefix("steady_").replace("_mean_", "_p50_")))
        analytic_error = _rel(analytic, case.measured_value)
        note = "; ".join(["analytic model", *notes])
    except UnsupportedDesignError as exc:
        note = "; ".join(["analytic model refuses: " + "; ".join(exc.reasons), *notes])
    return CaseResult(
        name=case.name,
        kind=case.kind,
        stack=case.stack,
        metric=case.metric,
        measured=case.measured_value,
        measured_low=case.measured_low,
        measured_high=case.measured_high,
        simulated=sim_value,
        error=_rel(sim_value, case.measured_value),
        analytic=analytic,
        analytic_error=analytic_error,
        analytic_note=note,
        bottleneck=sim.bottleneck,
        breakdown_s=dict(sim.breakdown_s),
        reduced=reduced and bool(case.reduced),
        wall_s=time.perf_counter() - t0,
        source=case.source,
        gaps=case.gaps,
    )


def run_case(case: Case, *, reduced: bool = False, cache: Any = None) -> CaseResult:
    """Evaluate one case (see the module doc); ``cache`` is a `codesign.design.EvalCache` to share."""
    if case.kind == "collective":
        return _run_collective(case)
    return _run_serving(case, reduced, cache)


def run_suite(cases: list[Case], *, reduced: bool = False) -> list[CaseResult]:
    """Run every case in order, sharing one `codesign.design.EvalCache`; logs each as it finishes."""
    from codesign.design import EvalCache

    cache = EvalCache()
    out = []
    for i, case in enumerate(cases, 1):
        res = run_case(case, reduced=reduced, cache=cache)
        log.info("validate-e2e %d/%d %s: %+.1f%% (%.1f s)", i, len(cases), case.name, 100 * res.error, res.wall_s)
        out.append(res)
    return out


def suite_summary(results: list[CaseResult]) -> dict[str, Any]:
    """Counts and error statistics: median |error|, cases within 20%, for both models."""

    def stats(errs: list[float]) -> dict[str, Any]:
        if not errs:
            return {"n": 0, "median_abs_error": None, "within_20pct": 0}
        return {
            "n": len(errs),
            "median_abs_error": statistics.median(abs(e) for e in errs),
            "within_20pct": sum(abs(e) <= 0.20 for e in errs),
        }

    return {
        "cases": len(results),
        "reduced": any(r.reduced for r in results),
        "sim": stats([r.error for r in results]),
        "analytic": stats([r.analytic_error for r in results if r.analytic_error is not None]),
    }


# ------------------------------------------------------------------------------ output
_UNITS = {
    "throughput_tok_s": ("tok/s", 1.0),
    "steady_throughput_tok_s": ("tok/s", 1.0),
    "tpot_p50_s": ("ms", 1e3),
    "ttft_p50_s": ("s", 1.0),
    "tpot_mean_s": ("ms", 1e3),
    "ttft_mean_s": ("s", 1.0),
    "tpot_steady_mean_s": ("ms", 1e3),
    "ttft_steady_mean_s": ("s", 1.0),
    "time_s": ("us", 1e6),
}


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    unit, scale = _UNITS[metric]
    return f"{value * scale:.4g} {unit}"


def _pct(e: float | None) -> str:
    return "-" if e is None else f"{100 * e:+.1f}%"


def format_table(results: list[CaseResult], roles: dict[str, str] | None = None) -> str:
    """A Markdown table of the results plus a summary line (median |error|, cases within 20%).

    ``roles`` (case name -> text, e.g. "fit: trt-llm per_step_s" / "predicted") adds a last column.
    """
    head = ["case", "stack", "metric", "measured", "simulated", "error", "analytic", "an. error", "bottleneck"]
    if roles is not None:
        head.append("role")
    rows = [
        [
            r.name + (" (reduced)" if r.reduced else ""),
            r.stack,
            r.metric,
            _fmt(r.measured, r.metric),
            _fmt(r.simulated, r.metric),
            _pct(r.error),
            _fmt(r.analytic, r.metric),
            _pct(r.analytic_error),
            r.bottleneck,
        ]
        + ([roles.get(r.name, "")] if roles is not None else [])
        for r in results
    ]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    s = suite_summary(results)

    def line(key: str) -> str:
        st = s[key]
        if not st["n"]:
            return f"{key}: no answers"
        return (
            f"{key}: {st['n']} cases, median |error| {100 * st['median_abs_error']:.1f}%, "
            f"{st['within_20pct']}/{st['n']} within 20%"
        )

    lines.append("")
    lines.append(line("sim") + "; " + line("analytic") + (" (REDUCED run: not comparable)" if s["reduced"] else ""))
    return "\n".join(lines)


def write_html(results: list[CaseResult], path: str | Path) -> Path:
    """A standalone Plotly HTML (plotly.js inline): the signed error per case of the simulator and
    the analytic model (with the +-20% bar), and the simulator's share of busy time per cost
    category per case (the bottleneck is the largest). Returns the path."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from codesign.design import BREAKDOWN_KEYS

    names = [r.name for r in results]
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.22,
        subplot_titles=(
            "Signed error vs measured: (model - measured) / measured",
            "Simulator busy time by cost category (share of the case's total)",
        ),
    )
    hover = [
        f"{r.name}<br>{r.metric}: measured {_fmt(r.measured, r.metric)}, sim {_fmt(r.simulated, r.metric)}"
        f"<br>bottleneck {r.bottleneck}<br>{r.source}"
        for r in results
    ]
    fig.add_trace(go.Bar(x=names, y=[100 * r.error for r in results], name="simulator", hovertext=hover), 1, 1)
    fig.add_trace(
        go.Bar(
            x=names,
            y=[None if r.analytic_error is None else 100 * r.analytic_error for r in results],
            name="analytic",
            hovertext=[r.analytic_note for r in results],
        ),
        1,
        1,
    )
    for bound in (-20, 20):
        fig.add_hline(y=bound, line_dash="dot", line_color="grey", row=1, col=1)
    shares = []
    for r in results:
        total = sum(r.breakdown_s.values())
        shares.append([r.breakdown_s.get(k, 0.0) / total if total > 0 else 0.0 for k in BREAKDOWN_KEYS])
    fig.add_trace(
        go.Heatmap(
            x=names,
            y=list(BREAKDOWN_KEYS),
            z=[[row[j] for row in shares] for j in range(len(BREAKDOWN_KEYS))],
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": "share", "y": 0.2, "len": 0.4},
        ),
        2,
        1,
    )
    fig.update_layout(barmode="group", height=950, title="codesign validate-e2e: simulated vs measured")
    fig.update_yaxes(title_text="error (%)", row=1, col=1)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(p), include_plotlyjs="inline", full_html=True)
    return p
