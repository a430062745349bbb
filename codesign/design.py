"""`Design` and `evaluate()`: the one door that the search, the studies and the CLI go through.

    from codesign.design import Design, evaluate
    design = Design.from_presets("mixtral-8x7b", "h100-pcie5-host",
                                 mapping=Mapping(cache=CacheSpec(expert_fraction=0.25), miss="cost"))
    m = evaluate(design, "analytic")      # microseconds-to-milliseconds, closed form
    m = evaluate(design, "sim")           # the simpy engine
    m.tpot_p99_s, m.throughput_tok_s, m.energy_j_per_token, m.bottleneck

A `Design` is model x platform x mapping x workload spec x cost spec: frozen, with a JSON round
trip (`to_json` / `from_json`, every device and link number included, so a design file replays
on a machine whose presets changed) and a `content_hash` over every number that changes the
answer: the model's fields, the platform's devices, tiers and links (numbers and measured points,
not their source strings), the mapping, the workload spec, the cost spec with the fingerprint of
its calibration profile, the digest of the routing process the workload draws from, and the
package version. Two designs that differ in one platform number hash differently.

`evaluate(design, fidelity)` returns `Metrics`, the same typed record for both fidelities:

- ``"sim"``: the discrete-event simulator (`codesign.simulate.simulate`) on the workload spec.
- ``"analytic"``: the closed-form model (`codesign.analytic`) of one closed batch of
  ``min(n_requests, max_batch)`` requests of ``prompt_tokens + output_tokens`` (more requests than
  the batch cap are taken to run in such batches one after another, so the per-batch figures
  stand); TPOT p99 is its expected decode
  step (the closed form has no spread). It refuses, with `UnsupportedDesignError` and the
  reasons, every design it cannot model (`analytic_reasons`); it never answers silently.

A mapping that does not fit raises `codesign.mapping.MappingError` (with the numbers) from both.

Routing (`WorkloadSpec.routing`): ``"default"`` samples the package's embedded routing process of
``base_model`` (fitted from real routing traces) re-targeted to the design's experts / top-k and
re-layered to its MoE layers (`workloads.process.RoutingProcess.retarget` / ``relayer``; the
assumptions are documented there): that is how a varied model gets routing without a trained
model. ``"process:PATH"`` samples a fitted process file, ``"trace:PATH"`` replays a canonical
``.npz`` trace. Derived processes are memoised in an `EvalCache` by content (pass one to
`evaluate` to share them across calls; without one each call derives afresh).

The cost ``breakdown_s`` (busy seconds per category over the run: ``compute``, ``hbm``,
``pcie``, ``all_to_all``, ``host_cpu``) and the ``bottleneck`` (its largest category) are
derived as follows (an approximation, stated): the busiest accelerator's busy time is split into
``compute`` and ``hbm`` in the proportion of the compute and memory times of the design's typical
decode expert kernel (roofline terms of `hwmodels.CostModel.expert_ffn` at the mean tokens per
active expert); ``pcie`` is the time of the expert copies over the host link (bytes moved, in
expert-sized copies, at the link's modelled rate); ``all_to_all`` the bytes over the peer link at
its rate; ``host_cpu`` the host CPU's busy time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from codesign.mapping import Mapping, MappingError
from hwmodels.serialize import hardware_numbers, platform_from_dict, platform_to_dict
from hwmodels.stacks import resolve_stack, stack_numbers
from workloads.model import MoEModel

if TYPE_CHECKING:
    from codesign.result import Result
    from hwmodels.costs import CostModel
    from hwmodels.devices import Platform
    from workloads.process import RoutingProcess
    from workloads.requests import RequestStream

log = logging.getLogger(__name__)

__all__ = [
    "BREAKDOWN_KEYS",
    "CostSpec",
    "Design",
    "DesignError",
    "EvalCache",
    "Fidelity",
    "MappingError",
    "Metrics",
    "UnsupportedDesignError",
    "WorkloadSpec",
    "analytic_reasons",
    "check_fits",
    "cost_model",
    "evaluate",
    "length_dist",
    "request_stream",
    "routing_process",
    "sim_metrics",
    "simulate_design",
]

Fidelity = Literal["analytic", "sim"]
#: Categories of `Metrics.breakdown_s`, in the order the views draw them.
BREAKDOWN_KEYS: tuple[str, ...] = ("compute", "hbm", "pcie", "all_to_all", "host_cpu")
#: Routing sources of a workload spec.
_ROUTING_KINDS = ("default", "process:", "trace:")
#: Format version of `Design.to_dict` (bumped when its layout changes).
DESIGN_FORMAT = 1


class DesignError(ValueError):
    """A malformed design or design file (the message names the field and what was expected)."""


class UnsupportedDesignError(ValueError):
    """The requested fidelity cannot model this design; ``reasons`` says why (one line each)."""

    def __init__(self, fidelity: str, reasons: list[str]) -> None:
        super().__init__(f"{fidelity} fidelity cannot model this design: " + "; ".join(reasons))
        self.fidelity = fidelity
        self.reasons = list(reasons)


def _package_version() -> str:
    try:
        return metadata.version("moe-codesign")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


# ------------------------------------------------------------------------------ the specs
@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """What is served: the routing source, arrivals and request lengths (tokens)."""

    routing: str = field(
        default="default",
        metadata={"help": "'default' (embedded fitted process, retargeted), 'process:PATH' or 'trace:PATH'"},
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "embedded fitted process to start from; None = the model's own, else the nearest shape"},
    )
    n_requests: int = field(default=8, metadata={"help": "requests served"})
    arrivals: Literal["closed", "poisson"] = field(default="closed", metadata={"help": "closed (all at t=0) | poisson"})
    rate_per_s: float | None = field(default=None, metadata={"help": "mean arrivals per second (poisson)"})
    prompt_tokens: int = field(default=128, metadata={"help": "prompt tokens per request"})
    output_tokens: int = field(default=32, metadata={"help": "output tokens per request"})
    seed: int = field(default=0, metadata={"help": "seed of the arrivals, lengths and routing draw"})
    prompt_dist: str | None = field(
        default=None,
        metadata={
            "help": "prompt length spread around the mean prompt_tokens: 'lognormal:sigma=S[,min=A][,max=B]' or "
            "'uniform:low=A,high=B' (see length_dist); None = every prompt has prompt_tokens"
        },
    )
    output_dist: str | None = field(
        default=None, metadata={"help": "output length spread around the mean output_tokens (as prompt_dist)"}
    )

    def __post_init__(self) -> None:
        if not isinstance(self.routing, str) or not self.routing.startswith(_ROUTING_KINDS):
            raise DesignError(
                f"workload.routing must be 'default', 'process:PATH' or 'trace:PATH', got {self.routing!r}"
            )
        for name in ("n_requests", "prompt_tokens", "output_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DesignError(f"workload.{name} must be an int >= 1, got {v!r}")
        if self.n_requests > 1_000_000:
            raise DesignError(f"workload.n_requests must be <= 1,000,000, got {self.n_requests}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DesignError(f"workload.seed must be an int >= 0, got {self.seed!r}")
        if self.arrivals not in ("closed", "poisson"):
            raise DesignError(f"workload.arrivals must be 'closed' or 'poisson', got {self.arrivals!r}")
        if self.arrivals == "poisson":
            r = self.rate_per_s
            if r is None or isinstance(r, bool) or not isinstance(r, int | float) or not (r > 0 and math.isfinite(r)):
                raise DesignError(f"workload.rate_per_s must be a finite number > 0 with poisson arrivals, got {r!r}")
        length_dist(self.prompt_dist, self.prompt_tokens, "workload.prompt_dist")
        length_dist(self.output_dist, self.output_tokens, "workload.output_dist")


def _clipped_lognormal_mean(mu: float, sigma: float, low: float, high: float) -> float:
    """E[clip(X, low, high)] for log X ~ N(mu, sigma^2) (closed form)."""
    if sigma == 0.0:
        return min(max(math.exp(mu), low), high)

    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    a, b = (math.log(low) - mu) / sigma, (math.log(high) - mu) / sigma
    body = math.exp(mu + 0.5 * sigma * sigma) * (cdf(b - sigma) - cdf(a - sigma))
    return low * cdf(a) + body + high * (1.0 - cdf(b))


def length_dist(spec: str | None, mean: int, where: str) -> Any:
    """The `workloads.requests.LengthDist` of a workload length spec whose mean is ``mean`` tokens.

    ``None`` gives the int ``mean`` (every request that length). ``"lognormal:sigma=S[,min=A][,max=B]"``
    is a log-normal of log-standard-deviation ``S``, rounded and clipped to ``[A, B]`` (defaults 1 and
    unbounded), whose ``mu`` is solved (bisection on the closed form) so that the *clipped* mean is
    ``mean``. ``"uniform:low=A,high=B"`` is uniform on the integers ``A..B``, whose midpoint must be
    ``mean`` (within half a token). The simulator draws lengths; the analytic model refuses a spread
    (`analytic_reasons`).
    Raises `DesignError` naming ``where`` on a malformed spec or one whose mean cannot be ``mean``.
    """
    if spec is None:
        return mean
    from workloads.requests import LengthDist

    if not isinstance(spec, str) or ":" not in spec:
        raise DesignError(
            f"{where} must be 'lognormal:sigma=S[,min=A][,max=B]' or 'uniform:low=A,high=B', got {spec!r}"
        )
    kind, _, rest = spec.partition(":")
    params: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, val = item.partition("=")
        try:
            params[key.strip()] = float(val) if eq else float("nan")
        except ValueError:
            raise DesignError(f"{where}: {item!r} is not key=number") from None
    allowed = {"lognormal": ({"sigma"}, {"min", "max"}), "uniform": ({"low", "high"}, set())}
    if kind not in allowed:
        raise DesignError(f"{where}: kind {kind!r} is not 'lognormal' or 'uniform'")
    need, optional = allowed[kind]
    if not need <= set(params) or not set(params) <= need | optional:
        raise DesignError(
            f"{where}: {kind} takes {sorted(need)} and optionally {sorted(optional)}, got {sorted(params)}"
        )
    if not all(math.isfinite(v) for v in params.values()):
        raise DesignError(f"{where}: every parameter must be a finite number, got {params}")
    if kind == "uniform":
        low, high = params["low"], params["high"]
        if not (low == int(low) and high == int(high) and 1 <= low <= high):
            raise DesignError(f"{where}: need integers 1 <= low <= high, got {low}, {high}")
        if abs(0.5 * (low + high) - mean) > 0.5:
            raise DesignError(f"{where}: the midpoint {0.5 * (low + high):g} must be the mean length {mean}")
        return LengthDist.uniform(int(low), int(high))
    sigma = params["sigma"]
    lo = params.get("min", 1.0)
    hi = params.get("max", math.inf)
    if not (sigma >= 0 and lo == int(lo) and lo >= 1 and (hi == math.inf or (hi == int(hi) and hi >= lo))):
        raise DesignError(f"{where}: need sigma >= 0 and integers 1 <= min <= max, got {params}")
    if not lo <= mean <= hi or (lo == hi and mean != lo):
        raise DesignError(f"{where}: the mean length {mean} must lie in [min, max] = [{lo:g}, {hi:g}]")
    a, b = math.log(lo) - 10.0 * sigma - 1.0, math.log(min(hi, 1e12)) + 1.0
    for _ in range(200):  # the clipped mean rises monotonically with mu
        mid = 0.5 * (a + b)
        if _clipped_lognormal_mean(mid, sigma, lo, min(hi, 1e300)) < mean:
            a = mid
        else:
            b = mid
    mu = 0.5 * (a + b)
    return LengthDist("lognormal", (mu, sigma), minimum=int(lo), maximum=None if hi == math.inf else int(hi))


@dataclass(frozen=True, kw_only=True)
class CostSpec:
    """Which cost model answers: fidelity of the kernels and an optional calibration profile.

    ``profile`` is a shipped profile name (``a100``, ``h100``: fitted from Vidur's measured tables)
    or a profile JSON path; it is applied to every accelerator of the platform, and its content
    (fitted parameters) is fingerprinted into the design's hash.

    ``power_limit`` (watts, None = the device's own) runs the accelerators under a power limit
    (``nvidia-smi -pl``, MLPerf's MaxQ): the profile's compute rate scaled by its power law
    (`hwmodels.calibration.limit_power`; needs a profile that has one, e.g. ``h100`` and the profiles
    derived from it). ``power_exponent`` overrides that law's fitted exponent (calibration and
    sensitivity studies), in the limit and, for a shipped derived profile, in its derivation (the
    H100 NVL's 400 W); alone it changes only such derived profiles. Both are left out of `to_dict`
    when unset, so older designs keep their hash.
    """

    fidelity: Literal["calibrated", "roofline"] = field(default="calibrated", metadata={"help": "kernel cost fidelity"})
    profile: str | None = field(default=None, metadata={"help": "calibration profile (name or JSON path)"})
    power_limit: float | None = field(default=None, metadata={"help": "accelerators' power limit, W (needs a profile)"})
    power_exponent: float | None = field(default=None, metadata={"help": "override the profile's power-law exponent"})

    def __post_init__(self) -> None:
        if self.fidelity not in ("calibrated", "roofline"):
            raise DesignError(f"cost.fidelity must be 'calibrated' or 'roofline', got {self.fidelity!r}")
        if self.profile is not None and (not isinstance(self.profile, str) or not self.profile):
            raise DesignError(f"cost.profile must be a profile name or path, got {self.profile!r}")
        for key in ("power_limit", "power_exponent"):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise DesignError(f"cost.{key} must be a non-negative number, got {value!r}")
            if key == "power_limit" and value == 0:
                raise DesignError("cost.power_limit must be a positive number of watts, got 0")
            if key == "power_exponent" and value > 3:
                raise DesignError(f"cost.power_exponent must be in [0, 3], got {value!r}")
            object.__setattr__(self, key, float(value))
        if (self.power_limit is not None or self.power_exponent is not None) and self.profile is None:
            raise DesignError(
                "cost.power_limit / cost.power_exponent need cost.profile: the power law belongs to a calibration "
                "profile (e.g. 'h100', 'h200')"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; the power fields only when set (older designs keep their dict and hash)."""
        d = asdict(self)
        for key in ("power_limit", "power_exponent"):
            if d[key] is None:
                del d[key]
        return d

    def load_profile(self) -> Any:
        """The calibration profile this spec names, under its power limit when one is set (None when
        no profile is named); `DesignError` naming the problem otherwise."""
        if self.profile is None:
            return None
        from hwmodels.calibration import CalibrationError, base_profile_name, limit_power, load_default_profile

        exponent = self.power_exponent
        try:
            if exponent is not None and not Path(self.profile).exists() and base_profile_name(self.profile):
                # a shipped (derived) name: the override reaches the derivation too, so the derived
                # profile's own power-limited rate and the limit on top follow one exponent
                prof = load_default_profile(self.profile, power_exponent=exponent)
                exponent = None
            else:
                prof = _load_profile(self.profile)
            if self.power_limit is None:
                return prof
            return limit_power(prof, self.power_limit, exponent=exponent)
        except CalibrationError as exc:
            what = f"cost.power_limit {self.power_limit:g} W" if self.power_limit is not None else "cost.power_exponent"
            raise DesignError(f"{what}: {exc}") from None


def _load_profile(spec: str) -> Any:
    """A calibration profile from a shipped name or a JSON path (`DesignError` naming it otherwise)."""
    from hwmodels.calibration import (
        CalibrationError,
        CalibrationProfile,
        default_profile_names,
        load_default_profile,
    )

    try:
        if Path(spec).suffix == ".json" or Path(spec).exists():
            return CalibrationProfile.load(spec)
        return load_default_profile(spec)
    except (CalibrationError, OSError, ValueError) as exc:
        raise DesignError(
            f"cost.profile {spec!r}: {exc} (shipped profiles: {', '.join(default_profile_names())})"
        ) from None


def _model_to_dict(model: MoEModel) -> dict[str, Any]:
    return model.to_dict()


def _model_from_dict(data: Any) -> MoEModel:
    """`MoEModel.from_dict` with its one-line error as a `DesignError` naming ``design.model``."""
    try:
        return MoEModel.from_dict(data, where="design.model")
    except ValueError as exc:
        raise DesignError(str(exc)) from None


def _spec_from_dict(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise DesignError(f"{where} must be an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DesignError(f"{where}: unknown field(s) {unknown}; valid: {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise DesignError(f"{where}: {exc}") from None


# ------------------------------------------------------------------------------ the design
@dataclass(frozen=True, kw_only=True)
class Design:
    """Model x platform x mapping x workload x cost: everything `evaluate` needs, frozen."""

    model: MoEModel
    platform: Platform
    mapping: Mapping = field(default_factory=Mapping)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    cost: CostSpec = field(default_factory=CostSpec)

    def __post_init__(self) -> None:
        from hwmodels.devices import Platform

        if not isinstance(self.model, MoEModel):
            raise DesignError(f"design.model must be a MoEModel, got {type(self.model).__name__}")
        if not isinstance(self.platform, Platform):
            raise DesignError(f"design.platform must be a Platform, got {type(self.platform).__name__}")
        if not isinstance(self.mapping, Mapping):
            raise DesignError(f"design.mapping must be a Mapping, got {type(self.mapping).__name__}")
        if not isinstance(self.workload, WorkloadSpec) or not isinstance(self.cost, CostSpec):
            raise DesignError("design.workload must be a WorkloadSpec and design.cost a CostSpec")

    @classmethod
    def from_presets(
        cls,
        model: str = "mixtral-8x7b",
        platform: str = "h100-pcie5-host",
        *,
        mapping: Mapping | None = None,
        cost: CostSpec | None = None,
        **workload: Any,
    ) -> Design:
        """A design of preset names (unknown names raise the presets' errors listing the valid ones)."""
        from hwmodels import get_platform
        from workloads import get_model

        return cls(
            model=get_model(model),
            platform=get_platform(platform),
            mapping=mapping or Mapping(),
            workload=WorkloadSpec(**workload),
            cost=cost or CostSpec(),
        )

    def with_(self, **changes: Any) -> Design:
        """A copy with top-level parts replaced (validated again)."""
        from dataclasses import replace

        return replace(self, **changes)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: every model, device, link and mapping field in full; a serving stack
        given as a ``.toml`` path is written inline (its numbers and sources), so the file replays
        without it."""
        return {
            "format": DESIGN_FORMAT,
            "model": _model_to_dict(self.model),
            "platform": platform_to_dict(self.platform),
            "mapping": _mapping_dict(self.mapping),
            "workload": asdict(self.workload),
            "cost": self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "design") -> Design:
        """Inverse of `to_dict`; `DesignError` naming the part and what was expected."""
        if not isinstance(data, dict):
            raise DesignError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in ("model", "platform") if k not in data]
        if missing:
            raise DesignError(f"{where}: missing {missing}; a design has model, platform, mapping, workload, cost")
        unknown = sorted(set(data) - {"format", "model", "platform", "mapping", "workload", "cost", "hash"})
        if unknown:
            raise DesignError(f"{where}: unknown key(s) {unknown}")
        fmt = data.get("format", DESIGN_FORMAT)
        if fmt != DESIGN_FORMAT:
            raise DesignError(f"{where}: design format {fmt!r} is not supported (this version reads {DESIGN_FORMAT})")
        try:
            platform = platform_from_dict(data["platform"], where=f"{where}.platform")
            mapping = Mapping.from_dict(data.get("mapping") or {})
        except (ValueError, TypeError) as exc:
            raise DesignError(f"{where}: {exc}") from None
        return cls(
            model=_model_from_dict(data["model"]),
            platform=platform,
            mapping=mapping,
            workload=_spec_from_dict(WorkloadSpec, data.get("workload"), f"{where}.workload"),
            cost=_spec_from_dict(CostSpec, data.get("cost"), f"{where}.cost"),
        )

    def to_json(self, *, indent: int | None = None) -> str:
        """JSON text of `to_dict` plus the content hash (under ``"hash"``, ignored when read)."""
        d = self.to_dict()
        d["hash"] = self.content_hash
        return json.dumps(d, indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str = "design") -> Design:
        """Inverse of `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DesignError(f"{where}: not valid JSON: {exc}") from None
        return cls.from_dict(data, where=where)

    @classmethod
    def load(cls, path: str | Path) -> Design:
        """A design from a JSON file (errors name the file)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise DesignError(f"{p}: cannot read the design file: {exc.strerror or exc}") from None
        return cls.from_json(text, where=str(p))

    def save(self, path: str | Path) -> Path:
        """Write `to_json` (indented) to ``path``; returns the path."""
        p = Path(path)
        p.write_text(self.to_json(indent=1) + "\n")
        return p

    # ---------------------------------------------------------------- hash
    def hash_payload(self) -> dict[str, Any]:
        """What `content_hash` hashes: every number that changes the answer (see module doc)."""
        profile_fp = None
        if self.cost.profile is not None:
            d = self.cost.load_profile().without_samples().to_dict()
            # the power law acts through peaks.flops (fingerprinted here too); left out, so a re-fitted
            # exponent changes only the hashes of designs whose answer it changes
            d.pop("power_law", None)
            profile_fp = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
        routing_fp: str | None = None
        kind, _, path = self.workload.routing.partition(":")
        if kind in ("process", "trace"):
            p = Path(path)
            routing_fp = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else f"missing:{path}"
        else:
            from workloads.defaults import load_default_data

            base = _base_model_name(self)
            proc = load_default_data()["processes"].get(base)
            routing_fp = hashlib.sha256(json.dumps(proc, sort_keys=True).encode()).hexdigest() if proc else base
        model = _model_to_dict(self.model)
        model.pop("source", None)
        model.pop("notes", None)
        mapping = self.mapping.to_dict()
        stack = resolve_stack(self.mapping.stack)
        mapping["stack"] = stack.name  # by name here: a path, an inline copy and a preset hash alike
        return {
            "model": model,
            "platform": hardware_numbers(platform_to_dict(self.platform)),
            "mapping": mapping,
            # the serving stack's numbers, not only its name (a preset file edited changes the hash)
            "stack": stack_numbers(stack),
            "workload": asdict(self.workload),
            "cost": self.cost.to_dict(),
            "profile_fingerprint": profile_fp,
            "routing_fingerprint": routing_fp,
            "version": _package_version(),
        }

    @property
    def content_hash(self) -> str:
        """16 hex digits of SHA-256 over `hash_payload` (canonical JSON)."""
        text = json.dumps(self.hash_payload(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line: model (its precision per component where they differ), platform, the mapping's
        main knobs (the serving stack, copy-back eviction and streamed weights when set), the workload."""
        from workloads.precision import mixed_precision, precision_label

        m, mp, w = self.model, self.mapping, self.workload
        n_dev = mp.n_devices or self.platform.n_accelerators
        weights = precision_label(m) if mixed_precision(m) else f"{m.bytes_per_weight:g} B/weight"
        parts = [
            f"{m.name} (E={m.n_experts}, k={m.top_k}, {weights})",
            f"on {self.platform.name} x{n_dev}",
            f"cache {mp.cache.policy} {mp.cache.expert_fraction:.0%}"
            + (" copy-back" if mp.cache.eviction == "copy-back" else ""),
            f"miss {mp.miss}",
            f"prefetch {mp.prefetch}",
            f"batch {mp.batching.max_batch}",
            f"{w.n_requests} req {w.prompt_tokens}+{w.output_tokens} tok ({w.arrivals})",
        ]
        stack = getattr(mp.stack, "name", mp.stack)
        if stack != "none":
            parts.insert(2, f"stack {stack}")
        if self.cost.power_limit is not None:
            parts.insert(2, f"power limit {self.cost.power_limit:g} W")
        parts[2:2] = [
            t
            for on, t in (
                (mp.offload_non_expert, "non-expert streamed"),
                (mp.fetch_whole_layer, "whole layers fetched"),
            )
            if on
        ]
        return ", ".join(parts)


# ------------------------------------------------------------------------------ metrics
@dataclass(frozen=True, kw_only=True)
class Metrics:
    """What one evaluation answers (the same record for both fidelities).

    Units: seconds, tokens per second (output tokens over the makespan), joules per output token,
    US dollars per million output tokens. ``hit_rate`` is the expert-cache hit rate of the cache
    tier (1.0 when nothing is offloaded); ``breakdown_s`` busy seconds per category over the run
    (`BREAKDOWN_KEYS`, see the module doc for how they are derived); ``bottleneck`` its largest
    category; ``wall_s`` the seconds this evaluation took; ``extra`` fidelity-specific figures.
    """

    fidelity: str
    design_hash: str
    ttft_p50_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    throughput_tok_s: float
    energy_j_per_token: float
    cost_per_mtok_usd: float
    hit_rate: float
    breakdown_s: dict[str, float]
    bottleneck: str
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite floats become None)."""

        def fix(x: Any) -> Any:
            if isinstance(x, dict):
                return {str(k): fix(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [fix(v) for v in x]
            if isinstance(x, np.generic):
                x = x.item()
            if isinstance(x, float) and not math.isfinite(x):
                return None
            return x

        return fix(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        """Inverse of `to_dict` (None back to NaN)."""
        d = dict(data)
        for f in fields(cls):
            if f.type == "float" and d.get(f.name) is None:
                d[f.name] = float("nan")
        return cls(**d)


# ------------------------------------------------------------------------------ evaluation
class EvalCache:
    """Memo of derived routing processes (and their training statistics) by content key; other
    content-keyed results may share it (`codesign.validation` keeps simulated runs there).

    Bounded (``max_entries``, least recently used dropped). One instance per search or study; not
    shared between processes. Without one, `evaluate` derives everything afresh.

    ``directory`` (optional) also persists derived routing processes (`process`) there as JSON
    (`RoutingProcess.save`, float64, so a reloaded process equals the derived one exactly), one
    file per content key (``<sha256 of the key, 24 hex>.json``). Writes are atomic (temporary file
    + rename), so several worker processes may share the folder; an unreadable file is derived
    again (and rewritten). The folder is an implementation detail: designs never name it.
    """

    def __init__(self, max_entries: int = 64, directory: str | Path | None = None) -> None:
        self.max_entries = int(max_entries)
        self.directory = None if directory is None else Path(directory)
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.disk_hits = 0

    def get_or_make(self, key: str, make: Any) -> Any:
        """The value stored under ``key``, made by ``make()`` on a miss."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        value = make()
        self._items[key] = value
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value

    def file_for(self, key: str) -> Path | None:
        """The file a process stored under ``key`` lives in (``None`` without a directory)."""
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def process(self, key: str, make: Any) -> RoutingProcess:
        """The routing process under content key ``key``: from memory, the directory, or ``make()``
        (then written to the directory). ``key`` must identify the process's content (base
        process content, target shape, derivation settings, seed)."""
        path = self.file_for(key)

        def load_or_make() -> RoutingProcess:
            from workloads.process import ProcessFormatError, RoutingProcess

            if path is not None and path.is_file():
                try:
                    proc = RoutingProcess.load(path)
                    self.disk_hits += 1
                    return proc
                except (ProcessFormatError, ValueError, KeyError, TypeError, OSError) as exc:
                    log.warning("process cache: %s unreadable (%s); deriving it again", path, exc)
            proc = make()
            if path is not None:
                self._write(proc, path)
            return proc

        return self.get_or_make(key, load_or_make)

    @staticmethod
    def _write(proc: RoutingProcess, path: Path) -> None:
        """Write ``proc`` to ``path`` atomically (temporary file in the same folder + rename)."""
        import os
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        os.close(fd)
        try:
            proc.save(tmp, precision="float64")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _base_model_name(design: Design) -> str:
    """The embedded fitted process that a ``"default"`` routing starts from."""
    from workloads.defaults import fitted_models

    fitted = fitted_models()
    base = design.workload.base_model
    if base is not None:
        if base not in fitted:
            raise DesignError(f"workload.base_model {base!r} has no embedded fitted process; valid: {fitted}")
        return base
    if design.model.name in fitted:
        return design.model.name
    from workloads.defaults import load_default_data

    procs = load_default_data()["processes"]
    m = design.model
    return min(
        fitted,
        key=lambda n: (
            abs(math.log(m.n_experts / int(procs[n]["n_experts"]))) + abs(math.log(m.top_k / int(procs[n]["top_k"]))),
            n,
        ),
    )


#: Tag of how `routing_process` derives a process (retarget / relayer with their default budgets):
#: part of every cache key, so a change of the derivation never reuses a stale cached file.
_DERIVE_VERSION = "retarget-default-v2-cal3x4096"


def _embedded_process_digest(name: str) -> str:
    """SHA-256 (24 hex) of the embedded fitted process ``name`` (its canonical JSON)."""
    from workloads.defaults import load_default_data

    d = load_default_data()["processes"][name]
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


#: Recalibration budget of a re-targeted / re-layered process (iterations x sampled tokens). An
#: assumption traded for speed: the presets' `default_process` uses 6 x 4096-16384; 3 x 4096 keeps
#: the re-targeted popularity and affinity targets within the sampling noise of a 4096-token
#: calibration sample while a search derives a new shape in seconds.
_CALIBRATION_ITERATIONS = 3
_CALIBRATION_TOKENS = 4096


def routing_process(design: Design, cache: EvalCache | None = None) -> RoutingProcess:
    """The routing process a ``"default"`` or ``"process:"`` workload samples, shaped to the model
    (re-targeted to its experts / top-k, re-layered to its MoE layers; memoised in ``cache``)."""
    from workloads.defaults import default_process
    from workloads.process import RoutingProcess

    m = design.model
    kind, _, path = design.workload.routing.partition(":")
    seed = design.workload.seed
    if kind == "process":
        p_file = Path(path)
        digest = hashlib.sha256(p_file.read_bytes()).hexdigest()[:24] if p_file.is_file() else "missing"
        base_key = f"file:{p_file.resolve()}|sha256={digest}"

        def load_base() -> RoutingProcess:
            p = Path(path)
            if not p.is_file():
                raise DesignError(f"workload.routing: process file {path!r} does not exist")
            return RoutingProcess.load(p)
    else:
        name = _base_model_name(design)
        base_key = f"default:{name}|sha256={_embedded_process_digest(name)}"

        def load_base() -> RoutingProcess:
            return default_process(name, seed=0)

    key = f"{base_key}|E={m.n_experts}|k={m.top_k}|L={m.n_moe_layers}|seed={seed}|derive={_DERIVE_VERSION}"

    def make() -> RoutingProcess:
        proc = load_base()
        if (proc.n_experts, proc.top_k) != (m.n_experts, m.top_k):
            log.info("re-targeting the routing process to %d experts, top-%d", m.n_experts, m.top_k)
            proc = proc.retarget(
                m.n_experts,
                m.top_k,
                calibration_iterations=_CALIBRATION_ITERATIONS,
                calibration_tokens=_CALIBRATION_TOKENS,
                seed=seed,
            )
        if proc.n_moe_layers != m.n_moe_layers:
            log.info("re-layering the routing process to %d MoE layers", m.n_moe_layers)
            proc = proc.relayer(
                m.n_moe_layers,
                calibration_iterations=_CALIBRATION_ITERATIONS,
                calibration_tokens=_CALIBRATION_TOKENS,
                seed=seed,
            )
        return proc

    if cache is None:
        return make()
    return cache.process(key, make)


def request_stream(design: Design, cache: EvalCache | None = None) -> RequestStream:
    """The `RequestStream` of the design's workload spec."""
    from workloads.requests import ProcessRouting, RequestStream, TraceReplay
    from workloads.trace import RoutingTrace

    w = design.workload
    kind, _, path = w.routing.partition(":")
    if kind == "trace":
        p = Path(path)
        if not p.is_file():
            raise DesignError(f"workload.routing: trace file {path!r} does not exist")
        trace = RoutingTrace.load(p)
        m = design.model
        if (trace.n_moe_layers, trace.n_experts) != (m.n_moe_layers, m.n_experts):
            raise DesignError(
                f"workload.routing: trace {path} has {trace.n_moe_layers} MoE layers x {trace.n_experts} experts; "
                f"model {m.name!r} has {m.n_moe_layers} x {m.n_experts}"
            )
        source: Any = TraceReplay(trace, cycle=True)  # designs replay a trace cyclically (a warning says so)
    else:
        source = ProcessRouting(routing_process(design, cache), seed=w.seed)
    prompt_len = length_dist(w.prompt_dist, w.prompt_tokens, "workload.prompt_dist")
    output_len = length_dist(w.output_dist, w.output_tokens, "workload.output_dist")
    if w.arrivals == "poisson":
        assert w.rate_per_s is not None
        return RequestStream.poisson(
            rate_per_s=float(w.rate_per_s),
            n_requests=w.n_requests,
            prompt_len=prompt_len,
            output_len=output_len,
            routing=source,
            seed=w.seed,
        )
    return RequestStream.closed(
        n_requests=w.n_requests, prompt_len=prompt_len, output_len=output_len, routing=source, seed=w.seed
    )


def cost_model(design: Design) -> CostModel:
    """The `hwmodels.CostModel` of the design's cost spec (profile applied to every accelerator),
    computing at its serving stack's rate (`hwmodels.stacks.ServingStack.compute_scale`), as the
    `codesign.costplan.StepCostPlan` of its mapping does, so the metrics' compute / memory split
    reads the same kernels the engine ran."""
    from hwmodels import CostModel

    profiles = None
    if design.cost.profile is not None:
        prof = design.cost.load_profile()
        profiles = {d.name: prof for d in design.platform.accelerators}
    return CostModel(
        design.platform,
        fidelity=design.cost.fidelity,
        profiles=profiles,
        compute_scale=resolve_stack(design.mapping.stack).compute_scale,
    )


def analytic_reasons(design: Design) -> list[str]:
    """Why the analytic model cannot model ``design`` (empty when it can).

    It models a closed batch (all requests at t = 0) of equal-length requests sampled from a
    routing process, on the policies and execution modes that `codesign.analytic.supports` knows,
    whose prefill is one step of ``batch x prompt_tokens`` tokens. Refused therefore: other
    arrivals, trace replay, a length spread (``workload.prompt_dist`` / ``output_dist``) and a
    prefill the engine would chunk (``batch x prompt_tokens > batching.max_tokens``, batch =
    ``min(n_requests, batching.max_batch)``).
    """
    reasons: list[str] = []
    w = design.workload
    if w.arrivals != "closed":
        reasons.append(f"arrivals {w.arrivals!r}: the closed form models a closed batch only")
    if w.routing.startswith("trace:"):
        reasons.append("trace replay: the closed form works on routing statistics of a process")
    for what, dist in (("prompt_dist", w.prompt_dist), ("output_dist", w.output_dist)):
        if dist is not None:
            reasons.append(f"workload.{what} {dist!r}: the closed form models equal-length requests only")
    batching = design.mapping.batching
    batch = min(w.n_requests, batching.max_batch)
    if batch * w.prompt_tokens > batching.max_tokens:
        reasons.append(
            f"prefill of batch {batch} x prompt {w.prompt_tokens} = {batch * w.prompt_tokens} tokens > "
            f"batching.max_tokens={batching.max_tokens}: the engine chunks it over several steps; the closed "
            "form models one prefill step"
        )
    from codesign import analytic

    supports = getattr(analytic, "supports", None)
    if supports is not None:
        reasons.extend(supports(design))
    return reasons


def _stats_for(design: Design, cache: EvalCache | None) -> Any:
    """Routing statistics of a training sample of the design's process (what the policies train on)."""
    from codesign.policies.base import RoutingStats

    w = design.workload
    n_tokens = max(2048, min(16384, w.n_requests * (w.prompt_tokens + w.output_tokens)))
    key = f"stats|{design.workload.routing}|{_base_model_name(design)}|E={design.model.n_experts}|" + (
        f"k={design.model.top_k}|L={design.model.n_moe_layers}|seed={w.seed}|n={n_tokens}"
    )

    def make() -> Any:
        proc = routing_process(design, cache)
        trace = proc.sample(n_tokens, seed=int(np.random.SeedSequence([w.seed, 0x53544154]).generate_state(1)[0]))
        return RoutingStats.from_trace(trace)

    return make() if cache is None else cache.get_or_make(key, make)


def _mapping_dict(mapping: Mapping) -> dict[str, Any]:
    """``mapping.to_dict()`` with a stack named by a file path (not a preset) replaced by its contents."""
    from hwmodels.stacks import stack_preset_names, stack_to_dict

    d = mapping.to_dict()
    if isinstance(mapping.stack, str) and mapping.stack not in stack_preset_names():
        d["stack"] = stack_to_dict(resolve_stack(mapping.stack))
    return d


def check_fits(model: MoEModel, platform: Platform, mapping: Mapping, *, min_kv_tokens: int = 1, seed: int = 0) -> None:
    """Raise the `MappingError` of a mapping that cannot be laid out at all, cheaply: it is bound
    once with round-robin placement, no routing statistics and an empty cache start (memory does
    not depend on which experts are homed where), before any routing process is derived."""
    probe = mapping.with_(placement="round-robin", placement_options=(), initial="empty", pinned=(), resident=())
    if getattr(probe, "expert_home", None) is not None:
        probe = probe.with_(expert_home=None)
    probe.bind(model, platform, stats=None, min_kv_tokens=min_kv_tokens, seed=seed)


def _typical_expert_split(design: Design, cost: CostModel, tokens_per_expert: float) -> float:
    """Share of a typical expert kernel's roofline time that is compute (rest: memory)."""
    dev = design.platform.accelerators[0]
    c = cost.expert_ffn(dev, design.model, [max(1.0, tokens_per_expert)])
    comp = float(np.sum(c.compute_s))
    mem = float(np.sum(c.memory_s))
    return comp / (comp + mem) if comp + mem > 0 else 0.5


def _decode_tokens_per_expert(design: Design) -> float:
    m, w = design.model, design.workload
    batch = min(w.n_requests, design.mapping.batching.max_batch)
    assignments = batch * m.top_k
    return assignments / min(m.n_experts, assignments)


def _link_time(cost: CostModel, link: Any, n_bytes: float, chunk: float) -> float:
    if link is None or n_bytes <= 0:
        return 0.0
    n = n_bytes / chunk
    return float(n * float(np.sum(cost.transfer(link, [chunk]).total_s)))


def _bottleneck(breakdown: dict[str, float]) -> str:
    return max(BREAKDOWN_KEYS, key=lambda k: (breakdown.get(k, 0.0), -BREAKDOWN_KEYS.index(k)))


def _cache_hit_rate(summary_hit: Any, design: Design) -> float:
    if isinstance(summary_hit, dict):
        if not summary_hit:
            return 1.0
        tier = design.mapping.cache.tier or design.platform.accelerators[0].weights_tier
        if tier in summary_hit:
            return float(summary_hit[tier])
        return float(np.mean(list(summary_hit.values())))
    return float(summary_hit)


def _sim_metrics(design: Design, result: Result, cost: CostModel, wall_s: float) -> Metrics:
    s = result.summary
    share = _typical_expert_split(design, cost, _decode_tokens_per_expert(design))
    busy = float(s.get("device_busy_s", 0.0))
    plat = design.platform
    bytes_moved = s.get("bytes_moved", {}) or {}
    pcie = 0.0
    if plat.host_link is not None:
        pcie = _link_time(
            cost, plat.host_link, float(bytes_moved.get(plat.host_link.name, 0.0)), float(design.model.bytes_per_expert)
        )
    # the engine's own all-to-all seconds (every dispatch and combine call, as it charged them:
    # per-call latency, the busiest device's bytes, across nodes the slower path)
    a2a = float(s.get("all_to_all_s", 0.0) or 0.0)
    breakdown = {
        "compute": busy * share,
        "hbm": busy * (1.0 - share),
        "pcie": pcie,
        "all_to_all": a2a,
        "host_cpu": float(s.get("host_busy_s", 0.0)),
    }
    extra: dict[str, Any] = {
        k: s[k]
        for k in ("makespan_s", "n_steps", "output_tokens", "step_mean_s", "cross_device_share", "late_prefetch_share")
        if k in s
    }
    extra["peak_memory_bytes"] = dict(s.get("peak_memory_bytes", {}))
    extra["hit_rate_per_tier"] = dict(s.get("hit_rate", {}) or {})
    extra["config_hash"] = result.config_hash
    return Metrics(
        fidelity="sim",
        design_hash=design.content_hash,
        ttft_p50_s=float(s["ttft_p50_s"]),
        tpot_p50_s=float(s["tpot_p50_s"]),
        tpot_p99_s=float(s["tpot_p99_s"]),
        throughput_tok_s=float(s["throughput_tok_s"]),
        energy_j_per_token=float(s["energy_j_per_token"]),
        cost_per_mtok_usd=float(s["cost_per_million_tokens_usd"]),
        hit_rate=_cache_hit_rate(s.get("hit_rate"), design),
        breakdown_s=breakdown,
        bottleneck=_bottleneck(breakdown),
        wall_s=wall_s,
        extra=extra,
    )


def _analytic_metrics(design: Design, summary: dict[str, Any], cost: CostModel, wall_s: float) -> Metrics:
    w = design.workload
    pre = summary["prefill"]
    dec = summary["decode"]
    n_dec = w.output_tokens - 1
    share = _typical_expert_split(design, cost, _decode_tokens_per_expert(design))
    device = (pre["attention_s"] + pre["experts_s"]) + n_dec * (dec["attention_s"] + dec["experts_s"])
    breakdown = {
        "compute": device * share,
        "hbm": device * (1.0 - share),
        "pcie": pre["fetch_link_s"] + n_dec * dec["fetch_link_s"],
        "all_to_all": pre["all_to_all_s"] + n_dec * dec["all_to_all_s"],
        # issue 8: the serving stack's exposed host CPU time per step
        "host_cpu": pre.get("host_cpu_s", 0.0) + n_dec * dec.get("host_cpu_s", 0.0),
    }
    tpot = float(summary["tpot_p50_s"])
    hours = (pre["step_s"] + n_dec * dec["step_s"]) / 3600.0
    out_tokens = w.n_requests * w.output_tokens
    price = float(design.platform.cost_per_hour_usd)
    hit = summary.get("hit_rate")
    return Metrics(
        fidelity="analytic",
        design_hash=design.content_hash,
        ttft_p50_s=float(summary["ttft_p50_s"]),
        tpot_p50_s=tpot,
        tpot_p99_s=tpot,
        throughput_tok_s=float(summary["throughput_tok_s"]),
        energy_j_per_token=float(summary["energy_j_per_token"]),
        cost_per_mtok_usd=price * hours / out_tokens * 1e6 if out_tokens else float("nan"),
        hit_rate=_cache_hit_rate(hit, design),
        breakdown_s=breakdown,
        bottleneck=_bottleneck(breakdown),
        wall_s=wall_s,
        extra={
            "step_mean_s": float(summary.get("step_mean_s", float("nan"))),
            "expected_distinct_experts": summary.get("expected_distinct_experts"),
        },
    )


def evaluate(
    design: Design,
    fidelity: Fidelity = "sim",
    *,
    cache: EvalCache | None = None,
    progress: bool = False,
    record_events: bool = False,
) -> Metrics:
    """Evaluate ``design`` at ``fidelity`` (``"analytic"`` or ``"sim"``); see the module doc.

    Raises `MappingError` when the mapping does not fit (numbers in the message),
    `UnsupportedDesignError` (with ``reasons``) when the analytic fidelity cannot model the design,
    `DesignError` for a malformed workload or cost spec. Deterministic for a design (its seeds).
    """
    if fidelity not in ("analytic", "sim"):
        raise ValueError(f"fidelity must be 'analytic' or 'sim', got {fidelity!r}")
    t0 = time.perf_counter()
    w = design.workload
    check_fits(design.model, design.platform, design.mapping, min_kv_tokens=w.prompt_tokens + w.output_tokens - 1)
    cost = cost_model(design)
    if fidelity == "analytic":
        reasons = analytic_reasons(design)
        if reasons:
            raise UnsupportedDesignError("analytic", reasons)
        from codesign.analytic import analytic_summary

        stats = _stats_for(design, cache)
        summary = analytic_summary(
            design.model,
            design.platform,
            design.mapping,
            stats,
            batch_size=min(w.n_requests, design.mapping.batching.max_batch),
            prompt_tokens=w.prompt_tokens,
            output_tokens=w.output_tokens,
            cost_model=cost,
        )
        return _analytic_metrics(design, summary, cost, time.perf_counter() - t0)
    result = _simulate(design, cost, cache=cache, progress=progress, record_events=record_events)
    return _sim_metrics(design, result, cost, time.perf_counter() - t0)


def _simulate(
    design: Design, cost: CostModel, *, cache: EvalCache | None, progress: bool, record_events: bool
) -> Result:
    """The simulator run of a design whose fit was checked, with its cost model."""
    from codesign.simulate import simulate

    return simulate(
        design.model,
        design.platform,
        request_stream(design, cache),
        design.mapping,
        cost_model=cost,
        seed=design.workload.seed,
        progress=progress,
        record_events=record_events,
    )


def sim_metrics(design: Design, result: Result) -> Metrics:
    """The `Metrics` of a simulator `Result` of ``design`` (what ``evaluate(design, "sim")`` returns
    for that run); for callers that need the records as well as the metrics (``wall_s`` is 0)."""
    return _sim_metrics(design, result, cost_model(design), 0.0)


def simulate_design(
    design: Design, *, cache: EvalCache | None = None, progress: bool = False, record_events: bool = False
) -> Result:
    """The full simulator `Result` of a design (records, summary, events) for views and replays."""
    w = design.workload
    check_fits(design.model, design.platform, design.mapping, min_kv_tokens=w.prompt_tokens + w.output_tokens - 1)
    return _simulate(design, cost_model(design), cache=cache, progress=progress, record_events=record_events)
