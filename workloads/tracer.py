"""Record the routing of a Hugging Face MoE model through forward hooks on its routers.

`record_routing` runs a causal LM on a prompt (one prefill forward) and then generates greedily
token by token with the KV cache (one decode forward per generated token), and records what each
MoE layer's router chose for every token into a `RoutingTrace` with gate weights.

Routers are found generically (`find_routers`): a module registered as ``gate`` or ``router`` of a
parent that also has ``experts`` (the sparse-MoE block): Mixtral ``block_sparse_moe.gate`` /
``mlp.gate``, Qwen2-MoE / Qwen3-MoE ``mlp.gate``, OLMoE ``mlp.gate``, DeepSeek-V2/V3 ``mlp.gate``.
Shared-expert gates (``shared_expert_gate``) and dense layers are not routers.

What is recorded per router call (see `_RouterRecorder`):

- In transformers 5.x a router returns ``(router_logits, top_k_weights, top_k_index)``: the
  experts and weights the model itself then uses. These are recorded as they are (sorted by weight,
  highest first), so model-specific rules (norm_topk_prob, DeepSeek group-limited top-k, scaling
  factors, sigmoid scores) are the model's own.
- A router that returns only logits (an ``nn.Linear`` gate, transformers 4.x) gets the standard rule
  computed from the logits: softmax in float32, top-k, renormalised when the config says so
  (``norm_topk_prob``; Mixtral always renormalises).

Layout of the trace: one request per prompt; ``P`` prefill rows (phase 0, positions ``0..P-1``)
then one decode row per generated token (phase 1, positions ``P..``): decode row ``i`` is the i-th
generated token being fed back through the model. Generation stops after ``max_new_tokens`` tokens
or, with ``stop_at_eos``, when the end-of-sequence token comes out (it is not fed back).
``meta["generated_ids"]`` and ``meta["prompt_ids"]`` keep the token ids per request.

torch and transformers are imported lazily inside the functions; without them a clear
`ImportError` names the extras ``pip install moe-codesign[torch,hf]``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workloads.trace import DECODE, PREFILL, RoutingTrace

log = logging.getLogger(__name__)

_EXTRA_HINT = "install the extras: pip install moe-codesign[torch,hf]"

#: Tiny preset names for ``--hf-config`` -> family of `tiny_config`.
TINY_PRESETS = {
    "tiny-mixtral": "mixtral",
    "tiny-qwen2-moe": "qwen2-moe",
    "tiny-olmoe": "olmoe",
    "tiny-deepseek-v2": "deepseek-v2",
    "tiny-qwen3-moe": "qwen3-moe",
    "tiny-gpt-oss": "gpt-oss",
}
TINY_FAMILIES = tuple(TINY_PRESETS.values())


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"the routing tracer needs torch: {_EXTRA_HINT}") from exc
    return torch


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(f"the routing tracer needs transformers: {_EXTRA_HINT}") from exc
    return transformers


# --------------------------------------------------------------- tiny models
def tiny_config(family: str) -> Any:
    """A small random-init config of a real MoE family, built offline.

    ``family``: "mixtral" (8 experts, top-2, renormalised), "qwen2-moe" (60 experts, top-4,
    a shared expert, no renormalisation, as Qwen1.5-MoE-A2.7B), "olmoe" (64 experts, top-8, no
    renormalisation, as OLMoE-1B-7B), "deepseek-v2" (layer 0 dense, then 64 routed experts, top-6,
    2 shared experts, MLA attention, as DeepSeek-V2-Lite), "qwen3-moe" (128 experts, top-8,
    renormalised, as Qwen3-30B-A3B), "gpt-oss" (32 experts, top-4, softmax over the top-k logits,
    alternating sliding/full attention, as gpt-oss-20b). Expert counts and top-k follow the real models
    (shared/reference/hardware-and-papers.md s.5); widths and depth are shrunk (3 layers, hidden 64)
    so that a CPU forward takes milliseconds. ``initializer_range`` 0.1 (an assumption, larger than
    the real 0.02) keeps random router scores from being near-ties.
    """
    tf = _transformers()
    common: dict[str, Any] = dict(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    if family == "mixtral":
        return tf.MixtralConfig(
            **common, intermediate_size=128, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2
        )
    if family == "qwen2-moe":
        return tf.Qwen2MoeConfig(
            **common,
            intermediate_size=128,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            num_key_value_heads=4,
            num_experts=60,
            num_experts_per_tok=4,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    if family == "olmoe":
        return tf.OlmoeConfig(
            **common,
            intermediate_size=32,
            num_key_value_heads=4,
            num_experts=64,
            num_experts_per_tok=8,
            norm_topk_prob=False,
            pad_token_id=1,
            eos_token_id=2,
        )
    if family == "deepseek-v2":
        return tf.DeepseekV2Config(
            **common,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_key_value_heads=4,
            n_routed_experts=64,
            num_experts_per_tok=6,
            n_shared_experts=2,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            topk_method="greedy",
            norm_topk_prob=False,
            routed_scaling_factor=1.0,
        )
    if family == "qwen3-moe":
        return tf.Qwen3MoeConfig(
            **common,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
        )
    if family == "gpt-oss":
        return tf.GptOssConfig(
            **common,
            intermediate_size=32,
            num_key_value_heads=2,
            head_dim=16,
            num_local_experts=32,
            num_experts_per_tok=4,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    raise ValueError(f"unknown tiny model family {family!r}; valid: {', '.join(TINY_FAMILIES)}")


#: Largest model `build_model_from_config` builds with random weights (an assumption: 2e9 float32
#: parameters = 8 GB, what a laptop holds); raise it with ``max_params``.
DEFAULT_MAX_RANDOM_PARAMS = 2e9


def count_params(config: Any) -> int:
    """Parameters of the causal LM ``config`` describes, counted on the meta device (no memory)."""
    torch = _torch()
    tf = _transformers()
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(config)
    return int(sum(p.numel() for p in model.parameters()))


def build_model_from_config(config: Any, seed: int = 0, *, max_params: float = DEFAULT_MAX_RANDOM_PARAMS) -> Any:
    """A causal LM with random weights from ``config``, seeded, in eval mode (float32, CPU).

    The global torch RNG is forked, so the caller's random state is left untouched. A config
    with more than ``max_params`` parameters is refused with a `ValueError` (random weights of
    a full-size model would only exhaust memory; use a tiny config or real weights).
    """
    torch = _torch()
    tf = _transformers()
    n = count_params(config)
    if n > max_params:
        raise ValueError(
            f"config {getattr(config, 'model_type', '?')} has {n / 1e9:.1f}B parameters (> {max_params / 1e9:g}B "
            f"allowed for random weights, {4 * n / 1e9:.0f} GB in float32); use a tiny preset, load real weights "
            "with --hf-model, or raise max_params"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def build_tiny_model(family: str, seed: int = 0) -> Any:
    """`tiny_config` (``family``) with random weights drawn from ``seed``."""
    return build_model_from_config(tiny_config(family), seed)


def load_model(
    config_or_preset: str, *, hf_model: str | None = None, seed: int = 0, max_params: float = DEFAULT_MAX_RANDOM_PARAMS
) -> tuple[Any, str]:
    """(model, name) for ``codesign trace record``; never touches the network.

    ``config_or_preset``: a tiny preset (``tiny-mixtral``, ``tiny-qwen2-moe``, ``tiny-olmoe``), a
    ``config.json`` or a directory holding one. With ``hf_model`` (a directory), the pretrained
    weights are loaded from there (``local_files_only``); otherwise weights are random from ``seed``
    (at most ``max_params`` parameters).
    """
    tf = _transformers()
    if hf_model is not None:
        d = Path(hf_model)
        if not d.is_dir():
            raise FileNotFoundError(f"--hf-model {d}: not a directory")
        model = tf.AutoModelForCausalLM.from_pretrained(str(d), local_files_only=True)
        model.eval()
        return model, d.name
    if config_or_preset in TINY_PRESETS:
        return build_tiny_model(TINY_PRESETS[config_or_preset], seed), config_or_preset
    p = Path(config_or_preset)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"--hf-config {config_or_preset}: neither a tiny preset ({', '.join(TINY_PRESETS)}) nor a config.json "
            "file or directory"
        )
    try:
        with open(p, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ValueError(f"{p}: expected a Hugging Face config.json with a 'model_type' field")
    config = _config_from_dict(tf, raw, p)
    name = str(raw.get("_name_or_path") or raw["model_type"])
    return build_model_from_config(config, seed, max_params=max_params), name


def _config_from_dict(tf: Any, raw: dict[str, Any], path: Path) -> Any:
    """``AutoConfig.for_model(**raw)`` with one-line errors naming ``path`` (a `ValueError`).

    transformers validates fields strictly (huggingface_hub strict dataclasses) and its messages
    span several lines and do not name the file; an unknown ``model_type`` lists every known one.
    """
    model_type = raw["model_type"]
    known = getattr(tf, "CONFIG_MAPPING", None)
    if not isinstance(model_type, str) or (known is not None and model_type not in known):
        raise ValueError(
            f"{path}: field 'model_type' is {model_type!r}, which this transformers "
            f"({getattr(tf, '__version__', '?')}) does not know; expected a model type such as "
            "'mixtral', 'qwen2_moe', 'olmoe', 'deepseek_v2', 'qwen3_moe', 'gpt_oss'"
        )
    strict_errors: tuple[type[BaseException], ...] = (TypeError, ValueError)
    try:
        from huggingface_hub.errors import StrictDataclassError

        strict_errors = (*strict_errors, StrictDataclassError)
    except ImportError:  # older huggingface_hub without strict dataclasses
        pass
    try:
        return tf.AutoConfig.for_model(**raw)
    except strict_errors as exc:
        text = " ".join(str(exc).split())
        raise ValueError(f"{path}: invalid {model_type} config: {text}") from exc


def load_tokenizer(directory: str) -> Any:
    """The tokenizer saved in ``directory`` (offline)."""
    tf = _transformers()
    return tf.AutoTokenizer.from_pretrained(directory, local_files_only=True)


def random_prompt_ids(model: Any, length: int, *, seed: int = 0) -> list[int]:
    """``length`` token ids drawn uniformly from the model's vocabulary with ``seed``."""
    vocab = int(model.config.vocab_size)
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(0, vocab, size=length)]


# ----------------------------------------------------------- router finding
_LAYER_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def find_routers(model: Any) -> list[tuple[str, Any]]:
    """(qualified name, module) of every MoE router, in layer order.

    A router is a child registered as ``gate`` or ``router`` of a module that also has an
    ``experts`` child. Raises `ValueError` if the model has none (not an MoE model).
    """
    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if not hasattr(module, "experts"):
            continue
        for attr in ("gate", "router"):
            child = getattr(module, attr, None)
            if child is not None and hasattr(child, "forward") and child is not module:
                found.append((f"{name}.{attr}" if name else attr, child))
                break
    if not found:
        raise ValueError(
            f"{type(model).__name__}: no MoE router found (no module with 'experts' and a "
            "'gate'/'router' child); is this a Mixture-of-Experts model?"
        )

    return sorted(found, key=lambda item: (_layer_index(item[0]), item[0]))


def _layer_index(name: str) -> int:
    """Decoder layer number in a module name (the last ``.N.`` component), -1 if none."""
    m = _LAYER_RE.findall(name)
    return int(m[-1]) if m else -1


def _config_get(config: Any, *names: str) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return None


def routing_shape(model: Any) -> tuple[int, int]:
    """(n_experts, top_k) from the model config (the various names families use)."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    n = _config_get(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    k = _config_get(cfg, "num_experts_per_tok", "num_selected_experts", "moe_topk", "experts_per_token")
    if n is None or k is None:
        raise ValueError(
            f"{type(model).__name__}: config gives no expert count / top-k "
            "(num_local_experts|num_experts|n_routed_experts, num_experts_per_tok)"
        )
    return int(n), int(k)


def _renormalise(config: Any) -> bool:
    """Whether top-k weights are renormalised to sum 1 when computed from logits: the config's
    ``norm_topk_prob`` where it has one; Mixtral and gpt-oss (softmax over the top-k logits) always."""
    v = getattr(config, "norm_topk_prob", None)
    if v is not None:
        return bool(v)
    return str(getattr(config, "model_type", "")).startswith(("mixtral", "gpt_oss"))


def topk_from_logits(logits: Any, top_k: int, *, renormalise: bool) -> tuple[Any, Any]:
    """(weights, indices) of the softmax-then-top-k rule, highest first (float32 softmax)."""
    torch = _torch()
    probs = torch.softmax(logits.float(), dim=-1)
    w, idx = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        w = w / w.sum(dim=-1, keepdim=True)
    return w, idx


class _RouterRecorder:
    """Forward hooks that capture each router's (experts, weights) for the current forward call."""

    def __init__(self, model: Any, routers: list[tuple[str, Any]], n_experts: int, top_k: int) -> None:
        self.routers = routers
        self.n_experts = n_experts
        self.top_k = top_k
        cfg = getattr(model.config, "text_config", None) or model.config
        self.renormalise = _renormalise(cfg)
        self.calls: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in routers]
        self.weights_from: set[str] = set()
        self._handles: list[Any] = []

    def __enter__(self) -> _RouterRecorder:
        for i, (_, module) in enumerate(self.routers):
            self._handles.append(module.register_forward_hook(self._make_hook(i)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def reset(self) -> None:
        for c in self.calls:
            c.clear()

    def _make_hook(self, i: int) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self.calls[i].append(self._decode_output(output))

        return hook

    def _decode_output(self, output: Any) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        tensors = list(output) if isinstance(output, (tuple, list)) else [output]
        logits = idx = w = None
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            if t.dtype in (torch.int64, torch.int32) and t.shape[-1] == self.top_k and idx is None:
                idx = t
            elif t.is_floating_point() and t.shape[-1] == self.n_experts and logits is None:
                logits = t
            elif t.is_floating_point() and t.shape[-1] == self.top_k and w is None:
                w = t
        if idx is not None and w is not None:
            self.weights_from.add("router output (the model's own top-k and weights)")
            w = w.detach().float().reshape(-1, self.top_k)
            idx = idx.detach().reshape(-1, self.top_k)
            order = torch.argsort(w, dim=-1, descending=True, stable=True)
            w = torch.gather(w, -1, order)
            idx = torch.gather(idx, -1, order)
        elif logits is not None:
            self.weights_from.add("softmax-top-k of router logits" + (", renormalised" if self.renormalise else ""))
            w, idx = topk_from_logits(
                logits.detach().reshape(-1, self.n_experts), self.top_k, renormalise=self.renormalise
            )
        else:
            raise ValueError(
                f"router output not understood: expected logits [..., {self.n_experts}] or "
                f"(logits, weights [..., {self.top_k}], indices [..., {self.top_k}]), got "
                f"{[getattr(t, 'shape', type(t).__name__) for t in tensors]}"
            )
        return idx.cpu().numpy().astype(np.int16), w.cpu().numpy().astype(np.float32)

    def take(self, n_rows: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Experts [n_rows, layers, k] and weights of the forward just run; checks one call per router."""
        ex = np.empty((n_rows, len(self.routers), self.top_k), dtype=np.int16)
        w = np.empty((n_rows, len(self.routers), self.top_k), dtype=np.float32)
        for j, calls in enumerate(self.calls):
            if len(calls) != 1:
                raise RuntimeError(
                    f"{what}: router {self.routers[j][0]} ran {len(calls)} times in one forward, expected once"
                )
            e, ww = calls[0]
            if e.shape[0] != n_rows:
                raise RuntimeError(f"{what}: router {self.routers[j][0]} saw {e.shape[0]} tokens, expected {n_rows}")
            ex[:, j] = e
            w[:, j] = ww
        self.reset()
        return ex, w


# --------------------------------------------------------------- recording
def _as_id_lists(inputs: Any) -> list[list[int]] | None:
    """Token-id prompts from ints / sequences / tensors / arrays, or None for a tokenizer."""
    torch = _torch()
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 1:
            return [[int(x) for x in inputs]]
        if inputs.ndim == 2:
            return [[int(x) for x in row] for row in inputs]
        raise ValueError(f"input ids must be 1-D or 2-D, got shape {inputs.shape}")
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        if inputs and all(isinstance(x, (int, np.integer)) for x in inputs):
            return [[int(x) for x in inputs]]
        if inputs and all(isinstance(x, Sequence) and not isinstance(x, str) for x in inputs):
            return [[int(x) for x in row] for row in inputs]
        raise ValueError("input ids must be a non-empty list of ints or a list of such lists")
    return None


def record_routing(
    model: Any,
    tokenizer_or_input_ids: Any,
    *,
    prompt: str | Sequence[str] | None = None,
    max_new_tokens: int = 0,
    stop_at_eos: bool = True,
    model_name: str | None = None,
    first_request: int = 0,
) -> RoutingTrace:
    """Run ``model`` on each prompt (prefill, then greedy decode with KV cache) and record routing.

    ``tokenizer_or_input_ids``: token ids (a list of ints, a list of lists, a 1-D/2-D tensor or
    array; each row is one prompt) or a tokenizer, in which case ``prompt`` (a string or a list
    of strings) is tokenised. Each prompt runs alone (batch 1, no padding) and is request
    ``first_request + i``. ``max_new_tokens``: decode tokens to generate per prompt (0 = prefill
    only). Returns a `RoutingTrace` with ``weights``; meta records the model, routers, how the
    weights were obtained, and the prompt and generated ids. Runs under ``torch.no_grad``; the
    model's training/eval mode is left as found (call ``model.eval()`` first).
    """
    torch = _torch()
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompts = _as_id_lists(tokenizer_or_input_ids)
    if prompts is None:
        tok = tokenizer_or_input_ids
        if prompt is None:
            raise ValueError("a tokenizer was given but no prompt text (prompt=...)")
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [list(tok(t)["input_ids"]) for t in texts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    vocab = int(getattr(getattr(model.config, "text_config", None) or model.config, "vocab_size", 0) or 0)
    for i, p in enumerate(prompts):
        bad = [x for x in p if x < 0 or (vocab and x >= vocab)]
        if bad:
            raise ValueError(f"prompt {i}: token id {bad[0]} outside [0, {vocab})")
    routers = find_routers(model)
    n_experts, top_k = routing_shape(model)
    eos = _eos_ids(model) if stop_at_eos else set()
    device = next(model.parameters()).device
    cache_kw = _cache_kwarg(model)

    rows_e: list[np.ndarray] = []
    rows_w: list[np.ndarray] = []
    req: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    phase: list[np.ndarray] = []
    generated: dict[str, list[int]] = {}
    with _RouterRecorder(model, routers, n_experts, top_k) as rec, torch.no_grad():
        for i, ids in enumerate(prompts):
            rid = first_request + i
            n_p = len(ids)
            out = model(input_ids=torch.tensor([ids], device=device), use_cache=True)
            e, w = rec.take(n_p, f"request {rid} prefill")
            rows_e.append(e)
            rows_w.append(w)
            req.append(np.full(n_p, rid, np.int32))
            pos.append(np.arange(n_p, dtype=np.int32))
            phase.append(np.full(n_p, PREFILL, np.uint8))
            past = _out_cache(out)
            gen: list[int] = []
            for step in range(max_new_tokens):
                nxt = int(out.logits[0, -1].argmax())
                gen.append(nxt)
                if nxt in eos:
                    break
                out = model(input_ids=torch.tensor([[nxt]], device=device), use_cache=True, **{cache_kw: past})
                past = _out_cache(out)
                e, w = rec.take(1, f"request {rid} decode step {step}")
                rows_e.append(e)
                rows_w.append(w)
                req.append(np.array([rid], np.int32))
                pos.append(np.array([n_p + step], np.int32))
                phase.append(np.array([DECODE], np.uint8))
            generated[str(rid)] = gen
        weights_from = sorted(rec.weights_from)
    tf_version = getattr(_transformers(), "__version__", "?")
    cfg = getattr(model.config, "text_config", None) or model.config
    meta: dict[str, Any] = {
        "model": model_name or str(getattr(model.config, "_name_or_path", "") or cfg.model_type),
        "model_type": str(cfg.model_type),
        "n_experts": n_experts,
        "top_k": top_k,
        "source": f"recorded with moe-codesign tracer (transformers {tf_version}, torch {torch.__version__})",
        "licence": "generated locally; the licence of the model's weights applies",
        "routers": [name for name, _ in routers],
        "moe_layer_ids": [_layer_index(name) for name, _ in routers],
        "weights_from": weights_from,
        "expert_order": "highest gate first",
        "prompt_ids": {str(first_request + i): p for i, p in enumerate(prompts)},
        "generated_ids": generated,
        "position": "prefill 0..P-1, decode P.. (the i-th generated token fed back)",
    }
    return RoutingTrace(
        experts=np.concatenate(rows_e),
        request=np.concatenate(req),
        position=np.concatenate(pos),
        phase=np.concatenate(phase),
        meta=meta,
        weights=np.concatenate(rows_w),
    )


def _cache_kwarg(model: Any) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    """The KV cache of a model output, under its new (``cache``) or old (``past_key_values``) name."""
    keys = out.keys() if hasattr(out, "keys") else []
    if "cache" in keys:
        return out["cache"]
    if "past_key_values" in keys:
        return out["past_key_values"]
    raise RuntimeError("the model returned no KV cache (use_cache=True); cannot decode token by token")


def _eos_ids(model: Any) -> set[int]:
    out: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        v = getattr(src, "eos_token_id", None) if src is not None else None
        if v is None:
            continue
        out.update([int(v)] if isinstance(v, int) else [int(x) for x in v])
    return out
