"""Autocast: every loss and objective runs, with value and statistics in float32 and
gradients in the inputs' dtypes (the policy of docs/api.md).

CPU bfloat16 here (CUDA float16/bfloat16 with GRADSURG_TEST_DEVICE=cuda). The
embeddings are bfloat16, as they come out of an autocast region; the reference
is float64 autograd of the textbook formula on the same (rounded) values,
outside autocast. Tolerances (relative to the reference's largest entry):
value 1e-4 (the float32 tolerance of the suite; CPU computes the engine in
float32), gradients 1e-2 (they are returned in bfloat16: 2^-8 rounding).
On CUDA the products take bfloat16/float16 operands: value 2e-2 there.
"""
from __future__ import annotations

import os

import pytest
import torch

import gradsurg
import gradsurg.objectives as O
from gradsurg import dissipation as D
from gradsurg import ratio as R
from gradsurg import reference as ref
from gradsurg import weight as W

from conftest import rel_err

DEVICE = os.environ.get("GRADSURG_TEST_DEVICE", "cpu")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("GRADSURG_TEST_DEVICE=cuda but no GPU", allow_module_level=True)
LOW = torch.bfloat16
VALUE_TOL = 1e-4 if DEVICE == "cpu" else 2e-2
GRAD_TOL = 1e-2
PRESETS = ["info_nce", "arccon", "mpt", "met", "mat"]
CUSTOM = gradsurg.Paradigm(D.Margin(0.3), W.Softmax(0.1), R.Constant(1.5))


def leaves(n=10, k=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x + 0.7 * torch.randn(n, d, generator=g)
    z = torch.randn(k, d, generator=g)
    return [t.to(DEVICE, LOW).requires_grad_() for t in (x, y, z)]


def run(fn, ts, weight=None, autocast=True):
    with torch.autocast(DEVICE, dtype=LOW, enabled=autocast):
        loss = fn(*ts)
    up = torch.ones_like(loss) if weight is None else weight.to(loss.dtype)
    return loss, torch.autograd.grad(loss, ts, up)


def reference(fn, ts, weight=None):
    return run(fn, [t.detach().double().requires_grad_() for t in ts], weight, autocast=False)


@pytest.mark.parametrize("name", PRESETS + ["custom"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_losses_under_autocast(name, symmetric, reduction):
    ts = leaves(seed=len(name))
    kw = dict(symmetric=symmetric, reduction=reduction)
    weight = torch.linspace(0.5, 2.0, 10, device=DEVICE) if reduction == "none" else None
    if name == "custom":
        ours_fn = lambda *t: gradsurg.paradigm_loss(*t, paradigm=CUSTOM, **kw)  # noqa: E731
        ref_fn = lambda *t: ref.surrogate(*t, paradigm=CUSTOM, **kw)  # noqa: E731
    else:
        ours_fn = lambda *t: getattr(gradsurg, name)(*t, **kw)  # noqa: E731
        ref_fn = lambda *t: ref.LOSSES[name](*t, **kw)  # noqa: E731
    loss, grads = run(ours_fn, ts, weight)
    want, want_grads = reference(ref_fn, ts, weight)
    assert loss.dtype == torch.float32
    if name != "custom":  # the surrogate's value is not the reference's
        assert rel_err(loss, want) <= VALUE_TOL
    for g, w, t in zip(grads, want_grads, ts):
        assert g.dtype == t.dtype
        assert rel_err(g, w) <= GRAD_TOL


def test_encoder_output_and_mixed_dtypes():
    """Embeddings made inside the autocast region (bfloat16) next to float32 ones: promoted to float32."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16).to(DEVICE)
    x, y = torch.randn(6, 8, device=DEVICE), torch.randn(6, 16, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE, dtype=LOW):
        e = lin(x)
        assert e.dtype == LOW
        loss = gradsurg.info_nce(e, y)
    loss.backward()
    assert loss.dtype == torch.float32 and y.grad.dtype == torch.float32
    assert lin.weight.grad.dtype == torch.float32 and torch.isfinite(lin.weight.grad).all()
    with pytest.raises(ValueError, match="positives has dtype"):  # outside autocast: one dtype
        gradsurg.info_nce(e.detach(), y)


OBJECTIVES = [("align_uniform", {}), ("mhe", {}), ("mhs", {}), ("barlow_twins", {}), ("vicreg", {})]


@pytest.mark.parametrize("name", [n for n, _ in OBJECTIVES] + ["sg"])
@pytest.mark.parametrize("modified", ["", "all"])
def test_objectives_under_autocast(name, modified):
    if name == "sg" and modified == "":
        pytest.skip("sg has no original")
    ts = leaves(n=12, k=0, d=16, seed=3)[:2]
    mod = O.OBJECTIVES[name](modified=modified)
    loss, grads = run(mod, ts)
    want, want_grads = reference(mod, ts)
    assert loss.dtype == torch.float32
    assert rel_err(loss, want) <= VALUE_TOL
    for g, w, t in zip(grads, want_grads, ts):
        assert g.dtype == t.dtype
        assert rel_err(g, w) <= GRAD_TOL


def test_cuda_code_paths_on_cpu(monkeypatch):
    """The torch backend's CUDA choices, exercised on CPU: bfloat16 GEMM operands (float32
    results; here through the float32-copy fallback of ``product``) and the sync-free
    softmax statistics (every row shifted by its true maximum). Tolerances: bfloat16
    operands 2e-2 against float64; the sync-free statistics 1e-4 (float32)."""
    from gradsurg.components import _rows
    from gradsurg.engine import torch_backend

    g = torch.Generator().manual_seed(5)
    x, y, z = (torch.randn(r, 256, generator=g) for r in (9, 9, 4))
    leaves = [t.clone().requires_grad_() for t in (x, y, z)]
    ref64 = [t.double().requires_grad_() for t in (x, y, z)]
    for name in ("info_nce", "arccon", "met"):
        kw = dict(temperature=0.01) if name in ("info_nce", "arccon") else {}
        want = ref.LOSSES[name](*ref64, **kw)
        want_grads = torch.autograd.grad(want, ref64)
        with monkeypatch.context() as m:  # far candidates at tau = 0.01: the underflow case
            m.setattr(_rows, "sync_free", lambda t: True)
            loss = getattr(gradsurg, name)(*leaves, **kw)
            grads = torch.autograd.grad(loss, leaves)
        assert rel_err(loss, want) <= 1e-4
        assert all(rel_err(a, b) <= 1e-4 for a, b in zip(grads, want_grads))
        with monkeypatch.context() as m:
            m.setattr(torch_backend, "gemm_dtype", lambda t: torch.bfloat16)
            m.setattr(_rows, "_MM_OUT_DTYPE", False)
            loss = getattr(gradsurg, name)(*leaves, **kw)
            grads = torch.autograd.grad(loss, leaves)
        assert loss.dtype == torch.float32
        assert rel_err(loss, want) <= 2e-2
        assert all(rel_err(a, b) <= 2e-2 for a, b in zip(grads, want_grads))


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_gemm_operands_keep_small_gradients(monkeypatch, low):
    """N = M = 3000, uniform weights: G_ij ~ 1/(N M) ~ 1.1e-7 is subnormal in float16. The torch
    backend's CUDA path (exercised on CPU) scales G into range before the float16 cast, so
    the gradients stay within 1e-2 of float64 (unscaled: ~10% off, or zero)."""
    from gradsurg.components import _rows
    from gradsurg.engine import torch_backend

    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(3000, 8, generator=g), torch.randn(3000, 8, generator=g)
    p = gradsurg.Paradigm(D.Constant(1.0), W.Uniform(), R.Constant(0.0))  # only the push: G_ij, j != i
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    want = torch.autograd.grad(ref.surrogate(x64, y64, paradigm=p), (x64, y64))
    xl, yl = x.to(low).requires_grad_(), y.to(low).requires_grad_()
    monkeypatch.setattr(torch_backend, "gemm_dtype", lambda t: low)
    monkeypatch.setattr(_rows, "_MM_OUT_DTYPE", False)
    got = torch.autograd.grad(gradsurg.paradigm_loss(xl, yl, paradigm=p), (xl, yl))
    for a, b in zip(got, want):
        assert rel_err(a, b) <= 1e-2
