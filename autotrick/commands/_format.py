"""How the commands write values: trick settings, measurements, single values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def tricks_text(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={short_value(v)}" for k, v in values.items())


def measurements_text(measurements: Mapping[str, float]) -> str:
    """sparsity 0.6  nonzero_params 34,522: counts in full, shares to 4 digits."""
    return "  ".join(f"{key} {value:,.0f}" if float(value).is_integer() and abs(value) >= 1000 else f"{key} {value:.4g}"
                     for key, value in measurements.items())


def short_value(value: Any) -> str:
    """A float to 3 significant digits (a table cell), anything else as it is."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)
