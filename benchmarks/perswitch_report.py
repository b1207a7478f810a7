"""The per-switch ablation table of docs/training.md from one or more ``gradsurg ablate`` stores.

Reads ``results.jsonl`` files (the resumable stores of ``gradsurg ablate --out``),
groups the runs by (objective, form, switch set) and writes

* a markdown table per objective: each switch set in the default and the
  reference form, STS-B dev Spearman x100 of the selected checkpoint as
  mean +- std over seeds with the seed values, best steps and collapses;
  switch sets whose reference gradient equals the default one (docs/objectives.md,
  "the two forms") are marked instead of rerun;
* a JSON file of the runs (key fields and scores only) and a PNG plot.

    python benchmarks/perswitch_report.py runs/ps/def/results.jsonl runs/ps/ref/results.jsonl \\
        --out benchmarks/results --name perswitch_cpu-2core

Only STS-B dev (the selection set) is used; the STS12-16 test sets are never read here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from collections import defaultdict

SWITCH_SETS = ["none", "w_gd", "w_w", "w_r", "w_gd,w_w", "w_gd,w_r", "w_w,w_r", "w_gd,w_w,w_r"]
OBJECTIVES = ["vicreg", "mhe", "mhs", "barlow_twins", "align_uniform", "sg"]
#: switch sets whose reference-form gradient is the default form's (docs/objectives.md): value = the
#: default-form set it equals (MHS's reference has no w_w path, so its w_w sets equal those without)
SAME_AS_DEFAULT = {
    ("mhe", "none"): "none", ("mhe", "w_gd"): "w_gd",
    ("mhs", "none"): "none", ("mhs", "w_gd"): "w_gd", ("mhs", "w_w"): "none", ("mhs", "w_gd,w_w"): "w_gd",
    ("barlow_twins", "w_gd"): "w_gd",
}
#: reference-form sets equal to another reference-form set
SAME_AS_REFERENCE = {("mhs", "w_w,w_r"): "w_r", ("mhs", "w_gd,w_w,w_r"): "w_gd,w_r"}


def load(paths):
    runs = {}
    for path in paths:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    continue
                r = json.loads(line)
                if r.get("status") != "ok":
                    continue
                runs[r["key"]] = r
    return list(runs.values())


def switch_set(modified) -> str:
    if not modified:
        return "none"
    parts = [p for p in ("w_gd", "w_w", "w_r") if p in str(modified).split(",")]
    return ",".join(parts)


def group(runs):
    out = defaultdict(list)
    for r in runs:
        c = r["config"]
        form = c.get("form") or "default"
        mods = "none" if c["loss"] == "info_nce" else switch_set(c.get("modified"))
        if c["loss"] == "info_nce":
            form = "default"
        out[(c["loss"], form, mods)].append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["config"]["seed"])
    return out


def cell(rows) -> str:
    if not rows:
        return "not run"
    vals = [r["spearman"] for r in rows]
    mean = statistics.mean(vals)
    sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
    seeds = " / ".join(f"{v:.2f}" for v in vals)
    spread = f" +- {sd:.2f}" if not math.isnan(sd) else ""
    coll = sum(bool(r.get("collapsed")) for r in rows)
    note = f", collapsed {coll}/{len(rows)}" if coll else ""
    return f"{mean:.2f}{spread} ({seeds}{note})"


def table(groups, loss: str) -> str:
    lines = [f"#### {loss}", "", "| switches | default form | reference form |", "|---|---|---|"]
    base = groups.get(("info_nce", "default", "none"), [])
    lines.append(f"| InfoNCE (for comparison) | {cell(base)} | |")
    for s in SWITCH_SETS:
        label = "original" if s == "none" else f"+ {s.replace(',', ', ')}"
        d = cell(groups.get((loss, "default", s), []))
        if (loss, s) in SAME_AS_DEFAULT:
            same = SAME_AS_DEFAULT[(loss, s)]
            r = "= default form" + ("" if same == s else f" ({'original' if same == 'none' else same})")
        elif (loss, s) in SAME_AS_REFERENCE:
            r = f"= reference {SAME_AS_REFERENCE[(loss, s)]} (no w_w path)"
        else:
            r = cell(groups.get((loss, "reference", s), []))
        lines.append(f"| {label} | {d} | {r} |")
    return "\n".join(lines)


def plot(groups, losses, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.6), sharey=True, squeeze=False)
    base = [r["spearman"] for r in groups.get(("info_nce", "default", "none"), [])]
    for ax, loss in zip(axes[0], losses):
        for k, form in enumerate(("default", "reference")):
            xs, ys, es = [], [], []
            for i, s in enumerate(SWITCH_SETS):
                vals = [r["spearman"] for r in groups.get((loss, form, s), [])]
                if vals:
                    xs.append(i + (k - 0.5) * 0.35)
                    ys.append(statistics.mean(vals))
                    es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            if xs:
                ax.bar(xs, ys, width=0.35, yerr=es, label=form, alpha=0.8)
        if base:
            ax.axhline(statistics.mean(base), color="k", lw=1, ls="--", label="InfoNCE")
        ax.set_xticks(range(len(SWITCH_SETS)))
        ax.set_xticklabels(["ori" if s == "none" else s.replace("w_", "").replace(",", "+") for s in SWITCH_SETS],
                           rotation=60, fontsize=8)
        ax.set_title(loss)
        ax.set_ylim(72, 85.5)
    axes[0][0].set_ylabel("STS-B dev Spearman x100")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", nargs="+", help="results.jsonl files of gradsurg ablate")
    ap.add_argument("--out", default=None, help="folder for NAME.md / NAME.json / NAME.png (default: print only)")
    ap.add_argument("--name", default="perswitch")
    args = ap.parse_args(argv)
    runs = load(args.stores)
    groups = group(runs)
    losses = [o for o in OBJECTIVES if any(k[0] == o for k in groups)]
    text = "\n\n".join(table(groups, loss) for loss in losses)
    not_last = sum(r["best_step"] < r["steps"] for r in runs)
    text += (f"\n\n{len(runs)} runs; the selected checkpoint is not the last step in {not_last} of them "
             f"(training stopped by patience or the step cap after it); mean +- std over seeds (seed values "
             f"in brackets); best steps per run in the JSON.")
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        keep = ("key", "spearman", "pearson", "best_step", "best_dev", "steps", "collapsed", "collapse_note",
                "stopped_early", "train_seconds", "finished_at")
        rows = [dict({k: r.get(k) for k in keep},
                     loss=r["config"]["loss"], form=r["config"].get("form") or "default",
                     modified=r["config"].get("modified"), seed=r["config"]["seed"]) for r in runs]
        rows.sort(key=lambda r: (r["loss"], r["form"], str(r["modified"]), r["seed"]))
        with open(os.path.join(args.out, f"{args.name}.json"), "w") as fh:
            json.dump(dict(note="STS-B dev Spearman x100 of the selected checkpoint (1500 pairs); report preset, "
                                "MiniLM, 2-core CPU", runs=rows), fh, indent=1)
        with open(os.path.join(args.out, f"{args.name}.md"), "w") as fh:
            fh.write(text + "\n")
        plot(groups, losses, os.path.join(args.out, f"{args.name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
