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


# ------------------------------------------------ tokenised columns: trimming, nothing kept, random state
def ragged_tokens(n: int, seed: int = 3, width: int = 12) -> dict:
    """Right-padded token ids of random lengths 2..width (sorted so some chunks are short), with extra keys."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    lengths[: n // 2] = torch.clamp(lengths[: n // 2], max=4)  # the first rows are short: their chunks trim
    ids = torch.randint(1, 50, (n, width), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "text": [f"s{i}" for i in range(n)], "prompt_length": 0}


def test_chunks_are_trimmed_to_their_own_longest_sequence():
    batch = ragged_tokens(10)
    lengths = batch["attention_mask"].sum(1)
    chunks = split_batch(batch, 3)
    assert [c["input_ids"].shape[0] for c in chunks] == [3, 3, 3, 1]
    for j, chunk in enumerate(chunks):
        width = int(lengths[3 * j: 3 * j + 3].max())
        assert chunk["input_ids"].shape[1] == width == chunk["attention_mask"].shape[1]
        assert chunk["token_type_ids"].shape[1] == width
        assert torch.equal(chunk["input_ids"], batch["input_ids"][3 * j: 3 * j + 3, :width])
        assert chunk["text"] == batch["text"][3 * j: 3 * j + 3] and chunk["prompt_length"] == 0
    assert chunks[0]["input_ids"].shape[1] <= 4 < batch["input_ids"].shape[1]
    assert all(c["input_ids"].shape[1] == 12 for c in split_batch(batch, 3, trim=False))


@pytest.mark.parametrize("mbs", [2, 3])
def test_trimmed_chunks_give_the_whole_batch_gradients(mbs):
    """Dropout off: trimmed chunks give the plain whole-column step's gradients (float64, 1e-10)."""
    model = tiny_bert(0.0)
    enc = encoder(model)
    a, p = ragged_tokens(8), ragged_tokens(8, seed=4)
    a.pop("text"), a.pop("prompt_length"), p.pop("text"), p.pop("prompt_length")
    loss_fn = lambda x, y: gradsurg.info_nce(x, y, symmetric=True)  # noqa: E731
    compare(model, lambda: cached_step(enc, [a, p], loss_fn, mini_batch_size=mbs),
            lambda: cached_step(enc, [a, p], loss_fn, mini_batch_size=None))


@pytest.mark.parametrize("mbs", [1, 3])
def test_trimmed_chunks_replay_dropout(mbs):
    """Dropout on: the replay of trimmed chunks equals autograd through the same chunks."""
    model = tiny_bert(0.1)
    enc, batch = encoder(model), ragged_tokens(7)
    batch.pop("text"), batch.pop("prompt_length")
    compare(model, lambda: cached_step(enc, [batch, batch], LOSSES["info_nce"], mini_batch_size=mbs),
            lambda: reference_step(enc, [batch, batch], LOSSES["info_nce"], mbs))


def test_nothing_of_a_chunk_is_kept():
    """Like a sentence-transformers model, encode writes its outputs into the chunk it gets; no chunk
    (nor what was written into it) survives its own forward (pass 1) or its own backward (replay)."""
    import gc
    import weakref

    from gradsurg.cached import cached_loss

    model = tiny_bert(0.1)
    base = encoder(model)
    seen: list = []
    alive_at_call: list[int] = []

    def encode(chunk):
        gc.collect()
        alive_at_call.append(sum(r() is not None for r in seen))
        out = model(**{k: chunk[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
        chunk["token_embeddings"] = out  # what sentence-transformers' Transformer module does
        seen.append(weakref.ref(out))
        return base(chunk)

    batch = ragged_tokens(9)
    cached_step(encode, [batch, batch], LOSSES["info_nce"], mini_batch_size=2)
    gc.collect()
    assert len(seen) == 20 and max(alive_at_call) == 0 and all(r() is None for r in seen)
    assert "token_embeddings" not in batch
    seen.clear(), alive_at_call.clear()
    loss = cached_loss(encode, [batch, batch], LOSSES["info_nce"], 2)
    assert sum(r() is not None for r in seen) == 0  # pass 1 keeps only the embeddings
    loss.backward()
    gc.collect()
    assert len(seen) == 20 and max(alive_at_call) == 0 and all(r() is None for r in seen)


def test_cached_loss_under_no_grad_is_the_loss_only():
    from gradsurg.cached import cached_loss

    model = tiny_bert(0.0)
    enc, batch = encoder(model), ragged_tokens(7)
    batch.pop("text"), batch.pop("prompt_length")
    with torch.no_grad():
        value = cached_loss(enc, [batch, batch], LOSSES["info_nce"], 3)
        ref = LOSSES["info_nce"](enc(batch), enc(batch))
    assert not value.requires_grad and rel_err(value, ref) < TOL


def test_cuda_generators_of_the_devices_in_use_are_replayed(monkeypatch):
    """The CUDA path without a GPU: fake generators of devices 0 and 1 (the model's), advanced by every
    forward pass. Each chunk's replay must see its first pass's states, the other devices are not read,
    and after the step the generators are where the first pass left them."""
    from gradsurg import cached as C

    gens = {0: torch.tensor([100]), 1: torch.tensor([0]), 2: torch.tensor([7])}
    reads: list[int] = []

    def get_rng_state(index):
        reads.append(index)
        return gens[index].clone()

    def set_rng_state(state, index):
        gens[index] = state.clone()

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    class FakeDevice:
        device = torch.device("cuda", 1)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(30, 4).double()

        def parameters(self, recurse=True):  # pretend part of the model lives on cuda:0 and cuda:1
            yield from super().parameters(recurse)
            yield FakeDevice()
            yield type("D0", (), {"device": torch.device("cuda", 0)})()

        def forward(self, ids):  # "dropout" from the cuda:1 and cuda:0 generators
            noise = 1.0 + 0.1 * float(gens[1]) + 0.01 * float(gens[0])
            gens[1] += 1
            gens[0] += 3
            return self.table(ids) * noise

    assert [str(d) for d in C.rng_devices(Encoder())] == ["cuda:0", "cuda:1"]
    enc = Encoder()
    ids = torch.arange(10)
    loss_fn = lambda a, p: gradsurg.info_nce(a, p)  # noqa: E731
    cached_step(enc, [ids, ids + 10], loss_fn, mini_batch_size=3)
    g_cached, after = enc.table.weight.grad.clone(), {k: v.clone() for k, v in gens.items()}
    assert 2 not in reads
    assert int(after[1]) == 8 and int(after[0]) == 100 + 3 * 8 and int(after[2]) == 7  # 8 chunks, once each
    enc.table.weight.grad = None
    gens.update({0: torch.tensor([100]), 1: torch.tensor([0])})
    ref = reference_step(enc, [ids, ids + 10], loss_fn, 3)  # autograd through the same chunks
    assert rel_err(enc.table.weight.grad, g_cached) < TOL and torch.isfinite(ref)
    assert all(torch.equal(gens[k], after[k]) for k in gens)


def test_unsplittable_columns_raise():
    flat = {"input_ids": torch.arange(12), "offsets": torch.tensor([0, 5, 9])}
    with pytest.raises(ValueError, match="offsets"):
        cached_step(lambda t: t, [flat, flat], gradsurg.info_nce, 2)
    packed = {"input_ids": torch.arange(12)[None], "cu_seq_lens_q": torch.tensor([0, 5, 12])}
    with pytest.raises(ValueError, match="cu_seq_lens_q"):
        cached_step(lambda t: t, [packed, packed], gradsurg.info_nce, 2)


def test_cached_loss_of_one_chunk_is_the_plain_loss():
    """No column exceeds mini_batch_size: the plain loss (one forward pass), same gradients and random stream."""
    from gradsurg.cached import cached_loss

    model = tiny_bert(0.1)
    enc, batch = encoder(model), ragged_tokens(5)
    batch.pop("text"), batch.pop("prompt_length")
    calls = []

    def counted(chunk):
        calls.append(1)
        return enc(chunk)

    def plain():
        loss = LOSSES["info_nce"](enc(batch), enc(batch))
        loss.backward()
        return loss.detach()

    def deferred():
        loss = cached_loss(counted, [batch, batch], LOSSES["info_nce"], 5)
        loss.backward()
        return loss.detach()

    compare(model, deferred, plain)
    assert len(calls) == 2  # one forward per column, no replay


def test_cached_step_rejects_a_bool_mini_batch_size():
    from gradsurg.cached import cached_step

    enc = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="mini_batch_size"):
        cached_step(enc, [torch.randn(4, 3), torch.randn(4, 3)], lambda a, b: (a - b).sum(), mini_batch_size=True)
