"""distributed='ring': 2 and 3 gloo processes against the gather path and one process on the global batch.

One spawn per world size runs every case; each rank saves its value and gradients (its own leaves
and the learnable hyper-parameters) for the ring and the gather path. Checked (float64, 1e-10
relative): the ring equals the gather path on every rank for every case, and with reduction='sum'
the ranks' values and owners' gradients add up to one process's on the concatenated batch (the
hyper-parameters' gradients summed over ranks). Float32: the ring equals the gather path within 1e-5.
"""
from __future__ import annotations

import itertools
import os
import sys

import pytest
import torch

import gradsurg

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402
from test_distributed import finish, init, raised, run_ranks  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SIZES = {2: ([3, 5], [2, 1]), 3: ([2, 4, 3], [0, 3, 1])}  # anchors and hard negatives per rank (uneven)
LOSSES = ["info_nce", "arccon", "siglip"]
#: (loss, symmetric, with negatives, reduction, learnable hyper-parameters, normalize)
CASES = ([(name, sym, neg, red, False, True)
          for name, sym, neg, red in itertools.product(LOSSES, [False, True], [False, True], ["mean", "sum", "none"])]
         + [(name, sym, True, "sum", True, unit) for name in ("info_nce", "siglip")
            for sym, unit in itertools.product([False, True], [True, False])])
D = 6


def batch(world, case):
    n_r, k_r = SIZES[world]
    if not case[2]:
        k_r = [0] * world
    return features(n_r, k_r, 100 + CASES.index(case))


def features(n_r, k_r, seed):
    """``(n_r, k_r, anchors, positives, hard negatives, row weights)`` of a global batch with ``n_r``
    anchors and ``k_r`` hard negatives per rank (float64, seeded)."""
    g = torch.Generator().manual_seed(seed)
    n, k = sum(n_r), sum(k_r)
    a = torch.randn(n, D, generator=g, dtype=torch.float64)
    p = a + 0.7 * torch.randn(n, D, generator=g, dtype=torch.float64)
    z = torch.randn(k, D, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return n_r, k_r, a, p, z, w


def part(t, counts, rank):
    start = sum(counts[:rank])
    return t[start:start + counts[rank]]


def hyper_of(name, learn, dtype):
    if not learn:
        return []
    vals = [0.2] if name != "siglip" else [5.0, -2.0]
    return [torch.tensor(v, dtype=dtype, requires_grad=True) for v in vals]


def call(case, a, p, z, hyper, **kw):
    name, symmetric, _, reduction, learn, unit = case
    kw.update(symmetric=symmetric, reduction=reduction)
    if not unit:
        kw["normalize"] = False
    if name == "siglip":
        scale, bias = (hyper if learn else (5.0, -2.0))
        return gradsurg.siglip(a, p, z, scale=scale, bias=bias, **kw)
    tau = hyper[0] if learn else 0.2
    fn = gradsurg.info_nce if name == "info_nce" else gradsurg.arccon
    return fn(a, p, z, temperature=tau, **kw)


def run(case, a, p, z, w, dtype, **kw):
    leaves = [a.to(dtype).requires_grad_(), p.to(dtype).requires_grad_()]
    zl = z.to(dtype).requires_grad_() if z.shape[0] else None
    hyper = hyper_of(case[0], case[4], dtype)
    loss = call(case, leaves[0], leaves[1], zl, hyper, **kw)
    wanted = leaves + ([zl] if zl is not None else []) + hyper
    grads = torch.autograd.grad(loss, wanted, w.to(dtype) if case[3] == "none" else torch.ones_like(loss))
    return {"loss": loss.detach(), "grads": [g.detach() for g in grads]}


def worker(rank, world, port, outdir):
    init(rank, world, port)
    out = {}
    for case in CASES:
        n_r, k_r, a, p, z, w = batch(world, case)
        mine = (part(a, n_r, rank), part(p, n_r, rank), part(z, k_r, rank), part(w, n_r, rank))
        dtypes = (torch.float64, torch.float32) if case[0] == "info_nce" and case[3] == "mean" else (torch.float64,)
        for dtype in dtypes:
            for how in ("ring", "gather"):
                out[(case, dtype, how)] = run(case, *mine, dtype, distributed=how)
    with torch.no_grad():
        n_r, k_r, a, p, z, w = batch(world, CASES[0])
        out["no_grad"] = gradsurg.info_nce(part(a, n_r, rank), part(p, n_r, rank), distributed="ring")
    n_r, k_r, a, p, z, w = batch(world, CASES[1])
    a_r, p_r = part(a, n_r, rank), part(p, n_r, rank)
    module = gradsurg.ParadigmLoss(gradsurg.paradigm.info_nce(0.2), symmetric=True, distributed="ring")
    out["module"] = (module(a_r, p_r), gradsurg.info_nce(a_r, p_r, temperature=0.2, symmetric=True,
                                                         distributed="ring"))
    ab = a_r.to(torch.bfloat16).requires_grad_()
    lb = gradsurg.siglip(ab, p_r.to(torch.bfloat16), scale=5.0, bias=-2.0, distributed="ring")
    lb.backward()
    out["bf16"] = (lb.dtype, ab.grad.dtype, bool(torch.isfinite(ab.grad.float()).all()))
    try:
        gradsurg.mpt(torch.randn(3, D), torch.randn(3, D), distributed="ring")
        out["error"] = None
    except ValueError as err:
        out["error"] = str(err)
    finish(rank, outdir, out)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def spawned(request):
    world = request.param
    return world, run_ranks(worker, world)


def ids(case):
    name, sym, neg, red, learn, unit = case
    return f"{name}-{'sym' if sym else 'one'}-{'neg' if neg else 'noneg'}-{red}" + \
        ("-learn" if learn else "") + ("" if unit else "-dot")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_ring_equals_gather(spawned, case):
    world, per_rank = spawned
    for r in range(world):
        for dtype in (torch.float64, torch.float32):
            if (case, dtype, "ring") not in per_rank[r]:
                continue
            ring, gather = per_rank[r][(case, dtype, "ring")], per_rank[r][(case, dtype, "gather")]
            assert rel_err(ring["loss"], gather["loss"]) < TOL[dtype], (r, dtype)
            for k, (g, h) in enumerate(zip(ring["grads"], gather["grads"])):
                assert rel_err(g, h) < TOL[dtype], (r, dtype, k, rel_err(g, h))


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c[3] == "sum"], ids=ids)
def test_ring_equals_one_process(spawned, case):
    """The ranks' sums equal one process holding the global batch (independent of the gather path)."""
    world, per_rank = spawned
    n_r, k_r, a, p, z, w = batch(world, case)
    want = run(case, a.clone(), p.clone(), z.clone(), w, torch.float64)
    got = [per_rank[r][(case, torch.float64, "ring")] for r in range(world)]
    assert rel_err(sum(g["loss"] for g in got), want["loss"]) < TOL[torch.float64]
    n_hyper = len(hyper_of(case[0], case[4], torch.float64))
    owned = [torch.cat([g["grads"][k] for g in got]) for k in (0, 1)]
    if sum(k_r):
        owned.append(torch.cat([g["grads"][2] for g in got if len(g["grads"]) > 2 + n_hyper]))
    owned += [sum(g["grads"][-n_hyper + k] for g in got) for k in range(n_hyper)]
    for k, (g, h) in enumerate(zip(owned, want["grads"])):
        assert rel_err(g, h) < TOL[torch.float64], (k, rel_err(g, h))


@pytest.mark.slow
def test_ring_no_grad_and_errors(spawned):
    world, per_rank = spawned
    n_r, k_r, a, p, z, w = batch(world, CASES[0])
    rows = gradsurg.info_nce(a, p, temperature=0.05, reduction="none")
    for r in range(world):
        assert rel_err(per_rank[r]["no_grad"], part(rows, n_r, r).sum() * world / sum(n_r)) < 1e-10
        assert "distributed='ring' runs info_nce" in per_rank[r]["error"]
        mod, fn = per_rank[r]["module"]
        assert torch.equal(mod, fn)  # ParadigmLoss(distributed='ring') is the functional ring
        assert per_rank[r]["bf16"] == (torch.bfloat16, torch.bfloat16, True)


# -- InfoNCE with sentence-transformers' hardness tilt on every negative (paradigm.info_nce_hardness) --------

TAU, ALPHA = 0.2, 3.0
#: (symmetric, with negatives, reduction, normalize, through): 'paradigm' = paradigm_loss with the preset,
#: 'mnrl' = info_nce(hardness_mode='all_negatives', ...) routed there by structured.mnrl_route (its hard
#: negatives one (N, d) column, so a rank's K is its N)
HARD_CASES = ([(sym, neg, red, True, "paradigm")
               for sym, neg, red in itertools.product([False, True], [False, True], ["mean", "sum", "none"])]
              + [(False, True, "sum", False, "paradigm"), (False, True, "mean", True, "mnrl"),
                 (False, False, "sum", True, "mnrl"), (False, True, "sum", False, "mnrl")])


def hard_ids(case):
    sym, neg, red, unit, through = case
    return f"{through}-{'sym' if sym else 'one'}-{'neg' if neg else 'noneg'}-{red}" + ("" if unit else "-dot")


def hard_batch(case):
    n_r, k_r = SIZES[2]
    k_r = (n_r if case[4] == "mnrl" else k_r) if case[1] else [0, 0]
    return features(n_r, k_r, 500 + HARD_CASES.index(case))


def hard_run(case, a, p, z, w, **kw):
    sym, _, reduction, unit, through = case
    leaves = [a.clone().requires_grad_(), p.clone().requires_grad_()]
    zl = z.clone().requires_grad_() if z.shape[0] else None
    kw.update(reduction=reduction, **({} if unit else {"normalize": False}))
    if through == "paradigm":
        loss = gradsurg.paradigm_loss(*leaves, zl, paradigm=gradsurg.paradigm.info_nce_hardness(TAU, ALPHA),
                                      symmetric=sym, **kw)
    else:  # a small chunk_bytes: the backend option passes through the route too
        loss = gradsurg.info_nce(*leaves, zl, temperature=TAU, hardness_mode="all_negatives",
                                 hardness_strength=ALPHA, chunk_bytes=256, **kw)
    wanted = leaves + ([zl] if zl is not None else [])
    grads = torch.autograd.grad(loss, wanted, w if reduction == "none" else torch.ones_like(loss))
    return {"loss": loss.detach(), "grads": [g.detach() for g in grads]}


def hard_worker(rank, world, port, outdir):
    init(rank, world, port)
    out = {}
    for case in HARD_CASES:
        n_r, k_r, a, p, z, w = hard_batch(case)
        mine = (part(a, n_r, rank), part(p, n_r, rank), part(z, k_r, rank), part(w, n_r, rank))
        for how in ("ring", "gather"):
            out[(case, how)] = hard_run(case, *mine, distributed=how)
    x = torch.randn(3, D, dtype=torch.float64)
    out["errors"] = {what: raised(lambda: gradsurg.info_nce(x, x + 1, x - 1, hardness_strength=ALPHA,
                                                             distributed="ring", **kw))
                     for what, kw in (("tilt on part", dict(hardness_mode="hard_negatives")),
                                      ("per-entry", dict(hardness_mode="all_negatives", labels=torch.arange(3))))}
    finish(rank, outdir, out)


@pytest.fixture(scope="module")
def spawned_hardness():
    return run_ranks(hard_worker, 2)


@pytest.mark.slow
@pytest.mark.parametrize("case", HARD_CASES, ids=hard_ids)
def test_ring_hardness_equals_gather(spawned_hardness, case):
    for r, got in enumerate(spawned_hardness):
        ring, gather = got[(case, "ring")], got[(case, "gather")]
        assert rel_err(ring["loss"], gather["loss"]) < 1e-10, r
        assert len(ring["grads"]) == len(gather["grads"])
        for k, (g, h) in enumerate(zip(ring["grads"], gather["grads"])):
            assert rel_err(g, h) < 1e-10, (r, k, rel_err(g, h))


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in HARD_CASES if c[2] == "sum"], ids=hard_ids)
def test_ring_hardness_equals_one_process(spawned_hardness, case):
    """The two ranks' sums equal one process holding the global batch (no process group: the plain engine)."""
    n_r, k_r, a, p, z, w = hard_batch(case)
    want = hard_run(case, a, p, z, w)
    got = [spawned_hardness[r][(case, "ring")] for r in range(2)]
    assert rel_err(sum(g["loss"] for g in got), want["loss"]) < 1e-10
    owned = [torch.cat([g["grads"][k] for g in got]) for k in range(len(want["grads"]))]
    for k, (g, h) in enumerate(zip(owned, want["grads"])):
        assert rel_err(g, h) < 1e-10, (k, rel_err(g, h))


@pytest.mark.slow
def test_ring_refuses_structured_options_on_every_rank(spawned_hardness):
    for got in spawned_hardness:
        for what, msg in got["errors"].items():
            assert msg is not None and msg.startswith("info_nce") and "distributed='ring'" in msg \
                and "distributed='gather'" in msg, (what, msg)
        assert "two logit forms" in got["errors"]["tilt on part"]
        assert "labels=" in got["errors"]["per-entry"]


def test_ring_supports_the_hardness_preset():
    from gradsurg.engine import ring

    assert ring.supports(gradsurg.paradigm.info_nce_hardness(0.05, 5.0)) is None
    assert "not Paradigm" in ring.supports(gradsurg.paradigm.mpt())


def test_bad_distributed_value():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="distributed must be None, 'gather' or 'ring'"):
        gradsurg.info_nce(x, x, distributed="allgather")
    # without a process group the ring is the plain single-process loss
    assert torch.equal(gradsurg.info_nce(x, x, distributed="ring"), gradsurg.info_nce(x, x))
