"""``codesign trace stats|fit|synth|compare|holdout`` end to end on real and synthetic traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import build_parser, main
from workloads.importers import import_trace
from workloads.process import RoutingProcess
from workloads.trace import RoutingTrace


@pytest.fixture(scope="module")
def mixtral_npz(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    t = import_trace("mixtral-jsonl", [shared_dir / "traces" / "mixtral-8x7b-instruct"])
    assert isinstance(t, RoutingTrace)
    return t.save(tmp_path_factory.mktemp("cli") / "mixtral.npz")


def test_subcommands_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert build_parser().parse_args(["trace", "stats", "x.npz"]).trace_command == "stats"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["trace", "--help"])
    text = capsys.readouterr().out
    for cmd in ("stats", "fit", "synth", "compare", "holdout"):
        assert f"    {cmd} " in text


def test_stats_json_and_table(mixtral_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "stats", str(mixtral_npz), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {k: doc[k] for k in ("tokens", "moe_layers", "n_experts", "top_k", "requests")} == {
        "tokens": 585,
        "moe_layers": 32,
        "n_experts": 8,
        "top_k": 2,
        "requests": 4,
    }
    for key in ("load", "affinity", "temporal_reuse", "coactivation"):
        assert key in doc
    assert len(doc["load"]["gini"]) == 32 and len(doc["affinity"]["top1"]) == 31
    assert main(["trace", "stats", str(mixtral_npz)]) == 0
    out = capsys.readouterr().out
    assert "585 tokens" in out and "gini" in out and out.count("\n") >= 34


def test_fit_synth_compare(mixtral_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = tmp_path / "p.json"
    assert main(["trace", "fit", str(mixtral_npz), "-o", str(proc)]) == 0
    assert RoutingProcess.load(proc).n_experts == 8
    syn = tmp_path / "s.npz"
    assert (
        main(["trace", "synth", str(proc), "--tokens", "2000", "--seed", "3", "--requests", "4", "-o", str(syn)]) == 0
    )
    t = RoutingTrace.load(syn)
    assert t.experts.shape == (2000, 32, 2) and t.n_requests == 4
    capsys.readouterr()
    assert main(["trace", "compare", str(mixtral_npz), str(syn), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert 0 < rep["load_js"] < 0.5 and rep["reuse_error"] < 0.1
    same = tmp_path / "s2.npz"
    assert (
        main(["trace", "synth", str(proc), "--tokens", "2000", "--seed", "3", "--requests", "4", "-o", str(same)]) == 0
    )
    assert RoutingTrace.load(same).equals(t)  # deterministic under the seed


def test_synth_default_retarget_relayer(tmp_path: Path) -> None:
    out = tmp_path / "r.npz"
    assert (
        main(
            [
                "trace",
                "synth",
                "default:mixtral-8x7b",
                "--tokens",
                "500",
                "--seed",
                "1",
                "--n-experts",
                "16",
                "--top-k",
                "4",
                "--layers",
                "8",
                "--phase",
                "prefill",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    t = RoutingTrace.load(out)
    assert t.experts.shape == (500, 8, 4) and t.n_experts == 16 and np.all(t.phase == 0)
    assert main(["trace", "synth", "default", "--tokens", "10", "-o", str(tmp_path / "d.npz")]) == 0


def test_holdout_json(mixtral_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "holdout", str(mixtral_npz), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["train_requests"] == 2 and set(res) >= {"fitted", "uniform", "popularity_only"}
    assert res["fitted"]["reuse_error"] < res["uniform"]["reuse_error"]


def test_errors(tmp_path: Path, mixtral_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace", "stats", str(tmp_path / "missing.npz")]) == 1
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert main(["trace", "synth", "default", "--tokens", "5", "--n-experts", "4", "-o", str(tmp_path / "x.npz")]) == 1
    assert "--top-k" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["trace", "synth", str(bad), "--tokens", "5", "-o", str(tmp_path / "x.npz")]) == 1
    assert "bad.json" in capsys.readouterr().err
    assert main(["trace", "synth", "default:nope", "--tokens", "5", "-o", str(tmp_path / "x.npz")]) == 1
    assert "nope" in capsys.readouterr().err


@pytest.fixture(scope="module")
def deepseek_npz(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = sorted((shared_dir / "traces" / "deepseek-v2-lite").glob("prompt_*_data.csv"))[:3]
    t = import_trace("deepseek-csv", files)
    assert isinstance(t, RoutingTrace)
    return t.save(tmp_path_factory.mktemp("cli") / "ds.npz")


def test_stats_names_the_models_layer_ids(
    deepseek_npz: Path, mixtral_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", "stats", str(deepseek_npz), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["moe_layer_ids"] == list(range(1, 27))  # DeepSeek-V2-Lite: layer 0 is dense, as in the CSV Layer IDs
    assert main(["trace", "stats", str(deepseek_npz)]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    table = [r for r in rows if r and r[0].isdigit()]
    assert [int(r[0]) for r in table] == list(range(26)) and [int(r[1]) for r in table] == list(range(1, 27))
    assert main(["trace", "stats", str(mixtral_npz), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["moe_layer_ids"] == list(range(32))


def test_compare_shape_mismatch_names_the_paths_given(
    deepseek_npz: Path, mixtral_npz: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trace", "compare", str(deepseek_npz), str(mixtral_npz)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"error: {deepseek_npz} (deepseek-v2-lite) has 26 MoE layers x 64 experts but "
        f"{mixtral_npz} (mixtral-8x7b) has 32 x 8"
    )
    assert "/traces/" not in err and "\n" not in err


def test_bad_files_give_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    npy = tmp_path / "plain.npy"
    np.save(npy, np.arange(4))
    js = tmp_path / "some.json"
    js.write_text("{}")
    for path, what in ((npy, "single .npy array"), (js, "looks like JSON text")):
        assert main(["trace", "stats", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: not a .npz routing trace") and what in err
        assert err.count("\n") == 1 and "allow_pickle" not in err and "context manager" not in err
