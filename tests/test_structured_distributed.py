"""Structured candidates gathered across 2 gloo processes (CPU), against sentence-transformers 6.3's own
gathered losses in the same processes: MNRL (directions, partition modes, hardness, hard-negative columns)
and GIST, each rank's loss and gradients (float64, 1e-10); and masks from keys gathered with the rows."""
from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

pytest.importorskip("sentence_transformers")

sys.path.insert(0, os.path.dirname(__file__))
from conftest import bare_st_gist  # noqa: E402
from test_distributed import finish, init, raised, run_ranks  # noqa: E402

ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
MNRL_CASES = [
    (("query_to_doc",), "joint", None, 0.0, 0),
    (("query_to_doc",), "joint", "hard_negatives", 9.0, 2),
    (ALL, "joint", "in_batch_negatives", 5.0, 1),
    (("query_to_doc", "doc_to_query"), "per_direction", "all_negatives", 5.0, 2),
    # one paradigm (structured.mnrl_route): the tilt on every negative; symmetric InfoNCE
    (("query_to_doc",), "joint", "all_negatives", 5.0, 2),
    (("query_to_doc", "doc_to_query"), "per_direction", None, 0.0, 1),
]
GIST_CASES = [(dict(), 1), (dict(margin_strategy="relative", margin=0.1, contrast_anchors=False), 1)]
N, D = 4, 5


def columns(rank, k, seed):
    g = torch.Generator().manual_seed(seed)
    full = [torch.randn(2 * N, D, generator=g, dtype=torch.float64) for _ in range(2 + k)]
    full[1] = full[0] + 0.7 * full[1]
    return [c[rank * N:(rank + 1) * N].clone().requires_grad_() for c in full], [c.clone() for c in full]


def guide_of(cols, seed):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(D, 3, generator=g, dtype=torch.float64)
    return [c.detach() @ proj for c in cols]


def st_gist(cols, guide, kw):
    from sentence_transformers.sentence_transformer.losses import gist_embed as gm

    loss = bare_st_gist(gm.GISTEmbedLoss, gather_across_devices=True, **kw)
    loss.model, loss.guide = "model", "guide"
    loss.must_retokenize = False
    gm.embed_columns = lambda m, f: list(cols) if m == "model" else list(guide)
    return loss([{}] * len(cols), None)


def record(ref, ours, grads, grads_ref):
    """(reference value, our value, max |difference| of each column's gradient)."""
    return float(ref.detach()), float(ours.detach()), [float((a - b).abs().max()) for a, b in zip(grads, grads_ref)]


def worker(rank, world, port, outdir):
    init(rank, world, port)
    import gradsurg
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    out = {"mnrl": [], "gist": []}
    for c, (dirs, pm, hm, hs, k) in enumerate(MNRL_CASES):
        cols, _ = columns(rank, k, 100 + c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = MultipleNegativesRankingLoss(None, gather_across_devices=True, directions=dirs, partition_mode=pm,
                                               hardness_mode=hm, hardness_strength=hs
                                               ).compute_loss_from_embeddings(cols, None)
            g_ref = torch.autograd.grad(ref, cols)
            ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], directions=dirs, partition_mode=pm,
                                     hardness_mode=hm, hardness_strength=hs, gather_across_devices=True,
                                     chunk_bytes=200)
        g = torch.autograd.grad(ours, cols)
        out["mnrl"].append(record(ref, ours, g, g_ref))
    for c, (kw, k) in enumerate(GIST_CASES):
        cols, _ = columns(rank, k, 200 + c)
        guide = guide_of(cols, 7)
        ref = st_gist(cols, guide, kw)
        g_ref = torch.autograd.grad(ref, cols)
        ours = gradsurg.gist(cols[0], cols[1], cols[2:], guide=guide, gather_across_devices=True, **kw)
        g = torch.autograd.grad(ours, cols)
        out["gist"].append(record(ref, ours, g, g_ref))
    # keys gathered with the rows: rank r's anchor 0 duplicates rank 0's anchor 0 (same text)
    cols, full = columns(rank, 1, 300)
    keys_full = [torch.arange(2 * N) + 100 * j for j in range(3)]
    keys_full[0][N] = keys_full[0][0]
    keys = [kf[rank * N:(rank + 1) * N] for kf in keys_full]
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], directions=ALL, keys=keys, gather_across_devices=True)
    out["keys"] = float(ours)
    lab_full = torch.tensor([0, 1, 2, 0, 1, 3, 4, 0])
    lab = lab_full[rank * N:(rank + 1) * N]
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], labels=lab, gather_across_devices=True)
    grads = torch.autograd.grad(ours, cols)
    out["labels"] = (float(ours.detach()), [g.detach() for g in grads])
    # an invalid input on one rank: every rank raises (no hang), rank 1 with its own message
    bad = cols[2][:2] if rank == 1 else cols[2]
    calls = {
        "shape": lambda: gradsurg.info_nce(cols[0], cols[1], [bad], directions=ALL, gather_across_devices=True),
        "mask": lambda: gradsurg.info_nce(cols[0], cols[1], [cols[2]], gather_across_devices=True,
                                          negative_mask=torch.zeros(N, 2 * N * 2 - rank, dtype=torch.bool)),
        "gist": lambda: gradsurg.gist(cols[0], cols[1], [bad], guide=guide_of(cols, 1), gather_across_devices=True),
    }
    out["errors"] = {name: raised(fn) for name, fn in calls.items()}
    finish(rank, outdir, out)


@pytest.fixture(scope="module")
def spawned():
    return run_ranks(worker, 2)


@pytest.mark.slow
def test_gathered_mnrl_and_gist_equal_st(spawned):
    for rank in spawned:
        for ref, ours, errs in rank["mnrl"] + rank["gist"]:
            assert abs(ref - ours) < 1e-10 and max(errs) < 1e-10


@pytest.mark.slow
def test_gathered_keys_equal_one_process(spawned):
    """The mean over ranks of the gathered losses is the one-process loss on the global batch."""
    import gradsurg

    _, full = columns(0, 1, 300)
    keys_full = [torch.arange(2 * N) + 100 * j for j in range(3)]
    keys_full[0][N] = keys_full[0][0]
    want = gradsurg.info_nce(full[0], full[1], full[2:], directions=ALL, keys=keys_full)
    got = sum(r["keys"] for r in spawned) / 2
    assert abs(got - float(want)) < 1e-10


@pytest.mark.slow
def test_one_rank_invalid_raises_on_every_rank(spawned):
    for name in ("shape", "mask", "gist"):
        assert spawned[0]["errors"][name] is not None and spawned[1]["errors"][name] is not None, name
    assert "hard_negatives[0] must have the shape" in spawned[1]["errors"]["shape"]
    assert "rank(s) [1] are invalid" in spawned[0]["errors"]["shape"]
    assert "negative_mask must be a bool tensor" in spawned[1]["errors"]["mask"]


@pytest.mark.slow
def test_gathered_labels_equal_one_process(spawned):
    """labels= gathered: the mean over ranks is the global loss, and the rank gradients averaged (DDP)
    are the global gradient of each rank's rows."""
    import gradsurg

    _, full = columns(0, 1, 300)
    leaves = [c.clone().requires_grad_() for c in full]
    lab_full = torch.tensor([0, 1, 2, 0, 1, 3, 4, 0])
    want = gradsurg.info_nce(leaves[0], leaves[1], leaves[2:], labels=lab_full)
    g_want = torch.autograd.grad(want, leaves)
    assert abs(sum(r["labels"][0] for r in spawned) / 2 - float(want.detach())) < 1e-10
    for rank, r in enumerate(spawned):
        for g, gw in zip(r["labels"][1], g_want):
            # each rank's own rows: DDP's average over 2 ranks of the summed (reduce-scattered) gradients
            assert float((g / 2 - gw[rank * N:(rank + 1) * N]).abs().max()) < 1e-10
