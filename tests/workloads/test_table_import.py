"""The generic tabular trace format (CSV / JSONL / Parquet), importer plug-ins (run-time module and
entry points), and trace-level validation of bad input (weights, empty traces, counts files)."""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from workloads import RoutingTrace, TraceFormatError, import_trace, importer_names
from workloads.importers import ENTRY_POINT_GROUP, PluginError, load_entry_point_plugins, load_plugin

ROWS = [  # request, position, phase, layer, experts, weights; layer 0 is dense (null)
    (7, 0, "prefill", 0, None, None),
    (7, 0, "prefill", 1, [3, 1], [0.75, 0.25]),
    (7, 0, "prefill", 2, [0, 2], [0.5, 0.5]),
    (7, 1, "decode", 1, [1, 2], [0.6, 0.4]),
    (7, 1, "decode", 2, [3, 0], [0.9, 0.1]),
    (9, 0, "decode", 2, [2, 3], [0.5, 0.5]),  # layer 1 missing for this token: -1 there
]


def _check(trace: RoutingTrace) -> None:
    assert trace.meta["moe_layer_ids"] == [1, 2] and (trace.n_experts, trace.top_k) == (4, 2)
    assert trace.request.tolist() == [7, 7, 9] and trace.position.tolist() == [0, 1, 0]
    assert trace.phase.tolist() == [0, 1, 1]
    assert trace.experts[:, 0].tolist() == [[3, 1], [1, 2], [-1, -1]]
    assert trace.experts[:, 1].tolist() == [[0, 2], [3, 0], [2, 3]]
    assert trace.weights is not None and trace.weights[0, 0].tolist() == [0.75, 0.25]


def test_csv_and_jsonl_give_the_same_trace(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    lines = ["request,position,phase,layer,experts,weights"]
    lines += [
        f'{r},{p},{ph},{la},"{" ".join(map(str, e or []))}","{json.dumps(w) if w else ""}"'
        for r, p, ph, la, e, w in ROWS
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    jl = tmp_path / "t.jsonl"
    keys = ("request", "position", "phase", "layer", "experts", "weights")
    jl.write_text("".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in ROWS))
    a, b = import_trace("table", csv_path, n_experts=4), import_trace("table", jl, n_experts=4)
    assert isinstance(a, RoutingTrace) and isinstance(b, RoutingTrace)
    _check(a)
    _check(b)
    assert a.experts.tolist() == b.experts.tolist()


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ('0,0,decode,1,"1 2","0.5 nan"', r"t\.csv: line 2: gate weight nan"),
        ('0,0,decode,1,"1 2","0.5 -0.1"', r"t\.csv: line 2: gate weight -0\.1"),
        ('0,0,decode,1,"1 9",', r"t\.csv: line 2: expert id 9 outside \[0, 4\)"),
        ('0,0,decode,1,"1 1",', r"line 2: experts \[1, 1\] repeat"),
        ('0,x,decode,1,"1 2",', r"line 2: position is 'x', expected an integer"),
        ('0,0,later,1,"1 2",', r"line 2: phase is 'later'"),
    ],
)
def test_table_rejects_bad_rows_naming_file_and_line(tmp_path: Path, row: str, match: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text("request,position,phase,layer,experts,weights\n" + row + "\n")
    with pytest.raises(TraceFormatError, match=match):
        import_trace("table", path, n_experts=4)


def test_table_empty_and_parquet(tmp_path: Path) -> None:
    empty = tmp_path / "e.csv"
    empty.write_text("request,position,phase,layer,experts,weights\n")
    with pytest.raises(TraceFormatError, match=r"e\.csv: no data rows"):
        import_trace("table", empty, n_experts=4)
    pq_path = tmp_path / "t.parquet"
    if importlib.util.find_spec("pyarrow") is None:  # the message says what to do
        pq_path.write_bytes(b"PAR1")
        with pytest.raises(TraceFormatError, match=r"t\.parquet: reading Parquet needs pyarrow"):
            import_trace("table", pq_path, n_experts=4)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = ("request", "position", "phase", "layer", "experts", "weights")
    pq.write_table(pa.Table.from_pylist([dict(zip(keys, r, strict=True)) for r in ROWS]), pq_path)
    trace = import_trace("table", pq_path, n_experts=4)
    assert isinstance(trace, RoutingTrace)
    _check(trace)


PLUGIN = '''
"""Llama-4-Maverick-style routing: one JSON per request, steps x layers -> expert ids, null = dense."""
import json
import numpy as np
from workloads import RoutingTrace, register_importer

@register_importer("NAME", "per-request JSON: steps x layers -> ids", "*.json")
def read(files, *, n_experts=128, top_k=1):
    rows, req, pos = [], [], []
    for r, f in enumerate(files):
        steps = json.loads(f.read_text())["routing"]
        for p, layers in enumerate(steps):
            rows.append(layers)
            req.append(r)
            pos.append(p)
    moe = [i for i in range(len(rows[0])) if any(s[i] is not None for s in rows)]
    ex = np.array([[s[i] if s[i] is not None else [-1] * top_k for i in moe] for s in rows])
    meta = {"model": "llama-4-maverick", "n_experts": n_experts, "top_k": top_k,
            "source": str(files[0].parent), "licence": "test data", "moe_layer_ids": moe}
    return RoutingTrace(experts=ex, request=np.array(req), position=np.array(pos),
                        phase=np.ones(len(rows), dtype=np.uint8), meta=meta)
'''


def test_third_party_importer_plugin_and_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"maverick-{uuid.uuid4().hex[:8]}"
    module = f"plugin_{name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("NAME", name))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "data"
    data.mkdir()
    for r in range(2):  # 3 steps x 4 layers, layers 0 and 2 dense (null)
        steps = [[None, [(r + p) % 128], None, [5]] for p in range(3)]
        (data / f"req{r}.json").write_text(json.dumps({"routing": steps}))
    ep = metadata.EntryPoint(name=name, value=module, group=ENTRY_POINT_GROUP)
    assert load_entry_point_plugins([ep]) == [name] and name in importer_names()
    assert load_plugin(module) == []  # already imported: nothing new
    trace = import_trace(name, data, top_k=1)
    assert isinstance(trace, RoutingTrace)
    assert trace.experts.shape == (6, 2, 1) and trace.meta["moe_layer_ids"] == [1, 3]
    assert trace.experts[:3, 0, 0].tolist() == [0, 1, 2] and trace.request.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(PluginError, match="no_such_plugin_module"):
        load_plugin("no_such_plugin_module")
    sys.modules.pop(module, None)


def _write_npz(path: Path, n: int, weights: np.ndarray | None) -> None:
    arrays = {
        "experts": np.zeros((n, 1, 2), dtype=np.int16) + np.array([0, 1], dtype=np.int16),
        "request": np.zeros(n, dtype=np.int32),
        "position": np.arange(n, dtype=np.int32),
        "phase": np.ones(n, dtype=np.uint8),
        "meta_json": np.array(json.dumps({"n_experts": 4, "top_k": 2, "source": "recorded-elsewhere"})),
        "format_version": np.array(1),
    }
    if weights is not None:
        arrays["weights"] = weights
    np.savez(path, **arrays)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5])
def test_npz_with_bad_weights_is_rejected_naming_the_file(tmp_path: Path, bad: float) -> None:
    w = np.full((3, 1, 2), 0.5, dtype=np.float32)
    w[2, 0, 1] = bad
    path = tmp_path / "bad.npz"
    _write_npz(path, 3, w)
    with pytest.raises(TraceFormatError, match=r"bad\.npz: gate weight .* at token 2, layer 0, slot 1"):
        RoutingTrace.load(path)


def test_zero_token_trace_and_counts_file_are_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.npz"
    _write_npz(path, 0, None)
    with pytest.raises(TraceFormatError, match=r"^\S*empty\.npz: the trace holds 0 tokens"):
        RoutingTrace.load(path)
    counts = tmp_path / "olmoe.json"
    counts.write_text(json.dumps({"format": "moe-codesign/aggregated-routing-stats", "version": 1}))
    with pytest.raises(TraceFormatError, match=r"olmoe\.json: aggregated routing counts .* default workload"):
        RoutingTrace.load(counts)
