"""Design-space views: the figure data of synthetic studies (built with Optuna, no simulation), the
report file, its size on 1,000 trials, and its errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from plotly.offline import get_plotlyjs

from codesign.design import Design
from search.report import find_storage, load_study_data, pack_designs, study_data, unpack_design
from search.study import PARETO_FIDELITY_ATTR, pareto_trials
from search.views import (
    bottleneck_info,
    choose_design,
    design_cost_info,
    hypervolume_info,
    importance_info,
    parallel_info,
    pareto_info,
    pareto_records,
    plot_design_cost,
    plot_hypervolume,
    plot_importance,
    plot_parallel,
    plot_pareto,
    write_report,
)
from tests.search.conftest import OBJECTIVES, new_study, synthetic_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study_of(
    values: list[list[float]], directions: list[Literal["minimize", "maximize"]], feasible: list[bool] | None = None
) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    feasible = feasible or [True] * len(values)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": float(i)},
                distributions={"x": FloatDistribution(0, 100)},
                values=v,
                user_attrs={"design_hash": f"d{i}"},
                system_attrs={"constraints": [-1.0 if ok else 0.5]},
            )
            for i, (v, ok) in enumerate(zip(values, feasible, strict=True))
        ]
    )
    return study


def test_study_data_reads_what_the_search_records(small_study_dir: Path) -> None:
    data = load_study_data(small_study_dir)
    assert data.objective_names == list(OBJECTIVES)
    assert data.counts["COMPLETE"] == 24 and data.counts["FAIL"] == 2 and len(data.trials) == 24
    assert 0 < len(data.feasible) < 24  # the synthetic SLO rejects some
    t = data.trials[0]
    assert Design.from_dict(t.design).content_hash == t.design_hash  # the whole design round-trips
    assert set(t.metrics) <= {"analytic", "sim"} and t.best_metrics() is not None
    assert t.feasible == (t.constraints["tpot_slo"] <= 0)
    unfit = next(t for t in data.trials if not t.evaluated)
    assert not unfit.feasible and "does not fit" in unfit.infeasible_reason
    assert find_storage(small_study_dir).endswith("study.db")
    assert data.by_hash(t.design_hash).number == t.number


def test_pareto_front_is_exactly_the_non_dominated_feasible_set(small_study_dir: Path) -> None:
    data = load_study_data(small_study_dir)
    info = pareto_info(data)
    pts = info.points
    assert [p["number"] for p in pts] == [t.number for t in data.trials if t.evaluated]
    assert any(not t.evaluated for t in data.trials) and "never evaluated" in info.title
    front = [pts[i] for i in info.front]
    assert front and all(p["feasible"] for p in front)

    def dominates(a: list[float], b: list[float]) -> bool:  # all objectives minimised here
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    # the search's rule (search.study.pareto_front): the first feasible trial of each design hash,
    # non-dominated among those, exact ties to the first trial
    pool = [p for p in pts if p["feasible"] and p["number"] == min(q["number"] for q in pts if q["hash"] == p["hash"])]
    for p in pts:
        beaten = any(dominates(q["values"], p["values"]) for q in pool)
        tie = any(q["values"] == p["values"] and q["number"] < p["number"] for q in pool)
        assert p["front"] == (p in pool and not beaten and not tie), p["number"]
    assert len({p["hash"] for p in front}) == len(front)
    xs = [p["values"][0] for p in front]
    assert xs == sorted(xs) and info.axes == (0, 1) and info.colour == 2
    assert info.log_axes == (False, False)  # TPOT spans ~20x, energy ~4x here
    wide = pareto_info(study_data(_study_of([[1, 5], [1000, 1], [30, 2]], ["minimize", "minimize"])))
    assert wide.log_axes == (True, False) and plot_pareto(wide).layout.xaxis.type == "log"
    # hover: hash and objectives; the whole design of a front point is packed for the panel
    assert all(p["hash"] in p["hover"] and "tpot_p99_ms" in p["hover"] for p in pts)
    packed = pack_designs(info.designs)
    for h, d in info.designs.items():
        assert unpack_design(packed, h) == d
    assert len(packed["parts"]["platform"]) <= 2  # each distinct platform stored once
    fig = plot_pareto(info)
    assert sum(len(tr.x) for tr in fig.data) == len(pts)
    with pytest.raises(ValueError, match="axes"):
        pareto_info(data, axes=(0, 0))


def test_parallel_coordinates_encode_categories_and_absent_knobs(small_study_dir: Path) -> None:
    data = load_study_data(small_study_dir)
    info = parallel_info(data)
    labels = [d["label"] for d in info.dims]
    assert labels == ["batch", "cache", "expert_fraction", "placement", "platform", *OBJECTIVES]
    feas = data.feasible
    assert info.numbers == [t.number for t in feas]
    placement = info.dims[labels.index("placement")]
    assert placement["ticktext"][0] == "absent"  # only multi-device designs sample a placement
    for t, v in zip(feas, placement["values"], strict=True):
        assert placement["ticktext"][int(v)] == t.params.get("placement", "absent")
    batch = info.dims[labels.index("batch")]
    assert batch["values"] == [float(t.params["batch"]) for t in feas] and batch["tickvals"] is None
    assert len(plot_parallel(info).data[0].dimensions) == len(labels)


def test_importance_needs_enough_trials_and_says_why(small_study_dir: Path) -> None:
    storage = find_storage(small_study_dir)
    study = optuna.load_study(study_name="synthetic", storage=storage)
    data = study_data(study)
    few = importance_info(study, data, min_trials=1000)
    assert not few.importances and set(few.reasons) == set(OBJECTIVES)
    assert "fewer than the 1000 needed" in few.reasons["tpot_p99_ms"]
    info = importance_info(study, data, min_trials=5)
    assert set(info.importances) == set(OBJECTIVES)
    for imp in info.importances.values():
        assert sum(imp.values()) == pytest.approx(1.0) and set(imp) <= set().union(*(t.params for t in data.trials))
        assert list(imp.values()) == sorted(imp.values(), reverse=True)
    assert len(plot_importance(info).data) == len(OBJECTIVES)


def test_hypervolume_history_by_hand() -> None:
    # minimise both: (1,3), (2,2), (3,1), then a dominated (3,3); reference = worst + 10 % of range
    study = _study_of([[1, 3], [2, 2], [3, 1], [3, 3]], ["minimize", "minimize"])
    info = hypervolume_info(study_data(study))
    assert info.reference == pytest.approx([3.2, 3.2])
    assert info.hypervolume == pytest.approx([2.2 * 0.2, 2.2 * 0.2 + 1.2 * 1.0, 1.84, 1.84])
    # the same front with the second objective maximised (values negated) has the same history
    flipped = _study_of([[1, -3], [2, -2], [3, -1], [3, -3]], ["minimize", "maximize"])
    info2 = hypervolume_info(study_data(flipped))
    assert info2.hypervolume == pytest.approx(info.hypervolume) and info2.reference == pytest.approx([3.2, -3.2])
    # infeasible trials count for nothing
    masked = _study_of([[1, 3], [0, 0], [2, 2]], ["minimize", "minimize"], feasible=[True, False, True])
    info3 = hypervolume_info(study_data(masked))
    assert info3.numbers == [0, 2] and np.all(np.diff(info3.hypervolume) >= 0)
    assert len(plot_hypervolume(info3).data[0].x) == 2


def test_bottleneck_lines_and_chosen_design_cost(small_study_dir: Path) -> None:
    data = load_study_data(small_study_dir)
    best = choose_design(data)
    assert best is not None and best.feasible
    assert best.values[0] == min(t.values[0] for t in data.feasible)
    info = bottleneck_info(data.trials)
    for t, row in zip(data.trials, info.rows, strict=True):
        if not t.metrics:
            assert row["bottleneck"] is None and "no busy-time breakdown" in row["line"]
            continue
        fid, m = t.best_metrics() or ("", {})
        assert row["fidelity"] == fid == ("sim" if "sim" in t.metrics else "analytic")
        assert row["bottleneck"] == max(m["breakdown_s"], key=m["breakdown_s"].get)
        assert sum(row["shares"].values()) == pytest.approx(1.0)
        label = {"pcie": "PCIe", "hbm": "HBM", "compute": "compute", "all_to_all": "all-to-all"}[row["bottleneck"]]
        assert f"{label} dominates" in row["line"] and t.design_hash in row["line"]
    bare = _study_of([[1, 1]], ["minimize", "minimize"])
    assert "no busy-time breakdown" in bottleneck_info(study_data(bare).trials).rows[0]["line"]
    cost = design_cost_info(data, best)
    assert set(cost.seconds) == set(best.metrics) and cost.categories[0] == "compute"
    assert cost.seconds["analytic"]["pcie"] == best.metrics["analytic"]["breakdown_s"]["pcie"]
    assert len(plot_design_cost(cost).data) == len(cost.categories)
    other = data.trials[-1]
    assert choose_design(data, other.design_hash) == data.by_hash(other.design_hash)


def test_report_file_and_errors(small_study_dir: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(small_study_dir, tmp_path / "out"))  # this test adds a study to it
    path = write_report(out)
    assert path == out / "report.html"
    text = path.read_text()
    assert text.count(get_plotlyjs()[:200]) == 1  # plotly.js inline, once
    for div in ("pareto", "parallel", "importance", "hypervolume", "cost", "timeline"):
        assert f'id="{div}"' in text
    data = load_study_data(out)
    best = choose_design(data)
    assert best is not None and f"Chosen design {best.design_hash}" in text
    assert 'id="timeline-events"' in text and f"Design {best.design_hash}" in text  # re-simulated with events
    packed = json.loads(re.search(r'id="design-data">(.*?)</script>', text, re.S).group(1))  # type: ignore[union-attr]
    assert packed["initial"] == best.design_hash and best.design_hash in packed["designs"]
    with pytest.raises(ValueError, match="not in study"):
        write_report(out, design_hash="0000")
    with pytest.raises(ValueError, match="no such folder"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"no study database"):
        write_report(tmp_path)
    storage = find_storage(out)
    with pytest.raises(ValueError, match="no study named 'other'"):
        write_report(out, study_name="other")
    new_study(storage, "second")
    with pytest.raises(ValueError, match=r"2 studies .*name one with --study"):
        write_report(out)

    def refuse(design: dict[str, object]) -> str:
        raise ValueError("mapping does not fit device 0")

    refused = write_report(out, study_name="synthetic", path=tmp_path / "refused.html", timeline=refuse).read_text()
    assert "timeline: not drawn (mapping does not fit device 0)" in refused
    empty = write_report(out, study_name="second", path=tmp_path / "empty.html", timeline=None).read_text()
    assert "no feasible trial" in empty


def test_report_of_a_1000_trial_study_stays_small(tmp_path: Path) -> None:
    study = new_study(None)
    study.add_trials(synthetic_trials(1000, seed=1))
    path = write_report(tmp_path, study=study, timeline=None)  # the timeline's size is tested in codesign
    size = path.stat().st_size
    data_bytes = size - len(get_plotlyjs())
    # figures, hover text and packed Pareto designs: well under the 4.8 MB of plotly.js itself
    assert data_bytes < 1_500_000, data_bytes
    assert size < 6_500_000, size


def test_codesign_view_command(small_study_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from codesign.cli import main

    out = tmp_path / "view.html"
    assert main(["view", str(small_study_dir), "--no-timeline", "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert "timeline: not drawn (left out (--no-timeline))" in out.read_text()
    assert main(["view", str(tmp_path / "missing")]) == 1
    assert "OUT_DIR" in capsys.readouterr().err
    assert main(["view", str(small_study_dir), "--no-timeline", "--design", "feedbeef"]) == 1
    assert "not in study" in capsys.readouterr().err


def test_report_pareto_set_is_the_searchs_one_design_per_hash_at_the_trusted_fidelity() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    rows = [  # (values, hash, fidelity)
        ([1.0, 5.0], "a", "sim"),
        ([1.0, 5.0], "a", "sim"),  # the same design again (NSGA-II re-proposes): one point
        ([2.0, 3.0], "b", "sim"),
        ([2.0, 3.0], "c", "sim"),  # an exact tie with another design: the first trial kept
        ([0.5, 0.5], "d", "analytic"),  # better, but analytic only: not in a sim-trusted front
        ([3.0, 1.0], "e", "sim"),
    ]
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": float(i)},
                distributions={"x": FloatDistribution(0, 100)},
                values=v,
                user_attrs={"design_hash": h, "fidelity": fid, "constraints": {"fits": -1.0}},
                system_attrs={"constraints": [-1.0]},
            )
            for i, (v, h, fid) in enumerate(rows)
        ]
    )
    study.set_user_attr(PARETO_FIDELITY_ATTR, "sim")
    expected = [t.number for t in pareto_trials(study, "sim")]
    assert expected == [0, 2, 5]
    data = study_data(study)
    assert [t.number for t in pareto_records(data)] == expected
    info = pareto_info(data)
    assert [info.points[i]["number"] for i in info.front] == expected
    assert info.title.startswith("Pareto front (3 designs at fidelity sim, of 5 feasible designs in 6 feasible trials")
    assert [r["number"] for r in bottleneck_info(pareto_records(data)).rows] == expected
    study.set_user_attr(PARETO_FIDELITY_ATTR, "any")  # an analytic-only space: every fidelity counts
    assert [t.number for t in pareto_records(study_data(study))] == [t.number for t in pareto_trials(study, None)]
