"""Small request streams for the simulator tests (a list of requests with fixed routing arrays).

The engine consumes anything with ``requests`` and ``routing(request)`` (the `RequestStream`
protocol of `workloads.requests`); these helpers build such streams from explicit arrays, so that a
test controls every routing row exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from workloads.model import MoEModel


@dataclass(frozen=True)
class Req:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class ListStream:
    """Requests with explicit routing arrays (``routing[i]``: int16 [prompt+output, layers, k])."""

    def __init__(self, requests: list[Req], routing: list[npt.NDArray[np.int16]]) -> None:
        self.requests = tuple(requests)
        self._routing = {r.request_id: np.asarray(x, dtype=np.int16) for r, x in zip(requests, routing, strict=True)}

    def routing(self, request: Req) -> npt.NDArray[np.int16]:
        return self._routing[request.request_id]


def random_stream(
    model: MoEModel,
    n: int,
    prompt: int,
    output: int,
    *,
    seed: int = 0,
    rate_per_s: float | None = None,
    zipf: float = 0.0,
) -> ListStream:
    """``n`` requests with routing drawn per token (distinct top-k; popularity ~ rank^-zipf) and
    Poisson arrivals at ``rate_per_s`` (all at t=0 when None)."""
    rng = np.random.default_rng(seed)
    e, k, layers = model.n_experts, model.top_k, model.n_moe_layers
    w = 1.0 / np.arange(1, e + 1) ** zipf
    perm = np.stack([rng.permutation(e) for _ in range(layers)])  # popularity order per layer
    arrivals = np.cumsum(rng.exponential(1.0 / rate_per_s, n)) if rate_per_s else np.zeros(n)
    reqs, routing = [], []
    for i in range(n):
        rows = prompt + output
        g = rng.gumbel(size=(rows, layers, e)) + np.log(w)[None, None, :]
        top = np.argsort(-g, axis=2)[:, :, :k]
        routing.append(np.take_along_axis(perm[None, :, :].repeat(rows, 0), top, axis=2).astype(np.int16))
        reqs.append(Req(i, float(arrivals[i]), prompt, output))
    return ListStream(reqs, routing)


def tiny_model(**changes: object) -> MoEModel:
    """A small Mixtral-shaped model (4 MoE layers, 8 experts, top-2) for fast engine tests."""
    base = MoEModel(
        name="tiny-moe",
        n_layers=4,
        d_model=512,
        n_heads=8,
        n_kv_heads=4,
        head_dim=64,
        expert_ffn_dim=1024,
        n_experts=8,
        top_k=2,
        vocab_size=1000,
        source="test",
    )
    return base.with_(**changes) if changes else base


def rows_stream(rows: list[npt.NDArray[np.int16]], prompt: int) -> ListStream:
    """Requests ``0..len(rows)-1`` all arriving at t=0, request ``i`` routed by ``rows[i]``
    (its first ``prompt`` rows are the prompt, the rest decode tokens)."""
    reqs = [Req(i, 0.0, prompt, r.shape[0] - prompt) for i, r in enumerate(rows)]
    return ListStream(reqs, rows)
