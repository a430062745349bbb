"""The Pareto set of a study as files: a CSV (one row per design) and one design JSON per design.

``OUT/pareto.csv`` has the trial number, the design hash, the objectives (column names with units),
the fidelity of the values, the knobs that define the design (model shape, precision, platform,
mapping) and the design file. ``OUT/pareto/<hash>.json`` is `codesign.design.Design.to_json`,
which ``codesign simulate --design FILE`` replays. `pareto_rows` gives the same rows to print.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from search.objectives import get_objective

__all__ = ["ROW_KNOBS", "pareto_rows", "write_pareto"]

#: Design fields shown per Pareto design: column name -> path in `Design.to_dict()`.
ROW_KNOBS: dict[str, tuple[str, ...]] = {
    "model": ("workload", "base_model"),
    "experts": ("model", "n_experts"),
    "top_k": ("model", "top_k"),
    "expert_ffn": ("model", "expert_ffn_dim"),
    "shared": ("model", "n_shared_experts"),
    "bytes_per_weight": ("model", "bytes_per_weight"),
    "platform": ("platform", "name"),
    "devices": ("mapping", "n_devices"),
    "fast_share": ("mapping", "cache", "expert_fraction"),
    "cache": ("mapping", "cache", "policy"),
    "prefetch": ("mapping", "prefetch"),
    "miss": ("mapping", "miss"),
    "placement": ("mapping", "placement"),
    "ep": ("mapping", "ep_execution"),
    "max_batch": ("mapping", "batching", "max_batch"),
    "stack": ("mapping", "stack"),
    "kv": ("mapping", "batching", "kv"),
}


def _get(d: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def pareto_rows(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per trial: ``trial``, ``design_hash``, ``<objective> [unit]`` values, ``fidelity``,
    the `ROW_KNOBS` (None where a knob does not apply: placement and EP execution on one device,
    cache policies when every expert is resident), ``granularity_G`` (Krajewski G of the model) and
    ``expert_precision`` (the routed experts' own bytes per weight[:format], None when they follow
    ``bytes_per_weight``)."""
    from codesign.design import Design

    rows = []
    for t in trials:
        design = t.user_attrs.get("design") or {}
        row: dict[str, Any] = {"trial": t.number, "design_hash": t.user_attrs.get("design_hash", "")}
        for name, value in zip(objectives, t.values or (), strict=False):
            row[f"{name} [{get_objective(name).unit}]"] = value
        row["fidelity"] = t.user_attrs.get("fidelity", "")
        for col, path in ROW_KNOBS.items():
            row[col] = _get(design, path)
        # knobs that do not apply to this design are left empty (the space did not ask them)
        if (row["devices"] or 1) <= 1:
            row["placement"] = row["ep"] = None
        if row["fast_share"] is not None and row["fast_share"] >= 1.0:
            row["cache"] = row["prefetch"] = row["miss"] = None
        model = Design.from_dict(design).model if design else None
        row["granularity_G"] = round(model.granularity, 3) if model is not None else None
        # the routed experts' own precision (space knob expert_precision) as bytes per weight[:format];
        # None when they follow bytes_per_weight natively
        row["expert_precision"] = None
        if model is not None and (model.expert_bytes_per_weight is not None or model.expert_format != "none"):
            fmt = model.format_of("expert")
            row["expert_precision"] = f"{model.weight_bytes_of('expert'):g}" + (f":{fmt}" if fmt != "none" else "")
        if isinstance(row["stack"], dict):  # an inline stack object
            row["stack"] = row["stack"].get("name")
        if design and row["kv"] is None:  # the default is left out of a mapping's dict
            row["kv"] = "reserve"
        rows.append(row)
    return rows


def write_pareto(trials: Sequence[FrozenTrial], objectives: Sequence[str], out_dir: Path) -> tuple[Path, list[Path]]:
    """Write ``OUT/pareto.csv`` and ``OUT/pareto/<hash>.json`` (module doc); returns their paths.
    Design files of an earlier export that left the front are removed."""
    from codesign.design import Design

    out_dir = Path(out_dir)
    folder = out_dir / "pareto"
    folder.mkdir(parents=True, exist_ok=True)
    rows = pareto_rows(trials, objectives)
    files: list[Path] = []
    for t, row in zip(trials, rows, strict=True):
        path = folder / f"{row['design_hash']}.json"
        Design.from_dict(t.user_attrs["design"]).save(path)
        row["design_file"] = str(path)
        files.append(path)
    keep = {p.resolve() for p in files}
    for old in folder.glob("*.json"):
        if old.resolve() not in keep:
            old.unlink()
    csv_path = out_dir / "pareto.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        cols = list(rows[0]) if rows else ["trial", "design_hash", *objectives, "design_file"]
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, files
