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


def build_loss(name: str, params: dict | None = None, modified: str | None = None,
               form: str | None = None) -> nn.Module:
    """``gradsurg.registry.build_loss(name, **params)`` with errors naming the config fields.

    ``modified`` and ``form`` (the config fields of those names) are passed on when set.
    """
    kwargs = dict(params or {})
    if modified:
        kwargs["modified"] = modified
    if form:
        kwargs["form"] = form
    names = available_losses()
    if name not in names:
        raise ConfigError(f"config field 'loss': unknown loss {name!r}; available: {', '.join(names)}")
    if not modified and "modified" not in kwargs and _takes("modified", name):
        # a null ``modified`` is the original objective (the "(ori)" row of an ablation), also for
        # losses whose own default switches something on (sg)
        kwargs["modified"] = ""
    try:
        return registry_build(name, **kwargs)
    except (ValueError, TypeError) as exc:
        where = ("'modified'" if modified and "modified" in str(exc)
                 else "'form'" if form and "form" in str(exc) else "'loss_params'")
        raise ConfigError(f"config field {where} for loss {name!r}: {exc}") from exc


def _takes(parameter: str, name: str) -> bool:
    """Whether the registry's factory ``name`` has a keyword ``parameter``."""
    from ..registry import _accepted_parameters, _factories

    allowed = _accepted_parameters(_factories()[name])
    return allowed is not None and parameter in allowed


def loss_from_config(config: TrainConfig) -> nn.Module:
    """The loss module described by ``config.loss``, ``config.loss_params``, ``config.modified``
    and ``config.form``."""
    return build_loss(config.loss, config.loss_params, config.modified, config.form)
