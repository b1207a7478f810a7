"""``gradsurg bench``: the paradigm engine against eager PyTorch and torch.compile.

For each batch size N = M (d = 768, float32 by default) it compares:

* ``eager``   -- textbook InfoNCE: cosine matrix + ``F.cross_entropy``, autograd backward;
* ``compile`` -- the same function under ``torch.compile``;
* ``gradsurg`` -- :func:`gradsurg.info_nce` (torch backend: gradient formed chunk by chunk);
* ``matmul3`` -- the three N x d x M matrix products any exact method needs (the floor).

Time: one process per size warms every method up, then times them in
interleaved rounds (eager, compile, gradsurg, matmul3, eager, ...), so a
change of machine load hits all methods alike; the median over ``--repeats``
rounds is reported. Memory: each method then runs alone in a fresh process,
and its peak resident-memory increase over the inputs is read after a warm-up
(``VmHWM`` reset via ``/proc/self/clear_refs``, so compilation does not count).
Results are written to a JSON file after every size (an interrupted run keeps
what it measured, and a rerun skips it) and drawn as a PNG.
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


def rss_mb(field: str = "VmRSS") -> float:
    """The process's resident memory in MiB from ``/proc/self/status`` (``VmRSS`` now, ``VmHWM`` its
    high-water mark); NaN where the field is missing. The benchmarks' one reading of RSS."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def timed_steps(step, warmup: int, steps: int, device, prepare=None) -> dict:
    """Run ``step(*prepare(k))`` for ``k`` in ``range(warmup + steps)``, timing the steps after the
    warm-up (``prepare``, outside the timing, gives each step's arguments; none by default).

    Returns ``times_s`` (the timed steps, CUDA synchronised after each), ``baseline_rss_mb`` (the
    resident memory before the first step), ``peak_rss_mb`` (the process's peak resident memory,
    ``ru_maxrss``, at the end) and, on CUDA, ``base_cuda_mb`` / ``peak_cuda_mb`` (allocated memory
    before the first step, and its peak since then). The benchmarks' one loop of measured steps.
    """
    import resource

    import torch

    cuda = torch.device(device).type == "cuda"
    out = {}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["base_cuda_mb"] = torch.cuda.memory_allocated() / 2**20
    out["baseline_rss_mb"] = rss_mb()
    times = []
    for k in range(warmup + steps):
        args = prepare(k) if prepare is not None else ()
        t0 = time.perf_counter()
        step(*args)
        if cuda:
            torch.cuda.synchronize()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    out["times_s"] = times
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


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


def timing_worker(methods, n: int, d: int, dtype_name: str, repeats: int, temperature: float) -> dict:
    """Time every method on one size in this process, in interleaved rounds."""
    import torch

    dtype = getattr(torch, dtype_name)
    steps = {m: _make_step(m, n, d, dtype, temperature) for m in methods}
    for step in steps.values():
        step()  # warm-up (and compilation)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[m].append(time.perf_counter() - t0)
    return {"times_s": times, "threads": torch.get_num_threads(), "torch": torch.__version__}


def memory_worker(method: str, n: int, d: int, dtype_name: str, temperature: float) -> dict:
    """Peak resident-memory increase of one step of ``method``, alone in this process."""
    import torch

    dtype = getattr(torch, dtype_name)
    base = rss_mb("VmRSS")
    step = _make_step(method, n, d, dtype, temperature)
    inputs_mb = rss_mb("VmRSS") - base
    step()  # warm-up (and compilation)
    reset = reset_peak()
    before = rss_mb("VmRSS")
    step()
    peak = rss_mb("VmHWM") - before if reset else float("nan")
    return {"peak_delta_mb": peak, "inputs_mb": inputs_mb}


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "gradsurg.bench", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    todo = [n for n in sizes if any((m, n, d, dtype) not in done for m in methods)]
    common = ["--dim", str(d), "--dtype", dtype, "--temperature", str(temperature)]
    bar = tqdm(total=len(todo) * (1 + len(methods)), desc="gradsurg bench", unit="process")
    for n in todo:
        bar.set_postfix_str(f"N=M={n}: timing")
        try:
            timing = _child(["--worker", "time", "--methods", *methods, "--sizes", str(n),
                             "--repeats", str(repeats), *common])
        except RuntimeError as exc:
            tqdm.write(f"N={n}: timing failed: {str(exc).splitlines()[-1:]}")
            timing = None
        bar.update(1)
        for method in methods:
            bar.set_postfix_str(f"N=M={n}: memory of {method}")
            record = {"method": method, "n": n, "m": n, "d": d, "dtype": dtype}
            try:
                record.update(_child(["--worker", "memory", "--methods", method, "--sizes", str(n), *common]))
            except RuntimeError as exc:
                record["error"] = str(exc)
            if timing is None:
                record["error"] = "timing failed"
            else:
                record.update(threads=timing["threads"], torch=timing["torch"],
                              times_s=timing["times_s"][method],
                              median_s=statistics.median(timing["times_s"][method]))
            results = [r for r in results if (r["method"], r["n"], r["d"], r["dtype"]) != (method, n, d, dtype)]
            results.append(record)
            bar.update(1)
        _save(out, meta, results)
    bar.close()
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
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--out", default=None,
                        help="JSON file (default benchmarks/results/paradigm_<machine>.json); "
                             "existing results in it are kept and skipped")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def run(args) -> int:
    if args.worker == "time":
        print(json.dumps(timing_worker(args.methods, args.sizes[0], args.dim, args.dtype, args.repeats,
                                       args.temperature)))
        return 0
    if args.worker == "memory":
        print(json.dumps(memory_worker(args.methods[0], args.sizes[0], args.dim, args.dtype, args.temperature)))
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
