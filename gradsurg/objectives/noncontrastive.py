r"""Non-contrastive objectives, original and with contrastive-style gradients.

Every objective here, written for the anchors ``u_i`` of one view (the other
view is symmetric), has a gradient of the *push / pull* form

.. math::

    \frac{\partial L}{\partial u_i} = \gamma_i \Big( \sum_{j \ne i} \Omega_{ij}\, n_j
        - \rho_i\, v_i \Big)  \; (+\ \text{residual}_i)

where ``n_j`` are the anchor's negatives (the other rows of its own view, or
of the other view for MHS), ``Omega`` the push weights, ``rho`` the pull and
``gamma`` a gate (1 for the originals). The paradigm's normalised reading is
``GD = gamma * sum_j Omega_ij``, ``W = Omega / sum_j Omega_ij``,
``R = rho / sum_j Omega_ij`` (see :mod:`gradsurg.engine.pairwise`). The
residual is the part of Barlow Twins' and VICReg's gradients that is not a
function of the similarity matrices (coordinate-wise terms).

The three switches of ``modified`` (docs/objectives.md) each replace one
entry of that triple; the gradient of a modified objective is then SET from
it through the core's autograd Function (its value is the surrogate with that
gradient):

``w_gd``  ``gamma_i = 1[1 - max_{j!=i} a_ij < margin]`` (own-view similarities ``a``)
``w_w``   ``Omega = 2 lam P`` with ``P_ij = exp(s_ij / temperature) / sum_{k!=l} exp(s_kl / temperature)``
          over all ordered off-diagonal pairs (or ``max(s, 1e-4)^power``): the row softmax
          times the row's share of the mass, which thereby sets the anchor's GD.
          ``s`` is the own view's ``a`` (MHE, VICReg, alignment & uniformity), the other
          view's ``b`` (Barlow Twins) or the cross-view ``u_i . v_j`` (MHS).
``w_r``   ``rho_i = ratio * sum_j Omega_ij``: the per-anchor gradient reads
          ``GD_i (sum_j W_ij n_j - ratio v_i)``.

An entry whose switch is off keeps the original objective's value, so each
switch changes exactly its own entry and an ablation can turn them on one at a
time. The residual is not part of any modified objective. Positives and
negatives are held constant in each anchor's row (each view's anchors get
their own pull), as in the formula above.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..engine import pairwise
from ..engine.normalize import normalize
from ..engine.pairwise import PushPull, margin_gate, off_diagonal, pair_weights
from ..engine.validation import float32_under_autocast
from ..vocabulary import compute_dtype
from . import original as O
from ._common import check_form, check_views, format_switches, parse_switches, real

__all__ = ["NonContrastiveObjective", "AlignUniform", "MHE", "MHS", "BarlowTwins", "VICReg"]


class NonContrastiveObjective(nn.Module):
    """Base of the two-view non-contrastive objectives (see the module docstring).

    Subclasses implement :meth:`_original` (plain autograd on raw embeddings)
    and :meth:`_reading` (the original's push / pull in closed form).
    """

    name = "objective"
    #: the negatives of u_i are the other view's v_j (else the own view's u_j)
    cross_view_negatives = False
    #: which similarities the w_w weights come from: "own", "other" or "cross"
    weight_source = "own"
    #: the paper's default ratio for w_r
    default_ratio = 1.75

    #: the lam of the reference's run script for the original (no switch), per objective
    reference_lam: float = 1.0

    def __init__(self, *, modified, margin: float, temperature: float | None, power: float | None,
                 ratio: float | None, form: str = "default"):
        super().__init__()
        where = type(self).__name__
        self.form = check_form(form, where)
        self.switches = parse_switches(modified, where)
        self.margin = real("margin", margin, where, low=0.0, high=2.0)
        self.temperature = real("temperature", temperature, where, low=0.0, strict_low=True, allow_none=True)
        self.power = real("power", power, where, low=0.0, strict_low=True, allow_none=True)
        if self.temperature is None and self.power is None:
            raise ValueError(f"{where}: give temperature (exponential weights) or power (power weights) for w_w")
        self.ratio = real("ratio", self.default_ratio if ratio is None else ratio, where, low=0.0)

    # -- to be provided by each objective ---------------------------------------
    def _original(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reading(self, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:  # pragma: no cover
        """``(push (N, N), pull (N,), residual (N, d) or None)`` of the original for anchors ``u``."""
        raise NotImplementedError

    def _reference(self, u: Tensor, v: Tensor, switches: frozenset[str]
                   ) -> tuple[Tensor, Tensor, Tensor | None]:  # pragma: no cover - abstract
        """``(push, pull, residual)`` of the reference code's gradient for anchors ``u`` (ungated)."""
        raise NotImplementedError(f"{type(self).__name__} has no reference form")

    def _default_lam(self, lam, default_original: float) -> float:
        """``lam`` when given; else 1 with any switch, else the original's default for this form."""
        if lam is not None:
            return lam
        if self.switches:
            return 1.0
        return self.reference_lam if self.form == "reference" else default_original

    @property
    def push_budget(self) -> float:
        """Total push of a batch under ``w_w``: ``sum_ij Omega_ij = 2 lam``."""
        return 2.0 * self.lam

    @property
    def modified(self) -> str:
        """The active switches as a comma string (empty: the original objective)."""
        return format_switches(self.switches)

    def _supports_paradigm(self) -> None:
        """Raise where the paradigm reading does not exist (overridden by BT / VICReg)."""

    # -- forward -----------------------------------------------------------------
    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        """The objective on raw embeddings of the two views (N x d each)."""
        check_views(anchors, positives, negatives, type(self).__name__)
        if not self.switches and self.form == "default":
            return float32_under_autocast(self._original, anchors, positives)
        self._supports_paradigm()
        return pairwise.apply(anchors, positives, self)

    # -- the paradigm form -----------------------------------------------------
    def view(self, u: Tensor, v: Tensor, switches: frozenset[str] | None = None) -> PushPull:
        """Push / pull of the anchors ``u`` (unit rows) with positives ``v``, under ``switches``
        (default: this objective's). All detached, in the dtype of ``u``."""
        switches = self.switches if switches is None else switches
        u, v = u.detach(), v.detach()
        n = u.shape[0]
        a = u @ u.T
        negatives = v if self.cross_view_negatives else u
        if self.form == "reference":
            push, pull, residual = self._reference(u, v, switches)
            gate = margin_gate(a, self.margin) if "w_gd" in switches else torch.ones(n, dtype=u.dtype,
                                                                                      device=u.device)
            return PushPull(gate, push, pull, negatives, v, residual)
        push, pull, residual = self._reading(u, v)
        if "w_w" in switches:
            source = {"own": a, "other": v @ v.T, "cross": u @ v.T}[self.weight_source]
            push = pair_weights(source, self.temperature, self.power).mul_(self.push_budget)
        if "w_r" in switches:
            pull = self.ratio * push.sum(dim=1)
        gate = margin_gate(a, self.margin) if "w_gd" in switches else torch.ones(n, dtype=u.dtype, device=u.device)
        return PushPull(gate, push, pull, negatives, v, residual if not switches else None)

    def unit_forward(self, u: Tensor, v: Tensor, row_scale):
        """Backend hook (see :mod:`gradsurg.engine.pairwise`): surrogate rows and unit gradients."""
        n = u.shape[0]
        first, second = self.view(u, v), self.view(v, u)
        loss = n * (first.surrogate(u) + second.surrogate(v))
        # the reference's gradient keeps its coordinate-wise part (Barlow Twins without w_r)
        residual = self.form == "reference"
        if residual:
            for part, x in ((first, u), (second, v)):
                if part.residual is not None:
                    loss = loss + n * part.gate * (x * part.residual).sum(dim=1)
        if row_scale is None:
            return loss, None, None
        factor = row_scale * n
        return loss, first.unit_gradient(factor, residual), second.unit_gradient(factor, residual)

    def components(self, anchors: Tensor, positives: Tensor, switches=None) -> tuple[PushPull, PushPull]:
        """The push / pull of both views (anchors' view first) from raw embeddings."""
        self._supports_paradigm()
        check_views(anchors, positives, None, type(self).__name__)
        sw = self.switches if switches is None else parse_switches(switches, type(self).__name__)
        cd = compute_dtype(anchors.dtype)
        with torch.no_grad():
            u, _ = normalize(anchors.detach().to(cd))
            v, _ = normalize(positives.detach().to(cd))
            return self.view(u, v, sw), self.view(v, u, sw)

    def decompose(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None):
        """GD, W, R of this objective's gradient for the anchors' view (the effective, linear
        weights for Barlow Twins and VICReg), as a :class:`gradsurg.analysis.Decomposition`.

        For the original objective the residual (coordinate-wise, non-paradigm part of the
        gradient with respect to the unit anchors) is reported in ``.residual``.
        """
        from ..analysis.decompose import Decomposition

        check_views(anchors, positives, negatives, type(self).__name__)
        first, _ = self.components(anchors, positives)
        if not self.switches and self.form == "default":
            first.residual = self._residual(anchors, positives, first.residual)
        return Decomposition.from_push_pull(first)

    def _residual(self, x: Tensor, y: Tensor, closed_form: Tensor | None) -> Tensor | None:
        return closed_form

    def extra_repr(self) -> str:
        keys = ["form", "modified", "margin", "temperature", "power", "ratio"] + list(self._extra_keys)
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)

    _extra_keys: tuple[str, ...] = ()


class AlignUniform(NonContrastiveObjective):
    r"""Alignment and uniformity (Wang & Isola 2020).

    ``mean_i |u_i - v_i|^alpha + lam * (U(u) + U(v)) / 2`` with
    ``U(u) = log mean_{i<j} exp(-t |u_i - u_j|^2)``; defaults alpha = 2, t = 2, lam = 1
    (the published ones). Its push is already exponential: ``Omega = 2 lam t P`` at
    temperature ``1 / (2t)`` over the own view; the pull is ``alpha |u_i - v_i|^(alpha-2) / N``.
    The paper does not modify it; the switches work as for MHE (our choice, ratio 1.75).
    """

    name = "align_uniform"
    _extra_keys = ("alpha", "t", "lam")

    def __init__(self, alpha: float = 2.0, t: float = 2.0, lam: float = 1.0, *, modified="",
                 margin: float = 0.30, temperature: float | None = 0.05, power: float | None = None,
                 ratio: float = 1.75, form: str = "default"):
        if form == "reference":
            raise ValueError("AlignUniform: form='reference' does not exist (the paper's code has no "
                             "alignment-and-uniformity objective); use form='default'")
        super().__init__(modified=modified, margin=margin, temperature=temperature, power=power, ratio=ratio,
                         form=form)
        self.alpha = real("alpha", alpha, "AlignUniform", low=0.0, strict_low=True)
        self.t = real("t", t, "AlignUniform", low=0.0, strict_low=True)
        self.lam = real("lam", lam, "AlignUniform", low=0.0)

    @property
    def push_budget(self) -> float:
        return 2.0 * self.lam * self.t

    def _original(self, x, y):
        return O.align_uniform(x, y, alpha=self.alpha, t=self.t, lam=self.lam)

    def _reading(self, u, v):
        n = u.shape[0]
        push = pair_weights(u @ u.T, temperature=1.0 / (2.0 * self.t)).mul_(2.0 * self.lam * self.t)
        if self.alpha == 2.0:
            pull = torch.full((n,), 2.0 / n, dtype=u.dtype, device=u.device)
        else:
            sq = (2.0 - 2.0 * (u * v).sum(dim=1)).clamp(min=1e-30)
            pull = self.alpha * sq.pow(self.alpha / 2.0 - 1.0) / n
        return push, pull, None


class MHE(NonContrastiveObjective):
    r"""Minimum hyperspherical energy, the reference's form.

    ``lam * (LSE_{i>j} a_ij + LSE_{i>j} b_ij) + mean_i (2 - 2 u_i . v_i)``.
    ``lam`` defaults to 10 for the original (the paper's "ori" run) and 1 when
    modified (the paper's ``m_`` runs). Original push ``Omega = 2 lam P`` at
    temperature 1 over the own view, pull ``2 / N``.
    """

    name = "mhe"
    _extra_keys = ("lam",)

    reference_lam = 10.0

    def __init__(self, lam: float | None = None, *, modified="", margin: float = 0.30,
                 temperature: float | None = 0.05, power: float | None = None, ratio: float = 1.75,
                 form: str = "default"):
        super().__init__(modified=modified, margin=margin, temperature=temperature, power=power, ratio=ratio,
                         form=form)
        self.lam = real("lam", self._default_lam(lam, 10.0), "MHE", low=0.0)
        if self.form == "reference" and "w_w" in self.switches and self.temperature is None:
            raise ValueError("MHE: the reference form's w_w is exponential: give temperature (power is not used)")

    def _original(self, x, y):
        return O.mhe(x, y, lam=self.lam)

    def _reference(self, u, v, switches):
        # L = lam (LSE_{i>j} a_ij/t + LSE_{i>j} b_ij/t) + sum_i (2 - 2 u_i.v_i) s (w0_i + w1_i) / 2,
        # t = temperature under w_w (else 1); w = 1/N, or under w_w the row's share of the LSE / t;
        # s = ratio under w_r (else 1). The pull of u_i therefore holds both views' row weights.
        n = u.shape[0]
        t = self.temperature if "w_w" in switches else 1.0
        pa = pair_weights(u @ u.T, temperature=t)
        push = pa * (2.0 * self.lam / t)
        if "w_w" in switches:
            pb = pair_weights(v @ v.T, temperature=t)
            weights = (pa.sum(dim=1) + pb.sum(dim=1)) * (2.0 / t)
        else:
            weights = torch.full((n,), 2.0 / n, dtype=u.dtype, device=u.device)
        scale = self.ratio if "w_r" in switches else 1.0
        return push, weights * scale, None

    def _reading(self, u, v):
        n = u.shape[0]
        push = pair_weights(u @ u.T, temperature=1.0).mul_(2.0 * self.lam)
        return push, torch.full((n,), 2.0 / n, dtype=u.dtype, device=u.device), None


class MHS(NonContrastiveObjective):
    r"""Maximum hyperspherical separation, the reference's form.

    ``lam * (-mean_i min_{j!=i} |u_i - sg(v_j)| - mean_i min_{j!=i} |v_i - sg(u_j)|) + mean_i (2 - 2 u_i.v_i)``,
    distances ``sqrt(|.|^2 + eps)``. Its negatives are the other view's rows; the
    push is one-hot at the nearest one, ``Omega_ij* = lam / (N d_ij*)`` (so
    ``GD = lam / (N d_ij*)``, ``W`` one-hot), the pull ``2 / N``. With ``w_r`` the
    pull becomes ``ratio * lam / (N d_ij*)``: ``R = ratio`` (docs/objectives.md).
    ``w_w`` spreads the push over the other view by ``exp(u_i . v_j / temperature)``.
    """

    name = "mhs"
    cross_view_negatives = True
    weight_source = "cross"
    _extra_keys = ("lam", "eps")

    def __init__(self, lam: float = 1.0, *, modified="", margin: float = 0.30,
                 temperature: float | None = 0.05, power: float | None = None, ratio: float = 1.75,
                 eps: float = 1e-4, form: str = "default"):
        super().__init__(modified=modified, margin=margin, temperature=temperature, power=power, ratio=ratio,
                         form=form)
        self.lam = real("lam", lam, "MHS", low=0.0)
        self.eps = real("eps", eps, "MHS", low=0.0, strict_low=True)

    def _original(self, x, y):
        return O.mhs(x, y, lam=self.lam, eps=self.eps)

    def _nearest(self, u, v):
        """Distance to, and index of, each anchor's nearest other-view row (``j != i``)."""
        sq = (u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2.0 * (u @ v.T)
        d = (sq.clamp(min=0) + self.eps).sqrt()
        d.diagonal().fill_(math.inf)
        return d.min(dim=1)

    def _reading(self, u, v):
        n = u.shape[0]
        nearest, index = self._nearest(u, v)
        push = torch.zeros(n, n, dtype=u.dtype, device=u.device)
        push[torch.arange(n, device=u.device), index] = self.lam / (n * nearest)
        return push, torch.full((n,), 2.0 / n, dtype=u.dtype, device=u.device), None

    def _reference(self, u, v, switches):
        # the reference has no w_w path for MHS (the switch does nothing); under w_r its pull is
        # ratio (1/d0_i + 1/d1_i) / N with both views' nearest distances, without lam
        n = u.shape[0]
        push, pull, _ = self._reading(u, v)
        if "w_r" in switches:
            d0, _ = self._nearest(u, v)
            d1, _ = self._nearest(v, u)
            pull = self.ratio * (1.0 / d0 + 1.0 / d1) / n
        return push, pull, None


class _Coordinatewise(NonContrastiveObjective):
    """Barlow Twins and VICReg: a paradigm reading only on L2-normalised embeddings."""

    default_ratio = 1.5
    reference_lam = 30.0

    def _reference_weights(self, x: Tensor, switches: frozenset[str]) -> Tensor:
        """The reference's linear weights from one view's similarities ``x x^T`` (diagonal 0):
        ``f(s_ij) / sum_{k!=l} f(s_kl)`` under w_w, else ``2 s_ij / N^2``."""
        n = x.shape[0]
        s = x @ x.T
        if "w_w" in switches:
            return pair_weights(s, self.temperature, self.power)
        return off_diagonal(s).mul_(2.0 / n**2)

    def _reference_pull(self, u: Tensor, v: Tensor, switches: frozenset[str]) -> Tensor:
        """``lam ratio (rowsum W(u) + rowsum W(v))`` under w_r (the alignment term carries gradient
        to both views), else ``2 / N``."""
        n = u.shape[0]
        if "w_r" in switches:
            return (self._reference_weights(u, switches).sum(dim=1)
                    + self._reference_weights(v, switches).sum(dim=1)).mul_(self.lam * self.ratio)
        return torch.full((n,), 2.0 / n, dtype=u.dtype, device=u.device)

    def _check_reference(self) -> None:
        if self.form == "reference" and not self.normalize:
            raise ValueError(f"{type(self).__name__}: form='reference' works on L2-normalised embeddings "
                             f"(normalize=True), as the paper's code")

    def _supports_paradigm(self) -> None:
        if not self.normalize:
            raise ValueError(
                f"{type(self).__name__}: the paradigm reading (modified switches, components, decompose) "
                f"needs normalize=True (L2-normalised embeddings, the paper's setting)"
            )


class BarlowTwins(_Coordinatewise):
    r"""Barlow Twins (Zbontar et al. 2021): ``sum_d (1 - C_dd)^2 + lam sum_{d!=e} C_de^2``.

    ``lam`` defaults to 5e-3 (published) for the original and 1 when modified.
    On unit rows (``normalize=True``) the gradient w.r.t. ``u_i`` is
    ``(2/N) [lam sum_j (b_ij / N) u_j - v_i] + (2 (1 - lam) / N) C_dd v_id e_d``:
    linear push weights ``Omega_ij = 2 lam b_ij / N^2`` from the *other* view
    (possibly negative), pull ``2 / N``, and a coordinate-wise residual.
    """

    name = "barlow_twins"
    weight_source = "other"
    _extra_keys = ("lam", "normalize")

    def __init__(self, lam: float | None = None, normalize: bool = True, *, modified="", margin: float = 0.30,
                 temperature: float | None = 0.05, power: float | None = None, ratio: float = 1.5,
                 form: str = "default"):
        super().__init__(modified=modified, margin=margin, temperature=temperature, power=power, ratio=ratio,
                         form=form)
        self.lam = real("lam", self._default_lam(lam, 5e-3), "BarlowTwins", low=0.0)
        if not isinstance(normalize, bool):
            raise TypeError(f"BarlowTwins: normalize must be a bool, got {type(normalize).__name__}")
        self.normalize = normalize
        self._check_reference()
        if self.switches:
            self._supports_paradigm()

    def _reference(self, u, v, switches):
        # per direction: lam sum_j W(v)_ij u_i.sg(u_j) (weights from the OTHER view) and, without w_r,
        # the coordinate-wise pull sum_d (1 - (1 - lam) C_dd) (2/N) u_id sg(v_id); with w_r the pull is
        # lam ratio (rowsum W(v) + rowsum W(u)) on u_i.v_i (both views get its gradient)
        n = u.shape[0]
        push = self._reference_weights(v, switches).mul_(self.lam)
        pull = self._reference_pull(u, v, switches)
        residual = None
        if "w_r" not in switches:
            c_diag = (u * v).sum(dim=0) / n
            residual = (2.0 * (1.0 - self.lam) / n) * c_diag[None, :] * v
        return push, pull, residual

    def _original(self, x, y):
        return O.barlow_twins(x, y, lam=self.lam, normalize=self.normalize)

    def _reading(self, u, v):
        n = u.shape[0]
        push = off_diagonal(v @ v.T).mul_(2.0 * self.lam / n**2)
        pull = torch.full((n,), 2.0 / n, dtype=u.dtype, device=u.device)
        c_diag = (u * v).sum(dim=0) / n
        residual = (2.0 * (1.0 - self.lam) / n) * c_diag[None, :] * v
        return push, pull, residual


class VICReg(_Coordinatewise):
    r"""VICReg (Bardes et al. 2022) with its published coefficients 25 / 25 / 1.

    On unit rows the Gram part of its gradient w.r.t. ``u_i`` is
    ``(4 cov / (d (N-1)^2)) sum_j a~_ij u_j - (2 sim / (N d)) v_i`` with the
    centred similarities ``a~_ij = (u_i - mean u) . (u_j - mean u)`` of the own
    view: linear push weights ``Omega_ij = 4 cov a~_ij / (d (N-1)^2)``, pull
    ``2 sim / (N d)``; the variance hinge and the covariance diagonal form the
    residual. ``lam`` (default 1) is the push coefficient of the modified version.
    """

    name = "vicreg"
    _extra_keys = ("sim_coeff", "std_coeff", "cov_coeff", "lam", "normalize")

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 lam: float | None = None, normalize: bool = True, *, modified="", margin: float = 0.30,
                 temperature: float | None = 0.05, power: float | None = None, ratio: float = 1.5,
                 eps: float = 1e-4, form: str = "default"):
        super().__init__(modified=modified, margin=margin, temperature=temperature, power=power, ratio=ratio,
                         form=form)
        self.sim_coeff = real("sim_coeff", sim_coeff, "VICReg", low=0.0)
        self.std_coeff = real("std_coeff", std_coeff, "VICReg", low=0.0)
        self.cov_coeff = real("cov_coeff", cov_coeff, "VICReg", low=0.0)
        self.lam = real("lam", self._default_lam(lam, 1.0), "VICReg", low=0.0)
        self.eps = real("eps", eps, "VICReg", low=0.0, strict_low=True)
        if not isinstance(normalize, bool):
            raise TypeError(f"VICReg: normalize must be a bool, got {type(normalize).__name__}")
        self.normalize = normalize
        self._check_reference()
        if self.switches:
            self._supports_paradigm()

    def _reference(self, u, v, switches):
        # per direction: lam sum_j W(u)_ij u_i.sg(u_j) (own-view weights, no centring, no variance
        # term) and the pull (2/N) u_i.sg(v_i), or under w_r lam ratio (rowsum W(u) + rowsum W(v)) u_i.v_i
        push = self._reference_weights(u, switches).mul_(self.lam)
        return push, self._reference_pull(u, v, switches), None

    def _original(self, x, y):
        return O.vicreg(x, y, sim_coeff=self.sim_coeff, std_coeff=self.std_coeff, cov_coeff=self.cov_coeff,
                        normalize=self.normalize, eps=self.eps)

    def _reading(self, u, v):
        n, d = u.shape
        uc = u - u.mean(dim=0)
        push = off_diagonal(uc @ uc.T).mul_(4.0 * self.cov_coeff / (d * (n - 1) ** 2))
        pull = torch.full((n,), 2.0 * self.sim_coeff / (n * d), dtype=u.dtype, device=u.device)
        return push, pull, None

    def _residual(self, x, y, closed_form):
        """Gradient of the variance hinge and the covariance diagonal w.r.t. the unit anchors."""
        cd = compute_dtype(x.dtype)
        with torch.enable_grad():
            u = normalize(x.detach().to(cd))[0].requires_grad_(True)
            v = normalize(y.detach().to(cd))[0]
            part = O.vicreg_coordinate_part(u, v, std_coeff=self.std_coeff, cov_coeff=self.cov_coeff,
                                            eps=self.eps)
            (g,) = torch.autograd.grad(part, u)
        return g
