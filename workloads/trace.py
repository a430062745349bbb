"""`RoutingTrace`: columnar routing records and the canonical versioned ``.npz`` format.

A trace holds, for every token (row) and every MoE layer (column), the ``k`` experts it was
routed to: ``experts[int16, tokens x moe_layers x k]`` with ``-1`` for "no expert" (a null expert,
a dynamic top-p choice that used fewer than k, a dropped token or a layer the source did not
record). Optional ``weights[float32, same shape]`` are the (renormalised) gate weights.
``request[int32]`` and ``position[int32]`` say which request a token belongs to and where in it;
``phase[uint8]`` is 0 for prefill and 1 for decode. ``meta`` is a JSON-able dict with at least
``model``, ``n_experts``, ``top_k``, ``source`` and ``licence``; importers and the tracer add
``moe_layer_ids`` (the model's decoder-layer number of each MoE-layer column, e.g. 1..26 for
DeepSeek-V2-Lite whose layer 0 is dense; validated when it is a list; traces written before it
existed may hold a descriptive string there instead).

File format (version 1): an uncompressed-or-compressed ``.npz`` with arrays ``experts``,
``request``, ``position``, ``phase``, optionally ``weights``, and ``meta_json`` (a 0-d unicode
array holding ``json.dumps(meta)``) plus ``format_version`` (int). Loading never unpickles
(``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 1
PREFILL: int = 0
DECODE: int = 1


class TraceFormatError(ValueError):
    """A trace file or array set is malformed; the message names the file and what was expected.

    ``detail`` is the message without its leading "where" (file or source), so that a caller that
    knows a better name for the input (the path the user gave) can re-word it.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = message if detail is None else detail


def _fail(where: str, detail: str) -> TraceFormatError:
    return TraceFormatError(f"{where}: {detail}", detail)


def _check_distinct(experts: npt.NDArray[np.int16], where: str) -> None:
    """Raise `TraceFormatError` if a token lists the same expert twice at one layer (``-1`` ignored).

    Vectorised: for small ``k`` every slot pair is compared on slot-major copies (cheaper than a
    sort along ``k``), and only candidate cells are then checked for -1 pairs; for larger ``k``
    the slots are sorted and neighbours compared.
    """
    n, n_l, k = experts.shape
    if k < 2 or n == 0:
        return
    if k <= 8:
        x = np.ascontiguousarray(np.moveaxis(experts, 2, 0)).reshape(k, -1)
        cand = np.zeros(x.shape[1], dtype=bool)
        for i in range(k - 1):
            for j in range(i + 1, k):
                cand |= x[i] == x[j]
        cells = np.flatnonzero(cand)
        if not cells.size:
            return
        rows = experts.reshape(-1, k)[cells]
    else:
        cells = np.arange(n * n_l)
        rows = experts.reshape(-1, k)
    srt = np.sort(rows, axis=1)
    dup = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1)
    if dup.any():
        first = int(np.argmax(dup))
        tok, layer = divmod(int(cells[first]), n_l)
        row = experts[tok, layer]
        vals, counts = np.unique(row[row >= 0], return_counts=True)
        raise _fail(
            where,
            f"token {tok}, layer {layer} lists expert {int(vals[counts > 1][0])} more than once "
            f"(experts {row.tolist()}); expected distinct experts per token and layer (-1 for none)",
        )


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """Per-token, per-MoE-layer expert choices (see module docstring for the layout).

    Invariants checked at construction: ``experts`` is 3-D int16 with values in
    ``[-1, n_experts)``; per-token arrays have ``tokens`` rows; ``weights`` (if any) has the same
    shape as ``experts`` and is finite and >= 0 (no NaN, inf or negative gate weight); ``meta`` has
    ``n_experts`` and ``top_k``. A trace may hold 0 tokens (an empty selection); `load` refuses a
    0-token file, naming it.
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
            raise _fail(where, f"experts must be 3-D (tokens, moe_layers, k), got shape {e.shape}")
        if not np.issubdtype(e.dtype, np.integer):
            raise _fail(where, f"experts must be integers, got {e.dtype}")
        for key in ("n_experts", "top_k"):
            if key not in self.meta:
                raise _fail(where, f"meta lacks {key!r}")
        for key in ("n_experts", "top_k"):
            v = self.meta[key]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise _fail(where, f"meta {key!r} is {v!r}, expected a positive integer")
        n_exp = int(self.meta["n_experts"])
        if e.size and (e.min() < -1 or e.max() >= n_exp):
            bad = np.argwhere((e < -1) | (e >= n_exp))[0]
            raise _fail(
                where, f"expert id {int(e[tuple(bad)])} at token {bad[0]}, layer {bad[1]} is outside [-1, {n_exp})"
            )
        object.__setattr__(self, "experts", e.astype(np.int16, copy=False))
        _check_distinct(self.experts, where)
        n = e.shape[0]
        for name, dtype in (("request", np.int32), ("position", np.int32), ("phase", np.uint8)):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n,):
                raise _fail(where, f"{name} must have shape ({n},), got {arr.shape}")
            object.__setattr__(self, name, arr.astype(dtype, copy=False))
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float32)
            if w.shape != e.shape:
                raise _fail(where, f"weights shape {w.shape} != experts shape {e.shape}")
            bad_w = ~np.isfinite(w) | (w < 0)
            if bad_w.any():
                tok, layer, slot = (int(i) for i in np.argwhere(bad_w)[0])
                raise _fail(
                    where,
                    f"gate weight {float(w[tok, layer, slot])} at token {tok}, layer {layer}, slot {slot} "
                    f"({int(bad_w.sum())} such); expected finite weights >= 0",
                )
            object.__setattr__(self, "weights", w)
        ids = self.meta.get("moe_layer_ids")
        if (
            ids is not None
            and not isinstance(ids, str)
            and (
                not isinstance(ids, (list, tuple))
                or len(ids) != e.shape[1]
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
            )
        ):
            raise _fail(
                where,
                f"meta 'moe_layer_ids' is {ids!r}, expected {e.shape[1]} integers (the model's layer "
                "number of each MoE-layer column)",
            )

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
        return (
            f"RoutingTrace(model={self.meta.get('model')!r}, tokens={self.n_tokens}, "
            f"moe_layers={self.n_moe_layers}, n_experts={self.n_experts}, top_k={self.top_k}, "
            f"requests={self.n_requests})"
        )

    # ------------------------------------------------------------- selection
    def select(self, rows: npt.ArrayLike) -> RoutingTrace:
        """A new trace of the given token rows (boolean mask or indices), meta copied."""
        idx = np.asarray(rows)
        return RoutingTrace(
            experts=self.experts[idx],
            request=self.request[idx],
            position=self.position[idx],
            phase=self.phase[idx],
            meta=dict(self.meta),
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
            self.weights is not None and other.weights is not None and np.array_equal(self.weights, other.weights)
        )
        return (
            np.array_equal(self.experts, other.experts)
            and np.array_equal(self.request, other.request)
            and np.array_equal(self.position, other.position)
            and np.array_equal(self.phase, other.phase)
            and same_w
            and self.meta == other.meta
        )

    # ------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
        """Write the canonical ``.npz`` (format version `FORMAT_VERSION`); returns the path."""
        p = Path(path)
        arrays: dict[str, Any] = {
            "experts": self.experts,
            "request": self.request,
            "position": self.position,
            "phase": self.phase,
            "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
            "format_version": np.array(FORMAT_VERSION),
        }
        if self.weights is not None:
            arrays["weights"] = self.weights
        with open(p, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RoutingTrace:
        """Read a canonical ``.npz``; raises `TraceFormatError` naming the file on any defect.

        Every message starts with the path as given and says what was expected: a file that is
        not a zip archive (a ``.npy`` array, JSON, a pickle, text), a damaged archive (bad CRC,
        corrupt compressed data, truncation), an archive that lacks the trace arrays or holds
        Python objects (never unpickled), a bad ``meta_json``, or arrays that break the trace's
        invariants (named as in `RoutingTrace`, but with this path instead of the recorded source).
        """
        p = Path(path)
        expected = "expected a routing trace .npz written by RoutingTrace.save or `codesign trace import`"
        if not p.exists():
            raise TraceFormatError(f"{p}: no such file")
        if p.is_dir():
            raise TraceFormatError(f"{p}: is a directory; {expected}")
        try:
            with open(p, "rb") as fh:
                head = fh.read(8)
        except OSError as exc:
            raise TraceFormatError(f"{p}: cannot read ({exc.strerror})") from exc
        if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
            if _is_aggregated(p):
                raise TraceFormatError(
                    f"{p}: aggregated routing counts (per-layer expert load and layer-pair counts, no per-token "
                    "routing): they shape the embedded default workload of a model known only by counts "
                    "(workloads.defaults.process_from_counts, e.g. default:olmoe-1b-7b); `codesign trace stats` "
                    f"and `trace fit` read them, other commands need per-token routing: {expected}"
                )
            raise TraceFormatError(f"{p}: not a .npz routing trace ({_describe_head(head)}); {expected}")
        key = "(archive index)"
        try:
            with np.load(p, allow_pickle=False) as z:
                files = set(z.files)
                missing = {"experts", "request", "position", "phase", "meta_json", "format_version"} - files
                if missing:
                    raise TraceFormatError(
                        f"{p}: not a routing trace .npz, missing arrays {sorted(missing)}; {expected}"
                    )
                key = "format_version"
                fv = z["format_version"]
                if fv.shape != () or not np.issubdtype(fv.dtype, np.integer):
                    raise TraceFormatError(f"{p}: format_version is {fv!r}, expected an integer scalar")
                version = int(fv)
                if version > FORMAT_VERSION:
                    raise TraceFormatError(
                        f"{p}: format_version {version} is newer than this reader ({FORMAT_VERSION}); "
                        "upgrade moe-codesign"
                    )
                key = "meta_json"
                meta_text = z["meta_json"]
                data: dict[str, Any] = {}
                for key in ("experts", "request", "position", "phase"):
                    data[key] = z[key]
                key = "weights"
                weights = z["weights"] if "weights" in files else None
        except TraceFormatError:
            raise
        except ValueError as exc:
            if "pickle" in str(exc):
                raise TraceFormatError(
                    f"{p}: array {key!r} holds Python objects (pickled data), which are never loaded; "
                    f"this is not a .npz routing trace ({expected})"
                ) from exc
            raise TraceFormatError(f"{p}: array {key!r} is unreadable ({exc}); {expected}") from exc
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise TraceFormatError(
                f"{p}: damaged or truncated .npz, array {key!r} cannot be read ({_exc_name(exc)}: {exc}); {expected}"
            ) from exc
        if meta_text.shape != () or meta_text.dtype.kind != "U":
            raise TraceFormatError(
                f"{p}: meta_json is a {meta_text.dtype} array of shape {meta_text.shape}, "
                "expected a 0-d unicode string holding a JSON object"
            )
        try:
            meta = json.loads(str(meta_text))
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{p}: meta_json is not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(meta, dict):
            raise TraceFormatError(f"{p}: meta_json holds a {type(meta).__name__}, expected a JSON object")
        meta.setdefault("source", str(p))
        try:
            trace = cls(meta=meta, weights=weights, **data)
        except TraceFormatError as exc:
            raise TraceFormatError(f"{p}: {exc.detail}", exc.detail) from exc
        if trace.n_tokens == 0:
            raise TraceFormatError(f"{p}: the trace holds 0 tokens; expected a routing trace with at least one token")
        return trace


def _is_aggregated(path: Path) -> bool:
    """Whether ``path`` is an `AggregatedRoutingStats` JSON file (its format name near the start)."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(4096)
    except OSError:
        return False
    return b'"moe-codesign/aggregated-routing-stats"' in start


def _describe_head(head: bytes) -> str:
    """What a file that is not a zip archive looks like, from its first bytes."""
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array, not a .npz archive"
    if head[:1] == b"\x80":
        return "it looks like a Python pickle, which is never loaded"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "it looks like JSON text"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "it looks like text"
    return f"it starts with bytes {head[:4]!r}, not a zip archive"


def _exc_name(exc: BaseException) -> str:
    return "zlib error" if isinstance(exc, zlib.error) else type(exc).__name__
