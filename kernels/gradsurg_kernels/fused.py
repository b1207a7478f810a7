"""Fused kernels for small d: every tile of ``s`` lives only in registers.

Used when a whole embedding row fits a register tile (``BLOCK_D = next_pow2(d)``,
d <= 128 at the default heuristics, see :mod:`gradsurg_kernels.launch`).
One direction of the loss (anchors x, candidates c, both raw, ``ix``/``ic``
their fp32 inverse norms) takes three kernels and four N x M x d products:

``rows``    FlashAttention-forward layout. A program owns ``BLOCK_N`` anchors
            (their x tile loaded once) and walks over the candidate tiles:
            ``s = x c^T`` (product 1), the row statistics
            (:func:`gradsurg_kernels.tiles.row_stats`) and, when the gradient
            is wanted, ``acc_i = sum_j exp(z_ij - m_i) (ic_j / ic_max) c_j``
            with online rescaling (product 2, the c tile reused as operand).
``finish``  elementwise: ``dU_i = CA_i acc_i + CG_i c_{hidx_i} + CP_i c_i``,
            ``dx_i = ix_i (dU_i - (dU_i . u_i) u_i)`` (the normalisation backward).
``cols``    FlashAttention-backward (dK/dV) layout. A program owns ``BLOCK_M``
            candidates (their c tile loaded once), recomputes ``s^T`` tile by
            tile (product 3), forms the weight tile from the saved row
            statistics and accumulates ``acc_j = sum_i q_i W^_ij x_i`` (product 4);
            the epilogue adds the positive's term and the normalisation backward.

The per-row factors (GD, GD*R, the row weights) are computed between the
kernels, in torch, by the components; the kernels see them only as fp32
vectors. Operands of the gradient products are weights in [0, 1] (rows
shifted by their maximum, columns scaled by ``ic_j / max ic`` or rows by
``q_i = f_i / max f``), so float16 never under- or overflows where it matters;
the global scales are applied in fp32 afterwards. Every output row belongs to
one program: no atomics, deterministic.
"""
import triton
import triton.language as tl

from .tiles import W_HARDEST, cosine, init_stats, mma, row_stats, weights

#: rows of the fp32 statistics written by the rows kernel (and by the chunk kernel)
N_STATS = 8
S_POS = tl.constexpr(0)   # s_ii
S_HMAX = tl.constexpr(1)  # max_{j != i} s_ij
S_MW = tl.constexpr(2)    # online maximum of the weight's log-domain values z
S_LW = tl.constexpr(3)    # sum_j exp(z_ij - m_w)
S_WS = tl.constexpr(4)    # sum_j exp(z_ij - m_w) s_ij
S_MG = tl.constexpr(5)    # the same maximum / sum at the dissipation's temperature
S_LG = tl.constexpr(6)
S_SP = tl.constexpr(7)    # sigmoid weight: sum_j softplus(t s_ij + b) (SigLIP's loss over the negatives)


@triton.jit
def store_stats(STATS, HIDX, rows, rmask, N, pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp):
    """Write the row statistics (rows of STATS, see ``S_*``) and the hardest index."""
    tl.store(STATS + S_POS * N + rows, pos, mask=rmask)
    tl.store(STATS + S_HMAX * N + rows, hmax, mask=rmask)
    tl.store(STATS + S_MW * N + rows, m_w, mask=rmask)
    tl.store(STATS + S_LW * N + rows, l_w, mask=rmask)
    tl.store(STATS + S_WS * N + rows, ws, mask=rmask)
    tl.store(STATS + S_MG * N + rows, m_g, mask=rmask)
    tl.store(STATS + S_LG * N + rows, l_g, mask=rmask)
    tl.store(STATS + S_SP * N + rows, sp, mask=rmask)
    tl.store(HIDX + rows, hidx, mask=rmask)


@triton.jit
def load_rows(PTR, INV, start, count, stride, offs_d, dmask, BLOCK: tl.constexpr):
    """Rows ``start .. start + BLOCK`` of a raw (count, D) matrix and their fp32 inverse norms:
    ``(index, mask, tile, inverse norms)``, 0 outside (the four tile loads of both kernels)."""
    idx = start + tl.arange(0, BLOCK)
    mask = idx < count
    tile = tl.load(PTR + idx.to(tl.int64)[:, None] * stride + offs_d[None, :],
                   mask=mask[:, None] & dmask[None, :], other=0.0)
    return idx, mask, tile, tl.load(INV + idx, mask=mask, other=0.0)


@triton.jit
def fused_rows(
    X, C, IX, IC, IC_MAX,       # raw anchors (N, D), raw candidates (M, D), fp32 inverse norms, max ic (1,)
    ACC, STATS, HIDX,           # out: fp32 (N, D) weighted candidates, fp32 (N_STATS, N), int32 (N,)
    N, M, D,
    stride_x, stride_c, stride_acc,
    inv_tau_w, bias_w, power_p, inv_tau_g,
    W_KIND: tl.constexpr, NEED_LSE_G: tl.constexpr, HAS_ACC: tl.constexpr,
    IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    rows, rmask, xb, ix = load_rows(X, IX, pid * BLOCK_N, N, stride_x, offs_d, dmask, BLOCK_N)
    if HAS_ACC:
        ic_scale = 1.0 / tl.load(IC_MAX)

    pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp = init_stats(BLOCK_N)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for start in range(0, M, BLOCK_M):
        cols, cmask, cb, ic = load_rows(C, IC, start, M, stride_c, offs_d, dmask, BLOCK_M)
        s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        s = cosine(mma(xb, tl.trans(cb), s, IEEE, UPCAST), ix, ic)
        pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp, alpha, p = row_stats(
            s, rows, cols, M, pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp,
            inv_tau_w, bias_w, power_p, inv_tau_g, W_KIND, NEED_LSE_G)
        if HAS_ACC and W_KIND != W_HARDEST:
            pw = (p * (ic * ic_scale)[None, :]).to(C.dtype.element_ty)
            acc = mma(pw, cb, acc * alpha[:, None], IEEE, UPCAST)

    store_stats(STATS, HIDX, rows, rmask, N, pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp)
    if HAS_ACC and W_KIND != W_HARDEST:
        tl.store(ACC + rows.to(tl.int64)[:, None] * stride_acc + offs_d[None, :], acc,
                 mask=rmask[:, None] & dmask[None, :])


@triton.jit
def fused_finish(
    DX, ACC, X, C, IX, IC,      # out fp32 (N, D); fp32 (N, D) from fused_rows; raw x, c; inverse norms
    CA, CG, CP, HIDX,           # fp32 (N,) coefficients, int32 (N,) hardest index
    N, D,
    stride_dx, stride_acc, stride_x, stride_c,
    HAS_ACC: tl.constexpr, HAS_GATHER: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``dU_i = CA_i acc_i + CG_i ic_h c_h + CP_i c_i`` (h = hidx_i), ``dx_i = ix_i (dU_i - (dU_i.u_i) u_i)``."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask = rmask[:, None] & (offs_d < D)[None, :]

    ix = tl.load(IX + rows, mask=rmask, other=0.0)
    cp = tl.load(CP + rows, mask=rmask, other=0.0)
    u = tl.load(X + rows64[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    u = u * ix[:, None]
    du = tl.load(C + rows64[:, None] * stride_c + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    du = du * cp[:, None]
    if HAS_ACC:
        ca = tl.load(CA + rows, mask=rmask, other=0.0)
        acc = tl.load(ACC + rows64[:, None] * stride_acc + offs_d[None, :], mask=mask, other=0.0)
        du += ca[:, None] * acc
    if HAS_GATHER:
        cg = tl.load(CG + rows, mask=rmask, other=0.0)
        hard = tl.load(HIDX + rows, mask=rmask, other=0)
        ch = tl.load(C + hard.to(tl.int64)[:, None] * stride_c + offs_d[None, :], mask=mask, other=0.0)
        du += (cg * tl.load(IC + hard, mask=rmask, other=0.0))[:, None] * ch.to(tl.float32)
    radial = tl.sum(du * u, axis=1)
    dx = (du - radial[:, None] * u) * ix[:, None]
    tl.store(DX + rows64[:, None] * stride_dx + offs_d[None, :], dx, mask=mask)


@triton.jit
def fused_cols(
    DC, X, C, IX, IC,           # out fp32 (M, D); raw x, c; fp32 inverse norms
    Q, KAPPA, SHIFT, HIDX,      # fp32 (N,) q_i = f_i / kappa, fp32 (1,) kappa, fp32 (N,) m_w, int32 (N,)
    PULL,                       # fp32 (N,) GD_i R_i (times the row weight)
    N, M, D,
    stride_dc, stride_x, stride_c,
    inv_tau_w, bias_w, power_p,
    W_KIND: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``acc_j = sum_i q_i exp(z_ij - m_i) x_i`` (raw x; ``q_i`` carries ``ix_i``, GD_i, the
    row weight and ``1/l_i``, divided by their maximum ``kappa``),
    ``dV_j = kappa acc_j - [j < N] PULL_j ix_j x_j`` and ``dc_j = ic_j (dV_j - (dV_j.v_j) v_j)``.
    """
    pid = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    cols, cmask, cb, ic = load_rows(C, IC, pid * BLOCK_M, M, stride_c, offs_d, dmask, BLOCK_M)
    cols64 = cols.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start in range(0, N, BLOCK_N):
        rows, rmask, xb, ix = load_rows(X, IX, start, N, stride_x, offs_d, dmask, BLOCK_N)
        st = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        st = cosine(mma(cb, tl.trans(xb), st, IEEE, UPCAST), ic, ix)      # s^T: [candidates, anchors]
        shift = tl.load(SHIFT + rows, mask=rmask, other=0.0)
        hidx = tl.load(HIDX + rows, mask=rmask, other=-1)
        q = tl.load(Q + rows, mask=rmask, other=0.0)
        wt = weights(st, rows[None, :], cols[:, None], M, shift[None, :], hidx[None, :],
                     inv_tau_w, bias_w, power_p, W_KIND)
        gt = (wt * q[None, :]).to(X.dtype.element_ty)
        acc = mma(gt, xb, acc, IEEE, UPCAST)

    # ---- epilogue: the positive's pull and the normalisation backward, fp32 ----
    kappa = tl.load(KAPPA)
    omask = cmask[:, None] & dmask[None, :]
    is_pos = cols < N
    pull = tl.load(PULL + cols, mask=is_pos, other=0.0) * tl.load(IX + cols, mask=is_pos, other=0.0)
    xp = tl.load(X + cols64[:, None] * stride_x + offs_d[None, :], mask=is_pos[:, None] & dmask[None, :], other=0.0)
    dv = acc * kappa - pull[:, None] * xp.to(tl.float32)
    v = tl.load(C + cols64[:, None] * stride_c + offs_d[None, :], mask=omask, other=0.0).to(tl.float32)
    v = v * ic[:, None]
    radial = tl.sum(dv * v, axis=1)
    dc = (dv - radial[:, None] * v) * ic[:, None]
    tl.store(DC + cols64[:, None] * stride_dc + offs_d[None, :], dc, mask=omask)
