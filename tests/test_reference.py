"""gradsurg/reference.py: the oracle's own formulas, where they need care."""
from __future__ import annotations

import pytest
import torch

from gradsurg import reference



def test_power_weights_are_finite_at_large_exponents():
    s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.2, 0.1, 1.0]])
    w = reference.power_weights(s, 12.0)
    assert torch.isfinite(w).all() and torch.allclose(w.sum(1), torch.ones(3))
    assert w[0, 1] == pytest.approx(0.5) and w[1, 2] == pytest.approx(1.0, abs=1e-6)
    assert w[2, 0] == pytest.approx(1.0 / (1.0 + 0.5 ** 12))
