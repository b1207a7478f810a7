"""The loss of a training config, built through :mod:`gradsurg.registry`.

Every name the registry knows works: the presets (``info_nce``, ``arccon``,
``mpt``, ``met``, ``mat``), custom paradigms (``paradigm`` with
``dissipation=...``, ``weight=...``, ``ratio=...``), and the non-contrastive
objectives with their ``modified`` switches (``w_gd``, ``w_w``, ``w_r``). Errors from the registry (unknown
name, unknown or bad parameter) are re-raised as
:class:`~gradsurg.train.config.ConfigError` naming the config field.
"""
from __future__ import annotations

from torch import nn

from ..registry import available_losses
from ..registry import build_loss as registry_build
from .config import ConfigError, TrainConfig

__all__ = ["available_losses", "build_loss", "loss_from_config"]


def build_loss(name: str, params: dict | None = None, modified: str | None = None) -> nn.Module:
    """``gradsurg.registry.build_loss(name, **params)`` with errors naming the config fields."""
    kwargs = dict(params or {})
    if modified:
        kwargs["modified"] = modified
    names = available_losses()
    if name not in names:
        raise ConfigError(f"config field 'loss': unknown loss {name!r}; available: {', '.join(names)}")
    try:
        return registry_build(name, **kwargs)
    except (ValueError, TypeError) as exc:
        where = "'modified'" if modified and "modified" in str(exc) else "'loss_params'"
        raise ConfigError(f"config field {where} for loss {name!r}: {exc}") from exc


def loss_from_config(config: TrainConfig) -> nn.Module:
    """The loss module described by ``config.loss``, ``config.loss_params`` and ``config.modified``."""
    return build_loss(config.loss, config.loss_params, config.modified)
