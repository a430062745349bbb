"""Routing drawn in one batch: a `RequestStream` over a `ProcessRouting` samples every request at
once, deterministically for the seed, with the rows a one-request draw would have in shape and law."""

from __future__ import annotations

import numpy as np

from workloads.defaults import default_process
from workloads.requests import LengthDist, ProcessRouting, Request, RequestStream


def _stream(seed: int, n: int = 12) -> RequestStream:
    routing = ProcessRouting(default_process("mixtral-8x7b"), seed=seed)
    return RequestStream.poisson(
        rate_per_s=2.0, n_requests=n, prompt_len=LengthDist.uniform(3, 20), output_len=5, routing=routing, seed=1
    )


def test_batched_draw_is_deterministic_and_shaped() -> None:
    s = _stream(7)
    rows = s.routings()
    assert len(rows) == len(s.requests)
    for r, x in zip(s.requests, rows, strict=True):
        assert x.shape == (r.total_tokens, 32, 2) and x.dtype == np.int16
        assert x.min() >= 0 and x.max() < 8
        assert not x.flags.writeable
        assert s.routing(r) is x  # the per-request view serves the batch
    # any call order, a fresh stream with the same seed: the same rows
    again = _stream(7)
    back = [again.routing(r) for r in reversed(again.requests)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(rows, back, strict=True))
    # another seed: other rows
    other = _stream(8).routings()
    assert not all(np.array_equal(a, b) for a, b in zip(rows, other, strict=True))
    # each request is its own sequence: top-k distinct per token
    cat = np.concatenate(rows)
    assert np.all(cat[:, :, 0] != cat[:, :, 1])


def test_batch_matches_one_at_a_time_in_law() -> None:
    """Same process, same lengths: expert popularity of the batched draw and of one draw per request
    agree (over 4,000 tokens, per-expert shares within 0.03 at layer 0)."""
    proc = default_process("mixtral-8x7b")
    reqs = [Request(request_id=i, arrival_s=0.0, prompt_tokens=30, output_tokens=10) for i in range(100)]
    batch = np.concatenate(ProcessRouting(proc, seed=3).routing_batch(reqs))
    single = np.concatenate([ProcessRouting(proc, seed=3).routing(r) for r in reqs])
    assert batch.shape == single.shape
    pb = np.bincount(batch[:, 0, :].ravel(), minlength=8) / batch[:, 0, :].size
    ps = np.bincount(single[:, 0, :].ravel(), minlength=8) / single[:, 0, :].size
    assert np.abs(pb - ps).max() < 0.03
    assert ProcessRouting(proc, seed=3).routing_batch([]) == []


def test_request_not_in_the_stream_goes_to_the_source() -> None:
    s = _stream(7, n=3)
    outsider = Request(request_id=99, arrival_s=0.0, prompt_tokens=4, output_tokens=2)
    np.testing.assert_array_equal(s.routing(outsider), s.routing_source.routing(outsider))
