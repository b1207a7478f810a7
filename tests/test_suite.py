"""The seven-task STS suite (gradsurg.train.suite) and ``gradsurg evaluate --suite``."""
from __future__ import annotations

import io
import json
import os
import zlib

import numpy as np
import pytest

from gradsurg.train.config import ConfigError
from gradsurg.train.data import read_sts_pairs
from gradsurg.train.sts import spearman
from gradsurg.train.suite import TASKS, evaluate_suite, find_tasks, format_suite

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "senteval")


class HashEncoder:
    """A deterministic toy encoder: bag of hashed words (no model needed)."""

    pooler = "toy"

    def encode(self, texts, convert_to_numpy=True, batch_size=128, **_):
        out = np.zeros((len(texts), 64))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % 64] += 1.0
            out[i, 0] += 1e-3
        return out


def _write_year(folder, subsets):
    os.makedirs(folder, exist_ok=True)
    for name, rows in subsets.items():
        with open(os.path.join(folder, f"STS.input.{name}.txt"), "w", encoding="utf-8") as fh:
            fh.writelines(f"{a}\t{b}\n" for a, b, _ in rows)
        with open(os.path.join(folder, f"STS.gs.{name}.txt"), "w", encoding="utf-8") as fh:
            fh.writelines(("" if g is None else str(g)) + "\n" for _, _, g in rows)


ROWS_A = [("a cat sits", "a cat sat", 4.0), ("dogs run fast", "a dog runs", 3.0),
          ("the sky is blue", "stocks fell today", 0.0), ("no gold here", "no gold", None),
          ("red apples", "red apples are sweet", 3.5)]
ROWS_B = [("he plays piano", "she plays piano", 3.0), ("rain again", "sunny and warm", 0.5),
          ("a man cooks", "a man is cooking food", 4.5)]


@pytest.fixture()
def suite_dir(tmp_path):
    _write_year(tmp_path / "STS12", {"A": ROWS_A, "B": ROWS_B})
    _write_year(tmp_path / "STS-extra", {"A": ROWS_A})  # not a task: ignored
    _write_year(tmp_path / "STS" / "STS13-en-test", {"B": ROWS_B})  # SentEval's nested layout
    (tmp_path / "stsb").mkdir()
    with open(tmp_path / "stsb" / "stsb-en-test.csv", "w", encoding="utf-8") as fh:
        fh.writelines(f"{a},{b},{g}\n" for a, b, g in ROWS_A + ROWS_B if g is not None)
    return tmp_path


def test_all_setting_is_spearman_over_the_concatenation(suite_dir):
    enc = HashEncoder()
    res = evaluate_suite(enc, str(suite_dir), stream=io.StringIO())
    assert set(res["tasks"]) == {"STS12", "STS13", "STS-B"}
    # oracle: the concatenation of both subsets, the pair without gold dropped
    rows = [r for r in ROWS_A + ROWS_B if r[2] is not None]
    e1 = enc.encode([r[0] for r in rows])
    e2 = enc.encode([r[1] for r in rows])
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    want = 100 * spearman(cos, [r[2] for r in rows])
    assert res["tasks"]["STS12"]["n_pairs"] == len(rows) == 7
    assert res["tasks"]["STS12"]["spearman"] == pytest.approx(want, abs=1e-9)
    # ... which is not the mean of the per-subset correlations
    subs = [read_sts_pairs(str(suite_dir / "STS12" / f"STS.input.{k}.txt"), "senteval") for k in "AB"]
    sub_scores = []
    for p in subs:
        a, b = enc.encode(p.sentences1), enc.encode(p.sentences2)
        c = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        sub_scores.append(100 * spearman(c, p.scores))
    assert abs(np.mean(sub_scores) - want) > 1.0
    assert res["average"] == pytest.approx(np.mean([t["spearman"] for t in res["tasks"].values()]))
    assert res["tasks"]["STS-B"]["label"] == "STS-B test"


def test_missing_tasks_are_reported_and_skipped(suite_dir):
    out = io.StringIO()
    res = evaluate_suite(HashEncoder(), str(suite_dir), stream=out)
    assert set(res["missing"]) == {"STS14", "STS15", "STS16", "SICK-R"}
    assert "STS14: missing, skipped" in out.getvalue()
    table = format_suite([("toy", res)])
    assert "(3 tasks)" in table and "STS14" not in table.splitlines()[0]


def test_years_average_leaves_out_stsb():
    def task(label, v):
        return {"label": label, "spearman": v, "pearson": v, "n_pairs": 10, "path": "x"}

    res = {"tasks": {"STS12": task("STS12", 60.0), "STS13": task("STS13", 70.0), "STS-B": task("STS-B dev", 90.0)},
           "average": 220.0 / 3, "n_tasks": 3, "missing": {}, "errors": {}}
    head, _, row = format_suite([("m", res)], years_average=True).splitlines()
    assert head == "| model | STS12 | STS13 | STS-B dev | Avg. STS12-13 | Avg. |"
    assert row == "| m | 60.00 | 70.00 | 90.00 | 65.00 | 73.33 (3 tasks) |"
    other = dict(res, tasks={"STS-B": task("STS-B dev", 90.0)}, average=90.0, n_tasks=1)
    assert format_suite([("m", res), ("n", other)], years_average=True).splitlines()[-1] == \
        "| n | - | - | 90.00 | - | 90.00 (1 tasks) |"
    assert "Avg. STS" not in format_suite([("m", res)])


def test_unreadable_task_is_reported_not_fatal(suite_dir):
    with open(suite_dir / "STS12" / "STS.gs.A.txt", "a", encoding="utf-8") as fh:
        fh.write("5\n")  # one gold line too many
    res = evaluate_suite(HashEncoder(), str(suite_dir), stream=io.StringIO())
    assert "STS12" in res["errors"] and "lines" in res["errors"]["STS12"]
    assert "STS13" in res["tasks"]


def test_sick_and_explicit_files(suite_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("sick")
    sick = other / "SICK.txt"
    with open(sick, "w", encoding="utf-8") as fh:
        fh.write("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tSemEval_set\n")
        for i, (a, b, g) in enumerate(r for r in ROWS_A + ROWS_B if r[2] is not None):
            fh.write(f"{i}\t{a}\t{b}\t{g}\t{'TEST' if i % 4 else 'TRAIN'}\n")
    dev = other / "stsb-en-dev.csv"
    dev.write_text("a cat,a cat sat,4\nthe sky,stocks fell,0\nred,red apples,3\n")
    found, missing = find_tasks(str(suite_dir), stsb=str(dev), sick=str(sick))
    assert found["SICK-R"][2] == "TEST" and found["STS-B"][0] == str(dev)
    res = evaluate_suite(HashEncoder(), str(suite_dir), stsb=str(dev), sick=str(sick), stream=io.StringIO())
    assert res["tasks"]["SICK-R"]["n_pairs"] == 5  # the TEST rows only
    assert res["tasks"]["STS-B"]["label"] == "STS-B dev"
    with pytest.raises(ConfigError, match="STS-B file"):
        find_tasks(str(suite_dir), stsb=str(other / "nope.csv"))
    with pytest.raises(ConfigError, match="suite folder"):
        find_tasks(str(other / "nope"))


def test_evaluate_cli_suite(suite_dir, tmp_path, monkeypatch, capsys):
    import argparse

    from gradsurg.train import evaluate as ev
    from gradsurg.train import models

    monkeypatch.setattr(models, "load_encoder", lambda *a, **k: HashEncoder())
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    out = tmp_path / "res" / "suite.json"
    args = parser.parse_args(["--suite", str(suite_dir), "--json", str(out), "--no-progress"])
    assert ev.run(args) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert json.loads(out.read_text())["tasks"].keys() == printed["tasks"].keys()
    assert "| toy" not in captured.err and "| minilm |" in captured.err
    args = parser.parse_args(["--suite", str(suite_dir), "--data", "x.csv"])
    assert ev.run(args) == 2


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data/senteval is absent")
def test_shared_senteval_folder_pair_counts():
    found, missing = find_tasks(SHARED)
    assert [t for t in TASKS[:5] if t in found] == list(TASKS[:5])
    counts = {t: len(read_sts_pairs(*found[t])) for t in TASKS[:5]}
    assert counts == {"STS12": 2358, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186}
