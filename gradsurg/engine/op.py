"""The autograd node of one direction: a custom operator inside an autograd Function.

``gradsurg::direction`` (``torch.library.custom_op``, with a fake
implementation) runs one backend's :func:`direction` on plain tensors with
the paradigm passed as primitives (:meth:`gradsurg.Paradigm.encode`), so
``torch.compile`` sees one opaque, well-typed node and never traces the
engine (its finiteness check and the statistics' data-dependent branches
stay inside, without graph breaks). Around it two ``torch.autograd.Function``
s (with ``setup_context``, so ``torch.func.grad`` works) set the gradient:

* :class:`Fused` (reductions 'mean' / 'sum'): the op returns the loss and the
  gradients of ``weight * sum_i L_i`` in one pass; backward scales them by
  ``grad_output``.
* :class:`PerRow` (reduction 'none'): the op returns the loss rows; backward
  runs it again with ``grad_output`` as the row weights.

Second-order gradients are not defined (the first-order gradient is set in
closed form, not differentiated): any attempt (``create_graph=True`` followed
by a backward through the gradient, nested ``torch.func.grad``) raises. So
does ``loss.backward()`` through a ``vmap``; ``vmap`` itself works (the operator has a
per-sample vmap rule).
"""
from __future__ import annotations

import ast
from typing import Callable, Optional

import torch
from torch import Tensor

from ..paradigm import Paradigm
from . import dispatch
from .validation import check_finite_values


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("gradsurg::direction", mutates_args=())
def direction_op(x: Tensor, c: Tensor, row_weights: Optional[Tensor], weight: float, want_grad: bool,
                 paradigm: str, params: list[float], backend: str, options: str, check: str
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of ``Paradigm.decode(paradigm, params)`` by ``backend``.

    Returns ``(loss rows (N,), dx (N, d), dc (M, d))`` in the compute dtype;
    the gradients are those of ``sum_i w_i L_i`` with ``w = row_weights`` (an
    (N,) tensor) or ``weight``, and empty when neither is asked for
    (``want_grad`` False). ``check``: when not empty, the caller's name for the
    finiteness check of the inputs.
    """
    with torch.autocast(x.device.type, enabled=False):
        if check:
            n = x.shape[0]
            check_finite_values([("anchors", x), ("positives", c[:n]), ("negatives", c[n:])], check)
        p = Paradigm.decode(paradigm, params)
        rw = row_weights if row_weights is not None else (weight if want_grad else None)
        rows, dx, dc = dispatch.module(backend).direction(x, c, p, rw, **_decode_options(options))
    if dx is None:
        dx, dc = rows.new_empty(0), rows.new_empty(0)
    return rows, dx, dc


def _decode_options(text: str) -> dict:
    """Inverse of the ``key=repr(value);...`` encoding of :func:`paradigm_call`."""
    out = {}
    for item in filter(None, text.split(";")):
        key, _, value = item.partition("=")
        out[key] = ast.literal_eval(value)
    return out


@direction_op.register_fake
def _(x, c, row_weights, weight, want_grad, paradigm, params, backend, options, check):
    cd = _compute_dtype(x.dtype)
    rows = x.new_empty(x.shape[:1], dtype=cd)
    if row_weights is None and not want_grad:
        return rows, x.new_empty(0, dtype=cd), x.new_empty(0, dtype=cd)
    return rows, x.new_empty(x.shape, dtype=cd), c.new_empty(c.shape, dtype=cd)


@direction_op.register_vmap
def _(info, in_dims, x, c, row_weights, *rest):
    """``torch.func.vmap``: one call per sample (the losses of separate batches are independent)."""
    tensors = (x, c, row_weights)
    outs = []
    for b in range(info.batch_size):
        args = [t if t is None or dim is None else t.select(dim, b) for t, dim in zip(tensors, in_dims[:3])]
        outs.append(direction_op(*args, *rest))
    return tuple(torch.stack(parts) for parts in zip(*outs)), (0, 0, 0)


def paradigm_call(paradigm: Paradigm, backend: str, options: dict) -> Callable:
    """``call(x, c, row_weights, weight, want_grad, check) -> (rows, dx, dc)`` through the op."""
    names, params = paradigm.encode()
    opts = ";".join(f"{k}={options[k]!r}" for k in sorted(options))

    def call(x, c, row_weights, weight, want_grad, check):
        return direction_op(x, c, row_weights, weight, want_grad, names, params, backend, opts, check)

    return call


_SECOND_ORDER = (
    "gradsurg: second-order gradients through a gradsurg loss are not supported (a gradient taken with "
    "create_graph=True, or a nested torch.func.grad, was differentiated again). The loss's first-order "
    "gradient is set in closed form from GD, W and R, not built from differentiable operations; for a "
    "gradient penalty use the plain-autograd formulas of gradsurg.reference"
)
_VMAP = ("gradsurg: loss.backward() through torch.func.vmap of a gradsurg loss is not supported; for per-sample "
         "gradients use torch.func.vmap(torch.func.grad(f)), or loop over the batch dimension")


def _op_backward(ctx, *grads):
    # reached only where autograd sees the bare operator instead of Fused / PerRow (vmap, then backward)
    raise RuntimeError(_VMAP)


direction_op.register_autograd(_op_backward)


class _NoSecondOrder(torch.autograd.Function):
    """Identity on the gradients ``gx, gc``, tied to ``x, c``: differentiating it raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gx, gc, x, c):
        return gx.clone(), gc.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_SECOND_ORDER)


def _finish(ctx, gx: Tensor, gc: Tensor, x: Tensor, c: Tensor):
    gx, gc = gx.to(x.dtype), gc.to(c.dtype)
    if torch.is_grad_enabled():  # create_graph=True or torch.func: the result must not be differentiable
        gx, gc = _NoSecondOrder.apply(gx, gc, x, c)
    return (gx if ctx.needs_input_grad[0] else None), (gc if ctx.needs_input_grad[1] else None)


class Fused(torch.autograd.Function):
    """``weight * sum_i L_i`` with its gradient computed in the forward pass."""

    generate_vmap_rule = True  # forward and backward are vmapped through the operator's rule

    @staticmethod
    def forward(x, c, weight, call, check):
        rows, dx, dc = call(x, c, None, weight, True, check)
        return rows.sum() * weight, dx, dc

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, c = inputs[:2]
        _, dx, dc = output
        ctx.mark_non_differentiable(dx, dc)
        ctx.save_for_backward(x, c, dx, dc)

    @staticmethod
    def backward(ctx, grad, _gdx, _gdc):
        x, c, dx, dc = ctx.saved_tensors
        gx, gc = _finish(ctx, dx * grad, dc * grad, x, c)
        return gx, gc, None, None, None



class PerRow(torch.autograd.Function):
    """The loss rows; backward recomputes with ``grad_output`` as the row weights."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, c, call, check):
        rows, _, _ = call(x, c, None, 0.0, False, check)
        return rows

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.call = inputs[2]
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx, grad):
        x, c = ctx.saved_tensors
        with torch.no_grad():
            _, dx, dc = ctx.call(x.detach(), c.detach(), grad.detach().to(_compute_dtype(x.dtype)), 0.0, True, "")
        gx, gc = _finish(ctx, dx, dc, x, c)
        return gx, gc, None, None



def run(parts, reduction: str, weight: float, call: Callable, check: str) -> Tensor:
    """The reduced loss (or the rows) of the directions ``parts`` = ``[(anchors, candidates, factor)]``.

    ``weight`` is the row weight of the reduction (1/N for 'mean', 1 for
    'sum', the DDP scale when gathered); each direction's factor multiplies it.
    The finiteness check (``check``, the caller's name, or '') runs once, on
    the first direction (which holds every input).
    """
    total = None
    for k, (a, b, factor) in enumerate(parts):
        chk = check if k == 0 else ""
        if reduction == "none":
            value = PerRow.apply(a, b, call, chk)
            value = value if factor == 1.0 else value * factor
        elif torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
            value = Fused.apply(a, b, weight * factor, call, chk)[0]
        else:
            value = call(a, b, None, 0.0, False, chk)[0].sum() * (weight * factor)
        total = value if total is None else total + value
    return total
