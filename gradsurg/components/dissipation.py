r"""Gradient dissipation (GD): how much anchor i is still optimised.

Every effective contrastive loss switches off anchors whose positive is
already clearly closer than their negatives; the members below are the
dissipations of the losses of the paper (docs/paradigm.md, "Components") plus a
constant (no dissipation).

==================  =====================================================================
member              :math:`GD_i`
==================  =====================================================================
InfoNCE(tau)        ``sigmoid(LSE_{j!=i}(s_ij/tau) - s_ii/tau) / tau`` = ``(1 - p_ii)/tau``
ArcCon(tau, u)      ``sigmoid(LSE_{j!=i}(s_ij/tau) - cos(theta_ii + u)/tau) / tau``
InfoNCEHardness(    ``sigmoid(LSE_{j!=i}(s_ij/tau') - s_ii/tau) / tau``, ``1/tau' = 1/tau + alpha``
  tau, alpha)       (sentence-transformers' MNRL hardness tilt on every negative)
Margin(m)           ``1[s_ii - s_ij* < m]``, ``j* = argmax_{j!=i} s_ij``
EuclideanMargin(m)  ``1[d_ij* - d_ii < m] / d_ij*``, ``d = sqrt(max(2 - 2 s, 1e-4))``
AngularMargin(m)    ``1[theta_ij* - theta_ii < m] / sin(theta_ij*)``, ``theta = arccos s``
Constant(c)         ``c``
Sigmoid(t, b)       ``t sum_{j!=i} sigmoid(t s_ij + b)`` (SigLIP)
==================  =====================================================================

The softmax forms are computed as a sigmoid of the log-sum-exp gap, never as
``1 - p_ii`` (which cancels when the positive is confident).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Dissipation, check_nonnegative, check_positive, check_real
from ._rows import Rows, angle, angle_slope, euclid, euclid_slope

__all__ = ["InfoNCE", "ArcCon", "InfoNCEHardness", "Margin", "EuclideanMargin", "AngularMargin", "Constant", "Sigmoid", "Dissipation"]


@dataclass(frozen=True, repr=False)
class InfoNCE(Dissipation):
    """``GD_i = (1 - p_ii) / tau`` with ``p`` the softmax of ``s_i / tau`` over all candidates."""

    temperature: float = 0.05

    def __post_init__(self):
        check_positive("temperature", self.temperature, "dissipation.InfoNCE")

    def gap(self, rows: Rows) -> Tensor:
        """``LSE_{j!=i}(s_ij/tau) - s_ii/tau``; the loss is ``softplus(gap)``."""
        return rows.lse(self.temperature) - rows.pos / self.temperature

    def positive_logit(self, rows: Rows) -> Tensor:
        """``f_ii``, the positive's logit times tau: ``s_ii``."""
        return rows.pos

    @property
    def lse_temperature(self) -> float:
        """The temperature of the negatives' log-sum-exp that GD reads."""
        return self.temperature

    def __call__(self, rows: Rows) -> Tensor:
        return torch.sigmoid(self.gap(rows)) / self.temperature


@dataclass(frozen=True, repr=False)
class InfoNCEHardness(Dissipation):
    r"""InfoNCE with sentence-transformers' hardness tilt (MNRL's ``hardness_strength`` alpha on every
    negative): the positive's logit ``s_ii / tau``, each negative's ``s_ij / tau + alpha sg(s_ij)``.

    In value the negatives sit at the inverse temperature ``1/tau' = 1/tau + alpha``, so with
    ``gap_i = LSE_{j!=i}(s_ij / tau') - s_ii / tau``

    .. math::

        L_i = \mathrm{softplus}(gap_i), \qquad GD_i = \sigma(gap_i) / \tau = (1 - p_{ii}) / \tau,

    ``p`` the softmax of the tilted logits; the stop-gradient leaves the slope ``1/tau`` on every
    logit, so ``dL_i/ds_ij = p_ij / tau`` (j != i) and ``-(1 - p_ii) / tau``: W is the softmax over
    the negatives at ``tau'`` and R = 1 (:func:`gradsurg.paradigm.info_nce_hardness`).
    ``strength = 0`` is InfoNCE.
    """

    temperature: float = 0.05
    strength: float = 0.0

    def __post_init__(self):
        check_positive("temperature", self.temperature, "dissipation.InfoNCEHardness")
        check_nonnegative("strength", self.strength, "dissipation.InfoNCEHardness")

    @property
    def lse_temperature(self) -> float:
        """``tau' = 1 / (1/tau + alpha)``: the temperature of the tilted negatives (and of their W)."""
        return 1.0 / (1.0 / self.temperature + self.strength)

    def gap(self, rows: Rows) -> Tensor:
        """``LSE_{j!=i}(s_ij/tau') - s_ii/tau``; the loss is ``softplus(gap)``."""
        return rows.lse(self.lse_temperature) - rows.pos / self.temperature

    def positive_logit(self, rows: Rows) -> Tensor:
        """``f_ii``, the positive's logit times tau: ``s_ii``."""
        return rows.pos

    def __call__(self, rows: Rows) -> Tensor:
        return torch.sigmoid(self.gap(rows)) / self.temperature


@dataclass(frozen=True, repr=False)
class ArcCon(Dissipation):
    """InfoNCE's dissipation with the positive logit ``cos(theta_ii + margin) / tau``."""

    temperature: float = 0.05
    margin: float = math.radians(10)

    def __post_init__(self):
        check_positive("temperature", self.temperature, "dissipation.ArcCon")
        check_nonnegative("margin", self.margin, "dissipation.ArcCon", upper=math.pi)

    def gap(self, rows: Rows) -> Tensor:
        return rows.lse(self.temperature) - self.positive_logit(rows) / self.temperature

    @property
    def lse_temperature(self) -> float:
        """The temperature of the negatives' log-sum-exp that GD reads."""
        return self.temperature

    def positive_logit(self, rows: Rows) -> Tensor:
        """``f_ii = cos(theta_ii + margin)``, the positive's logit times tau."""
        return torch.cos(angle(rows.pos) + self.margin)

    def __call__(self, rows: Rows) -> Tensor:
        return torch.sigmoid(self.gap(rows)) / self.temperature


@dataclass(frozen=True, repr=False)
class Margin(Dissipation):
    """``GD_i = 1[s_ii - max_{j!=i} s_ij < margin]`` (the margin triplet loss's, MPT)."""

    margin: float = 0.3

    def __post_init__(self):
        check_nonnegative("margin", self.margin, "dissipation.Margin", upper=2.0)

    def hinge(self, rows: Rows) -> Tensor:
        """``max_{j!=i} s_ij - s_ii + m``; the MPT loss is ``relu(hinge)``."""
        return rows.hardest_value - rows.pos + self.margin

    def __call__(self, rows: Rows) -> Tensor:
        return (self.hinge(rows) > 0).to(rows.dtype)


@dataclass(frozen=True, repr=False)
class EuclideanMargin(Dissipation):
    """``GD_i = 1[d_ij* - d_ii < m] / d_ij*`` (MET), ``d = sqrt(max(2 - 2s, 1e-4))``."""

    margin: float = 0.45

    def __post_init__(self):
        check_nonnegative("margin", self.margin, "dissipation.EuclideanMargin", upper=2.0)

    def hinge(self, rows: Rows) -> Tensor:
        return euclid(rows.pos) - euclid(rows.hardest_value) + self.margin

    def __call__(self, rows: Rows) -> Tensor:
        active = (self.hinge(rows) > 0).to(rows.dtype)
        return active * euclid_slope(rows.hardest_value)


@dataclass(frozen=True, repr=False)
class AngularMargin(Dissipation):
    """``GD_i = 1[theta_ij* - theta_ii < m] / sin(theta_ij*)`` (MAT)."""

    margin: float = 0.15 * math.pi

    def __post_init__(self):
        check_nonnegative("margin", self.margin, "dissipation.AngularMargin", upper=math.pi)

    def hinge(self, rows: Rows) -> Tensor:
        return angle(rows.pos) - angle(rows.hardest_value) + self.margin

    def __call__(self, rows: Rows) -> Tensor:
        active = (self.hinge(rows) > 0).to(rows.dtype)
        return active * angle_slope(rows.hardest_value)


@dataclass(frozen=True, repr=False)
class Constant(Dissipation):
    """``GD_i = value`` for every anchor: no dissipation."""

    value: float = 1.0

    def __post_init__(self):
        check_nonnegative("value", self.value, "dissipation.Constant")

    def __call__(self, rows: Rows) -> Tensor:
        return torch.full((rows.n,), self.value, dtype=rows.dtype, device=rows.device)


@dataclass(frozen=True, repr=False)
class Sigmoid(Dissipation):
    """SigLIP's: ``GD_i = t sum_{j!=i} sigmoid(t s_ij + b)``, the total push of the negatives."""

    scale: float = 10.0
    bias: float = -10.0

    def __post_init__(self):
        check_positive("scale", self.scale, "dissipation.Sigmoid")
        check_real("bias", self.bias, "dissipation.Sigmoid")

    def loss(self, rows: Rows) -> Tensor:
        """``softplus(-(t s_ii + b)) + sum_{j!=i} softplus(t s_ij + b)``: SigLIP's row loss."""
        zp = -(rows.pos * self.scale + self.bias)
        return rows.softplus_total(self.scale, self.bias) + torch.logaddexp(zp, torch.zeros_like(zp))

    def __call__(self, rows: Rows) -> Tensor:
        return rows.sigmoid_total(self.scale, self.bias) * self.scale
