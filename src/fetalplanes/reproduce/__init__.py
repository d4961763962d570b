"""Reproduce the paper's table: a grid of config-row variants x seeds x splits x tasks,
trained resumably, calibrated, evaluated and aggregated into ``results.csv`` / ``results.md``."""

from fetalplanes.reproduce.runner import ReproduceSettings, RunKey, reproduce
from fetalplanes.reproduce.variants import Variant, default_variants, groups, load_variants, select_variants

__all__ = [
    "ReproduceSettings",
    "RunKey",
    "Variant",
    "default_variants",
    "groups",
    "load_variants",
    "reproduce",
    "select_variants",
]
