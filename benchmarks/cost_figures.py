"""Headline costs of the hardware presets (run on demand; prints its figures).

``python benchmarks/cost_figures.py`` prints, at both fidelities: a Mixtral-8x7B expert on an H100,
fetching it over PCIe Gen5 (pinned, pageable) and computing it on the host CPU (Fiddler's choice);
the same expert on an SN40L socket with its weights in SRAM, HBM or DDR and the node's DDR -> HBM
load rate; an Edge-MoE ViT-MoE layer on a ZCU104 with M3ViT's expert-by-expert reordering vs
per-token execution; all-to-all and all-reduce on a DGX H100.
"""

from __future__ import annotations

import numpy as np

from hwmodels import CostModel, Fidelity, get_platform, offchip_bytes
from workloads import MoEModel, get_model

FIDELITIES: tuple[Fidelity, ...] = ("roofline", "calibrated")


def main() -> None:
    """Print the figures."""
    mix = get_model("mixtral-8x7b")
    p = get_platform("h100-pcie5-host")
    gpu, host, pcie = p.accelerators[0], p.host, p.host_link
    assert host is not None and pcie is not None
    for fid in FIDELITIES:
        cm = CostModel(p, fidelity=fid)
        print(
            f"[{fid}] H100 Mixtral expert, 1 token: {cm.expert_ffn(gpu, mix, 1).total_s * 1e6:.0f} us; "
            f"256 tokens: {cm.expert_ffn(gpu, mix, 256).total_s * 1e6:.0f} us; "
            f"fetch over PCIe Gen5 pinned {cm.transfer(pcie, mix.bytes_per_expert).total_s * 1e3:.2f} ms, "
            f"pageable {cm.transfer(pcie, mix.bytes_per_expert, pinned=False).total_s * 1e3:.2f} ms; "
            f"on the SPR host CPU, 1 token: {cm.cpu_expert(host, mix, 1).total_s * 1e3:.2f} ms"
        )
    s = get_platform("sn40l-node")
    rdu = s.accelerators[0]
    for fid in FIDELITIES:
        cm = CostModel(s, fidelity=fid)
        t = {tier: cm.rdu_expert(rdu, mix, 8, weights_tier=tier).total_s * 1e6 for tier in ("sram", "hbm", "ddr")}
        load = 8 * mix.bytes_per_expert / cm.tier_copy(rdu, "ddr", "hbm", mix.bytes_per_expert).total_s
        print(
            f"[{fid}] SN40L Mixtral expert, 8 tokens, weights in sram/hbm/ddr: "
            + " / ".join(f"{v:.0f} us" for v in t.values())
            + f"; node DDR->HBM load rate {load / 1e12:.2f} TB/s"
        )
    vit = MoEModel(
        name="vit-moe",
        n_layers=12,
        d_model=192,
        n_heads=3,
        n_kv_heads=3,
        head_dim=64,
        expert_ffn_dim=384,
        n_experts=16,
        top_k=2,
        gated=False,
        vocab_size=1000,
    )
    z = get_platform("zcu104-board")
    fpga = z.accelerators[0]
    tpe = np.full(16, 129 * 2 // 16)
    for fid in FIDELITIES:
        cm = CostModel(z, fidelity=fid)
        for reorder in (True, False):
            c = cm.fpga_layer(fpga, vit, tpe, reorder=reorder)
            mb = float(np.sum(offchip_bytes(fpga, vit, tpe, reorder=reorder))) / 1e6
            how = "reordered" if reorder else "per-token"
            print(
                f"[{fid}] ZCU104 ViT-MoE layer ({how}): {c.total_s * 1e6:.0f} us, "
                f"{mb:.1f} MB off-chip, {c.energy_J * 1e3:.2f} mJ"
            )
    d = get_platform("dgx-h100")
    nvlink = d.peer_link
    assert nvlink is not None
    for fid in FIDELITIES:
        cm = CostModel(d, fidelity=fid)
        a2a = cm.all_to_all(nvlink, 2**20, 8).total_s
        print(
            f"[{fid}] DGX H100 all-to-all of 1 MiB per GPU: {a2a * 1e6:.1f} us; "
            f"all-reduce of 16 MiB: {cm.all_reduce(nvlink, 16 * 2**20, 8).total_s * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
