"""Request streams: arrivals, prompt and output lengths, and where each request's routing comes from.

A `RequestStream` is a tuple of `Request` (id, arrival time in seconds, prompt and output token
counts) plus a `RoutingSource` that gives each request's routing rows: ``int16 [prompt_tokens +
output_tokens, moe_layers, k]`` (rows ``0 .. prompt_tokens-1`` are the prefill tokens, the rest
the decode tokens; ``-1`` = no expert), deterministic per (source seed, request id).

Arrival processes (all seeded with ``np.random.default_rng(seed)``):

- `RequestStream.poisson`: exponential inter-arrival times at ``rate_per_s``;
- `RequestStream.bursty`: a Gamma renewal process with mean rate ``mean_rate_per_s`` and
  inter-arrival coefficient of variation ``burstiness`` (1 = Poisson, > 1 = bursty, < 1 = regular);
- `RequestStream.onoff`: an on/off Markov-modulated Poisson process (bursts with correlated gaps);
- `RequestStream.replay`: arrivals and lengths of a real trace in the Splitwise CSV format
  (``arrived_at`` s, ``num_prefill_tokens``, ``num_decode_tokens``), e.g.
  ``shared/workloads/splitwise_code.csv`` (Azure code trace via Vidur, MIT);
- `RequestStream.closed`: every request at t = 0 (an offline batch).

Lengths are an int (fixed) or a `LengthDist` (fixed, uniform, lognormal, or empirical, e.g.
`LengthDist.from_splitwise`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from workloads.process import RoutingProcess
from workloads.stats import request_order
from workloads.trace import RoutingTrace

I16 = npt.NDArray[np.int16]

log = logging.getLogger(__name__)


class RequestFormatError(ValueError):
    """A malformed arrival trace; the message names the file, the line and the field."""


@dataclass(frozen=True, kw_only=True)
class Request:
    """One request: ``arrival_s`` seconds after the stream starts; token counts >= 1 (prompt) and >= 1 (output)."""

    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if not math.isfinite(self.arrival_s) or self.arrival_s < 0:
            raise ValueError(f"Request {self.request_id}: arrival_s must be finite and >= 0, got {self.arrival_s}")
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError(
                f"Request {self.request_id}: prompt_tokens and output_tokens must be >= 1, got "
                f"{self.prompt_tokens}, {self.output_tokens}"
            )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


# ---------------------------------------------------------------------- routing sources
class RoutingSource(ABC):
    """Where a request's routing comes from.

    Contract: ``routing(request)`` returns a fresh ``int16 [request.prompt_tokens +
    request.output_tokens, n_moe_layers, k]`` array (``k = top_k`` slots, ``-1`` = no expert), rows
    ``0 .. prompt_tokens-1`` prefill and the rest decode, the same for the same request id on every
    call (deterministic per source seed and request id, independent of call order).
    """

    @property
    @abstractmethod
    def n_moe_layers(self) -> int: ...

    @property
    @abstractmethod
    def n_experts(self) -> int: ...

    @property
    @abstractmethod
    def top_k(self) -> int: ...

    @abstractmethod
    def routing(self, request: Request) -> I16: ...

    def routing_batch(self, requests: Sequence[Request]) -> list[I16]:
        """The routing of several requests (same rows as ``routing``, one array per request in the
        given order). The default calls ``routing`` per request; a source that samples overrides
        it to draw all of them at once (`ProcessRouting.routing_batch`)."""
        return [self.routing(r) for r in requests]


class TraceReplayExhaustedError(ValueError):
    """A replay asked for more requests than the trace holds (past the offset) without ``cycle``."""


PhaseRows = Literal["sequential", "aligned"]


class TraceReplay(RoutingSource):
    """Replays a recorded `RoutingTrace`.

    Which recorded request a stream request takes: recorded requests in ascending id order (or, with
    ``shuffle_seed``, in the order of ``np.random.default_rng(shuffle_seed).permutation``); stream
    request ``i`` takes recorded request number ``offset + i`` of that order. A stream request past
    the last recorded one raises `TraceReplayExhaustedError` naming the numbers, unless
    ``cycle=True``: then it takes number ``(offset + i) mod R`` (``R`` recorded requests), so two
    requests share the same routing, and ``routing_batch`` logs a warning giving the counts. Never
    silent: cycling must be asked for.

    Which rows: tokens of the recorded request by position. When a stream request needs more tokens
    than that request recorded, it continues cyclically through the same request's tokens (token
    ``j`` is recorded token ``j mod length``). If the recorded request has both prefill and decode
    tokens (a traced prompt and its generation), the prompt rows cycle through its prefill tokens
    and the output rows through its decode tokens. Otherwise (one phase only) both phases draw on
    all its tokens: with ``phase_rows="sequential"`` (the default) the prompt rows are tokens
    ``0 .. prompt-1`` and the output rows continue from token ``prompt`` (all cyclically); with
    ``phase_rows="aligned"`` both the prompt rows and the output rows start at the request's first
    token, so a decode-only trace (Mixtral) replays its recorded decode sequence as the output rows
    exactly, and its prompt rows approximate prefill routing by the same decode routing. A
    prefill-only trace (DeepSeek prompts) gives the same rows either way when the prompt length is
    the recorded one. Missing layers (``-1``) are passed through. `recorded_lengths` gives a
    stream request's recorded prompt and output lengths.
    """

    def __init__(
        self,
        trace: RoutingTrace,
        *,
        cycle: bool = False,
        offset: int = 0,
        shuffle_seed: int | None = None,
        phase_rows: PhaseRows = "sequential",
    ) -> None:
        if trace.n_tokens == 0:
            raise ValueError(f"TraceReplay: trace {trace.meta.get('source')!r} has no tokens")
        if phase_rows not in ("sequential", "aligned"):
            raise ValueError(f"TraceReplay: phase_rows must be 'sequential' or 'aligned', got {phase_rows!r}")
        self._trace = trace
        order = request_order(trace)
        req = trace.request[order]
        phase = trace.phase[order]
        # within each request: prefill tokens first, then decode tokens (stable: positions kept)
        regroup = np.lexsort((np.arange(req.size), phase != 0, req))
        self._experts = trace.experts[order][regroup]
        req, phase = req[regroup], phase[regroup]
        starts = np.flatnonzero(np.r_[True, req[1:] != req[:-1]])
        self._starts = starts
        self._lengths = np.diff(np.r_[starts, req.size])
        n_pre = np.add.reduceat((phase == 0).astype(np.int64), starts)
        self._n_prefill_recorded = n_pre
        self._n_prefill = np.where((n_pre > 0) & (n_pre < self._lengths), n_pre, 0)  # 0: not split by phase
        n_rec = int(starts.size)
        if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or not 0 <= offset < n_rec:
            raise ValueError(
                f"TraceReplay: offset must be an int in [0, {n_rec}) (the trace's requests), got {offset!r}"
            )
        self._cycle = bool(cycle)
        self._offset = int(offset)
        self._shuffle_seed = None if shuffle_seed is None else int(shuffle_seed)
        self._phase_rows: PhaseRows = phase_rows
        if shuffle_seed is None:
            self._order = np.arange(n_rec)
        else:
            self._order = np.random.default_rng(int(shuffle_seed)).permutation(n_rec)

    @property
    def trace(self) -> RoutingTrace:
        return self._trace

    @property
    def n_moe_layers(self) -> int:
        return self._trace.n_moe_layers

    @property
    def n_experts(self) -> int:
        return self._trace.n_experts

    @property
    def top_k(self) -> int:
        return self._trace.k

    @property
    def n_recorded_requests(self) -> int:
        return int(self._starts.size)

    @property
    def n_available(self) -> int:
        """Stream requests served before the trace runs out: recorded requests past ``offset``."""
        return self.n_recorded_requests - self._offset

    @property
    def cycle(self) -> bool:
        return self._cycle

    def recorded_index(self, request_id: int) -> int:
        """The recorded request (0-based, in ascending recorded id order) that stream request
        ``request_id`` replays; raises `TraceReplayExhaustedError` past the trace without ``cycle``."""
        if request_id < 0:
            raise ValueError(f"TraceReplay: request_id must be >= 0, got {request_id}")
        slot = self._offset + int(request_id)
        n_rec = self.n_recorded_requests
        if slot >= n_rec and not self._cycle:
            raise TraceReplayExhaustedError(
                f"TraceReplay: request {request_id} needs recorded request {slot + 1} but the trace holds "
                f"{n_rec} (offset {self._offset}: {self.n_available} available); ask for at most "
                f"{self.n_available} requests, a smaller offset, or cycle=True to reuse recorded requests"
            )
        return int(self._order[slot % n_rec])

    def recorded_lengths(self, request_id: int) -> tuple[int | None, int | None]:
        """(prompt, output) token counts recorded for the request that stream request ``request_id``
        replays: its prefill and decode tokens; None for a phase it recorded no token of (e.g. the
        prompt of a decode-only trace)."""
        r = self.recorded_index(request_id)
        pre, length = int(self._n_prefill_recorded[r]), int(self._lengths[r])
        return (pre or None, (length - pre) or None)

    def routing(self, request: Request) -> I16:
        r = self.recorded_index(request.request_id)
        start, length, n_pre = int(self._starts[r]), int(self._lengths[r]), int(self._n_prefill[r])
        if n_pre:
            rows = np.concatenate(
                [
                    start + np.arange(request.prompt_tokens) % n_pre,
                    start + n_pre + np.arange(request.output_tokens) % (length - n_pre),
                ]
            )
        elif self._phase_rows == "aligned":
            rows = start + np.concatenate(
                [np.arange(request.prompt_tokens) % length, np.arange(request.output_tokens) % length]
            )
        else:
            rows = start + np.arange(request.total_tokens) % length
        return self._experts[rows]

    def routing_batch(self, requests: Sequence[Request]) -> list[I16]:
        """As `RoutingSource.routing_batch`; with ``cycle``, logs a warning giving the counts when
        some requests reuse a recorded request's routing."""
        if self._cycle and requests:
            slots = self._offset + max(r.request_id for r in requests) + 1
            if slots > self.n_recorded_requests:
                log.warning(
                    "trace replay: %d requests from a trace of %d recorded requests (offset %d): recorded "
                    "requests are reused (cycling), so up to %d requests share another's routing",
                    len(requests),
                    self.n_recorded_requests,
                    self._offset,
                    max(0, len(requests) - self.n_available),
                )
        return [self.routing(r) for r in requests]

    def __repr__(self) -> str:
        opts = f", cycle={self._cycle}, offset={self._offset}, shuffle_seed={self._shuffle_seed}"
        return f"TraceReplay({self._trace!r}{opts}, phase_rows={self._phase_rows!r})"


#: Tag mixed with the source seed for a batched draw ("batch" in ASCII).
_BATCH_SEED_TAG = 0x6261746368


class ProcessRouting(RoutingSource):
    """Samples each request's routing from a `RoutingProcess`.

    ``routing(request)``: request ``i`` alone, ``prompt + output`` tokens sampled with
    ``np.random.default_rng([seed, i])``, so it depends only on (seed, request id).
    ``routing_batch(requests)``: all the requests in one vectorised draw (each request still a
    sequence of its own: the first token of each starts the process afresh), with
    ``np.random.default_rng([seed, 0x6261746368])``: deterministic for the seed and the list of
    request lengths, and an order of magnitude faster than one draw per request
    (`benchmarks/bench_placement.py`), but not equal to the one-at-a-time rows. A `RequestStream`
    serves its requests from one batched draw.
    """

    def __init__(self, process: RoutingProcess, *, seed: int = 0) -> None:
        self._process = process
        self._seed = int(seed)

    @property
    def process(self) -> RoutingProcess:
        return self._process

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def n_moe_layers(self) -> int:
        return self._process.n_moe_layers

    @property
    def n_experts(self) -> int:
        return self._process.n_experts

    @property
    def top_k(self) -> int:
        return self._process.top_k

    def routing(self, request: Request) -> I16:
        if request.request_id < 0:
            raise ValueError(f"ProcessRouting: request_id must be >= 0, got {request.request_id}")
        rng = np.random.default_rng([self._seed, request.request_id])
        return self._process.sample_experts([request.total_tokens], rng)

    def routing_batch(self, requests: Sequence[Request]) -> list[I16]:
        if not requests:
            return []
        lengths = np.asarray([r.total_tokens for r in requests], dtype=np.int64)
        rng = np.random.default_rng([self._seed, _BATCH_SEED_TAG])
        rows = self._process.sample_experts(lengths, rng)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return [rows[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist(), strict=True)]

    def __repr__(self) -> str:
        return f"ProcessRouting({self._process!r}, seed={self._seed})"


# ---------------------------------------------------------------------- lengths
LengthKind = Literal["fixed", "uniform", "lognormal", "empirical"]


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts (integers >= ``minimum``).

    - ``fixed``: ``params = (n,)``;
    - ``uniform``: ``params = (low, high)``, inclusive;
    - ``lognormal``: ``params = (mu, sigma)`` of ``log(length)``, rounded, clipped to
      ``[minimum, maximum]``;
    - ``empirical``: ``values`` drawn with replacement.
    """

    kind: LengthKind
    params: tuple[float, ...] = ()
    values: tuple[int, ...] = field(default=(), repr=False)
    minimum: int = 1
    maximum: int | None = None

    def __post_init__(self) -> None:
        need = {"fixed": 1, "uniform": 2, "lognormal": 2, "empirical": 0}
        if self.kind not in need:
            raise ValueError(f"LengthDist: kind must be one of {sorted(need)}, got {self.kind!r}")
        if len(self.params) != need[self.kind]:
            raise ValueError(f"LengthDist {self.kind}: needs {need[self.kind]} params, got {self.params}")
        if self.minimum < 1 or (self.maximum is not None and self.maximum < self.minimum):
            raise ValueError(f"LengthDist: need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if self.kind == "fixed" and self.params[0] < 1:
            raise ValueError(f"LengthDist fixed: length must be >= 1, got {self.params[0]}")
        if self.kind == "uniform" and not 1 <= self.params[0] <= self.params[1]:
            raise ValueError(f"LengthDist uniform: need 1 <= low <= high, got {self.params}")
        if self.kind == "lognormal" and not (math.isfinite(self.params[0]) and self.params[1] >= 0):
            raise ValueError(f"LengthDist lognormal: need finite mu and sigma >= 0, got {self.params}")
        if self.kind == "empirical" and (not self.values or min(self.values) < 1):
            raise ValueError("LengthDist empirical: needs at least one value, all >= 1")

    @classmethod
    def fixed(cls, n: int) -> LengthDist:
        return cls("fixed", (float(n),))

    @classmethod
    def uniform(cls, low: int, high: int) -> LengthDist:
        return cls("uniform", (float(low), float(high)))

    @classmethod
    def lognormal(cls, mu: float, sigma: float, *, maximum: int | None = None) -> LengthDist:
        return cls("lognormal", (float(mu), float(sigma)), maximum=maximum)

    @classmethod
    def empirical(cls, values: Sequence[int] | npt.ArrayLike) -> LengthDist:
        return cls("empirical", (), tuple(int(v) for v in np.asarray(values).ravel()))

    @classmethod
    def from_splitwise(
        cls,
        csv_path: str | os.PathLike[str],
        column: Literal["prompt", "output"],
        kind: Literal["lognormal", "empirical"] = "lognormal",
    ) -> LengthDist:
        """Prompt or output lengths of a Splitwise CSV: a lognormal fitted by the mean and standard
        deviation of ``log(length)`` (clipped to the observed maximum), or the empirical values."""
        arr = _read_splitwise(Path(csv_path))
        col = arr[:, 1] if column == "prompt" else arr[:, 2]
        if kind == "empirical":
            return cls.empirical(col.astype(np.int64))
        logs = np.log(col)
        return cls.lognormal(float(logs.mean()), float(logs.std()), maximum=int(col.max()))

    def sample(self, n: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """``n`` lengths (int64)."""
        if self.kind == "fixed":
            out = np.full(n, int(self.params[0]), dtype=np.int64)
        elif self.kind == "uniform":
            out = rng.integers(int(self.params[0]), int(self.params[1]) + 1, size=n)
        elif self.kind == "lognormal":
            out = np.rint(rng.lognormal(self.params[0], self.params[1], size=n)).astype(np.int64)
        else:
            out = np.asarray(self.values, dtype=np.int64)[rng.integers(0, len(self.values), size=n)]
        return np.clip(out, self.minimum, self.maximum if self.maximum is not None else None).astype(np.int64)

    @property
    def mean(self) -> float:
        """Mean length before clipping (exact for fixed, uniform and empirical)."""
        if self.kind == "fixed":
            return self.params[0]
        if self.kind == "uniform":
            return 0.5 * (self.params[0] + self.params[1])
        if self.kind == "lognormal":
            return math.exp(self.params[0] + 0.5 * self.params[1] ** 2)
        return float(np.mean(self.values))


Length = int | LengthDist


def _as_dist(x: Length, name: str) -> LengthDist:
    if isinstance(x, LengthDist):
        return x
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 1:
        raise ValueError(f"{name} must be an int >= 1 or a LengthDist, got {x!r}")
    return LengthDist.fixed(int(x))


# ---------------------------------------------------------------------- streams
@dataclass(frozen=True)
class RequestStream:
    """Requests (sorted by arrival, ids ``0..n-1``) and the source of their routing.

    Routing is drawn for all the stream's requests at once, on first use, with the source's
    ``routing_batch`` (for a `ProcessRouting`: one vectorised draw; for a replay: per request) and
    kept on the instance, so ``routing(request)`` is the same array for the same request in any
    call order, and ``simulate`` and any other reader see the same rows. Arrays are read-only.
    """

    requests: tuple[Request, ...]
    routing_source: RoutingSource
    _drawn: dict[int, I16] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError("RequestStream: request ids must be unique")

    def routing(self, request: Request) -> I16:
        """The request's routing rows, ``int16 [prompt + output, moe_layers, k]`` (read-only): from
        the stream's batched draw when ``request`` is one of its requests, else from the source."""
        if not self._drawn and self.requests:
            self.routings()
        rows = self._drawn.get(request.request_id)
        if rows is not None and rows.shape[0] == request.total_tokens:
            return rows
        return self.routing_source.routing(request)

    def routings(self) -> tuple[I16, ...]:
        """Every request's routing rows in ``requests`` order, drawn in one batch on first call."""
        if not self._drawn and self.requests:
            for r, rows in zip(self.requests, self.routing_source.routing_batch(self.requests), strict=True):
                arr = np.asarray(rows)
                arr.setflags(write=False)
                self._drawn[r.request_id] = arr
        return tuple(self._drawn[r.request_id] for r in self.requests)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        if not self.requests:
            return 0.0
        return self.requests[-1].arrival_s - self.requests[0].arrival_s

    @property
    def total_tokens(self) -> int:
        return sum(r.total_tokens for r in self.requests)

    @staticmethod
    def _build(
        arrivals: npt.NDArray[np.float64],
        prompt: npt.NDArray[np.int64],
        output: npt.NDArray[np.int64],
        routing: RoutingSource,
    ) -> RequestStream:
        reqs = tuple(
            Request(request_id=i, arrival_s=float(a), prompt_tokens=int(p), output_tokens=int(o))
            for i, (a, p, o) in enumerate(zip(arrivals, prompt, output, strict=True))
        )
        return RequestStream(requests=reqs, routing_source=routing)

    @staticmethod
    def _lengths(
        n: int, prompt_len: Length, output_len: Length, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return _as_dist(prompt_len, "prompt_len").sample(n, rng), _as_dist(output_len, "output_len").sample(n, rng)

    @classmethod
    def poisson(
        cls,
        *,
        rate_per_s: float,
        n_requests: int,
        prompt_len: Length,
        output_len: Length,
        routing: RoutingSource,
        seed: int = 0,
    ) -> RequestStream:
        """Poisson arrivals at ``rate_per_s`` (first arrival one inter-arrival time after t = 0)."""
        _check_n(n_requests)
        if not rate_per_s > 0 or not math.isfinite(rate_per_s):
            raise ValueError(f"poisson: rate_per_s must be finite and > 0, got {rate_per_s}")
        rng = np.random.default_rng(seed)
        arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n_requests))
        return cls._build(arrivals, *cls._lengths(n_requests, prompt_len, output_len, rng), routing)

    @classmethod
    def bursty(
        cls,
        *,
        mean_rate_per_s: float,
        burstiness: float,
        n_requests: int,
        prompt_len: Length,
        output_len: Length,
        routing: RoutingSource,
        seed: int = 0,
    ) -> RequestStream:
        """Gamma-renewal arrivals: inter-arrival times ~ Gamma(shape = 1/c^2, scale = c^2 / rate)
        with ``c = burstiness`` their coefficient of variation (1 gives Poisson)."""
        _check_n(n_requests)
        if not mean_rate_per_s > 0 or not math.isfinite(mean_rate_per_s):
            raise ValueError(f"bursty: mean_rate_per_s must be finite and > 0, got {mean_rate_per_s}")
        if not burstiness > 0 or not math.isfinite(burstiness):
            raise ValueError(f"bursty: burstiness (CV of inter-arrival times) must be > 0, got {burstiness}")
        rng = np.random.default_rng(seed)
        shape = 1.0 / burstiness**2
        gaps = rng.gamma(shape, 1.0 / (mean_rate_per_s * shape), size=n_requests)
        return cls._build(np.cumsum(gaps), *cls._lengths(n_requests, prompt_len, output_len, rng), routing)

    @classmethod
    def onoff(
        cls,
        *,
        rate_on_per_s: float,
        rate_off_per_s: float,
        mean_on_s: float,
        mean_off_s: float,
        n_requests: int,
        prompt_len: Length,
        output_len: Length,
        routing: RoutingSource,
        seed: int = 0,
    ) -> RequestStream:
        """On/off Markov-modulated Poisson arrivals (a two-state MMPP): exponential "on" periods
        (mean ``mean_on_s``) with Poisson arrivals at ``rate_on_per_s`` alternate with "off" periods
        (mean ``mean_off_s``) at ``rate_off_per_s`` (may be 0); the stream starts in an "on" period.
        Long-run rate: ``(rate_on mean_on + rate_off mean_off) / (mean_on + mean_off)``."""
        _check_n(n_requests)
        for name, v in (("rate_on_per_s", rate_on_per_s), ("mean_on_s", mean_on_s), ("mean_off_s", mean_off_s)):
            if not v > 0 or not math.isfinite(v):
                raise ValueError(f"onoff: {name} must be finite and > 0, got {v}")
        if not rate_off_per_s >= 0 or not math.isfinite(rate_off_per_s):
            raise ValueError(f"onoff: rate_off_per_s must be finite and >= 0, got {rate_off_per_s}")
        rng = np.random.default_rng(seed)
        times: list[npt.NDArray[np.float64]] = []
        t, count, on = 0.0, 0, True
        while count < n_requests:  # one iteration per period, not per request
            length = rng.exponential(mean_on_s if on else mean_off_s)
            k = rng.poisson((rate_on_per_s if on else rate_off_per_s) * length)
            if k:
                times.append(t + np.sort(rng.uniform(0.0, length, size=k)))
                count += k
            t += length
            on = not on
        arrivals = np.concatenate(times)[:n_requests]
        return cls._build(arrivals, *cls._lengths(n_requests, prompt_len, output_len, rng), routing)

    @classmethod
    def closed(
        cls, *, n_requests: int, prompt_len: Length, output_len: Length, routing: RoutingSource, seed: int = 0
    ) -> RequestStream:
        """All requests at t = 0 (an offline batch)."""
        _check_n(n_requests)
        rng = np.random.default_rng(seed)
        return cls._build(np.zeros(n_requests), *cls._lengths(n_requests, prompt_len, output_len, rng), routing)

    @classmethod
    def replay(
        cls,
        csv_path: str | os.PathLike[str],
        *,
        n_requests: int | None = None,
        time_scale: float = 1.0,
        max_prompt: int | None = None,
        max_output: int | None = None,
        routing: RoutingSource,
        seed: int = 0,
    ) -> RequestStream:
        """Arrivals and lengths of a Splitwise-format CSV (header ``arrived_at, num_prefill_tokens,
        num_decode_tokens``), the first ``n_requests`` rows (all if None), arrival times shifted to
        start at 0 and multiplied by ``time_scale`` (0.5 = twice the load), lengths clipped to
        ``max_prompt`` / ``max_output``. ``seed`` is unused (the replay is deterministic); it is
        accepted for a uniform factory signature. Malformed rows raise `RequestFormatError` naming
        the file, line and field."""
        del seed
        if not time_scale > 0 or not math.isfinite(time_scale):
            raise ValueError(f"replay: time_scale must be finite and > 0, got {time_scale}")
        arr = _read_splitwise(Path(csv_path))
        if n_requests is not None:
            _check_n(n_requests)
            if n_requests > arr.shape[0]:
                raise ValueError(f"replay: {csv_path} has {arr.shape[0]} requests, asked for {n_requests}")
            arr = arr[:n_requests]
        arrivals = (arr[:, 0] - arr[0, 0]) * time_scale
        prompt = arr[:, 1].astype(np.int64)
        output = arr[:, 2].astype(np.int64)
        if max_prompt is not None:
            prompt = np.minimum(prompt, max_prompt)
        if max_output is not None:
            output = np.minimum(output, max_output)
        return cls._build(arrivals, prompt, output, routing)


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n_requests must be an int >= 1, got {n!r}")


_SPLITWISE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")


def _read_splitwise(path: Path) -> npt.NDArray[np.float64]:
    """``[n, 3]`` float64 (arrival s, prompt tokens, output tokens), validated row by row."""
    if not path.exists():
        raise RequestFormatError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise RequestFormatError(f"{path}: empty file, expected a header {','.join(_SPLITWISE_COLUMNS)}")
            names = [h.strip() for h in header]
            missing = [c for c in _SPLITWISE_COLUMNS if c not in names]
            if missing:
                raise RequestFormatError(f"{path}, line 1: header lacks column(s) {missing}; got {names}")
            cols = [names.index(c) for c in _SPLITWISE_COLUMNS]
            rows: list[tuple[float, float, float]] = []
            last = -math.inf
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(names):
                    raise RequestFormatError(f"{path}, line {line}: {len(row)} fields, expected {len(names)}")
                vals: list[float] = []
                for name, c in zip(_SPLITWISE_COLUMNS, cols, strict=True):
                    text = row[c].strip()
                    try:
                        v = float(text)
                    except ValueError:
                        raise RequestFormatError(
                            f"{path}, line {line}: field {name} = {text!r} is not a number"
                        ) from None
                    if not math.isfinite(v) or v < 0:
                        raise RequestFormatError(
                            f"{path}, line {line}: field {name} = {text!r} must be finite and >= 0"
                        )
                    if name != "arrived_at" and (v != int(v) or v < 1):
                        raise RequestFormatError(
                            f"{path}, line {line}: field {name} = {text!r} must be an integer >= 1"
                        )
                    vals.append(v)
                if vals[0] < last:
                    raise RequestFormatError(
                        f"{path}, line {line}: arrived_at {vals[0]} is earlier than the previous "
                        f"row's {last} (arrivals must be sorted)"
                    )
                last = vals[0]
                rows.append((vals[0], vals[1], vals[2]))
    except UnicodeDecodeError as exc:
        raise RequestFormatError(f"{path}: not UTF-8 text ({exc})") from exc
    if not rows:
        raise RequestFormatError(f"{path}: no request rows after the header")
    return np.asarray(rows, dtype=np.float64)


__all__ = [
    "LengthDist",
    "ProcessRouting",
    "Request",
    "RequestFormatError",
    "RequestStream",
    "RoutingSource",
    "TraceReplay",
    "TraceReplayExhaustedError",
]
