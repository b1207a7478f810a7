"""Launchers of the fused paradigm kernels: the Triton backend of ``paradigm_loss``.

``forward(x, c, paradigm, *, symmetric, row_scale, **options)`` has exactly the
contract of :func:`gradsurg.engine.torch_backend.forward`: it returns the
per-row loss ``(N,)`` in float32 and, when ``row_scale`` is given, the float32
gradients of ``sum_i row_scale_i L_i`` with respect to the raw ``x`` and ``c``.

CUDA tensors run the compiled kernels; CPU tensors run the same kernels under
Triton's interpreter (``TRITON_INTERPRET=1`` is set here before Triton is
imported, if nothing imported it earlier), which is how CPU CI tests them.

The per-row scalars GD_i and (GD R)_i are computed in fp32, in torch, from the
O(N) row statistics the first kernel returns, by the very component objects
of :mod:`gradsurg.components` (they only need the positive, the hardest
negative and log-sum-exps): the kernels specialise on the weight (the only
component that varies along a row) and on which statistics are needed.

Options (all keyword, all optional):
    allow_tf32:   fp32 inputs may use TF32 dot products (default False: IEEE).
    deterministic: accepted for API symmetry; the kernels never use atomics
                  and are always deterministic.
    block_n, block_m, block_k, block_d, num_warps, num_stages: tile sizes.
    acc_in_regs:  keep d-long accumulators in registers (default: d <= block_d).
    chunk_bytes:  ignored (the torch backend's option), so that callers may
                  switch backends without changing options.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from types import SimpleNamespace

import torch
from torch import Tensor

from gradsurg.components import dissipation as D
from gradsurg.components import ratio as R
from gradsurg.components import weight as W
from gradsurg.engine import torch_backend
from gradsurg.engine.normalize import EPS

__all__ = ["forward", "supports", "kernels"]

if importlib.util.find_spec("triton") is None:  # checked without importing Triton
    raise ImportError("gradsurg.kernels needs Triton (pip install triton)")

_DISSIPATIONS = (D.InfoNCE, D.ArcCon, D.Margin, D.EuclideanMargin, D.AngularMargin, D.Constant)
_RATIOS = (R.Constant, R.Arc, R.Euclidean, R.Angular)
_W_KIND = {W.Softmax: 0, W.Hardest: 1, W.Power: 2, W.Uniform: 3}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def supports(x: Tensor, paradigm) -> bool:
    """True when the kernels implement this dtype and these components exactly."""
    return (
        x.dtype in _DTYPES
        and type(paradigm.dissipation) in _DISSIPATIONS
        and type(paradigm.ratio) in _RATIOS
        and type(paradigm.weight) in _W_KIND
    )


# -- kernel objects: compiled for CUDA, interpreted for CPU ---------------------------------------

_CACHE: dict[bool, SimpleNamespace] = {}


def kernels(interpret: bool) -> SimpleNamespace:
    """The three kernels, wrapped for the compiler or for the interpreter (cached)."""
    if interpret not in _CACHE:
        if interpret and "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        from . import paradigm_kernels as K

        if _language_interpreted() != interpret:
            raise RuntimeError(
                "gradsurg.kernels: "
                + ("CPU tensors run the Triton kernels under the interpreter, but Triton was imported "
                   "without TRITON_INTERPRET=1; set TRITON_INTERPRET=1 before anything imports triton, "
                   "or use backend='torch'"
                   if interpret else
                   "CUDA tensors need compiled Triton kernels, but Triton was imported with "
                   "TRITON_INTERPRET=1 (interpreter mode); unset it before triton is imported")
            )

        if interpret:
            from triton.runtime.interpreter import InterpretedFunction as wrap
        else:
            from triton.runtime.jit import JITFunction as wrap
        _CACHE[interpret] = SimpleNamespace(
            row_pass=wrap(K._row_pass),
            row_finish=wrap(K._row_finish),
            col_pass=wrap(K._col_pass),
            N_STATS=K.N_STATS,
        )
    return _CACHE[interpret]


def _language_interpreted() -> bool:
    """Whether triton.language was imported in interpreter mode (decided once, at import)."""
    import triton.language.standard as std
    from triton.runtime.jit import JITFunction

    return not any(isinstance(v, JITFunction) for v in vars(std).values())


# -- the statistics of a direction, seen by the components as a "Rows" -------------------------------

class _RowStats:
    """Duck-types :class:`gradsurg.components.Rows` with O(N) statistics only.

    The components of the core vocabulary read ``pos``, ``hardest_value``,
    ``hardest_index``, ``lse(tau)``, ``n`` and ``s.dtype``/``s.device``; here
    they get the kernel's statistics instead of a chunk of ``s`` (``dtype`` and
    ``device`` are those of the statistics, float32).
    """

    def __init__(self, pos: Tensor, hmax: Tensor, hidx: Tensor, lses: dict, m: int):
        self.pos = pos
        self.hardest_value = hmax
        self.hardest_index = hidx
        self.hardest = (hmax, hidx)
        self.s = pos  # dtype and device only
        self.dtype = pos.dtype
        self.device = pos.device
        self.n = pos.shape[0]
        self.m = m
        self._lses = lses

    def lse(self, temperature: float) -> Tensor:
        return self._lses[temperature]


def _inv_norm(x: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
    return torch.where(norm >= EPS, 1.0 / norm.clamp(min=EPS), torch.zeros_like(norm))


def _config(x: Tensor, d: int, options: dict) -> dict:
    interpret = not x.is_cuda
    wide = x.dtype != torch.float32
    if interpret:
        cfg = dict(block_n=16, block_m=16, block_k=32, block_d=32, num_warps=1, num_stages=1)
    else:
        cfg = dict(block_n=64, block_m=64, block_k=64 if wide else 32, block_d=128,
                   num_warps=4, num_stages=3 if wide else 2)
    for key in list(cfg):
        if options.get(key) is not None:
            cfg[key] = int(options[key])
    acc_in_regs = options.get("acc_in_regs")
    if acc_in_regs is None:
        acc_in_regs = d <= cfg["block_d"]
    elif acc_in_regs:
        cfg["block_d"] = max(cfg["block_d"], _next_pow2(d))
    cfg["acc_in_regs"] = bool(acc_in_regs)
    cfg["interpret"] = interpret
    cfg["ieee"] = x.dtype == torch.float32 and not options.get("allow_tf32", False)
    cfg["scale_ops"] = x.dtype == torch.float16  # operands of the gradient products kept in range
    cfg["upcast"] = interpret  # the interpreter's tl.dot is wrong on bf16: compute its dots in fp32
    return cfg


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _direction(x, c, ix, ic, paradigm, row_scale, out_rows, out_cols, cfg):
    """One direction (rows x against candidates c): loss rows; gradients added into out_*."""
    k = kernels(cfg["interpret"])
    n, d = x.shape
    m = c.shape[0]
    dev = x.device
    dis, wgt = paradigm.dissipation, paradigm.weight
    w_kind = _W_KIND[type(wgt)]
    want = row_scale is not None
    surrogate = paradigm.loss_name is None

    tau_w = wgt.temperature if w_kind == 0 else 1.0
    need_lse_g = isinstance(dis, (D.InfoNCE, D.ArcCon)) and not (w_kind == 0 and dis.temperature == tau_w)
    tau_g = dis.temperature if need_lse_g else 1.0
    has_acc = want and w_kind != 1

    stats = torch.empty((k.N_STATS, n), dtype=torch.float32, device=dev)
    hidx = torch.zeros(n, dtype=torch.int32, device=dev)
    acc = torch.zeros((n, d), dtype=torch.float32, device=dev) if has_acc else stats
    bn, bm, bk, bd = cfg["block_n"], cfg["block_m"], cfg["block_k"], cfg["block_d"]
    launch = {} if cfg["interpret"] else dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    k.row_pass[(triton_cdiv(n, bn),)](
        x, c, ix, ic, acc, stats, hidx,
        n, m, d,
        x.stride(0), c.stride(0), acc.stride(0) if has_acc else 0,
        1.0 / tau_w, float(getattr(wgt, "p", 1.0)), 1.0 / tau_g,
        W_KIND=w_kind, NEED_LSE_G=need_lse_g, HAS_ACC=has_acc, ACC_IN_REGS=cfg["acc_in_regs"],
        IEEE=cfg["ieee"], UPCAST=cfg["upcast"], SCALE_OPS=cfg["scale_ops"],
        BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, BLOCK_D=bd, **launch,
    )
    pos, hmax, m_w, l_w, ws, m_g, l_g = stats.unbind(0)

    # -- per-row scalars in fp32, by the components themselves ------------------------------------
    lses = {}
    if w_kind == 0:
        lses[tau_w] = m_w + torch.log(l_w)
    if need_lse_g:
        lses[tau_g] = m_g + torch.log(l_g)
    rows = _RowStats(pos, hmax, hidx.long(), lses, m)
    gd = dis(rows)
    pull = paradigm.pull(rows, gd)
    mean_s = hmax if w_kind == 1 else ws / l_w  # sum_j W_ij s_ij
    if surrogate:
        loss = gd * mean_s - pull * pos
    else:
        loss = paradigm.row_loss(rows)
    if not want:
        return loss

    if isinstance(row_scale, Tensor):
        rs, out_scale = row_scale.to(torch.float32), 1.0
        a, pl = gd * rs, pull * rs
    else:
        rs, out_scale = float(row_scale), float(row_scale)
        a, pl = gd, pull
    # dU_i = a_i sum_j W_ij v_j - pl_i v_i ; radial rad_i = dU_i . u_i = a_i mean_s_i - pl_i s_ii
    # dx_i = ix_i (dU_i - rad_i u_i), all scaled by out_scale
    a_out, pl_out = a * out_scale, pl * out_scale
    rad = a_out * mean_s - pl_out * pos
    ca = ix * a_out / l_w if has_acc else ix
    cg = ix * a_out * ic[hidx.long()] if w_kind == 1 else ix
    cp = -ix * pl_out * ic[:n]
    cx = -rad * ix * ix
    fin_bn, fin_bd = (16, 32) if cfg["interpret"] else (32, 128)
    k.row_finish[(triton_cdiv(n, fin_bn), triton_cdiv(d, fin_bd))](
        out_rows, acc, x, c, ca, cg, cp, cx, hidx,
        n, d,
        out_rows.stride(0), acc.stride(0) if has_acc else 0, x.stride(0), c.stride(0),
        HAS_ACC=has_acc, HAS_GATHER=w_kind == 1,
        BLOCK_N=fin_bn, BLOCK_D=fin_bd, **({} if cfg["interpret"] else dict(num_warps=4)),
    )

    if w_kind == 0:
        wstat = lses[tau_w]
    elif w_kind == 2:
        wstat = 1.0 / l_w
    else:
        wstat = l_w  # unused
    k.col_pass[(triton_cdiv(m, bm),)](
        out_cols, x, c, ix, ic, a.contiguous(), pl.contiguous(), wstat.contiguous(), hidx,
        n, m, d,
        out_cols.stride(0), x.stride(0), c.stride(0),
        1.0 / tau_w, float(getattr(wgt, "p", 1.0)), 1.0 / (m - 1), out_scale,
        W_KIND=w_kind, ACC_IN_REGS=cfg["acc_in_regs"],
        IEEE=cfg["ieee"], UPCAST=cfg["upcast"], SCALE_OPS=cfg["scale_ops"],
        BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk, BLOCK_D=bd, **launch,
    )
    return loss


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def forward(
    x: Tensor,
    c: Tensor,
    paradigm,
    *,
    symmetric: bool,
    row_scale: float | Tensor | None,
    **options,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss rows ``(N,)`` and the gradients w.r.t. raw ``x`` (N x d) and ``c`` (M x d).

    Same contract as :func:`gradsurg.engine.torch_backend.forward`. Inputs the
    kernels do not cover (float64, components outside the core vocabulary)
    are handed to the torch backend.
    """
    if not supports(x, paradigm):
        kw = {k: v for k, v in options.items() if k == "chunk_bytes"}
        return torch_backend.forward(x, c, paradigm, symmetric=symmetric, row_scale=row_scale, **kw)
    x = x.contiguous()
    c = c.contiguous()
    n, d = x.shape
    cfg = _config(x, d, options)
    ix, ic = _inv_norm(x), _inv_norm(c)
    want = row_scale is not None
    dx = torch.zeros((n, d), dtype=torch.float32, device=x.device) if want else None
    dc = torch.zeros(c.shape, dtype=torch.float32, device=x.device) if want else None
    if symmetric:
        half = None if row_scale is None else row_scale * 0.5
        loss_f = _direction(x, c, ix, ic, paradigm, half, dx, dc, cfg)
        loss_r = _direction(c[:n], x, ic[:n], ix, paradigm, half, dc[:n] if want else None, dx, cfg)
        loss = 0.5 * (loss_f + loss_r)
    else:
        loss = _direction(x, c, ix, ic, paradigm, row_scale, dx, dc, cfg)
    return loss, dx, dc
