"""What the command line tells about itself: ``gradsurg --version``, and every config field with its
type and default in ``gradsurg ablate --list-fields`` (generated from the TrainConfig dataclass)."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import gradsurg
from gradsurg.cli import main
from gradsurg.train.config import TrainConfig, describe_fields, parse_value, preset


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    assert main([flag]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"gradsurg {gradsurg.__version__} (") and f"torch {torch.__version__}" in out
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", gradsurg.__version__)


def test_the_main_help_lists_version(capsys):
    assert main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


def _listed(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"  (\w+): (.+?) = (.*)", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_list_fields_shows_every_dataclass_field_with_type_and_default(capsys):
    assert main(["ablate", "--list-fields"]) == 0
    rows = _listed(capsys.readouterr().out)
    fields = dataclasses.fields(TrainConfig)
    assert list(rows) == [f.name for f in fields]  # all of them, in the dataclass's order
    quick = preset("quick")
    for f in fields:
        assert rows[f.name][0] == str(f.type)
        # the value as shown reads back, through --set's parser, as the preset's value
        assert parse_value(rows[f.name][1]) == getattr(quick, f.name), f.name
    assert rows["train_data"][1] == "packaged:stsb-train" and rows["eval_data"][1] == "packaged:stsb-dev"


def test_list_fields_follows_the_preset_and_the_overrides(capsys):
    assert main(["ablate", "--list-fields", "--preset", "paper", "--set", "lr=1e-5"]) == 0
    out = capsys.readouterr().out
    rows = _listed(out)
    assert rows["model"] == ("str", "bert-base-uncased") and rows["lr"] == ("float", "1e-05")
    assert "preset paper + --set" in out
    assert main(["ablate", "--list-fields", "--set", "nope=1"]) == 2
    assert "unknown config field(s) 'nope'" in capsys.readouterr().err


def test_notes_come_from_the_source_comments():
    notes = {row["name"]: row for row in describe_fields()}
    assert notes["patience"]["group"] == "evaluation"
    assert "without a new best dev score" in notes["patience"]["note"]
    assert "One of: cls, cls_before_pooler, avg, mask" in notes["pooler"]["note"]


def test_ablate_help_points_to_list_fields(capsys):
    with pytest.raises(SystemExit):
        main(["ablate", "--help"])
    out = capsys.readouterr().out
    assert "--list-fields" in out and "every field with its type and default" in " ".join(out.split())
