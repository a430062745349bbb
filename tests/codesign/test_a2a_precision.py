"""The engine moves bytes at the model's component precisions: all-to-all at the dispatch and combine
activation precision, expert fetches at the expert precision."""

from __future__ import annotations

import pytest

from codesign.mapping import CacheSpec, Mapping
from codesign.simulate import simulate
from hwmodels import get_platform
from tests.codesign.sim_helpers import random_stream, tiny_model


def test_fp8_dispatch_halves_the_dispatch_bytes() -> None:
    dgx = get_platform("dgx-h100")
    base = tiny_model()
    stream = random_stream(base, 6, 4, 3, seed=2)

    def peer_bytes(dispatch: float, combine: float) -> float:
        model = base.with_(dispatch_bytes_per_elem=dispatch, combine_bytes_per_elem=combine)
        r = simulate(model, dgx, stream, Mapping(n_devices=2), seed=0)
        return float(r.summary["bytes_moved"]["nvlink4"])

    bf16 = peer_bytes(2.0, 2.0)
    assert bf16 > 0
    assert peer_bytes(1.0, 2.0) == pytest.approx(0.75 * bf16)  # FP8 dispatch, BF16 combine (DeepEP)
    assert peer_bytes(1.0, 1.0) == pytest.approx(0.5 * bf16)


def test_two_bit_experts_fetch_an_eighth_of_the_bytes() -> None:
    plat = get_platform("h100-pcie5-host")
    base = tiny_model()
    stream = random_stream(base, 4, 3, 4, seed=3)
    mapping = Mapping(n_devices=1, cache=CacheSpec(expert_fraction=0.25))

    def host_bytes(model) -> float:
        r = simulate(model, plat, stream, mapping, seed=0)
        return float(r.summary["bytes_moved"][plat.host_link.name])

    bf16 = host_bytes(base)
    assert bf16 > 0
    assert host_bytes(base.with_(expert_bytes_per_weight=0.25)) == pytest.approx(bf16 / 8)
    # attention precision changes no fetched byte
    assert host_bytes(base.with_(attention_bytes_per_weight=0.5)) == pytest.approx(bf16)
