"""gradsurg/components/weight.py: the weights W, exact where their formulas overflow."""
from __future__ import annotations

import pytest
import torch

import gradsurg
from gradsurg import Paradigm, reference
from gradsurg.components import dissipation as D
from gradsurg.components import ratio as R
from gradsurg.components import weight as W



@pytest.mark.parametrize("p", [11.0, 12.0, 40.0, 1e4])
def test_power_weights_are_finite_and_exact_in_float32(p):
    paradigm = Paradigm(D.Constant(1.0), W.Power(p), R.Constant(1.0))
    torch.manual_seed(0)
    cases = [torch.eye(2), torch.eye(3, 5), torch.randn(6, 8)]
    for x in cases:
        grads = {}
        for dtype in (torch.float32, torch.float64):
            u = x.to(dtype).clone().requires_grad_(True)
            v = x.flip(0).to(dtype).clone().requires_grad_(True) if x.shape[0] > 3 else x.to(dtype).clone().requires_grad_(True)
            loss = gradsurg.paradigm_loss(u, v, paradigm=paradigm)
            ref = reference.surrogate(u.detach().double().requires_grad_(True), v.detach().double(), paradigm=paradigm)
            assert torch.isfinite(loss) and torch.isfinite(ref)
            (gu,) = torch.autograd.grad(loss, u)
            assert torch.isfinite(gu).all()
            grads[dtype] = gu
            assert float(loss) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
        assert torch.allclose(grads[torch.float32].double(), grads[torch.float64], rtol=1e-4, atol=1e-6)
