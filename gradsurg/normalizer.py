r"""A global normaliser for InfoNCE on small batches (SogCLR / FastCLIP, arXiv:2407.01445).

InfoNCE normalises each anchor's push by its batch: ``W_ij = exp(s_ij/tau) /
sum_{k != i} exp(s_ik/tau)`` over the M - 1 negatives in the batch. With
``normalizer="global"`` the denominator is a per-example moving estimate kept
across steps, so the weights behave like those of a large batch on a small one:

.. math::

    g_i = \frac{1}{M-1} \sum_{j \ne i} e^{s_{ij}/\tau}, \qquad
    u_i \leftarrow (1-\gamma)\, u_i + \gamma\, g_i \quad (u_i = g_i \text{ the first time example } i \text{ is seen}),

    \frac{\partial L_i}{\partial s_{ij}} = GD_i (W_{ij} - [j=i] R_i), \quad
    GD_i = \frac{1}{\tau}, \quad W_{ij} = \frac{e^{s_{ij}/\tau}}{(M-1)\, u_i} \ (j \ne i), \quad R_i = 1.

In the paradigm's terms (docs/paradigm.md, "Global normaliser") W changes (its
row sum is ``g_i / u_i``, 1 when the estimate has caught up with the batch,
instead of exactly 1), GD becomes the constant ``1/tau`` (the positive leaves
the normaliser: InfoNCE's ``(1 - p_ii)/tau`` is its batch form with the
positive inside) and R stays 1. The value reported per anchor is
``-s_ii/tau + log u_i + g_i/u_i - 1``, the compositional objective
``-s_ii/tau + log g_i`` to first order in ``g_i/u_i - 1``; its gradient (with u
held constant) is the one above. ``u`` lives in log space (float64), so no
temperature overflows it.

How it runs on the engine (no N x M matrix outside it): one InfoNCE pass with
``reduction='none'`` gives each row's loss ``L_i = LSE_all_i - s_ii/tau``, from
which ``log g_i = LSE_all_i + log(1 - p_ii) - log(M-1)`` (``1 - p_ii = -expm1(-L_i)``);
its backward with the row weight ``c_i = exp(LSE_all_i) / ((M-1) u_i)`` gives
``exp(s_ij/tau)/((M-1) u_i tau)`` on every negative and ``-(g_i/u_i)/tau`` on the
positive, which an O(N d) term ``(g_i/u_i - 1)/tau * s_ii`` (autograd on the
pair's similarity) brings to ``-1/tau``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import paradigm as _p
from .api import paradigm_loss
from .engine.normalize import normalize
from .engine.validation import check_reduction

__all__ = ["GlobalNormalizer", "info_nce_global"]

NORMALIZERS = ("batch", "global")


class GlobalNormalizer(nn.Module):
    """The per-example estimates ``u_i`` of the global normaliser, for each tower.

    Args:
        dataset_size: how many examples the indices address (``index`` in ``[0, dataset_size)``).
        gamma: the moving-average rate, ``0 < gamma <= 1`` (``u <- (1-gamma) u + gamma g``).
        towers: 1 for one direction, 2 for a symmetric (two-tower) loss: each direction's
            anchors keep their own estimates.

    The buffer ``log_u`` (towers, dataset_size), float64, starts at ``-inf`` (never seen:
    the first estimate is the batch's). It is updated by a loss call when gradients are
    enabled and the module is in training mode (``.eval()`` or ``torch.no_grad()`` read
    it without changing it); it is saved with the ``state_dict``.
    """

    def __init__(self, dataset_size: int, gamma: float = 0.9, towers: int = 1):
        super().__init__()
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"GlobalNormalizer: dataset_size must be an int >= 1, got {dataset_size!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            raise ValueError(f"GlobalNormalizer: gamma must be a number in (0, 1], got {gamma!r}")
        if towers not in (1, 2):
            raise ValueError(f"GlobalNormalizer: towers must be 1 or 2 (symmetric), got {towers!r}")
        self.gamma = float(gamma)
        self.register_buffer("log_u", torch.full((towers, dataset_size), -math.inf, dtype=torch.float64))

    @property
    def dataset_size(self) -> int:
        return self.log_u.shape[1]

    def check_index(self, index, n: int, where: str) -> Tensor:
        """``index`` as a (n,) int64 tensor on the buffer's device; clear errors otherwise."""
        if index is None:
            raise ValueError(f"{where}: normalizer='global' needs index=, the (N,) dataset indices of the "
                             f"batch's examples (row i of the anchors is example index[i])")
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.dtype.is_complex:
            raise TypeError(f"{where}: index must hold integers, got dtype {index.dtype}")
        if index.shape != (n,):
            raise ValueError(f"{where}: index must have shape (N,) = ({n},), one dataset index per anchor, "
                             f"got {tuple(index.shape)}")
        index = index.to(device=self.log_u.device, dtype=torch.int64)
        if n:
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.dataset_size:
                raise IndexError(f"{where}: index out of range: values in [{lo}, {hi}], the GlobalNormalizer "
                                 f"holds dataset_size = {self.dataset_size} examples (0 .. {self.dataset_size - 1})")
            if index.unique().numel() != n:
                raise ValueError(f"{where}: index has repeated values; each row must be a distinct example")
        return index

    def step(self, tower: int, index: Tensor, log_g: Tensor, update: bool) -> Tensor:
        """``log u`` of the rows ``index`` after this batch's estimate ``log_g`` (updated in place if
        ``update``; a never-seen example takes ``g`` itself)."""
        old = self.log_u[tower, index]
        log_g = log_g.to(device=old.device, dtype=old.dtype)  # the state may live on another device
        mixed = torch.logaddexp(old + math.log1p(-self.gamma) if self.gamma < 1 else old.new_full(old.shape, -math.inf),
                                log_g + math.log(self.gamma))
        new = torch.where(torch.isinf(old) & (old < 0), log_g, mixed)
        if update:
            self.log_u[tower, index] = new
        return new

    def extra_repr(self) -> str:
        return f"dataset_size={self.dataset_size}, gamma={self.gamma}, towers={self.log_u.shape[0]}"


def _similarity(x: Tensor, y: Tensor, unit: bool) -> Tensor:
    """``s_ii`` as the engine forms it (cosine, or the dot product with ``normalize=False``)."""
    if unit:
        x, y = normalize(x)[0], normalize(y)[0]
    return (x * y).sum(dim=1)


def _direction(x, pos, neg, state, tower, index, tau, update, kwargs):
    """``(value rows, gradient rows)`` of one direction: equal values, the gradient rows' gradient
    is the global normaliser's."""
    rows = paradigm_loss(x, pos, neg, paradigm=_p.info_nce(tau), reduction="none", **kwargs)
    m = pos.shape[0] + (0 if neg is None else neg.shape[0])
    if m < 2:
        raise ValueError("info_nce(normalizer='global'): need at least one negative per anchor (M >= 2)")
    s = _similarity(x, pos, kwargs.get("normalize", True))
    big_l, sd = rows.detach().double(), s.detach().double()
    lse_all = sd / tau + big_l
    log_m = math.log(m - 1)
    log_g = lse_all + torch.log(-torch.expm1(-big_l)) - log_m
    log_u = state.step(tower, index, log_g, update).to(big_l.device)
    ratio = torch.exp(log_g - log_u)
    c = torch.exp(lse_all - log_u - log_m)
    value = -sd / tau + log_u + ratio - 1.0
    grad_rows = c.to(rows.dtype) * rows + ((ratio - 1.0) / tau).to(s.dtype) * s
    return value.to(rows.dtype), grad_rows


def info_nce_global(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
                    state: GlobalNormalizer, index, temperature: float = 0.05, symmetric: bool = False,
                    reduction: str = "mean", **kwargs) -> Tensor:
    r"""InfoNCE with the global normaliser (module docstring): ``state`` holds ``u``, ``index`` (N,)
    names the batch's examples in it. ``symmetric=True`` (two towers, CLIP): the positives ->
    anchors direction uses tower 1 of ``state`` (``towers=2``) with the same indices. ``temperature``
    is a float (a learnable temperature is not supported here). Other keyword arguments
    (``backend``, ``check_finite``, ``chunk_bytes``, ``normalize``) pass to :func:`gradsurg.paradigm_loss`.
    """
    where = "info_nce(normalizer='global')"
    if not isinstance(state, GlobalNormalizer):
        raise TypeError(f"{where}: state must be a gradsurg.GlobalNormalizer (the per-example estimates), "
                        f"got {type(state).__name__}")
    if isinstance(temperature, Tensor) or isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature > 0:
        raise ValueError(f"{where}: temperature must be a float > 0 (a learnable temperature is not supported "
                         f"with the global normaliser), got {temperature!r}")
    check_reduction(reduction, where)
    for bad in ("gather_across_devices", "distributed", "learn"):
        if kwargs.get(bad):
            raise ValueError(f"{where}: {bad} is not supported with the global normaliser")
    if symmetric and state.log_u.shape[0] != 2:
        raise ValueError(f"{where}: symmetric=True needs GlobalNormalizer(towers=2), got towers={state.log_u.shape[0]}")
    if not isinstance(anchors, Tensor) or anchors.dim() != 2:
        raise ValueError(f"{where}: anchors must be a (N, d) tensor")
    index = state.check_index(index, anchors.shape[0], where)
    update = torch.is_grad_enabled() and state.training
    tau = float(temperature)
    value, grad = _direction(anchors, positives, negatives, state, 0, index, tau, update, kwargs)
    if symmetric:
        v2, g2 = _direction(positives, anchors, None, state, 1, index, tau, update, kwargs)
        value, grad = 0.5 * (value + v2), 0.5 * (grad + g2)
    rows = value + (grad - grad.detach())
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.mean()
