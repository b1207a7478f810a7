"""STS scoring: Spearman and Pearson correlation (x100) of cosine similarity with gold scores.

    from gradsurg.train import load_encoder, read_sts_pairs, evaluate_sts
    enc = load_encoder("minilm")
    print(evaluate_sts(enc, read_sts_pairs("../shared/data/stsb/stsb-en-dev.csv")))

Any encoder exposing ``encode(texts) -> array`` can be scored by
:func:`evaluate_sts`, e.g. a ``SentenceTransformer``. The seven STS tasks are
:mod:`gradsurg.train.suite`; the ``gradsurg evaluate`` command is
:mod:`gradsurg.train.evaluate`.
"""
from __future__ import annotations

import numpy as np

from .config import ConfigError
from .data import STSPairs, check_pairs


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    n = len(x)
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation of two 1-D sequences (nan when one is constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(_average_ranks(np.asarray(x, dtype=np.float64)), _average_ranks(np.asarray(y, dtype=np.float64)))


def check_batch_size(batch_size, where: str = "batch_size") -> int:
    """``batch_size`` must be an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {batch_size!r}")
    return batch_size


def cosine_scores(encoder, pairs: STSPairs, batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Cosine similarity of each pair; every distinct sentence is embedded once."""
    check_batch_size(batch_size)
    unique = list(dict.fromkeys(list(pairs.sentences1) + list(pairs.sentences2)))
    index = {s: i for i, s in enumerate(unique)}
    kwargs = {"batch_size": batch_size}
    if progress:
        kwargs["progress"] = True
    try:
        emb = encoder.encode(unique, convert_to_numpy=True, **kwargs)
    except TypeError:  # a third-party encode() without our keywords
        emb = encoder.encode(unique, batch_size=batch_size)
    if hasattr(emb, "detach"):  # a torch tensor
        emb = emb.detach().float().cpu().numpy()
    emb = np.asarray(emb, dtype=np.float64)
    if emb.shape[0] != len(unique) or not np.isfinite(emb).all():
        raise ValueError(f"the encoder returned {'non-finite' if emb.shape[0] == len(unique) else 'too few'} "
                         f"embeddings for {len(unique)} sentences (shape {emb.shape})")
    emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    a = emb[[index[s] for s in pairs.sentences1]]
    b = emb[[index[s] for s in pairs.sentences2]]
    return (a * b).sum(axis=1)


def evaluate_sts(encoder, pairs: STSPairs, batch_size: int = 128, progress: bool = False) -> dict:
    """``{"spearman", "pearson"}`` (both x100), ``n_pairs`` and ``data`` for ``encoder`` on ``pairs``.

    The gold scores must be finite and not all equal (:class:`ConfigError`
    otherwise). Both correlations are NaN when the encoder's similarities are
    all equal (a collapsed encoder): undefined, not zero.
    """
    check_pairs(pairs, f"STS pairs {pairs.name!r}")
    sims = cosine_scores(encoder, pairs, batch_size=batch_size, progress=progress)
    gold = np.asarray(pairs.scores, dtype=np.float64)
    return {
        "spearman": 100.0 * spearman(sims, gold),
        "pearson": 100.0 * pearson(sims, gold),
        "n_pairs": int(len(pairs)),
        "data": pairs.name,
    }
