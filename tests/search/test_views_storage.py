"""The views read a study from any Optuna storage: here a throwaway PostgreSQL server (the
``postgres_url`` fixture; Debian's server, installed by ``.ci/services.sh``)."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.report import load_study_data
from search.views import write_report
from tests.search.conftest import new_study, synthetic_trials


def test_report_from_a_postgresql_study(postgres_url: str, tmp_path: Path) -> None:
    study = new_study(postgres_url, "shared")
    study.add_trials(synthetic_trials(12, seed=3, n_failed=1))
    data = load_study_data(storage=postgres_url)  # the only study: no name needed
    assert data.study_name == "shared" and data.counts["COMPLETE"] == 12 and data.counts["FAIL"] == 1
    assert data.storage.startswith("postgresql+psycopg2://")
    local = optuna.create_study(directions=study.directions)
    local.add_trials(synthetic_trials(12, seed=3, n_failed=1))
    assert [list(t.values) for t in data.trials] == [t.values for t in local.trials if t.values is not None]
    path = write_report(tmp_path, storage=postgres_url, timeline=None)
    assert path == tmp_path / "report.html" and "Study shared" in path.read_text()
