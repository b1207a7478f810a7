"""Structured candidates (gradsurg.info_nce with sentence-transformers' options) vs sentence-transformers'
dense MultipleNegativesRankingLoss: time of forward + backward on given embeddings, and peak memory.

Each (implementation, configuration, batch size) runs in a fresh subprocess on random float32 embeddings
(d = 384, one hard-negative column, requires_grad): ``time_s`` is the median over ``--steps`` runs after
``--warmup``; ``peak_delta_mb`` the process's peak resident memory (``ru_maxrss``) minus the resident
memory just before the first run (CPU), or ``torch.cuda.max_memory_allocated`` minus the allocated memory
before (CUDA). Eager mode only.

    python benchmarks/bench_structured.py                      # B = 256, 1024 on CPU (about a minute)
    python benchmarks/bench_structured.py --sizes 256 1024 4096 --device cuda

Writes benchmarks/results/structured_<machine>.json and .png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
D = 384
CONFIGS = {
    "q2d": dict(directions=("query_to_doc",)),
    "q2d+hard9": dict(directions=("query_to_doc",), hardness_mode="hard_negatives", hardness_strength=9.0),
    "all-joint": dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")),
    "sym-per-direction": dict(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
}


def worker(impl: str, config: str, batch: int, steps: int, warmup: int, device: str, threads: int) -> dict:
    import warnings

    import torch

    import gradsurg
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(threads)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    cols = [torch.randn(batch, D, generator=g).to(dev).requires_grad_() for _ in range(3)]
    kw = CONFIGS[config]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = MultipleNegativesRankingLoss(None, scale=20.0, **kw)

    def step():
        if impl == "st":
            loss = st.compute_loss_from_embeddings(cols, None)
        else:
            loss = gradsurg.info_nce(cols[0], cols[1], cols[2:], scale=20.0, **kw)
        grads = torch.autograd.grad(loss, cols)
        return loss, grads

    from gradsurg.bench import timed_steps

    m = timed_steps(step, warmup, steps, dev)
    times = m["times_s"]
    rec = dict(impl=impl, config=config, batch_size=batch, time_s=round(statistics.median(times), 5),
               times_s=[round(t, 5) for t in times], peak_delta_mb=round(m["peak_rss_mb"] - m["baseline_rss_mb"], 1))
    if dev.type == "cuda":
        rec["peak_cuda_delta_mb"] = round(m["peak_cuda_mb"] - m["base_cuda_mb"], 1)
    return rec


def plot(records, path, key):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for config in CONFIGS:
        for impl, style in (("st", "--"), ("gradsurg", "-")):
            rows = [r for r in records if r.get("config") == config and r.get("impl") == impl and "error" not in r]
            if not rows:
                continue
            xs = [r["batch_size"] for r in rows]
            axes[0].plot(xs, [r["time_s"] for r in rows], style, marker="o", label=f"{impl} {config}")
            axes[1].plot(xs, [r[key] for r in rows], style, marker="o", label=f"{impl} {config}")
    for ax, label in zip(axes, ("forward + backward, s (median)", f"peak memory, MiB ({key})")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--machine", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, config, batch = args.worker[0], args.worker[1], int(args.worker[2])
        print("RESULT " + json.dumps(worker(impl, config, batch, args.steps, args.warmup, args.device,
                                            args.threads)), flush=True)
        return 0
    import torch

    machine = args.machine or ("cpu" if args.device == "cpu" else "cuda")
    os.makedirs(args.out, exist_ok=True)
    key = "peak_cuda_delta_mb" if args.device.startswith("cuda") else "peak_delta_mb"
    meta = dict(machine=machine, device=args.device, platform=platform.platform(), cpu_count=os.cpu_count(),
                threads=args.threads, torch=torch.__version__, d=D, hard_negative_columns=1, dtype="float32",
                steps=args.steps, warmup=args.warmup, configs={k: {a: list(v) if isinstance(v, tuple) else v
                                                                  for a, v in c.items()}
                                                              for k, c in CONFIGS.items()})
    records = []
    for batch in args.sizes:
        for config in args.configs:
            for impl in ("st", "gradsurg"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, config, str(batch),
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                       "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                rec = json.loads(lines[-1][7:]) if proc.returncode == 0 and lines else \
                    dict(impl=impl, config=config, batch_size=batch, error=(proc.stderr or proc.stdout)[-600:])
                rec["loadavg_1min"] = round(os.getloadavg()[0], 2)
                records.append(rec)
                print(f"B={batch:5d} {config:18s} {impl:8s} " + (rec.get("error", "").splitlines()[-1:].__str__()
                      if "error" in rec else f"{rec['time_s']:.4f} s, +{rec[key]:.0f} MiB"), flush=True)
    with open(os.path.join(args.out, f"structured_{machine}.json"), "w") as f:
        json.dump(dict(meta=meta, records=records), f, indent=1)
    plot(records, os.path.join(args.out, f"structured_{machine}.png"), key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
