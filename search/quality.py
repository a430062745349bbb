"""Model-quality proxies: a `QualityLaw` maps a model's shape and its training tokens to a loss.

The search cannot train the models it proposes, so their quality comes from a scaling law. The
default is the fine-grained MoE law of Krajewski et al. 2024 ("Scaling Laws for Fine-Grained
Mixture of Experts", arXiv 2402.07871, eq. 6 and Table 2)::

    L(N, D, G) = c + (g / G**gamma + a) / N**alpha + b / D**beta

with ``a = 18.1, alpha = 0.115, b = 30.8, beta = 0.147, g = 2.1, gamma = 0.58, c = 0.47`` (values as
in ``../shared/DESIGN.md``), where ``N`` is the number of active non-embedding parameters, ``D`` the
training tokens and ``G`` the granularity (``d_ff / expert width``; `workloads.MoEModel.granularity`).
The constants were **fitted at expansion rate 64** (64 times as many expert parameters as active
ones); at other expansion rates, at precisions below bf16 (the law does not see the weight
precision) and far outside the fitted ranges of N, D and G the value is an extrapolation, to be
read as a ranking proxy, not a prediction. A user plugs in another law by subclassing `QualityLaw`
and registering it in a `QualityRegistry`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from workloads.model import MoEModel

__all__ = ["QUALITY_LAWS", "KrajewskiLaw", "QualityLaw", "QualityRegistry", "active_non_embedding_params"]


def active_non_embedding_params(model: MoEModel) -> int:
    """``N`` of the scaling laws: the weights touched per token (top-k routed and shared experts,
    attention, router, dense layers), embeddings and output head excluded."""
    return int(model.active_params - model.params_embedding)


class QualityLaw(ABC):
    """Contract of a quality proxy: ``loss(model, training_tokens)`` returns a finite, positive
    loss in nats per token (lower is better) for any valid `MoEModel` and ``training_tokens > 0``;
    it is a pure function (same inputs, same value) and raises `ValueError` naming the input for
    values outside its domain. ``name`` and ``source`` say which law answered."""

    name: str = ""
    source: str = ""

    @abstractmethod
    def loss(self, model: MoEModel, training_tokens: float) -> float:
        """Predicted loss (nats/token) of ``model`` trained on ``training_tokens`` tokens."""


@dataclass(frozen=True, kw_only=True)
class KrajewskiLaw(QualityLaw):
    """Krajewski et al. 2024 fine-grained MoE law (module doc); constants fitted at expansion rate 64."""

    a: float = 18.1
    alpha: float = 0.115
    b: float = 30.8
    beta: float = 0.147
    g: float = 2.1
    gamma: float = 0.58
    c: float = 0.47
    name: str = "krajewski2024"
    source: str = (
        "Krajewski et al. 2024, Scaling Laws for Fine-Grained Mixture of Experts (arXiv 2402.07871), "
        "fitted at expansion rate 64"
    )

    def loss_from(self, n_active: float, training_tokens: float, granularity: float) -> float:
        """``L(N, D, G)`` for raw numbers (N active non-embedding parameters, D tokens, G > 0)."""
        for what, value in (("N (active parameters)", n_active), ("D (training tokens)", training_tokens)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{self.name}: {what} must be a finite number > 0, got {value!r}")
        if not math.isfinite(granularity) or granularity <= 0:
            raise ValueError(f"{self.name}: granularity G must be a finite number > 0, got {granularity!r}")
        return (
            self.c
            + (self.g / granularity**self.gamma + self.a) / n_active**self.alpha
            + self.b / training_tokens**self.beta
        )

    def loss(self, model: MoEModel, training_tokens: float) -> float:
        return self.loss_from(float(active_non_embedding_params(model)), float(training_tokens), model.granularity)


class QualityRegistry:
    """Quality laws by name; an unknown name raises `KeyError` listing the valid ones."""

    def __init__(self) -> None:
        self._laws: dict[str, Callable[[], QualityLaw]] = {}

    def register(self, name: str, factory: Callable[[], QualityLaw]) -> None:
        """Add ``factory`` under ``name`` (a name registered twice is an error)."""
        if name in self._laws:
            raise ValueError(f"quality law {name!r} is already registered")
        self._laws[name] = factory

    def create(self, name: str) -> QualityLaw:
        """A new instance of the law registered as ``name``."""
        try:
            return self._laws[name]()
        except KeyError:
            raise KeyError(f"unknown quality law {name!r}; valid: {sorted(self._laws)}") from None

    def names(self) -> list[str]:
        return sorted(self._laws)


def _default_registry() -> QualityRegistry:
    reg = QualityRegistry()
    reg.register("krajewski2024", KrajewskiLaw)
    return reg


#: The laws shipped with the package (read-only use: build your own `QualityRegistry` to add one).
QUALITY_LAWS = _default_registry()
