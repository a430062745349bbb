"""How kernels execute: the kernel execution model and the registered expert-execution strategies.

Two questions decide what a MoE layer costs beyond its bytes and FLOPs, and neither is hardware:

*How are the routed experts of a layer run?* ``"grouped"``: one grouped (ragged) GEMM per matrix for
all the layer's active experts of a device (vLLM ``fused_moe``, Megablocks, CUTLASS grouped GEMM),
so the layer pays the kernel launches once; ``"per-expert"``: one set of kernels per expert (a
plain PyTorch loop over experts, HF ``transformers`` eager), so each active expert pays its own.

*What does one kernel launch cost?* ``"eager"``: every kernel pays the device curve's per-kernel
overhead (`hwmodels.costs.GemmCurve.launch_overhead_s`, 7 us on GPUs, fitted to measured op times);
``"graph"``: the step is replayed from a captured CUDA graph, which removes the host-side launch
path; each kernel then pays `GRAPH_KERNEL_OVERHEAD_S` (labelled assumption) or the eager overhead
when that is smaller. ``fused=True`` counts the fused kernel variants (`FUSED_KERNELS`).

`KernelExecution` is that choice as a frozen dataclass with its sources; presets are registered by
name (`EXECUTIONS`, `get_execution`); ``"auto"`` is the device kind's default (`DEFAULT_EXECUTION`:
grouped and eager on GPUs, per-expert and eager elsewhere, which is how those devices were
modelled before the execution model existed).

Device-kind differences of expert execution live here as registered strategies
(`ExpertStrategy`, `expert_strategy(kind)`), not as branches in the simulator: GPUs, CPUs and RDUs
run GEMM-shaped experts (`GemmExperts`: grouped or per-expert, RDUs with the weights tier the
mapping names), FPGAs run a double-buffered stream of experts (`FpgaExperts`, one pipeline fill
per layer). Every strategy answers in seconds and joules through `hwmodels.costs.CostModel`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from hwmodels.opcost import OpCost

if TYPE_CHECKING:
    from hwmodels.costs import CostModel
    from hwmodels.devices import Device
    from workloads.model import MoEModel

__all__ = [
    "DEFAULT_EXECUTION",
    "EXECUTIONS",
    "EXPERT_STRATEGIES",
    "FUSED_KERNELS",
    "GRAPH_KERNEL_OVERHEAD_S",
    "ExpertStrategy",
    "FpgaExperts",
    "GemmExperts",
    "KernelExecution",
    "expert_strategy",
    "get_execution",
    "register_expert_strategy",
    "resolve_execution",
]

FloatArray = npt.NDArray[np.float64]
ExpertMode = Literal["grouped", "per-expert"]
LaunchMode = Literal["eager", "graph"]

#: Per-kernel overhead inside a replayed CUDA graph (seconds).
GRAPH_KERNEL_OVERHEAD_S = 2.0e-6
GRAPH_KERNEL_OVERHEAD_SOURCE = (
    "assumption: a graph replay removes the host launch path (NVIDIA, 'Getting Started with CUDA "
    "Graphs', developer.nvidia.com/blog/cuda-graphs/) but not the GPU-side kernel start and tail; "
    "~2 us per kernel kept"
)

#: Kernels per op when ``fused=True`` (unfused counts are the cost model's defaults: expert and
#: shared FFN 3 = gate/up GEMM, activation, down GEMM; router 2 = gate GEMM, top-k; attention 4).
FUSED_KERNELS: dict[str, int] = {
    "expert_ffn": 2,
    "experts_grouped": 2,
    "shared_experts": 2,
    "router": 1,
    "attention_prefill": 3,
    "attention_decode": 3,
}
FUSED_KERNELS_SOURCE = (
    "assumption: the activation runs in the gate/up GEMM epilogue (vLLM fused_moe / SGLang style), "
    "softmax + top-k fuse into the router GEMM, rotary embedding into the QKV projection"
)


@dataclass(frozen=True, kw_only=True)
class KernelExecution:
    """How a device runs the kernels of a step (see the module docstring).

    ``experts``: ``"grouped"`` (one grouped GEMM per matrix for all active experts of a layer on
    a device) or ``"per-expert"``; ``launch``: ``"eager"`` or ``"graph"``; ``fused``: fused kernel
    counts (`FUSED_KERNELS`); ``graph_kernel_overhead_s``: per-kernel overhead in graph mode
    (seconds, >= 0; a device whose eager overhead is smaller keeps its own). ``source`` says where
    the choice comes from.
    """

    name: str
    experts: ExpertMode = "grouped"
    launch: LaunchMode = "eager"
    fused: bool = False
    graph_kernel_overhead_s: float = GRAPH_KERNEL_OVERHEAD_S
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"KernelExecution.name must be a non-empty string, got {self.name!r}")
        if self.experts not in ("grouped", "per-expert"):
            raise ValueError(
                f"KernelExecution {self.name!r}: experts must be 'grouped' or 'per-expert', got {self.experts!r}"
            )
        if self.launch not in ("eager", "graph"):
            raise ValueError(f"KernelExecution {self.name!r}: launch must be 'eager' or 'graph', got {self.launch!r}")
        if not isinstance(self.fused, bool):
            raise ValueError(f"KernelExecution {self.name!r}: fused must be a bool, got {self.fused!r}")
        v = self.graph_kernel_overhead_s
        if isinstance(v, bool) or not isinstance(v, int | float) or not (v >= 0 and np.isfinite(v)):
            raise ValueError(
                f"KernelExecution {self.name!r}: graph_kernel_overhead_s must be finite and >= 0, got {v!r}"
            )

    def kernel_overhead_s(self, eager_overhead_s: float) -> float:
        """Per-kernel overhead (seconds) given the device curve's eager one."""
        if self.launch == "graph":
            return min(eager_overhead_s, float(self.graph_kernel_overhead_s))
        return eager_overhead_s

    def kernels(self, op: str, unfused: int) -> int:
        """Kernels that ``op`` launches (``unfused`` when not fused or the op has no fused form)."""
        if self.fused and unfused > 0:
            return min(unfused, FUSED_KERNELS.get(op, unfused))
        return unfused


def _preset(name: str, experts: ExpertMode, launch: LaunchMode, fused: bool, source: str) -> KernelExecution:
    return KernelExecution(name=name, experts=experts, launch=launch, fused=fused, source=source)


#: Named execution presets (read-only).
EXECUTIONS: Mapping[str, KernelExecution] = MappingProxyType(
    {
        e.name: e
        for e in (
            _preset(
                "grouped-eager",
                "grouped",
                "eager",
                False,
                "grouped MoE GEMM (vLLM fused_moe, Megablocks) with eager launches: the GPU default",
            ),
            _preset(
                "grouped-graph",
                "grouped",
                "graph",
                False,
                "grouped MoE GEMM replayed from a CUDA graph (vLLM/SGLang decode)",
            ),
            _preset(
                "grouped-graph-fused",
                "grouped",
                "graph",
                True,
                "grouped MoE GEMM, CUDA graph, fused epilogues (" + FUSED_KERNELS_SOURCE + ")",
            ),
            _preset(
                "per-expert-eager",
                "per-expert",
                "eager",
                False,
                "one set of kernels per expert, eager (HF transformers loop): the default off GPUs",
            ),
            _preset("per-expert-graph", "per-expert", "graph", False, "one set of kernels per expert in a CUDA graph"),
        )
    }
)

#: The execution each device kind gets for ``execution="auto"`` (read-only).
DEFAULT_EXECUTION: Mapping[str, str] = MappingProxyType(
    {
        "gpu": "grouped-eager",
        "cpu": "per-expert-eager",
        "rdu": "per-expert-eager",
        "fpga": "per-expert-eager",
    }
)


def get_execution(name: str) -> KernelExecution:
    """The registered execution preset ``name`` (an unknown name lists the valid ones)."""
    try:
        return EXECUTIONS[name]
    except KeyError:
        raise ValueError(f"unknown kernel execution {name!r}; valid: {sorted(EXECUTIONS)} or 'auto'") from None


def resolve_execution(spec: str | KernelExecution | None, kind: str) -> KernelExecution:
    """The execution a device of ``kind`` uses for ``spec`` (a preset name, ``"auto"``/None for the
    kind's default, or an explicit `KernelExecution`)."""
    if isinstance(spec, KernelExecution):
        return spec
    if spec is None or spec == "auto":
        if kind not in DEFAULT_EXECUTION:
            raise ValueError(
                f"no default kernel execution for device kind {kind!r}; valid: {sorted(DEFAULT_EXECUTION)}"
            )
        return EXECUTIONS[DEFAULT_EXECUTION[kind]]
    return get_execution(spec)


# ------------------------------------------------------------------------- expert strategies
class ExpertStrategy(ABC):
    """How one device kind runs the routed experts of a MoE layer (the contract).

    Token counts are non-negative arrays; an expert with zero tokens costs nothing. Costs come
    from the `CostModel` (pure, no state kept here). Two questions:

    - `per_expert`: the cost of each expert run alone on its tokens (same shape as ``n_tokens``):
      what an expert computed on its own costs (a fetched expert computed when its weights arrive).
    - `layer`: the cost of a device's active experts of a layer run together, vectorised over
      leading axes: ``tokens_per_expert`` ``[..., E]`` gives an `OpCost` of shape ``[...]`` (float
      for 1-D input). ``active`` (same shape, in [0, 1]) turns it into an expectation: expert ``e``
      runs with probability ``active[..., e]`` on ``tokens_per_expert[..., e]`` tokens (the
      analytic model); by default ``active = tokens > 0``. For a fixed set of experts, ``layer``'s
      ``total_s`` is the time the device's compute stream is busy with them.
    """

    kinds: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def group_fixed_s(self, cost: CostModel, device: Device, model: MoEModel, *, execution: KernelExecution) -> float:
        """Seconds a group with at least one active expert pays once, whatever its size (kernel
        launches of a grouped call, an FPGA's pipeline fill; 0 when every expert pays its own)."""

    @abstractmethod
    def per_expert(
        self,
        cost: CostModel,
        device: Device,
        model: MoEModel,
        n_tokens: npt.ArrayLike,
        *,
        weights_tier: str,
        execution: KernelExecution,
        fpga_reorder: bool,
    ) -> OpCost: ...

    @abstractmethod
    def layer(
        self,
        cost: CostModel,
        device: Device,
        model: MoEModel,
        tokens_per_expert: npt.ArrayLike,
        *,
        weights_tier: str,
        execution: KernelExecution,
        fpga_reorder: bool,
        active: npt.ArrayLike | None = None,
    ) -> OpCost: ...


def _sum_serial(per: OpCost, weight: FloatArray, label: str) -> OpCost:
    """Experts run one after the other: times add per expert. The summed ``compute_s`` and
    ``memory_s`` keep their parts; ``comm_s`` carries the serialisation that ``max(sum, sum)``
    hides (so ``total_s`` is the sum of the experts' totals), labelled in ``source``."""
    c = np.sum(weight * np.asarray(per.compute_s), axis=-1)
    m = np.sum(weight * np.asarray(per.memory_s), axis=-1)
    t = np.sum(weight * np.asarray(per.total_s), axis=-1)
    e = np.sum(weight * np.asarray(per.energy_J), axis=-1)
    rest = t - np.maximum(c, m)

    def out(x: FloatArray) -> float | FloatArray:
        return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=np.float64)

    return OpCost(
        compute_s=out(c),
        memory_s=out(m),
        comm_s=out(np.maximum(rest, 0.0)),
        energy_J=out(e),
        source=f"{per.source}{label}",
    )


class GemmExperts(ExpertStrategy):
    """GPUs, CPUs and RDUs: GEMM-shaped expert FFNs with the weights in ``weights_tier``.

    ``execution.experts == "grouped"``: `CostModel.experts_grouped` (the active experts' weights read
    once each, one launch per kernel for the layer). ``"per-expert"``: the sum of
    `CostModel.expert_ffn` of each active expert (each pays its launches)."""

    kinds = ("gpu", "cpu", "rdu")

    def group_fixed_s(self, cost: CostModel, device: Device, model: MoEModel, *, execution: KernelExecution) -> float:
        if execution.experts != "grouped":
            return 0.0
        return cost.launch_s(device, "experts_grouped", 3)

    def per_expert(
        self,
        cost: CostModel,
        device: Device,
        model: MoEModel,
        n_tokens: npt.ArrayLike,
        *,
        weights_tier: str,
        execution: KernelExecution,
        fpga_reorder: bool,
    ) -> OpCost:
        if device.kind == "rdu":
            return cost.rdu_expert(device, model, n_tokens, weights_tier=weights_tier)
        return cost.expert_ffn(device, model, n_tokens, weights_tier=weights_tier)

    def layer(
        self,
        cost: CostModel,
        device: Device,
        model: MoEModel,
        tokens_per_expert: npt.ArrayLike,
        *,
        weights_tier: str,
        execution: KernelExecution,
        fpga_reorder: bool,
        active: npt.ArrayLike | None = None,
    ) -> OpCost:
        rows = np.asarray(tokens_per_expert, dtype=np.float64)
        if execution.experts == "grouped":
            return cost.experts_grouped(device, model, rows, weights_tier=weights_tier, active=active)
        per = self.per_expert(
            cost, device, model, rows, weights_tier=weights_tier, execution=execution, fpga_reorder=fpga_reorder
        )
        w = (rows > 0).astype(np.float64) if active is None else np.asarray(active, dtype=np.float64)
        return _sum_serial(per, w, "[per-expert sum]")


class FpgaExperts(ExpertStrategy):
    """FPGAs: a double-buffered stream of experts (`CostModel.fpga_expert`, M3ViT reordering when
    ``fpga_reorder``), one pipeline fill per layer with work (`CostModel.fpga_first_load_s`, in
    ``comm_s``); the kernel execution mode does not apply (one streaming kernel)."""

    kinds = ("fpga",)

    def group_fixed_s(self, cost: CostModel, device: Device, model: MoEModel, *, execution: KernelExecution) -> float:
        return cost.fpga_first_load_s(device, model)

    def per_expert(
        self,
        cost: CostModel,
        device: Device,
        model: MoEModel,
        n_tokens: npt.ArrayLike,
        *,
        weights_tier: str,
        execution: KernelExecution,
        fpga_reorder: bool,
    ) -> OpCost:
        return cost.fpga_expert(device, model, n_tokens, reorder=fpga_reorder)

    def layer(
        self,
        cost: CostModel,
        device: Device,
        model: MoEModel,
        tokens_per_expert: npt.ArrayLike,
        *,
        weights_tier: str,
        execution: KernelExecution,
        fpga_reorder: bool,
        active: npt.ArrayLike | None = None,
    ) -> OpCost:
        rows = np.asarray(tokens_per_expert, dtype=np.float64)
        if active is None and rows.ndim == 1:
            return cost.fpga_layer(device, model, rows, reorder=fpga_reorder)
        w = (rows > 0).astype(np.float64) if active is None else np.asarray(active, dtype=np.float64)
        per = cost.fpga_expert(device, model, rows, reorder=fpga_reorder)
        steady = np.sum(w * np.maximum(np.asarray(per.compute_s), np.asarray(per.memory_s)), axis=-1)
        c = np.sum(w * np.asarray(per.compute_s), axis=-1)
        m = np.sum(w * np.asarray(per.memory_s), axis=-1)
        p_any = 1.0 - np.prod(1.0 - np.clip(w, 0.0, 1.0), axis=-1)
        fill = p_any * cost.fpga_first_load_s(device, model)
        energy = np.sum(w * np.asarray(per.energy_J), axis=-1) + device.static_power_W * fill
        comm = fill + steady - np.maximum(c, m)

        def out(x: FloatArray) -> float | FloatArray:
            return float(x) if np.ndim(x) == 0 else np.asarray(x, dtype=np.float64)

        return OpCost(
            compute_s=out(c),
            memory_s=out(m),
            comm_s=out(comm),
            energy_J=out(energy),
            source=per.source.replace("fpga_expert", "fpga_layer") + "(comm_s=pipeline fill)",
        )


#: Expert-execution strategy per device kind.
EXPERT_STRATEGIES: dict[str, ExpertStrategy] = {}


def register_expert_strategy(strategy: ExpertStrategy) -> ExpertStrategy:
    """Register ``strategy`` for each of its ``kinds`` (a kind registered twice is an error)."""
    if not strategy.kinds:
        raise ValueError(f"{type(strategy).__name__} names no device kind")
    for kind in strategy.kinds:
        if kind in EXPERT_STRATEGIES and EXPERT_STRATEGIES[kind] is not strategy:
            raise ValueError(
                f"device kind {kind!r} already has an expert strategy ({type(EXPERT_STRATEGIES[kind]).__name__})"
            )
        EXPERT_STRATEGIES[kind] = strategy
    return strategy


register_expert_strategy(GemmExperts())
register_expert_strategy(FpgaExperts())


def expert_strategy(kind: str) -> ExpertStrategy:
    """The registered strategy of device ``kind`` (an unknown kind lists the valid ones)."""
    try:
        return EXPERT_STRATEGIES[kind]
    except KeyError:
        raise ValueError(
            f"no expert-execution strategy for device kind {kind!r}; valid: {sorted(EXPERT_STRATEGIES)}"
        ) from None
