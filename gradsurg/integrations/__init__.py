"""Integrations with the libraries where users train and evaluate.

- :mod:`gradsurg.integrations.sentence_transformers` -- :class:`GradsurgLoss`,
  a sentence-transformers loss (``SentenceTransformerTrainer``) wrapping any gradsurg loss;
- :mod:`gradsurg.integrations.mteb` -- :class:`MTEBEncoder`, an ``encode() -> numpy``
  wrapper of gradsurg-trained encoders for MTEB;
- :mod:`gradsurg.integrations.open_clip` -- ``ClipLoss`` and ``SigLipLoss``, drop-ins for
  open_clip's (same arguments, values and gradients; docs/open_clip.md).

Each submodule imports its library lazily; importing this package needs neither.
"""
__all__ = ["GradsurgLoss", "MTEBEncoder"]


def __getattr__(name):
    if name == "GradsurgLoss":
        from .sentence_transformers import GradsurgLoss

        return GradsurgLoss
    if name == "MTEBEncoder":
        from .mteb import MTEBEncoder

        return MTEBEncoder
    raise AttributeError(name)
