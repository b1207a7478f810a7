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

from .components._rows import ANGLE_EPS, EUCLID_FLOOR, POWER_FLOOR
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


def info_nce_hardness_rows(s: Tensor, temperature: float = 0.05, strength: float = 5.0) -> Tensor:
    """sentence-transformers' MNRL with ``hardness_mode='all_negatives'``: cross-entropy of the logits
    ``s_ij / tau + strength * sg(s_ij)`` on the negatives (j != i) and ``s_ii / tau`` on the positive."""
    n = s.shape[0]
    idx = torch.arange(n, device=s.device)
    tilt = strength * s.detach()
    tilt[idx, idx] = 0.0
    return F.cross_entropy(s / temperature + tilt, idx, reduction="none")


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


def info_nce_hardness(anchors, positives, negatives=None, *, temperature=0.05, strength=5.0, symmetric=False,
                      reduction="mean"):
    return _symmetric(info_nce_hardness_rows, anchors, positives, negatives, symmetric, reduction,
                      temperature=temperature, strength=strength)


def mpt(anchors, positives, negatives=None, *, margin=0.23, symmetric=False, reduction="mean"):
    return _symmetric(mpt_rows, anchors, positives, negatives, symmetric, reduction, margin=margin)


def met(anchors, positives, negatives=None, *, margin=0.45, symmetric=False, reduction="mean"):
    return _symmetric(met_rows, anchors, positives, negatives, symmetric, reduction, margin=margin)


def mat(anchors, positives, negatives=None, *, margin=0.15 * math.pi, symmetric=False, reduction="mean"):
    return _symmetric(mat_rows, anchors, positives, negatives, symmetric, reduction, margin=margin)


def siglip_rows(s: Tensor, scale=10.0, bias=-10.0) -> Tensor:
    """``-sum_j log sigmoid(z_ij (t s_ij + b))``, ``z = +1`` on the positive and -1 elsewhere."""
    n = s.shape[0]
    sign = -torch.ones_like(s)
    sign[torch.arange(n), torch.arange(n)] = 1.0
    return -F.logsigmoid(sign * (s * scale + bias)).sum(dim=1)


def siglip(anchors, positives, negatives=None, *, scale=10.0, bias=-10.0, symmetric=False, reduction="mean"):
    return _symmetric(siglip_rows, anchors, positives, negatives, symmetric, reduction, scale=scale, bias=bias)


# -- GD, W and R from their textbook formulas (docs/paradigm.md, "Components") -------------------------
# Written on the whole detached matrix, one formula per component class, without the
# engine's Rows or the components' own methods: the oracle of the surrogate tests.

def _angle(s: Tensor) -> Tensor:
    return torch.acos(s.clamp(-1 + ANGLE_EPS, 1 - ANGLE_EPS))


def _inv_sin(s: Tensor) -> Tensor:
    """``1 / sin(theta(s))`` inside the clamp, 0 on it (the slope of theta)."""
    inside = (s >= -1 + ANGLE_EPS) & (s <= 1 - ANGLE_EPS)
    return torch.where(inside, 1.0 / torch.sin(_angle(s)), torch.zeros_like(s))


def _dist(s: Tensor) -> Tensor:
    return (2 - 2 * s).clamp(min=EUCLID_FLOOR).sqrt()


def _inv_dist(s: Tensor) -> Tensor:
    """``1 / d(s)`` off the clamp, 0 on it (the slope of d)."""
    return torch.where(2 - 2 * s >= EUCLID_FLOOR, 1.0 / _dist(s), torch.zeros_like(s))


def _negative_stats(s: Tensor):
    n, m = s.shape
    idx = torch.arange(n)
    neg = torch.ones(n, m, dtype=torch.bool)
    neg[idx, idx] = False
    pos = s[idx, idx]
    hardest_value, hardest_index = s.masked_fill(~neg, -math.inf).max(dim=1)
    return neg, pos, hardest_value, hardest_index


def _lse(s: Tensor, neg: Tensor, tau: float) -> Tensor:
    return torch.logsumexp((s / tau).masked_fill(~neg, -math.inf), dim=1)


def _dissipation(comp, s, neg, pos, hard):
    name, p = type(comp).__name__, comp.params()
    if name == "InfoNCE":
        return torch.sigmoid(_lse(s, neg, p["temperature"]) - pos / p["temperature"]) / p["temperature"]
    if name == "InfoNCEHardness":
        tau = p["temperature"]
        return torch.sigmoid(_lse(s, neg, 1.0 / (1.0 / tau + p["strength"])) - pos / tau) / tau
    if name == "ArcCon":
        tau = p["temperature"]
        return torch.sigmoid(_lse(s, neg, tau) - torch.cos(_angle(pos) + p["margin"]) / tau) / tau
    if name == "Margin":
        return (pos - hard < p["margin"]).to(s.dtype)
    if name == "EuclideanMargin":
        return (_dist(hard) - _dist(pos) < p["margin"]).to(s.dtype) * _inv_dist(hard)
    if name == "AngularMargin":
        return (_angle(hard) - _angle(pos) < p["margin"]).to(s.dtype) * _inv_sin(hard)
    if name == "Constant":
        return torch.full_like(pos, p["value"])
    if name == "Sigmoid":
        return p["scale"] * torch.sigmoid(p["scale"] * s + p["bias"]).masked_fill(~neg, 0.0).sum(dim=1)
    raise ValueError(f"reference: no textbook formula for dissipation {comp!r}")


def power_weights(s: Tensor, p: float, neg: Tensor | None = None) -> Tensor:
    """``max(s_ij, 1e-4)^p`` normalised over the negatives (``neg``; default ``j != i``),
    written as a float64 softmax of ``p log max(s_ij, 1e-4)``: log-domain, so finite for any
    ``p`` (the plain power underflows to 0/0 in float32 from p ~ 10). In ``s``'s dtype."""
    if neg is None:
        neg = _negative_stats(s)[0]
    logits = p * s.detach().double().clamp(min=POWER_FLOOR).log()
    return torch.softmax(logits.masked_fill(~neg, -math.inf), dim=1).to(s.dtype)


def _weight(comp, s, neg, hard_index):
    name, p = type(comp).__name__, comp.params()
    n, m = s.shape
    if name == "Softmax":
        return torch.softmax((s / p["temperature"]).masked_fill(~neg, -math.inf), dim=1)
    if name == "Hardest":
        w = torch.zeros_like(s)
        w[torch.arange(n), hard_index] = 1.0
        return w
    if name == "Power":
        return power_weights(s, p["p"], neg)
    if name == "Uniform":
        return neg.to(s.dtype) / (m - 1)
    if name == "Sigmoid":
        f = torch.sigmoid(p["scale"] * s + p["bias"]).masked_fill(~neg, 0.0)
        return f / f.sum(dim=1, keepdim=True)
    raise ValueError(f"reference: no textbook formula for weight {comp!r}")


def _ratio(comp, pos, hard, s=None, neg=None):
    name, p = type(comp).__name__, comp.params()
    if name == "Sigmoid":
        total = torch.sigmoid(p["scale"] * s + p["bias"]).masked_fill(~neg, 0.0).sum(dim=1)
        return torch.sigmoid(-(p["scale"] * pos + p["bias"])) / total
    if name == "Constant":
        return torch.full_like(pos, p["value"])
    if name == "Arc":
        return torch.sin(_angle(pos) + p["margin"]) * _inv_sin(pos)
    if name == "Euclidean":
        return _dist(hard) * _inv_dist(pos)
    if name == "Angular":
        return torch.sin(_angle(hard)) * _inv_sin(pos)
    raise ValueError(f"reference: no textbook formula for ratio {comp!r}")


def components(paradigm: Paradigm, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """GD (N,), W (N x M), R (N,) of ``paradigm`` on a whole similarity matrix, from the
    textbook formulas (independent of :meth:`Paradigm.components`)."""
    s = s.detach()
    neg, pos, hard, hard_index = _negative_stats(s)
    return (_dissipation(paradigm.dissipation, s, neg, pos, hard), _weight(paradigm.weight, s, neg, hard_index),
            _ratio(paradigm.ratio, pos, hard, s, neg))


def surrogate_rows(s: Tensor, paradigm: Paradigm) -> Tensor:
    """``GD_i (sum_{j!=i} W_ij s_ij - R_i s_ii)`` with GD, W, R detached (stop-gradient)."""
    gd, w, r = components(paradigm, s)
    return gd * ((w * s).sum(dim=1) - r * s.diagonal())


def surrogate(anchors, positives, negatives=None, *, paradigm: Paradigm, symmetric=False, reduction="mean"):
    """The surrogate loss of any paradigm by plain autograd (its gradient is the paradigm's)."""
    return _symmetric(surrogate_rows, anchors, positives, negatives, symmetric, reduction, paradigm=paradigm)


#: the textbook formula of each preset, by ``Paradigm.loss_name``
LOSSES = {"info_nce": info_nce, "arccon": arccon, "info_nce_hardness": info_nce_hardness, "mpt": mpt, "met": met, "mat": mat, "siglip": siglip}
