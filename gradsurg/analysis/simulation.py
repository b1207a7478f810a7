r"""The paper's simulations of GD, W and R (docs/diagnostics.md), vectorised.

A simulated batch row has one positive at angle ``theta_pos`` and
``batch_size - 1`` negatives at angles ``theta_neg``; its similarities are the
cosines. The components are evaluated by the core itself (the paradigm's
dissipation, weight and ratio on a :class:`~gradsurg.components.Rows` whose
positive sits in column 0), on whole blocks of rows at once:

* :func:`gd_surface` -- expected GD over a grid of (mean positive angle, mean
  negative angle), positives ~ N(mu_pos, 0.05), negatives ~ N(mu_neg, 0.10);
  by default the *gate* (the share of the full gradient that is left:
  ``1 - p_ii`` for the softmax losses, the margin indicator for the margin
  losses), as the paper plots it.
* :func:`weight_curves` -- expected largest softmax weight ``max_j W_ij`` vs.
  the mean negative angle, one curve per temperature.
* :func:`ratio_surface` -- a ratio over (theta_pos, theta_neg) and the mask of
  the dissipated region.

The grid is processed one positive mean at a time (all negative means and all
batches of it in one tensor); the negatives' noise is drawn once per negative
mean and shared along the positive axis (common random numbers), which keeps
the surfaces smooth. No Python loop runs over cells or batches.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..components import dissipation as D
from ..components import weight as W
from ..components._base import Dissipation
from ..components._rows import Rows
from .. import paradigm as _presets
from ..paradigm import Paradigm

__all__ = ["FirstColumnRows", "gate", "resolve_paradigm", "gd_surface", "weight_curves", "ratio_surface",
           "PRESETS"]

#: preset name -> factory with the paper's defaults
PRESETS = {"info_nce": _presets.info_nce, "arccon": _presets.arccon, "mpt": _presets.mpt,
           "met": _presets.met, "mat": _presets.mat}


class FirstColumnRows(Rows):
    """Rows of simulated similarities whose positive is column 0 of every row."""

    def __init__(self, s: Tensor):
        super().__init__(s, 0)
        self.cols = torch.zeros_like(self.rows)

    def set_positive(self, values: Tensor) -> None:
        """Replace the positives (column 0) and forget what was derived from them.

        The negatives' statistics (hardest negative, log-sum-exps) exclude
        column 0, so they stay valid and are not recomputed.
        """
        self.s[:, 0] = values
        self.__dict__.pop("pos", None)


def gate(dissipation: Dissipation, rows: Rows) -> Tensor:
    """The share of the gradient an anchor keeps, in [0, 1].

    ``sigmoid(gap) = 1 - p_ii`` for the softmax dissipations (InfoNCE, ArcCon),
    ``1[hinge > 0]`` for the margin ones, ``1[GD > 0]`` otherwise.
    """
    if hasattr(dissipation, "gap"):
        return torch.sigmoid(dissipation.gap(rows))
    if hasattr(dissipation, "hinge"):
        return (dissipation.hinge(rows) > 0).to(rows.dtype)
    return (dissipation(rows) > 0).to(rows.dtype)


def resolve_paradigm(paradigm: Paradigm | str) -> Paradigm:
    if isinstance(paradigm, Paradigm):
        return paradigm
    if isinstance(paradigm, str) and paradigm in PRESETS:
        return PRESETS[paradigm]()
    raise ValueError(f"paradigm must be a gradsurg.Paradigm or one of {', '.join(PRESETS)}, got {paradigm!r}")


def _check_sizes(batch_size: int, num_batches: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (one positive and at least one negative), got {batch_size!r}")
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be an int >= 1, got {num_batches!r}")


def _as_angles(name: str, values, dtype) -> Tensor:
    t = torch.as_tensor(values, dtype=dtype).flatten()
    if t.numel() == 0 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be a non-empty sequence of finite angles (radians)")
    return t


def gd_surface(paradigm: Paradigm | str, pos_means, neg_means, *, pos_std: float = 0.05, neg_std: float = 0.10,
               batch_size: int = 128, num_batches: int = 1000, normalized: bool = True,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Expected GD (or its gate) over the grid ``pos_means x neg_means`` (radians), shape (P, Q)."""
    p = resolve_paradigm(paradigm)
    _check_sizes(batch_size, num_batches)
    pos_means = _as_angles("pos_means", pos_means, dtype)
    neg_means = _as_angles("neg_means", neg_means, dtype)
    q, b, k = neg_means.numel(), num_batches, batch_size - 1
    neg = torch.randn(q, b, k, generator=generator, dtype=dtype).mul_(neg_std).add_(neg_means[:, None, None]).cos_()
    pos = torch.randn(pos_means.numel(), b, generator=generator, dtype=dtype).mul_(pos_std)
    pos.add_(pos_means[:, None]).cos_()
    out = torch.empty(pos_means.numel(), q, dtype=dtype)
    block = torch.empty(q, b, batch_size, dtype=dtype)
    block[:, :, 1:] = neg
    block[:, :, 0] = 1.0
    del neg
    rows = FirstColumnRows(block.view(q * b, batch_size))
    for i in range(pos_means.numel()):  # one positive mean at a time: all Q x B rows at once
        rows.set_positive(pos[i].repeat(q))  # the negatives' statistics are computed once, then reused
        value = gate(p.dissipation, rows) if normalized else p.dissipation(rows)
        out[i] = value.view(q, b).mean(dim=1)
    return out


def weight_curves(neg_means, temperatures, *, neg_std: float = 0.10, batch_size: int = 128,
                  num_batches: int = 1000, pos_mean: float = 0.5, pos_std: float = 0.05,
                  gd_threshold: float = 0.01, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Expected ``max_j W_ij`` of the softmax weight at each temperature, shape (T, Q).

    Only batches whose InfoNCE gate at that temperature is at least
    ``gd_threshold`` count (a dissipated batch's weights do not matter), as in
    the reference simulation; a cell without such batches is NaN.
    """
    _check_sizes(batch_size, num_batches)
    neg_means = _as_angles("neg_means", neg_means, dtype)
    temps = [float(t) for t in temperatures]
    if not temps or any(not (t > 0 and math.isfinite(t)) for t in temps):
        raise ValueError(f"temperatures must be a non-empty sequence of positive numbers, got {temperatures!r}")
    q, b = neg_means.numel(), num_batches
    s = torch.empty(q, b, batch_size, dtype=dtype)
    s[:, :, 1:] = torch.randn(q, b, batch_size - 1, generator=generator, dtype=dtype).mul_(neg_std).add_(
        neg_means[:, None, None]).cos_()
    s[:, :, 0] = torch.randn(q, b, generator=generator, dtype=dtype).mul_(pos_std).add_(pos_mean).cos_()
    s = s.view(q * b, batch_size)
    out = torch.empty(len(temps), q, dtype=dtype)
    for t_i, tau in enumerate(temps):
        rows = FirstColumnRows(s.clone())
        keep = (gate(D.InfoNCE(tau), rows) >= gd_threshold).view(q, b)
        top = W.Softmax(tau)(rows).amax(dim=1).view(q, b)
        count = keep.sum(dim=1)
        mean = (top * keep).sum(dim=1) / count.clamp(min=1)
        out[t_i] = torch.where(count > 0, mean, torch.full_like(mean, math.nan))
    return out


def ratio_surface(paradigm: Paradigm | str, theta_pos, theta_neg, *, batch_size: int = 128,
                  threshold: float = 0.01, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``(R, mask)`` over ``theta_pos x theta_neg`` (radians), each (P, Q).

    Every negative of a row sits at ``theta_neg``. ``mask`` is True where the
    ratio does not act: the positive is farther than the negatives
    (``theta_pos > theta_neg``) or the anchor is dissipated (gate below
    ``threshold``).
    """
    p = resolve_paradigm(paradigm)
    _check_sizes(batch_size, 1)
    tp = _as_angles("theta_pos", theta_pos, dtype)
    tn = _as_angles("theta_neg", theta_neg, dtype)
    s = torch.empty(tp.numel(), tn.numel(), batch_size, dtype=dtype)
    s[:, :, 0] = tp.cos()[:, None]
    s[:, :, 1:] = tn.cos()[None, :, None]
    rows = FirstColumnRows(s.view(-1, batch_size))
    g = gate(p.dissipation, rows).view(tp.numel(), tn.numel())
    r = p.ratio(rows).view(tp.numel(), tn.numel())
    mask = (tp[:, None] > tn[None, :]) | (g < threshold)
    return r, mask
