"""``codesign trace import`` and ``codesign trace record`` through `codesign.cli.main`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codesign.cli import main
from workloads import AggregatedRoutingStats, RoutingTrace, import_trace


def test_import_deepseek(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds.npz"
    src = shared_dir / "traces/deepseek-v2-lite"
    assert main(["trace", "import", "--format", "deepseek-csv", str(src), "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert f"wrote {out}" in line and "tokens=19520" in line and "requests=200" in line
    back = RoutingTrace.load(out)
    direct = import_trace("deepseek-csv", src)
    assert isinstance(direct, RoutingTrace) and back.equals(direct)


def test_import_mixtral_files_drop(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = shared_dir / "traces/mixtral-8x7b-instruct"
    out = tmp_path / "mx.npz"
    argv = [
        "trace",
        "import",
        "-f",
        "mixtral-jsonl",
        str(d / "gsm8k_2_routing.jsonl"),
        str(d / "humaneval_2_routing.jsonl"),
        "-o",
        str(out),
        "--missing",
        "drop",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "tokens=577" in captured.out and "incomplete_tokens=8 (drop)" in captured.out
    t = RoutingTrace.load(out)
    assert t.n_tokens == 577 and t.weights is not None and t.meta["missing"] == "drop"


def test_import_olmoe_counts(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mixtral_counts.json"
    src = shared_dir / "traces/olmoe-mixtral-routing-stats/counts.json"
    argv = ["trace", "import", "-f", "olmoe-counts", str(src), "-o", str(out), "--model", "mistral", "--domain", "c4"]
    assert main(argv) == 0
    assert "domain=c4" in capsys.readouterr().out
    s = AggregatedRoutingStats.load_json(out)
    assert s.model == "mixtral-8x7b" and s.domains == ("c4",)
    assert json.loads(out.read_text(encoding="utf-8"))["format"] == "moe-codesign/aggregated-routing-stats"


def _err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_import_errors(shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counts = str(shared_dir / "traces/olmoe-mixtral-routing-stats/counts.json")
    assert "a.npz: expected a path ending in .json" in _err(
        ["trace", "import", "-f", "olmoe-counts", counts, "-o", str(tmp_path / "a.npz")], capsys
    )
    ds = str(shared_dir / "traces/deepseek-v2-lite/prompt_1001_data.csv")
    assert "a.json: expected a path ending in .npz" in _err(
        ["trace", "import", "-f", "deepseek-csv", ds, "-o", str(tmp_path / "a.json")], capsys
    )
    assert "--missing applies to mixtral-jsonl" in _err(
        ["trace", "import", "-f", "deepseek-csv", ds, "-o", str(tmp_path / "a.npz"), "--missing", "drop"], capsys
    )
    bad = tmp_path / "prompt_0005_data.csv"
    bad.write_text('Layer ID,Batch Number,Token,Activated Expert IDs\n1,0,hi,"[1, 2, 3]"\n', encoding="utf-8")
    err = _err(["trace", "import", "-f", "deepseek-csv", str(bad), "-o", str(tmp_path / "b.npz")], capsys)
    assert f"{bad}: line 2:" in err and "expected 6" in err
    assert not (tmp_path / "b.npz").exists()


def test_import_unknown_format_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["trace", "import", "-f", "parquet", str(tmp_path), "-o", str(tmp_path / "x.npz")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "mixtral-jsonl" in err and "deepseek-csv" in err


def test_record_tiny_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec.npz"
    argv = [
        "trace",
        "record",
        "--hf-config",
        "tiny-qwen2-moe",
        "--prompt-ids",
        "4,5,6,7",
        "--max-new-tokens",
        "3",
        "--no-stop-at-eos",
        "--seed",
        "2",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    assert "prefill=4 decode=3" in capsys.readouterr().out
    t = RoutingTrace.load(out)
    assert t.n_tokens == 7 and t.n_experts == 60 and t.top_k == 4 and t.meta["model"] == "tiny-qwen2-moe"
    assert t.phase.tolist() == [0, 0, 0, 0, 1, 1, 1]
    # same seed, same routing; random prompt ids from the seed when none is given
    out2 = tmp_path / "rec2.npz"
    assert main([*argv[:-1], str(out2)]) == 0
    assert RoutingTrace.load(out2).equals(t)
    out3 = tmp_path / "rec3.npz"
    assert (
        main(
            [
                "trace",
                "record",
                "--hf-config",
                "tiny-mixtral",
                "--prompt-len",
                "5",
                "--max-new-tokens",
                "0",
                "-o",
                str(out3),
            ]
        )
        == 0
    )
    assert RoutingTrace.load(out3).n_tokens == 5


def test_record_local_model_with_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workloads.tracer import build_tiny_model

    model_dir = tmp_path / "tiny-olmoe"
    build_tiny_model("olmoe", seed=5).save_pretrained(model_dir)
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "moe": 2, "world": 3}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>").save_pretrained(model_dir)
    out = tmp_path / "local.npz"
    argv = [
        "trace",
        "record",
        "--hf-config",
        str(model_dir),
        "--hf-model",
        str(model_dir),
        "--prompt",
        "hello moe world",
        "--max-new-tokens",
        "2",
        "--no-stop-at-eos",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    t = RoutingTrace.load(out)
    assert t.meta["prompt_ids"] == {"0": [1, 2, 3]}
    assert t.n_tokens == 5 and t.n_experts == 64 and t.top_k == 8
    # pretrained weights really are the saved ones: the same routing as the in-memory model
    from workloads.tracer import record_routing

    again = record_routing(build_tiny_model("olmoe", seed=5), [1, 2, 3], max_new_tokens=2, stop_at_eos=False)
    assert np.array_equal(again.experts, t.experts)


def test_record_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.npz")
    assert "neither a tiny preset" in _err(["trace", "record", "--hf-config", "tiny-gpt", "-o", out], capsys)
    assert "item 1 is 'x'" in _err(
        ["trace", "record", "--hf-config", "tiny-mixtral", "--prompt-ids", "3,x", "-o", out], capsys
    )
    assert "needs a tokenizer" in _err(
        ["trace", "record", "--hf-config", "tiny-mixtral", "--prompt", "hi", "-o", out], capsys
    )
    assert "r.npz.json: expected a path ending in .npz" in _err(
        ["trace", "record", "--hf-config", "tiny-mixtral", "-o", out + ".json"], capsys
    )
    from workloads.tracer import tiny_config

    tiny_config("mixtral").save_pretrained(tmp_path / "cfg")
    assert "parameters (> 1e-06B allowed" in _err(
        ["trace", "record", "--hf-config", str(tmp_path / "cfg"), "--max-params", "1000", "-o", out], capsys
    )
    assert "outside [0, 512)" in _err(
        ["trace", "record", "--hf-config", "tiny-mixtral", "--prompt-ids", "9999", "-o", out], capsys
    )


def test_record_bad_config_is_one_line_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "r.npz")
    cfg = tmp_path / "badcfg.json"
    cfg.write_text(json.dumps({"model_type": "mixtral", "hidden_size": "abc"}))
    err = _err(["trace", "record", "--hf-config", str(cfg), "-o", out], capsys)
    assert err.startswith(f"error: {cfg}: invalid mixtral config:") and "hidden_size" in err and "'abc'" in err
    assert err.count("\n") == 1
    cfg.write_text(json.dumps({"model_type": "no-such-type"}))
    err = _err(["trace", "record", "--hf-config", str(cfg), "-o", out], capsys)
    assert err.startswith(f"error: {cfg}: field 'model_type' is 'no-such-type'") and err.count("\n") == 1


def test_import_layer_count_error_has_no_python_keyword_hint(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shared_dir / "traces/mixtral-8x7b-instruct/gsm8k_2_routing.jsonl"
    few = tmp_path / "few_routing.jsonl"
    lines = [ln for ln in src.read_text().splitlines() if json.loads(ln)["layer"] == 0][:40]
    few.write_text("\n".join(lines) + "\n")
    err = _err(["trace", "import", "-f", "mixtral-jsonl", str(few), "-o", str(tmp_path / "o.npz")], capsys)
    assert f"{few}: layers seen are 0..0 but mixtral-8x7b has 32 MoE layers" in err
    assert "model=" not in err and "n_layers=" not in err


def test_tiny_preset_names_in_sync() -> None:
    from codesign.cli_trace_io import TINY_PRESET_NAMES
    from workloads.tracer import TINY_PRESETS

    assert set(TINY_PRESET_NAMES) == set(TINY_PRESETS)
