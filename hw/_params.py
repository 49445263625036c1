"""Checks for the plain-integer parameters of the hardware modules.

Every leaf module of ``hw/`` takes keyword-only integers and checks them at once, with an error
that names the parameter and the bad value (``TypeError`` for a wrong type, ``ValueError`` for a
wrong value), as amaranth-soc does.
"""

from __future__ import annotations

import math

__all__ = ["check_int", "check_pow2", "clog2"]


def check_int(name: str, value: object, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[minimum, maximum]``; raise naming ``name`` if not."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, not {value!r}")
    return value


def check_pow2(name: str, value: object, *, minimum: int = 2) -> int:
    """Like :func:`check_int`, and ``value`` must be a power of two (address maths are shifts)."""
    v = check_int(name, value, minimum=minimum)
    if v & (v - 1):
        raise ValueError(f"{name} must be a power of two, not {value!r}")
    return v


def clog2(n: int) -> int:
    """Bits needed to hold the values ``0 .. n-1`` (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1
