"""The chunked torch backend (the protocol of :mod:`gradsurg.engine.dispatch`).

For a chunk of anchor rows it computes ``s = u_chunk v^T`` (one product), the
chunk's row statistics, ``G = GD (W - [j==i] R) * row_weights`` in place, then
``dU_chunk = G v`` and ``dV += G^T u_chunk`` (two products). The whole N x M
matrix is never held; the chunk size follows a memory budget.

Precision: the normalisation, the statistics, G and the results are float32
(float64 for float64 inputs). The products take their operands in the input
dtype on CUDA (float16/bfloat16 GEMMs with float32 accumulation and output;
for float16, G is scaled per row / per column into float16's range first);
on CPU they run on float32 copies (CPU half-precision GEMMs are neither faster
nor exact).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..components._rows import Rows, product
from ..paradigm import Paradigm
from ..vocabulary import HALF_DTYPES, compute_dtype
from .normalize import normalize, normalize_backward
from .validation import check_backend_options, check_engine_options

#: default bytes for one chunk's N x M work buffers
DEFAULT_CHUNK_BYTES = 128 * 2**20
#: how many (rows x M) buffers of the statistics dtype a chunk may hold at once
_BUFFERS_PER_CHUNK = 3
NAME = "torch"
#: floor of the per-row / per-column scales of G before a float16 cast
_TINY = 1e-30
#: the options :func:`direction` accepts
OPTIONS = ("chunk_bytes", "normalize")
#: options only the front door passes (through the operator): the learnable hyper-parameters whose
#: gradient is wanted, how many leading candidates need a gradient, and the name errors start with
INTERNAL_OPTIONS = ("hyper_grad", "grad_rows", "caller")


def gemm_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the products' operands: the input's on CUDA, the compute dtype elsewhere."""
    if x.is_cuda and x.dtype in HALF_DTYPES:
        return x.dtype
    return compute_dtype(x.dtype)


def chunk_rows(n: int, m: int, dtype: torch.dtype, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that the chunk's work buffers fit ``chunk_bytes``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, min(n, chunk_bytes // (m * itemsize * _BUFFERS_PER_CHUNK)))


def supports(x: Tensor, paradigm: Paradigm, d: int | None = None) -> str | None:
    """Every device, floating dtype and paradigm: always None."""
    return None


def direction(
    x: Tensor,
    c: Tensor,
    paradigm: Paradigm,
    row_weights: float | Tensor | None,
    **options,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One direction: raw anchors ``x`` (N x d) against raw candidates ``c`` (M x d).

    Row i's positive is candidate i. Returns the per-anchor loss ``(N,)`` and,
    when ``row_weights`` is given (a float, or an ``(N,)`` tensor), the
    gradients of ``sum_i row_weights_i L_i`` with respect to the raw ``x`` and
    ``c``; all in the compute dtype. With the internal option ``hyper_grad``
    (names of learnable hyper-parameters, :meth:`Paradigm.hyper_grad`) a fourth
    result is their gradient (k,), from the row statistics and ``<u_i, dU_i> =
    sum_j G_ij s_ij`` (no extra product); ``caller``: the name its option errors start with (the
    function the user called; default ``paradigm_loss``). With ``grad_rows`` = r only the first
    r candidates get a gradient (``dV`` is zero beyond): candidates that need
    none (a queue of detached negatives) cost one product, not two. With the
    option ``normalize=False`` the rows are not normalised: ``s_ij = x_i . c_j``
    (open_clip's logits take the features as given); the softmax statistics then
    shift by each row's true maximum (``s <= 1`` no longer holds).
    """
    hyper = tuple(options.pop("hyper_grad", ()))
    grad_rows = options.pop("grad_rows", None)
    where = options.pop("caller", "paradigm_loss")
    check_backend_options(options, OPTIONS, NAME, where)
    chunk_bytes = options.get("chunk_bytes", DEFAULT_CHUNK_BYTES)
    unit = options.get("normalize", True)
    check_engine_options(chunk_bytes, unit, where)
    cd, gd = compute_dtype(x.dtype), gemm_dtype(x)
    u32, inv_x = normalize(x.to(cd)) if unit else (x.to(cd), None)
    v32, inv_c = normalize(c.to(cd)) if unit else (c.to(cd), None)
    u, v = u32.to(gd), v32.to(gd)
    n, m = u.shape[0], v.shape[0]
    want_grad = row_weights is not None
    if isinstance(row_weights, Tensor):
        row_weights = row_weights.to(cd)
    loss = torch.empty(n, dtype=cd, device=x.device)
    du = torch.empty_like(u32) if want_grad else None
    dv = torch.zeros_like(v32) if want_grad else None
    r = m if grad_rows is None else max(0, min(m, int(grad_rows)))
    dvr = None if dv is None else dv[:r]  # the candidates that need a gradient (a view)
    dh = torch.zeros(len(hyper), dtype=cd, device=x.device) if want_grad and hyper else None
    step = chunk_rows(n, m, cd, chunk_bytes)
    temperature = paradigm.shared_temperature if unit else None  # shifted logits need s <= 1
    for start in range(0, n, step):
        stop = min(n, start + step)
        uc = u[start:stop]
        rows = Rows.from_product(uc, v, start, temperature)
        scale = row_weights[start:stop] if isinstance(row_weights, Tensor) else row_weights
        loss[start:stop], g = paradigm.gradient(rows, scale)
        if g is None:
            continue
        gsum = g.sum(dim=1) if "bias" in hyper else None
        if gd == cd:  # in place: no temporaries
            torch.mm(g, v, out=du[start:stop])
            if r:
                dvr.addmm_(g[:, :r].T, uc)
        elif gd == torch.bfloat16:  # bfloat16 operands (float32's range), float32 accumulation and results
            g = g.to(gd)
            du[start:stop] = product(g, v)
            if r:
                dvr += product(g[:, :r].T, uc)
        else:  # float16 operands: G scaled per row (for dU) and per column (for dV) into range
            row = g.abs().amax(dim=1, keepdim=True).clamp_(min=_TINY)
            du[start:stop] = product((g / row).to(gd), v).mul_(row)
            if r:
                gr = g[:, :r]
                col = gr.abs().amax(dim=0, keepdim=True).clamp_(min=_TINY)
                dvr += product((gr / col).to(gd).T, uc).mul_(col.T)
        if dh is not None:  # sum_j G_ij s_ij = <u_i, dU_i>: the hyper-parameters' gradient from the rows
            rowdot = torch.linalg.vecdot(u32[start:stop], du[start:stop], dim=1)
            dh += paradigm.hyper_grad(hyper, rows, rowdot, gsum, scale)
    if not want_grad:
        return (loss, None, None, None) if hyper else (loss, None, None)
    if not unit:
        return (loss, du, dv, dh) if hyper else (loss, du, dv)
    if r < m:  # the rows beyond r stay zero: no normalisation pass over them either
        dv[:r] = normalize_backward(dvr, v32[:r], inv_c[:r])
    else:
        dv = normalize_backward(dv, v32, inv_c)
    out = loss, normalize_backward(du, u32, inv_x), dv
    return out + (dh,) if hyper else out

