"""A sentence-transformers loss that trains with any gradsurg loss.

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from gradsurg.integrations.sentence_transformers import GradsurgLoss

    model = SentenceTransformer("all-MiniLM-L6-v2")
    loss = GradsurgLoss(model, "vicreg", modified="w_gd,w_w,w_r")
    # or: GradsurgLoss(model, "info_nce", temperature=0.05)
    #     GradsurgLoss(model, my_module)   # any nn.Module (anchors, positives, negatives) -> scalar
    trainer = SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss)

Columns of the dataset (in order): ``(anchor, positive)`` or
``(anchor, positive, negative_1, ...)``; the extra columns become the loss's
hard negatives (concatenated). With a single column, the anchor is embedded
twice and dropout gives the positive view (unsupervised SimCSE). Labels are
ignored. Embeddings are passed RAW (the loss normalises); keep a
``Normalize`` module out of the model, or know that it is applied first.
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


class GradsurgLoss(nn.Module):
    """sentence-transformers loss wrapping a gradsurg gradient function.

    Args:
        model: the ``SentenceTransformer`` being trained (kept as ``self.model``).
        loss: a registry name (``info_nce``, ``arccon``, ``mpt``, ``met``,
            ``mat``, ``paradigm``, ``vicreg``, ...) or a module with
            ``forward(anchors, positives, negatives=None) -> scalar``.
        **params: the loss's parameters (``temperature``, ``modified``, ...).
    """

    def __init__(self, model: nn.Module, loss: str | nn.Module = "info_nce", **params: Any):
        super().__init__()
        self.model = model
        self.loss_name = loss if isinstance(loss, str) else type(loss).__name__
        self.params = dict(params)
        self.loss_fn = _build(loss, params)

    def forward(self, sentence_features: Iterable[dict[str, torch.Tensor]], labels: torch.Tensor | None = None):
        features = list(sentence_features)
        if not features:
            raise ValueError("GradsurgLoss: no input columns")
        if len(features) == 1:  # unsupervised: the same sentences under two dropout masks
            features = [features[0], features[0]]
        embeddings = [self.model(f)["sentence_embedding"] for f in features]
        anchors, positives = embeddings[0], embeddings[1]
        negatives = torch.cat(embeddings[2:]) if len(embeddings) > 2 else None
        return self.loss_fn(anchors, positives, negatives)

    def get_config_dict(self) -> dict[str, Any]:
        """What sentence-transformers writes into model cards."""
        return {"loss": self.loss_name, **{k: v for k, v in self.params.items()}}

    @property
    def citation(self) -> str:
        return (
            "@inproceedings{li2024unified,\n"
            "  title={Towards Better Understanding of Contrastive Sentence Representation Learning: "
            "A Unified Paradigm for Gradient},\n"
            "  author={Li, Mingxin and Zhang, Richong and Nie, Zhijie},\n"
            "  booktitle={ACL},\n  year={2024}\n}"
        )
