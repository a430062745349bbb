"""The on-disk cache of derived default workloads: keyed by content, exact, relocatable, repairable."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import workloads.defaults as defaults
from workloads.defaults import CACHE_ENV, cache_dir, default_process
from workloads.process import RoutingProcess
from workloads.progress import PROGRESS_LOGGER, stage

ARRAYS = ("popularity", "affinity", "bias", "beta", "reuse_rate", "overlap", "copy_scale", "mi_target", "coact0")


def _same(a: RoutingProcess, b: RoutingProcess) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)
    assert (a.top_k, a.phase, a.gamma0, a.co_mi_target0, a.tokens_per_request) == (
        b.top_k,
        b.phase,
        b.gamma0,
        b.co_mi_target0,
        b.tokens_per_request,
    )
    assert a.meta == b.meta


@pytest.fixture
def counted_derive(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the minutes-long derivation by a cheap stand-in that counts its calls (the cache
    logic around it is the real one)."""
    calls: list[str] = []

    def cheap(proc: RoutingProcess, model: str, nearest: str, seed: int) -> RoutingProcess:
        calls.append(model)
        return dataclasses.replace(proc, meta={**proc.meta, "model": model, "derived_from": {"model": nearest}})

    monkeypatch.setattr(defaults, "_derive", cheap)
    return calls


def test_second_call_loads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted_derive: list[str]
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = default_process("gpt-oss-20b")
    files = list((tmp_path / "default-workload").glob("gpt-oss-20b-*.json"))
    assert counted_derive == ["gpt-oss-20b"] and len(files) == 1
    second = default_process("gpt-oss-20b")
    assert counted_derive == ["gpt-oss-20b"]  # not derived again
    _same(first, second)
    # another seed is another derivation, under another key
    default_process("gpt-oss-20b", seed=1)
    assert counted_derive == ["gpt-oss-20b", "gpt-oss-20b"]
    assert len(list((tmp_path / "default-workload").glob("gpt-oss-20b-*.json"))) == 2
    # fitted models are never cached (they are read from the package)
    default_process("mixtral-8x7b")
    assert len(list((tmp_path / "default-workload").iterdir())) == 2


def test_unreadable_entry_is_derived_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted_derive: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    default_process("gpt-oss-20b")
    (entry,) = (tmp_path / "default-workload").glob("*.json")
    entry.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="workloads.defaults"):
        proc = default_process("gpt-oss-20b")
    assert counted_derive == ["gpt-oss-20b", "gpt-oss-20b"] and "unreadable" in caplog.text
    _same(proc, RoutingProcess.load(entry))  # rewritten


def test_cache_can_be_disabled_or_unwritable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted_derive: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dir() is None
    default_process("gpt-oss-20b")
    default_process("gpt-oss-20b")
    assert counted_derive == ["gpt-oss-20b", "gpt-oss-20b"]
    blocker = tmp_path / "a-file"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING, logger="workloads.defaults"):
        proc = default_process("gpt-oss-20b")  # still returned
    assert proc.meta["model"] == "gpt-oss-20b" and "could not cache" in caplog.text


def test_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "moe-codesign"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_cache_round_trip_is_exact(tmp_path: Path) -> None:
    """A cached process samples exactly what the derived one samples (float64, not float32)."""
    proc = default_process("deepseek-v2-lite")
    noisy = dataclasses.replace(proc, bias=proc.bias + 1e-9 * np.arange(proc.bias.size).reshape(proc.bias.shape))
    path = tmp_path / "p.json"
    defaults._write_cached(noisy, path)
    back = defaults._read_cached(path)
    _same(noisy, back)
    a, b = noisy.sample(300, seed=4, n_requests=3), back.sample(300, seed=4, n_requests=3)
    np.testing.assert_array_equal(a.experts, b.experts)


class _Records(logging.Handler):
    """Collects the progress logger's records itself: whether other handlers (pytest's, the CLI's)
    are attached or propagation is on depends on the tests that ran before."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def progress_records(monkeypatch: pytest.MonkeyPatch) -> list[logging.LogRecord]:
    logger = logging.getLogger(PROGRESS_LOGGER)
    handler = _Records()
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


def test_derivation_shows_progress(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    counted_derive: list[str],
    progress_records: list[logging.LogRecord],
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    default_process("gpt-oss-20b")
    default_process("gpt-oss-20b")
    lines = [r.getMessage() for r in progress_records]
    assert len(lines) == 2  # start and end of the one derivation; the cached call is silent
    assert lines[0].startswith("deriving the default workload of gpt-oss-20b (32 experts, top-4, 24 MoE layers)")
    assert str(tmp_path) in lines[0] and "done in" in lines[1]


def test_stage_forms(capsys: pytest.CaptureFixture[str], progress_records: list[logging.LogRecord]) -> None:
    with pytest.raises(RuntimeError), stage("failing step", tty=False):
        raise RuntimeError("boom")
    with stage("logged step", tty=False):
        pass
    messages: list[Any] = [r.getMessage() for r in progress_records]
    assert messages[0] == "failing step ..." and messages[1].startswith("failing step: failed after")
    assert messages[2] == "logged step ..." and messages[3].startswith("logged step: done in")
    with stage("terminal step", tty=True, refresh_s=0.01):
        pass
    assert "terminal step: 00:00" in capsys.readouterr().err
