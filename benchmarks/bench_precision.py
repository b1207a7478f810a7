"""Time per training step and peak step memory of the trainer per ``precision`` (fp32, bf16, fp16),
eager and with ``compile``, on the packaged all-MiniLM-L6-v2.

Each variant is a real :class:`gradsurg.train.Trainer` (config fields ``precision`` and
``compile``; InfoNCE, the ``cls`` pooler, AdamW, gradient clipping at 1.0, fp16 with its
gradient scaler) on the same synthetic corpus: every sentence is longer than ``--max-len``
tokens, so every batch is ``2 x batch`` sequences of exactly ``max_len`` tokens (one shape:
no recompilation after the first step). All variants start from the same weights.

Protocol (one process, so that the ratios compare like with like on a shared machine):

1. each variant is built and runs ``--warmup`` steps (its first step, which compiles, is timed
   separately as ``first_step_s``);
2. timed rounds: one step of every variant per round, variants interleaved, until ``--rounds``
   rounds or the time budget is spent (but at least ``--min-rounds``); the time per step is the
   median over rounds.

A variant whose warm-up would start after 70% of ``--budget-s`` is not run (recorded with the
reason in the JSON), so the whole run stays near the budget.

Time per step: wall clock (``step_ms``, median; on CUDA after synchronising), its fastest round
(``step_ms_min``: the least disturbed by other jobs) and, since a shared CPU machine's wall clock
mostly measures the other jobs, the process's CPU time (``cpu_ms``, median of
``time.process_time``: all its threads; spin-waiting threads count too).

Peak memory per step: on CUDA ``torch.cuda.max_memory_allocated()`` during the step minus the
memory allocated when it starts (the activations, the gradients and the temporaries of one
step; the weights and the optimiser state are float32 in every variant and excluded). On CPU
the same quantity as resident set size: the process's RSS is sampled every millisecond
(``/proc/self/statm``, a thread) during the step; the peak minus the RSS at the start of the
step, after ``malloc_trim(0)`` has handed freed heap memory back to the system. The median over
rounds is reported.

Writes ``benchmarks/results/precision_<machine>.json`` and ``.png`` (every time; ``--out``).

    python benchmarks/bench_precision.py                         # CPU, ~2 minutes on 2 cores
    python benchmarks/bench_precision.py --device cuda --batch 64 --machine h100
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from gradsurg.train import TrainConfig  # noqa: E402
from gradsurg.train.data import Corpus  # noqa: E402
from gradsurg.train.trainer import Trainer  # noqa: E402

_WORDS = ("the quick brown fox jumps over a lazy dog while seven small cats watch from the old red barn "
          "near river where children play football after school every sunny afternoon").split()
VARIANTS = ("fp32", "bf16", "fp16", "fp32+compile", "bf16+compile", "fp16+compile")


def corpus(n: int, words: int = 48) -> Corpus:
    """``n`` distinct sentences of ``words`` words (longer than any max_len used here)."""
    k = len(_WORDS)
    return Corpus([" ".join(_WORDS[(i * 7 + j * (1 + i % 5)) % k] for j in range(words)) + f" {i}"
                   for i in range(n)])


# ------------------------------------------------------------------ memory
class _RssPeak:
    """Peak resident set size (bytes) over a ``with`` block, sampled every millisecond."""

    _page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self):
        self.start = self.peak = 0
        self._stop = threading.Event()

    @classmethod
    def rss(cls) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * cls._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS deltas may then under-count
        pass


# ------------------------------------------------------------------ variants
class Variant:
    def __init__(self, name: str, args, device: torch.device, texts: Corpus, state: dict):
        self.name = name
        precision, _, comp = name.partition("+")
        cfg = TrainConfig(model=args.model, pooler="cls", loss="info_nce", batch_size=args.batch,
                          max_len=args.max_len, max_steps=10_000, epochs=10_000, lr=1e-5, precision=precision,
                          compile=bool(comp), device=str(device), train_data=None, eval_data=None,
                          max_train_sentences=None, progress=False, tensorboard=False, seed=0)
        self.trainer = Trainer(cfg, corpus=texts)
        if state is not None:  # every variant starts from the same weights (the cls pooler's MLP is random)
            self.trainer.encoder.load_state_dict(state)
        self.trainer.encoder.train()
        self.run = self.trainer._start_run()
        self.device = device
        self.step_no = 0
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.mems: list[float] = []
        self.losses: list[float] = []
        self.first_step_s: float | None = None

    def step(self, measure: bool) -> float:
        self.step_no += 1
        dev = self.device
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        else:
            _trim()
        t0, c0 = time.perf_counter(), time.process_time()
        if dev.type == "cuda":
            value, _ = self.trainer.train_step(self.run, self.step_no, next(self.run.batches))
            torch.cuda.synchronize(dev)
            mem = torch.cuda.max_memory_allocated(dev) - base
        else:
            with _RssPeak() as rss:
                value, _ = self.trainer.train_step(self.run, self.step_no, next(self.run.batches))
            mem = rss.peak - rss.start
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.losses.append(value)
        if measure:
            self.times.append(elapsed)
            self.cpu_times.append(cpu)
            self.mems.append(mem / 2**20)
        return elapsed


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device)}
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 2)[1].split("\n")[0].split()
        info["cpu_bf16_flags"] = sorted(f for f in flags if "bf16" in f or f.startswith("amx") or "fp16" in f)
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, IndexError, StopIteration):
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["variants"] if r.get("step_ms") is not None]
    if not rows:
        return
    names = [r["variant"] for r in rows]
    panels = [("step_ms", "time_vs_fp32", "wall time per step (ms, median)"),
              ("cpu_ms", "cpu_vs_fp32", "CPU time per step (ms, median)"),
              ("peak_step_mb", "memory_vs_fp32", "peak step memory (MiB, median)")]
    panels = [p for p in panels if all(r.get(p[0]) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.9), squeeze=False)
    for ax, (key, ratio_key, label) in zip(axes[0], panels):
        vals = [r[key] for r in rows]
        colors = ["tab:blue" if "compile" not in n else "tab:orange" for n in names]
        bars = ax.bar(range(len(rows)), vals, color=colors)
        for bar, r in zip(bars, rows):
            if r.get(ratio_key) is not None:
                ax.annotate(f"x{r[ratio_key]:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        ax.set_ylabel(label, fontsize=9)
        ax.set_ylim(0, max(vals) * 1.18)
    fig.suptitle(f"Trainer step, {results['model']} ({results['batch']} x 2 views x {results['max_len']} tokens), "
                 f"{results['machine']}: ratios vs eager fp32", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(json_path: str) -> None:
    """Redraw the PNG beside a results JSON."""
    with open(json_path, encoding="utf-8") as fh:
        plot(json.load(fh), json_path[: -len(".json")] + ".png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="model name or folder (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="sentences per step (the encoder sees 2 x batch)")
    parser.add_argument("--max-len", type=int, default=32)
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                        help="default: all on CUDA; on CPU all but fp16+compile")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (the first compiles)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (one step of every variant each)")
    parser.add_argument("--min-rounds", type=int, default=2, help="timed rounds run whatever the budget")
    parser.add_argument("--budget-s", type=float, default=100.0,
                        help="no new variant is warmed up after 70%% of this many seconds, and the timed rounds "
                             "(at least --min-rounds) stop when it has passed")
    parser.add_argument("--machine", default=None, help="results name (default cpu-<n>core or the GPU's name)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)

    start = time.perf_counter()
    device = torch.device(args.device)
    if args.machine is None:
        args.machine = (f"cpu-{os.cpu_count()}core" if device.type == "cpu"
                        else torch.cuda.get_device_name(device).lower().replace(" ", "-"))
    names = args.variants or [v for v in VARIANTS if device.type == "cuda" or v != "fp16+compile"]
    texts = corpus(max(4 * args.batch, 64))
    variants: list[Variant] = []
    skipped: dict[str, str] = {}
    state = None
    for name in names:
        if variants and time.perf_counter() - start > 0.7 * args.budget_s:
            skipped[name] = f"time budget ({args.budget_s:.0f} s) spent before its warm-up"
            print(f"{name}: not run ({skipped[name]})", flush=True)
            continue
        try:
            v = Variant(name, args, device, texts, state)
        except Exception as exc:  # noqa: BLE001 - recorded in the results (a precision this device refuses)
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: not run ({skipped[name]})", flush=True)
            continue
        if state is None:
            state = {k: t.detach().clone() for k, t in v.trainer.encoder.state_dict().items()}
        for i in range(args.warmup):
            elapsed = v.step(measure=False)
            if i == 0:
                v.first_step_s = round(elapsed, 3)
        print(f"{name}: first step {v.first_step_s:.2f} s", flush=True)
        variants.append(v)
    rounds = 0
    while rounds < args.rounds and (rounds < args.min_rounds or time.perf_counter() - start < args.budget_s):
        for v in variants:
            v.step(measure=True)
        rounds += 1
    rows = []
    for v in variants:
        rows.append({"variant": v.name, "step_ms": round(1e3 * statistics.median(v.times), 1),
                     "step_ms_all": [round(1e3 * t, 1) for t in v.times],
                     "step_ms_min": round(1e3 * min(v.times), 1),
                     "cpu_ms": round(1e3 * statistics.median(v.cpu_times), 1),
                     "cpu_ms_all": [round(1e3 * t, 1) for t in v.cpu_times],
                     "peak_step_mb": round(statistics.median(v.mems), 1),
                     "first_step_s": v.first_step_s, "losses": [round(x, 5) for x in v.losses],
                     "skipped_steps": v.run.result.skipped_steps})
    base = next((r for r in rows if r["variant"] == "fp32"), None)
    for r in rows:
        if base is not None:
            r["time_vs_fp32"] = round(r["step_ms"] / base["step_ms"], 3)
            r["cpu_vs_fp32"] = round(r["cpu_ms"] / base["cpu_ms"], 3)
            r["min_vs_fp32"] = round(r["step_ms_min"] / base["step_ms_min"], 3)
            r["memory_vs_fp32"] = round(r["peak_step_mb"] / base["peak_step_mb"], 3) if base["peak_step_mb"] else None
    rows += [{"variant": n, "not_run": why} for n, why in skipped.items()]
    results = {"machine": args.machine, "model": args.model, "batch": args.batch, "max_len": args.max_len,
               "rounds": rounds, "warmup": args.warmup, "info": machine_info(device),
               "memory_measure": ("cuda max_memory_allocated during the step minus allocated at its start"
                                  if device.type == "cuda" else
                                  "peak RSS during the step (1 ms sampling) minus RSS at its start, after malloc_trim"),
               "total_s": round(time.perf_counter() - start, 1), "variants": rows}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"precision_{args.machine}")
    with open(stem + ".json", "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    plot(results, stem + ".png")
    print(f"| variant | ms/step (median of {rounds}) | x fp32 | fastest round ms | x fp32 | CPU ms/step | x fp32 "
          "| peak step MiB | x fp32 | first step s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "not_run" in r:
            print(f"| {r['variant']} | not run: {r['not_run']} | | | | | | | | |")
        else:
            print(f"| {r['variant']} | {r['step_ms']:.0f} | {r.get('time_vs_fp32', '')} | {r['step_ms_min']:.0f} | "
                  f"{r.get('min_vs_fp32', '')} | {r['cpu_ms']:.0f} | "
                  f"{r.get('cpu_vs_fp32', '')} | {r['peak_step_mb']:.0f} | {r.get('memory_vs_fp32', '')} | "
                  f"{r['first_step_s']} |")
    print(f"total {results['total_s']} s; wrote {stem}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
