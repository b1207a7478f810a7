"""``gradsurg evaluate``: STS Spearman and Pearson (x100) of an encoder on one file, or the seven tasks.

The scoring itself is :mod:`gradsurg.train.sts` (:func:`~gradsurg.train.sts.evaluate_sts`)::

    from gradsurg.train import load_encoder, read_sts_pairs, evaluate_sts
    enc = load_encoder("minilm")
    print(evaluate_sts(enc, read_sts_pairs("../shared/data/stsb/stsb-en-dev.csv")))

Command line (the last line printed is one JSON object)::

    gradsurg evaluate --model minilm --data ../shared/data/stsb/stsb-en-dev.csv
    gradsurg evaluate --model runs/best --data SICK.txt --format sick --split TEST
    gradsurg evaluate --model my-st-model --data STS/STS12-en-test --format senteval
    gradsurg evaluate --suite ../shared/data/senteval --stsb ../shared/data/stsb/stsb-en-dev.csv

``--suite DIR`` scores the seven STS tasks (STS12-16, STS-B, SICK-R) found
under DIR; see :mod:`gradsurg.train.suite`.

``--model`` defaults to the packaged all-MiniLM-L6-v2 (mean pooling, its own
configuration).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from ..cli import int_at_least
from .config import STS_FORMATS, ConfigError
from .data import check_pairs, default_stsb_dir, missing_data_hint, read_sts_pairs
from .sts import evaluate_sts
from .suite import add_arguments as add_suite_arguments
from .suite import run_suite


# ------------------------------------------------------------------- the CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gradsurg evaluate``."""
    parser.add_argument("--model", default="minilm",
                        help="model name or directory (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--data", default=None,
                        help="STS file or folder (default: ../shared/data/stsb/stsb-en-dev.csv when present); "
                             "with --format hf, a Hugging Face dataset name")
    parser.add_argument("--format", default="stsb-csv", choices=STS_FORMATS, dest="fmt",
                        help="file layout: stsb-csv (no header: s1,s2,score), sick (tab-separated release "
                             "with header), senteval (SentEval STS files), hf (datasets, online)")
    parser.add_argument("--split", default=None,
                        help="SICK: TRAIN|TRIAL|TEST rows by SemEval_set; hf: the dataset split")
    parser.add_argument("--pooler", default=None,
                        choices=("cls", "cls_before_pooler", "avg", "mask", "max"),
                        help="override the pooler (default: the model's own: trained-with / "
                             "sentence-transformers config / cls_before_pooler)")
    parser.add_argument("--max-len", type=int, default=None, help="max tokens per sentence at evaluation")
    parser.add_argument("--max-pairs", type=int_at_least(2), default=None,
                        help="score only N pairs (spread evenly over the file), N >= 2")
    parser.add_argument("--batch-size", type=int_at_least(1), default=128, help="sentences per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_suite_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the result; the last stdout line is one strict JSON object.

    Exit status: 0, 1 when the correlation is undefined (the encoder's
    similarities are all equal; printed as null), 2 for bad arguments.
    """
    from .models import ModelLoadError, load_encoder

    if getattr(args, "suite", None) is not None:  # the seven STS tasks (gradsurg.train.suite)
        if args.data is not None:
            print("gradsurg evaluate: give --data (one file) or --suite (a folder), not both", file=sys.stderr)
            return 2
        try:
            encoder = load_encoder(args.model, pooler=args.pooler, eval_max_len=args.max_len, device=args.device)
        except (ConfigError, ModelLoadError, ValueError) as exc:
            print(f"gradsurg evaluate: {exc}", file=sys.stderr)
            return 2
        return run_suite(args, encoder)
    data = args.data
    if data is None:
        stsb = default_stsb_dir()
        if stsb is None:
            print("gradsurg evaluate: --data is required" + missing_data_hint(), file=sys.stderr)
            return 2
        data = f"{stsb}/stsb-en-dev.csv"
    try:
        pairs = read_sts_pairs(data, args.fmt, args.split).subset(args.max_pairs)
        check_pairs(pairs, f"--data {data!r}")
        encoder = load_encoder(args.model, pooler=args.pooler, eval_max_len=args.max_len, device=args.device)
    except (ConfigError, ModelLoadError, ValueError) as exc:
        print(f"gradsurg evaluate: {exc}", file=sys.stderr)
        return 2
    start = time.time()
    try:
        result = evaluate_sts(encoder, pairs, batch_size=args.batch_size, progress=not args.no_progress)
    except ValueError as exc:
        print(f"gradsurg evaluate: {exc}", file=sys.stderr)
        return 2
    result.update({
        "model": args.model,
        "pooler": encoder.pooler,
        "format": args.fmt,
        "seconds": round(time.time() - start, 2),
    })
    undefined = [k for k in ("spearman", "pearson") if not math.isfinite(result[k])]
    for k in undefined:
        result[k] = None
    fmt = lambda v: "undefined" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"{result['data']}: spearman {fmt(result['spearman'])}  pearson {fmt(result['pearson'])}  "
          f"({result['n_pairs']} pairs, pooler {encoder.pooler})", file=sys.stderr)
    if undefined:
        print("gradsurg evaluate: the encoder gives every pair the same similarity (a collapsed model?): "
              f"{' and '.join(undefined)} undefined, printed as null", file=sys.stderr)
    print(json.dumps(result, allow_nan=False))
    return 1 if undefined else 0
