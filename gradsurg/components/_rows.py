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

from ..vocabulary import HALF_DTYPES

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


#: a row whose shifted exp-sum falls below this is recomputed with its true maximum
_UNDERFLOW = 1e-30
#: torch >= 2.8 has ``mm(a, b, out_dtype=float32)`` for half-precision CUDA operands
_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


def sync_free(t: Tensor) -> bool:
    """Whether statistics of ``t`` must avoid reading values on the host (CUDA tensors)."""
    return t.is_cuda


def product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in the statistics dtype: float16/bfloat16 operands (CUDA) give a
    float32 result accumulated in float32, without up-cast copies of the operands
    (older torch: on float32 copies)."""
    if a.dtype in HALF_DTYPES:
        if _MM_OUT_DTYPE:
            return torch.mm(a, b, out_dtype=torch.float32)
        return a.float() @ b.float()
    return a @ b


class Rows:
    """A chunk of rows of ``s`` with lazily computed per-row statistics.

    Args:
        s: ``(n, M)`` similarities of anchors ``start .. start + n`` to all M
            candidates, in the statistics dtype (float32 or float64). The
            diagonal entries (the positives) are read, then excluded from the
            negatives' statistics.
        start: index of the first row; row ``r`` of the chunk is anchor
            ``start + r`` and its positive is candidate ``start + r``.

    :meth:`from_product` builds a chunk straight from the unit vectors; given
    a temperature it computes the shifted logits ``(s - 1) / tau`` in the
    matrix product itself (``s <= 1``, so their exponentials never overflow)
    and forms the softmax in place, with a true-maximum fallback for rows that
    would underflow: three passes over the chunk for InfoNCE.
    """

    def __init__(self, s: Tensor | None, start: int, *, _shifted: tuple | None = None):
        self.start = start
        if _shifted is None:
            self.__dict__["s"] = s
            self.n, self.m = s.shape
            self.dtype, device = s.dtype, s.device
        else:
            self._uc, self._v, self._tau, self._z = _shifted
            self.n, self.m = self._z.shape
            self.dtype, device = self._z.dtype, self._z.device
        self.rows = torch.arange(self.n, device=device)
        self.cols = self.rows + start

    @classmethod
    def from_product(cls, uc: Tensor, v: Tensor, start: int, temperature: float | None = None) -> "Rows":
        """Rows of ``uc v^T``; with ``temperature``, kept as shifted logits ``(s - 1)/tau``."""
        if temperature is None:
            return cls(product(uc, v.T), start)
        if uc.dtype in HALF_DTYPES:
            z = product(uc, v.T).mul_(1.0 / temperature).sub_(1.0 / temperature)
        else:
            z = torch.addmm(uc.new_full((), -1.0 / temperature), uc, v.T, alpha=1.0 / temperature)
        return cls(None, start, _shifted=(uc, v, temperature, z))

    # -- the positive and the negatives ------------------------------------
    @cached_property
    def s(self) -> Tensor:
        """The chunk of ``s`` (derived from the shifted logits, or recomputed)."""
        if self._z is not None:
            return self._z * self._tau + 1.0
        return product(self._uc, self._v.T)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    @cached_property
    def pos(self) -> Tensor:
        """``s_ii``, shape (n,)."""
        if "s" in self.__dict__:
            return self.s[self.rows, self.cols]
        a, b = self._uc, self._v[self.start:self.start + self.n]
        return torch.linalg.vecdot(a.to(self.dtype), b.to(self.dtype), dim=1)

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
    def _exp(self, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(E, total, LSE)`` at ``tau``, cached: ``E_ij = exp(s_ij/tau - shift_i)`` on
        the negatives (0 at the positive), ``total_i = sum_j E_ij`` and
        ``LSE_i = log total_i + shift_i``."""
        cache = self.__dict__.setdefault("_exps", {})
        if temperature in cache:
            return cache[temperature]
        if "s" not in self.__dict__ and self._z is not None and temperature == self._tau:
            e = self._z
            self._z = None  # consumed: exponentiated in place
            e[self.rows, self.cols] = -math.inf
            if sync_free(e):  # no host sync: shift every row by its true maximum (one more pass)
                shift = e.amax(dim=1)
                e.sub_(shift[:, None]).exp_()
                total = e.sum(dim=1)
                lse = total.log() + shift + 1.0 / temperature
                cache[temperature] = (e, total, lse)
                self.__dict__.setdefault("_lse", {})[temperature] = lse
                return e, total, lse
            e.exp_()
            total = e.sum(dim=1)
            lse = total.log() + 1.0 / temperature
            low = total < _UNDERFLOW
            if bool(low.any()):  # every candidate far below cos = 1 at a small tau: use the true maximum
                idx = low.nonzero().squeeze(1)
                z = product(self._uc[idx], self._v.T) / temperature
                z[torch.arange(idx.numel(), device=z.device), idx + self.start] = -math.inf
                shift = z.amax(dim=1, keepdim=True)
                ez = (z - shift).exp_()
                e[idx] = ez
                total[idx] = ez.sum(dim=1)
                lse[idx] = total[idx].log() + shift.squeeze(1)
        else:
            e = self.s / temperature
            e[self.rows, self.cols] = -math.inf
            shift = e.amax(dim=1, keepdim=True)
            e.sub_(shift).exp_()
            total = e.sum(dim=1)
            lse = total.log() + shift.squeeze(1)
        cache[temperature] = (e, total, lse)
        self.__dict__.setdefault("_lse", {})[temperature] = lse
        return e, total, lse

    def lse(self, temperature: float) -> Tensor:
        """``LSE_{j != i}(s_ij / tau)``, shape (n,)."""
        known = self.__dict__.get("_lse", {})
        return known[temperature] if temperature in known else self._exp(temperature)[2]

    def softmax(self, temperature: float, factor: Tensor | None = None) -> Tensor:
        """Softmax of ``s_ij / tau`` over the negatives (0 at the positive), times
        ``factor`` per row when given. Formed in place in the cached exponentials,
        which are handed over (the log-sum-exp stays cached)."""
        e, total, _ = self._exp(temperature)
        del self.__dict__["_exps"][temperature]
        scale = total.reciprocal()
        return e.mul_((scale if factor is None else scale * factor)[:, None])

    def sigmoid(self, scale: float, bias: float) -> tuple[Tensor, Tensor]:
        """``(S, total)``: ``S_ij = sigmoid(t s_ij + b)`` on the negatives (0 at the
        positive) and ``total_i = sum_{j!=i} S_ij``; cached (W and GD share it)."""
        cache = self.__dict__.setdefault("_sigmoids", {})
        key = (scale, bias)
        if key not in cache:
            sig = torch.sigmoid(self.s * scale + bias)
            sig[self.rows, self.cols] = 0.0
            cache[key] = (sig, sig.sum(dim=1))
        return cache[key]

    def sigmoid_total(self, scale: float, bias: float) -> Tensor:
        """``sum_{j!=i} sigmoid(t s_ij + b)``, shape (n,) (as :class:`RowStats`)."""
        return self.sigmoid(scale, bias)[1]

    def softplus_total(self, scale: float, bias: float) -> Tensor:
        """``sum_{j!=i} softplus(t s_ij + b)``, shape (n,): SigLIP's loss over the negatives."""
        z = self.s * scale + bias
        z[self.rows, self.cols] = -math.inf  # softplus(-inf) = 0
        return torch.logaddexp(z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(dim=1)

    def powers(self, p: float) -> Tensor:
        """``max(s_ij, 1e-4) ** p`` on negatives, 0 at the positive (unnormalised: in float32 it
        underflows to 0 from ``p = 10`` on similarities near 0; use :meth:`power_weights` or
        :meth:`log_power_sum`)."""
        w = self.s.clamp(min=POWER_FLOOR).pow(p)
        w[self.rows, self.cols] = 0.0
        return w

    def _power(self, p: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(E, total, log_sum)``, cached: ``E_ij = (max(s_ij, 1e-4) / h_i) ** p`` on the negatives
        (0 at the positive) with ``h_i = max_{j != i} max(s_ij, 1e-4)``, ``total_i = sum_j E_ij``
        (>= 1: the hardest negative contributes exactly 1) and ``log_sum_i = log total_i + p log h_i``.
        Scaled by the row's largest base, nothing overflows or underflows to an all-zero row."""
        cache = self.__dict__.setdefault("_pows", {})
        if p not in cache:
            base = self.s.clamp(min=POWER_FLOOR)
            base[self.rows, self.cols] = 0.0
            top = base.amax(dim=1, keepdim=True)  # >= 1e-4: every negative is clamped there
            e = base.div_(top).pow_(p)
            total = e.sum(dim=1)
            cache[p] = (e, total, total.log() + p * top.squeeze(1).log())
        return cache[p]

    def power_weights(self, p: float) -> Tensor:
        """``max(s_ij, 1e-4)^p / sum_{k != i} max(s_ik, 1e-4)^p`` (0 at the positive), exact and
        finite for any ``p > 0`` in float32 (see :meth:`_power`); formed in the cached buffer."""
        e, total, _ = self._power(p)
        del self.__dict__["_pows"][p]
        return e.div_(total[:, None])

    def log_power_sum(self, p: float) -> Tensor:
        """``log sum_{j != i} max(s_ij, 1e-4)^p``, shape (n,), finite for any ``p > 0``."""
        return self._power(p)[2]
