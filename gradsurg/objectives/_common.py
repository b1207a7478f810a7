"""Shared pieces of the objectives: switch parsing, hyper-parameter checks, input checks."""
from __future__ import annotations

import math
import re
from typing import Iterable

from torch import Tensor

from ..engine.validation import check_embeddings

#: the three paradigm modifications of docs/objectives.md
SWITCHES = ("w_gd", "w_w", "w_r")

#: ``form=``: "default" (the documented, clean objectives) or "reference" (the exact gradient of the
#: paper's code, BDBC-KG-NLP/UnderstandingCSE isotropy/models.py; docs/objectives.md lists the differences)
FORMS = ("default", "reference")


def check_form(form, where: str) -> str:
    """``form`` checked against :data:`FORMS` (ValueError naming ``form`` otherwise)."""
    if not isinstance(form, str) or form not in FORMS:
        raise ValueError(f"{where}: form must be one of {', '.join(map(repr, FORMS))}, got {form!r}")
    return form


def parse_switches(modified: str | Iterable[str] | None, where: str) -> frozenset[str]:
    """``"w_gd,w_w"`` / ``["w_gd", "w_w"]`` / ``""`` / None -> a frozenset of switch names.

    Separators in a string: comma, ``+``, ``.``, ``|`` or whitespace; ``"all"``
    means all three. Unknown names raise ``ValueError`` naming ``modified``.
    """
    if modified is None:
        return frozenset()
    if isinstance(modified, str):
        names = [t for t in re.split(r"[,\s+.|]+", modified.strip()) if t]
    else:
        try:
            names = list(modified)
        except TypeError:
            raise TypeError(
                f"{where}: modified must be a string like 'w_gd,w_w,w_r' or an iterable of switch names, "
                f"got {type(modified).__name__}"
            ) from None
    out = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{where}: modified must contain switch names (str), got {type(name).__name__}")
        key = name.strip().lower()
        if key == "all":
            out.update(SWITCHES)
        elif key in SWITCHES:
            out.add(key)
        else:
            raise ValueError(f"{where}: unknown switch {name!r} in modified; expected any of {', '.join(SWITCHES)}")
    return frozenset(out)


def real(name: str, value, where: str, *, low: float | None = None, high: float | None = None,
         strict_low: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a float, checked: finite, ``>= low`` (``> low`` if strict_low), ``<= high``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    if low is not None and (value <= low if strict_low else value < low):
        raise ValueError(f"{where}: {name} must be {'>' if strict_low else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{where}: {name} must be <= {high:g}, got {value!r}")
    return value


def check_views(anchors: Tensor, positives: Tensor, negatives: Tensor | None, where: str,
                allow_negatives: bool = False) -> Tensor | None:
    """Validate the two views (and extra negatives where the objective uses them)."""
    if negatives is not None and not allow_negatives:
        raise ValueError(
            f"{where}: negatives are meaningless for this non-contrastive objective (its negatives are the "
            f"other rows of the batch); pass negatives=None"
        )
    return check_embeddings(anchors, positives, negatives, where=where)


def format_switches(switches: frozenset[str]) -> str:
    return ",".join(s for s in SWITCHES if s in switches)
