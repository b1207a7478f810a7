r"""Read GD, W and R off the gradient of any loss (docs/diagnostics.md).

For a loss written as a function of the N x M cosine-similarity matrix,
``L = loss_fn(s)`` with the mean over anchors, autograd gives
``G_ij = dL/ds_ij = GD_i (W_ij - [j==i] R_i) / N``, hence

    GD_i = N sum_{j!=i} G_ij,   W_ij = G_ij / sum_{k!=i} G_ik,   R_i = -G_ii / sum_{k!=i} G_ik.

An anchor with ``GD_i = 0`` (dissipated) has no W and R: they are reported as
0 there and ``.active`` is False.

    >>> import torch, gradsurg
    >>> from gradsurg.reference import info_nce_rows
    >>> x, y = torch.randn(8, 16), torch.randn(8, 16)
    >>> d = gradsurg.decompose(lambda s: info_nce_rows(s).mean(), x, y)
    >>> d.dissipation.shape, d.weight.shape, d.ratio.shape
    (torch.Size([8]), torch.Size([8, 8]), torch.Size([8]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..paradigm import Paradigm
from ..reference import cosine_matrix, surrogate_rows

__all__ = ["Decomposition", "decompose"]


@dataclass
class Decomposition:
    """GD (N,), W (N x M), R (N,) of a gradient, and what they were read from.

    Attributes:
        dissipation: ``GD_i``.
        weight: ``W_ij`` (0 at the positive and on inactive rows; may be
            negative for objectives with linear weights, e.g. Barlow Twins).
        ratio: ``R_i`` (0 on inactive rows).
        active: ``GD_i != 0``.
        gradient: ``G = dL/ds`` (for :func:`decompose` on a similarity loss),
            or None.
        gate, push, pull: the push / pull form of a non-contrastive objective
            (see :mod:`gradsurg.engine.pairwise`), or None.
        residual: the part of an objective's unit-vector gradient outside the
            paradigm form (Barlow Twins, VICReg), or None.
    """

    dissipation: Tensor
    weight: Tensor
    ratio: Tensor
    active: Tensor
    gradient: Tensor | None = None
    gate: Tensor | None = None
    push: Tensor | None = None
    pull: Tensor | None = None
    residual: Tensor | None = None

    @classmethod
    def from_push_pull(cls, pp) -> "Decomposition":
        """From a :class:`gradsurg.engine.pairwise.PushPull`."""
        gd = pp.dissipation
        return cls(gd, pp.weight, pp.ratio, gd != 0, None, pp.gate, pp.push, pp.pull, pp.residual)

    def summary(self) -> dict[str, float]:
        """Means over the batch: share active, GD, largest weight, R (active rows)."""
        act = self.active
        n_act = max(int(act.sum()), 1)
        return {
            "active_share": float(act.double().mean()),
            "gd_mean": float(self.dissipation.double().mean()),
            "hardest_weight": float((self.weight.max(dim=1).values * act).double().sum() / n_act),
            "ratio_mean": float((self.ratio * act).double().sum() / n_act),
        }


def _from_gradient(g: Tensor, scale: float) -> Decomposition:
    n = g.shape[0]
    idx = torch.arange(n, device=g.device)
    diag = g[idx, idx]
    total = g.sum(dim=1) - diag
    active = total != 0
    safe = torch.where(active, total, torch.ones_like(total))
    weight = torch.where(active[:, None], g / safe[:, None], torch.zeros_like(g))
    weight[idx, idx] = 0.0
    ratio = torch.where(active, -diag / safe, torch.zeros_like(total))
    return Decomposition(total * scale, weight, ratio, active, g)


def decompose(loss_fn: Callable[[Tensor], Tensor] | Paradigm | object, anchors: Tensor, positives: Tensor,
              negatives: Tensor | None = None, *, reduction: str = "mean") -> Decomposition:
    """GD, W and R of ``loss_fn``'s gradient on a batch.

    Args:
        loss_fn: ``loss_fn(s) -> scalar`` for the N x M cosine-similarity
            matrix ``s`` of anchors against ``cat(positives, negatives)``
            (row i's positive at column i); or a :class:`gradsurg.Paradigm`
            (its surrogate loss, so the result is the paradigm's own
            components); or an objective with a ``decompose(anchors,
            positives, negatives)`` method (the non-contrastive objectives of
            :mod:`gradsurg.objectives`, whose negatives are within-view: Barlow
            Twins and VICReg report their effective linear weights).
        anchors, positives, negatives: raw embeddings (N x d, N x d, K x d).
        reduction: how ``loss_fn`` reduces over anchors: ``'mean'`` (GD is
            ``N sum_{j!=i} G_ij``) or ``'sum'`` (``sum_{j!=i} G_ij``).

    Returns:
        A :class:`Decomposition` with ``.dissipation`` (N), ``.weight`` (N x M),
        ``.ratio`` (N), ``.active`` (N) and ``.gradient`` (N x M).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"decompose: reduction must be 'mean' or 'sum', got {reduction!r}")
    if not isinstance(anchors, Tensor) or not isinstance(positives, Tensor):
        raise TypeError("decompose: anchors and positives must be torch.Tensor of shape (N, d)")
    if anchors.dim() != 2 or positives.shape != anchors.shape:
        raise ValueError(
            f"decompose: anchors and positives must both have shape (N, d); got {tuple(anchors.shape)} "
            f"and {tuple(positives.shape)}"
        )
    if not isinstance(loss_fn, Paradigm) and hasattr(loss_fn, "decompose") and callable(loss_fn.decompose):
        return loss_fn.decompose(anchors, positives, negatives)
    if isinstance(loss_fn, Paradigm):
        paradigm = loss_fn
        loss_fn = lambda s: surrogate_rows(s, paradigm).mean()  # noqa: E731
    elif not callable(loss_fn):
        raise TypeError(
            f"decompose: loss_fn must be a callable loss_fn(s) -> scalar, a gradsurg.Paradigm or an objective "
            f"with .decompose, got {type(loss_fn).__name__}"
        )
    with torch.enable_grad():
        s = cosine_matrix(anchors.detach(), positives.detach(),
                          None if negatives is None else negatives.detach()).requires_grad_(True)
        value = loss_fn(s)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError("decompose: loss_fn(s) must return a scalar tensor")
        (g,) = torch.autograd.grad(value, s, allow_unused=True)
    if g is None:
        g = torch.zeros_like(s)
    n = anchors.shape[0]
    return _from_gradient(g.detach(), float(n) if reduction == "mean" else 1.0)
