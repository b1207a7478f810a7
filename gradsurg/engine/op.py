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

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..paradigm import Paradigm
from ..vocabulary import compute_dtype
from . import dispatch
from .encoding import decode_call, decode_names, encode_call, encode_names
from .validation import check_finite_values


@torch.library.custom_op("gradsurg::direction", mutates_args=())
def direction_op(x: Tensor, c: Tensor, hyper: Optional[Tensor], row_weights: Optional[Tensor], weight: float,
                 want_grad: bool, paradigm: str, params: list[float], hyper_names: str, grad_rows: int,
                 backend: str, options: str, check: str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One direction of ``Paradigm.decode(paradigm, params)`` by ``backend``.

    Returns ``(loss rows (N,), dx (N, d), dc (M, d), dhyper (k,))`` in the
    compute dtype; the gradients are those of ``sum_i w_i L_i`` with ``w =
    row_weights`` (an (N,) tensor) or ``weight``, and empty when neither is
    asked for (``want_grad`` False). ``hyper``: the values (k,) of the
    learnable hyper-parameters named in ``hyper_names`` (comma-separated),
    which replace the paradigm's own (``dhyper`` is their gradient); checked
    here (positive / finite), where reading them costs no graph break. ``options``: the backend's
    options and the caller's name (:func:`~gradsurg.engine.encoding.encode_call`), which starts the
    errors raised here (the learnable values) and, for a backend that takes it, the backend's own.
    ``grad_rows``: only the first ``grad_rows`` candidates need a gradient
    (-1: all); the rest of ``dc`` is zero and costs no product. ``check``:
    when not empty, the caller's name for the finiteness check of the inputs.
    """
    with torch.autocast(x.device.type, enabled=False):
        if check:
            n = x.shape[0]
            check_finite_values([("anchors", x), ("positives", c[:n]), ("negatives", c[n:])], check)
        p = Paradigm.decode(paradigm, params)
        names = decode_names(hyper_names)
        opts, caller = decode_call(options)
        if hyper is not None:
            p = p.with_hyper(dict(zip(names, check_hyper(names, hyper.tolist(), caller))))
        rw = row_weights if row_weights is not None else (weight if want_grad else None)
        mod = dispatch.module(backend, caller)
        if "caller" in getattr(mod, "INTERNAL_OPTIONS", ()):  # the backend's own checks name the caller too
            opts["caller"] = caller
        if names:  # the dispatcher only picks a backend that takes the hyper-parameters' gradient
            opts["hyper_grad"] = names
        if grad_rows >= 0 and "grad_rows" in getattr(mod, "INTERNAL_OPTIONS", ()):
            opts["grad_rows"] = grad_rows
        out = mod.direction(x, c, p, rw, **opts)
    rows, dx, dc = out[:3]
    dh = out[3] if len(out) > 3 and out[3] is not None else rows.new_empty(0)
    if dx is None:
        dx, dc = rows.new_empty(0), rows.new_empty(0)
    return rows, dx, dc, dh


def check_hyper(names, values, where: str) -> list[float]:
    """Learnable hyper-parameters must be finite; temperatures and scales > 0 (ValueError naming them)."""
    for name, value in zip(names, values):
        if not math.isfinite(value) or (name in ("temperature", "scale") and not value > 0):
            need = "finite" if name == "bias" else "finite and > 0"
            raise ValueError(f"{where}: the learnable {name} must be {need}, got {value!r}")
    return values


@direction_op.register_fake
def _(x, c, hyper, row_weights, weight, want_grad, paradigm, params, hyper_names, grad_rows, backend, options,
      check):
    cd = compute_dtype(x.dtype)
    rows = x.new_empty(x.shape[:1], dtype=cd)
    if row_weights is None and not want_grad:
        return rows, x.new_empty(0, dtype=cd), x.new_empty(0, dtype=cd), x.new_empty(0, dtype=cd)
    dh = x.new_empty(0 if hyper is None else hyper.shape, dtype=cd)
    return rows, x.new_empty(x.shape, dtype=cd), c.new_empty(c.shape, dtype=cd), dh


@direction_op.register_vmap
def _(info, in_dims, x, c, hyper, row_weights, *rest):
    """``torch.func.vmap``: one call per sample (the losses of separate batches are independent)."""
    tensors = (x, c, hyper, row_weights)
    outs = []
    for b in range(info.batch_size):
        args = [t if t is None or dim is None else t.select(dim, b) for t, dim in zip(tensors, in_dims[:4])]
        outs.append(direction_op(*args, *rest))
    return tuple(torch.stack(parts) for parts in zip(*outs)), (0, 0, 0, 0)


def paradigm_call(paradigm: Paradigm, backend: str, options: dict, hyper_names: tuple[str, ...] = (),
                  caller: str = "paradigm_loss") -> Callable:
    """``call(x, c, hyper, row_weights, weight, want_grad, check, grad_rows) -> (rows, dx, dc, dhyper)``
    through the op; ``hyper`` holds the values of the learnable ``hyper_names`` (or is None); errors
    raised inside the op start with ``caller``."""
    names, params = paradigm.encode()
    opts = encode_call(options, caller)
    learn = encode_names(hyper_names)

    def call(x, c, hyper, row_weights, weight, want_grad, check, grad_rows=-1):
        return direction_op(x, c, hyper, row_weights, weight, want_grad, names, params, learn, grad_rows,
                            backend, opts, check)

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
    """Identity on the gradients ``gx, gc, gh``, tied to ``x, c``: differentiating it raises."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gx, gc, gh, x, c):
        return gx.clone(), gc.clone(), gh.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_SECOND_ORDER)


def _finish(ctx, gx: Tensor, gc: Tensor, gh: Tensor, x: Tensor, c: Tensor, hyper: Tensor | None):
    gx, gc = gx.to(x.dtype), gc.to(c.dtype)
    gh = gh.to(hyper.dtype) if hyper is not None else gh
    if torch.is_grad_enabled():  # create_graph=True or torch.func: the result must not be differentiable
        gx, gc, gh = _NoSecondOrder.apply(gx, gc, gh, x, c)
    need = ctx.needs_input_grad
    return (gx if need[0] else None), (gc if need[1] else None), (gh if hyper is not None and need[2] else None)


class Fused(torch.autograd.Function):
    """``weight * sum_i L_i`` with its gradient computed in the forward pass."""

    generate_vmap_rule = True  # forward and backward are vmapped through the operator's rule

    @staticmethod
    def forward(x, c, hyper, weight, call, check, grad_rows):
        rows, dx, dc, dh = call(x, c, hyper, None, weight, True, check, grad_rows)
        return rows.sum() * weight, dx, dc, dh

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, c, hyper = inputs[:3]
        _, dx, dc, dh = output
        ctx.mark_non_differentiable(dx, dc, dh)
        ctx.has_hyper = hyper is not None
        ctx.save_for_backward(x, c, dx, dc, dh, hyper)

    @staticmethod
    def backward(ctx, grad, _gdx, _gdc, _gdh):
        x, c, dx, dc, dh, hyper = ctx.saved_tensors
        gx, gc, gh = _finish(ctx, dx * grad, dc * grad, dh * grad, x, c, hyper if ctx.has_hyper else None)
        return gx, gc, gh, None, None, None, None



class PerRow(torch.autograd.Function):
    """The loss rows; backward recomputes with ``grad_output`` as the row weights."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, c, hyper, call, check, grad_rows):
        rows, _, _, _ = call(x, c, hyper, None, 0.0, False, check, grad_rows)
        return rows

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.call, ctx.grad_rows = inputs[3], inputs[5]
        ctx.has_hyper = inputs[2] is not None
        ctx.save_for_backward(inputs[0], inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad):
        x, c, hyper = ctx.saved_tensors
        hyper = hyper if ctx.has_hyper else None
        with torch.no_grad():
            _, dx, dc, dh = ctx.call(x.detach(), c.detach(), None if hyper is None else hyper.detach(),
                                     grad.detach().to(compute_dtype(x.dtype)), 0.0, True, "", ctx.grad_rows)
        gx, gc, gh = _finish(ctx, dx, dc, dh, x, c, hyper)
        return gx, gc, gh, None, None, None



def run(parts, reduction: str, weight: float, call: Callable, check: str, hyper: Tensor | None = None,
        grad_rows=None) -> Tensor:
    """The reduced loss (or the rows) of the directions ``parts`` = ``[(anchors, candidates, factor)]``.

    ``weight`` is the row weight of the reduction (1/N for 'mean', 1 for
    'sum', the DDP scale when gathered); each direction's factor multiplies it.
    The finiteness check (``check``, the caller's name, or '') runs once, on
    the first direction (which holds every input). ``hyper``: the learnable
    hyper-parameters (k,) or None. ``grad_rows``: per direction, how many
    leading candidates need a gradient (-1: all; default all).
    """
    total = None
    for k, (a, b, factor) in enumerate(parts):
        chk = check if k == 0 else ""
        gr = -1 if grad_rows is None else grad_rows[k]
        needs = a.requires_grad or b.requires_grad or (hyper is not None and hyper.requires_grad)
        if reduction == "none":
            value = PerRow.apply(a, b, hyper, call, chk, gr)
            value = value if factor == 1.0 else value * factor
        elif torch.is_grad_enabled() and needs:
            value = Fused.apply(a, b, hyper, weight * factor, call, chk, gr)[0]
        else:
            value = call(a, b, hyper, None, 0.0, False, chk, gr)[0].sum() * (weight * factor)
        total = value if total is None else total + value
    return total
