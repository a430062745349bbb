"""MoE model specifications (`MoEModel`) and their presets, each with its source.

Every preset number comes from the model's published ``config.json`` as compiled in
``shared/reference/hardware-and-papers.md`` section 5 (and for MLA head sizes, the DeepSeek
configs); the ``source`` field of each preset names it. Derived quantities (bytes and FLOPs per
expert, active and total parameters, KV-cache bytes per token) are properties, never entered twice.

Conventions (units in names):
- parameter counts are plain numbers of weights; ``*_bytes`` are bytes at the precision of the
  weights' component (see below);
- ``*_flops_per_token`` count a multiply-add as 2 FLOPs;
- norms, biases and rotary tables are ignored (well under 0.1% of any preset).

Precision per component. ``bytes_per_weight`` is the model-wide weight precision; each component in
`WEIGHT_COMPONENTS` may override it with ``<component>_bytes_per_weight`` (None: follow
``bytes_per_weight``) and name the kernel format of its packed weights with ``<component>_format``
(one of `WEIGHT_FORMATS`; ``"none"``: no dequantisation is charged, today's behaviour). A format
names packed sub-8-bit weights, so a format other than ``"none"`` on a component of >= 1 byte per
weight is refused. Sub-8-bit weights with format ``"none"`` are costed as an idealised fused kernel:
their packed bytes are read, the GEMM runs at bf16 and dequantisation is free (a lower bound; name a
format, e.g. ``marlin``, for its cost). This keeps ``int4`` usable as a plain precision
(`PRECISION_BYTES`, ``simulate --precision int4``) without silently choosing a kernel for the user:

- ``attention``: the q/k/v/o (or MLA) projections of every layer;
- ``expert``: the routed experts (``bytes_per_expert``: what one expert fetch moves over a link);
- ``shared``: the shared experts;
- ``dense``: the router and the FFNs of dense layers;
- ``embedding``: the input embedding and the LM head.

Bytes per weight include any quantisation metadata (scales, zeros): HQQ 2-bit with group 16 is
about 2.6 bits, i.e. 0.325 B/weight (Mixtral-offloading paper, arXiv 2312.17238, s.4.3). The KV
cache has ``kv_bytes_per_elem``; the all-to-all activations ``dispatch_bytes_per_elem`` and
``combine_bytes_per_elem`` (default 2.0 = bf16, as ``hwmodels.costs.ACTIVATION_BYTES``; DeepEP
sends FP8 dispatch and BF16 combine: 1.0 and 2.0). Every default reproduces the single-precision
model, so presets and existing files do not move.

How-to (a case file's ``model_overrides`` or a model JSON/TOML file), Mixtral-offloading's 4-bit
HQQ attention with 2-bit HQQ experts::

    {"attention_bytes_per_weight": 0.5, "attention_format": "hqq-triton-g64",
     "expert_bytes_per_weight": 0.325, "expert_format": "hqq-triton"}

The costs of each format are in ``hwmodels.dequant``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

AttentionKind = Literal["gqa", "mla"]

#: Bytes per weight for the precisions the search varies.
PRECISION_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5}

#: Weight components with a precision and a format of their own (see the module docstring).
WEIGHT_COMPONENTS: tuple[str, ...] = ("attention", "expert", "shared", "dense", "embedding")

#: Kernel formats of packed weights, costed in ``hwmodels.dequant`` (a test keeps both lists equal).
#: ``none``: no dequantisation charged (native dtype; for sub-8-bit weights an idealised fused kernel
#: whose dequantisation is free, a lower bound). The others are sub-8-bit packed formats only.
WEIGHT_FORMATS: tuple[str, ...] = ("none", "marlin", "llamacpp-mmvq", "hqq-triton", "hqq-triton-g64", "hqq-unfused")

#: Default bytes per element of the all-to-all activations (bf16).
DEFAULT_A2A_BYTES = 2.0


class UnknownPresetError(KeyError):
    """An unknown preset name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, kw_only=True)
class MoEModel:
    """Shape of an MoE transformer, enough to cost its inference.

    Layers ``0 .. n_layers-1``; the first ``first_dense_layers`` are dense, after them every
    ``moe_layer_step``-th layer is MoE (``moe_layer_offset`` picks which of the step). Attention is
    GQA (``n_kv_heads <= n_heads``; MHA when equal) or DeepSeek MLA (compressed KV of
    ``kv_lora_rank + qk_rope_head_dim`` per token per layer).
    """

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    expert_ffn_dim: int
    n_experts: int
    top_k: int
    gated: bool = True
    first_dense_layers: int = 0
    moe_layer_step: int = 1
    moe_layer_offset: int = 0
    dense_ffn_dim: int = 0
    n_shared_experts: int = 0
    shared_ffn_dim: int = 0
    vocab_size: int = 32000
    tie_embeddings: bool = False
    attention: AttentionKind = "gqa"
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    n_cross_attention_layers: int = 0
    bytes_per_weight: float = 2.0
    kv_bytes_per_elem: float = 2.0
    attention_bytes_per_weight: float | None = None
    expert_bytes_per_weight: float | None = None
    shared_bytes_per_weight: float | None = None
    dense_bytes_per_weight: float | None = None
    embedding_bytes_per_weight: float | None = None
    attention_format: str = "none"
    expert_format: str = "none"
    shared_format: str = "none"
    dense_format: str = "none"
    embedding_format: str = "none"
    dispatch_bytes_per_elem: float = DEFAULT_A2A_BYTES
    combine_bytes_per_elem: float = DEFAULT_A2A_BYTES
    source: str = "user-defined"
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        positive = (
            "n_layers",
            "d_model",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "expert_ffn_dim",
            "n_experts",
            "top_k",
            "moe_layer_step",
            "vocab_size",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MoEModel {self.name!r}: {name} must be a positive int, got {value!r}")
        if self.top_k > self.n_experts:
            raise ValueError(f"MoEModel {self.name!r}: top_k={self.top_k} exceeds n_experts={self.n_experts}")
        if self.n_kv_heads > self.n_heads:
            raise ValueError(f"MoEModel {self.name!r}: n_kv_heads={self.n_kv_heads} > n_heads={self.n_heads}")
        if not 0 <= self.first_dense_layers <= self.n_layers:
            raise ValueError(
                f"MoEModel {self.name!r}: first_dense_layers={self.first_dense_layers} "
                f"must be in [0, n_layers={self.n_layers}]"
            )
        if (self.first_dense_layers > 0 or self.moe_layer_step > 1) and self.dense_ffn_dim <= 0:
            raise ValueError(f"MoEModel {self.name!r}: has dense layers, so dense_ffn_dim must be > 0")
        if self.n_shared_experts < 0 or (self.n_shared_experts > 0 and self.shared_ffn_dim <= 0):
            raise ValueError(f"MoEModel {self.name!r}: shared experts need shared_ffn_dim > 0")
        for name in ("bytes_per_weight", "kv_bytes_per_elem", "dispatch_bytes_per_elem", "combine_bytes_per_elem"):
            _check_bytes(self.name, name, getattr(self, name), optional=False)
        for comp in WEIGHT_COMPONENTS:
            own = f"{comp}_bytes_per_weight"
            _check_bytes(self.name, own, getattr(self, own), optional=True)
            fmt = getattr(self, f"{comp}_format")
            if fmt not in WEIGHT_FORMATS:
                raise ValueError(
                    f"MoEModel {self.name!r}: {comp}_format={fmt!r} unknown; valid: {', '.join(WEIGHT_FORMATS)}"
                )
            if fmt != "none" and self.weight_bytes_of(comp) >= 1.0:
                raise ValueError(
                    f"MoEModel {self.name!r}: {comp}_format={fmt!r} packs sub-8-bit weights, but {comp} has "
                    f"{self.weight_bytes_of(comp):g} bytes per weight (>= 1); use format 'none'"
                )
        if self.attention == "mla" and (self.kv_lora_rank <= 0 or self.v_head_dim <= 0):
            raise ValueError(f"MoEModel {self.name!r}: MLA needs kv_lora_rank and v_head_dim > 0")
        if not self.moe_layers:
            raise ValueError(f"MoEModel {self.name!r}: no MoE layer")

    # ----------------------------------------------------------------- layers
    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the MoE layers (ascending)."""
        return tuple(
            i
            for i in range(self.first_dense_layers, self.n_layers)
            if (i - self.first_dense_layers) % self.moe_layer_step == self.moe_layer_offset
        )

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    # ---------------------------------------------------------------- experts
    @property
    def matrices_per_expert(self) -> int:
        """3 for gated FFNs (gate, up, down), 2 otherwise."""
        return 3 if self.gated else 2

    @property
    def params_per_expert(self) -> int:
        """Weights of one routed expert (biases ignored)."""
        return self.matrices_per_expert * self.d_model * self.expert_ffn_dim

    # -------------------------------------------------------------- precision
    def weight_bytes_of(self, component: str) -> float:
        """Bytes per weight of ``component`` (one of `WEIGHT_COMPONENTS`): its own override, else
        ``bytes_per_weight``."""
        if component not in WEIGHT_COMPONENTS:
            raise ValueError(f"unknown weight component {component!r}; valid: {', '.join(WEIGHT_COMPONENTS)}")
        own = getattr(self, f"{component}_bytes_per_weight")
        return float(self.bytes_per_weight if own is None else own)

    def format_of(self, component: str) -> str:
        """The kernel format of ``component``'s weights (one of `WEIGHT_FORMATS`)."""
        if component not in WEIGHT_COMPONENTS:
            raise ValueError(f"unknown weight component {component!r}; valid: {', '.join(WEIGHT_COMPONENTS)}")
        return str(getattr(self, f"{component}_format"))

    @property
    def dispatch_bytes_per_token(self) -> float:
        """Bytes one token's hidden row carries in the all-to-all dispatch (``d_model`` elements)."""
        return self.d_model * self.dispatch_bytes_per_elem

    @property
    def combine_bytes_per_token(self) -> float:
        """Bytes one expert output row carries in the all-to-all combine (``d_model`` elements)."""
        return self.d_model * self.combine_bytes_per_elem

    @property
    def bytes_per_expert(self) -> float:
        """Bytes of one routed expert's weights at the expert precision (what one fetch moves)."""
        return self.params_per_expert * self.weight_bytes_of("expert")

    @property
    def expert_flops_per_token(self) -> int:
        """FLOPs of one routed expert on one token (2 per multiply-add)."""
        return 2 * self.params_per_expert

    @property
    def params_shared_experts(self) -> int:
        """Weights of all shared experts of one MoE layer."""
        return self.n_shared_experts * self.matrices_per_expert * self.d_model * self.shared_ffn_dim

    @property
    def bytes_shared_experts(self) -> float:
        """Bytes of all shared experts of one MoE layer at the shared-expert precision."""
        return self.params_shared_experts * self.weight_bytes_of("shared")

    @property
    def shared_flops_per_token(self) -> int:
        """FLOPs of the shared experts of one MoE layer on one token."""
        return 2 * self.params_shared_experts

    @property
    def router_params(self) -> int:
        return self.d_model * self.n_experts

    @property
    def router_bytes(self) -> float:
        """Bytes of one MoE layer's router weights at the ``dense`` precision."""
        return self.router_params * self.weight_bytes_of("dense")

    @property
    def router_flops_per_token(self) -> int:
        return 2 * self.router_params

    @property
    def params_dense_ffn(self) -> int:
        """Weights of the FFN of one dense layer (same gating as the experts)."""
        return self.matrices_per_expert * self.d_model * self.dense_ffn_dim

    def dense_ffn_model(self) -> MoEModel:
        """This model with its dense-layer FFN in the expert's place (``expert_ffn_dim =
        dense_ffn_dim``, the ``dense`` precision and format), so that one dense FFN costs as one
        expert of it. Needs dense layers (``dense_ffn_dim > 0``)."""
        if self.dense_ffn_dim <= 0:
            raise ValueError(f"MoEModel {self.name!r}: no dense FFN (dense_ffn_dim = {self.dense_ffn_dim})")
        return self.with_(
            expert_ffn_dim=self.dense_ffn_dim,
            expert_bytes_per_weight=self.weight_bytes_of("dense"),
            expert_format=self.dense_format,
        )

    # -------------------------------------------------------------- attention
    @property
    def params_attention(self) -> int:
        """Weights of one layer's self-attention projections."""
        d, h = self.d_model, self.n_heads
        if self.attention == "mla":
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank > 0:
                q = d * self.q_lora_rank + self.q_lora_rank * h * qk_dim
            else:
                q = d * h * qk_dim
            kv_a = d * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)
            o = h * self.v_head_dim * d
            return q + kv_a + kv_b + o
        q = d * h * self.head_dim
        kv = 2 * d * self.n_kv_heads * self.head_dim
        o = h * self.head_dim * d
        return q + kv + o

    @property
    def attention_bytes(self) -> float:
        """Bytes of one layer's attention projections at the attention precision."""
        return self.params_attention * self.weight_bytes_of("attention")

    @property
    def attention_flops_per_token_proj(self) -> int:
        """FLOPs of one layer's attention projections on one token (score FLOPs excluded)."""
        return 2 * self.params_attention

    @property
    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token summed over all layers (MLA: compressed latent + rope key)."""
        if self.attention == "mla":
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.n_kv_heads * self.head_dim
        return per_layer * self.n_layers * self.kv_bytes_per_elem

    # ----------------------------------------------------------------- totals
    @property
    def params_embedding(self) -> int:
        """Input embedding plus (untied) output head."""
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    def _params(self, experts_per_layer: int) -> int:
        attn = self.n_layers * self.params_attention + self.n_cross_attention_layers * self.params_attention
        moe = self.n_moe_layers * (
            experts_per_layer * self.params_per_expert + self.params_shared_experts + self.router_params
        )
        dense = self.n_dense_layers * self.params_dense_ffn
        return self.params_embedding + attn + moe + dense

    @property
    def total_params(self) -> int:
        """All weights (embeddings included, norms and biases ignored)."""
        return self._params(self.n_experts)

    @property
    def active_params(self) -> int:
        """Weights touched per token: top-k routed experts, shared experts, attention, embeddings."""
        return self._params(self.top_k)

    @property
    def params_lm_head(self) -> int:
        """Weights of the output head (``d_model x vocab_size``; tied or not, it is read every step)."""
        return self.vocab_size * self.d_model

    @property
    def lm_head_bytes(self) -> float:
        """Bytes of the LM head at the embedding precision."""
        return self.params_lm_head * self.weight_bytes_of("embedding")

    def params_of(self, component: str) -> int:
        """Weights of ``component`` in the whole model (routed experts: all of them)."""
        attn_layers = self.n_layers + self.n_cross_attention_layers
        counts = {
            "attention": attn_layers * self.params_attention,
            "expert": self.n_moe_layers * self.n_experts * self.params_per_expert,
            "shared": self.n_moe_layers * self.params_shared_experts,
            "dense": self.n_moe_layers * self.router_params + self.n_dense_layers * self.params_dense_ffn,
            "embedding": self.params_embedding,
        }
        if component not in counts:
            raise ValueError(f"unknown weight component {component!r}; valid: {', '.join(WEIGHT_COMPONENTS)}")
        return counts[component]

    def bytes_of(self, component: str) -> float:
        """Bytes of ``component`` in the whole model at its own precision."""
        return self.params_of(component) * self.weight_bytes_of(component)

    @property
    def total_bytes(self) -> float:
        """All weight bytes, each component at its own precision."""
        return sum(self.bytes_of(c) for c in WEIGHT_COMPONENTS)

    @property
    def non_expert_bytes(self) -> float:
        """Bytes of everything except the routed experts (attention, shared, router, dense, embeddings),
        each at its own precision."""
        return sum(self.bytes_of(c) for c in WEIGHT_COMPONENTS if c != "expert")

    @property
    def granularity(self) -> float:
        """Krajewski et al. granularity G = d_ff(dense equivalent) / d_expert, with the dense
        equivalent taken as ``4 * d_model`` scaled for gating (8/3 for gated FFNs)."""
        d_ff_ref = (8 / 3 if self.gated else 4.0) * self.d_model
        return d_ff_ref / self.expert_ffn_dim

    def with_(self, **changes: object) -> MoEModel:
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_precision(self, precision: str, *, components: tuple[str, ...] | None = None) -> MoEModel:
        """A copy at another weight precision (``bf16``, ``fp8``, ``int4``...).

        Without ``components`` the whole model changes: ``bytes_per_weight`` is set and every
        per-component override is cleared, precision and format (``"none"``). With ``components``
        (names from `WEIGHT_COMPONENTS`) only those components get the precision (their
        ``<component>_bytes_per_weight``) and their format is reset to ``"none"`` (a format names
        the packing of the old precision; set a new one with `with_`)."""
        if precision not in PRECISION_BYTES:
            raise ValueError(f"unknown precision {precision!r}; valid: {sorted(PRECISION_BYTES)}")
        value = PRECISION_BYTES[precision]
        if components is None:
            cleared: dict[str, object] = {f"{c}_bytes_per_weight": None for c in WEIGHT_COMPONENTS}
            cleared.update({f"{c}_format": "none" for c in WEIGHT_COMPONENTS})
            return self.with_(bytes_per_weight=value, **cleared)
        bad = [c for c in components if c not in WEIGHT_COMPONENTS]
        if bad:
            raise ValueError(f"unknown weight component(s) {bad}; valid: {', '.join(WEIGHT_COMPONENTS)}")
        changes: dict[str, object] = {f"{c}_bytes_per_weight": value for c in components}
        changes.update({f"{c}_format": "none" for c in components})
        return self.with_(**changes)

    # ------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON data (``notes`` included); `from_dict` reads it back."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "model") -> MoEModel:
        """A model from a mapping of its fields (JSON or TOML). Fields left out take their defaults
        (TOML has no null: leave a per-component precision out to follow ``bytes_per_weight``).
        Raises `ValueError` with one line naming ``where`` and the field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object of MoEModel fields, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; valid: {', '.join(known)}")
        missing = [
            n
            for n, f in known.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in data
        ]
        if missing:
            raise ValueError(f"{where}: missing required field(s) {missing}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def to_toml(self) -> str:
        """The model as TOML text (None fields left out, as TOML has no null); `load_model` reads it."""
        lines = []
        for key, value in self.to_dict().items():
            if value is None:
                continue
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars are valid TOML scalars here
        return "\n".join(lines) + "\n"


def _check_bytes(model: str, name: str, value: object, *, optional: bool) -> None:
    """A byte size per element: a finite number > 0 (None allowed when ``optional``)."""
    if value is None and optional:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        what = "a finite number > 0" + (" or null" if optional else "")
        raise ValueError(f"MoEModel {model!r}: {name} must be {what}, got {value!r}")


def load_model(spec: str | Path) -> MoEModel:
    """A preset name, or a ``.json`` / ``.toml`` file of MoEModel fields (see `MoEModel.from_dict`).

    Raises `UnknownPresetError` for a name that is neither a preset nor a file, and `ValueError`
    (one line, naming the file) for a file that does not parse or fails validation."""
    path = Path(spec)
    if path.suffix.lower() not in (".json", ".toml") or not path.is_file():
        if path.suffix.lower() in (".json", ".toml"):
            raise ValueError(f"model file {str(spec)!r}: no such file")
        return get_model(str(spec))
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"model file {path}: not valid TOML ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"model file {path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    return MoEModel.from_dict(data, where=f"model file {path}")


_REF = "shared/reference/hardware-and-papers.md s.5"

_PRESETS: dict[str, MoEModel] = {
    m.name: m
    for m in [
        MoEModel(
            name="mixtral-8x7b",
            n_layers=32,
            d_model=4096,
            n_heads=32,
            n_kv_heads=8,
            head_dim=128,
            expert_ffn_dim=14336,
            n_experts=8,
            top_k=2,
            vocab_size=32000,
            source=f"HF mistralai/Mixtral-8x7B-Instruct-v0.1 config.json rev eba9230 ({_REF})",
        ),
        MoEModel(
            name="mixtral-8x22b",
            n_layers=56,
            d_model=6144,
            n_heads=48,
            n_kv_heads=8,
            head_dim=128,
            expert_ffn_dim=16384,
            n_experts=8,
            top_k=2,
            vocab_size=32000,
            source=f"HF mistral-community/Mixtral-8x22B-v0.1 config.json ({_REF})",
        ),
        MoEModel(
            name="deepseek-v2-lite",
            n_layers=27,
            d_model=2048,
            n_heads=16,
            n_kv_heads=16,
            head_dim=128,
            expert_ffn_dim=1408,
            n_experts=64,
            top_k=6,
            first_dense_layers=1,
            dense_ffn_dim=10944,
            n_shared_experts=2,
            shared_ffn_dim=1408,
            vocab_size=102400,
            attention="mla",
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            source=f"deepseek-ai/DeepSeek-V3 inference/configs/config_16B.json ({_REF})",
        ),
        MoEModel(
            name="deepseek-v3",
            n_layers=61,
            d_model=7168,
            n_heads=128,
            n_kv_heads=128,
            head_dim=128,
            expert_ffn_dim=2048,
            n_experts=256,
            top_k=8,
            first_dense_layers=3,
            dense_ffn_dim=18432,
            n_shared_experts=1,
            shared_ffn_dim=2048,
            vocab_size=129280,
            attention="mla",
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            bytes_per_weight=1.0,
            source=f"deepseek-ai/DeepSeek-V3 inference/configs/config_671B.json, fp8 checkpoint ({_REF})",
        ),
        MoEModel(
            name="qwen1.5-moe-a2.7b",
            n_layers=24,
            d_model=2048,
            n_heads=16,
            n_kv_heads=16,
            head_dim=128,
            expert_ffn_dim=1408,
            n_experts=60,
            top_k=4,
            n_shared_experts=1,
            shared_ffn_dim=5632,
            vocab_size=151936,
            source=f"configs derived from Qwen/Qwen1.5-MoE-A2.7B [S] ({_REF})",
        ),
        MoEModel(
            name="qwen3-30b-a3b",
            n_layers=48,
            d_model=2048,
            n_heads=32,
            n_kv_heads=4,
            head_dim=128,
            expert_ffn_dim=768,
            n_experts=128,
            top_k=8,
            vocab_size=151936,
            source=f"Qwen3-Coder-30B-A3B family configs; MindSpeed-RL qwen3_30b_a3b.yaml [S] ({_REF})",
        ),
        MoEModel(
            name="olmoe-1b-7b",
            n_layers=16,
            d_model=2048,
            n_heads=16,
            n_kv_heads=16,
            head_dim=128,
            expert_ffn_dim=1024,
            n_experts=64,
            top_k=8,
            vocab_size=50304,
            source=f"HF allenai/OLMoE-1B-7B-0924 config.json rev c1b31da ({_REF})",
        ),
        MoEModel(
            name="gpt-oss-20b",
            n_layers=24,
            d_model=2880,
            n_heads=64,
            n_kv_heads=8,
            head_dim=64,
            expert_ffn_dim=2880,
            n_experts=32,
            top_k=4,
            vocab_size=201088,
            source=f"NVIDIA Megatron-Bridge GPT-OSS doc; HF gpt-oss-20b config copies [S] ({_REF})",
            notes="alternating sliding-window (128) and full attention is not modelled",
        ),
        MoEModel(
            name="gpt-oss-120b",
            n_layers=36,
            d_model=2880,
            n_heads=64,
            n_kv_heads=8,
            head_dim=64,
            expert_ffn_dim=2880,
            n_experts=128,
            top_k=4,
            vocab_size=201088,
            source=f"openai/gpt-oss-120b original/config.json copy; Megatron-Bridge doc [S] ({_REF})",
            notes="alternating sliding-window (128) and full attention is not modelled",
        ),
        MoEModel(
            name="switch-base-128",
            n_layers=24,
            d_model=768,
            n_heads=12,
            n_kv_heads=12,
            head_dim=64,
            expert_ffn_dim=3072,
            n_experts=128,
            top_k=1,
            gated=False,
            moe_layer_step=2,
            moe_layer_offset=1,
            dense_ffn_dim=3072,
            vocab_size=32128,
            tie_embeddings=True,
            n_cross_attention_layers=12,
            source=f"google/switch-base-{{32,64,256}} sibling configs, encoder_sparse_step 2 ({_REF})",
            notes="12 encoder + 12 decoder layers flattened; decoder cross-attention counted",
        ),
    ]
}

_ALIASES = {
    "mixtral": "mixtral-8x7b",
    "mixtral-8x7b-instruct": "mixtral-8x7b",
    "deepseek-v2-lite-chat": "deepseek-v2-lite",
    "olmoe": "olmoe-1b-7b",
    "qwen1.5-moe": "qwen1.5-moe-a2.7b",
    "switch-base": "switch-base-128",
}


def model_preset_names() -> list[str]:
    """Names of the model presets, sorted."""
    return sorted(_PRESETS)


def get_model(name: str) -> MoEModel:
    """The preset called ``name`` (case-insensitive; a few aliases accepted).

    Raises `UnknownPresetError` listing the valid names.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _PRESETS[key]
    except KeyError:
        raise UnknownPresetError(f"unknown model preset {name!r}; valid: {', '.join(model_preset_names())}") from None
