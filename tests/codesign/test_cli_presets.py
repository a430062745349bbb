"""``codesign presets`` through `codesign.cli.main`."""

from __future__ import annotations

import json

import pytest

from codesign.cli import main
from workloads import model_preset_names


def test_models_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(model_preset_names())
    mixtral = next(line for line in lines if line.startswith("mixtral-8x7b "))
    assert "46.70B" in mixtral and "12.88B" in mixtral and "top-2" in mixtral and "source:" in mixtral


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"models"}
    ds = data["models"]["deepseek-v2-lite"]
    assert ds["n_experts"] == 64 and ds["top_k"] == 6 and ds["n_shared_experts"] == 2
    assert ds["total_params"] == pytest.approx(15.7e9, rel=0.01)


def test_all_json_has_every_category(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"models", "devices", "links", "platforms", "policies", "stacks", "formats", "profiles"}
    assert data["devices"], "no device presets"
    assert data["platforms"], "no platform presets"
    assert set(data["policies"]) == {"cache", "prefetch", "miss", "placement", "scheduling"}
    for dev in data["devices"].values():
        assert dev["source"]


def test_policies_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets", "policies"]) == 0
    out = capsys.readouterr().out
    assert "cache" in out and "lru" in out


def test_devices_text_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    from hwmodels import device_preset_names, get_device

    assert main(["presets", "devices"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = list(device_preset_names())
    assert [line.split()[0] for line in lines] == names
    for name, line in zip(names, lines, strict=True):
        dev = get_device(name)
        assert f"source: {dev.source}" in line
        for tier in dev.tiers:
            assert f"{tier.name} {tier.capacity_bytes / 1e9:.4g} GB" in line


def test_bad_category_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["presets", "gpus"])
    assert exc.value.code == 2
    assert "models" in capsys.readouterr().err


def test_stacks_text_one_line_each_with_source(capsys: pytest.CaptureFixture[str]) -> None:
    from hwmodels.stacks import get_stack, stack_preset_names

    assert main(["presets", "stacks"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = stack_preset_names()
    assert [line.split()[0] for line in lines] == names
    for name, line in zip(names, lines, strict=True):
        stack = get_stack(name)
        assert f"source: {stack.source}" in line
        assert f"layer {stack.per_layer_s * 1e6:g} us" in line
        for case in {c for p in stack.params for c in p.fitted_on}:
            assert case in line
    none = next(line for line in lines if line.startswith("none "))
    assert "charges no device work" in none
    vllm = next(line for line in lines if line.startswith("vllm "))
    assert "(unfitted; per_step, per_sequence, cpu_overlap run at 0)" in vllm
    trt = next(line for line in lines if line.startswith("trt-llm "))
    slowdown = get_stack("trt-llm").compute_slowdown
    assert f"kernels +{slowdown:.0%} compute time" in trt and "per_step: not separable from compute_slowdown" in trt
    deepep = next(line for line in lines if line.startswith("deepep-low-latency "))
    latency = get_stack("deepep-low-latency").collective_latency_s
    assert latency is not None and f"collective call {latency * 1e6:g} us" in deepep
    assert "collective call" not in trt
    assert "compute_slowdown: TensorRT-LLM 10.2's kernels" in trt


def test_stacks_json_carries_each_numbers_provenance(capsys: pytest.CaptureFixture[str]) -> None:
    from hwmodels.stacks import get_stack

    assert main(["presets", "stacks", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["stacks"]
    llama = data["llama.cpp"]
    assert llama["per_layer_s"] == get_stack("llama.cpp").per_layer_s
    assert {p["field"] for p in llama["params"]} >= {"per_step_s", "per_layer_s"}
    assert all(p["source"] for p in llama["params"])


def test_formats_and_profiles_listed(capsys: pytest.CaptureFixture[str]) -> None:
    from hwmodels.calibration import default_profile_names
    from workloads import WEIGHT_FORMATS

    assert main(["presets", "formats"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(WEIGHT_FORMATS)
    assert all("source: " in line for line in lines)
    assert "16-row tile" in next(line for line in lines if line.startswith("marlin "))
    assert main(["presets", "profiles", "--json"]) == 0
    profiles = json.loads(capsys.readouterr().out)["profiles"]
    assert sorted(profiles) == default_profile_names()
    assert profiles["h200"]["device"] == "h200" and "derived" in profiles["h200"]["source"]


def test_profiles_list_their_power_law(capsys: pytest.CaptureFixture[str]) -> None:
    from hwmodels.calibration import load_default_profile

    law = load_default_profile("h100").power_law
    assert law is not None
    assert main(["presets", "profiles", "--json"]) == 0
    profiles = json.loads(capsys.readouterr().out)["profiles"]
    assert profiles["a100"]["power_law"] is None
    assert profiles["h100-nvl"]["power_law"]["exponent"] == law.exponent
    assert main(["presets", "profiles"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert f"power limit: compute x (W / 700 W) ** {law.exponent:.4g} below 700 W" in lines["h100"]
    assert "power limit" not in lines["a100"]
