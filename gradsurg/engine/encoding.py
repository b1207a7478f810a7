"""The op boundary's encoding: backend options and hyper-parameter names as strings.

``gradsurg::direction`` (:mod:`gradsurg.engine.op`) is a ``torch.library``
custom operator, whose schema takes tensors and primitives only. A backend's
``options`` (a dict) therefore cross it as one string, and the names of the
learnable hyper-parameters as another; this module writes and reads both, and
nothing else does.

* options: ``{"chunk_bytes": 1024, "path": "fused"}`` <-> ``"{'chunk_bytes': 1024, 'path': 'fused'}"``
  (a Python dict literal, keys sorted, read back with :func:`ast.literal_eval`:
  no code runs). Values are None, bool, int, float (infinities included) and
  str, or lists and tuples of them; each comes back with its type.
* names: ``("temperature", "bias")`` <-> ``"temperature,bias"``.

Encoding an option the string cannot carry (a NaN, a tensor, a dict, a key
that is not a string) raises ``TypeError`` / ``ValueError`` naming it; reading
a string that is not such a literal raises ``ValueError`` quoting it.
"""
from __future__ import annotations

import ast
import math

__all__ = ["encode_options", "decode_options", "encode_names", "decode_names"]

_SCALARS = (type(None), bool, int, float, str)
_KINDS = "None, bool, int, float, str, or a list or tuple of them"


def _literal(key: str, value) -> str:
    """``repr(value)``, checked, with infinities written as literals (``1e999``)."""
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError(f"option {key!r}: NaN cannot be an option value")
        if math.isinf(value):
            return "1e999" if value > 0 else "-1e999"
        return repr(value)
    if isinstance(value, _SCALARS):
        return repr(value)
    if isinstance(value, (list, tuple)):
        items = [_literal(key, v) for v in value]
        if isinstance(value, tuple):
            return "(" + "".join(f"{v}, " for v in items) + ")"
        return "[" + ", ".join(items) + "]"
    raise TypeError(f"option {key!r}: values must be {_KINDS}; got {type(value).__name__}")


def encode_options(options: dict) -> str:
    """``options`` as one string (keys sorted, so equal dicts give equal strings)."""
    for key in options:
        if not isinstance(key, str):
            raise TypeError(f"option names must be strings, got {key!r}")
    return "{" + ", ".join(f"{key!r}: {_literal(key, options[key])}" for key in sorted(options)) + "}"


def decode_options(text: str) -> dict:
    """The dict :func:`encode_options` wrote (ValueError quoting ``text`` when it is not one)."""
    if text == "{}":  # the common case (no options), without the parser
        return {}
    expected = "a dict literal of option names to values, as gradsurg.engine.encoding.encode_options writes"
    try:
        out = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"malformed options string {text!r}: expected {expected} ({exc})") from None
    if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
        raise ValueError(f"malformed options string {text!r}: expected {expected}")
    return out


def encode_names(names) -> str:
    """Hyper-parameter names as one comma-separated string."""
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or not name or "," in name:
            raise ValueError(f"hyper-parameter names must be non-empty strings without commas, got {name!r}")
    return ",".join(names)


def decode_names(text: str) -> tuple[str, ...]:
    """The names :func:`encode_names` wrote (``""``: none)."""
    return tuple(filter(None, text.split(",")))
