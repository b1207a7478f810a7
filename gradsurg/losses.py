r"""Drop-in contrastive losses with the paper's defaults, and their modules.

Each function equals plain autograd of its textbook formula (loss and both
gradients) but computes the gradient directly from GD, W and R, chunk by
chunk, without an autograd graph through the N x M similarity matrix.

=========  ===========================================================  ================================
loss       per-anchor loss ``L_i``                                      paradigm (GD, W, R)
=========  ===========================================================  ================================
info_nce   ``-log softmax_j(s_ij / tau)[i]``                            InfoNCE(tau), Softmax(tau), 1
arccon     InfoNCE with positive logit ``cos(theta_ii + u)``            ArcCon(tau, u), Softmax(tau), Arc(u)
mpt        ``relu(max_{j!=i} s_ij - s_ii + m)``                         Margin(m), Hardest, 1
met        ``relu(d_ii - min_{j!=i} d_ij + m)``                         EuclideanMargin(m), Hardest, Euclidean
mat        ``relu(theta_ii - min_{j!=i} theta_ij + m)``                 AngularMargin(m), Hardest, Angular
=========  ===========================================================  ================================
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from . import paradigm as _p
from .api import paradigm_loss
from .paradigm import Paradigm

__all__ = [
    "info_nce", "arccon", "mpt", "met", "mat",
    "ParadigmLoss", "InfoNCELoss", "ArcConLoss", "MPTLoss", "METLoss", "MATLoss",
]


def info_nce(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
             temperature: float = 0.05, **kwargs) -> Tensor:
    """InfoNCE (SimCSE's loss; tau = 0.05 is sentence-transformers' scale 20).

    ``L_i = -log( exp(s_ii/tau) / sum_j exp(s_ij/tau) )``. Keyword arguments
    of :func:`gradsurg.paradigm_loss` (``symmetric``, ``reduction``,
    ``backend``, ``check_finite``) pass through.
    """
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.info_nce(temperature), **kwargs)


def arccon(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
           temperature: float = 0.05, margin: float = math.radians(10), **kwargs) -> Tensor:
    """ArcCon: InfoNCE with the positive's logit ``cos(arccos(s_ii) + margin) / tau``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.arccon(temperature, margin), **kwargs)


def mpt(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
        margin: float = 0.23, **kwargs) -> Tensor:
    """Margin triplet on cosine similarities: ``relu(max_{j!=i} s_ij - s_ii + margin)``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.mpt(margin), **kwargs)


def met(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
        margin: float = 0.45, **kwargs) -> Tensor:
    """Margin triplet on Euclidean distances of unit vectors, ``d = sqrt(max(2 - 2s, 1e-4))``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.met(margin), **kwargs)


def mat(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
        margin: float = 0.15 * math.pi, **kwargs) -> Tensor:
    """Margin triplet on angles ``theta = arccos(s)``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.mat(margin), **kwargs)


class ParadigmLoss(nn.Module):
    """Module form of :func:`gradsurg.paradigm_loss` for a fixed paradigm.

    ``forward(anchors, positives, negatives=None)`` returns the loss. The
    keyword arguments are those of :func:`gradsurg.paradigm_loss`, including
    ``gather_across_devices`` and ``group`` (see ``docs/distributed.md``).
    """

    def __init__(self, paradigm: Paradigm, *, symmetric: bool = False, reduction: str = "mean",
                 backend: str = "auto", check_finite: bool = True, gather_across_devices: bool = False,
                 group=None):
        super().__init__()
        if not isinstance(paradigm, Paradigm):
            raise TypeError(f"ParadigmLoss: paradigm must be a gradsurg.Paradigm, got {type(paradigm).__name__}")
        self.paradigm = paradigm
        self.kwargs = dict(symmetric=symmetric, reduction=reduction, backend=backend, check_finite=check_finite)
        if gather_across_devices:  # only passed when on: keeps the repr and the common path plain
            self.kwargs.update(gather_across_devices=True, group=group)
        elif group is not None:
            raise ValueError("ParadigmLoss: group= is only used with gather_across_devices=True")

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        return paradigm_loss(anchors, positives, negatives, paradigm=self.paradigm, **self.kwargs)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.paradigm!r}, {opts}"


class InfoNCELoss(ParadigmLoss):
    """Module form of :func:`gradsurg.info_nce` (same arguments)."""

    def __init__(self, temperature: float = 0.05, **kwargs):
        super().__init__(_p.info_nce(temperature), **kwargs)


class ArcConLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.arccon` (same arguments)."""

    def __init__(self, temperature: float = 0.05, margin: float = math.radians(10), **kwargs):
        super().__init__(_p.arccon(temperature, margin), **kwargs)


class MPTLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.mpt` (same arguments)."""

    def __init__(self, margin: float = 0.23, **kwargs):
        super().__init__(_p.mpt(margin), **kwargs)


class METLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.met` (same arguments)."""

    def __init__(self, margin: float = 0.45, **kwargs):
        super().__init__(_p.met(margin), **kwargs)


class MATLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.mat` (same arguments)."""

    def __init__(self, margin: float = 0.15 * math.pi, **kwargs):
        super().__init__(_p.mat(margin), **kwargs)
