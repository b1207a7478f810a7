"""The one place a backend is chosen, and why.

Backends implement ``supports(x, paradigm, d=None) -> str | None`` and
``direction(x, c, paradigm, row_weights, **options)`` (see
``docs/api.md``, "Backends"). :func:`choose` picks one:

* ``'torch'``: the chunked torch backend, always.
* ``'triton'``: the Triton backend; a ``ValueError`` with the reason when
  Triton is missing, fails to import, or does not support the inputs.
* ``'auto'``: Triton for CUDA tensors when it is installed, imports and
  supports the inputs; else torch. A Triton that is installed but fails to
  import is reported once (a ``RuntimeWarning`` with the error), never
  silently skipped.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings

import torch
from torch import Tensor

from ..paradigm import Paradigm
from ..vocabulary import BACKENDS
from . import torch_backend

_TRITON_MODULE = "gradsurg.engine.triton_backend"
_warned = False


@torch.compiler.assume_constant_result
def triton_problem() -> str:
    """Why the Triton backend cannot be used here ('' when it imports). Imports it on first call."""
    if _TRITON_MODULE in sys.modules:
        return ""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    try:
        importlib.import_module(_TRITON_MODULE)
    except Exception as exc:  # reported by the callers, with the error: never swallowed silently
        return f"Triton is installed but gradsurg's Triton backend failed to import: {type(exc).__name__}: {exc}"
    return ""


def module(name: str, where: str = "paradigm_loss"):
    """The backend module called ``name`` ('torch' or 'triton'); errors start with ``where``."""
    if name == "torch":
        return torch_backend
    problem = triton_problem()
    if problem:
        raise ValueError(f"{where}: backend='triton' is unavailable: {problem}")
    return sys.modules[_TRITON_MODULE]


def choose(backend: str, x: Tensor, paradigm: Paradigm, where: str = "paradigm_loss"):
    """``(module, reason)``: the backend that runs ``x`` with ``paradigm``, and why it was picked.
    Both backends take learnable hyper-parameters (their gradient comes from the row statistics).
    Errors start with ``where`` (the function the user called)."""
    if backend == "torch":
        return torch_backend, "backend='torch' was asked for"
    if backend == "triton":
        mod = module("triton", where)
        why = mod.supports(x, paradigm, x.shape[-1])
        if why:
            raise ValueError(f"{where}: backend='triton' cannot run these inputs: {why}")
        return mod, "backend='triton' was asked for"
    if backend != "auto":
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")
    if not _on_cuda(x):
        return torch_backend, f"the tensors are on {x.device.type}, not CUDA: the Triton kernels need a GPU"
    problem = triton_problem()
    if problem:
        if "failed to import" in problem:
            _warn_once(problem)
        return torch_backend, problem
    mod = sys.modules[_TRITON_MODULE]
    why = mod.supports(x, paradigm, x.shape[-1])
    if why:
        return torch_backend, f"Triton does not cover this: {why}"
    return mod, "CUDA tensors, Triton available and supporting the dtype and components"


def structured_reason(why: str | None = None) -> str:
    """Why the Triton kernels cannot run a structured candidate set: ``why`` (the caller's one-line
    reason the options are not one paradigm, e.g. :func:`gradsurg.structured.mnrl_route`'s), or the
    general reason."""
    from .candidates import TRITON_REASON

    if why is None:
        return TRITON_REASON
    return f"{why}; only the chunked torch engine implements that (engine/candidates.py)"


def choose_structured(backend: str, x: Tensor, where: str = "paradigm_loss", why: str | None = None):
    """``(torch module, reason)`` for a structured candidate set (:mod:`gradsurg.engine.candidates`:
    directions, masks, guides, hardness on some negatives, several or soft targets): only the chunked
    torch engine implements it; ``backend='triton'`` raises with the reason, ``'auto'`` names it.
    ``why``: the caller's reason the options are not one paradigm (:func:`structured_reason`).
    Errors start with ``where`` (the function the user called)."""
    reason = structured_reason(why)
    if backend == "triton":
        raise ValueError(f"{where}: backend='triton' cannot run these inputs: {reason}")
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return torch_backend, "backend='torch' was asked for"
    return torch_backend, f"Triton does not cover this: {reason}"


def explain_structured(why: str | None = None) -> str:
    """What ``backend='auto'`` picks for a structured candidate set, and why (``gradsurg doctor``)."""
    return f"torch: {choose_structured('auto', torch.empty(0), why=why)[1]}"


def _on_cuda(x: Tensor) -> bool:
    return x.is_cuda


def _warn_once(problem: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"gradsurg: backend='auto' uses the torch backend: {problem}", RuntimeWarning, stacklevel=3)


def explain(dtype: torch.dtype, d: int, paradigm: Paradigm, device: str = "cuda") -> str:
    """What ``backend='auto'`` picks for (device, dtype, d, paradigm), and why (``gradsurg doctor``)."""
    if device != "cuda":
        return f"torch: the tensors are on {device}, not CUDA: the Triton kernels need a GPU"
    problem = triton_problem()
    if problem:
        return f"torch: {problem}"
    mod = sys.modules[_TRITON_MODULE]
    why = mod.covers(dtype, paradigm)  # what the kernels implement, whatever device this machine has
    if why:
        return f"torch: Triton does not cover this: {why}"
    return f"triton: {mod.describe(dtype, d, paradigm)}"
