"""Peak memory and time per training step: cached (GradCache) vs uncached, growing batch sizes.

Each configuration runs in its own process (a clean high-water mark of
memory), trains a random-weight BERT (SimCSE columns: the batch twice, dropout
on, InfoNCE, AdamW) for ``--warmup`` + ``--steps`` steps, and reports

* ``peak_rss_mb``: the process's peak resident memory (CPU, ``ru_maxrss``),
* ``baseline_rss_mb``: resident memory just before the first step (model,
  optimiser, libraries), and ``peak_delta_mb`` = peak - baseline: what the
  step itself needs,
* on CUDA: ``peak_cuda_mb`` = ``torch.cuda.max_memory_allocated`` and its delta,
* ``time_per_step_s``: the median over the timed steps (forward, backward, optimiser).

Results go to ``benchmarks/results/cached_<machine>.json`` (rewritten after
every configuration) and ``cached_<machine>.png``::

    python benchmarks/bench_cached.py                        # CPU defaults (1 thread, shared machine)
    python benchmarks/bench_cached.py --device cuda --machine h100 \\
        --uncached 64 128 256 512 1024 2048 --cached 64 256 1024 4096 16384 --mini-batch-size 128
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
MODEL = dict(vocab_size=8000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=512, max_position_embeddings=64)
SEQ = 16


def worker(mode: str, batch: int, mbs: int, steps: int, warmup: int, device: str, threads: int) -> dict:
    import torch
    from transformers import BertConfig, BertModel

    import gradsurg
    from gradsurg.cached import cached_step

    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = BertModel(BertConfig(**MODEL, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1),
                      add_pooling_layer=False).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def encode(chunk):
        out = model(**chunk).last_hidden_state
        m = chunk["attention_mask"].unsqueeze(-1).to(out.dtype)
        return (out * m).sum(1) / m.sum(1)

    def make_batch(step):
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(1, MODEL["vocab_size"], (batch, SEQ), generator=g)
        return {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}

    # optimiser state exists before the baseline is read
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    from gradsurg.bench import timed_steps

    def step(b):
        cached_step(encode, [b, b], gradsurg.info_nce, mini_batch_size=mbs if mode == "cached" else None)
        opt.step()
        opt.zero_grad(set_to_none=True)

    m = timed_steps(step, warmup, steps, dev, prepare=lambda k: (make_batch(k),))
    times, peak, baseline = m["times_s"], m["peak_rss_mb"], m["baseline_rss_mb"]
    rec = dict(mode=mode, batch_size=batch, mini_batch_size=mbs if mode == "cached" else None,
               peak_rss_mb=round(peak, 1), baseline_rss_mb=round(baseline, 1),
               peak_delta_mb=round(peak - baseline, 1),
               time_per_step_s=round(statistics.median(times), 4), step_times_s=[round(t, 4) for t in times])
    if dev.type == "cuda":
        rec.update(peak_cuda_mb=round(m["peak_cuda_mb"], 1),
                   peak_cuda_delta_mb=round(m["peak_cuda_mb"] - m["base_cuda_mb"], 1))
    return rec


def same_memory(records: list, key: str) -> list:
    """For each uncached batch: the largest cached batch measured whose step peak is not larger."""
    ok = [r for r in records if "error" not in r]
    out = []
    for u in sorted((r for r in ok if r["mode"] == "uncached"), key=lambda r: r["batch_size"]):
        fits = [c["batch_size"] for c in ok if c["mode"] == "cached" and c[key] <= u[key]]
        if fits:
            out.append(dict(uncached_batch=u["batch_size"], uncached_peak_mb=u[key], cached_batch=max(fits),
                            ratio=max(fits) / u["batch_size"]))
    return out


def plot(records: list, path: str, machine: str, key: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("uncached", "o-"), ("cached", "s-")):
        rows = sorted((r for r in records if r["mode"] == mode and "error" not in r), key=lambda r: r["batch_size"])
        if not rows:
            continue
        label = mode if mode == "uncached" else f"cached (mini-batch {rows[0]['mini_batch_size']})"
        xs = [r["batch_size"] for r in rows]
        axes[0].plot(xs, [r[key] for r in rows], style, label=label)
        axes[1].plot(xs, [r["time_per_step_s"] for r in rows], style, label=label)
    axes[0].set_ylabel("peak memory of the step, MiB (" + key + ")")
    axes[1].set_ylabel("time per training step, s (median)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (anchors; each embedded twice)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"cached vs uncached step, random BERT h={MODEL['hidden_size']} L={MODEL['num_hidden_layers']} "
                 f"seq={SEQ}, InfoNCE ({machine})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uncached", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512, 1024, 2048])
    ap.add_argument("--cached", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--mini-batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--machine", default=None, help="results name suffix (default: cpu / cuda)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        mode, batch = args.worker[0], int(args.worker[1])
        rec = worker(mode, batch, args.mini_batch_size, args.steps, args.warmup, args.device, args.threads)
        print("RESULT " + json.dumps(rec), flush=True)
        return 0

    import torch

    machine = args.machine or ("cpu" if args.device == "cpu" else "cuda")
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"cached_{machine}.json")
    png_path = os.path.join(args.out, f"cached_{machine}.png")
    meta = dict(machine=machine, device=args.device, platform=platform.platform(), processor=platform.processor(),
                cpu_count=os.cpu_count(), threads=args.threads, torch=torch.__version__, model=MODEL, seq_len=SEQ,
                loss="info_nce (tau 0.05), columns [batch, batch], dropout 0.1, AdamW",
                steps=args.steps, warmup=args.warmup, mini_batch_size=args.mini_batch_size)
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(0)
    key = "peak_cuda_delta_mb" if args.device.startswith("cuda") else "peak_delta_mb"
    records: list = []
    # interleaved by batch size, so that both modes see similar load on a shared machine
    configs = [(mode, b) for b in sorted(set(args.uncached) | set(args.cached))
               for mode, sizes in (("uncached", args.uncached), ("cached", args.cached)) if b in sizes]
    for mode, batch in configs:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, str(batch),
               "--mini-batch-size", str(args.mini_batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            rec = dict(mode=mode, batch_size=batch, error=(proc.stderr or proc.stdout)[-800:])
        else:
            rec = json.loads(lines[-1][len("RESULT "):])
        rec["loadavg_1min"] = round(os.getloadavg()[0], 2)  # other processes on the machine
        records.append(rec)
        summary = rec.get("error", "").splitlines()[-1:] if "error" in rec else \
            f"peak +{rec[key]:.0f} MiB (rss {rec['peak_rss_mb']:.0f}), {rec['time_per_step_s']:.3f} s/step"
        print(f"{mode:8s} batch {batch:6d}: {summary}", flush=True)
        with open(json_path, "w") as f:
            json.dump(dict(meta=meta, summary=same_memory(records, key), records=records), f, indent=1)
        plot(records, png_path, machine, key)
    for row in same_memory(records, key):
        print(f"same memory as uncached batch {row['uncached_batch']} (+{row['uncached_peak_mb']:.0f} MiB): "
              f"cached batch {row['cached_batch']} ({row['ratio']:.0f}x; largest measured)")
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
