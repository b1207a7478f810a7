"""The kernel of the large-d path: statistics and weights of a chunk of rows of ``s``.

For large d a d-long accumulator per row does not fit registers, so the
products run as cuBLAS GEMMs on a chunk of anchor rows (operands in the input
dtype, fp32 accumulation): ``S = x_chunk c^T`` in fp32, then this kernel, then
``x_chunk``'s and ``c``'s gradient GEMMs with the weights it wrote. One program
owns ``BLOCK_R`` rows of the chunk and reads them twice:

1. the row statistics (:func:`gradsurg_kernels.tiles.row_stats`, the same
   helper as the fused kernels) from the cosines ``S_ij ix_i ic_j``;
2. (``WRITE_W``) the weights ``W'_ij = exp(z_ij - m_i) ic_j / max(ic)`` in the
   operand dtype (hardest: ``ic_j / max(ic)`` at the hardest index), 0 at the
   positive: values in [0, 1] whose row maximum is the row's largest weight, so
   float16 keeps them. ``W'`` may overwrite ``S`` in place (same rows, a tile
   is read before it is written and a written tile is never read again).

The per-row factors GD_i / l_i and GD_i R_i are applied by the caller outside
the GEMMs (fp32): ``G = diag(GD / l) W^ - diag(GD R)`` is never rounded as a
whole, so ``W_ii - R_i`` is formed exactly.
"""
import triton
import triton.language as tl

from .fused import store_stats
from .tiles import init_stats, row_stats, weights


@triton.jit
def chunk_weights(
    S, W_OUT,                   # fp32 (R, M) raw products x_chunk c^T; out (R, M) in the operand dtype
    IX, IC, IC_MAX,             # fp32 inverse norms of the chunk's rows (R,) and of c (M,), max ic (1,)
    STATS, HIDX,                # out: fp32 (N_STATS, R), int32 (R,)
    R, M, row0,                 # rows in the chunk, candidates, global index of the chunk's first row
    stride_s, stride_w,
    inv_tau_w, bias_w, power_p, inv_tau_g,
    W_KIND: tl.constexpr, NEED_LSE_G: tl.constexpr, WRITE_W: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    local = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = local < R
    rows = row0 + local         # global anchor index: the positive's column
    srow = S + local.to(tl.int64)[:, None] * stride_s
    ix = tl.load(IX + local, mask=rmask, other=0.0)

    pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp = init_stats(BLOCK_R)
    for start in range(0, M, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        cmask = cols < M
        ic = tl.load(IC + cols, mask=cmask, other=0.0)
        s = tl.load(srow + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        s = s * ix[:, None] * ic[None, :]
        pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp, alpha, p = row_stats(
            s, rows, cols, M, pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp,
            inv_tau_w, bias_w, power_p, inv_tau_g, W_KIND, NEED_LSE_G)
    store_stats(STATS, HIDX, local, rmask, R, pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp)

    if WRITE_W:
        ic_scale = 1.0 / tl.load(IC_MAX)
        wrow = W_OUT + local.to(tl.int64)[:, None] * stride_w
        for start in range(0, M, BLOCK_M):
            cols = start + tl.arange(0, BLOCK_M)
            cmask = cols < M
            ic = tl.load(IC + cols, mask=cmask, other=0.0)
            mask = rmask[:, None] & cmask[None, :]
            s = tl.load(srow + cols[None, :], mask=mask, other=0.0)
            s = s * ix[:, None] * ic[None, :]
            w = weights(s, rows[:, None], cols[None, :], M, m_w[:, None], hidx[:, None],
                        inv_tau_w, bias_w, power_p, W_KIND)
            w = w * (ic * ic_scale)[None, :]
            tl.store(wrow + cols[None, :], w.to(W_OUT.dtype.element_ty), mask=mask)
