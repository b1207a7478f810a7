"""gather_across_devices: 2 and 3 gloo processes on CPU against one process on the concatenated batch.

One spawn per world size runs every case (each a few milliseconds) and saves
each rank's loss and gradients; the tests compare them with single-process
``paradigm_loss`` on the concatenated batch (float64, tolerance 1e-9 relative).

Scaling checked (see gradsurg.api, "Gathered candidates"): with reduction='mean' the gradient
on a rank's own rows is W times the gradient of the global-mean loss, so the
DDP average (divide by W) equals the single-process gradient; 'sum' gives the
global sum's gradient directly; 'none' with per-row weights gives the weighted
global sum's gradient.
"""
from __future__ import annotations

import datetime
import itertools
import os
import socket
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradsurg
from gradsurg import dissipation as D
from gradsurg import ratio as R
from gradsurg import weight as W

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402

TOL = 1e-9
PARADIGMS = ["info_nce", "arccon", "mpt", "met", "mat", "custom"]
SIZES = {  # world -> layout -> (anchors per rank, hard negatives per rank)
    2: {"even": ([4, 4], [3, 3]), "uneven": ([3, 6], [2, 0])},
    3: {"even": ([3, 3, 3], [2, 2, 2]), "uneven": ([2, 5, 1], [0, 3, 1])},
}
CASES = list(itertools.product(PARADIGMS, [False, True], [False, True], ["mean", "sum", "none"],
                               ["even", "uneven"]))
D_EMB = 6
#: low-precision runs of one case (symmetric InfoNCE with hard negatives, uneven ranks) and their tolerances
DTYPES = {"float32": (torch.float32, 1e-4), "bfloat16": (torch.bfloat16, 2e-2)}
DTYPE_CASE = ("info_nce", True, True, "mean", "uneven")


def make_paradigm(name):
    if name == "custom":
        return gradsurg.Paradigm(D.Margin(0.3), W.Softmax(0.1), R.Constant(1.5))
    return getattr(gradsurg.paradigm, name)()


def global_batch(world, case):
    name, symmetric, with_neg, reduction, layout = case
    n_r, k_r = SIZES[world][layout]
    if not with_neg:
        k_r = [0] * world
    g = torch.Generator().manual_seed(1000 + CASES.index(case))
    n, k = sum(n_r), sum(k_r)
    a = torch.randn(n, D_EMB, generator=g, dtype=torch.float64)
    p = a + 0.7 * torch.randn(n, D_EMB, generator=g, dtype=torch.float64)
    z = torch.randn(k, D_EMB, generator=g, dtype=torch.float64)
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5  # row weights for reduction='none'
    return n_r, k_r, a, p, z, w


def local_slice(t, counts, rank):
    start = sum(counts[:rank])
    return t[start: start + counts[rank]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker, world):
    """``worker(rank, world, port, outdir)`` in ``world`` spawned processes, each saving
    ``outdir/rank<r>.pt``; returns what every rank saved, in rank order."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.start_processes(worker, args=(world, free_port(), outdir), nprocs=world, start_method="spawn")
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


def raised(fn, kind=ValueError):
    """The message of the ``kind`` error ``fn()`` raises, or None (a worker's record of its errors)."""
    try:
        fn()
    except kind as err:
        return str(err)
    return None


def finish(rank, outdir, results):
    """The end of a worker: wait for every rank, leave the process group, save ``results`` for
    :func:`run_ranks`."""
    dist.barrier()
    dist.destroy_process_group()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


def init(rank, world, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))


def run_case(world, rank, case, dtype=torch.float64):
    name, symmetric, with_neg, reduction, layout = case
    n_r, k_r, a, p, z, w = global_batch(world, case)
    leaves = [local_slice(a, n_r, rank).to(dtype).requires_grad_(),
              local_slice(p, n_r, rank).to(dtype).requires_grad_()]
    zl = local_slice(z, k_r, rank).to(dtype).requires_grad_() if k_r[rank] else None
    if zl is not None:
        leaves.append(zl)
    loss = gradsurg.paradigm_loss(leaves[0], leaves[1], zl, paradigm=make_paradigm(name), symmetric=symmetric,
                                  reduction=reduction, gather_across_devices=True)
    weight = local_slice(w, n_r, rank) if reduction == "none" else torch.ones_like(loss)
    grads = torch.autograd.grad(loss, leaves, weight)
    return {"loss": loss.detach(), "grads": [g.detach() for g in grads]}


def ddp_case(world, rank, layout):
    """A linear encoder under DDP: averaged parameter gradients vs one process."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    n_r, k_r = SIZES[world][layout]
    g = torch.Generator().manual_seed(7)
    xa = torch.randn(sum(n_r), 5, generator=g, dtype=torch.float64)
    xp = xa + 0.5 * torch.randn(sum(n_r), 5, generator=g, dtype=torch.float64)
    xz = torch.randn(sum(k_r), 5, generator=g, dtype=torch.float64)
    torch.manual_seed(3)
    enc = torch.nn.Linear(5, 4).double()
    model = DDP(enc)
    ea, ep = model(local_slice(xa, n_r, rank)), model(local_slice(xp, n_r, rank))
    ez = model(local_slice(xz, k_r, rank)) if k_r[rank] else None
    loss = gradsurg.info_nce(ea, ep, ez, symmetric=True, gather_across_devices=True)
    loss.backward()
    return {"loss": loss.detach(), "grads": [enc.weight.grad.clone(), enc.bias.grad.clone()]}


SUBGROUP_CASE = ("arccon", True, True, "mean", "uneven")


def run_case_group(rank, case, group):
    """Ranks 0 and 1 of a subgroup hold the two-rank batch of ``case``."""
    name, symmetric, with_neg, reduction, layout = case
    n_r, k_r, a, p, z, w = global_batch(2, case)
    leaves = [local_slice(a, n_r, rank).clone().requires_grad_(),
              local_slice(p, n_r, rank).clone().requires_grad_()]
    zl = local_slice(z, k_r, rank).clone().requires_grad_() if k_r[rank] else None
    loss = gradsurg.paradigm_loss(leaves[0], leaves[1], zl, paradigm=make_paradigm(name), symmetric=symmetric,
                                  reduction=reduction, gather_across_devices=True, group=group)
    grads = torch.autograd.grad(loss, leaves + ([zl] if zl is not None else []))
    return {"loss": loss.detach(), "grads": [g.detach() for g in grads]}


def run_case_no_grad(world, rank, case):
    name, symmetric, with_neg, reduction, layout = case
    n_r, k_r, a, p, z, w = global_batch(world, case)
    zl = local_slice(z, k_r, rank) if k_r[rank] else None
    return gradsurg.paradigm_loss(local_slice(a, n_r, rank), local_slice(p, n_r, rank), zl,
                                  paradigm=make_paradigm(name), symmetric=symmetric, reduction=reduction,
                                  gather_across_devices=True)


def gather_case(world, rank):
    """all_gather_with_grad with uneven rows: values in rank order, gradient = sum over ranks of theirs."""
    from gradsurg.distributed import all_gather_with_grad

    rows = [2 + q for q in range(world)]
    t = torch.full((rows[rank], 3), float(rank), dtype=torch.float64, requires_grad=True)
    g = all_gather_with_grad(t)
    weight = torch.arange(g.numel(), dtype=torch.float64).view_as(g) * (rank + 1)  # rank-dependent use
    (g * weight).sum().backward()
    return {"gathered": g.detach(), "grad": t.grad.clone(), "rows": rows}


def error_cases(world, rank):
    """Each must raise on every rank (no hang). Returns the messages seen."""
    out = {}
    x = torch.randn(3, 4, dtype=torch.float64)
    bad_d = torch.randn(3, 5 if rank == 1 else 4, dtype=torch.float64)
    nan = x.clone()
    if rank == 1:
        nan[0, 0] = float("nan")
    trials = {
        "d_mismatch": lambda: gradsurg.info_nce(bad_d, bad_d.clone(), gather_across_devices=True),
        "nan_on_rank1": lambda: gradsurg.info_nce(nan, x, gather_across_devices=True),
        "grad_mismatch": lambda: gradsurg.info_nce(x.clone().requires_grad_(rank == 0), x,
                                                   gather_across_devices=True),
        "empty_rank": lambda: gradsurg.info_nce(x[: 0 if rank == 1 else 3], x[: 0 if rank == 1 else 3],
                                                gather_across_devices=True),
    }
    for key, fn in trials.items():
        try:
            fn()
            out[key] = None
        except (ValueError, TypeError) as err:
            out[key] = f"{type(err).__name__}: {err}"
    return out


def worker(rank, world, port, outdir):
    init(rank, world, port)
    results = {"cases": {case: run_case(world, rank, case) for case in CASES}}
    results["dtypes"] = {key: run_case(world, rank, DTYPE_CASE, dt) for key, (dt, _) in DTYPES.items()}
    results["ddp"] = {layout: ddp_case(world, rank, layout) for layout in ("even", "uneven")}
    results["gather"] = gather_case(world, rank)
    sub = dist.new_group([0, 1])  # every rank takes part in creating it; only 0 and 1 use it
    if rank in (0, 1):
        results["subgroup"] = run_case_group(rank, SUBGROUP_CASE, sub)
    with torch.no_grad():  # evaluation: every rank without gradients, no collective in backward
        results["no_grad"] = run_case_no_grad(world, rank, CASES[0])
    results["errors"] = error_cases(world, rank)
    finish(rank, outdir, results)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def spawned(request):
    world = request.param
    return world, run_ranks(worker, world)


def reference(world, case, dtype=torch.float64):
    """Single-process loss and gradients on the concatenated batch."""
    name, symmetric, with_neg, reduction, layout = case
    n_r, k_r, a, p, z, w = global_batch(world, case)
    a, p, z = a.to(dtype), p.to(dtype), z.to(dtype)
    leaves = [a.clone().requires_grad_(), p.clone().requires_grad_()]
    if sum(k_r):
        leaves.append(z.clone().requires_grad_())
    loss = gradsurg.paradigm_loss(*leaves, paradigm=make_paradigm(name), symmetric=symmetric, reduction=reduction)
    grads = torch.autograd.grad(loss, leaves, w if reduction == "none" else torch.ones_like(loss))
    rows = gradsurg.paradigm_loss(a, p, z if sum(k_r) else None, paradigm=make_paradigm(name),
                                  symmetric=symmetric, reduction="none")
    return n_r, k_r, loss.detach(), rows, grads


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c))
def test_matches_single_process(spawned, case):
    world, per_rank = spawned
    name, symmetric, with_neg, reduction, layout = case
    n_r, k_r, loss, rows, grads = reference(world, case)
    got = [per_rank[r]["cases"][case] for r in range(world)]
    # loss: each rank's value, and the mean over ranks (= the global mean for 'mean')
    n = sum(n_r)
    for r in range(world):
        mine = local_slice(rows, n_r, r)
        want = {"mean": mine.sum() * world / n, "sum": mine.sum(), "none": mine}[reduction]
        assert rel_err(got[r]["loss"], want) < TOL
    if reduction == "mean":
        assert rel_err(sum(g["loss"] for g in got) / world, loss) < TOL
    if reduction == "sum":
        assert rel_err(sum(g["loss"] for g in got), loss) < TOL
    # gradients: the owners' rows, concatenated in rank order
    scale = 1.0 / world if reduction == "mean" else 1.0  # DDP's averaging
    ga = torch.cat([g["grads"][0] for g in got]) * scale
    gp = torch.cat([g["grads"][1] for g in got]) * scale
    assert rel_err(ga, grads[0]) < TOL
    assert rel_err(gp, grads[1]) < TOL
    if sum(k_r):
        gz = torch.cat([got[r]["grads"][2] for r in range(world) if k_r[r]]) * scale
        assert rel_err(gz, grads[2]) < TOL


@pytest.mark.parametrize("key", list(DTYPES))
def test_low_precision(spawned, key):
    """float32 / bfloat16 inputs: same dtype out, within that dtype's tolerance of one process."""
    world, per_rank = spawned
    dtype, tol = DTYPES[key]
    n_r, k_r, loss, rows, grads = reference(world, DTYPE_CASE, dtype)
    got = [per_rank[r]["dtypes"][key] for r in range(world)]
    assert all(g["loss"].dtype == dtype and g["grads"][0].dtype == dtype for g in got)
    assert rel_err(sum(g["loss"].double() for g in got) / world, loss) < tol
    for i in range(3):
        mine = torch.cat([got[r]["grads"][i] for r in range(world) if i < 2 or k_r[r]]) / world
        assert rel_err(mine, grads[i]) < tol, i


@pytest.mark.parametrize("layout", ["even", "uneven"])
def test_ddp_parameter_gradients(spawned, layout):
    world, per_rank = spawned
    n_r, k_r = SIZES[world][layout]
    g = torch.Generator().manual_seed(7)
    xa = torch.randn(sum(n_r), 5, generator=g, dtype=torch.float64)
    xp = xa + 0.5 * torch.randn(sum(n_r), 5, generator=g, dtype=torch.float64)
    xz = torch.randn(sum(k_r), 5, generator=g, dtype=torch.float64)
    torch.manual_seed(3)
    enc = torch.nn.Linear(5, 4).double()
    loss = gradsurg.info_nce(enc(xa), enc(xp), enc(xz), symmetric=True)
    loss.backward()
    # DDP already averaged: every rank holds the same, single-process gradient
    for r in range(world):
        got = per_rank[r]["ddp"][layout]["grads"]
        assert rel_err(got[0], enc.weight.grad) < TOL
        assert rel_err(got[1], enc.bias.grad) < TOL
    assert rel_err(sum(p["ddp"][layout]["loss"] for p in per_rank) / world, loss) < TOL


def test_subgroup(spawned):
    """group=: a two-rank subgroup of the world behaves as a two-process world."""
    world, per_rank = spawned
    n_r, k_r, loss, rows, grads = reference(2, SUBGROUP_CASE)
    got = [per_rank[r]["subgroup"] for r in (0, 1)]
    assert rel_err(sum(g["loss"] for g in got) / 2, loss) < TOL
    for i in range(3):
        mine = torch.cat([got[r]["grads"][i] for r in (0, 1) if i < 2 or k_r[r]]) / 2
        assert rel_err(mine, grads[i]) < TOL, i


def test_no_grad_loss_value(spawned):
    world, per_rank = spawned
    n_r, k_r, loss, rows, grads = reference(world, CASES[0])
    assert not per_rank[0]["no_grad"].requires_grad
    assert rel_err(sum(p["no_grad"] for p in per_rank) / world, loss) < TOL


def test_all_gather_with_grad(spawned):
    world, per_rank = spawned
    rows = per_rank[0]["gather"]["rows"]
    want = torch.cat([torch.full((rows[q], 3), float(q), dtype=torch.float64) for q in range(world)])
    base = torch.arange(want.numel(), dtype=torch.float64).view_as(want)
    total = base * sum(r + 1 for r in range(world))  # the gradient summed over every rank's use
    for r in range(world):
        assert torch.equal(per_rank[r]["gather"]["gathered"], want)
        start = sum(rows[:r])
        assert torch.equal(per_rank[r]["gather"]["grad"], total[start: start + rows[r]])


def test_errors_raise_on_every_rank(spawned):
    world, per_rank = spawned
    for r in range(world):
        errs = per_rank[r]["errors"]
        assert errs["d_mismatch"] and "embedding sizes differ" in errs["d_mismatch"]
        assert errs["nan_on_rank1"] and ("NaN" in errs["nan_on_rank1"] if r == 1 else "rank(s) [1]" in
                                         errs["nan_on_rank1"])
        assert errs["grad_mismatch"] and "need gradients" in errs["grad_mismatch"]
        assert errs["empty_rank"] and ("empty" in errs["empty_rank"] if r == 1 else "rank(s) [1]" in
                                       errs["empty_rank"])


def test_single_process_fallback():
    """Without a process group the keyword changes nothing."""
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    a = gradsurg.info_nce(x, y, gather_across_devices=True)
    b = gradsurg.info_nce(x, y)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="group="):
        gradsurg.info_nce(x, y, group=object())
