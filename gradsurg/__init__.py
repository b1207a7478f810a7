"""gradsurg: gradient surgery for contrastive representation learning.

The gradient of every effective contrastive loss has three parts (Li et al.,
ACL 2024): gradient dissipation (GD), weight (W) and ratio (R). gradsurg sets
the gradient from those parts instead of differentiating a loss.

    >>> import torch, gradsurg
    >>> x, y = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    >>> loss = gradsurg.info_nce(x, y)              # exact InfoNCE, gradient set from GD, W, R
    >>> p = gradsurg.Paradigm(gradsurg.dissipation.Margin(0.3),
    ...                       gradsurg.weight.Softmax(0.05), gradsurg.ratio.Constant(1.5))
    >>> loss = gradsurg.paradigm_loss(x, y, paradigm=p)   # any new combination
"""
from . import paradigm
from .components import dissipation, ratio, weight
from .api import paradigm_loss
from .losses import (
    ArcConLoss,
    InfoNCELoss,
    MATLoss,
    METLoss,
    MPTLoss,
    ParadigmLoss,
    SigLIPLoss,
    arccon,
    info_nce,
    mat,
    met,
    mpt,
    siglip,
)
from .paradigm import Paradigm
from .queue import NegativeQueue
from . import objectives
from .analysis import Decomposition, StatsCollector, decompose

__version__ = "0.1.0"

__all__ = [
    "Paradigm", "paradigm", "dissipation", "weight", "ratio", "paradigm_loss",
    "info_nce", "arccon", "mpt", "met", "mat", "siglip", "NegativeQueue",
    "ParadigmLoss", "InfoNCELoss", "ArcConLoss", "MPTLoss", "METLoss", "MATLoss", "SigLIPLoss",
    "objectives", "decompose", "Decomposition", "StatsCollector",
]
