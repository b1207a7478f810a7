"""Shared machinery of the three component families (GD, W, R)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from torch import Tensor

from ._rows import Rows


#: the largest finite float32 and the smallest normal one: a hyper-parameter (and, when it
#: divides, its reciprocal) must be representable in float32, where the engine computes
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38


def check_positive(name: str, value: float, owner: str) -> float:
    """``value`` must be a real number > 0 that float32 holds with its reciprocal
    (``[1.18e-38, 3.4e38]``: a temperature of 1e-39 would make ``1/tau`` infinite)."""
    _check_real(name, value, owner)
    if not value > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")
    if not FLOAT32_TINY <= value <= FLOAT32_MAX:
        raise ValueError(f"{owner}: {name} must be in [{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}] (finite in float32 "
                         f"together with its reciprocal), got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float, owner: str, upper: float | None = None) -> float:
    """``value`` must be a real number >= 0 (and <= ``upper``; at most 3.4e38, finite in float32)."""
    _check_real(name, value, owner)
    if value < 0 or (upper is not None and value > upper):
        bound = f"in [0, {upper:g}]" if upper is not None else ">= 0"
        raise ValueError(f"{owner}: {name} must be {bound}, got {value!r}")
    if value > FLOAT32_MAX:
        raise ValueError(f"{owner}: {name} must be at most {FLOAT32_MAX:.3g} (finite in float32), got {value!r}")
    return float(value)


def check_real(name: str, value: float, owner: str) -> float:
    """``value`` must be a finite real number."""
    _check_real(name, value, owner)
    return float(value)


def _check_real(name: str, value: float, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")


@dataclass(frozen=True)
class Component:
    """Base of every component: a frozen, hashable set of hyper-parameters.

    ``params()`` gives the hyper-parameters as a dict (in field order); a
    component is rebuilt from its class name and those values
    (:meth:`gradsurg.Paradigm.encode`).
    """

    def params(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __repr__(self) -> str:  # e.g. Softmax(temperature=0.05)
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Dissipation(Component):
    """Gradient dissipation: a scalar ``GD_i >= 0`` per anchor."""


    def __call__(self, rows: Rows) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Weight(Component):
    """Weights ``W_ij >= 0`` over the negatives, each row summing to 1."""


    def __call__(self, rows: Rows) -> Tensor:  # pragma: no cover - abstract
        """Return the (n, M) weights with ``W_ii = 0``; may reuse ``rows``' buffers."""
        raise NotImplementedError

    def scaled(self, rows: Rows, factor: Tensor) -> Tensor:
        """``factor_i * W_ij`` (one pass fewer where a member can fuse it)."""
        return self(rows).mul_(factor[:, None])


class Ratio(Component):
    """Ratio ``R_i``: the pull to the positive relative to the negatives' push."""


    def __call__(self, rows: Rows) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pull(self, rows: Rows, gd: Tensor, dissipation: Dissipation) -> Tensor:
        """``GD_i * R_i``, the coefficient of the positive in ``-dL_i/ds_ii``."""
        return gd * self(rows)
