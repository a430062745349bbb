"""What it runs on: devices, memory tiers, links, platforms, cost models and calibration."""

from hwmodels.opcost import OpCost

__all__ = ["OpCost"]
