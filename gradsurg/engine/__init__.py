"""The backward engine: validation, backend dispatch, the autograd Function."""
from .function import ParadigmFunction, paradigm_loss, resolve_backend

__all__ = ["ParadigmFunction", "paradigm_loss", "resolve_backend"]
