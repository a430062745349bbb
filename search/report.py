"""Reading a search study back for the views, and assembling the standalone HTML page.

A study is an Optuna study (any Optuna storage: the SQLite file the search writes into its output
folder, or a storage URL). What the report reads from each trial (the contract with the search):

- ``trial.values``: the objectives, labelled by ``study.metric_names`` (``objective 0``, ... when
  the study has none), each minimised or maximised as ``study.directions`` say;
- ``trial.params``: the sampled knobs (a conditional knob may be absent from a trial);
- ``trial.user_attrs["design"]``: the whole design (``Design.to_json()`` text, or its dict) and
  ``trial.user_attrs["design_hash"]``: its content hash;
- ``trial.user_attrs["metrics"]``: ``{fidelity: Metrics.to_dict()}`` (``"analytic"``, ``"sim"``);
  each with ``breakdown_s`` (busy seconds per category) and ``bottleneck``;
- feasibility: ``trial.system_attrs["constraints"]`` (what Optuna stores from a sampler's
  ``constraints_func``), else ``trial.user_attrs["constraints"]`` (name -> value, what the search
  records): feasible iff every value is <= 0 (a trial with neither is feasible);
- ``trial.user_attrs["infeasible"]``: the reason a design was never evaluated (it does not fit);
  its objective values are placeholders, so it is counted but not drawn.

Only completed trials are drawn; failed, pruned and running trials are counted.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "FIDELITY_ORDER",
    "StudyData",
    "TrialRecord",
    "design_panel_html",
    "find_storage",
    "load_study_data",
    "open_study",
    "pack_designs",
    "page_html",
    "study_data",
    "unpack_design",
]

#: Fidelities from the most to the least trusted: a design's figures come from the first present.
FIDELITY_ORDER: tuple[str, ...] = ("sim", "analytic")
#: The SQLite file names looked for in an output folder, in order of preference.
_DB_NAMES: tuple[str, ...] = ("study.db", "search.db", "optuna.db")


@dataclass(frozen=True)
class TrialRecord:
    """One completed trial as the views use it.

    ``values``: objectives in study order (NaN where Optuna stored none); ``params``: the sampled
    knobs; ``feasible``: every constraint <= 0; ``constraints``: the constraint values by name
    (``c0``, ``c1`` ... when only Optuna's list is known); ``design``: the whole design as a dict
    (empty when the trial recorded none); ``design_hash``: its content hash (``trial-N`` when the
    trial recorded none); ``metrics``: fidelity -> metrics dict; ``fidelity``: whose values the
    objectives are (``user_attrs["fidelity"]``: ``"sim"`` or ``"analytic"``; empty if not recorded).
    """

    number: int
    values: tuple[float, ...]
    params: dict[str, Any]
    feasible: bool
    constraints: dict[str, float]
    design: dict[str, Any]
    design_hash: str
    metrics: dict[str, dict[str, Any]]
    evaluated: bool = True
    infeasible_reason: str = ""
    fidelity: str = ""

    def best_metrics(self) -> tuple[str, dict[str, Any]] | None:
        """``(fidelity, metrics)`` of the most trusted fidelity recorded (None when none)."""
        for fid in FIDELITY_ORDER:
            if fid in self.metrics:
                return fid, self.metrics[fid]
        for fid, m in sorted(self.metrics.items()):
            return fid, m
        return None


@dataclass(frozen=True)
class StudyData:
    """A study reduced to what the views draw: completed trials in trial order, with the counts of
    the others (``counts``: state name -> number of trials, every state). ``pareto_fidelity``: the
    fidelity the search's Pareto set trusts (study attribute ``pareto_fidelity``: ``"sim"``, or
    ``"any"`` for an analytic-only space); None when the study did not record it (then every
    feasible trial is eligible)."""

    study_name: str
    objective_names: list[str]
    directions: list[str]
    trials: list[TrialRecord]
    counts: dict[str, int] = field(default_factory=dict)
    storage: str = ""
    pareto_fidelity: str | None = None

    @property
    def feasible(self) -> list[TrialRecord]:
        """Completed trials whose constraints all hold and whose objectives are finite."""
        return [t for t in self.trials if t.feasible and all(math.isfinite(v) for v in t.values)]

    def by_hash(self, design_hash: str) -> TrialRecord:
        """The first completed trial of a design (ValueError listing some known hashes if none)."""
        for t in self.trials:
            if t.design_hash == design_hash:
                return t
        known = ", ".join(t.design_hash for t in self.trials[:5])
        raise ValueError(
            f"design hash {design_hash!r} is not in study {self.study_name!r} "
            f"({len(self.trials)} completed trials; e.g. {known})"
        )


def find_storage(out_dir: str | Path) -> str:
    """The Optuna storage URL of the search output folder ``out_dir``: its SQLite file
    (``study.db``, ``search.db``, ``optuna.db``, else the only ``*.db``). One-line ValueError when
    the folder is missing or holds none or several candidates."""
    d = Path(out_dir)
    if not d.is_dir():
        raise ValueError(f"{d}: no such folder (expected the output folder of `codesign search`)")
    for name in _DB_NAMES:
        if (d / name).is_file():
            return f"sqlite:///{(d / name).resolve()}"
    dbs = sorted(p for p in d.glob("*.db") if p.is_file())
    if len(dbs) == 1:
        return f"sqlite:///{dbs[0].resolve()}"
    if not dbs:
        raise ValueError(f"{d}: no study database (*.db) in this folder; run `codesign search --out {d}` first")
    raise ValueError(f"{d}: several study databases ({', '.join(p.name for p in dbs)}); pass --storage")


def open_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """Load a study from ``storage`` (an Optuna storage URL). ``study_name`` may be omitted when
    the storage holds exactly one study; otherwise the error lists the names."""
    summaries = optuna.get_all_study_summaries(storage=_storage(storage), include_best_trial=False)
    names = [s.study_name for s in summaries]
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(names) if names else "none"
            raise ValueError(f"{storage}: {len(names)} studies ({listed}); name one with --study")
        study_name = names[0]
    elif study_name not in names:
        raise ValueError(f"{storage}: no study named {study_name!r}; studies: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study_name, storage=_storage(storage))


def _storage(url: str) -> str | optuna.storages.BaseStorage:
    """A storage URL as Optuna takes it; ``journal:PATH`` / ``*.log``: a journal file."""
    if url.endswith(".log") or url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return url


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _record(t: FrozenTrial, n_obj: int) -> TrialRecord:
    values = tuple(float(v) if v is not None else float("nan") for v in (t.values or [float("nan")] * n_obj))
    raw = t.system_attrs.get("constraints")
    named = t.user_attrs.get("constraints")
    constraints: dict[str, float] = {}
    if isinstance(named, dict):
        constraints = {str(k): float(v) for k, v in named.items()}
    elif isinstance(raw, Sequence):
        constraints = {f"c{i}": float(v) for i, v in enumerate(raw)}
    if isinstance(raw, Sequence):
        feasible = all(float(v) <= 0 for v in raw)
    else:
        feasible = all(v <= 0 for v in constraints.values())
    reason = t.user_attrs.get("infeasible")
    feasible = feasible and not reason
    metrics = {str(k): v for k, v in _as_dict(t.user_attrs.get("metrics")).items() if isinstance(v, dict)}
    return TrialRecord(
        number=t.number,
        values=values,
        params=dict(t.params),
        feasible=feasible,
        constraints=constraints,
        design=_as_dict(t.user_attrs.get("design")),
        design_hash=str(t.user_attrs.get("design_hash") or f"trial-{t.number}"),
        metrics=metrics,
        evaluated=not reason,
        infeasible_reason=str(reason or ""),
        fidelity=str(t.user_attrs.get("fidelity") or ""),
    )


def study_data(study: optuna.Study, *, storage: str = "") -> StudyData:
    """Reduce ``study`` to `StudyData` (reads every trial once)."""
    directions = ["maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
    names = list(study.metric_names or []) or [f"objective {i}" for i in range(len(directions))]
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    done = [_record(t, len(directions)) for t in trials if t.state == TrialState.COMPLETE]
    done.sort(key=lambda r: r.number)
    return StudyData(
        study_name=study.study_name,
        objective_names=names,
        directions=directions,
        trials=done,
        counts=counts,
        storage=storage,
        pareto_fidelity=study.user_attrs.get("pareto_fidelity"),
    )


def load_study_data(
    out_dir: str | Path | None = None, *, storage: str | None = None, study_name: str | None = None
) -> StudyData:
    """`StudyData` of the study in ``out_dir`` (its SQLite file) or at ``storage`` (a URL)."""
    if storage is None:
        if out_dir is None:
            raise ValueError("give the search output folder or a storage URL")
        storage = find_storage(out_dir)
    return study_data(open_study(storage, study_name), storage=storage)


def page_html(title: str, sections: Sequence[tuple[str, str]], *, plotlyjs: str, intro: str = "") -> str:
    """A standalone HTML page: ``plotlyjs`` (the whole plotly.js source) inline once, then each
    ``(heading, inner_html)`` section in order. ``inner_html`` is trusted markup (figure divs made
    by plotly without their own plotly.js, or escaped text)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}"
        "section{margin-bottom:2em}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}"
        ".note{color:#555}</style>",
        f'<script type="text/javascript">{plotlyjs}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro,
    ]
    for heading, inner in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{inner}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def pack_designs(designs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Designs (hash -> design dict) with each distinct top-level part stored once:
    ``{"parts": {key: [value, ...]}, "designs": {hash: {key: index}}}`` (designs of one search
    share their platform and most of their parts, so the page holds each once)."""
    parts: dict[str, list[Any]] = {}
    seen: dict[str, dict[str, int]] = {}
    refs: dict[str, dict[str, int]] = {}
    for h, d in designs.items():
        ref: dict[str, int] = {}
        for key, value in d.items():
            text = json.dumps(value, sort_keys=True)
            index = seen.setdefault(key, {})
            if text not in index:
                index[text] = len(parts.setdefault(key, []))
                parts[key].append(value)
            ref[key] = index[text]
        refs[h] = ref
    return {"parts": parts, "designs": refs}


def unpack_design(packed: dict[str, Any], design_hash: str) -> dict[str, Any]:
    """Inverse of `pack_designs` for one hash (KeyError if absent); the page's script does the same."""
    ref = packed["designs"][design_hash]
    return {key: packed["parts"][key][i] for key, i in ref.items()}


def design_panel_html(figure_div: str, plot_id: str, packed: dict[str, Any], initial: str | None) -> str:
    """The figure with a panel under it that shows the whole design (pretty JSON) of the point
    hovered (the plot's points carry their design hash as ``customdata``); it starts on
    ``initial``. Designs not in ``packed`` show only their hash."""
    data = json.dumps({**packed, "initial": initial}, separators=(",", ":")).replace("</", "<\\/")
    script = (
        "(function(){var d=JSON.parse(document.getElementById('design-data').textContent);"
        "function whole(h){var r=d.designs[h];if(!r)return null;var o={};"
        "for(var k in r){o[k]=d.parts[k][r[k]];}return o;}"
        "function show(h){var w=whole(h);var t=document.getElementById('design-panel-title');"
        "var p=document.getElementById('design-panel');"
        "if(h===null||h===undefined){t.textContent='hover a point';p.textContent='';return;}"
        "t.textContent=w?'design '+h:'design '+h+' (not on the front: its knobs are in the tooltip)';"
        "p.textContent=w?JSON.stringify(w,null,1):'';}"
        "show(d.initial);"
        f"var g=document.getElementById('{plot_id}');"
        "if(g&&g.on){g.on('plotly_hover',function(ev){show(ev.points[0].customdata);});}})();"
    )
    return (
        figure_div
        + '<h3 id="design-panel-title"></h3>'
        + '<pre id="design-panel" style="max-height:420px;overflow:auto;font-size:11px"></pre>'
        + f'<script type="application/json" id="design-data">{data}</script>'
        + f"<script>{script}</script>"
    )
