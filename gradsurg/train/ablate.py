"""Ablation grids: train over losses x modifications x loss parameters x seeds, tabulate, plot.

    gradsurg ablate                                   # quick preset, default grid, prints the table
    gradsurg ablate --loss vicreg --modified w_gd,w_w,w_r
    gradsurg ablate --loss info_nce vicreg barlow_twins --modified none w_gd,w_w,w_r --seeds 1 2 3
    gradsurg ablate --loss paradigm --param dissipation=margin --param ratio=0.5,1.0,1.5,2.0
    gradsurg ablate --config my.yaml --set lr=1e-5 --out runs/lr1e-5

Each finished run is appended (flushed and fsynced) to ``OUT/results.jsonl``
and ``OUT/results.csv`` is rewritten from it; rerunning the same command skips
every run already recorded, so an interrupted grid resumes and loses nothing.
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

RESULTS = "results.jsonl"
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
    data = {k: v for k, v in config.to_dict().items()
            if k not in _NOT_IDENTITY and not (k in _ADDED_LATER and v == _ADDED_LATER[k])}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def accepts_modified(loss: str) -> bool:
    """Whether the registry's ``loss`` takes a ``modified`` parameter (the non-contrastive objectives)."""
    from .losses import build_loss

    try:
        build_loss(loss, {}, "w_gd")
        return True
    except ConfigError:
        return False


def accepts_form(loss: str) -> bool:
    """Whether the registry's ``loss`` takes a ``form`` parameter (non-contrastive objectives, sg)."""
    from .losses import build_loss

    try:
        build_loss(loss, {}, None, "default")
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

    ``modified`` values ("none", "w_gd,w_w,w_r", ...) are applied only to losses
    that accept ``modified``; a parameter a loss does not take raises
    :class:`ConfigError` naming it (checked by building the loss once).
    """
    from .losses import build_loss

    losses = list(losses or [base.loss])
    mods = list(modified) if modified else [base.modified or "none"]
    params = params or {}
    seeds = list(seeds) if seeds else [base.seed]
    keys = sorted(params)
    configs: list[TrainConfig] = []
    for loss in losses:
        takes_mod = any(parse_modified(m) for m in mods) and accepts_modified(loss)
        # ``form`` applies to the losses that have one (the non-contrastive objectives and sg)
        form = base.form if base.form and accepts_form(loss) else None
        loss_mods = mods if takes_mod else ["none"]
        seen_mods = []
        for m in loss_mods:
            norm = ",".join(parse_modified(m)) or None
            if norm in seen_mods:
                continue
            seen_mods.append(norm)
            for values in itertools.product(*(params[k] for k in keys)) if keys else [()]:
                loss_params = dict(base.loss_params)
                loss_params.update(dict(zip(keys, values)))
                build_loss(loss, loss_params, norm, form)  # fail fast, naming the bad parameter
                for seed in seeds:
                    configs.append(base.replace(loss=loss, modified=norm, form=form, loss_params=loss_params,
                                                seed=int(seed)))
    return configs


# --------------------------------------------------------------- results I/O
def read_results(path: str) -> list[dict]:
    """Rows of a results JSONL (a torn last line from a crash is ignored)."""
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def append_result(path: str, row: dict) -> None:
    """Append one JSON line and force it to disk."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
              "best_dev", "best_step", "initial_dev", "steps", "first_loss", "last_loss", "train_seconds", "error"]
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
                        r.get("train_seconds"), r.get("error", "")]
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
        pe = [r["pearson"] for r in rs]
        mean, std = _mean_std(sp)
        pmean, pstd = _mean_std(pe)
        init = [r["initial_dev"] for r in rs if r.get("initial_dev") is not None]
        out.append({
            "variant": label, "n_seeds": len(rs), "seeds": sorted(r["config"]["seed"] for r in rs),
            "spearman_mean": mean, "spearman_std": std, "pearson_mean": pmean, "pearson_std": pstd,
            "best_step_mean": _mean_std([float(r.get("best_step") or 0) for r in rs])[0],
            "initial_subset_dev": init[0] if init else None,
            "n_pairs": rs[0].get("n_pairs"),
            "minutes_per_run": _mean_std([r.get("train_seconds", 0.0) / 60 for r in rs])[0],
        })
    return out


def format_table(summary: list[dict], failed: list[dict] | None = None) -> str:
    """A Markdown table: variant, seeds, Spearman mean +- std (x100), Pearson, best step, minutes."""
    lines = ["| variant | seeds | STS Spearman (mean +- std) | Pearson | best step | min/run |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        std = "" if math.isnan(s["spearman_std"]) else f" +- {s['spearman_std']:.2f}"
        pstd = "" if math.isnan(s["pearson_std"]) else f" +- {s['pearson_std']:.2f}"
        lines.append(f"| {s['variant']} | {s['n_seeds']} | {s['spearman_mean']:.2f}{std} | "
                     f"{s['pearson_mean']:.2f}{pstd} | {s['best_step_mean']:.0f} | {s['minutes_per_run']:.1f} |")
    for r in failed or []:
        lines.append(f"| {variant_label(r)} seed {r['config']['seed']} | failed | {r.get('error', '')[:60]} | | | |")
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
             progress: bool = True, stream=None) -> list[dict]:
    """Train every config not yet in ``out_dir/results.jsonl``; return all rows for this grid."""
    from .trainer import train

    stream = sys.stderr if stream is None else stream
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RESULTS)
    done = {r["key"]: r for r in read_results(path)} if resume else {}
    if not resume and os.path.exists(path):
        os.replace(path, path + f".{int(time.time())}.bak")
    keys = [run_key(c) for c in configs]
    todo = [(k, c) for k, c in zip(keys, configs)
            if k not in done or (retry_failed and done[k].get("status") != "ok")]
    if len(todo) < len(configs):
        print(f"resuming: {len(configs) - len(todo)} of {len(configs)} runs already in {path}", file=stream)
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
            run_cfg = cfg.replace(output_dir=run_dir, progress=progress)
            row: dict[str, Any] = {"key": key, "takes_modified": takes_mod[cfg.loss]}
            started = time.time()
            try:
                result = train(run_cfg)
                row.update(result.to_dict())
                row["status"] = "ok"
            except (FloatingPointError, RuntimeError, ValueError) as exc:  # a failing run must not stop the grid
                row.update({"config": cfg.to_dict(), "status": "failed", "error": str(exc),
                            "train_seconds": round(time.time() - started, 2)})
            row["config"] = cfg.to_dict()
            row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            append_result(path, row)
            done[key] = row
            write_csv([done[k] for k in keys if k in done], os.path.join(out_dir, "results.csv"))
            if outer is not None:
                outer.update(1)
            msg = (f"{cfg.run_name()}: spearman {row['spearman']:.2f} (best dev subset {row['best_dev']:.2f} "
                   f"at step {row['best_step']})" if row["status"] == "ok" and row.get("spearman") is not None
                   else f"{cfg.run_name()}: {row['status']} {row.get('error', '')}")
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
                             "or --set loss_params.temperature=0.1")
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


def build_base(args: argparse.Namespace) -> TrainConfig:
    """The base config: preset, then --config file, then dedicated flags, then --set."""
    from .config import load_mapping

    base = preset(args.preset)
    if args.config:
        base = TrainConfig.from_dict(load_mapping(args.config), base=base)
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    if flags:
        base = base.replace(**flags)
    overrides = parse_overrides(args.set)
    if "loss_params" in overrides:
        merged = dict(base.loss_params)
        merged.update(overrides["loss_params"])
        overrides["loss_params"] = merged
    if overrides:
        base = base.replace(**overrides)
    return base


def run(args: argparse.Namespace) -> int:
    """Expand the grid, run what is missing, print the table (last lines of stdout)."""
    from .losses import available_losses

    try:
        base = build_base(args)
        losses = args.loss
        mods = args.modified
        if losses is None:
            names = set(available_losses())
            losses = [n for n in DEFAULT_LOSSES if n in names] or [base.loss]
            if mods is None and any(accepts_modified(n) for n in losses):
                mods = list(DEFAULT_MODIFIED)
        if mods is not None:
            mods = ["w_gd,w_w,w_r" if m.strip().lower() == "all" else m for m in mods]
        params = {}
        for item in args.param:
            if "=" not in item:
                raise ConfigError(f"--param {item!r} must look like key=v1,v2")
            key, text = item.split("=", 1)
            params[key.strip()] = _split_values(text)
        configs = expand_grid(base, losses, mods, params, args.seeds or [1])
        # data paths are checked before any model is loaded
        from .data import resolve_path

        resolve_path(base.train_data, "config field 'train_data'")
        if base.eval_data is not None and base.eval_format != "hf":
            resolve_path(base.eval_data, "config field 'eval_data'")
    except ConfigError as exc:
        print(f"gradsurg ablate: {exc}", file=sys.stderr)
        return 2
    print(f"{len(configs)} run(s) -> {args.out}/{RESULTS}", file=sys.stderr)
    if args.dry_run:
        for c in configs:
            print(f"{run_key(c)}  {c.run_name()}")
        return 0
    if args.table_only:
        done = {r["key"]: r for r in read_results(os.path.join(args.out, RESULTS))}
        rows = [done[run_key(c)] for c in configs if run_key(c) in done]
        print(f"{len(rows)} of {len(configs)} runs of this grid are in {args.out}/{RESULTS}", file=sys.stderr)
    else:
        rows = run_grid(configs, args.out, resume=not args.no_resume, retry_failed=args.retry_failed,
                        progress=not args.no_progress)
    summary = summarize(rows)
    failed = [r for r in rows if r.get("status") != "ok"]
    table = format_table(summary, failed)
    plots = plot_results(rows, args.out)
    n_pairs = summary[0]["n_pairs"] if summary else None
    header = (f"STS Spearman x100 of the best checkpoint on {base.eval_data} ({n_pairs} pairs), "
              f"mean +- std over seeds; model {base.model}, pooler {base.pooler}, batch {base.batch_size}, "
              f"lr {base.lr}, {base.max_steps} steps"
              + (f" at most, stopping after {base.patience} evaluations without a new best" if base.patience else ""))
    with open(os.path.join(args.out, "table.md"), "w", encoding="utf-8") as fh:
        fh.write(header + "\n\n" + table + "\n")
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    for p in plots:
        print(f"plot: {p}", file=sys.stderr)
    print(header)
    print(table)
    return 0 if not failed else 1
