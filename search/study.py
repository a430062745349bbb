"""Running a search: an Optuna study over a `SearchSpace`, evaluated through `codesign.design`.

    from search import SearchConfig, run_search, load_space
    outcome = run_search(SearchConfig(space=load_space(), out_dir=Path("codesign-out"), n_trials=50))
    outcome.pareto          # feasible non-dominated trials at the top fidelity

Each trial (`TrialEvaluator`):

1. the space builds a `Candidate` from the trial's suggestions; its design names its routing by
   content (``routing = "default"`` with ``base_model``), never by a path, so a saved design
   replays from any folder with the same hash. `codesign.design.routing_process` derives the
   process (retargeted when the experts or top-k changed, relayered to the MoE layers); the
   search's `EvalCache` keeps derived processes in ``OUT/cache/processes`` (an implementation
   detail, keyed by content);
2. the quality proxy scores the model (`search.quality`);
3. multi-fidelity (``fidelity = "multi"``): the analytic model screens the design when it can
   (`codesign.design.analytic_reasons` empty); the simulator confirms it when it is *promising*:
   its analytic objectives, made ``confirm_margin`` better (the analytic model's error allowance),
   are not dominated by any feasible simulator-confirmed trial so far and it could meet the SLOs;
   designs the analytic model cannot model go to the simulator directly. The trial reports the
   simulator's values when it ran, else the analytic ones; ``user_attrs["fidelity"]`` says which,
   ``user_attrs["metrics"]`` holds both (``{"analytic": ..., "sim": ...}``, `Metrics.to_dict`);
4. constraints (``user_attrs["constraints"]``, read by the samplers' ``constraints_func``;
   Optuna stores them in ``system_attrs["constraints"]``): ``fits`` (-1 fits, +1 the mapping does
   not fit: `MappingError`, message in ``user_attrs["infeasible"]``) and one relative violation
   per SLO. A design that does not fit was never evaluated, so its system objectives are
   placeholders (`PLACEHOLDER` in the objective's worst direction, finite): Optuna's constrained
   samplers rank infeasible trials by their violation only (constrained domination in NSGA-II,
   feasible-first splitting in TPE), never by these values, and the Pareto set, CSV and report
   use feasible trials only. The quality objective is always the real value.

Storage: ``sqlite:///OUT/study.db`` by default (a study resumes by name), or any Optuna storage
URL (PostgreSQL for workers on several machines: Optuna's own distributed mode). ``jobs > 1``
starts that many worker processes on the same storage, each with its own sampler seeded
``seed + worker``. Reproducibility: with ``jobs = 1`` the same seed gives the same trials in a
fresh process (samplers seeded; evaluation deterministic). A trial left RUNNING by a killed worker
on this machine is marked FAIL at the next start (its process no longer exists); completed trials
are committed as they finish, so a SIGKILL loses only the trial in flight.
"""

from __future__ import annotations

import copy
import logging
import math
import multiprocessing as mp
import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.objectives import Objective, get_objective
from search.quality import QUALITY_LAWS, QualityLaw
from search.space import Candidate, SearchSpace, _parse, params_chooser, suggest_with

log = logging.getLogger(__name__)

__all__ = [
    "PLACEHOLDER",
    "SearchConfig",
    "SearchOutcome",
    "TrialEvaluator",
    "TrialProgress",
    "candidate_design",
    "constraints_of",
    "dominates",
    "make_sampler",
    "pareto_front",
    "pareto_trials",
    "run_search",
    "space_terms",
    "storage_url",
    "top_fidelity",
]

#: Finite stand-in for the system objectives of a design that does not fit (module doc, item 4).
PLACEHOLDER = 1e12
#: Tokens of routing sampled to place experts across devices (`TrialEvaluator.placed`).
PLACEMENT_TOKENS = 4096
#: The failure reason of a trial whose worker process died while it ran (`_fail_orphans`).
ORPHAN_REASON = "worker stopped before the trial finished (killed?)"
#: Trials between reloads of the confirmed set from the storage (`TrialEvaluator.promising`).
REFRESH_EVERY = 10
DB_NAME = "study.db"
#: Study user attribute: the fidelity the Pareto set trusts (`top_fidelity`; ``"any"`` for None).
PARETO_FIDELITY_ATTR = "pareto_fidelity"


# ------------------------------------------------------------------------------------- config
@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """What `run_search` runs: ``n_trials`` new trials of ``space`` into ``study_name`` at
    ``storage`` (``None`` = ``sqlite:///out_dir/study.db``) with ``jobs`` worker processes."""

    space: SearchSpace
    out_dir: Path
    n_trials: int
    seed: int = 0
    jobs: int = 1
    storage: str | None = None
    study_name: str = "codesign"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.n_trials, bool) or not isinstance(self.n_trials, int) or self.n_trials < 0:
            raise ValueError(f"n_trials must be an int >= 0, got {self.n_trials!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be an int >= 1, got {self.jobs!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if not self.study_name:
            raise ValueError("study_name must not be empty")


def storage_url(config: SearchConfig) -> str:
    """The storage URL of ``config`` (the SQLite file in the output folder by default)."""
    if config.storage:
        return config.storage
    return f"sqlite:///{(Path(config.out_dir) / DB_NAME).resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Write-ahead log, synced at checkpoints: a commit costs no fsync, and a committed trial
    survives the process being killed (it is in the WAL file); only an OS crash may lose the
    last commits."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def worker_id() -> str:
    """This process's worker id, ``"host:pid"`` (read by `_fail_orphans`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _stamped(template: FrozenTrial | None) -> FrozenTrial:
    """The template of a new trial: a RUNNING trial whose ``user_attrs["worker"]`` names this
    process, written in the same insert as the trial (so a worker killed at any point, even
    while its sampler is still choosing parameters, leaves a trial `_fail_orphans` can tell is
    orphaned). A caller's own RUNNING template gets the worker added; other templates (a finished
    trial added, a queued one) are kept as they are: a queued trial is stamped by the objective of
    the worker that runs it (`TrialEvaluator.__call__`)."""
    if template is not None:
        if template.state != TrialState.RUNNING:  # a finished trial added, or one queued for later
            return template
        stamped = copy.copy(template)
        stamped.user_attrs = {**template.user_attrs, "worker": worker_id()}
        return stamped
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={"worker": worker_id()},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )


class _StampedRDBStorage(optuna.storages.RDBStorage):
    """`optuna.storages.RDBStorage` whose new trials carry their worker from the insert on
    (`_stamped`). Overrides the private ``_create_new_trial``: Optuna's cache in front of an
    RDB storage calls it instead of the public ``create_new_trial`` (which calls it too);
    tests/search/test_study.py checks a trial made by ``Study.ask`` carries its worker."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return super()._create_new_trial(study_id, _stamped(template_trial))


class _StampedJournalStorage(optuna.storages.JournalStorage):
    """`optuna.storages.JournalStorage` whose new trials carry their worker (`_stamped`)."""

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, _stamped(template_trial))


def _storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite"):
        from sqlalchemy import event

        # wait for a lock held by another worker instead of failing at once
        storage = _StampedRDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        event.listen(storage.engine, "connect", _sqlite_pragmas)
        storage.engine.dispose()  # connections opened before the listener reconnect with it
        return storage
    if url.endswith(".log") or url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return _StampedJournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return _StampedRDBStorage(url)


def constraints_of(trial: FrozenTrial) -> list[float]:
    """The samplers' ``constraints_func``: the trial's constraint values (<= 0 satisfied)."""
    named = trial.user_attrs.get("constraints")
    if not isinstance(named, dict):
        return [1.0]  # a trial that never recorded its constraints (crashed) counts as infeasible
    return [float(v) for v in named.values()]


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded, with `constraints_of` as its constraints function."""
    with warnings.catch_warnings():
        # Optuna 5 deprecates constraints_func for Trial.set_constraint; the function form works
        # on every Optuna this package supports (>= 3.6) and stores system_attrs["constraints"]
        warnings.filterwarnings("ignore", message=".*constraints_func.*", category=FutureWarning)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if space.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=space.population_size, seed=seed, constraints_func=constraints_of
            )
        if space.sampler == "tpe":
            # group: conditional knobs are sampled jointly with the knobs they appear with
            return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints_of, multivariate=True, group=True)
    return optuna.samplers.RandomSampler(seed=seed)


def top_fidelity(space: SearchSpace) -> str | None:
    """The fidelity whose values the Pareto set trusts: the simulator, or any (``None``) in an
    analytic-only space (whose designs the closed form cannot model were simulated)."""
    return None if space.fidelity == "analytic" else "sim"


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` Pareto-dominates ``b`` (no worse everywhere, better somewhere)."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        if x < y:
            better = True
    return better


# ----------------------------------------------------------------------------------- designs
#: `codesign.mapping` words -> the space's knob names, for infeasibility messages (`space_terms`).
_SPACE_TERMS: tuple[tuple[str, str], ...] = (
    (r"\b(?:cache\.)?expert_fraction\b", "mapping.fast_tier_share"),
    (r"\buse more devices\b", "use more devices (platform.<preset>.devices)"),
    (r"\ba lower precision\b", "a lower precision (model.weight_precision)"),
)


def space_terms(message: str) -> str:
    """A `codesign.mapping.MappingError` message in the search space's words: the knobs it tells
    the user to change are named as the space file names them (``cache.expert_fraction`` is the
    space's ``mapping.fast_tier_share``, the same number)."""
    import re

    for pattern, repl in _SPACE_TERMS:
        message = re.sub(pattern, repl, message)
    return message


def candidate_design(cand: Candidate) -> Any:
    """The `codesign.design.Design` of a candidate: routing ``"default"`` with the candidate's
    ``base_model`` (`codesign.design.routing_process` retargets the base model's embedded process
    to the model's shape deterministically from the workload seed), so the design holds no path."""
    from codesign.design import CostSpec, Design, WorkloadSpec

    source = "default"
    return Design(
        model=cand.model,
        platform=cand.platform,
        mapping=cand.mapping(),
        workload=WorkloadSpec(routing=source, **cand.workload_kw),
        cost=CostSpec(fidelity=cand.cost_fidelity),  # type: ignore[arg-type]
    )


class TrialEvaluator:
    """The objective function of a study (module doc). One instance per worker process: it holds
    the evaluation cache (`codesign.design.EvalCache`, derived routing processes persisted in
    ``OUT/cache/processes``), the placement memo and a memo of metrics by
    design hash (NSGA-II proposes the same design more than once)."""

    def __init__(self, space: SearchSpace, out_dir: Path) -> None:
        from codesign.design import EvalCache

        self.space = space
        self.objectives: list[Objective] = [get_objective(n) for n in space.objectives]
        self.directions = [o.direction for o in self.objectives]
        self.law: QualityLaw = QUALITY_LAWS.create(space.quality_law)
        self.cache = EvalCache(max_entries=256, directory=Path(out_dir) / "cache" / "processes")
        from codesign.policies.placement import PlacementMemo

        self.placements = PlacementMemo(maxsize=64, directory=Path(out_dir) / "cache" / "placements")
        self._stats: dict[tuple[str, int, int, int], Any] = {}
        self.worker = worker_id()
        self._memo: dict[tuple[str, str], dict[str, Any] | str] = {}
        self._confirmed: list[list[float]] | None = None
        self._since_refresh = 0

    # -------------------------------------------------------------- evaluation
    def placed(self, design: Any, cand: Candidate) -> Any:
        """``design`` with its expert-to-device layout computed once (`Mapping.placed` through the
        `PlacementMemo` in ``OUT/cache/placements``, keyed by policy, devices, model and the digest
        of the routing statistics): the layout is part of the design (``mapping.expert_home``), so
        both fidelities and every replay of the design file use the same one. Statistics: a
        sample of `PLACEMENT_TOKENS` tokens of the design's routing process
        (`codesign.design.routing_process`, seeded by the workload seed), computed once per model
        shape."""
        from codesign.design import routing_process
        from codesign.policies.base import RoutingStats

        shape = (cand.base_model, cand.model.n_experts, cand.model.top_k, cand.model.n_moe_layers)
        if shape not in self._stats:
            proc = routing_process(design, self.cache)
            seed = int(self.space.workload["seed"])
            self._stats[shape] = RoutingStats.from_trace(proc.sample(PLACEMENT_TOKENS, seed=seed))
        stats = self._stats[shape]
        mapping = design.mapping.placed(
            design.model, design.platform, stats=stats, seed=design.workload.seed, placements=self.placements
        )
        return design.with_(mapping=mapping)

    def _evaluate(self, design: Any, design_hash: str, fidelity: str) -> dict[str, Any] | str:
        """``Metrics.to_dict()``, or the `MappingError` message when the design does not fit."""
        from codesign.design import evaluate
        from codesign.mapping import MappingError

        key = (design_hash, fidelity)
        if key not in self._memo:
            try:
                self._memo[key] = evaluate(design, fidelity, cache=self.cache).to_dict()  # type: ignore[arg-type]
            except MappingError as exc:
                self._memo[key] = str(exc)
        return self._memo[key]

    def values(self, metrics: dict[str, Any], quality: float, *, optimism: float = 0.0) -> list[float]:
        """Objective values; ``optimism`` makes the system ones that much better (screening)."""
        out = []
        for o in self.objectives:
            v = o.value(metrics, quality)
            if o.metric is not None and optimism:
                v = v * (1.0 - optimism) if o.direction == "minimize" else v * (1.0 + optimism)
            out.append(v)
        return out

    def slo_violations(self, metrics: dict[str, Any], *, optimism: float = 0.0) -> dict[str, float]:
        out = {}
        for slo in self.space.slos:
            scaled = dict(metrics)
            scaled[slo.metric] = float(metrics[slo.metric]) * (1.0 - optimism)
            out[slo.name] = slo.violation(scaled)
        return out

    def _refresh_confirmed(self, study: optuna.Study) -> None:
        """Reload the values of the study's feasible simulator-confirmed trials (all workers')."""
        self._confirmed = [
            list(t.values)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("fidelity") == "sim" and t.values is not None and all(c <= 0 for c in constraints_of(t))
        ]
        self._since_refresh = 0

    def promising(self, study: optuna.Study, screened: list[float], slo: dict[str, float]) -> bool:
        """Whether a screened design deserves the simulator (module doc, item 3). The confirmed
        set is this worker's own plus the study's, reloaded every `REFRESH_EVERY` trials (with one
        worker: always exactly the study's)."""
        if any(v > 0 for v in slo.values()):
            return False
        if self._confirmed is None or self._since_refresh >= REFRESH_EVERY:
            self._refresh_confirmed(study)
        assert self._confirmed is not None
        return not any(dominates(f, screened, self.directions) for f in self._confirmed)

    def placeholder_values(self, quality: float) -> list[float]:
        return [
            quality if o.metric is None else (PLACEHOLDER if o.direction == "minimize" else 0.0)
            for o in self.objectives
        ]

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self._since_refresh += 1
        if trial.user_attrs.get("worker") != self.worker:  # a queued trial: created by another process
            trial.set_user_attr("worker", self.worker)
        cand = self.space.build(suggest_with(trial))
        design = candidate_design(cand)
        design_hash = design.content_hash
        quality = self.law.loss(cand.model, cand.training_tokens)
        trial.set_user_attr("design_hash", design_hash)
        trial.set_user_attr("design", design.to_dict())
        trial.set_user_attr("quality", {"law": self.law.name, "loss": quality})
        n_dev = int(cand.mapping_kw["n_devices"])
        if n_dev > cand.model.n_experts:
            return self._infeasible(
                trial, f"n_devices={n_dev} exceeds the model's {cand.model.n_experts} experts per layer", quality
            )
        if n_dev > 1:
            from codesign.mapping import MappingError

            try:
                design = self.placed(design, cand)
            except MappingError as exc:  # a layout the platform refuses (e.g. not whole nodes)
                return self._infeasible(trial, str(exc), quality)
            design_hash = design.content_hash
            trial.set_user_attr("design_hash", design_hash)
            trial.set_user_attr("design", design.to_dict())
        metrics: dict[str, Any] = {}
        screen_reasons: list[str] = []
        fidelity = self.space.fidelity
        if fidelity in ("multi", "analytic"):
            from codesign.design import analytic_reasons

            screen_reasons = analytic_reasons(design)
            if not screen_reasons:
                res = self._evaluate(design, design_hash, "analytic")
                if isinstance(res, str):
                    return self._infeasible(trial, res, quality)
                metrics["analytic"] = res
            else:
                trial.set_user_attr("analytic_unsupported", screen_reasons)
        run_sim = "analytic" not in metrics  # sim-only spaces, and designs the closed form cannot model
        if fidelity == "multi" and not run_sim:
            m = self.space.confirm_margin
            screened = self.values(metrics["analytic"], quality, optimism=m)
            run_sim = self.promising(trial.study, screened, self.slo_violations(metrics["analytic"], optimism=m))
        if run_sim:
            res = self._evaluate(design, design_hash, "sim")
            if isinstance(res, str):
                return self._infeasible(trial, res, quality)
            metrics["sim"] = res
        used = "sim" if "sim" in metrics else "analytic"
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("fidelity", used)
        constraints = {"fits": -1.0, **self.slo_violations(metrics[used])}
        trial.set_user_attr("constraints", constraints)
        values = self.values(metrics[used], quality)
        if used == "sim" and self._confirmed is not None and all(c <= 0 for c in constraints.values()):
            self._confirmed.append(values)
        return values

    def _infeasible(self, trial: optuna.Trial, message: str, quality: float) -> list[float]:
        trial.set_user_attr("infeasible", space_terms(message))
        trial.set_user_attr("fidelity", "none")
        trial.set_user_attr("metrics", {})
        trial.set_user_attr("constraints", {"fits": 1.0, **{s.name: 0.0 for s in self.space.slos}})
        return self.placeholder_values(quality)


# ------------------------------------------------------------------------------------ running
@dataclass(frozen=True)
class SearchOutcome:
    """What a search left: the study, its Pareto trials at the top fidelity, counts by state."""

    study: optuna.Study
    pareto: list[FrozenTrial]
    counts: dict[str, int]
    new_trials: int
    wall_s: float
    storage: str
    failures: list[str] = field(default_factory=list)


def pareto_front(
    entries: Sequence[tuple[int, str, Sequence[float]]], directions: Sequence[str]
) -> list[tuple[int, str, Sequence[float]]]:
    """The Pareto set of ``(trial number, design hash, objective values)`` entries (the eligible
    trials: feasible, finite, at the trusted fidelity), sorted by the first objective then trial
    number. One entry per design hash (its first trial), and of designs that tie exactly on every
    objective, the first trial. `pareto_trials` and the report (`search.views`) both use it."""
    pool: dict[str, tuple[int, str, Sequence[float]]] = {}
    for e in sorted(entries, key=lambda e: e[0]):
        pool.setdefault(e[1], e)
    items = list(pool.values())
    front = [e for e in items if not any(dominates(o[2], e[2], directions) for o in items if o is not e)]
    # designs whose knobs differ only where it does not change the answer tie exactly: keep the first
    first: dict[tuple[float, ...], tuple[int, str, Sequence[float]]] = {}
    for e in sorted(front, key=lambda e: e[0]):
        first.setdefault(tuple(e[2]), e)
    sign = -1.0 if directions[0] == "maximize" else 1.0
    return sorted(first.values(), key=lambda e: (sign * e[2][0], e[0]))


def pareto_trials(study: optuna.Study, fidelity: str | None = "sim") -> list[FrozenTrial]:
    """Feasible completed trials whose values come from ``fidelity`` (any evaluated one when
    ``None``) and that no other such trial dominates, sorted by the first objective (one trial per
    design hash, and per objective vector: of designs that tie exactly, the first trial;
    `pareto_front`)."""
    directions = ["maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize" for d in study.directions]
    eligible: dict[int, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        got = t.user_attrs.get("fidelity")
        if (got != fidelity if fidelity is not None else got not in ("sim", "analytic")) or t.values is None:
            continue
        if any(c > 0 for c in constraints_of(t)) or not all(math.isfinite(v) for v in t.values):
            continue
        eligible[t.number] = t
    entries = [(n, str(t.user_attrs.get("design_hash", n)), list(t.values)) for n, t in eligible.items()]
    return [eligible[n] for n, _, _ in pareto_front(entries, directions)]


def _fail_orphans(study: optuna.Study) -> int:
    """Mark FAIL the RUNNING trials of dead worker processes of this machine; returns how many."""
    host = socket.gethostname()  # trials carry their worker from creation on (`_stamped`)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        h, _, pid = worker.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_system_attr(t._trial_id, "fail_reason", ORPHAN_REASON)
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _study(config: SearchConfig, url: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    directions = [get_objective(n).direction for n in config.space.objectives]
    study = optuna.create_study(
        storage=_storage(url),
        sampler=sampler,
        study_name=config.study_name,
        directions=directions,
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != directions:
        raise ValueError(
            f"study {config.study_name!r} at {url} has directions {[d.name.lower() for d in study.directions]}, "
            f"but the space's objectives {list(config.space.objectives)} need {directions}; use another --study name"
        )
    names = list(config.space.objectives)
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    elif list(study.metric_names) != names:
        raise ValueError(
            f"study {config.study_name!r} at {url} optimises {study.metric_names}, not {names}; "
            "use another --study name"
        )
    return study


_CATCH = (ValueError, ArithmeticError)


def _worker(raw: dict[str, Any], source: str, out_dir: str, url: str, name: str, seed: int, target: int) -> None:
    """One worker process of a ``jobs > 1`` search (spawned): runs trials until the study holds
    ``target`` finished trials."""
    logging.getLogger("optuna").setLevel(logging.WARNING)
    space = _parse(raw, source)
    config = SearchConfig(space=space, out_dir=Path(out_dir), n_trials=0, seed=seed, storage=url, study_name=name)
    study = _study(config, url, make_sampler(space, seed))
    evaluator = TrialEvaluator(space, Path(out_dir))
    stop = optuna.study.MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    study.optimize(evaluator, callbacks=[stop], catch=_CATCH, gc_after_trial=False)


class TrialProgress:
    """Progress of ``total`` trials: a tqdm bar on stderr when it is a terminal (``tty`` None
    decides, True / False force), else an INFO line on the ``moe_codesign.progress`` logger
    (`workloads.progress`) every ``every`` finished trials (default: a tenth of ``total``, at least
    1) and at the last one, so a log file gets no carriage-return bars."""

    def __init__(self, total: int, *, tty: bool | None = None, every: int | None = None) -> None:
        import sys

        from workloads.progress import PROGRESS_LOGGER, _is_tty

        self.total = int(total)
        self.every = max(1, int(every) if every is not None else math.ceil(self.total / 10))
        self._log = logging.getLogger(PROGRESS_LOGGER)
        self._t0 = time.monotonic()
        self._logged = 0
        self._bar: Any = None
        if _is_tty(sys.stderr) if tty is None else tty:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc="search", unit="trial", file=sys.stderr)

    def update(self, done: int, total: int) -> None:
        """``done`` of ``total`` trials have finished."""
        if self._bar is not None:
            self._bar.n = done
            self._bar.refresh()
            return
        if done >= total or done - self._logged >= self.every:
            self._logged = done
            pct = 100 * done / max(total, 1)
            self._log.info("search: %d/%d trials (%.0f%%), %.0f s", done, total, pct, time.monotonic() - self._t0)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_search(config: SearchConfig, *, on_trial: Callable[[int, int], None] | None = None) -> SearchOutcome:
    """Run ``config.n_trials`` new trials (module doc) and return the outcome.

    ``on_trial(done, total)`` is called as trials finish (a progress bar); with ``progress`` and
    no ``on_trial`` a `TrialProgress` shows it (a tqdm bar on a terminal, log lines elsewhere)."""
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(config)
    space = config.space
    sampler = make_sampler(space, config.seed)
    optuna_level = logging.getLogger("optuna").level
    logging.getLogger("optuna").setLevel(logging.WARNING)  # our progress bar instead of a line per trial
    study = _study(config, url, sampler)
    # what the report needs to draw the same Pareto set as `pareto_trials` (search.views)
    study.set_user_attr(PARETO_FIDELITY_ATTR, top_fidelity(space) or "any")
    orphans = _fail_orphans(study)
    if orphans:
        log.warning("marked %d trials of killed workers as failed", orphans)
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    before = len(study.get_trials(deepcopy=False, states=finished))
    target = before + config.n_trials
    bar = None
    if on_trial is None and config.progress:
        bar = TrialProgress(config.n_trials)
        on_trial = bar.update

    t0 = time.perf_counter()
    try:
        if config.jobs == 1:
            evaluator = TrialEvaluator(space, out_dir)

            def callback(study: optuna.Study, trial: FrozenTrial) -> None:
                if on_trial is not None:
                    on_trial(len(study.get_trials(deepcopy=False, states=finished)) - before, config.n_trials)

            study.optimize(evaluator, n_trials=config.n_trials, callbacks=[callback], catch=_CATCH)
        else:
            _run_workers(config, url, target, before, on_trial)
    finally:
        logging.getLogger("optuna").setLevel(optuna_level)
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    failures = [
        f"trial {t.number}: {t.system_attrs.get('fail_reason') or ORPHAN_REASON}".splitlines()[0]
        for t in trials
        if t.state == TrialState.FAIL
    ]
    return SearchOutcome(
        study=study,
        pareto=pareto_trials(study, top_fidelity(space)),
        counts=counts,
        new_trials=len(study.get_trials(deepcopy=False, states=finished)) - before,
        wall_s=wall,
        storage=url,
        failures=failures,
    )


def _run_workers(
    config: SearchConfig, url: str, target: int, before: int, on_trial: Callable[[int, int], None] | None
) -> None:
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                config.space.raw,
                config.space.source,
                str(config.out_dir),
                url,
                config.study_name,
                config.seed + i,
                target,
            ),
        )
        for i in range(config.jobs)
    ]
    for p in procs:
        p.start()
    watcher = optuna.load_study(study_name=config.study_name, storage=_storage(url))
    finished = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    try:
        while any(p.is_alive() for p in procs):
            if on_trial is not None:
                on_trial(len(watcher.get_trials(deepcopy=False, states=finished)) - before, config.n_trials)
            for p in procs:
                p.join(timeout=0.5 / len(procs))
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(procs)} search workers failed (exit codes {bad}); see the log above")
    if on_trial is not None:
        on_trial(len(watcher.get_trials(deepcopy=False, states=finished)) - before, config.n_trials)


def replay_candidate(space: SearchSpace, params: dict[str, Any]) -> Candidate:
    """The candidate of a trial's parameters (``trial.params``) in ``space``."""
    return space.build(params_chooser(params))
