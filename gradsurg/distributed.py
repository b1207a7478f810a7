"""Collectives with exact gradients: pure gather / reduce-scatter helpers.

Nothing here knows about losses: :func:`gradsurg.paradigm_loss` with
``gather_across_devices=True`` builds the global candidate set from these
helpers (the layout, validation across ranks and the DDP scaling are
documented in :mod:`gradsurg.api` and ``docs/distributed.md``).

* :func:`gather_active` -- is there more than one process to gather from?
* :func:`all_gather_with_grad` -- ``cat`` of every rank's rows (counts may
  differ), whose backward reduce-scatters (SUM) the gradient to the owners.
* :func:`all_gather_blocks` -- the same for equally sized (padded) blocks,
  as ``(world, rows, ...)``: one collective for several tensors.
* :func:`exchange_ints` -- every rank's small list of integers (sizes,
  flags), for checks that must agree across ranks; :func:`agree` -- the same
  with every rank's validation error raised on all ranks together.
* :func:`ring_shift` -- send a tensor to the next rank and receive the previous
  rank's, without waiting (the ring of ``distributed="ring"``: compute on the
  block in hand while the next one travels).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .vocabulary import compute_dtype

__all__ = ["gather_active", "all_gather_with_grad", "all_gather_blocks", "exchange_ints", "agree", "pad_rows",
           "ring_shift"]


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
        full = grad.to(compute_dtype(grad.dtype)).contiguous()
        out = full.new_empty((full.shape[0] // world,) + tuple(full.shape[1:]))
        _reduce_scatter_single(out, full, ctx.group)
        return out.to(grad.dtype), None


def pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` with zero rows appended up to ``rows``."""
    return t if t.shape[0] == rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


def all_gather_blocks(block: Tensor, group=None) -> Tensor:
    """Every rank's ``(rows, ...)`` block (same shape on every rank) as ``(world, rows, ...)``,
    with the gradient reduce-scattered (SUM) back to each block's owner."""
    world = dist.get_world_size(group)
    return _GatherRows.apply(block, group).view((world,) + tuple(block.shape))


def _info_device(t, group) -> torch.device:
    if isinstance(t, Tensor):
        return t.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def exchange_ints(values: list[int], group=None, like=None) -> list[list[int]]:
    """Every rank's ``values`` (same length everywhere), as a list indexed by rank.

    ``like``: a tensor on the device the group communicates from (CPU for gloo,
    the current CUDA device for NCCL when None)."""
    world = dist.get_world_size(group)
    mine = torch.tensor(values, dtype=torch.int64, device=_info_device(like, group))
    everyone = mine.new_empty(world * len(values))
    _all_gather_single(everyone, mine, group)
    return everyone.view(world, len(values)).tolist()


def agree(err: Exception | None, values: list[int], group=None, like=None, where: str = "") -> list[list[int]]:
    """A check that every rank passes or fails together, so that no rank waits alone in a later
    collective: exchanges ``[ok, *values]``. When any rank has an ``err``, that rank raises it and
    the others a ``ValueError`` naming the failed ranks (starting with ``where``); otherwise returns
    every rank's ``values`` (a list indexed by rank). ``like``: as :func:`exchange_ints`."""
    table = exchange_ints([int(err is None), *values], group, like)
    bad = [r for r, row in enumerate(table) if not row[0]]
    if bad:
        if err is not None:
            raise err
        raise ValueError(f"{where}: the inputs of rank(s) {bad} are invalid (their own error says why)")
    return [row[1:] for row in table]


def all_gather_with_grad(tensor: Tensor, group=None, counts: list[int] | None = None) -> Tensor:
    """``cat`` of every rank's ``tensor`` (rank order) with exact gradients.

    Row counts may differ between ranks (the trailing shape must not); ``counts``:
    every rank's row count when the caller already has them (else one
    :func:`exchange_ints`). The backward pass reduce-scatters the gradient (SUM
    over ranks): each rank receives the sum of every rank's gradient for its own
    rows. Without an initialised process group (or with one process) returns ``tensor``.
    """
    if not gather_active(group):
        return tensor
    if counts is None:
        counts = [row[0] for row in exchange_ints([tensor.shape[0]], group, tensor)]
    block = max(counts)
    g = all_gather_blocks(pad_rows(tensor, block), group)
    return torch.cat([g[r, : counts[r]] for r in range(len(counts))])


class _Pending:
    """A ring transfer in flight: :meth:`wait` returns the received tensor."""

    def __init__(self, requests, received: Tensor):
        self._requests, self._received = requests, received

    def wait(self) -> Tensor:
        for req in self._requests:
            req.wait()
        return self._received


def ring_shift(tensor: Tensor, group=None, tag: int = 0) -> _Pending:
    """Start sending ``tensor`` to the next rank of ``group`` (rank + 1, cyclic) and receiving the
    previous rank's tensor of the same shape and dtype into a new buffer; returns at once.

    ``.wait()`` on the result gives the received tensor; ``tensor`` must not be modified before
    then. ``tag`` tells apart transfers in flight at the same time (both sides issue them in the
    same order). No gradient: the ring's autograd node moves gradients itself.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    nxt, prev = (rank + 1) % world, (rank - 1) % world
    if group is not None:  # P2POp takes global ranks
        nxt, prev = dist.get_global_rank(group, nxt), dist.get_global_rank(group, prev)
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    ops = [dist.P2POp(dist.isend, tensor, nxt, group=group, tag=tag),
           dist.P2POp(dist.irecv, received, prev, group=group, tag=tag)]
    return _Pending(dist.batch_isend_irecv(ops), received)
