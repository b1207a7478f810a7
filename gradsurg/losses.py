r"""Drop-in contrastive losses with the paper's defaults, and their modules.

Each function equals plain autograd of its textbook formula (loss and both
gradients) but computes the gradient directly from GD, W and R, chunk by
chunk, without an autograd graph through the N x M similarity matrix.

=========  ===========================================================  ================================
loss       per-anchor loss ``L_i``                                      paradigm (GD, W, R)
=========  ===========================================================  ================================
info_nce   ``-log softmax_j(s_ij / tau)[i]``                            InfoNCE(tau), Softmax(tau), 1
arccon     InfoNCE with positive logit ``cos(theta_ii + u)``            ArcCon(tau, u), Softmax(tau), Arc(u)
mpt        ``relu(max_{j!=i} s_ij - s_ii + m)``                         Margin(m), Hardest, 1
met        ``relu(d_ii - min_{j!=i} d_ij + m)``                         EuclideanMargin(m), Hardest, Euclidean
mat        ``relu(theta_ii - min_{j!=i} theta_ij + m)``                 AngularMargin(m), Hardest, Angular
siglip     ``softplus(-(t s_ii + b)) + sum_{j!=i} softplus(t s_ij + b)``  Sigmoid(t, b) x 3
=========  ===========================================================  ================================
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import paradigm as _p
from .api import paradigm_loss
from .engine.torch_backend import DEFAULT_CHUNK_BYTES
from .engine.validation import check_distributed
from .paradigm import Paradigm
from .structured import STRUCTURED_OPTIONS, _margin_options, check_mnrl_options, check_temperature, gist, mnrl, supcon

__all__ = [
    "supcon", "gist", "GISTLoss", "SupConLoss",
    "info_nce", "arccon", "mpt", "met", "mat", "siglip",
    "ParadigmLoss", "InfoNCELoss", "ArcConLoss", "MPTLoss", "METLoss", "MATLoss", "SigLIPLoss",
]


def _temperature(temperature, scale, where: str):
    """``(float temperature for the paradigm, learn dict or None)`` from ``temperature`` / ``scale``
    (floats or 0-dim tensors; ``scale`` = 1 / temperature, sentence-transformers' convention)."""
    if scale is not None:
        if temperature is not None:
            raise ValueError(f"{where}: give temperature or scale (= 1 / temperature), not both")
        if isinstance(scale, Tensor):
            return 1.0, {"temperature": 1.0 / scale}
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"{where}: scale must be a number > 0 or a 0-dim tensor, got {scale!r}")
        return 1.0 / scale, None
    temperature = 0.05 if temperature is None else temperature
    if isinstance(temperature, Tensor):
        return 1.0, {"temperature": temperature}
    return temperature, None


def info_nce(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
             temperature: float | Tensor | None = None, scale: float | Tensor | None = None,
             normalizer: str = "batch", state=None, index=None, **kwargs) -> Tensor:
    """InfoNCE (SimCSE's loss; tau = 0.05 is sentence-transformers' scale 20).

    ``L_i = -log( exp(s_ii/tau) / sum_j exp(s_ij/tau) )``. ``temperature``
    (default 0.05) or ``scale`` (= 1 / temperature) may be a learnable 0-dim
    tensor, e.g. ``scale=logit_scale.exp()`` (CLIP); its exact gradient is
    formed from the row statistics. Keyword arguments of
    :func:`gradsurg.paradigm_loss` (``symmetric``, ``reduction``, ``backend``,
    ``check_finite``, ``gather_across_devices``) pass through.

    ``normalizer='global'`` (SogCLR / FastCLIP): each anchor's push is normalised by a
    per-example moving estimate kept in ``state`` (a :class:`gradsurg.GlobalNormalizer`)
    instead of its batch; ``index`` (N,) names the batch's examples
    (:func:`gradsurg.normalizer.info_nce_global`, docs/paradigm.md "Global normaliser").
    ``keep_dissipation=True`` keeps the positive in that normaliser (InfoNCE's GD).

    sentence-transformers' ``MultipleNegativesRankingLoss`` options (same names, defaults,
    rules and errors; docs/api.md, "Structured candidates") select the structured engine
    (:mod:`gradsurg.structured`, chunked, torch backend):

    * ``negatives`` (alias ``hard_negatives=``): one ``(N, d)`` tensor or a list of them
      (sentence-transformers' columns: row i of each belongs to anchor i);
    * ``directions`` (``query_to_doc`` required; ``query_to_query``, ``doc_to_query``,
      ``doc_to_doc``), ``partition_mode`` (``'joint'`` / ``'per_direction'``),
      ``hardness_mode`` (``in_batch_negatives``, ``hard_negatives``, ``all_negatives``) with
      ``hardness_strength`` alpha (logits ``scale s + alpha sg(s)`` on those negatives);
    * ``negative_mask`` (bool ``(N, M)`` over ``cat(positives, *negatives)``, True drops the
      candidate from anchor i's partition function; the positive is never dropped: a True
      there is ignored, as GIST protects it), ``keys`` (one int tensor per column; a candidate
      whose key equals the row's anchor or positive key is dropped: duplicates), ``guide``
      (the guide model's embeddings of every column) with ``margin_strategy`` / ``margin``
      (GISTEmbedLoss' rule on these directions);
    * ``labels`` ((N,) ints: every positive with the row's label is a target, uniformly) or
      ``soft_targets`` ((N, M) row-stochastic: cross-entropy to the teacher);
    * ``stats``: a dict filled with W's telemetry (entropy, effective negatives, max weight).

    Options that are one paradigm (:func:`gradsurg.structured.mnrl_route`) run the paradigm engine:
    backend options (``chunk_bytes``, ``normalize``, Triton's ``path``, ...) and ``distributed``
    ('gather' | 'ring') pass through; the structured engine takes ``chunk_bytes`` and 'gather' only
    (anything else raises, naming it and why).
    """
    if "hard_negatives" in kwargs:
        if negatives is not None:
            raise ValueError("info_nce: give the hard negatives once (third argument or hard_negatives=)")
        negatives = kwargs.pop("hard_negatives")
    is_global = normalizer != "batch" or state is not None or index is not None
    if "keep_dissipation" in kwargs and not is_global:
        raise ValueError("info_nce: keep_dissipation is an option of normalizer='global' (the batch normaliser "
                         "always keeps InfoNCE's dissipation)")
    # with the global normaliser, stats= is its own telemetry (gradsurg.normalizer._telemetry), not a structured option
    structured = [k for k in STRUCTURED_OPTIONS if k in kwargs and not (is_global and k == "stats")]
    if isinstance(negatives, (list, tuple)) or structured:
        if is_global:
            raise ValueError("info_nce: normalizer='global' (state=, index=) does not combine with lists of hard "
                             "negatives or sentence-transformers' options, masks, guides, labels, soft targets")
        return _structured_info_nce(anchors, positives, negatives, temperature, scale, kwargs)
    tau, learn = _temperature(temperature, scale, "info_nce")
    if is_global:
        return _global(normalizer, tau, learn, state, index, anchors, positives, negatives, kwargs, "info_nce")
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.info_nce(tau), learn=learn, caller="info_nce",
                         **kwargs)


def _global(normalizer, tau, learn, state, index, anchors, positives, negatives, kwargs, where):
    """The ``normalizer='global'`` branch of :func:`info_nce` and :class:`InfoNCELoss`."""
    from .normalizer import NORMALIZERS, info_nce_global

    if normalizer not in NORMALIZERS:
        raise ValueError(f"{where}: normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    if normalizer == "batch":
        raise ValueError(f"{where}: state= and index= are only used with normalizer='global'")
    temperature = learn["temperature"] if learn is not None else tau  # a learnable one: its 0-dim tensor
    return info_nce_global(anchors, positives, negatives, state=state, index=index, temperature=temperature,
                           **kwargs)


def _structured_info_nce(anchors, positives, negatives, temperature, scale, kwargs) -> Tensor:
    """sentence-transformers' MNRL options, masks, guide, labels, soft targets: :func:`gradsurg.structured.mnrl`."""
    tau, learn = _temperature(temperature, scale, "info_nce")
    if learn is not None:
        raise TypeError("info_nce: a learnable (tensor) temperature/scale is not supported with directions, "
                        "masks, hardness, labels or soft targets; pass a float")
    if kwargs.pop("symmetric", False):
        if "directions" in kwargs or "partition_mode" in kwargs:
            raise ValueError("info_nce: symmetric=True is directions=('query_to_doc', 'doc_to_query') with "
                             "partition_mode='per_direction'; give either symmetric or directions")
        kwargs.update(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    return mnrl(anchors, positives, negatives, scale=1.0 / tau, **kwargs)


def arccon(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
           temperature: float | Tensor | None = None, margin: float = math.radians(10),
           scale: float | Tensor | None = None, **kwargs) -> Tensor:
    """ArcCon: InfoNCE with the positive's logit ``cos(arccos(s_ii) + margin) / tau``
    (``temperature`` / ``scale`` as for :func:`info_nce`, learnable too)."""
    tau, learn = _temperature(temperature, scale, "arccon")
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.arccon(tau, margin), learn=learn,
                         caller="arccon", **kwargs)


def siglip(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
           scale: float | Tensor = 10.0, bias: float | Tensor = -10.0, **kwargs) -> Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al., 2023), summed over candidates, mean over anchors:

    ``L = -(1/N) sum_i sum_j log sigmoid(z_ij (t s_ij + b))``, ``z = +1`` on the
    positive (j = i) and -1 elsewhere. ``scale`` t (> 0) and ``bias`` b are
    floats or learnable 0-dim tensors (``scale=logit_scale.exp()``); defaults
    t = 10, b = -10, SigLIP's initialisation. Its gradient is set from
    ``GD_i = t sum_{j!=i} sigmoid(t s_ij + b)``, ``W_ij ~ sigmoid(t s_ij + b)``
    and ``R_i = sigmoid(-(t s_ii + b)) / sum_{j!=i} sigmoid(t s_ij + b)``
    (docs/paradigm.md, "SigLIP"). Keyword arguments of :func:`paradigm_loss` pass through.
    """
    learn = {}
    fixed = {}
    for name, value in (("scale", scale), ("bias", bias)):
        if isinstance(value, Tensor):
            learn[name] = value
            fixed[name] = 1.0 if name == "scale" else 0.0
        else:
            fixed[name] = value
    paradigm = _p.siglip(fixed["scale"], fixed["bias"])
    return paradigm_loss(anchors, positives, negatives, paradigm=paradigm, learn=learn or None, caller="siglip",
                         **kwargs)


def mpt(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
        margin: float = 0.23, **kwargs) -> Tensor:
    """Margin triplet on cosine similarities: ``relu(max_{j!=i} s_ij - s_ii + margin)``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.mpt(margin), caller="mpt", **kwargs)


def met(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
        margin: float = 0.45, **kwargs) -> Tensor:
    """Margin triplet on Euclidean distances of unit vectors, ``d = sqrt(max(2 - 2s, 1e-4))``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.met(margin), caller="met", **kwargs)


def mat(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None, *,
        margin: float = 0.15 * math.pi, **kwargs) -> Tensor:
    """Margin triplet on angles ``theta = arccos(s)``."""
    return paradigm_loss(anchors, positives, negatives, paradigm=_p.mat(margin), caller="mat", **kwargs)


class ParadigmLoss(nn.Module):
    """Module form of :func:`gradsurg.paradigm_loss` for a fixed paradigm.

    ``forward(anchors, positives, negatives=None)`` returns the loss. The
    keyword arguments are those of :func:`gradsurg.paradigm_loss`, including
    ``gather_across_devices``, ``distributed`` ('gather' | 'ring') and ``group`` (see ``docs/distributed.md``).
    """

    def __init__(self, paradigm: Paradigm, *, symmetric: bool = False, reduction: str = "mean",
                 backend: str = "auto", check_finite: bool = True, gather_across_devices: bool = False,
                 group=None, distributed: str | None = None):
        super().__init__()
        if not isinstance(paradigm, Paradigm):
            raise TypeError(f"ParadigmLoss: paradigm must be a gradsurg.Paradigm, got {type(paradigm).__name__}")
        self.paradigm = paradigm
        self.kwargs = dict(symmetric=symmetric, reduction=reduction, backend=backend, check_finite=check_finite)
        check_distributed(distributed, type(self).__name__)
        if gather_across_devices or distributed:  # only passed when on: keeps the repr and the common path plain
            self.kwargs.update(gather_across_devices=gather_across_devices or distributed == "gather", group=group)
            if distributed == "ring":
                self.kwargs.update(distributed="ring")
        elif group is not None:
            raise ValueError(f"{type(self).__name__}: group= is only used with gather_across_devices=True or "
                             "distributed=")

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        return paradigm_loss(anchors, positives, negatives, paradigm=self.paradigm, caller=type(self).__name__,
                             **self.kwargs)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.paradigm!r}, {opts}"


class _Learnable(ParadigmLoss):
    """A preset whose hyper-parameters may be learned. ``learnable=True`` makes them
    parameters of the module (in log space for the temperature / scale, as open_clip's
    ``logit_scale``); a hyper-parameter given as a tensor (e.g. an ``nn.Parameter`` the
    caller owns, registered with the module when it is one) is used as is. Either way
    they reach the loss as 0-dim tensors on every call (exact gradients)."""

    def _keep(self, name: str, value) -> None:
        """Hold the tensor hyper-parameter ``name`` (a parameter of the module if it is one)."""
        if isinstance(value, nn.Parameter):
            self.register_parameter(name, value)
        else:
            self.register_buffer(name, value, persistent=False)

    def _learn(self) -> dict | None:
        return None

    def forward(self, anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        learn = self._learn()
        if learn is None:
            return super().forward(anchors, positives, negatives)
        learn = {k: v.to(anchors.device) for k, v in learn.items()}
        return paradigm_loss(anchors, positives, negatives, paradigm=self.paradigm, caller=type(self).__name__,
                             learn=learn, **self.kwargs)


class _Softmax(_Learnable):
    """InfoNCE / ArcCon modules: ``temperature`` or ``scale`` (= 1/temperature), floats or tensors."""

    def _setup(self, temperature, scale, learnable: bool, where: str) -> tuple[float, Tensor | None]:
        tau, learn = _temperature(temperature, scale, where)
        self._kind = None
        if learn is not None:
            if learnable:
                raise ValueError(f"{where}: learnable=True creates its own logit_scale; do not also pass a tensor")
            self._kind = "scale" if scale is not None else "temperature"
            return tau, (scale if scale is not None else temperature)
        return tau, None

    def _finish(self, tau: float, tensor, learnable: bool) -> None:
        if tensor is not None:
            self._keep(f"{self._kind}_value", tensor)
        if learnable:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau)))

    def _learn(self):
        if hasattr(self, "logit_scale"):
            return {"temperature": (-self.logit_scale).exp()}
        if self._kind == "scale":
            return {"temperature": 1.0 / self.scale_value}
        if self._kind == "temperature":
            return {"temperature": self.temperature_value}
        return None


#: the structured options a module fixes at construction (the per-batch ones, ``keys``, ``guide``,
#: ``negative_mask``, ``labels``, ``soft_targets``, ``stats``, go to ``forward``)
_FIXED_STRUCTURED = ("directions", "partition_mode", "hardness_mode", "hardness_strength")
_PER_BATCH = ("keys", "guide", "margin_strategy", "margin", "negative_mask", "labels", "soft_targets", "stats")


class InfoNCELoss(_Softmax):
    """Module form of :func:`gradsurg.info_nce` (same arguments; ``scale`` = 1 / temperature,
    sentence-transformers' convention). With ``learnable=True`` the module owns ``logit_scale``
    (initialised to ``log(1 / temperature)``; the temperature is ``exp(-logit_scale)``).

    sentence-transformers' options (``directions``, ``partition_mode``, ``hardness_mode``,
    ``hardness_strength``) are fixed here; ``forward(anchors, positives, negatives=None,
    **per_batch)`` takes the hard negatives as a tensor or a list of columns and the per-batch
    ``keys``, ``guide`` (with ``margin_strategy``, ``margin``), ``negative_mask``, ``labels``,
    ``soft_targets``, ``stats`` of :func:`gradsurg.info_nce`."""

    def __init__(self, temperature: float | Tensor | None = None, learnable: bool = False,
                 scale: float | Tensor | None = None, normalizer: str = "batch", dataset_size: int | None = None,
                 gamma: float = 0.9, directions=None, partition_mode: str | None = None,
                 hardness_mode: str | None = None, hardness_strength: float | None = None,
                 keep_dissipation: bool | None = None, **kwargs):
        tau, tensor = self._setup(temperature, scale, learnable, "InfoNCELoss")
        super().__init__(_p.info_nce(tau), **kwargs)
        self._finish(tau, tensor, learnable)
        given = dict(directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
                     hardness_strength=hardness_strength)
        self.structured = {k: (tuple(v) if k == "directions" and not isinstance(v, str) else v)
                           for k, v in given.items() if v is not None}
        if self.structured and (learnable or tensor is not None):
            raise TypeError("InfoNCELoss: a learnable temperature is not supported with sentence-transformers' "
                            "options (directions, hardness, ...); pass a float")
        if self.structured:  # checked now, not at the first batch
            check_mnrl_options(self.structured.get("directions", ("query_to_doc",)),
                               self.structured.get("partition_mode", "joint"), self.structured.get("hardness_mode"),
                               self.structured.get("hardness_strength", 0.0), "InfoNCELoss")
        self._tau = tau
        if normalizer == "global":  # the per-example estimates live in the module (state_dict, .eval())
            from .normalizer import GlobalNormalizer

            if dataset_size is None:
                raise ValueError("InfoNCELoss: normalizer='global' needs dataset_size= (how many examples the "
                                 "indices address)")
            if self.structured:
                raise ValueError("InfoNCELoss: normalizer='global' does not combine with sentence-transformers' "
                                 "options (directions, partition_mode, hardness)")
            if keep_dissipation is not None and not isinstance(keep_dissipation, bool):
                raise TypeError(f"InfoNCELoss: keep_dissipation must be True or False, got {keep_dissipation!r}")
            self.normalizer = GlobalNormalizer(dataset_size, gamma, 2 if self.kwargs["symmetric"] else 1)
            self.keep_dissipation = bool(keep_dissipation)
        elif keep_dissipation is not None:
            raise ValueError("InfoNCELoss: keep_dissipation is an option of normalizer='global' (the batch "
                             "normaliser always keeps InfoNCE's dissipation)")
        elif normalizer != "batch":
            from .normalizer import NORMALIZERS

            raise ValueError(f"InfoNCELoss: normalizer must be one of {NORMALIZERS}, got {normalizer!r}")

    def forward(self, anchors: Tensor, positives: Tensor, negatives=None, index: Tensor | None = None,
                **per_batch) -> Tensor:
        """The loss; ``index`` (N,): the batch's dataset indices (``normalizer='global'`` only);
        ``per_batch``: the structured options of :func:`gradsurg.info_nce` that change per batch."""
        unknown = sorted(set(per_batch) - set(_PER_BATCH))
        if unknown:
            raise TypeError(f"InfoNCELoss.forward: unknown argument(s) {', '.join(unknown)}; per batch: "
                            f"{', '.join(_PER_BATCH)}")
        per_batch = {k: v for k, v in per_batch.items() if v is not None}
        structured = bool(self.structured or per_batch or isinstance(negatives, (list, tuple)))
        if hasattr(self, "normalizer"):
            stats = per_batch.pop("stats", None)  # the normaliser's telemetry, not a structured option here
            structured = bool(self.structured or per_batch or isinstance(negatives, (list, tuple)))
            if structured:
                raise ValueError("InfoNCELoss: normalizer='global' does not combine with lists of hard negatives, "
                                 "masks, guides, labels or soft targets")
            learn = self._learn()
            if learn is not None and isinstance(anchors, Tensor):
                learn = {k: v.to(anchors.device) for k, v in learn.items()}
            return _global("global", self.paradigm.dissipation.temperature, learn, self.normalizer, index,
                           anchors, positives, negatives,
                           dict(self.kwargs, stats=stats, keep_dissipation=self.keep_dissipation), "InfoNCELoss")
        if index is not None:
            raise ValueError("InfoNCELoss: index= is only used with normalizer='global'")
        if not structured:
            return super().forward(anchors, positives, negatives)
        if self._kind is not None or hasattr(self, "logit_scale"):
            raise TypeError("InfoNCELoss: a learnable temperature is not supported with lists of hard negatives, "
                            "masks, guides, labels or soft targets")
        return info_nce(anchors, positives, negatives, temperature=self._tau, **self.kwargs, **self.structured,
                        **per_batch)


class ArcConLoss(_Softmax):
    """Module form of :func:`gradsurg.arccon` (same arguments; ``learnable`` as for :class:`InfoNCELoss`)."""

    def __init__(self, temperature: float | Tensor | None = None, margin: float = math.radians(10),
                 learnable: bool = False, scale: float | Tensor | None = None, **kwargs):
        tau, tensor = self._setup(temperature, scale, learnable, "ArcConLoss")
        super().__init__(_p.arccon(tau, margin), **kwargs)
        self._finish(tau, tensor, learnable)


class SigLIPLoss(_Learnable):
    """Module form of :func:`gradsurg.siglip` (``scale`` and ``bias`` floats or tensors). With
    ``learnable=True`` the module owns ``logit_scale`` (``log(scale)``; scale =
    ``exp(logit_scale)``) and ``logit_bias``, initialised from ``scale`` and ``bias``
    (big_vision's ``t' = log 10``, ``b = -10``)."""

    def __init__(self, scale: float | Tensor = 10.0, bias: float | Tensor = -10.0, learnable: bool = False,
                 **kwargs):
        tensors = {k: v for k, v in (("scale", scale), ("bias", bias)) if isinstance(v, Tensor)}
        if tensors and learnable:
            raise ValueError("SigLIPLoss: learnable=True creates its own logit_scale and logit_bias; "
                             "do not also pass tensors")
        super().__init__(_p.siglip(1.0 if "scale" in tensors else scale, 0.0 if "bias" in tensors else bias),
                         **kwargs)
        self._tensors = tuple(tensors)
        for name, value in tensors.items():
            self._keep(f"{name}_value", value)
        if learnable:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(scale)))
            self.logit_bias = nn.Parameter(torch.tensor(float(bias)))

    def _learn(self):
        if hasattr(self, "logit_scale"):
            return {"scale": self.logit_scale.exp(), "bias": self.logit_bias}
        return {k: getattr(self, f"{k}_value") for k in self._tensors} or None


class MPTLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.mpt` (same arguments)."""

    def __init__(self, margin: float = 0.23, **kwargs):
        super().__init__(_p.mpt(margin), **kwargs)


class METLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.met` (same arguments)."""

    def __init__(self, margin: float = 0.45, **kwargs):
        super().__init__(_p.met(margin), **kwargs)


class MATLoss(ParadigmLoss):
    """Module form of :func:`gradsurg.mat` (same arguments)."""

    def __init__(self, margin: float = 0.15 * math.pi, **kwargs):
        super().__init__(_p.mat(margin), **kwargs)


class GISTLoss(nn.Module):
    """Module form of :func:`gradsurg.gist` (sentence-transformers' ``GISTEmbedLoss`` arguments;
    ``forward(anchors, positives, negatives=None, guide=...)`` takes the guide's embeddings of
    every column)."""

    def __init__(self, temperature: float = 0.01, margin_strategy: str = "absolute", margin: float = 0.0,
                 contrast_anchors: bool = True, contrast_positives: bool = True, *, reduction: str = "mean",
                 backend: str = "auto", check_finite: bool = True, gather_across_devices: bool = False, group=None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        _margin_options(margin_strategy, margin, "GISTLoss")
        check_temperature(temperature, "GISTLoss")
        self.options = dict(temperature=temperature, margin_strategy=margin_strategy, margin=margin,
                            contrast_anchors=contrast_anchors, contrast_positives=contrast_positives,
                            reduction=reduction, backend=backend, check_finite=check_finite,
                            gather_across_devices=gather_across_devices, group=group, chunk_bytes=chunk_bytes)

    def forward(self, anchors: Tensor, positives: Tensor, negatives=None, guide=None) -> Tensor:
        if guide is None:
            raise ValueError("GISTLoss: forward needs guide= (the guide model's embeddings of every column); "
                             "GradsurgLoss(model, 'gist', guide=guide_model) computes them")
        return gist(anchors, positives, negatives, guide=guide, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class SupConLoss(nn.Module):
    """Module form of :func:`gradsurg.supcon`: ``forward(features, labels)``."""

    def __init__(self, temperature: float = 0.1, *, reduction: str = "mean", backend: str = "auto",
                 check_finite: bool = True, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        super().__init__()
        self.temperature = temperature
        self.kwargs = dict(reduction=reduction, backend=backend, check_finite=check_finite, chunk_bytes=chunk_bytes)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return supcon(features, labels, temperature=self.temperature, **self.kwargs)
