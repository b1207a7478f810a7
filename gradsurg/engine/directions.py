"""The directions of a loss: written once, used by the front door."""
from __future__ import annotations

from torch import Tensor


def directions(x: Tensor, c: Tensor, symmetric: bool,
               reverse_candidates: Tensor | None = None) -> list[tuple[Tensor, Tensor, float]]:
    """``[(anchors, candidates, factor)]``: ``(x, c, 1)``, or with ``symmetric`` the mean of
    anchors -> candidates and positives -> anchors: ``(x, c, 1/2), (c[:N], x, 1/2)``.

    Row i of each direction has its positive at candidate i (``c[i]`` for ``x[i]``,
    ``x[i]`` for ``c[i]``). ``reverse_candidates`` replaces ``x`` as the second
    direction's candidates (the anchors of every rank, own first, when gathered)."""
    if not symmetric:
        return [(x, c, 1.0)]
    return [(x, c, 0.5), (c[: x.shape[0]], x if reverse_candidates is None else reverse_candidates, 0.5)]
