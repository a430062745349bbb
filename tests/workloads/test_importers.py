"""Importers: the real data of ../shared/traces (counts, layout, incomplete tokens) and malformed
inputs written to tmp_path (errors name the file, the line and what was expected)."""

from __future__ import annotations

import csv
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads import AggregatedRoutingStats, RoutingTrace, TraceFormatError, import_trace, importer_names
from workloads.importers import UnknownFormatError, expand_paths


# ----------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def mixtral_dir(shared_dir: Path) -> Path:
    return shared_dir / "traces" / "mixtral-8x7b-instruct"


def test_registry_names() -> None:
    names = importer_names()  # plug-ins registered by other tests may follow
    assert names == sorted(names)
    assert {"deepseek-csv", "mixtral-jsonl", "olmoe-counts", "table"} <= set(names)


def test_unknown_format_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError) as err:
        import_trace("parquet", tmp_path)
    for name in importer_names():
        assert name in str(err.value)


def test_deepseek_counts(deepseek: RoutingTrace, shared_dir: Path) -> None:
    assert deepseek.n_tokens == 19520  # README: 200 prompts, 19,520 tokens
    assert deepseek.n_requests == 200
    assert deepseek.n_moe_layers == 26 and deepseek.k == 6
    assert deepseek.meta["model"] == "deepseek-v2-lite" and deepseek.n_experts == 64 and deepseek.top_k == 6
    assert deepseek.meta["moe_layer_ids"] == list(range(1, 27))  # CSV Layer ID 1..26; layer 0 is dense
    assert deepseek.weights is None
    assert set(np.unique(deepseek.request)) == set(range(1001, 1201))
    assert (deepseek.phase == 0).all()
    assert deepseek.experts.min() >= 0 and deepseek.experts.max() < 64
    assert "file order" in deepseek.meta["expert_order"]
    assert "no licence" in deepseek.meta["licence"]
    # positions restart at 0 in every request and are consecutive
    for rid in (1001, 1132, 1200):
        pos = deepseek.position[deepseek.request == rid]
        assert np.array_equal(pos, np.arange(pos.size))
    # rows = tokens x 26 layers in each file
    text = (shared_dir / "traces/deepseek-v2-lite/prompt_1001_data.csv").read_text(encoding="utf-8")
    rows = len(text.splitlines()) - 1
    assert (deepseek.request == 1001).sum() * 26 == rows


def test_deepseek_values_in_file_order(deepseek: RoutingTrace) -> None:
    first = deepseek.select_requests([1001])
    # prompt_1001_data.csv lines 2 and 5: layer 1 token 0 and layer 2 token 0
    assert first.experts[0, 0].tolist() == [8, 26, 56, 57, 60, 11]
    assert first.experts[0, 1].tolist() == [3, 35, 38, 62, 63, 60]
    assert first.experts[1, 0].tolist() == [8, 10, 14, 30, 56, 44]


def test_deepseek_keep_tokens(shared_dir: Path) -> None:
    t = import_trace("deepseek-csv", shared_dir / "traces/deepseek-v2-lite/prompt_1001_data.csv", keep_tokens=True)
    assert isinstance(t, RoutingTrace)
    assert t.meta["tokens"]["1001"][1:] == ["conserv", "ative"]


def test_mixtral_mark_reports_incomplete_tokens(mixtral_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="workloads.importers"):
        t = import_trace("mixtral-jsonl", mixtral_dir)
    assert isinstance(t, RoutingTrace)
    assert t.n_tokens == 585 and t.n_requests == 4  # README: 585 tokens, 2 GSM8K + 2 HumanEval problems
    assert t.n_moe_layers == 32 and t.k == 2 and t.meta["model"] == "mixtral-8x7b"
    assert t.meta["moe_layer_ids"] == list(range(32))
    assert (t.phase == 1).all()
    assert t.meta["n_incomplete_tokens"] == 8
    assert "8 of 585" in caplog.text and "gsm8k/0 token 167" in caplog.text
    incomplete = {
        (d["dataset"], d["problem_id"], d["token_idx"]): d["missing_layers"] for d in t.meta["incomplete_tokens"]
    }
    assert incomplete[("humaneval", 1, 254)] == 20
    # missing layers are marked -1 in both slots, nowhere else
    missing_slots = int((t.experts == -1).sum())
    assert missing_slots == 2 * sum(incomplete.values())
    # the first row of gsm8k_2_routing.jsonl: experts [7, 0], gating_probs 0.80/0.20
    assert t.experts[0, 0].tolist() == [7, 0]
    assert t.weights is not None
    assert t.weights[0, 0] == pytest.approx([0.8003801, 0.1996199], abs=1e-6)
    full = t.experts.min(axis=(1, 2)) >= 0
    assert np.allclose(t.weights[full].sum(axis=2), 1.0, atol=1e-4)
    # positions are the decode step, consecutive per request
    for rid in range(4):
        pos = t.position[t.request == rid]
        assert np.array_equal(pos, np.arange(pos.size))


def test_mixtral_drop(mixtral_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="workloads.importers"):
        t = import_trace("mixtral-jsonl", mixtral_dir, missing="drop")
    assert isinstance(t, RoutingTrace)
    assert t.n_tokens == 577
    assert (t.experts >= 0).all()
    assert "dropped" in caplog.text
    # README: "expert ids (highest gate first)": the first weight is the larger one, >= 0.5 of two
    assert t.weights is not None
    assert (t.weights[..., 0] >= t.weights[..., 1]).all() and t.weights[..., 0].min() >= 0.5


def test_mixtral_bad_missing_option(mixtral_dir: Path) -> None:
    with pytest.raises(ValueError, match="'mark' or 'drop'"):
        import_trace("mixtral-jsonl", mixtral_dir, missing="invent")


def test_unknown_option_names_valid_ones(mixtral_dir: Path) -> None:
    with pytest.raises(TypeError, match=r"deepseek-csv takes no option 'missing'; its options: model, keep_tokens"):
        import_trace("deepseek-csv", mixtral_dir, missing="drop")


def test_olmoe_counts_all(shared_dir: Path) -> None:
    s = import_trace("olmoe-counts", shared_dir / "traces/olmoe-mixtral-routing-stats")
    assert isinstance(s, AggregatedRoutingStats)
    assert s.model == "olmoe-1b-7b" and s.n_experts == 64 and s.top_k == 8
    assert s.domains == ("arxiv", "book", "c4", "github", "wikipedia")  # tulu lacks cross-layer counts
    assert s.layers == [0, 7, 15] and s.layer_pairs == [(0, 7), (7, 15)]
    assert "Apache-2.0" in s.licence
    for layer in s.layers:
        assert s.load[layer].sum() == 8 * s.load_top1[layer].sum()  # top-8 slots per token
    # rank-aligned pairs: marginals equal the loads at both layers
    assert np.array_equal(s.pairs[(0, 7)].sum(axis=1), s.load[0])
    assert np.array_equal(s.pairs[(0, 7)].sum(axis=0), s.load[7])
    assert np.array_equal(s.pairs_top1[(7, 15)].sum(axis=0), s.load_top1[15])


def test_olmoe_counts_mixtral_domain(shared_dir: Path) -> None:
    s = import_trace(
        "olmoe-counts", shared_dir / "traces/olmoe-mixtral-routing-stats/counts.json", model="mistral", domain="github"
    )
    assert isinstance(s, AggregatedRoutingStats)
    assert s.model == "mixtral-8x7b" and s.top_k == 2 and s.domains == ("github",)
    assert 200_000 < s.tokens(0) < 220_000  # README: about 209k tokens per domain


def test_olmoe_counts_errors(shared_dir: Path) -> None:
    path = shared_dir / "traces/olmoe-mixtral-routing-stats/counts.json"
    with pytest.raises(TraceFormatError, match=r"no model 'gpt'.*mistral"):
        import_trace("olmoe-counts", path, model="gpt")
    with pytest.raises(TraceFormatError, match=r"no domain 'poetry'.*arxiv"):
        import_trace("olmoe-counts", path, domain="poetry")


# ---------------------------------------------------------- malformed input
def _mixtral_rows(tokens: int = 2, layers: int = 32) -> list[dict[str, Any]]:
    return [
        {
            "dataset": "gsm8k",
            "problem_id": 0,
            "layer": layer,
            "experts": [1, 2],
            "gating_probs": [0.7, 0.3],
            "token_idx": t,
        }
        for t in range(tokens)
        for layer in range(layers)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mixtral_small_valid(tmp_path: Path) -> None:
    t = import_trace("mixtral-jsonl", _write_jsonl(tmp_path / "a_routing.jsonl", _mixtral_rows()))
    assert isinstance(t, RoutingTrace) and t.n_tokens == 2 and t.meta["n_incomplete_tokens"] == 0


@pytest.mark.parametrize(
    ("line", "mutate", "expect"),
    [
        (3, {"experts": [1, 8]}, "expert id 8 outside"),
        (5, {"experts": [1]}, "expected 2 integer ids"),
        (2, {"experts": [3, 3]}, "repeats an expert"),
        (4, {"layer": 32}, "layer 32 outside"),
        (7, {"gating_probs": ["0.5", 0.5]}, "gating_probs"),
        (6, {"token_idx": True}, "token_idx"),
        (9, {"problem_id": "1+1"}, "problem_id"),
    ],
)
def test_mixtral_bad_field(tmp_path: Path, line: int, mutate: dict[str, object], expect: str) -> None:
    rows = _mixtral_rows()
    rows[line - 1] = {**rows[line - 1], **mutate}
    path = _write_jsonl(tmp_path / "bad_routing.jsonl", rows)
    with pytest.raises(TraceFormatError, match=rf"bad_routing\.jsonl: line {line}: .*{expect}"):
        import_trace("mixtral-jsonl", path)


def test_mixtral_missing_field(tmp_path: Path) -> None:
    rows = _mixtral_rows()
    del rows[10]["layer"]
    path = _write_jsonl(tmp_path / "m_routing.jsonl", rows)
    with pytest.raises(TraceFormatError, match="line 11: missing field 'layer'"):
        import_trace("mixtral-jsonl", path)


def test_mixtral_duplicate_row(tmp_path: Path) -> None:
    rows = _mixtral_rows()
    rows.append(rows[0])
    path = _write_jsonl(tmp_path / "d_routing.jsonl", rows)
    with pytest.raises(TraceFormatError, match=r"line 65: duplicate row.*first seen at .*line 1"):
        import_trace("mixtral-jsonl", path)


def test_mixtral_truncated(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "t_routing.jsonl", _mixtral_rows())
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) - 30], encoding="utf-8")
    with pytest.raises(TraceFormatError, match=r"t_routing\.jsonl: line 64: invalid JSON.*truncated"):
        import_trace("mixtral-jsonl", path)


def test_mixtral_layer_count_disagrees(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "short_routing.jsonl", _mixtral_rows(layers=16))
    with pytest.raises(TraceFormatError, match=r"routing\.jsonl: layers seen are 0\.\.15 but mixtral-8x7b has 32"):
        import_trace("mixtral-jsonl", path)
    t = import_trace("mixtral-jsonl", path, n_layers=16)
    assert isinstance(t, RoutingTrace) and t.n_moe_layers == 16 and t.meta["n_incomplete_tokens"] == 0
    assert t.meta["moe_layer_ids"] == list(range(16))


def test_mixtral_incomplete_token_marked(tmp_path: Path) -> None:
    rows = [r for r in _mixtral_rows() if not (r["token_idx"] == 1 and r["layer"] in (3, 31))]
    t = import_trace("mixtral-jsonl", _write_jsonl(tmp_path / "i_routing.jsonl", rows))
    assert isinstance(t, RoutingTrace)
    assert t.meta["incomplete_tokens"][0]["missing_layer_ids"] == [3, 31]
    assert t.experts[1, 3].tolist() == [-1, -1] and t.experts[1, 4].tolist() == [1, 2]


def test_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "x_routing.jsonl"
    path.write_bytes(pickle.dumps([{"dataset": "gsm8k"}]))
    with pytest.raises(TraceFormatError, match=r"x_routing\.jsonl: looks like a Python pickle"):
        import_trace("mixtral-jsonl", path)
    csv_path = tmp_path / "prompt_0001_data.csv"
    csv_path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TraceFormatError, match="pickle"):
        import_trace("deepseek-csv", csv_path)
    json_path = tmp_path / "counts.json"
    json_path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TraceFormatError, match="pickle"):
        import_trace("olmoe-counts", json_path)


def test_empty_and_missing_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "e_routing.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(TraceFormatError, match="empty"):
        import_trace("mixtral-jsonl", empty)
    with pytest.raises(TraceFormatError, match="no such file"):
        import_trace("mixtral-jsonl", tmp_path / "absent.jsonl")
    (tmp_path / "sub").mkdir()
    with pytest.raises(TraceFormatError, match=r"no file matching 'prompt_\*_data.csv'"):
        import_trace("deepseek-csv", tmp_path / "sub")


def _ds_rows(tokens: list[str], layers: int = 26) -> list[list[str]]:
    rows = [["Layer ID", "Batch Number", "Token", "Activated Expert IDs"]]
    for layer in range(1, layers + 1):
        for j, tok in enumerate(tokens):
            ids = [(layer + j + 7 * s) % 64 for s in range(6)]
            rows.append([str(layer), "0", tok, str(ids)])
    return rows


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_deepseek_tokens_with_commas_and_quotes(tmp_path: Path) -> None:
    tokens = ["<｜begin▁of▁sentence｜>", ",", '"', 'say "hi", ok', "[1, 2]"]
    path = _write_csv(tmp_path / "prompt_0042_data.csv", _ds_rows(tokens))
    t = import_trace("deepseek-csv", path, keep_tokens=True)
    assert isinstance(t, RoutingTrace)
    assert t.n_tokens == 5 and set(t.request.tolist()) == {42}
    assert t.meta["tokens"]["42"] == tokens
    assert t.experts[2, 3].tolist() == [(4 + 2 + 7 * s) % 64 for s in range(6)]  # layer id 4, token 2


@pytest.mark.parametrize(
    ("row", "col", "value", "expect"),
    [
        (5, 3, "[1, 2, x, 4, 5, 6]", "expected 6 integers"),
        (7, 3, "[1, 2, 3, 4, 5]", "has 5 ids, expected 6"),
        (9, 3, "[1, 2, 3, 4, 5, 64]", r"expert id 64 outside \[0, 64\)"),
        (4, 0, "27", "Layer ID 27 outside 1..26"),
        (6, 0, "one", "Layer ID 'one', expected an integer"),
        (12, 1, "0.5", "Batch Number '0.5', expected an integer"),
        (3, 3, "__import__('os').system('echo pwned')", "expected a list"),
        (8, 3, "[1, 1, 2, 3, 4, 5]", "repeat an expert"),
    ],
)
def test_deepseek_bad_row(tmp_path: Path, row: int, col: int, value: str, expect: str) -> None:
    rows = _ds_rows(["a", "b", "c"])
    rows[row - 1][col] = value
    path = _write_csv(tmp_path / "prompt_0007_data.csv", rows)
    with pytest.raises(TraceFormatError, match=rf"prompt_0007_data\.csv: line {row}: .*{expect}"):
        import_trace("deepseek-csv", path)


def test_deepseek_id_counts_that_compensate(tmp_path: Path) -> None:
    """5 ids in one row and 7 in the next add up to 12 = 2 x 6: still an error at the first bad line."""
    rows = _ds_rows(["a", "b", "c"])
    rows[10][3] = "[1, 2, 3, 4, 5]"
    rows[11][3] = "[1, 2, 3, 4, 5, 6, 7]"
    path = _write_csv(tmp_path / "prompt_0013_data.csv", rows)
    with pytest.raises(TraceFormatError, match=r"line 11: .*has 5 ids, expected 6"):
        import_trace("deepseek-csv", path)


def test_deepseek_layer_count_disagrees(tmp_path: Path) -> None:
    rows = _ds_rows(["a", "b", "c"])
    del rows[40]  # one row of layer 14 missing
    path = _write_csv(tmp_path / "prompt_0008_data.csv", rows)
    with pytest.raises(TraceFormatError, match=r"prompt_0008_data\.csv: 77 rows is not a multiple of 26 layers"):
        import_trace("deepseek-csv", path)


def test_deepseek_layers_out_of_order(tmp_path: Path) -> None:
    rows = _ds_rows(["a", "b"])
    rows[3], rows[5] = rows[5], rows[3]  # a layer-3 row swapped into layer 2's block
    path = _write_csv(tmp_path / "prompt_0009_data.csv", rows)
    with pytest.raises(TraceFormatError, match=r"line 4: Layer ID 3, expected 2"):
        import_trace("deepseek-csv", path)


def test_deepseek_tokens_disagree_across_layers(tmp_path: Path) -> None:
    rows = _ds_rows(["a", "b"])
    rows[6][2] = "zz"  # layer 3, token 1
    path = _write_csv(tmp_path / "prompt_0010_data.csv", rows)
    with pytest.raises(TraceFormatError, match=r"line 7: token 'zz' at layer 3 position 1, expected 'b'"):
        import_trace("deepseek-csv", path)


def test_deepseek_truncated(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "prompt_0011_data.csv", _ds_rows(["a", "b"]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 9])  # cut inside the last quoted list
    with pytest.raises(TraceFormatError, match=r"prompt_0011_data\.csv: line 53: malformed CSV.*truncated"):
        import_trace("deepseek-csv", path)


def test_deepseek_bad_header_and_name(tmp_path: Path) -> None:
    rows = _ds_rows(["a"])
    rows[0] = ["layer", "batch", "token", "ids"]
    path = _write_csv(tmp_path / "prompt_0012_data.csv", rows)
    with pytest.raises(TraceFormatError, match="line 1: header"):
        import_trace("deepseek-csv", path)
    other = _write_csv(tmp_path / "routing.csv", _ds_rows(["a"]))
    with pytest.raises(TraceFormatError, match=r"prompt_NNNN_data\.csv"):
        import_trace("deepseek-csv", other)


def test_deepseek_directory_sorted(tmp_path: Path) -> None:
    for n in (3, 1, 2):
        _write_csv(tmp_path / f"prompt_000{n}_data.csv", _ds_rows(["x"] * n))
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    files = expand_paths("deepseek-csv", tmp_path)
    assert [f.name for f in files] == ["prompt_0001_data.csv", "prompt_0002_data.csv", "prompt_0003_data.csv"]
    t = import_trace("deepseek-csv", tmp_path)
    assert isinstance(t, RoutingTrace)
    assert t.request.tolist() == [1, 2, 2, 3, 3, 3]


def test_olmoe_counts_malformed(tmp_path: Path) -> None:
    good = {"olmoe": {"expert_counts": {"c4": [[[0, 5]], [[1, 5]], [[2, 5]]]}}}
    path = tmp_path / "counts.json"
    path.write_text(json.dumps(good), encoding="utf-8")
    s = import_trace("olmoe-counts", path)
    assert isinstance(s, AggregatedRoutingStats) and int(s.load[7][1]) == 5
    bad = {"olmoe": {"expert_counts": {"c4": [[[0, 5]], [[99, 5]], [[2, 5]]]}}}
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(TraceFormatError, match=r"olmoe\.expert_counts\.c4\[7\]\[0\]: expert id 99 outside"):
        import_trace("olmoe-counts", path)
    short = {"olmoe": {"expert_counts": {"c4": [[[0, 5]]]}}}
    path.write_text(json.dumps(short), encoding="utf-8")
    with pytest.raises(TraceFormatError, match="1 entries, expected 3"):
        import_trace("olmoe-counts", path)
    path.write_text(json.dumps(good)[:-5], encoding="utf-8")
    with pytest.raises(TraceFormatError, match=r"counts\.json: line 1: invalid JSON"):
        import_trace("olmoe-counts", path)


# ------------------------------------------------------------ property-based
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tokens=st.lists(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6), min_size=1, max_size=5
    ),
    seed=st.integers(0, 2**31),
    rid=st.integers(0, 99999),
)
def test_deepseek_csv_round_trip_property(tmp_path: Path, tokens: list[str], seed: int, rid: int) -> None:
    """Any tokens (commas, quotes, newlines, odd Unicode) and any 6 distinct ids per row come back exactly."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(64)[:6] for _ in range(26 * len(tokens))]).reshape(26, len(tokens), 6)
    rows = [["Layer ID", "Batch Number", "Token", "Activated Expert IDs"]]
    for layer in range(26):
        for j, tok in enumerate(tokens):
            rows.append([str(layer + 1), "0", tok, str(ids[layer, j].tolist())])
    path = _write_csv(tmp_path / f"prompt_{rid}_data.csv", rows)
    t = import_trace("deepseek-csv", path, keep_tokens=True)
    assert isinstance(t, RoutingTrace)
    assert np.array_equal(t.experts, ids.transpose(1, 0, 2))
    assert t.meta["tokens"][str(rid)] == tokens
    assert t.request.tolist() == [rid] * len(tokens)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mixtral_missing_rows_property(tmp_path: Path, data: st.DataObject) -> None:
    """Rows removed at random are exactly the -1 slots under "mark", and exactly the dropped tokens under "drop"."""
    n_tok = data.draw(st.integers(1, 4))
    rows = _mixtral_rows(tokens=n_tok)
    keep_last = [r for r in rows if r["layer"] == 31 and r["token_idx"] == 0]  # layer count stays 32
    drop = set(data.draw(st.lists(st.integers(0, len(rows) - 1), unique=True, max_size=10)))
    kept = [r for i, r in enumerate(rows) if i not in drop or r in keep_last]
    path = _write_jsonl(tmp_path / "p_routing.jsonl", kept)
    t = import_trace("mixtral-jsonl", path)
    assert isinstance(t, RoutingTrace)
    present = {(r["token_idx"], r["layer"]) for r in kept}
    tokens_present = sorted({tok for tok, _ in present})
    assert t.position.tolist() == tokens_present
    for i, tok in enumerate(tokens_present):
        for layer in range(32):
            assert (t.experts[i, layer, 0] >= 0) == ((tok, layer) in present)
    complete = [tok for tok in tokens_present if all((tok, layer) in present for layer in range(32))]
    d = import_trace("mixtral-jsonl", path, missing="drop")
    assert isinstance(d, RoutingTrace)
    assert d.position.tolist() == complete
    assert t.meta["n_incomplete_tokens"] == len(tokens_present) - len(complete)
