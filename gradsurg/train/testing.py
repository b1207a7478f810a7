"""Tiny models and data for tests and smoke runs (no network, seconds on a CPU).

``make_tiny_model(path)`` writes a randomly initialised 2-layer BERT (hidden
32) with the packaged MiniLM tokenizer; ``write_tiny_sts(path)`` a small
STS-B-style CSV; ``tiny_sentences()`` a list of short distinct sentences.
"""
from __future__ import annotations

import csv
import os
import random

_WORDS = ("a man woman child dog cat plays guitar piano rides horse bike eats food apple runs walks "
          "on the street in park with red blue small big old young house car drives reads book").split()


def tiny_sentences(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` distinct short sentences over a small vocabulary."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        s = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 9)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write_tiny_sts(path: str, n: int = 40, seed: int = 0) -> str:
    """An STS-B-style CSV (no header: s1,s2,score) with word-overlap scores in [0, 5]."""
    rng = random.Random(seed)
    sents = tiny_sentences(2 * n, seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        for i in range(n):
            a = sents[i]
            if i % 2 == 0:
                words = a.split()
                words[rng.randrange(len(words))] = rng.choice(_WORDS)
                b = " ".join(words)
            else:
                b = sents[n + i]
            wa, wb = set(a.split()), set(b.split())
            w.writerow([a, b, round(5.0 * len(wa & wb) / len(wa | wb), 3)])
    return path


def make_tiny_model(path: str, hidden: int = 32, layers: int = 2, seed: int = 0,
                    initializer_range: float = 0.02) -> str:
    """Save a random tiny BERT plus the packaged MiniLM tokenizer to ``path``; return ``path``.

    ``initializer_range`` is BERT's weight std (and that of the ``cls`` pooler's MLP): at BERT's
    0.02 a random tiny model embeds every sentence almost alike (cosines near 1); 0.2 spreads them.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from .models import packaged_minilm_path

    tok = AutoTokenizer.from_pretrained(packaged_minilm_path(), local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                        initializer_range=initializer_range)
    os.makedirs(path, exist_ok=True)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_workspace(root) -> dict:
    """A tiny random BERT, a 48-sentence corpus and a 40-pair STS file under ``root`` (a folder):
    ``{"root", "model", "corpus", "sts"}``, what the trainer's tests train and evaluate on."""
    root = os.fspath(root)
    model = make_tiny_model(os.path.join(root, "bert"))
    corpus = os.path.join(root, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(tiny_sentences(48)) + "\n")
    sts = write_tiny_sts(os.path.join(root, "sts.csv"))
    return {"root": root, "model": model, "corpus": corpus, "sts": sts}
