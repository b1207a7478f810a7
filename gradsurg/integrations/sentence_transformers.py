"""A sentence-transformers loss that trains with any gradsurg loss.

    >>> from sentence_transformers import SentenceTransformer
    >>> from gradsurg.integrations.sentence_transformers import GradsurgLoss
    >>> from gradsurg.train.models import packaged_minilm_path
    >>> model = SentenceTransformer(packaged_minilm_path())  # all-MiniLM-L6-v2 from PyPI: no network
    >>> loss = GradsurgLoss(model, "info_nce", temperature=0.05)
    >>> # or: GradsurgLoss(model, "vicreg", modified="w_gd,w_w,w_r")
    >>> #     GradsurgLoss(model, my_module)   # any nn.Module (anchors, positives, negatives) -> scalar
    >>> anchors = model.tokenize(["A man plays a guitar.", "A dog runs in a park.", "Rain is falling."])
    >>> positives = model.tokenize(["Someone plays music.", "An animal is running.", "It is raining."])
    >>> value = loss([anchors, positives], labels=None)  # what the trainer computes at each step
    >>> value.backward()
    >>> bool(value > 0), model[0].auto_model.embeddings.word_embeddings.weight.grad is not None
    (True, True)

Train with ``SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss).train()``.

Columns of the dataset (in order): ``(anchor, positive)`` or
``(anchor, positive, negative_1, ...)``; the extra columns become the loss's
hard negatives (concatenated). With a single column, the anchor is embedded
twice and dropout gives the positive view (unsupervised SimCSE). Labels are
ignored. Embeddings are passed RAW (the loss normalises); keep a
``Normalize`` module out of the model, or know that it is applied first.

Large batches (GradCache, as ``CachedMultipleNegativesRankingLoss``)::

    loss = GradsurgLoss(model, "info_nce", temperature=0.05, mini_batch_size=32)
    # per_device_train_batch_size=1024: activations of 32 sentences at a time

Every column is embedded in chunks of ``mini_batch_size`` sentences without
a graph (each chunk trimmed to its own longest sentence), the loss and its
gradient with respect to the embeddings are computed on the whole batch, and
the backward pass re-embeds each chunk with its saved random state (CPU and
the CUDA devices in use, so dropout draws the same masks) and back-propagates
its slice of that gradient (:func:`gradsurg.cached.cached_loss`). Every
registry loss and objective supports it (their value depends on the batch
only through the embeddings); ``reduction='none'`` cannot be cached (one
scalar is back-propagated), nor can models whose inputs have no batch
dimension (``StaticEmbedding``); both raise at construction.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


def _build(loss: str | nn.Module, params: dict[str, Any]) -> nn.Module:
    if isinstance(loss, nn.Module):
        if params:
            raise ValueError("GradsurgLoss: parameters are given with a loss name, not with a module")
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"GradsurgLoss: 'loss' must be a loss name or an nn.Module, got {type(loss).__name__}")
    from gradsurg.registry import build_loss

    return build_loss(loss, **params)


def _not_cacheable(model: nn.Module, loss: str | nn.Module, params: dict[str, Any]) -> str | None:
    """Why cached steps cannot run for this model and loss (None: they can)."""
    if isinstance(loss, nn.Module):
        reduction = getattr(loss, "kwargs", {}).get("reduction") if isinstance(getattr(loss, "kwargs", None), dict) \
            else getattr(loss, "reduction", None)
    else:
        reduction = params.get("reduction")
    if reduction not in (None, "mean", "sum"):
        return (f"reduction={reduction!r} returns one loss per row, while a cached step back-propagates one "
                "scalar from the whole batch's embeddings; use 'mean' or 'sum'")
    if isinstance(loss, nn.Module) and getattr(loss, "supports_cached_steps", True) is False:
        return getattr(loss, "cached_steps_unsupported_reason", "the loss module declares supports_cached_steps=False")
    if _static_embedding(model):
        return ("the model embeds through a StaticEmbedding, whose inputs (a flat input_ids with offsets) have no "
                "batch dimension to cut into mini-batches; use mini_batch_size=None (a static model's step is cheap)")
    return None


def _vocab(model: nn.Module):
    tokenizer = getattr(model, "tokenizer", None)
    return tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else None


def _static_embedding(model: nn.Module) -> bool:
    """Whether ``model`` embeds through an EmbeddingBag-style ``StaticEmbedding`` (no batch dimension)."""
    return any(type(m).__name__ == "StaticEmbedding" for m in model.modules())


class GradsurgLoss(nn.Module):
    """sentence-transformers loss wrapping a gradsurg gradient function.

    Args:
        model: the ``SentenceTransformer`` being trained (kept as ``self.model``).
        loss: a registry name (``info_nce``, ``arccon``, ``mpt``, ``met``,
            ``mat``, ``paradigm``, ``vicreg``, ...) or a module with
            ``forward(anchors, positives, negatives=None) -> scalar``.
        mini_batch_size: ``None`` (default): the plain step. An int: cached
            (GradCache) steps, embedding ``mini_batch_size`` sentences at a
            time; same gradients, memory of one mini-batch (see the module
            docstring).
        mask_duplicates: drop from each anchor's candidates those whose text (token ids,
            padding ignored) equals the anchor's or its positive's (false negatives;
            ``info_nce`` / ``gist``; :func:`gradsurg.structured.duplicate_keys`).
        guide: a guide ``SentenceTransformer`` (frozen here): its embeddings of every column
            drop the candidates it scores above the positive (``margin_strategy``,
            ``margin``: GISTEmbedLoss' rule). ``GradsurgLoss(model, "gist", guide=guide)`` is
            GISTEmbedLoss itself (``CachedGISTEmbedLoss`` with ``mini_batch_size``).
        **params: the loss's parameters (``temperature``, ``modified``, ...; for ``info_nce``
            also sentence-transformers' ``directions``, ``partition_mode``, ``hardness_mode``,
            ``hardness_strength``, ``scale``).
    """

    def __init__(self, model: nn.Module, loss: str | nn.Module = "info_nce", *,
                 mini_batch_size: int | None = None, mask_duplicates: bool = False, guide: nn.Module | None = None,
                 **params: Any):
        super().__init__()
        name = self._name(loss)
        if not isinstance(mask_duplicates, bool):
            raise TypeError(f"GradsurgLoss: mask_duplicates must be True or False, got {mask_duplicates!r}")
        if (mask_duplicates or guide is not None) and name not in ("info_nce", "gist"):
            raise ValueError(f"GradsurgLoss: mask_duplicates / guide work with 'info_nce' and 'gist', "
                             f"not {name!r}")
        if name == "gist" and guide is None:
            raise ValueError("GradsurgLoss: loss 'gist' needs guide= (the guide SentenceTransformer)")
        self.mask_duplicates = mask_duplicates
        self.guide = guide
        # InfoNCE takes GIST's rule per batch, with the guide's embeddings (GIST itself at construction)
        self.guide_options = {k: params.pop(k) for k in ("margin_strategy", "margin") if k in params} \
            if guide is not None and name == "info_nce" else {}
        # the guide reads the decoded texts when its vocabulary differs (decided once, as GISTEmbedLoss)
        self._retokenize = guide is not None and _vocab(model) != _vocab(guide)
        if guide is not None:
            for p in guide.parameters():
                p.requires_grad_(False)
        if mini_batch_size is not None and (
            not isinstance(mini_batch_size, int) or isinstance(mini_batch_size, bool) or mini_batch_size < 1
        ):
            raise ValueError(f"GradsurgLoss: mini_batch_size must be a positive int or None, got {mini_batch_size!r}")
        if mini_batch_size is not None:
            reason = _not_cacheable(model, loss, params)
            if reason:
                raise ValueError(f"GradsurgLoss: {name!r} cannot run cached steps "
                                 f"(mini_batch_size={mini_batch_size}): {reason}")
        self.model = model
        self.loss_name = name
        self.params = {**params, **self.guide_options}
        self.mini_batch_size = mini_batch_size
        self.loss_fn = _build(loss, params)

    @staticmethod
    def _name(loss) -> str:
        return loss if isinstance(loss, str) else type(loss).__name__

    @property
    def uses_gradient_cache(self) -> bool:
        """sentence-transformers' flag for losses that back-propagate from a hook on their output."""
        return self.mini_batch_size is not None

    @property
    def calculate_loss(self):
        """Not provided: MatryoshkaLoss wraps a cached loss's ``calculate_loss``, which this replay has not."""
        raise TypeError(
            "GradsurgLoss with mini_batch_size cannot be wrapped by MatryoshkaLoss / AdaptiveLayerLoss "
            "(they need sentence-transformers' own cached-loss protocol); use mini_batch_size=None inside them"
        )

    def _embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(features)["sentence_embedding"]

    @property
    def _columns(self) -> bool:
        """Whether the loss takes the hard negatives as sentence-transformers' columns (a list)."""
        return self.loss_name == "gist" or bool(getattr(self.loss_fn, "structured", None)) \
            or self.mask_duplicates or self.guide is not None

    def _loss(self, *embeddings: torch.Tensor, per_batch: dict | None = None) -> torch.Tensor:
        anchors, positives = embeddings[0], embeddings[1]
        if self._columns:
            return self.loss_fn(anchors, positives, list(embeddings[2:]), **(per_batch or {}))
        negatives = torch.cat(embeddings[2:]) if len(embeddings) > 2 else None
        return self.loss_fn(anchors, positives, negatives)

    def _guide_embeddings(self, features: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """The guide's embeddings of every column, without a graph, ``mini_batch_size`` rows at a time
        (re-tokenised from the decoded texts when the guide's vocabulary differs, as GISTEmbedLoss)."""
        from gradsurg.cached import split_batch

        out = []
        with torch.no_grad():
            for f in features:
                chunks = [f] if self.mini_batch_size is None else split_batch(f, self.mini_batch_size)
                embs = []
                for chunk in chunks:
                    chunk = dict(chunk)  # the guide writes into the dict it is given
                    if self._retokenize:
                        texts = self.model.tokenizer.batch_decode(chunk["input_ids"], skip_special_tokens=True)
                        chunk = self.guide.tokenize(texts)
                        device = next(self.guide.parameters()).device
                        chunk = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in chunk.items()}
                    embs.append(self.guide(chunk)["sentence_embedding"])
                out.append(torch.cat(embs))
        return out

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None):
        features = list(sentence_features)
        if not features:
            raise ValueError("GradsurgLoss: no input columns")
        if len(features) == 1:  # unsupervised: the same sentences under two dropout masks
            features = [features[0], features[0]]
        per_batch = {}
        if self.mask_duplicates:
            from gradsurg.structured import duplicate_keys

            per_batch["keys"] = duplicate_keys(features)
        if self.guide is not None:
            per_batch["guide"] = self._guide_embeddings(features)
            per_batch.update(self.guide_options)

        def loss_fn(*embeddings):
            return self._loss(*embeddings, per_batch=per_batch)

        if self.mini_batch_size is not None:
            from gradsurg.cached import cached_loss

            ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)  # the trainer's wrapped model
            return cached_loss(self._embed, features, loss_fn, self.mini_batch_size,
                               no_sync=self.model.no_sync if ddp else None)
        return loss_fn(*[self._embed(f) for f in features])

    def get_config_dict(self) -> dict[str, Any]:
        """What sentence-transformers writes into model cards."""
        config = {"loss": self.loss_name, **{k: v for k, v in self.params.items()}}
        if self.mask_duplicates:
            config["mask_duplicates"] = True
        if self.guide is not None:
            config["guide"] = type(self.guide).__name__
        if self.mini_batch_size is not None:
            config["mini_batch_size"] = self.mini_batch_size
        return config

    @property
    def citation(self) -> str:
        return (
            "@inproceedings{li2024unified,\n"
            "  title={Towards Better Understanding of Contrastive Sentence Representation Learning: "
            "A Unified Paradigm for Gradient},\n"
            "  author={Li, Mingxin and Zhang, Richong and Nie, Zhijie},\n"
            "  booktitle={ACL},\n  year={2024}\n}"
        )
