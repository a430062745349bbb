"""`AggregatedRoutingStats`: routing statistics that come as counts, not as per-token traces.

The OLMoE authors published, for OLMoE-1B-7B (and its SFT/DPO variants) and Mixtral-8x7B base,
expert load counts at a few layers and rank-aligned cross-layer pair counts, summed over about
209k tokens per text domain (``shared/traces/olmoe-mixtral-routing-stats/counts.json``, see
``shared/traces/README.md``). This module holds such counts in one frozen object with:

- ``load[layer]``: int64 ``[n_experts]``, how many times each expert was among a token's top-k at
  that layer (so ``load[layer].sum() == top_k * tokens``);
- ``load_top1[layer]``: the same counting only each token's first choice;
- ``pairs[(la, lb)]``: int64 ``[n_experts, n_experts]``, ``pairs[a, b]`` = number of (token, rank)
  where the rank-th choice at layer ``la`` was ``a`` and the rank-th choice at ``lb`` was ``b``
  (rank-aligned, as the source computed them: it is not the full top-k x top-k co-occurrence);
- ``pairs_top1[(la, lb)]``: the same for the first choices only.

Derived: `load_distribution` (share of routed slots per expert), `conditional` (P(b at lb | a at la),
rows normalised), `load_cv` (coefficient of variation of the load, a skew measure).

JSON format (version 1), written by `save` and read by `load`::

    {"format": "moe-codesign/aggregated-routing-stats", "version": 1, "model": ..., "n_experts": ...,
     "top_k": ..., "domain": ..., "domains": [...], "source_model": ..., "source": ..., "licence": ...,
     "load": {"0": [...], ...}, "load_top1": {...}, "pairs": {"0,7": [[...], ...]}, "pairs_top1": {...}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from workloads.trace import TraceFormatError

FORMAT_NAME = "moe-codesign/aggregated-routing-stats"
FORMAT_VERSION = 1

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _freeze(arr: npt.ArrayLike, shape: tuple[int, ...], what: str) -> IntArray:
    a = np.array(arr, dtype=np.int64)
    if a.shape != shape:
        raise ValueError(f"AggregatedRoutingStats: {what} has shape {a.shape}, expected {shape}")
    if a.size and a.min() < 0:
        raise ValueError(f"AggregatedRoutingStats: {what} has a negative count ({int(a.min())})")
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class AggregatedRoutingStats:
    """Per-layer expert load counts and cross-layer pair counts of one model on one domain.

    Invariants (checked at construction): ``n_experts >= 1``, ``1 <= top_k <= n_experts``; every
    ``load``/``load_top1`` array has shape ``[n_experts]`` and every ``pairs``/``pairs_top1``
    array ``[n_experts, n_experts]``, all non-negative integers. Arrays are made read-only.
    Layers are the model's layer indices (0-based, as in the source).
    """

    model: str
    n_experts: int
    top_k: int
    domain: str
    load: Mapping[int, IntArray]
    pairs: Mapping[tuple[int, int], IntArray] = field(default_factory=dict)
    load_top1: Mapping[int, IntArray] = field(default_factory=dict)
    pairs_top1: Mapping[tuple[int, int], IntArray] = field(default_factory=dict)
    domains: tuple[str, ...] = ()
    source_model: str = ""
    source: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.n_experts, int) or self.n_experts < 1:
            raise ValueError(f"AggregatedRoutingStats: n_experts must be a positive int, got {self.n_experts!r}")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"AggregatedRoutingStats: top_k must be in [1, {self.n_experts}], got {self.top_k!r}")
        n = self.n_experts
        object.__setattr__(self, "load", {int(k): _freeze(v, (n,), f"load[{k}]") for k, v in self.load.items()})
        object.__setattr__(
            self, "load_top1", {int(k): _freeze(v, (n,), f"load_top1[{k}]") for k, v in self.load_top1.items()}
        )
        object.__setattr__(
            self, "pairs", {(int(a), int(b)): _freeze(v, (n, n), f"pairs[{a},{b}]") for (a, b), v in self.pairs.items()}
        )
        object.__setattr__(
            self,
            "pairs_top1",
            {(int(a), int(b)): _freeze(v, (n, n), f"pairs_top1[{a},{b}]") for (a, b), v in self.pairs_top1.items()},
        )
        object.__setattr__(self, "domains", tuple(self.domains))

    # ---------------------------------------------------------------- access
    @property
    def layers(self) -> list[int]:
        """Layers with load counts, ascending."""
        return sorted(self.load)

    @property
    def layer_pairs(self) -> list[tuple[int, int]]:
        """Layer pairs with pair counts, ascending."""
        return sorted(self.pairs)

    def _load(self, layer: int, top1: bool) -> IntArray:
        table = self.load_top1 if top1 else self.load
        if layer not in table:
            kind = "load_top1" if top1 else "load"
            raise KeyError(
                f"{self.model}/{self.domain}: no {kind} counts for layer {layer}; available: {sorted(table)}"
            )
        return table[layer]

    def _pairs(self, la: int, lb: int, top1: bool) -> IntArray:
        table = self.pairs_top1 if top1 else self.pairs
        if (la, lb) not in table:
            kind = "pairs_top1" if top1 else "pairs"
            raise KeyError(
                f"{self.model}/{self.domain}: no {kind} counts for layers ({la}, {lb}); available: {sorted(table)}"
            )
        return table[(la, lb)]

    def tokens(self, layer: int) -> int:
        """Number of tokens counted at ``layer`` (top-1 counts when present, else top-k sum / top_k)."""
        if layer in self.load_top1:
            return int(self.load_top1[layer].sum())
        return int(self._load(layer, False).sum()) // self.top_k

    def load_distribution(self, layer: int, *, top1: bool = False) -> FloatArray:
        """Share of routed slots taken by each expert at ``layer`` (sums to 1; ``[n_experts]``).

        With ``top1=True`` only first choices are counted. Raises `KeyError` for a layer without
        counts and `ValueError` when the layer has no counts at all (all zero).
        """
        c = self._load(layer, top1).astype(np.float64)
        total = c.sum()
        if total <= 0:
            raise ValueError(f"{self.model}/{self.domain}: layer {layer} has zero counts")
        return c / total

    def load_cv(self, layer: int, *, top1: bool = False) -> float:
        """Coefficient of variation (std / mean) of the expert load at ``layer``; 0 = perfectly balanced."""
        p = self.load_distribution(layer, top1=top1)
        return float(p.std() / p.mean())

    def conditional(self, la: int, lb: int, *, top1: bool = False) -> FloatArray:
        """P(expert b at layer ``lb`` | expert a at layer ``la``) as ``[n_experts, n_experts]``.

        Rows are normalised pair counts (rank-aligned pairs, see module docstring). A row whose
        expert ``a`` was never chosen at ``la`` has no information and is NaN (never invented).
        """
        c = self._pairs(la, lb, top1).astype(np.float64)
        rows = c.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(rows > 0, c / np.where(rows > 0, rows, 1.0), np.nan)
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-able statistics of the counts (what ``codesign trace stats`` prints for a counts
        file): shape keys, and per measured layer the tokens counted and the load skew (Gini,
        normalised entropy, max / mean, as in `workloads.stats.load_skew`), per layer pair the
        mutual information (bits) and mean top-1 conditional share of the rank-aligned pairs."""
        from workloads import stats  # stats imports the trace module only; kept local for import order

        layers = self.layers
        skew = stats.load_skew(np.stack([self.load[la] for la in layers])) if layers else None
        pair_list = self.layer_pairs
        joints = np.stack([self.pairs[pr].astype(np.float64) for pr in pair_list]) if pair_list else None
        top1: list[float | None] = []
        for pr in pair_list:
            cond = self.conditional(*pr)
            w = self.pairs[pr].sum(axis=1).astype(np.float64)
            ok = np.isfinite(cond).all(axis=1) & (w > 0)
            top1.append(float((cond[ok].max(axis=1) * w[ok]).sum() / w[ok].sum()) if ok.any() else None)
        return {
            "model": self.model,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "domain": self.domain,
            "domains": list(self.domains),
            "source": self.source,
            "layers": layers,
            "tokens": [self.tokens(la) for la in layers],
            "load": {} if skew is None else skew.to_dict(),
            "layer_pairs": [list(pr) for pr in pair_list],
            "pair_mutual_information_bits": [] if joints is None else stats.mutual_information(joints).tolist(),
            "pair_top1_conditional": top1,
        }

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-able dict in the version-1 format (see module docstring)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": self.model,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "domain": self.domain,
            "domains": list(self.domains),
            "source_model": self.source_model,
            "source": self.source,
            "licence": self.licence,
            "load": {str(k): v.tolist() for k, v in sorted(self.load.items())},
            "load_top1": {str(k): v.tolist() for k, v in sorted(self.load_top1.items())},
            "pairs": {f"{a},{b}": v.tolist() for (a, b), v in sorted(self.pairs.items())},
            "pairs_top1": {f"{a},{b}": v.tolist() for (a, b), v in sorted(self.pairs_top1.items())},
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any], *, where: str = "<json>") -> AggregatedRoutingStats:
        """Inverse of `to_json_dict`; raises `TraceFormatError` naming ``where`` and the bad field."""
        if d.get("format") != FORMAT_NAME:
            raise TraceFormatError(f"{where}: field 'format' is {d.get('format')!r}, expected {FORMAT_NAME!r}")
        version = d.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise TraceFormatError(f"{where}: field 'version' is {version!r}, expected an int <= {FORMAT_VERSION}")
        for key in ("model", "n_experts", "top_k", "domain", "load"):
            if key not in d:
                raise TraceFormatError(f"{where}: missing field {key!r}")

        def layer_key(s: str, fld: str) -> int:
            try:
                return int(s)
            except ValueError:
                raise TraceFormatError(f"{where}: field {fld!r} has key {s!r}, expected a layer number") from None

        def pair_key(s: str, fld: str) -> tuple[int, int]:
            parts = s.split(",")
            try:
                if len(parts) != 2:
                    raise ValueError
                return int(parts[0]), int(parts[1])
            except ValueError:
                raise TraceFormatError(f"{where}: field {fld!r} has key {s!r}, expected 'la,lb'") from None

        try:
            return cls(
                model=str(d["model"]),
                n_experts=int(d["n_experts"]),
                top_k=int(d["top_k"]),
                domain=str(d["domain"]),
                domains=tuple(str(x) for x in d.get("domains", [])),
                source_model=str(d.get("source_model", "")),
                source=str(d.get("source", "")),
                licence=str(d.get("licence", "")),
                load={layer_key(k, "load"): v for k, v in d["load"].items()},
                load_top1={layer_key(k, "load_top1"): v for k, v in d.get("load_top1", {}).items()},
                pairs={pair_key(k, "pairs"): v for k, v in d.get("pairs", {}).items()},
                pairs_top1={pair_key(k, "pairs_top1"): v for k, v in d.get("pairs_top1", {}).items()},
            )
        except (ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, TraceFormatError):
                raise
            raise TraceFormatError(f"{where}: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the version-1 JSON file; returns the path."""
        p = Path(path)
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(self.to_json_dict(), fh)
        return p

    @classmethod
    def load_json(cls, path: str | os.PathLike[str]) -> AggregatedRoutingStats:
        """Read a file written by `save`; raises `TraceFormatError` naming the file on any defect."""
        p = Path(path)
        if not p.is_file():
            raise TraceFormatError(f"{p}: no such file")
        with open(p, "rb") as fh:
            head = fh.read(1)
        if head == b"\x80":
            raise TraceFormatError(f"{p}: looks like a Python pickle (first byte 0x80); pickles are never loaded")
        try:
            with open(p, encoding="utf-8") as fh:
                d = json.load(fh)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{p}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        except UnicodeDecodeError as exc:
            raise TraceFormatError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        if not isinstance(d, dict):
            raise TraceFormatError(f"{p}: expected a JSON object at the top, got {type(d).__name__}")
        return cls.from_json_dict(d, where=str(p))

    def equals(self, other: AggregatedRoutingStats) -> bool:
        """Exact equality of every field and array (used by round-trip tests)."""

        def same(a: Mapping[Any, IntArray], b: Mapping[Any, IntArray]) -> bool:
            return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

        return (
            self.model == other.model
            and self.n_experts == other.n_experts
            and self.top_k == other.top_k
            and self.domain == other.domain
            and self.domains == other.domains
            and self.source_model == other.source_model
            and self.source == other.source
            and self.licence == other.licence
            and same(self.load, other.load)
            and same(self.load_top1, other.load_top1)
            and same(self.pairs, other.pairs)
            and same(self.pairs_top1, other.pairs_top1)
        )

    def __repr__(self) -> str:
        return (
            f"AggregatedRoutingStats(model={self.model!r}, domain={self.domain!r}, n_experts={self.n_experts}, "
            f"top_k={self.top_k}, layers={self.layers}, pairs={self.layer_pairs})"
        )


def process_from_aggregated(counts: AggregatedRoutingStats, *, seed: int = 0) -> Any:
    """A `workloads.process.RoutingProcess` for the counted model: per-layer popularity from the
    counts (nearest measured layer for the others), inter-layer affinity and temporal reuse from
    the embedded default workload of the same model preset, matched by popularity rank
    (`workloads.defaults.process_from_counts`, which states the assumption). Raises
    `workloads.UnknownPresetError` when ``counts.model`` is no preset."""
    from workloads.defaults import default_process, process_from_counts  # defaults imports this module
    from workloads.model import get_model

    spec = get_model(counts.model)
    base = default_process(spec.name, seed=seed)
    return process_from_counts(counts, base, n_layers=spec.n_moe_layers, seed=seed, model=spec.name)


def looks_like_counts(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a readable file whose start names the `AggregatedRoutingStats` format
    (as `AggregatedRoutingStats.save` writes it); False for anything else, including no file."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(4096)
    except OSError:
        return False
    return f'"{FORMAT_NAME}"'.encode() in start
