"""Non-contrastive objectives: originals vs closed forms, switches, modified gradients vs hand-computed ones.

Tolerances: float64 gradients 1e-10 relative to the reference's largest entry.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from gradsurg.objectives import (
    MHE, MHS, OBJECTIVES, SG, AlignUniform, BarlowTwins, VICReg, barlow_twins, original as O, parse_switches,
    sg, vicreg,
)
from gradsurg.registry import build_loss

from conftest import rel_err

TOL = 1e-10
NONCONTRASTIVE = ["align_uniform", "mhe", "mhs", "barlow_twins", "vicreg"]
ORIGINALS = {
    "align_uniform": O.align_uniform, "mhe": O.mhe, "mhs": O.mhs, "barlow_twins": O.barlow_twins,
    "vicreg": O.vicreg,
}
SWITCH_SETS = [frozenset(c) for r in range(4) for c in itertools.combinations(("w_gd", "w_w", "w_r"), r)]


def views(n=9, d=14, seed=0, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x * 1.7, y * 0.8  # not unit norm: the normalisation's backward is exercised


def grads(fn, x, y):
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    value = fn(xr, yr)
    gx, gy = torch.autograd.grad(value, (xr, yr))
    return value.detach(), gx, gy


def tangential(du, x):
    """What a unit-vector gradient ``du`` becomes on the raw rows ``x``."""
    u = F.normalize(x, dim=1)
    return (du - (du * u).sum(1, keepdim=True) * u) / x.norm(dim=1, keepdim=True)


def offdiag(m):
    return m - torch.diag_embed(m.diagonal())


# ----------------------------------------------------------------------------- originals
@pytest.mark.parametrize("name", NONCONTRASTIVE)
def test_original_module_is_plain_autograd_of_the_formula(name):
    x, y = views()
    mod = OBJECTIVES[name]()
    v1, gx1, gy1 = grads(mod, x, y)
    v2, gx2, gy2 = grads(ORIGINALS[name], x, y)
    assert torch.allclose(v1, v2)
    assert rel_err(gx1, gx2) < TOL and rel_err(gy1, gy2) < TOL


@pytest.mark.parametrize("name", NONCONTRASTIVE)
def test_original_gradient_is_its_push_pull_reading_plus_residual(name):
    """The decomposition (GD, W, R and the residual) reproduces autograd's gradient exactly."""
    x, y = views(seed=1)
    mod = OBJECTIVES[name]()
    _, gx, _ = grads(mod, x, y)
    dec = mod.decompose(x, y)
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    negatives = v if name == "mhs" else u
    du = dec.dissipation[:, None] * (dec.weight @ negatives - dec.ratio[:, None] * v)
    if dec.residual is not None:
        du = du + dec.residual
    assert rel_err(tangential(du, x), gx) < TOL


def test_barlow_twins_gradient_matches_the_paradigm_closed_form():
    """docs/objectives.md: dL/du_i = (2/N)[lam sum_j (v_i.v_j/N) u_j - sum_d (1 - (1-lam) C_dd) v_id e_d]."""
    x, y = views(seed=2)
    n, lam = x.shape[0], 0.3
    _, gx, _ = grads(lambda a, b: barlow_twins(a, b, lam=lam), x, y)
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    c_diag = (u * v).sum(0) / n
    du = (2 / n) * (lam * (v @ v.T / n) @ u - (1 - (1 - lam) * c_diag)[None, :] * v)
    assert rel_err(tangential(du, x), gx) < TOL


def test_barlow_twins_effective_weights_are_linear_in_the_other_views_similarities():
    x, y = views(seed=3)
    n, lam = x.shape[0], 5e-3
    dec = BarlowTwins().decompose(x, y)
    v = F.normalize(y, dim=1)
    b = offdiag(v @ v.T)
    assert rel_err(dec.dissipation, 2 * lam * b.sum(1) / n**2) < TOL
    assert rel_err(dec.weight, b / b.sum(1, keepdim=True)) < TOL
    assert rel_err(dec.ratio, (2 / n) / (2 * lam * b.sum(1) / n**2)) < TOL
    assert rel_err(dec.push, 2 * lam * b / n**2) < TOL  # linear weights, negative entries allowed
    assert bool((dec.push < 0).any())
    # the residual is the gradient of Barlow Twins' coordinate-wise term (1 - lam) sum_d C_dd^2
    u = F.normalize(x, dim=1).requires_grad_(True)
    (g,) = torch.autograd.grad(O.barlow_twins_diagonal_part(u, v, lam=lam), u)
    assert rel_err(tangential(dec.residual, x), tangential(g, x)) < TOL


def test_vicreg_effective_weights_are_the_centred_similarities():
    x, y = views(seed=4)
    n, d = x.shape
    dec = VICReg().decompose(x, y)
    u = F.normalize(x, dim=1)
    uc = u - u.mean(0)
    push = offdiag(uc @ uc.T) * 4 * 1.0 / (d * (n - 1) ** 2)
    assert rel_err(dec.push, push) < TOL
    assert rel_err(dec.pull, torch.full((n,), 2 * 25.0 / (n * d), dtype=torch.float64)) < TOL
    # the residual is the variance hinge and the covariance diagonal
    ur = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(O.vicreg_coordinate_part(ur, F.normalize(y, dim=1)), ur)
    assert rel_err(tangential(dec.residual, x), tangential(g, x)) < TOL


def test_mhe_and_mhs_closed_forms():
    x, y = views(seed=5)
    n = x.shape[0]
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    # MHE: exponential weights at temperature 1, GD = lam * row share of exp(a) over the pairs * 2
    dec = MHE(lam=3.0).decompose(x, y)
    e = offdiag(torch.exp(u @ u.T))
    assert rel_err(dec.weight, e / e.sum(1, keepdim=True)) < TOL
    assert rel_err(dec.dissipation, 2 * 3.0 * e.sum(1) / e.sum()) < TOL
    assert rel_err(dec.dissipation * dec.ratio, torch.full((n,), 2.0 / n, dtype=torch.float64)) < TOL
    # MHS: one-hot at the nearest other-view row, GD = lam / (N d_ij*)
    dec = MHS().decompose(x, y)
    dist = torch.cdist(u, v).pow(2).add(1e-4).sqrt() + torch.diag(torch.full((n,), float("inf"), dtype=torch.float64))
    near, idx = dist.min(1)
    assert torch.equal(dec.weight.argmax(1), idx) and torch.allclose(dec.weight.sum(1), torch.ones(n, dtype=torch.float64))
    assert rel_err(dec.dissipation, 1.0 / (n * near)) < TOL


def test_align_uniform_weights_are_a_softmax_at_one_over_2t():
    x, y = views(seed=6)
    t = 1.5
    dec = AlignUniform(t=t).decompose(x, y)
    u = F.normalize(x, dim=1)
    e = offdiag(torch.exp(2 * t * (u @ u.T)))
    assert rel_err(dec.weight, e / e.sum(1, keepdim=True)) < TOL


# ----------------------------------------------------------------------------- switches
@pytest.mark.parametrize("name", NONCONTRASTIVE)
@pytest.mark.parametrize("switch", ["w_gd", "w_w", "w_r"])
def test_each_switch_changes_exactly_its_component(name, switch):
    x, y = views(seed=7, noise=0.3)
    u = F.normalize(x, dim=1)
    far = 1 - offdiag(u @ u.T - 2 * torch.eye(x.shape[0], dtype=x.dtype)).max(1).values
    margin = float(far.median()) + 1e-9  # some anchors gated, some not
    mod = OBJECTIVES[name](lam=1.0, margin=margin)
    base, _ = mod.components(x, y, switches=())
    one, _ = mod.components(x, y, switches=(switch,))
    same = lambda a, b: rel_err(a, b) < 1e-13  # noqa: E731
    if switch == "w_gd":
        assert set(one.gate.tolist()) == {0.0, 1.0} and bool((base.gate == 1).all())
        assert same(one.push, base.push) and same(one.pull, base.pull)
        # normalised reading: GD only
        assert same(one.weight, base.weight) and same(one.ratio, base.ratio)
        assert not same(one.dissipation, base.dissipation)
    elif switch == "w_w":
        assert same(one.gate, base.gate) and same(one.pull, base.pull)
        assert not same(one.weight, base.weight)
        assert bool((one.push >= 0).all())
    else:
        assert same(one.gate, base.gate) and same(one.push, base.push)
        assert not same(one.pull, base.pull)
        # normalised reading: R only, and R is the ratio
        assert same(one.dissipation, base.dissipation) and same(one.weight, base.weight)
        assert rel_err(one.ratio, torch.full_like(one.ratio, mod.ratio)) < 1e-13


@pytest.mark.parametrize("name", NONCONTRASTIVE)
def test_switch_w_w_sets_the_softmax_of_its_view(name):
    x, y = views(seed=8)
    tau = 0.2
    mod = OBJECTIVES[name](modified="w_w", temperature=tau)
    first, _ = mod.components(x, y)
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    src = {"barlow_twins": v @ v.T, "mhs": u @ v.T}.get(name, u @ u.T)
    e = offdiag(torch.exp(src / tau))
    assert rel_err(first.weight, e / e.sum(1, keepdim=True)) < TOL
    assert rel_err(first.push, mod.push_budget * e / e.sum()) < TOL  # the row's share of the mass sets GD


def test_power_weights():
    x, y = views(seed=9, noise=0.2)
    mod = VICReg(modified="w_w", power=3.0, temperature=None)
    first, _ = mod.components(x, y)
    u = F.normalize(x, dim=1)
    p = offdiag((u @ u.T).clamp(min=1e-4).pow(3.0))
    assert rel_err(first.push, 2.0 * p / p.sum()) < TOL


def hand_gradient(name, x, y, switches, *, lam=1.0, margin=0.30, tau=0.05, ratio=None):
    """The modified gradient of the anchors' view, written out with plain tensor algebra."""
    ratio = ratio if ratio is not None else (1.5 if name in ("barlow_twins", "vicreg") else 1.75)
    n, d = x.shape
    u, v = F.normalize(x, dim=1), F.normalize(y, dim=1)
    a, b, c = u @ u.T, v @ v.T, u @ v.T
    eye = torch.eye(n, dtype=torch.bool)
    negatives = v if name == "mhs" else u
    # the original's push and pull (docs/objectives.md)
    if name == "mhe":
        e = offdiag(torch.exp(a))
        push, pull = 2 * lam * e / e.sum(), torch.full((n,), 2.0 / n, dtype=x.dtype)
    elif name == "align_uniform":
        e = offdiag(torch.exp(4.0 * a))  # t = 2
        push, pull = 2 * lam * 2.0 * e / e.sum(), torch.full((n,), 2.0 / n, dtype=x.dtype)
    elif name == "mhs":
        dist = (2 - 2 * c + 1e-4).sqrt().masked_fill(eye, float("inf"))
        near, idx = dist.min(1)
        push = torch.zeros(n, n, dtype=x.dtype)
        push[torch.arange(n), idx] = lam / (n * near)
        pull = torch.full((n,), 2.0 / n, dtype=x.dtype)
    elif name == "barlow_twins":
        push, pull = 2 * lam * offdiag(b) / n**2, torch.full((n,), 2.0 / n, dtype=x.dtype)
    else:
        uc = u - u.mean(0)
        push, pull = 4 * offdiag(uc @ uc.T) / (d * (n - 1) ** 2), torch.full((n,), 50.0 / (n * d), dtype=x.dtype)
    if "w_w" in switches:
        src = {"barlow_twins": b, "mhs": c}.get(name, a)
        e = offdiag(torch.exp(src / tau))
        push = 2 * lam * (2.0 if name == "align_uniform" else 1.0) * e / e.sum()
    if "w_r" in switches:
        pull = ratio * push.sum(1)
    gate = torch.ones(n, dtype=x.dtype)
    if "w_gd" in switches:
        gate = ((1 - a.masked_fill(eye, -2.0).max(1).values) < margin).to(x.dtype)
    du = gate[:, None] * (push @ negatives - pull[:, None] * v)
    return tangential(du, x)


@pytest.mark.parametrize("name", NONCONTRASTIVE)
@pytest.mark.parametrize("switches", SWITCH_SETS[1:], ids=lambda s: "+".join(sorted(s)))
def test_modified_gradient_equals_hand_computed_paradigm_gradient(name, switches):
    x, y = views(seed=10, noise=0.4)
    kwargs = {"lam": 1.0} if name != "vicreg" else {}
    mod = OBJECTIVES[name](modified=",".join(sorted(switches)), margin=0.7, **kwargs)
    _, gx, gy = grads(mod, x, y)
    assert rel_err(gx, hand_gradient(name, x, y, switches, margin=0.7)) < TOL
    assert rel_err(gy, hand_gradient(name, y, x, switches, margin=0.7)) < TOL  # the other view, symmetric


def test_modified_gradient_is_set_not_differentiated_and_scales_with_grad_output():
    x, y = views(seed=11)
    mod = VICReg(modified="w_gd,w_w,w_r", margin=0.9)
    _, gx, gy = grads(mod, x, y)
    _, gx3, gy3 = grads(lambda a, b: 3.0 * mod(a, b), x, y)
    assert rel_err(gx3, 3 * gx) < TOL and rel_err(gy3, 3 * gy) < TOL
    assert rel_err(gx, hand_gradient("vicreg", x, y, {"w_gd", "w_w", "w_r"}, margin=0.9)) < TOL
    # plain autograd of the surrogate value would also differentiate the weights and the negatives
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    u, v = F.normalize(xr, dim=1), F.normalize(yr, dim=1)
    e = offdiag(torch.exp(u @ u.T / 0.05))
    naive = (2 * e / e.sum() * (u @ u.T)).sum()
    (g_naive,) = torch.autograd.grad(naive, xr)
    assert rel_err(g_naive, gx) > 1e-3


def test_float32_modified_matches_float64():
    x, y = views(seed=12)
    mod = BarlowTwins(modified="all")
    _, gx64, _ = grads(mod, x, y)
    _, gx32, _ = grads(mod, x.float(), y.float())
    assert gx32.dtype == torch.float32
    assert rel_err(gx32, gx64) < 1e-4


def test_ablation_is_a_few_lines_of_user_code():
    x, y = views(seed=13)
    x.requires_grad_(True)
    for modified in ["", "w_gd", "w_w", "w_r", "w_gd,w_w,w_r"]:
        loss = BarlowTwins(modified=modified)(x, y)  # a non-contrastive loss with a contrastive-style gradient
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(g).all()


# ----------------------------------------------------------------------------- sg
def test_sg_gradient_equals_stop_gradient_surrogate_by_autograd():
    """Hand version: autograd of the surrogate with detached components and detached negatives."""
    from gradsurg.reference import components

    x, y = views(seed=14, noise=0.3)
    z = torch.randn(3, x.shape[1], dtype=torch.float64)
    mod = SG(margin=0.5, temperature=0.1, ratio=1.3)
    p = mod.paradigm

    def hand(a, b, neg):
        u, v, w = F.normalize(a, dim=1), F.normalize(b, dim=1), F.normalize(neg, dim=1)
        n = u.shape[0]

        def direction(anchor, cands):
            s = anchor @ cands.detach().T
            pos = (anchor * cands[:n]).sum(1)  # the positive carries gradient to both sides
            s = torch.cat([s[:, :n].masked_fill(torch.eye(n, dtype=torch.bool), 0) + torch.diag(pos), s[:, n:]], 1)
            gd, wt, r = components(p, s)
            return (gd * ((wt * s).sum(1) - r * s.diagonal())).mean()

        return 0.5 * (direction(u, torch.cat([v, w])) + direction(v, u))

    xr, yr, zr = (t.clone().requires_grad_(True) for t in (x, y, z))
    g1 = torch.autograd.grad(mod(xr, yr, zr), (xr, yr, zr))
    g2 = torch.autograd.grad(hand(xr, yr, zr), (xr, yr, zr), allow_unused=True)
    assert rel_err(g1[0], g2[0]) < TOL and rel_err(g1[1], g2[1]) < TOL
    assert float(g1[2].abs().max()) == 0.0  # extra negatives are stop-gradient


@pytest.mark.parametrize("name", ["align_uniform", "mhe", "barlow_twins", "vicreg"])
def test_original_objectives_pass_gradcheck(name):
    """(A set gradient with stop-gradient negatives is not the derivative of its value, so gradcheck
    applies to the originals only; the modified ones are checked against hand-computed gradients.)"""
    x, y = views(n=5, d=6, seed=15)
    mod = OBJECTIVES[name]()
    assert torch.autograd.gradcheck(mod, (x.requires_grad_(True), y.requires_grad_(True)), eps=1e-6, atol=1e-6)


def test_sg_switches_and_paradigm_argument():
    from gradsurg.components import dissipation as D, ratio as R, weight as W
    from gradsurg import Paradigm

    assert SG(modified="").paradigm == Paradigm(D.Constant(1.0), W.Uniform(), R.Constant(1.0))
    assert SG(power=2.0).paradigm.weight == W.Power(2.0)
    assert SG().paradigm == Paradigm(D.Margin(0.3), W.Softmax(0.05), R.Constant(1.0))
    p = Paradigm(D.InfoNCE(0.1), W.Softmax(0.1), R.Constant(1.2))
    assert SG(paradigm=p).paradigm is p


# ----------------------------------------------------------------------------- API, registry, errors
def test_defaults_are_the_papers():
    assert MHE().lam == 10.0 and MHE(modified="w_w").lam == 1.0
    assert BarlowTwins().lam == 5e-3 and BarlowTwins(modified="w_r").lam == 1.0
    v = VICReg()
    assert (v.sim_coeff, v.std_coeff, v.cov_coeff) == (25.0, 25.0, 1.0)
    for cls, ratio in ((MHE, 1.75), (MHS, 1.75), (BarlowTwins, 1.5), (VICReg, 1.5)):
        m = cls()
        assert (m.ratio, m.margin, m.temperature) == (ratio, 0.30, 0.05)


def test_registry_builds_every_objective_with_switches():
    x, y = views(seed=16)
    for name in OBJECTIVES:
        mod = build_loss(name, modified="w_gd,w_w,w_r")
        assert torch.isfinite(mod(x, y))
    assert build_loss("vicreg", modified="w_r", ratio=2.0).ratio == 2.0
    with pytest.raises(ValueError, match="unknown parameter"):
        build_loss("barlow_twins", lambd=0.1)


def test_switch_parsing():
    assert parse_switches("w_gd, w_w+w_r", "t") == {"w_gd", "w_w", "w_r"}
    assert parse_switches(["w_r"], "t") == {"w_r"} and parse_switches("", "t") == frozenset()
    assert parse_switches("all", "t") == {"w_gd", "w_w", "w_r"}
    with pytest.raises(ValueError, match="unknown switch 'w_x'.*modified"):
        MHE(modified="w_gd,w_x")
    with pytest.raises(TypeError, match="modified"):
        MHE(modified=3)


def test_clear_errors():
    x, y = views(seed=17)
    with pytest.raises(ValueError, match="negatives"):
        vicreg(x, y, torch.randn(2, x.shape[1], dtype=x.dtype))
    with pytest.raises(ValueError, match="positives"):
        MHE()(x, y[:-1])
    with pytest.raises(ValueError, match="temperature"):
        VICReg(temperature=0.0)
    with pytest.raises(ValueError, match="margin"):
        MHS(margin=-0.1)
    with pytest.raises(ValueError, match="ratio"):
        BarlowTwins(ratio=-1.0)
    with pytest.raises(TypeError, match="lam"):
        MHE(lam="big")
    with pytest.raises(ValueError, match="normalize=True"):
        BarlowTwins(normalize=False, modified="w_w")
    with pytest.raises(ValueError, match="normalize=True"):
        VICReg(normalize=False).decompose(x, y)


def test_unnormalised_published_versions_run():
    x, y = views(seed=18)
    for mod in (BarlowTwins(normalize=False), VICReg(normalize=False)):
        _, gx, gy = grads(mod, x, y)
        assert torch.isfinite(gx).all() and torch.isfinite(gy).all()


def test_sg_with_power_12_is_finite():
    from gradsurg.objectives import sg

    u = torch.eye(4, 6, requires_grad=True)
    loss = sg(u, torch.eye(4, 6), power=12.0, margin=2.0)
    (g,) = torch.autograd.grad(loss, u)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and g.abs().sum() > 0


def test_modified_vicreg_with_power_12_is_finite():
    loss = build_loss("vicreg", modified="w_w", power=12.0)
    assert torch.isfinite(loss(torch.eye(2), torch.eye(2)))
