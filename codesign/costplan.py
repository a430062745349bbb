"""`StepCostPlan`: every cost of a step, asked of `hwmodels` once, for the engine and the analytic model.

A plan is built once per bound mapping (``StepCostPlan(cost_model, bound)``) and is pure: it holds
no simulation state, only the cost model (with the mapping's kernel execution applied), the bound
mapping and derived constants (the fetch and near-tier copy costs of one expert). For a step's
routing, given as arrays, it answers per device (and per layer, vectorised) with `OpCost` arrays:

- `attention_prefill`, `attention_decode`, `router`, `shared`, `dense`: the per-token ops;
- `experts` (per expert, as if run alone), `layer_experts` (a device's active experts of each
  layer run together, ``[L, E] -> [L]``, optionally as an expectation over activities) and
  `group` (the engine's call for one layer's ready experts): the device kind's registered
  `hwmodels.execution.ExpertStrategy` decides how experts run (grouped GEMM or per expert on
  GPUs, CPUs and RDUs; a double-buffered stream with one pipeline fill per layer on FPGAs);
- `fetch` (one expert's weights over the device's fetch path), `cpu_experts` (experts computed
  on the host with their activations over the host link both ways), `all_to_all`.

The serving stack (`hwmodels.stacks.ServingStack`, named by ``Mapping.stack``) adds the per-step
tail and the MoE permute: `moe_permute` (the token permute before and unpermute after each MoE
layer's experts, charged with the router), `lm_head` (LM head + sampling per token-emitting
sequence) and `host_cpu_s` / `step_tail` (the framework's host CPU time per step, the part not
hidden behind the device: `ServingStack.exposed_s`). With ``Mapping.offload_non_expert`` the
non-expert weights of every layer stream from the backing tier each step (`non_expert_fetch`).

`zero_load_step_s` is the sum of these costs for one request on one device with every needed
expert resident: what the simpy engine must reproduce at zero load (a test pins the equality).
The analytic model (`codesign.analytic`) computes its expectations with the same plan, so
nothing computes a cost twice. The plan holds no hardware number: every number is a `CostModel`
answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hwmodels.costs import ACTIVATION_BYTES, CostModel
from hwmodels.devices import Link
from hwmodels.execution import ExpertStrategy, KernelExecution, expert_strategy
from hwmodels.opcost import OpCost
from hwmodels.stacks import ServingStack, resolve_stack

if TYPE_CHECKING:
    from codesign.mapping import BoundMapping
    from hwmodels.devices import Device
    from workloads.model import MoEModel

__all__ = ["StepCostPlan", "non_expert_layer_bytes", "tier_link", "zero_load_step_s"]

FloatArray = npt.NDArray[np.float64]


def tier_link(device: Device, src: str, dst: str) -> Link:
    """A copy path between two tiers of one device, described by the source tier's own numbers
    (bandwidth, latency, energy per byte); no number is invented here."""
    tier = device.tier(src)
    return Link(
        name=f"{device.name}:{src}->{dst}",
        bandwidth_Bps=tier.bandwidth_Bps,
        latency_s=tier.latency_s,
        duplex=False,
        efficiency_points=(),
        energy_J_per_byte=tier.energy_J_per_byte,
        source=f"tier {src!r} of {device.name}: {tier.source}",
    )


def non_expert_layer_bytes(model: MoEModel) -> tuple[float, float]:
    """Bytes of one MoE layer's non-expert weights (attention + router + shared experts) and of one
    dense layer's (attention + dense FFN), each component at its own precision where the model has
    per-component precisions (``weight_bytes_of``), else at ``bytes_per_weight``. Embeddings and
    the LM head belong to no layer."""
    wb = getattr(model, "weight_bytes_of", None)

    def per(component: str) -> float:
        return float(wb(component)) if wb is not None else float(model.bytes_per_weight)

    attn = model.params_attention * per("attention")
    moe = attn + model.router_params * per("dense") + model.params_shared_experts * per("shared")
    dense = attn + model.params_dense_ffn * per("dense")
    return float(moe), float(dense)


def _zero(shape: tuple[int, ...] = ()) -> OpCost:
    if not shape:
        return OpCost(compute_s=0.0, memory_s=0.0, comm_s=0.0, energy_J=0.0, source="none")
    z = np.zeros(shape)
    return OpCost(compute_s=z, memory_s=z.copy(), comm_s=z.copy(), energy_J=z.copy(), source="none")


class StepCostPlan:
    """The costs of a step's operations on a bound mapping (see the module docstring).

    ``cost``: the platform's `CostModel`; when the mapping names a kernel execution
    (``Mapping.execution`` other than ``"auto"``) the plan uses ``cost.with_execution(...)``,
    else the cost model's own (``"auto"``: each device kind's default); GPU compute runs at the serving
    stack's rate (``cost.with_compute_scale(stack.compute_scale)``, 1 unless the stack sets
    ``compute_slowdown``). Devices are indexed as in
    ``bound.devices``. Token-count arguments are non-negative numbers or arrays; zero tokens cost
    zero. Methods return `OpCost` (floats for scalar input, arrays of the input's shape).
    """

    def __init__(self, cost: CostModel, bound: BoundMapping) -> None:
        spec = bound.mapping.execution
        self.stack: ServingStack = resolve_stack(bound.mapping.stack)
        cost = cost if spec == "auto" else cost.with_execution(spec)
        # the stack's kernel library (`ServingStack.compute_slowdown`): GPU compute at its rate
        self.cost: CostModel = cost.with_compute_scale(self.stack.compute_scale)
        self.bound = bound
        self.model: MoEModel = bound.model
        m = self.model
        self.dense_model: MoEModel | None = m.dense_ffn_model() if m.n_dense_layers > 0 else None
        self.devices = bound.devices
        self.n_devices = len(bound.devices)
        self.strategies: tuple[ExpertStrategy, ...] = tuple(expert_strategy(dev.kind) for dev in bound.devices)
        self.executions: tuple[KernelExecution, ...] = tuple(self.cost.execution_for(dev) for dev in bound.devices)
        self.fpga_reorder = bool(bound.mapping.fpga_reorder)
        bpe = float(m.bytes_per_expert)
        self.bytes_per_expert = bpe
        links: list[Link | None] = []
        fetch: list[OpCost] = []
        for d, dev in enumerate(bound.devices):
            link: Link | None
            if not bound.offloaded:
                link = None
            elif bound.backing == "host":
                link = bound.platform.host_link
            else:
                link = tier_link(dev, bound.backing, bound.cache_tier[d])
            links.append(link)
            fetch.append(self.cost.transfer(link, bpe) if link is not None else _zero())
        self.fetch_links: tuple[Link | None, ...] = tuple(links)
        self._fetch = tuple(fetch)
        # non-expert weights streamed per layer (ZeRO-3 offload_param): over the backing tier's path
        self.stream_links: tuple[Link | None, ...] = ()
        self._stream: tuple[tuple[OpCost, OpCost], ...] = ()
        #: bytes of one MoE layer's and one dense layer's streamed non-expert weights (0 when not streamed)
        self.stream_bytes: tuple[float, float] = (0.0, 0.0)
        if bound.mapping.offload_non_expert:
            moe_b, dense_b = non_expert_layer_bytes(m)
            self.stream_bytes = (moe_b, dense_b)
            stream_links: list[Link | None] = []
            stream: list[tuple[OpCost, OpCost]] = []
            for d, dev in enumerate(bound.devices):
                sl = (
                    bound.platform.host_link
                    if bound.backing == "host"
                    else tier_link(dev, bound.backing, bound.cache_tier[d])
                )
                stream_links.append(sl)
                stream.append(
                    (self.cost.transfer(sl, moe_b), self.cost.transfer(sl, dense_b))
                    if sl is not None
                    else (_zero(), _zero())
                )
            self.stream_links = tuple(stream_links)
            self._stream = tuple(stream)
        self.near_links: tuple[Link, ...] = ()
        self._near_copy: tuple[OpCost, ...] = ()
        if bound.near_tier is not None:
            self.near_links = tuple(
                tier_link(dev, bound.cache_tier[d], bound.near_tier) for d, dev in enumerate(bound.devices)
            )
            self._near_copy = tuple(self.cost.transfer(nl, bpe) for nl in self.near_links)

    def __repr__(self) -> str:
        names = [e.name for e in self.executions]
        return f"StepCostPlan({self.bound.platform.name!r}, {self.model.name!r}, executions={names})"

    # ------------------------------------------------------------------ per-token ops
    def attention_prefill(self, d: int, prompt_lengths: npt.ArrayLike) -> OpCost:
        """Attention of one layer over each prefill chunk of ``prompt_lengths`` tokens on device ``d``."""
        return self.cost.attention_prefill(self.devices[d], self.model, np.asarray(prompt_lengths, dtype=np.float64))

    def attention_decode(self, d: int, n_decode: npt.ArrayLike, context_len: npt.ArrayLike) -> OpCost:
        """Attention of one layer for ``n_decode`` decode tokens at mean context ``context_len`` on ``d``."""
        return self.cost.attention_decode(self.devices[d], self.model, n_decode, context_len)

    def router(self, d: int, n_tokens: npt.ArrayLike) -> OpCost:
        """The router of one MoE layer on ``n_tokens`` tokens on device ``d``."""
        return self.cost.router(self.devices[d], self.model, n_tokens)

    def router_and_permute(self, d: int, n_tokens: npt.ArrayLike) -> tuple[Any, Any]:
        """Seconds and joules of one MoE layer's router plus the stack's MoE permute/unpermute
        (`moe_permute`, zero unless the stack charges it) on ``n_tokens`` tokens on device ``d``:
        what the engine, `zero_load_step_s` and the analytic model charge as the layer's routing
        (floats for scalar input, arrays of its shape otherwise)."""
        r = self.router(d, n_tokens)
        pm = self.moe_permute(d, n_tokens)
        return np.add(r.total_s, pm.total_s), np.add(r.energy_J, pm.energy_J)

    def shared(self, d: int, n_tokens: npt.ArrayLike) -> OpCost:
        """The shared experts of one MoE layer (zero for a model without them)."""
        return self.cost.shared_experts(self.devices[d], self.model, n_tokens)

    def dense(self, d: int, n_tokens: npt.ArrayLike) -> OpCost:
        """The FFN of one dense layer (zero for a model without dense layers)."""
        if self.dense_model is None:
            return _zero(np.shape(n_tokens))
        return self.cost.expert_ffn(self.devices[d], self.dense_model, n_tokens)

    def lm_head(self, d: int, n_sequences: npt.ArrayLike) -> OpCost:
        """The LM head and sampling for ``n_sequences`` token-emitting sequences on device ``d``
        (`hwmodels.costs.CostModel.lm_head`), whatever the stack (`step_tail` charges it when the
        stack says ``lm_head``)."""
        return self.cost.lm_head(self.devices[d], self.model, n_sequences)

    def moe_permute(self, d: int, n_tokens: npt.ArrayLike) -> OpCost:
        """The token permute before and the unpermute (weighted sum) after one MoE layer's experts on
        ``n_tokens`` tokens on device ``d``; zero unless the stack charges it (``moe_permute``).

        Memory-bound copies of the token activations in the device's activation tier: the permute
        reads each token's hidden row once and writes ``top_k`` copies, the unpermute reads the
        ``top_k`` expert outputs and writes one row, so ``(2 top_k + 2) x d_model x
        ACTIVATION_BYTES`` bytes per token, moved at the tier's copy rate (`CostModel.tier_copy`,
        reported here as ``memory_s``), plus the launch overhead of three kernels
        (`CostModel.launch_s`: the index sort / align, the permute, the unpermute; vLLM
        ``moe_align_block_size`` + gather and ``moe_sum``, TRT-LLM ``expandInputRows`` and
        ``finalizeMoeRouting``). The top-k itself is in `router`. Zero tokens cost zero. Energy: the
        moved bytes (reads and writes already counted apart) once each at the tier's energy per
        byte, plus static power over the time. A one-expert top-1 model (a dense model) has
        nothing to permute: zero."""
        n = np.asarray(n_tokens, dtype=np.float64)
        if not self.stack.moe_permute or (self.model.n_experts == 1 and self.model.top_k == 1):
            return _zero(n.shape)
        dev = self.devices[d]
        m = self.model
        tier = dev.tiers[0].name if dev.kind in ("rdu", "fpga") else dev.weights_tier
        moved = n * ((2.0 * m.top_k + 2.0) * m.d_model * ACTIVATION_BYTES)
        c = self.cost.tier_copy(dev, tier, tier, moved)
        launch = np.where(n > 0, self.cost.launch_s(dev, "moe_permute", 3), 0.0)
        t = np.asarray(c.comm_s) + launch
        # tier_copy charges each byte's read and its write; ``moved`` already counts both
        energy = moved * dev.tier(tier).energy_J_per_byte + dev.static_power_W * t
        if n.ndim == 0:
            return OpCost(compute_s=0.0, memory_s=float(t), comm_s=0.0, energy_J=float(energy), source="moe_permute")
        z = np.zeros(n.shape)
        return OpCost(compute_s=z, memory_s=t, comm_s=z.copy(), energy_J=energy, source="moe_permute")

    def host_cpu_s(self, n_emitting: float) -> float:
        """Host/framework CPU seconds of one step with ``n_emitting`` token-emitting sequences
        (`ServingStack.cpu_s` over the model's decoder layers)."""
        return self.stack.cpu_s(self.model.n_layers, n_emitting)

    def step_tail(self, emitting: npt.ArrayLike, device_s: float) -> tuple[float, float, float, float]:
        """What a step pays after its layers: ``(lm_head_s, lm_head_J, exposed_cpu_s, cpu_s)``.

        ``emitting[d]``: token-emitting sequences on device ``d`` (decode tokens and prompts whose
        last chunk is in the step); ``device_s``: the step's time so far (its layers). The LM head
        + sampling runs on the devices in parallel (the step waits for the longest; energy summed),
        only when the stack charges it; the stack's host CPU time ``cpu_s`` adds ``exposed_cpu_s =
        stack.exposed_s(cpu_s, device_s + lm_head_s)`` to the step."""
        em = np.asarray(emitting, dtype=np.float64).reshape(-1)
        lm_s = lm_J = 0.0
        if self.stack.lm_head:
            for d in np.flatnonzero(em > 0).tolist():
                c = self.lm_head(d, float(em[d]))
                lm_s = max(lm_s, float(c.total_s))
                lm_J += float(c.energy_J)
        cpu = self.host_cpu_s(float(em.sum()))
        return lm_s, lm_J, self.stack.exposed_s(cpu, device_s + lm_s), cpu

    def non_expert_fetch(self, d: int, *, moe: bool) -> OpCost:
        """One layer's non-expert weights (attention + router + shared experts of an MoE layer,
        attention + FFN of a dense one: `non_expert_layer_bytes`) over device ``d``'s backing path
        when ``Mapping.offload_non_expert`` streams them; zero otherwise."""
        if not self._stream:
            return _zero()
        return self._stream[d][0 if moe else 1]

    # ------------------------------------------------------------------ experts
    def experts(self, d: int, counts: npt.ArrayLike, tier: str | None = None) -> OpCost:
        """Per-expert costs on device ``d`` (each expert as if run alone on its ``counts`` tokens) with
        weights read from ``tier`` (default: the device's cache tier). Same shape as ``counts``."""
        return self.strategies[d].per_expert(
            self.cost,
            self.devices[d],
            self.model,
            counts,
            weights_tier=tier or self.bound.cache_tier[d],
            execution=self.executions[d],
            fpga_reorder=self.fpga_reorder,
        )

    def layer_experts(
        self, d: int, counts: npt.ArrayLike, *, tier: str | None = None, active: npt.ArrayLike | None = None
    ) -> OpCost:
        """The experts of device ``d`` with tokens in ``counts`` (``[..., E]``) run together, one group per
        leading index (``[L, E] -> [L]``), as the device kind's strategy and the kernel execution run
        them. ``active`` (same shape) makes it an expectation (see `ExpertStrategy.layer`)."""
        return self.strategies[d].layer(
            self.cost,
            self.devices[d],
            self.model,
            counts,
            weights_tier=tier or self.bound.cache_tier[d],
            execution=self.executions[d],
            fpga_reorder=self.fpga_reorder,
            active=active,
        )

    def group_fixed_s(self, d: int) -> float:
        """Seconds a group of device ``d``'s experts pays once when any expert is active (grouped
        launches, an FPGA pipeline fill; 0 when experts run one by one)."""
        return self.strategies[d].group_fixed_s(self.cost, self.devices[d], self.model, execution=self.executions[d])

    def serial_experts(self, d: int) -> bool:
        """True when device ``d`` runs its experts one after the other (per-expert kernels, not an
        FPGA stream): a group's time is then the sum of the experts' own costs."""
        return self.executions[d].experts == "per-expert" and self.devices[d].kind != "fpga"

    def group(
        self,
        d: int,
        layer_counts: npt.NDArray[np.int64],
        ready: npt.NDArray[np.int64],
        comp_s: npt.NDArray[np.float64],
        comp_J: npt.NDArray[np.float64],
    ) -> tuple[float, float]:
        """Time and energy of the ``ready`` experts of one layer run together on device ``d``.

        ``layer_counts``: tokens per expert of the layer (``[E]``); ``comp_s``/``comp_J``: the
        per-expert costs from `experts` (used as they are when the device runs experts one by
        one). Grouped execution: one `layer_experts` call over the ready experts; FPGA: one
        double-buffered stream with its pipeline fill."""
        if ready.size == 0:
            return 0.0, 0.0
        if self.serial_experts(d):
            return float(comp_s[ready].sum()), float(comp_J[ready].sum())
        c = self.layer_experts(d, np.asarray(layer_counts)[ready])
        return float(c.total_s), float(c.energy_J)

    # ------------------------------------------------------------------ transfers and host
    def fetch(self, d: int) -> OpCost:
        """One expert's weights over device ``d``'s fetch path (zero when nothing is offloaded)."""
        return self._fetch[d]

    def near_copy(self, d: int) -> OpCost:
        """One expert's weights copied from the cache tier to the near tier of device ``d``."""
        if not self._near_copy:
            raise ValueError("the mapping has no near tier")
        return self._near_copy[d]

    def cpu_experts(self, counts: npt.ArrayLike) -> OpCost | None:
        """Experts computed on the host CPU on ``counts`` tokens each, with their activations sent
        over the host link and back (``cpu_expert + 2 x transfer``, the transfers in ``comm_s``);
        None without a host."""
        platform = self.bound.platform
        if platform.host is None or platform.host_link is None:
            return None
        n = np.asarray(counts, dtype=np.float64)
        cc = self.cost.cpu_expert(platform.host, self.model, n)
        tr = self.cost.transfer(platform.host_link, n * (self.model.d_model * ACTIVATION_BYTES))
        comm = np.add(cc.comm_s, 2.0 * np.asarray(tr.total_s))
        energy = np.add(cc.energy_J, 2.0 * np.asarray(tr.energy_J))
        return OpCost(
            compute_s=cc.compute_s,
            memory_s=cc.memory_s,
            comm_s=float(comm) if n.ndim == 0 else comm,
            energy_J=float(energy) if n.ndim == 0 else energy,
            source=f"{cc.source}+2x{tr.source}",
        )

    def all_to_all(self, bytes_per_device: npt.ArrayLike) -> OpCost:
        """An all-to-all of ``bytes_per_device`` (the busiest device's bytes) over the peer link, or
        across nodes (`CostModel.all_to_all_nodes`) when the expert-parallel group spans several of a
        multi-node platform; one call pays the stack's ``collective_latency_s`` (its collective
        library), else the link's."""
        if self.bound.platform.peer_link is None or self.n_devices < 2:
            return _zero(np.shape(bytes_per_device))
        return self.cost.ep_all_to_all(bytes_per_device, self.n_devices, call_latency_s=self.stack.collective_latency_s)

    # ------------------------------------------------------------------ zero load
    def zero_load_step_s(self, routing_rows: npt.NDArray[np.int16], *, prefill: bool, context_len: int) -> float:
        """Sum of the operation costs of one step on one device with every needed expert resident:
        ``sum over MoE layers of attention + router (+ the stack's MoE permute) + shared + the layer's
        experts`` plus ``dense layers x (attention + dense FFN)``, then the step's tail (`step_tail`:
        the LM head of the one emitting sequence, the stack's exposed host CPU time). A prefill is
        the whole prompt, so it emits the first token.

        ``routing_rows`` (int16 ``[n_tokens, n_moe_layers, k]``, -1 = no expert) are the step's rows
        of a single request: a prefill of ``n_tokens`` tokens (``prefill=True``) or ``n_tokens``
        decode tokens at ``context_len`` tokens of context."""
        if self.n_devices != 1:
            raise ValueError("zero_load_step_s models a single device")
        rows = np.asarray(routing_rows)
        model = self.model
        if rows.ndim != 3 or rows.shape[1] != model.n_moe_layers:
            raise ValueError(f"routing_rows must be [n_tokens, {model.n_moe_layers}, k], got shape {tuple(rows.shape)}")
        n = int(rows.shape[0])
        if prefill:
            attn = float(np.sum(self.attention_prefill(0, [n]).total_s))
        else:
            attn = float(self.attention_decode(0, n, float(context_len)).total_s)
        router = float(self.router_and_permute(0, n)[0])
        shared = float(self.shared(0, n).total_s) if model.n_shared_experts else 0.0
        dense = float(self.dense(0, n).total_s)
        L, E = model.n_moe_layers, model.n_experts
        valid = rows >= 0
        keys = (np.arange(L, dtype=np.int64)[None, :, None] * E + rows)[valid]
        counts = np.bincount(keys, minlength=L * E).reshape(L, E)
        if self.serial_experts(0):
            experts = float(np.sum(np.asarray(self.experts(0, counts).total_s) * (counts > 0)))
        else:
            experts = float(np.sum(self.layer_experts(0, counts).total_s))
        layers = L * (attn + router + shared) + experts + model.n_dense_layers * (attn + dense)
        lm_s, _, exposed, _ = self.step_tail([1.0], layers)
        return layers + lm_s + exposed


def zero_load_step_s(
    cost: CostModel, bound: BoundMapping, routing_rows: npt.NDArray[np.int16], *, prefill: bool, context_len: int
) -> float:
    """`StepCostPlan.zero_load_step_s` of a plan built for ``(cost, bound)`` (the engine's old signature)."""
    return StepCostPlan(cost, bound).zero_load_step_s(routing_rows, prefill=prefill, context_len=context_len)
