"""Losses by name: what configs, the trainer and the command line build from.

    >>> from gradsurg.registry import build_loss, available_losses
    >>> loss = build_loss("info_nce", temperature=0.05)          # an nn.Module
    >>> loss = build_loss("paradigm", dissipation="margin", margin=0.3,
    ...                   weight="softmax", temperature=0.05, ratio=1.5)

The non-contrastive objectives and ``sg`` also take ``modified`` (the switches)
and ``form`` (``"default"`` or ``"reference"``, the paper's code's exact
gradient; docs/objectives.md), e.g. ``build_loss("vicreg", modified="w_w",
form="reference")``.

Every built module has ``forward(anchors, positives, negatives=None)`` taking
raw embeddings and returning a scalar. Non-contrastive objectives register
themselves from :mod:`gradsurg.objectives` (``OBJECTIVES``: name -> factory).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from . import losses
from .components import dissipation as D
from .components import ratio as R
from .components import weight as W
from .paradigm import Paradigm

_PRESETS: dict[str, Callable[..., nn.Module]] = {
    "info_nce": losses.InfoNCELoss,
    "arccon": losses.ArcConLoss,
    "mpt": losses.MPTLoss,
    "met": losses.METLoss,
    "mat": losses.MATLoss,
    "siglip": losses.SigLIPLoss,
}

_DISSIPATIONS = {
    "info_nce": D.InfoNCE, "arccon": D.ArcCon, "margin": D.Margin,
    "euclidean_margin": D.EuclideanMargin, "angular_margin": D.AngularMargin, "constant": D.Constant,
}
_WEIGHTS = {"softmax": W.Softmax, "hardest": W.Hardest, "power": W.Power, "uniform": W.Uniform}


def build_paradigm(dissipation: str = "constant", weight: str = "softmax", ratio: float | str = 1.0,
                   *, gd_value: float = 1.0, margin: float | None = None, temperature: float = 0.05,
                   p: float = 5.0, arc_margin: float | None = None) -> Paradigm:
    """A :class:`Paradigm` from plain names and numbers (for configs and the CLI).

    Args:
        dissipation: one of ``info_nce, arccon, margin, euclidean_margin, angular_margin, constant``.
        weight: one of ``softmax, hardest, power, uniform``.
        ratio: a number (``ratio.Constant``) or one of ``arc, euclidean, angular``.
        gd_value: the value of a ``constant`` dissipation.
        margin: the dissipation's margin (its own default when None).
        temperature: of the softmax dissipation/weight.
        p: exponent of ``power`` weights.
        arc_margin: the angular margin of ``arccon``/``arc`` (radians; 10 degrees when None).
    """
    if dissipation not in _DISSIPATIONS:
        raise ValueError(f"build_paradigm: dissipation must be one of {sorted(_DISSIPATIONS)}, got {dissipation!r}")
    if weight not in _WEIGHTS:
        raise ValueError(f"build_paradigm: weight must be one of {sorted(_WEIGHTS)}, got {weight!r}")
    dkw: dict[str, Any] = {}
    if dissipation in ("info_nce", "arccon"):
        dkw["temperature"] = temperature
    if dissipation == "arccon" and arc_margin is not None:
        dkw["margin"] = arc_margin
    if dissipation in ("margin", "euclidean_margin", "angular_margin") and margin is not None:
        dkw["margin"] = margin
    if dissipation == "constant":
        dkw["value"] = gd_value
    wkw = {"softmax": {"temperature": temperature}, "power": {"p": p}}.get(weight, {})
    if isinstance(ratio, str):
        named = {"arc": R.Arc(**({} if arc_margin is None else {"margin": arc_margin})),
                 "euclidean": R.Euclidean(), "angular": R.Angular()}
        if ratio not in named:
            raise ValueError(f"build_paradigm: ratio must be a number or one of {sorted(named)}, got {ratio!r}")
        r = named[ratio]
    else:
        r = R.Constant(ratio)
    return Paradigm(_DISSIPATIONS[dissipation](**dkw), _WEIGHTS[weight](**wkw), r)


def _factories() -> dict[str, Callable[..., nn.Module]]:
    from .objectives import OBJECTIVES  # imported here: the objectives build on this package's core

    return {**_PRESETS, "paradigm": _paradigm_module, **OBJECTIVES}


def _paradigm_module(symmetric: bool = False, **params) -> nn.Module:
    unused = sorted(set(params) - _paradigm_uses(params.get("dissipation", "constant"), params.get("weight", "softmax"),
                                                 params.get("ratio", 1.0)))
    if unused:
        raise ValueError(
            f"loss 'paradigm': parameter(s) {', '.join(unused)} have no effect with dissipation="
            f"{params.get('dissipation', 'constant')!r}, weight={params.get('weight', 'softmax')!r}, "
            f"ratio={params.get('ratio', 1.0)!r}; remove them"
        )
    return losses.ParadigmLoss(build_paradigm(**params), symmetric=symmetric)


def _paradigm_uses(dissipation: Any, weight: Any, ratio: Any) -> set[str]:
    """The :func:`build_paradigm` parameters that a choice of components reads."""
    used = {"dissipation", "weight", "ratio"}
    if dissipation in ("info_nce", "arccon") or weight == "softmax":
        used.add("temperature")
    if dissipation in ("margin", "euclidean_margin", "angular_margin"):
        used.add("margin")
    if dissipation == "arccon" or ratio == "arc":
        used.add("arc_margin")
    if dissipation == "constant":
        used.add("gd_value")
    if weight == "power":
        used.add("p")
    return used


def _check_module_options(name: str, params: dict[str, Any]) -> None:
    """The module options of the paradigm losses, checked when the loss is built (not at its first call)."""
    from .engine.validation import BACKENDS, REDUCTIONS

    for flag in ("symmetric", "check_finite", "gather_across_devices"):
        if flag in params and not isinstance(params[flag], bool):
            raise TypeError(f"loss {name!r}: {flag} must be true or false, got {params[flag]!r}")
    if "reduction" in params and params["reduction"] not in REDUCTIONS:
        raise ValueError(f"loss {name!r}: reduction must be one of {', '.join(REDUCTIONS)}, got {params['reduction']!r}")
    if "backend" in params and params["backend"] not in BACKENDS:
        raise ValueError(f"loss {name!r}: backend must be one of {', '.join(BACKENDS)}, got {params['backend']!r}")


_MODULE_OPTIONS = {"symmetric", "reduction", "backend", "check_finite", "gather_across_devices", "group"}


def _accepted_parameters(factory) -> set[str] | None:
    """Keyword names ``factory`` accepts (None: anything goes)."""
    if factory is _paradigm_module:
        return set(inspect.signature(build_paradigm).parameters) | {"symmetric"}
    params = inspect.signature(factory).parameters
    names = {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD and k != "self"}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        if isinstance(factory, type) and issubclass(factory, losses.ParadigmLoss):
            return names | _MODULE_OPTIONS
        return None
    return names


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss`."""
    return sorted(_factories())


def accepts(name: str, parameter: str) -> bool:
    """Whether the loss ``name`` has a keyword ``parameter`` of its own (False for an unknown name)."""
    factory = _factories().get(name)
    if factory is None:
        return False
    allowed = _accepted_parameters(factory)
    return allowed is not None and parameter in allowed


def build_loss(name: str, **params) -> nn.Module:
    """Build the loss module ``name`` with hyper-parameters ``params``: the one builder by name.

    Configs and the trainer reach it through :func:`gradsurg.train.losses.loss_from_config`
    (which names the config field in its errors), the sentence-transformers integration directly.

    Raises ``ValueError`` (``TypeError`` for a wrong type) naming the loss or
    the parameter when either is unknown, when a parameter would have no effect
    (``paradigm`` with ``margin`` but a dissipation without one), or when a
    module option (``symmetric``, ``reduction``, ``backend``, ...) is invalid:
    at build time, not at the first forward.
    """
    table = _factories()
    if name not in table:
        raise ValueError(f"unknown loss {name!r}; available: {', '.join(sorted(table))}")
    factory = table[name]
    allowed = _accepted_parameters(factory)
    if allowed is not None:
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(
                f"loss {name!r}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}"
            )
    _check_module_options(name, params)
    return factory(**params)
