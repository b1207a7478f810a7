r"""Negatives gathered from every rank, with exact gradients.

``paradigm_loss(..., gather_across_devices=True, group=None)`` (and every
preset: ``gradsurg.info_nce(x, y, gather_across_devices=True)``) lets each
rank's anchors see the candidates of the whole global batch. This module
implements it; :func:`all_gather_with_grad` is the building block, public for
objectives that need the same thing.

Layout
------
The global batch is the concatenation of the ranks' batches in rank order.
Its candidate set is **the positives of all ranks in rank order, then the hard
negatives of all ranks in rank order**::

    C = cat(P_0, P_1, ..., P_{W-1}, Z_0, Z_1, ..., Z_{W-1})

so global anchor ``o_r + i`` (``o_r`` = number of anchors on ranks before r)
has its positive at candidate ``o_r + i``: exactly what single-process
``paradigm_loss(cat(A_r), cat(P_r), cat(Z_r))`` sees. (Internally each rank
puts its own positives first so that the engine's "row i's positive is
candidate i" holds; the losses do not depend on the order of the negatives.)
With ``symmetric=True`` the reverse direction (positive -> anchors) uses the
anchors of all ranks as its candidates, gathered the same way.

Gradients and scaling
---------------------
Rank r computes the loss of its own anchors only, against the global
candidates. Each rank's gradient for the global candidate set is
reduce-scattered (SUM) back to the rank that owns each row, in the backward
pass. With ``reduction='mean'`` the loss on rank r is

.. math::  L_r = \frac{W}{N} \sum_{i \in r} L_i , \qquad N = \sum_r n_r

(= the local mean when every rank has the same number of anchors), so that

* the mean over ranks of ``L_r`` is the global-mean loss on the concatenated batch;
* the gradient each rank holds for its own embeddings is ``W`` times the
  gradient of the global-mean loss (anchors and candidates alike);
* DDP's averaging of parameter gradients (it divides the sum by ``W``) then
  gives exactly the single-process gradient of the global-mean loss on the
  concatenated batch, for even and uneven per-rank batch sizes.

``reduction='sum'``: ``L_r`` is the plain local sum; the sum over ranks is the
global sum, so DDP-averaged gradients are ``1/W`` of the global sum's.
``reduction='none'``: the local anchors' rows (each against the global
candidates), shape ``(n_r,)``; any per-row weights flow back exactly.

Uneven batch sizes per rank are supported (sizes are all-gathered and the
rows padded for the collectives). Every rank needs at least one anchor.

Requirements: every rank calls the loss, in the same order, and (when
gradients are wanted) every rank back-propagates through it: the backward
pass holds a collective (as DDP's own backward does). Input errors on one rank
are raised on every rank, so a bad batch does not hang the others. When
``torch.distributed`` is not initialised or the group has one process the
loss is the ordinary single-process loss.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .engine.function import ParadigmFunction, resolve_backend
from .engine.validation import check_embeddings, check_options
from .paradigm import Paradigm

__all__ = ["gather_active", "all_gather_with_grad", "gathered_paradigm_loss"]

_WHERE = "paradigm_loss(gather_across_devices=True)"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def gather_active(group=None) -> bool:
    """True when ``torch.distributed`` is initialised and ``group`` has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _all_gather_single(out: Tensor, inp: Tensor, group) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def _reduce_scatter_single(out: Tensor, inp: Tensor, group) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, inp, op=dist.ReduceOp.SUM, group=group)


class _GatherRows(torch.autograd.Function):
    """All-gather equally sized row blocks; backward reduce-scatters (SUM) the gradient.

    Forward: ``(rows, d)`` per rank -> ``(W * rows, d)``, rank order. The
    gradient is reduced in float32 (float64 stays float64) and cast back.
    """

    @staticmethod
    def forward(ctx, block: Tensor, group) -> Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        block = block.contiguous()
        out = block.new_empty((world * block.shape[0],) + tuple(block.shape[1:]))
        _all_gather_single(out, block, group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        world = dist.get_world_size(ctx.group)
        acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
        full = grad.to(acc).contiguous()
        out = full.new_empty((full.shape[0] // world,) + tuple(full.shape[1:]))
        _reduce_scatter_single(out, full, ctx.group)
        return out.to(grad.dtype), None


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    return t if t.shape[0] == rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


def _info_device(t, group) -> torch.device:
    if isinstance(t, Tensor):
        return t.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_with_grad(tensor: Tensor, group=None) -> Tensor:
    """``cat`` of every rank's ``tensor`` (rank order) with exact gradients.

    Row counts may differ between ranks (the trailing shape must not). The
    backward pass reduce-scatters the gradient (SUM over ranks): each rank
    receives the sum of every rank's gradient for its own rows. Without an
    initialised process group (or with one process) returns ``tensor``.
    """
    if not gather_active(group):
        return tensor
    world = dist.get_world_size(group)
    sizes = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    all_sizes = sizes.new_empty(world)
    _all_gather_single(all_sizes, sizes, group)
    counts = all_sizes.tolist()
    block = max(counts)
    g = _GatherRows.apply(_pad_rows(tensor, block), group)
    g = g.view((world, block) + tuple(tensor.shape[1:]))
    return torch.cat([g[r, : counts[r]] for r in range(world)])


def _local_error(anchors, positives, negatives, check_finite: bool) -> Exception | None:
    """Validate this rank's tensors; the "at least one negative" rule is global, not checked here."""
    try:
        n = anchors.shape[0] if isinstance(anchors, Tensor) else None
        if n == 1 and (negatives is None or (isinstance(negatives, Tensor) and negatives.shape[0] == 0)):
            negatives = positives  # one local row is fine: the negatives come from the other ranks
        check_embeddings(anchors, positives, negatives, symmetric=False, check_finite=check_finite, where=_WHERE)
    except (TypeError, ValueError) as err:
        return err
    return None


def gathered_paradigm_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    paradigm: Paradigm,
    symmetric: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    group=None,
    **options,
) -> Tensor:
    """:func:`gradsurg.paradigm_loss` over the candidates of every rank (see the module docstring).

    Called by ``paradigm_loss(..., gather_across_devices=True, group=group)``;
    falls back to the single-process loss when no process group is active.
    """
    from .engine.function import paradigm_loss

    if not gather_active(group):
        return paradigm_loss(anchors, positives, negatives, paradigm=paradigm, symmetric=symmetric,
                             reduction=reduction, backend=backend, check_finite=check_finite, **options)
    if not isinstance(paradigm, Paradigm):
        raise TypeError(f"{_WHERE}: paradigm must be a gradsurg.Paradigm, got {type(paradigm).__name__}")
    if not isinstance(symmetric, bool):
        raise TypeError(f"{_WHERE}: symmetric must be a bool, got {type(symmetric).__name__}")
    check_options(reduction, backend, where=_WHERE)

    world, rank = dist.get_world_size(group), dist.get_rank(group)
    err = _local_error(anchors, positives, negatives, check_finite)
    if negatives is not None and err is None and negatives.shape[0] == 0:
        negatives = None
    leaves = [t for t in (anchors, positives, negatives) if isinstance(t, Tensor)]
    want = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
    ok = err is None
    info = [
        anchors.shape[0] if ok else 0,
        negatives.shape[0] if ok and negatives is not None else 0,
        anchors.shape[1] if ok else 0,
        _DTYPES.index(anchors.dtype) if ok and anchors.dtype in _DTYPES else -1,
        int(ok),
        int(want),
    ]
    mine = torch.tensor(info, dtype=torch.int64, device=_info_device(anchors, group))
    everyone = mine.new_empty(world * len(info))
    _all_gather_single(everyone, mine, group)
    table = everyone.view(world, len(info)).tolist()

    bad = [r for r in range(world) if not table[r][4]]
    if bad:
        if err is not None:
            raise err
        raise ValueError(f"{_WHERE}: the inputs of rank(s) {bad} are invalid (their own error says why)")
    n_r = [row[0] for row in table]
    k_r = [row[1] for row in table]
    if len({row[2] for row in table}) > 1:
        raise ValueError(f"{_WHERE}: embedding sizes differ between ranks: d = {[row[2] for row in table]}")
    if len({row[3] for row in table}) > 1:
        raise ValueError(
            f"{_WHERE}: dtypes differ between ranks: {[str(_DTYPES[row[3]]) for row in table]}; use one dtype"
        )
    if len({row[5] for row in table}) > 1:
        raise ValueError(
            f"{_WHERE}: some ranks need gradients and others do not (requires_grad / no_grad differ: "
            f"{[bool(row[5]) for row in table]}); the backward pass is collective, so every rank must agree"
        )
    n_total, k_total = sum(n_r), sum(k_r)
    if n_total + k_total < 2:
        raise ValueError(f"{_WHERE}: the global batch has no negative (N = {n_total}, K = {k_total})")
    if symmetric and n_total < 2:
        raise ValueError(f"{_WHERE}: symmetric=True needs N >= 2 anchors in the global batch, got {n_total}")

    n_max, k_max = max(n_r), max(k_r)
    parts = ([_pad_rows(anchors, n_max)] if symmetric else []) + [_pad_rows(positives, n_max)]
    if k_max:
        parts.append(_pad_rows(negatives, k_max) if negatives is not None
                     else anchors.new_zeros((k_max, anchors.shape[1])))
    block = torch.cat(parts) if len(parts) > 1 else parts[0]
    rows = block.shape[0]
    gathered = _GatherRows.apply(block, group).view(world, rows, -1)

    off_p = n_max if symmetric else 0
    off_z = off_p + n_max
    others = [q for q in range(world) if q != rank]
    pos = [gathered[q, off_p: off_p + n_r[q]] for q in [rank] + others]
    neg = [gathered[q, off_z: off_z + k_r[q]] for q in range(world) if k_r[q]]
    candidates = torch.cat(pos + neg)  # own positives first: local row i's positive is candidate i

    impl = resolve_backend(backend, anchors)
    inner = "none" if reduction == "none" else "sum"
    loss = ParadigmFunction.apply(anchors, candidates, paradigm, False, inner, impl, options)
    if symmetric:
        reverse_cands = torch.cat([gathered[q, : n_r[q]] for q in [rank] + others])
        loss_r = ParadigmFunction.apply(positives, reverse_cands, paradigm, False, inner, impl, options)
        loss = 0.5 * (loss + loss_r)
    if reduction == "mean":
        loss = loss * (world / n_total)
    return loss
