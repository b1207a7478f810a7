r"""The paradigm objective with stop-gradient negatives (the reference's "sg").

docs/objectives.md (SG): a paradigm (GD, W, R) applied symmetrically, anchors
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

import math

import torch
from torch import Tensor, nn

from ..components import dissipation as D
from ..components import ratio as R
from ..components import weight as W
from ..engine import pairwise
from ..engine.validation import check_embeddings
from ..paradigm import Paradigm
from ..components._rows import Rows
from ._common import check_form, format_switches, parse_switches, real

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

    ``modified``: the default (all three switches) is the paper's sg; ``modified=""`` or
    ``None`` is the neutral paradigm (GD = 1, uniform W, R = 1), the "(ori)" row of an
    ablation (the trainer and ``gradsurg ablate`` pass ``modified=""`` when a config's
    ``modified`` is null, so the label and the objective agree).

    ``form="reference"``: the exact gradient of the paper's code. There only ``w_gd``
    switches anything (the margin mask on the cross-view similarities ``s = u v^T``:
    ``1[s_ii - max_{j!=i} s_ij < margin]`` per anchor row, and per column for the
    reverse direction); the weights are always the softmax over the other rows at
    ``temperature`` (or ``max(s, 1e-4)^int(power)``, uniform when ``int(power) == 0``)
    and the ratio is always ``ratio``. Each direction is averaged with ``.mean()``
    over the kept rows: ``1 / (N^2)``, or ``1 / (active rows x N)`` under ``w_gd``
    (no active row: zero gradient, where the reference's empty mean is NaN). The
    loss value is the reference's. ``negatives`` are not accepted (the reference has
    two views only); ``paradigm=`` cannot be combined with it.
    """

    name = "sg"

    def __init__(self, margin: float = 0.30, temperature: float | None = 0.05, power: float | None = None,
                 ratio: float = 1.0, *, modified="w_gd,w_w,w_r", paradigm: Paradigm | None = None,
                 form: str = "default"):
        super().__init__()
        if paradigm is not None and not isinstance(paradigm, Paradigm):
            raise TypeError(f"SG: paradigm must be a gradsurg.Paradigm, got {type(paradigm).__name__}")
        self.form = check_form(form, "SG")
        self.switches = parse_switches(modified, "SG")
        if self.form == "reference":
            if paradigm is not None:
                raise ValueError("SG: form='reference' is the paper's own sg; it takes no paradigm=")
            self.margin = real("margin", margin, "SG", low=0.0, high=2.0)
            self.temperature = real("temperature", temperature, "SG", low=0.0, strict_low=True, allow_none=True)
            self.power = real("power", power, "SG", low=0.0, strict_low=True, allow_none=True)
            self.ratio = real("ratio", ratio, "SG", low=0.0)
            if self.temperature is None and self.power is None:
                raise ValueError("SG: give temperature (softmax weights) or power (power weights)")
            self.paradigm = None
            return
        self.paradigm = paradigm if paradigm is not None else sg_paradigm(
            margin, temperature, power, ratio, self.switches)

    @property
    def modified(self) -> str:
        return format_switches(self.switches)

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        negatives = check_embeddings(anchors, positives, negatives, symmetric=True, where="SG")
        if negatives is not None and self.form == "reference":
            raise ValueError("SG: form='reference' takes no extra negatives (the paper's sg has two views); "
                             "pass negatives=None")
        candidates = positives if negatives is None else torch.cat([positives, negatives], dim=0)
        return pairwise.apply(anchors, candidates, self, symmetric=self.form != "reference")

    # -- the reference form ----------------------------------------------------------
    def _reference_weights(self, s: Tensor) -> Tensor:
        """Row weights over ``j != i`` of the similarity rows ``s`` (diagonal 0)."""
        if self.power is not None and self.temperature is None:
            p = int(self.power)
            if p == 0:
                w = torch.ones_like(s)
            else:
                w = s.clamp(min=1e-4).pow(p)
            w.diagonal().zero_()
            return w / w.sum(dim=1, keepdim=True)
        return W.Softmax(self.temperature)(Rows(s.clone(), 0))

    def _reference_direction(self, s: Tensor, gate_on: bool):
        """One direction (rows anchors, columns candidates) of the reference: per-row loss
        ``sum_j W_ij s_ij - ratio s_ii`` times its mean's scale, the gradient coefficients
        ``G`` (d loss / d s, rows x columns) of the whole direction."""
        n = s.shape[0]
        w = self._reference_weights(s)
        rows = (w * s).sum(dim=1) - self.ratio * s.diagonal()
        if gate_on:
            diag = s.diagonal()
            others = s.clone()
            others.diagonal().fill_(-math.inf)
            nearest = others.amax(dim=1)
            keep = ((diag - nearest) < self.margin).to(s.dtype)
            active = float(keep.sum())
            scale = keep / (active * n) if active > 0 else keep
        else:
            scale = torch.full((n,), 1.0 / n**2, dtype=s.dtype, device=s.device)
        g = w * scale[:, None]
        g.diagonal().sub_(self.ratio * scale)
        return rows * scale, g

    def _reference_forward(self, u: Tensor, v: Tensor, row_scale):
        n = u.shape[0]
        s = u @ v.T
        gate_on = "w_gd" in self.switches
        loss_f, g_f = self._reference_direction(s, gate_on)
        loss_r, g_r = self._reference_direction(s.T.contiguous(), gate_on)
        loss = n * (loss_f + loss_r)
        if row_scale is None:
            return loss, None, None
        factor = row_scale * n
        if isinstance(factor, Tensor) and factor.dim() == 1:
            g_f, g_r = g_f * factor[:, None], g_r * factor[:, None]
        else:
            g_f, g_r = g_f * factor, g_r * factor
        # forward: rows u (gradient), columns v held constant except the diagonal (the positive);
        # reverse: rows v, columns u likewise
        idx = torch.arange(n, device=u.device)
        du = g_f @ v + g_r[idx, idx][:, None] * v
        dv = g_r @ u + g_f[idx, idx][:, None] * u
        return loss, du, dv

    def unit_forward(self, u: Tensor, c: Tensor, row_scale):
        """One direction; the front door's ``symmetric`` averages the two. The reference form
        is called once (``symmetric=False`` in :meth:`forward`) and forms both of its directions
        itself (its scaling is not the mean of two directions)."""
        if self.form == "reference":
            return self._reference_forward(u, c, row_scale)
        return pairwise.stop_gradient_direction(u, c, self.paradigm, row_scale)

    def extra_repr(self) -> str:
        if self.form == "reference":
            return (f"form='reference', modified={self.modified!r}, margin={self.margin!r}, "
                    f"temperature={self.temperature!r}, power={self.power!r}, ratio={self.ratio!r}")
        return f"{self.paradigm!r}"


def sg(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *, margin: float = 0.30,
       temperature: float | None = 0.05, power: float | None = None, ratio: float = 1.0,
       modified="w_gd,w_w,w_r", paradigm: Paradigm | None = None, form: str = "default") -> Tensor:
    """The symmetric stop-gradient paradigm objective (see the module docstring and :class:`SG`)."""
    return SG(margin, temperature, power, ratio, modified=modified, paradigm=paradigm,
              form=form)(anchors, positives, negatives)
