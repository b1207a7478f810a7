r"""Non-contrastive objectives, original and with contrastive-style gradients.

    >>> import torch, gradsurg.objectives as obj
    >>> x, y = torch.randn(16, 32, requires_grad=True), torch.randn(16, 32)
    >>> obj.vicreg(x, y).backward()                                   # the original, plain autograd
    >>> loss = obj.vicreg(x, y, modified="w_gd,w_w,w_r")              # the paper's m_vicreg
    >>> loss = obj.BarlowTwins(modified="w_w")(x, y)                  # one switch (an ablation)

``OBJECTIVES`` maps the registry names to the module classes: ``align_uniform``,
``mhe``, ``mhs``, ``barlow_twins``, ``vicreg``, ``sg``. Every module's
``forward(anchors, positives, negatives=None)`` takes the raw embeddings of the
two views. See :mod:`gradsurg.objectives.noncontrastive` for the maths.
"""
from __future__ import annotations

from torch import Tensor

from . import original
from ._common import SWITCHES, parse_switches
from .noncontrastive import MHE, MHS, AlignUniform, BarlowTwins, NonContrastiveObjective, VICReg
from .sg import SG, sg, sg_paradigm

__all__ = [
    "OBJECTIVES", "SWITCHES", "parse_switches", "original",
    "NonContrastiveObjective", "AlignUniform", "MHE", "MHS", "BarlowTwins", "VICReg", "SG",
    "align_uniform", "mhe", "mhs", "barlow_twins", "vicreg", "sg", "sg_paradigm",
]

#: registry name -> factory (an nn.Module class taking keyword hyper-parameters and ``modified``)
OBJECTIVES = {
    "align_uniform": AlignUniform,
    "mhe": MHE,
    "mhs": MHS,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "sg": SG,
}


def align_uniform(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, modified=(),
                  **params) -> Tensor:
    """Functional :class:`AlignUniform` (same keyword parameters)."""
    return AlignUniform(modified=modified, **params)(anchors, positives, negatives)


def mhe(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, modified=(), **params) -> Tensor:
    """Functional :class:`MHE` (same keyword parameters)."""
    return MHE(modified=modified, **params)(anchors, positives, negatives)


def mhs(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, modified=(), **params) -> Tensor:
    """Functional :class:`MHS` (same keyword parameters)."""
    return MHS(modified=modified, **params)(anchors, positives, negatives)


def barlow_twins(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, modified=(),
                 **params) -> Tensor:
    """Functional :class:`BarlowTwins` (same keyword parameters)."""
    return BarlowTwins(modified=modified, **params)(anchors, positives, negatives)


def vicreg(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, modified=(),
           **params) -> Tensor:
    """Functional :class:`VICReg` (same keyword parameters)."""
    return VICReg(modified=modified, **params)(anchors, positives, negatives)
