"""Checks of plain arguments (counts, indices, numbers, flags): one rule each, one wording.

- An **integer** is a Python ``int`` or a NumPy integer scalar (``np.int64(3)``, what indexing a
  NumPy array gives), never a ``bool`` (a flag where a count belongs is a bug) and never a float,
  even an integral one: a count that arrives as ``2.0`` has lost its meaning upstream.
- A **number** is an integer as above or a Python/NumPy float, finite unless asked otherwise.
- A **flag** is ``True`` or ``False`` (or a NumPy bool), nothing else: ``"false"`` is truthy.

The wrong type is a ``TypeError``, a value out of range a ``ValueError``; both name the argument
and the value. Every floor may import this module (the data readers too): it imports nothing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_bool", "check_int", "check_number"]


def _bounds(name: str, value: Any, minimum: Any, maximum: Any) -> None:
    if minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            raise ValueError(f"{name} must be in [{minimum}, {maximum}], got {value}")
    elif minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    elif maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as a Python ``int`` if it is an integer in [minimum, maximum] (either bound may
    be omitted); a ``TypeError`` or ``ValueError`` naming ``name`` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    _bounds(name, value, minimum, maximum)
    return value


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    finite: bool = True,
) -> float:
    """``value`` as a Python ``float`` if it is a real number (an integer or a float, not a bool)
    in [minimum, maximum], finite unless ``finite=False``; a ``TypeError`` or ``ValueError``
    naming ``name`` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    _bounds(name, value, minimum, maximum)
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a Python ``bool`` if it is ``True`` or ``False`` (a NumPy bool too); a
    ``TypeError`` naming ``name`` and the value otherwise."""
    if value is True or value is False:
        return value
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    raise TypeError(f"{name} must be true or false, got {type(value).__name__} {value!r}")
