"""Small search spaces for the search tests (tiny workloads: each simulation well under a second)."""

from __future__ import annotations

from pathlib import Path

from search.space import SearchSpace, load_space

#: One base model on one single-accelerator platform, a tiny closed batch; the knobs vary the
#: precision, the fast-tier share and the cache policy (offloading), so some designs do not fit.
TINY_SPACE = """
[study]
population_size = 4
fidelity = "{fidelity}"
[workload]
base_model = "mixtral-8x7b"
n_requests = 2
prompt_tokens = 16
output_tokens = 4
[model]
experts_scale = 1
granularity = 1
shared_experts = 0
weight_precision = ["bf16", "fp8"]
[platform]
preset = ["h100-pcie5-host"]
[mapping]
fast_tier_share = [0.5, 0.75, 1.0]
cache_policy = ["lru", "lfu"]
prefetch = "none"
miss = ["fetch", "cpu"]
max_batch = [2]
max_tokens = [2048]
"""


def tiny_space_text(fidelity: str = "multi") -> str:
    return TINY_SPACE.format(fidelity=fidelity)


def tiny_space(fidelity: str = "multi") -> SearchSpace:
    return load_space("tiny.toml", text=tiny_space_text(fidelity))


def write_space(folder: Path, fidelity: str = "multi") -> Path:
    path = folder / "space.toml"
    path.write_text(tiny_space_text(fidelity), encoding="utf-8")
    return path
