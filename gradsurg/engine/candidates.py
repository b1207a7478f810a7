r"""The softmax paradigm over structured candidate sets, chunked (the torch engine).

Practitioners shape InfoNCE's gradient by changing *which* candidates enter an
anchor's partition function, *how much* each one weighs, and *what* the target
is. In the paradigm's terms (docs/paradigm.md, "Structured candidates") each
of these is a change of W, of the candidate set, or of the positive term; this
module computes all of them in one chunked pass, holding one chunk of rows of
every block at a time (memory O(N d + chunk x M), never an N x M matrix).

For anchor row i, with blocks ``b`` (each an anchor matrix and a candidate
matrix, sentence-transformers' "directions"), logits

.. math::

    l_{ij} = \mathrm{scale}\, s_{ij} + \alpha\, \mathrm{sg}(s_{ij})\, h_{ij}
             \quad (-\infty \text{ where candidate } j \text{ is dropped})

with ``h`` the hardness selection, partitions ``p = 1..P`` (one for 'joint',
one per block for 'per_direction') and a target distribution ``t_i`` over
block 0 (one-hot at the positive, uniform over label matches, or soft):

.. math::

    L_i = \frac{1}{P} \sum_p \mathrm{LSE}_{j \in p}(l_{ij}) - \sum_j t_{ij} l_{ij},
    \qquad \frac{\partial L_i}{\partial s_{ij}} = \mathrm{scale}\,
    \Big(\frac{\pi_{ij}}{P} - t_{ij}\Big)

where ``pi`` is the softmax of the logits within j's partition. This equals
``GD_i (W_ij - [j in T_i] R_ij)`` with ``GD_i = scale (1 - sum_{j in T_i} pi_ij / P)``,
``W`` the normalised ``pi / P`` off the targets and ``R`` the targets' net pull
(docs/paradigm.md).

Nothing here knows sentence-transformers' names: :mod:`gradsurg.structured`
translates them into a :class:`Plan`. The Triton kernels do not take these
weights (:data:`TRITON_REASON`); :func:`gradsurg.engine.dispatch.choose_structured`
says so for ``backend='auto'`` and ``gradsurg doctor``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..vocabulary import compute_dtype
from .normalize import normalize, normalize_backward
from .torch_backend import DEFAULT_CHUNK_BYTES, chunk_rows

#: why the fused Triton kernels cannot run a structured candidate set (dispatch and doctor report it)
TRITON_REASON = ("the fused Triton kernels compute one candidate block with the positive at column i and the "
                 "softmax over all other candidates; several blocks (directions), dropped candidates (masks, "
                 "guides, duplicates), hardness offsets on part of a row's negatives and several or soft targets "
                 "change W and the candidate set per entry, which only the chunked torch engine implements (a "
                 "tilt of every negative is a paradigm, info_nce_hardness, and runs on the kernels)")

HARDNESS = (None, "own", "other", "all")


@dataclass(frozen=True)
class Block:
    """One block of candidates for every anchor row.

    ``anchor``/``cand``: indices into the plan's tensors; row i of the block is
    ``tensors[anchor][anchor_offset + i]``. ``part``: its partition (softmax).
    ``exclude_own``: drop candidates whose owner is the row (itself, its own
    documents). ``pair``: the column ``pos_col[i]`` holds the row's pair and is
    never dropped by a mask. ``hard``: which candidates get the hardness offset
    (``'own'``: the row's own candidates, ``'other'``: the others', ``'all'``),
    never the pair. ``masked``: the keys / guide masks apply to this block.
    """

    anchor: int
    cand: int
    anchor_offset: int = 0
    part: int = 0
    exclude_own: bool = False
    pair: bool = False
    hard: str | None = None
    masked: bool = True


@dataclass(frozen=True)
class Plan:
    """The blocks and the scalar options of one structured loss.

    ``scale``: 1 / temperature. ``hardness``: alpha. ``target``: ``'pair'``
    (one-hot at ``pos_col`` in block 0), ``'labels'`` (uniform over block 0's
    candidates with the row's label, rows without one contribute 0) or
    ``'soft'`` (a given row-stochastic ``(N, M_0)`` matrix). ``guide_margin``
    with ``guide_strategy`` (``'absolute'`` / ``'relative'``): GIST's false-negative
    threshold. ``parts``: the number of partitions.
    """

    blocks: tuple[Block, ...]
    scale: float
    hardness: float = 0.0
    target: str = "pair"
    parts: int = 1
    guide_strategy: str = "absolute"
    guide_margin: float = 0.0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES


@dataclass
class Aux:
    """The per-row and per-candidate integers and masks of a plan (no gradient).

    ``row_ids (n,)``: the global id of each anchor row; ``owners[k] (N_k,)``:
    the id of the anchor owning each row of tensor k; ``pos_col (n,)``: the
    column of each row's pair. Optional: ``row_keys`` ``(n, r)`` and
    ``cand_keys[k] (N_k,)`` (drop a candidate whose key equals one of the row's
    keys), ``guides[k] (N_k, d_g)`` and ``guide_rows`` (tensor index of the rows'
    anchors and positives, for the threshold), ``negative_mask (n, M_0)``,
    ``row_labels (n,)`` with ``cand_labels (M_0,)`` (-1: never a positive),
    ``soft (n, M_0)``.
    """

    row_ids: Tensor
    owners: list
    pos_col: Tensor
    row_keys: Tensor | None = None
    cand_keys: list | None = None
    guides: list | None = None
    guide_pair: tuple | None = None  # (anchor tensor, anchor offset, positive tensor)
    negative_mask: Tensor | None = None
    row_labels: Tensor | None = None
    cand_labels: Tensor | None = None
    soft: Tensor | None = None
    stats: dict = field(default_factory=dict)


def _drop(plan: Plan, aux: Aux, b: Block, a: int, z: int, s_guide_thr, gu, device) -> Tensor | None:
    """The bool (n, M_b) chunk of dropped candidates of block ``b`` for rows a..z (None: none)."""
    drop = None
    rows = aux.row_ids[a:z]
    owners = aux.owners[b.cand]
    if b.exclude_own:
        drop = owners[None, :] == rows[:, None]
    if b.masked and aux.cand_keys is not None:
        keys = aux.cand_keys[b.cand]
        dup = (keys[None, :, None] == aux.row_keys[a:z, None, :]).any(dim=2)
        drop = dup if drop is None else drop | dup
    if b.masked and gu is not None:
        ga = gu[b.anchor][b.anchor_offset + a: b.anchor_offset + z]
        gsim = ga @ gu[b.cand].T
        over = gsim > s_guide_thr[:, None]
        drop = over if drop is None else drop | over
    if b is plan.blocks[0] and aux.negative_mask is not None:
        given = aux.negative_mask[a:z]
        drop = given if drop is None else drop | given
    if drop is None:
        return None
    if b.pair:  # the pair (the positive) is never dropped
        drop[torch.arange(z - a, device=device), aux.pos_col[a:z]] = False
    if b is plan.blocks[0] and plan.target == "labels":
        drop &= ~_label_targets(plan, aux, a, z)
    if b is plan.blocks[0] and plan.target == "soft":
        drop &= ~(aux.soft[a:z] > 0)
    return drop


def _label_targets(plan: Plan, aux: Aux, a: int, z: int) -> Tensor:
    """Bool (n, M_0): block-0 candidates that share the row's label (not the row's own candidates when
    block 0 drops them, i.e. never the row itself)."""
    lab = aux.cand_labels
    match = (lab[None, :] == aux.row_labels[a:z, None]) & (lab[None, :] >= 0)
    b = plan.blocks[0]
    if b.exclude_own:
        match &= aux.owners[b.cand][None, :] != aux.row_ids[a:z, None]
    return match


def structured_direction(plan: Plan, aux: Aux, tensors: list[Tensor], row_weights: float | Tensor | None,
                         n: int) -> tuple[Tensor, list[Tensor] | None]:
    """Per-row losses (n,) and, when ``row_weights`` is given, the gradients of
    ``sum_i row_weights_i L_i`` with respect to each raw tensor (in the compute dtype)."""
    cd = compute_dtype(tensors[0].dtype)
    units, invs = zip(*[normalize(t.detach().to(cd)) for t in tensors])
    gu = None
    thr = None
    if aux.guides is not None:
        gu = [normalize(g.detach().to(cd))[0] for g in aux.guides]
        ga_t, ga_off, gp_t = aux.guide_pair
        gpos = torch.linalg.vecdot(gu[ga_t][ga_off: ga_off + n], gu[gp_t][aux.pos_col], dim=1)
        if plan.guide_strategy == "absolute":
            thr = gpos - plan.guide_margin
        else:
            thr = gpos - gpos.abs() * plan.guide_margin
    device = units[0].device
    want = row_weights is not None
    grads = [torch.zeros_like(u) for u in units] if want else None
    loss = torch.empty(n, dtype=cd, device=device)
    blocks = plan.blocks
    m_total = sum(units[b.cand].shape[0] for b in blocks)
    step = chunk_rows(n, m_total, cd, plan.chunk_bytes)  # the torch backend's chunk budget (m_total >= N >= 1)
    scale, alpha = plan.scale, plan.hardness
    telemetry = aux.stats.get("want", False)
    tel = {"entropy": [], "max_weight": []} if telemetry else None
    for a in range(0, n, step):
        z = min(n, a + step)
        k = z - a
        ar = torch.arange(k, device=device)
        logits = []
        for b in blocks:
            ua = units[b.anchor][b.anchor_offset + a: b.anchor_offset + z]
            s = ua @ units[b.cand].T
            if b.hard is not None and alpha > 0:
                own = aux.owners[b.cand][None, :] == aux.row_ids[a:z, None]
                sel = own if b.hard == "own" else (~own if b.hard == "other" else torch.ones_like(own))
                if b.pair:
                    sel[ar, aux.pos_col[a:z]] = False
                l = s * scale + (alpha * s) * sel
            else:
                l = s.mul_(scale)
            drop = _drop(plan, aux, b, a, z, None if thr is None else thr[a:z], gu, device)
            if drop is not None:
                l.masked_fill_(drop, -math.inf)
            logits.append(l)
        # the target term sum_j t_ij l_ij (block 0) and the target weights
        l0 = logits[0]
        if plan.target == "pair":
            t = None
            tl = l0[ar, aux.pos_col[a:z]]
            active = None
        elif plan.target == "labels":
            match = _label_targets(plan, aux, a, z)
            count = match.sum(dim=1)
            active = count > 0
            t = match.to(cd) / count.clamp(min=1).to(cd)[:, None]
            tl = torch.where(match, l0, torch.zeros_like(l0)).mul_(t).sum(dim=1)
        else:
            t = aux.soft[a:z].to(cd)
            pos = t > 0
            tl = torch.where(pos, l0, torch.zeros_like(l0)).mul_(t).sum(dim=1)
            active = None
        # partition functions: exponentials formed in place, shifted by each partition's row maximum
        lse_sum = torch.zeros(k, dtype=cd, device=device)
        totals = []
        for p in range(plan.parts):
            members = [i for i, b in enumerate(blocks) if b.part == p]
            top = torch.stack([logits[i].amax(dim=1) for i in members]).amax(dim=0)
            top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
            total = torch.zeros(k, dtype=cd, device=device)
            for i in members:
                logits[i].sub_(top[:, None]).exp_()
                total += logits[i].sum(dim=1)
            lse_sum += total.log() + top
            totals.append(total)
        row_loss = lse_sum / plan.parts - tl
        if active is not None:
            row_loss = torch.where(active, row_loss, torch.zeros_like(row_loss))
        loss[a:z] = row_loss
        if tel is not None:
            _telemetry(tel, plan, aux, logits, totals, t, a, z, ar)
        if not want:
            continue
        rw = row_weights[a:z].to(cd) if isinstance(row_weights, Tensor) else torch.full((k,), float(row_weights),
                                                                                      dtype=cd, device=device)
        if active is not None:
            rw = rw * active
        for i, b in enumerate(blocks):
            g = logits[i].mul_((scale / plan.parts) * (rw / totals[b.part])[:, None])
            if i == 0:
                if t is None:
                    g[ar, aux.pos_col[a:z]] -= scale * rw
                else:
                    g.sub_(t * (scale * rw)[:, None])
            ua = units[b.anchor][b.anchor_offset + a: b.anchor_offset + z]
            grads[b.anchor][b.anchor_offset + a: b.anchor_offset + z].addmm_(g, units[b.cand])
            grads[b.cand].addmm_(g.T, ua)
    if tel is not None:
        aux.stats.update({key: torch.cat(v) for key, v in tel.items()})
    if not want:
        return loss, None
    return loss, [normalize_backward(g, u, inv) for g, u, inv in zip(grads, units, invs)]


def _telemetry(tel: dict, plan: Plan, aux: Aux, exps: list, totals: list, t, a: int, z: int, ar) -> None:
    """W's entropy and largest weight per row, from the chunk's exponentials (no extra product):
    ``W`` is the partition-averaged softmax restricted to the non-targets, renormalised."""
    k = z - a
    parts = plan.parts
    w_list = []
    for i, b in enumerate(plan.blocks):
        w = exps[i] / (totals[b.part][:, None] * parts)
        if i == 0:
            w = w.clone()
            if t is None:
                w[ar, aux.pos_col[a:z]] = 0.0
            else:
                w = torch.where(t > 0, torch.zeros_like(w), w)
        w_list.append(w)
    mass = sum(w.sum(dim=1) for w in w_list).clamp(min=torch.finfo(w_list[0].dtype).tiny)
    ent = torch.zeros(k, dtype=mass.dtype, device=mass.device)
    top = torch.zeros(k, dtype=mass.dtype, device=mass.device)
    for w in w_list:  # the blocks of one row: their entropies add (W is normalised over all of them)
        q = w / mass[:, None]
        ent += weight_entropy(q)
        top = torch.maximum(top, q.amax(dim=1))
    tel["entropy"].append(ent)
    tel["max_weight"].append(top)


def weight_summary(entropy: Tensor, max_weight: Tensor) -> dict[str, float]:
    """W telemetry over anchors: mean and 10/50/90 % quantiles of the entropy ``H_i = -sum_j W_ij log W_ij``,
    the effective number of negatives ``exp(H_i)`` and the largest weight ``max_j W_ij`` (plain floats)."""
    q = torch.tensor([0.1, 0.5, 0.9], dtype=entropy.dtype, device=entropy.device)
    out = {}
    for name, v in (("entropy", entropy), ("effective_negatives", entropy.exp()), ("max_weight", max_weight)):
        out[f"{name}_mean"] = float(v.mean())
        for level, value in zip((10, 50, 90), torch.quantile(v, q).tolist()):
            out[f"{name}_q{level}"] = value
    return out


def weight_entropy(w: Tensor) -> Tensor:
    """``-sum_j W_ij log W_ij`` per row (0 log 0 = 0)."""
    return -torch.where(w > 0, w * w.log(), torch.zeros_like(w)).sum(dim=1)


class StructuredLoss(torch.autograd.Function):
    """``weight * sum_i L_i`` (or the rows, ``weight=None``) with gradients set in the forward pass."""

    @staticmethod
    def forward(ctx, plan: Plan, aux: Aux, weight, reduction_rows, *tensors):
        """``reduction_rows``: per-row weights (N,) replacing the scalar ``weight`` (SupCon's mean over
        the rows with a positive)."""
        n = aux.row_ids.shape[0]
        rw = reduction_rows if reduction_rows is not None else weight
        loss, grads = structured_direction(plan, aux, list(tensors), rw, n)
        ctx.grads = grads
        ctx.dtypes = [t.dtype for t in tensors]
        value = (loss * reduction_rows.to(loss.dtype)).sum() if reduction_rows is not None else loss.sum() * weight
        return value.to(tensors[0].dtype)

    @staticmethod
    def backward(ctx, grad):
        grads = ctx.grads  # (rows, d) per tensor, kept with the graph (as the op's Fused node keeps dx, dc)
        out = [None if g is None else (g * grad).to(dt) for g, dt in zip(grads, ctx.dtypes)]
        return (None, None, None, None, *out)


def structured_rows(plan: Plan, aux: Aux, tensors: list[Tensor]) -> Tensor:
    """Per-row losses (reduction 'none'): backward recomputes with grad_output as the row weights."""
    return _Rows.apply(plan, aux, *tensors)


class _Rows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, aux, *tensors):
        ctx.plan, ctx.aux = plan, aux
        ctx.save_for_backward(*tensors)
        loss, _ = structured_direction(plan, aux, [t.detach() for t in tensors], None, aux.row_ids.shape[0])
        return loss.to(tensors[0].dtype)

    @staticmethod
    def backward(ctx, grad):
        tensors = ctx.saved_tensors
        with torch.no_grad():
            _, grads = structured_direction(ctx.plan, ctx.aux, list(tensors), grad.detach(),
                                            ctx.aux.row_ids.shape[0])
        return (None, None, *[g.to(t.dtype) for g, t in zip(grads, tensors)])
