"""``simulate --trace``: each request's recorded lengths (and the table says so); running out of a
trace's requests is an error naming the numbers and flags unless ``--trace-cycle`` (then a warning);
``--trace-offset`` and seeded ``--trace-shuffle``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codesign import cli_simulate
from codesign.cli import main
from workloads.model import get_model
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def mx_npz(mixtral: RoutingTrace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mixtral.save(tmp_path_factory.mktemp("mx") / "mx.npz")


@pytest.fixture(scope="module")
def ds_npz(deepseek: RoutingTrace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deepseek.save(tmp_path_factory.mktemp("ds") / "ds.npz")


def _described(argv: list[str]) -> tuple[Any, dict[str, str]]:
    parser = argparse.ArgumentParser()
    cli_simulate.register(parser.add_subparsers(), [])
    args = parser.parse_args(["simulate", *argv])
    return cli_simulate.build_stream_described(args, get_model(args.model))


MX = ["--model", "mixtral-8x7b", "--platform", "dgx-h100", "--devices", "8"]
DS = ["--model", "deepseek-v2-lite", "--platform", "dgx-h100"]


def test_decode_only_trace_uses_recorded_output_lengths(mixtral: RoutingTrace, mx_npz: Path) -> None:
    stream, sources = _described([*MX, "--trace", str(mx_npz)])
    decode = sorted(np.bincount(mixtral.request[mixtral.phase == 1]).tolist())
    decode = [d for d in decode if d]
    assert sorted(r.output_tokens for r in stream.requests) == decode  # 79, 83, 168, 255 as recorded
    assert {r.prompt_tokens for r in stream.requests} == {64}  # no recorded prompt: the flag's default
    assert "recorded decode tokens" in sources["output"]
    assert "default 64" in sources["prompt"] and "records no prefill tokens" in sources["prompt"]
    # output rows are the recorded decode sequence itself (aligned), prompt rows its first tokens
    r0 = stream.requests[0]
    rec = mixtral.experts[mixtral.request == np.unique(mixtral.request)[0]]
    rec = rec[np.argsort(mixtral.position[mixtral.request == np.unique(mixtral.request)[0]])]
    rows = stream.routing(r0)
    assert np.array_equal(rows[r0.prompt_tokens :], rec) and np.array_equal(rows[:64], rec[:64])
    # the flags still win
    given, src = _described([*MX, "--trace", str(mx_npz), "--prompt-len", "5", "--output-len", "7"])
    assert {(r.prompt_tokens, r.output_tokens) for r in given.requests} == {(5, 7)}
    assert src == {"prompt": "--prompt-len 5", "output": "--output-len 7"}


def test_prefill_only_trace_uses_recorded_prompt_lengths(deepseek: RoutingTrace, ds_npz: Path) -> None:
    stream, sources = _described([*DS, "--trace", str(ds_npz), "--requests", "5"])
    order = np.unique(deepseek.request)[:5]
    assert [r.prompt_tokens for r in stream.requests] == [int((deepseek.request == q).sum()) for q in order]
    assert {r.output_tokens for r in stream.requests} == {128}
    assert "recorded prefill tokens" in sources["prompt"] and "records no decode tokens" in sources["output"]


def test_table_says_where_lengths_came_from(mx_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *MX, "--precision", "fp8", "--trace", str(mx_npz), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "79-255 (mean 146.2) (each request's recorded decode tokens, --trace)" in out
    assert "prompt tokens / request    64 (--prompt-len default 64;" in out
    assert main(["simulate", *MX, "--precision", "fp8", "--trace", str(mx_npz), "--no-progress", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output_tokens"] == 585 and "recorded" in data["output_len_source"]


def test_short_trace_is_refused_unless_cycling(
    ds_npz: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["simulate", *DS, "--trace", str(ds_npz), "--requests", "500", "--output-len", "2", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --requests 500: --trace ") and "holds 200 requests; ask for at most 200" in err
    assert "--trace-cycle" in err and "Traceback" not in err
    assert main([*argv, "--requests", "250", "--trace-offset", "150"]) == 1  # the last --requests wins
    assert "holds 200 requests (50 past --trace-offset 150); ask for at most 50" in capsys.readouterr().err
    # asked for: cycling, with a warning naming the numbers
    stream, _ = _described([*DS, "--trace", str(ds_npz), "--requests", "250", "--trace-cycle", "--output-len", "2"])
    with caplog.at_level(logging.WARNING, logger="workloads.requests"):
        rows = stream.routings()
    assert "250 requests from a trace of 200 recorded requests (offset 0)" in caplog.text
    assert np.array_equal(rows[200][: stream.requests[0].prompt_tokens], rows[0][: stream.requests[0].prompt_tokens])


def test_offset_shuffle_and_flag_errors(ds_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [*DS, "--trace", str(ds_npz), "--output-len", "2"]
    plain, _ = _described(base)
    prompts = [r.prompt_tokens for r in plain.requests]
    assert len(prompts) == 200  # default: every recorded request once
    off, _ = _described([*base, "--trace-offset", "190"])
    assert [r.prompt_tokens for r in off.requests] == prompts[190:]
    shuf, _ = _described([*base, "--trace-shuffle", "--seed", "3"])
    again, _ = _described([*base, "--trace-shuffle", "--seed", "3"])
    got = [r.prompt_tokens for r in shuf.requests]
    assert got == [r.prompt_tokens for r in again.requests] and sorted(got) == sorted(prompts) and got != prompts
    for extra, message in (
        (["--trace-offset", "200"], "--trace-offset 200: --trace"),
        (["--trace-offset", "-1"], "--trace-offset must be a non-negative"),
    ):
        assert main(["simulate", *base, *extra, "--no-progress"]) == 1
        assert message in capsys.readouterr().err
    assert main(["simulate", *DS, "--trace-cycle", "--requests", "2", "--no-progress"]) == 1
    assert "--trace-cycle apply to --trace replay only" in capsys.readouterr().err
