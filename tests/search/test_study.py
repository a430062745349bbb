"""Running searches: records, multi-fidelity rule, constraints, export, seeds, SIGKILL, PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from codesign.design import Design, evaluate
from search.export import write_pareto
from search.space import load_space
from search.study import (
    ORPHAN_REASON,
    SearchConfig,
    TrialEvaluator,
    TrialProgress,
    candidate_design,
    constraints_of,
    dominates,
    pareto_trials,
    run_search,
    space_terms,
)
from tests.search.search_helpers import tiny_space, tiny_space_text, write_space
from workloads.progress import PROGRESS_LOGGER

REPO = Path(__file__).resolve().parents[2]


def _run(space, out: Path, n: int, **kw):  # type: ignore[no-untyped-def]
    return run_search(SearchConfig(space=space, out_dir=out, n_trials=n, progress=False, **kw))


def test_search_records_both_fidelities_and_exports_replayable_designs(tmp_path: Path) -> None:
    space = tiny_space("multi")
    outcome = _run(space, tmp_path, 10, seed=3)
    study = outcome.study
    assert outcome.counts == {"complete": 10} and outcome.new_trials == 10
    assert study.metric_names == list(space.objectives)
    ev = TrialEvaluator(space, tmp_path)
    confirmed: list[tuple[int, list[float]]] = []
    for t in sorted(study.trials, key=lambda t: t.number):
        a = t.user_attrs
        assert len(a["design_hash"]) == 16 and a["design"]["model"]["n_experts"] == 8
        assert t.system_attrs["constraints"] == list(a["constraints"].values()) == constraints_of(t)
        assert all(map(lambda v: abs(v) < 1e13, t.values))  # finite, never infinities
        if a["fidelity"] == "none":
            assert a["constraints"]["fits"] == 1.0 and "does not fit" in a["infeasible"]
            assert "expert_fraction" not in a["infeasible"]  # named as the space names the knob
            continue
        assert a["constraints"]["fits"] == -1.0
        assert "analytic" in a["metrics"]  # every design of this space is analytically modelled
        if a["fidelity"] == "analytic":  # screened out: a confirmed design beat its optimistic values
            assert "sim" not in a["metrics"]
            screened = ev.values(a["metrics"]["analytic"], a["quality"]["loss"], optimism=space.confirm_margin)
            slo = ev.slo_violations(a["metrics"]["analytic"], optimism=space.confirm_margin)
            assert any(v > 0 for v in slo.values()) or any(
                dominates(v, screened, ev.directions) for n, v in confirmed if n < t.number
            )
        else:
            assert a["metrics"]["sim"]["fidelity"] == "sim"
            assert list(t.values) == ev.values(a["metrics"]["sim"], a["quality"]["loss"])
            if all(c <= 0 for c in a["constraints"].values()):
                confirmed.append((t.number, list(t.values)))
    assert confirmed, "the first screened designs are always confirmed"
    front = pareto_trials(study)
    assert front and all(t.user_attrs["fidelity"] == "sim" for t in front)
    csv_path, files = write_pareto(front, space.objectives, tmp_path)
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(front) + 1 and "tpot_p99 [ms]" in lines[0]
    design = Design.load(files[0])
    assert design.content_hash == front[0].user_attrs["design_hash"]
    again = evaluate(design, "sim")
    assert again.tpot_p99_s == pytest.approx(front[0].user_attrs["metrics"]["sim"]["tpot_p99_s"], rel=1e-12)


def test_a_design_that_does_not_fit_is_a_violated_constraint(tmp_path: Path) -> None:
    # Mixtral bf16 fully resident: 93 GB of weights on one 80 GB H100
    text = tiny_space_text().replace('weight_precision = ["bf16", "fp8"]', 'weight_precision = "bf16"')
    text = text.replace("fast_tier_share = [0.5, 0.75, 1.0]", "fast_tier_share = 1.0")
    space = load_space("fit.toml", text=text)
    outcome = _run(space, tmp_path, 1)
    (t,) = outcome.study.trials
    assert t.system_attrs["constraints"] == [1.0, 0.0]
    assert t.values[2] == pytest.approx(t.user_attrs["quality"]["loss"])  # quality is real
    assert outcome.pareto == [] and pareto_trials(outcome.study) == []


_REPRO = """
import json, sys
from pathlib import Path
import optuna
from search.space import load_space
from search.study import SearchConfig, run_search
space = load_space(sys.argv[1])
out = run_search(SearchConfig(space=space, out_dir=Path(sys.argv[2]), n_trials=8, seed=int(sys.argv[3]),
                 progress=False))
print(json.dumps([[t.params, t.values] for t in sorted(out.study.trials, key=lambda t: t.number)]))
"""


def _trials_in_fresh_process(space: Path, out: Path, seed: int) -> list[object]:
    proc = subprocess.run(
        [sys.executable, "-c", _REPRO, str(space), str(out), str(seed)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_same_seed_gives_the_same_trials_in_a_fresh_process(tmp_path: Path) -> None:
    space = write_space(tmp_path, fidelity="analytic")
    a = _trials_in_fresh_process(space, tmp_path / "a", 7)
    b = _trials_in_fresh_process(space, tmp_path / "b", 7)
    assert len(a) == 8 and a == b
    other = _run(load_space(space), tmp_path / "c", 8, seed=8).study.trials
    assert [p for p, _ in a] != [t.params for t in sorted(other, key=lambda t: t.number)]


_LONG = """
import sys
from pathlib import Path
from search.space import load_space
from search.study import SearchConfig, run_search
run_search(SearchConfig(space=load_space(sys.argv[1]), out_dir=Path(sys.argv[2]), n_trials=500, seed=1,
           study_name="killed", progress=False))
"""


def _completed(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return int(con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0])
        except sqlite3.OperationalError:  # tables not created yet
            return 0


def test_sigkill_keeps_every_completed_trial_and_the_study_resumes(tmp_path: Path) -> None:
    space_path = write_space(tmp_path, fidelity="sim")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _LONG, str(space_path), str(out)], cwd=REPO)
    try:
        deadline = time.monotonic() + 300  # a safety net only: the test waits for trials, not for time
        while _completed(out / "study.db") < 3:
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "no 3 completed trials after 300 s"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    url = f"sqlite:///{out / 'study.db'}"
    before = {
        t.number: (t.values, t.params)
        for t in optuna.load_study(study_name="killed", storage=url).get_trials(states=(TrialState.COMPLETE,))
    }
    assert len(before) >= 3
    outcome = _run(load_space(space_path), out, 2, seed=1, study_name="killed")
    after = outcome.study.get_trials()
    kept = {t.number: (t.values, t.params) for t in after if t.number in before}
    assert kept == before
    assert not [t for t in after if t.state == TrialState.RUNNING]  # the killed worker's trial: FAIL
    assert outcome.new_trials == 2
    assert sum(t.state == TrialState.COMPLETE for t in after) == len(before) + 2


def test_two_workers_on_one_postgresql_study_lose_nothing(tmp_path: Path, postgres_url: str) -> None:
    space = tiny_space("analytic")
    outcome = _run(space, tmp_path, 8, seed=2, jobs=2, storage=postgres_url, study_name="shared")
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    # each worker stops once the study holds 8 finished trials; both may be finishing one then
    assert 8 <= len(trials) <= 9
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(t.values is not None and len(t.user_attrs["design_hash"]) == 16 for t in trials)
    assert outcome.new_trials == len(trials)
    assert outcome.storage == postgres_url


def test_placements_and_retargeted_processes_are_cached_on_disk_by_content(tmp_path: Path) -> None:
    text = tiny_space_text().replace(
        'preset = ["h100-pcie5-host"]', 'preset = ["dgx-h100"]\n[platform.dgx-h100]\ndevices = [2]'
    )
    text = text.replace("granularity = 1", "granularity = 2")  # 16 experts, top-4: a retargeted process
    text += 'placement = "load-balanced"\nep_execution = "classic"\n'
    space = load_space("placed.toml", text=text)
    cand = next(iter(space.enumerate()))
    first = TrialEvaluator(space, tmp_path)
    design = first.placed(candidate_design(cand), cand)
    assert (design.workload.routing, design.workload.base_model) == ("default", "mixtral-8x7b")  # no path
    home = design.mapping.expert_home
    assert home is not None and len(home) == cand.model.n_moe_layers and {d for row in home for d in row} == {0, 1}
    assert first.placements.misses == 1 and len(list((tmp_path / "cache" / "placements").glob("*.npz"))) == 1
    second = TrialEvaluator(space, tmp_path)  # a fresh process's view: the files answer
    again = second.placed(candidate_design(cand), cand)
    assert again.content_hash == design.content_hash
    assert (second.placements.hits, second.placements.misses) == (1, 0)  # read from the file, not placed again
    assert len(list((tmp_path / "cache" / "processes").glob("*.json"))) == 1
    assert second.cache.disk_hits == 1  # the retargeted process came from its file, not derived again


def test_progress_off_a_terminal_is_log_lines_every_tenth_not_carriage_return_bars(
    capsys: pytest.CaptureFixture[str],
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(PROGRESS_LOGGER)  # its own handler: the CLI may have stopped propagation
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        progress = TrialProgress(25, tty=False)
        for done in range(1, 26):
            progress.update(done, 25)
        progress.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [r.getMessage() for r in records]
    assert progress.every == 3 and len(lines) == 9  # trials 3, 6, ..., 24 and the last one
    assert lines[0].startswith("search: 3/25 trials (12%)") and lines[-1].startswith("search: 25/25 trials (100%)")
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err


def test_search_progress_to_a_pipe_has_no_carriage_returns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from codesign.cli import main

    space = tmp_path / "space.toml"
    space.write_text(tiny_space_text("analytic"), encoding="utf-8")
    assert main(["search", "--space", str(space), "--trials", "3", "--out", str(tmp_path / "o"), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out


def test_infeasible_messages_name_the_space_knobs() -> None:
    msg = (
        "mapping does not fit device 0 (H100) hbm: ... (kv_fraction=0.9). Lower cache.expert_fraction, "
        "use more devices or a lower precision"
    )
    assert space_terms(msg).endswith(
        "Lower mapping.fast_tier_share, use more devices (platform.<preset>.devices) or a lower precision "
        "(model.weight_precision)"
    )
    assert "raise mapping.fast_tier_share to 1" in space_terms("...; raise expert_fraction to 1 or use a platform")


def test_a_killed_workers_orphan_trial_fails_with_a_reason(tmp_path: Path) -> None:
    space = tiny_space("analytic")
    study = _run(space, tmp_path, 1, seed=0).study
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    orphan = study.ask()
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    outcome = _run(space, tmp_path, 0, seed=0)
    (failed,) = [t for t in outcome.study.get_trials() if t.number == orphan.number]
    assert failed.state == TrialState.FAIL and failed.system_attrs["fail_reason"] == ORPHAN_REASON
    assert outcome.failures == [f"trial {orphan.number}: worker stopped before the trial finished (killed?)"]


_ASK_AND_DIE = """
import os, sys
import optuna
from search.study import _storage
study = optuna.load_study(study_name=sys.argv[2], storage=_storage(sys.argv[1]))
print(study.ask().number, flush=True)
os._exit(0)  # dies before its objective could record anything on the trial
"""


def test_a_trial_carries_its_worker_from_creation_so_a_worker_killed_while_sampling_is_failed(
    tmp_path: Path,
) -> None:
    """The CI failure of 2026-12-04: a worker killed between Optuna creating its trial and the
    objective's first line left a RUNNING trial with no worker, which resume could not fail."""
    space = tiny_space("analytic")
    _run(space, tmp_path, 1, seed=0, study_name="asked")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", _ASK_AND_DIE, url, "asked"], capture_output=True, text=True, check=True, cwd=REPO
    )
    number = int(proc.stdout.strip().splitlines()[-1])
    (raw,) = [t for t in optuna.load_study(study_name="asked", storage=url).get_trials() if t.number == number]
    assert raw.state == TrialState.RUNNING and raw.params == {}
    assert raw.user_attrs["worker"].rpartition(":")[0] == socket.gethostname()
    outcome = _run(space, tmp_path, 0, seed=0, study_name="asked")
    (failed,) = [t for t in outcome.study.get_trials() if t.number == number]
    assert failed.state == TrialState.FAIL and failed.system_attrs["fail_reason"] == ORPHAN_REASON


def test_a_queued_trial_is_stamped_by_the_worker_that_runs_it(tmp_path: Path) -> None:
    """A trial queued for later (``enqueue_trial``, WAITING) is not stamped at creation: the
    process that runs it stamps it, so a queue left by a process that has since ended does not
    look orphaned."""
    from search.study import _storage, worker_id

    space = tiny_space("analytic")
    first = _run(space, tmp_path, 1, seed=0, study_name="queued").study
    params = first.trials[0].params
    url = f"sqlite:///{tmp_path / 'study.db'}"
    queue = optuna.load_study(study_name="queued", storage=_storage(url))
    queue.enqueue_trial(params)
    (waiting,) = [t for t in queue.get_trials() if t.state == TrialState.WAITING]
    assert "worker" not in waiting.user_attrs
    outcome = _run(space, tmp_path, 1, seed=0, study_name="queued")
    (ran,) = [t for t in outcome.study.get_trials() if t.number == waiting.number]
    assert ran.state == TrialState.COMPLETE and ran.user_attrs["worker"] == worker_id()
