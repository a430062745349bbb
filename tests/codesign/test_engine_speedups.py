"""The engine's per-step shortcuts (issue 7, Vidur bar) change no result, to the last bit.

- A one-expert model on one device: requests whose routing is all expert 0 skip the routing work
  in `Engine._prepare`, and `ArithmeticStep` memoises a resident step's cost summary; a request with
  rows routed nowhere (-1) takes the general path. Switching both off (``Engine._one_expert``) must
  give identical frames, energies included.
- `codesign.records`: `StepRecord.of` puts each counter in its own column; `records_frame` builds the
  same frame as reading every field of every record.
- `_mean_int` is ``float(np.mean(values))`` bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import pytest

import codesign._engine_fast as fast_mod
from codesign.engine import Engine, _mean_int
from codesign.mapping import BatchingSpec, CacheSpec, Mapping
from codesign.records import RequestRecord, StepCounters, StepRecord, field_names, records_frame
from codesign.result import Result
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import ListStream, Req, tiny_model


def _dense_stream(n: int, *, seed: int, holes: tuple[int, ...] = ()) -> ListStream:
    """``n`` Poisson requests of varied lengths on a one-expert, 4-layer model; all routing rows are
    expert 0 except that requests in ``holes`` route a few rows nowhere (-1)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / 300.0, n))
    reqs, routing = [], []
    for i in range(n):
        p, o = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        rows = np.zeros((p + o, 4, 1), dtype=np.int16)
        if i in holes:
            rows[rng.integers(0, p + o, size=3), rng.integers(0, 4, size=3), 0] = -1
        reqs.append(Req(i, float(arrivals[i]), p, o))
        routing.append(rows)
    return ListStream(reqs, routing)


def _run(monkeypatch: pytest.MonkeyPatch, stream: ListStream, *, shortcuts: bool) -> tuple[Result, list[Engine], int]:
    engines: list[Engine] = []
    summaries = {"n": 0}
    init, costs = Engine.__init__, fast_mod.ArithmeticStep._resident_costs

    def spy_init(self: Engine, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._one_expert = self._one_expert and shortcuts
        engines.append(self)

    def spy_costs(self: fast_mod.ArithmeticStep, si: fast_mod.StepInputs) -> Any:
        summaries["n"] += 1
        return costs(self, si)

    model = tiny_model(n_experts=1, top_k=1)
    mapping = Mapping(
        cache=CacheSpec(policy="lru", expert_fraction=1.0), batching=BatchingSpec(max_batch=6, max_tokens=48)
    )
    with monkeypatch.context() as m:
        m.setattr(Engine, "__init__", spy_init)
        m.setattr(fast_mod.ArithmeticStep, "_resident_costs", spy_costs)
        result = simulate(model, get_platform("h100-pcie5-host"), stream, mapping, seed=0)
    return result, engines, summaries["n"]


@pytest.mark.parametrize("holes", [(), (3, 17)])
def test_one_expert_shortcuts_change_nothing(monkeypatch: pytest.MonkeyPatch, holes: tuple[int, ...]) -> None:
    stream = _dense_stream(40, seed=5, holes=holes)
    fast, engines, n_summaries = _run(monkeypatch, stream, shortcuts=True)
    slow, _, n_slow = _run(monkeypatch, stream, shortcuts=False)
    (eng,) = engines
    assert eng.fast is not None  # the arithmetic path played the steps
    assert eng._zero_routing == set(range(40)) - set(holes)  # requests with -1 rows are not shortcut
    n_steps = len(fast.steps)
    assert n_slow == n_steps and 0 < n_summaries < n_steps  # the memo answered some steps
    pd.testing.assert_frame_equal(fast.steps, slow.steps, check_exact=True)
    pd.testing.assert_frame_equal(fast.requests, slow.requests, check_exact=True)
    for key in ("energy_J", "makespan_s", "device_busy_s", "hits", "accesses", "peak_memory_bytes"):
        assert fast.summary[key] == slow.summary[key], key


def test_step_record_of_maps_every_counter() -> None:
    names = [f.name for f in dataclasses.fields(StepCounters)]
    counters = StepCounters(**{n: 100 + i for i, n in enumerate(names)})
    rec = StepRecord.of(
        step=7,
        start_s=1.5,
        end_s=2.0,
        n_requests=3,
        prefill_tokens=40,
        decode_tokens=4,
        counters=counters,
        cross_device=5,
        assignments=9,
    )
    want = {
        "step": 7,
        "start_s": 1.5,
        "end_s": 2.0,
        "duration_s": 0.5,
        "n_requests": 3,
        "prefill_tokens": 40,
        "decode_tokens": 4,
        "experts_needed": counters.needed,
        "hits": counters.hits,
        "misses": counters.misses,
        "fetched": counters.fetched,
        "cpu_computed": counters.cpu,
        "streamed": counters.streamed,
        "prefetched": counters.prefetched,
        "prefetch_late": counters.pf_late,
        "prefetch_on_time": counters.pf_on_time,
        "prefetch_wasted": counters.pf_wasted,
        "bytes_host": counters.bytes_host,
        "bytes_peer": counters.bytes_peer,
        "cross_device": 5,
        "assignments": 9,
        "energy_J": counters.energy,
    }
    assert dataclasses.asdict(rec) == want
    assert len(set(want.values())) == len(want)  # every value distinct: a swapped column would show


def test_records_frame_reads_every_field() -> None:
    recs = [
        RequestRecord(
            request_id=i,
            arrival_s=0.1 * i,
            admitted_s=0.2 * i,
            first_token_s=0.3 * i,
            finish_s=0.4 * i,
            prompt_tokens=10 + i,
            output_tokens=i + 1,
            ttft_s=0.01 * i,
            tpot_s=float("nan") if i == 0 else 0.02 * i,
            latency_s=0.5 * i,
            device=i % 2,
        )
        for i in range(5)
    ]
    names = field_names(RequestRecord)
    want = pd.DataFrame({n: [getattr(r, n) for r in recs] for n in names}, columns=list(names))
    pd.testing.assert_frame_equal(records_frame(recs, RequestRecord), want, check_exact=True)
    empty = records_frame([], StepRecord)
    assert list(empty.columns) == list(field_names(StepRecord)) and len(empty) == 0


@pytest.mark.parametrize(
    "values", [[1], [3, 4], [4096, 17, 1023, 2048], list(range(1, 1000, 7)), [2**53 - 1, 5], [2**60, 3, 2**60]]
)
def test_mean_int_is_numpy_mean(values: list[int]) -> None:
    assert _mean_int(values) == float(np.mean(values))
