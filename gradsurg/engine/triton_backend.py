"""The Triton backend: glue between the pure kernels (``gradsurg_kernels``) and the components.

Implements the backend protocol (``supports``, ``direction``) plus ``describe``
for the dispatcher and ``gradsurg doctor``. One direction of the loss (anchors
``x``, candidates ``c``, raw, anchor i's positive is ``c[i]``) runs on one of
two kernel paths, chosen by dtype and d (:func:`gradsurg_kernels.launch.choose_path`):

``fused``    (16-bit, d <= 256 on sm_90+, <= 128 on sm_80) rows kernel -> statistics -> finish + cols kernels.
``chunked``  (large d, float32) per chunk of anchor rows: ``S = x_chunk c^T``
             (cuBLAS, fp32 out), the chunk kernel (statistics; weights ``W'``
             in the operand dtype, written over ``S``), then ``W' c`` and
             ``c += W'^T Y`` (cuBLAS, fp32 accumulation). Memory: one chunk of
             ``S`` plus O((N + M) d); never N x M.

Between the kernels, the O(N) statistics reach the components as a
:class:`~gradsurg.components.row_stats.RowStats`: the dissipation gives ``GD_i``,
the ratio ``GD_i R_i`` (``Paradigm.pull``), the paradigm the loss row. The
gradient ``G = GD (W - [j==i] R)`` is applied as ``diag(GD/l) W^ - diag(GD R)``:
the weights ``W^ = exp(z - max)`` (in [0, 1]) are the only N x M operand, and the
per-row factors stay in float32.

Options: ``path`` ('auto' | 'fused' | 'chunked'), ``chunk_bytes`` (the chunked
path's budget for one chunk's work buffers, default 1 GiB on CUDA, the torch
backend's default on CPU), ``block_n`` / ``block_m`` (tile override, fused path;
rows per program / columns per tile of the chunk kernel).

Internal options (set by the front door, as for the torch backend):
``hyper_grad`` (learnable temperature / scale / bias: their gradient comes
from the same statistics, ``sum_j G_ij s_ij = a_i sum_j W_ij s_ij - GD_i R_i
s_ii``, no extra pass) and ``grad_rows`` (only the first r candidates need a
gradient: a detached queue costs no column pass / no ``W'^T y`` product).

InfoNCE with sentence-transformers' hardness tilt (``paradigm.info_nce_hardness``) is the
softmax kind at ``tau' = 1/(1/tau + alpha)``: its GD reads the same log-sum-exp over the
negatives (the kernels exclude ``j = i``) and the positive ``s_ii``, so it needs no kernel of its own.

SigLIP runs as the sigmoid weight kind: ``z_ij = log sigmoid(t s_ij + b)``
through the same online maximum, so ``W = sigmoid / sum sigmoid`` and
``sum_j sigmoid(t s_ij + b) = exp(m_i) l_i`` come from the statistics of every
other kind; the kernels add the sum of ``softplus(t s_ij + b)`` for its loss.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..components import dissipation as D
from ..components import ratio as R
from ..components import weight as W
from ..components.row_stats import RowStats
from ..paradigm import Paradigm
from ..vocabulary import KERNEL_DTYPES
from . import torch_backend
from .normalize import inverse_norm, normalize_backward
from .validation import check_backend_options

__all__ = ["supports", "covers", "direction", "describe", "NAME", "OPTIONS"]

NAME = "triton"
#: options accepted by :func:`direction`
OPTIONS = ("path", "chunk_bytes", "block_n", "block_m")
#: options only the front door passes (see the torch backend)
INTERNAL_OPTIONS = ("hyper_grad", "grad_rows", "caller")
#: default chunk budget on CUDA (bytes of one chunk's work buffers, as torch_backend.chunk_rows counts)
CUDA_CHUNK_BYTES = 2**30

_DISSIPATIONS = (D.InfoNCE, D.ArcCon, D.InfoNCEHardness, D.Margin, D.EuclideanMargin, D.AngularMargin, D.Constant, D.Sigmoid)
_RATIOS = (R.Constant, R.Arc, R.Euclidean, R.Angular, R.Sigmoid)
_WEIGHTS = {W.Softmax: "softmax", W.Hardest: "hardest", W.Power: "power", W.Uniform: "uniform",
            W.Sigmoid: "sigmoid"}


def _kernels():
    from gradsurg_kernels import launch  # kernels/gradsurg_kernels in the repository; imports triton

    return launch


# -- the protocol ----------------------------------------------------------------------------------------

def covers(dtype: torch.dtype, paradigm: Paradigm) -> str | None:
    """None when the kernels implement ``dtype`` and the paradigm's components (whatever the
    device), else the reason; :func:`supports` adds the device."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    if dtype not in KERNEL_DTYPES:
        return f"the Triton kernels take float16, bfloat16 or float32 inputs, not {dtype}"
    for name, part, known in (("dissipation", paradigm.dissipation, _DISSIPATIONS),
                              ("weight", paradigm.weight, tuple(_WEIGHTS)),
                              ("ratio", paradigm.ratio, _RATIOS)):
        if type(part) not in known:
            return (f"the Triton kernels implement the core {name}s "
                    f"({', '.join(k.__name__ for k in known)}), not {type(part).__name__}")
    for name, part in (("dissipation", paradigm.dissipation), ("ratio", paradigm.ratio)):
        if isinstance(part, (D.Sigmoid, R.Sigmoid)) and paradigm.weight != W.Sigmoid(part.scale, part.bias):
            return (f"the Triton kernels compute the sigmoid sums of the {name} {part!r} only with the "
                    f"weight Sigmoid({part.scale}, {part.bias}), not {paradigm.weight!r}")
    return None


def supports(x: Tensor, paradigm: Paradigm, d: int | None = None) -> str | None:
    """None when the Triton kernels can run this direction, else the reason (a sentence)."""
    reason = covers(x.dtype, paradigm)
    if reason is not None:
        return reason
    interpret = _kernels().interpreted()
    if x.is_cuda and interpret:
        return "Triton was imported with TRITON_INTERPRET=1 (interpreter mode); CUDA tensors need compiled kernels"
    if not x.is_cuda and not interpret:
        return ("tensors are not on a CUDA device (CPU tensors run the Triton kernels only under its "
                "interpreter, TRITON_INTERPRET=1 set before Triton is imported)")
    return None


def describe(dtype: torch.dtype, d: int, paradigm: Paradigm) -> str:
    """Which kernel path and tiles would run for ``dtype`` and ``d``, and why (one paragraph)."""
    if importlib.util.find_spec("triton") is None:
        return "triton backend unavailable: Triton is not installed (pip install triton)"
    if dtype not in KERNEL_DTYPES:
        return f"triton backend unavailable for {dtype}: the kernels take float16, bfloat16 or float32"
    k = _kernels()
    arch = k.arch_of(torch.device("cuda")) if torch.cuda.is_available() else 90
    path, why = k.choose_path(dtype, d, arch)
    kind = _WEIGHTS.get(type(paradigm.weight), type(paradigm.weight).__name__)
    if path == "fused":
        t = k.fused_tiles(arch, dtype, d)
        run = (f"kernels fused_rows + fused_finish + fused_cols (4 tensor-core passes over N x M x d), "
               f"{t.describe()} on sm_{arch}")
    else:
        t = k.chunk_tiles(arch)
        run = (f"per row chunk: cuBLAS S = x c^T (fp32 out), chunk_weights kernel (BLOCK_R={t.block_n} "
               f"BLOCK_M={t.block_m} warps={t.num_warps}), cuBLAS W' c and W'^T y (3 GEMMs in "
               f"{str(dtype).replace('torch.', '')}, fp32 accumulation)")
    return f"triton {path} path ({why}); weight kind {kind}; {run}"


def direction(x: Tensor, c: Tensor, paradigm: Paradigm, row_weights: float | Tensor | None,
              **options) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One direction of the loss (see the module docstring and docs/kernels.md).

    Returns the loss rows ``(N,)`` float32 and, when ``row_weights`` is given,
    the float32 gradients of ``sum_i row_weights_i L_i`` w.r.t. the raw ``x`` and ``c``.
    """
    hyper = tuple(options.pop("hyper_grad", ()))
    grad_rows = options.pop("grad_rows", None)
    where = options.pop("caller", "paradigm_loss")  # the name its option errors start with
    check_backend_options(options, OPTIONS, NAME, where)
    reason = supports(x, paradigm)
    if reason is not None:
        raise ValueError(f"triton backend: cannot run: {reason}")
    if c.dtype != x.dtype or c.device != x.device or c.dim() != 2 or x.dim() != 2 or c.shape[1] != x.shape[1]:
        raise ValueError(f"triton backend: x (N, d) and c (M, d) need one dtype, device and d; got "
                         f"{tuple(x.shape)} {x.dtype} {x.device} and {tuple(c.shape)} {c.dtype} {c.device}")
    n, d = x.shape
    m = c.shape[0]
    if not 1 <= n <= m or m < 2:
        raise ValueError(f"triton backend: need 1 <= N <= M and M >= 2, got N = {n}, M = {m}")
    k = _kernels()
    path = options.get("path", "auto")
    if path == "auto":
        path = k.choose_path(x.dtype, d, k.device_arch(x))[0]
    elif path not in ("fused", "chunked"):
        raise ValueError(f"{where}: the triton backend's path must be 'auto', 'fused' or 'chunked', got {path!r}")
    tiles = {key: int(options[key]) for key in ("block_n", "block_m") if options.get(key) is not None}
    x, c = _rows_contiguous(x), _rows_contiguous(c)
    ix, ic = inverse_norm(x, torch.float32), inverse_norm(c, torch.float32)
    ic_max = _positive_max(ic)
    if isinstance(row_weights, Tensor):
        row_weights = row_weights.to(device=x.device, dtype=torch.float32)
    r = m if grad_rows is None else max(0, min(m, int(grad_rows)))
    dh = torch.zeros(len(hyper), dtype=torch.float32, device=x.device) if hyper and row_weights is not None else None
    spec = _Spec(paradigm, hyper, dh)
    if path == "fused":
        out = _fused(k, x, c, ix, ic, ic_max, spec, row_weights, tiles, r)
    else:
        chunk_bytes = options.get("chunk_bytes")
        if chunk_bytes is None:
            chunk_bytes = CUDA_CHUNK_BYTES if x.is_cuda else torch_backend.DEFAULT_CHUNK_BYTES
        out = _chunked(k, x, c, ix, ic, ic_max, spec, row_weights, tiles, int(chunk_bytes), r)
    return out + (dh,) if hyper else out


# -- helpers ----------------------------------------------------------------------------------------------

class _Spec:
    """What the kernels need to know of a paradigm (weight kind and parameters, which LSEs), and
    the statistics -> per-row factors step; accumulates the learnable hyper-parameters' gradient
    into ``dh`` (the names ``hyper``) when given."""

    def __init__(self, paradigm: Paradigm, hyper: tuple = (), dh: Tensor | None = None):
        self.paradigm, self.hyper, self.dh = paradigm, hyper, dh
        wgt, dis = paradigm.weight, paradigm.dissipation
        self.kind = _WEIGHTS[type(wgt)]
        self.w_kind = _kernels().W_KINDS[self.kind]
        self.inv_tau_w, self.bias_w, self.power = 1.0, 0.0, 1.0
        if self.kind == "softmax":
            self.inv_tau_w = 1.0 / wgt.temperature
        elif self.kind == "power":
            self.power = float(wgt.p)
        elif self.kind == "sigmoid":
            self.inv_tau_w, self.bias_w = float(wgt.scale), float(wgt.bias)
        # the softmax dissipations read the negatives' log-sum-exp at their lse_temperature (InfoNCE's
        # tau, the hardness tilt's tau' = 1/(1/tau + alpha)): the weight's own statistics where it is a
        # softmax at that temperature, else a second online log-sum-exp in the same pass
        tau_g = getattr(dis, "lse_temperature", None)
        self.need_lse_g = tau_g is not None and not (self.kind == "softmax" and tau_g == wgt.temperature)
        self.tau_g = tau_g if self.need_lse_g else 1.0

    def launch_args(self) -> dict:
        return dict(w_kind=self.w_kind, inv_tau_w=self.inv_tau_w, bias_w=self.bias_w, power_p=self.power)

    def rows(self, stats: Tensor, hidx: Tensor, start: int) -> tuple[RowStats, Tensor, Tensor]:
        """``(RowStats, l, mean_s)`` from the kernels' statistics (rows of ``stats``):
        ``l_i`` normalises the kernels' weights ``W^``, ``mean_s_i = sum_j W_ij s_ij``."""
        pos, hmax, m_w, l_w, ws, m_g, l_g, sp = stats.unbind(0)
        lses, sigmoids = {}, {}
        wgt = self.paradigm.weight
        if self.kind == "softmax":
            lses[wgt.temperature] = m_w + torch.log(l_w)
        elif self.kind == "sigmoid":  # z = log sigmoid: sum_j sigmoid = exp(m) l
            sigmoids[(wgt.scale, wgt.bias)] = (torch.exp(m_w) * l_w, sp)
        if self.need_lse_g:
            lses[self.tau_g] = m_g + torch.log(l_g)
        rows = RowStats(pos=pos, hardest_value=hmax, hardest_index=hidx.long(), lses=lses, start=start,
                        sigmoids=sigmoids)
        if self.kind == "hardest":
            return rows, torch.ones_like(pos), hmax
        return rows, l_w, ws / l_w

    def factors(self, rows: RowStats, mean_s: Tensor, row_weights, lo: int, hi: int):
        """``(loss, a, pull)``: the loss rows and ``GD_i w_i``, ``GD_i R_i w_i`` (w: row weights)."""
        p = self.paradigm
        gd = p.dissipation(rows)
        pull = p.pull(rows, gd)
        loss = p.row_value(rows, gd, pull, mean_s)
        if row_weights is None:
            return loss, None, None
        w = row_weights[lo:hi] if isinstance(row_weights, Tensor) else float(row_weights)
        a, pull = gd * w, pull * w
        if self.dh is not None:  # sum_j G_ij s_ij and sum_j G_ij of G = w GD (W - [j=i] R): sum_j W_ij = 1
            self.dh += p.hyper_grad(self.hyper, rows, a * mean_s - pull * rows.pos, a - pull, w, a=a, pull=pull)
        return loss, a, pull


def _rows_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(1) == 1 and t.stride(0) >= t.shape[1] else t.contiguous()


def _positive_max(v: Tensor) -> Tensor:
    """``max(v)`` as a (1,) tensor, 1 where it is not positive (no host synchronisation)."""
    top = v.abs().amax().reshape(1)
    return torch.where(top > 0, top, torch.ones_like(top))


def _fused(k, x, c, ix, ic, ic_max, spec: _Spec, row_weights, tiles, grad_rows):
    n = x.shape[0]
    want = row_weights is not None
    stats, hidx, acc = k.fused_rows(x, c, ix, ic, ic_max, need_lse_g=spec.need_lse_g, want_acc=want,
                                    inv_tau_g=1.0 / spec.tau_g, tiles=tiles, **spec.launch_args())
    rows, l, mean_s = spec.rows(stats, hidx, 0)
    loss, a, pull = spec.factors(rows, mean_s, row_weights, 0, n)
    if not want:
        return loss, None, None
    ic_pos = ic[:n]
    hardest = spec.kind == "hardest"
    cp = -pull * ic_pos
    dx = k.fused_finish(x, c, ix, ic, acc, None if hardest else a * ic_max / l, a if hardest else None, cp, hidx)
    f = a * ix / l
    kappa = _positive_max(f)
    dc = k.fused_cols(x, c, ix, ic, f / kappa, kappa, stats[2].contiguous(), hidx, pull.contiguous(),
                      tiles=tiles, grad_rows=grad_rows, **spec.launch_args())
    return loss, dx, dc


def _chunked(k, x, c, ix, ic, ic_max, spec: _Spec, row_weights, tiles, chunk_bytes, grad_rows):
    n, d = x.shape
    m = c.shape[0]
    r = grad_rows  # only the first r candidates need a gradient (a detached queue beyond)
    want = row_weights is not None
    loss = torch.empty(n, dtype=torch.float32, device=x.device)
    dx = torch.empty((n, d), dtype=torch.float32, device=x.device) if want else None
    acc = torch.zeros((r, d), dtype=torch.float32, device=x.device) if want else None  # ic_j dV_j / max(ic)
    step = torch_backend.chunk_rows(n, m, torch.float32, chunk_bytes)
    if x.is_cuda and step < n:
        # GEMM-friendly chunks: a multiple of 128 rows and at least 1024 (every chunk also reads and
        # writes the M x d fp32 accumulator once, which must stay small next to its GEMMs)
        step = max(min(n, 1024), step // 128 * 128)
    ct = dict(block_n=tiles["block_n"]) if "block_n" in tiles else {}
    if "block_m" in tiles:
        ct["block_m"] = tiles["block_m"]
    scaled = x.dtype == torch.float16  # keep the operand y in float16's range (see below)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        xc, ixc = x[lo:hi], ix[lo:hi]
        s = k.mm_f32(xc, c.T)
        stats, hidx, w = k.chunk_weights(s, x.dtype, ixc, ic, ic_max, lo, need_lse_g=spec.need_lse_g,
                                         write_w=want, inv_tau_g=1.0 / spec.tau_g, tiles=ct,
                                         **spec.launch_args())
        rows, l, mean_s = spec.rows(stats, hidx, lo)
        loss[lo:hi], a, pull = spec.factors(rows, mean_s, row_weights, lo, hi)
        if not want:
            continue
        f = a / l
        u = xc.float() * ixc[:, None]
        # rows: dU_i = sum_j G_ij v_j = (f_i max ic) (W' c)_i - pull_i v_i, then the normalisation backward
        du = k.mm_f32(w, c).mul_((f * ic_max)[:, None])
        du.addcmul_((pull * ic[lo:hi])[:, None], c[lo:hi].float(), value=-1.0)
        dx[lo:hi] = normalize_backward(du, u, ixc)
        if r == 0:
            continue
        # columns: acc_j += sum_i W'_ij f_i u_i  (= ic_j dV_j / max ic over the negatives)
        y = u * f[:, None]
        wr = w[:, :r].T
        if scaled:  # float16: y divided by its largest entry, the factor restored in fp32
            top = _positive_max(f)
            acc.addcmul_(k.mm_f32(wr, (y / top).to(x.dtype)), top)
        else:
            k.addmm_f32_(acc, wr, y.to(x.dtype))
        top_pos = min(hi, r)  # the positives (rows lo..hi of c) that need a gradient
        if top_pos > lo:
            acc[lo:top_pos].addcmul_((pull * ic[lo:hi] / ic_max)[: top_pos - lo, None], u[: top_pos - lo],
                                     value=-1.0)
    if not want:
        return loss, None, None
    # dc_j = ic_j (dV_j - (dV_j . v_j) v_j) = t_j - (t_j . v_j) v_j with t_j = ic_j dV_j = max(ic) acc_j
    if r == m:
        v = c.float() * ic[:, None]
        return loss, dx, normalize_backward(acc.mul_(ic_max), v, torch.ones_like(ic))
    dc = torch.zeros((m, d), dtype=torch.float32, device=x.device)
    if r:
        v = c[:r].float() * ic[:r, None]
        dc[:r] = normalize_backward(acc.mul_(ic_max), v, torch.ones_like(ic[:r]))
    return loss, dx, dc
