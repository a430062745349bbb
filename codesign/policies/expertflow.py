"""ExpertFlow-style routing-path prediction (He et al., arXiv 2410.17954; "[P] ExpertFlow" in
shared/reference/hardware-and-papers.md s.4).

ExpertFlow predicts, for each token, the experts it will use at the coming layers and uses the
prediction to prefetch and to keep the right experts cached, correcting mispredictions at run
time. The paper uses a small transformer over all layers; this module uses a lighter predictor of
the same contract, documented as such: **per-layer conditional frequency tables**. Trained on
part of a trace, it holds for every layer ``l``, distance ``h = 1..horizon + context - 1`` the
table ``P(expert j at layer l+h | expert i at layer l)`` (add-``alpha`` smoothed) and the per-layer
popularity. To predict layer ``t`` for a token whose experts are known up to layer ``l < t``, it
scores every expert ``j`` by

    score[j] = sum_{c=0}^{context-1} decay^c * sum_{i in S_{l-c}} P(j at t | i at l-c)
               + prior * popularity_t[j]

and returns the top-scoring experts. `RoutingPathPredictor.evaluate` measures recall@k (the
share of a token's true experts at layer ``l+h`` that are in the predicted top-k) on held-out
tokens, beside the popularity baseline (the k most loaded experts of the layer in training).

Policies registered: cache ``expertflow`` (evicts the resident expert least likely to be needed
by the tokens in flight, by the predictor's scores) and prefetch ``expertflow`` (fetches the
predicted experts of the next ``horizon`` layers); both are defined at the bottom of the module
against the ABCs of ``codesign.policies.base``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from codesign.policies.base import BoolArray, CachePolicy, PrefetchContext, PrefetchPolicy
from codesign.policies.registry import REGISTRIES
from workloads.trace import RoutingTrace

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PredictionAccuracy:
    """Held-out accuracy of a routing-path predictor.

    ``recall[h-1]``: mean share of a token's true experts at layer ``l+h`` found in the predicted
    top-k (k = the trace's slots), over held-out tokens and all layers ``l`` with ``l+h`` valid.
    ``baseline_recall[h-1]``: the same for the popularity baseline. ``n_predictions[h-1]``: how
    many (token, layer) predictions were scored.
    """

    recall: tuple[float, ...]
    baseline_recall: tuple[float, ...]
    n_predictions: tuple[int, ...]


class RoutingPathPredictor:
    """Per-layer conditional frequency tables predicting a token's experts at coming layers.

    Built by `fit`; immutable afterwards (so one predictor is shared safely between runs).
    ``horizon``: how many layers ahead it predicts; ``context``: how many known layers (the
    current and earlier) vote; ``decay``: weight of each earlier layer relative to the next;
    ``alpha``: add-alpha smoothing of the tables; ``prior``: weight of the popularity prior.
    """

    def __init__(
        self,
        *,
        n_layers: int,
        n_experts: int,
        horizon: int,
        context: int,
        cond: dict[int, FloatArray],
        popularity: FloatArray,
        decay: float,
        prior: float,
    ) -> None:
        self.n_layers = n_layers
        self.n_experts = n_experts
        self.horizon = horizon
        self.context = context
        self._cond = cond  # distance h -> float64[n_layers - h, E, E], rows sum to 1
        self.popularity = popularity  # float64[n_layers, E], rows sum to 1
        self.decay = decay
        self.prior = prior

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        trace: RoutingTrace,
        *,
        horizon: int = 2,
        context: int = 2,
        decay: float = 0.5,
        alpha: float = 0.1,
        prior: float = 0.05,
    ) -> RoutingPathPredictor:
        """Count the tables on ``trace`` (all its tokens are training data)."""
        if horizon < 1 or context < 1:
            raise ValueError(f"horizon and context must be >= 1, got horizon={horizon}, context={context}")
        if not (0 <= decay <= 1) or alpha < 0 or prior < 0:
            raise ValueError(f"need 0 <= decay <= 1, alpha >= 0, prior >= 0; got {decay}, {alpha}, {prior}")
        if trace.n_tokens == 0:
            raise ValueError("cannot fit a routing-path predictor on an empty trace")
        n_exp, n_l = trace.n_experts, trace.n_moe_layers
        e = trace.experts.astype(np.int64)
        pop = np.zeros((n_l, n_exp))
        for layer in range(n_l):
            col = e[:, layer, :].ravel()
            pop[layer] = np.bincount(col[col >= 0], minlength=n_exp) + alpha
        pop /= pop.sum(axis=1, keepdims=True)
        cond: dict[int, FloatArray] = {}
        for h in range(1, min(horizon + context - 1, n_l - 1) + 1):
            tab = np.zeros((n_l - h, n_exp, n_exp))
            for layer in range(n_l - h):
                a = e[:, layer, :, None]
                b = e[:, layer + h, None, :]
                valid = (a >= 0) & (b >= 0)
                tab[layer] = np.bincount((a * n_exp + b)[valid], minlength=n_exp * n_exp).reshape(n_exp, n_exp)
            tab += alpha
            tab /= np.maximum(tab.sum(axis=2, keepdims=True), 1e-300)
            cond[h] = tab
        return cls(
            n_layers=n_l,
            n_experts=n_exp,
            horizon=horizon,
            context=context,
            cond=cond,
            popularity=pop,
            decay=decay,
            prior=prior,
        )

    # -------------------------------------------------------------- predict
    def scores(self, known: npt.ArrayLike, layer: int, target: int) -> FloatArray:
        """Scores ``float64[T, E]`` of every expert at MoE layer ``target`` for ``T`` tokens.

        ``known``: ``int[T, layer+1, k]`` (or ``int[T, n_layers, k]``; only layers ``<= layer`` are
        read) with the experts each token used at layers ``0..layer`` (-1 = none). ``target`` must
        be in ``(layer, n_layers)``. Higher is more likely; rows are not normalised.
        """
        kn = np.asarray(known, dtype=np.int64)
        if kn.ndim != 3 or kn.shape[1] <= layer:
            raise ValueError(f"known must be [tokens, >= layer+1={layer + 1}, k], got shape {kn.shape}")
        if not (0 <= layer < target < self.n_layers):
            raise ValueError(f"need 0 <= layer < target < n_layers={self.n_layers}; got layer={layer}, target={target}")
        n_tok = kn.shape[0]
        out = np.tile(self.prior * self.popularity[target], (n_tok, 1))
        for c in range(self.context):
            src = layer - c
            h = target - src
            if src < 0 or h not in self._cond:
                break
            ids = kn[:, src, :]
            tab = self._cond[h][src]  # [E, E]
            rows = tab[np.maximum(ids, 0)] * (ids >= 0)[:, :, None]  # [T, k, E]
            out += (self.decay**c) * rows.sum(axis=1)
        return out

    def predict(self, known: npt.ArrayLike, layer: int, target: int, k: int) -> IntArray:
        """Top-``k`` predicted experts ``int64[T, k]`` at layer ``target`` (best first)."""
        s = self.scores(known, layer, target)
        k = min(k, self.n_experts)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).astype(np.int64)

    def expected_demand(self, known: npt.ArrayLike, layer: int, target: int) -> FloatArray:
        """Expected number of tokens (of the ``T`` given) that use each expert at ``target``:
        ``float64[E]``, the predicted per-token distribution scaled to ``k`` choices and summed."""
        kn = np.asarray(known, dtype=np.int64)
        s = self.scores(kn, layer, target)
        k = kn.shape[2]
        p = s / np.maximum(s.sum(axis=1, keepdims=True), 1e-300)
        return np.minimum(p * k, 1.0).sum(axis=0)

    def prob_any(self, known: npt.ArrayLike, layer: int, target: int) -> FloatArray:
        """Probability ``float64[E]`` that at least one of the ``T`` tokens uses each expert at
        ``target``: ``1 - prod_t (1 - min(1, k * p_t[j]))`` with ``p_t`` the normalised scores."""
        kn = np.asarray(known, dtype=np.int64)
        s = self.scores(kn, layer, target)
        k = kn.shape[2]
        p = np.minimum(s / np.maximum(s.sum(axis=1, keepdims=True), 1e-300) * k, 1.0 - 1e-12)
        return 1.0 - np.exp(np.log1p(-p).sum(axis=0))

    # ------------------------------------------------------------- evaluate
    def evaluate(self, trace: RoutingTrace) -> PredictionAccuracy:
        """Recall@k on ``trace`` (held-out tokens) for distances ``1..horizon``, and the
        popularity baseline's (see `PredictionAccuracy`)."""
        if trace.n_moe_layers != self.n_layers or trace.n_experts != self.n_experts:
            raise ValueError(
                f"trace has {trace.n_moe_layers} layers x {trace.n_experts} experts; the predictor "
                f"was fitted on {self.n_layers} x {self.n_experts}"
            )
        e = trace.experts.astype(np.int64)
        k = e.shape[2]
        recall, base, counts = [], [], []
        for h in range(1, self.horizon + 1):
            hits = bhits = total = 0.0
            n_pred = 0
            for layer in range(self.n_layers - h):
                target = layer + h
                truth = e[:, target, :]
                valid_tok = (truth >= 0).any(axis=1) & (e[:, layer, :] >= 0).any(axis=1)
                if not valid_tok.any():
                    continue
                pred = self.predict(e[valid_tok], layer, target, k)
                tr = truth[valid_tok]
                hit = (tr[:, :, None] == pred[:, None, :]).any(axis=2) & (tr >= 0)
                pop_top = np.argsort(-self.popularity[target], kind="stable")[:k]
                bhit = np.isin(tr, pop_top) & (tr >= 0)
                hits += float(hit.sum())
                bhits += float(bhit.sum())
                total += float((tr >= 0).sum())
                n_pred += int(valid_tok.sum())
            recall.append(hits / total if total else 0.0)
            base.append(bhits / total if total else 0.0)
            counts.append(n_pred)
        return PredictionAccuracy(recall=tuple(recall), baseline_recall=tuple(base), n_predictions=tuple(counts))


def split_by_request(trace: RoutingTrace, train_fraction: float = 0.5) -> tuple[RoutingTrace, RoutingTrace]:
    """Split a trace into (train, test) by request id: the first ``train_fraction`` of the distinct
    request ids (sorted) train, the rest test, so no request is on both sides."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    ids = np.unique(trace.request)
    if ids.size < 2:
        raise ValueError(f"need at least 2 requests to split by request, the trace has {ids.size}")
    n_train = min(max(1, round(ids.size * train_fraction)), ids.size - 1)
    train_ids = ids[:n_train]
    mask = np.isin(trace.request, train_ids)
    return trace.select(mask), trace.select(~mask)


def _prob_any_popularity(pop: FloatArray, k: int, n_tokens: int) -> FloatArray:
    """P(at least one of ``n_tokens`` tokens picks each expert) under independent popularity."""
    p = np.minimum(pop * k, 1.0 - 1e-12)
    return 1.0 - np.exp(n_tokens * np.log1p(-p))


@REGISTRIES["cache"].register(
    "expertflow", "ExpertFlow predictive cache: evict the expert least likely needed soon (routing-path predictor)"
)
class ExpertFlowCache(CachePolicy):
    """Predictive replacement driven by a `RoutingPathPredictor` trained on part of a trace.

    Every evictable resident ``(l, e)`` gets a keep-score, the probability that the tokens in
    flight will need it soon, discounted by how far ahead it is needed:

    - layers ``cur+1 .. cur+horizon`` (``cur`` = the layer last passed to `observe`): the
      predictor's `RoutingPathPredictor.prob_any` from this step's rows at layers ``<= cur``;
    - other layers (needed next step at the earliest): ``0.5 * [used at l this step] + 0.5 *``
      the popularity-based probability (decode tokens tend to reuse their predecessor's experts);
    - times ``discount ** d`` where ``d = (l - cur) mod n_layers`` is the distance in layers.

    The victim is the lowest keep-score, ties to the least recently used. Options: ``horizon``,
    ``context``, ``discount`` (in (0, 1]). ``needs_training``: the engine calls `fit` first; an
    untrained cache raises a clear error when it must choose a victim.
    """

    needs_training = True
    time_independent = True

    def __init__(
        self,
        *,
        capacity: int,
        n_layers: int,
        n_experts: int,
        pinned: npt.ArrayLike | None = None,
        seed: int = 0,
        per_layer: bool = False,
        horizon: int = 2,
        context: int = 2,
        discount: float = 0.9,
    ) -> None:
        super().__init__(
            capacity=capacity, n_layers=n_layers, n_experts=n_experts, pinned=pinned, seed=seed, per_layer=per_layer
        )
        if not 0 < discount <= 1:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        self.horizon = int(horizon)
        self.context = int(context)
        self.discount = float(discount)
        self.predictor: RoutingPathPredictor | None = None
        self.last_use = np.full((n_layers, n_experts), -np.inf)
        self._tick = 0
        self._rows: dict[int, npt.NDArray[np.int64]] = {}
        self._cur = -1
        self._used = np.zeros((n_layers, n_experts), dtype=bool)
        self._scores: FloatArray | None = None  # keep-scores of the current layer (recomputed after observe)
        self._pop_any: dict[tuple[int, int], FloatArray] = {}

    def fit(self, trace: RoutingTrace) -> None:
        if trace.n_moe_layers != self.n_layers or trace.n_experts != self.n_experts:
            raise ValueError(
                f"expertflow cache: training trace has {trace.n_moe_layers} layers x {trace.n_experts} "
                f"experts, the cache was built for {self.n_layers} x {self.n_experts}"
            )
        self.predictor = RoutingPathPredictor.fit(trace, horizon=self.horizon, context=self.context)

    def observe(self, layer: int, routing_rows: npt.NDArray[np.integer], now: float) -> None:
        rows = np.asarray(routing_rows, dtype=np.int64)
        if rows.ndim != 2:
            raise ValueError(f"routing rows must be [n_tokens, k], got shape {rows.shape}")
        if layer <= self._cur or any(r.shape[0] != rows.shape[0] for r in self._rows.values()):
            self._rows = {}  # a new step
            self._used[:] = False
        self._rows[layer] = rows
        self._cur = layer
        ok = rows[rows >= 0]
        self._used[layer, ok] = True
        self._scores = None

    def _on_access(self, layer: int, experts: IntArray, hits: BoolArray, now: float) -> None:
        self._tick += 1
        self.last_use[layer, experts] = self._tick

    def _on_admit(self, layer: int, experts: IntArray, now: float, prefetch: bool) -> None:
        if not prefetch:
            self._tick += 1
            self.last_use[layer, experts] = np.maximum(self.last_use[layer, experts], self._tick)

    def keep_scores(self) -> FloatArray:
        """Keep-score ``float64[n_layers, n_experts]`` of every expert now (see class docstring)."""
        if self.predictor is None:
            raise RuntimeError("expertflow cache was not trained: call fit(trace) on a training trace first")
        if self._scores is not None:
            return self._scores
        pred = self.predictor
        k = max((r.shape[1] for r in self._rows.values()), default=1)
        n_tok = max((r.shape[0] for r in self._rows.values()), default=1)
        pop_any = self._pop_any.get((k, n_tok))
        if pop_any is None:
            pop_any = _prob_any_popularity(pred.popularity, k, n_tok)
            self._pop_any[(k, n_tok)] = pop_any
        score = 0.5 * self._used + 0.5 * pop_any
        cur = self._cur
        if cur >= 0 and self._rows:
            known = np.full((n_tok, cur + 1, k), -1, dtype=np.int64)
            for layer, rows in self._rows.items():
                if layer <= cur:
                    known[:, layer, : rows.shape[1]] = rows
            for target in range(cur + 1, min(cur + self.horizon, self.n_layers - 1) + 1):
                score[target] = pred.prob_any(known, cur, target)
        dist = (np.arange(self.n_layers) - max(cur, 0)) % self.n_layers
        self._scores = score * (self.discount**dist)[:, None]
        return self._scores

    def _choose_victims(self, n: int, candidates: BoolArray, now: float, layer: int, incoming: IntArray) -> IntArray:
        keys = np.flatnonzero(candidates.ravel())
        score = self.keep_scores().ravel()[keys]
        recency = self.last_use.ravel()[keys]
        order = np.lexsort((keys, recency, score))  # lowest score, then least recent, then key
        return keys[order[:n]].astype(np.int64)


@REGISTRIES["prefetch"].register(
    "expertflow", "ExpertFlow: prefetch the experts the routing-path predictor expects in the next layers"
)
class ExpertFlowPrefetch(PrefetchPolicy):
    """Prefetch, at layer ``l``, the experts of layers ``l+1 .. l+horizon`` that the predictor gives
    a probability of use ``>= threshold`` for the step's tokens (from their routing at layers
    ``<= l`` only), nearest layer first, most likely first; at most ``max_per_layer`` per layer
    (default: no cap). Resident experts are skipped. Needs training (`fit`)."""

    needs_training = True

    def __init__(
        self,
        *,
        n_layers: int,
        n_experts: int,
        top_k: int,
        seed: int = 0,
        horizon: int = 1,
        context: int = 2,
        threshold: float = 0.5,
        max_per_layer: int | None = None,
    ) -> None:
        super().__init__(n_layers=n_layers, n_experts=n_experts, top_k=top_k, seed=seed)
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if max_per_layer is not None and max_per_layer <= 0:
            raise ValueError(f"max_per_layer must be > 0 or None, got {max_per_layer}")
        self.horizon = int(horizon)
        self.context = int(context)
        self.threshold = float(threshold)
        self.max_per_layer = max_per_layer
        self.predictor: RoutingPathPredictor | None = None

    def fit(self, trace: RoutingTrace) -> None:
        if trace.n_moe_layers != self.n_layers or trace.n_experts != self.n_experts:
            raise ValueError(
                f"expertflow prefetch: training trace has {trace.n_moe_layers} layers x "
                f"{trace.n_experts} experts, the policy was built for {self.n_layers} x {self.n_experts}"
            )
        self.predictor = RoutingPathPredictor.fit(trace, horizon=self.horizon, context=self.context)

    def prefetch(self, ctx: PrefetchContext) -> IntArray:
        if self.predictor is None:
            raise RuntimeError("expertflow prefetch was not trained: call fit(trace) on a training trace first")
        routing = np.asarray(ctx.step_routing, dtype=np.int64)
        if routing.shape[0] == 0:
            return np.zeros((0, 2), dtype=np.int64)
        known = routing[:, : ctx.layer + 1, :]
        out: list[npt.NDArray[np.int64]] = []
        for target in range(ctx.layer + 1, min(ctx.layer + self.horizon, self.n_layers - 1) + 1):
            p = self.predictor.prob_any(known, ctx.layer, target)
            want = np.flatnonzero((p >= self.threshold) & ~np.asarray(ctx.resident[target], dtype=bool))
            want = want[np.argsort(-p[want], kind="stable")]
            if self.max_per_layer is not None:
                want = want[: self.max_per_layer]
            out.append(np.stack([np.full(want.size, target, dtype=np.int64), want.astype(np.int64)], axis=1))
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


__all__ = ["ExpertFlowCache", "ExpertFlowPrefetch", "PredictionAccuracy", "RoutingPathPredictor", "split_by_request"]
