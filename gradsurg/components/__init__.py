"""The paradigm's vocabulary: dissipation (GD), weight (W), ratio (R)."""
from . import dissipation, ratio, weight
from ._base import Component, Dissipation, Ratio, Weight
from ._rows import Rows
from .row_stats import RowStats

__all__ = ["dissipation", "weight", "ratio", "Component", "Dissipation", "Weight", "Ratio", "Rows", "RowStats"]
