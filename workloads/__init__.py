"""What runs: MoE model specs, routing traces, routing processes and request streams."""

from workloads.model import (
    PRECISION_BYTES,
    WEIGHT_COMPONENTS,
    WEIGHT_FORMATS,
    MoEModel,
    UnknownPresetError,
    get_model,
    load_model,
    model_preset_names,
)
from workloads.precision import mixed_precision, precision_label
from workloads.trace import DECODE, PREFILL, RoutingTrace, TraceFormatError

__all__ = [
    "DECODE",
    "PRECISION_BYTES",
    "PREFILL",
    "WEIGHT_COMPONENTS",
    "WEIGHT_FORMATS",
    "MoEModel",
    "RoutingTrace",
    "TraceFormatError",
    "UnknownPresetError",
    "get_model",
    "load_model",
    "mixed_precision",
    "model_preset_names",
    "precision_label",
]

# helper A: importers of real routing data and aggregated statistics
from workloads.aggregated import AggregatedRoutingStats
from workloads.importers import import_trace, importer_names, register_importer

__all__ += ["AggregatedRoutingStats", "import_trace", "importer_names", "register_importer"]

# helper B: routing statistics, the fitted routing process, fidelity, defaults, request streams
from workloads.defaults import default_process  # noqa: E402
from workloads.fidelity import FidelityReport, compare, holdout_evaluation  # noqa: E402
from workloads.process import ProcessFormatError, RoutingProcess  # noqa: E402
from workloads.requests import LengthDist, ProcessRouting, Request, RequestStream, RoutingSource, TraceReplay  # noqa: E402
from workloads.stats import trace_stats  # noqa: E402

__all__ += [
    "FidelityReport",
    "LengthDist",
    "ProcessFormatError",
    "ProcessRouting",
    "Request",
    "RequestStream",
    "RoutingProcess",
    "RoutingSource",
    "TraceReplay",
    "compare",
    "default_process",
    "holdout_evaluation",
    "trace_stats",
]
