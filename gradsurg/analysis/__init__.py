"""Analysis: decomposition of gradients into GD, W, R; simulation surfaces; training statistics; figures.

* :func:`decompose` -- GD, W, R read off the autograd gradient of any loss of
  the similarity matrix (docs/diagnostics.md), or of an objective.
* :mod:`gradsurg.analysis.simulation` -- the paper's GD surface, W-vs-temperature
  curves and R surfaces, vectorised.
* :class:`StatsCollector` -- per-step statistics for a training loop.
* :mod:`gradsurg.analysis.plots` -- matplotlib figures (imported on demand).
"""
from .decompose import Decomposition, decompose
from .collector import StatsCollector

__all__ = ["Decomposition", "decompose", "StatsCollector"]
