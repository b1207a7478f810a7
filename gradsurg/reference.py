"""Plain autograd formulas: the oracle every backend is tested against.

These materialise the full N x M similarity matrix and let autograd
differentiate the textbook loss. They are slow and memory hungry by design;
use them for tests and for small batches only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .components._rows import ANGLE_EPS, EUCLID_FLOOR, POWER_FLOOR, Rows
from .components.weight import Power
from .paradigm import Paradigm


def cosine_matrix(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
    """``s = normalize(anchors) normalize(cat(positives, negatives))^T`` (N x M)."""
    c = positives if negatives is None else torch.cat([positives, negatives])
    return F.normalize(anchors, dim=1) @ F.normalize(c, dim=1).T


def _negatives_only(s: Tensor, fill: float) -> Tensor:
    n = s.shape[0]
    eye = torch.zeros_like(s, dtype=torch.bool)
    eye[torch.arange(n), torch.arange(n)] = True
    return s.masked_fill(eye, fill)


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    return {"mean": rows.mean, "sum": rows.sum, "none": lambda: rows}[reduction]()


def _symmetric(fn, anchors, positives, negatives, symmetric, reduction, **kw):
    rows = fn(cosine_matrix(anchors, positives, negatives), **kw)
    if symmetric:
        rows = 0.5 * (rows + fn(cosine_matrix(positives, anchors), **kw))
    return _reduce(rows, reduction)


def info_nce_rows(s: Tensor, temperature: float = 0.05) -> Tensor:
    """``-log softmax_j(s_ij / tau)[i]``."""
    n = s.shape[0]
    return F.cross_entropy(s / temperature, torch.arange(n, device=s.device), reduction="none")


def arccon_rows(s: Tensor, temperature: float = 0.05, margin: float = math.radians(10)) -> Tensor:
    """InfoNCE with the positive logit ``cos(arccos(s_ii) + margin)``."""
    n = s.shape[0]
    idx = torch.arange(n, device=s.device)
    theta = torch.acos(s[idx, idx].clamp(-1 + ANGLE_EPS, 1 - ANGLE_EPS))
    logits = s.clone()
    logits[idx, idx] = torch.cos(theta + margin)
    return F.cross_entropy(logits / temperature, idx, reduction="none")


def mpt_rows(s: Tensor, margin: float = 0.23) -> Tensor:
    """``relu(max_{j!=i} s_ij - s_ii + m)``."""
    pos = s.diagonal()
    hardest = _negatives_only(s, -math.inf).max(dim=1).values
    return torch.relu(hardest - pos + margin)


def met_rows(s: Tensor, margin: float = 0.45) -> Tensor:
    """``relu(d_ii - min_{j!=i} d_ij + m)``, ``d = sqrt(max(2 - 2s, 1e-4))``."""
    d = (2 - 2 * s).clamp(min=EUCLID_FLOOR).sqrt()
    nearest = _negatives_only(d, math.inf).min(dim=1).values
    return torch.relu(d.diagonal() - nearest + margin)


def mat_rows(s: Tensor, margin: float = 0.15 * math.pi) -> Tensor:
    """``relu(theta_ii - min_{j!=i} theta_ij + m)``, ``theta = arccos(clamp(s))``."""
    theta = torch.acos(s.clamp(-1 + ANGLE_EPS, 1 - ANGLE_EPS))
    nearest = _negatives_only(theta, math.inf).min(dim=1).values
    return torch.relu(theta.diagonal() - nearest + margin)


def info_nce(anchors, positives, negatives=None, *, temperature=0.05, symmetric=False, reduction="mean"):
    return _symmetric(info_nce_rows, anchors, positives, negatives, symmetric, reduction, temperature=temperature)


def arccon(anchors, positives, negatives=None, *, temperature=0.05, margin=math.radians(10), symmetric=False,
           reduction="mean"):
    return _symmetric(arccon_rows, anchors, positives, negatives, symmetric, reduction,
                      temperature=temperature, margin=margin)


def mpt(anchors, positives, negatives=None, *, margin=0.23, symmetric=False, reduction="mean"):
    return _symmetric(mpt_rows, anchors, positives, negatives, symmetric, reduction, margin=margin)


def met(anchors, positives, negatives=None, *, margin=0.45, symmetric=False, reduction="mean"):
    return _symmetric(met_rows, anchors, positives, negatives, symmetric, reduction, margin=margin)


def mat(anchors, positives, negatives=None, *, margin=0.15 * math.pi, symmetric=False, reduction="mean"):
    return _symmetric(mat_rows, anchors, positives, negatives, symmetric, reduction, margin=margin)


def power_weights(s: Tensor, p: float) -> Tensor:
    """``max(s_ij, 1e-4)^p`` normalised over the negatives, written independently of
    ``weight.Power``: a float64 softmax of ``p log max(s_ij, 1e-4)`` (log-domain, so
    finite for any ``p``), returned in ``s``'s dtype."""
    logits = p * s.detach().double().clamp(min=POWER_FLOOR).log()
    return torch.softmax(_negatives_only(logits, -math.inf), dim=1).to(s.dtype)


def components(paradigm: Paradigm, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GD (N,), W (N x M), R (N,) of ``paradigm`` on a whole, detached similarity matrix
    (power weights from :func:`power_weights`, the others from the components)."""
    gd, w, r = paradigm.components(Rows(s.detach().clone(), 0))
    if isinstance(paradigm.weight, Power):
        w = power_weights(s, paradigm.weight.p)
    return gd, w, r


def surrogate_rows(s: Tensor, paradigm: Paradigm) -> Tensor:
    """``GD_i (sum_{j!=i} W_ij s_ij - R_i s_ii)`` with GD, W, R detached (stop-gradient)."""
    gd, w, r = components(paradigm, s)
    return gd * ((w * s).sum(dim=1) - r * s.diagonal())



def surrogate(anchors, positives, negatives=None, *, paradigm: Paradigm, symmetric=False, reduction="mean"):
    """The surrogate loss of any paradigm by plain autograd (its gradient is the paradigm's)."""
    return _symmetric(surrogate_rows, anchors, positives, negatives, symmetric, reduction, paradigm=paradigm)


#: the textbook formula of each preset, by ``Paradigm.loss_name``
LOSSES = {"info_nce": info_nce, "arccon": arccon, "mpt": mpt, "met": met, "mat": mat}
