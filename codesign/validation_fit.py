"""Calibration of a serving stack's free parameters against the end-to-end validation cases.

A serving-stack preset (`hwmodels.stacks`) marks the numbers no source gives as ``free``: the host
CPU time per step / per layer / per sequence, the share of it hidden behind the GPU. `fit_stack`
finds them by least squares on ``log(simulated / measured)`` over a *fit set* of validation cases,
each evaluation re-simulating every fit case with the candidate values (a real optimisation over
the simulator: `scipy.optimize.least_squares`, trust-region reflective within bounds, finite
differences), and `evaluate_cases` then scores the fitted stack on the fit set and, separately, on
the held-out cases of the same stack (cases it was not fitted on: what it *predicts*).

Rules (issue 8): a parameter is fitted on at least two cases, never one (`FitError` otherwise: the
fit set needs ``>= 2 x`` as many cases as parameters); one parameter set per stack, the same for
every case of that stack; the cases say which stack they run (``design.mapping.stack``). The fit set
is the one the preset names (the union of its parameters' ``fitted_on``), or the one given.

Fit size: a case file may hold ``"fit"``, workload overrides for the fit's evaluations (smaller
but still representative runs, e.g. fewer Server requests); the scores of `evaluate_cases` are at
full size. `write_fitted` writes the values with their ``fitted_on`` into the preset's TOML file,
rewriting only those parameters' lines.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from codesign.validation import Case, CaseResult, build_design, run_case

log = logging.getLogger(__name__)

__all__ = [
    "FIT_FIELDS",
    "FitError",
    "FitResult",
    "case_stack_name",
    "default_fit_params",
    "default_fit_set",
    "evaluate_cases",
    "fit_power_exponent",
    "fit_stack",
    "power_law_cases",
    "sized_design",
    "stacked_design",
    "write_fitted",
    "write_power_law",
]

#: Fittable stack fields -> (scale of one optimiser unit, upper bound in that field's unit, TOML key).
#: Times in seconds; ``cpu_overlap`` and ``compute_slowdown`` fractions. The scales make a unit step
#: of the optimiser a plausible change (1 ms per step, 10 us per layer or sequence, 1 % more compute
#: time); 0 is each field's "charges nothing" value.
FIT_FIELDS: dict[str, tuple[float, float, str]] = {
    "per_step_s": (1e-3, 1.0, "per_step"),
    "per_layer_s": (1e-5, 0.05, "per_layer"),
    "per_sequence_s": (1e-5, 0.05, "per_sequence"),
    "cpu_overlap": (1.0, 1.0, "cpu_overlap"),
    "compute_slowdown": (1e-2, 3.0, "compute_slowdown"),
    "collective_latency_s": (1e-6, 1e-3, "collective_latency"),
}


class FitError(ValueError):
    """A fit that cannot be done as asked (message says what and which case / parameter)."""


@dataclass(frozen=True)
class FitResult:
    """What `fit_stack` found: ``values`` (field -> seconds, or a fraction for ``cpu_overlap``),
    the fit set, the start values, the fit-size residuals ``log(sim/measured)`` per case at the
    optimum, their root mean square, the simulator evaluations spent and the wall time."""

    stack: str
    values: dict[str, float]
    start: dict[str, float]
    fitted_on: tuple[str, ...]
    residuals: dict[str, float]
    rms_log_error: float
    n_evals: int
    wall_s: float
    status: str
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "stack": self.stack,
            "values": dict(self.values),
            "start": dict(self.start),
            "fitted_on": list(self.fitted_on),
            "residuals": dict(self.residuals),
            "rms_log_error": self.rms_log_error,
            "n_evals": self.n_evals,
            "wall_s": self.wall_s,
            "status": self.status,
            "history": list(self.history),
        }


# ------------------------------------------------------------------------------ selection
def case_stack_name(case: Case) -> str | None:
    """The name of the stack a case runs (a serving case's ``design.mapping.stack``, a collective
    case's ``collective.stack``: a preset name, a ``.toml`` path or an inline object, resolved);
    None for a collective case that names none (it pays the link's call latency)."""
    from hwmodels.stacks import StackError, resolve_stack

    if case.kind == "serving":
        spec = case.spec.get("mapping", {}).get("stack", "none")
    elif "stack" in case.spec:
        spec = case.spec["stack"]
    else:
        return None
    try:
        return resolve_stack(spec).name
    except StackError:
        return None  # load_case already refused a bad stack; a case edited since names none


def default_fit_params(stack: Any) -> tuple[str, ...]:
    """The preset's fittable fields: those marked ``free`` or already ``fitted_on`` some cases."""
    return tuple(p.field for p in stack.params if p.field in FIT_FIELDS and (p.free or p.fitted_on))


def default_fit_set(stack: Any, params: Sequence[str]) -> tuple[str, ...]:
    """The cases the preset names for ``params``: the union of their ``fitted_on``, sorted."""
    names: set[str] = set()
    for p in stack.params:
        if p.field in params:
            names.update(p.fitted_on)
    return tuple(sorted(names))


def sized_design(case: Case, *, size: str = "full") -> Any:
    """The case's `codesign.design.Design` at ``size``: ``"full"``, ``"fit"`` (the case's ``fit``
    overrides) or ``"reduced"``."""
    if size not in ("full", "fit", "reduced"):
        raise ValueError(f"size must be 'full', 'fit' or 'reduced', got {size!r}")
    design = build_design(case, reduced=size == "reduced")
    if size == "fit" and case.fit:
        from codesign.design import WorkloadSpec

        design = design.with_(workload=WorkloadSpec(**{**_workload_dict(design.workload), **case.fit}))
    return design


def stacked_design(case: Case, stack: Any, *, size: str = "full") -> Any:
    """`sized_design` with ``stack`` (a `hwmodels.stacks.ServingStack`) in its mapping."""
    design = sized_design(case, size=size)
    return design.with_(mapping=replace(design.mapping, stack=stack))


def _workload_dict(w: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(w)


def _depends_on(case: Case, param: str) -> bool:
    """Whether stack field ``param`` can change ``case``'s answer: a collective case depends only on
    ``collective_latency_s``; a serving case on every other field, and on ``collective_latency_s``
    only when its experts span several devices (an all-to-all per MoE layer)."""
    if case.kind == "collective":
        return param == "collective_latency_s"
    if param != "collective_latency_s":
        return True
    design = build_design(case, reduced=True)
    n_dev = design.mapping.n_devices or design.platform.n_accelerators
    return n_dev > 1


def _metric_value(case: Case, stack: Any, size: str, cache: Any) -> float:
    """The case's simulated metric with ``stack``: a serving case re-simulated at ``size``, a
    collective case's call time (`codesign.validation.collective_time`)."""
    from codesign.validation import collective_time, simulated_metric

    if case.kind == "collective":
        return collective_time(case, stack=stack)
    return simulated_metric(case, stacked_design(case, stack, size=size), cache)[0]


# ------------------------------------------------------------------------------ fitting
def fit_stack(
    stack: Any,
    cases: Sequence[Case],
    params: Sequence[str],
    *,
    size: str = "fit",
    max_evals: int = 40,
    n_scan: int = 6,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Fit ``params`` of ``stack`` (a `hwmodels.stacks.ServingStack`) on ``cases`` (see module doc).

    Each evaluation re-simulates every case at ``size`` with the candidate values; the residual of a
    case is ``log(sim / measured)``. From the stack's current values, a coarse scan of each parameter
    (0 and ``n_scan`` geometric steps up to its bound, the others held) picks the start of a local
    least-squares fit (`scipy.optimize.least_squares`, TRF within `FIT_FIELDS`' bounds); about
    ``max_evals`` evaluations of the whole fit set in all (the scan's ``(n_scan + 2) x`` parameters
    first).
    ``progress`` receives one dict per evaluation (values, rms, seconds). Raises `FitError` before
    any simulation when a parameter is unknown, fewer than two cases per parameter are given, or a
    case runs another stack. Collective cases (a stack's ``collective_latency_s``) cost microseconds
    per evaluation; serving cases a simulation each.
    """
    from scipy.optimize import least_squares

    from codesign.design import EvalCache

    params = tuple(params)
    if not params:
        raise FitError(f"stack {stack.name!r}: no parameters to fit (none is free or fitted_on in the preset)")
    unknown = [p for p in params if p not in FIT_FIELDS]
    if unknown:
        raise FitError(f"unknown stack parameter(s) {unknown}; fittable: {sorted(FIT_FIELDS)}")
    if len(set(params)) != len(params):
        raise FitError(f"parameter listed twice in {list(params)}")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise FitError(f"a case is listed twice in the fit set {names}")
    if len(cases) < 2 * len(params):
        raise FitError(
            f"stack {stack.name!r}: {len(params)} parameter(s) need >= {2 * len(params)} fit cases (two per "
            f"parameter, never one), got {len(cases)}: {names}"
        )
    for c in cases:
        if case_stack_name(c) != stack.name:
            raise FitError(f"case {c.name!r} runs stack {case_stack_name(c)!r}, not {stack.name!r}")
    for p in params:
        moved_by = [c.name for c in cases if _depends_on(c, p)]
        if len(moved_by) < 2:
            raise FitError(
                f"stack {stack.name!r}: {p} changes the answer of {len(moved_by)} of the fit cases "
                f"({moved_by or 'none'}); it needs two or more (a collective's call latency moves only "
                "collective cases and multi-device serving cases; the other fields only serving cases)"
            )
    need_evals = len(params) * (n_scan + 2) + len(params) + 1
    if max_evals < need_evals:
        raise FitError(f"max_evals must be >= {need_evals} for {len(params)} parameter(s) and n_scan {n_scan}")

    scales = np.array([FIT_FIELDS[p][0] for p in params])
    upper = np.array([FIT_FIELDS[p][1] for p in params]) / scales
    start = {p: float(getattr(stack, p) or 0.0) for p in params}  # None (the link's latency) starts at 0
    x0 = np.clip(np.array([start[p] for p in params]) / scales, 0.0, upper)
    cache = EvalCache()
    history: list[dict[str, Any]] = []
    memo: dict[tuple[float, ...], np.ndarray] = {}
    t_start = time.perf_counter()

    # the optimiser works on y = x + 1 (x in units of FIT_FIELDS' scale): its finite-difference steps
    # are relative to y, so a parameter starting at 0 (a placeholder) still gets a step of 0.05 units
    def candidate(y: np.ndarray) -> Any:
        x = np.clip(np.asarray(y) - 1.0, 0.0, upper)
        vals = {p: float(v) for p, v in zip(params, x * scales, strict=True)}
        return replace(stack, **vals), vals

    def residuals(y: np.ndarray) -> np.ndarray:
        key = tuple(np.round(y, 12))
        if key in memo:
            return memo[key]
        t0 = time.perf_counter()
        st, vals = candidate(y)
        r = np.array([math.log(_metric_value(c, st, size, cache) / c.measured_value) for c in cases])
        memo[key] = r
        rec = {
            "eval": len(history) + 1,
            "values": vals,
            "rms_log_error": float(np.sqrt(np.mean(r**2))),
            "wall_s": time.perf_counter() - t0,
        }
        history.append(rec)
        log.info(
            "fit %s eval %d: %s -> rms log error %.4f (%.1f s)",
            stack.name,
            rec["eval"],
            ", ".join(f"{p}={v:.4g}" for p, v in vals.items()),
            rec["rms_log_error"],
            rec["wall_s"],
        )
        if progress is not None:
            progress(rec)
        return r

    # 1. a coarse scan, one parameter at a time (the others at their start): 0 and n_scan values
    #    spaced geometrically from a tenth of the parameter's unit to its bound; the best point of
    #    each scan starts the local fit (the trust region of a local method grows only by doubling,
    #    so a start orders of magnitude off would spend most of the budget on the way)
    x_init = x0.copy()
    for j in range(len(params)):
        best_v, best_cost = x_init[j], float(np.sum(residuals(x_init + 1.0) ** 2))
        for v in np.concatenate(([0.0], np.geomspace(0.1, upper[j], n_scan))):
            trial = x_init.copy()
            trial[j] = v
            cost = float(np.sum(residuals(trial + 1.0) ** 2))
            if cost < best_cost:
                best_v, best_cost = v, cost
        x_init[j] = best_v
    # 2. the local least-squares fit from there
    sol = least_squares(
        residuals,
        x_init + 1.0,
        bounds=(np.ones(len(params)), upper + 1.0),
        method="trf",
        diff_step=0.02,
        x_scale=1.0,
        max_nfev=max(1, (max_evals - len(history)) // (len(params) + 1)),
        xtol=1e-3,
        ftol=1e-4,
    )
    best = min(memo.items(), key=lambda kv: float(np.sum(kv[1] ** 2)))
    _, values = candidate(np.array(best[0]))
    r_best = best[1]
    return FitResult(
        stack=stack.name,
        values=values,
        start=start,
        fitted_on=tuple(names),
        residuals={n: float(v) for n, v in zip(names, r_best, strict=True)},
        rms_log_error=float(np.sqrt(np.mean(r_best**2))),
        n_evals=len(history),
        wall_s=time.perf_counter() - t_start,
        status=str(sol.message),
        history=history,
    )


@dataclass(frozen=True)
class PowerFitResult:
    """What `fit_power_exponent` found: the exponent, the profile whose law it belongs to, the fit
    set, fit-size residuals ``log(sim/measured)`` at the optimum, their rms, evaluations and wall time."""

    profile: str
    exponent: float
    start: float
    fitted_on: tuple[str, ...]
    residuals: dict[str, float]
    rms_log_error: float
    n_evals: int
    wall_s: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (every field; ``fitted_on`` a list)."""
        from dataclasses import asdict

        return {**asdict(self), "fitted_on": list(self.fitted_on)}


def _power_base_profile(case: Case) -> str:
    """The shipped profile whose power law a power-limited serving case reads (the base of a derived
    profile: ``h200`` -> ``h100``); `FitError` for a case the exponent cannot move."""
    from hwmodels.calibration import base_profile_name

    cost = case.spec.get("cost", {}) if case.kind == "serving" else {}
    if not isinstance(cost, dict) or cost.get("power_limit") is None or not cost.get("profile"):
        raise FitError(
            f"case {case.name!r} sets no cost.power_limit with a cost.profile: a power-law exponent cannot change it"
        )
    base = base_profile_name(str(cost["profile"]))
    if base is None:
        raise FitError(
            f"case {case.name!r}: profile {cost['profile']!r} is not shipped (nor derived from a shipped one)"
        )
    return base


#: Upper bound of a fitted power-law exponent: 1 is a rate proportional to the power (clocks at a fixed
#: voltage), 1/3 the textbook f * V**2 with V ~ f; above 1 only a large static share would take it.
_EXPONENT_BOUND = 1.5


def power_law_cases(cases: Sequence[Case], profile: str) -> list[Case]:
    """The serving cases whose answer the power law of shipped profile ``profile`` moves: those run
    under a ``cost.power_limit``, and those on a profile derived from it that its law power-limits
    (the H100 NVL, the H100 PCIe); what a re-fitted exponent must be re-scored on."""
    from hwmodels.calibration import base_profile_name, load_default_profile

    out = []
    for c in cases:
        cost = c.spec.get("cost", {}) if c.kind == "serving" else {}
        name = cost.get("profile") if isinstance(cost, dict) else None
        if not isinstance(name, str) or base_profile_name(name) != profile:
            continue
        if cost.get("power_limit") is not None or "power-limited" in load_default_profile(name).source:
            out.append(c)
    return out


def fit_power_exponent(
    cases: Sequence[Case],
    *,
    size: str = "fit",
    max_evals: int = 12,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> PowerFitResult:
    """Fit the exponent of a shipped profile's `hwmodels.calibration.PowerLaw` on power-limited cases.

    Every case must run under ``cost.power_limit`` with a profile of the same base (e.g. ``h200``,
    derived from ``h100``); each evaluation re-simulates them all at ``size`` with ``cost.power_exponent``
    set to the candidate; the exponent minimises the sum of squared ``log(sim / measured)`` (bounded
    scalar minimisation on [0, 1.5], about ``max_evals`` evaluations, the law's current value evaluated
    first). Raises `FitError` before any simulation for fewer than two cases (never one), a case
    without a power limit, or cases of different base profiles.
    """
    from scipy.optimize import minimize_scalar

    from codesign.design import EvalCache
    from codesign.validation import simulated_metric
    from hwmodels.calibration import load_default_profile

    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise FitError(f"a case is listed twice in the fit set {names}")
    if len(cases) < 2:
        raise FitError(f"a power-law exponent needs >= 2 fit cases (never one), got {names}")
    bases = {_power_base_profile(c) for c in cases}
    if len(bases) != 1:
        raise FitError(f"the fit cases read the power laws of different profiles {sorted(bases)}: fit one at a time")
    base = bases.pop()
    law = load_default_profile(base).power_law
    if law is None:
        raise FitError(f"profile {base!r} has no power_law to fit (add one to its JSON first)")
    if max_evals < 4:
        raise FitError(f"max_evals must be >= 4, got {max_evals}")
    cache = EvalCache()
    history: list[dict[str, Any]] = []
    memo: dict[float, np.ndarray] = {}
    t_start = time.perf_counter()
    designs = [sized_design(c, size=size) for c in cases]

    def residuals(e: float) -> np.ndarray:
        key = round(float(e), 6)
        if key in memo:
            return memo[key]
        t0 = time.perf_counter()
        r = [
            math.log(
                simulated_metric(c, d.with_(cost=replace(d.cost, power_exponent=key)), cache)[0] / c.measured_value
            )
            for c, d in zip(cases, designs, strict=True)
        ]
        out = np.array(r)
        memo[key] = out
        rec = {
            "eval": len(history) + 1,
            "values": {"power_exponent": key},
            "rms_log_error": float(np.sqrt(np.mean(out**2))),
            "wall_s": time.perf_counter() - t0,
        }
        history.append(rec)
        log.info(
            "fit %s power law eval %d: exponent %.4f -> rms log error %.4f",
            base,
            rec["eval"],
            key,
            rec["rms_log_error"],
        )
        if progress is not None:
            progress(rec)
        return out

    residuals(law.exponent)  # the start, so a fit that cannot improve on it keeps it
    minimize_scalar(
        lambda e: float(np.sum(residuals(e) ** 2)),
        bounds=(0.0, _EXPONENT_BOUND),
        method="bounded",
        options={"maxiter": max_evals - 1, "xatol": 2e-3},
    )
    best_e, best_r = min(memo.items(), key=lambda kv: float(np.sum(kv[1] ** 2)))
    return PowerFitResult(
        profile=base,
        exponent=best_e,
        start=law.exponent,
        fitted_on=tuple(names),
        residuals={n: float(v) for n, v in zip(names, best_r, strict=True)},
        rms_log_error=float(np.sqrt(np.mean(best_r**2))),
        n_evals=len(history),
        wall_s=time.perf_counter() - t_start,
        history=history,
    )


def evaluate_cases(stack: Any, cases: Sequence[Case], *, reduced: bool = False) -> list[CaseResult]:
    """Run ``cases`` (full size, or reduced) with ``stack`` in place of the preset they name: the
    scores of a fitted parameter set (same output as `codesign.validation.run_case`)."""
    from codesign.design import EvalCache

    cache = EvalCache()
    out = []
    for c in cases:
        stack_json = _stack_json(stack)
        spec = json.loads(json.dumps(c.spec))
        if c.kind == "collective":
            spec["stack"] = stack_json
        else:
            spec.setdefault("mapping", {})["stack"] = stack_json
        out.append(run_case(replace(c, spec=spec), reduced=reduced, cache=cache))
    return out


def _stack_json(stack: Any) -> dict[str, Any]:
    from hwmodels.stacks import stack_to_dict

    return stack_to_dict(stack)


# ------------------------------------------------------------------------------ writing
_LINE = r"^{key}[ \t]*=[ \t]*\{{.*\}}[ \t]*$"


def _fmt_time(seconds: float) -> str:
    if seconds == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)


def write_fitted(path: str | Path, values: dict[str, float], fitted_on: Sequence[str], *, how: str) -> Path:
    """Rewrite the lines of ``values``' parameters in the stack TOML ``path``: the fitted value, a
    source saying how it was fitted (``how``) and what it was before, ``fitted_on`` (>= 2 case
    names) and no ``free`` flag; every other line is kept byte for byte. The file is re-read with
    `hwmodels.stacks.load_stack_file` afterwards (a bad write raises before anything uses it)."""
    import tomllib

    from hwmodels.stacks import load_stack_file

    p = Path(path)
    if len(set(fitted_on)) < 2:
        raise FitError(f"{p}: fitted_on needs two or more distinct cases, got {list(fitted_on)}")
    text = p.read_text()
    for fld, value in values.items():
        if fld not in FIT_FIELDS:
            raise FitError(f"{p}: {fld!r} is not a fittable stack field {sorted(FIT_FIELDS)}")
        key = FIT_FIELDS[fld][2]
        pattern = re.compile(_LINE.format(key=re.escape(key)), re.MULTILINE)
        found = pattern.findall(text)
        if len(found) != 1:
            raise FitError(f"{p}: expected one one-line inline table '{key} = {{ ... }}', found {len(found)}")
        old = tomllib.loads(found[0])[key]
        old_source = str(old.get("source", "")).removeprefix("free, to be fitted: ").removeprefix("fitted: ")
        old_source = old_source.split(" | was: ")[-1]
        table: dict[str, Any] = {
            "value": _fmt_time(float(value)) if fld.endswith("_s") else round(float(value), 4),
            "source": f"fitted: {how} | was: {old_source}",
            "fitted_on": sorted(fitted_on),
        }
        for extra in ("assumption", "note"):
            if extra in old:
                table[extra] = old[extra]
        line = f"{key} = {{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in table.items()) + " }"
        text = pattern.sub(line.replace("\\", "\\\\"), text)  # a literal replacement (backslashes escaped)
    p.write_text(text)
    load_stack_file(p)
    return p


def write_power_law(profile: str, exponent: float, fitted_on: Sequence[str], *, how: str) -> Path:
    """Write ``exponent`` (with ``how`` and ``fitted_on``, >= 2 cases) into the power law of the shipped
    profile ``profile``'s JSON file; every other field is kept. The file is re-read afterwards (a bad
    write raises before anything uses it). Returns the path."""
    from hwmodels.calibration import CalibrationProfile, shipped_profile_file

    if len(set(fitted_on)) < 2:
        raise FitError(f"profile {profile!r}: fitted_on needs two or more distinct cases, got {list(fitted_on)}")
    path = shipped_profile_file(profile)
    data = json.loads(path.read_text(encoding="utf-8"))
    law = data.get("power_law")
    if not isinstance(law, dict):
        raise FitError(f"{path}: no power_law object to write into")
    old = str(law.get("source", "")).removeprefix("fitted: ").split(" | was: ")[-1]
    law.update(
        exponent=round(float(exponent), 4),
        source=f"fitted: {how} | was: {old}",
        fitted_on=sorted(fitted_on),
    )
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    CalibrationProfile.load(path)
    return path
