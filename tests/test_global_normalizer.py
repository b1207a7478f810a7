"""normalizer='global' (SogCLR / FastCLIP) against an independent step-by-step formula (float64).

The oracle keeps its own dictionary of u_i, forms the full similarity matrix, updates u exactly as
written in docs/paradigm.md ("Global normaliser") and differentiates the surrogate
``-s_ii/tau + sum_{j!=i} exp(s_ij/tau) / ((M-1) u_i)`` with u held constant; its value is
``-s_ii/tau + log u_i + g_i/u_i - 1``. Several steps with overlapping and new indices, one tower and
two (symmetric), hard negatives, cosine and dot products. Tolerance 1e-10 relative (float64).
"""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import gradsurg

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402

TOL = 1e-10
TAU, GAMMA, DATASET = 0.1, 0.3, 12


class Oracle:
    """The per-example estimates as a dictionary per tower, and one direction's (value, surrogate) rows:
    ``tau`` a float or a 0-dim tensor (a leaf: the surrogate's gradient to it is the learnable one)."""

    def __init__(self, towers, tau=TAU, gamma=GAMMA, keep_dissipation=False):
        self.u = [dict() for _ in range(towers)]
        self.tau, self.gamma, self.keep = tau, gamma, keep_dissipation

    def direction(self, x, c, tower, index, unit, update=True):
        tau, gamma = self.tau, self.gamma
        if unit:
            x, c = F.normalize(x, dim=1), F.normalize(c, dim=1)
        s = x @ c.T
        n, m = s.shape
        off = ~torch.eye(n, m, dtype=torch.bool)
        e = torch.exp(s / tau) * off
        g = e.detach().sum(dim=1) / (m - 1)
        u = []
        for i, k in enumerate(index.tolist()):
            old = self.u[tower].get(k)
            new = g[i].item() if old is None else (1 - gamma) * old + gamma * g[i].item()
            if update:
                self.u[tower][k] = new
            u.append(new)
        u = torch.tensor(u, dtype=torch.float64)
        pos = s.diagonal()
        t = float(tau.detach() if torch.is_tensor(tau) else tau)
        if self.keep:  # the positive in the normaliser: log(e^{s_ii/tau} + (M-1) u) with u's gradient that of g
            negatives = (m - 1) * u + (e.sum(dim=1) - e.sum(dim=1).detach())
            surrogate = -pos / tau + torch.log(torch.exp(pos / tau) + negatives)
            d = torch.exp(pos.detach() / t) + (m - 1) * u
            value = -pos.detach() / t + torch.log(d) + (m - 1) * u / d * (g / u - 1)
            return value, surrogate
        surrogate = -pos / tau + e.sum(dim=1) / ((m - 1) * u)
        value = -pos.detach() / t + torch.log(u) + g / u - 1
        return value, surrogate


def oracle_loss(oracle, a, p, z, index, symmetric, unit):
    c = p if z is None else torch.cat([p, z])
    v, s = oracle.direction(a, c, 0, index, unit)
    if symmetric:
        v2, s2 = oracle.direction(p, a, 1, index, unit)
        v, s = 0.5 * (v + v2), 0.5 * (s + s2)
    return v.mean(), s.mean()


@pytest.mark.parametrize("keep", [False, True], ids=["sogclr", "keep_gd"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one", "sym"])
@pytest.mark.parametrize("with_neg", [False, True], ids=["noneg", "neg"])
@pytest.mark.parametrize("unit", [True, False], ids=["cos", "dot"])
def test_steps_against_oracle(symmetric, with_neg, unit, keep):
    g = torch.Generator().manual_seed(11)
    data_a = torch.randn(DATASET, 5, generator=g, dtype=torch.float64)
    data_p = data_a + 0.6 * torch.randn(DATASET, 5, generator=g, dtype=torch.float64)
    if not unit:
        data_a, data_p = 0.4 * data_a, 0.4 * data_p
    state = gradsurg.GlobalNormalizer(DATASET, gamma=GAMMA, towers=2 if symmetric else 1)
    oracle = Oracle(2, keep_dissipation=keep)
    steps = [[0, 1, 2, 3], [2, 3, 4, 5, 6], [0, 5, 7, 8], [1, 2, 3, 9, 10, 11], [0, 2, 4, 6]]
    kw = {} if unit else {"normalize": False}
    if keep:
        kw["keep_dissipation"] = True
    for step, idx in enumerate(steps):
        index = torch.tensor(idx)
        drift = 0.05 * step  # the "model" moves between steps
        a = (data_a[index] + drift).clone().requires_grad_()
        p = (data_p[index] - drift).clone().requires_grad_()
        z = torch.randn(3, 5, generator=g, dtype=torch.float64).requires_grad_() if with_neg else None
        loss = gradsurg.info_nce(a, p, z, temperature=TAU, normalizer="global", state=state, index=index,
                                 symmetric=symmetric, **kw)
        leaves = [a, p] + ([z] if z is not None else [])
        grads = torch.autograd.grad(loss, leaves)
        ra, rp = a.detach().clone().requires_grad_(), p.detach().clone().requires_grad_()
        rz = z.detach().clone().requires_grad_() if z is not None else None
        value, surrogate = oracle_loss(oracle, ra, rp, rz, index, symmetric, unit)
        want = torch.autograd.grad(surrogate, [ra, rp] + ([rz] if rz is not None else []))
        assert rel_err(loss, value) < TOL, step
        for k, (got, exp) in enumerate(zip(grads, want)):
            assert rel_err(got, exp) < TOL, (step, k, rel_err(got, exp))
        seen = torch.tensor(sorted({k for s in steps[:step + 1] for k in s}))
        want_u = torch.tensor([oracle.u[0][k] for k in seen.tolist()], dtype=torch.float64)
        assert rel_err(state.log_u[0, seen].exp(), want_u) < TOL


@pytest.mark.parametrize("keep", [False, True], ids=["sogclr", "keep_gd"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["one", "sym"])
@pytest.mark.parametrize("form", ["temperature", "scale", "module"])
def test_learnable_temperature_against_oracle(symmetric, form, keep):
    """A learnable temperature: its gradient is the surrogate's (u held constant), over three steps, with the
    features' gradients and the state; ``scale=`` (1/tau) and ``InfoNCELoss(learnable=True)`` reach it too."""
    g = torch.Generator().manual_seed(5)
    data_a = torch.randn(DATASET, 4, generator=g, dtype=torch.float64)
    data_p = data_a + 0.7 * torch.randn(DATASET, 4, generator=g, dtype=torch.float64)
    towers = 2 if symmetric else 1
    module = gradsurg.InfoNCELoss(temperature=TAU, learnable=True, normalizer="global", dataset_size=DATASET,
                                  gamma=GAMMA, symmetric=symmetric, keep_dissipation=keep).double()
    state = module.normalizer if form == "module" else gradsurg.GlobalNormalizer(DATASET, GAMMA, towers)
    oracle = Oracle(2, keep_dissipation=keep)
    for step, idx in enumerate([[0, 1, 2, 3, 4], [3, 4, 5, 6], [0, 6, 7, 1, 2, 8]]):
        index = torch.tensor(idx)
        tau0 = TAU * (1 + 0.2 * step)  # the temperature moves between steps
        a = (data_a[index] + 0.03 * step).clone().requires_grad_()
        p = data_p[index].clone().requires_grad_()
        z = torch.randn(2, 4, generator=g, dtype=torch.float64).requires_grad_()
        if form == "module":
            with torch.no_grad():
                module.logit_scale.fill_(math.log(1 / tau0))
            hyper = module.logit_scale
            loss = module(a, p, z, index=index)
        elif form == "scale":
            hyper = torch.tensor(1 / tau0, dtype=torch.float64, requires_grad=True)
            loss = gradsurg.info_nce(a, p, z, scale=hyper, normalizer="global", state=state, index=index,
                                     symmetric=symmetric, keep_dissipation=keep)
        else:
            hyper = torch.tensor(tau0, dtype=torch.float64, requires_grad=True)
            loss = gradsurg.info_nce(a, p, z, temperature=hyper, normalizer="global", state=state, index=index,
                                     symmetric=symmetric, keep_dissipation=keep)
        grads = torch.autograd.grad(loss, [a, p, z, hyper])
        ra, rp, rz = (t.detach().clone().requires_grad_() for t in (a, p, z))
        rh = hyper.detach().clone().requires_grad_()
        oracle.tau = {"module": lambda h: torch.exp(-h), "scale": lambda h: 1 / h, "temperature": lambda h: h}[form](rh)
        value, surrogate = oracle_loss(oracle, ra, rp, rz, index, symmetric, True)
        want = torch.autograd.grad(surrogate, [ra, rp, rz, rh])
        assert rel_err(loss, value) < TOL, step
        for k, (got, exp) in enumerate(zip(grads, want)):
            assert rel_err(got, exp) < TOL, (step, k, rel_err(got, exp))
        assert grads[3].abs() > 1e-3  # the temperature's gradient is not trivially zero
        seen = torch.tensor(sorted(oracle.u[0]))
        want_u = torch.tensor([oracle.u[0][k] for k in seen.tolist()], dtype=torch.float64)
        assert rel_err(state.log_u[0, seen].exp(), want_u) < TOL


def test_first_step_with_dissipation_kept_is_info_nce():
    """keep_dissipation=True with u_i = g_i (first sight) is InfoNCE itself: loss and gradients equal
    torch's cross-entropy over s/tau; the second visit differs (the estimate mixes in the first)."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    state = gradsurg.GlobalNormalizer(6, gamma=0.5)
    loss = gradsurg.info_nce(a, p, temperature=0.2, normalizer="global", state=state, index=torch.arange(6),
                             keep_dissipation=True)
    s = F.normalize(a, dim=1) @ F.normalize(p, dim=1).T
    ce = F.cross_entropy(s / 0.2, torch.arange(6))
    assert rel_err(loss, ce) < TOL
    for got, want in zip(torch.autograd.grad(loss, [a, p]), torch.autograd.grad(ce, [a, p])):
        assert rel_err(got, want) < TOL
    with torch.no_grad():
        again = gradsurg.info_nce(a + 0.3, p, temperature=0.2, normalizer="global", state=state,
                                  index=torch.arange(6), keep_dissipation=True)
        plain = F.cross_entropy(F.normalize(a + 0.3, dim=1) @ F.normalize(p, dim=1).T / 0.2, torch.arange(6))
    assert rel_err(again, plain) > 1e-3


def test_keep_dissipation_errors():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="keep_dissipation is an option of normalizer='global'"):
        gradsurg.info_nce(x, x, keep_dissipation=True)
    with pytest.raises(ValueError, match="keep_dissipation is an option of normalizer='global'"):
        gradsurg.InfoNCELoss(keep_dissipation=True)
    with pytest.raises(TypeError, match="keep_dissipation must be True or False"):
        gradsurg.InfoNCELoss(normalizer="global", dataset_size=3, keep_dissipation="yes")
    with pytest.raises(TypeError, match="keep_dissipation must be True or False"):
        gradsurg.info_nce(x, x, normalizer="global", state=gradsurg.GlobalNormalizer(3), index=torch.arange(3),
                          keep_dissipation=1)


def test_first_step_is_the_decoupled_batch_loss():
    """With u_i = g_i (first sight) the gradient is the decoupled InfoNCE's (positive out of the normaliser)."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    state = gradsurg.GlobalNormalizer(6, gamma=0.5)
    loss = gradsurg.info_nce(a, p, temperature=0.2, normalizer="global", state=state, index=torch.arange(6))
    s = F.normalize(a, dim=1) @ F.normalize(p, dim=1).T
    off = ~torch.eye(6, dtype=torch.bool)
    dcl = (-s.diagonal() / 0.2 + torch.logsumexp((s / 0.2).masked_fill(~off, -math.inf), dim=1) - math.log(5)).mean()
    assert rel_err(loss, dcl) < TOL
    for got, want in zip(torch.autograd.grad(loss, [a, p]), torch.autograd.grad(dcl, [a, p])):
        assert rel_err(got, want) < TOL


def test_module_form_eval_and_state_dict():
    loss_fn = gradsurg.InfoNCELoss(temperature=TAU, normalizer="global", dataset_size=8, gamma=GAMMA, symmetric=True)
    a, p = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    idx = torch.tensor([1, 3, 5, 7])
    loss_fn(a, p, index=idx)
    before = loss_fn.normalizer.log_u.clone()
    assert torch.isfinite(before[:, idx]).all() and torch.isinf(before[:, [0, 2]]).all()
    loss_fn.eval()
    loss_fn(a * 2, p, index=idx)
    with torch.no_grad():
        loss_fn.train()
        loss_fn(a * 3, p, index=idx)
    assert torch.equal(loss_fn.normalizer.log_u, before)  # neither eval() nor no_grad() updates u
    assert "normalizer.log_u" in loss_fn.state_dict()


def test_batch_normalizer_is_plain_info_nce():
    a, p = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(gradsurg.info_nce(a, p, normalizer="batch"), gradsurg.info_nce(a, p))
    assert torch.equal(gradsurg.InfoNCELoss(normalizer="batch")(a, p), gradsurg.info_nce(a, p))


def test_errors():
    a, p = torch.randn(4, 3), torch.randn(4, 3)
    state = gradsurg.GlobalNormalizer(10)
    with pytest.raises(ValueError, match="needs index="):
        gradsurg.info_nce(a, p, normalizer="global", state=state)
    with pytest.raises(IndexError, match=r"index out of range: values in \[0, 10\].*dataset_size = 10"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.tensor([0, 1, 2, 10]))
    with pytest.raises(IndexError, match="out of range"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.tensor([-1, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"shape \(N,\) = \(4,\)"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integers"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.zeros(4))
    with pytest.raises(ValueError, match="repeated"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.tensor([0, 1, 1, 2]))
    with pytest.raises(TypeError, match="state must be a gradsurg.GlobalNormalizer"):
        gradsurg.info_nce(a, p, normalizer="global", index=torch.arange(4))
    with pytest.raises(ValueError, match="normalizer must be one of"):
        gradsurg.info_nce(a, p, normalizer="globl", state=state, index=torch.arange(4))
    with pytest.raises(TypeError, match="0-dim floating tensor"):
        gradsurg.info_nce(a, p, temperature=torch.tensor([0.1, 0.2]), normalizer="global", state=state,
                          index=torch.arange(4))
    with pytest.raises(ValueError, match="> 0 and finite"):
        gradsurg.info_nce(a, p, temperature=torch.tensor(-0.1), normalizer="global", state=state,
                          index=torch.arange(4))
    with pytest.raises(ValueError, match="learn= is not taken here"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.arange(4),
                          learn={"temperature": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="towers=2"):
        gradsurg.info_nce(a, p, normalizer="global", state=state, index=torch.arange(4), symmetric=True)
    with pytest.raises(ValueError, match="gamma must be"):
        gradsurg.GlobalNormalizer(10, gamma=0.0)
    with pytest.raises(ValueError, match="dataset_size="):
        gradsurg.InfoNCELoss(normalizer="global")
    with pytest.raises(ValueError, match="index= is only used"):
        gradsurg.InfoNCELoss()(a, p, index=torch.arange(4))


@pytest.mark.parametrize("symmetric", [False, True])
def test_telemetry_against_an_independent_formula(symmetric):
    """stats=: g_i/u_i (u after the update) and the share seen for the first time, from float64 sums
    written here (the gamma mix done by hand, not through the state's log-space arithmetic)."""
    torch.manual_seed(3)
    n, d, tau, gamma = 6, 8, 0.1, 0.3

    def g_of(x, y):
        s = F.normalize(x.double(), dim=1) @ F.normalize(y.double(), dim=1).T
        e = torch.exp(s / tau)
        return (e.sum(1) - e.diagonal()) / (n - 1)

    loss = gradsurg.InfoNCELoss(temperature=tau, normalizer="global", dataset_size=10, gamma=gamma,
                                symmetric=symmetric).double()
    first_index, second_index = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([3, 4, 5, 6, 7, 8])
    a1, p1 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    stats: dict = {}
    loss(a1, p1, index=first_index, stats=stats)
    assert stats["normalizer_first_seen"] == 1.0
    assert stats["normalizer_ratio_mean"] == pytest.approx(1.0, abs=1e-12)  # u_i = g_i the first time
    a2, p2 = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
    stats = {}
    loss(a2, p2, index=second_index, stats=stats)
    assert stats["normalizer_first_seen"] == pytest.approx(0.5)  # 6, 7, 8 new; 3, 4, 5 seen before
    ratios = []
    for g_old, g_new in ((g_of(a1, p1), g_of(a2, p2)),) + (((g_of(p1, a1), g_of(p2, a2)),) if symmetric else ()):
        u = g_new.clone()
        u[:3] = (1 - gamma) * g_old[3:] + gamma * g_new[:3]  # rows 3, 4, 5 of the first batch
        ratios.append(g_new / u)
    r = torch.cat(ratios)
    assert stats["normalizer_ratio_mean"] == pytest.approx(float(r.mean()), rel=1e-12)
    assert stats["normalizer_ratio_q50"] == pytest.approx(float(r.quantile(0.5)), rel=1e-12)
    assert stats["normalizer_ratio_q10"] <= stats["normalizer_ratio_q50"] <= stats["normalizer_ratio_q90"]
    with pytest.raises(TypeError, match="stats must be a dict"):
        loss(a2, p2, index=second_index, stats=[])
