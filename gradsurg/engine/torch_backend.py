"""The chunked torch backend: the gradient is formed in the forward pass.

For a chunk of anchor rows it computes ``s = u_chunk v^T`` (one product), the
chunk's row statistics, ``G = GD (W - [j==i] R) * row_scale`` in place, then
``dU_chunk = G v`` and ``dV += G^T u_chunk`` (two products). The whole N x M
matrix is never held; the chunk size follows a memory budget. Statistics and
G are float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..components._rows import Rows
from ..paradigm import Paradigm
from .normalize import normalize, normalize_backward

#: default bytes for one chunk's N x M work buffers
DEFAULT_CHUNK_BYTES = 128 * 2**20
#: how many (rows x M) buffers of the statistics dtype a chunk may hold at once
_BUFFERS_PER_CHUNK = 3


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def chunk_rows(n: int, m: int, dtype: torch.dtype, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that the chunk's work buffers fit ``chunk_bytes``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, min(n, chunk_bytes // (m * itemsize * _BUFFERS_PER_CHUNK)))


def direction(
    u: Tensor,
    v: Tensor,
    paradigm: Paradigm,
    row_scale: float | Tensor | None,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One direction of the loss: anchors ``u`` (N x d) against candidates ``v`` (M x d).

    Row i's positive is candidate i. Returns the per-anchor loss ``(N,)`` and,
    when ``row_scale`` is given (a float, or an ``(N,)`` tensor for
    ``reduction='none'``), the gradients ``dU = G u`` and ``dV = G^T u`` of
    ``sum_i row_scale_i L_i`` with respect to the unit vectors.
    """
    n, m = u.shape[0], v.shape[0]
    want_grad = row_scale is not None
    loss = torch.empty(n, dtype=u.dtype, device=u.device)
    du = torch.empty_like(u) if want_grad else None
    dv = torch.zeros_like(v) if want_grad else None
    step = chunk_rows(n, m, u.dtype, chunk_bytes)
    temperature = paradigm.shared_temperature
    for start in range(0, n, step):
        stop = min(n, start + step)
        uc = u[start:stop]
        rows = Rows.from_product(uc, v, start, temperature)
        scale = row_scale[start:stop] if isinstance(row_scale, Tensor) else row_scale
        loss[start:stop], g = paradigm.gradient(rows, scale)
        if g is not None:
            torch.mm(g, v, out=du[start:stop])
            dv.addmm_(g.T, uc)
    return loss, du, dv


def forward(
    x: Tensor,
    c: Tensor,
    paradigm: Paradigm,
    *,
    symmetric: bool,
    row_scale: float | Tensor | None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss rows and gradients w.r.t. the raw anchors ``x`` and candidates ``c``.

    ``row_scale`` multiplies row i's loss in the objective whose gradient is
    returned (None: loss only). With ``symmetric`` the loss of row i is the
    mean of its two directions (anchor->candidates, positive->anchors).
    """
    cd = compute_dtype(x.dtype)
    u, inv_x = normalize(x.to(cd))
    v, inv_c = normalize(c.to(cd))
    n = u.shape[0]
    if symmetric:
        half = None if row_scale is None else row_scale * 0.5
        loss_f, du, dv = direction(u, v, paradigm, half, chunk_bytes=chunk_bytes)
        loss_r, dv_r, du_r = direction(v[:n], u, paradigm, half, chunk_bytes=chunk_bytes)
        loss = 0.5 * (loss_f + loss_r)
        if row_scale is not None:
            du += du_r
            dv[:n] += dv_r
    else:
        loss, du, dv = direction(u, v, paradigm, row_scale, chunk_bytes=chunk_bytes)
    if row_scale is None:
        return loss, None, None
    return loss, normalize_backward(du, u, inv_x), normalize_backward(dv, v, inv_c)
