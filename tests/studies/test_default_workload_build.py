"""``studies/default_workload/build.py``: writes outside the package by default, and is byte-reproducible.

The full build takes about a minute of CPU, so reproducibility is checked on ``--reduced`` (the
first 16 DeepSeek prompts, short calibration: a few seconds), built twice: in this process and in
a fresh interpreter with another hash seed, from another working directory, with ``--shared``
spelt differently. The shipped data file is checked for the canonical form that build writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "studies" / "default_workload" / "build.py"
PACKAGE_DATA = REPO / "workloads" / "data" / "default_routing.json"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("default_workload_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reduced_build_is_byte_reproducible_and_leaves_the_package_data_alone(tmp_path, shared_dir, monkeypatch):
    build = _load()
    shipped = PACKAGE_DATA.read_bytes()
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    monkeypatch.chdir(first_dir)
    assert build.main(["--reduced", "-q", "--shared", str(Path(shared_dir).resolve())]) == 0
    first = first_dir / "runs" / "default_workload" / "default_routing.json"  # the default output
    assert first.is_file()
    # a fresh interpreter (another hash seed), another working directory, --shared as a relative path
    shared_rel = os.path.relpath(Path(shared_dir).resolve(), second_dir)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run(
        [sys.executable, str(BUILD), "--reduced", "-q", "--shared", shared_rel, "--out", "again.json"],
        cwd=second_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    second = second_dir / "again.json"
    assert first.read_bytes() == second.read_bytes(), "two reduced builds of the same inputs differ"
    text = first.read_text(encoding="utf-8")
    for absolute in {str(Path(shared_dir).resolve()), str(REPO), str(tmp_path)}:
        assert absolute not in text, f"the build output records the absolute path {absolute}"
    data = json.loads(text)
    assert data["build"]["reduced"] is True and data["build"]["max_lag"] == 4
    assert data["provenance"]["deepseek-v2-lite"]["source"].startswith("shared/traces/deepseek-v2-lite/")
    assert text == build.render(json.loads(text)), "not in canonical form (sorted keys, compact)"
    assert PACKAGE_DATA.read_bytes() == shipped, "a reduced build changed the shipped package data"


def test_package_data_needs_its_flag_and_never_takes_a_reduced_build(capsys):
    build = _load()
    with pytest.raises(SystemExit):
        build.main(["--reduced", "--write-package-data"])
    assert "never go into the package data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--write-package-data", "--out", "x.json"])
    assert "not allowed with argument" in capsys.readouterr().err
    assert Path("runs") / "default_workload" / "default_routing.json" == build.DEFAULT_OUT
    assert not build.DEFAULT_OUT.is_absolute()


def test_bad_output_is_refused_before_the_build(tmp_path, capsys):
    build = _load()
    with pytest.raises(SystemExit):
        build.main(["--out", str(tmp_path), "--shared", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert "--out" in err and "not writable" in err


def test_shipped_data_file_is_in_the_canonical_form_build_writes():
    build = _load()
    text = PACKAGE_DATA.read_text(encoding="utf-8")
    data = json.loads(text)
    assert text == build.render(data), "workloads/data/default_routing.json is not what build.py writes"
    assert "/work/" not in text and "/home/" not in text
    assert data["build"]["reduced"] is False
    for name in ("mixtral-8x7b", "deepseek-v2-lite", "olmoe-1b-7b"):
        assert data["provenance"][name]["source"].startswith("shared/traces/")
