"""``gradsurg plot``: write the paper's GD / W / R diagnostic figures.

    gradsurg plot --out docs/figures                      # full size: 100 x 100 grid, 1000 batches of 128
    gradsurg plot --out /tmp/figs --grid 20 --num-batches 50 --which gd,r
    gradsurg plot --stats runs/x/stats.csv --out /tmp/figs      # W's entropy / effective negatives over training
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..cli import int_at_least

FIGURES = ("gd", "w", "r")


_positive_int = int_at_least(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="docs/figures", help="output directory (created if missing)")
    parser.add_argument("--grid", type=_positive_int, default=100, help="grid points per axis (default 100)")
    parser.add_argument("--num-batches", type=_positive_int, default=1000,
                        help="simulated batches per grid cell (default 1000)")
    parser.add_argument("--batch-size", type=_positive_int, default=128, help="rows per simulated batch (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--which", default="gd,w,r",
                        help="comma list of figures: gd (GD surface), w (W vs temperature), r (R surfaces)")
    parser.add_argument("--stats", default=None, metavar="STATS_CSV",
                        help="instead: draw W's telemetry over training (entropy, effective negatives, max weight) "
                             "from a training run's stats.csv into OUT/w_telemetry.png")


def run(args: argparse.Namespace) -> int:
    import torch

    from .plots import make_figures

    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = sorted(set(which) - set(FIGURES))
    if unknown or not which:
        print(f"gradsurg plot: --which must list some of {', '.join(FIGURES)}; got {args.which!r}", file=sys.stderr)
        return 2
    if args.batch_size < 2:
        print("gradsurg plot: --batch-size must be >= 2", file=sys.stderr)
        return 2
    if args.grid < 2:
        print("gradsurg plot: --grid must be >= 2", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print(f"gradsurg plot: --out {args.out!r} cannot be used as a folder: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not os.access(args.out, os.W_OK | os.X_OK):
        print(f"gradsurg plot: --out {args.out!r} is not writable", file=sys.stderr)
        return 2
    if args.stats is not None:
        from .plots import plot_w_telemetry

        try:
            print(plot_w_telemetry(args.stats, os.path.join(args.out, "w_telemetry.png")))
        except (OSError, ValueError) as exc:
            print(f"gradsurg plot: --stats {args.stats!r}: {exc}", file=sys.stderr)
            return 2
        return 0
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    paths = make_figures(args.out, grid=args.grid, num_batches=args.num_batches, batch_size=args.batch_size,
                         seed=args.seed, which=which)
    for p in paths:
        print(p)
    print(f"{len(paths)} figure(s) in {time.perf_counter() - start:.1f} s")
    return 0
