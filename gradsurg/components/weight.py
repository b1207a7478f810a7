r"""Weight (W): how the push away from the negatives is spread over them.

``W_ii = 0``, ``W_ij >= 0`` and ``sum_{j!=i} W_ij = 1`` for every member.

==============  ==============================================================
member          :math:`W_ij` (j != i)
==============  ==============================================================
Softmax(tau)    ``exp(s_ij/tau) / sum_{k!=i} exp(s_ik/tau)``
Hardest()       ``1[j == argmax_{k!=i} s_ik]`` (ties: the lowest index)
Power(p)        ``max(s_ij, 1e-4)^p / sum_{k!=i} max(s_ik, 1e-4)^p``
Uniform()       ``1 / (M - 1)``
Sigmoid(t, b)   ``sigmoid(t s_ij + b) / sum_{k!=i} sigmoid(t s_ik + b)`` (SigLIP)
==============  ==============================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._base import Weight, check_positive, check_real
from ._rows import Rows

__all__ = ["Softmax", "Hardest", "Power", "Uniform", "Sigmoid", "Weight"]


@dataclass(frozen=True, repr=False)
class Softmax(Weight):
    """Softmax of ``s_ij / tau`` over the negatives: the push concentrates on hard ones as tau falls."""

    temperature: float = 0.05

    def __post_init__(self):
        check_positive("temperature", self.temperature, "weight.Softmax")

    def __call__(self, rows: Rows) -> Tensor:
        return rows.softmax(self.temperature)

    def scaled(self, rows: Rows, factor: Tensor) -> Tensor:
        return rows.softmax(self.temperature, factor)


@dataclass(frozen=True, repr=False)
class Hardest(Weight):
    """All the weight on the most similar negative (the margin losses' W)."""


    def __call__(self, rows: Rows) -> Tensor:
        w = torch.zeros(rows.n, rows.m, dtype=rows.dtype, device=rows.device)
        w[rows.rows, rows.hardest_index] = 1.0
        return w


@dataclass(frozen=True, repr=False)
class Power(Weight):
    """Power weights ``max(s_ij, 1e-4)^p``, normalised over the negatives.

    Formed as ``(max(s_ij, 1e-4) / h_i)^p`` normalised, with ``h_i`` the row's
    largest base: the same numbers, finite in float32 for any ``p`` (the plain
    powers underflow to an all-zero row, 0/0, from ``p = 10`` near ``s = 0``).
    """

    p: float = 5.0

    def __post_init__(self):
        check_positive("p", self.p, "weight.Power")

    def __call__(self, rows: Rows) -> Tensor:
        return rows.power_weights(self.p)


@dataclass(frozen=True, repr=False)
class Uniform(Weight):
    """Equal weight ``1 / (M - 1)`` on every negative."""


    def __call__(self, rows: Rows) -> Tensor:
        w = torch.full((rows.n, rows.m), 1.0 / (rows.m - 1), dtype=rows.dtype, device=rows.device)
        w[rows.rows, rows.cols] = 0.0
        return w


@dataclass(frozen=True, repr=False)
class Sigmoid(Weight):
    """SigLIP's: each negative pushed in proportion to ``sigmoid(t s_ij + b)`` (0 on rows without push)."""

    scale: float = 10.0
    bias: float = -10.0

    def __post_init__(self):
        check_positive("scale", self.scale, "weight.Sigmoid")
        check_real("bias", self.bias, "weight.Sigmoid")

    def __call__(self, rows: Rows) -> Tensor:
        sig, total = rows.sigmoid(self.scale, self.bias)
        return sig / torch.where(total > 0, total, torch.ones_like(total))[:, None]

    def scaled(self, rows: Rows, factor: Tensor) -> Tensor:
        sig, total = rows.sigmoid(self.scale, self.bias)
        return sig * (factor / torch.where(total > 0, total, torch.ones_like(total)))[:, None]
