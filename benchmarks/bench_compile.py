"""A training step compiled with ``torch.compile(fullgraph=True)`` against the same step in eager mode.

The step: a small encoder (Linear -> GELU -> Linear) embeds two views, ``gradsurg.info_nce``
(symmetric, torch backend on CPU), ``backward()``, ``SGD.step()``. ``compiled`` wraps the
encoder + loss in ``torch.compile(fullgraph=True)`` (Inductor; the loss is one opaque
operator per direction, so the graph holds the whole step without a break); the optimiser
step runs eagerly in both. Both methods start from the same weights and batch; the losses of
the first step are compared (they must agree to 1e-5 relative).

Timing: one process, methods interleaved round by round (warm-up and compilation excluded),
median over rounds. Writes ``benchmarks/results/compile_step_<machine>.json`` (every time)
and ``.png``.

    python benchmarks/bench_compile.py                      # N in {256, 1024}, d = 768, 15 rounds
    python benchmarks/bench_compile.py --sizes 128 --rounds 5 --machine quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import gradsurg


def make_step(n_in: int, hidden: int, d: int, compiled: bool, seed: int = 0):
    torch.manual_seed(seed)
    enc = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d))
    opt = torch.optim.SGD(enc.parameters(), lr=1e-3)

    def loss_fn(x, y):
        return gradsurg.info_nce(enc(x), enc(y), symmetric=True)

    fn = torch.compile(loss_fn, fullgraph=True) if compiled else loss_fn

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = fn(x, y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--n-in", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--machine", default=f"cpu-{os.cpu_count()}core")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)

    results = {"machine": args.machine, "platform": platform.platform(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "gradsurg": gradsurg.__version__, "d": args.d, "n_in": args.n_in, "hidden": args.hidden,
               "rounds": args.rounds, "sizes": {}}
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, args.n_in, generator=g)
        y = x + 0.5 * torch.randn(n, args.n_in, generator=g)
        steps = {"eager": make_step(args.n_in, args.hidden, args.d, False),
                 "compiled": make_step(args.n_in, args.hidden, args.d, True)}
        first = {}
        t0 = time.perf_counter()
        for name, step in steps.items():
            first[name] = float(step(x, y))  # compiles here
        compile_s = time.perf_counter() - t0
        rel = abs(first["compiled"] - first["eager"]) / abs(first["eager"])
        assert rel <= 1e-5, f"compiled and eager first-step losses differ: {first}"
        for step in steps.values():  # one more warm-up each
            step(x, y)
        times = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                t = time.perf_counter()
                step(x, y)
                times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(v) for name, v in times.items()}
        results["sizes"][str(n)] = {"times": times, "median_s": med, "first_loss": first,
                                    "first_loss_rel_diff": rel, "warmup_and_compile_s": compile_s,
                                    "compiled_over_eager": med["compiled"] / med["eager"]}
        print(f"N={n:5d} eager {med['eager'] * 1e3:8.2f} ms  compiled {med['compiled'] * 1e3:8.2f} ms  "
              f"ratio {med['compiled'] / med['eager']:.3f}  (first-step loss rel. diff {rel:.1e})")
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"compile_step_{args.machine}")
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sizes = args.sizes
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, name in enumerate(("eager", "compiled")):
            vals = [results["sizes"][str(n)]["median_s"][name] * 1e3 for n in sizes]
            ax.bar([j + 0.4 * i for j in range(len(sizes))], vals, width=0.4, label=name)
        ax.set_xticks([j + 0.2 for j in range(len(sizes))], [f"N={n}" for n in sizes])
        ax.set_ylabel("median ms / training step")
        ax.set_title(f"info_nce step, d={args.d}, {args.machine}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=120)
    except ImportError:
        pass
    print(f"wrote {base}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
