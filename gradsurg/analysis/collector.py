r"""Per-step training statistics of the paradigm (docs/diagnostics.md).

    >>> import torch
    >>> from gradsurg.analysis import StatsCollector
    >>> collect = StatsCollector()              # InfoNCE(0.05) components
    >>> stats = collect(torch.randn(32, 64), torch.randn(32, 64))
    >>> sorted(stats)[:3]
    ['alignment', 'dissipated_share', 'gd_mean']

Every call computes one N x M similarity matrix of the batch under
``torch.no_grad`` and returns plain floats:

=================== =====================================================================
key                 meaning
=================== =====================================================================
dissipated_share    share of anchors whose gate (``1 - p_ii`` for softmax dissipations,
                    the margin indicator for margin ones) is below ``dissipated_below``
gd_mean             mean ``GD_i``
hardest_weight      mean over anchors of ``max_j W_ij`` (the hardest negative's weight)
ratio_mean          mean ``R_i``
pos_cos             mean ``s_ii``
neg_cos             mean ``s_ij`` over the negatives ``j != i``
hardest_neg_cos     mean over anchors of ``max_{j!=i} s_ij``
alignment           ``mean_i |u_i - v_i|^2``
uniformity          ``log mean_{i<j} exp(-2 |u_i - u_j|^2)`` over the anchors
=================== =====================================================================

The GD / W / R statistics are those of the ``paradigm`` given: a
:class:`gradsurg.Paradigm`, or a loss module carrying one (``.paradigm``, e.g.
:class:`gradsurg.ParadigmLoss`, the ``sg`` objective). For a non-contrastive
objective of :mod:`gradsurg.objectives` they are its own push / pull reading
(within-view negatives; the gate is its ``w_gd`` gate). Without a paradigm
(``None``, or a module the collector cannot read) they are InfoNCE's at
temperature 0.05 -- SimCSE's loss -- which makes runs of different losses
comparable.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..components._rows import Rows
from ..engine.normalize import normalize
from ..engine.torch_backend import compute_dtype
from ..paradigm import Paradigm, info_nce
from .simulation import gate

__all__ = ["StatsCollector", "embedding_statistics"]

KEYS = ("dissipated_share", "gd_mean", "hardest_weight", "ratio_mean", "pos_cos", "neg_cos",
        "hardest_neg_cos", "alignment", "uniformity")


def embedding_statistics(u: Tensor, v: Tensor, s: Tensor) -> dict[str, float]:
    """Cosine, alignment and uniformity statistics from unit rows and ``s = u c^T``."""
    n, m = s.shape
    idx = torch.arange(n, device=s.device)
    pos = s[idx, idx]
    neg = s.clone()
    neg[idx, idx] = -math.inf
    hardest = neg.amax(dim=1)
    neg_mean = (s.sum(dim=1) - pos) / (m - 1)
    sq = (2.0 - 2.0 * (u @ u.T)).clamp(min=0)
    i, j = torch.triu_indices(n, n, offset=1, device=s.device)
    uniformity = (torch.logsumexp(-2.0 * sq[i, j], dim=0) - math.log(i.numel())) if i.numel() else s.new_zeros(())
    return {
        "pos_cos": float(pos.mean()),
        "neg_cos": float(neg_mean.mean()),
        "hardest_neg_cos": float(hardest.mean()),
        "alignment": float((u - v).pow(2).sum(dim=1).mean()),
        "uniformity": float(uniformity),
    }


class StatsCollector:
    """``collector(anchors, positives, negatives=None) -> dict[str, float]`` (see the module docstring).

    Args:
        paradigm: a :class:`gradsurg.Paradigm`, a module with ``.paradigm``,
            a non-contrastive objective, or None (InfoNCE at 0.05).
        dissipated_below: gate below which an anchor counts as dissipated.

    The last result is kept in ``.last``.
    """

    def __init__(self, paradigm=None, *, dissipated_below: float = 0.01):
        self.objective = None
        if isinstance(paradigm, Paradigm):
            self.paradigm = paradigm
        elif isinstance(getattr(paradigm, "paradigm", None), Paradigm):
            self.paradigm = paradigm.paradigm
        else:
            self.paradigm = info_nce(0.05)
            if paradigm is not None and callable(getattr(paradigm, "components", None)) \
                    and hasattr(paradigm, "switches"):
                self.objective = paradigm
        if not (isinstance(dissipated_below, (int, float)) and 0 <= dissipated_below <= 1):
            raise ValueError(f"StatsCollector: dissipated_below must be in [0, 1], got {dissipated_below!r}")
        self.dissipated_below = float(dissipated_below)
        self.last: dict[str, float] = {}

    @torch.no_grad()
    def __call__(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> dict[str, float]:
        for name, t in (("anchors", anchors), ("positives", positives)):
            if not isinstance(t, Tensor) or t.dim() != 2:
                raise ValueError(f"StatsCollector: {name} must be a 2-D tensor (N, d)")
        if positives.shape != anchors.shape:
            raise ValueError(
                f"StatsCollector: positives must have the shape of anchors {tuple(anchors.shape)}, "
                f"got {tuple(positives.shape)}"
            )
        if anchors.shape[0] < 2 and negatives is None:
            raise ValueError("StatsCollector: need N >= 2 anchors (or extra negatives) for negative statistics")
        cd = compute_dtype(anchors.dtype)
        u = normalize(anchors.detach().to(cd))[0]
        v = normalize(positives.detach().to(cd))[0]
        c = v if negatives is None else torch.cat([v, normalize(negatives.detach().to(cd))[0]])
        s = u @ c.T
        out = self._components(anchors, positives, negatives, s)
        out.update(embedding_statistics(u, v, s))
        self.last = out
        return out

    def _components(self, anchors, positives, negatives, s) -> dict[str, float]:
        if self.objective is not None and negatives is None:
            try:
                first, _ = self.objective.components(anchors.detach(), positives.detach())
            except ValueError:  # e.g. Barlow Twins without normalisation: no reading
                pass
            else:
                gd, w, r = first.dissipation, first.weight, first.ratio
                return {
                    "dissipated_share": float((first.gate < self.dissipated_below).double().mean()),
                    "gd_mean": float(gd.mean()),
                    "hardest_weight": float(w.amax(dim=1).mean()),
                    "ratio_mean": float(r.mean()),
                }
        rows = Rows(s.clone(), 0)
        g = gate(self.paradigm.dissipation, rows)
        gd, w, r = self.paradigm.components(rows)
        return {
            "dissipated_share": float((g < self.dissipated_below).double().mean()),
            "gd_mean": float(gd.mean()),
            "hardest_weight": float(w.amax(dim=1).mean()),
            "ratio_mean": float(r.mean()),
        }
