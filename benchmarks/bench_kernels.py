"""Benchmark of the fused paradigm kernels against the usual ways of computing the loss.

For every configuration it measures forward + backward of InfoNCE (the
reference loss; ``--paradigm`` picks another preset, e.g. ``siglip``) with

* ``triton``   gradsurg.paradigm_loss(..., backend="triton")  (GPU only; the dispatcher's path)
* ``triton-fused`` / ``triton-chunked``  the same with ``path=`` forced (the crossover in d;
               ``triton-fused`` only for 16-bit inputs with d <= 256)
* ``torch``    gradsurg.paradigm_loss(..., backend="torch")   (the chunked torch backend)
* ``eager``    materialised cosine matrix + F.cross_entropy, plain autograd
* ``compile``  torch.compile of ``eager``
* ``matmul``   one cuBLAS (or CPU BLAS) matmul of the same shape, N x d @ d x M: the reference rate

and reports the median time (ms; ``triton.testing.do_bench`` on GPU, a
synchronised median of wall times on CPU), the matmul-equivalent rate
``3 * 2 N M d / t`` (TFLOP/s: three products is the floor of a fused
forward+backward; for the ``matmul`` row it is the plain ``2 N M d / t``),
the ratio to three matmuls of the same run (the GPU goal is <= 1.6), and the
peak memory above the inputs (GPU: torch.cuda.max_memory_allocated).

Results go to ``benchmarks/results/kernels_<card>.json`` (rewritten after every
measurement, so an interrupted run loses nothing) and
``kernels_<card>.png``; ``--out DIR`` writes elsewhere. Always name the card
(it is in the file name and in every record).

    python benchmarks/bench_kernels.py --quick            # CPU: torch paths, small shapes
    python benchmarks/bench_kernels.py --matrix check     # GPU: a subset that fits ~5 minutes
    python benchmarks/bench_kernels.py --matrix full      # GPU: the matrix of docs/ANCHORS.md
    python benchmarks/bench_kernels.py --matrix crossover --methods matmul,triton-fused,triton-chunked
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import gradsurg  # noqa: E402

K = 1024
METHODS = ("matmul", "triton", "triton-fused", "triton-chunked", "torch", "eager", "compile")


# -- the configurations ---------------------------------------------------------------------------------

def config(n, d, k=0, dtype="bf16", symmetric=False, tau=0.05, m=None):
    return dict(n=n, m=m if m is not None else n * (1 + k), d=d, k=k, dtype=dtype, symmetric=symmetric, tau=tau)


def matrix(name: str) -> list[dict]:
    if name == "quick":  # CPU: small shapes, torch paths
        return [config(1024, 384, dtype="fp32"), config(2048, 384, dtype="fp32"),
                config(2048, 768, dtype="fp32"), config(1024, 384, k=1, dtype="fp32"),
                config(1024, 384, dtype="fp32", symmetric=True)]
    if name == "check":  # GPU: the headline shape first, then a few others (~5 minutes)
        return [config(32 * K, 768), config(16 * K, 128), config(16 * K, 64), config(16 * K, 768),
                config(16 * K, 768, dtype="fp16"), config(16 * K, 768, dtype="fp32"),
                config(16 * K, 768, k=1), config(16 * K, 768, symmetric=True),
                config(16 * K, 4096), config(32767, 768, m=32767)]
    if name == "crossover":  # GPU: fused vs chunked Triton paths over d (bf16)
        return [config(16 * K, d) for d in (64, 128, 256, 384)]
    if name == "full":  # the benchmark matrix of docs/ANCHORS.md, grouped in sweeps
        out = [config(n * K, 768) for n in (4, 8, 16, 32, 64)]
        out += [config(16 * K, d) for d in (384, 1024, 4096)]
        out += [config(32767, 768, m=32767)]
        out += [config(16 * K, 768, k=k) for k in (1, 3)]
        out += [config(16 * K, 768, tau=1 / 20)]  # scale 20 (tau 0.05) is the default; scale 50:
        out += [config(16 * K, 768, tau=1 / 50)]
        out += [config(16 * K, 768, symmetric=True), config(32 * K, 768, symmetric=True)]
        out += [config(16 * K, 768, dtype=dt) for dt in ("fp16", "fp32")]
        out += [config(32 * K, 768, dtype=dt) for dt in ("fp16", "fp32")]
        return out
    raise SystemExit(f"unknown matrix {name!r}")


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -- the methods --------------------------------------------------------------------------------------------

def eager_loss(x, c, tau, n, symmetric, kind="info_nce"):
    """The textbook loss: materialised cosine matrix + cross-entropy (``kind='siglip'``: SigLIP's
    pairwise sigmoid loss at its initialisation t = 10, b = -10, as big_vision writes it)."""
    u, v = F.normalize(x, dim=1), F.normalize(c, dim=1)
    labels = torch.arange(n, device=x.device)

    def one(a, b):
        if kind == "siglip":
            logits = (a @ b.T) * 10.0 - 10.0
            sign = 2 * torch.eye(n, b.shape[0], device=x.device, dtype=logits.dtype) - 1
            return -F.logsigmoid(sign * logits).sum() / n
        return F.cross_entropy((a @ b.T) / tau, labels)

    loss = one(u, v)
    if symmetric:
        loss = 0.5 * (loss + one(v[:n], u))
    return loss


_COMPILED = {}


def make_step(method, x, c, cfg, paradigm, allow_tf32, kind="info_nce"):
    n, tau, sym = cfg["n"], cfg["tau"], cfg["symmetric"]
    if method == "matmul":
        ct = c.detach().T

        def step():
            return x.detach() @ ct
        return step
    if method in ("triton", "torch", "triton-fused", "triton-chunked"):
        backend, _, path = method.partition("-")
        opts = {"path": path} if path else {}
        if path == "fused" and (x.dtype == torch.float32 or x.shape[1] > 256):
            raise ValueError("triton-fused is measured for 16-bit inputs with d <= 256 only")

        def step():
            loss = gradsurg.paradigm_loss(x, c[:n], c[n:] if c.shape[0] > n else None, paradigm=paradigm,
                                          symmetric=sym, backend=backend, check_finite=False, **opts)
            loss.backward()
        return step
    if method == "eager":
        def step():
            eager_loss(x, c, tau, n, sym, kind).backward()
        return step
    if method == "compile":
        fn = _COMPILED.setdefault("fn", torch.compile(eager_loss))

        def step():
            fn(x, c, tau, n, sym, kind).backward()
        return step
    raise ValueError(method)


def timed(step, grads, cuda: bool, reps: int):
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(step, warmup=25, rep=max(100, reps), grad_to_none=grads,
                                             return_mode="median"))
    times = []
    step()  # warm-up
    for _ in range(reps):
        for g in grads:
            g.grad = None
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def peak_memory(step, grads, cuda: bool):
    if not cuda:
        return None
    for g in grads:
        g.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# -- bookkeeping ----------------------------------------------------------------------------------------------

def card_name(cuda: bool) -> str:
    if cuda:
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu-{platform.machine()}-{os.cpu_count()}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


class Results:
    def __init__(self, path: str, meta: dict):
        self.path = path
        self.data = {"meta": meta, "records": []}
        if os.path.exists(path):  # append to an earlier (possibly interrupted) run of the same card
            try:
                with open(path) as f:
                    old = json.load(f)
                self.data["records"] = old.get("records", [])
            except (OSError, ValueError):
                pass

    def add(self, record: dict):
        key = {k: record[k] for k in ("n", "m", "d", "dtype", "symmetric", "tau", "method", "paradigm")}
        self.data["records"] = [r for r in self.data["records"]
                                if {k: r.get(k) for k in key} != key] + [record]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def plot(results: Results, png: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in results.data["records"] if r.get("ms") is not None]
    if not recs:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    base = [r for r in recs if r["d"] == (768 if any(r["d"] == 768 for r in recs) else recs[0]["d"])
            and r["k"] == 0 and not r["symmetric"] and r["dtype"] == recs[0]["dtype"]
            and abs(r["tau"] - 0.05) < 1e-9]
    for method in METHODS:
        pts = sorted((r["n"], r["ms"], r.get("ratio_3mm")) for r in base if r["method"] == method)
        if not pts:
            continue
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
        if method != "matmul":
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=method)
    axes[0].set(xscale="log", yscale="log", xlabel="N = M", ylabel="median ms (fwd+bwd)",
                title=f"{results.data['meta']['card']}: d=768 {recs[0]['dtype']}")
    axes[1].axhline(1.6, color="gray", ls="--", lw=1)
    axes[1].set(xscale="log", yscale="log", xlabel="N = M", ylabel="time / (3 x matmul)",
                title="ratio to three matmuls (goal: triton <= 1.6)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU: torch paths on small shapes")
    ap.add_argument("--matrix", default=None, help="quick | check | full (default: full on GPU, quick on CPU)")
    ap.add_argument("--methods", default=None, help="comma list of " + ",".join(METHODS))
    ap.add_argument("--paradigm", default="info_nce", help="preset of gradsurg.paradigm (the eager and "
                    "compile rows: SigLIP for siglip, else InfoNCE)")
    ap.add_argument("--allow-tf32", action="store_true", help="fp32: let cuBLAS use TF32 (torch's matmul setting)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new configs after this many s")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    cuda = torch.cuda.is_available() and not args.quick
    device = "cuda" if cuda else "cpu"
    name = args.matrix or ("full" if cuda else "quick")
    configs = matrix(name)
    methods = args.methods.split(",") if args.methods else (
        ["matmul", "triton", "torch", "eager", "compile"] if cuda else ["matmul", "torch", "eager", "compile"])
    if not cuda:  # the interpreter is not a benchmark
        methods = [mt for mt in methods if not mt.startswith("triton")]
    reps = args.reps or (100 if cuda else 3)
    torch.backends.cuda.matmul.allow_tf32 = bool(args.allow_tf32)
    paradigm = getattr(gradsurg.paradigm, args.paradigm)

    card = card_name(cuda)
    os.makedirs(args.out, exist_ok=True)
    meta = dict(card=card, device=torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
                torch=torch.__version__, triton=_triton_version(), matrix=name, paradigm=args.paradigm,
                allow_tf32=bool(args.allow_tf32),
                flops_note="tflops = 3 * 2NMd / t for the losses (the 3-product floor), 2NMd / t for matmul")
    results = Results(os.path.join(args.out, f"kernels_{card}.json"), meta)
    png = os.path.join(args.out, f"kernels_{card}.png")
    print(f"# {card}: matrix {name}, methods {methods}, results in {results.path}", flush=True)
    start = time.time()
    for cfg in configs:
        if args.budget_s and time.time() - start > args.budget_s:
            print("# budget spent: stopping", flush=True)
            break
        dtype = DTYPES[cfg["dtype"]]
        g = torch.Generator(device=device).manual_seed(0)
        try:
            x = torch.randn(cfg["n"], cfg["d"], device=device, dtype=dtype, generator=g).requires_grad_()
            c = torch.randn(cfg["m"], cfg["d"], device=device, dtype=dtype, generator=g).requires_grad_()
        except torch.OutOfMemoryError:
            continue
        mm_ms = None
        tau_paradigm = paradigm(cfg["tau"]) if args.paradigm in ("info_nce", "arccon") else paradigm()
        for method in ["matmul"] + [mt for mt in methods if mt != "matmul"]:
            rec = dict(cfg, method=method, paradigm=args.paradigm, card=card)
            try:
                step = make_step(method, x, c, cfg, tau_paradigm, args.allow_tf32,
                                 "siglip" if args.paradigm == "siglip" else "info_nce")
                ms = timed(step, [x, c], cuda, reps)
                rec["ms"] = ms
                flops = 2.0 * cfg["n"] * cfg["m"] * cfg["d"] * (1 if method == "matmul" else 3)
                if cfg["symmetric"] and method != "matmul":
                    flops *= 1 + cfg["n"] / cfg["m"]  # the second direction: N x N x d
                rec["tflops"] = flops / ms / 1e9
                if method == "matmul":
                    mm_ms = ms
                elif mm_ms:
                    rec["ratio_matmul"] = ms / mm_ms
                    rec["ratio_3mm"] = ms / (3 * mm_ms * (1 + cfg["n"] / cfg["m"] if cfg["symmetric"] else 1))
                rec["peak_mb"] = peak_memory(step, [x, c], cuda)
                rec["status"] = "ok"
            except torch.OutOfMemoryError:
                rec.update(ms=None, status="oom")
            except Exception as exc:  # a method that cannot run here is recorded, not fatal
                rec.update(ms=None, status=f"error: {type(exc).__name__}: {str(exc)[:200]}")
            finally:
                x.grad = c.grad = None
                if cuda:
                    torch.cuda.empty_cache()
            results.add(rec)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()
                              if k not in ("card", "paradigm")}), flush=True)
        del x, c
        if method == "compile":
            torch._dynamo.reset()
            _COMPILED.clear()
        try:
            plot(results, png)
        except Exception as exc:  # plotting never loses the measurements
            print(f"# plot failed: {exc}", flush=True)
    print(f"# done in {time.time() - start:.0f}s: {results.path}", flush=True)


def _triton_version():
    try:
        import triton

        return triton.__version__
    except Exception:
        return None


if __name__ == "__main__":
    main()
