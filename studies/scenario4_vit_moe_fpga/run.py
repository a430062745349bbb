"""Scenario 4: a ViT-MoE on a ZCU104 FPGA, expert-by-expert reordering vs per-token execution.

Model (Edge-MoE / M3ViT, [P] hardware-and-papers.md s.3.2, sharc-lab/Edge-MoE ``include/model.hpp``):
patch 16x16 on a 256x128x3 image = 128 patches + CLS = 129 tokens, dim 192, 12 layers, 3 heads,
16 experts, top-2, expert hidden 384, ViT MLP hidden 768, 16-bit weights. Assumptions (labelled):
every other layer is MoE (layers 1, 3, ..., 11; the others dense with hidden 768), experts are
plain two-matrix MLPs (fc1, fc2: 2 x 192 x 384 = 147,456 weights, as the reference derives), and
``vocab_size = 768`` stands for the patch-embedding matrix (16 x 16 x 3 -> 192).

Routing (assumption, no real ViT-MoE trace exists in shared/): each image's tokens pick their
top-2 experts per MoE layer from a per-layer popularity drawn once from Dirichlet(1) (seeded),
by the Gumbel top-k trick (distinct experts per token).

Platform: ``zcu104-board`` (one XCZU7EV: 1,728 DSPs [S], weights in the 2 GB PS DDR4 [P]; clock,
DDR rate and energies are assumptions of the device preset). Execution, by `CostModel.fpga_layer`
through the simulator (``Mapping.fpga_reorder``):

- ``reorder`` (M3ViT's computation reordering, "computes one expert's results on its entire token
  queue while loading another expert's parameters"): each active expert's weights stream from
  DDR once per layer, double-buffered;
- ``per-token``: tokens run one after the other and each token reloads its experts' weights
  (the 16 experts of a layer, 4.7 MB in 16-bit, do not fit the 1.44 MB on-chip weight buffer).

Measured per image (one image at a time, batch 1, as on the edge device): latency (simulator
step time), off-chip expert-weight traffic (`hwmodels.offchip_bytes` on the image's routed token
counts: a composition with the cost model, since the engine does not count tier-internal
traffic), and energy (simulator, `OpCost.energy_J` of every operation).

Paper numbers ([P] s.3.2): M3ViT on one ZCU104 "reduces the memory requirement by 2.4 times,
while achieving energy efficiency up to 9.23 times higher than a comparable FPGA baseline";
Edge-MoE (ZCU102) "2.24x and 4.90x better energy efficiency comparing with GPU and CPU".
Absolute latency and energy: NR. The README states ours beside them.

Run: ``python studies/scenario4_vit_moe_fpga/run.py [--out DIR] [--images N] [--seed S]``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from codesign.mapping import BatchingSpec, Mapping
from codesign.simulate import simulate
from hwmodels import CostModel, get_platform, offchip_bytes
from workloads import MoEModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _study import finish, start, study_parser

HERE = Path(__file__).resolve().parent
TOKENS_PER_IMAGE = 129

VIT_MOE = MoEModel(
    name="vit-moe-edge",
    n_layers=12,
    d_model=192,
    n_heads=3,
    n_kv_heads=3,
    head_dim=64,
    expert_ffn_dim=384,
    n_experts=16,
    top_k=2,
    gated=False,
    moe_layer_step=2,
    moe_layer_offset=1,
    dense_ffn_dim=768,
    vocab_size=768,
    tie_embeddings=True,
    bytes_per_weight=2.0,
    kv_bytes_per_elem=2.0,
    source="Edge-MoE include/model.hpp / M3ViT ([P] hardware-and-papers.md s.3.2); every-other-layer MoE, "
    "2-matrix experts and vocab_size=768 (patch embedding) are assumptions",
)


@dataclass(frozen=True)
class Request:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class ImageStream:
    """``n_images`` images of 129 tokens, all present at t = 0; one output "token" each (the
    classification), so one simulator step is one image."""

    def __init__(self, model: MoEModel, n_images: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n_l, n_e, k = model.n_moe_layers, model.n_experts, model.top_k
        pop = rng.dirichlet(np.ones(n_e), size=n_l)  # [L, E]
        self._rows: list[npt.NDArray[np.int16]] = []
        for _ in range(n_images):
            g = rng.gumbel(size=(TOKENS_PER_IMAGE + 1, n_l, n_e)) + np.log(pop)[None]
            top = np.argsort(-g, axis=2)[:, :, :k].astype(np.int16)
            self._rows.append(top)
        self.requests = tuple(Request(i, 0.0, TOKENS_PER_IMAGE, 1) for i in range(n_images))

    def routing(self, request: Any) -> npt.NDArray[np.int16]:
        return self._rows[request.request_id]


def expert_traffic_bytes(cost_model: CostModel, model: MoEModel, stream: ImageStream, *, reorder: bool) -> float:
    """Off-chip expert-weight bytes per image (mean over images), from `offchip_bytes`."""
    dev = cost_model.platform.accelerators[0]
    total = 0.0
    for req in stream.requests:
        rows = stream.routing(req)[:TOKENS_PER_IMAGE]
        for layer in range(model.n_moe_layers):
            counts = np.bincount(rows[:, layer, :].ravel().astype(np.int64), minlength=model.n_experts)
            total += float(np.sum(offchip_bytes(dev, model, counts, reorder=reorder)))
    return total / len(stream.requests)


def run_scenario(*, n_images: int = 16, seed: int = 0) -> dict[str, Any]:
    platform = get_platform("zcu104-board")
    cost = CostModel(platform)
    model = VIT_MOE
    stream = ImageStream(model, n_images, seed)
    results: dict[str, Any] = {}
    for name, reorder in (("reorder", True), ("per-token", False)):
        mapping = Mapping(n_devices=1, fpga_reorder=reorder, batching=BatchingSpec(max_batch=1, max_tokens=4096))
        res = simulate(model, platform, stream, mapping, cost_model=cost, seed=seed)
        n_img = len(res.requests)
        results[name] = {
            "step_mean_s": float(res.steps["duration_s"].mean()),  # one image per step: its latency
            "images_per_s": n_img / res["makespan_s"],
            "energy_per_image_J": res["energy_J"] / n_img,
            "expert_traffic_per_image_bytes": expert_traffic_bytes(cost, model, stream, reorder=reorder),
            "config_hash": res.config_hash,
        }
    r, p = results["reorder"], results["per-token"]
    expert_bytes = model.bytes_per_expert
    return {
        "setting": {
            "model": model.name,
            "platform": platform.name,
            "images": n_images,
            "seed": seed,
            "tokens_per_image": TOKENS_PER_IMAGE,
            "bytes_per_expert": expert_bytes,
            "layer_experts_bytes": model.n_experts * expert_bytes,
            "on_chip_buffer_bytes": platform.accelerators[0].on_chip_buffer_bytes,
            "routing": "synthetic (Dirichlet(1) popularity per layer, seeded); no real ViT-MoE trace",
        },
        "paper": {
            "source": "M3ViT (NeurIPS 2022) and Edge-MoE (ICCAD 2023), [P] hardware-and-papers.md s.3.2",
            "m3vit_memory_reduction": "2.4x",
            "m3vit_energy_efficiency": "up to 9.23x vs a comparable FPGA baseline",
            "edge_moe_energy_efficiency": "2.24x vs GPU, 4.90x vs CPU",
            "absolute_latency_energy": "NR",
        },
        "results": results,
        "comparison": {
            "latency_speedup": p["step_mean_s"] / r["step_mean_s"],
            "traffic_reduction": p["expert_traffic_per_image_bytes"] / r["expert_traffic_per_image_bytes"],
            "energy_efficiency_gain": p["energy_per_image_J"] / r["energy_per_image_J"],
        },
    }


def table(summary: dict[str, Any]) -> str:
    rows = [f"{'execution':<10} {'ms/image':>9} {'img/s':>8} {'expert MB/img':>13} {'mJ/image':>9}"]
    for name, r in summary["results"].items():
        rows.append(
            f"{name:<10} {1e3 * r['step_mean_s']:>9.3f} {r['images_per_s']:>8.1f} "
            f"{r['expert_traffic_per_image_bytes'] / 1e6:>13.2f} {1e3 * r['energy_per_image_J']:>9.3f}"
        )
    c = summary["comparison"]
    rows.append(
        f"reorder vs per-token: latency {c['latency_speedup']:.2f}x, off-chip expert traffic "
        f"{c['traffic_reduction']:.1f}x less, energy efficiency {c['energy_efficiency_gain']:.2f}x"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = study_parser("scenario4_vit_moe_fpga", __doc__)
    ap.add_argument("--images", type=int, default=None, help="images (default 16; --reduced 2)")
    args = ap.parse_args(argv)
    start(args)
    summary = run_scenario(n_images=args.images or (2 if args.reduced else 16), seed=args.seed)
    return finish(args, summary, table(summary))


if __name__ == "__main__":
    sys.exit(main())
