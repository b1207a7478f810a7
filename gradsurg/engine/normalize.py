"""L2 normalisation and its backward, shared by every backend.

``u = x / |x|``. The backward of the cosine similarity through the
normalisation is ``dx = (du - (du . u) u) / |x|``. A row with ``|x| < eps``
has no direction: its unit vector is taken as 0 and it receives no gradient
(so a zero vector gives a finite loss and finite, zero gradients).
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-12


def inverse_norm(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``1/|x_i|`` row by row (0 for rows with ``|x_i| < eps``), in ``dtype`` (default: ``x``'s)."""
    norm = torch.linalg.vector_norm(x, dim=1, dtype=dtype)
    return torch.where(norm >= EPS, 1.0 / norm.clamp(min=EPS), torch.zeros_like(norm))


def normalize(x: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(u, inv_norm)`` with ``inv_norm = 1/|x|`` (0 for rows with ``|x| < eps``)."""
    inv = inverse_norm(x)
    return x * inv[:, None], inv


def normalize_backward(du: Tensor, u: Tensor, inv_norm: Tensor) -> Tensor:
    """``(du - (du . u) u) / |x|`` row by row (0 where the row had no direction)."""
    radial = torch.linalg.vecdot(du, u, dim=1)
    return torch.addcmul(du, radial[:, None], u, value=-1.0).mul_(inv_norm[:, None])
