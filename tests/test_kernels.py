"""The Triton backend (gradsurg.engine.triton_backend + gradsurg_kernels) against the torch backend.

On CPU the kernels run under Triton's interpreter: this module sets
``TRITON_INTERPRET=1`` before anything of it imports Triton. (If another module
imported Triton in compiled mode earlier in the same process, the tests are
rerun once in a subprocess instead.) With ``GRADSURG_TEST_DEVICE=cuda`` the
same tests run the compiled kernels on the GPU (benchmarks/gpu_check.sh).

Both kernel paths are tested on every case: ``fused`` (small d) and
``chunked`` (cuBLAS GEMMs + the chunk kernel), at ragged sizes that are not
multiples of the tiles (N=37, M=53, d=40 against 16 x 32 tiles; several
chunks where the chunk budget is small).

Tolerances, relative to the largest entry of the reference (conftest.rel_err):
float32 1e-5 (IEEE products), float16 1e-3, bfloat16 1e-2 (the anchors' kernel
tolerances); the reference is the torch backend in float32 on the same
(rounded) inputs, or in float64 where float32 itself overflows.
"""
from __future__ import annotations

import ast
import itertools
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

DEVICE = os.environ.get("GRADSURG_TEST_DEVICE", "cpu")
if DEVICE == "cpu" and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from gradsurg import Paradigm  # noqa: E402
from gradsurg import paradigm as presets  # noqa: E402
from gradsurg import dissipation as D  # noqa: E402
from gradsurg import ratio as R  # noqa: E402
from gradsurg import weight as W  # noqa: E402
from gradsurg.engine import dispatch, torch_backend, triton_backend  # noqa: E402
from gradsurg.engine import triton_backend as tb  # noqa: E402
from gradsurg_kernels import launch  # noqa: E402

from conftest import rel_err  # noqa: E402

_RERUN = DEVICE == "cpu" and not launch.interpreted()
kernel_test = pytest.mark.skipif(_RERUN, reason="Triton was imported in compiled mode: rerun in a subprocess")
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("GRADSURG_TEST_DEVICE=cuda but no GPU", allow_module_level=True)

TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
N, M, DIM = 37, 53, 40
SMALL = dict(block_n=16, block_m=32)  # several ragged tiles per loop at N=37, M=53
PATHS = ("fused", "chunked")

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


def reference(x, c, paradigm, row_weights, dtype=torch.float32):
    """One direction by the torch backend, on the same rounded inputs, in ``dtype``."""
    x, c = x.to(dtype), c.to(dtype)
    rw = row_weights.to(dtype) if isinstance(row_weights, torch.Tensor) else row_weights
    return torch_backend.direction(x, c, paradigm, rw)


#: the input dtype of the last ``both`` call (its tolerance is a floor for ``check``)
_USED = [torch.float32]


def gpu_inputs(x, c, path):
    """On a GPU float32 always takes the chunked path; a forced fused float32 launch would only compile
    slow FMA kernels that never run in practice, so the fused path is tested there in float16."""
    if DEVICE == "cuda" and path == "fused" and x.dtype == torch.float32:
        return x.half(), c.half()
    return x, c


def both(x, c, paradigm, row_weights=1.0 / N, ref_dtype=torch.float32, **options):
    x, c = gpu_inputs(x, c, options.get("path"))
    _USED[0] = x.dtype
    out = tb.direction(x, c, paradigm, row_weights, **options)
    return out, reference(x, c, paradigm, row_weights, ref_dtype)


def check(out, ref, tol, what=""):
    tol = max(tol, TOL[_USED[0]])
    for name, a, b in zip(("loss", "dx", "dc"), out, ref):
        if b is None:
            assert a is None, f"{what}: {name} should be None"
            continue
        assert a.dtype == torch.float32 and a.shape == b.shape, f"{what}: {name} {a.dtype} {tuple(a.shape)}"
        assert torch.isfinite(a).all(), f"{what}: {name} not finite"
        err = rel_err(a, b)
        assert err <= tol, f"{what}: {name} relative error {err:.2e} > {tol:.0e}"


# -- every component combination, both paths ---------------------------------------------------------------

@kernel_test
@pytest.mark.parametrize("index", range(len(COMBOS)), ids=lambda i: "-".join(
    type(part).__name__ for part in COMBOS[i]))
def test_every_combination(index):
    """All 6 x 4 x 4 paradigms, hard negatives (M > N), float32, ragged tiles, both paths
    (the chunked one in three chunks)."""
    paradigm = Paradigm(*COMBOS[index])
    x, c = batch()
    check(*both(x, c, paradigm, path="fused", **SMALL), TOL[torch.float32], f"fused {paradigm!r}")
    check(*both(x, c, paradigm, path="chunked", chunk_bytes=15 * M * 12, block_n=8), TOL[torch.float32],
          f"chunked {paradigm!r}")


@kernel_test
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["info_nce", "arccon", "mpt", "met", "mat"])
def test_presets_loss_only(name, path):
    """Value only (row_weights None): the true loss of each preset, no gradient buffers."""
    x, c = batch(seed=1)
    check(*both(x, c, getattr(presets, name)(), None, path=path), TOL[torch.float32], name)


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_surrogate_value_and_weight_temperature(path):
    """A surrogate value without gradient; InfoNCE's GD at 0.05 with a softmax weight at 0.1
    (two online log-sum-exps) with a per-row weight tensor."""
    x, c = batch(seed=2)
    p = Paradigm(D.Margin(0.3), W.Power(5.0), R.Constant(1.75))
    check(*both(x, c, p, None, path=path), TOL[torch.float32], repr(p))
    p = Paradigm(D.InfoNCE(0.05), W.Softmax(0.1), R.Constant(1.0))
    rw = torch.linspace(0.5, 2.0, N, device=DEVICE)
    check(*both(x, c, p, rw, path=path, **SMALL), TOL[torch.float32], repr(p))


# -- dtypes ---------------------------------------------------------------------------------------------------

HALF_CASES = [presets.info_nce(), presets.mat(), Paradigm(D.Constant(1.0), W.Power(5.0), R.Constant(1.5)),
              Paradigm(D.ArcCon(0.1), W.Uniform(), R.Euclidean())]


@kernel_test
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(dtype, path):
    x, c = batch(n=70, m=150, d=64, dtype=dtype, seed=4)
    for paradigm in HALF_CASES:
        check(*both(x, c, paradigm, 1.0 / 70, path=path, chunk_bytes=40 * 150 * 12), TOL[dtype],
              f"{paradigm!r} {dtype}")


@kernel_test
def test_float16_uniform_weights_keep_their_range():
    """Uniform weights over many candidates: GD/l ~ 1/M would be float16-subnormal as an operand;
    the backend scales the operands to [0, 1] and restores the factor in float32."""
    x, c = batch(n=40, m=3000, d=128, dtype=torch.float16, seed=5)
    p = Paradigm(D.Constant(1.0), W.Uniform(), R.Constant(1.0))
    for path in PATHS:  # GD w / l * u ~ (1/40) / 3000 * 0.09 ~ 1e-6: float16-subnormal unscaled
        out, ref = both(x, c, p, 1.0 / 40, path=path)
        check(out, ref, TOL[torch.float16], path)
        err = rel_err(out[2][40:], ref[2][40:])  # the negatives only: no positive's pull dominates them
        assert err <= TOL[torch.float16], f"{path}: negatives' gradient relative error {err:.2e}"


# -- numerics the anchors warn about ------------------------------------------------------------------------------

@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_power_weights_do_not_overflow(path):
    """max(s, 1e-4)^12 = 1e-48 underflows float32: the kernels sum powers in the log domain.
    x = y = eye(2) (every negative at the floor) and a random batch with p = 12, against float64."""
    p = Paradigm(D.Constant(1.0), W.Power(12.0), R.Constant(1.0))
    x = torch.eye(2, device=DEVICE)
    out, ref = both(x, x.clone(), p, 0.5, ref_dtype=torch.float64, path=path)
    check(out, ref, TOL[torch.float32], "eye(2), p = 12")
    x, c = batch(seed=6)
    out, ref = both(x, c, Paradigm(D.InfoNCE(0.05), W.Power(12.0), R.Angular()), 1.0 / N,
                    ref_dtype=torch.float64, path=path)
    check(out, ref, TOL[torch.float32], "random, p = 12")


@kernel_test
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_confident_positive_keeps_its_gradient(dtype, path):
    """Rows with p_ii around 0.999: GD = (1 - p_ii)/tau must survive (formed in fp32, never 1 - p)."""
    tau = 0.08
    g = torch.Generator().manual_seed(9)
    x = torch.randn(N, DIM, generator=g)
    c = torch.cat([x, torch.randn(M - N, DIM, generator=g)])  # s_ii = 1
    x, c = gpu_inputs(x.to(DEVICE, dtype), c.to(DEVICE, dtype), path)
    p = presets.info_nce(tau)
    s = torch.nn.functional.normalize(x.float(), dim=1) @ torch.nn.functional.normalize(c.float(), dim=1).T
    p_ii = torch.softmax(s / tau, dim=1).diagonal()
    confident = (p_ii > 0.998) & (p_ii < 0.9999)
    assert confident.any(), "the batch should have rows with p_ii ~ 0.999"
    out, ref = both(x, c, p, path=path)
    check(out, ref, TOL[dtype], f"p_ii ~ 0.999 {dtype}")
    dx, dx_ref = out[1][confident], ref[1][confident]
    assert (dx.norm(dim=1) > 0).all()
    row_err = (dx - dx_ref).norm(dim=1) / dx_ref.norm(dim=1)
    tol = max(TOL[dtype], TOL[x.dtype])
    assert row_err.max() <= 10 * tol, f"confident rows lose their gradient: {row_err.max():.2e}"


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_large_logit_offsets(path):
    """All similarities near -0.9 at tau = 0.01: logits around -90 need a true online maximum."""
    g = torch.Generator().manual_seed(10)
    e = torch.randn(DIM, generator=g)
    x = e + 0.25 * torch.randn(N, DIM, generator=g) * e.norm() / math.sqrt(DIM)
    c = -e + 0.25 * torch.randn(M, DIM, generator=g) * e.norm() / math.sqrt(DIM)
    x, c = x.to(DEVICE), c.to(DEVICE)
    out, ref = both(x, c, presets.info_nce(0.01), path=path, **SMALL)
    assert (ref[0] > 0).all()
    check(out, ref, 1e-4, "tau = 0.01, s ~ -0.9")  # logits amplify s's rounding 100x (floor: the dtype's)


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_hardest_ties_go_to_the_lowest_index(path):
    x, c = batch(seed=11)
    hard = torch.nn.functional.normalize(x.float(), dim=1).mean(0)
    c[N + 2] = hard.to(c.dtype) * 3
    c[N + 7] = hard.to(c.dtype) * 3  # an exact duplicate: tied for every anchor
    out, ref = both(x, c, presets.mpt(0.9), path=path, **SMALL)
    check(out, ref, TOL[torch.float32], "ties")
    assert out[2][N + 2].abs().sum() > 0
    assert out[2][N + 7].abs().sum() == 0


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_zero_rows_get_zero_gradient(path):
    x, c = batch(seed=12)
    x[3] = 0
    c[N + 1] = 0
    out, ref = both(x, c, presets.info_nce(), path=path)
    check(out, ref, TOL[torch.float32], "zero rows")
    assert out[1][3].abs().sum() == 0 and out[2][N + 1].abs().sum() == 0


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_deterministic_and_chunk_independent(path):
    x, c = gpu_inputs(*batch(seed=13), path)
    _USED[0] = x.dtype
    first = tb.direction(x, c, presets.info_nce(), 0.1, path=path)
    second = tb.direction(x, c, presets.info_nce(), 0.1, path=path)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    if path == "chunked":  # 1 chunk vs 5 chunks: the same numbers up to summation order
        many = tb.direction(x, c, presets.info_nce(), 0.1, path=path, chunk_bytes=8 * M * 12)
        check(many, first, TOL[torch.float32], "chunks")


# -- SigLIP (the sigmoid weight kind), learnable hyper-parameters, candidates without gradient ---------------

SIGMOID_CASES = [presets.siglip(), presets.siglip(3.0, 1.0),
                 Paradigm(D.InfoNCE(0.05), W.Sigmoid(10.0, -10.0), R.Constant(1.5)),
                 Paradigm(D.Margin(0.3), W.Sigmoid(5.0, -2.0), R.Angular()),
                 Paradigm(D.Sigmoid(5.0, -3.0), W.Sigmoid(5.0, -3.0), R.Constant(1.0))]


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_sigmoid_weight_kind(path):
    """SigLIP and the Sigmoid weight with other dissipations / ratios, value and gradient, float32,
    ragged tiles (several chunks on the chunked path)."""
    x, c = batch(seed=17)
    opts = SMALL if path == "fused" else dict(chunk_bytes=15 * M * 12, block_n=8)
    for p in SIGMOID_CASES:
        check(*both(x, c, p, path=path, **opts), TOL[torch.float32], repr(p))
        check(*both(x, c, p, None, path=path), TOL[torch.float32], f"value only {p!r}")


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_sigmoid_at_extreme_scales(path):
    """t = 300, b = -300: every negative's sigmoid underflows float32 (exp(-300)); the log-domain
    weights stay finite and the pull sigmoid(-(t s_ii + b)) is exact. t = 0.5: every sigmoid ~ 1/2.
    Against the torch backend in float64."""
    x, c = batch(seed=18)
    for p in (presets.siglip(300.0, -300.0), presets.siglip(0.5, 0.0)):
        check(*both(x, c, p, ref_dtype=torch.float64, path=path), TOL[torch.float32], repr(p))


@kernel_test
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sigmoid_half_precision(dtype, path):
    x, c = batch(n=70, m=150, d=64, dtype=dtype, seed=19)
    for p in (presets.siglip(), presets.siglip(30.0, -5.0)):
        check(*both(x, c, p, 1.0 / 70, path=path, chunk_bytes=40 * 150 * 12), TOL[dtype], f"{p!r} {dtype}")


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_hyper_gradients_and_partial_candidates_match_the_torch_backend(path):
    """The internal options of the front door: ``hyper_grad`` (learnable temperature / scale / bias)
    and ``grad_rows`` (only the first r candidates need a gradient), against the torch backend."""
    x, c = batch(seed=20)
    rw = torch.linspace(0.5, 2.0, N, device=DEVICE) / N
    for p, names in ((presets.info_nce(0.07), ("temperature",)), (presets.arccon(0.05), ("temperature",)),
                     (presets.siglip(7.0, -3.0), ("scale", "bias"))):
        for r in (None, N + 5, N, 0):
            opts = {} if r is None else dict(grad_rows=r)
            x2, c2 = gpu_inputs(x, c, path)
            _USED[0] = x2.dtype
            out = tb.direction(x2, c2, p, rw, path=path, hyper_grad=names, **opts)
            ref = torch_backend.direction(x2.float(), c2.float(), p, rw, hyper_grad=names, **opts)
            check(out[:3], ref[:3], TOL[torch.float32], f"{p!r} grad_rows={r}")
            assert rel_err(out[3], ref[3]) <= max(TOL[x2.dtype], 1e-5), f"{p!r}: hyper {out[3]} vs {ref[3]}"
            if r is not None:
                assert out[2][r:].abs().sum() == 0, "candidates beyond grad_rows get no gradient"
        loss, *rest = tb.direction(x, c, p, None, path=path, hyper_grad=names)  # value only: no gradients
        assert rest == [None, None, None]


@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_front_door_learnable_hyper_parameters_against_autograd(path):
    """``backend='triton'`` with learnable tensors through the front door (symmetric, hard negatives,
    a detached queue) against autograd of the plain formulas in float64 (tests/test_learnable.py's
    oracles, independent of the engine)."""
    import gradsurg
    from test_learnable import ref_info_nce, ref_siglip

    g = torch.Generator().manual_seed(21)
    x64, y64, z64 = (torch.randn(k, DIM, generator=g, dtype=torch.float64) for k in (N, N, 16))
    y64 = y64 * 0.7 + x64
    for symmetric, queue in ((False, False), (True, False), (False, True)):
        leaves = [t.clone().requires_grad_(not (queue and k == 2)) for k, t in enumerate((x64, y64, z64))]
        x, y, z = (t.detach().float().to(DEVICE).requires_grad_(t.requires_grad) for t in leaves)
        tau = torch.tensor(0.07, device=DEVICE, requires_grad=True)
        tau64 = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
        loss = gradsurg.info_nce(x, y, z, temperature=tau, symmetric=symmetric, backend="triton", path=path)
        ref = ref_info_nce(*leaves, tau64, symmetric)
        _compare(loss, ref, (x, y, z, tau), (*leaves, tau64), f"info_nce symmetric={symmetric} queue={queue}")
        t, b = (torch.tensor(v, device=DEVICE, requires_grad=True) for v in (7.0, -3.0))
        t64, b64 = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (7.0, -3.0))
        loss = gradsurg.siglip(x, y, z, scale=t, bias=b, symmetric=symmetric, backend="triton", path=path)
        ref = ref_siglip(*leaves, t64, b64, symmetric)
        _compare(loss, ref, (x, y, z, t, b), (*leaves, t64, b64), f"siglip symmetric={symmetric} queue={queue}")


def _compare(loss, ref, inputs, ref_inputs, what):
    """Value and every gradient within float32's tolerance of the float64 oracle (1e-4 relative)."""
    assert abs(loss.item() - ref.item()) <= 1e-4 * max(1.0, abs(ref.item())), f"{what}: {loss} vs {ref}"
    want = [t for t in inputs if t.requires_grad]
    got = torch.autograd.grad(loss, want)
    expected = torch.autograd.grad(ref, [t for t in ref_inputs if t.requires_grad])
    for k, (a, b) in enumerate(zip(got, expected)):
        err = rel_err(a.double().cpu(), b)
        assert err <= 1e-4, f"{what}: gradient {k} relative error {err:.2e}"


@kernel_test
def test_sigmoid_sums_are_exact_for_tiny_terms():
    """t = 10, b = -25: every negative's softplus(t s + b) is 1e-15 ... 3e-7, where log(1 + e) rounds
    to 0 or 20% off in float32; the kernels' log1p keeps every row's sum (and the sigmoid total
    exp(m) l) within 1e-5 of float64, on both paths' statistics."""
    from gradsurg.engine.normalize import inverse_norm

    x, c = batch(seed=22)
    t, b = 10.0, -25.0
    u = torch.nn.functional.normalize(x.double(), dim=1)
    v = torch.nn.functional.normalize(c.double(), dim=1)
    z = (u @ v.T) * t + b
    z.fill_diagonal_(-math.inf)
    want_sp = torch.nn.functional.softplus(z).sum(dim=1)
    want_total = torch.sigmoid(z).sum(dim=1)
    ix, ic = inverse_norm(x, torch.float32), inverse_norm(c, torch.float32)
    one = torch.ones(1, device=DEVICE)
    kw = dict(w_kind=launch.W_KINDS["sigmoid"], need_lse_g=False, inv_tau_w=t, bias_w=b, power_p=1.0,
              inv_tau_g=1.0)
    stats_fused = launch.fused_rows(x, c, ix, ic, one, want_acc=False, tiles=SMALL, **kw)[0]
    s = launch.mm_f32(x, c.T)
    stats_chunk = launch.chunk_weights(s, x.dtype, ix, ic, one, 0, write_w=False, **kw)[0]
    for name, stats in (("fused", stats_fused), ("chunked", stats_chunk)):
        sp, total = stats[7].double().cpu(), (stats[2].exp() * stats[3]).double().cpu()
        assert ((sp - want_sp).abs() / want_sp).max() <= 1e-5, f"{name}: softplus sums"
        assert ((total - want_total).abs() / want_total).max() <= 1e-5, f"{name}: sigmoid totals"


def test_sigmoid_dissipation_needs_the_matching_sigmoid_weight():
    x = torch.randn(4, 8)
    why = tb.covers(torch.float32, Paradigm(D.Sigmoid(10.0, -10.0), W.Softmax(0.05), R.Constant(1.0)))
    assert "Sigmoid(10.0, -10.0)" in why and "Softmax" in why
    assert "only with the weight" in tb.covers(torch.float32, Paradigm(D.InfoNCE(0.05), W.Sigmoid(5.0, 0.0),
                                                                      R.Sigmoid(10.0, -10.0)))
    assert tb.covers(torch.float32, presets.siglip(3.0, 1.0)) is None
    with pytest.raises(ValueError, match="only with the weight"):
        dispatch.choose("triton", x, Paradigm(D.Sigmoid(10.0, -10.0), W.Uniform(), R.Constant(1.0)))


# -- InfoNCE with sentence-transformers' hardness tilt (paradigm.info_nce_hardness) --------------------------

@kernel_test
@pytest.mark.parametrize("path", PATHS)
def test_hardness_tilt_is_the_softmax_kind_at_the_tilted_temperature(path):
    """The preset runs the softmax weight kind at tau' = 1/(1/tau + alpha) with no second log-sum-exp
    (its GD reads the weight's own over j != i); with a per-row weight tensor, value only, and a
    mismatched weight (a surrogate, GD's log-sum-exp at tau' from the second online pass)."""
    p = presets.info_nce_hardness(0.05, 5.0)
    spec = tb._Spec(p)
    assert spec.kind == "softmax" and not spec.need_lse_g and spec.inv_tau_w == pytest.approx(25.0, rel=1e-12)
    assert tb.supports(torch.randn(2, 3), p) in (None, tb.supports(torch.randn(2, 3), presets.info_nce()))
    x, c = batch(seed=21)
    rw = torch.linspace(0.5, 2.0, N, device=DEVICE)
    check(*both(x, c, p, rw, path=path, **SMALL), TOL[torch.float32], f"{p!r} {path}")
    check(*both(x, c, p, None, path=path), TOL[torch.float32], f"{p!r} value {path}")
    odd = Paradigm(D.InfoNCEHardness(0.05, 5.0), W.Softmax(0.05), R.Constant(1.0))
    assert tb._Spec(odd).need_lse_g and tb._Spec(odd).tau_g == p.weight.temperature
    check(*both(x, c, odd, 1.0 / N, path=path, chunk_bytes=15 * M * 12, block_n=8), TOL[torch.float32],
          f"{odd!r} {path}")


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_hardness_tilt_half_precision(dtype):
    x, c = batch(n=70, m=150, d=64, dtype=dtype, seed=22)
    for path in PATHS:
        check(*both(x, c, presets.info_nce_hardness(0.05, 9.0), 1.0 / 70, path=path), TOL[dtype],
              f"hardness {dtype} {path}")


@kernel_test
def test_mnrl_hardness_through_the_front_door_on_triton_equals_sentence_transformers():
    """info_nce(..., hardness_mode='all_negatives', backend='triton') on float32 inputs: sentence-transformers'
    value and gradients on the same inputs in float64 (1e-5 relative), as the torch backend's."""
    st = pytest.importorskip("sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking")
    import gradsurg

    g = torch.Generator().manual_seed(23)
    cols = [torch.randn(12, DIM, generator=g) for _ in range(4)]
    cols[1] = cols[0] + 2.0 * cols[1]
    cols = [t.to(DEVICE).requires_grad_() for t in cols]
    kw = dict(hardness_mode="all_negatives", hardness_strength=5.0)
    wide = [t.detach().double().requires_grad_() for t in cols]
    ref = st.MultipleNegativesRankingLoss(None, scale=20.0, **kw).compute_loss_from_embeddings(wide, None)
    g_ref = torch.autograd.grad(ref, wide)
    for backend in ("triton", "torch"):
        loss = gradsurg.info_nce(cols[0], cols[1], cols[2:], scale=20.0, backend=backend, **kw)
        assert rel_err(loss, ref) <= TOL[torch.float32], backend
        for a, b in zip(torch.autograd.grad(loss, cols), g_ref):
            assert rel_err(a, b) <= TOL[torch.float32], backend
    with pytest.raises(ValueError, match="only the row's own hard negatives"):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], backend="triton", hardness_mode="hard_negatives",
                          hardness_strength=5.0)


# -- dispatch ------------------------------------------------------------------------------------------

def test_dispatch():
    x = torch.randn(4, 8)
    p = presets.info_nce()
    assert dispatch.choose("auto", x, p)[0] is torch_backend  # CPU tensors: the torch backend
    assert dispatch.choose("triton", x, p)[0] is triton_backend
    assert dispatch.choose("torch", x, p)[0] is torch_backend
    if torch.cuda.is_available():
        assert dispatch.choose("auto", x.cuda(), p)[0] is triton_backend


@kernel_test
def test_edge_shapes_and_layouts():
    """M = N, N = 1, column-major anchors."""
    x, c = batch(n=29, m=29, seed=6)
    for path in PATHS:
        check(*both(x, c, presets.info_nce(), 1.0 / 29, path=path), TOL[torch.float32], f"M = N {path}")
    x, c = batch(n=1, m=5, seed=7)
    for path in PATHS:
        check(*both(x, c, presets.mpt(), 1.0, path=path), TOL[torch.float32], f"N = 1 {path}")
    x, c = batch(seed=15)
    xt = x.t().contiguous().t()
    check(*both(xt, c, presets.met()), TOL[torch.float32], "column-major anchors")


# -- the dispatcher-facing functions and the layering -------------------------------------------------------------

def test_supports_describe_and_options():
    x = torch.randn(4, 8)
    assert "float64" in tb.supports(x.double(), presets.info_nce())

    class Odd(W.Softmax):
        pass

    assert "Odd" in tb.supports(x, Paradigm(D.InfoNCE(), Odd(0.05), R.Constant(1.0)))
    if not _RERUN and DEVICE == "cpu":
        assert tb.supports(x, presets.info_nce()) is None
    assert "fused" in tb.describe(torch.bfloat16, 128, presets.info_nce())
    assert "chunked" in tb.describe(torch.bfloat16, 768, presets.info_nce())
    assert "BLOCK_N" in tb.describe(torch.float16, 64, presets.mpt())
    assert "chunked" in tb.describe(torch.float32, 64, presets.mpt())
    with pytest.raises(ValueError, match="does not accept option.*bogus.*accepted"):
        tb.direction(x, x, presets.info_nce(), 1.0, bogus=1)
    with pytest.raises(ValueError, match="path must be"):
        tb.direction(x.to(DEVICE), x.to(DEVICE), presets.info_nce(), 1.0, path="fast")


def test_paths_by_dtype_and_d():
    for arch in (80, 90):
        for d in (64, 128):
            assert launch.choose_path(torch.bfloat16, d, arch)[0] == "fused"
            assert launch.choose_path(torch.float16, d, arch)[0] == "fused"
        for d in (384, 768, 1024, 4096):
            assert launch.choose_path(torch.bfloat16, d, arch)[0] == "chunked"
        assert launch.choose_path(torch.float32, 64, arch)[0] == "chunked"
    assert launch.choose_path(torch.bfloat16, 256, 90)[0] == "fused"
    assert launch.choose_path(torch.bfloat16, 256, 80)[0] == "chunked"


def test_kernels_are_a_pure_layer():
    """kernels/gradsurg_kernels imports nothing from gradsurg."""
    root = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "gradsurg_kernels"
    assert sorted(p.name for p in root.glob("*.py")), root
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n == "gradsurg" or n.startswith("gradsurg.") for n in names), f"{path.name}: {names}"


@pytest.mark.skipif(not _RERUN, reason="only when Triton was imported in compiled mode before this module")
def test_kernels_in_a_fresh_interpreter_process():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_row_stats_feed_the_components_and_nothing_else():
    """RowStats carries O(n) statistics only: the core dissipations and ratios read them and give what
    they give on the full rows; a weight (which needs s itself) fails loudly."""
    from gradsurg.components import Rows, RowStats

    g = torch.Generator().manual_seed(16)
    s = torch.rand(5, 9, generator=g) * 2 - 1
    rows = Rows(s.clone(), 0)
    stats = RowStats(pos=rows.pos, hardest_value=rows.hardest_value, hardest_index=rows.hardest_index,
                     lses={0.1: rows.lse(0.1)})
    for p in (presets.info_nce(0.1), presets.mat(), Paradigm(D.ArcCon(0.1), W.Hardest(), R.Euclidean())):
        assert torch.allclose(p.dissipation(stats), p.dissipation(Rows(s.clone(), 0)))
        assert torch.allclose(p.pull(stats, p.dissipation(stats)), p.pull(Rows(s.clone(), 0), p.dissipation(rows)))
    with pytest.raises(AttributeError):
        W.Softmax(0.1)(stats)
    with pytest.raises(KeyError, match="temperature 0.05"):
        stats.lse(0.05)


def test_kernel_dtypes_match_the_vocabulary():
    """gradsurg_kernels keeps its own dtype list (a pure layer imports nothing of gradsurg): it equals
    gradsurg.vocabulary.KERNEL_DTYPES, which the Triton backend checks against."""
    from gradsurg.vocabulary import KERNEL_DTYPES

    assert launch._DTYPES == KERNEL_DTYPES
