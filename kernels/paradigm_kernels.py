"""Triton kernels of the paradigm gradient (see docs/kernels.md).

The functions below are plain Python functions written in the Triton
language; :mod:`gradsurg.kernels.launch` wraps them either with
``triton.jit`` (CUDA tensors) or with Triton's interpreter (CPU tensors,
``TRITON_INTERPRET=1``), so the same source serves both.

Notation (one direction of the loss): anchors ``x`` (N x d, raw), candidates
``c`` (M x d, raw), inverse norms ``ix = 1/|x_i|``, ``ic = 1/|c_j|`` (0 for a
row without direction), ``s_ij = (x_i . c_j) ix_i ic_j``. Row i's positive is
candidate i; the negatives are ``j != i``.

Three kernels, four matrix-product passes over N x M x d for forward+backward:

``_row_pass``  row-major, FlashAttention-forward style. One program owns
    BLOCK_N anchors and walks over all candidate tiles: ``s`` (GEMM 1), the
    row statistics (positive, hardest value and lowest-index argmax, online
    max / sum of ``exp(s/tau)`` for the weight and, if needed, for the
    dissipation at its own temperature, power sums, the weighted mean of s)
    and, for the gradient, ``acc_i = sum_{j!=i} w~_ij ic_j c_j`` with the
    unnormalised weights ``w~`` and online rescaling (GEMM 2).
``_row_finish``  elementwise epilogue, once the per-row GD and GD*R are known
    (formed in fp32 from the O(N) statistics by the components themselves):
    ``dx_i += CA_i acc_i + CG_i c_{j*_i} + CP_i c_i + CX_i x_i``, which is
    ``ix_i (dU_i - (dU_i . u_i) u_i)``, the normalisation backward folded in.
``_col_pass``  column-major. One program owns BLOCK_M candidates and walks
    over all anchor tiles: recomputes ``s`` (GEMM 3), forms
    ``G_ij = a_i W_ij - [j == i] pull_i`` in fp32 from the saved row
    statistics and accumulates ``sum_i G_ij ix_i x_i`` (GEMM 4) and the radial
    term ``sum_i G_ij s_ij``, then ``dc_j += ic_j (acc_j - rad_j ic_j c_j)``.

Every output row is owned by exactly one program: no atomics, deterministic.
No N x M buffer exists anywhere; the extra memory is O((N + M) d).

Weight kinds (compile-time ``W_KIND``): 0 softmax, 1 hardest, 2 power,
3 uniform. Accumulators that hold a d-row (``acc``) live in registers when
``d <= BLOCK_D`` (``ACC_IN_REGS``); otherwise they are read-modified-written
chunk by chunk in an fp32 buffer owned by the program (L2 resident).
"""
import triton.language as tl

W_SOFTMAX = 0
W_HARDEST = 1
W_POWER = 2
W_UNIFORM = 3

#: number of fp32 row statistics written by ``_row_pass`` (rows of STATS)
N_STATS = 7
S_POS = tl.constexpr(0)   # s_ii
S_HMAX = tl.constexpr(1)  # max_{j!=i} s_ij
S_MW = tl.constexpr(2)    # running max of s/tau_w over the negatives (softmax weight)
S_LW = tl.constexpr(3)    # sum of the unnormalised weights w~ (at that max)
S_WS = tl.constexpr(4)    # sum of w~ s (same scale as S_LW)
S_MG = tl.constexpr(5)    # max of s/tau_g (the dissipation's own temperature)
S_LG = tl.constexpr(6)    # sum of exp(s/tau_g - max)


def _row_pass(
    X, C, IX, IC,          # raw anchors (N, d), raw candidates (M, d), fp32 inverse norms
    ACC,                   # fp32 (N, d) workspace: sum_j w~_ij ic_j c_j (only when HAS_ACC)
    STATS,                 # fp32 (N_STATS, N) row statistics
    HIDX,                  # int32 (N,) index of the hardest negative (lowest on ties)
    N, M, D,
    stride_x, stride_c, stride_acc,
    inv_tau_w, power_p, inv_tau_g,
    W_KIND: tl.constexpr,
    NEED_LSE_G: tl.constexpr,   # the dissipation needs LSE at its own temperature
    HAS_ACC: tl.constexpr,      # accumulate the weighted candidates (gradient wanted)
    ACC_IN_REGS: tl.constexpr,  # d <= BLOCK_D: keep acc in registers
    IEEE: tl.constexpr,         # fp32 operands: IEEE dot products (no TF32)
    UPCAST: tl.constexpr,       # interpreter: dot operands in fp32 (bf16 dot is broken there)
    SCALE_OPS: tl.constexpr,    # fp16: scale gradient operands per output row (range of fp16)
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = offs_n < N
    rows64 = offs_n.to(tl.int64)
    ix = tl.load(IX + offs_n, mask=rmask, other=0.0)

    neg_inf = float("-inf")
    pos = tl.zeros([BLOCK_N], dtype=tl.float32)
    hmax = tl.full([BLOCK_N], neg_inf, dtype=tl.float32)
    hidx = tl.zeros([BLOCK_N], dtype=tl.int32)
    m_w = tl.full([BLOCK_N], neg_inf, dtype=tl.float32)   # running max of s/tau_w (softmax)
    l_w = tl.zeros([BLOCK_N], dtype=tl.float32)           # sum of w~ (the normaliser)
    ws = tl.zeros([BLOCK_N], dtype=tl.float32)            # sum of w~ s
    m_g = tl.full([BLOCK_N], neg_inf, dtype=tl.float32)   # same at the dissipation's temperature
    l_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    offs_dr = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for start_m in range(0, M, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        cmask = offs_m < M
        cols64 = offs_m.to(tl.int64)
        # ---- s = u v^T for this tile (GEMM 1), normalisation folded in ----
        s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k in range(0, D, BLOCK_K):
            offs_k = k + tl.arange(0, BLOCK_K)
            kmask = offs_k < D
            a = tl.load(X + rows64[:, None] * stride_x + offs_k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(C + cols64[:, None] * stride_c + offs_k[None, :],
                        mask=cmask[:, None] & kmask[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                s = tl.dot(a, tl.trans(b), s, input_precision="ieee")
            else:
                s = tl.dot(a, tl.trans(b), s)
        ic = tl.load(IC + offs_m, mask=cmask, other=0.0)
        s = s * ix[:, None] * ic[None, :]

        diag = offs_n[:, None] == offs_m[None, :]
        neg = cmask[None, :] & (offs_n[:, None] != offs_m[None, :])
        pos += tl.sum(tl.where(diag, s, 0.0), axis=1)
        sn = tl.where(neg, s, neg_inf)

        # ---- hardest negative: value, and the lowest index among ties ----
        tmax = tl.max(sn, axis=1)
        if W_KIND == 1:
            cand = tl.where(sn == tmax[:, None], offs_m[None, :], M)
            tidx = tl.min(cand, axis=1)
            hidx = tl.where(tmax > hmax, tidx, hidx)
        hmax = tl.maximum(hmax, tmax)

        # ---- the dissipation's log-sum-exp at its own temperature ----
        if NEED_LSE_G:
            zg = sn * inv_tau_g
            mg_new = tl.maximum(m_g, tl.max(zg, axis=1))
            mg_safe = tl.where(mg_new == neg_inf, 0.0, mg_new)
            l_g = l_g * tl.exp(m_g - mg_safe) + tl.sum(tl.exp(zg - mg_safe[:, None]), axis=1)
            m_g = mg_new

        # ---- the weight's unnormalised values w~ (0 off the negatives) ----
        if W_KIND != 1:
            if W_KIND == 0:
                z = sn * inv_tau_w
                mw_new = tl.maximum(m_w, tl.max(z, axis=1))
                mw_safe = tl.where(mw_new == neg_inf, 0.0, mw_new)
                alpha = tl.exp(m_w - mw_safe)
                p = tl.exp(z - mw_safe[:, None])
                m_w = mw_new
            elif W_KIND == 2:
                alpha = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
                p = tl.where(neg, tl.exp(power_p * tl.log(tl.maximum(s, 1e-4))), 0.0)
            else:
                alpha = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
                p = tl.where(neg, 1.0, 0.0)
            l_w = l_w * alpha + tl.sum(p, axis=1)
            ws = ws * alpha + tl.sum(p * s, axis=1)

            # ---- acc_i = acc_i * alpha + sum_j w~_ij ic_j c_j (GEMM 2) ----
            if HAS_ACC:
                pc = p * ic[None, :]
                if SCALE_OPS:  # fp16: each row of the operand scaled to max 1, undone on the product
                    big = tl.max(pc, axis=1)
                    big = tl.where(big > 0, big, 1.0)
                    pc = pc / big[:, None]
                if ACC_IN_REGS:
                    b = tl.load(C + cols64[:, None] * stride_c + offs_dr[None, :],
                                mask=cmask[:, None] & (offs_dr < D)[None, :], other=0.0)
                    pcb = pc.to(C.dtype.element_ty)  # the operand dtype: rounding as on the GPU
                    if UPCAST:
                        b = b.to(tl.float32)
                        pcb = pcb.to(tl.float32)
                    acc = acc * alpha[:, None]
                    if SCALE_OPS:
                        acc += tl.dot(pcb, b) * big[:, None]
                    elif IEEE:
                        acc = tl.dot(pcb, b, acc, input_precision="ieee")
                    else:
                        acc = tl.dot(pcb, b, acc)
                else:
                    for d0 in range(0, D, BLOCK_D):
                        offs_d = d0 + offs_dr
                        dmask = offs_d < D
                        b = tl.load(C + cols64[:, None] * stride_c + offs_d[None, :],
                                    mask=cmask[:, None] & dmask[None, :], other=0.0)
                        pcb = pc.to(C.dtype.element_ty)
                        if UPCAST:
                            b = b.to(tl.float32)
                            pcb = pcb.to(tl.float32)
                        ptrs = ACC + rows64[:, None] * stride_acc + offs_d[None, :]
                        amask = rmask[:, None] & dmask[None, :]
                        part = tl.load(ptrs, mask=amask, other=0.0) * alpha[:, None]
                        if SCALE_OPS:
                            part += tl.dot(pcb, b) * big[:, None]
                        elif IEEE:
                            part = tl.dot(pcb, b, part, input_precision="ieee")
                        else:
                            part = tl.dot(pcb, b, part)
                        tl.store(ptrs, part, mask=amask)

    tl.store(STATS + S_POS * N + offs_n, pos, mask=rmask)
    tl.store(STATS + S_HMAX * N + offs_n, hmax, mask=rmask)
    tl.store(STATS + S_MW * N + offs_n, m_w, mask=rmask)
    tl.store(STATS + S_LW * N + offs_n, l_w, mask=rmask)
    tl.store(STATS + S_WS * N + offs_n, ws, mask=rmask)
    tl.store(STATS + S_MG * N + offs_n, m_g, mask=rmask)
    tl.store(STATS + S_LG * N + offs_n, l_g, mask=rmask)
    tl.store(HIDX + offs_n, hidx, mask=rmask)
    if HAS_ACC and ACC_IN_REGS and W_KIND != 1:
        ptrs = ACC + rows64[:, None] * stride_acc + offs_dr[None, :]
        tl.store(ptrs, acc, mask=rmask[:, None] & (offs_dr < D)[None, :])


def _row_finish(
    OUT,                   # fp32 (N, d): dx_i += ...
    ACC, X, C,             # workspace of _row_pass, raw anchors, raw candidates
    CA, CG, CP, CX,        # fp32 (N,) coefficients
    HIDX,
    N, D,
    stride_out, stride_acc, stride_x, stride_c,
    HAS_ACC: tl.constexpr, HAS_GATHER: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``out_i += CA_i acc_i + CG_i c_{hidx_i} + CP_i c_i + CX_i x_i`` (fp32)."""
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = offs_n < N
    mask = rmask[:, None] & (offs_d < D)[None, :]
    rows64 = offs_n.to(tl.int64)

    cx = tl.load(CX + offs_n, mask=rmask, other=0.0)
    cp = tl.load(CP + offs_n, mask=rmask, other=0.0)
    x = tl.load(X + rows64[:, None] * stride_x + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    cpos = tl.load(C + rows64[:, None] * stride_c + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    out_ptrs = OUT + rows64[:, None] * stride_out + offs_d[None, :]
    out = tl.load(out_ptrs, mask=mask, other=0.0)
    out += cx[:, None] * x + cp[:, None] * cpos
    if HAS_ACC:
        ca = tl.load(CA + offs_n, mask=rmask, other=0.0)
        acc = tl.load(ACC + rows64[:, None] * stride_acc + offs_d[None, :], mask=mask, other=0.0)
        out += ca[:, None] * acc
    if HAS_GATHER:
        cg = tl.load(CG + offs_n, mask=rmask, other=0.0)
        idx = tl.load(HIDX + offs_n, mask=rmask, other=0).to(tl.int64)
        hard = tl.load(C + idx[:, None] * stride_c + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        out += cg[:, None] * hard
    tl.store(out_ptrs, out, mask=mask)


def _col_pass(
    OUT,                   # fp32 (M, d): dc_j += out_scale * ic_j (acc_j - rad_j ic_j c_j)
    X, C, IX, IC,
    A, PULL,               # fp32 (N,): a_i = GD_i * rs_i, pull_i = (GD R)_i * rs_i
    WSTAT,                 # fp32 (N,): softmax LSE_w (of s/tau), power 1/sum, else unused
    HIDX,                  # int32 (N,): hardest index (W_KIND == 1)
    N, M, D,
    stride_out, stride_x, stride_c,
    inv_tau_w, power_p, uniform_w, out_scale,
    W_KIND: tl.constexpr,
    ACC_IN_REGS: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    SCALE_OPS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = offs_m < M
    cols64 = offs_m.to(tl.int64)
    ic = tl.load(IC + offs_m, mask=cmask, other=0.0)
    offs_dr = tl.arange(0, BLOCK_D)
    rad = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        rmask = offs_n < N
        rows64 = offs_n.to(tl.int64)
        # ---- recompute s for this tile (GEMM 3) ----
        s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k in range(0, D, BLOCK_K):
            offs_k = k + tl.arange(0, BLOCK_K)
            kmask = offs_k < D
            a = tl.load(X + rows64[:, None] * stride_x + offs_k[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(C + cols64[:, None] * stride_c + offs_k[None, :],
                        mask=cmask[:, None] & kmask[None, :], other=0.0)
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                s = tl.dot(a, tl.trans(b), s, input_precision="ieee")
            else:
                s = tl.dot(a, tl.trans(b), s)
        ix = tl.load(IX + offs_n, mask=rmask, other=0.0)
        s = s * ix[:, None] * ic[None, :]

        # ---- G = a_i W_ij - [j == i] pull_i, in fp32 ----
        coef = tl.load(A + offs_n, mask=rmask, other=0.0)
        pull = tl.load(PULL + offs_n, mask=rmask, other=0.0)
        diag = offs_n[:, None] == offs_m[None, :]
        neg = (rmask[:, None] & cmask[None, :]) & (offs_n[:, None] != offs_m[None, :])
        if W_KIND == 0:
            lse = tl.load(WSTAT + offs_n, mask=rmask, other=0.0)
            w = tl.where(neg, tl.exp(s * inv_tau_w - lse[:, None]), 0.0)
        elif W_KIND == 1:
            hidx = tl.load(HIDX + offs_n, mask=rmask, other=-1)
            w = tl.where(neg & (offs_m[None, :] == hidx[:, None]), 1.0, 0.0)
        elif W_KIND == 2:
            inv_sum = tl.load(WSTAT + offs_n, mask=rmask, other=0.0)
            w = tl.where(neg, tl.exp(power_p * tl.log(tl.maximum(s, 1e-4))) * inv_sum[:, None], 0.0)
        else:
            w = tl.where(neg, uniform_w, 0.0)
        g = coef[:, None] * w - tl.where(diag, pull[:, None], 0.0)
        rad += tl.sum(g * s, axis=0)
        gx = g * ix[:, None]
        if SCALE_OPS:  # fp16: each column of the operand scaled to max 1, undone on the product
            big = tl.max(tl.abs(gx), axis=0)
            big = tl.where(big > 0, big, 1.0)
            gx = gx / big[None, :]

        # ---- acc_j += sum_i G_ij ix_i x_i (GEMM 4) ----
        if ACC_IN_REGS:
            xa = tl.load(X + rows64[:, None] * stride_x + offs_dr[None, :],
                         mask=rmask[:, None] & (offs_dr < D)[None, :], other=0.0)
            gt = tl.trans(gx.to(X.dtype.element_ty))
            if UPCAST:
                xa = xa.to(tl.float32)
                gt = gt.to(tl.float32)
            if SCALE_OPS:
                acc += tl.dot(gt, xa) * big[:, None]
            elif IEEE:
                acc = tl.dot(gt, xa, acc, input_precision="ieee")
            else:
                acc = tl.dot(gt, xa, acc)
        else:
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + offs_dr
                dmask = offs_d < D
                xa = tl.load(X + rows64[:, None] * stride_x + offs_d[None, :],
                             mask=rmask[:, None] & dmask[None, :], other=0.0)
                gt = tl.trans(gx.to(X.dtype.element_ty))
                if UPCAST:
                    xa = xa.to(tl.float32)
                    gt = gt.to(tl.float32)
                if IEEE:
                    part = tl.dot(gt, xa, input_precision="ieee")
                else:
                    part = tl.dot(gt, xa)
                if SCALE_OPS:
                    part = part * big[:, None]
                ptrs = OUT + cols64[:, None] * stride_out + offs_d[None, :]
                omask = cmask[:, None] & dmask[None, :]
                prev = tl.load(ptrs, mask=omask, other=0.0)
                tl.store(ptrs, prev + part * (ic * out_scale)[:, None], mask=omask)

    # ---- epilogue: the normalisation backward, -rad_j ic_j^2 c_j ----
    radial = rad * ic * ic * out_scale
    if ACC_IN_REGS:
        omask = cmask[:, None] & (offs_dr < D)[None, :]
        ptrs = OUT + cols64[:, None] * stride_out + offs_dr[None, :]
        cc = tl.load(C + cols64[:, None] * stride_c + offs_dr[None, :], mask=omask, other=0.0).to(tl.float32)
        prev = tl.load(ptrs, mask=omask, other=0.0)
        tl.store(ptrs, prev + acc * (ic * out_scale)[:, None] - radial[:, None] * cc, mask=omask)
    else:
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + offs_dr
            omask = cmask[:, None] & (offs_d < D)[None, :]
            ptrs = OUT + cols64[:, None] * stride_out + offs_d[None, :]
            cc = tl.load(C + cols64[:, None] * stride_c + offs_d[None, :], mask=omask, other=0.0).to(tl.float32)
            prev = tl.load(ptrs, mask=omask, other=0.0)
            tl.store(ptrs, prev - radial[:, None] * cc, mask=omask)
