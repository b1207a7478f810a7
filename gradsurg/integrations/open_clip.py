r"""Drop-in replacements for open_clip's ``ClipLoss`` and ``SigLipLoss``.

Same constructor arguments, same call ``loss(image_features, text_features,
logit_scale, logit_bias=None, output_dict=False)``, same values and the same
gradients on every rank as open-clip-torch's classes (``open_clip/loss.py``),
but computed by gradsurg's chunked engine: no ``B x B`` logits are held (open_clip's
``ClipLoss`` forms two per process, 4 GiB each at B = 32768 in float32).

The logits are open_clip's, ``l_ij = logit_scale * x_i . y_j (+ logit_bias)``:
the features are taken as given (the engine's ``normalize=False``; open_clip's
models already normalise them), so the gradient to the features is the full
one open_clip's autograd gives, not its projection onto the unit sphere.
``logit_scale`` is the multiplier itself (open_clip passes ``logit_scale.exp()``).

Across processes (``world_size > 1``; ``torch.distributed`` initialised with
that world and ``rank``), with ``L_i`` anchor i's loss and ``B`` the local batch:

===============================  ===================================  ===========================================
ClipLoss setting                 value on rank r                      gradient rank r receives
===============================  ===================================  ===========================================
local_loss, gather_with_grad     (1/B) sum_{i in r} L_i               sum over ranks of their losses' gradients
local_loss, no gather grad       (1/B) sum_{i in r} L_i               its own loss, other ranks' rows detached
global, gather_with_grad         the global mean (every rank)         W x the global mean's gradient
global, no gather grad           the global mean (every rank)         the global mean's gradient on its own rows
===============================  ===================================  ===========================================

(``L_i = (CE_image_i + CE_text_i) / 2``; ``logit_scale`` and ``logit_bias`` get the
gradient of the value on the rank.) SigLIP on rank r: ``(1/B) sum_{i in r}
sum_j softplus(-z_ij l_ij)`` over its images and every rank's texts, the texts'
gradients summed over ranks, for each ``dist_impl``: ``'gather'`` / ``'reduce'``
gather the texts (gradsurg's all-gather path), ``'shift'`` / ``'bidir'`` pass
them around the ring of processes one block at a time
(``distributed='ring'``: no process holds more than its own and one peer's texts).

``ClipLoss(..., normalizer='global', dataset_size=, gamma=)`` (gradsurg's addition,
FastCLIP's setting) replaces each row's batch normaliser by a per-example moving
estimate (:mod:`gradsurg.normalizer`); ``forward(..., index=)`` then takes the
dataset indices of the rank's pairs. The table above holds for it with ``L_i`` the
global normaliser's rows, except ``local_loss`` without ``gather_with_grad`` (refused).
"""
from __future__ import annotations

import importlib.util
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .. import distributed as _dist
from ..losses import info_nce, siglip
from ..normalizer import NORMALIZERS, GlobalNormalizer

__all__ = ["ClipLoss", "SigLipLoss", "open_clip_loss_module"]


def open_clip_loss_module():
    """The installed open-clip-torch's own ``loss.py`` (its ``ClipLoss`` / ``SigLipLoss``), loaded by
    file path without importing the ``open_clip`` package (which pulls torchvision and timm; the loss
    module needs only torch), or None when open-clip-torch is not installed. The tests and
    ``benchmarks/bench_open_clip.py`` compare against it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "loss.py")
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod

DIST_IMPLS = ("bidir", "shift", "reduce", "gather")
#: the engine options of every call: open_clip's logits take the features as given
_ENGINE = dict(backend="torch", normalize=False)


class _AllReduceGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the ranks (divided by ``divide``)."""

    @staticmethod
    def forward(ctx, t: Tensor, divide: float):
        ctx.divide = divide
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad / ctx.divide, None


def _check_setup(where: str, rank, world_size) -> None:
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"{where}: need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")


def _check_world(where: str, rank: int, world_size: int) -> None:
    """``world_size > 1`` needs an initialised default process group of that size, with this rank."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{where}: world_size={world_size} but torch.distributed is not initialised; call "
                           f"torch.distributed.init_process_group first (or use world_size=1)")
    got = (dist.get_rank(), dist.get_world_size())
    if got != (rank, world_size):
        raise ValueError(f"{where}: rank={rank}, world_size={world_size} do not match torch.distributed "
                         f"(rank {got[0]} of {got[1]})")


def _check_features(where: str, image_features, text_features) -> None:
    for name, t in (("image_features", image_features), ("text_features", text_features)):
        if not isinstance(t, Tensor) or t.dim() != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{where}: {name} must be a (batch, dim) tensor, got {shape}")
    if image_features.shape != text_features.shape:
        raise ValueError(f"{where}: image_features {tuple(image_features.shape)} and text_features "
                         f"{tuple(text_features.shape)} must have the same shape (paired rows)")


def _hyper(where: str, name: str, value):
    """A 0-dim tensor (learnable) or a float, as the losses take it."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: {name} must be a scalar (0-dim tensor or float), got shape "
                             f"{tuple(value.shape)}")
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a tensor or a float, got {type(value).__name__}")
    return float(value)


def _global_value(local: Tensor, world: int) -> Tensor:
    """The mean over the ranks of ``local`` (detached; one all-reduce)."""
    total = local.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world


def _others(t: Tensor, rank: int) -> Tensor:
    """Every other rank's rows of ``t`` (detached, rank order, own rows left out)."""
    with torch.no_grad():
        counts = [row[0] for row in _dist.exchange_ints([t.shape[0]], None, t)]
        every = _dist.all_gather_with_grad(t.detach(), None, counts)
    start = sum(counts[:rank])
    return torch.cat([every[:start], every[start + counts[rank]:]])


class ClipLoss(nn.Module):
    r"""open_clip's ``ClipLoss`` on gradsurg's engine: the symmetric InfoNCE of CLIP,

    ``L = (1/2B) sum_i [CE(l_i., i) + CE(l_.i, i)]``, ``l_ij = logit_scale x_i . y_j``.

    Args (open_clip's): ``local_loss`` (each rank's own rows against every rank's
    candidates, else the global loss on every rank), ``gather_with_grad`` (the
    gathered features carry gradients to their owners, else they are detached
    and only the rank's own features get a gradient), ``cache_labels`` (accepted;
    no labels are formed), ``rank``, ``world_size``, ``use_horovod`` (not supported:
    gradsurg communicates through ``torch.distributed``). Per-rank values and
    gradients: see the module docstring. ``logit_bias`` shifts every logit
    equally: it changes neither the loss nor any gradient (its own gradient is 0).

    gradsurg's addition: ``normalizer='global'`` with ``dataset_size`` and ``gamma``
    (SogCLR / FastCLIP's global normaliser, :mod:`gradsurg.normalizer`): every
    image and every text keeps a moving estimate ``u`` of its mean negative
    exponential (``self.normalizer``, a :class:`gradsurg.GlobalNormalizer` with two
    towers, saved in the ``state_dict``); ``forward`` then takes ``index=``, the
    dataset indices of this rank's pairs (row i of the features is example
    ``index[i]``); ``keep_dissipation=True`` keeps the positive in the normaliser
    (InfoNCE's GD, docs/paradigm.md). The learnable ``logit_scale`` gets the gradient of the same
    surrogate (u held constant). Across processes: ``local_loss`` with
    ``gather_with_grad`` (FastCLIP's setting: each rank its own rows, W times the
    global mean's gradient), or the global loss on every rank (``local_loss=False``,
    with or without ``gather_with_grad``: the scaling of the table in the module
    docstring); ``local_loss`` without ``gather_with_grad`` is refused.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False, normalizer: str = "batch",
                 dataset_size: int | None = None, gamma: float = 0.9, keep_dissipation: bool | None = None):
        super().__init__()
        if use_horovod:
            raise ValueError("ClipLoss: use_horovod=True is not supported: gradsurg gathers through "
                             "torch.distributed (launch with torchrun; open_clip's --horovod is not needed)")
        _check_setup("ClipLoss", rank, world_size)
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)
        self.cache_labels = bool(cache_labels)
        self.rank, self.world_size = rank, world_size
        self.use_horovod = False
        if normalizer == "global":
            if dataset_size is None:
                raise ValueError("ClipLoss: normalizer='global' needs dataset_size= (how many image-text pairs "
                                 "the indices address)")
            if world_size > 1 and self.local_loss and not self.gather_with_grad:
                raise ValueError("ClipLoss: normalizer='global' with local_loss=True needs gather_with_grad=True "
                                 "(FastCLIP's setting); without it the gradient leaves out this rank's features "
                                 "as the other ranks' negatives, which the global normaliser's estimator does "
                                 "not allow for; or use local_loss=False")
            if keep_dissipation is not None and not isinstance(keep_dissipation, bool):
                raise TypeError(f"ClipLoss: keep_dissipation must be True or False, got {keep_dissipation!r}")
            self.normalizer = GlobalNormalizer(dataset_size, gamma, towers=2)
            self.keep_dissipation = bool(keep_dissipation)
        elif keep_dissipation is not None:
            raise ValueError("ClipLoss: keep_dissipation is an option of normalizer='global'")
        elif normalizer != "batch":
            raise ValueError(f"ClipLoss: normalizer must be one of {NORMALIZERS}, got {normalizer!r}")

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None,
                output_dict: bool = False, *, index=None):
        """open_clip's call; ``index`` (keyword, ``normalizer='global'`` only): the (B,) dataset indices of
        this rank's image-text pairs."""
        where = "ClipLoss"
        _check_features(where, image_features, text_features)
        scale = _hyper(where, "logit_scale", logit_scale)
        if hasattr(self, "normalizer"):
            glob = dict(normalizer="global", state=self.normalizer, index=index, keep_dissipation=self.keep_dissipation)
        elif index is not None:
            raise ValueError("ClipLoss: index= is only used with normalizer='global'")
        else:
            glob = {}
        world = self.world_size
        if world == 1:
            loss = info_nce(image_features, text_features, scale=scale, symmetric=True, **glob, **_ENGINE)
        else:
            _check_world(where, self.rank, world)
            loss = self._distributed(image_features, text_features, scale, world, glob)
        if isinstance(logit_bias, Tensor) and logit_bias.requires_grad:
            loss = loss + 0.0 * logit_bias.sum()  # a constant shift of every logit: gradient exactly 0
        return {"contrastive_loss": loss} if output_dict else loss

    def _distributed(self, image: Tensor, text: Tensor, scale, world: int, glob: dict) -> Tensor:
        if self.local_loss and self.gather_with_grad:  # gradsurg's gather path, as it is
            return info_nce(image, text, scale=scale, symmetric=True, gather_across_devices=True, **glob, **_ENGINE)
        if self.local_loss:  # every other rank's features detached, own positives detached in the other direction
            kw = dict(scale=scale, **_ENGINE)
            return 0.5 * (info_nce(image, text.detach(), _others(text, self.rank), **kw)
                          + info_nce(text, image.detach(), _others(image, self.rank), **kw))
        # the global loss on every rank: the gather path gives rank r L_r = (W/N) sum_{i in r} L_i and its
        # owners sum_r dL_r = W dL_global; without gather_with_grad open_clip's own-rows gradient is 1/W of
        # that. The logit scale gets dL_global = (1/W) sum_r dL_r (summed over the ranks in backward).
        factor = 1.0 if self.gather_with_grad else 1.0 / world
        if isinstance(scale, Tensor) and torch.is_grad_enabled() and scale.requires_grad:
            scale = _AllReduceGrad.apply(scale, world * factor)
        local = info_nce(image, text, scale=scale, symmetric=True, gather_across_devices=True, **glob, **_ENGINE)
        local = local * factor
        return local + (_global_value(local, world) / factor - local).detach()


class SigLipLoss(nn.Module):
    r"""open_clip's ``SigLipLoss`` on gradsurg's engine: SigLIP's pairwise sigmoid loss,

    ``L = -(1/B) sum_i sum_j log sigmoid(z_ij (logit_scale x_i . y_j + logit_bias))``,
    ``z = +1`` on the pair (j = i), -1 elsewhere, over the rank's images and every
    rank's texts. Args (open_clip's): ``cache_labels`` (accepted; no labels are
    formed), ``rank``, ``world_size``, ``dist_impl`` (``'bidir'`` (default),
    ``'shift'``, ``'reduce'``, ``'gather'``: the same values and gradients; the first
    two run gradsurg's ring, the others its all-gather). ``logit_bias=None``: no bias.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: str | None = None):
        super().__init__()
        _check_setup("SigLipLoss", rank, world_size)
        dist_impl = dist_impl or "bidir"
        if dist_impl not in DIST_IMPLS:
            raise ValueError(f"SigLipLoss: dist_impl must be one of {DIST_IMPLS} (or None: 'bidir'), "
                             f"got {dist_impl!r}")
        self.cache_labels = bool(cache_labels)
        self.rank, self.world_size = rank, world_size
        self.dist_impl = dist_impl

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale, logit_bias=None,
                output_dict: bool = False):
        where = "SigLipLoss"
        _check_features(where, image_features, text_features)
        scale = _hyper(where, "logit_scale", logit_scale)
        bias = 0.0 if logit_bias is None else _hyper(where, "logit_bias", logit_bias)
        kw = dict(scale=scale, bias=bias, **_ENGINE)
        if self.world_size > 1:
            _check_world(where, self.rank, self.world_size)
            kw.update(self._exchange())
        loss = siglip(image_features, text_features, **kw)
        return {"contrastive_loss": loss} if output_dict else loss

    def _exchange(self) -> dict:
        return dict(distributed="ring" if self.dist_impl in ("bidir", "shift") else "gather")
