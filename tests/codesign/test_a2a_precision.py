"""All-to-all bytes follow the model's dispatch and combine activation precision (engine)."""

from __future__ import annotations

import pytest

from codesign.mapping import Mapping
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
