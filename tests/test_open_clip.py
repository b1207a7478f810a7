"""gradsurg.integrations.open_clip against open-clip-torch's loss.py and an independent plain formula.

One process: ``ClipLoss`` / ``SigLipLoss`` (values and gradients to the features, logit_scale and
logit_bias) against the installed open_clip (loaded by file path: the package imports torchvision)
and against the plain formulas below. Two and four gloo processes: one spawn per world size runs
every setting (ClipLoss: local_loss x gather_with_grad, with and without a bias; SigLipLoss: every
dist_impl) in float64 and float32; each rank's value and gradients are compared with open_clip's
run in the same processes, and with a single-process simulation of open_clip's semantics (which
rows are detached on which rank, the per-rank scaling; gradients summed over the ranks as the
collectives' backward does).

Tolerances (relative to the reference's largest entry): float64 1e-10, float32 1e-5.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from gradsurg.integrations.open_clip import ClipLoss, SigLipLoss, open_clip_loss_module

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402
from test_distributed import finish, init, run_ranks  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
CLIP_SETTINGS = [(local, grad) for local in (False, True) for grad in (False, True)]
SIGLIP_IMPLS = ["bidir", "shift", "reduce", "gather"]
B, DIM = 3, 5


OC = open_clip_loss_module()
needs_open_clip = pytest.mark.skipif(OC is None, reason="open-clip-torch is not installed")


# -- the independent oracle: open_clip's semantics as plain formulas ----------------------------------

def plain_clip(img, txt, scale, bias=None):
    logits = scale * img @ txt.T + (0.0 if bias is None else bias)
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def plain_clip_local(img, txt_all, txt, img_all, offset, scale, bias=None):
    labels = torch.arange(img.shape[0]) + offset
    b = 0.0 if bias is None else bias
    return (F.cross_entropy(scale * img @ txt_all.T + b, labels)
            + F.cross_entropy(scale * txt @ img_all.T + b, labels)) / 2


def plain_siglip(img, txt, scale, bias=None, positives=True):
    logits = scale * img @ txt.T + (0.0 if bias is None else bias)
    z = -torch.ones_like(logits)
    if positives:
        z += 2 * torch.eye(img.shape[0], dtype=img.dtype)
    return -F.logsigmoid(z * logits).sum() / img.shape[0]


def simulate(kind, setting, imgs, txts, scale, bias):
    """Per-rank (value, grads to own image / text features, grad logit_scale, grad logit_bias) of
    open_clip's loss on ``world = len(imgs)`` ranks, simulated in one process: rank r's loss is built
    from leaves of every rank's features, detached where open_clip's rank r holds them without a
    gradient; each rank's feature gradient is the sum over every rank's loss (the collectives'
    backward), the hyper-parameters' gradient that of its own loss."""
    world = len(imgs)
    leaves_i = [t.clone().requires_grad_() for t in imgs]
    leaves_t = [t.clone().requires_grad_() for t in txts]
    values, hyper = [], []
    for r in range(world):
        s = scale.clone().requires_grad_()
        b = None if bias is None else bias.clone().requires_grad_()
        if kind == "clip":
            local, with_grad = setting
            keep = [with_grad or (q == r and not local) for q in range(world)]
            all_i = torch.cat([leaves_i[q] if keep[q] else leaves_i[q].detach() for q in range(world)])
            all_t = torch.cat([leaves_t[q] if keep[q] else leaves_t[q].detach() for q in range(world)])
            if local:
                loss = plain_clip_local(leaves_i[r], all_t, leaves_t[r], all_i, r * imgs[r].shape[0], s, b)
            else:
                loss = plain_clip(all_i, all_t, s, b)
        else:  # siglip: every dist_impl passes the texts with their gradient
            loss = plain_siglip(leaves_i[r], leaves_t[r], s, b)
            for q in range(world):
                if q != r:
                    loss = loss + plain_siglip(leaves_i[r], leaves_t[q], s, b, positives=False)
        hs = [s] + ([b] if b is not None else [])
        gh = torch.autograd.grad(loss, hs, retain_graph=True, allow_unused=True)
        hyper.append([torch.zeros_like(h) if g is None else g for h, g in zip(hs, gh)])
        values.append(loss)
    grads = torch.autograd.grad(sum(values), leaves_i + leaves_t, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves_i + leaves_t, grads)]
    return [{"loss": values[r].detach(), "grads": [grads[r], grads[world + r]] + hyper[r]} for r in range(world)]


def batch(world, dtype, seed=0, unit=True):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(world * B, DIM, generator=g, dtype=torch.float64)
    txt = img + 0.8 * torch.randn(world * B, DIM, generator=g, dtype=torch.float64)
    if unit:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    scale = torch.tensor(6.5, dtype=torch.float64)
    bias = torch.tensor(-3.0, dtype=torch.float64)
    return [t.to(dtype) for t in (img, txt, scale, bias)]


def run_loss(module, img, txt, scale, bias):
    """Value and gradients (image, text, logit_scale[, logit_bias]) of ``module`` on leaves."""
    leaves = [img.clone().requires_grad_(), txt.clone().requires_grad_(), scale.clone().requires_grad_()]
    if bias is not None:
        leaves.append(bias.clone().requires_grad_())
    loss = module(*leaves[:3], leaves[3] if bias is not None else None)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return {"loss": loss.detach(), "grads": [g.detach() for g in grads]}


def assert_close(got, want, dtype, what):
    tol = TOL[dtype]
    assert rel_err(got["loss"], want["loss"]) < tol, (what, "loss", got["loss"], want["loss"])
    for k, (g, w) in enumerate(zip(got["grads"], want["grads"])):
        if "clip" in str(what) and k == 3:  # ClipLoss's bias: 0 in exact arithmetic, rounding noise in open_clip's
            assert float((g - w).abs().max()) < tol, (what, "bias grad", g, w)
            continue
        assert rel_err(g, w) < tol, (what, "grad", k, rel_err(g, w))


# -- one process -----------------------------------------------------------------------------------------

CASES_1 = [(kind, dtype, unit, with_bias) for kind in ("clip", "siglip") for dtype in (torch.float64, torch.float32)
           for unit in (True, False) for with_bias in (False, True)]


@pytest.mark.parametrize("case", CASES_1, ids=lambda c: f"{c[0]}-{str(c[1])[6:]}-{'unit' if c[2] else 'raw'}"
                         f"-{'bias' if c[3] else 'nobias'}")
def test_one_process_against_plain(case):
    kind, dtype, unit, with_bias = case
    img, txt, scale, bias = batch(1, dtype, seed=3, unit=unit)
    img, txt = torch.cat([img, img[:2] * 0.5]), torch.cat([txt, -txt[:2]])  # 5 rows
    bias = bias if with_bias else None
    ours = run_loss(ClipLoss() if kind == "clip" else SigLipLoss(), img, txt, scale, bias)
    want = simulate(kind, (False, False), [img.double()], [txt.double()], scale.double(),
                    None if bias is None else bias.double())[0]
    assert_close(ours, want, dtype, case)


@needs_open_clip
@pytest.mark.parametrize("case", CASES_1, ids=lambda c: f"{c[0]}-{str(c[1])[6:]}-{'unit' if c[2] else 'raw'}"
                         f"-{'bias' if c[3] else 'nobias'}")
def test_one_process_against_open_clip(case):
    kind, dtype, unit, with_bias = case
    img, txt, scale, bias = batch(1, dtype, seed=4, unit=unit)
    bias = bias if with_bias else None
    ours = run_loss(ClipLoss() if kind == "clip" else SigLipLoss(), img, txt, scale, bias)
    theirs = run_loss(OC.ClipLoss() if kind == "clip" else OC.SigLipLoss(), img, txt, scale, bias)
    assert_close(ours, theirs, dtype, case)


def test_output_dict_and_no_grad():
    img, txt, scale, bias = batch(1, torch.float64)
    out = ClipLoss()(img, txt, scale, output_dict=True)
    assert set(out) == {"contrastive_loss"} and out["contrastive_loss"].dim() == 0
    out = SigLipLoss()(img, txt, scale, bias, output_dict=True)
    assert set(out) == {"contrastive_loss"}
    with torch.no_grad():
        assert torch.isfinite(SigLipLoss()(img, txt, 10.0, -10.0))
        assert torch.isfinite(ClipLoss()(img, txt, 10.0))


def test_errors():
    img, txt, scale, _ = batch(1, torch.float64)
    with pytest.raises(ValueError, match="use_horovod"):
        ClipLoss(use_horovod=True)
    with pytest.raises(ValueError, match="dist_impl must be one of"):
        SigLipLoss(dist_impl="ring")
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        ClipLoss(rank=2, world_size=2)
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        ClipLoss(rank=0, world_size=2)(img, txt, scale)
    with pytest.raises(ValueError, match="same shape"):
        SigLipLoss()(img, txt[:2], scale)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        ClipLoss()(img, txt, torch.ones(2))


# -- 2 and 4 gloo processes ------------------------------------------------------------------------------

def dist_cases():
    out = [("clip", s, wb) for s in CLIP_SETTINGS for wb in (False, True)]
    return out + [("siglip", impl, True) for impl in SIGLIP_IMPLS]


def make(kind, setting, rank, world, lib):
    if kind == "clip":
        local, with_grad = setting
        return lib.ClipLoss(local_loss=local, gather_with_grad=with_grad, rank=rank, world_size=world)
    return lib.SigLipLoss(rank=rank, world_size=world, dist_impl=setting)


def worker(rank, world, port, outdir):
    import gradsurg.integrations.open_clip as ours

    init(rank, world, port)
    oc = open_clip_loss_module()
    results = {}
    for dtype in (torch.float64, torch.float32):
        img, txt, scale, bias = batch(world, dtype, seed=world)
        mine = [t[rank * B:(rank + 1) * B] for t in (img, txt)]
        for case in dist_cases():
            kind, setting, with_bias = case
            b = bias if with_bias else None
            results[(dtype, case, "ours")] = run_loss(make(kind, setting, rank, world, ours), *mine, scale, b)
            if oc is not None:
                results[(dtype, case, "open_clip")] = run_loss(make(kind, setting, rank, world, oc), *mine, scale, b)
    finish(rank, outdir, results)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def spawned(request):
    world = request.param
    return world, run_ranks(worker, world)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_distributed_against_plain(spawned, dtype):
    world, per_rank = spawned
    img, txt, scale, bias = batch(world, torch.float64, seed=world)
    imgs, txts = list(img.split(B)), list(txt.split(B))
    for case in dist_cases():
        kind, setting, with_bias = case
        want = simulate(kind, setting, imgs, txts, scale, bias if with_bias else None)
        for r in range(world):
            assert_close(per_rank[r][(dtype, case, "ours")], want[r], dtype, (world, case, r))


@pytest.mark.slow
@needs_open_clip
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_distributed_against_open_clip(spawned, dtype):
    world, per_rank = spawned
    for case in dist_cases():
        for r in range(world):
            got = per_rank[r][(dtype, case, "ours")]
            assert_close(got, per_rank[r][(dtype, case, "open_clip")], dtype, (world, case, r))


# -- normalizer='global' (FastCLIP's setting): one process and 2 gloo processes --------------------------
# against the independent step-by-step oracle of test_global_normalizer.py (dot products of the given
# features, tau = 1 / logit_scale, a leaf: the oracle's surrogate gives the logit_scale's gradient too)

from test_global_normalizer import Oracle  # noqa: E402

GN_DATASET, GN_GAMMA, GN_WORLD = 9, 0.3, 2
GN_STEPS = [[0, 1, 2, 3], [2, 4, 5, 0], [6, 1, 3, 7]]  # the global batch's indices (rank r: 2r, 2r + 1)
GN_SETTINGS = [(True, True), (False, True), (False, False)]  # (local_loss, gather_with_grad)


def gn_batch(step, dtype):
    g = torch.Generator().manual_seed(50 + step)
    img = F.normalize(torch.randn(4, DIM, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.9 * torch.randn(4, DIM, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(5.0 + step, dtype=torch.float64)  # the learnable logit_scale moves
    bias = torch.tensor(-2.0, dtype=torch.float64)
    return [t.to(dtype) for t in (img, txt, scale, bias)]


def gn_oracle_step(oracle, img, txt, scale, index):
    """Leaves (image, text, logit_scale) and the oracle's per-pair (value, surrogate) rows of the step."""
    leaves = [t.detach().double().clone().requires_grad_() for t in (img, txt, scale)]
    oracle.tau = 1 / leaves[2]
    v1, s1 = oracle.direction(leaves[0], leaves[1], 0, index, unit=False)
    v2, s2 = oracle.direction(leaves[1], leaves[0], 1, index, unit=False)
    return leaves, 0.5 * (v1 + v2), 0.5 * (s1 + s2)


def assert_state(log_u, oracle, tol, what):
    for tower in (0, 1):
        seen = sorted(oracle.u[tower])
        want = torch.tensor([oracle.u[tower][k] for k in seen], dtype=torch.float64)
        assert rel_err(log_u[tower, seen].exp(), want) < tol, (what, tower)
        rest = [k for k in range(GN_DATASET) if k not in oracle.u[tower]]
        assert torch.isinf(log_u[tower, rest]).all(), (what, tower, "never seen")


@pytest.mark.parametrize("keep", [False, True], ids=["sogclr", "keep_gd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_global_normalizer_one_process(dtype, keep):
    loss_fn = ClipLoss(normalizer="global", dataset_size=GN_DATASET, gamma=GN_GAMMA, keep_dissipation=keep)
    oracle = Oracle(2, gamma=GN_GAMMA, keep_dissipation=keep)
    for step, idx in enumerate(GN_STEPS):
        img, txt, scale, bias = gn_batch(step, dtype)
        index = torch.tensor(idx)
        got = run_loss(lambda *a: loss_fn(*a, index=index), img, txt, scale, bias)
        leaves, value, surrogate = gn_oracle_step(oracle, img, txt, scale, index)
        want = {"loss": value.mean(), "grads": list(torch.autograd.grad(surrogate.mean(), leaves))
                + [torch.zeros(())]}
        if dtype == torch.float32:  # d/dlogit_scale sums terms of size |s_ij| <= 1 (unit features) that cancel
            # to ~3e-3 here: float32 rounding is 1e-5 of the terms, not of the result
            assert float((got["grads"][2] - want["grads"][2]).abs()) < TOL[dtype], (step, "logit_scale")
            got["grads"][2] = want["grads"][2] = torch.zeros(())
        assert_close(got, want, dtype, ("clip", step))
        assert_state(loss_fn.normalizer.log_u, oracle, TOL[dtype], step)
    state = loss_fn.state_dict()
    assert set(state) == {"normalizer.log_u"}
    fresh = ClipLoss(normalizer="global", dataset_size=GN_DATASET, gamma=GN_GAMMA)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.normalizer.log_u, loss_fn.normalizer.log_u)


def test_global_normalizer_default_unchanged_and_errors():
    img, txt, scale, _ = batch(1, torch.float64)
    assert ClipLoss().state_dict() == {}  # the default (batch) normaliser holds no state
    with pytest.raises(ValueError, match="index= is only used with normalizer='global'"):
        ClipLoss()(img, txt, scale, index=torch.arange(B))
    with pytest.raises(ValueError, match="needs dataset_size="):
        ClipLoss(normalizer="global")
    with pytest.raises(ValueError, match="normalizer must be one of"):
        ClipLoss(normalizer="sogclr", dataset_size=4)
    with pytest.raises(ValueError, match="local_loss=True needs gather_with_grad=True"):
        ClipLoss(local_loss=True, rank=0, world_size=2, normalizer="global", dataset_size=4)
    loss_fn = ClipLoss(normalizer="global", dataset_size=4)
    with pytest.raises(ValueError, match="needs index="):
        loss_fn(img, txt, scale)
    with pytest.raises(IndexError, match="out of range"):
        loss_fn(img, txt, scale, index=torch.tensor([0, 1, 4]))
    ClipLoss(local_loss=True, normalizer="global", dataset_size=4)  # one process: the flags do not matter
    with pytest.raises(ValueError, match="keep_dissipation is an option of normalizer='global'"):
        ClipLoss(keep_dissipation=True)


def gn_worker(rank, world, port, outdir):
    import gradsurg.integrations.open_clip as ours

    init(rank, world, port)
    results = {}
    for setting in GN_SETTINGS:
        local, with_grad = setting
        loss_fn = ours.ClipLoss(local_loss=local, gather_with_grad=with_grad, rank=rank, world_size=world,
                                normalizer="global", dataset_size=GN_DATASET, gamma=GN_GAMMA)
        for step, idx in enumerate(GN_STEPS):
            img, txt, scale, bias = gn_batch(step, torch.float64)
            rows = slice(2 * rank, 2 * rank + 2)
            index = torch.tensor(idx[rows])
            out = run_loss(lambda *a: loss_fn(*a, index=index), img[rows], txt[rows], scale, bias)
            out["log_u"] = loss_fn.normalizer.log_u.clone()
            results[(setting, step)] = out
    finish(rank, outdir, results)


@pytest.fixture(scope="module")
def gn_spawned():
    return run_ranks(gn_worker, GN_WORLD)


@pytest.mark.slow
@pytest.mark.parametrize("setting", GN_SETTINGS, ids=lambda s: f"local{int(s[0])}-grad{int(s[1])}")
def test_global_normalizer_distributed(gn_spawned, setting):
    """Per rank (W = 2, N = 4): local_loss + gather_with_grad: value (W/N) sum of its rows, feature gradient W
    times the global mean's, logit_scale its own value's; local_loss=False: the global mean, W times (with
    gather_with_grad) or once (without) its gradient on the rank's rows, logit_scale the global mean's. The
    state on every rank: the oracle's, for both towers."""
    local, with_grad = setting
    oracle = Oracle(2, gamma=GN_GAMMA)
    tol = TOL[torch.float64]
    for step, idx in enumerate(GN_STEPS):
        img, txt, scale, _ = gn_batch(step, torch.float64)
        leaves, value, surrogate = gn_oracle_step(oracle, img, txt, scale, torch.tensor(idx))
        d_mean = torch.autograd.grad(surrogate.mean(), leaves, retain_graph=True)
        for r in range(GN_WORLD):
            rows = slice(2 * r, 2 * r + 2)
            got = gn_spawned[r][(setting, step)]
            if local:
                own = surrogate[rows].sum() * GN_WORLD / 4
                want_value, want_scale = value[rows].sum() * GN_WORLD / 4, torch.autograd.grad(
                    own, leaves[2], retain_graph=True)[0]
            else:
                want_value, want_scale = value.mean(), d_mean[2]
            factor = GN_WORLD if with_grad else 1
            want = {"loss": want_value, "grads": [factor * d_mean[0][rows], factor * d_mean[1][rows], want_scale,
                                                  torch.zeros(())]}
            assert_close(got, want, torch.float64, ("clip", setting, step, r))
            assert_state(got["log_u"], oracle, tol, (setting, step, r))
