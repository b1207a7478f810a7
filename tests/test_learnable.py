"""Learnable temperature / scale / bias, the SigLIP loss, negatives without gradient, NegativeQueue.

Oracles: autograd of the plain formulas (float64, written here, independent of the engine), gradcheck."""
import math

import pytest
import torch
import torch.nn.functional as F

import gradsurg
from gradsurg import paradigm

D64 = dict(dtype=torch.float64)


def _data(n=5, k=3, d=4, seed=0, grad_neg=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, **D64).requires_grad_()
    y = torch.randn(n, d, generator=g, **D64).requires_grad_()
    z = torch.randn(k, d, generator=g, **D64).requires_grad_(grad_neg)
    return x, y, z


def _cos(x, y, z):
    u = F.normalize(x, dim=1)
    c = F.normalize(y if z is None else torch.cat([y, z]), dim=1)
    return u, c


def ref_info_nce(x, y, z, tau, symmetric=False, margin=None):
    u, c = _cos(x, y, z)
    n = x.shape[0]

    def one(a, b):
        s = a @ b.T
        if margin is not None:
            idx = torch.arange(n)
            pos = torch.cos(torch.acos(s[idx, idx].clamp(-1 + 1e-7, 1 - 1e-7)) + margin)
            s = s.clone()
            s[idx, idx] = pos
        return F.cross_entropy(s / tau, torch.arange(n))

    loss = one(u, c)
    return (loss + one(c[:n], u)) / 2 if symmetric else loss


def ref_siglip(x, y, z, t, b, symmetric=False):
    u, c = _cos(x, y, z)
    n = x.shape[0]

    def one(a, bb):
        logits = (a @ bb.T) * t + b
        sign = -torch.ones_like(logits)
        sign[torch.arange(n), torch.arange(n)] = 1.0
        return -F.logsigmoid(sign * logits).sum() / n

    loss = one(u, c)
    return (loss + one(c[:n], u)) / 2 if symmetric else loss


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [False, True])
def test_learnable_temperature_info_nce_matches_autograd(symmetric, negatives):
    x, y, z = _data()
    z = z if negatives else None
    tau = torch.tensor(0.3, **D64, requires_grad=True)
    ins = (x, y, tau) + ((z,) if negatives else ())
    ours = lambda x, y, tau, *z: gradsurg.info_nce(x, y, *z, temperature=tau, symmetric=symmetric)  # noqa: E731
    ref = lambda x, y, tau, *z: ref_info_nce(x, y, z[0] if z else None, tau, symmetric)  # noqa: E731
    torch.testing.assert_close(ours(*ins), ref(*ins), rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours(*ins), [t for t in ins if t.requires_grad])
    g2 = torch.autograd.grad(ref(*ins), [t for t in ins if t.requires_grad])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(ours, ins)


def test_learnable_scale_logit_scale_and_arccon():
    x, y, z = _data(seed=1)
    logit_scale = torch.tensor(math.log(1 / 0.07), **D64, requires_grad=True)
    loss = gradsurg.info_nce(x, y, z, scale=logit_scale.exp())
    ref = ref_info_nce(x, y, z, 1 / logit_scale.exp())
    torch.testing.assert_close(loss, ref)
    (g1,) = torch.autograd.grad(loss, logit_scale)
    (g2,) = torch.autograd.grad(ref, logit_scale)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    # ArcCon: the positive's logit is cos(theta + u), so dL/dtau is not -sum G s / tau
    m = math.radians(10)
    f = lambda x, y, z, tau: gradsurg.arccon(x, y, z, temperature=tau, margin=m, symmetric=True)  # noqa: E731
    tau = torch.tensor(0.2, **D64, requires_grad=True)
    torch.testing.assert_close(f(x, y, z, tau), ref_info_nce(x, y, z, tau, True, margin=m))
    g1 = torch.autograd.grad(f(x, y, z, tau), (x, y, z, tau))
    g2 = torch.autograd.grad(ref_info_nce(x, y, z, tau, True, margin=m), (x, y, z, tau))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert torch.autograd.gradcheck(f, (x, y, z, tau))


def test_learnable_temperature_reduction_none_and_sum_and_chunks():
    x, y, z = _data(n=7, seed=2)
    tau = torch.tensor(0.1, **D64, requires_grad=True)
    w = torch.rand(7, **D64)
    rows = gradsurg.info_nce(x, y, z, temperature=tau, reduction="none", chunk_bytes=64)
    g1 = torch.autograd.grad((rows * w).sum(), (x, y, z, tau))
    u, c = _cos(x, y, z)
    ref = F.cross_entropy(u @ c.T / tau, torch.arange(7), reduction="none")
    g2 = torch.autograd.grad((ref * w).sum(), (x, y, z, tau), retain_graph=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    s = gradsurg.info_nce(x, y, z, temperature=tau, reduction="sum", backend="torch", chunk_bytes=64)
    torch.testing.assert_close(torch.autograd.grad(s, tau)[0], torch.autograd.grad(ref.sum(), tau)[0])


def test_learnable_float32_close_to_float64():
    x, y, z = _data(n=16, k=8, d=8, seed=3)
    tau = torch.tensor(0.05, requires_grad=True)
    loss = gradsurg.info_nce(x.float(), y.float(), z.float(), temperature=tau)
    (g,) = torch.autograd.grad(loss, tau)
    tau64 = tau.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(ref_info_nce(x, y, z, tau64), tau64)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g.double(), g64, rtol=1e-4, atol=1e-4)


def test_bad_learnable_inputs_raise_clear_errors():
    x, y, _ = _data()
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
        gradsurg.info_nce(x, y, temperature=torch.tensor(-0.1, **D64))
    with pytest.raises(TypeError, match="0-dim floating tensor"):
        gradsurg.info_nce(x, y, temperature=torch.ones(3, **D64))
    with pytest.raises(ValueError, match="cannot be learned"):
        gradsurg.mpt(x, y, learn={"margin": torch.tensor(0.1)})
    with pytest.raises(ValueError, match="not both"):
        gradsurg.info_nce(x, y, temperature=0.1, scale=10.0)


# -- SigLIP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True])
def test_siglip_matches_autograd_with_learnable_scale_and_bias(symmetric):
    x, y, z = _data(seed=4)
    t = torch.tensor(7.0, **D64, requires_grad=True)
    b = torch.tensor(-3.0, **D64, requires_grad=True)
    f = lambda x, y, z, t, b: gradsurg.siglip(x, y, z, scale=t, bias=b, symmetric=symmetric)  # noqa: E731
    torch.testing.assert_close(f(x, y, z, t, b), ref_siglip(x, y, z, t, b, symmetric), rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(f(x, y, z, t, b), (x, y, z, t, b))
    g2 = torch.autograd.grad(ref_siglip(x, y, z, t, b, symmetric), (x, y, z, t, b))
    for a, bb in zip(g1, g2):
        torch.testing.assert_close(a, bb, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(f, (x, y, z, t, b))


def test_siglip_float_defaults_chunked_and_extreme_scale():
    x, y, z = _data(n=9, seed=5)
    loss = gradsurg.siglip(x, y, z, chunk_bytes=64)
    ref = ref_siglip(x, y, z, 10.0, -10.0)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, (x, y, z)), torch.autograd.grad(ref, (x, y, z))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # a large learned scale: every negative's sigmoid underflows in float32, the pull must stay exact
    xf, yf = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
    loss = gradsurg.siglip(xf, yf, scale=300.0, bias=-300.0)
    ref = ref_siglip(x, y, None, 300.0, -300.0)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-4)
    gx = torch.autograd.grad(loss, xf)[0]
    torch.testing.assert_close(gx.double(), torch.autograd.grad(ref, x)[0], rtol=1e-3, atol=1e-3)


def test_siglip_decomposition_matches_its_components():
    x, y, z = _data(n=6, seed=6)
    t, b = 10.0, -10.0
    dec = gradsurg.decompose(lambda s: ref_siglip_from_s(s, t, b), x, y, z)
    p = paradigm.siglip(t, b)
    u, c = _cos(x.detach(), y.detach(), z.detach())
    s = u @ c.T
    n = 6
    sig = torch.sigmoid(t * s + b)
    sig[torch.arange(n), torch.arange(n)] = 0
    total = sig.sum(1)
    torch.testing.assert_close(dec.dissipation, t * total)
    torch.testing.assert_close(dec.weight, sig / total[:, None])
    torch.testing.assert_close(dec.ratio, torch.sigmoid(-(t * s.diagonal() + b)) / total)
    # and the paradigm's own components read back the same
    dp = gradsurg.decompose(p, x, y, z)
    torch.testing.assert_close(dp.dissipation, dec.dissipation)
    torch.testing.assert_close(dp.weight, dec.weight)
    torch.testing.assert_close(dp.ratio, dec.ratio)
    assert p.loss_name == "siglip"


def ref_siglip_from_s(s, t, b):
    n = s.shape[0]
    sign = -torch.ones_like(s)
    sign[torch.arange(n), torch.arange(n)] = 1.0
    return -F.logsigmoid(sign * (t * s + b)).sum() / n


def test_siglip_module_registry_and_learnable_module():
    from gradsurg.registry import build_loss
    x, y, z = _data(seed=7)
    m = build_loss("siglip", learnable=True)
    assert {n for n, _ in m.named_parameters()} == {"logit_scale", "logit_bias"}
    loss = m(x.float(), y.float())
    loss.backward()
    assert m.logit_scale.grad is not None and m.logit_bias.grad is not None
    ref = ref_siglip(x, y, None, torch.tensor(10.0, **D64), torch.tensor(-10.0, **D64))
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    m2 = build_loss("info_nce", temperature=0.07, learnable=True)
    m2(x.float(), y.float()).backward()
    assert m2.logit_scale.grad is not None


# -- negatives without gradient ----------------------------------------------------------------

def test_detached_negatives_same_gradients_and_fewer_products(monkeypatch):
    x, y, z = _data(n=6, k=40, seed=8, grad_neg=False)
    tau = torch.tensor(0.1, **D64, requires_grad=True)
    g1 = torch.autograd.grad(gradsurg.info_nce(x, y, z, temperature=tau, symmetric=True), (x, y, tau))
    g2 = torch.autograd.grad(ref_info_nce(x, y, z, tau, True), (x, y, tau))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the candidates' gradient product covers the positives only (6 rows, not 46)
    from gradsurg.engine import torch_backend
    seen = []
    real = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda self, a, b, **kw: (seen.append(tuple(self.shape)),
                                                                          real(self, a, b, **kw))[1])
    gradsurg.info_nce(x, y, z).backward()
    assert seen == [(6, 4)]
    seen.clear()
    gradsurg.info_nce(x, y, z.detach().requires_grad_()).backward()
    assert seen == [(46, 4)]
    assert torch_backend.INTERNAL_OPTIONS


def test_negative_queue_fifo_and_training():
    q = gradsurg.NegativeQueue(5)
    assert q.negatives() is None and len(q) == 0
    q.enqueue(torch.arange(3.0)[:, None].repeat(1, 2).requires_grad_())
    assert not q.negatives().requires_grad and q.negatives()[:, 0].tolist() == [0, 1, 2]
    q.enqueue(torch.arange(3.0, 7.0)[:, None].repeat(1, 2))
    assert q.negatives()[:, 0].tolist() == [2, 3, 4, 5, 6] and len(q) == 5
    q.enqueue(torch.arange(10.0, 17.0)[:, None].repeat(1, 2))
    assert q.negatives()[:, 0].tolist() == [12, 13, 14, 15, 16]
    with pytest.raises(ValueError, match="queue holds"):
        q.enqueue(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="size"):
        gradsurg.NegativeQueue(0)
    x, y, _ = _data(n=4, d=2)
    q = gradsurg.NegativeQueue(8)
    for _ in range(3):
        loss = gradsurg.info_nce(x, y, q.negatives())
        loss.backward()
        q.enqueue(y)
    assert len(q) == 8


# -- torch.compile(fullgraph=True) with learnable hyper-parameters -------------------------------

@pytest.mark.parametrize("name", ["info_nce", "siglip"])
def test_learnable_compiles_fullgraph(name):
    torch._dynamo.reset()
    torch.manual_seed(0)
    enc = torch.nn.Linear(8, 6)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    bias = torch.nn.Parameter(torch.tensor(-5.0))
    x, y, z = torch.randn(6, 8), torch.randn(6, 8), torch.randn(4, 8)

    def step(x, y, z):
        if name == "info_nce":
            return gradsurg.info_nce(enc(x), enc(y), enc(z), scale=logit_scale.exp(), symmetric=True)
        return gradsurg.siglip(enc(x), enc(y), enc(z), scale=logit_scale.exp(), bias=bias)

    params = [*enc.parameters(), logit_scale, bias]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(x, y, z)
    g_c = torch.autograd.grad(loss_c, params, allow_unused=True)
    loss_e = step(x, y, z)
    g_e = torch.autograd.grad(loss_e, params, allow_unused=True)
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(g_c, g_e):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b)


# -- cached steps: the loss module's own parameters get their gradients ---------------------------

@pytest.mark.parametrize("name", ["info_nce", "siglip"])
def test_learnable_cached_step_matches_plain(name):
    from gradsurg.cached import cached_step
    from gradsurg.registry import build_loss

    torch.manual_seed(0)
    enc = torch.nn.Linear(8, 6).double()
    loss_fn = build_loss(name, learnable=True, symmetric=True).double()
    g = torch.Generator().manual_seed(1)
    cols = [torch.randn(10, 8, generator=g, **D64) for _ in range(3)]
    params = [*enc.parameters(), *loss_fn.parameters()]
    cached_step(enc, cols, loss_fn, mini_batch_size=3)
    cached = [t.grad.clone() for t in params]
    for t in params:
        t.grad = None
    loss_fn(*[enc(c) for c in cols]).backward()
    for a, b in zip(cached, [t.grad for t in params]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_two_tower_example_trains():
    """docs/examples/two_tower.py: learned logit_scale (InfoNCE, with and without a queue) and SigLIP's
    learned scale and bias; the loss falls and the hyper-parameters move."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "two_tower.py")
    spec = importlib.util.spec_from_file_location("two_tower", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, extra in (("info_nce", {}), ("info_nce", {"queue_size": 64}), ("siglip", {})):
        losses, model = mod.train(name, steps=12, batch=16, **extra)
        assert all(math.isfinite(v) for v in losses)
        assert sum(losses[-3:]) < sum(losses[:3]), (name, losses)
        assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
        if name == "siglip":
            assert model.logit_bias.grad is not None


def test_modules_take_tensor_hyper_parameters_and_sentence_transformers_adapter():
    x, y, z = _data(seed=9)
    xs, ys = x.detach().float().requires_grad_(), y.detach().float().requires_grad_()
    scale = torch.nn.Parameter(torch.tensor(20.0))
    m = gradsurg.InfoNCELoss(scale=scale)
    assert [n for n, _ in m.named_parameters()] == ["scale_value"]
    m(xs, ys).backward()
    assert scale.grad is not None
    torch.testing.assert_close(gradsurg.InfoNCELoss(scale=20.0)(xs, ys), gradsurg.InfoNCELoss(0.05)(xs, ys))
    t, b = torch.nn.Parameter(torch.tensor(5.0)), torch.nn.Parameter(torch.tensor(-2.0))
    gradsurg.SigLIPLoss(scale=t, bias=b)(xs, ys).backward()
    assert t.grad is not None and b.grad is not None
    with pytest.raises(ValueError, match="learnable=True"):
        gradsurg.SigLIPLoss(scale=t, learnable=True)
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, f):
            return {"sentence_embedding": self.lin(f["x"])}

    st = GradsurgLoss(Tiny(), "siglip", learnable=True)
    loss = st([{"x": xs.detach()}, {"x": ys.detach()}])
    loss.backward()
    names = {n for n, _ in st.named_parameters()}
    assert {"loss_fn.logit_scale", "loss_fn.logit_bias"} <= names  # the trainer's optimiser sees them
    assert st.loss_fn.logit_bias.grad is not None


def test_trainer_config_builds_siglip():
    from gradsurg.train.losses import loss_from_fields

    m = loss_from_fields("siglip", {"learnable": True, "scale": 10.0, "bias": -10.0})
    assert isinstance(m, gradsurg.SigLIPLoss) and {n for n, _ in m.named_parameters()} == {"logit_scale", "logit_bias"}


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["info_nce", "siglip"])
def test_cuda_code_paths_on_cpu(monkeypatch, low, name):
    """The torch backend's CUDA paths (half-precision GEMM operands, sync-free statistics),
    exercised on CPU: learnable hyper-parameters and detached negatives (dV over the positives
    only) stay within 2e-2 of float64 autograd."""
    from gradsurg.components import _rows
    from gradsurg.engine import torch_backend

    monkeypatch.setattr(torch_backend, "gemm_dtype", lambda t: low)
    monkeypatch.setattr(_rows, "_MM_OUT_DTYPE", False)
    monkeypatch.setattr(_rows, "sync_free", lambda t: True)
    x, y, z = _data(n=24, k=40, d=16, seed=11, grad_neg=False)
    xl, yl, zl = (t.detach().to(low) for t in (x, y, z))
    xl.requires_grad_(), yl.requires_grad_()
    h = [torch.tensor(0.1, requires_grad=True)] if name == "info_nce" else \
        [torch.tensor(8.0, requires_grad=True), torch.tensor(-4.0, requires_grad=True)]
    h64 = [t.detach().double().requires_grad_() for t in h]
    if name == "info_nce":
        got = gradsurg.info_nce(xl, yl, zl, temperature=h[0], symmetric=True, chunk_bytes=2048)
        want = ref_info_nce(x, y, z, h64[0], True)
    else:
        got = gradsurg.siglip(xl, yl, zl, scale=h[0], bias=h[1], chunk_bytes=2048)
        want = ref_siglip(x, y, z, h64[0], h64[1])
    g1 = torch.autograd.grad(got, [xl, yl, *h])
    g2 = torch.autograd.grad(want, [x, y, *h64])
    assert abs(got.double() - want).item() <= 2e-2 * abs(want).item()
    for a, b in zip(g1, g2):
        err = (a.double() - b).norm() / b.norm().clamp(min=1e-12)
        assert err <= 2e-2, (name, low, err)


def test_detached_negatives_reduction_none_and_compile():
    x, y, z = _data(n=6, k=9, seed=12, grad_neg=False)
    w = torch.rand(6, **D64)
    rows = gradsurg.info_nce(x, y, z, reduction="none", symmetric=True)
    g1 = torch.autograd.grad((rows * w).sum(), (x, y))
    u, c = _cos(x, y, z)
    ref = 0.5 * (F.cross_entropy(u @ c.T / 0.05, torch.arange(6), reduction="none")
                 + F.cross_entropy(c[:6] @ u.T / 0.05, torch.arange(6), reduction="none"))
    g2 = torch.autograd.grad((ref * w).sum(), (x, y))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()
    enc = torch.nn.Linear(4, 4).double()
    step = lambda x, y, z: gradsurg.info_nce(enc(x), enc(y), z)  # noqa: E731
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    gc = torch.autograd.grad(compiled(x.detach(), y.detach(), z), list(enc.parameters()))
    ge = torch.autograd.grad(step(x.detach(), y.detach(), z), list(enc.parameters()))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)
