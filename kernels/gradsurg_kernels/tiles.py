"""Tile helpers shared by every kernel of this package (``@triton.jit``, inlined).

One definition each of: the tile matrix product (:func:`mma`), the cosine tile
(:func:`cosine`), the weight's log-domain value (:func:`logits`, with SigLIP's
:func:`sigmoid_logs`), the online log-sum-exp (:func:`online_lse`), the empty
running statistics (:func:`init_stats`), the fold of one similarity tile into
them (:func:`row_stats`) and the weight tile formed from finished statistics
(:func:`weights`). The fused kernels and the chunk kernel
call the same helpers, so the statistics and the weights are written once.

Notation: ``s_ij`` is the cosine of anchor i and candidate j; the positive of
anchor i is candidate i; the negatives of anchor i are the candidates j != i.
Weight kinds (compile-time ``W_KIND``): softmax, hardest, power, uniform,
sigmoid. Every kind except hardest is an exponential of a log-domain value
``z_ij`` (``s/tau``, ``p log max(s, 1e-4)``, 0, ``log sigmoid(t s + b)``)
normalised over the negatives, so one online maximum keeps all of them
finite: power weights with a large ``p`` do not underflow (``max(s, 1e-4)^12``
is 1e-48, below float32's range; its log, -110, is not), nor do SigLIP's
sigmoids at a large scale (``sigmoid(-200)``; its log is -200). The sigmoid
kind also sums ``softplus(t s_ij + b)`` over the negatives, SigLIP's loss.
"""
import triton
import triton.language as tl

W_SOFTMAX = tl.constexpr(0)
W_HARDEST = tl.constexpr(1)
W_POWER = tl.constexpr(2)
W_UNIFORM = tl.constexpr(3)
W_SIGMOID = tl.constexpr(4)
#: floor of the similarity in power weights, ``max(s, POWER_FLOOR) ** p`` (as the components)
POWER_FLOOR = tl.constexpr(1e-4)


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """``acc + a @ b`` accumulated in float32 (tensor cores for 16-bit operands).

    ``IEEE``: float32 operands use exact float32 products instead of TF32.
    ``UPCAST``: the interpreter's 16-bit ``tl.dot`` is wrong, so there the
    (already rounded) operands are multiplied in float32.
    """
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def cosine(dots, inv_rows, inv_cols):
    """Cosines from raw dot products and the fp32 inverse norms of both sides."""
    return dots * inv_rows[:, None] * inv_cols[None, :]


@triton.jit
def log1p_exp_neg(a):
    """``log(1 + exp(-a))`` for ``a >= 0``, accurate where ``exp(-a)`` is below float32's
    epsilon (there ``log(1 + e)`` would round to 0): ``log1p(e) = log(u) e / (u - 1)``, u = 1 + e."""
    e = tl.exp(-a)
    u = 1.0 + e
    exact = u == 1.0
    return tl.where(exact, e, tl.log(u) * (e / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def sigmoid_logs(s, scale, bias):
    """``(log sigmoid(l), softplus(l))`` of the SigLIP logits ``l = t s + b``, both exact in
    float32 for any ``l`` (``softplus(l) = max(l, 0) + log1p(exp(-|l|))``)."""
    lin = s * scale + bias
    r = log1p_exp_neg(tl.abs(lin))
    return tl.minimum(lin, 0.0) - r, tl.maximum(lin, 0.0) + r


@triton.jit
def logits(s, inv_tau_w, bias_w, power_p, W_KIND: tl.constexpr):
    """The weight's log-domain value ``z``: ``W_ij = exp(z_ij) / sum_k exp(z_ik)`` (k != i).

    softmax ``s / tau`` (``inv_tau_w`` = 1/tau); power ``p log max(s, 1e-4)``;
    uniform 0; sigmoid ``log sigmoid(t s + b)`` (``inv_tau_w`` = t, ``bias_w`` = b).
    """
    if W_KIND == W_POWER:
        z = power_p * tl.log(tl.maximum(s, POWER_FLOOR))
    elif W_KIND == W_UNIFORM:
        z = tl.zeros_like(s)
    elif W_KIND == W_SIGMOID:
        z, _ = sigmoid_logs(s, inv_tau_w, bias_w)
    else:
        z = s * inv_tau_w
    return z


@triton.jit
def online_lse(m, l, z):
    """Fold a tile of log-domain values ``z`` (-inf = excluded) into a running
    maximum ``m`` and sum ``l = sum exp(z - m)``. Returns ``(m, l, alpha, p)``
    with ``alpha = exp(m_old - m_new)`` (the rescale of earlier terms) and the
    tile's terms ``p = exp(z - m_new)``; a row with no term yet keeps ``m = -inf``."""
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    p = tl.exp(z - m_safe[:, None])
    return m_new, l * alpha + tl.sum(p, axis=1), alpha, p


@triton.jit
def init_stats(BLOCK: tl.constexpr):
    """Empty running statistics for ``BLOCK`` anchors, in :func:`row_stats`'s order:
    ``pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp``."""
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    ninf = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    return zero, ninf, tl.zeros([BLOCK], dtype=tl.int32), ninf, zero, zero, ninf, zero, zero


@triton.jit
def row_stats(s, rows, cols, M, pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp,
              inv_tau_w, bias_w, power_p, inv_tau_g,
              W_KIND: tl.constexpr, NEED_LSE_G: tl.constexpr):
    """Fold one tile of ``s`` (anchors ``rows`` x candidates ``cols``) into the row statistics.

    Running statistics, one value per anchor: ``pos`` (s_ii), ``hmax``/``hidx``
    (hardest negative and its lowest index among ties; the index only for the
    hardest weight), ``m_w``/``l_w`` (online maximum and sum of ``exp(z - m_w)``
    over the negatives), ``ws`` (``sum_j exp(z_ij - m_w) s_ij``), ``m_g``/``l_g``
    (the same at the dissipation's temperature when it needs its own
    log-sum-exp), ``sp`` (sigmoid kind: ``sum_j softplus(t s_ij + b)``, SigLIP's
    loss over the negatives; 0 otherwise). Also returns ``alpha`` and the tile's weights ``p`` for a
    caller that accumulates ``sum_j p_ij c_j`` online.
    """
    neg = (cols < M)[None, :] & (rows[:, None] != cols[None, :])
    pos += tl.sum(tl.where(rows[:, None] == cols[None, :], s, 0.0), axis=1)
    sn = tl.where(neg, s, float("-inf"))
    tmax = tl.max(sn, axis=1)
    if W_KIND == W_HARDEST:
        tidx = tl.min(tl.where(sn == tmax[:, None], cols[None, :], M), axis=1)
        hidx = tl.where(tmax > hmax, tidx, hidx)
    hmax = tl.maximum(hmax, tmax)
    if NEED_LSE_G:
        m_g, l_g, alpha_g, p_g = online_lse(m_g, l_g, sn * inv_tau_g)
    if W_KIND == W_HARDEST:
        alpha = l_w
        p = s
    else:
        if W_KIND == W_SIGMOID:
            lsig, soft = sigmoid_logs(s, inv_tau_w, bias_w)
            sp += tl.sum(tl.where(neg, soft, 0.0), axis=1)
            z = tl.where(neg, lsig, float("-inf"))
        else:
            z = tl.where(neg, logits(s, inv_tau_w, bias_w, power_p, W_KIND), float("-inf"))
        m_w, l_w, alpha, p = online_lse(m_w, l_w, z)
        ws = ws * alpha + tl.sum(p * s, axis=1)
    return pos, hmax, hidx, m_w, l_w, ws, m_g, l_g, sp, alpha, p


@triton.jit
def weights(s, anchors, cands, M, shift, hidx, inv_tau_w, bias_w, power_p, W_KIND: tl.constexpr):
    """The weight tile from finished statistics: ``exp(z_ij - shift_i)`` on the
    negatives (hardest: 1 at the hardest index), 0 at the positive and outside.

    Orientation-free: ``anchors``, ``cands``, ``shift`` and ``hidx`` are 2-D
    and broadcast against ``s`` (a row-major or a transposed tile).
    """
    neg = (cands < M) & (anchors != cands)
    if W_KIND == W_HARDEST:
        w = tl.where(neg & (cands == hidx), 1.0, 0.0)
    else:
        # shift is the maximum over the negatives: z - shift <= 0 there (the clamp only keeps
        # the discarded positive's exp finite)
        w = tl.where(neg, tl.exp(tl.minimum(logits(s, inv_tau_w, bias_w, power_p, W_KIND) - shift, 0.0)), 0.0)
    return w
