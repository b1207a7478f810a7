"""The paradigm core against plain autograd of the textbook formulas."""
from __future__ import annotations

import math

import pytest
import torch

import gradsurg
from gradsurg import dissipation as D
from gradsurg import ratio as R
from gradsurg import reference as ref
from gradsurg import weight as W

from conftest import batch, rel_err

PRESETS = ["info_nce", "arccon", "mpt", "met", "mat"]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def grads(loss_fn, leaves, weight=None):
    loss = loss_fn(*leaves)
    out = weight if weight is not None else torch.ones_like(loss)
    return loss, torch.autograd.grad(loss, leaves, out)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,k,d", [(9, 0, 7), (13, 6, 10), (5, 11, 3)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_presets_equal_autograd(name, dtype, n, k, d, symmetric, reduction):
    leaves = batch(n, k, d, dtype, seed=n * 31 + k)
    kw = dict(symmetric=symmetric, reduction=reduction)
    ours, g_ours = grads(lambda *t: getattr(gradsurg, name)(*t, **kw), leaves)
    theirs, g_ref = grads(lambda *t: ref.LOSSES[name](*t, **kw), leaves)
    assert ours.shape == theirs.shape
    assert rel_err(ours, theirs) <= TOL[dtype]
    for a, b in zip(g_ours, g_ref):
        assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("name", PRESETS)
def test_reduction_none_with_random_upstream_gradient(name):
    leaves = batch(11, 4, 6, seed=3)
    kw = dict(reduction="none")
    up = torch.rand(11, dtype=torch.float64)
    _, g_ours = grads(lambda *t: getattr(gradsurg, name)(*t, **kw), leaves, up)
    _, g_ref = grads(lambda *t: ref.LOSSES[name](*t, **kw), leaves, up)
    for a, b in zip(g_ours, g_ref):
        assert rel_err(a, b) <= 1e-9


@pytest.mark.parametrize("name", ["info_nce", "arccon"])
def test_gradcheck_softmax_presets(name):
    leaves = batch(5, 3, 4, seed=7)
    fn = lambda *t: getattr(gradsurg, name)(*t, temperature=0.1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)
    sym = lambda *t: getattr(gradsurg, name)(*t, temperature=0.1, symmetric=True, reduction="sum")  # noqa: E731
    assert torch.autograd.gradcheck(sym, leaves, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mpt", "met", "mat"])
def test_gradcheck_margin_presets_away_from_kinks(name):
    # with large margins every hinge is active and the arg-max is stable: the loss is smooth there
    margin = {"mpt": 1.5, "met": 1.5, "mat": 2.0}[name]
    leaves = batch(6, 2, 5, seed=11)
    fn = lambda *t: getattr(gradsurg, name)(*t, margin=margin)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-7, atol=1e-6)


def test_temperature_001_and_hard_negatives():
    leaves = batch(17, 9, 12, seed=5)
    for name in ["info_nce", "arccon"]:
        ours, g1 = grads(lambda *t: getattr(gradsurg, name)(*t, temperature=0.01), leaves)
        theirs, g2 = grads(lambda *t: ref.LOSSES[name](*t, temperature=0.01), leaves)
        assert rel_err(ours, theirs) <= 1e-9
        for a, b in zip(g1, g2):
            assert rel_err(a, b) <= 1e-9


def closed_form_info_nce_grad(x, c, tau):
    """float64 closed form of d mean_i L_i / dx and / dc, via GD = sigmoid(LSE_neg - s_ii/tau)/tau."""
    x, c = x.double(), c.double()
    nx, nc = x.norm(dim=1, keepdim=True), c.norm(dim=1, keepdim=True)
    u, v = x / nx, c / nc
    s = u @ v.T
    n = s.shape[0]
    idx = torch.arange(n)
    z = s / tau
    z[idx, idx] = -math.inf
    lse = torch.logsumexp(z, dim=1)
    gd = torch.sigmoid(lse - s[idx, idx] / tau) / tau
    g = torch.exp(z - lse[:, None]) * gd[:, None]
    g[idx, idx] = -gd
    g /= n
    du, dv = g @ v, g.T @ u
    dx = (du - (du * u).sum(1, keepdim=True) * u) / nx
    dc = (dv - (dv * v).sum(1, keepdim=True) * v) / nc
    return dx, dc


def test_confident_positive_tau_001_float32_matches_float64_closed_form():
    # positives nearly identical to anchors: p_ii ~ 1, where 1 - p_ii cancels in float32 autograd
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 32, generator=g)
    y = x + 0.02 * torch.randn(64, 32, generator=g)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = gradsurg.info_nce(xa, ya, temperature=0.01)
    loss.backward()
    dx64, dy64 = closed_form_info_nce_grad(x, y, 0.01)
    assert dx64.abs().max() > 0  # the gradient is small but must survive
    ours = max(rel_err(xa.grad, dx64), rel_err(ya.grad, dy64))
    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    ref.info_nce(xb, yb, temperature=0.01).backward()
    autograd32 = max(rel_err(xb.grad, dx64), rel_err(yb.grad, dy64))
    assert ours <= 1e-4
    assert ours <= autograd32 * 1.01 + 1e-7  # never worse than autograd's own float32 gradient


def test_custom_paradigm_against_hand_computed_gradient():
    p = gradsurg.Paradigm(D.Margin(0.3), W.Softmax(0.05), R.Constant(1.5))
    assert p.loss_name is None
    x, y, z = batch(10, 5, 8, seed=2)
    loss = gradsurg.paradigm_loss(x, y, z, paradigm=p)
    loss.backward()
    # by hand, in float64, from the definitions of docs/paradigm.md ("The paradigm")
    with torch.no_grad():
        c = torch.cat([y, z])
        u = x / x.norm(dim=1, keepdim=True)
        v = c / c.norm(dim=1, keepdim=True)
        s = u @ v.T
        n, m = s.shape
        G = torch.zeros(n, m, dtype=torch.float64)
        L = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            negs = [j for j in range(m) if j != i]
            hardest = max(s[i, j] for j in negs)
            gd = 1.0 if (s[i, i] - hardest) < 0.3 else 0.0
            e = torch.tensor([math.exp(s[i, j] / 0.05) for j in negs], dtype=torch.float64)
            w = e / e.sum()
            for wj, j in zip(w, negs):
                G[i, j] = gd * wj
            G[i, i] = -gd * 1.5
            L[i] = gd * (sum(wj * s[i, j] for wj, j in zip(w, negs)) - 1.5 * s[i, i])
        G /= n
        du, dv = G @ v, G.T @ u
        dx = (du - (du * u).sum(1, keepdim=True) * u) / x.norm(dim=1, keepdim=True)
        dc = (dv - (dv * v).sum(1, keepdim=True) * v) / c.norm(dim=1, keepdim=True)
    assert rel_err(loss, L.mean()) <= 1e-12
    assert rel_err(x.grad, dx) <= 1e-10
    assert rel_err(torch.cat([y.grad, z.grad]), dc) <= 1e-10


DISSIPATIONS = [D.InfoNCE(0.1), D.ArcCon(0.07, 0.2), D.Margin(0.4), D.EuclideanMargin(0.5),
                D.AngularMargin(0.6), D.Constant(0.7)]
WEIGHTS = [W.Softmax(0.05), W.Hardest(), W.Power(3.0), W.Uniform()]
RATIOS = [R.Constant(1.75), R.Arc(0.3), R.Euclidean(), R.Angular()]


@pytest.mark.parametrize("dis", DISSIPATIONS, ids=repr)
@pytest.mark.parametrize("wt", WEIGHTS, ids=repr)
@pytest.mark.parametrize("rt", RATIOS, ids=repr)
def test_every_combination_equals_surrogate_autograd(dis, wt, rt):
    """The oracle (gradsurg.reference.surrogate) computes GD, W and R from their textbook
    formulas on the whole matrix, independently of Paradigm.components and Rows."""
    p = gradsurg.Paradigm(dis, wt, rt)
    leaves = batch(8, 3, 6, seed=1)
    for symmetric in (False, True):
        ours, g1 = grads(lambda *t: gradsurg.paradigm_loss(*t, paradigm=p, symmetric=symmetric), leaves)
        theirs, g2 = grads(lambda *t: ref.surrogate(*t, paradigm=p, symmetric=symmetric), leaves)
        if p.loss_name is None:
            assert rel_err(ours, theirs) <= 1e-9
        for a, b in zip(g1, g2):
            assert rel_err(a, b) <= 1e-9


@pytest.mark.parametrize("name", PRESETS)
def test_presets_components_equal_decomposed_autograd(name):
    """GD_i = sum_{j!=i} dL_i/ds_ij, W = G/GD, R = -G_ii/GD read off autograd of the formula."""
    x, y, z = batch(7, 4, 5, seed=9)
    s = ref.cosine_matrix(x, y, z).detach().requires_grad_()
    rows_fn = getattr(ref, f"{name}_rows")
    G, = torch.autograd.grad(rows_fn(s).sum(), s)
    n = s.shape[0]
    idx = torch.arange(n)
    off = G.clone()
    off[idx, idx] = 0
    gd_auto = off.sum(1)
    p = getattr(gradsurg.paradigm, name)()
    gd, w, r = ref.components(p, s)
    assert rel_err(gd, gd_auto) <= 1e-9
    live = gd_auto > 0
    assert rel_err(w[live], (off / gd_auto[:, None])[live]) <= 1e-9
    assert rel_err(r[live], (-G[idx, idx] / gd_auto)[live]) <= 1e-9


def test_hardest_ties_go_to_lowest_index_like_autograd_max():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    x = torch.tensor([[0.6, 0.8]], dtype=torch.float64).repeat(4, 1)
    for name in ["mpt", "met", "mat"]:
        a, c = x.clone().requires_grad_(), v.clone().requires_grad_()
        getattr(gradsurg, name)(a, c[:4], margin=1.0).backward()
        b, d = x.clone().requires_grad_(), v.clone().requires_grad_()
        ref.LOSSES[name](b, d[:4], margin=1.0).backward()
        assert rel_err(c.grad, d.grad) <= 1e-12
        assert rel_err(a.grad, b.grad) <= 1e-12


@pytest.mark.parametrize("name", PRESETS)
def test_near_parallel_vectors_match_autograd(name):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    y = x + 1e-6 * torch.randn(6, 8, generator=g, dtype=torch.float64)   # clamps active on positives
    z = x[:2] * 3 + 1e-9 * torch.randn(2, 8, generator=g, dtype=torch.float64)  # near-parallel negatives
    leaves = [t.clone().requires_grad_() for t in (x, y, z)]
    ours, g1 = grads(lambda *t: getattr(gradsurg, name)(*t), leaves)
    theirs, g2 = grads(lambda *t: ref.LOSSES[name](*t), leaves)
    assert torch.isfinite(ours) and rel_err(ours, theirs) <= 1e-9
    for a, b in zip(g1, g2):
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 1e-9 * max(1.0, float(b.abs().max()))


def test_chunking_does_not_change_results():
    leaves = batch(33, 7, 9, seed=8)
    p = gradsurg.paradigm.arccon()
    _, g_big = grads(lambda *t: gradsurg.paradigm_loss(*t, paradigm=p), leaves)
    _, g_small = grads(lambda *t: gradsurg.paradigm_loss(*t, paradigm=p, chunk_bytes=1), leaves)
    for a, b in zip(g_big, g_small):
        assert rel_err(a, b) <= 1e-12


def test_loss_name_detection():
    assert gradsurg.paradigm.info_nce(0.1).loss_name == "info_nce"
    assert gradsurg.Paradigm(D.InfoNCE(0.1), W.Softmax(0.2), R.Constant(1.0)).loss_name is None
    assert gradsurg.Paradigm(D.Margin(0.1), W.Hardest(), R.Constant(1.0)).loss_name == "mpt"
    assert gradsurg.paradigm.mat().loss_name == "mat"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_bytes", [1, 2**27])
def test_small_temperature_with_far_candidates_does_not_underflow(dtype, chunk_bytes):
    # every cosine ~ +-0.1, tau = 0.01: the shifted logits (s - 1)/tau ~ -90 underflow in float32,
    # so the engine must fall back to the true row maximum (the anchors' pitfall of a fixed max)
    g = torch.Generator().manual_seed(12)
    x, y, z = (torch.randn(n, 256, generator=g, dtype=torch.float64) for n in (9, 9, 5))
    leaves = [t.to(dtype).requires_grad_() for t in (x, y, z)]
    for name in ["info_nce", "arccon"]:
        kw = dict(temperature=0.01)
        ours, g1 = grads(lambda *t: getattr(gradsurg, name)(*t, chunk_bytes=chunk_bytes, **kw), leaves)
        ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
        theirs, g2 = grads(lambda *t: ref.LOSSES[name](*t, **kw), ref_leaves)
        assert torch.isfinite(ours)
        assert rel_err(ours, theirs) <= TOL[dtype]
        for a, b in zip(g1, g2):
            assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("p", [gradsurg.paradigm.arccon(), gradsurg.paradigm.met(),
                               gradsurg.paradigm.info_nce_hardness(0.05, 5.0),
                               gradsurg.Paradigm(D.Constant(0.7), W.Power(3.0), R.Arc(0.3))], ids=repr)
def test_primitive_encoding_round_trips(p):
    names, values = p.encode()
    assert isinstance(names, str) and all(isinstance(v, float) for v in values)
    assert gradsurg.Paradigm.decode(names, values) == p
    with pytest.raises(ValueError, match="unknown component"):
        gradsurg.Paradigm.decode(names.replace(type(p.weight).__name__, "Nope"), values)


# -- InfoNCE with sentence-transformers' hardness tilt (paradigm.info_nce_hardness) ------------------------

def _tilted_rows(a, p, z, temperature, strength):
    """The plain formula, written here: logits s_ii / tau on the positive and s_ij / tau + strength * sg(s_ij)
    on every other candidate, then the cross-entropy at the positive (float64 autograd)."""
    u = a / a.norm(dim=1, keepdim=True)
    c = torch.cat([p] if z is None else [p, z])
    v = c / c.norm(dim=1, keepdim=True)
    s = u @ v.T
    n = s.shape[0]
    off = torch.ones_like(s, dtype=torch.bool)
    off[torch.arange(n), torch.arange(n)] = False
    logits = s / temperature + torch.where(off, strength * s.detach(), torch.zeros_like(s))
    return torch.logsumexp(logits, dim=1) - logits[torch.arange(n), torch.arange(n)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,k,d", [(9, 0, 7), (13, 6, 10)])
@pytest.mark.parametrize("strength", [0.0, 5.0, 37.0])
@pytest.mark.parametrize("chunk_bytes", [1, 2**27])
def test_hardness_preset_equals_autograd_of_the_tilted_formula(dtype, n, k, d, strength, chunk_bytes):
    """Value and the set gradient against autograd of the tilted cross-entropy (the stop-gradient keeps the
    slope 1/tau on the negatives): float64 1e-10, float32 1e-5, one-row and whole-batch chunks, per-row
    upstream gradients (reduction 'none')."""
    leaves = batch(n, k, d, dtype, seed=n + k)
    paradigm = gradsurg.paradigm.info_nce_hardness(0.05, strength)
    up = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    ours = gradsurg.paradigm_loss(*leaves, paradigm=paradigm, reduction="none", backend="torch",
                                  chunk_bytes=chunk_bytes)
    g_ours = torch.autograd.grad(ours, leaves, up)
    theirs = _tilted_rows(*[t.double() for t in leaves] + ([None] if k == 0 else []), 0.05, strength)
    g_ref = torch.autograd.grad(theirs, leaves, up.double())
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(ours, theirs) <= tol
    for a, b in zip(g_ours, g_ref):
        assert rel_err(a, b) <= tol


def test_hardness_preset_components_and_reference():
    """GD = (1 - p_ii)/tau from the tilted softmax, W = softmax(s/tau') over the negatives, R = 1, by hand
    on a dense matrix; the textbook formula of reference.py gives the same value; strength 0 is InfoNCE."""
    from gradsurg.components._rows import Rows

    tau, alpha = 0.1, 7.0
    a, p, z = batch(6, 4, 5, seed=2)
    s = (torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(torch.cat([p, z]), dim=1).T).detach()
    paradigm = gradsurg.paradigm.info_nce_hardness(tau, alpha)
    assert paradigm.loss_name == "info_nce_hardness" and paradigm.learnable == ()
    assert paradigm.weight.temperature == pytest.approx(1.0 / (1.0 / tau + alpha), rel=1e-15)
    gd, w, r = paradigm.components(Rows(s.clone(), 0))
    eye = torch.eye(6, 10, dtype=torch.bool)
    logits = torch.where(eye, s / tau, s * (1.0 / tau + alpha))
    prob = torch.softmax(logits, dim=1)
    assert rel_err(gd, (1 - prob[eye]) / tau) < 1e-12
    assert rel_err(w, torch.softmax((s * (1.0 / tau + alpha)).masked_fill(eye, -math.inf), dim=1)) < 1e-12
    assert torch.equal(r, torch.ones(6, dtype=r.dtype))
    value = gradsurg.paradigm_loss(a, p, z, paradigm=paradigm)
    assert rel_err(value, ref.info_nce_hardness(a, p, z, temperature=tau, strength=alpha)) < 1e-12
    plain = gradsurg.paradigm_loss(a, p, z, paradigm=gradsurg.paradigm.info_nce_hardness(tau, 0.0))
    assert rel_err(plain, gradsurg.info_nce(a, p, z, temperature=tau)) < 1e-12
    with pytest.raises(ValueError, match="strength must be >= 0"):
        D.InfoNCEHardness(0.05, -1.0)

