"""Launchers of the kernels on plain tensors and scalars, and the choice of path and tiles.

Nothing here knows the paradigm: a weight kind is an int (:data:`W_KINDS`),
temperatures and powers are floats, per-row factors are fp32 tensors. The
glue in ``gradsurg.engine.triton_backend`` turns statistics into factors.

Two paths (:func:`choose_path`):

``fused``    16-bit inputs with ``d <= FUSED_MAX_D``: three Triton kernels, every
             similarity tile only in registers (:mod:`gradsurg_kernels.fused`).
``chunked``  everything else (large d, float32): cuBLAS GEMMs on row chunks
             (operands in the input dtype, fp32 accumulation, fp32 similarities)
             and one Triton kernel per chunk (:mod:`gradsurg_kernels.chunked`).

Every launch is first built as a :class:`Launch` (kernel, grid, arguments,
compile-time constants, warps, stages) by a ``plan_*`` function and then
run; :mod:`gradsurg_kernels.inspect` compiles the very same plans ahead of
time for a GPU that need not be present. The tiles below were chosen by
compiling for sm_80 and sm_90a and reading registers and spills with
``ptxas``/``cuobjdump`` (docs/kernels.md has the table); they are heuristics
per (arch, dtype, d), not autotuned at run time.

CPU tensors run the same plans under Triton's interpreter (``TRITON_INTERPRET=1``
before Triton is imported), with the 16-bit dot operands up-cast there.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from . import chunked as _chunked
from . import fused as _fused

__all__ = [
    "W_KINDS", "N_STATS", "FUSED_MAX_D", "Launch", "Tiles", "arch_of", "device_arch", "choose_path", "fused_tiles",
    "chunk_tiles", "plan_fused_rows", "plan_fused_finish", "plan_fused_cols", "plan_chunk_weights",
    "fused_rows", "fused_finish", "fused_cols", "chunk_weights", "mm_f32", "addmm_f32_", "interpreted",
]

#: weight kinds, as the kernels' ``W_KIND``
W_KINDS = {"softmax": 0, "hardest": 1, "power": 2, "uniform": 3, "sigmoid": 4}
#: rows of the fp32 statistics tensor (pos, hardest value, m_w, l_w, ws, m_g, l_g, softplus sum)
N_STATS = _fused.N_STATS
#: the fused path is taken for 16-bit inputs with d up to this, per tile family (its
#: accumulators span d; beyond it a fused kernel spills, measured with ptxas, docs/kernels.md)
FUSED_MAX_D = {90: 256, 80: 128}
_SIXTEEN = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreted() -> bool:
    """Whether this process runs the kernels under Triton's interpreter: ``triton.jit``
    decided so when these modules were imported (``TRITON_INTERPRET=1`` at that time)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fused.fused_rows, InterpretedFunction)


def arch_of(device: torch.device) -> int:
    """The tile family for a CUDA device: 90 (Hopper and later) or 80 (Ampere/Ada)."""
    major, minor = torch.cuda.get_device_capability(device)
    return 90 if major >= 9 else 80


def device_arch(t: Tensor) -> int:
    """The tile family for ``t``'s device (CPU tensors, run by the interpreter: 90)."""
    return arch_of(t.device) if t.is_cuda else 90


# -- choices ------------------------------------------------------------------------------------------

def choose_path(dtype: torch.dtype, d: int, arch: int = 90) -> tuple[str, str]:
    """``(path, reason)``: 'fused' or 'chunked' for inputs of ``dtype`` and size ``d`` on tile family ``arch``."""
    if dtype not in _DTYPES:
        raise ValueError(f"gradsurg_kernels: dtype must be one of float16, bfloat16, float32, got {dtype}")
    if dtype == torch.float32:
        return "chunked", ("float32: cuBLAS GEMMs in float32 (fused kernels would need FMA dot products, "
                           "which spill); TF32 only if torch's matmul precision allows it")
    limit = FUSED_MAX_D[90 if arch >= 90 else 80]
    if d <= limit:
        return "fused", f"16-bit and d = {d} <= {limit} on sm_{arch}: the d-long accumulators fit registers"
    return "chunked", (f"d = {d} > {limit} on sm_{arch}: a d-long accumulator per row would spill; "
                       "cuBLAS GEMMs on row chunks + one fused statistics/weights kernel per chunk")


@dataclass(frozen=True)
class Tiles:
    """Tile sizes, warps and pipeline stages of one kernel launch."""

    block_n: int = 64
    block_m: int = 64
    block_d: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def describe(self) -> str:
        return (f"BLOCK_N={self.block_n} BLOCK_M={self.block_m} BLOCK_D={self.block_d} "
                f"warps={self.num_warps} stages={self.num_stages}")


def _pow2(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


def fused_tiles(arch: int, dtype: torch.dtype, d: int) -> Tiles:
    """Tiles of the fused kernels: the largest spill-free ones for every weight kind and
    both log-sum-exp variants, measured with ptxas (docs/kernels.md)."""
    block_d = _pow2(d)
    if arch >= 90:
        # BLOCK_M = 64 is spill-free too up to d = 128 but sits at 251-255 registers with Triton 3.6
        # in the two-log-sum-exp variant; 32 keeps every variant <= ~210
        return Tiles(block_n=64, block_m=32, block_d=block_d, num_warps=8, num_stages=2)
    if block_d <= 64:
        return Tiles(block_n=64, block_m=32, block_d=block_d, num_warps=8, num_stages=2)
    # d <= 128 on sm_80: 64 x 64 (8 warps) spills in the two-log-sum-exp variant with Triton 3.6 and
    # 64 x 32 sits at 255 registers; 32 x 32 at 4 warps stays at <= 216
    return Tiles(block_n=32, block_m=32, block_d=block_d, num_warps=4, num_stages=2)


def finish_tiles(d: int) -> Tiles:
    block_d = _pow2(d)
    return Tiles(block_n=max(1, 4096 // block_d), block_m=1, block_d=block_d, num_warps=4, num_stages=1)


def chunk_tiles(arch: int, interpret: bool = False) -> Tiles:
    """Tiles of the chunk kernel: BLOCK_N rows per program streaming BLOCK_M columns.

    Memory-bound and independent of d. 8 x 128 at 4 warps (8 values per thread) is spill-free for
    every weight kind and dtype on sm_80 and sm_90a (8 x 256 spilled once in float32 on sm_90a);
    the interpreter takes few, large programs."""
    if interpret:
        return Tiles(block_n=32, block_m=128, block_d=0, num_warps=4, num_stages=2)
    return Tiles(block_n=8, block_m=128, block_d=0, num_warps=4, num_stages=2)


# -- launch plans ---------------------------------------------------------------------------------------

@dataclass
class Launch:
    """One kernel launch: what :mod:`gradsurg_kernels.inspect` compiles and what runs."""

    name: str
    kernel: object
    grid: tuple
    args: dict            # runtime arguments by name (tensors, ints, floats), in the kernel's order
    constexprs: dict      # compile-time constants by name
    tiles: Tiles
    interpret: bool = field(default=False)

    def __call__(self) -> None:
        extra = {} if self.interpret else dict(num_warps=self.tiles.num_warps, num_stages=self.tiles.num_stages)
        self.kernel[self.grid](**self.args, **self.constexprs, **extra)


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def plan_fused_rows(x, c, ix, ic, ic_max, acc, stats, hidx, *, w_kind, need_lse_g, has_acc,
                    inv_tau_w, power_p, inv_tau_g, tiles: Tiles, interpret: bool, bias_w=0.0) -> Launch:
    n, d = x.shape
    m = c.shape[0]
    args = dict(X=x, C=c, IX=ix, IC=ic, IC_MAX=ic_max, ACC=acc, STATS=stats, HIDX=hidx,
                N=n, M=m, D=d, stride_x=x.stride(0), stride_c=c.stride(0), stride_acc=acc.stride(0),
                inv_tau_w=float(inv_tau_w), bias_w=float(bias_w), power_p=float(power_p),
                inv_tau_g=float(inv_tau_g))
    const = dict(W_KIND=int(w_kind), NEED_LSE_G=bool(need_lse_g), HAS_ACC=bool(has_acc),
                 IEEE=x.dtype == torch.float32, UPCAST=interpret,
                 BLOCK_N=tiles.block_n, BLOCK_M=tiles.block_m, BLOCK_D=tiles.block_d)
    return Launch("fused_rows", _fused.fused_rows, (_cdiv(n, tiles.block_n),), args, const, tiles, interpret)


def plan_fused_finish(dx, acc, x, c, ix, ic, ca, cg, cp, hidx, *, has_acc, has_gather,
                      tiles: Tiles, interpret: bool) -> Launch:
    n, d = x.shape
    args = dict(DX=dx, ACC=acc, X=x, C=c, IX=ix, IC=ic, CA=ca, CG=cg, CP=cp, HIDX=hidx, N=n, D=d,
                stride_dx=dx.stride(0), stride_acc=acc.stride(0), stride_x=x.stride(0), stride_c=c.stride(0))
    const = dict(HAS_ACC=bool(has_acc), HAS_GATHER=bool(has_gather),
                 BLOCK_N=tiles.block_n, BLOCK_D=tiles.block_d)
    return Launch("fused_finish", _fused.fused_finish, (_cdiv(n, tiles.block_n),), args, const, tiles, interpret)


def plan_fused_cols(dc, x, c, ix, ic, q, kappa, shift, hidx, pull, *, w_kind, inv_tau_w, power_p,
                    tiles: Tiles, interpret: bool, bias_w=0.0, grid_cols: int | None = None) -> Launch:
    """``grid_cols``: only the programs covering the first ``grid_cols`` candidates run (the rest of
    ``dc`` is left as it is: the candidates that need no gradient, e.g. a detached queue)."""
    n, d = x.shape
    m = c.shape[0]
    args = dict(DC=dc, X=x, C=c, IX=ix, IC=ic, Q=q, KAPPA=kappa, SHIFT=shift, HIDX=hidx, PULL=pull,
                N=n, M=m, D=d, stride_dc=dc.stride(0), stride_x=x.stride(0), stride_c=c.stride(0),
                inv_tau_w=float(inv_tau_w), bias_w=float(bias_w), power_p=float(power_p))
    const = dict(W_KIND=int(w_kind), IEEE=x.dtype == torch.float32, UPCAST=interpret,
                 BLOCK_N=tiles.block_n, BLOCK_M=tiles.block_m, BLOCK_D=tiles.block_d)
    cols = m if grid_cols is None else max(0, min(m, int(grid_cols)))
    return Launch("fused_cols", _fused.fused_cols, (_cdiv(cols, tiles.block_m),), args, const, tiles, interpret)


def plan_chunk_weights(s, w, ix, ic, ic_max, stats, hidx, row0, *, w_kind, need_lse_g, write_w,
                       inv_tau_w, power_p, inv_tau_g, tiles: Tiles, interpret: bool, bias_w=0.0) -> Launch:
    r, m = s.shape
    args = dict(S=s, W_OUT=w, IX=ix, IC=ic, IC_MAX=ic_max, STATS=stats, HIDX=hidx, R=r, M=m, row0=int(row0),
                stride_s=s.stride(0), stride_w=w.stride(0),
                inv_tau_w=float(inv_tau_w), bias_w=float(bias_w), power_p=float(power_p),
                inv_tau_g=float(inv_tau_g))
    const = dict(W_KIND=int(w_kind), NEED_LSE_G=bool(need_lse_g), WRITE_W=bool(write_w),
                 BLOCK_R=tiles.block_n, BLOCK_M=tiles.block_m)
    return Launch("chunk_weights", _chunked.chunk_weights, (_cdiv(r, tiles.block_n),), args, const, tiles,
                  interpret)


# -- launchers -------------------------------------------------------------------------------------------

def _tiles_for(x: Tensor, d: int, override: dict | None) -> tuple[Tiles, bool]:
    interpret = not x.is_cuda
    tiles = fused_tiles(device_arch(x), x.dtype, d)
    if override:
        tiles = replace(tiles, **override)
    return tiles, interpret


def fused_rows(x, c, ix, ic, ic_max, *, w_kind, need_lse_g, want_acc, inv_tau_w, power_p, inv_tau_g,
               tiles: dict | None = None, bias_w: float = 0.0):
    """Row statistics ``(N_STATS, N)`` fp32, hardest index ``(N,)`` int32 and, when
    ``want_acc`` (and the weight is not 'hardest'), ``acc (N, d)`` fp32."""
    n, d = x.shape
    t, interpret = _tiles_for(x, d, tiles)
    stats = torch.empty((N_STATS, n), dtype=torch.float32, device=x.device)
    hidx = torch.zeros(n, dtype=torch.int32, device=x.device)
    has_acc = bool(want_acc) and w_kind != W_KINDS["hardest"]
    acc = torch.empty((n, d), dtype=torch.float32, device=x.device) if has_acc else stats
    plan_fused_rows(x, c, ix, ic, ic_max, acc, stats, hidx, w_kind=w_kind, need_lse_g=need_lse_g,
                    has_acc=has_acc, inv_tau_w=inv_tau_w, power_p=power_p, inv_tau_g=inv_tau_g,
                    tiles=t, interpret=interpret, bias_w=bias_w)()
    return stats, hidx, (acc if has_acc else None)


def fused_finish(x, c, ix, ic, acc, ca, cg, cp, hidx):
    """``dx`` (N, d) fp32 from the rows kernel's ``acc`` and fp32 per-row coefficients
    (``cg`` None unless the hardest negative is gathered; ``acc``/``ca`` None for hardest)."""
    n, d = x.shape
    dx = torch.empty((n, d), dtype=torch.float32, device=x.device)
    has_acc, has_gather = acc is not None, cg is not None
    plan_fused_finish(dx, acc if has_acc else dx, x, c, ix, ic, ca if has_acc else cp, cg if has_gather else cp,
                      cp, hidx, has_acc=has_acc, has_gather=has_gather, tiles=finish_tiles(d),
                      interpret=not x.is_cuda)()
    return dx


def fused_cols(x, c, ix, ic, q, kappa, shift, hidx, pull, *, w_kind, inv_tau_w, power_p,
               tiles: dict | None = None, bias_w: float = 0.0, grad_rows: int | None = None):
    """``dc`` (M, d) fp32 (see :func:`gradsurg_kernels.fused.fused_cols`); with ``grad_rows`` = r
    only the first r rows are computed, the rest are zero."""
    m, d = c.shape
    t, interpret = _tiles_for(x, d, tiles)
    partial = grad_rows is not None and grad_rows < m
    dc = (torch.zeros if partial else torch.empty)((m, d), dtype=torch.float32, device=x.device)
    if grad_rows is None or grad_rows > 0:
        plan_fused_cols(dc, x, c, ix, ic, q, kappa, shift, hidx, pull, w_kind=w_kind, inv_tau_w=inv_tau_w,
                        power_p=power_p, tiles=t, interpret=interpret, bias_w=bias_w, grid_cols=grad_rows)()
    if partial:  # the last program may have covered a few rows beyond r
        dc[max(0, grad_rows):] = 0
    return dc


def chunk_weights(s, operand_dtype, ix, ic, ic_max, row0, *, w_kind, need_lse_g, write_w,
                  inv_tau_w, power_p, inv_tau_g, tiles: dict | None = None, bias_w: float = 0.0):
    """Statistics of the rows ``row0 .. row0 + R`` from their raw products ``s`` (R, M) fp32,
    and (``write_w``) the weights ``W'`` (R, M) in ``operand_dtype``, written over ``s``.

    Returns ``(stats (N_STATS, R), hidx (R,), W' or None)``; ``W'`` is a view of
    ``s``'s storage (row stride ``M * 4 / itemsize``), valid until ``s`` is reused.
    """
    r, m = s.shape
    if not (s.dtype == torch.float32 and s.is_contiguous()):
        raise ValueError("chunk_weights: s must be a contiguous float32 (R, M) tensor")
    interpret = not s.is_cuda
    t = chunk_tiles(device_arch(s), interpret)
    if tiles:
        t = replace(t, **tiles)
    stats = torch.empty((N_STATS, r), dtype=torch.float32, device=s.device)
    hidx = torch.zeros(r, dtype=torch.int32, device=s.device)
    w = _in_place(s, operand_dtype) if write_w else s
    plan_chunk_weights(s, w, ix, ic, ic_max, stats, hidx, row0, w_kind=w_kind, need_lse_g=need_lse_g,
                       write_w=write_w, inv_tau_w=inv_tau_w, power_p=power_p, inv_tau_g=inv_tau_g,
                       tiles=t, interpret=interpret, bias_w=bias_w)()
    return stats, hidx, (w if write_w else None)


def _in_place(s: Tensor, dtype: torch.dtype) -> Tensor:
    """An (R, M) view of ``s``'s storage in ``dtype``: row i starts where s's row i starts."""
    if dtype == torch.float32:
        return s
    return s.view(dtype)[:, : s.shape[1]]


# -- GEMMs with float32 results (cuBLAS) -----------------------------------------------------------------

def _has_overload(op, name: str) -> bool:
    try:
        return name in op.overloads()
    except Exception:  # pragma: no cover - very old torch
        return False


_MM_DTYPE = _has_overload(torch.ops.aten.mm, "dtype")
_ADDMM_DTYPE: list[bool | None] = [None if _has_overload(torch.ops.aten.addmm, "dtype_out") else False]


def mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` in float32: 16-bit CUDA operands stay 16-bit (tensor cores, fp32 accumulation
    and output, ``torch.mm(..., out_dtype=float32)``); elsewhere the operands are up-cast
    (exactly) and multiplied in float32."""
    if a.is_cuda and a.dtype in _SIXTEEN and _MM_DTYPE:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a.float(), b.float())


def addmm_f32_(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a @ b`` with ``out`` float32 and 16-bit operands kept (cuBLAS with a float32 C)."""
    if out.is_cuda and a.dtype in _SIXTEEN:
        if _ADDMM_DTYPE[0] is not False:
            try:
                torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
                _ADDMM_DTYPE[0] = True
                return out
            except (RuntimeError, TypeError):  # this torch wants self in the operands' dtype
                if _ADDMM_DTYPE[0]:
                    raise
                _ADDMM_DTYPE[0] = False
        return out.add_(mm_f32(a, b))
    return out.addmm_(a.float(), b.float())
