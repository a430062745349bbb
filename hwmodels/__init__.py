"""What it runs on: devices, memory tiers, links, platforms, cost models and calibration."""

from hwmodels.costs import (
    ACTIVATION_BYTES,
    CostModel,
    DefaultEfficiency,
    EfficiencyModel,
    Fidelity,
    GemmCurve,
    LinkCurve,
    offchip_bytes,
)
from hwmodels.devices import (
    DEVICE_KINDS,
    DTYPES,
    Device,
    FrozenMap,
    Link,
    MemoryTier,
    Platform,
    PresetError,
    UnknownHardwareError,
    device_preset_names,
    get_device,
    get_link,
    get_platform,
    link_preset_names,
    load_device_file,
    load_link_file,
    load_platform_file,
    platform_preset_names,
)
from hwmodels.opcost import OpCost

__all__ = [
    "ACTIVATION_BYTES",
    "DEVICE_KINDS",
    "DTYPES",
    "CostModel",
    "DefaultEfficiency",
    "Device",
    "EfficiencyModel",
    "Fidelity",
    "FrozenMap",
    "GemmCurve",
    "Link",
    "LinkCurve",
    "MemoryTier",
    "OpCost",
    "Platform",
    "PresetError",
    "UnknownHardwareError",
    "device_preset_names",
    "get_device",
    "get_link",
    "get_platform",
    "link_preset_names",
    "load_device_file",
    "load_link_file",
    "load_platform_file",
    "offchip_bytes",
    "platform_preset_names",
]

# Calibration (helper D): profiles, fits, Vidur import, validation. torch is imported only by
# hwmodels.calibrate_run and, lazily, by hwmodels.validate.validate_moe_layer.
from hwmodels.calibration import (
    CalibrationError,
    CalibrationProfile,
    GemmFit,
    LinearFit,
    MissingCalibrationError,
    Peaks,
    Sample,
    default_profile_names,
    fit_gemm,
    fit_linear,
    fit_profile,
    load_default_profile,
)
from hwmodels.validate import ErrorStats, ValidationReport, validate_heldout, validate_samples
from hwmodels.vidur_import import import_vidur

__all__ += [
    "CalibrationError",
    "CalibrationProfile",
    "ErrorStats",
    "GemmFit",
    "LinearFit",
    "MissingCalibrationError",
    "Peaks",
    "Sample",
    "ValidationReport",
    "default_profile_names",
    "fit_gemm",
    "fit_linear",
    "fit_profile",
    "import_vidur",
    "load_default_profile",
    "validate_heldout",
    "validate_samples",
]
