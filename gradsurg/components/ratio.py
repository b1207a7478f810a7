r"""Ratio (R): how strongly the positive is pulled relative to the negatives' push.

==============  ===================================================================
member          :math:`R_i`
==============  ===================================================================
Constant(c)     ``c`` (1 for InfoNCE and MPT)
Arc(u)          ``sin(theta_ii + u) / sin(theta_ii)`` (ArcCon), ``theta = arccos s``
Euclidean()     ``d_ij* / d_ii`` (MET), ``d = sqrt(max(2 - 2 s, 1e-4))``
Angular()       ``sin(theta_ij*) / sin(theta_ii)`` (MAT)
Sigmoid(t, b)   ``sigmoid(-(t s_ii + b)) / sum_{j!=i} sigmoid(t s_ij + b)`` (SigLIP)
==============  ===================================================================

``j*`` is the hardest negative. Where a clamp of the plain formula is active
(``theta`` at its ``1e-7`` bound, ``d`` at its floor) the positive's slope is
zero, and so is R: the closed forms equal autograd of the plain formulas
everywhere, not only away from the clamps.

With its own margin dissipation, ``GD_i R_i`` is formed as the product
``1[active] / d_ii`` (resp. ``1[active] / sin(theta_ii)``): ``d_ij*`` cancels,
so the positive keeps its pull even where the hardest negative sits at a clamp
(``GD = 0`` there, exactly as autograd of MET / MAT gives).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Ratio, check_nonnegative, check_positive, check_real
from ._rows import Rows, angle, angle_slope, euclid, euclid_slope
from .dissipation import AngularMargin, EuclideanMargin
from .dissipation import Sigmoid as _SigmoidGD

__all__ = ["Constant", "Arc", "Euclidean", "Angular", "Sigmoid", "Ratio"]


@dataclass(frozen=True, repr=False)
class Constant(Ratio):
    """``R_i = value``."""

    value: float = 1.0

    def __post_init__(self):
        check_nonnegative("value", self.value, "ratio.Constant")

    def __call__(self, rows: Rows) -> Tensor:
        return torch.full((rows.n,), self.value, dtype=rows.dtype, device=rows.device)


@dataclass(frozen=True, repr=False)
class Arc(Ratio):
    """``R_i = sin(theta_ii + margin) / sin(theta_ii)``: ArcCon's additive angular margin."""

    margin: float = math.radians(10)

    def __post_init__(self):
        check_nonnegative("margin", self.margin, "ratio.Arc", upper=math.pi)

    def __call__(self, rows: Rows) -> Tensor:
        return torch.sin(angle(rows.pos) + self.margin) * angle_slope(rows.pos)


@dataclass(frozen=True, repr=False)
class Euclidean(Ratio):
    """``R_i = d_ij* / d_ii``: MET's ratio."""


    def __call__(self, rows: Rows) -> Tensor:
        return euclid(rows.hardest_value) * euclid_slope(rows.pos)

    def pull(self, rows: Rows, gd: Tensor, dissipation) -> Tensor:
        if isinstance(dissipation, EuclideanMargin):
            return (dissipation.hinge(rows) > 0).to(gd.dtype) * euclid_slope(rows.pos)
        return gd * self(rows)


@dataclass(frozen=True, repr=False)
class Angular(Ratio):
    """``R_i = sin(theta_ij*) / sin(theta_ii)``: MAT's ratio."""


    def __call__(self, rows: Rows) -> Tensor:
        return torch.sin(angle(rows.hardest_value)) * angle_slope(rows.pos)

    def pull(self, rows: Rows, gd: Tensor, dissipation) -> Tensor:
        if isinstance(dissipation, AngularMargin):
            return (dissipation.hinge(rows) > 0).to(gd.dtype) * angle_slope(rows.pos)
        return gd * self(rows)


@dataclass(frozen=True, repr=False)
class Sigmoid(Ratio):
    """SigLIP's: ``R_i = sigmoid(-(t s_ii + b)) / sum_{j!=i} sigmoid(t s_ij + b)``.

    With its own dissipation ``GD_i R_i = t sigmoid(-(t s_ii + b))`` is formed
    directly, so the pull survives where every negative's sigmoid underflows."""

    scale: float = 10.0
    bias: float = -10.0

    def __post_init__(self):
        check_positive("scale", self.scale, "ratio.Sigmoid")
        check_real("bias", self.bias, "ratio.Sigmoid")

    def _pull(self, rows: Rows) -> Tensor:
        return torch.sigmoid(-(rows.pos * self.scale + self.bias))

    def __call__(self, rows: Rows) -> Tensor:
        total = rows.sigmoid_total(self.scale, self.bias)
        return torch.where(total > 0, self._pull(rows) / torch.where(total > 0, total, torch.ones_like(total)),
                           torch.zeros_like(total))

    def pull(self, rows: Rows, gd: Tensor, dissipation) -> Tensor:
        if isinstance(dissipation, _SigmoidGD) and dissipation.scale == self.scale:
            return self._pull(rows) * self.scale
        return gd * self(rows)
