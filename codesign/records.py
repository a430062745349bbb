"""Typed records that the engine writes: one `StepRecord` per step, one `RequestRecord` per request.

The engine fills a `StepCounters` while a step runs (counts of experts, bytes, joules), then freezes
it into a `StepRecord`; `records_frame` turns a list of records into the DataFrame of `Result`
(columns in field order: `codesign.result.STEP_COLUMNS` and `REQUEST_COLUMNS` are these fields).
Units: seconds (``*_s``), bytes (``bytes_*``), joules (``energy_J``); counts are ints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter

import pandas as pd

__all__ = ["RequestRecord", "StepCounters", "StepRecord", "field_names", "records_frame"]


@dataclass(slots=True)
class StepCounters:
    """What one step did, accumulated while it runs (mutable; one per step).

    ``needed = hits + pf_late + misses`` (experts a layer needed on a device: found resident, found
    resident with its prefetch copy still in flight, or not resident); ``fetched`` of the misses came
    over the fetch path (``streamed`` of them through a staging buffer, not cached); ``cpu`` were
    computed on the host: misses, and late prefetches the miss policy sent there rather than wait for
    their copies (a copy still in flight at a second use, its prefetch already counted late, is a
    miss of that access when computed on the host). ``prefetched`` prefetches were issued;
    ``pf_on_time`` / ``pf_late`` / ``pf_wasted`` resolved (each prefetch once).
    """

    needed: int = 0
    hits: int = 0
    misses: int = 0
    fetched: int = 0
    cpu: int = 0
    streamed: int = 0
    prefetched: int = 0
    pf_late: int = 0
    pf_on_time: int = 0
    pf_wasted: int = 0
    bytes_host: float = 0.0
    bytes_peer: float = 0.0
    energy: float = 0.0


@dataclass(slots=True)
class StepRecord:
    """One step of continuous batching (see `codesign.result` for the meaning of each column).

    Written once by the engine (`of`) and never modified after; not ``frozen`` because a frozen
    dataclass sets each of its 22 fields through ``object.__setattr__`` (~15x slower to build, and
    the engine builds one per simulated step).
    """

    step: int
    start_s: float
    end_s: float
    duration_s: float
    n_requests: int
    prefill_tokens: int
    decode_tokens: int
    experts_needed: int
    hits: int
    misses: int
    fetched: int
    cpu_computed: int
    streamed: int
    prefetched: int
    prefetch_late: int
    prefetch_on_time: int
    prefetch_wasted: int
    bytes_host: float
    bytes_peer: float
    cross_device: int
    assignments: int
    energy_J: float

    @classmethod
    def of(
        cls,
        *,
        step: int,
        start_s: float,
        end_s: float,
        n_requests: int,
        prefill_tokens: int,
        decode_tokens: int,
        counters: StepCounters,
        cross_device: int,
        assignments: int,
    ) -> StepRecord:
        """The record of a finished step from its counters."""
        c = counters
        # positional, in field order (a hot path: one record per simulated step)
        return cls(
            step,
            start_s,
            end_s,
            end_s - start_s,
            n_requests,
            prefill_tokens,
            decode_tokens,
            c.needed,
            c.hits,
            c.misses,
            c.fetched,
            c.cpu,
            c.streamed,
            c.prefetched,
            c.pf_late,
            c.pf_on_time,
            c.pf_wasted,
            c.bytes_host,
            c.bytes_peer,
            cross_device,
            assignments,
            c.energy,
        )


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request: its times (s since the start of the run), lengths and device.

    ``ttft_s = first_token_s - arrival_s``; ``tpot_s = (finish_s - first_token_s) /
    (output_tokens - 1)`` (NaN for a single output token); ``latency_s = finish_s - arrival_s``.
    """

    request_id: int
    arrival_s: float
    admitted_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    tpot_s: float
    latency_s: float
    device: int


def field_names(cls: type) -> tuple[str, ...]:
    """Field names of a record dataclass, in order (the DataFrame's columns)."""
    return tuple(f.name for f in fields(cls))


def records_frame(records: Sequence[StepRecord] | Sequence[RequestRecord], cls: type) -> pd.DataFrame:
    """A DataFrame with one row per record and one column per field of ``cls`` (empty: the columns)."""
    names = field_names(cls)
    if len(names) < 2 or not records:
        return pd.DataFrame({n: [getattr(r, n) for r in records] for n in names}, columns=list(names))
    columns = zip(*map(attrgetter(*names), records), strict=True)  # one tuple of values per field
    return pd.DataFrame({n: list(col) for n, col in zip(names, columns, strict=True)}, columns=list(names))
