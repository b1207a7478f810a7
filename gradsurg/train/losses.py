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

from ..normalizer import GlobalNormalizer
from ..registry import accepts, available_losses, build_loss
from .config import ConfigError, TrainConfig

__all__ = ["loss_from_config", "loss_from_fields", "uses_index"]


def uses_index(loss: nn.Module) -> bool:
    """Whether ``loss`` keeps per-example state addressed by the batch's dataset indices (a
    :class:`~gradsurg.GlobalNormalizer`, ``normalizer='global'``): the trainer then passes
    ``index=`` (the corpus positions of the batch's sentences) to every call."""
    return any(isinstance(m, GlobalNormalizer) for m in loss.modules())


def loss_from_fields(loss: str, loss_params: dict | None = None, modified: str | None = None,
                     form: str | None = None, dataset_size: int | None = None) -> nn.Module:
    """The loss of the config fields ``loss``, ``loss_params``, ``modified`` and ``form``.

    ``build_loss(loss, **loss_params)`` with ``modified`` and ``form`` passed on when set; a null
    ``modified`` is the original objective. Errors name the config field (:class:`ConfigError`).
    ``dataset_size``: the training corpus's size, which ``normalizer='global'`` takes as its
    ``dataset_size`` unless ``loss_params`` sets one (checked to cover the corpus); None where the
    corpus is not read yet (a grid's fail-fast check: one example stands in).
    """
    kwargs = dict(loss_params or {})
    if kwargs.get("normalizer") == "global":
        given = kwargs.get("dataset_size")
        if given is None:
            kwargs["dataset_size"] = dataset_size if dataset_size is not None else 1
        elif dataset_size is not None and isinstance(given, int) and not isinstance(given, bool) \
                and given < dataset_size:
            raise ConfigError(f"config field 'loss_params': dataset_size={given} is smaller than the training "
                              f"corpus ({dataset_size} sentences); leave it out and the trainer uses the corpus size")
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


def loss_from_config(config: TrainConfig, dataset_size: int | None = None) -> nn.Module:
    """The loss module described by ``config.loss``, ``config.loss_params``, ``config.modified``
    and ``config.form`` (``dataset_size``: the corpus size, see :func:`loss_from_fields`)."""
    return loss_from_fields(config.loss, config.loss_params, config.modified, config.form, dataset_size)
