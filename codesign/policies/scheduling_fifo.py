"""FIFO continuous batching (Orca / vLLM style, chunked prefill; it never preempts: under
``batching.kv = "paged"`` the engine does, `codesign.engine`)."""

from __future__ import annotations

from collections.abc import Sequence

from codesign.policies.base import Batch, RequestState, TokenScheduler
from codesign.policies.registry import REGISTRIES

__all__ = ["FifoScheduler"]


@REGISTRIES["scheduling"].register("fifo", "FIFO continuous batching with chunked prefill")
class FifoScheduler(TokenScheduler):
    """First come, first served continuous batching.

    Every step: each running request in decode gets its 1 token; running requests still in prefill
    get prompt chunks in admission order; then waiting requests are admitted in arrival order
    while fewer than ``max_batch`` are running, their KV reservation fits ``kv_free_tokens`` and
    the token budget ``max_tokens`` has room for at least one of their prompt tokens. Head-of-line
    blocking is kept (a waiting request that does not fit stops admission), as FIFO implies.
    """

    def schedule(
        self, now: float, waiting: Sequence[RequestState], running: Sequence[RequestState], kv_free_tokens: int
    ) -> Batch:
        ids: list[int] = []
        toks: list[int] = []
        budget = self.max_tokens
        prefilling = []  # RequestState's in_prefill / remaining_prompt inlined below (a hot loop)
        for r in running:
            if r.prefilled < r.prompt_tokens:
                prefilling.append(r)
            elif budget > 0:
                ids.append(r.request_id)
                toks.append(1)
                budget -= 1
        for r in prefilling:
            if budget > 0:
                n = min(r.prompt_tokens - r.prefilled, budget)
                ids.append(r.request_id)
                toks.append(n)
                budget -= n
        n_running = len(running)
        kv_free = kv_free_tokens
        for r in waiting:
            if budget <= 0 or n_running >= self.max_batch or r.kv_admit_tokens > kv_free:
                break
            n = min(r.remaining_prompt, budget) if r.in_prefill else 1
            ids.append(r.request_id)
            toks.append(n)
            budget -= n
            n_running += 1
            kv_free -= r.kv_admit_tokens
        return Batch(request_ids=tuple(ids), n_tokens=tuple(toks))
