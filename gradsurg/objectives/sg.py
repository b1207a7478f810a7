r"""The paradigm objective with stop-gradient negatives (the reference's "sg").

PARADIGM.md section 4: a paradigm (GD, W, R) applied symmetrically, anchors
against candidates and then positives against anchors, with the negatives'
side held constant in each direction and the positive similarity carrying
gradient to both sides. For anchor ``u_i`` (candidates ``v``):

.. math::

    \frac{\partial L}{\partial u_i} = \tfrac{1}{2N}\Big[ GD_i \sum_{j \ne i} W_{ij} v_j
        - GD_i R_i v_i - GD'_i R'_i v_i \Big]

where the primed components are those of row i of the reverse direction
(``v_i`` against the anchors). With the default constant ratio the pull on
each side is therefore ``R (GD_i + GD'_i)``: about twice the one-sided pull.

Knobs (the reference's): ``margin`` (GD = ``1[s_ii - max_{j!=i} s_ij < m]``),
``temperature`` (W = softmax over negatives) or ``power`` (W =
``max(s, 1e-4)^p`` normalised), ``ratio`` (R, constant). The switches select
which knobs are active (default all three); a switched-off component is the
neutral one: GD = 1, uniform W, R = 1. Any :class:`gradsurg.Paradigm` can be
given instead via ``paradigm=``.
"""
from __future__ import annotations

from torch import Tensor, nn
import torch

from ..components import dissipation as D
from ..components import ratio as R
from ..components import weight as W
from ..engine import pairwise
from ..engine.validation import check_embeddings
from ..paradigm import Paradigm
from ._common import format_switches, parse_switches, real

__all__ = ["SG", "sg", "sg_paradigm"]


def sg_paradigm(margin: float = 0.30, temperature: float | None = 0.05, power: float | None = None,
                ratio: float = 1.0, modified="w_gd,w_w,w_r") -> Paradigm:
    """The :class:`Paradigm` of the sg objective's knobs."""
    switches = parse_switches(modified, "sg")
    margin = real("margin", margin, "sg", low=0.0, high=2.0)
    temperature = real("temperature", temperature, "sg", low=0.0, strict_low=True, allow_none=True)
    power = real("power", power, "sg", low=0.0, strict_low=True, allow_none=True)
    ratio = real("ratio", ratio, "sg", low=0.0)
    if "w_w" in switches and temperature is None and power is None:
        raise ValueError("sg: give temperature (softmax weights) or power (power weights) for w_w")
    gd = D.Margin(margin) if "w_gd" in switches else D.Constant(1.0)
    if "w_w" not in switches:
        w = W.Uniform()
    elif power is not None:
        w = W.Power(power)
    else:
        w = W.Softmax(temperature)
    r = R.Constant(ratio if "w_r" in switches else 1.0)
    return Paradigm(gd, w, r)


class SG(nn.Module):
    """Module form of :func:`sg`: ``forward(anchors, positives, negatives=None)``.

    Extra ``negatives`` (K x d) join the candidates of the first direction and
    receive no gradient (they are negatives only).
    """

    name = "sg"

    def __init__(self, margin: float = 0.30, temperature: float | None = 0.05, power: float | None = None,
                 ratio: float = 1.0, *, modified="w_gd,w_w,w_r", paradigm: Paradigm | None = None):
        super().__init__()
        if paradigm is not None and not isinstance(paradigm, Paradigm):
            raise TypeError(f"SG: paradigm must be a gradsurg.Paradigm, got {type(paradigm).__name__}")
        self.switches = parse_switches(modified, "SG")
        self.paradigm = paradigm if paradigm is not None else sg_paradigm(
            margin, temperature, power, ratio, self.switches)

    @property
    def modified(self) -> str:
        return format_switches(self.switches)

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        negatives = check_embeddings(anchors, positives, negatives, symmetric=True, where="SG")
        candidates = positives if negatives is None else torch.cat([positives, negatives], dim=0)
        return pairwise.apply(anchors, candidates, self, symmetric=True)

    def unit_forward(self, u: Tensor, c: Tensor, row_scale):
        """One direction; the front door's ``symmetric`` averages the two."""
        return pairwise.stop_gradient_direction(u, c, self.paradigm, row_scale)

    def extra_repr(self) -> str:
        return f"{self.paradigm!r}"


def sg(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, margin: float = 0.30,
       temperature: float | None = 0.05, power: float | None = None, ratio: float = 1.0,
       modified="w_gd,w_w,w_r", paradigm: Paradigm | None = None) -> Tensor:
    """The symmetric stop-gradient paradigm objective (see the module docstring)."""
    return SG(margin, temperature, power, ratio, modified=modified, paradigm=paradigm)(anchors, positives, negatives)
