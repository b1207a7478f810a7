"""The per-switch ablation table of docs/reports/per-switch-ablation.md from one or more ``gradsurg ablate`` stores.

Reads ``results.jsonl`` files (the resumable stores of ``gradsurg ablate --out``),
groups the runs by (objective, form, switch set) and writes

* a markdown table per objective: each switch set in the default and the
  reference form, STS-B dev Spearman x100 of the selected checkpoint as
  mean +- std over seeds with the seed values, best steps and collapses;
  cells whose gradient equals another cell's (docs/objectives.md, "the two forms";
  sg's ratio 1.0) are marked instead of run;
* a JSON file of the runs (key fields and scores only) and a PNG plot.

    python benchmarks/perswitch_report.py runs/ps/def/results.jsonl runs/ps/ref/results.jsonl \\
        --out benchmarks/results --name perswitch_cpu-2core

Runs trained with ``suite_data`` also carry the seven-task scores of their selected
checkpoint (``result.suite``, computed once at the end of the run); they get a table of
their own. Selection is on STS-B dev only: the STS12-16 scores select nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict

SWITCH_SETS = ["none", "w_gd", "w_w", "w_r", "w_gd,w_w", "w_gd,w_r", "w_w,w_r", "w_gd,w_w,w_r"]
OBJECTIVES = ["vicreg", "mhe", "mhs", "barlow_twins", "align_uniform", "sg"]
#: cells not run because their gradient is another cell's (docs/objectives.md, "the two forms"):
#: (objective, form, switch set) -> (form, switch set of the cell that was run, why)
EQUAL: dict[tuple[str, str, str], tuple[str, str, str]] = {}


def _equal(loss, form, sets, to_form, to_set, why):
    for s in sets:
        EQUAL[(loss, form, s)] = (to_form, to_set, why)


for _loss in ("mhe", "mhs"):
    _equal(_loss, "reference", ["none"], "default", "none", "same gradient")
    _equal(_loss, "reference", ["w_gd"], "default", "w_gd", "same gradient")
_equal("mhs", "reference", ["w_w"], "default", "none", "the reference has no w_w path")
_equal("mhs", "reference", ["w_gd,w_w"], "default", "w_gd", "the reference has no w_w path")
_equal("mhs", "reference", ["w_w,w_r"], "reference", "w_r", "no w_w path")
_equal("mhs", "reference", ["w_gd,w_w,w_r"], "reference", "w_gd,w_r", "no w_w path")
_equal("barlow_twins", "reference", ["w_gd"], "default", "w_gd", "same gradient at lam 1")
# sg: w_r is the ratio 1.0 of the paper's sg, which changes nothing, in either form; the
# reference form switches only w_gd (its weights are always the softmax)
for _s in ("none", "w_gd", "w_w", "w_gd,w_w"):
    _equal("sg", "default", [f"{_s},w_r" if _s != "none" else "w_r"], "default", _s, "ratio 1: w_r does nothing")
_equal("sg", "reference", ["w_w", "w_r", "w_w,w_r"], "reference", "none", "only w_gd switches there")
_equal("sg", "reference", ["w_gd,w_w", "w_gd,w_r", "w_gd,w_w,w_r"], "reference", "w_gd",
       "only w_gd switches there")
#: objectives without a reference form
NO_REFERENCE = {"align_uniform": "none (not modified in the paper's code)"}


def load(paths):
    """The finished (``ok``) runs of the stores ``paths`` (results folders or ``results.jsonl`` files),
    read through gradsurg.train.store (every line checked; what is not a usable row is named on
    stderr and left out); a run key stored in several files: the last file's row."""
    from gradsurg.train.store import UNTRAINED, read_results

    runs = {}
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"perswitch_report: {path!r} does not exist (expected a results.jsonl of gradsurg ablate)")
        notes: list[str] = []
        for r in read_results(path, notes):
            if r["status"] == "ok" and r["config"]["loss"] != UNTRAINED:  # the grid's baseline row: no cell
                runs[r["key"]] = r
        for note in notes:
            print(f"warning: {note} (left out)", file=sys.stderr)
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


def set_label(s: str) -> str:
    return "original" if s == "none" else f"+ {s.replace(',', ', ')}"


def equal_cell(loss: str, form: str, s: str) -> str | None:
    if (loss, form, s) not in EQUAL:
        return None
    to_form, to_set, why = EQUAL[(loss, form, s)]
    where = "" if to_form == form else f"{to_form} form, "
    return f"= {where}{set_label(to_set)} ({why})"


def table(groups, loss: str) -> str:
    lines = [f"#### {loss}", "", "| switches | default form | reference form |", "|---|---|---|"]
    base = groups.get(("info_nce", "default", "none"), [])
    lines.append(f"| InfoNCE (for comparison) | {cell(base)} | |")
    for s in SWITCH_SETS:
        d = equal_cell(loss, "default", s) or cell(groups.get((loss, "default", s), []))
        if loss in NO_REFERENCE:
            r = NO_REFERENCE[loss] if s == "none" else ""
        else:
            r = equal_cell(loss, "reference", s) or cell(groups.get((loss, "reference", s), []))
        lines.append(f"| {set_label(s)} | {d} | {r} |")
    return "\n".join(lines)


def scored(r) -> dict | None:
    """The run's seven-task result (``result.suite``) when it has scored tasks, else None."""
    suite = r.get("suite")
    return suite if suite and suite.get("tasks") else None


def suite_table(groups, losses) -> str | None:
    """The seven-task table of every run scored on the suite (``result.suite``): one row per run."""
    from gradsurg.train.suite import format_suite

    rows = []
    keys = [("info_nce", "default", "none")] + [(loss, form, s) for loss in losses
                                                 for form in ("default", "reference") for s in SWITCH_SETS]
    for loss, form, s in keys:
        for r in groups.get((loss, form, s), []):
            if scored(r):
                name = "InfoNCE" if loss == "info_nce" else f"{loss} {set_label(s)}, {form} form"
                rows.append((f"{name} (seed {r['config']['seed']})", r["suite"]))
    return format_suite(rows, years_average=True) if rows else None


def plot(groups, losses, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ncols = min(3, len(losses))
    nrows = -(-len(losses) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), sharey=True, squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(losses):]:
        ax.set_visible(False)
    base = [r["spearman"] for r in groups.get(("info_nce", "default", "none"), [])]
    for ax, loss in zip(axes, losses):
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
    axes[0].set_ylabel("STS-B dev Spearman x100")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", nargs="+", help="results.jsonl files (or their folders) of gradsurg ablate")
    ap.add_argument("--out", default=None, help="folder for NAME.md / NAME.json / NAME.png (default: print only)")
    ap.add_argument("--name", default="perswitch")
    args = ap.parse_args(argv)
    runs = load(args.stores)
    groups = group(runs)
    losses = [o for o in OBJECTIVES if any(k[0] == o for k in groups)]
    text = "\n\n".join(table(groups, loss) for loss in losses)
    suite = suite_table(groups, losses)
    if suite:
        text += ("\n\n#### Seven STS tasks of the selected checkpoints\n\nSpearman x100 (STS12-16: the 'all' "
                 "setting; STS-B is the dev set, the selection set). Scored once, at the end of the run; "
                 "never used to select anything.\n\n" + suite)
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
                     modified=r["config"].get("modified"), seed=r["config"]["seed"],
                     suite={t: v["spearman"] for t, v in scored(r)["tasks"].items()} if scored(r) else None,
                     suite_average=scored(r)["average"] if scored(r) else None)
                for r in runs]
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
