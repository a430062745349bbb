"""RoutingTrace: lossless .npz round trip (property-based) and clear errors on bad files."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads import DECODE, PREFILL, RoutingTrace, TraceFormatError


@st.composite
def traces(draw: st.DrawFn) -> RoutingTrace:
    n_experts = draw(st.integers(1, 300))
    k = draw(st.integers(1, min(n_experts, 8)))
    tokens = draw(st.integers(1, 40))  # a 0-token file is refused on load (test_table_import)
    layers = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # distinct experts per token and layer (an invariant), some slots empty (-1)
    keys = rng.random((tokens, layers, n_experts))
    experts = np.argsort(keys, axis=2)[:, :, :k].astype(np.int16)
    experts[rng.random(experts.shape) < 0.2] = -1
    weights = None
    if draw(st.booleans()):
        weights = rng.random((tokens, layers, k), dtype=np.float32)
        if tokens:
            weights.flat[0] = draw(st.floats(min_value=0.0, width=32, allow_nan=False, allow_infinity=False))
    meta = {
        "n_experts": n_experts,
        "top_k": k,
        "model": draw(st.text(max_size=20)),
        "source": draw(st.text(max_size=30)),
        "licence": "test",
        "extra": draw(st.lists(st.integers(-5, 5), max_size=4)),
    }
    return RoutingTrace(
        experts=experts,
        request=rng.integers(0, 5, size=tokens).astype(np.int32),
        position=rng.integers(0, 1000, size=tokens).astype(np.int32),
        phase=rng.integers(0, 2, size=tokens).astype(np.uint8),
        meta=meta,
        weights=weights,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=traces(), compress=st.booleans())
def test_npz_round_trip_is_lossless(tmp_path: Path, trace: RoutingTrace, compress: bool) -> None:
    path = trace.save(tmp_path / "t.npz", compress=compress)
    back = RoutingTrace.load(path)
    assert back.equals(trace)
    assert back.experts.dtype == np.int16 and back.request.dtype == np.int32
    assert back.phase.dtype == np.uint8
    if trace.weights is not None:
        assert back.weights is not None and back.weights.dtype == np.float32


def _small() -> RoutingTrace:
    return RoutingTrace(
        experts=np.array([[[0, 1]], [[2, -1]]], dtype=np.int16),
        request=np.array([0, 0]),
        position=np.array([0, 1]),
        phase=np.array([PREFILL, DECODE]),
        meta={"n_experts": 4, "top_k": 2, "model": "x", "source": "unit", "licence": "test"},
        weights=np.array([[[0.6, 0.4]], [[1.0, 0.0]]], dtype=np.float32),
    )


def test_equals_detects_differences() -> None:
    a = _small()
    b = RoutingTrace(
        experts=a.experts.copy(), request=a.request, position=a.position, phase=a.phase, meta=dict(a.meta), weights=None
    )
    assert a.equals(a) and not a.equals(b)


def test_truncated_file(tmp_path: Path) -> None:
    path = _small().save(tmp_path / "t.npz")
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceFormatError, match=r"cut\.npz"):
        RoutingTrace.load(cut)


def test_missing_arrays(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, experts=np.zeros((1, 1, 1), np.int16))
    with pytest.raises(TraceFormatError, match=r"partial\.npz.*missing.*meta_json"):
        RoutingTrace.load(path)


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"experts": [1, 2, 3]}))
    with pytest.raises(TraceFormatError, match=r"evil\.npz"):
        RoutingTrace.load(path)


def test_pickled_object_array_inside_npz_is_refused(tmp_path: Path) -> None:
    t = _small()
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        experts=np.array([object()], dtype=object),
        request=t.request,
        position=t.position,
        phase=t.phase,
        meta_json=np.array(json.dumps(t.meta)),
        format_version=np.array(1),
    )
    with pytest.raises(TraceFormatError, match=r"obj\.npz"):
        RoutingTrace.load(path)


def test_out_of_range_expert_ids(tmp_path: Path) -> None:
    t = _small()
    path = tmp_path / "range.npz"
    bad = t.experts.copy()
    bad[1, 0, 0] = 4  # n_experts is 4: ids must be < 4
    np.savez(
        path,
        experts=bad,
        request=t.request,
        position=t.position,
        phase=t.phase,
        meta_json=np.array(json.dumps(t.meta)),
        format_version=np.array(1),
    )
    with pytest.raises(TraceFormatError, match=r"range\.npz.*expert id 4 at token 1, layer 0.*\[-1, 4\)"):
        RoutingTrace.load(path)


def test_bad_meta_json(tmp_path: Path) -> None:
    t = _small()
    path = tmp_path / "meta.npz"
    np.savez(
        path,
        experts=t.experts,
        request=t.request,
        position=t.position,
        phase=t.phase,
        meta_json=np.array("{not json"),
        format_version=np.array(1),
    )
    with pytest.raises(TraceFormatError, match=r"meta\.npz"):
        RoutingTrace.load(path)


def test_newer_format_version(tmp_path: Path) -> None:
    t = _small()
    path = tmp_path / "new.npz"
    np.savez(
        path,
        experts=t.experts,
        request=t.request,
        position=t.position,
        phase=t.phase,
        meta_json=np.array(json.dumps(t.meta)),
        format_version=np.array(99),
    )
    with pytest.raises(TraceFormatError, match="format_version 99"):
        RoutingTrace.load(path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "hi")
    path.write_bytes(buf.getvalue())
    with pytest.raises(TraceFormatError, match=r"junk\.npz"):
        RoutingTrace.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no such file"):
        RoutingTrace.load(tmp_path / "nope.npz")


def test_construction_checks() -> None:
    t = _small()
    with pytest.raises(TraceFormatError, match="3-D"):
        RoutingTrace(
            experts=np.zeros((2, 2), np.int16), request=t.request, position=t.position, phase=t.phase, meta=t.meta
        )
    with pytest.raises(TraceFormatError, match="request must have shape"):
        RoutingTrace(experts=t.experts, request=np.zeros(3, np.int32), position=t.position, phase=t.phase, meta=t.meta)
    with pytest.raises(TraceFormatError, match="weights shape"):
        RoutingTrace(
            experts=t.experts,
            request=t.request,
            position=t.position,
            phase=t.phase,
            meta=t.meta,
            weights=np.zeros((2, 1, 3), np.float32),
        )
    with pytest.raises(TraceFormatError, match="n_experts"):
        RoutingTrace(experts=t.experts, request=t.request, position=t.position, phase=t.phase, meta={"top_k": 2})


def test_select_and_concat() -> None:
    t = _small()
    both = RoutingTrace.concat([t, t.select([1])])
    assert both.n_tokens == 3
    assert np.array_equal(both.experts[2], t.experts[1])
    assert both.weights is not None and both.weights[2, 0, 0] == pytest.approx(1.0)
    assert t.select_requests([0]).n_tokens == 2
    assert t.select_requests([7]).n_tokens == 0


# ------------------------------------------------- duplicates and one-line load errors
def test_duplicate_expert_in_a_cell_is_refused() -> None:
    t = _small()
    ex = np.array([[[0, 1], [3, 3]], [[2, -1], [-1, -1]]], dtype=np.int16)  # token 0, layer 1: expert 3 twice
    with pytest.raises(TraceFormatError, match=r"unit: token 0, layer 1 lists expert 3 more than once"):
        RoutingTrace(experts=ex, request=t.request, position=t.position, phase=t.phase, meta=t.meta)
    ok = ex.copy()
    ok[0, 1] = [3, -1]  # several -1 in one cell are fine
    assert RoutingTrace(experts=ok, request=t.request, position=t.position, phase=t.phase, meta=t.meta).n_tokens == 2


@pytest.mark.parametrize("k", [3, 12])  # pairwise path (k <= 8) and sort path
def test_duplicate_check_finds_the_first_bad_cell(k: int) -> None:
    rng = np.random.default_rng(k)
    n, n_l, n_e = 50, 4, 32
    ex = np.argsort(rng.random((n, n_l, n_e)), axis=2)[:, :, :k].astype(np.int16)
    ex[:, :, -1] = -1
    ex[7, 2, -2] = -1  # two -1 in a cell: fine
    meta = {"n_experts": n_e, "top_k": k, "source": "gen"}
    cols: dict[str, Any] = {
        "request": np.zeros(n, np.int32),
        "position": np.arange(n, dtype=np.int32),
        "phase": np.zeros(n, np.uint8),
    }
    RoutingTrace(experts=ex, meta=meta, **cols)
    ex[31, 3, 1] = ex[31, 3, 0]
    ex[40, 0, 1] = ex[40, 0, 0]
    with pytest.raises(TraceFormatError, match=rf"token 31, layer 3 lists expert {ex[31, 3, 0]} more than once"):
        RoutingTrace(experts=ex, meta=meta, **cols)


def test_load_error_names_the_path_given_not_the_recorded_source(tmp_path: Path) -> None:
    t = _small()
    path = tmp_path / "dupe.npz"
    bad = t.experts.copy()
    bad[0, 0] = [1, 1]
    meta = {**t.meta, "source": "/somewhere/else/original-folder"}
    np.savez(
        path,
        experts=bad,
        request=t.request,
        position=t.position,
        phase=t.phase,
        meta_json=np.array(json.dumps(meta)),
        format_version=np.array(1),
    )
    with pytest.raises(TraceFormatError) as info:
        RoutingTrace.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: token 0, layer 0 lists expert 1 more than once")
    assert "original-folder" not in msg and "\n" not in msg


def test_plain_npy_is_not_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "plain.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(TraceFormatError, match=r"plain\.npy: not a \.npz routing trace \(it is a single \.npy array"):
        RoutingTrace.load(path)


def test_json_file_is_not_a_trace_and_no_allow_pickle_hint(tmp_path: Path) -> None:
    path = tmp_path / "some.json"
    path.write_text('{"experts": [1, 2]}')
    with pytest.raises(TraceFormatError) as info:
        RoutingTrace.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not a .npz routing trace (it looks like JSON text)")
    assert "allow_pickle" not in msg and "pickle.load" not in msg


def test_object_array_message_never_suggests_allow_pickle(tmp_path: Path) -> None:
    t = _small()
    path = tmp_path / "obj.npz"
    np.savez(
        path,
        experts=np.array([object()], dtype=object),
        request=t.request,
        position=t.position,
        phase=t.phase,
        meta_json=np.array(json.dumps(t.meta)),
        format_version=np.array(1),
    )
    with pytest.raises(TraceFormatError) as info:
        RoutingTrace.load(path)
    msg = str(info.value)
    assert "array 'experts' holds Python objects" in msg and "not a .npz routing trace" in msg
    assert "allow_pickle" not in msg


def test_corrupt_compressed_data_names_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 2000
    ex = np.argsort(rng.random((n, 4, 16)), axis=2)[:, :, :2].astype(np.int16)
    t = RoutingTrace(
        experts=ex,
        request=np.zeros(n, np.int32),
        position=np.arange(n, dtype=np.int32),
        phase=np.zeros(n, np.uint8),
        meta={"n_experts": 16, "top_k": 2},
    )
    path = t.save(tmp_path / "t.npz")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("experts.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 40, start + 60):  # bytes flipped inside the deflate stream of experts.npy
        data[i] ^= 0xFF
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(TraceFormatError) as err:
        RoutingTrace.load(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: damaged or truncated .npz, array 'experts' cannot be read"), msg


def test_moe_layer_ids_meta_is_validated() -> None:
    t = _small()
    kw: dict[str, Any] = {"experts": t.experts, "request": t.request, "position": t.position, "phase": t.phase}
    assert RoutingTrace(meta={**t.meta, "moe_layer_ids": [3]}, **kw).meta["moe_layer_ids"] == [3]
    with pytest.raises(TraceFormatError, match="moe_layer_ids"):
        RoutingTrace(meta={**t.meta, "moe_layer_ids": [3, 4]}, **kw)
    with pytest.raises(TraceFormatError, match="'n_experts' is 'x', expected a positive integer"):
        RoutingTrace(meta={**t.meta, "n_experts": "x"}, **kw)
