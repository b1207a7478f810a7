"""False-negative masking: negative_mask=, keys= (duplicates), guide= (GIST), in the chunked engine.

Oracles: sentence-transformers 6.3's GISTEmbedLoss and CachedGISTEmbedLoss (their own loss
code, fed the embeddings through a patched ``embed_columns`` / their ``calculate_loss``), and
dense masked formulas written here; float64, 1e-10.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import gradsurg

from conftest import assert_same_loss, bare_st_gist

gist_mod = pytest.importorskip("sentence_transformers.sentence_transformer.losses.gist_embed")
cgist_mod = pytest.importorskip("sentence_transformers.sentence_transformer.losses.cached_gist_embed")
mnrl_mod = pytest.importorskip("sentence_transformers.sentence_transformer.losses.multiple_negatives_ranking")

ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")


def columns(n=8, d=5, k=1, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    cols = [base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2 + k)]
    return [c.to(dtype).requires_grad_() for c in cols]


def dense_masked(a, p, negs, tau, drop):
    """Plain masked InfoNCE over cat(p, *negs): dropped logits -inf, the positive kept."""
    c = torch.cat([p, *negs])
    l = F.normalize(a, dim=1) @ F.normalize(c, dim=1).T / tau
    n = a.shape[0]
    drop = drop.clone()
    drop[torch.arange(n), torch.arange(n)] = False
    l = l.masked_fill(drop, -torch.inf)
    return (torch.logsumexp(l, dim=1) - l[torch.arange(n), torch.arange(n)]).mean()


def test_negative_mask_drops_and_never_the_positive():
    cols = columns(k=1)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(8, 16, generator=g) < 0.3
    mask[0, 0] = True  # on the positive: ignored (the positive is never dropped)
    ref = dense_masked(cols[0], cols[1], cols[2:], 0.05, mask)
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], negative_mask=mask, chunk_bytes=100)
    assert_same_loss(ours, ref, cols, cols)
    none = gradsurg.info_nce(cols[0], cols[1], cols[2:], negative_mask=torch.zeros(8, 16, dtype=torch.bool))
    assert abs(float((none - gradsurg.info_nce(cols[0], cols[1], torch.cat(cols[2:]))).detach())) < 1e-12


def test_negative_mask_errors():
    cols = columns(k=1)
    with pytest.raises(ValueError, match=r"negative_mask must be a bool tensor of shape \(N, M\) = \(8, 16\)"):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], negative_mask=torch.zeros(8, 8, dtype=torch.bool))


def mnrl_with_drops(cols, directions, key_cols, scale=20.0):
    """A dense copy of ST's MNRL (joint) whose entries with a duplicate key are dropped, the pair kept."""
    q, docs = cols[0], cols[1:]
    n = q.shape[0]
    kq, kd = key_cols[0], torch.cat(key_cols[1:])
    row_keys = torch.stack([key_cols[0], key_cols[1]], 1)
    docs_all = torch.cat(docs)
    cs = lambda x, y: F.normalize(x, dim=1) @ F.normalize(y, dim=1).T  # noqa: E731
    eye = torch.arange(n)

    def dup(cand_keys):
        return (cand_keys[None, :, None] == row_keys[:, None, :]).any(2)

    blocks = []
    m = cs(q, docs_all) * scale
    drop = dup(kd)
    drop[eye, eye] = False
    blocks.append(m.masked_fill(drop, -torch.inf))
    if "query_to_query" in directions:
        m = cs(q, q) * scale
        drop = dup(kq)
        drop[eye, eye] = True
        blocks.append(m.masked_fill(drop, -torch.inf))
    if "doc_to_query" in directions:
        m = cs(docs[0], q) * scale
        drop = dup(kq)
        drop[eye, eye] = False
        blocks.append(m.masked_fill(drop, -torch.inf))
    if "doc_to_doc" in directions:
        m = cs(docs[0], docs_all) * scale
        drop = dup(kd) | torch.eye(n, dtype=torch.bool).repeat(1, len(docs))
        blocks.append(m.masked_fill(drop, -torch.inf))
    pos = blocks[0][eye, eye]
    return (torch.logsumexp(torch.cat(blocks, 1), 1) - pos).mean()


@pytest.mark.parametrize("directions", [("query_to_doc",), ALL, ("query_to_doc", "doc_to_query")])
def test_keys_drop_duplicates(directions):
    texts_a = ["a", "b", "c", "a", "d", "e", "f", "b"]
    texts_p = ["pa", "pb", "pc", "pa", "pd", "x", "pf", "pb2"]
    texts_n = ["n1", "pc", "n3", "n4", "e", "n6", "n7", "n8"]  # a hard negative equal to another's positive
    keys = gradsurg.structured.texts_to_keys(texts_a, texts_p, texts_n)
    cols = columns(k=1, seed=4)
    ref = mnrl_with_drops(cols, directions, keys)
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], directions=directions, keys=keys, scale=20.0,
                             chunk_bytes=150)
    assert_same_loss(ours, ref, cols, cols)


def test_distinct_keys_change_nothing():
    cols = columns(k=1)
    keys = [torch.arange(8), torch.arange(8, 16), torch.arange(16, 24)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = mnrl_mod.MultipleNegativesRankingLoss(None, directions=ALL).compute_loss_from_embeddings(cols, None)
    ours = gradsurg.info_nce(cols[0], cols[1], cols[2:], directions=ALL, keys=keys)
    assert abs(float((ours - st).detach())) < 1e-12


def test_duplicate_keys_from_input_ids():
    ids = torch.tensor([[101, 5, 6, 102, 0], [101, 7, 102, 0, 0], [101, 5, 6, 102, 0]])
    mask = (ids != 0).long()
    ids2 = torch.tensor([[101, 7, 102, 0, 0, 0], [101, 8, 8, 8, 102, 0], [101, 9, 102, 0, 0, 0]])
    k = gradsurg.structured.duplicate_keys([{"input_ids": ids, "attention_mask": mask},
                                            {"input_ids": ids2, "attention_mask": (ids2 != 0).long()}])
    assert k[0][0] == k[0][2] and k[0][1] == k[1][0] and len(set(torch.cat(k).tolist())) == 4


# -- GIST ---------------------------------------------------------------------------------------

def st_gist(cols, guide, monkeypatch, **kw):
    """sentence-transformers' GISTEmbedLoss.forward on given embeddings (embed_columns patched)."""
    loss = bare_st_gist(gist_mod.GISTEmbedLoss, **kw)
    loss.model, loss.guide = "model", "guide"
    loss.must_retokenize = False
    monkeypatch.setattr(gist_mod, "embed_columns", lambda m, f: list(cols) if m == "model" else list(guide))
    return loss([{}] * len(cols), None)


def st_cached_gist(cols, guide, mini_batch_size, **kw):
    """CachedGISTEmbedLoss.calculate_loss on given embeddings, split into mini-batches."""
    loss = bare_st_gist(cgist_mod.CachedGISTEmbedLoss, **kw)
    loss.mini_batch_size = mini_batch_size
    loss.show_progress_bar = False
    split = lambda t: list(t.split(mini_batch_size))  # noqa: E731
    return loss.calculate_loss([split(c) for c in cols], [split(g) for g in guide])


def guide_of(cols, seed=9):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(cols[0].shape[1], 4, generator=g, dtype=torch.float64)
    return [(c.detach() @ proj + 0.3 * torch.randn(c.shape[0], 4, generator=g, dtype=torch.float64)) for c in cols]


GIST_CASES = [
    dict(),
    dict(margin_strategy="absolute", margin=0.1),
    dict(margin_strategy="relative", margin=0.05, temperature=0.05),
    dict(contrast_anchors=False, margin=-0.2),
    dict(contrast_positives=False, margin_strategy="relative", margin=0.2),
]


@pytest.mark.parametrize("kw", GIST_CASES, ids=str)
@pytest.mark.parametrize("k", [0, 1])  # GISTEmbedLoss takes at most one negative column (the cached one more)
def test_gist_equals_st(kw, k, monkeypatch):
    cols = columns(k=k, seed=k + 1)
    guide = guide_of(cols)
    ref = st_gist(cols, guide, monkeypatch, **kw)
    ours = gradsurg.gist(cols[0], cols[1], cols[2:], guide=guide, chunk_bytes=100, **kw)
    assert_same_loss(ours, ref, cols, cols)


@pytest.mark.parametrize("kw", GIST_CASES[:3], ids=str)
@pytest.mark.parametrize("k", [0, 2])
def test_cached_gist_equals_st(kw, k):
    cols = columns(n=10, k=k, seed=7)
    guide = guide_of(cols)
    leaves = [c.detach().clone().requires_grad_() for c in cols]
    ref = st_cached_gist([leaves[0]] + leaves[1:], guide, 3, **kw)
    # calculate_loss concatenates the chunks itself: differentiate through the split leaves
    ours = gradsurg.gist(cols[0], cols[1], cols[2:], guide=guide, chunk_bytes=120, **kw)
    assert_same_loss(ours, ref, cols, leaves)


def test_guide_on_mnrl_directions_is_gists_rule():
    """info_nce(guide=...) on query_to_doc alone is GIST without the extra blocks."""
    cols = columns(k=1, seed=2)
    guide = guide_of(cols)
    a = gradsurg.info_nce(cols[0], cols[1], cols[2:], guide=guide, margin=0.05, temperature=0.02)
    b = gradsurg.gist(cols[0], cols[1], cols[2:], guide=guide, margin=0.05, temperature=0.02,
                      contrast_anchors=False, contrast_positives=False)
    assert abs(float((a - b).detach())) < 1e-12


def test_guide_errors():
    cols = columns(k=1)
    with pytest.raises(ValueError, match="guide must be a list of 3"):
        gradsurg.info_nce(cols[0], cols[1], cols[2:], guide=[cols[0]])
    with pytest.raises(ValueError, match="margin_strategy must be 'absolute' or 'relative'"):
        gradsurg.gist(cols[0], cols[1], cols[2:], guide=guide_of(cols), margin_strategy="both")
