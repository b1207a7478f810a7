"""Row statistics without the similarity matrix: what the kernels hand to the components.

Every dissipation and ratio of the core vocabulary is a function of a few
O(n) statistics of its row of ``s`` over the negatives: the positive ``s_ii``,
the hardest negative (value, index), log-sum-exps at a temperature and, for
SigLIP, the sums of ``sigmoid(t s_ij + b)`` and ``softplus(t s_ij + b)``.
:class:`RowStats` carries exactly these (computed elsewhere, e.g. by the
Triton kernels), so ``dissipation(stats)``, ``ratio.pull(stats, gd, dis)`` and
``Paradigm.row_loss(stats)`` work on it as on a :class:`~gradsurg.components.Rows`
chunk. It has no ``s``: a component that needs the matrix itself (a weight,
or a member outside the core vocabulary) fails with an ``AttributeError``
instead of reading a stand-in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of ``n`` anchors (rows ``start .. start + n`` of ``s``).

    Attributes:
        pos: (n,) ``s_ii``.
        hardest_value: (n,) ``max_{j != i} s_ij``.
        hardest_index: (n,) its index (lowest among ties), or None when not computed.
        lses: ``{temperature: (n,) LSE_{j != i}(s_ij / temperature)}`` for the
            temperatures that were computed.
        sigmoids: ``{(scale, bias): ((n,) sum_{j != i} sigmoid(t s_ij + b),
            (n,) sum_{j != i} softplus(t s_ij + b))}`` where computed.
        start: index of the first row (its positive is candidate ``start``).
    """

    pos: Tensor
    hardest_value: Tensor
    hardest_index: Tensor | None = None
    lses: dict = field(default_factory=dict)
    start: int = 0
    sigmoids: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.pos.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.pos.dtype

    @property
    def device(self) -> torch.device:
        return self.pos.device

    @property
    def hardest(self) -> tuple[Tensor, Tensor | None]:
        return self.hardest_value, self.hardest_index

    def lse(self, temperature: float) -> Tensor:
        """``LSE_{j != i}(s_ij / temperature)``, shape (n,)."""
        try:
            return self.lses[temperature]
        except KeyError:
            raise KeyError(
                f"RowStats: no log-sum-exp at temperature {temperature!r} was computed "
                f"(available: {sorted(self.lses)})"
            ) from None

    def _sigmoid(self, scale: float, bias: float) -> tuple[Tensor, Tensor]:
        try:
            return self.sigmoids[(scale, bias)]
        except KeyError:
            raise KeyError(
                f"RowStats: no sigmoid sums at (scale, bias) = {(scale, bias)!r} were computed "
                f"(available: {sorted(self.sigmoids)})"
            ) from None

    def sigmoid_total(self, scale: float, bias: float) -> Tensor:
        """``sum_{j != i} sigmoid(t s_ij + b)``, shape (n,)."""
        return self._sigmoid(scale, bias)[0]

    def softplus_total(self, scale: float, bias: float) -> Tensor:
        """``sum_{j != i} softplus(t s_ij + b)``, shape (n,)."""
        return self._sigmoid(scale, bias)[1]
