r"""Negatives as practitioners shape them: sentence-transformers' MNRL and GIST, SupCon, soft targets.

The front end of :mod:`gradsurg.engine.candidates` (the chunked engine of the
softmax paradigm over structured candidate sets). It validates the arguments
with sentence-transformers' names, rules and error messages, gathers across
processes when asked, and turns each option into blocks, masks, offsets and
targets of one :class:`~gradsurg.engine.candidates.Plan`:

=====================  ==================================================================
option                 what changes in the paradigm (docs/paradigm.md)
=====================  ==================================================================
directions             the candidate set: one block per direction (q->d, q->q, d->q, d->d)
partition_mode         'joint': one softmax over all blocks; 'per_direction': one each, LSEs averaged
hardness_mode/strength W: logits ``+ alpha sg(s)`` on the chosen negatives (softmax tilted)
negative_mask, keys,   the candidate set: dropped candidates leave the partition function
guide                  (the pair / positive is never dropped)
labels                 the positive term: uniform over every candidate with the row's label
soft_targets           the positive term: a teacher's distribution over the candidates
=====================  ==================================================================

Options that are exactly one paradigm (:func:`mnrl_route`: one ``query_to_doc`` block with the
hardness tilt on every negative or on none, or symmetric InfoNCE; no per-entry option) run
:func:`gradsurg.paradigm_loss` instead (``paradigm.info_nce_hardness`` / ``info_nce``), on either
backend; every other configuration names its one-line reason (``dispatch.choose_structured``).

The reductions: 'mean' over the local anchors (``world / N_global`` per row when
gathered, so that DDP's gradient averaging gives the global mean, as
:func:`gradsurg.paradigm_loss`), 'sum', 'none'.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import distributed as comm  # mnrl's argument ``distributed`` would shadow the module's name
from . import paradigm as presets
from .api import paradigm_loss
from .engine import dispatch
from .engine.candidates import (Aux, Block, Plan, StructuredLoss, structured_direction, structured_rows,
                                weight_summary)
from .engine.torch_backend import DEFAULT_CHUNK_BYTES
from .engine.validation import (check_distributed, check_engine_options, check_finite_values, check_reduction,
                                check_rows_tensor)
from .vocabulary import compute_dtype

__all__ = ["mnrl", "mnrl_route", "gist", "supcon", "duplicate_keys", "texts_to_keys", "VALID_DIRECTIONS",
           "STRUCTURED_OPTIONS"]

VALID_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")
_HARD = {"in_batch_negatives": "other", "hard_negatives": "own", "all_negatives": "all"}
#: the keyword arguments of :func:`gradsurg.info_nce` that select this engine
STRUCTURED_OPTIONS = ("directions", "partition_mode", "hardness_mode", "hardness_strength", "negative_mask",
                      "keys", "guide", "margin_strategy", "margin", "labels", "soft_targets", "stats")


# ---------------------------------------------------------------------------------------------
# validation (sentence-transformers' rules and messages)

def check_mnrl_options(directions, partition_mode, hardness_mode, hardness_strength, where: str = "info_nce"):
    """sentence-transformers' MultipleNegativesRankingLoss rules, as ValueErrors naming the argument."""
    if isinstance(directions, str):
        directions = (directions,)
    if not isinstance(directions, (tuple, list)) or not directions:
        raise ValueError(f"{where}: directions: at least one direction must be specified "
                         f"(a tuple of {', '.join(VALID_DIRECTIONS)})")
    bad = set(directions) - set(VALID_DIRECTIONS)
    if bad:
        raise ValueError(f"{where}: invalid directions: {sorted(bad)}. Valid: {list(VALID_DIRECTIONS)}")
    if len(set(directions)) != len(directions):
        raise ValueError(f"{where}: directions lists a direction twice: {tuple(directions)}")
    if "query_to_doc" not in directions:
        raise ValueError(f"{where}: directions: 'query_to_doc' direction is required (contains the positive pair)")
    if partition_mode not in ("joint", "per_direction"):
        raise ValueError(f"{where}: partition_mode must be 'joint' or 'per_direction', got {partition_mode!r}")
    if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
        raise ValueError(
            f"{where}: partition_mode='per_direction' requires every direction's candidate pool to include the "
            "positive pair. 'query_to_query' and 'doc_to_doc' only contain same-type similarities and never include "
            "the positive, making the per-direction loss ill-defined. Use partition_mode='joint' instead."
        )
    if hardness_mode not in HARDNESS_MODES:
        raise ValueError(f"{where}: hardness_mode must be one of {list(HARDNESS_MODES)}, got {hardness_mode!r}")
    if isinstance(hardness_strength, bool) or not isinstance(hardness_strength, (int, float)) \
            or not math.isfinite(hardness_strength):
        raise ValueError(f"{where}: hardness_strength must be a finite number >= 0, got {hardness_strength!r}")
    if hardness_strength < 0.0:
        raise ValueError(f"{where}: hardness_strength must be non-negative, got {hardness_strength!r}")
    if hardness_mode is not None and hardness_strength == 0.0:
        warnings.warn(f"{where}: hardness_mode={hardness_mode!r} is set but hardness_strength=0.0, so hardness "
                      "weighting has no effect. Set hardness_strength to a positive value to enable it.",
                      UserWarning, stacklevel=3)
    return tuple(directions)


def _check_scale(scale, where):
    if isinstance(scale, Tensor):
        raise TypeError(f"{where}: a learnable (tensor) scale/temperature is not supported with directions, "
                        "masks, hardness, labels or soft targets; pass a float")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"{where}: scale must be a positive value (scale = 1 / temperature), got {scale!r}")
    return float(scale)


def check_temperature(temperature, where):
    """GIST's and SupCon's ``temperature``: a number > 0 (not a tensor: no learnable temperature here)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{where}: temperature must be a number > 0, got {temperature!r}")


def _columns(anchors, positives, negatives, where):
    """The embedding columns ``[anchors, positives, *negatives]`` validated (2-D, one d, dtype, device)."""
    if negatives is None:
        negs = []
    elif isinstance(negatives, Tensor):
        negs = [negatives]
    elif isinstance(negatives, (list, tuple)):
        negs = list(negatives)
    else:
        raise TypeError(f"{where}: hard negatives must be an (N, d) tensor or a list of them "
                        f"(sentence-transformers' columns), got {type(negatives).__name__}")
    cols = [("anchors", anchors), ("positives", positives)] + [(f"hard_negatives[{k}]", t) for k, t in enumerate(negs)]
    for name, t in cols:
        check_rows_tensor(name, t, where)
    n, d = anchors.shape
    if n == 0 or d == 0:
        raise ValueError(f"{where}: anchors must have N >= 1 rows and d >= 1, got shape {tuple(anchors.shape)}")
    for name, t in cols[1:]:
        if tuple(t.shape) != (n, d):
            raise ValueError(f"{where}: {name} must have the shape of anchors (N, d) = {(n, d)} (row i belongs to "
                             f"anchor i, sentence-transformers' columns), got {tuple(t.shape)}")
        if t.dtype != anchors.dtype or t.device != anchors.device:
            raise ValueError(f"{where}: {name} has dtype {t.dtype} on {t.device}, anchors {anchors.dtype} on "
                             f"{anchors.device}; use one dtype and device")
    return [t for _, t in cols]


def _checked(gathered: bool, group, like, where: str, fn, how: str = "gather_across_devices=True"):
    """``fn()`` (validation); when gathered (or on the ring: ``how``), its error (or success) is agreed on
    by every rank first."""
    if not gathered:
        return fn()
    try:
        out, err = fn(), None
    except (TypeError, ValueError) as exc:
        out, err = None, exc
    comm.agree(err, [], group, like if isinstance(like, Tensor) else None, f"{where}({how})")
    return out


def _gather(t: Tensor, group, counts: list[int]) -> Tensor:
    """Every rank's rows of ``t`` (each rank holds ``counts[rank]``: known from :func:`_gather_setup`)."""
    return comm.all_gather_with_grad(t, group, counts)


def _gather_setup(n, ncols, d, group, where):
    """``(offset, N_global, world, rows per rank)``: this rank's first row in the global batch, its size
    (checked across ranks), the world size and every rank's row count."""
    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    table = comm.exchange_ints([n, ncols, d], group)
    if len({row[1] for row in table}) > 1:
        raise ValueError(f"{where}: the number of hard-negative columns differs between ranks: "
                         f"{[row[1] for row in table]}")
    if len({row[2] for row in table}) > 1:
        raise ValueError(f"{where}: embedding sizes differ between ranks: {[row[2] for row in table]}")
    counts = [row[0] for row in table]
    return sum(counts[:rank]), sum(counts), world, counts


def _int_keys(keys, n_cols, n, device, where):
    if keys is None:
        return None
    if not isinstance(keys, (list, tuple)) or len(keys) != n_cols:
        raise ValueError(f"{where}: keys must be a list of {n_cols} int tensors (one per column: anchors, "
                         f"positives, each hard-negative column), got "
                         f"{len(keys) if isinstance(keys, (list, tuple)) else type(keys).__name__}")
    out = []
    for k, key in enumerate(keys):
        if not isinstance(key, Tensor) or key.dtype.is_floating_point or key.dtype == torch.bool \
                or tuple(key.shape) != (n,):
            raise ValueError(f"{where}: keys[{k}] must be an integer tensor of shape ({n},) (equal keys = "
                             f"identical texts), got {getattr(key, 'dtype', type(key).__name__)} "
                             f"{tuple(getattr(key, 'shape', ()))}")
        out.append(key.to(device=device, dtype=torch.int64))
    return out


def _guide_columns(guide, n_cols, n, device, where):
    if guide is None:
        return None
    if not isinstance(guide, (list, tuple)) or len(guide) != n_cols:
        raise ValueError(f"{where}: guide must be a list of {n_cols} (N, d_guide) tensors: the guide model's "
                         "embeddings of every column (anchors, positives, each hard-negative column)")
    d = None
    for k, g in enumerate(guide):
        if not isinstance(g, Tensor) or not g.is_floating_point() or g.dim() != 2 or g.shape[0] != n \
                or (d is not None and g.shape[1] != d):
            raise ValueError(f"{where}: guide[{k}] must be a floating ({n}, d_guide) tensor like the other "
                             f"guide columns, got {getattr(g, 'shape', type(g).__name__)}")
        d = g.shape[1]
    return [g.detach().to(device) for g in guide]


def _margin_options(margin_strategy, margin, where):
    if margin_strategy not in ("absolute", "relative"):
        raise ValueError(f"{where}: margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise ValueError(f"{where}: margin must be a finite number, got {margin!r}")
    return float(margin)


def _finish(plan: Plan, aux: Aux, tensors, reduction: str, weight: float, check_finite: bool, names, where,
            row_weight: Tensor | None = None):
    check_reduction(reduction, where)
    if check_finite:
        check_finite_values(list(zip(names, tensors)), where)
    dtype = tensors[0].dtype
    if reduction == "none":
        rows = structured_rows(plan, aux, tensors)
        return rows if row_weight is None else rows * row_weight.to(rows.dtype)
    w = 1.0 if reduction == "sum" else weight
    rw = None if row_weight is None else row_weight * w
    need = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if not need:
        loss, _ = structured_direction(plan, aux, list(tensors), None, aux.row_ids.shape[0])
        value = (loss * rw).sum() if rw is not None else loss.sum() * w
        return value.to(dtype)
    return StructuredLoss.apply(plan, aux, w, rw, *tensors)


# ---------------------------------------------------------------------------------------------
# which MNRL configurations are one paradigm (the one engine, both backends)

#: the per-batch options that change the candidate set or the target entry by entry
_PER_ENTRY = ("negative_mask", "keys", "guide", "labels", "soft_targets", "stats")


def mnrl_route(scale: float, directions, partition_mode: str, hardness_mode, hardness_strength: float,
               n_columns: int, per_entry=()) -> tuple:
    r"""``(paradigm, symmetric, None)`` when sentence-transformers' MNRL with these (validated) options
    is exactly one :class:`~gradsurg.Paradigm` on ``paradigm_loss``'s layout (candidates
    ``cat(positives, *hard-negative columns)``, anchor i's positive at column i, every other column
    a negative), else ``(None, None, why)``: the one-line reason it needs the structured engine.

    It fits where every negative of a row has one logit form:

    * ``directions=('query_to_doc',)`` (``partition_mode`` is then one partition either way): the tilt
      ``alpha sg(s_ij)`` must reach every negative or none. ``'all_negatives'`` tilts all (never the
      positive); ``'in_batch_negatives'`` all when there are no hard-negative columns (else the row's own
      hard negatives stay untilted); ``'hard_negatives'`` none when there are none (else only the row's
      own ones). Tilted: :func:`gradsurg.paradigm.info_nce_hardness` (``W`` the softmax at ``1/(scale +
      alpha)``), untilted: :func:`gradsurg.paradigm.info_nce`;
    * ``('query_to_doc', 'doc_to_query')`` with ``'per_direction'`` and no tilt: InfoNCE with
      ``symmetric=True`` (the doc row's candidates are the anchors; its log-sum-exp averaged with the
      query row's is the mean of the two directions' losses).

    ``per_entry``: the names of the per-batch options given (masks, keys, guide, labels, soft targets,
    telemetry); any of them needs the structured engine.
    """
    if per_entry:
        return None, None, (f"{per_entry[0]}= drops or re-targets candidates entry by entry, which a paradigm "
                            "(one candidate set, the positive at column i) does not express")
    tilt = 0.0
    if hardness_mode is not None and hardness_strength > 0:
        if hardness_mode == "all_negatives" or (hardness_mode == "in_batch_negatives" and n_columns == 0):
            tilt = float(hardness_strength)
        elif hardness_mode == "in_batch_negatives":
            return None, None, ("hardness_mode='in_batch_negatives' with hard-negative columns tilts the other "
                                "rows' candidates but not the row's own hard negatives: two logit forms in one row")
        elif n_columns > 0:  # 'hard_negatives' with columns; without columns it tilts nothing
            return None, None, ("hardness_mode='hard_negatives' tilts only the row's own hard negatives while the "
                                "in-batch negatives stay untilted: two logit forms in one row")
    dirs = tuple(directions)
    tau = 1.0 / scale
    if dirs == ("query_to_doc",):
        return (presets.info_nce_hardness(tau, tilt) if tilt else presets.info_nce(tau)), False, None
    if set(dirs) == {"query_to_doc", "doc_to_query"} and partition_mode == "per_direction":
        if tilt:
            return None, None, ("hardness tilts query_to_doc only, doc_to_query stays untilted: the two directions "
                                "of symmetric=True would need two paradigms")
        return presets.info_nce(tau), True, None
    if partition_mode == "per_direction":
        return None, None, (f"directions={dirs} with partition_mode='per_direction' averages the log-sum-exps of "
                            "blocks whose candidates are not those of the paradigm's two directions")
    return None, None, (f"directions={dirs} with partition_mode='joint' puts several candidate blocks in one "
                        "softmax (query_to_query / doc_to_doc with dropped self-pairs, doc_to_query repeating "
                        "the positive)")


#: the front door's own arguments that :func:`mnrl` sets itself (not backend options)
_FRONT_DOOR = ("paradigm", "symmetric", "learn", "caller", "negatives")


def _structured_only(options: dict, ring: bool, why: str, where: str) -> None:
    """The structured engine (torch, gathered or local) takes ``chunk_bytes`` and nothing else of the
    paradigm engine: a backend option or ``distributed='ring'`` raises naming it and ``why`` these
    options are not one paradigm."""
    if options:
        name = sorted(options)[0]
        raise ValueError(
            f"{where}: the backend option {name}= reaches the paradigm engine only, and these options need the "
            f"structured engine ({why}), which takes chunk_bytes= and nothing else")
    if ring:
        raise ValueError(
            f"{where}: distributed='ring' runs the paradigm engine only, and these options need the structured "
            f"engine ({why}); use distributed='gather' (gather_across_devices=True)")


# ---------------------------------------------------------------------------------------------
# MultipleNegativesRankingLoss (and symmetric InfoNCE, masks, guide, labels, soft targets)

def mnrl(anchors: Tensor, positives: Tensor, hard_negatives=None, *, scale: float = 20.0,
         directions=("query_to_doc",), partition_mode: str = "joint", hardness_mode: str | None = None,
         hardness_strength: float = 0.0, negative_mask: Tensor | None = None, keys=None, guide=None,
         margin_strategy: str = "absolute", margin: float = 0.0, labels: Tensor | None = None,
         soft_targets: Tensor | None = None, reduction: str = "mean", backend: str = "auto",
         check_finite: bool = True, gather_across_devices: bool = False, group=None,
         chunk_bytes: int | None = None, stats: dict | None = None, distributed: str | None = None,
         where: str = "info_nce", **options) -> Tensor:
    r"""sentence-transformers' ``MultipleNegativesRankingLoss`` (6.3) in the chunked engine.

    Equal (value and gradients) to ``MultipleNegativesRankingLoss(model, scale, directions=...,
    partition_mode=..., hardness_mode=..., hardness_strength=...).compute_loss_from_embeddings(
    [anchors, positives, *hard_negatives], None)``. See :func:`gradsurg.info_nce` for the arguments.
    Where the options are one paradigm (:func:`mnrl_route`: one direction, the hardness tilt on every
    negative or none, no per-entry options) it runs :func:`gradsurg.paradigm_loss` (either backend;
    ``chunk_bytes`` and the other backend ``options`` (``normalize``, Triton's ``path``, ``block_n``,
    ``block_m``) pass through, checked by the chosen backend; ``distributed='gather'`` or ``'ring'``);
    else the structured engine (torch), which takes ``chunk_bytes`` and gathers
    (``distributed='gather'`` = ``gather_across_devices=True``), and refuses any other backend option and
    ``distributed='ring'`` with the reason these options are not one paradigm.
    """
    check_distributed(distributed, where)
    gather_across_devices = gather_across_devices or distributed == "gather"
    ring = distributed == "ring"
    if group is not None and not (gather_across_devices or ring):
        raise ValueError(f"{where}: group= is only used with gather_across_devices=True or distributed=")
    taken = sorted(set(options) & set(_FRONT_DOOR))
    if taken:
        raise TypeError(f"{where}: unexpected keyword argument(s) {', '.join(taken)} with sentence-transformers' "
                        "options")
    gathered = gather_across_devices and comm.gather_active(group)
    agreed = gathered or (ring and comm.gather_active(group))  # validation errors raised on every rank
    per_entry = tuple(k for k, v in (("negative_mask", negative_mask), ("keys", keys), ("guide", guide),
                                     ("labels", labels), ("soft_targets", soft_targets), ("stats", stats))
                      if v is not None)

    def validate():
        sc = _check_scale(scale, where)
        dirs = check_mnrl_options(directions, partition_mode, hardness_mode, hardness_strength, where)
        cs = _columns(anchors, positives, hard_negatives, where)
        route = mnrl_route(sc, dirs, partition_mode, hardness_mode, hardness_strength, len(cs) - 2, per_entry)
        if route[0] is None:
            dispatch.choose_structured(backend, cs[0], where, route[2])
            _structured_only(options, ring, route[2], where)
        if chunk_bytes is not None:
            check_engine_options(chunk_bytes, where=where)
        special = [k for k, v in (("labels", labels), ("soft_targets", soft_targets)) if v is not None]
        if special and dirs != ("query_to_doc",):
            raise ValueError(f"{where}: {special[0]}= is defined for directions=('query_to_doc',) only, got {dirs}")
        if labels is not None and soft_targets is not None:
            raise ValueError(f"{where}: give labels= or soft_targets=, not both")
        nn_ = cs[0].shape[0]
        kc = _int_keys(keys, len(cs), nn_, cs[0].device, where)
        gc = _guide_columns(guide, len(cs), nn_, cs[0].device, where)
        mg = _margin_options(margin_strategy, margin, where)
        lab = None if labels is None else _labels(labels, nn_, cs[0].device, where)
        return sc, dirs, cs, kc, gc, mg, lab, route

    scale, directions, cols, key_cols, guide_cols, margin, lab, route = _checked(
        agreed, group, anchors, where, validate, "distributed='ring'" if ring else "gather_across_devices=True")
    x = cols[0]
    n, d = x.shape
    ncols = len(cols) - 1
    device = x.device
    if gathered:  # every rank's column count agrees (else all raise) before the route is taken
        offset, n_global, world, counts = _gather_setup(n, ncols, d, group, where)
    else:
        offset, n_global, world, counts = 0, n, 1, None
    m = n_global * ncols
    paradigm, symmetric, _ = route
    if ring and paradigm is not None:  # routed (checked in validate): the front door's ring agrees on the sizes
        negs = None if ncols == 1 else (cols[2] if ncols == 2 else torch.cat(cols[2:]))
        options = options if chunk_bytes is None else dict(options, chunk_bytes=chunk_bytes)
        return paradigm_loss(cols[0], cols[1], negs, paradigm=paradigm, symmetric=symmetric, reduction=reduction,
                             backend=backend, check_finite=check_finite, group=group, distributed="ring",
                             caller=where, **options)
    if m + (n_global - 1 if "query_to_query" in directions else 0) < 2 and labels is None:
        raise ValueError(f"{where}: the batch has no negative (N = {n_global}, no hard negatives); need N >= 2 "
                         "or a hard-negative column")
    if paradigm is not None and not (symmetric and n_global < 2):  # one anchor: its doc row has no negative
        negs = None if ncols == 1 else (cols[2] if ncols == 2 else torch.cat(cols[2:]))
        options = options if chunk_bytes is None else dict(options, chunk_bytes=chunk_bytes)
        return paradigm_loss(cols[0], cols[1], negs, paradigm=paradigm, symmetric=symmetric, reduction=reduction,
                             backend=backend, check_finite=check_finite,
                             gather_across_devices=gather_across_devices, group=group, caller=where, **options)
    if paradigm is not None:
        why = "symmetric with one anchor (its doc row has no negative)"
        dispatch.choose_structured(backend, x, where, why)
        _structured_only(options, False, why, where)
    if chunk_bytes is None:
        chunk_bytes = DEFAULT_CHUNK_BYTES
    if gathered:
        q_all = _gather(cols[0], group, counts)
        docs = [_gather(c, group, counts) for c in cols[1:]]
        weight = world / n_global
    else:
        q_all, docs, weight = cols[0], cols[1:], 1.0 / n
    docs_all = torch.cat(docs) if len(docs) > 1 else docs[0]
    ids = torch.arange(n_global, device=device)
    rows = torch.arange(offset, offset + n, device=device)
    owners = [ids, ids.repeat(ncols)]
    parts = {name: (k if partition_mode == "per_direction" else 0) for k, name in enumerate(
        [dn for dn in VALID_DIRECTIONS if dn in directions])}
    hard = _HARD.get(hardness_mode) if hardness_strength > 0 else None
    blocks = [Block(0, 1, offset, parts["query_to_doc"], pair=True, hard=hard)]
    if "query_to_query" in directions:
        blocks.append(Block(0, 0, offset, parts["query_to_query"], exclude_own=True))
    if "doc_to_query" in directions:
        blocks.append(Block(1, 0, offset, parts["doc_to_query"], pair=True))
    if "doc_to_doc" in directions:
        blocks.append(Block(1, 1, offset, parts["doc_to_doc"], exclude_own=True))
    aux = Aux(row_ids=rows, owners=owners, pos_col=rows)
    if key_cols is not None:
        kq = _gather(key_cols[0], group, counts) if gathered else key_cols[0]
        kd = [_gather(k, group, counts) if gathered else k for k in key_cols[1:]]
        aux.cand_keys = [kq, torch.cat(kd)]
        aux.row_keys = torch.stack([key_cols[0], key_cols[1]], dim=1)
    if guide_cols is not None:
        gq = _gather(guide_cols[0], group, counts) if gathered else guide_cols[0]
        gd = [_gather(g, group, counts) if gathered else g for g in guide_cols[1:]]
        aux.guides = [gq, torch.cat(gd)]
        aux.guide_pair = (0, offset, 1)

    def per_candidate():  # the (N, M) inputs: M is known once gathered
        if negative_mask is not None:
            if not isinstance(negative_mask, Tensor) or negative_mask.dtype != torch.bool \
                    or tuple(negative_mask.shape) != (n, m):
                raise ValueError(
                    f"{where}: negative_mask must be a bool tensor of shape (N, M) = ({n}, {m}) over the candidates "
                    "cat(positives, *hard_negatives) (gathered: every rank's positives, then each negative column "
                    "of every rank), True = drop; got "
                    f"{getattr(negative_mask, 'dtype', type(negative_mask).__name__)} "
                    f"{tuple(getattr(negative_mask, 'shape', ()))}")
        return None if soft_targets is None else _soft(soft_targets, n, m, device, where)

    soft = _checked(gathered, group, anchors, where, per_candidate)
    if negative_mask is not None:
        aux.negative_mask = negative_mask.to(device)
    target = "pair"
    if lab is not None:
        aux.row_labels = lab
        lab_all = _gather(lab, group, counts) if gathered else lab
        aux.cand_labels = torch.cat([lab_all, lab_all.new_full((m - n_global,), -1)])
        target = "labels"
    if soft is not None:
        aux.soft = soft
        target = "soft"
    if stats is not None:
        aux.stats["want"] = True
    plan = Plan(tuple(blocks), scale, float(hardness_strength) if hard else 0.0, target,
                len(set(b.part for b in blocks)), margin_strategy, margin, chunk_bytes)
    tensors = [q_all, docs_all]
    out = _finish(plan, aux, tensors, reduction, weight, check_finite, ["anchors", "candidates"], where)
    if stats is not None:
        _summarise(aux.stats, stats)
    return out


def _labels(labels, n, device, where):
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or tuple(labels.shape) != (n,):
        raise ValueError(f"{where}: labels must be an integer tensor of shape ({n},), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    lab = labels.to(device=device, dtype=torch.int64)
    if bool((lab < 0).any()):
        raise ValueError(f"{where}: labels must be >= 0 (negative values are reserved), got min {int(lab.min())}")
    return lab


def _soft(soft, n, m, device, where):
    if not isinstance(soft, Tensor) or not soft.is_floating_point() or tuple(soft.shape) != (n, m):
        raise ValueError(f"{where}: soft_targets must be a floating tensor of shape (N, M) = ({n}, {m}) over the "
                         f"candidates cat(positives, *hard_negatives), got {getattr(soft, 'shape', type(soft))}")
    if not bool(torch.isfinite(soft).all()) or bool((soft < 0).any()):
        raise ValueError(f"{where}: soft_targets must be finite and >= 0")
    sums = soft.sum(dim=1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        raise ValueError(f"{where}: soft_targets must be row-stochastic (each row sums to 1), row sums range "
                         f"[{float(sums.min()):.6g}, {float(sums.max()):.6g}]")
    return soft.detach().to(device)


def _summarise(raw: dict, out: dict) -> None:
    """W telemetry (:func:`~gradsurg.engine.candidates.weight_summary`) into the caller's dict."""
    if raw.get("entropy") is not None:
        out.update(weight_summary(raw["entropy"], raw["max_weight"]))


# ---------------------------------------------------------------------------------------------
# GISTEmbedLoss

def gist(anchors: Tensor, positives: Tensor, hard_negatives=None, *, guide, temperature: float = 0.01,
         margin_strategy: str = "absolute", margin: float = 0.0, contrast_anchors: bool = True,
         contrast_positives: bool = True, reduction: str = "mean", backend: str = "auto",
         check_finite: bool = True, gather_across_devices: bool = False, group=None,
         chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    r"""sentence-transformers' ``GISTEmbedLoss`` / ``CachedGISTEmbedLoss`` (6.3), chunked.

    ``guide``: the guide model's embeddings of every column ``[anchors, positives,
    *hard_negatives]``. One softmax at ``1/temperature`` over anchor->positives,
    anchor->anchors (``contrast_anchors``, self dropped), positive->positives
    (``contrast_positives``, self dropped) and anchor->each hard-negative column; a
    candidate whose guide similarity to the row exceeds the guide's anchor-positive
    similarity minus ``margin`` (``'absolute'``) or minus ``|.| * margin``
    (``'relative'``) is dropped, the positive never. Gathered: the candidates
    (positives, negatives) of every rank, the anchors local, as sentence-transformers.
    """
    where = "gist"
    if group is not None and not gather_across_devices:
        raise ValueError(f"{where}: group= is only used with gather_across_devices=True")
    gathered = gather_across_devices and comm.gather_active(group)

    def validate():
        check_temperature(temperature, where)
        cs = _columns(anchors, positives, hard_negatives, where)
        dispatch.choose_structured(backend, cs[0], where)
        check_engine_options(chunk_bytes, where=where)
        gc = _guide_columns(guide, len(cs), cs[0].shape[0], cs[0].device, where)
        if gc is None:
            raise ValueError(f"{where}: guide= (the guide model's embeddings of every column) is required")
        return cs, gc, _margin_options(margin_strategy, margin, where)

    cols, guide_cols, margin = _checked(gathered, group, anchors, where, validate)
    x = cols[0]
    n, d = x.shape
    device = x.device
    if gathered:
        offset, n_global, world, counts = _gather_setup(n, len(cols) - 1, d, group, where)
        docs = [_gather(c, group, counts) for c in cols[1:]]
        gdocs = [_gather(g, group, counts) for g in guide_cols[1:]]
        weight = world / n_global
    else:
        offset, n_global, docs, gdocs, weight = 0, n, cols[1:], guide_cols[1:], 1.0 / n
    # tensors: 0 local anchors, 1 positives (global), 2.. each negative column (global)
    tensors = [cols[0]] + list(docs)
    guides = [guide_cols[0]] + list(gdocs)
    ids = torch.arange(n_global, device=device)
    rows = torch.arange(offset, offset + n, device=device)
    owners = [rows, ids] + [ids] * (len(docs) - 1)
    blocks = [Block(0, 1, 0, pair=True)]
    if contrast_anchors:
        blocks.append(Block(0, 0, 0, exclude_own=True))
    if contrast_positives:
        blocks.append(Block(1, 1, offset, exclude_own=True))
    blocks += [Block(0, 2 + k, 0) for k in range(len(docs) - 1)]
    # the local anchors are rows 0..n of tensor 0, whose "row ids" are global ids: pos_col indexes tensor 1
    aux = Aux(row_ids=rows, owners=owners, pos_col=rows, guides=guides, guide_pair=(0, 0, 1))
    plan = Plan(tuple(blocks), 1.0 / float(temperature), 0.0, "pair", 1, margin_strategy, margin, chunk_bytes)
    names = ["anchors", "positives"] + [f"hard_negatives[{k}]" for k in range(len(docs) - 1)]
    return _finish(plan, aux, tensors, reduction, weight, check_finite, names, where)


# ---------------------------------------------------------------------------------------------
# SupCon

def supcon(features: Tensor, labels: Tensor, *, temperature: float = 0.1, reduction: str = "mean",
           backend: str = "auto", check_finite: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    r"""Supervised contrastive loss (Khosla et al., 2020), as pytorch-metric-learning's ``SupConLoss``.

    With ``s`` the cosine similarities of ``features`` (N, d), ``l = s / temperature``
    and ``P_i = {j != i : labels_j = labels_i}``:

    .. math::

        L_i = -\frac{1}{|P_i|} \sum_{p \in P_i} \Big(l_{ip} - \mathrm{LSE}_{k \ne i}\, l_{ik}\Big)

    (0 for rows without a positive). ``'mean'`` averages over the rows whose loss is
    positive (pytorch-metric-learning's ``AvgNonZeroReducer``: here the rows with at
    least one positive); 0 when no row has a positive or no pair is negative.
    Gradient: ``dL_i/ds_ij = (1/tau)(p_ij - [j in P_i]/|P_i|)``, set chunk by chunk.
    """
    where = "supcon"
    check_temperature(temperature, where)
    if not isinstance(features, Tensor) or not features.is_floating_point() or features.dim() != 2 \
            or features.shape[0] == 0:
        raise ValueError(f"{where}: features must be a floating (N, d) tensor with N >= 1, got "
                         f"{getattr(features, 'shape', type(features).__name__)}")
    check_reduction(reduction, where)  # before the zero-loss shortcut, which skips _finish
    check_engine_options(chunk_bytes, where=where)
    n = features.shape[0]
    lab = _labels(labels, n, features.device, where)
    dispatch.choose_structured(backend, features, where)
    counts = torch.bincount(lab)[lab] - 1  # positives per row
    active = counts > 0
    n_active = int(active.sum())
    ids = torch.arange(n, device=features.device)
    aux = Aux(row_ids=ids, owners=[ids], pos_col=ids, row_labels=lab, cand_labels=lab)
    plan = Plan((Block(0, 0, 0, exclude_own=True),), 1.0 / float(temperature), 0.0, "labels", 1,
                chunk_bytes=chunk_bytes)
    if n_active == 0 or bool((lab == lab[0]).all()):  # no positive pair, or no negative pair: PML's zero loss
        zero = (features * 0).sum()
        return zero if reduction != "none" else (features * 0).sum(dim=1)
    row_weight = None
    if reduction == "mean":
        row_weight = active.to(compute_dtype(features.dtype)) / n_active
    return _finish(plan, aux, [features], reduction, 1.0, check_finite, ["features"], where, row_weight=row_weight)


# ---------------------------------------------------------------------------------------------
# keys for duplicate masking

def texts_to_keys(*columns: Sequence[str]) -> list[Tensor]:
    """Integer keys for columns of texts: equal texts get equal keys (across columns)."""
    table: dict = {}
    return [torch.tensor([table.setdefault(t, len(table)) for t in col], dtype=torch.int64) for col in columns]


def duplicate_keys(features: Sequence[dict]) -> list[Tensor]:
    """Integer keys for tokenised columns (``input_ids`` with an ``attention_mask``): rows with identical
    token ids (padding ignored) get equal keys, across columns. The hook :class:`GradsurgLoss` and the
    trainer use for ``mask_duplicates=True``."""
    table: dict = {}
    out = []
    for k, f in enumerate(features):
        ids = f.get("input_ids") if hasattr(f, "get") else None
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            raise ValueError(f"mask_duplicates: column {k} has no 2-D input_ids to compare; pass keys= "
                             "(texts_to_keys) instead")
        mask = f.get("attention_mask")
        rows = []
        for r in range(ids.shape[0]):
            row = ids[r] if mask is None else ids[r][mask[r].bool()]
            rows.append(table.setdefault(tuple(row.tolist()), len(table)))
        out.append(torch.tensor(rows, dtype=torch.int64, device=ids.device))
    return out
