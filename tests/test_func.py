"""torch.func and second-order behaviour of the losses.

* ``torch.func.grad`` gives the autograd gradient (float64, 1e-12 relative).
* ``torch.func.vmap`` works (the operator's vmap rule runs it per sample)
  also around ``torch.func.grad`` (per-sample gradients); a
  ``backward()`` through a vmapped loss raises a clear error naming gradsurg.
* Second order: any differentiation of a gradient taken through a gradsurg
  loss (``create_graph=True``, nested ``torch.func.grad``) raises a clear error;
  never a silently wrong number, never a crash inside the engine.
"""
from __future__ import annotations

import pytest
import torch

import gradsurg

from conftest import rel_err

TOL = 1e-12


def batch(n=7, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(r, d, generator=g, dtype=torch.float64) for r in (n, n, k)]


@pytest.mark.parametrize("name", ["info_nce", "arccon", "mpt", "met", "mat"])
@pytest.mark.parametrize("kw", [{}, {"symmetric": True}, {"reduction": "none"}], ids=["mean", "sym", "none"])
def test_func_grad_equals_autograd(name, kw):
    x, y, z = batch()
    fn = getattr(gradsurg, name)

    def f(a, b, c):
        out = fn(a, b, c, **kw)
        return (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype)).sum()

    got = torch.func.grad(f, argnums=(0, 1, 2))(x, y, z)
    leaves = [t.clone().requires_grad_() for t in (x, y, z)]
    want = torch.autograd.grad(f(*leaves), leaves)
    for a, b in zip(got, want):
        assert rel_err(a, b) <= TOL


@pytest.mark.parametrize("kw", [{}, {"reduction": "none"}, {"symmetric": True}], ids=["mean", "none", "sym"])
def test_vmap_values_and_per_sample_gradients(kw):
    xs = torch.stack([batch(seed=s)[0] for s in range(3)])
    ys = torch.stack([batch(seed=s)[1] for s in range(3)])

    def f(a, b):
        return gradsurg.info_nce(a, b, **kw).sum()

    values = torch.vmap(f)(xs, ys)
    grads = torch.vmap(torch.func.grad(f))(xs, ys)
    for i in range(3):
        assert rel_err(values[i], f(xs[i], ys[i])) <= TOL
        assert rel_err(grads[i], torch.func.grad(f)(xs[i], ys[i])) <= TOL


def test_backward_through_vmap_raises_naming_gradsurg():
    xs = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(2, 6, 4, dtype=torch.float64)
    out = torch.vmap(lambda a, b: gradsurg.info_nce(a, b))(xs, ys)
    with pytest.raises(RuntimeError, match="gradsurg: loss.backward\\(\\) through torch.func.vmap"):
        out.sum().backward()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["info_nce", "mpt"])
def test_double_backward_raises(name, reduction):
    """The issue's case: a gradient penalty on dL/dW. Plain autograd would give a second-order
    term; gradsurg cannot, so it must refuse rather than drop it."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    loss = getattr(gradsurg, name)(x @ weight, y @ weight, reduction=reduction).sum()
    (gw,) = torch.autograd.grad(loss, weight, create_graph=True)
    assert gw.requires_grad
    # the first-order gradient itself is still exact
    w2 = weight.detach().clone().requires_grad_()
    (plain,) = torch.autograd.grad(getattr(gradsurg, name)(x @ w2, y @ w2, reduction=reduction).sum(), w2)
    assert rel_err(gw, plain) <= TOL
    with pytest.raises(RuntimeError, match="gradsurg: second-order gradients"):
        (loss + gw.pow(2).sum()).backward()


def test_nested_func_grad_raises():
    x, y, _ = batch()

    def inner(a):
        return gradsurg.info_nce(a, y)

    with pytest.raises(RuntimeError, match="gradsurg: second-order gradients"):
        torch.func.grad(lambda a: torch.func.grad(inner)(a).pow(2).sum())(x)


def test_create_graph_without_second_derivative_is_fine():
    """create_graph=True alone (e.g. for another term of the model) leaves the gradient exact."""
    x, y, _ = batch()
    a = x.clone().requires_grad_()
    (g1,) = torch.autograd.grad(gradsurg.info_nce(a, y), a, create_graph=True)
    (g0,) = torch.autograd.grad(gradsurg.info_nce(a, y), a)
    assert torch.equal(g1.detach(), g0)
