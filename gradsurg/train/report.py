"""The report of an ablation grid: summary over seeds, flags, the Markdown table, the plots, the CSV.

Everything here reads rows of a results store (:mod:`gradsurg.train.store`) and
trains nothing:

- :func:`summarize`     -- runs grouped by variant (everything but the seed): mean +- std
- :func:`flag`          -- why a run needs a look (failed, not scored, collapsed)
- :func:`format_table`  -- the Markdown table (``OUT/table.md``)
- :func:`plot_results`  -- STS vs every swept knob (``OUT/sts_vs_<knob>.png``), the
  ``untrained`` row (the encoder before training) as the baseline
- :func:`header`        -- the line above the table (data, setting, the steps actually run)
- :func:`write_csv`     -- one flat line per run (``OUT/results.csv``)
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from .store import UNTRAINED

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
    for label, rs in sorted(groups.items(), key=lambda item: item[0] != UNTRAINED):  # the baseline first
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


#: points of Spearman x100 left free above and below the plotted values and the baseline
PLOT_MARGIN = 2.0


def y_range(values: list[tuple[float, float]], baseline: float | None = None) -> tuple[float, float]:
    """The y axis of a grid plot: every ``mean +- std`` and the baseline, with :data:`PLOT_MARGIN`
    points either side, within Spearman's [-100, 100].

    The plots draw points with error bars, not bars: a bar's length reads as an
    amount from zero, and an axis from 0 would squeeze the one-point differences a
    grid is about into a line; the untrained baseline is always inside the range,
    so a run below it shows as below it.
    """
    lows = [m - s for m, s in values] + ([baseline] if baseline is not None else [])
    highs = [m + s for m, s in values] + ([baseline] if baseline is not None else [])
    return max(-100.0, min(lows) - PLOT_MARGIN), min(100.0, max(highs) + PLOT_MARGIN)


def plot_results(rows: list[dict], out_dir: str, title: str | None = None) -> list[str]:
    """Plots of STS Spearman (mean +- std over seeds) vs every swept knob; returns the files written.

    A knob is a loss parameter that takes several values (``sts_vs_<knob>.png``,
    a line per other setting), and the variants themselves (``sts_vs_variant.png``,
    a point per variant). The ``untrained`` rows are the dashed horizontal
    baseline of every plot, not a point; ``title`` (preset and data) heads each
    plot; the y axis is :func:`y_range`'s.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get("spearman") is not None]
    untrained = [r["spearman"] for r in ok if r["config"]["loss"] == UNTRAINED]
    ok = [r for r in ok if r["config"]["loss"] != UNTRAINED]
    if not ok:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    baseline = _mean_std(untrained)[0] if untrained else None

    def finish(fig, ax, points: list[tuple[float, float]], name: str) -> str:
        if baseline is not None:
            ax.axhline(baseline, color="k", lw=1, ls="--", label=f"untrained ({baseline:.2f})")
        ax.set_ylim(*y_range(points, baseline))
        ax.set_ylabel("STS Spearman x100 (mean +- std over seeds)", fontsize=8)
        if title:
            ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

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
        points = []
        for name, pts in lines.items():
            xs = sorted(pts, key=lambda v: (isinstance(v, str), v))
            numeric = all(isinstance(x, (int, float)) for x in xs)
            pos = xs if numeric else list(range(len(xs)))
            means = [_mean_std(pts[x])[0] for x in xs]
            stds = [0.0 if math.isnan(_mean_std(pts[x])[1]) else _mean_std(pts[x])[1] for x in xs]
            points += list(zip(means, stds))
            ax.errorbar(pos, means, yerr=stds, marker="o", capsize=3, label=name)
            if not numeric:
                ax.set_xticks(pos, [str(x) for x in xs])
        ax.set_xlabel(key)
        written.append(finish(fig, ax, points, f"sts_vs_{key}.png"))
    summary = summarize(ok)
    if len(summary) > 1 or (summary and baseline is not None):
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(summary) + 2), 4.0))
        names = [s["variant"] for s in summary]
        means = [s["spearman_mean"] for s in summary]
        stds = [0.0 if math.isnan(s["spearman_std"]) else s["spearman_std"] for s in summary]
        for i, (n, m, sd) in enumerate(zip(names, means, stds)):
            color = "tab:orange" if "(m:" in n else ("tab:gray" if "(ori)" in n else "tab:blue")
            ax.errorbar([i], [m], yerr=[sd], fmt="o", color=color, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(names) - 0.4)
        written.append(finish(fig, ax, list(zip(means, stds)), "sts_vs_variant.png"))
    return written


def steps_text(base, rows: list[dict]) -> str:
    """The steps the trained runs of ``rows`` actually took (``24 steps``, ``40-96 steps``), with
    the cap when they stopped early or the corpus gave fewer steps than ``max_steps``."""
    steps = sorted({r.get("steps") for r in rows if r.get("status") == "ok" and isinstance(r.get("steps"), int)
                    and r["config"]["loss"] != UNTRAINED})
    cap = base.max_steps
    if not steps:
        return f"{cap} steps configured" if cap is not None else f"{base.epochs} epoch(s) configured"
    text = f"{steps[0]} steps" if len(steps) == 1 else f"{steps[0]}-{steps[-1]} steps"
    if base.patience:
        return text + (f" (at most {cap}, stopping after {base.patience} evaluations without a new best)"
                       if cap is not None else f" (stopping after {base.patience} evaluations without a new best)")
    if cap is not None and steps[-1] < cap:
        return text + f" (max_steps {cap}: the corpus gives fewer in {base.epochs} epoch(s) of batch {base.batch_size})"
    return text


def header(base, rows: list[dict], setting: str) -> str:
    """The line above the table: what is scored, on which data, and how the runs were trained
    (``setting`` names the preset and config file; the steps are those actually run)."""
    summary = summarize(rows)
    n_pairs = summary[0]["n_pairs"] if summary else None
    return (f"STS Spearman x100 of the best checkpoint on {base.eval_data} ({n_pairs} pairs), "
            f"mean +- std over seeds; {setting}, model {base.model}, pooler {base.pooler}, "
            f"batch {base.batch_size}, lr {base.lr}, {steps_text(base, rows)}"
            + ("; 'untrained' is the encoder before training, scored the same way"
               if any(r["config"]["loss"] == UNTRAINED for r in rows if r.get("status") == "ok") else ""))


def plot_title(setting: str, base) -> str:
    """``setting`` (preset, config file) and the data of a grid, for its plots."""
    return (f"{setting}; train {os.path.basename(str(base.train_data))}, "
            f"dev {os.path.basename(str(base.eval_data))}")
