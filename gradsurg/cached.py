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
split; with a 2-D ``attention_mask`` each chunk is trimmed to its own longest
sequence), or a list of strings. Chunks are built afresh in each pass and
dropped after use: across the step only the ``(rows, d)`` embeddings, their
gradients and one random state per chunk (until its replay) are held.

Random state (see ``docs/distributed.md`` for the exact guarantee): before
each chunk's first forward the CPU generator and those of the devices in use
(:func:`rng_devices`) are saved; the replay restores them, so it draws the same
dropout masks; afterwards the generators are where the first pass left them,
i.e. where embedding the same chunks once with autograd leaves them.

Under DDP pass the DDP module's ``no_sync``
(detected automatically when ``encode`` is the DDP module itself) so that
gradients are all-reduced once per step, after the last chunk. With
``gather_across_devices=True`` in ``loss_fn`` every rank's cached embeddings
meet the global batch, so the two compose: the global batch is
``world_size x`` the per-rank batch, each rank holding one chunk at a time.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["cached_step", "cached_loss", "split_batch", "RngState", "rng_devices"]


@dataclass
class RngState:
    """The random state a chunk's forward pass draws from: CPU, the CUDA devices in use (and MPS).

    ``cuda`` maps a CUDA device index to its generator state. Only the devices
    given to :meth:`capture` are saved (see :func:`rng_devices`): reading the
    state of every visible GPU would create a CUDA context on each of them.
    """

    cpu: Tensor
    cuda: dict[int, Tensor] = field(default_factory=dict)
    mps: Tensor | None = None

    @classmethod
    def capture(cls, devices: Iterable[torch.device] | None = None) -> "RngState":
        """The current state of the CPU generator and of ``devices``' generators.

        ``devices=None``: the current CUDA device when CUDA is initialised.
        """
        if devices is None:
            devices = _initialised_current_device()
        cuda: dict[int, Tensor] = {}
        mps = None
        for dev in devices:
            if dev.type == "cuda":
                index = torch.cuda.current_device() if dev.index is None else dev.index
                if index not in cuda:
                    cuda[index] = torch.cuda.get_rng_state(index)
            elif dev.type == "mps" and mps is None:
                mps = torch.mps.get_rng_state()
        return cls(torch.get_rng_state(), cuda, mps)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for index, state in self.cuda.items():
            torch.cuda.set_rng_state(state, index)
        if self.mps is not None:
            torch.mps.set_rng_state(self.mps)


def _initialised_current_device() -> list[torch.device]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return [torch.device("cuda", torch.cuda.current_device())]
    return []


def _tensors_of(value) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors_of(v)
    elif isinstance(value, (list, tuple)) and value and isinstance(value[0], (Tensor, Mapping)):
        for v in value:
            yield from _tensors_of(v)


def rng_devices(encode: Any, inputs: Sequence[Any] = ()) -> list[torch.device]:
    """The non-CPU devices whose random generators a cached step saves and replays.

    The devices of ``encode``'s parameters and buffers (when ``encode`` is an
    ``nn.Module``, a DDP wrapper or a bound method of a module), of the
    tensors in ``inputs``, and the current CUDA device when CUDA is
    initialised. A model spread over several GPUs therefore has every one of
    its GPUs saved.
    """
    found: dict[tuple[str, int | None], torch.device] = {}

    def add(dev: torch.device) -> None:
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.type in ("cuda", "mps"):
            found.setdefault((dev.type, dev.index), dev)

    module = encode if isinstance(encode, torch.nn.Module) else getattr(encode, "__self__", None)
    if isinstance(module, torch.nn.Module):
        for t in module.parameters():
            add(t.device)
        for t in module.buffers():
            add(t.device)
    for column in inputs:
        for t in _tensors_of(column):
            add(t.device)
    for dev in _initialised_current_device():
        add(dev)
    return sorted(found.values(), key=lambda d: (d.type, d.index or 0))


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        if "cu_seq_lens_q" in batch:
            raise ValueError(
                "cached steps: flattened (packed) inputs with 'cu_seq_lens_q' cannot be split by rows here; "
                "collate the batch with padding"
            )
        ids = batch.get("input_ids")
        if "offsets" in batch and isinstance(ids, Tensor) and ids.dim() == 1:
            raise ValueError(
                "cached steps: a flat 'input_ids' with 'offsets' (an EmbeddingBag model such as StaticEmbedding) "
                "has no batch dimension to split; use the uncached step"
            )
        for key in ("input_ids", "attention_mask"):
            if isinstance(batch.get(key), Tensor) and batch[key].dim() > 0:
                return batch[key].shape[0]
        for value in batch.values():
            if isinstance(value, (Tensor, list, tuple)) and not (isinstance(value, Tensor) and value.dim() == 0):
                return len(value)
        raise TypeError("cached_step: a mapping column needs at least one tensor or list value (the batch rows)")
    if isinstance(batch, (list, tuple)):
        return len(batch)
    raise TypeError(
        f"cached_step: a column must be a tensor, a mapping of tensors/lists or a list, got {type(batch).__name__}"
    )


class _Chunks:
    """How one column is cut: row ranges and, for token mappings, each chunk's own width.

    Computed once, before the first pass, so that both passes cut identically
    even if a model edits its inputs; :meth:`make` builds a fresh chunk each
    time (a new dict for mappings), so nothing the model writes into a chunk
    outlives that chunk's forward (and, in the replay, its backward).
    """

    def __init__(self, batch: Any, size: int, trim: bool = True):
        self.batch = batch
        self.n = n = _batch_len(batch)
        self.ranges = [(i, min(i + size, n)) for i in range(0, n, size)]
        self.widths: list[int | None] = [None] * len(self.ranges)
        self.seq = None
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if trim and isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[0] == n:
            self.seq = seq = mask.shape[1]
            # the last column with a real token in each chunk: trailing padding is dropped, leading kept
            last = (mask != 0).flip(1).int().argmax(1).neg_().add_(seq)  # per row: index of last real token + 1
            last = torch.where((mask != 0).any(1), last, torch.zeros_like(last))
            for j, (a, b) in enumerate(self.ranges):
                width = int(last[a:b].max())
                self.widths[j] = width if 0 < width < seq else None

    def __len__(self) -> int:
        return len(self.ranges)

    def rows(self, j: int) -> int:
        a, b = self.ranges[j]
        return b - a

    def make(self, j: int) -> Any:
        a, b = self.ranges[j]
        batch = self.batch
        if not isinstance(batch, Mapping):
            return batch[a:b]
        width, n, seq = self.widths[j], self.n, self.seq

        def cut(value):
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
                if width is not None and value.dim() >= 2 and value.shape[1] == seq:
                    return value[a:b, :width]
                return value[a:b]
            if isinstance(value, (list, tuple)) and len(value) == n:
                return value[a:b]
            return value

        return {k: cut(v) for k, v in batch.items()}


def split_batch(batch: Any, size: int, trim: bool = True) -> list[Any]:
    """Chunks of ``size`` rows of one column (tensor, mapping of tensors/lists, or list).

    A mapping with a 2-D ``attention_mask`` (a tokenizer's output) is cut into
    chunks that each keep only the columns up to their own longest sequence
    (every value of the mask's ``(rows, length)`` shape is trimmed; leading
    padding is kept); ``trim=False`` keeps the whole padded width.
    """
    chunks = _Chunks(batch, size, trim)
    return [chunks.make(j) for j in range(len(chunks))]


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
    trim_padding: bool = True,
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
        trim_padding: cut each chunk of a tokenised column (a mapping with a
            2-D ``attention_mask``) to its own longest sequence (see
            :func:`split_batch`).

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

    devices = rng_devices(encode, inputs)
    chunks, states, embs = _first_pass(encode, inputs, mini_batch_size, trim_padding, devices)
    after = RngState.capture(devices)

    # the loss and its gradient with respect to the embeddings
    leaves = [e.detach().requires_grad_() for e in embs]
    del embs
    with torch.enable_grad():
        loss = loss_fn(*leaves)
        _check_loss(loss)
        scale(loss).backward()
    out = loss.detach()
    del loss  # the loss's graph is spent; only the (rows, d) gradients of the leaves are kept
    try:
        _replay(encode, chunks, states, leaves, no_sync)
    finally:
        after.restore()  # the random stream continues as after the same chunks embedded once
    return (out, [leaf.detach() for leaf in leaves]) if return_embeddings else out


def _check_args(inputs, mini_batch_size, where: str) -> None:
    if mini_batch_size is not None and (
        not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) or mini_batch_size < 1
    ):
        raise ValueError(f"{where}: mini_batch_size must be a positive int or None, got {mini_batch_size!r}")
    if isinstance(inputs, (Tensor, Mapping)) or not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise TypeError(f"{where}: inputs must be a non-empty list of columns, e.g. [anchors, positives]")


def _first_pass(encode, inputs, mini_batch_size, trim_padding, devices, save_states=True):
    """Pass 1: each column's embeddings without a graph, the random state saved before each chunk.

    Each chunk is built, embedded and dropped: only its ``(rows, d)`` embedding
    and its random state are kept.
    """
    chunks = [_Chunks(column, mini_batch_size, trim_padding) for column in inputs]
    states: list[list[RngState | None]] = []
    embs = []
    with torch.no_grad():
        for column in chunks:
            col_states, col_embs = [], []
            for j in range(len(column)):
                col_states.append(RngState.capture(devices) if save_states else None)
                emb = _embed(encode, column.make(j))
                if emb.untyped_storage().nbytes() > emb.numel() * emb.element_size():
                    emb = emb.clone()  # a view (e.g. [CLS] rows) would keep the chunk's hidden states alive
                col_embs.append(emb)
            states.append(col_states)
            embs.append(torch.cat(col_embs) if len(col_embs) > 1 else col_embs[0])
            del col_embs
    return chunks, states, embs


def _replay(encode, chunks, states, leaves, no_sync) -> None:
    """Pass 2: re-embed each chunk with a graph, replaying its random state; back-propagate its gradient.

    A chunk's inputs, activations and random state are released as soon as
    its backward has run.
    """
    todo = [(c, j) for c, leaf in enumerate(leaves) if leaf.grad is not None  # else loss_fn did not use it
            for j in range(len(chunks[c]))]
    offsets = [0] * len(chunks)
    for idx, (c, j) in enumerate(todo):
        rows = chunks[c].rows(j)
        grad = leaves[c].grad[offsets[c]: offsets[c] + rows]
        offsets[c] += rows
        last = idx == len(todo) - 1
        ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
        state, states[c][j] = states[c][j], None
        state.restore()
        with ctx, torch.enable_grad():
            emb = _embed(encode, chunks[c].make(j))
            if emb.shape != grad.shape:
                raise RuntimeError(
                    f"cached: re-embedding a chunk gave shape {tuple(emb.shape)}, the first pass "
                    f"{tuple(grad.shape)}; encode must be deterministic given the random state"
                )
            emb.backward(grad.to(emb.dtype))
        del emb, state


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
        encode, chunks, states, leaves, loss, no_sync, devices = job
        del job
        now = RngState.capture(devices)
        try:
            with torch.enable_grad():
                torch.autograd.backward(loss, grad_output)
            del loss
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
    trim_padding: bool = True,
) -> Tensor:
    """The cached step for code that calls ``loss.backward()`` itself (a ``Trainer``'s loss).

    Runs pass 1 and the loss now and returns the loss value; back-propagating
    it (any ``grad_output``: AMP scaling, accumulation) runs the loss's
    backward and the replay of pass 2. The same gradients as
    :func:`cached_step`. The returned tensor may be back-propagated once.
    ``no_sync`` and ``trim_padding`` as in :func:`cached_step`.

    Under ``torch.no_grad()`` (evaluation) the chunks are embedded once and the
    loss is returned without anything kept for a backward. When no column has
    more than ``mini_batch_size`` rows, the plain loss is returned (its graph
    is one chunk's).
    """
    _check_args(inputs, mini_batch_size, "cached_loss")
    if mini_batch_size is None:
        raise ValueError("cached_loss: mini_batch_size is required (without it, just compute the loss)")
    if not torch.is_grad_enabled():
        _, _, embs = _first_pass(encode, inputs, mini_batch_size, trim_padding, (), save_states=False)
        loss = loss_fn(*embs)
        _check_loss(loss)
        return loss
    if all(_batch_len(c) <= mini_batch_size for c in inputs):
        # one chunk per column: the plain loss (same gradients and random stream, one forward pass less)
        loss = loss_fn(*[_embed(encode, column) for column in inputs])
        _check_loss(loss)
        return loss
    if no_sync is None and isinstance(encode, torch.nn.parallel.DistributedDataParallel):
        no_sync = encode.no_sync
    devices = rng_devices(encode, inputs)
    chunks, states, embs = _first_pass(encode, inputs, mini_batch_size, trim_padding, devices)
    leaves = [e.detach().requires_grad_() for e in embs]
    del embs
    with torch.enable_grad():
        loss = loss_fn(*leaves)
        _check_loss(loss)
    handle = torch.empty(0, device=loss.device, requires_grad=True)
    return _DeferredReplay.apply(loss.detach(), handle, (encode, chunks, states, leaves, loss, no_sync, devices))


def _check_loss(loss) -> None:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise TypeError(
            "cached_step: loss_fn must return a scalar tensor, got "
            + (f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__)
        )
