"""The main job's data ships inside the package: STS-B train/dev, gzip'd, the default of every preset
and of ``gradsurg evaluate``; ``.gz`` files are read transparently; data errors name what was tried."""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
import subprocess
import sys

import pytest

from gradsurg.train import ConfigError
from gradsurg.train.config import STSB_DEV, STSB_TRAIN, TrainConfig, preset, preset_names
from gradsurg.train.data import PACKAGED_DIR, read_corpus, read_sts_pairs, resolve_path
from gradsurg.train.testing import tiny_sentences, write_tiny_sts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the SHA-256 of the uncompressed files as distributed (gradsurg/data/README.md, ../shared/data/stsb/)
SHA256 = {"stsb-en-train.csv.gz": "e1e84fec60bbb598735552f54a35f4949904a484750fd2cb11e2720e49f63da6",
          "stsb-en-dev.csv.gz": "d29586e96558c4eb52cf5ea5d14e9c24d3bf0e44f111b017caba43a5adc33226"}


@pytest.mark.parametrize("name, pairs", [("stsb-en-train.csv.gz", 5749), ("stsb-en-dev.csv.gz", 1500)])
def test_packaged_files_are_the_stsb_splits_unchanged(stsb_dir, name, pairs):
    raw = gzip.open(os.path.join(stsb_dir, name)).read()
    assert hashlib.sha256(raw).hexdigest() == SHA256[name]
    rows = list(csv.reader(raw.decode("utf-8").splitlines()))
    assert len(rows) == pairs and all(len(r) == 3 and 0 <= float(r[2]) <= 5 for r in rows)


def test_the_data_readme_names_source_license_and_attribution():
    text = open(os.path.join(PACKAGED_DIR, "README.md"), encoding="utf-8").read()
    for needle in ("PhilipMay/stsb-multi-mt", "30de0dec4ee199b7f42351d3f1a0b19592955385", "CC BY-SA 4.0",
                   "Cer", "SemEval-2017", STSB_TRAIN, STSB_DEV):
        assert needle in text, needle


def test_packaged_names_read_as_the_stsb_files():
    corpus = read_corpus(STSB_TRAIN, max_sentences=4000)
    assert len(corpus) == 4000 and corpus.sentences[:2] == ["A plane is taking off.", "An air plane is taking off."]
    dev = read_sts_pairs(STSB_DEV)
    assert len(dev) == 1500 and dev.name == "stsb-en-dev.csv"  # results keep the file's name of before
    with pytest.raises(ConfigError, match=r"'packaged:nope' is not packaged data; packaged: packaged:stsb-train"):
        read_corpus("packaged:nope")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_evaluates_on_the_packaged_dev_split(name):
    cfg = preset(name)
    assert cfg.eval_data == STSB_DEV
    assert cfg.train_data in (STSB_TRAIN, None)  # paper: the user's corpus (SimCSE's wiki1m)
    assert TrainConfig().train_data == STSB_TRAIN


def test_gradsurg_evaluate_defaults_to_the_packaged_dev_split(monkeypatch):
    import argparse

    from gradsurg.train import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    seen = {}

    def fake_read(path, fmt, split):
        seen["path"] = path
        raise ConfigError("stop here")

    monkeypatch.setattr(evaluate, "read_sts_pairs", fake_read)
    assert evaluate.run(parser.parse_args([])) == 2
    assert seen["path"] == STSB_DEV


def test_gz_files_are_read_transparently(tmp_path):
    plain = write_tiny_sts(str(tmp_path / "s.csv"), n=12)
    zipped = tmp_path / "s.csv.gz"
    zipped.write_bytes(gzip.compress(open(plain, "rb").read()))
    a, b = read_sts_pairs(plain), read_sts_pairs(str(zipped))
    assert (a.sentences1, a.sentences2, a.scores, a.name) == (b.sentences1, b.sentences2, b.scores, b.name)
    assert read_corpus(str(zipped)).sentences == read_corpus(plain).sentences  # format guessed through .gz
    txt = tmp_path / "corpus.txt.gz"
    txt.write_bytes(gzip.compress("\n".join(tiny_sentences(5)).encode()))
    assert read_corpus(str(txt)).sentences == tiny_sentences(5)
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="broken.csv.gz.*not a readable gzip file"):
        read_sts_pairs(str(broken))
    with pytest.raises(ConfigError, match="broken.csv.gz.*not a readable gzip file"):
        read_corpus(str(broken), fmt="txt")


def test_a_wrong_file_in_a_present_folder_is_not_called_an_absent_folder(tmp_path):
    folder = tmp_path / "stsb"
    folder.mkdir()
    (folder / "stsb-en-train.csv").write_text("a,b,1\n")
    wrong = str(folder / "stsb-en-trian.csv")
    with pytest.raises(ConfigError) as err:
        read_corpus(wrong)
    msg = str(err.value)
    assert repr(wrong) in msg and "exists and holds stsb-en-train.csv" in msg and "absent" not in msg
    assert f"pass {STSB_TRAIN}" in msg  # what to pass instead
    with pytest.raises(ConfigError) as err:
        read_sts_pairs(str(tmp_path / "nowhere" / "dev.csv"))
    msg = str(err.value)
    assert "does not exist either" in msg and f"pass {STSB_DEV}" in msg and "format hf" in msg


def test_a_relative_path_names_both_places_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_path("data/x.csv", "config field 'eval_data'")
    msg = str(err.value)
    assert repr(os.path.join(str(tmp_path), "data", "x.csv")) in msg
    assert repr(os.path.join(REPO, "data", "x.csv")) in msg


def test_the_packaged_default_keeps_the_run_identity_of_the_shared_files():
    """Older results.jsonl (defaults ``../shared/data/stsb/...``, byte-identical data) still resume."""
    from gradsurg.train.grid import run_key

    old = preset("quick").replace(train_data="../shared/data/stsb/stsb-en-train.csv",
                                  eval_data="../shared/data/stsb/stsb-en-dev.csv")
    assert run_key(preset("quick")) == run_key(old) == "b3f667b6ca95"  # the key main computed before
    assert run_key(preset("quick").replace(eval_data="other.csv")) != run_key(old)


@pytest.mark.slow
def test_the_main_job_needs_nothing_beside_a_copy_of_the_repository(tmp_path):
    """A copy of the tracked tree with no ../shared beside it: the quick preset's data checks pass
    (``--dry-run`` resolves the data and prints the runs without loading a model)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    for rel in files.stdout.splitlines():
        src = os.path.join(REPO, rel)
        if rel.startswith(("gradsurg/", "kernels/")) and os.path.isfile(src):
            dst = clone / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(open(src, "rb").read())
    assert not (tmp_path / "shared").exists()
    env = dict(os.environ, PYTHONPATH=f"{clone}{os.pathsep}{clone / 'kernels'}")
    code = ("from gradsurg.train.data import read_corpus, read_sts_pairs; import gradsurg.train.data as d; "
            "print(d.__file__); print(len(read_corpus('packaged:stsb-train', max_sentences=4000)), "
            "len(read_sts_pairs('packaged:stsb-dev')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[0].startswith(str(clone)) and proc.stdout.splitlines()[1] == "4000 1500"
    proc = subprocess.run([sys.executable, "-m", "gradsurg.cli", "ablate", "--dry-run", "--out",
                           str(tmp_path / "runs")], cwd=clone, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert " run(s) -> " in proc.stderr and "info_nce" in proc.stdout
