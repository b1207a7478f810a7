"""Ablation grids: train over losses x modifications x loss parameters x seeds, tabulate, plot.

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
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Iterable

from .config import ConfigError, TrainConfig, parse_modified, parse_overrides, parse_value, preset, preset_names
from .data import PACKAGED_WAS
from .models import ModelLoadError
from .store import RESULTS, SET_ASIDE, ResultsStore, StoreError, parse, strict
#: config fields that do not change what a run computes (left out of its identity)
_NOT_IDENTITY = {"output_dir", "progress", "tensorboard", "save_best", "device", "eval_batch_size", "log_every"}
#: preferred default grid: InfoNCE vs the non-contrastive objectives, original and modified
DEFAULT_LOSSES = ("info_nce", "vicreg")
DEFAULT_MODIFIED = ("none", "w_gd,w_w,w_r")


#: fields added to TrainConfig after results files existed: left out of a run's identity while at
#: these values, so older results.jsonl files stay resumable (add every new field here)
_ADDED_LATER = {"mini_batch_size": None, "form": None, "patience": None, "suite_data": None}


def run_key(config: TrainConfig) -> str:
    """A stable identity of a run: a hash of every config field that affects its result."""
    data = {k: PACKAGED_WAS.get(v, v) if k in ("train_data", "eval_data") else v
            for k, v in config.to_dict().items()
            if k not in _NOT_IDENTITY and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def accepts_modified(loss: str) -> bool:
    """Whether the registry's ``loss`` takes a ``modified`` parameter (the non-contrastive objectives)."""
    from .losses import loss_from_fields

    try:
        loss_from_fields(loss, {}, "w_gd")
        return True
    except ConfigError:
        return False


def accepts_form(loss: str) -> bool:
    """Whether the registry's ``loss`` takes a ``form`` parameter (non-contrastive objectives, sg)."""
    from .losses import loss_from_fields

    try:
        loss_from_fields(loss, {}, None, "default")
        return True
    except ConfigError:
        return False


def _split_values(text: str) -> list[Any]:
    return [parse_value(v) for v in text.split(",")] if text != "" else [""]


def expand_grid(
    base: TrainConfig,
    losses: Iterable[str] | None = None,
    modified: Iterable[str] | None = None,
    params: dict[str, list[Any]] | None = None,
    seeds: Iterable[int] | None = None,
) -> list[TrainConfig]:
    """All configs of the grid, in order loss -> modified -> parameters -> seed.

    A grid is a set: a value repeated on an axis, or two combinations that
    describe the same run (the same :func:`run_key`), give one run.
    ``modified`` values ("none", "w_gd,w_w,w_r", ...) are applied only to losses
    that accept ``modified``; a parameter a loss does not take raises
    :class:`ConfigError` naming it (checked by building the loss once).
    """
    from .losses import loss_from_fields

    losses = list(losses or [base.loss])
    mods = list(modified) if modified else [base.modified or "none"]
    params = params or {}
    seeds = list(seeds) if seeds else [base.seed]
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seeds must be integers, got {seed!r}")
    keys = sorted(params)
    configs: list[TrainConfig] = []
    for loss in losses:
        takes_mod = any(parse_modified(m) for m in mods) and accepts_modified(loss)
        # ``form`` applies to the losses that have one (the non-contrastive objectives and sg)
        form = base.form if base.form and accepts_form(loss) else None
        loss_mods = mods if takes_mod else ["none"]
        for norm in dict.fromkeys(",".join(parse_modified(m)) or None for m in loss_mods):  # each once
            for values in itertools.product(*(params[k] for k in keys)) if keys else [()]:
                loss_params = dict(base.loss_params)
                loss_params.update(dict(zip(keys, values)))
                loss_from_fields(loss, loss_params, norm, form)  # fail fast, naming the bad parameter
                for seed in seeds:
                    configs.append(base.replace(loss=loss, modified=norm, form=form, loss_params=loss_params,
                                                seed=int(seed)))
    return unique_runs(configs)


def unique_runs(configs: Iterable[TrainConfig]) -> list[TrainConfig]:
    """``configs`` without repeats of a run (the same :func:`run_key`), in first-seen order."""
    unique: dict[str, TrainConfig] = {}
    for cfg in configs:
        unique.setdefault(run_key(cfg), cfg)
    return list(unique.values())


def repeated(name: str, values: Iterable[Any]) -> str | None:
    """A note when ``values`` (one grid axis) lists a value more than once, else None."""
    values = list(values)
    seen: dict[str, int] = {}
    for v in values:
        seen[json.dumps(v, default=str)] = seen.get(json.dumps(v, default=str), 0) + 1
    twice = [f"{k} ({n} times)" for k, n in seen.items() if n > 1]
    if not twice:
        return None
    return f"note: {name} repeats {', '.join(twice)}; a grid is a set, each run is trained and counted once"


# --------------------------------------------------------------- results I/O
def read_results(path: str) -> list[dict]:
    """The good rows of a results JSONL, read only (see :mod:`gradsurg.train.store` for what is checked)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        return list(parse(fh.read())[0].values())


def variant_label(row: dict) -> str:
    """``loss``, ``loss (m: w_gd+w_w+w_r)`` or ``loss (ori)`` plus swept parameters."""
    cfg = row["config"]
    label = cfg["loss"]
    if cfg.get("modified"):
        label += f" (m: {cfg['modified'].replace(',', '+')})"
    elif row.get("takes_modified"):
        label += " (ori)"
    if cfg.get("form") and cfg["form"] != "default":
        label += f" [{cfg['form']}]"
    params = cfg.get("loss_params") or {}
    if params:
        label += " " + " ".join(f"{k}={params[k]}" for k in sorted(params))
    return label


def write_csv(rows: list[dict], path: str) -> None:
    """A flat CSV of the results (one line per run)."""
    fields = ["key", "status", "loss", "modified", "loss_params", "seed", "spearman", "pearson", "n_pairs",
              "best_dev", "best_step", "initial_dev", "steps", "first_loss", "last_loss", "train_seconds", "error",
              "collapsed"]
    stat_keys = sorted({k for r in rows for k in (r.get("final_stats") or {})})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(fields + [f"final_{k}" for k in stat_keys])
        for r in rows:
            cfg = r.get("config", {})
            w.writerow([r.get("key"), r.get("status"), cfg.get("loss"), cfg.get("modified") or "",
                        json.dumps(cfg.get("loss_params") or {}, sort_keys=True), cfg.get("seed"),
                        r.get("spearman"), r.get("pearson"), r.get("n_pairs"), r.get("best_dev"), r.get("best_step"),
                        r.get("initial_dev"), r.get("steps"), r.get("first_loss"), r.get("last_loss"),
                        r.get("train_seconds"), r.get("error", ""), bool(r.get("collapsed"))]
                       + [(r.get("final_stats") or {}).get(k) for k in stat_keys])


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def summarize(rows: list[dict]) -> list[dict]:
    """Group finished runs by variant (everything but the seed): mean and std over seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get("spearman") is None:
            continue
        groups.setdefault(variant_label(r), []).append(r)
    out = []
    for label, rs in groups.items():
        sp = [r["spearman"] for r in rs]
        pe = [float("nan") if r.get("pearson") is None else r["pearson"] for r in rs]
        mean, std = _mean_std(sp)
        pmean, pstd = _mean_std(pe)
        init = [r["initial_dev"] for r in rs if r.get("initial_dev") is not None]
        out.append({
            "variant": label, "n_seeds": len(rs), "seeds": sorted(r["config"]["seed"] for r in rs),
            "spearman_mean": mean, "spearman_std": std, "pearson_mean": pmean, "pearson_std": pstd,
            "best_step_mean": _mean_std([float(r.get("best_step") or 0) for r in rs])[0],
            "initial_subset_dev": init[0] if init else None,
            "n_pairs": rs[0].get("n_pairs"),
            "minutes_per_run": _mean_std([(r.get("train_seconds") or 0.0) / 60 for r in rs])[0],
        })
    return out


def flag(row: dict) -> str | None:
    """Why a run needs a look (failed, not scored, collapsed), else None."""
    if row.get("status") != "ok":
        return f"failed: {row.get('error', '')}"
    if row.get("spearman") is None:
        return "not scored (no STS score was recorded)"
    if row.get("collapsed"):
        return f"collapsed: {row.get('collapse_note') or 'the dev score fell far below its start'}"
    return None


def format_table(summary: list[dict], flagged: list[dict] | None = None) -> str:
    """A Markdown table: variant, seeds, Spearman mean +- std (x100), Pearson, best step, minutes;
    then one line per run of ``flagged`` (failed, not scored or collapsed: see :func:`flag`)."""
    lines = ["| variant | seeds | STS Spearman (mean +- std) | Pearson | best step | min/run |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        std = "" if math.isnan(s["spearman_std"]) else f" +- {s['spearman_std']:.2f}"
        pstd = "" if math.isnan(s["pearson_std"]) else f" +- {s['pearson_std']:.2f}"
        pmean = "n/a" if math.isnan(s["pearson_mean"]) else f"{s['pearson_mean']:.2f}"
        lines.append(f"| {s['variant']} | {s['n_seeds']} | {s['spearman_mean']:.2f}{std} | "
                     f"{pmean}{pstd} | {s['best_step_mean']:.0f} | {s['minutes_per_run']:.1f} |")
    for r in flagged or []:
        note = flag(r) or ""
        kind, _, detail = note.partition(":")
        lines.append(f"| {variant_label(r)} seed {r['config']['seed']} | {kind} | {detail.strip()[:80]} | | | |")
    return "\n".join(lines)


def plot_results(rows: list[dict], out_dir: str) -> list[str]:
    """Plots of STS Spearman (mean +- std over seeds) vs every swept knob; returns the files written.

    A knob is a loss parameter that takes several values, or ``modified`` /
    ``loss`` when they vary (drawn as bars).
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("spearman") is not None]
    if not ok:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    param_keys = sorted({k for r in ok for k in (r["config"].get("loss_params") or {})})
    for key in param_keys:
        values = {json.dumps(r["config"]["loss_params"].get(key), default=str) for r in ok}
        if len(values) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        lines: dict[str, dict[Any, list[float]]] = {}
        for r in ok:
            cfg = r["config"]
            other = {k: v for k, v in (cfg.get("loss_params") or {}).items() if k != key}
            name = cfg["loss"] + (f" m:{cfg['modified']}" if cfg.get("modified") else "")
            if other:
                name += " " + " ".join(f"{k}={v}" for k, v in sorted(other.items()))
            lines.setdefault(name, {}).setdefault(cfg["loss_params"].get(key), []).append(r["spearman"])
        for name, pts in lines.items():
            xs = sorted(pts, key=lambda v: (isinstance(v, str), v))
            numeric = all(isinstance(x, (int, float)) for x in xs)
            pos = xs if numeric else list(range(len(xs)))
            means = [_mean_std(pts[x])[0] for x in xs]
            stds = [0.0 if math.isnan(_mean_std(pts[x])[1]) else _mean_std(pts[x])[1] for x in xs]
            ax.errorbar(pos, means, yerr=stds, marker="o", capsize=3, label=name)
            if not numeric:
                ax.set_xticks(pos, [str(x) for x in xs])
        ax.set_xlabel(key)
        ax.set_ylabel("STS Spearman x100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"sts_vs_{key}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    summary = summarize(ok)
    if len(summary) > 1:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(summary) + 2), 4.0))
        names = [s["variant"] for s in summary]
        means = [s["spearman_mean"] for s in summary]
        stds = [0.0 if math.isnan(s["spearman_std"]) else s["spearman_std"] for s in summary]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3,
               color=["tab:orange" if "(m:" in n else ("tab:gray" if "(ori)" in n else "tab:blue") for n in names])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        lo = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, lo - 5), max(m + s for m, s in zip(means, stds)) + 2)
        ax.set_ylabel("STS Spearman x100")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, "sts_vs_variant.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------ the grid
def run_grid(configs: list[TrainConfig], out_dir: str, resume: bool = True, retry_failed: bool = False,
             progress: bool = True, stream=None, wait: float = 0.0) -> list[dict]:
    """Train every config not yet in ``out_dir/results.jsonl``; return all rows for this grid.

    The folder is locked for the whole grid (:class:`~gradsurg.train.store.StoreBusy`
    if another process holds it, after ``wait`` seconds); lines of the results
    file that are not usable rows are set aside first, with a message. A run's
    folder ``runs/<run>-<key>`` is emptied before the run is (re)trained.
    Ctrl-C (``KeyboardInterrupt``) propagates after the finished runs are stored.
    """
    import shutil

    from .trainer import train

    stream = sys.stderr if stream is None else stream
    configs = unique_runs(configs)
    store = ResultsStore(out_dir)
    with store.lock(wait):
        if not resume and os.path.exists(store.path):
            backup = store.path + f".{time.strftime('%Y%m%d-%H%M%S')}.bak"
            os.replace(store.path, backup)
            print(f"--no-resume: the old results are kept in {backup}", file=stream)
        done = store.load()
        if store.problems or store.superseded:
            notes = store.check()
            store.repair()
            print(f"{store.path}: {len(notes)} line(s) were not usable rows; set aside in "
                  f"{store.set_aside_path}:", file=stream)
            for note in notes:
                print(f"  {note}", file=stream)
        keys = [run_key(c) for c in configs]
        todo = [(k, c) for k, c in zip(keys, configs)
                if k not in done or (retry_failed and done[k].get("status") != "ok")]
        if len(todo) < len(configs):
            print(f"resuming: {len(configs) - len(todo)} of {len(configs)} runs already in {store.path}",
                  file=stream)
        takes_mod: dict[str, bool] = {}
        outer = None
        if progress:
            from tqdm.auto import tqdm

            outer = tqdm(total=len(todo), desc="ablation", unit="run", position=0)
        try:
            for key, cfg in todo:
                if cfg.loss not in takes_mod:
                    takes_mod[cfg.loss] = accepts_modified(cfg.loss)
                run_dir = os.path.join(out_dir, "runs", f"{cfg.run_name()}-{key}")
                if os.path.isdir(run_dir):  # a rerun: no file of the old attempt survives
                    shutil.rmtree(run_dir)
                run_cfg = cfg.replace(output_dir=run_dir, progress=progress)
                row: dict[str, Any] = {"key": key, "takes_modified": takes_mod[cfg.loss]}
                started = time.time()
                try:
                    result = train(run_cfg)
                    row.update(result.to_dict())
                    row["status"] = "ok"
                except (FloatingPointError, RuntimeError, ValueError) as exc:  # a failing run must not stop the grid
                    row.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                "train_seconds": round(time.time() - started, 2)})
                row["config"] = cfg.to_dict()
                row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                store.add(row)
                done = store.rows
                write_csv([done[k] for k in keys if k in done], os.path.join(out_dir, "results.csv"))
                if outer is not None:
                    outer.update(1)
                note = flag(row)
                msg = (f"{cfg.run_name()}: spearman {row['spearman']:.2f} (best dev subset "
                       f"{row.get('best_dev') or float('nan'):.2f} at step {row.get('best_step')})"
                       if note is None else f"{cfg.run_name()}: {note}")
                (outer.write if outer is not None else print)(msg)
        finally:
            if outer is not None:
                outer.close()
        return [done[k] for k in keys if k in done]


# ------------------------------------------------------------------- the CLI
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
        configs = expand_grid(base, losses, mods, params, seeds)
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
                        base.max_train_sentences)
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
    plots = plot_results(rows, args.out)
    n_pairs = summary[0]["n_pairs"] if summary else None
    header = (f"STS Spearman x100 of the best checkpoint on {base.eval_data} ({n_pairs} pairs), "
              f"mean +- std over seeds; model {base.model}, pooler {base.pooler}, batch {base.batch_size}, "
              f"lr {base.lr}, {base.max_steps} steps"
              + (f" at most, stopping after {base.patience} evaluations without a new best" if base.patience else ""))
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as fh:
        fh.write(header + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(strict(summary), fh, indent=2, allow_nan=False)
    for p in plots:
        print(f"plot: {p}", file=sys.stderr)
    print(header)
    print(table)
    return 0 if not any(r.get("status") != "ok" for r in rows) else 1
