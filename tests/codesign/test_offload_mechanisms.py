"""Issue 8 offload mechanisms: copy-back eviction, streamed non-expert weights, whole-layer fetch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codesign.analytic import analytic_step, selection_probability, supports
from codesign.costplan import StepCostPlan, non_expert_layer_bytes
from codesign.engine import Engine
from codesign.mapping import BatchingSpec, CacheSpec, Mapping, MappingError
from codesign.policies.base import RoutingStats
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform
from tests.codesign.sim_helpers import ListStream, Req, random_stream, tiny_model


@pytest.fixture(scope="module")
def h100():
    return get_platform("h100-pcie5-host")


def _cyclic_stream(model, output: int) -> ListStream:
    """One request whose token t uses experts (2t, 2t+1) mod E in every layer: with two LRU slots
    per layer every decode step misses both of its experts and evicts two residents."""
    t = np.arange(1 + output)
    pair = np.stack([(2 * t) % model.n_experts, (2 * t + 1) % model.n_experts], axis=1)
    rows = np.repeat(pair[:, None, :], model.n_moe_layers, axis=1).astype(np.int16)
    return ListStream([Req(0, 0.0, 1, output)], [rows])


def _cyclic_mapping(eviction: str) -> Mapping:
    resident = tuple((layer, e) for layer in range(4) for e in (0, 1))
    return Mapping(
        cache=CacheSpec(expert_fraction=0.25, options={"per_layer": True}, eviction=eviction),
        initial="listed",
        resident=resident,
    )


def test_copy_back_doubles_the_bytes_and_the_offload_bound_step(h100) -> None:
    model = tiny_model()
    stream = _cyclic_stream(model, 6)
    cost = CostModel(h100)
    link = h100.host_link.name
    runs = {ev: simulate(model, h100, stream, _cyclic_mapping(ev), cost_model=cost) for ev in ("discard", "copy-back")}
    d, c = runs["discard"], runs["copy-back"]
    assert d.summary["hit_rate"]["hbm"] == c.summary["hit_rate"]["hbm"]
    decode = d.steps.decode_tokens.to_numpy() > 0
    assert (d.steps.fetched.to_numpy()[decode] == 2 * model.n_moe_layers).all()  # misses every decode step
    assert c.summary["bytes_moved"][link] == pytest.approx(2.0 * d.summary["bytes_moved"][link], rel=1e-12)
    # each decode layer's two fetches are preceded by two copy-backs on the same stream
    f = float(StepCostPlan(cost, _cyclic_mapping("discard").bind(model, h100)).fetch(0).total_s)
    grow = c.steps.duration_s.to_numpy()[decode] - d.steps.duration_s.to_numpy()[decode]
    assert grow == pytest.approx(np.full(decode.sum(), 2 * model.n_moe_layers * f), rel=1e-9)
    assert c.summary["tpot_p50_s"] > 1.5 * d.summary["tpot_p50_s"]


def test_copy_back_is_played_by_the_simpy_path_only(h100) -> None:
    model = tiny_model()
    for ev, fast in (("discard", True), ("copy-back", False)):
        bound = _cyclic_mapping(ev).bind(model, h100)
        assert (Engine(bound, CostModel(h100)).fast is not None) == fast


def test_streamed_non_expert_weights(h100) -> None:
    model = tiny_model(first_dense_layers=1, dense_ffn_dim=1024, n_layers=8)
    stream = random_stream(model, 1, 4, 4, seed=2)
    cost = CostModel(h100)
    m = Mapping(offload_non_expert=True)
    bound = m.bind(model, h100)
    moe_b, dense_b = non_expert_layer_bytes(model)
    assert bound.memory[0]["non_expert_bytes"] < model.non_expert_bytes
    assert bound.memory[0]["non_expert_bytes"] == pytest.approx(
        model.non_expert_bytes - 7 * moe_b - dense_b + 2 * max(moe_b, dense_b)
    )
    base = simulate(model, h100, stream, Mapping(), cost_model=cost)
    r = simulate(model, h100, stream, m, cost_model=cost)
    per_step = 7 * moe_b + dense_b
    n_steps = len(r.steps)
    assert r.summary["bytes_moved"][h100.host_link.name] == pytest.approx(n_steps * per_step, rel=1e-12)
    plan = StepCostPlan(cost, bound)
    link_s = 7 * float(plan.non_expert_fetch(0, moe=True).total_s) + float(plan.non_expert_fetch(0, moe=False).total_s)
    steps = r.steps.duration_s.to_numpy()
    assert (steps >= link_s).all()  # every layer's weights cross the link
    assert (steps <= link_s + base.steps.duration_s.to_numpy()).all()  # the next layer's copy overlaps compute
    # no host: refused at bind
    no_host = dataclasses.replace(h100, host=None, host_link=None)
    with pytest.raises(MappingError, match="offload_non_expert streams"):
        m.bind(model, no_host)


def test_whole_layer_fetch_moves_every_offloaded_expert(h100) -> None:
    model = tiny_model()
    stream = random_stream(model, 1, 3, 5, seed=4)
    cost = CostModel(h100)
    routed = Mapping(cache=CacheSpec(expert_fraction=0.0))
    whole = routed.with_(fetch_whole_layer=True)
    a = simulate(model, h100, stream, routed, cost_model=cost)
    b = simulate(model, h100, stream, whole, cost_model=cost)
    link = h100.host_link.name
    n_steps = len(b.steps)
    bpe = float(model.bytes_per_expert)
    assert b.summary["bytes_moved"][link] == pytest.approx(n_steps * model.n_moe_layers * model.n_experts * bpe)
    assert a.summary["bytes_moved"][link] < b.summary["bytes_moved"][link]
    assert (b.steps.duration_s.to_numpy() >= a.steps.duration_s.to_numpy()).all()
    with pytest.raises(MappingError, match="fetch_whole_layer"):
        Mapping(fetch_whole_layer=True).bind(model, h100)
    with pytest.raises(MappingError, match=r"eviction='copy-back' .* every expert is resident"):
        Mapping(cache=CacheSpec(eviction="copy-back")).bind(model, h100)


@pytest.mark.parametrize("miss", ["cpu", "cost"])
def test_whole_layer_fetch_refuses_a_cpu_miss_path(miss: str) -> None:
    """A whole-layer fetch puts the needed experts on the device too: computing them on the host
    CPU instead is refused (the engine would not wait for the gather, the analytic model would)."""
    with pytest.raises(MappingError, match=f"fetch_whole_layer .*miss='{miss}'"):
        Mapping(cache=CacheSpec(expert_fraction=0.5), fetch_whole_layer=True, miss=miss)


def test_copy_back_swaps_fetches_streamed_past_a_full_cache(h100) -> None:
    """A prefill needs every expert of a layer: the misses stream past a cache full of experts the
    layer needs; a swap cache (copy-back) still sends one resident expert back per fetch."""
    model = tiny_model()
    stream = random_stream(model, 1, 32, 2, seed=8)
    cost = CostModel(h100)
    d = simulate(model, h100, stream, _cyclic_mapping("discard"), cost_model=cost).steps
    c = simulate(model, h100, stream, _cyclic_mapping("copy-back"), cost_model=cost).steps
    assert d.streamed.iloc[0] > 0 and d.streamed.iloc[0] == c.streamed.iloc[0]
    assert c.bytes_host.iloc[0] == pytest.approx(2.0 * d.bytes_host.iloc[0], rel=1e-12)


def test_copy_back_swaps_with_no_slots_in_the_engine_and_the_analytic_model(h100) -> None:
    """A copy-back cache with 0 slots still swaps through a staging buffer (Mixtral-offloading
    loads every expert through ``_swap``): one copy out per fetch, in both the engine and the
    analytic model."""
    model = tiny_model()
    stream = random_stream(model, 1, 8, 3, seed=8)
    cost = CostModel(h100)
    link = h100.host_link.name
    empty = Mapping(cache=CacheSpec(expert_fraction=0.0, eviction="copy-back"))
    plain = Mapping(cache=CacheSpec(expert_fraction=0.0))
    a = simulate(model, h100, stream, empty, cost_model=cost).summary["bytes_moved"][link]
    b = simulate(model, h100, stream, plain, cost_model=cost).summary["bytes_moved"][link]
    assert b > 0 and a == pytest.approx(2.0 * b, rel=1e-12)
    p = np.full((model.n_moe_layers, model.n_experts), model.top_k / model.n_experts)
    sa = analytic_step(cost, empty.bind(model, h100), p, n_tokens=1, prefill=False, context_len=16.0)
    sb = analytic_step(cost, plain.bind(model, h100), p, n_tokens=1, prefill=False, context_len=16.0)
    assert sb.bytes_fetched > 0 and sa.bytes_fetched == pytest.approx(2.0 * sb.bytes_fetched, rel=1e-12)


@pytest.mark.parametrize(
    ("mapping", "batch"),
    [
        (Mapping(cache=CacheSpec(expert_fraction=0.0), fetch_whole_layer=True, offload_non_expert=True), 1),
        (Mapping(cache=CacheSpec(expert_fraction=0.0), fetch_whole_layer=True, offload_non_expert=True), 8),
        (Mapping(offload_non_expert=True), 4),
    ],
)
def test_analytic_streamed_weights_agree_with_the_simulator(mapping: Mapping, batch: int) -> None:
    """ZeRO-3-style designs: the analytic two-stage pipeline (link: weights + fetches; compute)
    against the simulated decode steps (link-bound here, so the agreement is tight)."""
    plat = get_platform("rtx6000ada-pcie4-host")
    model = tiny_model()
    m = mapping.with_(batching=BatchingSpec(max_batch=batch))
    stream = random_stream(model, batch, 4, 6, seed=5)
    cost = CostModel(plat)
    r = simulate(model, plat, stream, m, cost_model=cost)
    rows = np.concatenate([stream.routing(q) for q in stream.requests])
    stats = RoutingStats.from_routing(rows, model.n_experts)
    bound = m.bind(model, plat, stats=stats)
    dec = analytic_step(
        StepCostPlan(cost, bound), bound, selection_probability(stats), n_tokens=batch, prefill=False, context_len=7.0
    )
    decode = r.steps.decode_tokens.to_numpy() > 0
    sim = float(r.steps.duration_s.to_numpy()[decode].mean())
    assert dec.step_s == pytest.approx(sim, rel=0.05)
    assert supports(bound, batch_size=batch if batch > 1 else 2) == []  # modelled, not refused
