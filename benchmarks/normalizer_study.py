"""The global-normaliser study (issue 23, item 3): table, summary and plots from its result stores.

The runs are made by ``gradsurg ablate`` (commands in docs/reports/global-normalizer-study.md), one
store per process; this script reads any number of stores through :func:`gradsurg.train.store.read_results`,
groups the trained runs by (batch size, normaliser, gamma), and writes to ``--out``:

Settings: ``batch`` (InfoNCE), ``global`` (``normalizer='global'``, per gamma), ``global, GD kept``
(``keep_dissipation=True``: the positive stays in the normaliser) and the control
``batch, constant GD`` (loss ``paradigm``: InfoNCE's softmax W over the negatives with GD = 1/tau and
R = 1, the global normaliser's gradient when u is the batch's own estimate, gamma = 1).

* ``table.md``: STS-B dev Spearman x100 (all 1500 pairs, the checkpoint selected on the 300-pair
  subset) mean +- std over seeds, the seeds, the examples seen at the selected step, the dev-subset
  score at the last step (the end of training, where the estimates' memory across epochs acts),
  minutes per run;
* ``summary.json``: the same numbers, per run too;
* ``sts_vs_batch.png``: the final score against the batch size, one line per normaliser;
* ``dev_curves.png``: the dev-subset score against examples seen, every run (one panel per batch size).

    python benchmarks/normalizer_study.py runs/gn-a runs/gn-b --out benchmarks/results/normalizer_cpu-2core
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from gradsurg.train.store import read_results  # noqa: E402


#: the control setting's name: the batch normaliser's W (softmax over the negatives) with GD = 1/tau
CONTROL = "batch, constant GD"
#: the global normaliser with the positive kept in it (keep_dissipation=True: InfoNCE's GD)
KEPT = "global, GD kept"


def setting(row: dict) -> tuple:
    cfg = row["config"]
    params = cfg.get("loss_params") or {}
    if cfg["loss"] == "paradigm":  # the control: InfoNCE's softmax W with a constant GD (= gamma 1)
        if params.get("dissipation") != "constant" or params.get("weight") != "softmax":
            raise ValueError(f"run {row['key']}: not the study's control paradigm: {params}")
        return cfg["batch_size"], CONTROL, None, cfg["lr"]
    normalizer = params.get("normalizer", "batch")
    gamma = params.get("gamma", 0.9) if normalizer == "global" else None
    if normalizer == "global" and params.get("keep_dissipation"):
        normalizer = KEPT
    return cfg["batch_size"], normalizer, gamma, cfg["lr"]


#: the study's learning rate (the report preset's); another one is named in the setting
LR = 3e-5


def label(key: tuple) -> str:
    b, normalizer, gamma, lr = key
    return f"B={b} {normalizer}" + (f" gamma={gamma:g}" if gamma is not None else "") + \
        (f" lr={lr:g}" if lr != LR else "")


TELEMETRY = ("normalizer_ratio_mean", "normalizer_ratio_q10", "normalizer_ratio_q90", "normalizer_first_seen")


def telemetry(store: str, row: dict) -> dict | None:
    """Per epoch, the means over steps of the global normaliser's logged telemetry (``stats.csv`` of the
    run's folder under the store, where the run logged it), else None."""
    import csv
    import glob

    found = glob.glob(os.path.join(store, "runs", f"*-{row['key']}", "stats.csv"))
    if not found:
        return None
    with open(found[0], newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or TELEMETRY[0] not in rows[0]:
        return None
    cfg = row["config"]
    per_epoch = max(cfg["max_train_sentences"] // cfg["batch_size"], 1)
    out = {}
    for r in rows:
        epoch = (int(r["step"]) - 1) // per_epoch + 1
        out.setdefault(epoch, []).append([float(r[k]) for k in TELEMETRY])
    return {e: dict(zip(TELEMETRY, (statistics.mean(col) for col in zip(*v)))) for e, v in sorted(out.items())}


def collect(stores: list[str]) -> tuple[dict, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    untrained = []
    seen = set()
    for store in stores:
        path = os.path.join(store, "results.jsonl") if os.path.isdir(store) else store
        for row in read_results(path):
            if row.get("status") != "ok" or row["key"] in seen:
                continue
            seen.add(row["key"])
            if row["config"]["loss"] == "untrained":
                untrained.append(row)
                continue
            row["telemetry"] = telemetry(store, row) if os.path.isdir(store) else None
            groups.setdefault(setting(row), []).append(row)
    return groups, untrained


def summarise(groups: dict) -> list[dict]:
    out = []
    order = {"batch": 0, CONTROL: 1, "global": 2, KEPT: 3}
    for key in sorted(groups, key=lambda k: (k[0], order[k[1]], -(k[2] or 0), -k[3])):
        runs = sorted(groups[key], key=lambda r: r["config"]["seed"])
        scores = [r["spearman"] for r in runs]
        out.append({
            "setting": label(key), "batch_size": key[0], "normalizer": key[1], "gamma": key[2], "lr": key[3],
            "mean": statistics.mean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "seeds": [r["config"]["seed"] for r in runs],
            "runs": [{"seed": r["config"]["seed"], "spearman": r["spearman"], "best_dev_subset": r["best_dev"],
                      "best_step": r["best_step"], "examples_at_best": r["best_step"] * key[0],
                      "steps": r["steps"], "dev_subset_last": r["evals"][-1]["spearman"],
                      "telemetry_per_epoch": r.get("telemetry"),
                      "minutes": r["train_seconds"] / 60, "key": r["key"]} for r in runs],
        })
    return out


def table(summary: list[dict], untrained: list[dict]) -> str:
    lines = ["| setting | STS-B dev Spearman x100 (mean +- std) | seeds | per seed | selected at (examples) "
             "| dev subset at the last step (mean) | minutes per run |", "|---|---|---|---|---|---|---|"]
    if untrained:
        u = statistics.mean(r["spearman"] for r in untrained)
        lines.append(f"| untrained | {u:.2f} | - | - | - | - | - |")
    for s in summary:
        per = ", ".join(f"{r['spearman']:.2f}" for r in s["runs"])
        at = ", ".join(str(r["examples_at_best"]) for r in s["runs"])
        last = statistics.mean(r["dev_subset_last"] for r in s["runs"])
        mins = ", ".join(f"{r['minutes']:.1f}" for r in s["runs"])
        lines.append(f"| {s['setting']} | {s['mean']:.2f} +- {s['std']:.2f} | {len(s['runs'])} | {per} | {at} "
                     f"| {last:.2f} | {mins} |")
    logged = [(s["setting"], r["seed"], r["telemetry_per_epoch"]) for s in summary for r in s["runs"]
              if r["telemetry_per_epoch"]]
    if logged:
        lines += ["", "The global normaliser's telemetry (stats.csv, means over each epoch's steps; runs that logged it):",
                  "", "| setting | seed | epoch | g/u mean | g/u q10 | g/u q90 | first seen |", "|---|---|---|---|---|---|---|"]
        for name, seed, per in logged:
            for epoch, t in per.items():
                lines.append(f"| {name} | {seed} | {epoch} | {t['normalizer_ratio_mean']:.3f} | "
                             f"{t['normalizer_ratio_q10']:.3f} | {t['normalizer_ratio_q90']:.3f} | "
                             f"{t['normalizer_first_seen']:.3f} |")
    return "\n".join(lines) + "\n"


def plots(summary: list[dict], groups: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("batch", "o-"), (CONTROL, "^:"), ("global", "s--"), (KEPT, "D-.")):
        for gamma, lr in sorted({(s["gamma"], s["lr"]) for s in summary if s["normalizer"] == name},
                                key=lambda gl: (gl[0] or 0, gl[1])):
            pts = [(s["batch_size"], s["mean"], s["std"]) for s in summary
                   if s["normalizer"] == name and s["gamma"] == gamma and s["lr"] == lr]
            if pts:
                xs, ys, es = zip(*sorted(pts))
                ax.errorbar(xs, ys, yerr=es, fmt=style if lr == LR else "v-", capsize=3,
                            label=name + (f" gamma={gamma:g}" if gamma is not None else "")
                            + (f" lr={lr:g}" if lr != LR else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("STS-B dev Spearman x100")
    ax.set_title("InfoNCE: batch vs global normaliser (mean +- std over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "sts_vs_batch.png"), dpi=110)

    sizes = sorted({k[0] for k in groups})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.6), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], sizes):
        for key in sorted(k for k in groups if k[0] == b):
            for i, r in enumerate(sorted(groups[key], key=lambda r: r["config"]["seed"])):
                ev = [(e["step"] * b, e["spearman"]) for e in r["evals"] if e["step"] > 0]
                if ev:
                    ax.plot(*zip(*ev), label=label(key) if i == 0 else None,
                            color=f"C{sorted(groups).index(key) % 10}", alpha=0.8, lw=1)
        ax.set_title(f"batch {b}", fontsize=9)
        ax.set_xlabel("examples seen")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("dev subset (300 pairs) Spearman x100")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dev_curves.png"), dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stores", nargs="+", help="result stores (folders with results.jsonl, or the files)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    groups, untrained = collect(args.stores)
    if not groups:
        print("no finished trained runs in " + ", ".join(args.stores), file=sys.stderr)
        return 2
    summary = summarise(groups)
    os.makedirs(args.out, exist_ok=True)
    text = table(summary, untrained)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"settings": summary, "untrained": [r["spearman"] for r in untrained]}, f, indent=1)
    plots(summary, groups, args.out)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
