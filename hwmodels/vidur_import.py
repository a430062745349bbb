"""Import GPU kernel timings measured by Vidur (CSV) into a :class:`CalibrationProfile`.

Vidur (github.com/microsoft/vidur, MIT) profiles each transformer operator on a real GPU with CUDA
events and stores per-operator times in **milliseconds** (``time_stats.<op>.median``), one row per
``num_tokens`` and tensor-parallel degree ``num_tensor_parallel_workers``. The GEMMs we derive from
a row with ``T = num_tokens``, ``E = n_embd``, ``F = n_expanded_embd``, ``H = n_head``,
``Hkv = n_kv_head``, head size ``h = E / H`` and TP degree ``t``:

=================  =============================  ======================================
op (Vidur column)  GEMM ``(m x k) @ (k x n)``     note
=================  =============================  ======================================
``qkv``            ``(T x E) @ (E x (H+2Hkv) h/t)``  ``attn_pre_proj``: fused Q, K, V
``o``              ``(T x H h/t) @ (H h/t x E)``     ``attn_post_proj``
``up``             ``(T x E) @ (E x g F/t)``         ``mlp_up_proj``: gate+up fused, g = 2 if gated
``down``           ``(T x F/t) @ (F/t x E)``         ``mlp_down_proj``
=================  =============================  ======================================

Memory-bound samples come from ``mlp_act`` (op ``"act"``; gated: reads ``T x 2F/t``, writes
``T x F/t``, so ``3 T F / t`` elements) and ``add`` (op ``"stream"``; residual add: ``3 T E``
elements), at 2 bytes per element.
The tables do not record the dtype; 16-bit is inferred from the throughput (the A100 ``up`` GEMM
at T = 4096 runs at ~219 TFLOP/s, above the A100's 19.5 TFLOP/s FP32 and within its 312 TFLOP/s
BF16/FP16 tensor-core peak).

Held-out split (for ``codesign calibrate validate``): every row with TP degree 4 (widths never
seen in the fit: interpolation between TP 2 and 8), and every 5th distinct token count of the
other TP degrees (token counts never seen in the fit).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwmodels.calibration import CalibrationError, CalibrationProfile, Peaks, Sample, fit_profile

log = logging.getLogger(__name__)

#: Reference peaks of the GPUs in the Vidur tables, 16-bit dense tensor FLOP/s and HBM bandwidth.
VIDUR_PEAKS: dict[str, Peaks] = {
    "a100": Peaks(
        flops=312e12,
        flops_source="A100-80GB SXM4 dense BF16/FP16 tensor 312 TFLOP/s [S] glennklockwood A100 page "
        "(reference/hardware-and-papers.md 1.1)",
        memory_Bps=2039e9,
        memory_source="A100 SXM 80GB HBM2e 2,039 GB/s [S] thundercompute A100 table (1.1)",
        link_Bps=32e9,
        link_source="PCIe Gen4 x16 '32+32 GB/s' per direction [S] glennklockwood A100 page (1.1)",
    ),
    "h100": Peaks(
        flops=989e12,
        flops_source="H100 SXM5 dense BF16 989 TFLOP/s [S] hpctech H100 table, 1,979 with sparsity halved (1.1)",
        memory_Bps=3350e9,
        memory_source="H100 SXM5 HBM3 3,350 GB/s [S] hpctech H100 table (1.1)",
        link_Bps=64e9,
        link_source="PCIe Gen5 x16 128 GB/s bidirectional, 64 per direction [S] hpctech / glennklockwood (1.1)",
    ),
}

HELDOUT_RULE = (
    "held out: every row with TP degree 4, and every 5th distinct num_tokens (sorted, "
    "starting with the 3rd) of the other TP degrees"
)

_GEMM_OPS = {"qkv": "attn_pre_proj", "o": "attn_post_proj", "up": "mlp_up_proj", "down": "mlp_down_proj"}
_MEM_OPS = {"mlp_act": "mlp_act", "add": "add"}
_SHAPE_KEYS = (
    "n_head",
    "n_kv_head",
    "n_embd",
    "n_expanded_embd",
    "use_gated_mlp",
    "num_tokens",
    "num_tensor_parallel_workers",
)
DTYPE_BYTES = 2.0


@dataclass(frozen=True, kw_only=True)
class VidurRow:
    """One row of a Vidur MLP table, parsed: shape keys and per-op median times (seconds)."""

    file: str
    line: int
    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    gated: bool
    num_tokens: int
    tp: int
    times_s: dict[str, float]


def _int_field(row: dict[str, str], key: str, where: str) -> int:
    raw = row.get(key)
    if raw is None or raw == "":
        raise CalibrationError(f"{where}: field {key!r} is missing or empty")
    try:
        value = float(raw)
    except ValueError as exc:
        raise CalibrationError(f"{where}: field {key!r} must be a number, got {raw!r}") from exc
    if value != int(value) or value <= 0:
        raise CalibrationError(f"{where}: field {key!r} must be a positive integer, got {raw!r}")
    return int(value)


def read_vidur_table(path: str | Path) -> list[VidurRow]:
    """Parse one Vidur ``*-mlp.csv`` file (times converted ms -> s).

    Rows whose op times are missing or non-positive are errors naming file, line and column.
    """
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"{p}: cannot read Vidur table: {exc.strerror or exc}") from exc
    rows: list[VidurRow] = []
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        needed = [*_SHAPE_KEYS] + [f"time_stats.{col}.median" for col in _GEMM_OPS.values()]
        missing = [col for col in needed if col not in header]
        if missing:
            raise CalibrationError(f"{p}: not a Vidur MLP table: missing columns {missing}")
        for line, row in enumerate(reader, start=2):
            where = f"{p}:{line}"
            times: dict[str, float] = {}
            for op, col in {**_GEMM_OPS, **_MEM_OPS}.items():
                key = f"time_stats.{col}.median"
                if key not in row:
                    continue
                raw = row[key]
                try:
                    ms = float(raw)
                except (TypeError, ValueError) as exc:
                    raise CalibrationError(f"{where}: column {key!r} must be a time in ms, got {raw!r}") from exc
                if not ms > 0 or ms != ms or ms == float("inf"):
                    raise CalibrationError(f"{where}: column {key!r} must be a positive time in ms, got {raw!r}")
                times[op] = ms * 1e-3
            gated_raw = (row.get("use_gated_mlp") or "").strip().lower()
            if gated_raw not in ("true", "false", "1", "0"):
                raise CalibrationError(f"{where}: field 'use_gated_mlp' must be True or False, got {gated_raw!r}")
            rows.append(
                VidurRow(
                    file=str(p),
                    line=line,
                    n_head=_int_field(row, "n_head", where),
                    n_kv_head=_int_field(row, "n_kv_head", where),
                    n_embd=_int_field(row, "n_embd", where),
                    n_expanded_embd=_int_field(row, "n_expanded_embd", where),
                    gated=gated_raw in ("true", "1"),
                    num_tokens=_int_field(row, "num_tokens", where),
                    tp=_int_field(row, "num_tensor_parallel_workers", where),
                    times_s=times,
                )
            )
    if not rows:
        raise CalibrationError(f"{p}: Vidur table has no data rows")
    return rows


def row_samples(row: VidurRow) -> Iterator[Sample]:
    """The GEMM and memory samples of one row (see the module docstring for the shapes)."""
    t = row.tp
    e, f = row.n_embd, row.n_expanded_embd
    h = e // row.n_head
    for what, value in (("n_embd", e), ("n_expanded_embd", f), ("n_head*head", row.n_head * h)):
        if value % t:
            raise CalibrationError(f"{row.file}:{row.line}: {what}={value} is not divisible by TP degree {t}")
    shapes = {
        "qkv": (row.num_tokens, e, (row.n_head + 2 * row.n_kv_head) * h // t),
        "o": (row.num_tokens, row.n_head * h // t, e),
        "up": (row.num_tokens, e, (2 if row.gated else 1) * f // t),
        "down": (row.num_tokens, f // t, e),
    }
    tag = f"tp={t}"
    for op, (m, k, n) in shapes.items():
        yield Sample(kind="gemm", op=op, shape={"m": m, "k": k, "n": n}, time_s=row.times_s[op], tag=tag)
    if "mlp_act" in row.times_s:
        elems = (3 if row.gated else 2) * row.num_tokens * f // t
        yield Sample(
            kind="memory",
            op="act",
            shape={"n_bytes": int(elems * DTYPE_BYTES)},
            time_s=row.times_s["mlp_act"],
            tag=f"{tag} mlp_act",
        )
    if "add" in row.times_s:
        yield Sample(
            kind="memory",
            op="stream",
            shape={"n_bytes": int(3 * row.num_tokens * e * DTYPE_BYTES)},
            time_s=row.times_s["add"],
            tag=f"{tag} add",
        )


def table_samples(rows: list[VidurRow], *, split: bool = True) -> list[Sample]:
    """All samples of a table; with ``split`` the held-out ones (:data:`HELDOUT_RULE`) are marked."""
    tokens = sorted({r.num_tokens for r in rows})
    held_tokens = set(tokens[2::5])
    out: list[Sample] = []
    for row in rows:
        held = split and (row.tp == 4 or row.num_tokens in held_tokens)
        for sample in row_samples(row):
            out.append(
                Sample(
                    kind=sample.kind,
                    op=sample.op,
                    shape=sample.shape,
                    time_s=sample.time_s,
                    heldout=held,
                    tag=sample.tag,
                )
            )
    return out


def find_tables(path: str | Path, device: str | None = None) -> tuple[str, list[Path]]:
    """Locate the MLP tables of one device under ``path``; returns ``(device_name, files)``.

    ``path`` may be a CSV file (device = its folder's name), a ``compute/<device>/`` folder, a
    ``compute/`` folder, or the dataset root holding ``compute/``. When several devices are there,
    ``device`` picks one (an unknown or missing choice is an error listing them).
    """
    p = Path(path)
    if p.is_file():
        return (device or p.parent.name).lower(), [p]
    if not p.is_dir():
        raise CalibrationError(f"{p}: no such Vidur table file or folder")
    direct = sorted(p.glob("*.csv"))
    if direct:
        return (device or p.name).lower(), direct
    root = p / "compute" if (p / "compute").is_dir() else p
    devices = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.csv")))
    if not devices:
        raise CalibrationError(f"{p}: no Vidur CSV tables found (expected compute/<device>/*.csv)")
    if device is None:
        if len(devices) > 1:
            raise CalibrationError(f"{p}: tables of several devices {devices}; choose one with --device")
        device = devices[0]
    if device.lower() not in devices:
        raise CalibrationError(f"{p}: no tables for device {device!r}; found {devices}")
    return device.lower(), sorted((root / device.lower()).glob("*.csv"))


def import_vidur(
    path: str | Path, *, device: str | None = None, name: str | None = None, peaks: Peaks | None = None
) -> CalibrationProfile:
    """Build a fitted GPU profile from Vidur tables (see :func:`find_tables` for ``path``).

    The device name of the data (``"a100"``, ``"h100"``) is kept as ``device_name``; reference
    peaks come from :data:`VIDUR_PEAKS` unless ``peaks`` is given (required for other devices).
    """
    device_name, files = find_tables(path, device)
    if peaks is None:
        if device_name not in VIDUR_PEAKS:
            raise CalibrationError(
                f"no reference peaks known for device {device_name!r} (known: "
                f"{sorted(VIDUR_PEAKS)}); pass peaks explicitly"
            )
        peaks = VIDUR_PEAKS[device_name]
    samples: list[Sample] = []
    for file in files:
        samples.extend(table_samples(read_vidur_table(file)))
    log.info("vidur import: %d samples from %d file(s) for %s", len(samples), len(files), device_name)
    return fit_profile(
        name=name or f"vidur-{device_name}",
        device_name=device_name,
        device_kind="gpu",
        dtype="fp16",
        dtype_bytes=DTYPE_BYTES,
        peaks=peaks,
        samples=samples,
        fingerprint={"device": device_name, "tables": [f.name for f in files], "measured_by": "Vidur (CUDA events)"},
        source=(
            "fitted by moe-codesign (codesign calibrate import-vidur; soft-L1 in log space) to Vidur's measured "
            "profiling tables [P measurement] (github.com/microsoft/vidur 7d47513 data/profiling, MIT): "
            + ", ".join(f"{f.parent.name}/{f.name}" for f in files)
        ),
        heldout_rule=HELDOUT_RULE,
    )


def against_samples(path: str | Path, device: str | None = None) -> list[Sample]:
    """Every GEMM and memory sample of other Vidur tables (no split): for ``validate --against``."""
    _, files = find_tables(path, device)
    out: list[Sample] = []
    for file in files:
        out.extend(table_samples(read_vidur_table(file), split=False))
    return out


def link_efficiency_points(
    path: str | Path,
    *,
    collective: str = "send_recv",
    num_workers: int = 2,
) -> tuple[tuple[float, float], ...]:
    """(bytes, achieved bytes/s) pairs from a Vidur network CSV (NCCL, times in ms), sorted by size.

    Uses the rows of ``collective`` with ``num_workers`` ranks inside one node; the median time per
    size is taken over ranks. ``hwmodels.devices.efficiencies_from_rates(points, peak)`` turns them into
    ``Link.efficiency_points`` (achieved / peak) of a peer link.
    """
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"{p}: cannot read Vidur network table: {exc.strerror or exc}") from exc
    by_size: dict[int, list[float]] = {}
    with handle:
        reader = csv.DictReader(handle)
        col = f"time_stats.{collective}.median"
        if col not in (reader.fieldnames or []):
            raise CalibrationError(f"{p}: missing column {col!r}")
        for line, row in enumerate(reader, start=2):
            where = f"{p}:{line}"
            if row.get("collective") != collective or _int_field(row, "num_workers", where) != num_workers:
                continue
            if row.get("devices_per_node") and _int_field(row, "devices_per_node", where) < num_workers:
                continue
            size = _int_field(row, "size", where)
            try:
                ms = float(row[col])
            except ValueError as exc:
                raise CalibrationError(f"{where}: column {col!r} must be a time in ms, got {row[col]!r}") from exc
            if not ms > 0:
                raise CalibrationError(f"{where}: column {col!r} must be positive, got {row[col]!r}")
            by_size.setdefault(size, []).append(ms * 1e-3)
    if not by_size:
        raise CalibrationError(f"{p}: no {collective} rows with num_workers={num_workers} inside one node")
    points = []
    for size in sorted(by_size):
        median = float(np.median(by_size[size]))
        points.append((float(size), size / median))
    return tuple(points)
