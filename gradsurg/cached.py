r"""Cached (GradCache-style) training steps: batches larger than memory, exact gradients.

A contrastive loss couples every pair of the batch, so its batch cannot be
split into independent micro-batches. It can be split at the embeddings
(Gao et al., 2021, "GradCache"):

1. embed the batch chunk by chunk **without** an autograd graph, saving the
   random state before each chunk (so dropout can be replayed);
2. compute the loss on the detached embeddings and its gradient
   ``g = dL / d embeddings``: for gradsurg's losses this is the paradigm's
   gradient, formed directly from GD, W and R (no N x M graph);
3. re-embed each chunk **with** a graph, replaying its random state, and
   back-propagate ``g_chunk`` through it (``emb.backward(g_chunk)``).

Peak memory is one chunk's activations plus the ``(N, d)`` embeddings, at the
cost of a second forward pass. Parameter gradients are those of the step that
embeds the same chunks with autograd and back-propagates the same loss (the
same dropout masks): equal up to floating-point rounding of the accumulation
order. With dropout off they equal the whole-batch step's gradients.

The function the trainer calls (``--mini-batch-size``)::

    from gradsurg.cached import cached_step

    loss = cached_step(
        encode=lambda chunk: model.embed(chunk),     # chunk of a column -> (rows, d) tensor
        inputs=[batch, batch],                       # the columns: anchors, positives[, negatives]
        loss_fn=lambda a, p: gradsurg.info_nce(a, p),
        mini_batch_size=32,                          # None: the plain (uncached) step
    )
    optimizer.step(); optimizer.zero_grad()

For code that back-propagates the loss itself (a ``Trainer``'s loss),
:func:`cached_loss` runs pass 1 and the loss now and the replay inside the
loss's backward.

Each column is any of: a tensor (split along rows), a mapping of tensors /
lists such as a tokenizer's output (every value with the batch's length is
split), or a list of strings. Under DDP pass the DDP module's ``no_sync``
(detected automatically when ``encode`` is the DDP module itself) so that
gradients are all-reduced once per step, after the last chunk. With
``gather_across_devices=True`` in ``loss_fn`` every rank's cached embeddings
meet the global batch, so the two compose: the global batch is
``world_size x`` the per-rank batch, each rank holding one chunk at a time.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import Tensor

__all__ = ["cached_step", "cached_loss", "split_batch", "RngState"]


@dataclass
class RngState:
    """The CPU and (initialised) CUDA generators' states: captured, then restored to replay dropout."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> "RngState":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, (Tensor, list, tuple)):
                return len(value)
        raise TypeError("cached_step: a mapping column needs at least one tensor or list value (the batch rows)")
    if isinstance(batch, (list, tuple)):
        return len(batch)
    raise TypeError(
        f"cached_step: a column must be a tensor, a mapping of tensors/lists or a list, got {type(batch).__name__}"
    )


def split_batch(batch: Any, size: int) -> list[Any]:
    """Chunks of ``size`` rows of one column (tensor, mapping of tensors/lists, or list)."""
    n = _batch_len(batch)
    starts = range(0, n, size)
    if isinstance(batch, Tensor):
        return [batch[i: i + size] for i in starts]
    if isinstance(batch, Mapping):
        def cut(value, i):
            if isinstance(value, (Tensor, list, tuple)) and len(value) == n:
                return value[i: i + size]
            return value
        return [{k: cut(v, i) for k, v in batch.items()} for i in starts]
    return [batch[i: i + size] for i in starts]


def _embed(encode, chunk) -> Tensor:
    emb = encode(chunk)
    if not isinstance(emb, Tensor) or emb.dim() != 2:
        raise TypeError(
            "cached_step: encode(chunk) must return a (rows, d) tensor, got "
            + (f"shape {tuple(emb.shape)}" if isinstance(emb, Tensor) else type(emb).__name__)
        )
    return emb


def cached_step(
    encode: Callable[[Any], Tensor],
    inputs: Sequence[Any],
    loss_fn: Callable[..., Tensor],
    mini_batch_size: int | None = None,
    *,
    no_sync: Callable[[], ContextManager] | None = None,
    scale_loss: Callable[[Tensor], Tensor] | None = None,
    return_embeddings: bool = False,
):
    """One forward + backward of ``loss_fn(*[encode(column) for column in inputs])``.

    Gradients accumulate into the parameters' ``.grad`` exactly as
    ``loss.backward()`` would; the optimiser step is the caller's.

    Args:
        encode: maps a chunk of one column to its ``(rows, d)`` embeddings
            (the model's forward; it may use dropout).
        inputs: the columns, e.g. ``[anchors, positives]`` or
            ``[anchors, positives, negatives]``; each is embedded separately,
            in order, chunk by chunk. Columns may have different lengths.
        loss_fn: ``loss_fn(*embeddings) -> scalar tensor`` (any gradsurg loss,
            ``gather_across_devices=True`` included). Parameters used inside
            ``loss_fn`` itself (a learned temperature) get their gradients too.
        mini_batch_size: rows per chunk. ``None`` (or a size no column
            exceeds): the plain step (embed each whole column with
            autograd, back-propagate the loss), same random stream.
        no_sync: a context-manager factory suppressing DDP's gradient
            all-reduce, used for every chunk's backward but the last
            (default: ``encode.no_sync`` when ``encode`` is a DDP module).
        scale_loss: applied to the loss before back-propagating (e.g.
            ``scaler.scale`` for AMP, or ``lambda l: l / accumulation``);
            the returned loss is unscaled.
        return_embeddings: also return the detached embeddings of each column.

    Returns:
        The loss (detached), or ``(loss, [embeddings per column])``.
    """
    _check_args(inputs, mini_batch_size, "cached_step")
    if no_sync is None and isinstance(encode, torch.nn.parallel.DistributedDataParallel):
        no_sync = encode.no_sync
    scale = scale_loss if scale_loss is not None else (lambda t: t)

    if mini_batch_size is None or all(_batch_len(c) <= mini_batch_size for c in inputs):
        # the plain step (also when every column fits in one chunk: a replay would only repeat it)
        with torch.enable_grad():
            embs = [_embed(encode, column) for column in inputs]
            loss = loss_fn(*embs)
            _check_loss(loss)
            scale(loss).backward()
        out = loss.detach()
        return (out, [e.detach() for e in embs]) if return_embeddings else out

    chunks, states, embs = _first_pass(encode, inputs, mini_batch_size)
    after = RngState.capture()

    # the loss and its gradient with respect to the embeddings
    leaves = [e.detach().requires_grad_() for e in embs]
    with torch.enable_grad():
        loss = loss_fn(*leaves)
        _check_loss(loss)
        scale(loss).backward()
    try:
        _replay(encode, chunks, states, leaves, no_sync)
    finally:
        after.restore()  # the random stream continues as after an uncached step
    out = loss.detach()
    return (out, [e.detach() for e in embs]) if return_embeddings else out


def _check_args(inputs, mini_batch_size, where: str) -> None:
    if mini_batch_size is not None and (not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool)
                                        or mini_batch_size < 1):
        raise ValueError(f"{where}: mini_batch_size must be a positive int or None, got {mini_batch_size!r}")
    if isinstance(inputs, (Tensor, Mapping)) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise TypeError(f"{where}: inputs must be a non-empty list of columns, e.g. [anchors, positives]")


def _first_pass(encode, inputs, mini_batch_size):
    """Pass 1: each column's embeddings without a graph, the random state saved before each chunk."""
    chunks = [split_batch(column, mini_batch_size) for column in inputs]
    states: list[list[RngState]] = []
    embs = []
    with torch.no_grad():
        for column in chunks:
            col_states, col_embs = [], []
            for chunk in column:
                col_states.append(RngState.capture())
                col_embs.append(_embed(encode, chunk))
            states.append(col_states)
            embs.append(torch.cat(col_embs) if len(col_embs) > 1 else col_embs[0])
    return chunks, states, embs


def _replay(encode, chunks, states, leaves, no_sync) -> None:
    """Pass 2: re-embed each chunk with a graph, replaying its random state; back-propagate its gradient."""
    todo = []
    for c, (column, leaf) in enumerate(zip(chunks, leaves)):
        if leaf.grad is None:
            continue  # loss_fn did not use this column
        start = 0
        for j, chunk in enumerate(column):
            rows = _batch_len(chunk)
            todo.append((chunk, states[c][j], leaf.grad[start: start + rows]))
            start += rows
    for idx, (chunk, state, grad) in enumerate(todo):
        last = idx == len(todo) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        state.restore()
        with ctx, torch.enable_grad():
            emb = _embed(encode, chunk)
            if emb.shape != grad.shape:
                raise RuntimeError(
                    f"cached: re-embedding a chunk gave shape {tuple(emb.shape)}, the first pass "
                    f"{tuple(grad.shape)}; encode must be deterministic given the random state"
                )
            emb.backward(grad.to(emb.dtype))


class _DeferredReplay(torch.autograd.Function):
    """Passes the loss value through; its backward back-propagates the loss and replays the chunks."""

    @staticmethod
    def forward(ctx, value, handle, job):
        # ``value`` is detached and ``handle`` an empty leaf: the outer backward stops here and
        # never walks the loss's own graph (which the nested backward below consumes)
        ctx.job = job
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        job, ctx.job = ctx.job, None  # one backward only; frees the chunks afterwards
        if job is None:
            raise RuntimeError("cached_loss: the loss was already back-propagated (the replay runs once)")
        encode, chunks, states, leaves, loss, no_sync = job
        now = RngState.capture()
        try:
            with torch.enable_grad():
                torch.autograd.backward(loss, grad_output)
            _replay(encode, chunks, states, leaves, no_sync)
        finally:
            now.restore()  # the replay leaves the random stream where it was
        return None, None, None


def cached_loss(
    encode: Callable[[Any], Tensor],
    inputs: Sequence[Any],
    loss_fn: Callable[..., Tensor],
    mini_batch_size: int,
    *,
    no_sync: Callable[[], ContextManager] | None = None,
) -> Tensor:
    """The cached step for code that calls ``loss.backward()`` itself (a ``Trainer``'s loss).

    Runs pass 1 and the loss now and returns the loss value; back-propagating
    it (any ``grad_output``: AMP scaling, accumulation) runs the loss's
    backward and the replay of pass 2. The same gradients as
    :func:`cached_step`. The returned tensor may be back-propagated once.
    ``no_sync`` as in :func:`cached_step`.
    """
    _check_args(inputs, mini_batch_size, "cached_loss")
    if mini_batch_size is None:
        raise ValueError("cached_loss: mini_batch_size is required (without it, just compute the loss)")
    if no_sync is None and isinstance(encode, torch.nn.parallel.DistributedDataParallel):
        no_sync = encode.no_sync
    chunks, states, embs = _first_pass(encode, inputs, mini_batch_size)
    leaves = [e.detach().requires_grad_() for e in embs]
    with torch.enable_grad():
        loss = loss_fn(*leaves)
        _check_loss(loss)
    handle = torch.empty(0, device=loss.device, requires_grad=True)
    return _DeferredReplay.apply(loss.detach(), handle, (encode, chunks, states, leaves, loss, no_sync))


def _check_loss(loss) -> None:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(
            "cached_step: loss_fn must return a scalar tensor, got "
            + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__)
        )
