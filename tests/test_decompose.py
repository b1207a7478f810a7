"""gradsurg.decompose: GD, W, R read off autograd gradients (float64, tolerance 1e-10)."""
from __future__ import annotations

import math

import pytest
import torch

import gradsurg
from gradsurg import reference
from gradsurg.analysis import Decomposition, decompose
from gradsurg.components import dissipation as D, ratio as R, weight as W
from gradsurg.objectives import BarlowTwins, VICReg

from conftest import rel_err

TOL = 1e-10
PRESETS = {
    "info_nce": (reference.info_nce_rows, gradsurg.paradigm.info_nce()),
    "arccon": (reference.arccon_rows, gradsurg.paradigm.arccon()),
    "mpt": (reference.mpt_rows, gradsurg.paradigm.mpt()),
    "met": (reference.met_rows, gradsurg.paradigm.met()),
    "mat": (reference.mat_rows, gradsurg.paradigm.mat()),
}


def batch(n=10, d=16, k=3, seed=0, noise=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    z = torch.randn(k, d, generator=g, dtype=torch.float64)
    return x, y, z


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("with_negatives", [False, True])
def test_decomposing_each_preset_returns_its_own_components(name, with_negatives):
    rows_fn, paradigm = PRESETS[name]
    x, y, z = batch(seed=1, noise=1.2)  # a mix of active and dissipated anchors for the margin losses
    z = z if with_negatives else None
    dec = decompose(lambda s: rows_fn(s).mean(), x, y, z)
    s = reference.cosine_matrix(x, y, z)
    gd, w, r = reference.components(paradigm, s)
    active = dec.active
    assert active.any()
    assert rel_err(dec.dissipation, gd) < TOL
    assert rel_err(dec.weight[active], w[active]) < TOL
    # autograd forms G_ii = (p_ii - 1)/N, which cancels for confident positives: R is read to ~1e-9
    assert rel_err(dec.ratio[active], r[active]) < 1e-8
    assert torch.equal(active, gd != 0)
    assert dec.weight.shape == s.shape and dec.ratio.shape == (x.shape[0],)


def test_margin_losses_have_dissipated_anchors_reported_inactive():
    x, y, _ = batch(seed=2, noise=0.05)  # positives very close: MPT dissipates
    dec = decompose(lambda s: reference.mpt_rows(s).mean(), x, y)
    assert not bool(dec.active.all())
    assert float(dec.weight[~dec.active].abs().sum()) == 0.0 and float(dec.ratio[~dec.active].abs().sum()) == 0.0


def test_decompose_a_paradigm_and_reduction_sum():
    x, y, z = batch(seed=3)
    p = gradsurg.Paradigm(D.Margin(0.8), W.Power(3.0), R.Constant(1.7))
    dec = decompose(p, x, y, z)
    gd, w, r = reference.components(p, reference.cosine_matrix(x, y, z))
    assert rel_err(dec.dissipation, gd) < TOL and rel_err(dec.ratio[dec.active], r[dec.active]) < TOL
    dec_sum = decompose(lambda s: reference.info_nce_rows(s).sum(), x, y, reduction="sum")
    dec_mean = decompose(lambda s: reference.info_nce_rows(s).mean(), x, y)
    assert rel_err(dec_sum.dissipation, dec_mean.dissipation) < TOL


def test_decompose_any_similarity_loss_linear_example():
    """A loss linear in s has constant GD, W, R: L = mean_i (sum_{j!=i} c_j s_ij - 2 s_ii)."""
    x, y, _ = batch(n=6, seed=4)
    c = torch.arange(1.0, 7.0, dtype=torch.float64)

    def loss(s):
        n = s.shape[0]
        off = s * (1 - torch.eye(n, dtype=s.dtype))
        return ((off * c).sum(1) - 2 * s.diagonal()).mean()

    dec = decompose(loss, x, y)
    totals = c.sum() - c  # row i excludes c_i
    assert rel_err(dec.dissipation, totals) < TOL
    assert rel_err(dec.ratio, 2 / totals) < TOL
    assert rel_err(dec.weight[0, 1:], c[1:] / totals[0]) < TOL


def test_decompose_objective_reports_effective_linear_weights():
    x, y, _ = batch(seed=5)
    dec = gradsurg.decompose(BarlowTwins(lam=0.2), x, y)
    assert isinstance(dec, Decomposition)
    v = torch.nn.functional.normalize(y, dim=1)
    b = v @ v.T - torch.eye(x.shape[0], dtype=x.dtype)
    assert rel_err(dec.weight, b / b.sum(1, keepdim=True)) < TOL
    assert dec.residual is not None and dec.residual.shape == x.shape
    dec = gradsurg.decompose(VICReg(modified="w_gd,w_w,w_r"), x, y)
    assert rel_err(dec.ratio, torch.full_like(dec.ratio, 1.5)) < TOL
    summary = dec.summary()
    assert set(summary) == {"active_share", "gd_mean", "hardest_weight", "ratio_mean"}


def test_decompose_errors():
    x, y, _ = batch()
    with pytest.raises(ValueError, match="reduction"):
        decompose(lambda s: s.sum(), x, y, reduction="none")
    with pytest.raises(ValueError, match="anchors and positives"):
        decompose(lambda s: s.sum(), x, y[:-1])
    with pytest.raises(ValueError, match="scalar"):
        decompose(lambda s: s, x, y)
    with pytest.raises(TypeError, match="loss_fn"):
        decompose(3, x, y)


def test_float32_decompose_close_to_float64():
    x, y, _ = batch(seed=6)
    d64 = decompose(lambda s: reference.info_nce_rows(s).mean(), x, y)
    d32 = decompose(lambda s: reference.info_nce_rows(s).mean(), x.float(), y.float())
    assert d32.dissipation.dtype == torch.float32
    assert rel_err(d32.dissipation, d64.dissipation) < 1e-4 and not math.isnan(float(d32.ratio.sum()))
