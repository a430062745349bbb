"""Dequantisation cost of packed (sub-16-bit) weights: the kernel formats a model's components name.

A `MoEModel` gives each weight component (attention, experts, shared experts, router/dense FFNs,
embeddings/LM head) a precision (``<component>_bytes_per_weight``, scales and zeros included) and a
format (``<component>_format``, one of ``workloads.model.WEIGHT_FORMATS``). The precision sets the
bytes an op reads and a fetch moves; the format sets what turning those bytes back into 16-bit
operands costs. ``"none"`` charges nothing (native dtypes; today's behaviour, the default).

The model (`dequant_terms`), for an op whose weights have ``P`` elements in ``n_matrices`` matrices,
run on ``m`` rows (tokens):

``fused`` formats (the dequantisation happens inside the GEMM/GEMV kernel, on the vector units,
while the packed bytes stream in):
    ``vector_s = ops_per_weight x P x ceil(m / rows_per_dequant) / vector_ops_per_s`` (each
    thread block dequantises its weight tile once per tile of ``rows_per_dequant`` rows), which
    overlaps the tensor-core work: ``compute_s = max(GEMM compute, vector_s)`` (assumption: the two
    pipelines overlap across warps, as Marlin's design does);
    ``memory_s += extra_bytes_per_weight x P / bandwidth`` (per-call metadata traffic).
    At batch 1 such a kernel is memory-bound on the packed bytes unless the per-weight ALU work
    exceeds the bytes' time (then it is dequantisation-bound).
unfused formats (a separate pass writes a 16-bit copy of the weights, then a plain GEMM reads it):
    the pass, ``max(ops_per_weight x P / vector_ops_per_s, extra_bytes_per_weight x P / bandwidth)``,
    runs before the GEMM: it is added to both ``compute_s`` and ``memory_s`` (serial, like a launch
    overhead), and the GEMM reads the 16-bit copy (``copy_bytes_per_weight x P`` more bytes).
Both: ``extra_kernels`` more kernel launches per weight matrix (at the execution's per-kernel
overhead; none at roofline).

``vector_ops_per_s``: the device's non-tensor lane throughput, ``fp32 FLOP/s / 2`` (one FMA lane-op
counts 2 FLOPs), read from the device's ``peak_flops["fp32"]`` when it lists one (consumer GPUs and
CPUs in the presets), else from `VECTOR_FP32_FLOPS` by device name (datasheet figures, labelled
assumptions), else ``bf16 peak / 16`` (assumption: the A100's 19.5 / 312 TFLOP/s ratio).

How-to, the validation cases of issue 8 (fields of a case's ``model_overrides``):

- Mixtral-offloading paper (arXiv 2312.17238 s.4.3): 4-bit HQQ attention (group 64) and 2-bit HQQ
  experts (group 16, ~2.6 bits) through its Triton kernels: ``attention_bytes_per_weight = 0.5``
  (assumption: 4 bits + group-64 metadata ~4.5 bits would be 0.5625), ``attention_format =
  "hqq-triton-g64"``, ``expert_bytes_per_weight = 0.325`` (3-bit: 0.4375, assumption: 3 bits + the
  same 0.6-bit metadata), ``expert_format = "hqq-triton"``; embeddings, LM head and router stay fp16.
- llama.cpp Q5_K_M: ``bytes_per_weight = 0.6875`` (Q5_K: 5.5 bits/weight, ggml block of 256
  weights in 176 bytes), ``expert_format = attention_format = shared_format = dense_format =
  "llamacpp-mmvq"``; ``embedding_bytes_per_weight = 0.8203`` (Q6_K output head, 6.5625 bits) with
  ``embedding_format = "llamacpp-mmvq"`` (assumption: Q5_K_M keeps the output tensor in Q6_K).
- MLPerf TRT-LLM FP8: ``bytes_per_weight = 1.0`` (the FP8 GEMMs run natively: format ``"none"``),
  ``embedding_bytes_per_weight = 2.0`` (assumption: TRT-LLM's FP8 recipe keeps the LM head in
  16-bit); ``kv_bytes_per_elem = 1.0`` only if the submission used an FP8 KV cache (NR).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from hwmodels.devices import Device
from workloads.model import WEIGHT_FORMATS

__all__ = [
    "FORMATS",
    "VECTOR_FP32_FLOPS",
    "DequantTerms",
    "WeightFormat",
    "dequant_terms",
    "get_format",
    "vector_ops_per_s",
]


@dataclass(frozen=True, kw_only=True)
class WeightFormat:
    """How a kernel turns packed weights into 16-bit operands (see the module docstring for the model).

    ``fused``: dequantised inside the GEMM kernel (True) or by a separate pass that writes a 16-bit
    copy (False). ``ops_per_weight``: vector lane-operations per weight element per dequantisation.
    ``rows_per_dequant``: rows (tokens) sharing one dequantised tile in a fused kernel (ignored when
    unfused: once per call). ``extra_bytes_per_weight``: memory traffic per weight per call beyond the
    packed read (fused: metadata; unfused: the pass's writes and intermediate reads).
    ``copy_bytes_per_weight``: the 16-bit copy the GEMM reads (unfused only). ``extra_kernels``:
    launches per weight matrix beyond the GEMM. ``source``: where each number comes from.
    """

    name: str
    fused: bool
    ops_per_weight: float
    rows_per_dequant: int
    extra_bytes_per_weight: float
    copy_bytes_per_weight: float
    extra_kernels: int
    source: str

    def __post_init__(self) -> None:
        for field in ("ops_per_weight", "extra_bytes_per_weight", "copy_bytes_per_weight"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"WeightFormat {self.name!r}: {field} must be finite and >= 0, got {value!r}")
        if not isinstance(self.rows_per_dequant, int) or self.rows_per_dequant < 1:
            raise ValueError(f"WeightFormat {self.name!r}: rows_per_dequant must be an int >= 1")
        if not isinstance(self.extra_kernels, int) or self.extra_kernels < 0:
            raise ValueError(f"WeightFormat {self.name!r}: extra_kernels must be an int >= 0")
        if self.fused and self.copy_bytes_per_weight:
            raise ValueError(f"WeightFormat {self.name!r}: a fused format reads no 16-bit copy")

    @property
    def free(self) -> bool:
        """True when the format costs nothing (``"none"``)."""
        return not (self.ops_per_weight or self.extra_bytes_per_weight or self.copy_bytes_per_weight) and (
            self.extra_kernels == 0
        )


_MO = "dvmazur/mixtral-offloading @ 0d3c605 (src/custom_layers.py, src/triton_kernels.py, src/build_model.py) [P]"

FORMATS: Mapping[str, WeightFormat] = MappingProxyType(
    {
        f.name: f
        for f in (
            WeightFormat(
                name="none",
                fused=True,
                ops_per_weight=0.0,
                rows_per_dequant=1,
                extra_bytes_per_weight=0.0,
                copy_bytes_per_weight=0.0,
                extra_kernels=0,
                source="no dequantisation charged (native dtype)",
            ),
            WeightFormat(
                name="marlin",
                fused=True,
                ops_per_weight=1.625,
                rows_per_dequant=16,
                extra_bytes_per_weight=0.0,
                copy_bytes_per_weight=0.0,
                extra_kernels=0,
                source="Marlin FP16xINT4 (arXiv 2408.11743; IST-DASLab/marlin README [P]: 'close to ideal (4x) "
                "speedups up to batchsizes of 16-32'), m-block of 16 rows [P]; lane-ops [D] from its "
                "marlin_cuda_kernel.cu dequant(): per int32 of 8 int4 weights, 1 shift + 2 x (2 lop3, 1 hsub2, "
                "1 hfma2), then 1 hmul2 per 2 weights for the group scale = 13 instructions per 8 weights; "
                "group-128 scales are in the packed bytes",
            ),
            WeightFormat(
                name="llamacpp-mmvq",
                fused=True,
                ops_per_weight=3.0,
                rows_per_dequant=8,
                extra_bytes_per_weight=0.0,
                copy_bytes_per_weight=0.0,
                extra_kernels=1,
                source="llama.cpp CUDA mul_mat_vec_q (k-quants, dp4a on q8_1 activations): up to "
                "MMVQ_MAX_BATCH_SIZE = 8 rows per kernel (ggml-org/llama.cpp ggml/src/ggml-cuda/mmvq.cuh [P], "
                "current code; the Dec 2023 builds of the validation cases are NR); 3 lane-ops per weight is an "
                "assumption (low-bit and high-bit unpack and combine; dp4a covers 4 weights); +1 kernel per "
                "matrix quantises the activations to q8_1 (assumption)",
            ),
            WeightFormat(
                name="hqq-triton",
                fused=True,
                ops_per_weight=5.0,
                rows_per_dequant=16,
                extra_bytes_per_weight=0.5,
                copy_bytes_per_weight=0.0,
                extra_kernels=4,
                source=f"{_MO}: Triton kernel per element: shift, and, convert, subtract zero, multiply scale "
                "(5 lane-ops) with BLOCK_SIZE_M = 16; per call the quantised scale and zero (group 16) are "
                "dequantised by HQQ's PyTorch ops (2 x 2 kernels), writing fp16 scale + zero that the kernel "
                "reads back: 2 tensors x 2 B x 2 / 16 = 0.5 B/weight [D]",
            ),
            WeightFormat(
                name="hqq-triton-g64",
                fused=True,
                ops_per_weight=5.0,
                rows_per_dequant=16,
                extra_bytes_per_weight=0.125,
                copy_bytes_per_weight=0.0,
                extra_kernels=4,
                source=f"{_MO}: as hqq-triton with group 64 (the paper's 4-bit attention, s.4.3): metadata "
                "2 x 2 B x 2 / 64 = 0.125 B/weight [D]",
            ),
            WeightFormat(
                name="hqq-unfused",
                fused=False,
                ops_per_weight=5.0,
                rows_per_dequant=1,
                extra_bytes_per_weight=12.0,
                copy_bytes_per_weight=2.0,
                extra_kernels=4,
                source=f"HQQ PyTorch backend dequantize() then matmul ({_MO}, HQQLinearTritonSavable.dequantize): "
                "unpack writes uint8 (1 B), .half() reads 1 and writes 2, (W - zero) reads 2 writes 2, * scale "
                "reads 2 writes 2 = 12 B/weight of pass traffic, then the GEMM reads the fp16 copy (2 B) [D]; "
                "4 elementwise kernels and 5 lane-ops per weight are assumptions",
            ),
        )
    }
)

if set(FORMATS) != set(WEIGHT_FORMATS):  # pragma: no cover - a packaging error, caught by the tests too
    raise ImportError(f"hwmodels.dequant FORMATS {sorted(FORMATS)} != workloads WEIGHT_FORMATS {WEIGHT_FORMATS}")

#: Non-tensor FP32 FLOP/s of GPUs whose preset lists no ``fp32`` peak (NVIDIA datasheets; not in
#: shared/reference, so assumptions).
VECTOR_FP32_FLOPS: Mapping[str, tuple[float, str]] = MappingProxyType(
    {
        "a100-80gb": (19.5e12, "assumption: NVIDIA A100 datasheet FP32 19.5 TFLOPS"),
        "h100-sxm": (67e12, "assumption: NVIDIA H100 SXM datasheet FP32 67 TFLOPS"),
        "h100-pcie": (51e12, "assumption: NVIDIA H100 PCIe datasheet FP32 51 TFLOPS"),
        "h100-nvl": (60e12, "assumption: NVIDIA H100 NVL datasheet FP32 60 TFLOPS"),
        "h200": (67e12, "assumption: NVIDIA H200 SXM datasheet FP32 67 TFLOPS"),
        "h800": (67e12, "assumption: H800 SXM = H100 SXM compute, FP32 67 TFLOPS"),
    }
)
#: Fallback ratio of vector FP32 to bf16 tensor peak (assumption: A100's 19.5 / 312).
VECTOR_FALLBACK_RATIO = 1.0 / 16.0


def get_format(name: str) -> WeightFormat:
    """The `WeightFormat` called ``name``; `ValueError` listing the valid names otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weight format {name!r}; valid: {', '.join(FORMATS)}") from None


def vector_ops_per_s(device: Device) -> float:
    """Non-tensor lane-operations per second of ``device`` (``fp32 FLOP/s / 2``; see the module docstring)."""
    fp32 = device.peak_flops.get("fp32")
    if fp32 is None:
        known = VECTOR_FP32_FLOPS.get(device.name)
        if known is not None:
            fp32 = known[0]
        else:
            base = device.peak_flops.get("bf16") or device.peak_flops.get("fp16") or max(device.peak_flops.values())
            fp32 = base * VECTOR_FALLBACK_RATIO
    return float(fp32) / 2.0


@dataclass(frozen=True, slots=True)
class DequantTerms:
    """What a format adds to one op (scalars; per call with rows > 0).

    ``ops``: vector lane-operations at ``m`` rows = ``ops_per_row_tile x ceil(m / rows_per_dequant)``
    for fused formats (``ops_per_row_tile`` per tile), once per call for unfused ones;
    ``serial_bytes``: bytes of an unfused pass (added to both compute and memory as serial time);
    ``extra_bytes``: bytes added to the op's memory traffic; ``kernels``: extra launches."""

    fused: bool
    ops_per_tile: float
    rows_per_dequant: int
    serial_bytes: float
    extra_bytes: float
    kernels: int


def dequant_terms(fmt: str | WeightFormat, n_weights: float, n_matrices: int) -> DequantTerms | None:
    """The terms of format ``fmt`` for an op over ``n_weights`` weight elements in ``n_matrices``
    matrices; None when the format is free (``"none"``), so that the op's cost is unchanged."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    if f.free:
        return None
    if f.fused:
        return DequantTerms(
            fused=True,
            ops_per_tile=f.ops_per_weight * n_weights,
            rows_per_dequant=f.rows_per_dequant,
            serial_bytes=0.0,
            extra_bytes=f.extra_bytes_per_weight * n_weights,
            kernels=f.extra_kernels * n_matrices,
        )
    return DequantTerms(
        fused=False,
        ops_per_tile=f.ops_per_weight * n_weights,
        rows_per_dequant=1,
        serial_bytes=f.extra_bytes_per_weight * n_weights,
        extra_bytes=f.copy_bytes_per_weight * n_weights,
        kernels=f.extra_kernels * n_matrices,
    )
