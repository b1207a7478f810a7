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
* the caller: the name errors raised inside the op start with (the function the user called,
  ``api.paradigm_loss``'s ``caller``) travels with the options under the reserved key
  :data:`CALLER`, so that a check inside the op (a learnable value, a backend's own option check)
  names it also with ``check_finite=False`` and under ``torch.compile`` (:func:`encode_call` /
  :func:`decode_call`). No backend option can take that name: ``caller`` is a parameter of the
  front door, never one of its ``**options``.

Encoding an option the string cannot carry (a NaN, a tensor, a dict, a key
that is not a string) raises ``TypeError`` / ``ValueError`` naming it; reading
a string that is not such a literal raises ``ValueError`` quoting it.
"""
from __future__ import annotations

import ast
import math
from functools import lru_cache

__all__ = ["encode_options", "decode_options", "encode_call", "decode_call", "encode_names", "decode_names",
           "CALLER"]

#: the reserved option key of the caller's name (:func:`encode_call`)
CALLER = "caller"
#: the name errors start with when none was encoded
DEFAULT_CALLER = "paradigm_loss"

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
    """The dict :func:`encode_options` wrote (ValueError quoting ``text`` when it is not one); a new dict
    on every call (the parse of a string is cached: the op reads the same one on every step)."""
    if text == "{}":  # the common case (no options), without the parser
        return {}
    return dict(_parse(text))


@lru_cache(maxsize=256)
def _parse(text: str) -> dict:
    expected = "a dict literal of option names to values, as gradsurg.engine.encoding.encode_options writes"
    try:
        out = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"malformed options string {text!r}: expected {expected} ({exc})") from None
    if not isinstance(out, dict) or not all(isinstance(k, str) for k in out):
        raise ValueError(f"malformed options string {text!r}: expected {expected}")
    return out


def encode_call(options: dict, caller: str) -> str:
    """``options`` and the caller's name (``caller``, the name errors start with) as one string."""
    if CALLER in options:
        raise ValueError(f"option {CALLER!r} is reserved for the caller's name")
    if not isinstance(caller, str) or not caller:
        raise TypeError(f"the caller must be a non-empty str, got {caller!r}")
    return encode_options({**options, CALLER: caller})


def decode_call(text: str) -> tuple[dict, str]:
    """``(options, caller)`` from :func:`encode_call`'s string (``caller`` is ``'paradigm_loss'`` when the
    string has none, as :func:`encode_options` writes)."""
    options = decode_options(text)
    return options, options.pop(CALLER, DEFAULT_CALLER)


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
