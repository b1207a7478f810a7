"""The fused Triton kernels (gradsurg.kernels) against the chunked torch backend.

On CPU the kernels run under Triton's interpreter: this module sets
``TRITON_INTERPRET=1`` before anything of it imports Triton. (If another module
imported Triton in compiled mode earlier in the same process, the tests are
rerun once in a subprocess instead.) With ``GRADSURG_TEST_DEVICE=cuda`` the
same tests run the compiled kernels on the GPU (benchmarks/gpu_check.sh).

Shapes are small and ragged (N=37, M=53, d=40 against 16 x 16 x 32 tiles on
the interpreter): every tile loop has a partial last tile.

Tolerances, relative to the largest entry of the reference (conftest.rel_err):
float32 1e-5 (the kernels use IEEE dot products unless allow_tf32), float16
1e-3, bfloat16 1e-2 (the anchors' kernel tolerances); the reference is the
torch backend on the same (rounded) inputs, computed in float32.
"""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import pytest
import torch

DEVICE = os.environ.get("GRADSURG_TEST_DEVICE", "cpu")
if DEVICE == "cpu" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

import gradsurg  # noqa: E402
from gradsurg import Paradigm, paradigms  # noqa: E402
from gradsurg import dissipation as D  # noqa: E402
from gradsurg import ratio as R  # noqa: E402
from gradsurg import weight as W  # noqa: E402
from gradsurg.engine import dispatch, torch_backend, triton_backend  # noqa: E402
from gradsurg.kernels import launch  # noqa: E402

from conftest import rel_err  # noqa: E402

_RERUN = DEVICE == "cpu" and not launch._language_interpreted()
kernel_test = pytest.mark.skipif(_RERUN, reason="Triton was imported in compiled mode: rerun in a subprocess")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("GRADSURG_TEST_DEVICE=cuda but no GPU", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
N, M, DIM = 37, 53, 40

DISSIPATIONS = [D.InfoNCE(0.05), D.ArcCon(0.05), D.Margin(0.3), D.EuclideanMargin(0.45),
                D.AngularMargin(0.15 * math.pi), D.Constant(1.0)]
WEIGHTS = [W.Softmax(0.05), W.Hardest(), W.Power(3.0), W.Uniform()]
RATIOS = [R.Constant(1.5), R.Arc(math.radians(10)), R.Euclidean(), R.Angular()]
COMBOS = list(itertools.product(DISSIPATIONS, WEIGHTS, RATIOS))


def batch(n=N, m=M, d=DIM, dtype=torch.float32, seed=0, noise=0.8):
    """Anchors and candidates whose positives are correlated with the anchors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    c = torch.randn(m, d, generator=g)
    c[:n] = x + noise * c[:n]
    x = x * (0.5 + torch.rand(n, 1, generator=g) * 3)  # varied norms: the normalisation matters
    return x.to(DEVICE, dtype), c.to(DEVICE, dtype)


def both(x, c, paradigm, symmetric=False, row_scale=1.0 / N, **options):
    ref = torch_backend.forward(x, c, paradigm, symmetric=symmetric, row_scale=row_scale)
    out = launch.forward(x, c, paradigm, symmetric=symmetric, row_scale=row_scale, **options)
    return out, ref


def check(out, ref, tol, what=""):
    names = ("loss", "dx", "dc")
    for name, a, b in zip(names, out, ref):
        if b is None:
            assert a is None, f"{what}: {name} should be None"
            continue
        assert a.dtype == torch.float32 and a.shape == b.shape, f"{what}: {name} {a.dtype} {tuple(a.shape)}"
        assert torch.isfinite(a).all(), f"{what}: {name} not finite"
        err = rel_err(a, b)
        assert err <= tol, f"{what}: {name} relative error {err:.2e} > {tol:.0e}"


# -- every component combination --------------------------------------------------------------------

@kernel_test
@pytest.mark.parametrize("index", range(len(COMBOS)), ids=lambda i: "-".join(
    type(part).__name__ for part in COMBOS[i]))
def test_every_combination(index):
    """All 6 x 4 x 4 paradigms, hard negatives (M > N); the two accumulator layouts alternate."""
    paradigm = Paradigm(*COMBOS[index])
    x, c = batch()
    out, ref = both(x, c, paradigm, acc_in_regs=bool(index % 2))
    check(out, ref, TOL[torch.float32], repr(paradigm))


@kernel_test
@pytest.mark.parametrize("name", ["info_nce", "arccon", "mpt", "met", "mat"])
def test_presets_loss_only(name):
    """Value only (row_scale None): the true loss of each preset, no gradient buffers."""
    x, c = batch(seed=1)
    out, ref = both(x, c, getattr(paradigms, name)(), row_scale=None)
    check(out, ref, TOL[torch.float32], name)


@kernel_test
def test_surrogate_value_without_gradient():
    p = Paradigm(D.Margin(0.3), W.Power(5.0), R.Constant(1.75))
    x, c = batch(seed=2)
    out, ref = both(x, c, p, row_scale=None)
    check(out, ref, TOL[torch.float32], repr(p))


@kernel_test
def test_dissipation_and_weight_at_different_temperatures():
    """InfoNCE's GD at 0.05 with a softmax weight at 0.1: two online log-sum-exps."""
    p = Paradigm(D.InfoNCE(0.05), W.Softmax(0.1), R.Constant(1.0))
    x, c = batch(seed=3)
    out, ref = both(x, c, p, symmetric=True)
    check(out, ref, TOL[torch.float32], repr(p))


# -- dtypes, modes, reductions ---------------------------------------------------------------------

@kernel_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("paradigm", [paradigms.info_nce(), paradigms.mat(),
                                      Paradigm(D.Constant(1.0), W.Power(5.0), R.Constant(1.5))], ids=repr)
def test_half_precision(dtype, paradigm):
    x, c = batch(dtype=dtype, seed=4)
    out, ref = both(x, c, paradigm, symmetric=True)
    check(out, ref, TOL[dtype], f"{paradigm!r} {dtype}")


@kernel_test
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_paradigm_loss_backend_triton(symmetric, reduction):
    """End to end through gradsurg.paradigm_loss: values and gradients of both backends agree."""
    x, c = batch(seed=5)
    grads = {}
    for backend in ("torch", "triton"):
        a = x.clone().requires_grad_()
        p = c[:N].clone().requires_grad_()
        z = c[N:].clone().requires_grad_()
        loss = gradsurg.paradigm_loss(a, p, z, paradigm=paradigms.arccon(), symmetric=symmetric,
                                      reduction=reduction, backend=backend)
        weights = torch.linspace(0.5, 2.0, N, device=DEVICE) if reduction == "none" else 1.0
        (loss * weights).sum().backward()
        grads[backend] = (loss.detach(), a.grad, p.grad, z.grad)
    for name, got, want in zip(("loss", "anchors", "positives", "negatives"), grads["triton"], grads["torch"]):
        assert rel_err(got, want) <= TOL[torch.float32], name


@kernel_test
def test_no_hard_negatives_and_single_anchor():
    p = paradigms.info_nce()
    x, c = batch(n=29, m=29, seed=6)
    check(*both(x, c, p, symmetric=True), TOL[torch.float32], "M = N")
    x, c = batch(n=1, m=5, seed=7)
    check(*both(x, c, paradigms.mpt(), row_scale=1.0), TOL[torch.float32], "N = 1")


@kernel_test
def test_other_tile_sizes():
    """Non-default tiles, none of which divides N, M or d; the per-row scale is a tensor."""
    x, c = batch(n=45, m=70, d=50, seed=8)
    scale = torch.rand(45, device=DEVICE) + 0.5
    for p in (paradigms.info_nce(), Paradigm(D.AngularMargin(0.4), W.Hardest(), R.Arc(0.2))):
        out, ref = both(x, c, p, row_scale=scale, block_n=32, block_m=16, block_k=16, block_d=16)
        check(out, ref, TOL[torch.float32], repr(p))


# -- numerics the anchors warn about ------------------------------------------------------------------

@kernel_test
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_confident_positive_keeps_its_gradient(dtype):
    """Rows with p_ii around 0.999: GD = (1 - p_ii)/tau must survive (formed in fp32, never 1 - p)."""
    tau = 0.08
    g = torch.Generator().manual_seed(9)
    x = torch.randn(N, DIM, generator=g)
    c = torch.cat([x, torch.randn(M - N, DIM, generator=g)])  # s_ii = 1
    x, c = x.to(DEVICE, dtype), c.to(DEVICE, dtype)
    p = paradigms.info_nce(tau)
    s = torch.nn.functional.normalize(x.float(), dim=1) @ torch.nn.functional.normalize(c.float(), dim=1).T
    p_ii = torch.softmax(s / tau, dim=1).diagonal()
    confident = (p_ii > 0.998) & (p_ii < 0.9999)
    assert confident.any(), "the batch should have rows with p_ii ~ 0.999"
    out, ref = both(x, c, p)
    check(out, ref, TOL[dtype], f"p_ii ~ 0.999 {dtype}")
    dx, dx_ref = out[1][confident], ref[1][confident]
    assert (dx.norm(dim=1) > 0).all()
    row_err = (dx - dx_ref).norm(dim=1) / dx_ref.norm(dim=1)
    assert row_err.max() <= 10 * TOL[dtype], f"confident rows lose their gradient: {row_err.max():.2e}"


@kernel_test
def test_large_logit_offsets():
    """All similarities near -0.9 at tau = 0.01: logits around -90 need a true online maximum."""
    g = torch.Generator().manual_seed(10)
    e = torch.randn(DIM, generator=g)
    x = e + 0.25 * torch.randn(N, DIM, generator=g) * e.norm() / math.sqrt(DIM)
    c = -e + 0.25 * torch.randn(M, DIM, generator=g) * e.norm() / math.sqrt(DIM)
    x, c = x.to(DEVICE), c.to(DEVICE)
    p = paradigms.info_nce(0.01)
    out, ref = both(x, c, p, symmetric=True)
    assert (ref[0] > 0).all()
    check(out, ref, 1e-4, "tau = 0.01, s ~ -0.9")  # logits amplify s's rounding 100x


@kernel_test
def test_hardest_ties_go_to_the_lowest_index():
    x, c = batch(seed=11)
    hard = torch.nn.functional.normalize(x.float(), dim=1).mean(0)
    c[N + 2] = hard.to(c.dtype) * 3
    c[N + 7] = hard.to(c.dtype) * 3  # an exact duplicate: tied for every anchor
    out, ref = both(x, c, paradigms.mpt(0.9))
    check(out, ref, TOL[torch.float32], "ties")
    dc = out[2]
    assert dc[N + 2].abs().sum() > 0
    assert dc[N + 7].abs().sum() == 0


@kernel_test
def test_zero_rows_get_zero_gradient():
    x, c = batch(seed=12)
    x[3] = 0
    c[N + 1] = 0
    out, ref = both(x, c, paradigms.info_nce(), symmetric=True)
    check(out, ref, TOL[torch.float32], "zero rows")
    assert out[1][3].abs().sum() == 0 and out[2][N + 1].abs().sum() == 0


@kernel_test
def test_deterministic():
    x, c = batch(seed=13)
    first = launch.forward(x, c, paradigms.info_nce(), symmetric=True, row_scale=0.1)
    second = launch.forward(x, c, paradigms.info_nce(), symmetric=True, row_scale=0.1)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# -- dispatch ------------------------------------------------------------------------------------------

def test_dispatch():
    x = torch.randn(4, 8)
    p = paradigms.info_nce()
    assert dispatch.choose("auto", x, p)[0] is torch_backend  # CPU tensors: the torch backend
    assert dispatch.choose("triton", x, p)[0] is triton_backend
    assert dispatch.choose("torch", x, p)[0] is torch_backend
    if torch.cuda.is_available():
        assert dispatch.choose("auto", x.cuda(), p)[0] is triton_backend


@kernel_test
def test_unsupported_inputs_fall_back_to_torch():
    x, c = batch(seed=14)
    x64, c64 = x.double(), c.double()
    out = launch.forward(x64, c64, paradigms.info_nce(), symmetric=False, row_scale=1.0)
    ref = torch_backend.forward(x64, c64, paradigms.info_nce(), symmetric=False, row_scale=1.0)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


@kernel_test
def test_non_contiguous_inputs():
    x, c = batch(seed=15)
    xt = x.t().contiguous().t()  # same values, column-major
    check(*both(xt, c, paradigms.met()), TOL[torch.float32], "column-major anchors")


@pytest.mark.skipif(not _RERUN, reason="only when Triton was imported in compiled mode before this module")
def test_kernels_in_a_fresh_interpreter_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
