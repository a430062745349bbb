"""`RoutingTrace`: columnar routing records and the canonical versioned ``.npz`` format.

A trace holds, for every token (row) and every MoE layer (column), the ``k`` experts it was
routed to: ``experts[int16, tokens x moe_layers x k]`` with ``-1`` for "no expert" (a null expert,
a dynamic top-p choice that used fewer than k, a dropped token or a layer the source did not
record). Optional ``weights[float32, same shape]`` are the (renormalised) gate weights.
``request[int32]`` and ``position[int32]`` say which request a token belongs to and where in it;
``phase[uint8]`` is 0 for prefill and 1 for decode. ``meta`` is a JSON-able dict with at least
``model``, ``n_experts``, ``top_k``, ``source`` and ``licence``.

File format (version 1): an uncompressed-or-compressed ``.npz`` with arrays ``experts``,
``request``, ``position``, ``phase``, optionally ``weights``, and ``meta_json`` (a 0-d unicode
array holding ``json.dumps(meta)``) plus ``format_version`` (int). Loading never unpickles
(``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 1
PREFILL: int = 0
DECODE: int = 1


class TraceFormatError(ValueError):
    """A trace file or array set is malformed; the message names the file and what was expected."""


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """Per-token, per-MoE-layer expert choices (see module docstring for the layout).

    Invariants checked at construction: ``experts`` is 3-D int16 with values in
    ``[-1, n_experts)``; per-token arrays have ``tokens`` rows; ``weights`` (if any) has the same
    shape as ``experts``; ``meta`` has ``n_experts`` and ``top_k``.
    """

    experts: npt.NDArray[np.int16]
    request: npt.NDArray[np.int32]
    position: npt.NDArray[np.int32]
    phase: npt.NDArray[np.uint8]
    meta: dict[str, Any] = field(default_factory=dict)
    weights: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        where = self.meta.get("source", "<trace>")
        e = np.asarray(self.experts)
        if e.ndim != 3:
            raise TraceFormatError(f"{where}: experts must be 3-D (tokens, moe_layers, k), got shape {e.shape}")
        if not np.issubdtype(e.dtype, np.integer):
            raise TraceFormatError(f"{where}: experts must be integers, got {e.dtype}")
        for key in ("n_experts", "top_k"):
            if key not in self.meta:
                raise TraceFormatError(f"{where}: meta lacks {key!r}")
        n_exp = int(self.meta["n_experts"])
        if e.size and (e.min() < -1 or e.max() >= n_exp):
            bad = np.argwhere((e < -1) | (e >= n_exp))[0]
            raise TraceFormatError(
                f"{where}: expert id {int(e[tuple(bad)])} at token {bad[0]}, layer {bad[1]} is outside "
                f"[-1, {n_exp})"
            )
        object.__setattr__(self, "experts", e.astype(np.int16, copy=False))
        n = e.shape[0]
        for name, dtype in (("request", np.int32), ("position", np.int32), ("phase", np.uint8)):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n,):
                raise TraceFormatError(f"{where}: {name} must have shape ({n},), got {arr.shape}")
            object.__setattr__(self, name, arr.astype(dtype, copy=False))
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float32)
            if w.shape != e.shape:
                raise TraceFormatError(f"{where}: weights shape {w.shape} != experts shape {e.shape}")
            object.__setattr__(self, "weights", w)

    # ------------------------------------------------------------- shape info
    @property
    def n_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def n_moe_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def k(self) -> int:
        """Slots per token per layer (the top-k the trace was recorded with)."""
        return int(self.experts.shape[2])

    @property
    def n_experts(self) -> int:
        return int(self.meta["n_experts"])

    @property
    def top_k(self) -> int:
        return int(self.meta["top_k"])

    @property
    def n_requests(self) -> int:
        return int(np.unique(self.request).size) if self.n_tokens else 0

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"RoutingTrace(model={self.meta.get('model')!r}, tokens={self.n_tokens}, "
                f"moe_layers={self.n_moe_layers}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"requests={self.n_requests})")

    # ------------------------------------------------------------- selection
    def select(self, rows: npt.ArrayLike) -> RoutingTrace:
        """A new trace of the given token rows (boolean mask or indices), meta copied."""
        idx = np.asarray(rows)
        return RoutingTrace(
            experts=self.experts[idx], request=self.request[idx], position=self.position[idx],
            phase=self.phase[idx], meta=dict(self.meta),
            weights=None if self.weights is None else self.weights[idx],
        )

    def select_requests(self, request_ids: npt.ArrayLike) -> RoutingTrace:
        """Tokens of the given request ids, in trace order."""
        return self.select(np.isin(self.request, np.asarray(request_ids)))

    @staticmethod
    def concat(traces: list[RoutingTrace]) -> RoutingTrace:
        """Concatenate traces of the same shape; meta of the first is kept."""
        if not traces:
            raise ValueError("concat needs at least one trace")
        shapes = {t.experts.shape[1:] for t in traces}
        if len(shapes) != 1:
            raise TraceFormatError(f"cannot concatenate traces of different (layers, k): {sorted(shapes)}")
        has_w = all(t.weights is not None for t in traces)
        return RoutingTrace(
            experts=np.concatenate([t.experts for t in traces]),
            request=np.concatenate([t.request for t in traces]),
            position=np.concatenate([t.position for t in traces]),
            phase=np.concatenate([t.phase for t in traces]),
            meta=dict(traces[0].meta),
            weights=np.concatenate([t.weights for t in traces]) if has_w else None,
        )

    def equals(self, other: RoutingTrace) -> bool:
        """Exact equality of arrays and meta (used by round-trip tests)."""
        same_w = (self.weights is None and other.weights is None) or (
            self.weights is not None and other.weights is not None
            and np.array_equal(self.weights, other.weights)
        )
        return (np.array_equal(self.experts, other.experts)
                and np.array_equal(self.request, other.request)
                and np.array_equal(self.position, other.position)
                and np.array_equal(self.phase, other.phase)
                and same_w and self.meta == other.meta)

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
        """Write the canonical ``.npz`` (format version `FORMAT_VERSION`); returns the path."""
        p = Path(path)
        arrays: dict[str, Any] = {
            "experts": self.experts, "request": self.request, "position": self.position,
            "phase": self.phase, "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
            "format_version": np.array(FORMAT_VERSION),
        }
        if self.weights is not None:
            arrays["weights"] = self.weights
        with open(p, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RoutingTrace:
        """Read a canonical ``.npz``; raises `TraceFormatError` naming the file on any defect."""
        p = Path(path)
        if not p.exists():
            raise TraceFormatError(f"{p}: no such file")
        try:
            with np.load(p, allow_pickle=False) as z:
                files = set(z.files)
                missing = {"experts", "request", "position", "phase", "meta_json", "format_version"} - files
                if missing:
                    raise TraceFormatError(f"{p}: not a routing trace .npz, missing {sorted(missing)}")
                version = int(z["format_version"])
                if version > FORMAT_VERSION:
                    raise TraceFormatError(
                        f"{p}: format_version {version} is newer than this reader ({FORMAT_VERSION})")
                meta = json.loads(str(z["meta_json"]))
                data = {k: z[k] for k in ("experts", "request", "position", "phase")}
                weights = z["weights"] if "weights" in files else None
        except TraceFormatError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:  # zip/npy/JSON defects
            raise TraceFormatError(f"{p}: unreadable routing trace ({type(exc).__name__}: {exc})") from exc
        meta.setdefault("source", str(p))
        try:
            return cls(meta=meta, weights=weights, **data)
        except TraceFormatError as exc:
            raise TraceFormatError(f"{p}: {exc}") from exc
