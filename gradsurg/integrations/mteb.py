"""An MTEB-compatible encoder for models trained (or loaded) with :mod:`gradsurg.train`.

    from gradsurg.integrations.mteb import MTEBEncoder
    encoder = MTEBEncoder("runs/ablate/runs/info_nce_seed1-.../best")   # or "minilm"
    emb = encoder.encode(["a sentence", "another"])                       # numpy (2, d)

    import mteb
    results = mteb.evaluate(encoder, mteb.get_tasks(tasks=["STSBenchmark"]))   # when mteb is installed

``encode`` accepts the keywords MTEB passes (``task_name``, ``prompt_type``,
``batch_size``, ``show_progress_bar``, ...) and ignores the ones it does not
need; it also accepts a batched iterable of dicts with a ``text`` key (the
DataLoader MTEB 2.x hands to encoders). The similarity is cosine.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np


def _texts(inputs: Any) -> list[str]:
    """Flatten MTEB's inputs (a list of strings, or batches of {'text': [...]}) into strings."""
    if isinstance(inputs, str):
        return [inputs]
    out: list[str] = []
    for item in inputs:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and "text" in item:
            value = item["text"]
            out.extend([value] if isinstance(value, str) else [str(v) for v in value])
        else:
            out.append(str(item))
    return out


class MTEBEncoder:
    """Wrap a gradsurg :class:`~gradsurg.train.models.Encoder` (or a model name/path) for MTEB.

    Args:
        model: an ``Encoder`` or anything :func:`gradsurg.train.models.load_encoder` loads.
        pooler: override the pooler when loading by name.
        batch_size: default encoding batch size.
        normalize: return unit vectors (cosine = dot product).
        device: where to run (``auto``: CUDA when available).
    """

    def __init__(self, model: Any = "minilm", pooler: str | None = None, batch_size: int = 128,
                 normalize: bool = True, device: str = "auto"):
        from gradsurg.train.models import Encoder, load_encoder, pick_device

        if isinstance(model, Encoder):
            self.encoder = model.to(pick_device(device))
            name = getattr(model.backbone.config, "_name_or_path", "gradsurg-encoder")
        else:
            self.encoder = load_encoder(model, pooler=pooler, device=device)
            name = str(model)
        self.batch_size = batch_size
        self.normalize = normalize
        self.model_name = name
        self.similarity_fn_name = "cosine"
        # MTEB reads model metadata from `mteb_model_meta` when present; keep a minimal, honest one
        self.mteb_model_meta = None

    def encode(self, sentences: Iterable[str] | Any, *, batch_size: int | None = None,
               show_progress_bar: bool = False, **kwargs: Any) -> np.ndarray:
        """Embeddings of ``sentences`` as a float32 numpy array ``(n, d)``."""
        texts = _texts(sentences)
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        emb = self.encoder.encode(texts, batch_size=batch_size or self.batch_size, convert_to_numpy=True,
                                  progress=show_progress_bar, normalize=self.normalize)
        return np.asarray(emb, dtype=np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity matrix between two embedding arrays."""
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
        b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
        return a @ b.T

    def similarity_pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of row i of ``a`` with row i of ``b``."""
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
        b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
        return (a * b).sum(axis=1)
