"""Routing processes for varied models, cached by content hash (in memory and on disk).

A candidate whose experts or top-k differ from its base model's gets the base model's embedded
fitted routing process (`workloads.defaults.default_process`) retargeted to its shape
(`workloads.RoutingProcess.retarget`: experts split or merged along the popularity-rank axis, a
stated assumption; then recalibrated by simulation). Retargeting costs seconds, so each shape is
computed once: the key is the SHA-256 of the base process's own content, the target shape and the
recalibration budget and seed, so a changed embedded process or budget never reuses a stale file.
Files are written atomically (temporary file + rename), so several worker processes may share a
cache folder; two workers racing on one shape compute the same file twice, harmlessly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from workloads.defaults import load_default_data
from workloads.process import RoutingProcess

log = logging.getLogger(__name__)

__all__ = ["RoutingCache"]


@dataclass(kw_only=True)
class RoutingCache:
    """Retargeted routing processes under ``folder`` (``<key>.json``), memoised per instance.

    ``calibration_iterations`` / ``calibration_tokens`` / ``seed`` go to `RoutingProcess.retarget`.
    """

    folder: Path
    calibration_iterations: int = 2
    calibration_tokens: int = 2048
    seed: int = 0
    _memo: dict[str, RoutingProcess] = field(default_factory=dict, init=False, repr=False)
    _base_hash: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _base_shape: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)

    def _base(self, base_model: str) -> tuple[str, tuple[int, int]]:
        if base_model not in self._base_hash:
            procs = load_default_data()["processes"]
            if base_model not in procs:
                raise KeyError(f"no embedded routing process for {base_model!r}; fitted: {sorted(procs)}")
            d = procs[base_model]
            text = json.dumps(d, sort_keys=True, separators=(",", ":"))
            self._base_hash[base_model] = hashlib.sha256(text.encode()).hexdigest()
            self._base_shape[base_model] = (int(d["n_experts"]), int(d["top_k"]))
        return self._base_hash[base_model], self._base_shape[base_model]

    def key(self, base_model: str, n_experts: int, top_k: int) -> str:
        """Content hash (16 hex) of the retargeted process: base content, shape, budget, seed."""
        base_hash, _ = self._base(base_model)
        spec = {
            "base": base_hash,
            "n_experts": int(n_experts),
            "top_k": int(top_k),
            "iterations": self.calibration_iterations,
            "tokens": self.calibration_tokens,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def is_base_shape(self, base_model: str, n_experts: int, top_k: int) -> bool:
        """Whether the shape is the embedded process's own (no retargeting needed)."""
        return self._base(base_model)[1] == (int(n_experts), int(top_k))

    def path(self, base_model: str, n_experts: int, top_k: int) -> Path:
        """The file of the retargeted process, computed and written first if absent."""
        key = self.key(base_model, n_experts, top_k)
        p = self.folder / f"{base_model}-E{n_experts}k{top_k}-{key}.json"
        if not p.exists():
            proc = self.process(base_model, n_experts, top_k)
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            os.close(fd)
            try:
                proc.save(tmp, precision="float32")
                os.replace(tmp, p)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return p

    def process(self, base_model: str, n_experts: int, top_k: int) -> RoutingProcess:
        """The retargeted process (from memory, the disk cache, or computed)."""
        key = self.key(base_model, n_experts, top_k)
        if key in self._memo:
            return self._memo[key]
        p = self.folder / f"{base_model}-E{n_experts}k{top_k}-{key}.json"
        if p.exists():
            proc = RoutingProcess.load(p)
        else:
            from workloads.defaults import default_process

            base = default_process(base_model)
            if (base.n_experts, base.top_k) == (n_experts, top_k):
                proc = base
            else:
                log.info("retargeting the %s routing process to %d experts top-%d", base_model, n_experts, top_k)
                proc = base.retarget(
                    int(n_experts),
                    int(top_k),
                    calibration_iterations=self.calibration_iterations,
                    calibration_tokens=self.calibration_tokens,
                    seed=self.seed,
                )
        self._memo[key] = proc
        return proc
