"""`OpCost`: the breakdown every cost model returns (who answered, and where the time went)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatOrArray = float | npt.NDArray[np.float64]


@dataclass(frozen=True)
class OpCost:
    """Cost of one operation (or of an array of operations, element-wise).

    Fields are seconds and joules; each is a float or an array of one shape (vectorised calls
    return arrays). ``compute_s`` and ``memory_s`` overlap (roofline: the op takes the larger),
    ``comm_s`` (link transfers, collectives) is serial with them:
    ``total_s = max(compute_s, memory_s) + comm_s``. ``source`` names the model that answered
    (for example ``"roofline"``, ``"calibrated:<profile>"``).
    """

    compute_s: Any
    memory_s: Any
    comm_s: Any
    energy_J: Any
    source: str

    @property
    def total_s(self) -> FloatOrArray:
        """Wall time in seconds: ``max(compute_s, memory_s) + comm_s``."""
        total = np.maximum(self.compute_s, self.memory_s) + self.comm_s
        return float(total) if np.ndim(total) == 0 else total

    def then(self, other: OpCost) -> OpCost:
        """Sequential composition: times and energy add; ``total_s`` of the result is an upper bound
        of the two totals' sum only when both are compute- or both memory-bound, so callers that
        need exact sums should add ``total_s`` values instead."""
        return OpCost(
            compute_s=np.add(self.compute_s, other.compute_s),
            memory_s=np.add(self.memory_s, other.memory_s),
            comm_s=np.add(self.comm_s, other.comm_s),
            energy_J=np.add(self.energy_J, other.energy_J),
            source=self.source if self.source == other.source else f"{self.source}+{other.source}",
        )

    def scalar(self) -> OpCost:
        """The same cost summed over its elements (for an array-valued cost)."""
        return OpCost(
            compute_s=float(np.sum(self.compute_s)),
            memory_s=float(np.sum(self.memory_s)),
            comm_s=float(np.sum(self.comm_s)),
            energy_J=float(np.sum(self.energy_J)),
            source=self.source,
        )
