"""Benchmark: expert-FFN cost evaluations per second (target >= 1M/s, vectorised).

Run on demand: ``python benchmarks/bench_costs.py [--platform dgx-h100] [--model mixtral-8x7b]``.
Prints, for each fidelity, the evaluations per second of one vectorised ``CostModel.expert_ffn``
call over arrays of token counts of several sizes, and the latency of scalar calls (cold: a new
token count each time; warm: a repeated one, answered from the instance's memo), plus transfers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from hwmodels import CostModel, OpCost, Platform, get_platform
from workloads import MoEModel, get_model


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` runs of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", default="dgx-h100")
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    platform = get_platform(args.platform)
    model = get_model(args.model)
    rng = np.random.default_rng(0)
    print(f"platform {platform.name}, device {platform.accelerators[0].name}, model {model.name}")
    for fidelity in ("roofline", "calibrated"):
        run_fidelity(platform, model, fidelity, rng, args.repeats)


def run_fidelity(platform: Platform, model: MoEModel, fidelity: str, rng: np.random.Generator, repeats: int) -> None:
    """Print the figures of one fidelity."""
    device = platform.accelerators[0]
    cm = CostModel(platform, fidelity=fidelity)  # type: ignore[arg-type]
    for size in (64, 1_000, 10_000, 100_000, 1_000_000):
        tokens = rng.integers(0, 4096, size=size)

        def vectorised(tokens: np.ndarray = tokens) -> OpCost:
            return cm.expert_ffn(device, model, tokens)

        t = best_of(vectorised, repeats)
        print(
            f"{fidelity:>10} expert_ffn vectorised n={size:>9,}: {size / t / 1e6:8.2f} M evals/s "
            f"({t * 1e3:8.3f} ms per call)"
        )
    counts = [int(c) for c in rng.integers(1, 1_000_000, size=2000)]

    def cold() -> None:  # a fresh CostModel each time: no memoised answer can help
        fresh = CostModel(platform, fidelity=fidelity)  # type: ignore[arg-type]
        for c in counts:
            fresh.expert_ffn(device, model, c)

    t_cold = best_of(cold, 3) / len(counts)
    t_warm = best_of(lambda: [cm.expert_ffn(device, model, 7) for _ in range(2000)], 3) / 2000
    print(
        f"{fidelity:>10} expert_ffn scalar: {t_cold * 1e6:6.1f} us/call new token counts, "
        f"{t_warm * 1e6:6.2f} us/call repeated (memo)"
    )
    small = rng.integers(0, 64, size=8)
    t = best_of(lambda: [cm.expert_ffn(device, model, small) for _ in range(1000)], 3) / 1000
    print(f"{fidelity:>10} expert_ffn on an array of 8 experts: {t * 1e6:6.1f} us/call")
    t = best_of(lambda: [cm.experts_grouped(device, model, small) for _ in range(1000)], 3) / 1000
    print(f"{fidelity:>10} experts_grouped (8 experts): {t * 1e6:6.1f} us/call")
    link = platform.host_link or platform.peer_link
    if link is not None:
        sizes = rng.uniform(0, 1e9, size=100_000)
        t = best_of(lambda: cm.transfer(link, sizes), repeats)
        print(f"{fidelity:>10} transfer vectorised n=100,000 over {link.name}: {sizes.size / t / 1e6:6.2f} M evals/s")


if __name__ == "__main__":
    main()
