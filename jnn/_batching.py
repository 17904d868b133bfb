"""Mini-batches of in-memory data, and the checks of data sets that ``fit`` and
``evaluate`` share: arrays with one leading (example) axis of the same length."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jnn._checks import check_positive_int
from jnn._errors import ShapeError
from jnn._train_checks import as_typed_key

__all__ = ["batches"]


def check_bool(name: str, what: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{name}: expected {what} to be a bool, got {value!r} ({type(value).__name__})."
        )


def check_pair(name: str, data: Any, what: str) -> None:
    """``data`` must be ``(inputs, targets)``."""
    if isinstance(data, tuple | list) and len(data) == 2:
        return
    got = type(data).__name__ + (
        f" of length {len(data)}" if isinstance(data, tuple | list) else ""
    )
    raise TypeError(
        f"{name}: expected {what} as a pair (inputs, targets), got {got}. Hint: for several "
        "inputs use ((x1, x2), targets)."
    )


def count_examples(name: str, data: Any, what: str = "data") -> int:
    """The shared length of the leading axis of every array in ``data`` (a pytree).

    Raises:
      TypeError: If a leaf is not an array (a Python list of numbers, say).
      ValueError: If there are no arrays, none has examples, or their lengths differ.
    """
    leaves, _ = jax.tree_util.tree_flatten_with_path(data)
    if not leaves:
        raise ValueError(f"{name}: {what} holds no arrays.")
    sizes: list[tuple[str, int]] = []
    for path, leaf in leaves:
        where = what + jax.tree_util.keystr(path)
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(
                f"{name}: expected arrays in {what}, got a {type(leaf).__name__} at {where}. "
                "Hint: convert Python lists first, e.g. np.asarray(x, np.float32)."
            )
        if not np.ndim(leaf):
            raise ShapeError(
                name,
                f"expected arrays with a leading (example) axis in {what}, got a scalar at "
                f"{where}.",
            )
        sizes.append((where, int(np.shape(leaf)[0])))
    first_where, n = sizes[0]
    for where, size in sizes[1:]:
        if size != n:
            raise ShapeError(
                name,
                f"every array must share the leading (example) axis, got {n} examples in "
                f"{first_where} but {size} in {where}.",
            )
    if n == 0:
        raise ValueError(f"{name}: {what} holds 0 examples.")
    return n


def batches(
    data: Any,
    batch_size: int,
    *,
    key: jax.Array | None = None,
    drop_last: bool = False,
) -> Iterator[Any]:
    """Iterate over in-memory arrays in mini-batches, shuffled by ``key`` when given.

    The arguments are checked when ``batches`` is called, before the first batch.

    Args:
      data: An array or a pytree of arrays (e.g. ``(x, y)``) sharing the leading axis.
      batch_size: Examples per batch, a positive int (NumPy ints too).
      key: PRNG key of the shuffle; use ``jax.random.fold_in(key, epoch)`` for a new,
        reproducible order every epoch. No key: the stored order.
      drop_last: Drop the last batch if it is smaller than ``batch_size``.

    Yields:
      Pytrees like ``data`` whose leaves have leading axis ``batch_size`` (or fewer).

    Raises:
      ShapeError: If the arrays' leading axes differ, or one is a scalar.
      ValueError: If ``data`` holds no examples, ``batch_size`` is not positive, or
        ``drop_last`` leaves no batch at all.
      TypeError: If ``batch_size`` is not an int, ``drop_last`` not a bool, or a leaf of
        ``data`` not an array.

    Examples:
      >>> import numpy as np, jax, jnn
      >>> x, y = np.arange(10.0), np.arange(10)
      >>> [len(b[0]) for b in jnn.batches((x, y), 4)]
      [4, 4, 2]
      >>> [len(b[0]) for b in jnn.batches((x, y), 4, key=jax.random.key(0), drop_last=True)]
      [4, 4]
    """
    name = "batches"
    n = count_examples(name, data)
    check_positive_int(name, "batch_size", batch_size)
    check_bool(name, "drop_last", drop_last)
    batch_size = int(batch_size)
    if drop_last and batch_size > n:
        raise ValueError(
            f"{name}: batch_size {batch_size} is larger than the {n} examples, so "
            "drop_last=True yields no batch. Hint: lower batch_size, or pass drop_last=False."
        )
    if key is not None:
        key = as_typed_key(name, key)
    order = None if key is None else np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_last else n
    return _iterate(data, n, batch_size, order, stop)


def _iterate(data: Any, n: int, batch_size: int, order: Any, stop: int) -> Iterator[Any]:
    for start in range(0, stop, batch_size):
        if order is None:
            index = slice(start, min(start + batch_size, n))
        else:
            index = order[start : start + batch_size]
        yield jax.tree.map(lambda a, i=index: a[i], data)
