r"""The ring: a loss across processes with one peer's block of candidates in hand at a time.

With ``distributed="ring"`` (:func:`gradsurg.paradigm_loss`) rank r never holds the
global candidate set. Each rank packs its own block (anchors, positives, hard
negatives; unit rows, padded to the largest rank's sizes) and the blocks travel
around the ring of processes (:func:`gradsurg.distributed.ring_shift`: to rank + 1,
from rank - 1), the next block in flight while the current one is computed on:

* forward, W steps: the row statistics of the rank's anchors against each block
  (the positive ``s_ii`` from its own block; the log-sum-exp of the negatives at
  the softmax temperature, merged with ``logaddexp``; SigLIP's sums of
  ``sigmoid(t s + b)`` and ``softplus(t s + b)``, added) as a
  :class:`~gradsurg.components.stats.RowStats`, from which the paradigm's own
  components give the loss rows, ``GD`` and ``GD R`` (no formula of them here);
* backward, W steps: the blocks travel again, each with the gradient
  accumulated for its rows so far; rank r adds ``G_block^T u`` (``G = row_scale
  GD (W - [j=i] R)`` with W from the global statistics: ``exp(s/tau - LSE)`` or
  ``sigmoid(t s + b) / sum``) and keeps ``G_block v_block`` for its anchors; after
  the last step each block's gradient reaches its owner (one more transfer),
  which back-propagates it through its normalisation.

The layout and scaling are those of the gather path (:mod:`gradsurg.api`): the
candidates of rank r's anchor i are every rank's positives and hard negatives,
its own positive being candidate i of its own block; ``symmetric`` adds the
positives -> every rank's anchors direction; values and gradients equal the
gather path's (and one process holding the global batch), up to rounding.
Row blocks are chunked by the torch backend's memory budget (``chunk_bytes``).

Supported: the softmax losses (InfoNCE, ArcCon) and SigLIP, with learnable
temperature / scale / bias, cosine or dot-product (``normalize=False``) similarities.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import distributed
from ..components.stats import RowStats
from ..paradigm import Paradigm
from . import torch_backend
from .normalize import normalize, normalize_backward
from .op import check_hyper

SUPPORTED = ("info_nce", "arccon", "siglip")
OPTIONS = ("chunk_bytes", "normalize")
_BLOCK, _GRAD = 0, 1  # transfer tags: a block and its gradient may be in flight together


def supports(paradigm: Paradigm) -> str | None:
    """None when the ring runs ``paradigm``, else why not."""
    if paradigm.loss_name in SUPPORTED:
        return None
    return (f"distributed='ring' runs {', '.join(SUPPORTED)} (softmax and sigmoid weights from merged row "
            f"statistics), not {paradigm!r}; use distributed='gather'")


class _Kind:
    """The per-block statistics and weights of one paradigm's weight kind."""

    def __init__(self, p: Paradigm):
        self.sigmoid = p.loss_name == "siglip"
        if self.sigmoid:
            self.t, self.b = p.dissipation.scale, p.dissipation.bias
        else:
            self.tau = p.weight.temperature

    def init(self, n: int, like: Tensor) -> list:
        """Empty statistics of n rows: [pos, hardest, a, b] (lse and 0, or the two sums)."""
        neg = like.new_full((n,), -math.inf)
        return [like.new_zeros(n), neg.clone(), neg.clone() if not self.sigmoid else like.new_zeros(n),
                like.new_zeros(n)]

    def logits(self, s: Tensor) -> Tensor:
        return s * self.t + self.b if self.sigmoid else s / self.tau

    def add(self, acc: list, lo: int, s: Tensor, own: bool) -> None:
        """Merge the statistics of rows ``lo..`` against one block (``s``: n x m) into ``acc``."""
        hi = lo + s.shape[0]
        idx = torch.arange(s.shape[0], device=s.device)
        z = self.logits(s)
        if own:
            acc[0][lo:hi] = s[idx, idx + lo]
            s = s.clone()
            s[idx, idx + lo] = -math.inf
            z[idx, idx + lo] = -math.inf
        if s.shape[1]:
            acc[1][lo:hi] = torch.maximum(acc[1][lo:hi], s.amax(dim=1))
        if self.sigmoid:  # sigmoid(-inf) = softplus(-inf) = 0: the positive drops out
            acc[2][lo:hi] += torch.sigmoid(z).sum(dim=1)
            acc[3][lo:hi] += torch.logaddexp(z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(dim=1)
        elif s.shape[1]:
            acc[2][lo:hi] = torch.logaddexp(acc[2][lo:hi], torch.logsumexp(z, dim=1))

    def stats(self, acc: list) -> RowStats:
        if self.sigmoid:
            return RowStats(acc[0], acc[1], sigmoids={(self.t, self.b): (acc[2], acc[3])})
        return RowStats(acc[0], acc[1], lses={self.tau: acc[2]})

    def weights(self, s: Tensor, a: Tensor, st: RowStats, lo: int) -> Tensor:
        """``a_i W_ij`` for rows ``lo..`` against one block, W from the global statistics (0 at a positive
        once the caller sets it)."""
        z = self.logits(s)
        hi = lo + s.shape[0]
        if self.sigmoid:
            total = st.sigmoid_total(self.t, self.b)[lo:hi]
            total = torch.where(total > 0, total, torch.ones_like(total))
            return torch.sigmoid(z).mul_((a[lo:hi] / total)[:, None])
        return z.sub_(st.lse(self.tau)[lo:hi, None]).exp_().mul_(a[lo:hi, None])


class _Ring(torch.autograd.Function):
    """Rows of one or two directions around the ring; see the module docstring."""

    @staticmethod
    def forward(ctx, x, p, z, hyper, spec):
        group, world, rank = spec["group"], spec["world"], spec["rank"]
        n_r, k_r = spec["n_r"], spec["k_r"]
        cd = torch_backend.compute_dtype(x.dtype)
        par = spec["paradigm"]
        if hyper is not None:
            values = check_hyper(spec["names"], hyper.tolist(), "paradigm_loss(distributed='ring')")
            par = par.with_hyper(dict(zip(spec["names"], values)))
        kind = _Kind(par)
        norm = (lambda t: normalize(t.to(cd))) if spec["normalize"] else (lambda t: (t.to(cd), None))
        (ux, ix), (up, ip), (uz, iz) = norm(x), norm(p), norm(z)
        own = _pack(ux, up, uz, spec)
        n = x.shape[0]
        dirs = [(ux, 1)] + ([(up, 0)] if spec["symmetric"] else [])  # (anchors, which slot of a block)
        accs = [kind.init(n, ux) for _ in dirs]
        step_rows = _chunk(n, own.shape[0], cd, spec)
        block = own
        for step in range(world):
            q = (rank - step) % world
            pending = distributed.ring_shift(block, group, _BLOCK) if step < world - 1 else None
            for (u, slot), acc in zip(dirs, accs):
                cand = _slice(block, slot, n_r[q], k_r[q], spec)
                for lo in range(0, n, step_rows):
                    kind.add(acc, lo, torch.mm(u[lo:lo + step_rows], cand.T), own=step == 0)
            if pending is not None:
                block = pending.wait()
        stats = [kind.stats(acc) for acc in accs]
        rows = [par.row_loss(st) for st in stats]
        ctx.spec, ctx.kind, ctx.par, ctx.stats = spec, kind, par, stats
        ctx.has_hyper = hyper is not None
        ctx.dtypes = (x.dtype, p.dtype, z.dtype, None if hyper is None else hyper.dtype)
        ctx.save_for_backward(ux, up, uz, ix, ip, iz, own)
        out = rows + [rows[0].new_empty(0)] * (2 - len(rows))
        return out[0], out[1]

    @staticmethod
    def backward(ctx, g1, g2):
        spec, kind, par = ctx.spec, ctx.kind, ctx.par
        group, world, rank = spec["group"], spec["world"], spec["rank"]
        n_r, k_r = spec["n_r"], spec["k_r"]
        ux, up, uz, ix, ip, iz, own = ctx.saved_tensors
        cd = ux.dtype
        n = ux.shape[0]
        dirs = [(ux, 1, g1)] + ([(up, 0, g2)] if spec["symmetric"] else [])
        prep = []  # per direction: (a = row_scale GD, pull = row_scale GD R, dU, rowdot, gsum)
        for (u, slot, g), st in zip(dirs, ctx.stats):
            g = g.to(cd) if g is not None else ux.new_zeros(n)
            gd = par.dissipation(st)
            prep.append((gd * g, par.pull(st, gd) * g, torch.zeros_like(u), ux.new_zeros(n), ux.new_zeros(n), g))
        step_rows = _chunk(n, own.shape[0], cd, spec)
        block, acc_in = own, None
        for step in range(world):
            q = (rank - step) % world
            pending = distributed.ring_shift(block, group, _BLOCK) if step < world - 1 else None
            grad = torch.zeros_like(block)
            for (u, slot, _), (a, pull, du, rowdot, gsum, _g), st in zip(dirs, prep, ctx.stats):
                lo_c, cand = _rows_of(block, slot, n_r[q], k_r[q], spec)
                for lo in range(0, n, step_rows):
                    uc = u[lo:lo + step_rows]
                    s = torch.mm(uc, cand.T)
                    gmat = kind.weights(s, a, st, lo)
                    if step == 0:  # own block: the positive's entry is -GD R
                        idx = torch.arange(uc.shape[0], device=uc.device)
                        gmat[idx, idx + lo] = -pull[lo:lo + uc.shape[0]]
                    du[lo:lo + uc.shape[0]] += gmat @ cand
                    grad[lo_c] += gmat.T @ uc
                    if ctx.has_hyper:
                        rowdot[lo:lo + uc.shape[0]] += (gmat * s).sum(dim=1)
                        gsum[lo:lo + uc.shape[0]] += gmat.sum(dim=1)
            if acc_in is not None:
                grad += acc_in.wait()
            acc_in = distributed.ring_shift(grad, group, _GRAD)  # on to the block's next holder (its owner last)
            if pending is not None:
                block = pending.wait()
        mine = acc_in.wait()  # every rank's gradient for this rank's own block
        dux, dup, duz = _unpack(mine, spec)
        dux, dup = dux.clone(), dup.clone()
        dux += prep[0][2]
        if spec["symmetric"]:
            dup += prep[1][2]
        back = (lambda d, u, i: normalize_backward(d, u, i)) if spec["normalize"] else (lambda d, u, i: d)
        dx, dp, dz = back(dux, ux, ix), back(dup, up, ip), back(duz, uz, iz)
        dh = None
        if ctx.has_hyper:
            dh = sum(par.hyper_grad(spec["names"], st, rowdot, gsum, g, a=a, pull=pull)
                     for (a, pull, _du, rowdot, gsum, g), st in zip(prep, ctx.stats))
        tx, tp, tz, th = ctx.dtypes  # back in each input's dtype (the compute dtype is float32 for 16-bit inputs)
        return dx.to(tx), dp.to(tp), dz.to(tz), (None if dh is None else dh.to(th)), None


def _chunk(n: int, m: int, cd, spec) -> int:
    return torch_backend.chunk_rows(max(n, 1), max(m, 1), cd, spec["chunk_bytes"])


def _pack(ux: Tensor, up: Tensor, uz: Tensor, spec) -> Tensor:
    """``[anchors; positives; negatives]``, each padded to the largest rank's rows."""
    n_max, k_max = max(spec["n_r"]), max(spec["k_r"])
    pad = distributed.pad_rows
    return torch.cat([pad(ux, n_max), pad(up, n_max), pad(uz, k_max)])


def _rows_of(block: Tensor, slot: int, n_q: int, k_q: int, spec):
    """``(row index of the candidates in the block, candidates)``: slot 1 = positives and negatives
    (the first direction's candidates), slot 0 = the anchors (the symmetric direction's)."""
    n_max = max(spec["n_r"])
    if slot == 0:
        idx = torch.arange(n_q, device=block.device)
    else:
        idx = torch.cat([torch.arange(n_max, n_max + n_q, device=block.device),
                         torch.arange(2 * n_max, 2 * n_max + k_q, device=block.device)])
    return idx, block[idx]


def _slice(block: Tensor, slot: int, n_q: int, k_q: int, spec) -> Tensor:
    return _rows_of(block, slot, n_q, k_q, spec)[1]


def _unpack(grad: Tensor, spec):
    n_max = max(spec["n_r"])
    n, k = spec["n_r"][spec["rank"]], spec["k_r"][spec["rank"]]
    return grad[:n], grad[n_max:n_max + n], grad[2 * n_max:2 * n_max + k]


def ring_rows(x: Tensor, p: Tensor, z: Tensor, hyper: Tensor | None, spec: dict) -> tuple[Tensor, Tensor]:
    """Per-row losses of rank r's anchors (and, with ``spec['symmetric']``, of its positives against every
    rank's anchors) over the ring; gradients through autograd (every rank must back-propagate)."""
    return _Ring.apply(x, p, z, hyper, spec)
