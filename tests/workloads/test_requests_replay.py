"""Trace replay: running out of recorded requests is an error unless cycling is asked for (then a
warning gives the counts); offset and seeded shuffle; recorded lengths; phase-aligned rows."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from workloads.requests import Request, RequestStream, TraceReplay, TraceReplayExhaustedError
from workloads.trace import RoutingTrace


def _toy(n_requests: int = 3, decode: int = 4, prefill: int = 0) -> RoutingTrace:
    """Request r (recorded id 10 + r) has ``prefill`` prefill then ``decode`` decode tokens; token t of
    request r is routed to expert ``100 r + t`` in slot 0 (so rows identify request and token)."""
    n_tok = prefill + decode
    ex = np.full((n_requests * n_tok, 1, 2), -1, dtype=np.int16)
    ex[:, 0, 0] = [100 * r + t for r in range(n_requests) for t in range(n_tok)]
    return RoutingTrace(
        experts=ex,
        request=np.repeat(np.arange(10, 10 + n_requests, dtype=np.int32), n_tok),
        position=np.tile(np.arange(n_tok, dtype=np.int32), n_requests),
        phase=np.tile(np.array([0] * prefill + [1] * decode, dtype=np.uint8), n_requests),
        meta={"n_experts": 1000, "top_k": 2, "source": "toy"},
    )


def _req(i: int, p: int = 2, o: int = 4) -> Request:
    return Request(request_id=i, arrival_s=0.0, prompt_tokens=p, output_tokens=o)


def test_running_out_is_an_error_naming_the_numbers() -> None:
    src = TraceReplay(_toy(3))
    assert src.n_available == 3 and not src.cycle
    RequestStream.closed(n_requests=3, prompt_len=2, output_len=4, routing=src).routings()
    with pytest.raises(TraceReplayExhaustedError, match=r"request 3 needs recorded request 4 but the trace holds 3"):
        RequestStream.closed(n_requests=4, prompt_len=2, output_len=4, routing=src).routings()
    with pytest.raises(TraceReplayExhaustedError, match=r"offset 2: 1 available"):
        TraceReplay(_toy(3), offset=2).routing(_req(1))
    with pytest.raises(ValueError, match=r"offset must be an int in \[0, 3\)"):
        TraceReplay(_toy(3), offset=3)


def test_cycling_is_explicit_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    src = TraceReplay(_toy(3), cycle=True)
    stream = RequestStream.closed(n_requests=5, prompt_len=2, output_len=4, routing=src)
    with caplog.at_level(logging.WARNING, logger="workloads.requests"):
        rows = stream.routings()
    assert "5 requests from a trace of 3 recorded requests (offset 0)" in caplog.text
    assert "up to 2 requests share" in caplog.text
    assert np.array_equal(rows[3], rows[0]) and not np.array_equal(rows[1], rows[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workloads.requests"):
        RequestStream.closed(
            n_requests=3, prompt_len=2, output_len=4, routing=TraceReplay(_toy(3), cycle=True)
        ).routings()
    assert caplog.text == ""  # no reuse, no warning


def test_offset_and_seeded_shuffle() -> None:
    first_expert = lambda src, i: int(src.routing(_req(i))[0, 0, 0]) // 100  # noqa: E731 - recorded request
    off = TraceReplay(_toy(5), offset=2)
    assert [first_expert(off, i) for i in range(3)] == [2, 3, 4]
    a, b = TraceReplay(_toy(5), shuffle_seed=7), TraceReplay(_toy(5), shuffle_seed=7)
    order = [first_expert(a, i) for i in range(5)]
    assert order == [first_expert(b, i) for i in range(5)]  # seeded: the same order again
    assert sorted(order) == [0, 1, 2, 3, 4]  # a permutation: no request repeated
    assert order == np.random.default_rng(7).permutation(5).tolist()
    assert [first_expert(TraceReplay(_toy(5), offset=3, cycle=True), i) for i in range(4)] == [3, 4, 0, 1]


def test_recorded_lengths_by_phase() -> None:
    assert TraceReplay(_toy(2, decode=4)).recorded_lengths(1) == (None, 4)  # decode-only: no recorded prompt
    assert TraceReplay(_toy(2, decode=0, prefill=5)).recorded_lengths(0) == (5, None)
    assert TraceReplay(_toy(2, decode=3, prefill=5)).recorded_lengths(1) == (5, 3)


def test_aligned_rows_replay_the_recorded_decode_sequence() -> None:
    t = _toy(2, decode=4)
    seq = TraceReplay(t).routing(_req(1, p=2, o=4))[:, 0, 0].tolist()
    assert seq == [100, 101, 102, 103, 100, 101]  # sequential: output continues after the prompt rows
    ali = TraceReplay(t, phase_rows="aligned").routing(_req(1, p=2, o=4))[:, 0, 0].tolist()
    assert ali == [100, 101, 100, 101, 102, 103]  # aligned: output rows = the recorded decode tokens
    # a traced prompt + generation maps phases the same either way
    both = _toy(1, decode=2, prefill=3)
    rows = [
        TraceReplay(both, phase_rows=m).routing(_req(0, p=3, o=2))[:, 0, 0].tolist() for m in ("sequential", "aligned")
    ]
    assert rows[0] == rows[1] == [0, 1, 2, 3, 4]
