"""Input validation shared by every entry point: clear errors, never a silent NaN."""
from __future__ import annotations

import torch
from torch import Tensor

from ..vocabulary import BACKENDS, DISTRIBUTED, REDUCTIONS, compute_dtype


def check_embeddings(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None,
    *,
    symmetric: bool = False,
    check_finite: bool = True,
    where: str = "paradigm_loss",
) -> Tensor | None:
    """Validate the three embedding tensors; return ``negatives`` (None when K = 0).

    Raises ``TypeError`` for non-tensors and non-floating dtypes, ``ValueError``
    for wrong ranks, mismatched shapes, dtypes or devices, empty batches, a
    batch without any negative, and non-finite values.
    """
    named = [("anchors", anchors), ("positives", positives)]
    if negatives is not None:
        named.append(("negatives", negatives))
    for name, t in named:
        check_rows_tensor(name, t, where)
    n, d = anchors.shape
    if n == 0:
        raise ValueError(f"{where}: anchors is an empty batch (shape {tuple(anchors.shape)}); need N >= 1 rows")
    if d == 0:
        raise ValueError(f"{where}: anchors has embedding size d = 0; need d >= 1")
    if positives.shape != anchors.shape:
        raise ValueError(
            f"{where}: positives must have the shape of anchors (N, d) = {tuple(anchors.shape)}, "
            f"got {tuple(positives.shape)}"
        )
    if negatives is not None:
        if negatives.shape[1] != d:
            raise ValueError(
                f"{where}: negatives must have shape (K, d) with d = {d} like anchors, got {tuple(negatives.shape)}"
            )
    for name, t in named[1:]:
        if t.dtype != anchors.dtype:
            raise ValueError(f"{where}: {name} has dtype {t.dtype} but anchors has {anchors.dtype}; use one dtype")
        if t.device != anchors.device:
            raise ValueError(
                f"{where}: {name} is on device {t.device} but anchors is on {anchors.device}; use one device"
            )
    if negatives is not None and negatives.shape[0] == 0:
        negatives = None
    m = n + (0 if negatives is None else negatives.shape[0])
    if m < 2:
        raise ValueError(
            f"{where}: the batch has no negative: N = {n} anchor(s) and "
            f"{m - n} extra negative(s); need N >= 2 or negatives of shape (K >= 1, d)"
        )
    if symmetric and n < 2:
        raise ValueError(
            f"{where}: symmetric=True needs N >= 2 anchors (the positive->anchor direction has only the "
            f"anchors as candidates), got N = {n}"
        )
    if check_finite:
        check_finite_values(named, where)
    return negatives


def check_rows_tensor(name: str, t, where: str) -> None:
    """``t`` is a floating 2-D ``(rows, d)`` tensor with data (not on the 'meta' device)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor of shape (N, d), got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(
            f"{where}: {name} must have a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}"
        )
    if t.dim() != 2:
        raise ValueError(f"{where}: {name} must be 2-D (rows, d), got shape {tuple(t.shape)}")
    if t.device.type == "meta":
        raise ValueError(
            f"{where}: {name} is on the 'meta' device (no data); pass tensors on a real device (cpu, cuda)"
        )


def check_finite_values(named, where: str) -> None:
    """``ValueError`` naming the first of ``[(name, tensor)]`` that holds NaN or inf."""
    for name, t in named:
        # one pass: a finite sum means finite entries; only a non-finite sum needs the exact check
        if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{where}: {name} contains NaN or infinite values; pass check_finite=False to skip this check"
            )


def check_reduction(reduction: str, where: str = "paradigm_loss") -> None:
    """``reduction`` is a name of :data:`~gradsurg.vocabulary.REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_distributed(distributed, where: str = "paradigm_loss") -> None:
    """``distributed`` is None or a name of :data:`~gradsurg.vocabulary.DISTRIBUTED`."""
    if distributed is not None and distributed not in DISTRIBUTED:
        raise ValueError(f"{where}: distributed must be None, {' or '.join(map(repr, DISTRIBUTED))}, "
                         f"got {distributed!r}")


def check_reduction_and_backend(reduction: str, backend: str, where: str = "paradigm_loss") -> None:
    """``reduction`` and ``backend`` are names of :data:`~gradsurg.vocabulary.REDUCTIONS` / ``BACKENDS``."""
    check_reduction(reduction, where)
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")


def autocast_inputs(tensors):
    """The autocast policy (docs/api.md): ``(tensors, value_dtype)``.

    Under ``torch.autocast`` on the tensors' device the floating inputs are
    promoted to one dtype (the widest of them, as autocast's own
    promote-ops do) and the loss value is float32 (float64 for float64
    inputs), like PyTorch's losses under autocast; gradients reach every input
    in its own dtype through the casts. Outside autocast nothing changes and
    ``value_dtype`` is None (the value takes the inputs' dtype).
    """
    ts = [t for t in tensors if isinstance(t, Tensor)]
    if not ts or not all(t.is_floating_point() for t in ts):
        return tensors, None
    try:
        enabled = torch.is_autocast_enabled(ts[0].device.type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta): not under autocast
        enabled = False
    if not enabled:
        return tensors, None
    target = ts[0].dtype
    for t in ts[1:]:
        target = torch.promote_types(target, t.dtype)
    out = [t.to(target) if isinstance(t, Tensor) else t for t in tensors]
    return out, compute_dtype(target)


def check_backend_options(options: dict, accepted, backend: str, where: str = "paradigm_loss") -> None:
    """A backend's ``options``: unknown ones raise ``ValueError`` naming them and the accepted ones
    (every backend alike); the message starts with ``where`` (the function the user called)."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{where}: backend {backend!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )


def check_engine_options(chunk_bytes, normalize: bool = True, where: str = "paradigm_loss") -> None:
    """The torch engine's options, wherever it runs (torch backend, ring, structured candidates):
    ``chunk_bytes`` (bytes of one chunk's work buffers) a positive int, ``normalize`` a bool."""
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError(f"{where}: chunk_bytes must be a positive int, got {chunk_bytes!r}")
    if not isinstance(normalize, bool):
        raise ValueError(f"{where}: normalize must be a bool, got {normalize!r}")


def float32_under_autocast(fn, *tensors):
    """``fn(*tensors)`` for plain-autograd formulas (the original objectives): under
    autocast, on the promoted inputs in at least float32 with autocast off, so that
    statistics and value are float32 and gradients return in each input's dtype."""
    cast, value_dtype = autocast_inputs(list(tensors))
    if value_dtype is None:
        return fn(*tensors)
    with torch.autocast(cast[0].device.type, enabled=False):
        return fn(*(t.to(torch.promote_types(t.dtype, value_dtype)) for t in cast))
