"""Bad input gets a clear error naming the argument, never a silent NaN."""
from __future__ import annotations

import math

import pytest
import torch

import gradsurg
from gradsurg import dissipation as D
from gradsurg import ratio as R
from gradsurg import weight as W


def xy(n=4, d=3, dtype=torch.float32):
    return torch.randn(n, d, dtype=dtype), torch.randn(n, d, dtype=dtype)


@pytest.mark.parametrize(
    "args,kwargs,exc,match",
    [
        ((torch.randn(4), torch.randn(4)), {}, ValueError, "anchors must be 2-D"),
        ((torch.randn(4, 3), torch.randn(5, 3)), {}, ValueError, "positives must have the shape"),
        ((torch.randn(4, 3), torch.randn(4, 2)), {}, ValueError, "positives must have the shape"),
        ((torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 5)), {}, ValueError, "negatives must have shape"),
        ((torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3, 1)), {}, ValueError, "negatives must be 2-D"),
        ((torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64)), {}, ValueError, "positives has dtype"),
        ((torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3, dtype=torch.long)), {}, TypeError, "floating dtype"),
        (([[1.0]], torch.randn(1, 1)), {}, TypeError, "anchors must be a torch.Tensor"),
        ((torch.randn(0, 3), torch.randn(0, 3)), {}, ValueError, "empty batch"),
        ((torch.randn(1, 3), torch.randn(1, 3)), {}, ValueError, "no negative"),
        ((torch.randn(1, 3), torch.randn(1, 3), torch.randn(0, 3)), {}, ValueError, "no negative"),
        ((torch.randn(1, 3), torch.randn(1, 3), torch.randn(2, 3)), {"symmetric": True}, ValueError, "symmetric"),
        ((torch.randn(4, 3), torch.randn(4, 3)), {"reduction": "avg"}, ValueError, "reduction must be one of"),
        ((torch.randn(4, 3), torch.randn(4, 3)), {"backend": "cuda"}, ValueError, "backend must be one of"),
        ((torch.randn(4, 3), torch.randn(4, 3)), {"symmetric": 1}, TypeError, "symmetric must be a bool"),
    ],
)
def test_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gradsurg.info_nce(*args, **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("which", ["anchors", "positives", "negatives"])
def test_non_finite_inputs_raise_and_can_be_skipped(bad, which):
    x, y = xy()
    z = torch.randn(2, 3)
    {"anchors": x, "positives": y, "negatives": z}[which][1, 2] = bad
    with pytest.raises(ValueError, match=f"{which} contains NaN or infinite"):
        gradsurg.info_nce(x, y, z)
    gradsurg.info_nce(x, y, z, check_finite=False)  # the user's choice: no check


def test_paradigm_argument_type():
    x, y = xy()
    with pytest.raises(TypeError, match="paradigm must be a gradsurg.Paradigm"):
        gradsurg.paradigm_loss(x, y, paradigm="info_nce")
    with pytest.raises(TypeError, match="weight must be a gradsurg.weight"):
        gradsurg.Paradigm(D.Constant(1.0), R.Constant(1.0), R.Constant(1.0))


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: D.InfoNCE(0.0), "temperature must be > 0"),
        (lambda: D.InfoNCE(-0.05), "temperature must be > 0"),
        (lambda: D.InfoNCE(math.nan), "temperature must be finite"),
        (lambda: W.Softmax(0), "temperature must be > 0"),
        (lambda: D.ArcCon(0.05, -0.1), "margin must be in"),
        (lambda: D.ArcCon(0.05, 4.0), "margin must be in"),
        (lambda: D.Margin(-0.2), "margin must be in"),
        (lambda: D.EuclideanMargin(-1), "margin must be in"),
        (lambda: D.AngularMargin(-1), "margin must be in"),
        (lambda: D.Constant(-1.0), "value must be >= 0"),
        (lambda: W.Power(0), "p must be > 0"),
        (lambda: R.Constant(-0.5), "value must be >= 0"),
        (lambda: R.Arc(-0.1), "margin must be in"),
        (lambda: gradsurg.paradigm.info_nce(temperature=-1), "temperature"),
        (lambda: gradsurg.InfoNCELoss(temperature=0), "temperature"),
    ],
)
def test_invalid_hyper_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_hyper_parameter_types():
    with pytest.raises(TypeError, match="temperature must be a real number"):
        D.InfoNCE("0.05")
    with pytest.raises(TypeError, match="margin must be a real number"):
        D.Margin(True)
    with pytest.raises(ValueError, match="temperature"):
        gradsurg.info_nce(*xy(), temperature=0.0)


@pytest.mark.parametrize("name", ["info_nce", "arccon", "mpt", "met", "mat"])
def test_zero_vectors_give_finite_loss_and_zero_gradient(name):
    x, y = xy(5, 4, torch.float64)
    x[1] = 0.0
    y[3] = 0.0
    x.requires_grad_()
    y.requires_grad_()
    loss = getattr(gradsurg, name)(x, y, symmetric=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert torch.all(x.grad[1] == 0) and torch.all(y.grad[3] == 0)


def test_half_precision_extremes_stay_finite():
    x = torch.randn(6, 8, dtype=torch.float16) * 200  # large norms
    y = x.clone()
    x.requires_grad_()
    loss = gradsurg.info_nce(x, y, temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
