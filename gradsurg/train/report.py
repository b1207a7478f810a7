"""The report of an ablation grid: summary over seeds, flags, the Markdown table, the plots, the CSV.

Everything here reads rows of a results store (:mod:`gradsurg.train.store`) and
trains nothing:

- :func:`summarize`     -- runs grouped by variant (everything but the seed): mean +- std
- :func:`flag`          -- why a run needs a look (failed, not scored, collapsed)
- :func:`format_table`  -- the Markdown table (``OUT/table.md``)
- :func:`plot_results`  -- STS vs every swept knob (``OUT/sts_vs_<knob>.png``)
- :func:`write_csv`     -- one flat line per run (``OUT/results.csv``)
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

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
