r"""The original non-contrastive objectives, as plain autograd on two views.

Each takes raw embeddings ``x``, ``y`` (N x d) of the two views of a batch and
returns a scalar. ``u = x/|x|``, ``v = y/|y|``; ``a = u u^T``, ``b = v v^T``.

=============== ============================================================================
objective       value
=============== ============================================================================
align_uniform   ``mean_i |u_i - v_i|^alpha + lam * (U(u) + U(v)) / 2``,
                ``U(u) = log mean_{i<j} exp(-t |u_i - u_j|^2)`` (Wang & Isola 2020)
mhe             ``lam * (LSE_{i>j} a_ij + LSE_{i>j} b_ij) + mean_i (2 - 2 u_i . v_i)``
mhs             ``lam * (-mean_i min_{j!=i} |u_i - sg(v_j)| - mean_i min_{j!=i} |v_i - sg(u_j)|)
                + mean_i (2 - 2 u_i . v_i)``, distances ``sqrt(|.|^2 + eps)``
barlow_twins    ``sum_d (1 - C_dd)^2 + lam * sum_{d!=e} C_de^2``, ``C = z1^T z2 / N`` (Zbontar 2021)
vicreg          ``sim * mse(z1, z2) + std * (hinge(z1) + hinge(z2)) / 2 + cov * (c(z1) + c(z2))``
                (Bardes 2022): ``hinge(z) = mean_d relu(1 - sqrt(Var_d z + eps))``,
                ``c(z) = sum_{d!=e} Cov(z)_de^2 / d``
=============== ============================================================================

Barlow Twins and VICReg work on ``z = u`` (L2-normalised rows, the paper's
setting) when ``normalize=True``; with ``normalize=False`` Barlow Twins
standardises each dimension over the batch (its published batch norm) and
VICReg uses the raw embeddings (as published).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["align_uniform", "mhe", "mhs", "barlow_twins", "vicreg", "BN_EPS"]

#: the batch-norm epsilon of Barlow Twins' per-dimension standardisation
BN_EPS = 1e-5


def _lower_pairs(m: Tensor) -> Tensor:
    n = m.shape[0]
    i, j = torch.tril_indices(n, n, offset=-1, device=m.device)
    return m[i, j]


def uniformity(u: Tensor, t: float = 2.0) -> Tensor:
    """``log mean_{i<j} exp(-t |u_i - u_j|^2)`` of unit rows (``|u_i - u_j|^2 = 2 - 2 u_i.u_j``)."""
    sq = _lower_pairs(2.0 - 2.0 * (u @ u.T))
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def align_uniform(x: Tensor, y: Tensor, *, alpha: float = 2.0, t: float = 2.0, lam: float = 1.0) -> Tensor:
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    align = (2.0 - 2.0 * (u * v).sum(dim=1)).clamp(min=0).pow(alpha / 2).mean()
    return align + lam * 0.5 * (uniformity(u, t) + uniformity(v, t))


def mhe(x: Tensor, y: Tensor, *, lam: float = 10.0) -> Tensor:
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    energy = torch.logsumexp(_lower_pairs(u @ u.T), dim=0) + torch.logsumexp(_lower_pairs(v @ v.T), dim=0)
    return lam * energy + (2.0 - 2.0 * (u * v).sum(dim=1)).mean()


def _nearest_other(u: Tensor, c: Tensor, eps: float) -> Tensor:
    """``min_{j!=i} sqrt(|u_i - c_j|^2 + eps)`` with ``c`` held constant."""
    c = c.detach()
    sq = (u * u).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * (u @ c.T)
    d = (sq.clamp(min=0) + eps).sqrt()
    eye = torch.eye(u.shape[0], dtype=torch.bool, device=u.device)
    return d.masked_fill(eye, math.inf).min(dim=1).values


def mhs(x: Tensor, y: Tensor, *, lam: float = 1.0, eps: float = 1e-4) -> Tensor:
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    separation = -_nearest_other(u, v, eps).mean() - _nearest_other(v, u, eps).mean()
    return lam * separation + (2.0 - 2.0 * (u * v).sum(dim=1)).mean()


def _standardize(z: Tensor) -> Tensor:
    return (z - z.mean(dim=0)) / (z.var(dim=0, unbiased=False) + BN_EPS).sqrt()


def barlow_twins(x: Tensor, y: Tensor, *, lam: float = 5e-3, normalize: bool = True) -> Tensor:
    if normalize:
        z1, z2 = F.normalize(x, dim=1), F.normalize(y, dim=1)
    else:
        z1, z2 = _standardize(x), _standardize(y)
    c = z1.T @ z2 / x.shape[0]
    diag = c.diagonal()
    return (1.0 - diag).pow(2).sum() + lam * (c.pow(2).sum() - diag.pow(2).sum())


def _variance_hinge(z: Tensor, eps: float) -> Tensor:
    return F.relu(1.0 - (z.var(dim=0) + eps).sqrt()).mean()


def _off_diagonal_cov(z: Tensor) -> Tensor:
    n, d = z.shape
    zc = z - z.mean(dim=0)
    cov = zc.T @ zc / (n - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg(x: Tensor, y: Tensor, *, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
           normalize: bool = True, eps: float = 1e-4) -> Tensor:
    if normalize:
        z1, z2 = F.normalize(x, dim=1), F.normalize(y, dim=1)
    else:
        z1, z2 = x, y
    invariance = F.mse_loss(z1, z2)
    variance = 0.5 * (_variance_hinge(z1, eps) + _variance_hinge(z2, eps))
    covariance = _off_diagonal_cov(z1) + _off_diagonal_cov(z2)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


# -- the non-Gram parts (used to verify the decompositions' residuals) ---------------

def barlow_twins_diagonal_part(x: Tensor, y: Tensor, *, lam: float = 5e-3) -> Tensor:
    """``(1 - lam) sum_d C_dd^2`` on unit rows: Barlow Twins' coordinate-wise term."""
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return (1.0 - lam) * (u.T @ v / x.shape[0]).diagonal().pow(2).sum()


def vicreg_coordinate_part(x: Tensor, y: Tensor, *, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                           eps: float = 1e-4) -> Tensor:
    """VICReg's terms that are not functions of the Gram matrices (unit rows): the variance hinge
    and minus the covariance diagonal, ``std * hinge - cov/d * sum_d Cov_dd^2`` for both views."""
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    out = std_coeff * 0.5 * (_variance_hinge(u, eps) + _variance_hinge(v, eps))
    for z in (u, v):
        n, d = z.shape
        zc = z - z.mean(dim=0)
        cov = zc.T @ zc / (n - 1)
        out = out - cov_coeff * cov.diagonal().pow(2).sum() / d
    return out
