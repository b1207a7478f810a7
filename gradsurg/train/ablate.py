"""``gradsurg ablate``: train over losses x modifications x loss parameters x seeds, tabulate, plot.

    gradsurg ablate                                   # quick preset, default grid, prints the table
    gradsurg ablate --loss vicreg --modified w_gd,w_w,w_r
    gradsurg ablate --loss info_nce vicreg barlow_twins --modified none w_gd,w_w,w_r --seeds 1 2 3
    gradsurg ablate --loss paradigm --param dissipation=margin --param ratio=0.5,1.0,1.5,2.0
    gradsurg ablate --config my.yaml --set lr=1e-5 --out runs/lr1e-5

Each finished run is stored in ``OUT/results.jsonl`` (:mod:`gradsurg.train.store`:
one strict-JSON line per run, written whole and fsynced, one line per run key,
one grid per folder at a time) and ``OUT/results.csv`` is rewritten from it;
rerunning the same command skips every run already recorded, so an
interrupted grid (Ctrl-C, a crash, a kill) resumes and loses only the run in
flight. ``--check`` reports lines of ``results.jsonl`` that are not usable rows,
``--repair`` sets them aside in ``OUT/results.set-aside.jsonl``.
At the end: a mean +- std table over seeds (printed, and ``OUT/table.md``),
plots of STS vs every swept knob (``OUT/sts_vs_<knob>.png``), and per run the
per-step statistics (``OUT/runs/<run>/stats.csv``, TensorBoard when installed).

``--modified`` values apply to the losses that take a ``modified`` parameter
(the non-contrastive objectives); other losses run once, unmodified.
``--param key=v1,v2`` sweeps a loss parameter (``loss_params.key``);
``--set key=value`` overrides any config field for every run.

This module is the command line only: the grid (expansion, run keys, training)
is :mod:`gradsurg.train.grid`, the table and plots :mod:`gradsurg.train.report`,
the results file :mod:`gradsurg.train.store`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .config import ConfigError, TrainConfig, parse_modified, parse_overrides, parse_value, preset, preset_names
from .grid import accepts_modified, expand_grid, repeated, run_grid, run_key, with_untrained
from .report import flag, format_table, header, plot_results, plot_title, summarize
from .models import ModelLoadError
from .store import RESULTS, SET_ASIDE, ResultsStore, StoreError, strict

#: preferred default grid: InfoNCE vs the non-contrastive objectives, original and modified
DEFAULT_LOSSES = ("info_nce", "vicreg")
DEFAULT_MODIFIED = ("none", "w_gd,w_w,w_r")

def _split_values(text: str) -> list[Any]:
    return [parse_value(v) for v in text.split(",")] if text != "" else [""]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``gradsurg ablate``."""
    parser.add_argument("--preset", default="quick", choices=preset_names(),
                        help="base configuration (quick: MiniLM on 2 CPU cores in minutes; paper: BERT-base, GPU)")
    parser.add_argument("--config", default=None, help="YAML/JSON file of config fields (over the preset)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field for every run (repeatable), e.g. --set lr=1e-5 "
                             "or --set loss_params.temperature=0.1; every field with its type and default: "
                             "--list-fields")
    parser.add_argument("--list-fields", action="store_true",
                        help="list every config field (--set KEY=VALUE, --config file) with its type and its "
                             "value in the chosen --preset (after --config and --set), and exit")
    parser.epilog = ("Config fields: `gradsurg ablate --list-fields` lists every field with its type and default "
                     "(`--preset paper --list-fields`: that preset's values).")
    parser.add_argument("--loss", nargs="+", default=None,
                        help=f"loss name(s) (grid axis); default {' '.join(DEFAULT_LOSSES)}")
    parser.add_argument("--modified", nargs="+", default=None,
                        help="modification switches (grid axis) for non-contrastive objectives: "
                             "'none' or comma lists from w_gd,w_w,w_r; 'all' = w_gd,w_w,w_r")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=V1,V2",
                        help="sweep a loss parameter (grid axis; repeatable), e.g. --param ratio=0.5,1.0,1.5")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (grid axis); default 1")
    parser.add_argument("--out", default="runs/ablate", help="output folder (results.jsonl, table.md, plots)")
    parser.add_argument("--no-resume", action="store_true", help="start over (the old results.jsonl is kept as .bak)")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs recorded as failed")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: table and plots from the runs of this grid already in results.jsonl")
    parser.add_argument("--check", action="store_true",
                        help="check OUT/results.jsonl line by line and report what is not a usable row "
                             "(changes nothing; exit 1 when something is reported)")
    parser.add_argument("--repair", action="store_true",
                        help=f"set the lines --check reports aside in OUT/{SET_ASIDE} and rewrite results.jsonl")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="when another grid is writing to --out, wait up to this long for it (default: refuse)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    for flag, field_name, kind in (("--model", "model", str), ("--pooler", "pooler", str),
                                   ("--max-steps", "max_steps", int), ("--batch-size", "batch_size", int),
                                   ("--lr", "lr", float), ("--train-data", "train_data", str),
                                   ("--eval-data", "eval_data", str), ("--eval-every", "eval_every", int),
                                   ("--max-train-sentences", "max_train_sentences", int),
                                   ("--eval-max-pairs", "eval_max_pairs", int), ("--device", "device", str),
                                   ("--mini-batch-size", "mini_batch_size", int)):
        parser.add_argument(flag, dest=f"cfg_{field_name}", type=kind, default=None,
                            help=f"config field {field_name}")


def build_base(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """The base config (preset, then --config file, then dedicated flags, then --set) and
    the fields the user set explicitly (by the file, a flag or --set)."""
    from .config import load_mapping

    base = preset(args.preset)
    explicit: set[str] = set()
    if args.config:
        mapping = load_mapping(args.config)
        base = TrainConfig.from_dict(mapping, base=base)
        explicit |= set(mapping)
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    if flags:
        base = base.replace(**flags)
        explicit |= set(flags)
    overrides = parse_overrides(args.set)
    if "loss_params" in overrides:
        if not isinstance(overrides["loss_params"], dict):
            raise ConfigError(f"--set loss_params={overrides['loss_params']!r}: loss_params must be a mapping, "
                              "e.g. --set 'loss_params={temperature: 0.1}' or --set loss_params.temperature=0.1")
        merged = dict(base.loss_params)
        merged.update(overrides["loss_params"])
        overrides["loss_params"] = merged
    if overrides:
        base = base.replace(**overrides)
        explicit |= set(overrides)
    return base, explicit


def _grid_axes(args: argparse.Namespace, base: TrainConfig, explicit: set[str]):
    """Losses, modifications, swept parameters and seeds of the grid, with notes on repeats."""
    from ..registry import available_losses

    losses, mods = args.loss, args.modified
    if losses is None:
        if "loss" in explicit:  # the config's loss (file or --set), not the default grid
            losses = [base.loss]
        else:
            names = set(available_losses())
            losses = [n for n in DEFAULT_LOSSES if n in names] or [base.loss]
            if mods is None and "modified" not in explicit and any(accepts_modified(n) for n in losses):
                mods = list(DEFAULT_MODIFIED)
    if mods is not None:
        mods = ["w_gd,w_w,w_r" if m.strip().lower() == "all" else m for m in mods]
    params: dict[str, list[Any]] = {}
    for item in args.param:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--param {item!r} must look like key=v1,v2")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in params:
            raise ConfigError(f"--param {key} is given twice; list all its values once: --param {key}=v1,v2")
        params[key] = _split_values(text)
    seeds = args.seeds or [1]
    notes = [repeated("--loss", losses), repeated("--seeds", seeds),
             repeated("--modified", [",".join(parse_modified(m)) or "none" for m in mods or []])]
    notes += [repeated(f"--param {k}", v) for k, v in params.items()]
    return losses, mods, params, seeds, [n for n in notes if n]


def _check_device(device: str) -> None:
    from .models import pick_device

    try:
        pick_device(device)
    except ValueError as exc:
        raise ConfigError(f"config field 'device': {exc}") from None


def _check_store(args: argparse.Namespace) -> int:
    """``--check`` / ``--repair``: report (and set aside) the lines that are not usable rows."""
    store = ResultsStore(args.out)
    if not os.path.isdir(args.out):
        print(f"gradsurg ablate: --out {args.out!r} is not a folder (no grid has written there)", file=sys.stderr)
        return 2
    try:
        if args.repair:
            with store.lock(args.wait):
                store.load()
                notes = store.check()
                if notes:
                    store.repair()
        else:
            store.load()
            notes = store.check()
    except StoreError as exc:
        print(f"gradsurg ablate: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note)
    verb = f"set aside in {store.set_aside_path}" if args.repair else "(--repair sets them aside)"
    print(f"{store.path}: {len(store.rows)} run(s); {len(notes)} line(s) not usable"
          + (f" {verb}" if notes else ""))
    return 1 if notes and not args.repair else 0


def _list_fields(args: argparse.Namespace) -> int:
    """Print every config field with its type and its value in the base config (``--list-fields``)."""
    from .config import format_fields

    try:
        base, _ = build_base(args)
    except ConfigError as exc:
        print(f"gradsurg ablate: {exc}", file=sys.stderr)
        return 2
    source = f"preset {args.preset}" + (f" + {args.config}" if args.config else "") + (" + --set" if args.set else "")
    print(format_fields(base, f"Config fields (name: type = value in {source}); set one with --set KEY=VALUE "
                              "(loss_params.NAME=VALUE for a loss parameter) or in a --config YAML/JSON file."))
    return 0


def run(args: argparse.Namespace) -> int:
    """Expand the grid, run what is missing, print the table (last lines of stdout)."""
    if args.check or args.repair:
        return _check_store(args)
    if getattr(args, "list_fields", False):
        return _list_fields(args)
    try:
        base, explicit = build_base(args)
        losses, mods, params, seeds, notes = _grid_axes(args, base, explicit)
        configs = with_untrained(expand_grid(base, losses, mods, params, seeds))  # the baseline rows first
        # the data and the device are checked before any model is loaded
        from .data import STS_INSTEAD, TRAIN_INSTEAD, read_corpus, read_sts_pairs, resolve_path

        resolve_path(base.train_data, "config field 'train_data'", TRAIN_INSTEAD)
        if base.eval_data is not None and base.eval_format != "hf":
            resolve_path(base.eval_data, "config field 'eval_data'", STS_INSTEAD)
        if not args.dry_run and not args.table_only:
            _check_device(base.device)
            from .models import resolve_model

            resolve_model(base.model, "config field 'model'")  # a hub id that cannot load: one line, now
            read_corpus(base.train_data, base.train_format, base.text_column, base.hard_negative_column,
                        base.max_train_sentences, base.label_column)
            if base.eval_data is not None:
                read_sts_pairs(base.eval_data, base.eval_format, base.eval_split).subset(base.eval_max_pairs)
    except (ConfigError, ModelLoadError) as exc:
        print(f"gradsurg ablate: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(note, file=sys.stderr)
    print(f"{len(configs)} run(s) -> {args.out}/{RESULTS}", file=sys.stderr)
    if args.dry_run:
        for c in configs:
            print(f"{run_key(c)}  {c.run_name()}")
        return 0
    store = ResultsStore(args.out)
    try:
        if args.table_only:
            if not os.path.isdir(args.out):
                raise StoreError(f"--out {args.out!r} does not exist: no run of this grid has finished there")
            done = store.load()
            for note in store.check():
                print(f"warning: {note} (ignored; --repair sets it aside)", file=sys.stderr)
            rows = [done[run_key(c)] for c in configs if run_key(c) in done]
            print(f"{len(rows)} of {len(configs)} runs of this grid are in {store.path}", file=sys.stderr)
        else:
            try:
                rows = run_grid(configs, args.out, resume=not args.no_resume, retry_failed=args.retry_failed,
                                progress=not args.no_progress, wait=args.wait)
            except KeyboardInterrupt:
                kept = store.load()
                n = sum(run_key(c) in kept for c in configs)
                print(f"\ngradsurg ablate: interrupted; {n} of {len(configs)} runs of this grid are kept in "
                      f"{store.path}; rerun the same command to resume", file=sys.stderr)
                return 130
    except StoreError as exc:
        print(f"gradsurg ablate: {exc}", file=sys.stderr)
        return 2
    summary = summarize(rows)
    flagged = [r for r in rows if flag(r)]
    table = format_table(summary, flagged)
    setting = f"preset {args.preset}" + (f" + {os.path.basename(args.config)}" if args.config else "")
    plots = plot_results(rows, args.out, title=plot_title(setting, base))
    head = header(base, rows, setting)
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as fh:
        fh.write(head + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(strict(summary), fh, indent=2, allow_nan=False)
    for p in plots:
        print(f"plot: {p}", file=sys.stderr)
    print(head)
    print(table)
    return 0 if not any(r.get("status") != "ok" for r in rows) else 1
