"""AggregatedRoutingStats: derived distributions, JSON round trip, validation, real OLMoE counts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from workloads import AggregatedRoutingStats, RoutingTrace, TraceFormatError, import_trace


def _a(x: list[int] | list[list[int]]) -> npt.NDArray[np.int64]:
    return np.array(x, dtype=np.int64)


def _stats() -> AggregatedRoutingStats:
    return AggregatedRoutingStats(
        model="toy",
        n_experts=3,
        top_k=2,
        domain="all",
        domains=("a", "b"),
        load={0: _a([4, 2, 2]), 5: _a([0, 4, 4])},
        load_top1={0: _a([3, 1, 0]), 5: _a([0, 2, 2])},
        pairs={(0, 5): _a([[0, 2, 2], [0, 1, 1], [0, 1, 1]])},
        pairs_top1={(0, 5): _a([[0, 1, 2], [0, 1, 0], [0, 0, 0]])},
        source_model="toy-src",
        source="unit test",
        licence="none",
    )


def test_load_distribution_and_tokens() -> None:
    s = _stats()
    assert s.layers == [0, 5] and s.layer_pairs == [(0, 5)]
    assert s.load_distribution(0).tolist() == [0.5, 0.25, 0.25]
    assert s.load_distribution(0, top1=True).tolist() == [0.75, 0.25, 0.0]
    assert s.tokens(0) == 4
    assert s.load_cv(5) == pytest.approx(np.std([0, 0.5, 0.5]) / (1 / 3))


def test_conditional_rows_and_unobserved() -> None:
    s = _stats()
    c = s.conditional(0, 5)
    assert c[0].tolist() == [0.0, 0.5, 0.5]
    assert np.allclose(c.sum(axis=1), 1.0)
    ct = s.conditional(0, 5, top1=True)
    assert ct[1].tolist() == [0.0, 1.0, 0.0]
    assert np.isnan(ct[2]).all()  # expert 2 never first at layer 0: no information, not invented


def test_missing_layer_errors() -> None:
    s = _stats()
    with pytest.raises(KeyError, match=r"layer 3; available: \[0, 5\]"):
        s.load_distribution(3)
    with pytest.raises(KeyError, match=r"layers \(5, 0\)"):
        s.conditional(5, 0)


def test_validation() -> None:
    with pytest.raises(ValueError, match=r"load\[0\] has shape \(2,\), expected \(3,\)"):
        AggregatedRoutingStats(model="x", n_experts=3, top_k=1, domain="d", load={0: _a([1, 2])})
    with pytest.raises(ValueError, match="negative count"):
        AggregatedRoutingStats(model="x", n_experts=3, top_k=1, domain="d", load={0: _a([1, -2, 0])})
    with pytest.raises(ValueError, match="top_k"):
        AggregatedRoutingStats(model="x", n_experts=3, top_k=4, domain="d", load={})


def test_arrays_read_only() -> None:
    s = _stats()
    with pytest.raises(ValueError):
        s.load[0][0] = 99


def test_json_round_trip(tmp_path: Path) -> None:
    s = _stats()
    back = AggregatedRoutingStats.load_json(s.save(tmp_path / "s.json"))
    assert back.equals(s)
    other = AggregatedRoutingStats(model="toy", n_experts=3, top_k=2, domain="all", load={0: _a([4, 2, 3])})
    assert not other.equals(s)


def test_json_errors(tmp_path: Path) -> None:
    d = _stats().to_json_dict()
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({**d, "format": "other"}), encoding="utf-8")
    with pytest.raises(TraceFormatError, match=r"bad\.json: field 'format'"):
        AggregatedRoutingStats.load_json(p)
    p.write_text(json.dumps({**d, "version": 7}), encoding="utf-8")
    with pytest.raises(TraceFormatError, match="field 'version' is 7"):
        AggregatedRoutingStats.load_json(p)
    p.write_text(json.dumps({**d, "pairs": {"0-5": [[0] * 3] * 3}}), encoding="utf-8")
    with pytest.raises(TraceFormatError, match="key '0-5', expected 'la,lb'"):
        AggregatedRoutingStats.load_json(p)
    p.write_text(json.dumps({**d, "load": {"0": [1, 2]}}), encoding="utf-8")
    with pytest.raises(TraceFormatError, match=r"bad\.json: .*load\[0\] has shape"):
        AggregatedRoutingStats.load_json(p)
    p.write_text(json.dumps(d)[:40], encoding="utf-8")
    with pytest.raises(TraceFormatError, match="line 1: invalid JSON"):
        AggregatedRoutingStats.load_json(p)
    p.write_bytes(pickle.dumps(d))
    with pytest.raises(TraceFormatError, match="pickle"):
        AggregatedRoutingStats.load_json(p)


def test_real_counts_round_trip_and_skew(shared_dir: Path, tmp_path: Path) -> None:
    src = shared_dir / "traces/olmoe-mixtral-routing-stats/counts.json"
    olmoe = import_trace("olmoe-counts", src)
    mixtral = import_trace("olmoe-counts", src, model="mistral")
    assert isinstance(olmoe, AggregatedRoutingStats) and isinstance(mixtral, AggregatedRoutingStats)
    assert AggregatedRoutingStats.load_json(olmoe.save(tmp_path / "o.json")).equals(olmoe)
    c = olmoe.conditional(0, 7)
    assert np.allclose(c.sum(axis=1), 1.0)
    # OLMoE's top-8 load over 64 experts is far less balanced than Mixtral's top-2 over 8
    # (measured CV 0.34 vs 0.09 at layer 0); first choices are more skewed than top-k slots.
    assert olmoe.load_cv(0) > 2 * mixtral.load_cv(0)
    for layer in olmoe.layers:
        assert olmoe.load_cv(layer, top1=True) > olmoe.load_cv(layer)
    # the SFT variant only has load counts on tulu
    sft = import_trace("olmoe-counts", src, model="olmoe-sft")
    assert isinstance(sft, AggregatedRoutingStats)
    assert sft.domains == ("tulu",) and sft.pairs == {} and sft.load_top1 == {}
    assert sft.tokens(0) * 8 == int(sft.load[0].sum())


def test_counts_summary_and_process_usable_by_stats_and_fit(shared_dir: Path, tmp_path: Path) -> None:
    """The counts feed `trace stats` (summary) and `trace fit` (a process whose popularity is the
    counted load); a counts file given where a per-token trace is needed says what it is for."""
    from workloads.aggregated import looks_like_counts, process_from_aggregated

    counts = import_trace(
        "olmoe-counts", shared_dir / "traces" / "olmoe-mixtral-routing-stats" / "counts.json", model="mistral"
    )
    assert isinstance(counts, AggregatedRoutingStats)
    path = counts.save(tmp_path / "mixtral_counts.json")
    assert looks_like_counts(path) and not looks_like_counts(tmp_path / "none.json")
    st = counts.summary()
    assert st["layers"] == [0, 7, 15] and st["layer_pairs"] == [[0, 7], [7, 15]]
    assert all(0.0 < g < 1.0 for g in st["load"]["gini"]) and all(mi > 0 for mi in st["pair_mutual_information_bits"])
    proc = process_from_aggregated(counts, seed=0)
    assert (proc.n_moe_layers, proc.n_experts, proc.top_k) == (32, 8, 2)
    want = (counts.load[7] + 1.0) / (counts.load[7].sum() + 8)  # add-one smoothed counted load
    np.testing.assert_allclose(proc.popularity[7], want, rtol=1e-9)
    with pytest.raises(TraceFormatError, match=r"mixtral_counts\.json: aggregated routing counts .*trace fit"):
        RoutingTrace.load(path)
