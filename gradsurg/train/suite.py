"""The seven STS tasks: STS12-16, STS-B and SICK-R from one folder, as a table (x100) and JSON.

    from gradsurg.train import load_encoder
    from gradsurg.train.suite import evaluate_suite, format_suite
    result = evaluate_suite(load_encoder("minilm"), "../shared/data/senteval",
                            stsb="../shared/data/stsb/stsb-en-dev.csv")
    print(format_suite([("minilm", result)]))

    gradsurg evaluate --suite ../shared/data/senteval --stsb ../shared/data/stsb/stsb-en-dev.csv

Every task is the Spearman correlation (x100) of the cosine similarity with the
gold scores. STS12-16 use the "all" setting (SimCSE's): the Spearman over the
concatenation of a year's subsets (``STS.input.<subset>.txt`` /
``STS.gs.<subset>.txt``), pairs without a gold score dropped. The average is
over the tasks scored (the table says how many). A task whose files are not in
the folder is reported as missing and skipped; a file that cannot be read is
reported with the reason and skipped too (``errors``); neither stops the others.

Where each task is looked for under the folder (the first that exists wins;
SentEval's ``data/downstream`` layout and a flat one both work):

=========  ================================================================
STS12..16  ``STS12``, ``STS12-en-test``, ``STS/STS12-en-test`` (SentEval layout)
STS-B      ``STSBenchmark/sts-test.csv``, ``STS/STSBenchmark/sts-test.csv``
           (SentEval's tab-separated file), ``stsb-en-test.csv``,
           ``stsb/stsb-en-test.csv``; or the file given as ``stsb=``
SICK-R     ``SICK/SICK_test_annotated.txt``, ``SICK_test_annotated.txt``,
           ``SICK/SICK.txt``, ``SICK.txt`` (the last two: rows of the TEST set);
           or the file given as ``sick=``
=========  ================================================================

STS-B's column is labelled with its split when the file name says it
(``STS-B dev`` for ``stsb-en-dev.csv``): a dev score is not a test score.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from .config import ConfigError
from .data import STSPairs, read_sts_pairs, resolve_path
from .sts import evaluate_sts

__all__ = ["TASKS", "find_tasks", "evaluate_suite", "format_suite", "add_arguments", "run_suite"]

#: the seven tasks, in the order of the published tables
TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R")
#: the SemEval years (test sets), the tasks of ``format_suite(..., years_average=True)``
YEARS = TASKS[:5]


def _year_candidates(year: str) -> list[tuple[str, str, str | None]]:
    return [(year, "senteval", None), (f"{year}-en-test", "senteval", None),
            (os.path.join("STS", f"{year}-en-test"), "senteval", None)]


_CANDIDATES: dict[str, list[tuple[str, str, str | None]]] = {
    **{y: _year_candidates(y) for y in TASKS[:5]},
    "STS-B": [(os.path.join("STSBenchmark", "sts-test.csv"), "senteval", None),
              (os.path.join("STS", "STSBenchmark", "sts-test.csv"), "senteval", None),
              ("stsb-en-test.csv", "stsb-csv", None),
              (os.path.join("stsb", "stsb-en-test.csv"), "stsb-csv", None)],
    "SICK-R": [(os.path.join("SICK", "SICK_test_annotated.txt"), "sick", None),
               ("SICK_test_annotated.txt", "sick", None),
               (os.path.join("SICK", "SICK.txt"), "sick", "TEST"),
               ("SICK.txt", "sick", "TEST")],
}


def _stsb_format(path: str) -> str:
    """stsb-csv (``s1,s2,score``) or SentEval's tab-separated STS-B file."""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline()
    return "senteval" if "\t" in first else "stsb-csv"


def _split_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    for split in ("dev", "test", "train"):
        if split in name:
            return split
    return None


def find_tasks(folder: str | None, stsb: str | None = None, sick: str | None = None
               ) -> tuple[dict[str, tuple[str, str, str | None]], dict[str, str]]:
    """Locate the tasks: ``({task: (path, format, split)}, {task: why it is missing})``.

    ``stsb`` / ``sick`` name a file for that task explicitly (it must exist).
    """
    found: dict[str, tuple[str, str, str | None]] = {}
    missing: dict[str, str] = {}
    if folder is not None:
        folder = resolve_path(folder, "STS suite folder")
        if not os.path.isdir(folder):
            raise ConfigError(f"STS suite folder {folder!r} is not a folder")
    for task in TASKS:
        explicit = {"STS-B": stsb, "SICK-R": sick}.get(task)
        if explicit is not None:
            explicit = resolve_path(explicit, f"the {task} file")
            if not os.path.isfile(explicit):
                raise ConfigError(f"the {task} file {explicit!r} is not a file")
            fmt = _stsb_format(explicit) if task == "STS-B" else "sick"
            split = "TEST" if task == "SICK-R" and os.path.basename(explicit) == "SICK.txt" else None
            found[task] = (explicit, fmt, split)
            continue
        if folder is None:
            missing[task] = "no folder given"
            continue
        for rel, fmt, split in _CANDIDATES[task]:
            path = os.path.join(folder, rel)
            if os.path.exists(path):
                found[task] = (path, fmt, split)
                break
        else:
            tried = ", ".join(rel for rel, _, _ in _CANDIDATES[task])
            missing[task] = f"not found under {folder} (looked for {tried})"
    return found, missing


def _label(task: str, path: str) -> str:
    if task == "STS-B":
        split = _split_of(path)
        return f"STS-B {split}" if split else "STS-B"
    return task


def evaluate_suite(encoder, folder: str | None, stsb: str | None = None, sick: str | None = None,
                   batch_size: int = 128, progress: bool = False, stream=None) -> dict:
    """Score ``encoder`` on every task found; see the module docstring.

    Returns ``{"tasks": {task: {"label", "spearman", "pearson", "n_pairs", "path"}},
    "average", "n_tasks", "missing": {task: reason}, "errors": {task: reason}}``;
    a line per task goes to ``stream`` (default stderr) as it is scored.
    """
    stream = sys.stderr if stream is None else stream
    found, missing = find_tasks(folder, stsb, sick)
    tasks: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for task in TASKS:
        if task not in found:
            print(f"{task}: missing, skipped ({missing[task]})", file=stream)
            continue
        path, fmt, split = found[task]
        try:
            pairs: STSPairs = read_sts_pairs(path, fmt, split)
        except (ConfigError, OSError, ValueError, UnicodeDecodeError) as exc:
            errors[task] = f"{path}: {exc}"
            print(f"{task}: cannot be read, skipped ({errors[task]})", file=stream)
            continue
        metrics = evaluate_sts(encoder, pairs, batch_size=batch_size, progress=progress)
        tasks[task] = {"label": _label(task, path), "spearman": metrics["spearman"],
                       "pearson": metrics["pearson"], "n_pairs": metrics["n_pairs"], "path": path}
        print(f"{task}: spearman {metrics['spearman']:.2f} ({metrics['n_pairs']} pairs, {path})", file=stream)
    scores = [t["spearman"] for t in tasks.values()]
    average = sum(scores) / len(scores) if scores and all(math.isfinite(s) for s in scores) else None
    if scores and average is None:
        errors.setdefault("average", "a task's Spearman is not finite (constant similarities?)")
    return {"tasks": tasks, "average": average, "n_tasks": len(tasks), "missing": missing, "errors": errors}


def format_suite(rows: list[tuple[str, dict]], years_average: bool = False) -> str:
    """A Markdown table: one row per ``(name, evaluate_suite result)``, x100, and the average.

    ``years_average=True`` adds the mean over the STS12-16 tasks alone (the SemEval test
    sets), which leaves out STS-B and SICK-R: useful when STS-B is the dev set a run was
    selected on.
    """
    labels: dict[str, str] = {}
    for _, res in rows:
        for task, t in res["tasks"].items():
            labels.setdefault(task, t["label"])
    columns = [t for t in TASKS if t in labels]
    years = [t for t in YEARS if t in labels]
    extra = [f"Avg. {years[0]}-{years[-1][-2:]}" if len(years) > 1 else f"Avg. {years[0]}"] \
        if years_average and years else []
    head = "| model | " + " | ".join([labels[t] for t in columns] + extra) + " | Avg. |"
    lines = [head, "|---" * (len(columns) + len(extra) + 2) + "|"]
    for name, res in rows:
        cells = [f"{res['tasks'][t]['spearman']:.2f}" if t in res["tasks"] else "-" for t in columns]
        if extra:
            got = [res["tasks"][t]["spearman"] for t in years if t in res["tasks"]]
            ok = len(got) == len(years) and all(math.isfinite(v) for v in got)
            cells.append(f"{sum(got) / len(got):.2f}" if ok else "-")
        avg = "-" if res["average"] is None else f"{res['average']:.2f}"
        if res["n_tasks"] not in (0, len(TASKS)):
            avg += f" ({res['n_tasks']} tasks)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} |")
    return "\n".join(lines)


# ------------------------------------------------------------------- the CLI hooks
def add_arguments(parser) -> None:
    """The suite's options of ``gradsurg evaluate``."""
    parser.add_argument("--suite", default=None, metavar="DIR",
                        help="score the seven STS tasks found under DIR (STS12-16 'all', STS-B, SICK-R): "
                             "a table x100 with the average; missing tasks are reported and skipped")
    parser.add_argument("--stsb", default=None, metavar="FILE",
                        help="with --suite: the STS-B file (e.g. ../shared/data/stsb/stsb-en-dev.csv)")
    parser.add_argument("--sick", default=None, metavar="FILE", help="with --suite: the SICK-R file")
    parser.add_argument("--json", default=None, metavar="FILE", dest="json_out",
                        help="with --suite: also write the result as JSON to FILE")


def run_suite(args, encoder) -> int:
    """``gradsurg evaluate --suite``: print the table, then the JSON object as the last line."""
    start = time.time()
    try:
        result = evaluate_suite(encoder, args.suite, stsb=args.stsb, sick=args.sick,
                                batch_size=args.batch_size, progress=not args.no_progress)
    except ConfigError as exc:
        print(f"gradsurg evaluate: {exc}", file=sys.stderr)
        return 2
    result.update({"model": args.model, "pooler": encoder.pooler, "suite": args.suite,
                   "seconds": round(time.time() - start, 2)})
    print(format_suite([(args.model, result)]), file=sys.stderr)
    if args.json_out:
        folder = os.path.dirname(os.path.abspath(args.json_out))
        os.makedirs(folder, exist_ok=True)
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result))
    if result["errors"]:
        return 1
    return 0 if result["tasks"] else 1
