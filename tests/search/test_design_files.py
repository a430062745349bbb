"""Saved Pareto designs name their routing by content, not by a path: they replay from any folder
with the recorded values, and their hashes do not depend on ``--out``. The search's process disk
cache (`codesign.design.EvalCache` with a directory) is an implementation detail."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from codesign.cli import main
from codesign.design import Design, EvalCache, routing_process
from search.space import SpaceError, load_space
from tests.search.search_helpers import tiny_space_text
from workloads.defaults import default_process
from workloads.process import RoutingProcess

#: The tiny space on a model retargeted from Mixtral's 8 experts top-2 to 16 experts top-4
#: (granularity 2): the case whose design used to hold ``process:OUT/cache/processes/...json``.
RETARGETED = tiny_space_text("sim").replace("granularity = 1", "granularity = 2")


def test_eval_cache_directory_persists_processes_by_key_and_rederives_unreadable_files(tmp_path: Path) -> None:
    made: list[int] = []

    def make() -> object:
        made.append(1)
        return default_process("mixtral-8x7b")

    first = EvalCache(directory=tmp_path / "procs")
    proc = first.process("some|content|key", make)
    (path,) = list((tmp_path / "procs").glob("*.json"))
    assert path == first.file_for("some|content|key") and not list((tmp_path / "procs").glob("*.tmp"))
    second = EvalCache(directory=tmp_path / "procs")  # another process's view: the file answers
    again = second.process("some|content|key", make)
    assert len(made) == 1 and second.disk_hits == 1
    assert again.to_dict() == proc.to_dict()  # float64 on disk: the reloaded process is the derived one
    path.write_text("{not json", encoding="utf-8")
    third = EvalCache(directory=tmp_path / "procs")
    third.process("some|content|key", make)  # unreadable: derived again and rewritten
    assert len(made) == 2 and third.disk_hits == 0
    assert EvalCache(directory=tmp_path / "procs").process("some|content|key", make).to_dict() == proc.to_dict()
    assert EvalCache().file_for("k") is None


def test_space_refuses_the_removed_recalibration_budget_keys() -> None:
    with pytest.raises(SpaceError, match=r"workload\.routing_calibration_iterations"):
        load_space("old.toml", text="[workload]\nrouting_calibration_iterations = 2\n")


def _pareto(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "pareto.csv").open(encoding="utf-8")))


def test_pareto_designs_replay_from_another_cwd_and_do_not_depend_on_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(RETARGETED, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    flags = ["--space", str(space), "--trials", "3", "--no-progress", "--no-report"]
    assert main(["search", *flags, "--out", "a"]) == 0  # relative --out, as `codesign explore` writes
    assert main(["search", *flags, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    rows_a, rows_b = _pareto(work / "a"), _pareto(tmp_path / "b")
    assert rows_a and [r["design_hash"] for r in rows_a] == [r["design_hash"] for r in rows_b]
    for r in rows_a:
        saved = json.loads(Path(r["design_file"]).read_text(encoding="utf-8"))
        assert saved["workload"]["routing"] == "default" and "cache" not in json.dumps(saved["workload"])
    row = rows_a[0]
    assert row["fidelity"] == "sim"
    # the process the search derived (and filed in its cache) is the one a replay derives afresh
    (cached,) = list((work / "a" / "cache" / "processes").glob("*.json"))
    fresh = routing_process(Design.load(work / row["design_file"]))
    assert (fresh.n_experts, fresh.top_k) == (16, 4)
    assert RoutingProcess.load(cached).to_dict() == fresh.to_dict()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another cwd: the relative output folder is not reachable from here
    design_file = work / row["design_file"]
    assert main(["simulate", "--design", str(design_file), "--json", "--no-progress"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert math.isclose(1e3 * replay["tpot_p99_s"], float(row["tpot_p99 [ms]"]), rel_tol=1e-9)
