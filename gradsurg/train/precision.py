"""Mixed precision and compilation for the trainer (config fields ``precision`` and ``compile``).

``precision``
    ``fp32``  no autocast: every operation in float32 (the default, what the recorded runs used).
    ``bf16``  ``torch.autocast(device, dtype=torch.bfloat16)`` around the encoder forward and the
              loss. Matrix products and linear layers run in bfloat16, reductions and the loss's
              own numerics in float32 (gradsurg's losses are autocast-aware: value and statistics
              in float32, see docs/api.md). Same exponent range as float32, so no loss scaling.
    ``fp16``  the same with ``torch.float16``, plus a gradient scaler
              (``torch.amp.GradScaler``): the loss is multiplied by the scale before the
              backward pass, the gradients are unscaled before clipping, and a step whose
              gradients hold an inf/NaN is skipped (the weights and the learning-rate schedule
              stay where they were) and counted in ``TrainResult.skipped_steps``; the scale then
              halves. Works on CUDA and, with torch >= 2.3 (autocast float16 and GradScaler on
              CPU), on CPU.

    The weights, the gradients of the weights, the optimiser state and evaluation stay float32
    (autocast casts copies of the weights per operation). Evaluation runs without autocast so
    that the dev scores, which select the checkpoint, do not depend on the training precision.

``compile``
    ``encoder.backbone.compile()`` (``nn.Module.compile``: the transformer's forward goes through
    ``torch.compile``; parameters and state-dict keys are unchanged, so saving, the best-state
    copy and reloading work as without it). Tokenisation and pooling stay eager. The first step
    compiles (seconds to a minute), and so does each new input shape until torch marks the
    sequence length dynamic; evaluation (eval mode, other shapes) compiles once more. On CPU the
    inductor backend writes C++ and needs a C++ compiler: without one the config is refused
    before training starts.
"""
from __future__ import annotations

import contextlib
import shutil
from typing import ContextManager

import torch

from .config import PRECISIONS, ConfigError

#: the autocast dtype of each precision (None: no autocast)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert set(AUTOCAST_DTYPES) == set(PRECISIONS)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` value (None for ``fp32``)."""
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"config field 'precision' is {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return AUTOCAST_DTYPES[precision]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse (:class:`ConfigError` naming the field) a precision this device cannot autocast to."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"config field 'precision' is {precision!r} but torch {torch.__version__} has no autocast "
                          f"for device {device.type!r}; use precision=fp32 or another device")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"config field 'precision' is 'bf16' but {torch.cuda.get_device_name(device)} has no native "
                          "bfloat16 (compute capability < 8.0); use precision=fp16 (with its gradient scaler) or fp32")
    if dtype == torch.float16 and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"config field 'precision' is 'fp16': its gradient scaler supports cuda and cpu, "
                          f"not {device.type!r}; use precision=bf16 or fp32")


def autocast(precision: str, device: torch.device) -> ContextManager:
    """``torch.autocast(device.type, dtype)`` for ``bf16``/``fp16``; a no-op context for ``fp32``."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> "torch.amp.GradScaler | None":
    """A gradient scaler for ``fp16`` (None for the other precisions, which need none)."""
    if autocast_dtype(precision) != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def check_compile(device: torch.device) -> None:
    """Refuse ``compile=true`` where torch.compile cannot work: no Dynamo on this Python/torch, or
    (CPU) no C++ compiler for the inductor backend."""
    try:
        import torch._dynamo  # noqa: F401

        supported = torch._dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001 - reported as unsupported
        supported = False
    if not supported:
        raise ConfigError(f"config field 'compile': torch.compile is not supported by torch {torch.__version__} "
                          "on this Python; use compile=false")
    if device.type == "cpu":
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
        if not any(shutil.which(name) for name in names):
            raise ConfigError("config field 'compile': torch.compile (inductor) on CPU needs a C++ compiler "
                              f"({' or '.join(names)} not found on PATH); install one (e.g. g++) or use compile=false")


def compile_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """Compile the encoder's transformer in place (``backbone.compile()``); return the encoder.

    An encoder without a ``backbone`` (one injected by a test or an integration) is compiled
    whole with ``nn.Module.compile``.
    """
    target = getattr(encoder, "backbone", None)
    (target if isinstance(target, torch.nn.Module) else encoder).compile()
    return encoder
