"""A FIFO queue of detached embeddings: MoCo-style negatives that cost no gradient product.

    >>> import torch, gradsurg
    >>> queue = gradsurg.NegativeQueue(size=1024)
    >>> x, y = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16)
    >>> loss = gradsurg.info_nce(x, y, queue.negatives())   # None while the queue is empty
    >>> loss.backward()
    >>> queue.enqueue(y)                                     # after the step: detached, oldest dropped

The queue's rows do not require a gradient, so the loss forms one similarity
product for them (the candidates' gradient product skips them: see
``docs/api.md``, "Negatives without gradient").

With ``gather_across_devices=True`` each rank keeps a queue of its *own*
keys (enqueue the local batch); the loss gathers the negatives of every rank,
so each anchor sees the union of the ranks' queues (``world x size`` rows),
the MoCo layout without a second collective in ``enqueue``.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NegativeQueue"]


class NegativeQueue:
    """The ``size`` most recent embeddings enqueued, detached, oldest first.

    Args:
        size: the number of rows kept (> 0).

    The storage (device, dtype, d) is taken from the first :meth:`enqueue`;
    later batches must match it. The queue holds no gradient and no graph.
    """

    def __init__(self, size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"NegativeQueue: size must be a positive int, got {size!r}")
        self.size = size
        self._buf: Tensor | None = None
        self._count = 0  # rows filled (<= size)
        self._head = 0   # next row to overwrite

    def __len__(self) -> int:
        return self._count

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor) -> None:
        """Append ``embeddings`` (B, d) detached, dropping the oldest rows beyond ``size``."""
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"NegativeQueue.enqueue: embeddings must be a (B, d) tensor, got {shape}")
        e = embeddings.detach()
        if self._buf is None:
            self._buf = e.new_zeros((self.size, e.shape[1]))
        elif e.shape[1] != self._buf.shape[1] or e.dtype != self._buf.dtype or e.device != self._buf.device:
            raise ValueError(
                f"NegativeQueue.enqueue: embeddings are ({e.shape[1]}, {e.dtype}, {e.device}) but the queue holds "
                f"({self._buf.shape[1]}, {self._buf.dtype}, {self._buf.device}) rows"
            )
        if e.shape[0] >= self.size:
            e = e[-self.size:]
        b = e.shape[0]
        first = min(b, self.size - self._head)
        self._buf[self._head:self._head + first] = e[:first]
        if b > first:
            self._buf[: b - first] = e[first:]
        self._head = (self._head + b) % self.size
        self._count = min(self.size, self._count + b)

    def negatives(self) -> Tensor | None:
        """The queued rows (len, d), oldest first, or None when empty (a new tensor, detached)."""
        if self._count == 0:
            return None
        if self._count < self.size:
            return self._buf[: self._count].clone()
        return torch.cat([self._buf[self._head:], self._buf[: self._head]])

    def clear(self) -> None:
        """Empty the queue (keeps the storage)."""
        self._count = self._head = 0
