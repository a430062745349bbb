"""Placement computed once: exact layer solves, the wall budget and its greedy-plus-swap fallback,
the placement memo (in memory and on disk), and a precomputed layout carried by the `Mapping`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codesign.mapping import Mapping, MappingError
from codesign.policies.base import RoutingStats
from codesign.policies.placement import (
    PlacementMemo,
    _assign_layer,
    _cancel_cycles,
    _greedy_swap_layer,
    exflow_placement,
    placement_key,
    placement_objective,
    stats_digest,
)
from hwmodels import get_platform
from tests.codesign.sim_helpers import random_stream, tiny_model
from workloads.model import MoEModel


def _brute_layer(score: np.ndarray, lo: int, hi: int) -> float:
    """Best ``sum score[e, home[e]]`` over every assignment with counts in lo..hi (tiny only)."""
    from itertools import product

    n_exp, n_dev = score.shape
    best = -np.inf
    for assign in product(range(n_dev), repeat=n_exp):
        c = np.bincount(np.asarray(assign), minlength=n_dev)
        if c.min() >= lo and c.max() <= hi:
            best = max(best, float(score[np.arange(n_exp), list(assign)].sum()))
    return best


@pytest.mark.parametrize("n_exp,n_dev,seed", [(6, 2, 0), (7, 3, 1), (8, 4, 2), (5, 2, 3)])
def test_layer_solvers_exact_against_brute_force(n_exp: int, n_dev: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    score = rng.gamma(0.7, 1.0, size=(n_exp, n_dev))
    lo, hi = n_exp // n_dev, -(-n_exp // n_dev)
    best = _brute_layer(score, lo, hi)
    lsa, exact = _assign_layer(score, lo, hi)
    assert exact and score[np.arange(n_exp), lsa].sum() == pytest.approx(best, rel=1e-12)
    counts = np.bincount(lsa, minlength=n_dev)
    assert counts.min() >= lo and counts.max() <= hi
    # cycle cancelling from a poor feasible start reaches the same optimum
    start = np.arange(n_exp) % n_dev
    cyc, done = _cancel_cycles(score, start, lo, hi)
    assert done and score[np.arange(n_exp), cyc].sum() == pytest.approx(best, rel=1e-12)
    counts = np.bincount(cyc, minlength=n_dev)
    assert counts.min() >= lo and counts.max() <= hi
    # greedy-plus-swap: feasible, never above the optimum, never below its start
    g = _greedy_swap_layer(score, lo, hi)
    counts = np.bincount(g, minlength=n_dev)
    assert counts.min() >= lo and counts.max() <= hi
    assert score[np.arange(n_exp), g].sum() <= best + 1e-12
    from_start = _greedy_swap_layer(score, lo, hi, start)
    assert score[np.arange(n_exp), from_start].sum() >= score[np.arange(n_exp), start].sum()


def _weights(n_layers: int, n_exp: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(0.4, 1.0, size=(n_layers - 1, n_exp, n_exp))


def test_methods_report_which_answered_and_respect_capacity() -> None:
    w = _weights(6, 24, 0)
    seq = exflow_placement(w, 4, method="sequential")
    greedy = exflow_placement(w, 4, method="greedy")
    assert seq.method == "sequential" and seq.converged and seq.stopped == "converged" and seq.greedy_layers == 0
    assert greedy.method == "greedy" and greedy.greedy_layers > 0
    for sol in (seq, greedy):
        assert placement_objective(w, sol.expert_home) == pytest.approx(sol.colocated)
        for layer in range(6):
            assert np.bincount(sol.expert_home[layer], minlength=4).tolist() == [6, 6, 6, 6]
    # both beat a round-robin layout by far on these skewed weights
    rr = np.tile(np.arange(24) % 4, (6, 1))
    assert min(seq.colocated, greedy.colocated) > 1.2 * placement_objective(w, rr)


def test_spent_budget_falls_back_to_greedy_swap() -> None:
    """A budget too small for anything: the forward pass still places every layer (greedy-plus-swap
    answers once the budget is spent), no sweep runs, and the solution says so."""
    w = _weights(8, 32, 1)
    sol = exflow_placement(w, 4, method="sequential", budget_s=1e-9)
    assert sol.stopped == "budget" and not sol.converged and sol.sweeps == 0
    assert sol.greedy_layers >= 1
    assert sol.expert_home.shape == (8, 32)
    for layer in range(8):
        assert np.bincount(sol.expert_home[layer], minlength=4).tolist() == [8] * 4
    with pytest.raises(ValueError, match="budget_s"):
        exflow_placement(w, 4, budget_s=0)


def test_max_sweeps_zero_stops_after_the_forward_pass() -> None:
    w = _weights(5, 16, 2)
    sol = exflow_placement(w, 4, method="sequential", max_sweeps=0)
    assert sol.sweeps == 0 and sol.stopped == "max_sweeps"
    full = exflow_placement(w, 4, method="sequential")
    assert full.colocated >= sol.colocated


def _stats(model: MoEModel, seed: int = 0) -> RoutingStats:
    stream = random_stream(model, 6, 8, 4, seed=seed, zipf=1.0)
    rows = np.concatenate([stream.routing(r) for r in stream.requests])
    return RoutingStats.from_routing(rows, model.n_experts)


def test_memo_places_once_and_keys_on_every_input(tmp_path: Path) -> None:
    model = tiny_model(n_experts=16)
    stats = _stats(model)
    memo = PlacementMemo(maxsize=4)
    a = memo.place("exflow", {}, model, 4, stats)
    b = memo.place("exflow", {}, model, 4, stats)
    assert (a.source, b.source) == ("computed", "memo") and (memo.misses, memo.hits) == (1, 1)
    np.testing.assert_array_equal(a.expert_home, b.expert_home)
    assert not b.expert_home.flags.writeable
    assert dict(a.info)["method"] in ("joint", "sequential")
    # any input that changes the answer changes the key
    base = placement_key("exflow", {}, model, 4, stats)
    assert placement_key("exflow", {}, model, 2, stats) != base
    assert placement_key("exflow", {"max_sweeps": 1}, model, 4, stats) != base
    assert placement_key("load-balanced", {}, model, 4, stats) != base
    assert placement_key("exflow", {}, model, 4, _stats(model, seed=1)) != base
    assert placement_key("exflow", {}, tiny_model(n_experts=16, n_layers=5), 4, stats) != base
    assert placement_key("exflow", {}, model, 4, stats, seed=1) != base
    assert stats_digest(None) == "none" and stats_digest(stats) == stats_digest(_stats(model))
    # LRU: maxsize 1 keeps only the latest
    small = PlacementMemo(maxsize=1)
    small.place("round-robin", {}, model, 4, None)
    small.place("round-robin", {}, model, 2, None)
    assert len(small) == 1 and small.place("round-robin", {}, model, 4, None).source == "computed"
    with pytest.raises(ValueError, match="maxsize"):
        PlacementMemo(maxsize=-1)


def test_memo_directory_survives_the_process_and_ignores_a_bad_file(tmp_path: Path) -> None:
    model = tiny_model(n_experts=16)
    stats = _stats(model)
    first = PlacementMemo(directory=tmp_path / "placements").place("exflow", {}, model, 4, stats)
    files = list((tmp_path / "placements").glob("placement-*.npz"))
    assert len(files) == 1
    again = PlacementMemo(directory=tmp_path / "placements").place("exflow", {}, model, 4, stats)
    assert again.source == "disk"
    np.testing.assert_array_equal(first.expert_home, again.expert_home)
    assert dict(again.info) == dict(first.info)
    files[0].write_bytes(b"not an npz")
    redo = PlacementMemo(directory=tmp_path / "placements").place("exflow", {}, model, 4, stats)
    assert redo.source == "computed"
    np.testing.assert_array_equal(redo.expert_home, first.expert_home)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        PlacementMemo(directory=tmp_path / "file")


def test_mapping_carries_a_precomputed_layout() -> None:
    model = tiny_model(n_experts=16)
    plat = get_platform("dgx-h100")
    stats = _stats(model)
    memo = PlacementMemo()
    m = Mapping(placement="exflow", n_devices=4)
    placed = m.placed(model, plat, stats=stats, placements=memo)
    assert placed.expert_home is not None and placed.placement == "exflow"
    assert placed.placed(model, plat) is placed
    # JSON round trip keeps the layout, and the hash sees it
    back = Mapping.from_json(placed.to_json())
    assert back == placed and back.config_hash == placed.config_hash != m.config_hash
    assert json.loads(placed.to_json())["expert_home"][0] == list(placed.expert_home[0])
    # bind uses the layout as given, with no statistics and no policy run
    bound = back.bind(model, plat)
    assert bound.placement is not None and bound.placement.source == "given"
    np.testing.assert_array_equal(bound.expert_home, np.asarray(placed.expert_home))
    via_memo = m.bind(model, plat, stats=stats, placements=memo)
    assert via_memo.placement is not None and via_memo.placement.source == "memo"
    np.testing.assert_array_equal(via_memo.expert_home, bound.expert_home)


def test_layout_checked_when_built_and_when_bound() -> None:
    model = tiny_model(n_experts=8)  # 4 MoE layers
    plat = get_platform("dgx-h100")
    good = [[e % 2 for e in range(8)] for _ in range(4)]
    Mapping(n_devices=2, expert_home=good).bind(model, plat)
    with pytest.raises(MappingError, match=r"expert_home\[1\]\[3\] = -1"):
        Mapping(expert_home=[[0] * 8, [0, 0, 0, -1, 0, 0, 0, 0]])
    with pytest.raises(MappingError, match="integer device ids"):
        Mapping(expert_home=[[0.5] * 8])  # type: ignore[list-item]
    with pytest.raises(MappingError, match="table of device ids"):
        Mapping(expert_home=[0, 1, 0])  # type: ignore[list-item]
    with pytest.raises(MappingError, match="every expert homed exactly once"):
        Mapping(n_devices=2, expert_home=good[:3]).bind(model, plat)
    with pytest.raises(MappingError, match="every expert homed exactly once"):
        Mapping(n_devices=2, expert_home=[row[:7] for row in good]).bind(model, plat)
    bad = [row[:] for row in good]
    bad[2][5] = 2
    with pytest.raises(MappingError, match=r"expert_home\[2\]\[5\] = 2 .* \[0, 2\)"):
        Mapping(n_devices=2, expert_home=bad).bind(model, plat)
    with pytest.raises(MappingError, match="list of lists"):
        Mapping.from_dict({"expert_home": "0,1"})
