"""form="reference": the exact gradient of the paper's code, every switch combination, float64.

The oracle is an independent autograd formulation of the reference's losses
(BDBC-KG-NLP/UnderstandingCSE, isotropy/models.py, read and re-derived): the
loss written as a plain function of the raw embeddings, with its stop-gradients
(``detach``) and its margin mask (rows of the normalised embeddings detached),
differentiated by autograd. The module under test never runs autograd on its
loss: it SETS the gradient from closed-form push / pull components. Tolerance
1e-9 (relative to the largest gradient entry) in float64.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import gradsurg.objectives as obj
from gradsurg.registry import build_loss

COMBOS = [frozenset(c) for r in range(4) for c in itertools.combinations(("w_gd", "w_w", "w_r"), r)]
IDS = ["ori" if not c else "+".join(s for s in ("w_gd", "w_w", "w_r") if s in c) for c in COMBOS]


def _views(n=12, d=9, seed=0, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = base + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = base + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


def _mask(e, m):
    """The reference's w_gd: rows whose nearest own-view neighbour is within the margin keep gradient."""
    a = e.detach() @ e.detach().T
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    keep = (a.diagonal() - (a - 1e8 * eye).max(dim=-1)[0]) < m
    return e * keep[:, None] + e.detach() * (~keep)[:, None]


# ------------------------------------------------------------------ the oracle
def ref_loss(name, x, y, sw, lam, m=0.30, temp=0.05, ratio=1.5, power=None):
    u, v = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    n = u.shape[0]
    eye = torch.eye(n, dtype=u.dtype)
    if "w_gd" in sw:
        u, v = _mask(u, m), _mask(v, m)
    align = 2 - 2 * (u * v).sum(-1)
    if name == "mhe":
        t = temp if "w_w" in sw else 1.0
        s0, s1 = u @ u.T / t, v @ v.T / t
        low = torch.tril(torch.ones(n, n), -1) == 1
        uni0, uni1 = torch.logsumexp(s0[low], 0), torch.logsumexp(s1[low], 0)
        if "w_w" in sw:
            w0 = (torch.logsumexp(s0.detach() - 1e8 * eye, -1) - uni0.detach()).exp() / t
            w1 = (torch.logsumexp(s1.detach() - 1e8 * eye, -1) - uni1.detach()).exp() / t
        else:
            w0 = w1 = 1.0 / n
        r = ratio if "w_r" in sw else 1.0
        return lam * (uni0 + uni1) + (align * w0 / 2 * r).sum() + (align * w1 / 2 * r).sum()
    if name == "mhs":
        d0 = (u[:, None] - v[None].detach()).pow(2).sum(-1).add(1e-4).sqrt()
        d1 = (v[:, None] - u[None].detach()).pow(2).sum(-1).add(1e-4).sqrt()
        near0, near1 = (d0 + 1e8 * eye).min(-1)[0], (d1 + 1e8 * eye).min(-1)[0]
        if "w_r" in sw:
            a0, a1 = align * ratio / near0.detach() / 2, align * ratio / near1.detach() / 2
        else:
            a0 = a1 = align / 2
        return lam * (-near0.mean() - near1.mean()) + a0.mean() + a1.mean()

    def weights(z):
        s = z.detach() @ z.detach().T
        if "w_w" in sw:
            f = (s / temp).exp() if power is None else s.clamp_min(1e-4).pow(power)
            return f / (f * (1 - eye)).sum()
        return s * 2 / n**2

    def direction(a, b):
        w = weights(a if name == "vicreg" else b)
        neg = (w * (a @ a.detach().T)).sum(-1)
        if "w_r" in sw:
            pos = lam * ratio * (w * (1 - eye)).sum(-1) * -(a * b).sum(-1)
        elif name == "vicreg":
            pos = -(a * b.detach()).sum(-1) * 2 / n
        else:
            c = a.detach().T @ b.detach() / n
            pos = ((1 - (1 - lam) * c.diagonal()) * 2 / n * -(a * b.detach())).sum(-1)
        return (pos + lam * neg).sum()

    return direction(u, v) + direction(v, u)


def ref_sg(x, y, sw, m=0.30, temp=0.05, ratio=1.0, power=None):
    u, v = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    n = u.shape[0]
    eye = torch.eye(n, dtype=u.dtype)
    s = u.detach() @ v.detach().T
    mask0 = (s.diagonal() - (s - 1e8 * eye).max(-1)[0]) < m
    mask1 = (s.diagonal() - (s - 1e8 * eye).max(0)[0]) < m
    align = (u * v).sum(-1)

    def one(rows, cols, mask):
        sim = (rows @ cols.T) * (1 - eye) + torch.diag(align)
        target = sim - ratio * sim.diagonal()[:, None]
        if power is not None:
            w = torch.ones_like(eye) if int(power) == 0 else sim.detach().clamp_min(1e-4).pow(int(power))
            w = w * (1 - eye)
            w = w / w.sum(-1, keepdim=True)
        else:
            w = torch.softmax((sim.detach() - 1e8 * eye) / temp, dim=-1)
        return (w * target)[mask].mean() if "w_gd" in sw else (w * target).mean()

    return one(u, v.detach(), mask0) + one(v, u.detach(), mask1)


def _grads(fn, x, y):
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    loss = fn(x, y)
    gx, gy = torch.autograd.grad(loss, (x, y))
    return loss.detach(), gx, gy


def _close(got, want, tol=1e-9):
    scale = max(float(want.abs().max()), 1e-30)
    err = float((got - want).abs().max()) / scale
    assert err < tol, f"relative error {err:.3e}"


LAMS = {"mhe": (10.0, 1.0), "mhs": (1.0, 1.0), "vicreg": (30.0, 1.0), "barlow_twins": (30.0, 1.0)}
RATIOS = {"mhe": 1.75, "mhs": 1.75, "vicreg": 1.5, "barlow_twins": 1.5}


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("name", ["mhe", "mhs", "vicreg", "barlow_twins"])
@pytest.mark.parametrize("sw", COMBOS, ids=IDS)
def test_reference_gradient_every_combination(name, sw):
    x, y = _views()
    module = obj.OBJECTIVES[name](modified=",".join(sorted(sw)), form="reference")
    lam = LAMS[name][1 if sw else 0]
    assert module.lam == lam  # the paper's run-script defaults
    _, gx, gy = _grads(lambda a, b: module(a, b), x, y)
    _, ox, oy = _grads(lambda a, b: ref_loss(name, a, b, sw, lam, ratio=RATIOS[name]), x, y)
    _close(gx, ox)
    _close(gy, oy)


def test_gate_is_active_in_the_test_data():
    # the w_gd cases above only test something if some rows are masked and some are not
    x, y = _views()
    u = F.normalize(x, dim=-1)
    a = u @ u.T
    a.diagonal().fill_(-2)
    keep = (1 - a.max(dim=1)[0]) < 0.30
    assert 0 < int(keep.sum()) < len(keep)
    s = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T
    others = s.clone()
    others.diagonal().fill_(-2)
    keep_sg = (s.diagonal() - others.max(dim=1)[0]) < 0.30
    assert 0 < int(keep_sg.sum()) < len(keep_sg)


@pytest.mark.parametrize("name", ["vicreg", "barlow_twins"])
@pytest.mark.parametrize("sw", [frozenset({"w_w"}), frozenset({"w_gd", "w_w", "w_r"})], ids=["w_w", "all"])
def test_reference_power_weights(name, sw):
    x, y = _views(seed=3)
    module = obj.OBJECTIVES[name](modified=",".join(sw), form="reference", temperature=None, power=4.0)
    _, gx, gy = _grads(lambda a, b: module(a, b), x, y)
    _, ox, oy = _grads(lambda a, b: ref_loss(name, a, b, sw, 1.0, power=4.0, ratio=1.5), x, y)
    _close(gx, ox)
    _close(gy, oy)


@pytest.mark.parametrize("sw", COMBOS, ids=IDS)
def test_reference_sg_every_combination(sw):
    x, y = _views(seed=1)
    module = obj.SG(modified=",".join(sorted(sw)), form="reference", ratio=1.5)
    loss, gx, gy = _grads(lambda a, b: module(a, b), x, y)
    want, ox, oy = _grads(lambda a, b: ref_sg(a, b, sw, ratio=1.5), x, y)
    _close(gx, ox)
    _close(gy, oy)
    assert abs(float(loss) - float(want)) < 1e-9 * max(1.0, abs(float(want)))


@pytest.mark.parametrize("power", [0.0 + 0.5, 3.0])
def test_reference_sg_power(power):
    x, y = _views(seed=2)
    module = obj.SG(modified="w_gd", form="reference", temperature=None, power=power)
    _, gx, gy = _grads(lambda a, b: module(a, b), x, y)
    _, ox, oy = _grads(lambda a, b: ref_sg(a, b, {"w_gd"}, power=power), x, y)
    _close(gx, ox)
    _close(gy, oy)


def test_reference_sg_no_active_row_gives_zero_not_nan():
    # identical views far apart: every anchor's positive beats its nearest negative by > margin
    x = torch.eye(6, dtype=torch.float64).requires_grad_(True)
    loss = obj.SG(modified="w_gd", form="reference")(x, x.detach().clone())
    loss.backward()
    assert torch.isfinite(loss) and torch.all(x.grad == 0)


def test_mhs_reference_w_w_does_nothing():
    x, y = _views(seed=4)
    for extra in ("", "w_gd", "w_r", "w_gd,w_r"):
        with_w = obj.MHS(modified=",".join(filter(None, [extra, "w_w"])), form="reference")
        without = obj.MHS(modified=extra, form="reference")
        _, g1, _ = _grads(lambda a, b: with_w(a, b), x, y)
        _, g2, _ = _grads(lambda a, b: without(a, b), x, y)
        _close(g1, g2, 1e-12)


def test_forms_differ_where_documented_and_agree_where_documented():
    x, y = _views(seed=5)

    def grad(m):
        return _grads(lambda a, b: m(a, b), x, y)[1]

    # MHE original: identical (same lam); MHS original and w_gd: identical
    _close(grad(obj.MHE(form="reference")), grad(obj.MHE()), 1e-9)
    _close(grad(obj.MHS(form="reference")), grad(obj.MHS()), 1e-9)
    _close(grad(obj.MHS(modified="w_gd", form="reference")), grad(obj.MHS(modified="w_gd")), 1e-9)
    # VICReg original: a different objective (no centring, no variance term)
    a, b = grad(obj.VICReg(form="reference")), grad(obj.VICReg())
    assert float((a / a.norm() - b / b.norm()).norm()) > 0.1


def test_form_validation_and_pass_through():
    with pytest.raises(ValueError, match="form"):
        obj.MHE(form="paper")
    with pytest.raises(ValueError, match="form='reference'"):
        obj.AlignUniform(form="reference")
    with pytest.raises(ValueError, match="normalize"):
        obj.VICReg(form="reference", normalize=False)
    with pytest.raises(ValueError, match="negatives"):
        x, y = _views()
        obj.SG(form="reference")(x, y, y[:3])
    with pytest.raises(ValueError, match="paradigm"):
        from gradsurg.objectives import sg_paradigm

        obj.SG(form="reference", paradigm=sg_paradigm())
    assert build_loss("barlow_twins", form="reference", modified="w_w").form == "reference"
    assert build_loss("sg", form="reference").form == "reference"


def test_train_config_passes_form_and_sg_none_is_original():
    from gradsurg.train.config import ConfigError, TrainConfig
    from gradsurg.train.losses import loss_from_config

    cfg = TrainConfig(loss="vicreg", modified="w_w", form="reference").validate()
    assert loss_from_config(cfg).form == "reference" and "reference" in cfg.run_name()
    with pytest.raises(ConfigError, match="form"):
        TrainConfig(form="paper").validate()
    with pytest.raises(ConfigError, match="form"):
        loss_from_config(TrainConfig(loss="align_uniform", form="reference"))
    sg = loss_from_config(TrainConfig(loss="sg"))
    assert sg.switches == frozenset()  # the "(ori)" row is the neutral paradigm, as labelled
    assert loss_from_config(TrainConfig(loss="sg", modified="w_gd,w_w,w_r")).switches == {"w_gd", "w_w", "w_r"}
    assert math.isfinite(float(sg(*_views())))
