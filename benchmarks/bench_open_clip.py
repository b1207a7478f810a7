"""open_clip's losses beside gradsurg's drop-ins: time and peak memory of one forward+backward step.

d = 512, float32, unit features (as open_clip's models give them), logit_scale a learnable 0-dim
tensor (and logit_bias for SigLIP), on the CPU:

* one process, global batch B: ``open_clip`` ClipLoss / SigLipLoss (loss.py of the installed
  open-clip-torch, loaded by path) and ``gradsurg`` ClipLoss / SigLipLoss
  (gradsurg.integrations.open_clip);
* two gloo processes, B/2 rows each: ClipLoss with local_loss=True, gather_with_grad=True (open_clip's
  recommended setting) both ways; SigLipLoss with dist_impl='bidir' both ways (gradsurg: the ring)
  and gradsurg's 'gather'.

Each (setting, B, method) runs in fresh processes (one thread each): one warm-up step, then
``--reps`` timed steps; the median is reported (for two processes, the slower rank's). Peak memory:
the resident high-water mark above the resident size before the first step (reset through
``/proc/self/clear_refs``; inputs allocated before), the larger rank's. Results:
``benchmarks/results/open_clip_<machine>.json`` and ``.png``::

    python benchmarks/bench_open_clip.py                      # B = 1024, 4096 (about 2-3 minutes on 2 cores)
    python benchmarks/bench_open_clip.py --sizes 16384 --reps 2     # added to the file's rows (--fresh: all anew)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = {1: ["open_clip-clip", "gradsurg-clip", "open_clip-siglip", "gradsurg-siglip"],
           2: ["open_clip-clip", "gradsurg-clip", "open_clip-siglip", "gradsurg-siglip", "gradsurg-siglip-gather"]}


def make_loss(method: str, rank: int, world: int):
    from gradsurg.integrations import open_clip as ours

    lib = ours if method.startswith("gradsurg") else ours.open_clip_loss_module()
    if lib is None:
        raise RuntimeError("open-clip-torch is not installed")
    if "clip" in method.split("-")[1]:
        return lib.ClipLoss(local_loss=world > 1, gather_with_grad=world > 1, cache_labels=True, rank=rank,
                            world_size=world)
    return lib.SigLipLoss(rank=rank, world_size=world, dist_impl="gather" if method.endswith("gather") else "bidir")


def worker(method: str, b: int, d: int, reps: int, device: str = "cpu", dtype_name: str = "float32") -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from gradsurg.bench import reset_peak, rss_mb

    torch.set_num_threads(1)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    n = b // world
    g = torch.Generator().manual_seed(rank)
    dtype = getattr(torch, dtype_name)
    img = F.normalize(torch.randn(n, d, generator=g), dim=1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=g), dim=1)
    img, txt = (t.to(device=device, dtype=dtype).requires_grad_() for t in (img, txt))
    scale = torch.tensor(10.0, device=device, dtype=dtype, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, dtype=dtype, requires_grad=True) if "siglip" in method else None
    cuda = device.startswith("cuda")
    loss_fn = make_loss(method, rank, world)

    def step():
        img.grad = txt.grad = scale.grad = None
        loss = loss_fn(img, txt, scale, bias) if bias is not None else loss_fn(img, txt, scale)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        return loss

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        reset = reset_peak()
        before = rss_mb("VmRSS")
    try:
        value = float(step())  # warm-up, inside the peak: the allocator keeps what it freed (a later step shows less)
    except torch.OutOfMemoryError as err:
        return {"times_s": [float("nan")], "peak_delta_mb": float("nan"), "loss": float("nan"),
                "error": f"out of memory: {str(err)[:200]}"}
    times = []
    for _ in range(reps):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        peak = rss_mb("VmHWM") - before if reset else float("nan")
    if world > 1:
        dist.destroy_process_group()
    return {"times_s": times, "peak_delta_mb": peak, "loss": value}


def _gpu_name() -> str:
    import torch

    return "gpu-" + torch.cuda.get_device_name().replace(" ", "_")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(method: str, b: int, d: int, reps: int, world: int, device: str = "cpu", dtype: str = "float32") -> dict:
    """Run ``method`` in ``world`` fresh processes; the slower rank's median and the larger peak."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "kernels"),
                                                                          os.environ.get("PYTHONPATH", "")]))
    procs = []
    for rank in range(world):
        cmd = [sys.executable, __file__, "--worker", method, "--sizes", str(b), "--d", str(d), "--reps", str(reps),
               "--device", device, "--dtype", dtype]
        procs.append(subprocess.Popen(cmd, env=dict(env, RANK=str(rank)), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{method} B={b} world={world}: {err.strip()[-1500:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {"method": method, "B": b, "world": world, "d": d, "device": device, "dtype": dtype,
            "error": outs[0].get("error"),
            "median_s": max(statistics.median(o["times_s"]) for o in outs),
            "peak_delta_mb": max(o["peak_delta_mb"] for o in outs), "loss": outs[0]["loss"],
            "times_s": [o["times_s"] for o in outs]}


def _row_key(r: dict) -> tuple:
    """What identifies a measured row (reruns with the same key are skipped)."""
    return (r["method"], r["B"], r["world"], r["d"], r["device"], r["dtype"])


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = sorted({r["world"] for r in results})
    fig, axes = plt.subplots(len(worlds), 2, figsize=(11, 3.8 * len(worlds)), squeeze=False)
    for row, world in enumerate(worlds):
        rs = [r for r in results if r["world"] == world]
        for col, (key, label) in enumerate((("median_s", "median fwd+bwd step (s)"),
                                            ("peak_delta_mb", "peak memory over inputs (MB)"))):
            ax = axes[row][col]
            for method in METHODS[world]:
                pts = sorted((r["B"], r[key]) for r in rs if r["method"] == method and not r.get("error"))
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=method,
                            linestyle="--" if method.startswith("open_clip") else "-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("global batch B")
            ax.set_title(f"{label}, {world} process{'es' if world > 1 else ''}", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one process per method; peak = "
                        "torch.cuda.max_memory_allocated above the inputs)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--fresh", action="store_true", help="measure everything again (default: the rows "
                        "already in the results file for these settings are kept)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], args.d, args.reps, args.device, args.dtype)))
        return 0
    from gradsurg.bench import machine_name

    name = machine_name() if args.device == "cpu" else _gpu_name()
    path = os.path.join(args.out, f"open_clip_{name}.json")
    results, earlier, commands = [], {}, []
    if os.path.exists(path) and not args.fresh:  # resumable: rows measured before are kept, not rerun
        try:
            with open(path) as f:
                old = json.load(f)
            for r in old["results"]:
                r.setdefault("reps", old["meta"].get("reps"))
            earlier = {_row_key(r): r for r in old["results"]}
            commands = old["meta"].get("commands") or [old["meta"].get("command")]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"{path}: cannot read the earlier results ({exc}); pass --fresh to start over")
    t0 = time.perf_counter()
    for world in args.worlds:
        for b in args.sizes:
            for method in METHODS[world]:
                key = (method, b, world, args.d, args.device, args.dtype)
                if key in earlier:
                    print(f"world={world} B={b:6d} {method:24s} kept from {path}", flush=True)
                    continue
                r = measure(method, b, args.d, args.reps, world, args.device, args.dtype)
                r["reps"] = args.reps
                earlier[key] = r
                print(f"world={world} B={b:6d} {method:24s} median {r['median_s'] * 1e3:9.1f} ms  "
                      f"peak {r['peak_delta_mb']:8.1f} MB" + (f"  ({r['error']})" if r["error"] else ""), flush=True)
    results = sorted(earlier.values(), key=lambda r: (r["world"], r["B"], METHODS[r["world"]].index(r["method"])))
    meta = {"machine": name, "d": args.d, "dtype": args.dtype, "device": args.device,
            "reps": "per row (timed steps after one warm-up)", "threads_per_process": 1,
            "wall_s": time.perf_counter() - t0, "commands": commands + [" ".join(["python"] + sys.argv)]}
    os.makedirs(args.out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:  # written whole, then renamed: an interrupted run never leaves half a file
        json.dump({"meta": meta, "results": results}, f, indent=1)
    os.replace(tmp, path)
    plot(results, path[:-5] + ".png", f"open_clip vs gradsurg losses, d = {args.d}, {args.dtype}, {name}"
         + (", 1 thread/process" if args.device == "cpu" else ""))
    print(f"wrote {path} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
