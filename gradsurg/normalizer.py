r"""A global normaliser for InfoNCE on small batches (SogCLR / FastCLIP, arXiv:2407.01445).

InfoNCE normalises each anchor's push by its batch: ``W_ij = exp(s_ij/tau) /
sum_{k != i} exp(s_ik/tau)`` over the M - 1 negatives in the batch. With
``normalizer="global"`` the denominator is a per-example moving estimate kept
across steps, so the weights behave like those of a large batch on a small one:

.. math::

    g_i = \frac{1}{M-1} \sum_{j \ne i} e^{s_{ij}/\tau}, \qquad
    u_i \leftarrow (1-\gamma)\, u_i + \gamma\, g_i \quad (u_i = g_i \text{ the first time example } i \text{ is seen}),

    \frac{\partial L_i}{\partial s_{ij}} = GD_i (W_{ij} - [j=i] R_i), \quad
    GD_i = \frac{1}{\tau}, \quad W_{ij} = \frac{e^{s_{ij}/\tau}}{(M-1)\, u_i} \ (j \ne i), \quad R_i = 1.

In the paradigm's terms (docs/paradigm.md, "Global normaliser") W changes (its
row sum is ``g_i / u_i``, 1 when the estimate has caught up with the batch,
instead of exactly 1), GD becomes the constant ``1/tau`` (the positive leaves
the normaliser: InfoNCE's ``(1 - p_ii)/tau`` is its batch form with the
positive inside) and R stays 1. The value reported per anchor is
``-s_ii/tau + log u_i + g_i/u_i - 1``, the compositional objective
``-s_ii/tau + log g_i`` to first order in ``g_i/u_i - 1``; its gradient (with u
held constant) is the one above. ``u`` lives in log space (float64), so no
temperature overflows it.

How it runs on the engine (no N x M matrix outside it): one InfoNCE pass with
``reduction='none'`` gives each row's loss ``L_i = LSE_all_i - s_ii/tau``, from
which ``log g_i = LSE_all_i + log(1 - p_ii) - log(M-1)`` (``1 - p_ii = -expm1(-L_i)``);
its backward with the row weight ``c_i = exp(LSE_all_i) / ((M-1) u_i)`` gives
``exp(s_ij/tau)/((M-1) u_i tau)`` on every negative and ``-(g_i/u_i)/tau`` on the
positive, which an O(N d) term ``(g_i/u_i - 1)/tau * s_ii`` (autograd on the
pair's similarity) brings to ``-1/tau``.

A learnable temperature (a 0-dim tensor) gets the gradient of the same surrogate
``-s_ii/tau + sum_{j != i} exp(s_ij/tau) / ((M-1) u_i)`` with u held constant,

.. math::

    \frac{\partial L_i}{\partial \tau} = \frac{1}{\tau^2}\Big(s_{ii} -
        \sum_{j \ne i} \frac{e^{s_{ij}/\tau}}{(M-1)\, u_i}\, s_{ij}\Big),

the compositional objective's ``d/dtau (-s_ii/tau + log g_i)`` with ``g_i`` in the
denominator replaced by its estimate ``u_i``, as for the embeddings: the engine's
rows carry it through ``c_i L_i`` and autograd through ``s_ii / tau`` in the pair term.

Across processes (``distributed='gather'`` or ``'ring'``) each rank computes its own
anchors' rows against every rank's candidates (M counts the global batch) and
gathers the global batch's indices and new estimates, so every rank's state holds
the whole of ``u`` (docs/paradigm.md, "Global normaliser").
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import distributed as comm
from . import paradigm as _p
from .api import paradigm_loss
from .engine.normalize import normalize
from .engine.validation import check_reduction

__all__ = ["GlobalNormalizer", "info_nce_global"]

NORMALIZERS = ("batch", "global")


class GlobalNormalizer(nn.Module):
    """The per-example estimates ``u_i`` of the global normaliser, for each tower.

    Args:
        dataset_size: how many examples the indices address (``index`` in ``[0, dataset_size)``).
        gamma: the moving-average rate, ``0 < gamma <= 1`` (``u <- (1-gamma) u + gamma g``).
        towers: 1 for one direction, 2 for a symmetric (two-tower) loss: each direction's
            anchors keep their own estimates.

    The buffer ``log_u`` (towers, dataset_size), float64, starts at ``-inf`` (never seen:
    the first estimate is the batch's). It is updated by a loss call when gradients are
    enabled and the module is in training mode (``.eval()`` or ``torch.no_grad()`` read
    it without changing it); it is saved with the ``state_dict``.
    """

    def __init__(self, dataset_size: int, gamma: float = 0.9, towers: int = 1):
        super().__init__()
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"GlobalNormalizer: dataset_size must be an int >= 1, got {dataset_size!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            raise ValueError(f"GlobalNormalizer: gamma must be a number in (0, 1], got {gamma!r}")
        if towers not in (1, 2):
            raise ValueError(f"GlobalNormalizer: towers must be 1 or 2 (symmetric), got {towers!r}")
        self.gamma = float(gamma)
        self.register_buffer("log_u", torch.full((towers, dataset_size), -math.inf, dtype=torch.float64))

    @property
    def dataset_size(self) -> int:
        return self.log_u.shape[1]

    def check_index(self, index, n: int, where: str) -> Tensor:
        """``index`` as a (n,) int64 tensor on the buffer's device; clear errors otherwise."""
        if index is None:
            raise ValueError(f"{where}: normalizer='global' needs index=, the (N,) dataset indices of the "
                             f"batch's examples (row i of the anchors is example index[i])")
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.dtype.is_complex:
            raise TypeError(f"{where}: index must hold integers, got dtype {index.dtype}")
        if index.shape != (n,):
            raise ValueError(f"{where}: index must have shape (N,) = ({n},), one dataset index per anchor, "
                             f"got {tuple(index.shape)}")
        index = index.to(device=self.log_u.device, dtype=torch.int64)
        if n:
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.dataset_size:
                raise IndexError(f"{where}: index out of range: values in [{lo}, {hi}], the GlobalNormalizer "
                                 f"holds dataset_size = {self.dataset_size} examples (0 .. {self.dataset_size - 1})")
            if index.unique().numel() != n:
                raise ValueError(f"{where}: index has repeated values; each row must be a distinct example")
        return index

    def step(self, tower: int, index: Tensor, log_g: Tensor, update: bool) -> Tensor:
        """``log u`` of the rows ``index`` after this batch's estimate ``log_g`` (updated in place if
        ``update``; a never-seen example takes ``g`` itself)."""
        old = self.log_u[tower, index]
        log_g = log_g.to(device=old.device, dtype=old.dtype)  # the state may live on another device
        mixed = torch.logaddexp(old + math.log1p(-self.gamma) if self.gamma < 1 else old.new_full(old.shape, -math.inf),
                                log_g + math.log(self.gamma))
        new = torch.where(torch.isinf(old) & (old < 0), log_g, mixed)
        if update:
            self.log_u[tower, index] = new
        return new

    def extra_repr(self) -> str:
        return f"dataset_size={self.dataset_size}, gamma={self.gamma}, towers={self.log_u.shape[0]}"


def _similarity(x: Tensor, y: Tensor, unit: bool) -> Tensor:
    """``s_ii`` as the engine forms it (cosine, or the dot product with ``normalize=False``)."""
    if unit:
        x, y = normalize(x)[0], normalize(y)[0]
    return (x * y).sum(dim=1)


def _direction(x, pos, neg, state, tower, index, temp, m, kwargs, keep_dissipation=False):
    """``(value rows, gradient rows, new log u rows, g/u)`` of one direction: equal values, the gradient
    rows' gradient is the global normaliser's. ``temp``: the temperature (float, or a 0-dim tensor:
    learnable); ``m``: the number of candidates per anchor (over every rank's when gathered);
    ``keep_dissipation``: the positive stays in the normaliser (InfoNCE's GD, see :func:`info_nce_global`)."""
    learnable = isinstance(temp, Tensor)
    tau = float(temp.detach()) if learnable else temp
    paradigm, learn = (_p.info_nce(1.0), {"temperature": temp}) if learnable else (_p.info_nce(tau), None)
    rows = paradigm_loss(x, pos, neg, paradigm=paradigm, learn=learn, reduction="none",
                         caller="info_nce(normalizer='global')", **kwargs)
    s = _similarity(x, pos, kwargs.get("normalize", True))
    big_l, sd = rows.detach().double(), s.detach().double()
    lse_all = sd / tau + big_l
    log_m = math.log(m - 1)
    log_g = lse_all + torch.log(-torch.expm1(-big_l)) - log_m
    log_u = state.step(tower, index, log_g, False)
    lu = log_u.to(big_l.device)
    ratio = torch.exp(log_g - lu)
    c = torch.exp(lse_all - lu - log_m)
    value = -sd / tau + lu + ratio - 1.0
    # (g/u - 1) s_ii / tau: as a function of the logit s_ii / tau, so that a learnable temperature gets its
    # share through autograd (the engine's rows carry the rest of d/dtau)
    pair = (ratio - 1.0).to(s.dtype) * s / temp if learnable else ((ratio - 1.0) / tau).to(s.dtype) * s
    grad_rows = c.to(rows.dtype) * rows + pair
    if keep_dissipation:
        # L_i = -s_ii/tau + log(e^{s_ii/tau} + (M-1) u_i): the gradient above times 1 - p'_ii (a constant
        # factor: its derivative is not taken, which is also right for a learnable temperature)
        log_d = torch.logaddexp(sd / tau, log_m + lu)
        dissipation = -torch.expm1(sd / tau - log_d)  # 1 - p'_ii
        value = -sd / tau + log_d + dissipation * (ratio - 1.0)
        grad_rows = dissipation.to(rows.dtype) * grad_rows
    return value.to(rows.dtype), grad_rows, log_u, ratio


def _batch_layout(anchors, negatives, state, index, update, kwargs, where):
    """``(index, every rank's index or None, M of the first direction, M of the second, the gathered
    row counts or None, world, N over all ranks)``.

    Across processes (``distributed`` / ``gather_across_devices`` with a process group of more than
    one) every rank's index errors are raised on every rank (no rank left waiting in a collective),
    the ranks must agree on whether the state is updated, and the indices of the global batch are
    gathered (each example at most once in it) so that every rank writes the whole global batch's
    estimates into its copy of the state."""
    mode = kwargs.get("distributed") or ("gather" if kwargs.get("gather_across_devices") else None)
    group = kwargs.get("group")
    if mode is None or not comm.gather_active(group):
        if not isinstance(anchors, Tensor) or anchors.dim() != 2:
            raise ValueError(f"{where}: anchors must be a (N, d) tensor")
        index = state.check_index(index, anchors.shape[0], where)
        n = anchors.shape[0]
        k = negatives.shape[0] if isinstance(negatives, Tensor) and negatives.dim() == 2 else 0
        return index, None, n + k, n, None, 1, n
    err = None
    try:
        if not isinstance(anchors, Tensor) or anchors.dim() != 2:
            raise ValueError(f"{where}: anchors must be a (N, d) tensor")
        index = state.check_index(index, anchors.shape[0], where)
    except (TypeError, ValueError, IndexError) as e:
        err = e
    ok = err is None
    k = negatives.shape[0] if ok and isinstance(negatives, Tensor) and negatives.dim() == 2 else 0
    like = anchors if isinstance(anchors, Tensor) else None
    table = comm.agree(err, [anchors.shape[0] if ok else 0, k, int(update)], group, like, where)
    if len({row[2] for row in table}) > 1:
        raise ValueError(f"{where}: some ranks update the GlobalNormalizer and others do not (training mode with "
                         f"gradients: {[bool(row[2]) for row in table]}); every rank must agree")
    n_r, k_r = [row[0] for row in table], [row[1] for row in table]
    with torch.no_grad():
        every = comm.all_gather_with_grad(index.to(anchors.device)[:, None], group, n_r)[:, 0]
    if every.unique().numel() != every.numel():
        raise ValueError(f"{where}: index has repeated values across the ranks; each example must be in the "
                         f"global batch once (the ranks' indices are the dataset indices of their own anchors)")
    world = torch.distributed.get_world_size(group)
    return index, every, sum(n_r) + sum(k_r), sum(n_r), n_r, world, sum(n_r)


def _store(state, towers, index, every, n_r, group, like):
    """Write the new ``log u`` rows ``towers`` ({tower: (n,) rows of ``index``}) into ``state``; across
    processes every rank's rows are gathered first, so that every rank's state is the same."""
    if every is None:
        for t, rows in towers.items():
            state.log_u[t, index] = rows
        return
    local = torch.stack([rows.to(like.device) for rows in towers.values()], dim=1)
    with torch.no_grad():
        allrows = comm.all_gather_with_grad(local, group, n_r).to(state.log_u.device)
    at = every.to(state.log_u.device)
    for col, t in enumerate(towers):
        state.log_u[t, at] = allrows[:, col]


def info_nce_global(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
                    state: GlobalNormalizer, index, temperature: float | Tensor = 0.05, symmetric: bool = False,
                    reduction: str = "mean", stats: dict | None = None, keep_dissipation: bool = False,
                    **kwargs) -> Tensor:
    r"""InfoNCE with the global normaliser (module docstring): ``state`` holds ``u``, ``index`` (N,)
    names the batch's examples in it. ``symmetric=True`` (two towers, CLIP): the positives ->
    anchors direction uses tower 1 of ``state`` (``towers=2``) with the same indices.

    ``temperature``: a float, or a 0-dim tensor (learnable): its gradient is that of the reported
    loss with ``u`` held constant, ``d/dtau sum_i [-s_ii/tau + sum_{j!=i} e^{s_ij/tau} / ((M-1) u_i)]``,
    the estimator of the compositional objective's gradient that ``u`` gives (docs/paradigm.md).

    Across processes (``distributed='gather'`` / ``gather_across_devices=True``, or
    ``distributed='ring'``; ``group``): ``index`` holds the dataset indices of this rank's own
    anchors; the candidates are every rank's (so ``M`` counts the global batch), each rank computes
    its own anchors' rows, and every rank's ``state`` receives the new estimates of the whole global
    batch (the ranks' states stay equal: any rank's checkpoint holds all of ``u``). Reductions follow
    the gather path's scaling (:mod:`gradsurg.api`: ``'mean'`` returns ``(W/N) sum_{i in r} L_i``).
    ``keep_dissipation=True`` keeps the positive in the normaliser, ``L_i = -s_ii/tau +
    log(e^{s_ii/tau} + (M-1) u_i)``: InfoNCE with the sum over the negatives replaced by its moving
    estimate. Its gradient is the global one times ``1 - p'_ii``, ``p'_ii = e^{s_ii/tau} / (e^{s_ii/tau}
    + (M-1) u_i)``: ``GD_i = (1 - p'_ii)/tau`` (InfoNCE's gradient dissipation, which the default form
    drops: ``GD_i = 1/tau``), the same ``W`` and ``R = 1``. Its value is ``-s_ii/tau + log(e^{s_ii/tau}
    + (M-1) u_i) + (1 - p'_ii)(g_i/u_i - 1)``, the loss with ``g_i`` in place of ``u_i`` to first order.

    ``stats``: a dict filled with the normaliser's telemetry (``normalizer_ratio_*``, ``g_i/u_i``;
    ``normalizer_first_seen``; :func:`_telemetry`), from numbers the loss computes anyway.
    Other keyword arguments (``backend``, ``check_finite``, ``chunk_bytes``, ``normalize``) pass to
    :func:`gradsurg.paradigm_loss`.
    """
    where = "info_nce(normalizer='global')"
    if not isinstance(keep_dissipation, bool):
        raise TypeError(f"{where}: keep_dissipation must be True or False, got {keep_dissipation!r}")
    if not isinstance(state, GlobalNormalizer):
        raise TypeError(f"{where}: state must be a gradsurg.GlobalNormalizer (the per-example estimates), "
                        f"got {type(state).__name__}")
    temp = _check_temperature(temperature, where)
    check_reduction(reduction, where)
    if kwargs.get("learn"):
        raise ValueError(f"{where}: learn= is not taken here; give a learnable temperature as temperature= "
                         f"(a 0-dim tensor)")
    if symmetric and state.log_u.shape[0] != 2:
        raise ValueError(f"{where}: symmetric=True needs GlobalNormalizer(towers=2), got towers={state.log_u.shape[0]}")
    update = torch.is_grad_enabled() and state.training
    index, every, m1, m2, n_r, world, n_total = _batch_layout(anchors, negatives, state, index, update, kwargs, where)
    value, grad, log_u, ratio = _direction(anchors, positives, negatives, state, 0, index, temp, m1, kwargs,
                                           keep_dissipation)
    towers, ratios = {0: log_u}, [ratio]
    if symmetric:
        v2, g2, towers[1], ratio2 = _direction(positives, anchors, None, state, 1, index, temp, m2, kwargs,
                                               keep_dissipation)
        value, grad = 0.5 * (value + v2), 0.5 * (grad + g2)
        ratios.append(ratio2)
    if stats is not None:  # before the store: "first seen" reads the estimates as they were
        _telemetry(stats, torch.cat(ratios), torch.cat([state.log_u[t, index] for t in towers]))
    if update:
        _store(state, towers, index, every, n_r, kwargs.get("group"), anchors)
    rows = value + (grad - grad.detach())
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() * (world / n_total)


def _telemetry(stats: dict, ratio: Tensor, old_log_u: Tensor) -> None:
    """``stats``: how far this batch's estimate sits from the moving one, ``g_i / u_i`` (``u_i`` after
    this batch's update; the row sum of W, 1 where the estimate has caught up) as ``normalizer_ratio_mean``
    / ``_q10`` / ``_q50`` / ``_q90`` over this rank's anchors (both towers when symmetric), and
    ``normalizer_first_seen``, the share of them seen for the first time (their ``u_i`` is their ``g_i``)."""
    if not isinstance(stats, dict):
        raise TypeError(f"info_nce(normalizer='global'): stats must be a dict to fill, got {type(stats).__name__}")
    r = ratio.detach().double().cpu()
    if r.numel() == 0:
        return
    q = torch.quantile(r, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    stats.update(normalizer_ratio_mean=float(r.mean()), normalizer_ratio_q10=float(q[0]),
                 normalizer_ratio_q50=float(q[1]), normalizer_ratio_q90=float(q[2]),
                 normalizer_first_seen=float((torch.isinf(old_log_u) & (old_log_u < 0)).double().mean()))


def _check_temperature(temperature, where: str):
    """A float > 0, or a 0-dim floating tensor (learnable; its value is checked by the engine)."""
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1 or temperature.dim() > 1 or not temperature.is_floating_point():
            raise TypeError(f"{where}: a learnable temperature must be a 0-dim floating tensor, got shape "
                            f"{tuple(temperature.shape)} dtype {temperature.dtype}")
        value = float(temperature.detach())
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{where}: temperature must be > 0 and finite, got {value}")
        return temperature.reshape(())
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{where}: temperature must be a float > 0 or a 0-dim tensor (learnable), "
                         f"got {temperature!r}")
    return float(temperature)
