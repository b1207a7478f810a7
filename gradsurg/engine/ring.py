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
  :class:`~gradsurg.components.row_stats.RowStats`, from which the paradigm's own
  components give the loss rows, ``GD`` and ``GD R`` (no formula of them here);
* backward, W steps: the blocks travel again, each with the gradient
  accumulated for its rows so far; rank r adds ``G_block^T u`` (``G = row_scale
  GD (W - [j=i] R)`` with W from the global statistics: ``exp(s/tau - LSE)`` or
  ``sigmoid(t s + b) / sum``) and keeps ``G_block v_block`` for its anchors; after
  the last step each block's gradient reaches its owner (one more transfer),
  which back-propagates it through its normalisation.

SigLIP with a scalar reduction takes one trip (:class:`_RingFused`): its ``GD_i W_ij =
t sigmoid(t s_ij + b)`` and ``GD_i R_i = t sigmoid(-(t s_ii + b))`` need no other block's
statistics, so the statistics and the gradients are formed together in the forward pass
and the backward pass only scales them by ``grad_output``.

The layout and scaling are those of the gather path (:mod:`gradsurg.api`): the
candidates of rank r's anchor i are every rank's positives and hard negatives,
its own positive being candidate i of its own block; ``symmetric`` adds the
positives -> every rank's anchors direction; values and gradients equal the
gather path's (and one process holding the global batch), up to rounding.
Row blocks are chunked by the torch backend's memory budget (``chunk_bytes``).

Supported: the softmax losses (InfoNCE, ArcCon, InfoNCE with sentence-transformers' hardness tilt on
every negative) and SigLIP, with learnable temperature / scale / bias (where the paradigm has them),
cosine or dot-product (``normalize=False``) similarities. The hardness preset
(:func:`gradsurg.paradigm.info_nce_hardness`) needs nothing new: its weight is the softmax at
``tau' = 1/(1/tau + alpha)``, so the merged statistics are ``s_ii`` and ``LSE_{j!=i}(s_ij/tau')``,
which are exactly what its dissipation ``sigmoid(LSE(s/tau') - s_ii/tau)/tau`` and loss read.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import distributed
from ..components.row_stats import RowStats
from ..paradigm import Paradigm
from ..vocabulary import compute_dtype
from . import torch_backend
from .normalize import normalize, normalize_backward
from .op import check_hyper

SUPPORTED = ("info_nce", "arccon", "info_nce_hardness", "siglip")
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


def _setup(x, p, z, hyper, spec):
    """``(paradigm with the hyper-parameters' values, kind, unit rows (ux, up, uz), inverse norms, own block)``."""
    cd = compute_dtype(x.dtype)
    par = spec["paradigm"]
    if hyper is not None:
        values = check_hyper(spec["names"], hyper.tolist(), spec["where"])
        par = par.with_hyper(dict(zip(spec["names"], values)))
    norm = (lambda t: normalize(t.to(cd))) if spec["normalize"] else (lambda t: (t.to(cd), None))
    (ux, ix), (up, ip), (uz, iz) = norm(x), norm(p), norm(z)
    return par, _Kind(par), (ux, up, uz), (ix, ip, iz), _pack(ux, up, uz, spec)


def _directions(units, spec):
    """``[(anchors, slot of their candidates in a block)]``: anchors -> positives and negatives, and
    with ``symmetric`` positives -> anchors."""
    ux, up, _ = units
    return [(ux, 1)] + ([(up, 0)] if spec["symmetric"] else [])


def _trip(spec, kind, dirs, own, accs=None, grads=None):
    """One trip of every block around the ring, the next block in flight during the products.

    ``accs``: per direction, row statistics to merge (:meth:`_Kind.add`). ``grads``: per direction
    ``(a, pull, stats, dU, rowdot, gsum)``: ``G = a_i W_ij`` (W from ``stats``) with ``-pull_i`` at the
    positive; ``G v`` goes to ``dU``, ``G^T u`` to the block's gradient, which follows the block and
    reaches its owner after the trip; returns this rank's own block's summed gradient (else None)."""
    group, world, rank = spec["group"], spec["world"], spec["rank"]
    n = dirs[0][0].shape[0]
    step_rows = torch_backend.chunk_rows(max(n, 1), max(own.shape[0], 1), own.dtype, spec["chunk_bytes"])
    block, acc_in = own, None
    for step in range(world):
        q = (rank - step) % world
        pending = distributed.ring_shift(block, group, _BLOCK) if step < world - 1 else None
        grad = torch.zeros_like(block) if grads is not None else None
        for k, (u, slot) in enumerate(dirs):
            rows_c, cand = _rows_of(block, slot, spec["n_r"][q], spec["k_r"][q], spec)
            for lo in range(0, n, step_rows):
                uc = u[lo:lo + step_rows]
                hi = lo + uc.shape[0]
                s = torch.mm(uc, cand.T)
                if accs is not None:
                    kind.add(accs[k], lo, s, own=step == 0)
                if grads is None:
                    continue
                a, pull, st, du, rowdot, gsum = grads[k]
                gmat = kind.weights(s, a, st, lo)
                if step == 0:  # own block: the positive's entry is -GD R
                    idx = torch.arange(uc.shape[0], device=uc.device)
                    gmat[idx, idx + lo] = -pull[lo:hi]
                du[lo:hi] += gmat @ cand
                grad[rows_c] += gmat.T @ uc
                if rowdot is not None:
                    rowdot[lo:hi] += (gmat * s).sum(dim=1)
                    gsum[lo:hi] += gmat.sum(dim=1)
        if grads is not None:
            if acc_in is not None:
                grad += acc_in.wait()
            acc_in = distributed.ring_shift(grad, group, _GRAD)  # on to the block's next holder (its owner last)
        if pending is not None:
            block = pending.wait()
    return acc_in.wait() if grads is not None else None


def _grads(units, inv, mine, grads, par, stats, spec, dtypes):
    """The inputs' gradients from this rank's block gradient ``mine`` and the anchors' ``dU``; the
    hyper-parameters' from the row sums."""
    ux, up, uz = units
    dux, dup, duz = (t.clone() for t in _unpack(mine, spec))
    dux += grads[0][3]
    if spec["symmetric"]:
        dup += grads[1][3]
    if spec["normalize"]:
        dux, dup, duz = (normalize_backward(d, u, i) for d, u, i in zip((dux, dup, duz), units, inv))
    dh = None
    if dtypes[3] is not None:
        dh = sum(par.hyper_grad(spec["names"], st, rowdot, gsum, None, a=a, pull=pull)
                 for (a, pull, _s, _du, rowdot, gsum), st in zip(grads, stats))
    return tuple(None if t is None else t.to(dt) for t, dt in zip((dux, dup, duz, dh), dtypes))


def _prep(par, u, st, row_scale, has_hyper):
    gd = par.dissipation(st)
    zero = torch.zeros_like(u[:, 0])
    return (gd * row_scale, par.pull(st, gd) * row_scale, st, torch.zeros_like(u),
            zero.clone() if has_hyper else None, zero.clone() if has_hyper else None)


class _Ring(torch.autograd.Function):
    """Rows of one or two directions around the ring: statistics forward, gradients backward."""

    @staticmethod
    def forward(ctx, x, p, z, hyper, spec):
        par, kind, units, inv, own = _setup(x, p, z, hyper, spec)
        dirs = _directions(units, spec)
        accs = [kind.init(x.shape[0], units[0]) for _ in dirs]
        _trip(spec, kind, dirs, own, accs=accs)
        stats = [kind.stats(acc) for acc in accs]
        rows = [par.row_loss(st) for st in stats]
        ctx.spec, ctx.kind, ctx.par, ctx.stats = spec, kind, par, stats
        ctx.dtypes = (x.dtype, p.dtype, z.dtype, None if hyper is None else hyper.dtype)
        ctx.save_for_backward(*units, *[t if t is not None else torch.empty(0) for t in inv], own)
        out = rows + [rows[0].new_empty(0)] * (2 - len(rows))
        return out[0], out[1]

    @staticmethod
    def backward(ctx, g1, g2):
        spec, kind, par = ctx.spec, ctx.kind, ctx.par
        saved = ctx.saved_tensors
        units, inv, own = saved[:3], saved[3:6], saved[6]
        inv = inv if spec["normalize"] else (None, None, None)
        dirs = _directions(units, spec)
        n = units[0].shape[0]
        scales = [g.to(own.dtype) if g is not None else own.new_zeros(n) for g in (g1, g2)]
        grads = [_prep(par, u, st, g, ctx.dtypes[3] is not None) for (u, _), st, g in zip(dirs, ctx.stats, scales)]
        mine = _trip(spec, kind, dirs, own, grads=grads)
        return _grads(units, inv, mine, grads, par, ctx.stats, spec, ctx.dtypes) + (None,)


class _RingFused(torch.autograd.Function):
    """SigLIP reduced to a scalar: its ``GD_i W_ij = t sigmoid(t s_ij + b)`` and ``GD_i R_i`` need no
    statistic of the other blocks, so one trip forms the statistics and the gradients together (three
    products per block instead of four, no transfer in backward, which only scales by grad_output)."""

    @staticmethod
    def forward(ctx, x, p, z, hyper, spec):
        par, kind, units, inv, own = _setup(x, p, z, hyper, spec)
        dirs = _directions(units, spec)
        n = x.shape[0]
        accs = [kind.init(n, units[0]) for _ in dirs]
        ones = units[0].new_ones(n)
        grads = []
        for (u, _), w in zip(dirs, spec["weights"]):
            other = units[0] if u is units[1] else units[1]
            pos = (u * other).sum(dim=1)  # s_ii: this rank's own positive pairs
            unit = RowStats(pos, pos, sigmoids={(kind.t, kind.b): (ones, torch.zeros_like(ones))})  # W = sigmoid
            grads.append(_prep(par, u, unit, w, hyper is not None))
        mine = _trip(spec, kind, dirs, own, accs=accs, grads=grads if spec["want_grad"] else None)
        stats = [kind.stats(acc) for acc in accs]
        value = sum(par.row_loss(st).sum() * w for st, w in zip(stats, spec["weights"]))
        if mine is not None:
            dtypes = (x.dtype, p.dtype, z.dtype, None if hyper is None else hyper.dtype)
            ctx.grads = _grads(units, inv, mine, grads, par, stats, spec, dtypes)
        return value

    @staticmethod
    def backward(ctx, g):
        return tuple(None if t is None else t * g.to(t.dtype) for t in ctx.grads) + (None,)


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


def _unpack(grad: Tensor, spec):
    n_max = max(spec["n_r"])
    n, k = spec["n_r"][spec["rank"]], spec["k_r"][spec["rank"]]
    return grad[:n], grad[n_max:n_max + n], grad[2 * n_max:2 * n_max + k]


def ring_rows(x: Tensor, p: Tensor, z: Tensor, hyper: Tensor | None, spec: dict) -> tuple[Tensor, Tensor]:
    """Per-row losses of rank r's anchors (and, with ``spec['symmetric']``, of its positives against every
    rank's anchors) over the ring; gradients through autograd (every rank must back-propagate)."""
    return _Ring.apply(x, p, z, hyper, spec)


def ring_loss(x: Tensor, p: Tensor, z: Tensor, hyper: Tensor | None, spec: dict) -> Tensor:
    """``sum_k weights_k sum_i L^k_i`` over the directions (``spec['weights']``, one per direction):
    SigLIP in one trip (:class:`_RingFused`) when it needs a gradient (``spec['want_grad']``, the same
    on every rank), else :func:`ring_rows` reduced."""
    if _Kind(spec["paradigm"]).sigmoid and spec["want_grad"]:
        return _RingFused.apply(x, p, z, hyper, spec)
    rows = ring_rows(x, p, z, hyper, spec)
    return sum(r.sum() * w for r, w in zip(rows, spec["weights"]))
