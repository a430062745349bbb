"""Each study's reduced run reproduces its committed reduced summary (``results/reduced``).

A study that changes its figures must have its committed summaries refreshed on purpose
(``python studies/<name>/run.py --reduced --out studies/<name>/results/reduced``, and the full run
into ``studies/<name>/results``), so a change of the engine that moves a figure shows up here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
#: Keys that hold wall-clock measurements of this machine (compared for presence, not value).
WALL_CLOCK_KEYS = frozenset({"solve_s", "wall_s", "elapsed_s"})
STUDIES = sorted(p.parent.name for p in STUDIES_DIR.glob("*/run.py"))


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"study_{name}", STUDIES_DIR / name / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the study look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'committed' if k in a else 'this run'}")
            elif k not in WALL_CLOCK_KEYS:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{where}[{i}]", out)
    elif isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        if not (math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))):
            out.append(f"{where}: committed {a!r}, this run {b!r}")
    elif a != b:
        out.append(f"{where}: committed {a!r}, this run {b!r}")


def test_every_study_has_a_committed_reduced_summary():
    assert STUDIES, "no studies found"
    missing = [s for s in STUDIES if not (STUDIES_DIR / s / "results" / "reduced" / "summary.json").is_file()]
    assert not missing, f"studies without results/reduced/summary.json: {missing}"


@pytest.mark.parametrize("name", STUDIES)
def test_reduced_run_matches_the_committed_summary(name, tmp_path, shared_dir):
    module = _load(name)
    argv = ["--reduced", "--out", str(tmp_path), "-q"]
    if '"--shared"' in (STUDIES_DIR / name / "run.py").read_text():
        argv += ["--shared", str(shared_dir)]
    assert module.main(argv) == 0
    got = json.loads((tmp_path / "summary.json").read_text())
    committed = json.loads((STUDIES_DIR / name / "results" / "reduced" / "summary.json").read_text())
    problems: list[str] = []
    _diff(committed, got, name, problems)
    assert not problems, "reduced run differs from the committed summary:\n" + "\n".join(problems[:20])
