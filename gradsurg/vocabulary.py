"""The names and dtypes every layer shares, defined once (the bottom layer: imports torch only).

Backends and reductions by name, the floating dtypes a loss takes, and the
precision rule of the engine: everything is computed in float32, except
float64, which stays float64. The Triton kernels (``gradsurg_kernels``, a
pure layer that imports nothing of gradsurg) keep their own copy of
:data:`KERNEL_DTYPES` in ``gradsurg_kernels.launch``.
"""
from __future__ import annotations

import torch

#: ``backend=`` of every loss: ``auto`` lets :mod:`gradsurg.engine.dispatch` choose
BACKENDS = ("auto", "torch", "triton")
#: ``reduction=`` of every loss
REDUCTIONS = ("mean", "sum", "none")
#: ``distributed=`` of the paradigm losses (or None): how the candidates of every rank are reached
DISTRIBUTED = ("gather", "ring")

#: the floating dtypes of the inputs, in a fixed order (ranks exchange a dtype as its index here)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: the 16-bit dtypes: operands of half-precision products (float32 accumulation and results)
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: the input dtypes the Triton kernels take
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: dtype by name, as the command line spells it (``float32``, ``bfloat16``, ...)
DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in FLOAT_DTYPES}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
