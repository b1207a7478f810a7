"""``gradsurg bench``: the paradigm engine against eager PyTorch and torch.compile.

For each batch size N = M (d = 768, float32 by default) it runs, each in a
fresh process so that peak memory is clean:

* ``eager``   -- textbook InfoNCE: cosine matrix + ``F.cross_entropy``, autograd backward;
* ``compile`` -- the same function under ``torch.compile``;
* ``gradsurg`` -- :func:`gradsurg.info_nce` (torch backend: gradient formed chunk by chunk);
* ``matmul3`` -- the three N x d x M matrix products any exact method needs (the floor).

Each reports the median forward+backward time over ``--repeats`` timed runs
after a warm-up, and the peak resident-memory increase over the inputs
(``VmHWM`` reset via ``/proc/self/clear_refs`` after warm-up, so compilation
does not count). Results are appended to a JSON file after every
measurement (an interrupted run keeps what it measured) and drawn as a PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

METHODS = ("eager", "compile", "gradsurg", "matmul3")
DEFAULT_SIZES = (2048, 4096, 8192)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_step(method: str, n: int, d: int, dtype, temperature: float):
    import torch
    import torch.nn.functional as F

    import gradsurg

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    y = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    labels = torch.arange(n)

    def eager_loss(a, b):
        s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
        return F.cross_entropy(s / temperature, labels)

    if method == "eager":
        loss_fn = eager_loss
    elif method == "compile":
        loss_fn = torch.compile(eager_loss)
    elif method == "gradsurg":
        def loss_fn(a, b):
            return gradsurg.info_nce(a, b, temperature=temperature, backend="torch")
    elif method == "matmul3":
        u, v = x.detach(), y.detach()

        def step():
            s = u @ v.T
            s @ v
            s.T @ u
        return step
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")

    def step():
        x.grad = y.grad = None
        loss_fn(x, y).backward()
    return step


def worker(method: str, n: int, d: int, dtype_name: str, repeats: int, temperature: float) -> dict:
    """Measure one (method, size) in this process; return a result record."""
    import torch

    dtype = getattr(torch, dtype_name)
    base = _rss_mb("VmRSS")
    step = _make_step(method, n, d, dtype, temperature)
    inputs_mb = _rss_mb("VmRSS") - base
    step()  # warm-up (and compilation)
    reset = _reset_peak()
    before = _rss_mb("VmRSS")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = _rss_mb("VmHWM") - before if reset else float("nan")
    return {
        "method": method, "n": n, "m": n, "d": d, "dtype": dtype_name,
        "median_s": statistics.median(times), "times_s": times,
        "peak_delta_mb": peak, "inputs_mb": inputs_mb, "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def machine_name() -> str:
    return f"cpu-{os.cpu_count()}core"


def run_all(sizes, d, dtype, methods, repeats, temperature, out, plot=True) -> list[dict]:
    from tqdm import tqdm

    results: list[dict] = []
    if os.path.exists(out):
        with open(out) as f:
            results = json.load(f).get("results", [])
    done = {(r["method"], r["n"], r["d"], r["dtype"]) for r in results}
    meta = {
        "benchmark": "info_nce forward+backward, cosine similarity, N = M",
        "machine": machine_name(), "platform": platform.platform(), "python": platform.python_version(),
        "temperature": temperature,
    }
    jobs = [(m, n) for n in sizes for m in methods if (m, n, d, dtype) not in done]
    for method, n in tqdm(jobs, desc="gradsurg bench", unit="run"):
        cmd = [sys.executable, "-m", "gradsurg.bench", "--worker", method, "--sizes", str(n), "--dim", str(d),
               "--dtype", dtype, "--repeats", str(repeats), "--temperature", str(temperature)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tqdm.write(f"{method} N={n}: failed ({proc.stderr.strip().splitlines()[-1:]})")
            record = {"method": method, "n": n, "m": n, "d": d, "dtype": dtype, "error": proc.stderr[-2000:]}
        else:
            record = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(record)
        _save(out, meta, results)
    if plot:
        plot_results(results, out.rsplit(".", 1)[0] + ".png", meta)
    return results


def _save(out: str, meta: dict, results: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = dict(meta, updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "results": results, "summary": summarize(results)}, f, indent=1)
    os.replace(tmp, out)


def summarize(results: list[dict]) -> list[dict]:
    """Per size: each method's median and peak, and their ratios to eager."""
    table = []
    for n in sorted({r["n"] for r in results}):
        by = {r["method"]: r for r in results if r["n"] == n and "error" not in r}
        eager = by.get("eager")
        for method, r in by.items():
            row = {"n": n, "method": method, "median_s": r["median_s"], "peak_delta_mb": r["peak_delta_mb"]}
            if eager:
                row["time_vs_eager"] = r["median_s"] / eager["median_s"]
                row["memory_vs_eager"] = r["peak_delta_mb"] / eager["peak_delta_mb"]
            table.append(row)
    return table


def format_table(results: list[dict]) -> str:
    lines = ["| N = M | method | median s | x eager time | peak MB | x eager memory |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in summarize(results):
        lines.append(
            f"| {row['n']} | {row['method']} | {row['median_s']:.3f} | {row.get('time_vs_eager', float('nan')):.2f} "
            f"| {row['peak_delta_mb']:.0f} | {row.get('memory_vs_eager', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def plot_results(results: list[dict], path: str, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    sizes = sorted({r["n"] for r in ok})
    methods = [m for m in METHODS if any(r["method"] == m for r in ok)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        xs, ts, ms = [], [], []
        for i, n in enumerate(sizes):
            r = next((r for r in ok if r["n"] == n and r["method"] == method), None)
            if r:
                xs.append(i + k * width)
                ts.append(r["median_s"])
                ms.append(r["peak_delta_mb"])
        axes[0].bar(xs, ts, width, label=method)
        axes[1].bar(xs, ms, width, label=method)
    for ax, title in zip(axes, ["median forward+backward time (s)", "peak memory over inputs (MB)"]):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [f"N=M={n}" for n in sizes])
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"InfoNCE fwd+bwd, d={ok[0]['d'] if ok else '?'}, {ok[0]['dtype'] if ok else ''}, "
                 f"{meta.get('machine', '')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="N = M values")
    parser.add_argument("--dim", type=int, default=768, help="embedding size d")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--out", default=None,
                        help="JSON file (default benchmarks/results/paradigm_<machine>.json); "
                             "existing results in it are kept and skipped")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], args.dim, args.dtype, args.repeats, args.temperature)))
        return 0
    out = args.out or os.path.join("benchmarks", "results", f"paradigm_{machine_name()}.json")
    results = run_all(args.sizes, args.dim, args.dtype, args.methods, args.repeats, args.temperature, out)
    print(format_table(results))
    print(f"results: {out} and {out.rsplit('.', 1)[0]}.png")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m gradsurg.bench")
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
