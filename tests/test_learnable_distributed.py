"""Learnable temperature / SigLIP scale and bias with gather_across_devices: 2 gloo processes on CPU
against one process on the concatenated batch (float64, 1e-9 relative).

With reduction='mean' rank r returns ``(W/N) sum_{i in r} L_i``: its gradient on its own rows is W
times the single-process gradient, and the hyper-parameters' gradients averaged over the ranks (what
DDP does to a parameter) equal the single-process ones. Detached negatives (a per-rank queue) too."""
from __future__ import annotations

import datetime
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gradsurg

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402
from test_distributed import finish, free_port  # noqa: E402

WORLD = 2
N_R, K_R = [3, 5], [2, 1]
CASES = [("info_nce", False, True), ("info_nce", True, True), ("info_nce", True, False),
         ("siglip", False, True), ("siglip", True, False)]  # (loss, symmetric, negatives need grad)


def batch():
    g = torch.Generator().manual_seed(5)
    n, k = sum(N_R), sum(K_R)
    a = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return a, a + 0.7 * torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(k, 6, generator=g,
                                                                                            dtype=torch.float64)


def part(t, counts, rank):
    start = sum(counts[:rank])
    return t[start: start + counts[rank]]


def loss_of(name, symmetric, a, p, z, hyper, **kw):
    if name == "info_nce":
        return gradsurg.info_nce(a, p, z, temperature=hyper[0], symmetric=symmetric, **kw)
    return gradsurg.siglip(a, p, z, scale=hyper[0], bias=hyper[1], symmetric=symmetric, **kw)


def hyper_of(name):
    vals = [0.2] if name == "info_nce" else [8.0, -4.0]
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in vals]


def worker(rank, port, outdir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    a, p, z = batch()
    out = {}
    for case in CASES:
        name, symmetric, neg_grad = case
        leaves = [part(a, N_R, rank).clone().requires_grad_(), part(p, N_R, rank).clone().requires_grad_()]
        zl = part(z, K_R, rank).clone().requires_grad_(neg_grad)
        hyper = hyper_of(name)
        loss = loss_of(name, symmetric, leaves[0], leaves[1], zl, hyper, gather_across_devices=True)
        wrt = leaves + ([zl] if neg_grad else []) + hyper
        out[case] = (loss.detach(), [g.detach() for g in torch.autograd.grad(loss, wrt)])
    finish(rank, outdir, out)


def test_learnable_hyper_parameters_gathered():
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(worker, args=(free_port(), tmp), nprocs=WORLD, start_method="spawn")
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    a, p, z = batch()
    for case in CASES:
        name, symmetric, neg_grad = case
        a1, p1 = a.clone().requires_grad_(), p.clone().requires_grad_()
        z1 = z.clone().requires_grad_(neg_grad)
        hyper = hyper_of(name)
        # single process: the global batch's negatives in rank order
        ref = loss_of(name, symmetric, a1, p1, z1, hyper)
        wrt = [a1, p1] + ([z1] if neg_grad else []) + hyper
        ref_g = torch.autograd.grad(ref, wrt)
        total = sum(r[case][0] for r in ranks) / WORLD
        assert rel_err(total, ref) <= 1e-9, case
        nh = len(hyper)
        for h in range(nh):  # DDP's average of the hyper-parameters' gradients
            avg = sum(r[case][1][-nh + h] for r in ranks) / WORLD
            assert rel_err(avg, ref_g[-nh + h]) <= 1e-9, (case, h)
        for r in range(WORLD):
            counts = [N_R, N_R] + ([K_R] if neg_grad else [])
            for k, cnt in enumerate(counts):
                assert rel_err(ranks[r][case][1][k] / WORLD, part(ref_g[k], cnt, r)) <= 1e-9, (case, r, k)
