"""The loss of a training config, built by :func:`gradsurg.registry.build_loss`.

Every name the registry knows works: the presets (``info_nce``, ``arccon``,
``mpt``, ``met``, ``mat``), custom paradigms (``paradigm`` with
``dissipation=...``, ``weight=...``, ``ratio=...``), and the non-contrastive
objectives with their ``modified`` switches (``w_gd``, ``w_w``, ``w_r``). This
module only maps the config fields onto the registry's keywords and re-raises
its errors (unknown name, unknown or bad parameter) as
:class:`~gradsurg.train.config.ConfigError` naming the config field.
"""
from __future__ import annotations

from torch import nn

from ..registry import accepts, available_losses, build_loss
from .config import ConfigError, TrainConfig

__all__ = ["loss_from_config", "loss_from_fields"]


def loss_from_fields(loss: str, loss_params: dict | None = None, modified: str | None = None,
                     form: str | None = None) -> nn.Module:
    """The loss of the config fields ``loss``, ``loss_params``, ``modified`` and ``form``.

    ``build_loss(loss, **loss_params)`` with ``modified`` and ``form`` passed on when set; a null
    ``modified`` is the original objective. Errors name the config field (:class:`ConfigError`).
    """
    kwargs = dict(loss_params or {})
    if modified:
        kwargs["modified"] = modified
    if form:
        kwargs["form"] = form
    names = available_losses()
    if loss not in names:
        raise ConfigError(f"config field 'loss': unknown loss {loss!r}; available: {', '.join(names)}")
    if not modified and "modified" not in kwargs and accepts(loss, "modified"):
        # a null ``modified`` is the original objective (the "(ori)" row of an ablation), also for
        # losses whose own default switches something on (sg)
        kwargs["modified"] = ""
    try:
        return build_loss(loss, **kwargs)
    except (ValueError, TypeError) as exc:
        where = ("'modified'" if modified and "modified" in str(exc)
                 else "'form'" if form and "form" in str(exc) else "'loss_params'")
        raise ConfigError(f"config field {where} for loss {loss!r}: {exc}") from exc


def loss_from_config(config: TrainConfig) -> nn.Module:
    """The loss module described by ``config.loss``, ``config.loss_params``, ``config.modified``
    and ``config.form``."""
    return loss_from_fields(config.loss, config.loss_params, config.modified, config.form)
