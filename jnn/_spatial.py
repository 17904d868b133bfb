"""Hyperparameter helpers shared by the layers with spatial axes (convolution, pooling)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from jnn._module import Shape

Pairs = tuple[tuple[int, int], ...]
_AXES = {1: "length", 2: "height, width", 3: "depth, height, width"}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _freeze(value: Any) -> Any:
    """Lists become tuples and NumPy ints ints, so the layer hashes (a static ``jit`` arg)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_freeze(v) for v in value)
    return int(value) if _is_int(value) else value


def _per_axis(
    layer: str, name: str, value: Any, n: int, minimum: int = 1, like: str = "kernel_size"
) -> Shape:
    """``value``, an int or one int per spatial axis, as ``n`` ints of at least ``minimum``."""
    if _is_int(value):
        values = (value,) * n
    elif isinstance(value, tuple) and len(value) == n and all(map(_is_int, value)):
        values = value
    else:
        raise ValueError(
            f"{layer}: {name} must be an int or {n} ints (one per spatial axis, as in "
            f"{like}), got {value!r}."
        )
    if min(values) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{layer}: {name} must be {kind}, got {value!r}.")
    return values


def _pairs(layer: str, padding: Any, n: int) -> Pairs:
    """Integer ``padding`` (an int, or an int or ``(low, high)`` per axis) as ``n`` pairs."""

    def pair(p: Any) -> tuple[int, int] | None:
        if _is_int(p):
            return (p, p)
        if isinstance(p, tuple) and len(p) == 2 and all(map(_is_int, p)):
            return p
        return None

    pairs = None
    if _is_int(padding):
        pairs = (pair(padding),) * n
    elif isinstance(padding, tuple) and len(padding) == n:
        pairs = tuple(pair(p) for p in padding)
    if pairs is None or None in pairs:
        raise ValueError(
            f"{layer}: padding must be 'SAME', 'VALID', an int, or one int or (low, high) "
            f"pair per spatial axis ({n}), got {padding!r}."
        )
    if min(min(p) for p in pairs) < 0:
        raise ValueError(f"{layer}: padding must be non-negative, got {padding!r}.")
    return pairs
