"""The Triton backend (the protocol of :mod:`gradsurg.engine.dispatch`): a thin
adapter over the launchers of ``kernels/`` (``gradsurg.kernels.launch``).

Importing this module imports Triton; an error here is reported by the
dispatcher (never swallowed).
"""
from __future__ import annotations

from torch import Tensor

from ..kernels import launch
from ..paradigm import Paradigm
from .torch_backend import check_options

NAME = "triton"
#: the options :func:`direction` accepts (tile sizes and TF32; see docs/kernels.md)
OPTIONS = ("allow_tf32", "block_n", "block_m", "block_k", "block_d", "num_warps", "num_stages", "acc_in_regs")


def supports(x: Tensor, paradigm: Paradigm, d: int | None = None) -> str | None:
    """None when the kernels cover ``x``'s dtype and the paradigm's components, else why not."""
    if x.dtype not in launch._DTYPES:
        return f"the kernels take float32, float16 or bfloat16, not {x.dtype}"
    if not launch.supports(x, paradigm):
        return f"the kernels do not implement the components of {paradigm!r}"
    return None


def describe(dtype, d: int, paradigm: Paradigm) -> str:
    """Which kernel path would run (a stub until the kernels describe their tiles)."""
    return f"fused row/column kernels (d = {d}, {str(dtype).replace('torch.', '')}), default tiles"


def direction(x: Tensor, c: Tensor, paradigm: Paradigm, row_weights, **options):
    """One direction through the fused kernels: loss rows and float32 gradients."""
    check_options(options, OPTIONS, NAME)
    return launch.forward(x, c, paradigm, symmetric=False, row_scale=row_weights, **options)
