"""normalizer='global' across processes: 2 gloo processes against one process holding the global batch.

Each rank holds its own anchors (uneven: 3 and 2 rows), positives and hard negatives (2 and 1) and
the dataset indices of its own anchors; the examples move between the ranks from one step to the
next (as a reshuffling sampler moves them), so a rank meets estimates another rank wrote. Three
steps per case, for ``distributed='gather'`` and ``'ring'``, one and two towers, with and without
hard negatives, a float and a learnable temperature. Compared with one process calling the same
loss on the concatenated batch with the same indices (float64, 1e-10 relative):

* the value: the mean over the ranks of their losses is the global mean (rank r returns
  ``(W/N) sum_{i in r} L_i``, gradsurg's gather scaling);
* the gradients: each rank's own rows get W times the global mean's gradient (DDP's average then
  gives the global mean's), the temperature's mean over the ranks is the global mean's;
* the state after every step, on every rank: all of ``u`` (every rank writes the global batch's
  estimates), including the entries never seen (still -inf);
* a ``no_grad`` ``reduction='none'`` call: the local rows, state unchanged;
* errors: an index repeated across the ranks, an index out of range on one rank (raised on both).

The single-process loss itself is checked against an independent formula in test_global_normalizer.py.
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
from test_distributed import init, run_ranks  # noqa: E402

TOL = 1e-10
WORLD, DIM, DATASET, TAU, GAMMA = 2, 4, 10, 0.2, 0.4
N_R, K_R = [3, 2], [2, 1]
#: the global batch's indices per step, in rank order (rank 0's 3, then rank 1's 2)
STEPS = [[0, 1, 2, 3, 4], [3, 5, 0, 1, 6], [7, 1, 4, 2, 8]]
CASES = list(itertools.product(["gather", "ring"], [False, True], [False, True], [False, True]))


def case_id(case):
    mode, symmetric, with_neg, learn = case
    return f"{mode}-{'sym' if symmetric else 'one'}-{'neg' if with_neg else 'noneg'}-{'learn' if learn else 'fixed'}"


def step_data(case, step):
    """The global batch of ``step``: anchors, positives, negatives (or None), the temperature (float or leaf)."""
    mode, symmetric, with_neg, learn = case
    g = torch.Generator().manual_seed(100 * CASES.index(case) + step)
    n, k = sum(N_R), sum(K_R)
    a = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    p = a + 0.8 * torch.randn(n, DIM, generator=g, dtype=torch.float64)
    z = torch.randn(k, DIM, generator=g, dtype=torch.float64) if with_neg else None
    tau = torch.tensor(TAU * (1 + 0.3 * step), dtype=torch.float64) if learn else TAU * (1 + 0.3 * step)
    return a, p, z, tau


def mine(t, counts, rank):
    start = sum(counts[:rank])
    return t[start: start + counts[rank]]


def run_step(case, state, a, p, z, tau, index, **extra):
    """Loss and gradients (a, p[, z][, tau]) of one call on leaves made from the given tensors."""
    mode, symmetric, with_neg, learn = case
    leaves = [a.clone().requires_grad_(), p.clone().requires_grad_()]
    zl = z.clone().requires_grad_() if z is not None else None
    if zl is not None:
        leaves.append(zl)
    tl = tau.clone().requires_grad_() if learn else tau
    if learn:
        leaves.append(tl)
    loss = gradsurg.info_nce(leaves[0], leaves[1], zl, temperature=tl, normalizer="global", state=state,
                             index=index, symmetric=symmetric, **extra)
    grads = torch.autograd.grad(loss, leaves)
    return {"loss": loss.detach(), "grads": [t.detach() for t in grads], "log_u": state.log_u.clone()}


def worker(rank, world, port, outdir):
    init(rank, world, port)
    results = {}
    for case in CASES:
        mode, symmetric = case[0], case[1]
        state = gradsurg.GlobalNormalizer(DATASET, GAMMA, 2 if symmetric else 1)
        for step, idx in enumerate(STEPS):
            a, p, z, tau = step_data(case, step)
            z = mine(z, K_R, rank) if z is not None else None
            index = mine(torch.tensor(idx), N_R, rank)
            results[(case, step)] = run_step(case, state, mine(a, N_R, rank), mine(p, N_R, rank), z, tau, index,
                                             distributed=mode)
        with torch.no_grad():
            rows = gradsurg.info_nce(mine(a, N_R, rank), mine(p, N_R, rank), z, temperature=tau, normalizer="global",
                                     state=state, index=index, symmetric=symmetric, reduction="none",
                                     distributed=mode)
        results[(case, "none")] = {"rows": rows, "log_u": state.log_u.clone()}
    errors = {}
    a, p = torch.randn(N_R[rank], DIM, dtype=torch.float64), torch.randn(N_R[rank], DIM, dtype=torch.float64)
    state = gradsurg.GlobalNormalizer(DATASET, GAMMA)
    for name, index in (("repeated", torch.tensor([[0, 1, 2], [2, 3]][rank])),
                        ("range", torch.tensor([[0, 1, 2], [3, DATASET]][rank]))):
        try:
            gradsurg.info_nce(a, p, normalizer="global", state=state, index=index, distributed="gather")
            errors[name] = None
        except (ValueError, IndexError) as err:
            errors[name] = (type(err).__name__, str(err))
    errors["untouched"] = bool(torch.isinf(state.log_u).all())
    results["errors"] = errors
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    torch.save(results, os.path.join(outdir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def per_rank():
    return run_ranks(worker, WORLD)


def reference(case):
    """One process on the global batch: per step (loss, gradients, log u), and the final no_grad rows."""
    state = gradsurg.GlobalNormalizer(DATASET, GAMMA, 2 if case[1] else 1)
    out = []
    for step, idx in enumerate(STEPS):
        a, p, z, tau = step_data(case, step)
        out.append(run_step(case, state, a, p, z, tau, torch.tensor(idx)))
    with torch.no_grad():
        rows = gradsurg.info_nce(a, p, z, temperature=tau, normalizer="global", state=state,
                                 index=torch.tensor(STEPS[-1]), symmetric=case[1], reduction="none")
    return out, rows


def assert_same_state(got, want, what):
    assert torch.equal(torch.isinf(got), torch.isinf(want)), what
    finite = torch.isfinite(want)
    assert rel_err(got[finite], want[finite]) < TOL, what


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_against_one_process(per_rank, case):
    want, want_rows = reference(case)
    learn, with_neg = case[3], case[2]
    for step in range(len(STEPS)):
        ref = want[step]
        got = [per_rank[r][(case, step)] for r in range(WORLD)]
        assert rel_err(sum(g["loss"] for g in got) / WORLD, ref["loss"]) < TOL, (step, "loss")
        for r in range(WORLD):
            what = (step, r)
            ga, gp = got[r]["grads"][:2]
            assert rel_err(ga, WORLD * mine(ref["grads"][0], N_R, r)) < TOL, (what, "anchors")
            assert rel_err(gp, WORLD * mine(ref["grads"][1], N_R, r)) < TOL, (what, "positives")
            if with_neg:
                assert rel_err(got[r]["grads"][2], WORLD * mine(ref["grads"][2], K_R, r)) < TOL, (what, "negatives")
            assert_same_state(got[r]["log_u"], ref["log_u"], (what, "state"))
        if learn:
            mean_tau = sum(g["grads"][-1] for g in got) / WORLD
            assert rel_err(mean_tau, ref["grads"][-1]) < TOL, (step, "temperature")
            assert ref["grads"][-1].abs() > 1e-3
    for r in range(WORLD):
        last = per_rank[r][(case, "none")]
        assert rel_err(last["rows"], mine(want_rows, N_R, r)) < TOL, (r, "none rows")
        assert_same_state(last["log_u"], want[-1]["log_u"], (r, "no_grad leaves the state"))


@pytest.mark.slow
def test_errors_on_every_rank(per_rank):
    rep = [per_rank[r]["errors"]["repeated"] for r in range(WORLD)]
    assert all(e is not None and e[0] == "ValueError" and "repeated values across the ranks" in e[1] for e in rep)
    rng = [per_rank[r]["errors"]["range"] for r in range(WORLD)]
    assert rng[1] is not None and rng[1][0] == "IndexError" and "out of range" in rng[1][1]
    assert rng[0] is not None and rng[0][0] == "ValueError" and "rank(s) [1]" in rng[0][1]
    assert all(per_rank[r]["errors"]["untouched"] for r in range(WORLD))
