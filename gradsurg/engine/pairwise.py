r"""The paradigm engine generalised to arbitrary negatives (non-contrastive objectives).

:func:`gradsurg.engine.torch_backend.direction` expresses one set of
candidates per anchor, with the positive at index i among them. The
non-contrastive objectives (docs/objectives.md) push an anchor ``u_i`` away
from *within-view* negatives ``u_j`` while pulling it to the *other view's*
``v_i``, and the symmetric "sg" objective (docs/objectives.md) holds the negatives'
side constant. This module writes both as

.. math::

    \frac{\partial L}{\partial u_i} = \gamma_i \Big( \sum_{j \ne i} \Omega_{ij}\, n_j - \rho_i\, p_i \Big)

with per-anchor *gate* ``gamma_i`` (the dissipation switch), *push weights*
``Omega_ij >= 0`` over the negatives ``n_j`` and *pull* ``rho_i`` towards the
positive ``p_i``. In the paradigm's normalised reading (what
:func:`gradsurg.decompose` reports) ``GD_i = gamma_i sum_j Omega_ij``,
``W_ij = Omega_ij / sum_k Omega_ik`` and ``R_i = rho_i / sum_j Omega_ij``.

Materialising the N x N within-view matrices is deliberate: non-contrastive
training batches are small (the reference trains with N = 128).

Pieces:

* :func:`margin_gate` -- ``1[1 - max_{j!=i} a_ij < m]`` through the core's
  :class:`~gradsurg.components.dissipation.Margin` on the within-view rows;
* :func:`pair_weights` -- exponential (or power) weights normalised over all
  ordered off-diagonal pairs, built from the core's row softmax / powers and
  log-sum-exps (``P_ij = share_i * W_ij``);
* :class:`PushPull` -- one view's ``(gate, push, pull, negatives, positives)``
  and its unit-vector gradient and surrogate value;
* :func:`stop_gradient_direction` -- one direction of a :class:`Paradigm` with
  the negatives held constant (the reference's "sg");
* :func:`direction` -- the backend protocol for any object with
  ``unit_forward(u, v, row_weights)``, and :func:`apply`, which runs it through
  the engine's autograd node (:mod:`gradsurg.engine.op`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..components import dissipation as D
from ..components import weight as W
from ..components._rows import Rows
from ..paradigm import Paradigm
from ..vocabulary import compute_dtype
from .normalize import normalize, normalize_backward
from .directions import directions
from .op import run
from .validation import autocast_inputs

__all__ = [
    "PushPull", "margin_gate", "pair_weights", "row_weights", "off_diagonal",
    "stop_gradient_direction", "direction", "apply",
]


def off_diagonal(s: Tensor) -> Tensor:
    """``s`` with its diagonal set to 0 (a new tensor)."""
    out = s.clone()
    out.diagonal().zero_()
    return out


def margin_gate(a: Tensor, margin: float) -> Tensor:
    """``1[a_ii - max_{j!=i} a_ij < margin]`` for a within-view similarity matrix ``a``.

    With unit vectors ``a_ii = 1``: the anchor is dissipated (gate 0) once its
    nearest within-view neighbour is at least ``margin`` below cosine 1.
    """
    return D.Margin(margin)(Rows(a.detach().clone(), 0))


def row_weights(s: Tensor, temperature: float | None = None, power: float | None = None) -> Tensor:
    """Row-normalised weights over the off-diagonal of ``s`` (the core's Softmax or Power)."""
    rows = Rows(s.detach().clone(), 0)
    if power is not None:
        return W.Power(power)(rows)
    return W.Softmax(temperature)(rows)


def pair_weights(s: Tensor, temperature: float | None = None, power: float | None = None) -> Tensor:
    """``P_ij = f(s_ij) / sum_{k != l} f(s_kl)`` over the ordered off-diagonal pairs.

    ``f(s) = exp(s / temperature)``, or ``max(s, 1e-4) ** power`` when ``power``
    is given. ``P = share_i * W_ij``: the row-normalised weights of the core
    (:class:`weight.Softmax`, :class:`weight.Power`) times the row's share of
    the whole matrix's mass (``sum_i share_i = 1``), computed from the rows'
    log-sum-exps so that no exponential overflows.
    """
    rows = Rows(s.detach().clone(), 0)
    if power is not None:
        share = torch.softmax(rows.log_power_sum(power), dim=0)  # log domain: finite for any power
        w = W.Power(power)(rows)
    else:
        share = torch.softmax(rows.lse(temperature), dim=0)
        w = W.Softmax(temperature)(rows)
    return w.mul_(share[:, None])


@dataclass
class PushPull:
    """One view's gradient in push / pull form, all detached, in the compute dtype.

    ``dL/du_i = gate_i * (sum_j push_ij * negatives_j - pull_i * positives_i) (+ residual_i)``.

    Attributes:
        gate: (N,) dissipation gate (1 where not dissipated).
        push: (N, M) weights of the negatives; ``push_ii = 0`` when the
            negatives are the anchors' own view.
        pull: (N,) coefficient of the positive.
        negatives: (M, d) unit vectors the anchors are pushed from.
        positives: (N, d) unit vectors the anchors are pulled to.
        residual: optional (N, d) part of an original objective's gradient
            that is not of paradigm form (Barlow Twins' and VICReg's
            coordinate-wise terms); never used by the modified objectives.
    """

    gate: Tensor
    push: Tensor
    pull: Tensor
    negatives: Tensor
    positives: Tensor
    residual: Tensor | None = None

    # -- the paradigm's normalised reading -----------------------------------
    @property
    def push_total(self) -> Tensor:
        """``sum_j push_ij`` (N,)."""
        return self.push.sum(dim=1)

    @property
    def dissipation(self) -> Tensor:
        """``GD_i = gate_i * sum_j push_ij``."""
        return self.gate * self.push_total

    @property
    def weight(self) -> Tensor:
        """``W_ij = push_ij / sum_k push_ik`` (0 on rows without push)."""
        total = self.push_total[:, None]
        return torch.where(total != 0, self.push / torch.where(total != 0, total, torch.ones_like(total)),
                           torch.zeros_like(self.push))

    @property
    def ratio(self) -> Tensor:
        """``R_i = pull_i / sum_j push_ij`` (0 on rows without push)."""
        total = self.push_total
        return torch.where(total != 0, self.pull / torch.where(total != 0, total, torch.ones_like(total)),
                           torch.zeros_like(total))

    # -- gradient and value ------------------------------------------------------
    def unit_gradient(self, factor: Tensor | float = 1.0, include_residual: bool = False) -> Tensor:
        """``factor_i * dL/du_i`` with respect to the unit anchors (N, d)."""
        g = self.gate * factor if isinstance(factor, Tensor) else self.gate * factor
        out = (self.push * g[:, None]) @ self.negatives
        out.sub_((self.pull * g)[:, None] * self.positives)
        if include_residual and self.residual is not None:
            out.add_(self.residual * g[:, None])
        return out

    def surrogate(self, u: Tensor) -> Tensor:
        """Per-anchor ``gate_i (sum_j push_ij u_i.n_j - pull_i u_i.p_i)``: the value whose
        gradient (with the components held constant) is :meth:`unit_gradient`."""
        pushed = ((u @ self.negatives.T) * self.push).sum(dim=1)
        pulled = (u * self.positives).sum(dim=1) * self.pull
        return self.gate * (pushed - pulled)


def stop_gradient_direction(u: Tensor, v: Tensor, paradigm: Paradigm, row_scale: float | Tensor | None
                            ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One direction of ``paradigm`` with the negatives' side held constant.

    Anchors ``u`` (N x d) against candidates ``v`` (M x d, positive of row i at
    index i). The gradient ``G = row_scale * GD (W - [j==i] R)`` comes from the
    core (:meth:`Paradigm.gradient`); the anchors receive ``G v`` as usual but
    the candidates only their positive's share, ``dv_i = G_ii u_i`` (the
    negatives are stop-gradient). Returns ``(loss (N,), du, dv)``.
    """
    n = u.shape[0]
    rows = Rows(u @ v.T, 0)
    loss, g = paradigm.gradient(rows, row_scale)
    if g is None:
        return loss, None, None
    du = g @ v
    dv = torch.zeros_like(v)
    idx = torch.arange(n, device=u.device)
    dv[:n] = g[idx, idx][:, None] * u
    return loss, du, dv


def direction(x: Tensor, c: Tensor, spec, row_weights: float | Tensor | None
              ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The backend protocol (:mod:`gradsurg.engine.dispatch`) for a ``spec`` with
    ``unit_forward(u, v, row_weights)``: raw ``x``, ``c`` are normalised here (in the
    compute dtype) and the unit-vector gradients taken back through the normalisation."""
    cd = compute_dtype(x.dtype)
    u, inv_x = normalize(x.to(cd))
    v, inv_c = normalize(c.to(cd))
    loss, du, dv = spec.unit_forward(u, v, row_weights)
    if row_weights is None:
        return loss, None, None
    return loss, normalize_backward(du, u, inv_x), normalize_backward(dv, v, inv_c)


def apply(x: Tensor, c: Tensor, spec, reduction: str = "mean", symmetric: bool = False) -> Tensor:
    """The value of ``spec`` on raw embeddings (``x`` against ``c``; with ``symmetric`` the
    mean with ``c[:N]`` against ``x``, :mod:`gradsurg.engine.directions`), with its gradient
    SET by ``spec`` through the engine's autograd node (:mod:`gradsurg.engine.op`).
    Under ``torch.autocast`` the inputs are promoted to one dtype, the value is float32 and
    the statistics are computed in float32 without autocast (the policy of docs/api.md)."""
    (x, c), value_dtype = autocast_inputs([x, c])

    def call(a, b, hyper, row_weights, weight, want_grad, check, grad_rows=-1):
        rw = row_weights if row_weights is not None else (weight if want_grad else None)
        with torch.autocast(a.device.type, enabled=False):
            rows, da, db = direction(a, b, spec, rw)
        return rows, da, db, rows.new_empty(0)

    weight = 1.0 / x.shape[0] if reduction == "mean" else 1.0
    return run(directions(x, c, symmetric), reduction, weight, call, "").to(value_dtype or x.dtype)
