"""Compile the kernels ahead of time for a GPU (none needed) and report registers, spills, tensor cores.

    python -m gradsurg_kernels.inspect --arch 90 --dtype bf16 --d 768 --out DIR
    python -m gradsurg_kernels.inspect --arch 80 90 --dtype bf16 fp16 fp32 \\
        --d 64 128 256 384 768 1024 4096 --out benchmarks/results/inspect      # the full matrix

For every (arch, dtype, d) it builds the launch plans the launcher itself would
run (its choice of path and tiles, :mod:`gradsurg_kernels.launch`) for one
direction with N = M = 4096 (``--n``/``--m``), for the default paradigm
(InfoNCE with its gradient), its value-only pass and the other weight kinds
(hardest: MPT; power: Constant GD + Power(5); uniform: InfoNCE GD + Uniform,
which also needs the dissipation's own log-sum-exp). Each distinct kernel
variant is compiled with ``triton.compile`` for ``sm_80`` or ``sm_90a``
(integer arguments divisible by 16 and aligned pointers carry the same
divisibility hints as a JIT launch would), its cubin is written under DIR, and
``cuobjdump -res-usage`` / ``nvdisasm`` (shipped with Triton) give

    registers, local (stack) bytes, spill stores/loads (STL/LDL instructions),
    shared memory, tensor-core instructions (HGMMA on sm_90a, HMMA on sm_80)

as one JSON line per kernel in ``DIR/kernels.jsonl`` (appended), plus a table
on stdout. Exit status 1 when a kernel fails to compile, spills, or
multiplies 16-bit operands without tensor-core instructions.
Works with Triton 3.6 and 3.9.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "0"  # ahead-of-time compilation needs the compiler, not the interpreter
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)

import torch  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SIG = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
        torch.int64: "i64"}
#: the paradigms whose kernels are compiled: (name, weight kind, needs the dissipation's own LSE, gradient)
VARIANTS = (
    ("info_nce", "softmax", False, True),
    ("info_nce_value", "softmax", False, False),
    ("mpt", "hardest", False, True),
    ("power", "power", False, True),
    ("uniform", "uniform", True, True),
    ("siglip", "sigmoid", False, True),
)


def _tools():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def plans(arch: int, dtype: torch.dtype, d: int, n: int = 4096, m: int = 4096, variants=None):
    """``(path, reason, [(variant, Launch)])``: the launches of one direction, on meta tensors."""
    from . import launch as L

    path, reason = L.choose_path(dtype, d, arch)
    meta = dict(device="meta")
    x = torch.empty((n, d), dtype=dtype, **meta)
    c = torch.empty((m, d), dtype=dtype, **meta)
    f32 = dict(dtype=torch.float32, **meta)
    ix, ic, one = torch.empty(n, **f32), torch.empty(m, **f32), torch.empty(1, **f32)
    stats = torch.empty((L.N_STATS, n), **f32)
    hidx = torch.empty(n, dtype=torch.int32, **meta)
    out = []
    for name, kind, need_g, grad in VARIANTS:
        if variants and name not in variants:
            continue
        w_kind = L.W_KINDS[kind]
        hard = kind == "hardest"
        if path == "fused":
            t = L.fused_tiles(arch, dtype, d)
            acc = torch.empty((n, d), **f32)
            out.append((name, L.plan_fused_rows(
                x, c, ix, ic, one, acc, stats, hidx, w_kind=w_kind, need_lse_g=need_g, has_acc=grad and not hard,
                inv_tau_w=20.0, power_p=5.0, inv_tau_g=20.0, tiles=t, interpret=False)))
            if grad:
                out.append((name, L.plan_fused_finish(
                    acc, acc, x, c, ix, ic, ix, ix, ix, hidx, has_acc=not hard, has_gather=hard,
                    tiles=L.finish_tiles(d), interpret=False)))
                out.append((name, L.plan_fused_cols(
                    torch.empty((m, d), **f32), x, c, ix, ic, ix, one, ix, hidx, ix, w_kind=w_kind,
                    inv_tau_w=20.0, power_p=5.0, tiles=t, interpret=False)))
        else:
            rows = min(n, 4096)
            s = torch.empty((rows, m), **f32)
            w = s if dtype == torch.float32 else torch.empty((rows, 2 * m), dtype=dtype, **meta)[:, :m]
            out.append((name, L.plan_chunk_weights(
                s, w, ix[:rows], ic, one, stats[:, :rows], hidx[:rows], 0, w_kind=w_kind, need_lse_g=need_g,
                write_w=grad, inv_tau_w=20.0, power_p=5.0, inv_tau_g=20.0, tiles=L.chunk_tiles(arch),
                interpret=False)))
    return path, reason, out


def _signature(launch):
    """ASTSource signature, constants and divisibility attributes of a plan (as a JIT launch makes them)."""
    fn = launch.kernel
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in launch.constexprs:
            sig[name] = "constexpr"
            continue
        v = launch.args[name]
        if isinstance(v, torch.Tensor):
            sig[name] = "*" + _SIG[v.dtype]
            attrs[(i,)] = True  # torch allocations are 16-byte aligned (checked by the launcher's shapes)
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = True
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{launch.name}: argument {name} of type {type(v).__name__}")
    return sig, attrs


def compile_launch(launch, arch: int):
    """``(compiled kernel, cubin bytes)`` of a plan for sm_80 / sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    sig, div = _signature(launch)
    attrs = {k: backend.parse_attr("D") for k in div}
    src = ASTSource(fn=launch.kernel, signature=sig, constexprs=dict(launch.constexprs), attrs=attrs)
    options = dict(num_warps=launch.tiles.num_warps, num_stages=launch.tiles.num_stages)
    kernel = triton.compile(src, target=target, options=options)
    return kernel, kernel.asm["cubin"]


def analyse(cubin_path: str) -> dict:
    """Registers, stack, shared memory, spill and tensor-core instruction counts of a cubin."""
    tools = _tools()
    res = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", cubin_path],
                         capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([os.path.join(tools, "nvdisasm"), cubin_path],
                          capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
    if usage is None:
        raise RuntimeError(f"cuobjdump -res-usage gave no resource line for {cubin_path}:\n{res}")
    return dict(
        registers=int(usage[1]), local_bytes=int(usage[2]) + int(usage[4]), static_shared_bytes=int(usage[3]),
        spill_stores=len(re.findall(r"\bSTL(?:\.\w+)*\b", sass)), spill_loads=len(re.findall(r"\bLDL(?:\.\w+)*\b", sass)),
        tensor_core_instructions=len(re.findall(r"\b(?:HGMMA|HMMA)(?:\.\w+)*\b", sass)),
    )


def inspect_case(arch: int, dtype_name: str, d: int, out_dir: str, n: int = 4096, m: int = 4096,
                 variants=None, log=print) -> list[dict]:
    """Compile every kernel of one (arch, dtype, d) case; return the records (also appended to kernels.jsonl)."""
    import triton

    dtype = DTYPES[dtype_name]
    path, reason, launches = plans(arch, dtype, d, n, m, variants)
    seen, records = {}, []
    os.makedirs(out_dir, exist_ok=True)
    for variant, launch in launches:
        key = (launch.name, tuple(sorted(launch.constexprs.items())))
        if key in seen:
            seen[key]["variants"].append(variant)
            continue
        tag = f"{launch.name}_{variant}_sm{arch}_{dtype_name}_d{d}"
        rec = dict(kernel=launch.name, variants=[variant], path=path, arch=f"sm_{arch}{'a' if arch == 90 else ''}",
                   dtype=dtype_name, d=d, n=n, m=m, grid=list(launch.grid),
                   constexprs={k: v for k, v in launch.constexprs.items()},
                   num_warps=launch.tiles.num_warps, num_stages=launch.tiles.num_stages,
                   triton=triton.__version__, cubin=f"{tag}.cubin")
        t0 = time.time()
        try:
            compiled, cubin = compile_launch(launch, arch)
            cubin_path = os.path.join(out_dir, rec["cubin"])
            with open(cubin_path, "wb") as fh:
                fh.write(cubin)
            rec.update(analyse(cubin_path))
            rec["shared_bytes"] = int(compiled.metadata.shared)
            rec["error"] = None
        except Exception as exc:  # reported, and the exit status says so
            rec["error"] = f"{type(exc).__name__}: {str(exc)[-800:]}"
        rec["compile_s"] = round(time.time() - t0, 2)
        # the fused kernels multiply tiles (tl.dot); the chunk kernel is elementwise (its GEMMs are cuBLAS)
        rec["tensor_cores_required"] = launch.name in ("fused_rows", "fused_cols") and dtype != torch.float32
        rec["ok"] = rec["error"] is None and rec["spill_stores"] == 0 and rec["spill_loads"] == 0 and (
            not rec["tensor_cores_required"] or rec["tensor_core_instructions"] > 0)
        seen[key] = rec
        records.append(rec)
        log(_row(rec))
    with open(os.path.join(out_dir, "kernels.jsonl"), "a") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return records


HEADER = (f"{'arch':7} {'dtype':5} {'d':>5} {'path':7} {'kernel':13} {'variants':32} {'tiles':22} "
          f"{'w/s':>4} {'reg':>4} {'local':>5} {'STL/LDL':>8} {'smem':>6} {'TC':>4} ok")


def _row(rec: dict) -> str:
    c = rec["constexprs"]
    tiles = "x".join(str(c[k]) for k in ("BLOCK_R", "BLOCK_N", "BLOCK_M", "BLOCK_D") if k in c)
    if rec["error"]:
        return f"{rec['arch']:7} {rec['dtype']:5} {rec['d']:>5} {rec['path']:7} {rec['kernel']:13} ERROR {rec['error'][:200]}"
    return (f"{rec['arch']:7} {rec['dtype']:5} {rec['d']:>5} {rec['path']:7} {rec['kernel']:13} "
            f"{','.join(rec['variants'])[:32]:32} {tiles:22} {rec['num_warps']}/{rec['num_stages']:<2} "
            f"{rec['registers']:>4} {rec['local_bytes']:>5} {rec['spill_stores']:>3}/{rec['spill_loads']:<4} "
            f"{rec['shared_bytes']:>6} {rec['tensor_core_instructions']:>4} {'yes' if rec['ok'] else 'NO'}")


def summary_table(records: list[dict]) -> str:
    """A markdown table, one row per (triton, arch, dtype, d) (chunked rows with equal results merged
    over d): the path, the tiles of its main kernel, the worst registers / spills / local bytes and the
    range of tensor-core instruction counts of its fused kernels."""
    cases = {}
    for r in records:
        cases.setdefault((r["triton"], r["arch"], r["dtype"], r["d"]), []).append(r)
    rows = []
    for (tv, arch, dtype, d), rs in cases.items():
        good = [r for r in rs if not r.get("error")]
        main = next((r for r in rs if r["kernel"] in ("fused_rows", "chunk_weights")), rs[0])
        c = main["constexprs"]
        tiles = "x".join(str(c[k]) for k in ("BLOCK_R", "BLOCK_N", "BLOCK_M", "BLOCK_D") if k in c)
        tc = [r["tensor_core_instructions"] for r in good if r["tensor_cores_required"]]
        key = (tv, arch, dtype, main["path"], len(rs), f"{tiles} ({main['num_warps']}/{main['num_stages']})",
               max((r["registers"] for r in good), default="-"),
               sum(r["spill_stores"] + r["spill_loads"] for r in good),
               max((r["local_bytes"] for r in good), default="-"),
               f"{min(tc)}-{max(tc)}" if tc else "-", all(r["ok"] for r in rs))
        if rows and main["path"] == "chunked" and rows[-1][0] == key:
            rows[-1][1].append(d)
        else:
            rows.append((key, [d]))
    lines = ["| triton | arch | dtype | d | path | kernels | main kernel tiles (warps/stages) | max regs | "
             "spill instr. | local bytes | tensor-core instr. (fused) | ok |", "|" + "---|" * 12]
    for (tv, arch, dtype, path, n, tiles, reg, spills, local, tc, ok), ds in rows:
        lines.append(f"| {tv} | {arch} | {dtype} | {', '.join(map(str, ds))} | {path} | {n} | {tiles} | {reg} | "
                     f"{spills} | {local} | {tc} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gradsurg_kernels.inspect", description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", choices=(80, 90), help="80 (sm_80) or 90 (sm_90a)")
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES))
    ap.add_argument("--d", type=int, nargs="+", help="embedding size(s)")
    ap.add_argument("--out", help="directory for the cubins and kernels.jsonl")
    ap.add_argument("--table", metavar="JSONL", help="only print the markdown summary of a kernels.jsonl")
    ap.add_argument("--n", type=int, default=4096, help="anchors N of the planned launch (default 4096)")
    ap.add_argument("--m", type=int, default=4096, help="candidates M of the planned launch (default 4096)")
    ap.add_argument("--variants", nargs="+", choices=[v[0] for v in VARIANTS], default=None,
                    help="only these paradigm variants (default: all)")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as fh:
            print(summary_table([json.loads(line) for line in fh if line.strip()]))
        return 0
    missing = [f"--{k}" for k in ("arch", "dtype", "d", "out") if not getattr(args, k)]
    if missing:
        ap.error(f"the following arguments are required: {', '.join(missing)}")
    if any(d < 1 for d in args.d):
        ap.error("--d: embedding sizes must be >= 1")
    import triton

    from . import launch as L

    if L.interpreted():
        ap.error("Triton was imported in interpreter mode (TRITON_INTERPRET=1); run this command in a fresh process")
    print(f"triton {triton.__version__}; N = {args.n}, M = {args.m}; out: {args.out}")
    for arch in args.arch:
        for dtype in args.dtype:
            for d in args.d:
                print(f"  sm_{arch} {dtype} d={d}: " + ": ".join(L.choose_path(DTYPES[dtype], d, arch)))
    print(HEADER)
    bad = 0
    for arch in args.arch:
        for dtype in args.dtype:
            for d in args.d:
                bad += sum(not r["ok"] for r in inspect_case(arch, dtype, d, args.out, args.n, args.m, args.variants))
    print(f"{'all kernels compile without spills and with tensor cores' if not bad else f'{bad} kernel(s) FAIL'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
