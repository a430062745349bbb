"""The HF routing tracer on tiny random Mixtral, Qwen2-MoE, OLMoE, DeepSeek-V2, Qwen3-MoE, gpt-oss models.

The recorded routing is checked against an independent computation: the model's own router logits
(``output_router_logits=True``, one forward over the whole sequence without KV cache) turned into
top-k with the family's rule in this file, and the generated tokens against ``model.generate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workloads import RoutingTrace
from workloads.tracer import (
    TINY_FAMILIES,
    _RouterRecorder,
    build_model_from_config,
    build_tiny_model,
    find_routers,
    load_model,
    record_routing,
    tiny_config,
)

PROMPTS = [[5, 17, 250, 3, 99, 42, 7], [300, 1, 64]]
NEW = 5
# family: (moe layers, n_experts, top_k, renormalise top-k weights)
EXPECTED = {
    "mixtral": (3, 8, 2, True),
    "qwen2-moe": (3, 60, 4, False),
    "olmoe": (3, 64, 8, False),
    "deepseek-v2": (2, 64, 6, False),  # layer 0 dense
    "qwen3-moe": (3, 128, 8, True),
    "gpt-oss": (3, 32, 4, True),  # softmax over the top-k logits = renormalised top-k of the softmax
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def recorded(request: pytest.FixtureRequest) -> tuple[str, Any, RoutingTrace]:
    family: str = request.param
    model = build_tiny_model(family, seed=3)
    trace = record_routing(model, PROMPTS, max_new_tokens=NEW, stop_at_eos=False, model_name=f"tiny-{family}")
    return family, model, trace


def test_families_covered() -> None:
    assert set(EXPECTED) == set(TINY_FAMILIES)


def test_shape_phases_positions(recorded: tuple[str, Any, RoutingTrace]) -> None:
    family, _, t = recorded
    layers, n_exp, k, _ = EXPECTED[family]
    assert t.n_moe_layers == layers and t.n_experts == n_exp and t.top_k == k == t.k
    assert t.n_tokens == sum(len(p) + NEW for p in PROMPTS)
    assert t.weights is not None
    assert t.meta["model"] == f"tiny-{family}"
    for rid, prompt in enumerate(PROMPTS):
        sel = t.request == rid
        p = len(prompt)
        assert t.phase[sel].tolist() == [0] * p + [1] * NEW
        assert t.position[sel].tolist() == list(range(p + NEW))
    assert (t.experts >= 0).all()
    # distinct experts per token and layer
    srt = np.sort(t.experts, axis=2)
    assert (srt[..., 1:] != srt[..., :-1]).all()


def test_generation_matches_model_generate(recorded: tuple[str, Any, RoutingTrace]) -> None:
    _, model, t = recorded
    for rid, prompt in enumerate(PROMPTS):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        assert out[0, len(prompt) :].tolist() == t.meta["generated_ids"][str(rid)]
        assert t.meta["prompt_ids"][str(rid)] == prompt


def _independent_topk(logits: torch.Tensor, k: int, renormalise: bool) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.nn.functional.softmax(logits.double(), dim=-1)
    order = torch.argsort(probs, dim=-1, descending=True)[:, :k]
    w = torch.gather(probs, -1, order)
    if renormalise:
        w = w / w.sum(-1, keepdim=True)
    return order.numpy(), w.numpy()


def test_topk_equals_router_logits_topk(recorded: tuple[str, Any, RoutingTrace]) -> None:
    """Prefill and decode rows both equal the top-k of the model's own router logits."""
    family, model, t = recorded
    _, _, k, renorm = EXPECTED[family]
    assert t.weights is not None
    for rid, prompt in enumerate(PROMPTS):
        seq = prompt + t.meta["generated_ids"][str(rid)]
        with torch.no_grad():
            out = model(torch.tensor([seq]), output_router_logits=True, use_cache=False)
        logits = out.router_logits
        assert len(logits) == t.n_moe_layers
        sel = t.request == rid
        for layer, lg in enumerate(logits):
            idx, w = _independent_topk(lg.reshape(len(seq), -1), k, renorm)
            assert np.array_equal(t.experts[sel][:, layer], idx), f"{family} request {rid} layer {layer}"
            assert np.allclose(t.weights[sel][:, layer], w, atol=1e-5)


def test_routers_found_by_structure() -> None:
    m = build_tiny_model("qwen2-moe", seed=0)
    names = [n for n, _ in find_routers(m)]
    assert names == [f"model.layers.{i}.mlp.gate" for i in range(3)]  # not shared_expert_gate
    d = build_tiny_model("deepseek-v2", seed=0)
    assert [n for n, _ in find_routers(d)] == ["model.layers.1.mlp.gate", "model.layers.2.mlp.gate"]


def test_not_moe_model() -> None:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    dense = build_model_from_config(cfg, seed=0)
    with pytest.raises(ValueError, match="no MoE router"):
        record_routing(dense, [1, 2, 3])


def test_seeded_and_rng_untouched() -> None:
    state = torch.random.get_rng_state()
    a = record_routing(build_tiny_model("mixtral", seed=11), [4, 5, 6], max_new_tokens=2, stop_at_eos=False)
    assert torch.equal(state, torch.random.get_rng_state())
    b = record_routing(build_tiny_model("mixtral", seed=11), [4, 5, 6], max_new_tokens=2, stop_at_eos=False)
    c = record_routing(build_tiny_model("mixtral", seed=12), [4, 5, 6], max_new_tokens=2, stop_at_eos=False)
    assert a.equals(b)
    assert a.weights is not None and c.weights is not None
    assert not np.array_equal(a.weights, c.weights)


def test_stop_at_eos() -> None:
    model = build_tiny_model("olmoe", seed=3)
    first = record_routing(model, PROMPTS[0], max_new_tokens=1, stop_at_eos=False).meta["generated_ids"]["0"][0]
    model.generation_config.eos_token_id = first
    t = record_routing(model, PROMPTS[0], max_new_tokens=4, stop_at_eos=True)
    assert t.meta["generated_ids"]["0"] == [first]
    assert (t.phase == 1).sum() == 0  # the end token is not fed back


def test_tokenizer_input(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "hello", "world"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    model = build_tiny_model("mixtral", seed=0)
    t = record_routing(model, tok, prompt=["hello world", "world"], max_new_tokens=0)
    assert t.meta["prompt_ids"] == {"0": [3, 4], "1": [4]}
    assert t.n_tokens == 3 and t.n_requests == 2
    with pytest.raises(ValueError, match="no prompt text"):
        record_routing(model, tok)


def test_input_errors() -> None:
    model = build_tiny_model("mixtral", seed=0)
    with pytest.raises(ValueError, match=r"token id 512 outside \[0, 512\)"):
        record_routing(model, [1, 512])
    with pytest.raises(ValueError, match="max_new_tokens"):
        record_routing(model, [1], max_new_tokens=-1)
    with pytest.raises(ValueError, match="at least one token"):
        record_routing(model, [[1], []])


def test_logits_only_router_uses_softmax_topk() -> None:
    """A router that returns bare logits (transformers 4.x style) gets softmax -> top-k (-> renorm)."""
    model = build_tiny_model("mixtral", seed=0)
    rec = _RouterRecorder(model, find_routers(model), n_experts=8, top_k=2)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]])
    idx, w = rec._decode_output(logits)
    assert idx.tolist() == [[1, 3]]
    assert w.sum() == pytest.approx(1.0)  # Mixtral renormalises
    assert w[0, 0] == pytest.approx(np.exp(3) / (np.exp(3) + np.exp(2)))
    with pytest.raises(ValueError, match="router output not understood"):
        rec._decode_output(torch.zeros(1, 5))


def test_tiny_config_and_load_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mixtral, qwen2-moe, olmoe"):
        tiny_config("switch")
    tiny_config("olmoe").save_pretrained(tmp_path)
    model, name = load_model(str(tmp_path), seed=1)
    assert name == "olmoe" and len(find_routers(model)) == 3
    with pytest.raises(FileNotFoundError, match="neither a tiny preset"):
        load_model(str(tmp_path / "nope"))
    bad = tmp_path / "bad" / "config.json"
    bad.parent.mkdir()
    bad.write_text('{"hidden_size": 4}', encoding="utf-8")
    with pytest.raises(ValueError, match="model_type"):
        load_model(str(bad))


def test_full_size_random_model_refused(tmp_path: Path) -> None:
    """A real-size config without weights is refused before allocating (counted on the meta device)."""
    import transformers

    transformers.MixtralConfig().save_pretrained(tmp_path)  # Mixtral-8x7B shape
    with pytest.raises(ValueError, match=r"46\.7B parameters"):
        load_model(str(tmp_path))


def test_torch_and_transformers_are_imported_lazily() -> None:
    """Importing the tracer, the importers and their CLI modules pulls in neither torch nor transformers."""
    import subprocess
    import sys

    code = (
        "import sys, workloads, workloads.importers, workloads.aggregated, workloads.tracer, "
        "codesign.cli_trace_io, codesign.cli_presets; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install moe-codesign\[torch,hf\]"):
        tiny_config("mixtral")
