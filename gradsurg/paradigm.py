r"""A paradigm: one choice of dissipation (GD), weight (W) and ratio (R).

For anchor i and candidate j the paradigm sets

.. math::

    \frac{\partial L_i}{\partial s_{ij}} = GD_i \, (W_{ij} - [j = i] \, R_i)

and so ``dL_i/du_i = GD_i * sum_{j != i} W_ij (v_j - R_i v_i)``, the paper's
unified gradient. The value reported for a paradigm is the true loss when
its components are those of a known loss (InfoNCE, ArcCon, MPT, MET, MAT),
and otherwise the surrogate with exactly the set gradient,

.. math::

    L^{sur}_i = GD_i \Big( \sum_{j \ne i} W_{ij} s_{ij} - R_i s_{ii} \Big)

with GD, W and R held constant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import torch
from torch import Tensor

from .components import dissipation as D
from .components import ratio as R
from .components import weight as W
from .components._base import Dissipation, Ratio, Weight
from .components._rows import Rows


@dataclass(frozen=True)
class Paradigm:
    """A gradient built from a dissipation, a weight and a ratio.

    Example::

        >>> import gradsurg
        >>> from gradsurg import dissipation, weight, ratio
        >>> p = gradsurg.Paradigm(dissipation.Margin(0.3), weight.Softmax(0.05), ratio.Constant(1.5))
        >>> p.loss_name is None     # not a known loss: the value is the surrogate
        True
    """

    dissipation: Dissipation
    weight: Weight
    ratio: Ratio

    def __post_init__(self):
        for name, cls in (("dissipation", Dissipation), ("weight", Weight), ("ratio", Ratio)):
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise TypeError(
                    f"Paradigm: {name} must be a gradsurg.{name}.* component "
                    f"(an instance of {cls.__name__}), got {type(value).__name__}"
                )

    # -- which loss (if any) has exactly this gradient ------------------------
    @property
    def loss_name(self) -> str | None:
        """The name of the known loss whose gradient this paradigm is, else None."""
        d, w, r = self.dissipation, self.weight, self.ratio
        if isinstance(d, D.InfoNCE) and w == W.Softmax(d.temperature) and r == R.Constant(1.0):
            return "info_nce"
        if isinstance(d, D.ArcCon) and w == W.Softmax(d.temperature) and r == R.Arc(d.margin):
            return "arccon"
        if isinstance(d, D.InfoNCEHardness) and w == W.Softmax(d.lse_temperature) and r == R.Constant(1.0):
            return "info_nce_hardness"
        if isinstance(d, D.Margin) and isinstance(w, W.Hardest) and r == R.Constant(1.0):
            return "mpt"
        if isinstance(d, D.EuclideanMargin) and isinstance(w, W.Hardest) and isinstance(r, R.Euclidean):
            return "met"
        if isinstance(d, D.AngularMargin) and isinstance(w, W.Hardest) and isinstance(r, R.Angular):
            return "mat"
        if isinstance(d, D.Sigmoid) and w == W.Sigmoid(d.scale, d.bias) and r == R.Sigmoid(d.scale, d.bias):
            return "siglip"
        return None

    # -- learnable hyper-parameters --------------------------------------------
    @property
    def learnable(self) -> tuple[str, ...]:
        """The hyper-parameters that may be given as learnable tensors (their
        gradient comes from the row statistics): the temperature of InfoNCE and
        ArcCon, the scale and bias of SigLIP; none for other paradigms."""
        return {"info_nce": ("temperature",), "arccon": ("temperature",),
                "siglip": ("scale", "bias")}.get(self.loss_name, ())

    def with_hyper(self, values: dict) -> "Paradigm":
        """This paradigm with the hyper-parameters ``values`` (by field name) replaced in every
        component that has them (cached: the engine calls it once per direction)."""
        return _with_hyper(self, tuple(sorted(values.items())))

    def hyper_grad(self, names, rows: Rows, rowdot: Tensor, gsum: Tensor | None,
                   row_scale: float | Tensor, *, a: Tensor | None = None, pull: Tensor | None = None) -> Tensor:
        r"""``sum_i row_scale_i dL_i/dh`` for each learnable ``h`` in ``names`` (a (k,) tensor).

        ``rowdot_i = sum_j G_ij s_ij`` and ``gsum_i = sum_j G_ij`` for the chunk's
        ``G = row_scale GD (W - [j=i] R)``. With logits ``l_ij = f_ij / tau``
        (``f = s`` off the diagonal, ``f_ii = s_ii`` for InfoNCE and
        ``cos(theta_ii + u)`` for ArcCon), ``dL_i/dtau = -(1/tau) sum_j
        (dL_i/dl_ij) l_ij = -(1/tau) (sum_{j!=i} G_ij s_ij - GD_i f_ii)``, which for
        InfoNCE is ``-(1/tau^2)(sum_j p_ij s_ij - s_ii)``. For SigLIP (logits
        ``t s_ij + b``): ``dL_i/dt = (1/t) sum_j G_ij s_ij``, ``dL_i/db = (1/t) sum_j G_ij``.
        ``a = row_scale GD`` and ``pull = row_scale GD R`` may be passed by a backend that
        already holds them; otherwise they are formed here from ``rows``.
        """
        name = self.loss_name
        out = []
        for h in names:
            if h == "temperature" and name in ("info_nce", "arccon"):
                d = self.dissipation
                if a is None or pull is None:
                    gd = d(rows)
                    a, pull = gd * row_scale, self.pull(rows, gd) * row_scale
                off = rowdot + pull * rows.pos  # sum_{j != i} G_ij s_ij
                out.append(-(off - a * d.positive_logit(rows)).sum() / d.temperature)
            elif h == "scale" and name == "siglip":
                out.append(rowdot.sum() / self.dissipation.scale)
            elif h == "bias" and name == "siglip":
                out.append(gsum.sum() / self.dissipation.scale)
            else:
                raise ValueError(f"{self!r}: {h!r} is not a learnable hyper-parameter (learnable: {self.learnable})")
        return torch.stack(out)

    # -- the per-row computation every backend shares -------------------------
    def components(self, rows: Rows) -> tuple[Tensor, Tensor, Tensor]:
        """``(GD (n,), W (n, M), R (n,))`` for a chunk of rows (W may reuse its buffers)."""
        gd = self.dissipation(rows)
        ratio = self.ratio(rows)
        return gd, self.weight(rows), ratio

    @property
    def shared_temperature(self) -> float | None:
        """The temperature at which the engine may form the product as shifted
        logits (the softmax losses, whose statistics all sit at one tau: the
        weight's, which InfoNCE with hardness reads at ``tau'``, its positive being ``s_ii``)."""
        if self.loss_name in ("info_nce", "arccon", "info_nce_hardness"):
            return self.weight.temperature
        return None

    def pull(self, rows: Rows, gd: Tensor) -> Tensor:
        """``GD_i R_i``, formed by the ratio (:meth:`Ratio.pull`) so that its exact
        limit survives where GD vanishes at a clamp."""
        return self.ratio.pull(rows, gd, self.dissipation)

    def gradient(self, rows: Rows, row_scale: float | Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Per-row losses and ``G = row_scale * GD (W - [j==i] R)`` for a chunk.

        Returns ``(loss (n,), G (n, M))``; G is None when ``row_scale`` is None
        (value only). ``row_scale`` is a number or an ``(n,)`` tensor.
        """
        if row_scale is None and self.loss_name is not None:
            return self.row_loss(rows), None
        gd = self.dissipation(rows)
        pull = self.pull(rows, gd)
        if self.loss_name is None:
            w = self.weight(rows)
            loss = self.row_value(rows, gd, pull, (w * rows.s).sum(dim=1))
            if row_scale is None:
                return loss, None
            g = w.mul_((gd * row_scale)[:, None])
        else:
            loss = self.row_value(rows, gd, pull)
            g = self.weight.scaled(rows, gd * row_scale)
        g[rows.rows, rows.cols] = -pull * row_scale  # W_ii = 0, so G_ii = -GD R
        return loss, g

    def row_value(self, rows: Rows, gd: Tensor, pull: Tensor, weighted_s: Tensor | None = None) -> Tensor:
        """The value reported for each anchor: the known loss (:meth:`row_loss`) when there is
        one, else the surrogate ``GD_i (sum_j W_ij s_ij - R_i s_ii)`` from ``gd``, ``pull = GD R``
        and ``weighted_s_i = sum_j W_ij s_ij`` (which every backend forms its own way)."""
        if self.loss_name is not None:
            return self.row_loss(rows)
        if weighted_s is None:
            raise ValueError(f"{self!r} is not a known loss: its surrogate value needs sum_j W_ij s_ij")
        return gd * weighted_s - pull * rows.pos

    def row_loss(self, rows: Rows) -> Tensor:
        """Per-anchor values of the known loss (see :meth:`gradient` for surrogates)."""
        name = self.loss_name
        d = self.dissipation
        if name in ("info_nce", "arccon", "info_nce_hardness"):
            gap = d.gap(rows)
            return torch.logaddexp(gap, torch.zeros_like(gap))  # softplus, exact for any gap
        if name in ("mpt", "met", "mat"):
            return torch.relu(d.hinge(rows))
        if name == "siglip":
            return d.loss(rows)
        raise ValueError(f"{self!r} is not a known loss; its surrogate value comes from gradient()")

    # -- the primitive encoding a custom operator can carry ---------------------
    def encode(self) -> tuple[str, list[float]]:
        """``("InfoNCE,Softmax,Constant", [0.05, 0.05, 1.0])``: the three class names
        and their hyper-parameters in field order (:meth:`decode` inverts it)."""
        parts = (self.dissipation, self.weight, self.ratio)
        names = ",".join(type(c).__name__ for c in parts)
        return names, [float(v) for c in parts for v in c.params().values()]

    @staticmethod
    def decode(names: str, values) -> "Paradigm":
        """The paradigm of :meth:`encode`'s output (cached: the engine rebuilds it per call)."""
        return _decode(names, tuple(float(v) for v in values))

    def __repr__(self) -> str:
        return f"Paradigm({self.dissipation!r}, {self.weight!r}, {self.ratio!r})"


@lru_cache(maxsize=256)
def _with_hyper(paradigm: Paradigm, values: tuple) -> Paradigm:
    parts = []
    for comp in (paradigm.dissipation, paradigm.weight, paradigm.ratio):
        known = comp.params()
        update = {k: v for k, v in values if k in known}
        parts.append(replace(comp, **update) if update else comp)
    return Paradigm(*parts)


@lru_cache(maxsize=256)
def _decode(names: str, values: tuple[float, ...]) -> Paradigm:
    modules = (D, W, R)
    parts, at = [], 0
    split = names.split(",")
    if len(split) != 3:
        raise ValueError(f"Paradigm.decode: expected three component names, got {names!r}")
    for module, name in zip(modules, split):
        cls = getattr(module, name, None)
        if not isinstance(cls, type):
            raise ValueError(f"Paradigm.decode: unknown component {name!r} in {module.__name__}")
        k = len(fields(cls))
        parts.append(cls(*values[at:at + k]))
        at += k
    if at != len(values):
        raise ValueError(f"Paradigm.decode: {len(values)} values for {names!r}, which takes {at}")
    return Paradigm(*parts)


# -- presets: the five losses of docs/paradigm.md ("The five losses") -------------------

def info_nce(temperature: float = 0.05) -> Paradigm:
    """InfoNCE: ``GD = (1 - p_ii)/tau``, ``W = softmax(s/tau)`` over negatives, ``R = 1``."""
    return Paradigm(D.InfoNCE(temperature), W.Softmax(temperature), R.Constant(1.0))


def info_nce_hardness(temperature: float = 0.05, strength: float = 5.0) -> Paradigm:
    r"""InfoNCE with sentence-transformers' hardness tilt on every negative (MNRL's
    ``hardness_mode='all_negatives'``, ``hardness_strength`` = ``strength`` alpha, ``scale`` = 1/tau).

    The logits are ``s_ii / tau`` for the positive and ``s_ij / tau + alpha sg(s_ij)`` for the
    negatives, so ``L_i = softplus(LSE_{j!=i}(s_ij / tau') - s_ii / tau)`` with ``1/tau' = 1/tau + alpha``
    and ``dL_i/ds_ij = GD_i (W_ij - [j=i])``: ``GD = (1 - p_ii)/tau`` (p the tilted softmax,
    :class:`~gradsurg.components.dissipation.InfoNCEHardness`), ``W = softmax(s/tau')`` over the
    negatives, ``R = 1``. W is InfoNCE's weight at another temperature: the kernels run it as is.
    """
    d = D.InfoNCEHardness(temperature, strength)
    return Paradigm(d, W.Softmax(d.lse_temperature), R.Constant(1.0))


def arccon(temperature: float = 0.05, margin: float = math.radians(10)) -> Paradigm:
    """ArcCon: InfoNCE with positive logit ``cos(theta + u)``; ``R = sin(theta+u)/sin(theta)``."""
    return Paradigm(D.ArcCon(temperature, margin), W.Softmax(temperature), R.Arc(margin))


def mpt(margin: float = 0.23) -> Paradigm:
    """Margin triplet on cosines: ``GD = 1[s_ii - s_ij* < m]``, hardest negative, ``R = 1``."""
    return Paradigm(D.Margin(margin), W.Hardest(), R.Constant(1.0))


def met(margin: float = 0.45) -> Paradigm:
    """Margin triplet on Euclidean distances: ``GD = 1[..]/d_ij*``, ``R = d_ij*/d_ii``."""
    return Paradigm(D.EuclideanMargin(margin), W.Hardest(), R.Euclidean())


def mat(margin: float = 0.15 * math.pi) -> Paradigm:
    """Margin triplet on angles: ``GD = 1[..]/sin(theta_ij*)``, ``R = sin(theta_ij*)/sin(theta_ii)``."""
    return Paradigm(D.AngularMargin(margin), W.Hardest(), R.Angular())


def siglip(scale: float = 10.0, bias: float = -10.0) -> Paradigm:
    """SigLIP's pairwise sigmoid loss: ``GD = t sum_{j!=i} sigmoid(t s_ij + b)``,
    ``W ~ sigmoid(t s_ij + b)``, ``R = sigmoid(-(t s_ii + b)) / sum_{j!=i} sigmoid(t s_ij + b)``."""
    return Paradigm(D.Sigmoid(scale, bias), W.Sigmoid(scale, bias), R.Sigmoid(scale, bias))
