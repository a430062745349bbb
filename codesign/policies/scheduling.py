"""Token schedulers that batch by experts: ExpertFlow regrouping and Symbolic-MoE grouping.

Both implement `codesign.policies.base.TokenScheduler` (read its contract first). ExpertFlow
differs from FIFO only when more requests could run than one step can take (``max_tokens``
smaller than the runnable requests, or ``max_batch`` smaller than the waiting queue): then it
chooses *which* requests share a step so that the step activates fewer distinct experts.
Symbolic-MoE always serves one group (assigned expert) at a time. Both trade per-request latency
(a request may wait while others run) for fewer expert loads per step.

What a scheduler may know about a request's routing (honesty rule): a request's **signature**
is the set of (layer, expert) pairs used by the last row it has already processed (for decode,
the previous token: temporal locality of routing); for a request that has processed nothing, its
first prompt row (the router runs on the prompt before generation; this is what ExpertFlow's
routing-path predictor and Symbolic-MoE's up-front recruiting see). ``lookahead="oracle"`` uses
the row the request will actually process next instead: an upper bound, labelled as such.

- ``expertflow`` (ExpertFlow, He et al., arXiv 2410.17954, "token scheduler", [P] ExpertFlow in
  shared/reference/hardware-and-papers.md s.4): greedy regrouping across batches. The oldest
  runnable request anchors the batch (no starvation: a request skipped ``max_skips`` times is
  taken first, the most skipped first); then, while room remains, the request whose signature
  adds the fewest new (layer, expert) pairs to the batch's union joins (ties: oldest first).
- ``symbolic-moe`` (Symbolic-MoE, Chen et al., arXiv 2503.05641, "groups instances based on their
  assigned experts, loading each model only once", [P] Symbolic-MoE in s.4): each request belongs
  to the group of its *assigned expert*, the most frequent expert of its first prompt row set over
  the layers (for a Composition of Experts with one routed "expert" per request, that expert).
  The scheduler serves one group at a time: it keeps taking requests of the current group
  (running ones first, then waiting ones in arrival order) and switches, when the group has
  nothing runnable left, to the group with the most runnable requests (ties: the oldest request).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from codesign.policies.base import Batch, RequestState, TokenScheduler
from codesign.policies.registry import REGISTRIES

Lookahead = Literal["previous", "oracle"]


def request_signature(req: RequestState, *, lookahead: Lookahead = "previous") -> npt.NDArray[np.int64]:
    """Flat keys ``layer * BIG + expert`` (sorted unique int64) of the row that stands for ``req``'s
    next token (see module docstring); ``BIG`` = 2**20."""
    n_rows = req.routing.shape[0]
    if lookahead == "oracle":
        row = req.next_row
    elif lookahead == "previous":
        row = req.next_row - 1 if (req.prefilled > 0) else 0
    else:
        raise ValueError(f"lookahead must be 'previous' or 'oracle', got {lookahead!r}")
    row = min(max(row, 0), n_rows - 1)
    r = req.routing[row].astype(np.int64)  # [n_layers, k]
    layers = np.broadcast_to(np.arange(r.shape[0])[:, None], r.shape)
    keys = (layers << 20) + r
    return np.unique(keys[r >= 0])


def assigned_expert(req: RequestState) -> int:
    """Symbolic-MoE group of a request: the most frequent expert id in its first row (all layers);
    ties to the lowest id; -1 when the row routes nowhere."""
    r = req.routing[0].astype(np.int64).ravel()
    r = r[r >= 0]
    if r.size == 0:
        return -1
    return int(np.argmax(np.bincount(r)))


class _ExpertAwareScheduler(TokenScheduler):
    """Shared bookkeeping: who is runnable, token budget, KV budget, batch assembly."""

    #: When every candidate fits in one step, take them all in FIFO order (no regrouping needed).
    shortcut_when_all_fit = True

    def __init__(
        self,
        *,
        max_batch: int,
        max_tokens: int,
        seed: int = 0,
        lookahead: Lookahead = "previous",
        prefill_chunk: int | None = None,
    ) -> None:
        super().__init__(max_batch=max_batch, max_tokens=max_tokens, seed=seed)
        if lookahead not in ("previous", "oracle"):
            raise ValueError(f"lookahead must be 'previous' or 'oracle', got {lookahead!r}")
        if prefill_chunk is not None and prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be > 0 or None, got {prefill_chunk}")
        self.lookahead: Lookahead = lookahead
        self.prefill_chunk = prefill_chunk
        self.steps = 0
        self.distinct_experts_history: list[int] = []  # distinct (layer, expert) pairs per batch (signatures)

    def _tokens_for(self, req: RequestState) -> int:
        if req.in_prefill:
            want = req.remaining_prompt
            return min(want, self.prefill_chunk) if self.prefill_chunk else want
        return 1

    def _order(self, candidates: list[tuple[RequestState, bool]]) -> list[tuple[RequestState, bool]]:
        """Return candidates in the order they should be tried (subclasses)."""
        raise NotImplementedError

    def schedule(
        self, now: float, waiting: Sequence[RequestState], running: Sequence[RequestState], kv_free_tokens: int
    ) -> Batch:
        """The next batch (contract in `TokenScheduler`); candidates are tried in `_order`, and in
        FIFO order when that yields nothing (so a runnable request always runs: no deadlock)."""
        cands: list[tuple[RequestState, bool]] = [(r, False) for r in running if not r.done]
        cands += [(r, True) for r in waiting]
        fifo = sorted(cands, key=lambda c: (c[1], c[0].arrival_s, c[0].request_id))
        fits_all = sum(self._tokens_for(r) for r, _ in cands) <= self.max_tokens and len(
            waiting
        ) <= self.max_batch - len(running)
        use_fifo = fits_all and self.shortcut_when_all_fit
        ids, toks, union = self._fill(fifo if use_fifo else self._order(cands), len(running), kv_free_tokens)
        if not ids and cands:
            ids, toks, union = self._fill(fifo, len(running), kv_free_tokens)
        self.steps += 1
        self.distinct_experts_history.append(len(union))
        self._after(ids)
        return Batch(request_ids=tuple(ids), n_tokens=tuple(toks))

    def _fill(
        self, ordered: list[tuple[RequestState, bool]], n_running: int, kv_free_tokens: int
    ) -> tuple[list[int], list[int], set[int]]:
        ids: list[int] = []
        toks: list[int] = []
        budget = self.max_tokens
        slots = self.max_batch - n_running
        kv = int(kv_free_tokens)
        union: set[int] = set()
        for req, is_waiting in ordered:
            if budget <= 0:
                break
            if is_waiting and (slots <= 0 or req.kv_admit_tokens > kv):
                continue
            n = min(self._tokens_for(req), budget)
            if n <= 0 or (not req.in_prefill and n != 1):
                continue
            ids.append(req.request_id)
            toks.append(n)
            budget -= n
            if is_waiting:
                slots -= 1
                kv -= req.kv_admit_tokens
            union.update(request_signature(req, lookahead=self.lookahead).tolist())
        return ids, toks, union

    def _after(self, chosen: list[int]) -> None:
        """Called with the chosen request ids after each step."""


@REGISTRIES["scheduling"].register(
    "expertflow", "ExpertFlow: regroup tokens across batches to cut distinct activated experts per step"
)
class ExpertFlowScheduler(_ExpertAwareScheduler):
    """Greedy regrouping (module docstring). Options: ``lookahead`` ("previous" | "oracle"),
    ``max_skips`` (a request passed over this many steps in a row is taken first), ``prefill_chunk``."""

    def __init__(
        self,
        *,
        max_batch: int,
        max_tokens: int,
        seed: int = 0,
        lookahead: Lookahead = "previous",
        max_skips: int = 8,
        prefill_chunk: int | None = None,
    ) -> None:
        super().__init__(
            max_batch=max_batch, max_tokens=max_tokens, seed=seed, lookahead=lookahead, prefill_chunk=prefill_chunk
        )
        if max_skips < 0:
            raise ValueError(f"max_skips must be >= 0, got {max_skips}")
        self.max_skips = int(max_skips)
        self._skips: dict[int, int] = {}

    def _order(self, candidates: list[tuple[RequestState, bool]]) -> list[tuple[RequestState, bool]]:
        if not candidates:
            return []
        # oldest first: by admission for running, by arrival for waiting (running before waiting)
        base = sorted(candidates, key=lambda c: (c[1], c[0].arrival_s, c[0].request_id))
        starving = sorted(
            (c for c in base if self._skips.get(c[0].request_id, 0) >= self.max_skips),
            key=lambda c: -self._skips.get(c[0].request_id, 0),
        )  # most skipped first (stable)
        rest = [c for c in base if self._skips.get(c[0].request_id, 0) < self.max_skips]
        ordered = list(starving)
        union: set[int] = set()
        for c in ordered:
            union.update(request_signature(c[0], lookahead=self.lookahead).tolist())
        sig_list = [request_signature(c[0], lookahead=self.lookahead) for c in rest]
        if not rest:
            return ordered
        universe = np.unique(np.concatenate([*sig_list, np.fromiter(union, dtype=np.int64, count=len(union))]))
        member = np.zeros((len(rest), universe.size), dtype=bool)
        for i, sig in enumerate(sig_list):
            member[i, np.searchsorted(universe, sig)] = True
        covered = np.isin(universe, np.fromiter(union, dtype=np.int64, count=len(union)))
        left = np.ones(len(rest), dtype=bool)
        if not ordered:  # the oldest anchors the batch
            ordered.append(rest[0])
            covered |= member[0]
            left[0] = False
        # greedy: fewest new experts first (ties: oldest); the budget is applied by schedule()
        while left.any():
            new_counts = np.where(left, (member & ~covered).sum(axis=1), np.iinfo(np.int64).max)
            i = int(np.argmin(new_counts))
            ordered.append(rest[i])
            covered |= member[i]
            left[i] = False
        return ordered

    def _after(self, chosen: list[int]) -> None:
        chosen_set = set(chosen)
        for rid in list(self._skips):
            if rid in chosen_set:
                del self._skips[rid]

    def schedule(
        self, now: float, waiting: Sequence[RequestState], running: Sequence[RequestState], kv_free_tokens: int
    ) -> Batch:
        batch = super().schedule(now, waiting, running, kv_free_tokens)
        chosen = set(batch.request_ids)
        for r in running:  # running requests left out were skipped this step
            if not r.done and r.request_id not in chosen:
                self._skips[r.request_id] = self._skips.get(r.request_id, 0) + 1
        return batch


@REGISTRIES["scheduling"].register(
    "symbolic-moe", "Symbolic-MoE: serve requests grouped by their assigned expert, one group at a time"
)
class SymbolicMoEScheduler(_ExpertAwareScheduler):
    """One group (assigned expert) at a time (module docstring). ``current_group`` is the group
    being served; ``group_switches`` counts switches (each one loads a new expert set)."""

    shortcut_when_all_fit = False

    def __init__(
        self,
        *,
        max_batch: int,
        max_tokens: int,
        seed: int = 0,
        lookahead: Lookahead = "previous",
        prefill_chunk: int | None = None,
    ) -> None:
        super().__init__(
            max_batch=max_batch, max_tokens=max_tokens, seed=seed, lookahead=lookahead, prefill_chunk=prefill_chunk
        )
        self.current_group: int | None = None
        self.group_switches = 0

    def _order(self, candidates: list[tuple[RequestState, bool]]) -> list[tuple[RequestState, bool]]:
        if not candidates:
            return []
        groups: dict[int, list[tuple[RequestState, bool]]] = {}
        for c in sorted(candidates, key=lambda c: (c[1], c[0].arrival_s, c[0].request_id)):
            groups.setdefault(assigned_expert(c[0]), []).append(c)
        if self.current_group not in groups:

            def rank(g: int) -> tuple[int, float, int]:
                oldest = min(groups[g], key=lambda c: (c[0].arrival_s, c[0].request_id))[0]
                return (-len(groups[g]), oldest.arrival_s, oldest.request_id)

            new = min(groups, key=rank)
            if self.current_group is not None:
                self.group_switches += 1
            self.current_group = new
        return list(groups[self.current_group])


__all__ = ["ExpertFlowScheduler", "SymbolicMoEScheduler", "assigned_expert", "request_signature"]
