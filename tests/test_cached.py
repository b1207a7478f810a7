"""cached_step on a tiny random BERT in float64: identical parameter gradients to the uncached step.

With dropout on, the reference embeds the same chunks with autograd from the
same random state (so the dropout masks are the same); with dropout off the
reference is the plain whole-batch step. Tolerance 1e-10 relative (float64).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch
from transformers import BertConfig, BertModel

import gradsurg
from gradsurg import dissipation as D
from gradsurg import ratio as R
from gradsurg import weight as W
from gradsurg.cached import cached_step, split_batch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import rel_err  # noqa: E402

TOL = 1e-10
SEQ = 7


def tiny_bert(dropout: float = 0.1) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=16, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    model = BertModel(cfg, add_pooling_layer=False).double()
    model.train()
    return model


def tokens(n: int, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, SEQ), generator=g)
    mask = torch.ones(n, SEQ, dtype=torch.long)
    mask[::3, SEQ - 2:] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def encoder(model):
    def encode(batch):
        out = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1)  # mean pooling
    return encode


LOSSES = {
    "info_nce": lambda a, p: gradsurg.info_nce(a, p),
    "mat_symmetric": lambda a, p: gradsurg.mat(a, p, symmetric=True),
    "custom": lambda a, p: gradsurg.paradigm_loss(
        a, p, paradigm=gradsurg.Paradigm(D.Margin(0.3), W.Softmax(0.1), R.Constant(1.5))),
}


def param_grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def reference_step(encode, inputs, loss_fn, mbs):
    """The uncached step that embeds the same chunks with autograd (same dropout masks)."""
    embs = [torch.cat([encode(ch) for ch in split_batch(col, mbs)]) for col in inputs]
    loss = loss_fn(*embs)
    loss.backward()
    return loss.detach()


def compare(model, run_a, run_b):
    torch.manual_seed(123)
    model.zero_grad()
    la = run_a()
    ga, rng_a = param_grads(model), torch.get_rng_state()
    torch.manual_seed(123)
    model.zero_grad()
    lb = run_b()
    gb, rng_b = param_grads(model), torch.get_rng_state()
    assert ga.keys() == gb.keys() and len(ga) > 10
    assert rel_err(la, lb) < TOL
    scale = max(float(g.abs().max()) for g in gb.values())
    for k in ga:  # relative to the tensor's scale, floored for gradients that are zero up to rounding
        floor = max(float(gb[k].abs().max()), 1e-6 * scale)
        assert float((ga[k] - gb[k]).abs().max()) < TOL * floor, k
    assert torch.equal(rng_a, rng_b)  # the random stream continues identically
    return ga


@pytest.mark.parametrize("loss_name", list(LOSSES))
@pytest.mark.parametrize("mbs", [1, 3, 8])
def test_dropout_on_matches_uncached(loss_name, mbs):
    model = tiny_bert(0.1)
    enc, batch, loss_fn = encoder(model), tokens(8), LOSSES[loss_name]
    compare(model,
            lambda: cached_step(enc, [batch, batch], loss_fn, mini_batch_size=mbs),
            lambda: reference_step(enc, [batch, batch], loss_fn, mbs))


def test_dropout_masks_matter():
    """Sanity: with another random state the gradients do differ (the test above is not vacuous)."""
    model = tiny_bert(0.1)
    enc, batch = encoder(model), tokens(8)
    torch.manual_seed(1)
    cached_step(enc, [batch, batch], LOSSES["info_nce"], mini_batch_size=3)
    g1 = param_grads(model)
    model.zero_grad()
    torch.manual_seed(2)
    cached_step(enc, [batch, batch], LOSSES["info_nce"], mini_batch_size=3)
    g2 = param_grads(model)
    assert max(rel_err(g1[k], g2[k]) for k in g1) > 1e-3


@pytest.mark.parametrize("mbs", [2, 5])
def test_dropout_off_matches_whole_batch_step(mbs):
    model = tiny_bert(0.0)
    enc, batch = encoder(model), tokens(10)
    neg = tokens(4, seed=9)
    loss_fn = lambda a, p, z: gradsurg.info_nce(a, p, z, symmetric=True)  # noqa: E731
    compare(model,
            lambda: cached_step(enc, [batch, tokens(10, seed=5), neg], loss_fn, mini_batch_size=mbs),
            lambda: cached_step(enc, [batch, tokens(10, seed=5), neg], loss_fn, mini_batch_size=None))


def test_loss_parameters_and_scale():
    """A parameter inside loss_fn gets its gradient; scale_loss scales every gradient, not the value."""
    model = tiny_bert(0.1)
    enc, batch = encoder(model), tokens(6)
    w = torch.nn.Parameter(torch.tensor(1.7, dtype=torch.float64))
    loss_fn = lambda a, p: w * gradsurg.info_nce(a, p)  # noqa: E731

    def run(cached, factor=1.0):
        w.grad = None
        if cached:
            return cached_step(enc, [batch, batch], loss_fn, 4, scale_loss=lambda l: l * factor)
        return reference_step(enc, [batch, batch], lambda a, p: loss_fn(a, p) * factor, 4)

    g = compare(model, lambda: run(True), lambda: run(False))
    wg = w.grad.clone()
    torch.manual_seed(123)
    model.zero_grad()
    w.grad = None
    loss = run(True, factor=0.25)
    assert rel_err(w.grad, 0.25 * wg) < TOL
    assert rel_err(param_grads(model)["encoder.layer.0.output.dense.weight"],
                   0.25 * g["encoder.layer.0.output.dense.weight"]) < TOL
    assert loss.requires_grad is False


def test_input_kinds_and_embeddings():
    """Tensor and list-of-string columns; return_embeddings gives the first-pass embeddings."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(20, 5).double()
    words = [f"w{i}" for i in range(9)]

    def encode(chunk):
        if isinstance(chunk, list):
            chunk = torch.tensor([int(w[1:]) for w in chunk])
        return table(chunk)

    ids = torch.arange(9) + 10
    loss, embs = cached_step(encode, [words, ids], lambda a, p: gradsurg.mpt(a, p), 2, return_embeddings=True)
    g_cached = table.weight.grad.clone()
    table.zero_grad()
    ref = gradsurg.mpt(encode(words), encode(ids))
    ref.backward()
    assert rel_err(loss, ref) < TOL and rel_err(g_cached, table.weight.grad) < TOL
    assert embs[0].shape == (9, 5) and torch.equal(embs[1], table(ids).detach())


def test_clear_errors():
    enc = lambda t: t  # noqa: E731
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="mini_batch_size"):
        cached_step(enc, [x, x], gradsurg.info_nce, 0)
    with pytest.raises(TypeError, match="list of columns"):
        cached_step(enc, x, gradsurg.info_nce, 2)
    with pytest.raises(TypeError, match="scalar"):
        cached_step(enc, [x, x], lambda a, p: gradsurg.info_nce(a, p, reduction="none"), 2)
    with pytest.raises(TypeError, match="rows, d"):
        cached_step(lambda t: t[:, 0], [x, x], gradsurg.info_nce, 2)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_deferred_cached_loss(factor):
    """cached_loss: the caller back-propagates (any grad_output); same gradients as cached_step."""
    from gradsurg.cached import cached_loss

    model = tiny_bert(0.1)
    enc, batch, neg = encoder(model), tokens(7), tokens(3, seed=4)
    loss_fn = lambda a, p, z: gradsurg.info_nce(a, p, z, symmetric=True)  # noqa: E731

    def deferred():
        loss = cached_loss(enc, [batch, batch, neg], loss_fn, 3)
        assert loss.requires_grad and loss.dim() == 0
        (loss * factor).backward()
        return loss.detach()

    def immediate():
        return cached_step(enc, [batch, batch, neg], loss_fn, 3, scale_loss=lambda l: l * factor)

    compare(model, deferred, immediate)
    loss = cached_loss(enc, [batch, batch, neg], loss_fn, 3)
    loss.backward()
    with pytest.raises(RuntimeError):
        loss.backward()
