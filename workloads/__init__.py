"""What runs: MoE model specs, routing traces, routing processes and request streams."""

from workloads.model import MoEModel, UnknownPresetError, get_model, model_preset_names
from workloads.trace import DECODE, PREFILL, RoutingTrace, TraceFormatError

__all__ = [
    "DECODE",
    "PREFILL",
    "MoEModel",
    "RoutingTrace",
    "TraceFormatError",
    "UnknownPresetError",
    "get_model",
    "model_preset_names",
]

# helper A: importers of real routing data and aggregated statistics
from workloads.aggregated import AggregatedRoutingStats
from workloads.importers import import_trace, importer_names

__all__ += ["AggregatedRoutingStats", "import_trace", "importer_names"]
