"""Row statistics of a chunk of the cosine-similarity matrix.

Every component of the paradigm is a function of a few statistics of its row
of ``s`` over the negatives ``j != i``: the positive ``s_ii``, the hardest
negative (value and index), log-sum-exps at a temperature, power sums. A
:class:`Rows` object holds one chunk of rows of ``s`` (rows ``start ..
start + n``) and computes each statistic once, on demand, so that a paradigm
only pays for what its components ask for.
"""
from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor

#: clamp of the Euclidean distance ``d = sqrt(max(2 - 2 s, EUCLID_FLOOR))``
EUCLID_FLOOR = 1e-4
#: clamp of the cosine before ``arccos``: ``clamp(s, -1 + ANGLE_EPS, 1 - ANGLE_EPS)``
ANGLE_EPS = 1e-7
#: floor of the similarity in power weights: ``max(s, POWER_FLOOR) ** p``
POWER_FLOOR = 1e-4


def euclid(s: Tensor) -> Tensor:
    """``d(s) = sqrt(max(2 - 2 s, 1e-4))``, the distance of unit vectors."""
    return (2.0 - 2.0 * s).clamp(min=EUCLID_FLOOR).sqrt()


def euclid_slope(s: Tensor) -> Tensor:
    """``-d'(s)``: ``1 / d(s)`` where the clamp is inactive, else 0."""
    d2 = 2.0 - 2.0 * s
    return torch.where(d2 >= EUCLID_FLOOR, d2.clamp(min=EUCLID_FLOOR).rsqrt(), torch.zeros_like(s))


def angle(s: Tensor) -> Tensor:
    """``theta(s) = arccos(clamp(s, -1 + 1e-7, 1 - 1e-7))``."""
    return s.clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS).acos()


def angle_slope(s: Tensor) -> Tensor:
    """``-theta'(s)``: ``1 / sin(theta) = 1 / sqrt(1 - s^2)`` inside the clamp, else 0."""
    inside = (s >= -1.0 + ANGLE_EPS) & (s <= 1.0 - ANGLE_EPS)
    sc = s.clamp(-1.0 + ANGLE_EPS, 1.0 - ANGLE_EPS)
    return torch.where(inside, (1.0 - sc * sc).rsqrt(), torch.zeros_like(s))


class Rows:
    """A chunk of rows of ``s`` with lazily computed per-row statistics.

    Args:
        s: ``(n, M)`` similarities of anchors ``start .. start + n`` to all M
            candidates, in the statistics dtype (float32 or float64). The
            diagonal entries (the positives) are read, then excluded from the
            negatives' statistics.
        start: index of the first row; row ``r`` of the chunk is anchor
            ``start + r`` and its positive is candidate ``start + r``.
    """

    def __init__(self, s: Tensor, start: int):
        self.s = s
        self.start = start
        self.n, self.m = s.shape
        self.rows = torch.arange(self.n, device=s.device)
        self.cols = self.rows + start

    # -- the positive and the negatives ------------------------------------
    @cached_property
    def pos(self) -> Tensor:
        """``s_ii``, shape (n,)."""
        return self.s[self.rows, self.cols]

    @cached_property
    def neg_mask(self) -> Tensor:
        """Boolean (n, M), True on negatives (``j != i``)."""
        mask = torch.ones_like(self.s, dtype=torch.bool)
        mask[self.rows, self.cols] = False
        return mask

    def masked(self, fill: float) -> Tensor:
        """``s`` with the positive replaced by ``fill`` (a new tensor)."""
        out = self.s.clone()
        out[self.rows, self.cols] = fill
        return out

    @cached_property
    def hardest(self) -> tuple[Tensor, Tensor]:
        """``(max_{j != i} s_ij, argmax)``; ties go to the lowest index."""
        value, index = self.masked(-math.inf).max(dim=1)
        return value, index

    @property
    def hardest_value(self) -> Tensor:
        return self.hardest[0]

    @property
    def hardest_index(self) -> Tensor:
        return self.hardest[1]

    # -- softmax and power statistics --------------------------------------
    def logits(self, temperature: float) -> Tensor:
        """``s / tau`` with the positive set to -inf (cached per temperature)."""
        cache = self.__dict__.setdefault("_logits", {})
        if temperature not in cache:
            z = self.s / temperature
            z[self.rows, self.cols] = -math.inf
            cache[temperature] = z
        return cache[temperature]

    def lse(self, temperature: float) -> Tensor:
        """``LSE_{j != i}(s_ij / tau)``, shape (n,)."""
        cache = self.__dict__.setdefault("_lse", {})
        if temperature not in cache:
            cache[temperature] = torch.logsumexp(self.logits(temperature), dim=1)
        return cache[temperature]

    def softmax(self, temperature: float) -> Tensor:
        """Softmax of ``s_ij / tau`` over the negatives (0 at the positive).

        Computed in place in the cached logits buffer, which is handed over
        (the log-sum-exp stays cached).
        """
        lse = self.lse(temperature)
        z = self.__dict__["_logits"].pop(temperature, None)
        if z is None:
            z = self.logits(temperature)
            self.__dict__["_logits"].pop(temperature)
        return z.sub_(lse[:, None]).exp_()

    def powers(self, p: float) -> Tensor:
        """``max(s_ij, 1e-4) ** p`` on negatives, 0 at the positive."""
        w = self.s.clamp(min=POWER_FLOOR).pow(p)
        w[self.rows, self.cols] = 0.0
        return w
