"""Data for training and STS evaluation.

Training corpora (sentences; optional hard negative and label columns):

- ``txt``: one sentence per line (SimCSE's ``wiki1m_for_simcse.txt``);
- ``stsb-csv``: the STS-B CSV (no header, ``sentence1,sentence2,score``; the
  packaged ``packaged:stsb-train``); both sentences are used, the score is ignored;
- ``csv`` / ``tsv``: a header row; the text column is ``text_column`` (default
  the first column), the hard negatives ``hard_negative_column``, a class / cluster
  label per sentence ``label_column`` (supervised-contrastive training, several
  positives per anchor);
- ``jsonl``: one object per line, same column options.

STS evaluation files (pairs with a gold score):

- ``stsb-csv``: as above;
- ``sick``: the SICK release (tab-separated, header; columns ``sentence_A``,
  ``sentence_B``, ``relatedness_score``; ``SemEval_set`` selects TRAIN/TRIAL/TEST);
- ``senteval``: SentEval's STS layout: either a tab-separated file with
  ``score<TAB>s1<TAB>s2`` / ``s1<TAB>s2<TAB>score`` rows (STS-B ``sts-*.csv`` style,
  with genre columns), or a ``STS.input.<name>.txt`` file whose gold scores
  sit next to it in ``STS.gs.<name>.txt`` (STS12-16); a directory of such
  files is read whole (pairs without a gold score are dropped, as SentEval does);
- ``hf``: a Hugging Face ``datasets`` name (online), e.g. ``mteb/stsbenchmark-sts``.

Any file may be gzip-compressed (``.gz``: read transparently). ``packaged:stsb-train``
and ``packaged:stsb-dev`` name the STS-B train and dev splits shipped inside the
package (``gradsurg/data/``, whose README.md gives source, license and
attribution): the defaults of every preset and of ``gradsurg evaluate``, so the
main job needs nothing beside the package.
"""
from __future__ import annotations

import csv
import glob
import gzip
import json
import math
import os
import zlib
from dataclasses import dataclass

from .config import PACKAGED_PREFIX, STSB_DEV, STSB_TRAIN, ConfigError

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: the folder of the data shipped inside the package (its README.md: source, license, attribution)
PACKAGED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
#: ``packaged:<name>`` -> file in :data:`PACKAGED_DIR` (gzip'd STS-B CSVs, read transparently)
PACKAGED_FILES = {"stsb-train": "stsb-en-train.csv.gz", "stsb-dev": "stsb-en-dev.csv.gz"}
#: the shared-folder files the packaged ones are byte for byte (gunzipped): the defaults' names before
#: the data was packaged, kept as their run identity (gradsurg.train.grid.run_key) so older results resume
PACKAGED_WAS = {STSB_TRAIN: "../shared/data/stsb/stsb-en-train.csv", STSB_DEV: "../shared/data/stsb/stsb-en-dev.csv"}


def packaged_path(name: str) -> str:
    """The file of ``packaged:<name>`` (:data:`PACKAGED_FILES`); :class:`ConfigError` for another name."""
    key = name[len(PACKAGED_PREFIX):]
    if key not in PACKAGED_FILES:
        raise ConfigError(f"{name!r} is not packaged data; packaged: "
                          f"{', '.join(PACKAGED_PREFIX + k for k in PACKAGED_FILES)}")
    path = os.path.join(PACKAGED_DIR, PACKAGED_FILES[key])
    if not os.path.exists(path):
        raise ConfigError(f"{name!r}: {path!r} is missing from this installation of gradsurg "
                          "(reinstall it: pip install gradsurg, or pip install -e . in a clone)")
    return path


def resolve_path(path: str | None, what: str = "path", instead: str | None = None) -> str:
    """Return an existing path for ``path``.

    ``packaged:<name>`` is data shipped with gradsurg (:data:`PACKAGED_FILES`). A
    relative path is tried from the working directory first, then from the
    repository root (so a path relative to the checkout works from anywhere
    inside it). Raises :class:`ConfigError` naming ``what``, every location
    tried and what the folder there holds, ending with ``instead`` (what to
    pass instead) when given.
    """
    if path is None or str(path) == "":
        raise ConfigError(f"{what} is not set" + (f"; {instead}" if instead else ""))
    path = os.path.expanduser(str(path))
    if path.startswith(PACKAGED_PREFIX):
        return packaged_path(path)
    if os.path.exists(path):
        return path
    tried = [os.path.abspath(path)]
    if not os.path.isabs(path):
        alt = os.path.normpath(os.path.join(_REPO_ROOT, path))
        if os.path.exists(alt):
            return alt
        if alt not in tried:
            tried.append(alt)
    raise ConfigError(f"{what} {path!r} does not exist (tried {' and '.join(map(repr, tried))}); "
                      + _folder_note(tried[0]) + (f"; {instead}" if instead else ""))


def _folder_note(path: str) -> str:
    """What the folder of a missing ``path`` holds (or that it is absent too)."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f"its folder {folder!r} does not exist either"
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return f"the folder {folder!r} exists and holds {shown or 'nothing'}"


#: what to pass instead of a training corpus that cannot be found
TRAIN_INSTEAD = (f"pass {STSB_TRAIN} (the default: the STS-B train sentences shipped with gradsurg) or an "
                 "existing file (one sentence per line; csv/tsv/jsonl with text_column)")
#: what to pass instead of an STS file that cannot be found
STS_INSTEAD = (f"pass {STSB_DEV} (the default: the STS-B dev pairs shipped with gradsurg), an existing "
               "file (STS-B csv: sentence1,sentence2,score; or sick / senteval), or, online with `datasets`, "
               "a Hugging Face dataset name with format hf (e.g. mteb/stsbenchmark-sts, split validation)")


def open_text(path: str, newline: str | None = None):
    """Open a UTF-8 text file for reading; a ``.gz`` file is decompressed transparently."""
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return open(path, encoding="utf-8", newline=newline)


def _display_name(path: str) -> str:
    """A data file's name in results (``stsb-en-dev.csv`` for ``stsb-en-dev.csv.gz``)."""
    name = os.path.basename(os.path.normpath(path))
    return name[:-3] if name.lower().endswith(".gz") else name


# ---------------------------------------------------------------- training data
@dataclass
class Corpus:
    """Training sentences and, optionally, one hard negative and one label (int >= 0) per sentence."""

    sentences: list[str]
    hard_negatives: list[str] | None = None
    #: the class / cluster of each sentence (``label_column``): candidates with the anchor's label are targets
    labels: list[int] | None = None

    def __len__(self) -> int:
        return len(self.sentences)


def _guess_format(path: str) -> str:
    low = path.lower()
    if low.endswith(".gz"):  # read through gzip: the name before .gz tells the layout
        low = low[:-3]
    if low.endswith(".jsonl") or low.endswith(".json"):
        return "jsonl"
    if low.endswith(".tsv"):
        return "tsv"
    if low.endswith(".csv"):
        # STS-B CSVs have no header and a numeric third column
        with open_text(path, newline="") as fh:
            first = next(csv.reader(fh), None)
        if first is not None and len(first) == 3:
            try:
                float(first[2])
                return "stsb-csv"
            except ValueError:
                pass
        return "csv"
    return "txt"


def read_corpus(
    path: str,
    fmt: str = "auto",
    text_column: str | None = None,
    hard_negative_column: str | None = None,
    max_sentences: int | None = None,
    label_column: str | None = None,
) -> Corpus:
    """Read a training corpus (see the module docstring for formats).

    Duplicated sentences are kept in their first occurrence only (STS-B repeats
    many; not when there is a hard negative column), empty lines are skipped, order is
    preserved; ``max_sentences`` keeps the first ones.

    ``label_column`` (csv/tsv/jsonl): one class / cluster label per sentence, read into
    ``Corpus.labels``: integers >= 0 are kept when every label is one (``"3"`` in a CSV
    is 3); otherwise every label is numbered 0, 1, ... in the order of its first
    appearance. A row with text but no label is an error naming the file and line, and
    so is a sentence given two different labels (naming both lines and labels).
    """
    path = resolve_path(path, "training data path (train_data)", TRAIN_INSTEAD)
    if os.path.isdir(path):
        raise ConfigError(f"training data path (train_data) {path!r} is a folder; give a file; {TRAIN_INSTEAD}")
    try:
        return _read_corpus(path, fmt, text_column, hard_negative_column, max_sentences, label_column)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"training data {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ConfigError(f"training data {path!r} is not a readable gzip file ({exc})") from None


def _read_rows(path: str, fmt: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """The rows of a csv/tsv/jsonl corpus with their line numbers, and its columns."""
    rows: list[tuple[int, dict]] = []
    if fmt == "jsonl":
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise ConfigError(f"{path!r} line {lineno}: not valid JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{path!r} line {lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append((lineno, row))
        return rows, list(rows[0][1].keys()) if rows else []
    with open_text(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t" if fmt == "tsv" else ",")
        for row in reader:
            rows.append((reader.line_num, row))
        return rows, list(reader.fieldnames or [])


def _label_text(value, path: str, lineno: int, column: str) -> str:
    """A label as text (an int or a string); missing, empty or nested is an error naming the line."""
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{path!r} line {lineno}: label_column {column!r} holds a {type(value).__name__}; "
                          "a label is a string or an integer")
    text = "" if value is None else str(value).strip()
    if not text:
        raise ConfigError(f"{path!r} line {lineno}: no label in label_column {column!r} (every sentence needs one)")
    return text


def _number_labels(texts: list[str]) -> list[int]:
    """Integers >= 0 kept when every label is one; else each text numbered by its first appearance."""
    try:
        values = [int(t) for t in texts]
        if all(v >= 0 for v in values):
            return values
    except ValueError:
        pass
    ids: dict[str, int] = {}
    return [ids.setdefault(t, len(ids)) for t in texts]


def _read_corpus(path, fmt, text_column, hard_negative_column, max_sentences, label_column=None) -> Corpus:
    if fmt == "auto":
        fmt = _guess_format(path)
    sentences: list[str] = []
    negatives: list[str] | None = [] if hard_negative_column else None
    labels: list[int] | None = None
    if fmt in ("txt", "stsb-csv"):
        for name, column in (("hard_negative_column", hard_negative_column), ("label_column", label_column)):
            if column:
                what = "a plain text file" if fmt == "txt" else "the STS-B CSV"
                raise ConfigError(f"{name} needs a csv/tsv/jsonl corpus with a header, not {what} ({path!r})")
    if fmt == "txt":
        with open_text(path) as fh:
            sentences = [line.strip() for line in fh if line.strip()]
    elif fmt == "stsb-csv":
        with open_text(path, newline="") as fh:
            for row in csv.reader(fh):
                if len(row) < 2:
                    continue
                sentences.extend(s.strip() for s in row[:2] if s.strip())
    elif fmt in ("csv", "tsv", "jsonl"):
        rows, columns = _read_rows(path, fmt)
        col = text_column or (columns[0] if columns else None)
        if col not in columns:
            raise ConfigError(f"text_column {col!r} is not a column of {path!r} (columns: {columns})")
        for name, column in (("hard_negative_column", hard_negative_column), ("label_column", label_column)):
            if column and column not in columns:
                raise ConfigError(f"{name} {column!r} is not a column of {path!r} (columns: {columns})")
        label_texts: list[str] = []
        lines: list[int] = []
        for lineno, row in rows:
            text = str(row.get(col) or "").strip()
            if not text:
                continue
            if negatives is not None:
                neg = str(row.get(hard_negative_column) or "").strip()
                if not neg:
                    continue
                negatives.append(neg)
            if label_column:
                label_texts.append(_label_text(row.get(label_column), path, lineno, label_column))
                lines.append(lineno)
            sentences.append(text)
        if label_column:
            labels = _number_labels(label_texts)
            _check_one_label(path, sentences, labels, label_texts, lines)
    else:
        raise ConfigError(f"train_format {fmt!r} is not one of auto, txt, stsb-csv, csv, tsv, jsonl")
    if negatives is None:
        seen: set[str] = set()
        keep = []
        for i, s in enumerate(sentences):
            if s not in seen:
                seen.add(s)
                keep.append(i)
        sentences = [sentences[i] for i in keep]
        if labels is not None:
            labels = [labels[i] for i in keep]
    if max_sentences is not None:
        sentences = sentences[:max_sentences]
        if negatives is not None:
            negatives = negatives[:max_sentences]
        if labels is not None:
            labels = labels[:max_sentences]
    if not sentences:
        raise ConfigError(f"training data {path!r} holds no sentences")
    return Corpus(sentences, negatives, labels)


def _check_one_label(path: str, sentences: list[str], labels: list[int], texts: list[str], lines: list[int]) -> None:
    """A sentence given two different labels is an error naming the file, both lines and both labels."""
    first: dict[str, int] = {}
    for i, s in enumerate(sentences):
        j = first.setdefault(s, i)
        if labels[j] != labels[i]:
            raise ConfigError(f"{path!r} line {lines[i]}: the sentence {s[:80]!r} has label {texts[i]!r}, but line "
                              f"{lines[j]} gave it label {texts[j]!r}; a sentence needs one label (fix or drop one "
                              "of the rows)")


# ------------------------------------------------------------------ STS pairs
@dataclass
class STSPairs:
    """Sentence pairs with gold similarity scores."""

    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    name: str = "sts"

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, n: int | None) -> "STSPairs":
        """``n`` pairs spread evenly over the file (every k-th pair; all when ``n`` is None or larger).

        STS files are sorted by source genre, so the first ``n`` pairs would be one genre only.
        """
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
            raise ConfigError(f"the number of pairs to score must be an integer >= 2 (a correlation needs 2), got {n!r}")
        if n is None or n >= len(self):
            return self
        idx = [int(i * len(self) / n) for i in range(n)]
        return STSPairs([self.sentences1[i] for i in idx], [self.sentences2[i] for i in idx],
                        [self.scores[i] for i in idx], f"{self.name}[{n} of {len(self)}]")


#: names a header row may give the score column (a first line with another non-number is an error)
SCORE_HEADERS = ("score", "scores", "similarity", "similarity_score", "sim", "gold", "label", "relatedness_score")


def _score(text: str, path: str, lineno: int, header_ok: bool = False) -> float | None:
    """The gold score of a line: a finite number; None for a header (first line only); else an error."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        if header_ok and str(text).strip().lower() in SCORE_HEADERS:
            return None
        raise ConfigError(f"{path!r} line {lineno}: score {text!r} is not a number"
                          + (f" (a header names it one of {', '.join(SCORE_HEADERS)})" if lineno == 1 else "")
                          ) from None
    if not math.isfinite(value):
        raise ConfigError(f"{path!r} line {lineno}: score {text!r} is not finite")
    return value


def _read_stsb_csv(path: str) -> STSPairs:
    s1, s2, sc = [], [], []
    with open_text(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) < 3:
                raise ConfigError(f"{path!r} line {lineno}: expected sentence1,sentence2,score, got {len(row)} field(s)")
            score = _score(row[2], path, lineno, header_ok=lineno == 1)
            if score is None:
                continue
            s1.append(row[0])
            s2.append(row[1])
            sc.append(score)
    return STSPairs(s1, s2, sc, _display_name(path))


def _read_sick(path: str, split: str | None) -> STSPairs:
    with open_text(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = reader.fieldnames or []
        need = ("sentence_A", "sentence_B", "relatedness_score")
        missing = [c for c in need if c not in columns]
        if missing:
            raise ConfigError(f"SICK file {path!r} lacks column(s) {missing} (columns: {columns})")
        if split is not None and split.strip().upper() not in ("TRAIN", "TRIAL", "TEST"):
            raise ConfigError(f"--split {split!r}: SICK splits are TRAIN, TRIAL, TEST")
        if split is not None and "SemEval_set" not in columns:
            raise ConfigError(f"--split {split!r} given but SICK file {path!r} has no SemEval_set column")
        s1, s2, sc = [], [], []
        for row in reader:
            lineno = reader.line_num
            if not any(row.values()):
                continue
            short = [c for c in need if row.get(c) is None]
            if short:
                raise ConfigError(f"SICK file {path!r} line {lineno}: the row has {len(row) - len(short)} field(s), "
                                  f"no value for {short} (tab-separated, {len(columns)} columns expected)")
            if split is not None and (row.get("SemEval_set") or "").strip().upper() != split.upper():
                continue
            s1.append(row["sentence_A"])
            s2.append(row["sentence_B"])
            sc.append(_score(row["relatedness_score"], path, lineno))
    name = _display_name(path) + (f":{split.upper()}" if split else "")
    return STSPairs(s1, s2, sc, name)


def _read_senteval_input(path: str) -> STSPairs:
    """``STS.input.X.txt`` + ``STS.gs.X.txt`` (STS12-16); gold lines that are empty are dropped."""
    gs_path = path.replace("STS.input.", "STS.gs.")
    if gs_path == path or not os.path.exists(gs_path):
        raise ConfigError(f"no gold-score file {gs_path!r} next to {path!r}")
    with open_text(path) as fh:
        inputs = [line.rstrip("\n").split("\t") for line in fh]
    with open_text(gs_path) as fh:
        gold = [line.strip() for line in fh]
    if len(gold) != len(inputs):
        raise ConfigError(f"{path!r} has {len(inputs)} lines but {gs_path!r} has {len(gold)}")
    s1, s2, sc = [], [], []
    for lineno, (parts, g) in enumerate(zip(inputs, gold), 1):
        if not g or len(parts) < 2:
            continue
        s1.append(parts[0])
        s2.append(parts[1])
        sc.append(_score(g, gs_path, lineno))
    return STSPairs(s1, s2, sc, _display_name(path))


def _read_senteval_tsv(path: str) -> STSPairs:
    """SentEval's STS-B files (``sts-dev.csv``: genre, file, year, id, score, s1, s2 tab-separated)."""
    s1, s2, sc = [], [], []
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 7:
                score, a, b = parts[4], parts[5], parts[6]
            elif len(parts) == 3:
                try:
                    float(parts[0])
                    score, a, b = parts[0], parts[1], parts[2]
                except ValueError:
                    a, b, score = parts
            else:
                continue
            value = _score(score, path, lineno, header_ok=lineno == 1)
            if value is None:
                continue
            s1.append(a)
            s2.append(b)
            sc.append(value)
    return STSPairs(s1, s2, sc, _display_name(path))


def _read_senteval(path: str) -> STSPairs:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "STS.input.*.txt")))
        if not files:
            raise ConfigError(f"directory {path!r} holds no STS.input.*.txt files (SentEval layout)")
        parts = [_read_senteval_input(f) for f in files]
        return STSPairs(
            [s for p in parts for s in p.sentences1],
            [s for p in parts for s in p.sentences2],
            [s for p in parts for s in p.scores],
            _display_name(path),
        )
    if os.path.basename(path).startswith("STS.input."):
        return _read_senteval_input(path)
    return _read_senteval_tsv(path)


def _read_hf(name: str, split: str | None) -> STSPairs:
    try:
        import datasets  # type: ignore
    except ImportError as exc:
        raise ConfigError("format 'hf' needs the Hugging Face `datasets` package (pip install datasets)") from exc
    ds = datasets.load_dataset(name, split=split or "test")
    cols = ds.column_names
    a = "sentence1" if "sentence1" in cols else "sentence_A"
    b = "sentence2" if "sentence2" in cols else "sentence_B"
    s = next((c for c in ("score", "similarity_score", "relatedness_score", "label") if c in cols), None)
    if a not in cols or b not in cols or s is None:
        raise ConfigError(f"dataset {name!r} has columns {cols}; expected sentence1/sentence2/score")
    pairs = STSPairs(list(ds[a]), list(ds[b]), [float(x) for x in ds[s]], f"{name}:{split or 'test'}")
    check_pairs(pairs, f"dataset {name!r}")
    return pairs


def read_sts_pairs(path: str, fmt: str = "stsb-csv", split: str | None = None) -> STSPairs:
    """Read STS pairs with gold scores from ``path`` in ``fmt`` (see the module docstring)."""
    if fmt == "hf":
        return _read_hf(path, split)
    path = resolve_path(path, "STS data path", STS_INSTEAD)
    if split is not None and fmt in ("stsb-csv", "senteval"):
        raise ConfigError(f"a split ({split!r}) applies to the sick and hf formats only; a {fmt} file is one split")
    if os.path.isdir(path) and fmt != "senteval":
        raise ConfigError(f"STS data path {path!r} is a folder; give a file, or --format senteval for a "
                          "SentEval folder of STS.input.*.txt files")
    readers = {"stsb-csv": _read_stsb_csv, "sick": lambda p: _read_sick(p, split), "senteval": _read_senteval}
    if fmt not in readers:
        raise ConfigError(f"STS format {fmt!r} is not one of stsb-csv, sick, senteval, hf")
    try:
        pairs = readers[fmt](path)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"STS data {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ConfigError(f"STS data {path!r} is not a readable {fmt} file ({exc})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ConfigError(f"STS data {path!r} is not a readable gzip file ({exc})") from None
    check_pairs(pairs, f"STS data {path!r} ({fmt})")
    return pairs


def check_pairs(pairs: "STSPairs", what: str) -> None:
    """At least 2 pairs with finite gold scores that are not all equal (else a correlation is undefined)."""
    if len(pairs) < 2:
        raise ConfigError(f"{what} holds {len(pairs)} scored pair(s); need at least 2")
    bad = next((i for i, v in enumerate(pairs.scores) if not math.isfinite(v)), None)
    if bad is not None:
        raise ConfigError(f"{what}: gold score of pair {bad + 1} is {pairs.scores[bad]!r}; scores must be finite")
    if min(pairs.scores) == max(pairs.scores):
        raise ConfigError(f"{what}: all {len(pairs)} gold scores are {pairs.scores[0]!r}; "
                          "a correlation with constant scores is undefined")
