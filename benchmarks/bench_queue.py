"""A queue of detached negatives vs the same candidates with gradient: time and memory of one loss step.

InfoNCE (symmetric=False), N anchors, their N positives and K extra negatives, float32 on CPU:

* ``queue``: the K negatives do not require a gradient (a ``gradsurg.NegativeQueue``): the engine
  forms the similarity product and dU = G V, but the candidates' product dV = G^T U only for the
  N positives (two products over K instead of three);
* ``grad``: the same K negatives with ``requires_grad=True`` (all three products).

Time: forward + backward of the loss, the median of ``--reps`` repetitions, the two modes
interleaved in one process (the machine is shared: same-process, interleaved comparisons).
Memory: each mode's step in its own process, peak RSS above the RSS before the step
(the high-water mark reset through ``/proc/self/clear_refs``; inputs allocated before). Results: ``benchmarks/results/queue_<machine>.json``
and ``.png``::

    python benchmarks/bench_queue.py                    # K = 4096 .. 65536, N = 256, d = 256, 1 thread
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _inputs(n, k, d, grad_neg):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).requires_grad_()
    y = torch.randn(n, d, generator=g).requires_grad_()
    z = torch.randn(k, d, generator=g).requires_grad_(grad_neg)
    return x, y, z


def _step(x, y, z):
    import gradsurg

    gradsurg.info_nce(x, y, z, temperature=0.05).backward()


def memory_worker(mode, n, k, d, threads) -> dict:
    import torch

    torch.set_num_threads(threads)
    x, y, z = _inputs(n, k, d, mode == "grad")
    from gradsurg.bench import rss_mb  # gradsurg imported before the baseline

    before = rss_mb()
    _reset_peak()
    _step(x, y, z)
    peak = _peak_mb()
    return {"peak_delta_mb": round(peak - before, 1), "peak_rss_mb": round(peak, 1)}


def _reset_peak() -> None:
    """Reset the high-water mark of RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_modes(n, k, d, reps, threads) -> dict:
    import torch

    torch.set_num_threads(threads)
    runs = {"queue": _inputs(n, k, d, False), "grad": _inputs(n, k, d, True)}
    for ins in runs.values():  # warm-up
        _step(*ins)
    times = {m: [] for m in runs}
    for _ in range(reps):
        for mode, ins in runs.items():  # interleaved
            for t in ins:
                t.grad = None
            t0 = time.perf_counter()
            _step(*ins)
            times[mode].append(time.perf_counter() - t0)
    return {m: round(statistics.median(v), 4) for m, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, n, k, d, threads = args.worker
        print(json.dumps(memory_worker(mode, int(n), int(k), int(d), int(threads))))
        return
    rows = []
    for k in args.k:
        times = time_modes(args.n, k, args.d, args.reps, args.threads)
        mem = {}
        for mode in ("queue", "grad"):
            cmd = [sys.executable, __file__, "--worker", mode, str(args.n), str(k), str(args.d), str(args.threads)]
            mem[mode] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        row = {"k": k, "time_s": times, "speedup": round(times["grad"] / times["queue"], 3),
               "peak_delta_mb": {m: mem[m]["peak_delta_mb"] for m in mem}}
        print(json.dumps(row))
        rows.append(row)
    out = {"machine": args.machine, "platform": platform.platform(), "n": args.n, "d": args.d,
           "threads": args.threads, "reps": args.reps, "dtype": "float32", "loss": "info_nce", "rows": rows}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"queue_{args.machine}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ks = [r["k"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for mode, style in (("grad", "o-"), ("queue", "s-")):
        label = "negatives with gradient" if mode == "grad" else "detached queue"
        a1.plot(ks, [r["time_s"][mode] for r in rows], style, label=label)
        a2.plot(ks, [r["peak_delta_mb"][mode] for r in rows], style, label=label)
    for ax, title in ((a1, "loss fwd+bwd time (s)"), (a2, "peak RSS of the step (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K negatives")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"InfoNCE, N={args.n}, d={args.d}, float32, {args.threads} thread(s), {args.machine}")
    fig.tight_layout()
    fig.savefig(path.replace(".json", ".png"), dpi=110)


if __name__ == "__main__":
    main()
