"""Importers of real routing data, registered by format name.

``import_trace(fmt, paths, **options)`` reads files (or directories of them) in one of the
formats below and returns a `RoutingTrace` or, for aggregated counts, an
`AggregatedRoutingStats`. The formats are those of ``shared/traces/`` (see its README):

``mixtral-jsonl``
    ``*_routing.jsonl`` of Mixtral-8x7B-Instruct (github.com/Mario928/speculative-moe): one JSON
    object per (problem, decode token, layer) with ``experts`` (highest gate first) and
    ``gating_probs`` (renormalised). Every (dataset, problem_id) pair becomes a request, numbered
    0.. in order of first appearance (files in the order given, a directory sorted by name);
    tokens are decode tokens (phase 1), sorted by ``token_idx``, which becomes ``position`` (the
    decode step; the prompt length is not in the routing file). Tokens lacking some layers are
    always reported through ``logging.warning``; ``missing="mark"`` (default) keeps them with -1
    in the missing layers (``meta["incomplete_tokens"]`` lists them), ``missing="drop"`` drops them.
``deepseek-csv``
    ``prompt_NNNN_data.csv`` of DeepSeek-V2-Lite-Chat (github.com/ngavhane/moe-beyond): each file is
    one request (request id = NNNN), prefill tokens (phase 0) at positions 0..; ``Layer ID`` 1..26
    maps to MoE-layer column 0..25
    (``meta["moe_layer_ids"]`` keeps 1..26); the 6 ids are stored in file order (not score order; there are
    no weights) and ``meta["expert_order"]`` says so.
``olmoe-counts``
    ``counts.json`` of the OLMoE paper (github.com/allenai/OLMoE): aggregated counts, returned as
    `AggregatedRoutingStats` (options ``model`` = olmoe | olmoe-sft | olmoe-dpo | mistral and
    ``domain`` = a domain name or "all", the sum over the domains every kind of count has).

``table``
    The generic tabular format, for any model: one row per (token, layer) in CSV (``*.csv``), JSON
    Lines (``*.jsonl``) or Parquet (``*.parquet``, needs ``pyarrow``). Columns:

    - ``request`` (int): request id; ``position`` (int >= 0): the token's index in its request
      (a request's positions must be consecutive: a gap is an error naming the file, line and
      request, since a replay would join tokens that were not adjacent; they may start above 0);
    - ``phase`` (optional): ``prefill``/``decode`` or 0/1 (default ``decode``);
    - ``layer`` (int): the model's decoder-layer number;
    - ``experts``: the token's expert ids at that layer (JSON list ``[3, 7]``; in CSV also
      ``"3 7"`` or ``"3;7"``); empty / ``null`` for a dense layer (a layer that is null in every
      row, or absent, is not an MoE layer; an MoE layer missing for some token is -1 there);
    - ``weights`` (optional): the gate weights in the same order, finite and >= 0.

    Options: ``model`` (a preset: its ``n_experts``/``top_k``) or ``n_experts`` and ``top_k``
    (``top_k`` defaults to the most ids in a row). Requests are numbered as given.

Plug-ins: a module registers more formats with ``@register_importer(name, description, pattern)``
on a function ``(files: Sequence[Path], *, option=default, ...) -> RoutingTrace`` when it is
imported. `load_plugin` imports one by module name; `load_entry_point_plugins` imports every
module advertised in the entry point group ``moe_codesign.importers`` (in a plug-in's
``pyproject.toml``: ``[project.entry-points."moe_codesign.importers"] mine = "my_pkg.importers"``);
importing this module loads the entry points once. A plug-in that fails to import raises
`PluginError` naming it; a name registered twice is an error. The registry only grows.

Every error is a `TraceFormatError` naming the file, the line (where there is one) and what was
expected. Fields are parsed as data (``json``, ``csv``, ``int``); nothing is ever ``eval``-ed or
unpickled: a file starting with the pickle protocol byte 0x80 is refused.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import io
import itertools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from workloads.aggregated import AggregatedRoutingStats
from workloads.model import get_model
from workloads.trace import DECODE, PREFILL, RoutingTrace, TraceFormatError

log = logging.getLogger(__name__)

PathArg = str | os.PathLike[str]
Imported = RoutingTrace | AggregatedRoutingStats
ImporterFunc = Callable[..., Imported]

#: Licences of the real data, from ``shared/traces/README.md`` (section "Provenance and licences").
LICENCE_MIXTRAL = (
    "no licence stated (research reference data); github.com/Mario928/speculative-moe "
    "commit 216e26eb86ee, routing_data_collected/"
)
LICENCE_DEEPSEEK = (
    "no licence stated (research reference data); github.com/ngavhane/moe-beyond "
    "commit 4dca2eacb7bc, expert_activation_scripts/training_data_eamc/"
)
LICENCE_OLMOE = "Apache-2.0; github.com/allenai/OLMoE commit 357454f4f647, scripts/routing_output/"

_PICKLE_MAGIC = b"\x80"
_TABLE_GLOBS = "*.csv|*.jsonl|*.ndjson|*.parquet"


@dataclass(frozen=True)
class _Entry:
    func: ImporterFunc
    description: str
    pattern: str  # globs used for directories, separated by "|"


_IMPORTERS: dict[str, _Entry] = {}

#: The entry-point group that plug-in distributions advertise their importer modules in.
ENTRY_POINT_GROUP = "moe_codesign.importers"


class PluginError(ImportError):
    """An importer plug-in module could not be imported (the message names it and the cause)."""


def register_importer(name: str, description: str, pattern: str) -> Callable[[ImporterFunc], ImporterFunc]:
    """Decorator registering ``func(files, *, options...) -> RoutingTrace | AggregatedRoutingStats``
    as format ``name`` (``pattern``: the glob(s), ``"|"``-separated, that pick its files in a
    directory). Called when a module is imported (this one's or a plug-in's); a duplicate name,
    or a name that is not ``[a-z0-9][a-z0-9._-]*``, is a ValueError."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise ValueError(f"importer name {name!r}: expected lower-case letters, digits, '.', '_' or '-'")

    def deco(func: ImporterFunc) -> ImporterFunc:
        if name in _IMPORTERS:
            raise ValueError(f"importer {name!r} registered twice")
        _IMPORTERS[name] = _Entry(func, description, pattern)
        return func

    return deco


_register = register_importer


def load_plugin(module_name: str) -> list[str]:
    """Import the plug-in module ``module_name`` (its import registers its formats) and return the
    names it added. Importing the same module again adds nothing (Python caches modules). Raises
    `PluginError` naming the module when it cannot be imported."""
    if not isinstance(module_name, str) or not module_name.strip():
        raise PluginError(f"importer plug-in module name must be a non-empty string, got {module_name!r}")
    before = set(_IMPORTERS)
    try:
        importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise PluginError(f"importer plug-in {module_name!r} cannot be imported: {exc}") from exc
    return sorted(set(_IMPORTERS) - before)


def load_entry_point_plugins(entry_points: Iterable[metadata.EntryPoint] | None = None) -> list[str]:
    """Import every module advertised in `ENTRY_POINT_GROUP` (or the given ``entry_points``) and
    return the format names added. A module that fails to import raises `PluginError`."""
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points is None else entry_points
    added: list[str] = []
    for ep in sorted(eps, key=lambda e: e.name):
        added += load_plugin(ep.module)
    if added:
        log.info("importer plug-ins from entry points: %s", ", ".join(added))
    return added


def importer_names() -> list[str]:
    """Names of the registered formats, sorted."""
    return sorted(_IMPORTERS)


def importer_descriptions() -> dict[str, str]:
    """Format name -> one-line description."""
    return {n: _IMPORTERS[n].description for n in importer_names()}


class UnknownFormatError(ValueError):
    """An unknown importer format name; the message lists the valid names."""


def expand_paths(fmt: str, paths: PathArg | Sequence[PathArg]) -> list[Path]:
    """Files to read: each file as given, each directory expanded to its files matching the
    format's pattern (sorted by name). Raises `TraceFormatError` for a missing path or an empty
    directory, `UnknownFormatError` for an unknown format."""
    entry = _entry(fmt)
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise TraceFormatError(f"{fmt}: no input path given")
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted({f for pat in entry.pattern.split("|") for f in p.glob(pat)})
            if not found:
                raise TraceFormatError(f"{p}: directory has no file matching {entry.pattern!r} (format {fmt})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise TraceFormatError(f"{p}: no such file or directory")
    return out


def _entry(fmt: str) -> _Entry:
    try:
        return _IMPORTERS[fmt]
    except KeyError:
        raise UnknownFormatError(f"unknown trace format {fmt!r}; valid: {', '.join(importer_names())}") from None


def import_trace(fmt: str, paths: PathArg | Sequence[PathArg], **options: Any) -> Imported:
    """Read ``paths`` (files or directories) in format ``fmt`` with format-specific ``options``.

    Returns a `RoutingTrace` (``mixtral-jsonl``, ``deepseek-csv``) or an `AggregatedRoutingStats`
    (``olmoe-counts``). Raises `UnknownFormatError` (lists the valid names), `TraceFormatError`
    (names file, line, expectation) and `TypeError` naming the valid options for an option the
    format does not take.
    """
    entry = _entry(fmt)
    valid = importer_options(fmt)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"format {fmt} takes no option {', '.join(map(repr, unknown))}; its options: {', '.join(valid) or '(none)'}"
        )
    files = expand_paths(fmt, paths)
    return entry.func(files, **options)


def importer_options(fmt: str) -> list[str]:
    """Keyword options the importer of ``fmt`` accepts (with defaults, see its docstring)."""
    params = inspect.signature(_entry(fmt).func).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


# ------------------------------------------------------------------ helpers
def _read_text(path: Path) -> str:
    """The file's text (UTF-8); refuses pickles and binary junk with a `TraceFormatError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    if data[:1] == _PICKLE_MAGIC:
        raise TraceFormatError(
            f"{path}: looks like a Python pickle (first byte 0x80); pickles are never loaded "
            "(they can run code): convert it to JSON/CSV/.npz first"
        )
    if not data.strip():
        raise TraceFormatError(f"{path}: file is empty")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TraceFormatError(f"{path}: line {line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _model_meta(model: str) -> tuple[str, int, int, int]:
    """(preset name, n_experts, top_k, n_moe_layers) of a model preset."""
    m = get_model(model)
    return m.name, m.n_experts, m.top_k, m.n_moe_layers


def _ranges(ids: Sequence[int]) -> str:
    """Compact layer list: [3, 4, 5, 9] -> "3-5,9"."""
    out: list[str] = []
    start = prev = None
    for i in [*ids, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    return ",".join(out)


def _source_of(files: Sequence[Path]) -> str:
    """One string naming the input files (a directory and a count when there are many)."""
    if len(files) == 1:
        return str(files[0])
    parents = {f.parent for f in files}
    if len(parents) == 1:
        return f"{files[0].parent}/ ({len(files)} files: {files[0].name} .. {files[-1].name})"
    return ", ".join(str(f) for f in files)


def _int_field(obj: dict[str, Any], key: str, where: str) -> int:
    if key not in obj:
        raise TraceFormatError(f"{where}: missing field {key!r}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TraceFormatError(f"{where}: field {key!r} is {v!r}, expected an integer")
    return v


# ------------------------------------------------------------ mixtral-jsonl
@_register(
    "mixtral-jsonl", "Mixtral-8x7B-Instruct decode routing, *_routing.jsonl (speculative-moe)", "*_routing.jsonl"
)
def import_mixtral_jsonl(
    files: Sequence[Path], *, missing: str = "mark", model: str = "mixtral-8x7b", n_layers: int | None = None
) -> RoutingTrace:
    """Mixtral JSONL routing files -> decode `RoutingTrace` with gate weights.

    ``missing``: "mark" keeps tokens lacking layers (-1 ids, NaN-free 0 weights there), "drop"
    removes them; both log a warning naming the tokens. ``model``: the preset whose n_experts,
    top_k and MoE-layer count the rows must fit (``n_layers`` overrides the layer count).
    """
    if missing not in ("mark", "drop"):
        raise ValueError(f"missing must be 'mark' or 'drop', got {missing!r}")
    name, n_experts, top_k, n_moe = _model_meta(model)
    n_layers = n_moe if n_layers is None else int(n_layers)
    # (dataset, problem_id) -> request id; (request, token_idx) -> {layer: (experts, probs)}
    req_ids: dict[tuple[str, int], int] = {}
    cells: dict[tuple[int, int], dict[int, tuple[list[int], list[float]]]] = {}
    first_line: dict[tuple[int, int, int], str] = {}
    for path in files:
        text = _read_text(path)
        for lineno, line in enumerate(io.StringIO(text), start=1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    "expected one JSON object per line (truncated file?)"
                ) from exc
            if not isinstance(obj, dict):
                raise TraceFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            dataset = obj.get("dataset")
            if not isinstance(dataset, str):
                raise TraceFormatError(f"{where}: field 'dataset' is {dataset!r}, expected a string")
            pid = _int_field(obj, "problem_id", where)
            layer = _int_field(obj, "layer", where)
            tok = _int_field(obj, "token_idx", where)
            if not 0 <= layer < n_layers:
                raise TraceFormatError(f"{where}: layer {layer} outside [0, {n_layers}) for {name}")
            if tok < 0:
                raise TraceFormatError(f"{where}: token_idx {tok} is negative")
            experts = obj.get("experts")
            probs = obj.get("gating_probs")
            if (
                not isinstance(experts, list)
                or len(experts) != top_k
                or not all(isinstance(e, int) and not isinstance(e, bool) for e in experts)
            ):
                raise TraceFormatError(f"{where}: field 'experts' is {experts!r}, expected {top_k} integer ids")
            bad = [e for e in experts if not 0 <= e < n_experts]
            if bad:
                raise TraceFormatError(f"{where}: expert id {bad[0]} outside [0, {n_experts}) for {name}")
            if len(set(experts)) != len(experts):
                raise TraceFormatError(f"{where}: field 'experts' {experts!r} repeats an expert")
            if (
                not isinstance(probs, list)
                or len(probs) != top_k
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in probs)
            ):
                raise TraceFormatError(f"{where}: field 'gating_probs' is {probs!r}, expected {top_k} numbers")
            if not all(0.0 <= float(x) <= 1.0 for x in probs):
                raise TraceFormatError(f"{where}: field 'gating_probs' {probs!r} not in [0, 1]")
            rid = req_ids.setdefault((dataset, pid), len(req_ids))
            cell = cells.setdefault((rid, tok), {})
            if layer in cell:
                raise TraceFormatError(
                    f"{where}: duplicate row for ({dataset!r}, problem {pid}, token {tok}, "
                    f"layer {layer}); first seen at {first_line[(rid, tok, layer)]}"
                )
            cell[layer] = (experts, [float(x) for x in probs])
            first_line[(rid, tok, layer)] = where
    keys = sorted(cells)
    n = len(keys)
    seen_layers = {layer for cell in cells.values() for layer in cell}
    if n and max(seen_layers) < n_layers - 1:
        raise TraceFormatError(
            f"{_source_of(files)}: layers seen are 0..{max(seen_layers)} but {name} has {n_layers} MoE layers; "
            "the layer count disagrees (data of another model? choose the model preset the data come from)"
        )
    ex = np.full((n, n_layers, top_k), -1, dtype=np.int16)
    w = np.zeros((n, n_layers, top_k), dtype=np.float32)
    request = np.empty(n, dtype=np.int32)
    position = np.empty(n, dtype=np.int32)
    inv_req = {v: k for k, v in req_ids.items()}
    incomplete: list[dict[str, Any]] = []
    complete = np.ones(n, dtype=bool)
    for i, (rid, tok) in enumerate(keys):
        request[i] = rid
        position[i] = tok
        cell = cells[(rid, tok)]
        for layer, (e, p) in cell.items():
            ex[i, layer] = e
            w[i, layer] = p
        if len(cell) != n_layers:
            complete[i] = False
            ds, pid = inv_req[rid]
            incomplete.append(
                {
                    "request": rid,
                    "dataset": ds,
                    "problem_id": pid,
                    "token_idx": tok,
                    "missing_layers": n_layers - len(cell),
                    "missing_layer_ids": sorted(set(range(n_layers)) - set(cell)),
                }
            )
    if incomplete:
        desc = "; ".join(
            f"{d['dataset']}/{d['problem_id']} token {d['token_idx']} lacks layers "
            f"{_ranges(d['missing_layer_ids'])} ({d['missing_layers']} of {n_layers})"
            for d in incomplete
        )
        log.warning(
            "%d of %d Mixtral tokens lack some layers (%s): %s",
            len(incomplete),
            n,
            "kept, marked -1" if missing == "mark" else "dropped",
            desc,
        )
    preset_ids = list(get_model(model).moe_layers)
    layer_ids = preset_ids if len(preset_ids) == n_layers else list(range(n_layers))
    meta: dict[str, Any] = {
        "model": name,
        "n_experts": n_experts,
        "top_k": top_k,
        "format": "mixtral-jsonl",
        "moe_layer_ids": layer_ids,
        "source": _source_of(files),
        "files": [f.name for f in files],
        "licence": LICENCE_MIXTRAL,
        "requests": {str(v): {"dataset": k[0], "problem_id": k[1]} for k, v in req_ids.items()},
        "expert_order": "highest gate first",
        "weights": "renormalised top-k gate probabilities",
        "position": "decode step index (token_idx); prompt length not recorded",
        "missing": missing,
        "incomplete_tokens": incomplete,
        "n_incomplete_tokens": len(incomplete),
    }
    trace = RoutingTrace(
        experts=ex, request=request, position=position, phase=np.full(n, DECODE, dtype=np.uint8), meta=meta, weights=w
    )
    if missing == "drop" and incomplete:
        trace = trace.select(complete)
    return trace


# ------------------------------------------------------------- deepseek-csv
_DS_HEADER = ["Layer ID", "Batch Number", "Token", "Activated Expert IDs"]


def _parse_ds_file(path: Path, n_layers: int, n_experts: int, top_k: int) -> tuple[np.ndarray, list[str]]:
    """One DeepSeek CSV -> (experts int16 [tokens, n_layers, top_k], token pieces)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise TraceFormatError(
            f"{path}: line {reader.line_num}: malformed CSV ({exc}); expected 4 fields per row (truncated file?)"
        ) from exc
    if not rows or rows[0] != _DS_HEADER:
        got = rows[0] if rows else None
        raise TraceFormatError(f"{path}: line 1: header {got!r}, expected {_DS_HEADER!r}")
    body = rows[1:]
    if not body:
        raise TraceFormatError(f"{path}: no data rows after the header")
    # Fast path: vectorised parse of all rows; any inconsistency falls back to the row-wise
    # checker, which finds the first bad line and names it.
    try:
        commas = top_k - 1
        if any(len(r) != 4 or r[3].count(",") != commas for r in body):
            raise ValueError  # a row with another number of fields or ids: let the checker name it
        layer_ids = np.array([r[0] for r in body], dtype=np.int64)
        np.array([r[1] for r in body], dtype=np.int64)  # Batch Number: validated, not used
        joined = ",".join(r[3].strip().removeprefix("[").removesuffix("]") for r in body)
        ids = np.array(joined.split(","), dtype=np.int64)
        if ids.size != top_k * len(body):
            raise ValueError
    except ValueError:
        _raise_first_bad_ds_row(path, body, n_layers, n_experts, top_k)
    ids = ids.reshape(len(body), top_k)
    if ids.min() < 0 or ids.max() >= n_experts or layer_ids.min() < 1 or layer_ids.max() > n_layers:
        _raise_first_bad_ds_row(path, body, n_layers, n_experts, top_k)
    srt = np.sort(ids, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        i = int(np.nonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))[0][0])
        raise TraceFormatError(f"{path}: line {i + 2}: expert ids {body[i][3]!r} repeat an expert")
    # Layout: grouped by layer (1..n_layers ascending), the same tokens in each layer.
    n_rows = len(body)
    if n_rows % n_layers:
        counts = np.bincount(layer_ids, minlength=n_layers + 1)[1:]
        raise TraceFormatError(
            f"{path}: {n_rows} rows is not a multiple of {n_layers} layers (rows per layer: "
            f"{dict(enumerate(counts.tolist(), start=1))}); expected every layer 1..{n_layers} to have the "
            "same tokens (truncated file or a layer count that disagrees?)"
        )
    n_tok = n_rows // n_layers
    expected = np.repeat(np.arange(1, n_layers + 1), n_tok)
    if not np.array_equal(layer_ids, expected):
        i = int(np.nonzero(layer_ids != expected)[0][0])
        raise TraceFormatError(
            f"{path}: line {i + 2}: Layer ID {layer_ids[i]}, expected {expected[i]} (rows grouped by layer "
            f"1..{n_layers}, {n_tok} tokens each)"
        )
    tokens = [r[2] for r in body[:n_tok]]
    for layer in range(1, n_layers):
        chunk = body[layer * n_tok : (layer + 1) * n_tok]
        for j, r in enumerate(chunk):
            if r[2] != tokens[j]:
                raise TraceFormatError(
                    f"{path}: line {layer * n_tok + j + 2}: token {r[2]!r} at layer {layer + 1} position {j}, "
                    f"expected {tokens[j]!r} as at layer 1"
                )
    experts = ids.reshape(n_layers, n_tok, top_k).transpose(1, 0, 2).astype(np.int16)
    return np.ascontiguousarray(experts), tokens


def _raise_first_bad_ds_row(path: Path, body: list[list[str]], n_layers: int, n_experts: int, top_k: int) -> NoReturn:
    """Find the first malformed row and raise a `TraceFormatError` naming its line (always raises)."""
    for i, r in enumerate(body):
        where = f"{path}: line {i + 2}"
        if len(r) != 4:
            raise TraceFormatError(f"{where}: {len(r)} fields, expected 4 ({', '.join(_DS_HEADER)})")
        try:
            layer = int(r[0])
        except ValueError:
            raise TraceFormatError(f"{where}: Layer ID {r[0]!r}, expected an integer") from None
        if not 1 <= layer <= n_layers:
            raise TraceFormatError(f"{where}: Layer ID {layer} outside 1..{n_layers}")
        try:
            int(r[1])
        except ValueError:
            raise TraceFormatError(f"{where}: Batch Number {r[1]!r}, expected an integer") from None
        s = r[3].strip()
        if not (s.startswith("[") and s.endswith("]")):
            raise TraceFormatError(f"{where}: Activated Expert IDs {r[3]!r}, expected a list like [1, 2, ...]")
        parts = s[1:-1].split(",")
        try:
            ids = [int(x) for x in parts]
        except ValueError:
            raise TraceFormatError(f"{where}: Activated Expert IDs {r[3]!r}, expected {top_k} integers") from None
        if len(ids) != top_k:
            raise TraceFormatError(f"{where}: Activated Expert IDs {r[3]!r} has {len(ids)} ids, expected {top_k}")
        bad = [e for e in ids if not 0 <= e < n_experts]
        if bad:
            raise TraceFormatError(f"{where}: expert id {bad[0]} outside [0, {n_experts})")
    raise TraceFormatError(f"{path}: inconsistent rows (no single bad line found)")


def _prompt_number(path: Path) -> int:
    stem = path.name
    if stem.startswith("prompt_") and stem.endswith("_data.csv"):
        num = stem[len("prompt_") : -len("_data.csv")]
        if num.isdigit():
            return int(num)
    raise TraceFormatError(f"{path}: file name does not match prompt_NNNN_data.csv (the request id comes from it)")


@_register(
    "deepseek-csv",
    "DeepSeek-V2-Lite prefill routing, prompt_NNNN_data.csv per request (moe-beyond)",
    "prompt_*_data.csv",
)
def import_deepseek_csv(
    files: Sequence[Path], *, model: str = "deepseek-v2-lite", keep_tokens: bool = False, progress: bool = False
) -> RoutingTrace:
    """DeepSeek CSVs -> prefill `RoutingTrace` (no weights), one request per file.

    ``keep_tokens`` stores the token pieces in ``meta["tokens"]`` (one list per request).
    ``progress`` shows a tqdm bar over files.
    """
    name, n_experts, top_k, n_layers = _model_meta(model)
    seen: dict[int, Path] = {}
    parts: list[np.ndarray] = []
    reqs: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    token_lists: dict[str, list[str]] = {}
    it: Iterable[Path] = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="deepseek-csv", unit="file")
    for path in it:
        rid = _prompt_number(path)
        if rid in seen:
            raise TraceFormatError(f"{path}: request {rid} already read from {seen[rid]}")
        seen[rid] = path
        ex, tokens = _parse_ds_file(path, n_layers, n_experts, top_k)
        parts.append(ex)
        reqs.append(np.full(ex.shape[0], rid, dtype=np.int32))
        pos.append(np.arange(ex.shape[0], dtype=np.int32))
        if keep_tokens:
            token_lists[str(rid)] = tokens
    experts = np.concatenate(parts)
    meta: dict[str, Any] = {
        "model": name,
        "n_experts": n_experts,
        "top_k": top_k,
        "format": "deepseek-csv",
        "source": _source_of(files),
        "files": [f.name for f in files],
        "licence": LICENCE_DEEPSEEK,
        "expert_order": "file order (not score order); no gate weights recorded",
        "moe_layer_ids": list(range(1, n_layers + 1)),  # column c = CSV Layer ID c+1 (layer 0 is dense)
        "shared_experts": "2 shared experts always on, not logged",
    }
    if keep_tokens:
        meta["tokens"] = token_lists
    return RoutingTrace(
        experts=experts,
        request=np.concatenate(reqs),
        position=np.concatenate(pos),
        phase=np.full(experts.shape[0], PREFILL, dtype=np.uint8),
        meta=meta,
    )


# ------------------------------------------------------------- olmoe-counts
#: Layers and layer pairs of the counts (shared/traces/README.md: "layers 0, 7, 15"; pairs (0,7), (7,15)).
OLMOE_COUNT_LAYERS = (0, 7, 15)
OLMOE_COUNT_PAIRS = ((0, 7), (7, 15))
#: counts.json model key -> model preset.
OLMOE_COUNT_MODELS = {
    "olmoe": "olmoe-1b-7b",
    "olmoe-sft": "olmoe-1b-7b",
    "olmoe-dpo": "olmoe-1b-7b",
    "mistral": "mixtral-8x7b",
}
_KINDS = ("expert_counts", "expert_counts_top1", "expert_counts_crosslayer", "expert_counts_crosslayer_top1")


def _count_vector(entries: Any, n_experts: int, where: str) -> np.ndarray:
    if not isinstance(entries, list):
        raise TraceFormatError(f"{where}: expected a list of [expert_id, count], got {type(entries).__name__}")
    out = np.zeros(n_experts, dtype=np.int64)
    for j, item in enumerate(entries):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            raise TraceFormatError(f"{where}[{j}]: {item!r}, expected [expert_id, count] integers")
        e, c = item
        if not 0 <= e < n_experts:
            raise TraceFormatError(f"{where}[{j}]: expert id {e} outside [0, {n_experts})")
        if c < 0:
            raise TraceFormatError(f"{where}[{j}]: negative count {c}")
        out[e] += c
    return out


def _count_matrix(entries: Any, n_experts: int, where: str) -> np.ndarray:
    if not isinstance(entries, list):
        raise TraceFormatError(f"{where}: expected a list of [[a, b], count], got {type(entries).__name__}")
    out = np.zeros((n_experts, n_experts), dtype=np.int64)
    for j, item in enumerate(entries):
        ok = (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], list)
            and len(item[0]) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in [*item[0], item[1]])
        )
        if not ok:
            raise TraceFormatError(f"{where}[{j}]: {item!r}, expected [[expert_a, expert_b], count] integers")
        (a, b), c = item
        if not (0 <= a < n_experts and 0 <= b < n_experts):
            raise TraceFormatError(f"{where}[{j}]: expert pair ({a}, {b}) outside [0, {n_experts})")
        if c < 0:
            raise TraceFormatError(f"{where}[{j}]: negative count {c}")
        out[a, b] += c
    return out


@_register(
    "olmoe-counts", "OLMoE / Mixtral aggregated expert counts, counts.json (allenai/OLMoE) -> stats", "counts.json"
)
def import_olmoe_counts(files: Sequence[Path], *, model: str = "olmoe", domain: str = "all") -> AggregatedRoutingStats:
    """``counts.json`` -> `AggregatedRoutingStats` of ``model`` (a counts.json key: olmoe, olmoe-sft,
    olmoe-dpo, mistral) on ``domain`` ("all" sums the domains that every kind of count present for
    the model has, so that loads and pairs cover the same tokens; ``domains`` records which).
    A kind of count that lacks the chosen domain is left empty (e.g. OLMoE on ``tulu`` has load
    counts but no cross-layer pairs; the SFT/DPO variants have load counts only)."""
    if len(files) != 1:
        raise TraceFormatError(f"olmoe-counts reads one counts.json, got {len(files)} files")
    path = files[0]
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg}; truncated file?)") from exc
    if not isinstance(data, dict):
        raise TraceFormatError(f"{path}: expected a JSON object {{model: {{kind: {{domain: ...}}}}}}")
    if model not in data:
        raise TraceFormatError(f"{path}: no model {model!r}; available: {', '.join(sorted(data))}")
    if model not in OLMOE_COUNT_MODELS:
        raise TraceFormatError(f"{path}: model {model!r} has no known preset; known: {sorted(OLMOE_COUNT_MODELS)}")
    preset = get_model(OLMOE_COUNT_MODELS[model])
    kinds = data[model]
    if not isinstance(kinds, dict) or "expert_counts" not in kinds:
        raise TraceFormatError(
            f"{path}: {model}: expected kinds {list(_KINDS)}, got "
            f"{sorted(kinds) if isinstance(kinds, dict) else type(kinds).__name__}"
        )
    unknown = set(kinds) - set(_KINDS)
    if unknown:
        raise TraceFormatError(f"{path}: {model}: unknown kind(s) {sorted(unknown)}; expected {list(_KINDS)}")
    for kind, by_domain in kinds.items():
        if not isinstance(by_domain, dict):
            raise TraceFormatError(f"{path}: {model}.{kind}: expected {{domain: [...]}}")
    if domain == "all":
        common = set.intersection(*(set(v) for v in kinds.values()))
        domains = tuple(sorted(common))
        if not domains:
            raise TraceFormatError(f"{path}: {model}: no domain common to all kinds of counts")
    else:
        have = [k for k, v in kinds.items() if domain in v]
        if "expert_counts" not in have:
            avail = sorted(kinds["expert_counts"])
            raise TraceFormatError(f"{path}: {model}: no domain {domain!r}; available: {', '.join(avail)} or 'all'")
        domains = (domain,)
    n = preset.n_experts
    load: dict[int, np.ndarray] = {}
    load_top1: dict[int, np.ndarray] = {}
    pairs: dict[tuple[int, int], np.ndarray] = {}
    pairs_top1: dict[tuple[int, int], np.ndarray] = {}
    for kind, by_domain in kinds.items():
        if not all(d in by_domain for d in domains):
            continue
        is_pair = "crosslayer" in kind
        keys: tuple[Any, ...] = OLMOE_COUNT_PAIRS if is_pair else OLMOE_COUNT_LAYERS
        targets: dict[str, dict[Any, np.ndarray]] = {
            "expert_counts": load,
            "expert_counts_top1": load_top1,
            "expert_counts_crosslayer": pairs,
            "expert_counts_crosslayer_top1": pairs_top1,
        }
        target = targets[kind]
        for d in domains:
            entries = by_domain[d]
            where = f"{path}: {model}.{kind}.{d}"
            if not isinstance(entries, list) or len(entries) != len(keys):
                got = len(entries) if isinstance(entries, list) else type(entries).__name__
                raise TraceFormatError(f"{where}: {got} entries, expected {len(keys)} (for {list(keys)})")
            for key, ent in zip(keys, entries, strict=True):
                arr = _count_matrix(ent, n, f"{where}[{key}]") if is_pair else _count_vector(ent, n, f"{where}[{key}]")
                target[key] = target[key] + arr if key in target else arr
    return AggregatedRoutingStats(
        model=preset.name,
        n_experts=n,
        top_k=preset.top_k,
        domain=domain,
        domains=domains,
        load=load,
        load_top1=load_top1,
        pairs=pairs,
        pairs_top1=pairs_top1,
        source_model=model,
        source=str(path),
        licence=LICENCE_OLMOE,
    )


# -------------------------------------------------------------------- table
_TABLE_COLUMNS = ("request", "position", "phase", "layer", "experts", "weights")
_PHASES = {"prefill": PREFILL, "decode": DECODE, "0": PREFILL, "1": DECODE}


@_register(
    "table", "generic table: request, position, phase, layer, experts, weights (CSV/JSONL/Parquet)", _TABLE_GLOBS
)
def import_table(
    files: Sequence[Path], *, model: str | None = None, n_experts: int | None = None, top_k: int | None = None
) -> RoutingTrace:
    """Generic tabular routing (module docstring, ``table``) -> `RoutingTrace`.

    Give ``model`` (a preset) or ``n_experts`` (and optionally ``top_k``). Rows are read from every
    file in order; a (request, position, layer) seen twice, ids outside ``[0, n_experts)``, repeated
    ids, more than ``top_k`` ids, weights that are not finite and >= 0 or do not match the ids, a
    request whose positions skip a number, and files with no row are `TraceFormatError` naming the
    file and line (row for Parquet).
    """
    if model is not None and (n_experts is not None or top_k is not None):
        raise ValueError("table: give model, or n_experts (and top_k), not both")
    name = None
    moe_ids_preset: list[int] | None = None
    if model is not None:
        name, n_experts, top_k, _ = _model_meta(model)
        moe_ids_preset = list(get_model(model).moe_layers)
    if n_experts is None:
        raise ValueError("table: give model=PRESET or n_experts=E (the expert ids must fit)")
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or not 1 <= n_experts <= 32767:
        raise ValueError(f"table: n_experts must be an int in [1, 32767], got {n_experts!r}")
    rows: list[tuple[int, int, int, int, list[int] | None, list[float] | None, str]] = []
    for path in files:
        before = len(rows)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            _table_csv(path, rows)
        elif suffix in (".jsonl", ".ndjson"):
            _table_jsonl(path, rows)
        elif suffix == ".parquet":
            _table_parquet(path, rows)
        else:
            raise TraceFormatError(
                f"{path}: table files must end in .csv, .jsonl or .parquet, got {suffix or 'none'!r}"
            )
        if len(rows) == before:
            raise TraceFormatError(f"{path}: no data rows; expected one row per (token, layer)")
    moe_layers = sorted({r[3] for r in rows if r[4] is not None})
    if not moe_layers:
        raise TraceFormatError(f"{_source_of(files)}: every row has null experts (all layers dense); no routing")
    k_max = max(len(r[4]) for r in rows if r[4] is not None)
    k = k_max if top_k is None else int(top_k)
    if k_max > k:
        bad = next(r for r in rows if r[4] is not None and len(r[4]) > k)
        raise TraceFormatError(f"{bad[6]}: {len(bad[4] or [])} expert ids, more than top_k={k}")
    col = {layer: i for i, layer in enumerate(moe_layers)}
    tokens = sorted({(r[0], r[1]) for r in rows})
    _check_position_gaps(tokens, rows)
    tok_idx = {t: i for i, t in enumerate(tokens)}
    n = len(tokens)
    ex = np.full((n, len(moe_layers), k), -1, dtype=np.int16)
    has_w = any(r[5] is not None for r in rows)
    w = np.zeros(ex.shape, dtype=np.float32) if has_w else None
    phase = np.full(n, -1, dtype=np.int16)
    seen: dict[tuple[int, int, int], str] = {}
    for req, pos, ph, layer, ids, wts, where in rows:
        key = (req, pos, layer)
        if key in seen:
            raise TraceFormatError(
                f"{where}: duplicate row for request {req}, position {pos}, layer {layer}; first at {seen[key]}"
            )
        seen[key] = where
        i = tok_idx[(req, pos)]
        if phase[i] >= 0 and phase[i] != ph:
            raise TraceFormatError(
                f"{where}: request {req}, position {pos} has phase {ph} here and {phase[i]} in another row"
            )
        phase[i] = ph
        if ids is None:
            continue
        if any(not 0 <= e < n_experts for e in ids):
            bad_id = next(e for e in ids if not 0 <= e < n_experts)
            raise TraceFormatError(f"{where}: expert id {bad_id} outside [0, {n_experts})")
        if len(set(ids)) != len(ids):
            raise TraceFormatError(f"{where}: experts {ids} repeat an expert; expected distinct ids")
        ex[i, col[layer], : len(ids)] = ids
        if wts is not None:
            if len(wts) != len(ids):
                raise TraceFormatError(f"{where}: {len(wts)} weights for {len(ids)} expert ids")
            assert w is not None
            w[i, col[layer], : len(ids)] = wts
    missing = int((ex[:, :, 0] < 0).sum())
    if missing:
        log.warning("table: %d (token, MoE layer) cells have no row; marked -1 (no expert)", missing)
    meta: dict[str, Any] = {
        "model": name or "custom",
        "n_experts": n_experts,
        "top_k": k,
        "format": "table",
        "moe_layer_ids": moe_layers,
        "source": _source_of(files),
        "files": [f.name for f in files],
        "licence": "as stated by the data's author (not recorded in the table)",
    }
    if moe_ids_preset is not None and moe_ids_preset != moe_layers:
        log.warning(
            "table: MoE layers %s differ from the %s preset's %s", _ranges(moe_layers), name, _ranges(moe_ids_preset)
        )
    return RoutingTrace(
        experts=ex,
        request=np.array([t[0] for t in tokens], dtype=np.int32),
        position=np.array([t[1] for t in tokens], dtype=np.int32),
        phase=phase.astype(np.uint8),
        meta=meta,
        weights=w,
    )


def _table_int(v: Any, field: str, where: str, *, low: int) -> int:
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise TraceFormatError(f"{where}: {field} is {v!r}, expected an integer")
    if v < low or v > 2**31 - 1:
        raise TraceFormatError(f"{where}: {field} is {v}, expected an integer >= {low}")
    return int(v)


def _table_list(v: Any, field: str, where: str, *, numbers: bool) -> list[Any] | None:
    """A list cell: a list, a JSON list text, or ids separated by spaces / commas / semicolons;
    None, "" and "null" are null. ``numbers``: floats (weights), else integers (ids)."""
    if v is None or (isinstance(v, float) and math.isnan(v) and not numbers):
        return None
    if isinstance(v, str):
        text = v.strip()
        if text in ("", "null", "None"):
            return None
        if text.startswith("["):
            try:
                v = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(f"{where}: {field} {text!r} is not a JSON list ({exc.msg})") from exc
        else:
            v = [x for x in re.split(r"[\s,;]+", text) if x]
    if hasattr(v, "tolist"):
        v = v.tolist()
    if v is None:
        return None
    if not isinstance(v, list):
        raise TraceFormatError(f"{where}: {field} is {v!r}, expected a list")
    out: list[Any] = []
    for x in v:
        try:
            if numbers:
                if isinstance(x, bool):
                    raise ValueError
                out.append(float(x))
            else:
                if isinstance(x, bool) or (isinstance(x, float) and not x.is_integer()):
                    raise ValueError
                out.append(int(x))
        except (TypeError, ValueError):
            raise TraceFormatError(
                f"{where}: {field} holds {x!r}, expected {'numbers' if numbers else 'integer expert ids'}"
            ) from None
    if numbers:
        bad = [x for x in out if not math.isfinite(x) or x < 0]
        if bad:
            raise TraceFormatError(f"{where}: gate weight {bad[0]} in {field}; expected finite weights >= 0")
    return out


def _check_position_gaps(
    tokens: list[tuple[int, int]], rows: list[tuple[int, int, int, int, list[int] | None, list[float] | None, str]]
) -> None:
    """Raise `TraceFormatError` naming the file, line and request when a request's positions skip a
    number (``tokens``: sorted distinct (request, position) pairs). A replay plays a request's tokens
    in position order, so a gap would silently join tokens that were not adjacent (and distort
    reuse distances); a first position above 0 is allowed (e.g. decode steps numbered after an
    unrecorded prompt)."""
    for (r0, p0), (r1, p1) in itertools.pairwise(tokens):
        if r0 == r1 and p1 != p0 + 1:
            where = next(row[6] for row in rows if row[0] == r1 and row[1] == p1)
            raise TraceFormatError(
                f"{where}: request {r1} jumps from position {p0} to {p1} (positions {p0 + 1}..{p1 - 1} "
                "missing); a request's positions must be consecutive (give every token a row, with null "
                "experts for a dense layer)"
            )


def _table_row(
    obj: dict[str, Any], where: str, rows: list[tuple[int, int, int, int, list[int] | None, list[float] | None, str]]
) -> None:
    for c in ("request", "position", "layer"):
        if c not in obj:
            raise TraceFormatError(f"{where}: missing column {c!r}; expected columns {', '.join(_TABLE_COLUMNS)}")
    ph_raw = obj.get("phase")
    ph_key = "decode" if ph_raw is None or ph_raw == "" else str(ph_raw).strip().lower()
    if ph_key not in _PHASES:
        raise TraceFormatError(f"{where}: phase is {ph_raw!r}, expected prefill, decode, 0 or 1")
    ids = _table_list(obj.get("experts"), "experts", where, numbers=False)
    wts = _table_list(obj.get("weights"), "weights", where, numbers=True)
    if ids is None and wts is not None:
        raise TraceFormatError(f"{where}: weights without experts")
    rows.append(
        (
            _table_int(obj["request"], "request", where, low=0),
            _table_int(obj["position"], "position", where, low=0),
            _PHASES[ph_key],
            _table_int(obj["layer"], "layer", where, low=0),
            ids,
            wts,
            where,
        )
    )


def _table_csv(path: Path, rows: list[tuple[int, int, int, int, list[int] | None, list[float] | None, str]]) -> None:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        if "experts" not in header:
            raise TraceFormatError(
                f"{path}: line 1: header {header} lacks 'experts'; expected columns {', '.join(_TABLE_COLUMNS)}"
            )
        for obj in reader:
            _table_row(obj, f"{path}: line {reader.line_num}", rows)
    except csv.Error as exc:
        raise TraceFormatError(f"{path}: line {reader.line_num}: bad CSV ({exc})") from exc


def _table_jsonl(path: Path, rows: list[tuple[int, int, int, int, list[int] | None, list[float] | None, str]]) -> None:
    for lineno, line in enumerate(io.StringIO(_read_text(path)), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{where}: invalid JSON ({exc.msg}); expected one JSON object per line") from exc
        if not isinstance(obj, dict):
            raise TraceFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        _table_row(obj, where, rows)


def _table_parquet(
    path: Path, rows: list[tuple[int, int, int, int, list[int] | None, list[float] | None, str]]
) -> None:
    try:
        import pyarrow.parquet as pq  # optional dependency, imported only for Parquet files
    except ImportError:
        raise TraceFormatError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow); or convert the table to CSV or JSONL"
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise TraceFormatError(f"{path}: not a readable Parquet file ({exc})") from exc
    for i, obj in enumerate(table.to_pylist()):
        _table_row(obj, f"{path}: row {i + 1}", rows)


load_entry_point_plugins()
