r"""The front door: every contrastive loss of gradsurg enters here.

:func:`paradigm_loss` validates the arguments once, applies the autocast
policy, gathers the candidates across ranks when asked, splits the loss into
its directions (one, or two when ``symmetric``) with their row weights, and
runs one autograd node per direction (:mod:`gradsurg.engine.op`) on the
backend the dispatcher picks (:mod:`gradsurg.engine.dispatch`). Each factor
is applied here and only here: the reduction's ``1/N``, the symmetric
``1/2``, the DDP scale ``W/N`` when gathered; ``grad_output`` in the node.

Gathered candidates (``gather_across_devices=True``)
----------------------------------------------------
The global batch is the concatenation of the ranks' batches in rank order;
its candidate set is **the positives of all ranks in rank order, then the
hard negatives of all ranks in rank order**. Rank r computes the loss of its
own anchors against the global candidates (its own positives placed first,
so that row i's positive is candidate i; the losses do not depend on the
order of the negatives); with ``symmetric=True`` the reverse direction uses
the anchors of all ranks as candidates. The gradient for the gathered rows is
reduce-scattered (SUM) to their owners in the backward pass. With
``reduction='mean'`` rank r returns ``L_r = (W / N) sum_{i in r} L_i`` (N the
global number of anchors), so that DDP's averaging of parameter gradients
gives exactly the single-process gradient of the global mean, for even and
uneven batches; 'sum' returns the local sum; 'none' the local rows. Input
errors on one rank are raised on every rank (no hang); every rank must call
the loss, and back-propagate through it when gradients are wanted.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import distributed as comm  # paradigm_loss's argument ``distributed`` would shadow the module's name
from .engine import dispatch
from .engine.directions import directions
from .engine.op import paradigm_call, run
from .engine.validation import (autocast_inputs, check_backend_options, check_distributed, check_embeddings,
                                check_engine_options, check_reduction_and_backend)
from .paradigm import Paradigm
from .vocabulary import FLOAT_DTYPES

__all__ = ["paradigm_loss"]



def paradigm_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    paradigm: Paradigm,
    symmetric: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    check_finite: bool = True,
    gather_across_devices: bool = False,
    group=None,
    learn: dict | None = None,
    distributed: str | None = None,
    caller: str = "paradigm_loss",
    **options,
) -> Tensor:
    r"""A contrastive loss whose gradient is set from GD, W and R.

    Candidates are ``cat(positives, negatives)`` (M = N + K rows); row i's
    positive is candidate i and every other candidate is a negative of anchor
    i. With ``s_ij = cos(anchors_i, candidates_j)`` the gradient is

    .. math::

        \frac{\partial L}{\partial s_{ij}} = \frac{1}{N} GD_i (W_{ij} - [j=i] R_i)

    (for ``reduction='mean'``), back-propagated through the cosine to the raw
    embeddings. The value is the true loss when ``paradigm`` is a known loss
    (``paradigm.loss_name``), else the surrogate
    ``GD_i (sum_{j!=i} W_ij s_ij - R_i s_ii)``.

    Args:
        anchors: ``(N, d)`` raw embeddings.
        positives: ``(N, d)``; row i is anchor i's positive.
        negatives: optional ``(K, d)`` extra (hard) negatives shared by all anchors.
            Without ``requires_grad`` (a queue, :class:`gradsurg.NegativeQueue`)
            they cost no gradient product.
        paradigm: a :class:`gradsurg.Paradigm` (e.g. ``gradsurg.paradigm.info_nce()``).
        symmetric: average the anchor->candidates and positive->anchors
            directions (CLIP style); the second uses the anchors as candidates.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` (per-anchor losses, shape (N,)).
        backend: ``'auto'`` (Triton for CUDA tensors when available, else
            torch), ``'torch'`` or ``'triton'``; see ``gradsurg doctor``.
        check_finite: raise ``ValueError`` on NaN/inf inputs (one extra pass,
            inside the operator: no graph break under ``torch.compile``).
        gather_across_devices: with ``torch.distributed`` initialised, the
            candidates (positives, hard negatives; anchors too when symmetric)
            of all ranks are gathered so each anchor sees the global batch,
            with exact gradients (see the module docstring for the layout and
            the DDP scaling). No effect without a process group.
        group: the process group for ``gather_across_devices`` / ``distributed`` (default: the world).
        learn: learnable hyper-parameters by name, each a 0-dim floating tensor
            (e.g. ``{'temperature': 1 / logit_scale.exp()}``, or ``{'scale': t,
            'bias': b}`` for SigLIP) whose value replaces the paradigm's own and
            whose exact gradient is returned (:attr:`Paradigm.learnable` lists
            what a paradigm accepts; torch backend). Values are checked inside
            the operator (temperature and scale > 0, all finite).
        distributed: how the candidates of every rank are reached: ``'gather'``
            (the same as ``gather_across_devices=True``) or ``'ring'``: every
            rank holds its own candidates and one peer's block at a time
            (forward and backward), passed around the ring of processes with
            the transfer overlapped with compute (:mod:`gradsurg.engine.ring`;
            InfoNCE, ArcCon, ``paradigm.info_nce_hardness`` and SigLIP, learnable hyper-parameters included;
            options ``chunk_bytes``, ``normalize``). Same values and gradients
            as ``'gather'``. No effect without a process group.
        caller: the name errors start with: the function the user called
            (``gradsurg.info_nce`` passes ``"info_nce"``, a module its class name);
            a wrapper of its own passes its name.
        **options: backend options, e.g. ``chunk_bytes`` for the torch
            backend; an option the chosen backend does not know raises.

    Returns:
        The reduced loss (a scalar) or, for ``reduction='none'``, shape
        ``(N,)``; in the inputs' dtype, or float32 under ``torch.autocast``.
    """
    if not isinstance(caller, str) or not caller:
        raise TypeError(f"paradigm_loss: caller must be a non-empty str (the name errors give), got {caller!r}")
    where = caller
    if not isinstance(paradigm, Paradigm):
        raise TypeError(
            f"{where}: paradigm must be a gradsurg.Paradigm (e.g. gradsurg.paradigm.info_nce()), "
            f"got {type(paradigm).__name__}"
        )
    if not isinstance(symmetric, bool):
        raise TypeError(f"{where}: symmetric must be a bool, got {type(symmetric).__name__}")
    check_reduction_and_backend(reduction, backend, where)
    check_distributed(distributed, where)
    gather_across_devices = gather_across_devices or distributed == "gather"
    if group is not None and not (gather_across_devices or distributed == "ring"):
        raise ValueError(f"{where}: group= is only used with gather_across_devices=True or distributed='ring'")
    names, hyper = _learnable(paradigm, learn, anchors, where)
    reserved = sorted(set(options) & {"hyper_grad", "grad_rows"})
    if reserved:
        raise ValueError(f"{where}: {', '.join(reserved)} are set by the front door, not options")
    (anchors, positives, negatives), value_dtype = autocast_inputs([anchors, positives, negatives])
    if distributed == "ring" and comm.gather_active(group):
        loss = _ring(anchors, positives, negatives, paradigm, symmetric, reduction, backend, check_finite, group,
                     names, hyper, options, where)
        return loss.to(value_dtype or anchors.dtype)
    if gather_across_devices and comm.gather_active(group):
        x, c, reverse, weight, n_pos = _gathered(anchors, positives, negatives, symmetric, reduction, check_finite,
                                                 group, where)
        check = ""  # checked on every rank before the collectives
    else:
        negatives = check_embeddings(anchors, positives, negatives, symmetric=symmetric, check_finite=False,
                                     where=where)
        x = anchors
        c = positives if negatives is None else torch.cat([positives, negatives], dim=0)
        reverse, weight = None, 1.0 / x.shape[0]
        n_pos = positives.shape[0] if negatives is not None and not negatives.requires_grad else None
        check = where if check_finite else ""
    if reduction == "sum":
        weight = 1.0
    # detached negatives (a queue) on every rank: only the positives' rows of dc need a product
    grad_rows = None if n_pos is None else [n_pos] + ([-1] if symmetric else [])
    impl, _ = dispatch.choose(backend, x, paradigm, where)
    check_backend_options(options, impl.OPTIONS, impl.NAME, where)
    call = paradigm_call(paradigm, impl.NAME, options, names, where)
    loss = run(directions(x, c, symmetric, reverse), reduction, weight, call, check, hyper, grad_rows)
    return loss.to(value_dtype or x.dtype)


def _learnable(paradigm: Paradigm, learn, anchors, where: str):
    """``(names, values (k,) or None)`` of the learnable hyper-parameters ``learn``, validated
    without reading their values (no graph break under ``torch.compile``)."""
    if learn is None or not learn:
        return (), None
    if not isinstance(learn, dict):
        raise TypeError(f"{where}: learn must be a dict of name -> 0-dim tensor, got {type(learn).__name__}")
    allowed = paradigm.learnable
    values = []
    for name, value in learn.items():
        if name not in allowed:
            raise ValueError(
                f"{where}: {name!r} cannot be learned with {paradigm!r}; learnable: "
                f"{', '.join(allowed) or 'none (only InfoNCE and ArcCon temperatures, SigLIP scale and bias)'}"
            )
        if not isinstance(value, Tensor) or value.numel() != 1 or value.dim() > 1 or not value.is_floating_point():
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{where}: the learnable {name} must be a 0-dim floating tensor, got {shape}")
        if isinstance(anchors, Tensor) and value.device != anchors.device:
            raise ValueError(f"{where}: the learnable {name} is on {value.device}, the embeddings on {anchors.device}")
        values.append(value.reshape(()))
    return tuple(learn), torch.stack(values)


def _gathered(anchors, positives, negatives, symmetric, reduction, check_finite, group, where="paradigm_loss"):
    """``(anchors, candidates, reverse candidates or None, mean weight, n_pos)`` over every rank's batch;
    ``n_pos``: the number of gathered positives when no rank's negatives need a gradient, else None.
    Errors start with ``<where>(gather_across_devices=True)``."""
    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    negatives, n_r, k_r, table = _agree(anchors, positives, negatives, symmetric, check_finite, group,
                                        f"{where}(gather_across_devices=True)")
    n_total, k_total = sum(n_r), sum(k_r)
    n_max, k_max = max(n_r), max(k_r)
    pad = comm.pad_rows
    parts = ([pad(anchors, n_max)] if symmetric else []) + [pad(positives, n_max)]
    if k_max:
        parts.append(pad(negatives, k_max) if negatives is not None
                     else anchors.new_zeros((k_max, anchors.shape[1])))
    gathered = comm.all_gather_blocks(torch.cat(parts) if len(parts) > 1 else parts[0], group)
    off_p = n_max if symmetric else 0
    off_z = off_p + n_max
    order = [rank] + [q for q in range(world) if q != rank]  # own rows first: row i's positive is candidate i
    pos = [gathered[q, off_p: off_p + n_r[q]] for q in order]
    neg = [gathered[q, off_z: off_z + k_r[q]] for q in range(world) if k_r[q]]
    candidates = torch.cat(pos + neg)
    reverse = torch.cat([gathered[q, : n_r[q]] for q in order]) if symmetric else None
    detached = k_total > 0 and not any(row[5] for row in table)
    return anchors, candidates, reverse, world / n_total, (n_total if detached else None)


def _ring(anchors, positives, negatives, paradigm, symmetric, reduction, backend, check_finite, group, names,
          hyper, options, caller="paradigm_loss"):
    """``distributed='ring'``: the loss of this rank's anchors over every rank's candidates, one block at a
    time (:mod:`gradsurg.engine.ring`), reduced as the gather path reduces."""
    from .engine import ring

    where = f"{caller}(distributed='ring')"
    why = ring.supports(paradigm)
    if why:
        raise ValueError(f"{where}: {why}")
    if backend == "triton":
        raise ValueError(f"{where}: the ring runs on the torch engine; use backend='auto' or 'torch'")
    check_backend_options(options, ring.OPTIONS, "torch", where)  # the ring runs on the torch engine
    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    negatives, n_r, k_r, _ = _agree(anchors, positives, negatives, symmetric, check_finite, group, where)
    if negatives is None:
        negatives = anchors.new_zeros((0, anchors.shape[1]))
    spec = dict(group=group, world=world, rank=rank, n_r=n_r, k_r=k_r, paradigm=paradigm, names=names,
                symmetric=symmetric, normalize=options.get("normalize", True), where=where,
                chunk_bytes=options.get("chunk_bytes", ring.torch_backend.DEFAULT_CHUNK_BYTES))
    check_engine_options(spec["chunk_bytes"], spec["normalize"], where)
    if reduction == "none":
        first, second = ring.ring_rows(anchors, positives, negatives, hyper, spec)
        return 0.5 * (first + second) if symmetric else first
    weight = (world / sum(n_r) if reduction == "mean" else 1.0) * (0.5 if symmetric else 1.0)
    spec["weights"] = [weight] * (2 if symmetric else 1)
    leaves = [t for t in (anchors, positives, negatives, hyper) if isinstance(t, Tensor)]
    spec["want_grad"] = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
    return ring.ring_loss(anchors, positives, negatives, hyper, spec)


def _agree(anchors, positives, negatives, symmetric, check_finite, group, where):
    """Validate every rank's inputs together (an error on one rank is raised on all): ``(negatives or None,
    rows per rank, negatives per rank, the exchanged table)``; errors start with ``where``."""
    err = _local_error(anchors, positives, negatives, check_finite, where)
    if negatives is not None and err is None and negatives.shape[0] == 0:
        negatives = None
    leaves = [t for t in (anchors, positives, negatives) if isinstance(t, Tensor)]
    want = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
    ok = err is None
    info = [
        anchors.shape[0] if ok else 0,
        negatives.shape[0] if ok and negatives is not None else 0,
        anchors.shape[1] if ok else 0,
        FLOAT_DTYPES.index(anchors.dtype) if ok and anchors.dtype in FLOAT_DTYPES else -1,
        int(want),
        int(ok and negatives is not None and negatives.requires_grad),
    ]
    table = comm.agree(err, info, group, anchors if isinstance(anchors, Tensor) else None, where)
    n_r = [row[0] for row in table]
    k_r = [row[1] for row in table]
    if len({row[2] for row in table}) > 1:
        raise ValueError(f"{where}: embedding sizes differ between ranks: d = {[row[2] for row in table]}")
    if len({row[3] for row in table}) > 1:
        raise ValueError(
            f"{where}: dtypes differ between ranks: {[str(FLOAT_DTYPES[row[3]]) for row in table]}; use one dtype"
        )
    if len({row[4] for row in table}) > 1:
        raise ValueError(
            f"{where}: some ranks need gradients and others do not (requires_grad / no_grad differ: "
            f"{[bool(row[4]) for row in table]}); the backward pass is collective, so every rank must agree"
        )
    n_total, k_total = sum(n_r), sum(k_r)
    if n_total + k_total < 2:
        raise ValueError(f"{where}: the global batch has no negative (N = {n_total}, K = {k_total})")
    if symmetric and n_total < 2:
        raise ValueError(f"{where}: symmetric=True needs N >= 2 anchors in the global batch, got {n_total}")
    return negatives, n_r, k_r, table


def _local_error(anchors, positives, negatives, check_finite: bool, where: str) -> Exception | None:
    """Validate this rank's tensors; the "at least one negative" rule is global, not checked here."""
    try:
        n = anchors.shape[0] if isinstance(anchors, Tensor) else None
        if n == 1 and (negatives is None or (isinstance(negatives, Tensor) and negatives.shape[0] == 0)):
            negatives = positives  # one local row is fine: the negatives come from the other ranks
        check_embeddings(anchors, positives, negatives, symmetric=False, check_finite=check_finite, where=where)
    except (TypeError, ValueError) as err:
        return err
    return None
