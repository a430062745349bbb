"""The quality proxy: the Krajewski et al. 2024 law, its inputs from a model, its registry."""

from __future__ import annotations

import math

import pytest

from search.quality import QUALITY_LAWS, KrajewskiLaw, QualityRegistry, active_non_embedding_params
from workloads.model import get_model


def test_law_matches_the_published_formula_and_constants() -> None:
    # L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta, Krajewski et al. 2024 (DESIGN.md)
    n, d, g = 2.5e9, 3e11, 4.0
    expected = 0.47 + (2.1 / g**0.58 + 18.1) / n**0.115 + 30.8 / d**0.147
    assert KrajewskiLaw().loss_from(n, d, g) == pytest.approx(expected, rel=1e-12)
    assert "expansion rate 64" in KrajewskiLaw().source


def test_law_improves_with_parameters_tokens_and_granularity() -> None:
    law = KrajewskiLaw()
    base = law.loss_from(1e9, 1e11, 1.0)
    assert law.loss_from(2e9, 1e11, 1.0) < base
    assert law.loss_from(1e9, 2e11, 1.0) < base
    assert law.loss_from(1e9, 1e11, 8.0) < base
    assert law.loss_from(1e20, 1e30, 1e6) > 0.47  # c is the irreducible loss


@pytest.mark.parametrize(("n", "d", "g"), [(0.0, 1e9, 1.0), (1e9, -1.0, 1.0), (1e9, 1e9, 0.0), (math.nan, 1e9, 1.0)])
def test_law_rejects_values_outside_its_domain(n: float, d: float, g: float) -> None:
    with pytest.raises(ValueError, match="krajewski2024"):
        KrajewskiLaw().loss_from(n, d, g)


def test_model_inputs_are_active_non_embedding_parameters_and_granularity() -> None:
    m = get_model("mixtral-8x7b")
    n = active_non_embedding_params(m)
    assert n == m.active_params - m.params_embedding
    law = KrajewskiLaw()
    assert law.loss(m, 1e12) == pytest.approx(law.loss_from(n, 1e12, m.granularity))
    finer = m.with_(n_experts=16, top_k=4, expert_ffn_dim=m.expert_ffn_dim // 2)
    assert active_non_embedding_params(finer) == pytest.approx(n, rel=1e-3)
    assert law.loss(finer, 1e12) < law.loss(m, 1e12)  # same active parameters, finer experts


def test_registry_names_and_unknown_law() -> None:
    assert "krajewski2024" in QUALITY_LAWS.names()
    assert isinstance(QUALITY_LAWS.create("krajewski2024"), KrajewskiLaw)
    with pytest.raises(KeyError, match="valid: \\['krajewski2024'\\]"):
        QUALITY_LAWS.create("chinchilla")
    reg = QualityRegistry()
    reg.register("mine", KrajewskiLaw)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("mine", KrajewskiLaw)
