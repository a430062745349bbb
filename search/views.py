"""Design-space views of a search study, and ``write_report``: one standalone interactive HTML file.

Figure data first, drawing second (STYLE item 14): each ``*_info(...)`` computes what a figure
shows from `search.report.StudyData` (plain numbers, tested apart from drawing) and each
``plot_*(info)`` only draws it with Plotly. `write_report` puts them on one page with plotly.js
inline once (the page opens offline):

- Pareto front: the first two objectives as axes (a third, if any, as colour); every completed
  trial, the non-dominated feasible ones joined; hovering a point shows its hash, objectives,
  constraints and knobs, and, for a Pareto design, the whole design (every field, as JSON) in the
  panel under the plot (each distinct part of the designs is stored once in the page).
- Parallel coordinates: knobs then objectives, one line per feasible trial, coloured by the first
  objective; a conditional knob absent from a trial sits on an extra tick "absent" below its range.
- Parameter importance: ``optuna.importance.get_param_importances`` (PED-ANOVA) per objective,
  or the reason it was not computed (too few feasible trials, Optuna's own refusal).
- Hypervolume history: the hypervolume of the feasible Pareto front after each trial, against a
  reference point 10 % of the range beyond the worst feasible value of each objective (stated in
  the figure).
- The chosen design (best feasible by the first objective, or the one named by its hash): its cost
  breakdown (busy seconds per category and fidelity) and, when a timeline function is given, its
  simulated timeline; and a bottleneck line for every Pareto design: the category with the most
  busy time (PCIe, HBM, compute, all-to-all, host CPU) and the shares of all of them.

Busy seconds are summed over parallel resources (devices, copy engines, the host), so a breakdown
can exceed the makespan; shares are of the summed busy time.
"""

from __future__ import annotations

import html
import json
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from search.report import (
    StudyData,
    TrialRecord,
    design_panel_html,
    load_study_data,
    open_study,
    pack_designs,
    page_html,
    study_data,
)

__all__ = [
    "CATEGORY_LABELS",
    "LOG_AXIS_SPAN",
    "BottleneckInfo",
    "DesignCostInfo",
    "HypervolumeInfo",
    "ImportanceInfo",
    "ParallelInfo",
    "ParetoInfo",
    "bottleneck_info",
    "choose_design",
    "design_cost_info",
    "design_timeline",
    "hypervolume_info",
    "importance_info",
    "parallel_info",
    "pareto_info",
    "pareto_records",
    "plot_design_cost",
    "plot_hypervolume",
    "plot_importance",
    "plot_parallel",
    "plot_pareto",
    "write_report",
]

log = logging.getLogger(__name__)

#: Display names of the busy-time categories of `codesign.design.Metrics.breakdown_s`, in order.
CATEGORY_LABELS: dict[str, str] = {
    "compute": "compute",
    "hbm": "HBM",
    "pcie": "PCIe",
    "all_to_all": "all-to-all",
    "host_cpu": "host CPU",
}
_CATEGORY_COLOURS = {
    "compute": "#4C78A8",
    "hbm": "#72B7B2",
    "pcie": "#E45756",
    "all_to_all": "#EECA3B",
    "host_cpu": "#B279A2",
}
#: An objective whose drawn values are all > 0 and span more than this factor gets a log axis.
LOG_AXIS_SPAN = 100.0
#: Fewer feasible completed trials than this and importance is not computed (an assumption: the
#: best 10 % of a handful of trials is one or two points, and their knobs rank noise).
MIN_TRIALS_FOR_IMPORTANCE = 10


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _losses(data: StudyData, trials: Sequence[TrialRecord]) -> np.ndarray:
    """Objective values turned into losses (maximised objectives negated), shape (n, k)."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in data.directions])
    if not trials:
        return np.zeros((0, len(sign)))
    return np.array([t.values for t in trials], dtype=float) * sign


def _non_dominated(losses: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of ``losses`` no other row dominates (<= everywhere, < somewhere);
    duplicates of a non-dominated point are all kept."""
    n = losses.shape[0]
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        le = np.all(losses <= losses[i], axis=1)
        lt = np.any(losses < losses[i], axis=1)
        if np.any(le & lt):
            keep[i] = False
    return keep


# ------------------------------------------------------------------------------------ Pareto
@dataclass(frozen=True)
class ParetoInfo:
    """What the Pareto-front figure draws.

    ``points``: one dict per evaluated completed trial (a design that never ran, because it does
    not fit, has placeholder objectives and is left out) with ``number``, ``hash``, ``values`` (objectives in
    study order), ``feasible``, ``front`` (non-dominated among the feasible trials) and ``hover``
    (the text shown on hover: for a front point, hash, objectives, constraints and every field of
    the design; else hash, objectives and knobs). ``front``: indices into ``points`` of the front
    sorted by the x objective. ``axes``: the objective indices on x and y; ``colour``: the one
    coloured (None with two objectives). ``designs``: hash -> whole design of each front point
    (the page shows it under the plot when the point is hovered). ``log_axes``: whether x and y
    are drawn on a log scale (all values > 0 spanning more than `LOG_AXIS_SPAN`, so that a few
    poor designs do not squash the front into a corner).
    """

    objective_names: list[str]
    directions: list[str]
    axes: tuple[int, int]
    colour: int | None
    points: list[dict[str, Any]]
    front: list[int]
    designs: dict[str, dict[str, Any]]
    log_axes: tuple[bool, bool] = (False, False)
    title: str = "Pareto front"


def _hover(t: TrialRecord, data: StudyData, whole: bool) -> str:
    lines = [f"<b>design {html.escape(t.design_hash)}</b> (trial {t.number})"]
    lines += [f"{n} = {_fmt(v)}" for n, v in zip(data.objective_names, t.values, strict=True)]
    if not t.feasible:
        lines.append("infeasible: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in t.constraints.items() if v > 0))
    if whole and t.constraints:
        lines.append("constraints: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in t.constraints.items()))
    lines += [html.escape(f"{k}: {_fmt(v)}") for k, v in t.params.items()]
    if whole and t.design:
        lines.append("<i>whole design: in the panel under the plot</i>")
    return "<br>".join(lines)


def pareto_records(data: StudyData) -> list[TrialRecord]:
    """The Pareto set the search reports (`search.study.pareto_trials`, same rules through
    `search.study.pareto_front`): feasible trials with finite objectives at the study's trusted
    fidelity (``data.pareto_fidelity``; every fidelity when ``"any"`` or not recorded), one trial
    per design hash, exact ties to the first trial; sorted by the first objective."""
    from search.study import pareto_front

    fid = data.pareto_fidelity
    eligible = {
        t.number: t
        for t in data.feasible
        if fid is None or (t.fidelity in ("sim", "analytic") if fid == "any" else t.fidelity == fid)
    }
    entries = [(n, t.design_hash, list(t.values)) for n, t in eligible.items()]
    return [eligible[n] for n, _, _ in pareto_front(entries, data.directions)]


def pareto_info(data: StudyData, *, axes: tuple[int, int] = (0, 1)) -> ParetoInfo:
    """The Pareto front of ``data`` (`pareto_records`: the search's own Pareto set, one point per
    design), drawn on ``axes`` among every evaluated trial."""
    k = len(data.directions)
    if k == 1:
        axes = (0, 0)
    elif not (0 <= axes[0] < k and 0 <= axes[1] < k and axes[0] != axes[1]):
        raise ValueError(f"axes={axes}: expected two different objective indices in 0..{k - 1}")
    feas = data.feasible
    front_numbers = {t.number for t in pareto_records(data)}
    points: list[dict[str, Any]] = [
        {
            "number": t.number,
            "hash": t.design_hash,
            "values": list(t.values),
            "feasible": t.feasible,
            "front": t.number in front_numbers,
            "hover": _hover(t, data, t.number in front_numbers),
        }
        for t in data.trials
        if t.evaluated
    ]
    front = sorted((i for i, p in enumerate(points) if p["front"]), key=lambda i: points[i]["values"][axes[0]])
    colour = next((i for i in range(k) if i not in axes), None)

    def log_axis(i: int) -> bool:
        vals = [p["values"][i] for p in points if math.isfinite(p["values"][i])]
        return bool(vals) and min(vals) > 0 and max(vals) / min(vals) > LOG_AXIS_SPAN

    by_number = {t.number: t for t in data.trials if t.design}
    skipped = len(data.trials) - len(points)
    n_designs = len({t.design_hash for t in feas})
    trusted = "" if data.pareto_fidelity in (None, "any") else f" at fidelity {data.pareto_fidelity}"
    return ParetoInfo(
        objective_names=list(data.objective_names),
        directions=list(data.directions),
        axes=axes,
        colour=colour,
        points=points,
        front=front,
        log_axes=(log_axis(axes[0]), log_axis(axes[1])),
        designs={
            points[i]["hash"]: by_number[points[i]["number"]].design for i in front if points[i]["number"] in by_number
        },
        title=f"Pareto front ({len(front)} designs{trusted}, of {n_designs} feasible designs in {len(feas)} "
        f"feasible trials; {len(points)} evaluated trials"
        + (f"; {skipped} never evaluated (do not fit), not drawn)" if skipped else ")"),
    )


def plot_pareto(info: ParetoInfo) -> go.Figure:
    """Scatter of every trial on the two axes; the front on top, joined in x order."""
    x_i, y_i = info.axes
    fig = go.Figure()
    groups = (
        ("infeasible", [p for p in info.points if not p["feasible"]], {"color": "#BBBBBB", "symbol": "x", "size": 6}),
        ("dominated", [p for p in info.points if p["feasible"] and not p["front"]], {"color": "#9ECAE9", "size": 6}),
    )
    for name, pts, style in groups:
        if not pts:
            continue
        fig.add_trace(
            go.Scatter(
                name=name,
                mode="markers",
                x=[p["values"][x_i] for p in pts],
                y=[p["values"][y_i] for p in pts],
                hovertext=[p["hover"] for p in pts],
                customdata=[p["hash"] for p in pts],
                hovertemplate="%{hovertext}<extra></extra>",
                marker=style,
            )
        )
    fp = [info.points[i] for i in info.front]
    marker: dict[str, Any] = {"size": 10, "color": "#E45756", "line": {"width": 1, "color": "black"}}
    if info.colour is not None and fp:
        marker = {
            "size": 10,
            "color": [p["values"][info.colour] for p in fp],
            "colorscale": "Viridis",
            "colorbar": {"title": info.objective_names[info.colour]},
            "line": {"width": 1, "color": "black"},
        }
    fig.add_trace(
        go.Scatter(
            name="Pareto front",
            mode="lines+markers" if info.colour is None else "markers",
            x=[p["values"][x_i] for p in fp],
            y=[p["values"][y_i] for p in fp],
            hovertext=[p["hover"] for p in fp],
            customdata=[p["hash"] for p in fp],
            hovertemplate="%{hovertext}<extra></extra>",
            marker=marker,
            line={"color": "#E45756", "dash": "dot"},
        )
    )
    arrows = {"minimize": "lower is better", "maximize": "higher is better"}
    fig.update_layout(
        title=info.title,
        xaxis={
            "title": f"{info.objective_names[x_i]} ({arrows[info.directions[x_i]]})",
            "type": "log" if info.log_axes[0] else "linear",
        },
        yaxis={
            "title": f"{info.objective_names[y_i]} ({arrows[info.directions[y_i]]})",
            "type": "log" if info.log_axes[1] else "linear",
        },
        hoverlabel={"align": "left", "font": {"size": 11}},
        legend={"orientation": "h", "y": -0.15},
        height=620,
    )
    return fig


# ------------------------------------------------------------------------ parallel coordinates
@dataclass(frozen=True)
class ParallelInfo:
    """Dimensions of the parallel-coordinates figure: ``dims`` in order (knobs, then objectives),
    each ``{"label", "values", "range", "tickvals", "ticktext"}`` (ticks None for plain numbers;
    categorical knobs and absent conditional knobs get ticks); ``colour``: the first objective's
    values; one entry per feasible trial (``numbers``)."""

    dims: list[dict[str, Any]]
    colour: list[float]
    colour_label: str
    numbers: list[int]


def parallel_info(data: StudyData) -> ParallelInfo:
    """One line per feasible trial through every knob any of them sampled, then the objectives."""
    feas = data.feasible
    names = sorted({k for t in feas for k in t.params})
    dims: list[dict[str, Any]] = []
    for name in names:
        raw = [t.params.get(name) for t in feas]
        present = [v for v in raw if v is not None]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
        absent = len(present) < len(raw)
        if numeric:
            lo, hi = float(min(present)), float(max(present))
            pad = (hi - lo) * 0.1 if hi > lo else 1.0
            miss = lo - pad
            values = [float(v) if v is not None else miss for v in raw]
            dim: dict[str, Any] = {"label": name, "values": values, "range": [miss if absent else lo, hi]}
            if absent:
                ticks = [float(x) for x in np.linspace(lo, hi, 4)]
                dim["tickvals"] = [miss, *ticks]
                dim["ticktext"] = ["absent", *(_fmt(x) for x in ticks)]
            else:
                dim["tickvals"] = dim["ticktext"] = None
        else:
            cats = sorted({str(v) for v in present})
            if absent:
                cats = ["absent", *cats]
            index = {c: i for i, c in enumerate(cats)}
            values = [float(index["absent" if v is None else str(v)]) for v in raw]
            dim = {
                "label": name,
                "values": values,
                "range": [0.0, float(max(len(cats) - 1, 1))],
                "tickvals": list(range(len(cats))),
                "ticktext": cats,
            }
        dims.append(dim)
    for i, name in enumerate(data.objective_names):
        vals = [t.values[i] for t in feas]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        dims.append({"label": name, "values": vals, "range": [lo, hi], "tickvals": None, "ticktext": None})
    return ParallelInfo(
        dims=dims,
        colour=[t.values[0] for t in feas],
        colour_label=data.objective_names[0],
        numbers=[t.number for t in feas],
    )


def plot_parallel(info: ParallelInfo) -> go.Figure:
    """Plotly parallel coordinates of ``info``."""
    dims = []
    for d in info.dims:
        dim: dict[str, Any] = {"label": d["label"], "values": d["values"], "range": d["range"]}
        if d["tickvals"] is not None:
            dim["tickvals"] = d["tickvals"]
            dim["ticktext"] = d["ticktext"]
        dims.append(dim)
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": info.colour,
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": info.colour_label},
            },
        )
    )
    fig.update_layout(title=f"Parallel coordinates ({len(info.numbers)} feasible trials)", height=520)
    return fig


# ------------------------------------------------------------------------------- importance
@dataclass(frozen=True)
class ImportanceInfo:
    """``importances[objective] = {knob: share}`` (shares sum to 1, largest first) for each
    objective computed; ``reasons[objective]``: why one was not."""

    importances: dict[str, dict[str, float]]
    reasons: dict[str, str]
    n_trials: int


def _objective(i: int, sign: float) -> Callable[[optuna.trial.FrozenTrial], float]:
    def target(t: optuna.trial.FrozenTrial) -> float:
        return sign * float(t.values[i])

    return target


def importance_info(
    study: optuna.Study, data: StudyData, *, min_trials: int = MIN_TRIALS_FOR_IMPORTANCE
) -> ImportanceInfo:
    """PED-ANOVA importance of the knobs for each objective (``optuna.importance`` with
    `optuna.importance.PedAnovaImportanceEvaluator`: which knobs matter to reach the best 10 % of
    the objective; deterministic, conditional knobs handled), over the completed trials. An
    objective is left out with a stated reason when there are fewer than ``min_trials`` feasible
    completed trials or when Optuna declines (its message is kept)."""
    n = len(data.feasible)
    imps: dict[str, dict[str, float]] = {}
    reasons: dict[str, str] = {}
    for i, name in enumerate(data.objective_names):
        if n < min_trials:
            reasons[name] = f"not computed: {n} feasible completed trials, fewer than the {min_trials} needed"
            continue
        sign = -1.0 if data.directions[i] == "maximize" else 1.0  # PED-ANOVA ranks low targets best
        try:
            with warnings.catch_warnings():  # its advice to negate maximised targets: done above
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=_objective(i, sign)
                )
        except (ValueError, RuntimeError) as exc:
            reasons[name] = f"not computed: optuna.importance: {exc}"
            continue
        if not imp:
            reasons[name] = "not computed: no knob varies across the completed trials"
            continue
        imps[name] = dict(sorted(((k, float(v)) for k, v in imp.items()), key=lambda kv: -kv[1]))
    return ImportanceInfo(importances=imps, reasons=reasons, n_trials=n)


def plot_importance(info: ImportanceInfo) -> go.Figure:
    """Horizontal bars of each objective's knob importances (one trace per objective)."""
    fig = go.Figure()
    for name, imp in info.importances.items():
        knobs = list(reversed(imp))
        fig.add_trace(go.Bar(name=name, orientation="h", y=knobs, x=[imp[k] for k in knobs]))
    title = f"Parameter importance (PED-ANOVA, {info.n_trials} feasible trials)"
    if info.reasons:
        title += "<br><sup>" + "; ".join(f"{k}: {v}" for k, v in info.reasons.items()) + "</sup>"
    n_knobs = max((len(v) for v in info.importances.values()), default=1)
    fig.update_layout(title=title, barmode="group", xaxis_title="importance (share)", height=200 + 25 * n_knobs)
    return fig


# ------------------------------------------------------------------------------ hypervolume
@dataclass(frozen=True)
class HypervolumeInfo:
    """``numbers[i]``: a feasible trial; ``hypervolume[i]``: the hypervolume of the feasible front
    after it (objectives as losses: maximised ones negated), w.r.t. ``reference`` (in the
    objectives' own units and signs). Empty with fewer than one feasible trial."""

    numbers: list[int]
    hypervolume: list[float]
    reference: list[float]
    objective_names: list[str]


def hypervolume_info(data: StudyData, *, margin: float = 0.1) -> HypervolumeInfo:
    """Hypervolume history over the feasible trials in trial order; the reference point lies
    ``margin`` of each objective's range beyond its worst feasible value (1.0 beyond when the
    range is zero)."""
    from optuna._hypervolume import compute_hypervolume  # Optuna's WFG; no public equivalent

    feas = data.feasible
    losses = _losses(data, feas)
    if not feas:
        return HypervolumeInfo([], [], [], list(data.objective_names))
    worst, best = losses.max(axis=0), losses.min(axis=0)
    span = worst - best
    ref = worst + np.where(span > 0, margin * span, 1.0)
    hv: list[float] = []
    front = np.zeros((0, losses.shape[1]))
    current = 0.0
    for row in losses:
        if front.shape[0] and np.any(np.all(front <= row, axis=1)):
            hv.append(current)  # dominated or equal: the front does not change
            continue
        front = np.vstack([front[~np.all(row <= front, axis=1)], row])
        current = float(compute_hypervolume(front, ref, assume_pareto=True))
        hv.append(current)
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in data.directions])
    return HypervolumeInfo(
        numbers=[t.number for t in feas],
        hypervolume=hv,
        reference=[float(v) for v in ref * sign],
        objective_names=list(data.objective_names),
    )


def plot_hypervolume(info: HypervolumeInfo) -> go.Figure:
    """Hypervolume against the trial number."""
    fig = go.Figure(go.Scatter(x=info.numbers, y=info.hypervolume, mode="lines+markers", marker={"size": 4}))
    ref = ", ".join(f"{n} = {_fmt(v)}" for n, v in zip(info.objective_names, info.reference, strict=True))
    fig.update_layout(
        title=f"Hypervolume of the feasible front<br><sup>reference point: {ref}</sup>",
        xaxis_title="trial",
        yaxis_title="hypervolume",
        height=420,
    )
    return fig


# ------------------------------------------------------------------- design cost, bottleneck
def _shares(breakdown: dict[str, Any]) -> dict[str, float]:
    vals = {k: float(v) for k, v in breakdown.items() if isinstance(v, int | float)}
    total = sum(v for v in vals.values() if v > 0)
    order = [k for k in CATEGORY_LABELS if k in vals] + sorted(set(vals) - set(CATEGORY_LABELS))
    return {k: (max(vals[k], 0.0) / total if total > 0 else 0.0) for k in order}


@dataclass(frozen=True)
class BottleneckInfo:
    """One row per design: ``hash``, ``number``, ``fidelity`` (whose metrics), ``bottleneck``
    (category key, or None without metrics), ``shares`` (category -> share of summed busy time)
    and ``line`` (the sentence shown)."""

    rows: list[dict[str, Any]]


def bottleneck_info(trials: Sequence[TrialRecord]) -> BottleneckInfo:
    """What dominates each design: the recorded ``bottleneck`` of its most trusted metrics (the
    largest ``breakdown_s`` category when none is recorded), with every category's share."""
    rows = []
    for t in trials:
        got = t.best_metrics()
        if got is None or not isinstance(got[1].get("breakdown_s"), dict):
            rows.append(
                {
                    "hash": t.design_hash,
                    "number": t.number,
                    "fidelity": None,
                    "bottleneck": None,
                    "shares": {},
                    "line": f"{t.design_hash} (trial {t.number}): no busy-time breakdown recorded",
                }
            )
            continue
        fid, m = got
        shares = _shares(m["breakdown_s"])
        neck = m.get("bottleneck") or (max(shares, key=lambda k: shares[k]) if shares else None)
        label = CATEGORY_LABELS.get(str(neck), str(neck))
        others = ", ".join(f"{CATEGORY_LABELS.get(k, k)} {100 * v:.0f}%" for k, v in shares.items() if k != neck)
        line = (
            f"{t.design_hash} (trial {t.number}, {fid}): {label} dominates, "
            f"{100 * shares.get(str(neck), 0.0):.0f}% of busy time ({others})"
        )
        rows.append(
            {
                "hash": t.design_hash,
                "number": t.number,
                "fidelity": fid,
                "bottleneck": neck,
                "shares": shares,
                "line": line,
            }
        )
    return BottleneckInfo(rows=rows)


@dataclass(frozen=True)
class DesignCostInfo:
    """The chosen design's busy seconds: ``seconds[fidelity][category]`` for every fidelity
    recorded, ``categories`` in display order, with its ``hash``, ``number``, ``values``
    (objectives) and the ``design`` dict."""

    hash: str
    number: int
    values: dict[str, float]
    seconds: dict[str, dict[str, float]]
    categories: list[str]
    design: dict[str, Any]


def choose_design(data: StudyData, design_hash: str | None = None) -> TrialRecord | None:
    """The trial of ``design_hash`` (ValueError if absent), else the best feasible trial by the
    first objective (None when no trial is feasible)."""
    if design_hash is not None:
        return data.by_hash(design_hash)
    feas = data.feasible
    if not feas:
        return None
    sign = -1.0 if data.directions[0] == "maximize" else 1.0
    return min(feas, key=lambda t: (sign * t.values[0], t.number))


def design_cost_info(data: StudyData, trial: TrialRecord) -> DesignCostInfo:
    """Busy seconds per category of ``trial``'s design, for every fidelity it recorded."""
    seconds: dict[str, dict[str, float]] = {}
    for fid, m in trial.metrics.items():
        b = m.get("breakdown_s")
        if isinstance(b, dict):
            seconds[fid] = {str(k): float(v) for k, v in b.items() if isinstance(v, int | float)}
    present = {k for per in seconds.values() for k in per}
    cats = [k for k in CATEGORY_LABELS if k in present] + sorted(present - set(CATEGORY_LABELS))
    return DesignCostInfo(
        hash=trial.design_hash,
        number=trial.number,
        values=dict(zip(data.objective_names, trial.values, strict=True)),
        seconds=seconds,
        categories=cats,
        design=trial.design,
    )


def plot_design_cost(info: DesignCostInfo) -> go.Figure:
    """Stacked busy seconds per fidelity, one colour per category."""
    fig = go.Figure()
    fids = sorted(info.seconds)
    for cat in info.categories:
        fig.add_trace(
            go.Bar(
                name=CATEGORY_LABELS.get(cat, cat),
                x=fids,
                y=[info.seconds[f].get(cat, 0.0) for f in fids],
                marker_color=_CATEGORY_COLOURS.get(cat, "#BAB0AC"),
                hovertemplate="%{x}: %{y:.4g} s<extra>" + CATEGORY_LABELS.get(cat, cat) + "</extra>",
            )
        )
    fig.update_layout(
        title=f"Cost breakdown of design {info.hash} (trial {info.number})<br><sup>busy seconds summed over "
        "parallel resources (devices, copy engines, host): the total can exceed the makespan</sup>",
        barmode="stack",
        xaxis_title="fidelity",
        yaxis_title="busy time (s)",
        height=450,
    )
    return fig


# ------------------------------------------------------------------------------------ report
#: A design dict -> the HTML fragment of its timeline (for a page that already loads plotly.js).
TimelineFn = Callable[[dict[str, Any]], str]


def design_timeline(design: dict[str, Any]) -> str:
    """The aggregated timeline (`codesign.views.timeline_fragment`) of ``design`` re-simulated
    with events (`codesign.design.simulate_design`): seconds of simulation for a default workload."""
    from codesign.design import Design, simulate_design
    from codesign.views import timeline_fragment

    d = Design.from_dict(design)
    result = simulate_design(d, record_events=True)
    return timeline_fragment(result, div_id="timeline", title=f"Design {d.content_hash}")


def _fig_div(fig: go.Figure, div_id: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, config={"responsive": True})


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def write_report(
    out_dir: str | Path,
    *,
    study_name: str | None = None,
    storage: str | None = None,
    design_hash: str | None = None,
    path: str | Path | None = None,
    timeline: TimelineFn | None = design_timeline,
    study: optuna.Study | None = None,
) -> Path:
    """Write the study's report as one standalone HTML file and return its path.

    ``out_dir``: the search output folder (its SQLite study file is read unless ``storage``, an
    Optuna storage URL, is given); ``study_name``: needed only when the storage holds several
    studies; ``design_hash``: the design detailed (default: best feasible by the first objective);
    ``path``: where to write (default ``out_dir/report.html``); ``timeline``: a function from a
    design dict to its timeline's HTML fragment (default `design_timeline`: a re-simulation of the
    chosen design with events); None leaves the timeline out and the page says so. ``study``: an
    open study to report instead of reading one from storage (e.g. in-memory). Bad input (missing
    folder or study, unknown hash) raises a one-line ValueError before anything is drawn.
    """
    if study is None:
        data = load_study_data(out_dir, storage=storage, study_name=study_name)
        study = open_study(data.storage, data.study_name)
    else:
        data = study_data(study, storage=storage or type(study._storage).__name__)
    chosen = choose_design(data, design_hash)
    target = Path(path) if path is not None else Path(out_dir) / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)

    pinfo = pareto_info(data)
    sections: list[tuple[str, str]] = []
    initial = chosen.design_hash if chosen is not None else None
    panel = design_panel_html(_fig_div(plot_pareto(pinfo), "pareto"), "pareto", pack_designs(pinfo.designs), initial)
    sections.append(("Pareto front", panel))
    if data.feasible:
        sections.append(("Parallel coordinates", _fig_div(plot_parallel(parallel_info(data)), "parallel")))
    else:
        sections.append(("Parallel coordinates", _note("no feasible trial to draw")))
    imp = importance_info(study, data)
    imp_html = _fig_div(plot_importance(imp), "importance") if imp.importances else ""
    sections.append(("Parameter importance", imp_html + "".join(_note(f"{k}: {v}") for k, v in imp.reasons.items())))
    hv = hypervolume_info(data)
    sections.append(
        (
            "Hypervolume history",
            _fig_div(plot_hypervolume(hv), "hypervolume") if hv.numbers else _note("no feasible trial"),
        )
    )
    rows = bottleneck_info(pareto_records(data)).rows
    table = "".join(f"<li><code>{html.escape(r['line'])}</code></li>" for r in rows)
    sections.append(("What dominates each Pareto design", f"<ul>{table}</ul>" if rows else _note("no Pareto design")))
    if chosen is None:
        sections.append(("Chosen design", _note("no feasible trial: no design to detail")))
    else:
        cinfo = design_cost_info(data, chosen)
        how = "named by hash" if design_hash else f"best feasible by {data.objective_names[0]}"
        body = _note(f"design {chosen.design_hash}, trial {chosen.number} ({how}); pass --design HASH for another")
        body += _fig_div(plot_design_cost(cinfo), "cost") if cinfo.seconds else _note("no busy-time breakdown recorded")
        if timeline is not None and chosen.design:
            try:
                body += timeline(chosen.design)
            except ValueError as exc:  # the design's own errors (does not fit, malformed): said on the page
                log.warning("timeline of design %s not drawn: %s", chosen.design_hash, exc)
                body += _note(f"timeline: not drawn ({exc})")
        else:
            why = "no design recorded in the trial" if timeline is not None else "left out (--no-timeline)"
            body += _note(f"timeline: not drawn ({why})")
        body += "<pre>" + html.escape(json.dumps(chosen.design, indent=1)) + "</pre>"
        sections.append((f"Chosen design {chosen.design_hash}", body))
    counts = ", ".join(f"{v} {k.lower()}" for k, v in data.counts.items() if v)
    objectives = ", ".join(f"{n} ({d})" for n, d in zip(data.objective_names, data.directions, strict=True))
    intro = _note(f"storage {data.storage}; trials: {counts or 'none'}; objectives: {objectives}")
    page = page_html(f"Study {data.study_name}", sections, plotlyjs=get_plotlyjs(), intro=intro)
    target.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.2f MB)", target, target.stat().st_size / 1e6)
    return target
