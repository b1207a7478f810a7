"""The one ``torch.autograd.Function`` every loss of gradsurg goes through."""
from __future__ import annotations

import torch
from torch import Tensor

from ..paradigm import Paradigm
from . import torch_backend
from .validation import check_embeddings, check_options


def _triton_available() -> bool:
    try:
        from ..kernels import launch  # noqa: F401  (gradsurg.kernels, from kernels/)
    except Exception:  # ImportError, or Triton missing
        return False
    return True


def resolve_backend(backend: str, x: Tensor):
    """The module implementing ``forward(x, c, paradigm, symmetric=, row_scale=)``."""
    if backend == "torch":
        return torch_backend
    if backend == "auto":
        if x.is_cuda and _triton_available():
            from ..kernels import launch

            return launch
        return torch_backend
    try:  # "triton"
        from ..kernels import launch
    except Exception as exc:
        raise ValueError(f"paradigm_loss: backend='triton' is unavailable here: {exc}") from exc
    return launch


class ParadigmFunction(torch.autograd.Function):
    """Loss value in forward; the gradient SET from the paradigm, not differentiated.

    For ``reduction`` 'mean' and 'sum' the input gradients are computed in the
    forward pass and backward only scales them by ``grad_output``. For 'none'
    the forward computes the loss rows only and the backward recomputes with
    each row weighted by its ``grad_output``.
    """

    @staticmethod
    def forward(ctx, x, c, paradigm, symmetric, reduction, backend, options):
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n = x.shape[0]
        ctx.set_materialize_grads(False)
        if reduction == "none" or not want:
            loss, _, _ = backend.forward(x, c, paradigm, symmetric=symmetric, row_scale=None, **options)
            if want:
                ctx.save_for_backward(x, c)
            ctx.args = (paradigm, symmetric, backend, options)
        else:
            scale = 1.0 / n if reduction == "mean" else 1.0
            loss, dx, dc = backend.forward(x, c, paradigm, symmetric=symmetric, row_scale=scale, **options)
            ctx.save_for_backward(dx.to(x.dtype), dc.to(c.dtype))
        ctx.reduction = reduction
        if reduction == "mean":
            return loss.mean().to(x.dtype)
        if reduction == "sum":
            return loss.sum().to(x.dtype)
        return loss.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        if grad_output is None:
            return None, None, None, None, None, None, None
        if ctx.reduction == "none":
            x, c = ctx.saved_tensors
            paradigm, symmetric, backend, options = ctx.args
            cd = torch_backend.compute_dtype(x.dtype)
            _, dx, dc = backend.forward(
                x, c, paradigm, symmetric=symmetric, row_scale=grad_output.to(cd), **options
            )
            dx, dc = dx.to(x.dtype), dc.to(c.dtype)
        else:
            dx, dc = ctx.saved_tensors
            dx, dc = dx * grad_output, dc * grad_output
        return (
            dx if ctx.needs_input_grad[0] else None,
            dc if ctx.needs_input_grad[1] else None,
            None, None, None, None, None,
        )


def paradigm_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    paradigm: Paradigm,
    symmetric: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    gather_across_devices: bool = False,
    group=None,
    **options,
) -> Tensor:
    r"""A contrastive loss whose gradient is set from GD, W and R.

    Candidates are ``cat(positives, negatives)`` (M = N + K rows); row i's
    positive is candidate i and every other candidate is a negative of anchor
    i. With ``s_ij = cos(anchors_i, candidates_j)`` the gradient is

    .. math::

        \frac{\partial L}{\partial s_{ij}} = \frac{1}{N} GD_i (W_{ij} - [j=i] R_i)

    (for ``reduction='mean'``), back-propagated through the cosine to the raw
    embeddings. The value is the true loss when ``paradigm`` is a known loss
    (``paradigm.loss_name``), else the surrogate
    ``GD_i (sum_{j!=i} W_ij s_ij - R_i s_ii)``.

    Args:
        anchors: ``(N, d)`` raw embeddings.
        positives: ``(N, d)``; row i is anchor i's positive.
        negatives: optional ``(K, d)`` extra (hard) negatives shared by all anchors.
        paradigm: a :class:`gradsurg.Paradigm` (e.g. ``gradsurg.paradigms.info_nce()``).
        symmetric: average the anchor->candidates and positive->anchors
            directions (CLIP style); the second uses the anchors as candidates.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` (per-anchor losses, shape (N,)).
        backend: ``'auto'`` (Triton for CUDA tensors when available, else
            torch), ``'torch'`` or ``'triton'``.
        check_finite: raise ``ValueError`` on NaN/inf inputs (one extra pass).
        gather_across_devices: with ``torch.distributed`` initialised, the
            candidates (positives, hard negatives; anchors too when symmetric)
            of all ranks are gathered so each anchor sees the global batch,
            with exact gradients (see :mod:`gradsurg.distributed` for the
            layout and the DDP scaling). No effect without a process group.
        group: the process group for ``gather_across_devices`` (default: the world).
        **options: backend options, e.g. ``chunk_bytes`` for the torch backend.

    Returns:
        The reduced loss (a scalar) or, for ``reduction='none'``, shape ``(N,)``.
    """
    if not isinstance(paradigm, Paradigm):
        raise TypeError(
            f"paradigm_loss: paradigm must be a gradsurg.Paradigm (e.g. gradsurg.paradigms.info_nce()), "
            f"got {type(paradigm).__name__}"
        )
    if not isinstance(symmetric, bool):
        raise TypeError(f"paradigm_loss: symmetric must be a bool, got {type(symmetric).__name__}")
    check_options(reduction, backend)
    if gather_across_devices:
        from ..distributed import gathered_paradigm_loss

        return gathered_paradigm_loss(anchors, positives, negatives, paradigm=paradigm, symmetric=symmetric,
                                      reduction=reduction, backend=backend, check_finite=check_finite,
                                      group=group, **options)
    if group is not None:
        raise ValueError("paradigm_loss: group= is only used with gather_across_devices=True")
    negatives = check_embeddings(anchors, positives, negatives, symmetric=symmetric, check_finite=check_finite)
    candidates = positives if negatives is None else torch.cat([positives, negatives], dim=0)
    impl = resolve_backend(backend, anchors)
    return ParadigmFunction.apply(anchors, candidates, paradigm, symmetric, reduction, impl, options)
