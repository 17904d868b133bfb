"""Boolean attention masks: ``True`` means *attend*.

A mask broadcasts against the attention logits ``[batch, heads, q_len, kv_len]``;
``causal_mask``, ``padding_mask`` and ``combine_masks`` build the usual ones.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import check_positive_int, check_rank, check_values, is_concrete
from jnn._errors import DTypeError, ShapeError, layer_name

__all__ = ["causal_mask", "padding_mask", "combine_masks"]


def causal_mask(length: int) -> jax.Array:
    """The mask letting position ``i`` attend to positions ``j <= i`` only.

    Args:
      length: The sequence length (queries and keys alike).

    Returns:
      A boolean ``[1, 1, length, length]`` mask, ``True`` on and below the diagonal.

    Raises:
      TypeError: If ``length`` is not an int.
      ValueError: If ``length`` is below 1.

    Examples:
      >>> from jnn import causal_mask
      >>> causal_mask(3)[0, 0].astype(int).tolist()
      [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    check_positive_int("causal_mask", "length", length)
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def padding_mask(valid: jax.typing.ArrayLike, length: int | None = None) -> jax.Array:
    """The mask hiding padded keys: from lengths ``[batch]`` or a boolean ``[batch, kv_len]``.

    Args:
      valid: Either integer lengths ``[batch]`` (keys ``0 ... lengths[b] - 1`` are real)
        or a boolean ``[batch, kv_len]`` that is ``True`` at real keys.
      length: The padded length ``kv_len``; needed with integer lengths.

    Returns:
      A boolean ``[batch, 1, 1, kv_len]`` mask.

    Raises:
      DTypeError: If ``valid`` is neither integer nor boolean.
      ShapeError: If ``valid`` has the wrong rank or disagrees with ``length``.
      ValueError: If concrete lengths lie outside ``[0, length]``. Traced lengths
        (inside ``jit``) are not checked: a length past ``length`` then marks every key
        real, and a negative one none.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import padding_mask
      >>> padding_mask(jnp.array([1, 3]), length=3)[:, 0, 0].astype(int).tolist()
      [[1, 0, 0], [1, 1, 1]]
    """
    name = "padding_mask"
    valid = jnp.asarray(valid)
    if valid.dtype == bool:
        check_rank(name, valid, 2, "boolean mask [batch, kv_len]")
        if length is not None and length != valid.shape[1]:
            raise ShapeError(
                name, f"length {length} differs from the mask's kv_len, shape {valid.shape}."
            )
        return valid[:, None, None, :]
    if not jnp.issubdtype(valid.dtype, jnp.integer):
        raise DTypeError(
            name,
            f"expected integer lengths [batch] or a boolean mask [batch, kv_len], "
            f"got dtype {valid.dtype}.",
        )
    check_rank(
        name,
        valid,
        1,
        "lengths [batch]",
        hint="Hint: for a 0/1 array marking the real keys, pass valid.astype(bool)."
        if valid.ndim == 2
        else "",
    )
    if length is None:
        raise ShapeError(name, "integer lengths need length=kv_len, the padded length.")
    check_positive_int(name, "length", length)
    check_length_range(name, valid, length, "lengths", "the padded length")
    return (jnp.arange(length) < valid[:, None])[:, None, None, :]


def combine_masks(*masks: jax.typing.ArrayLike | None) -> jax.Array | None:
    """Combine boolean masks with logical *and*, skipping ``None``s.

    Returns:
      The broadcast conjunction, or ``None`` when every mask is ``None``.

    Raises:
      DTypeError: If a mask is not boolean.
      ShapeError: If the masks do not broadcast together.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import causal_mask, combine_masks, padding_mask
      >>> m = combine_masks(causal_mask(3), None, padding_mask(jnp.array([2]), 3))
      >>> m.shape, m[0, 0].astype(int).tolist()
      ((1, 1, 3, 3), [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    """
    arrays = [jnp.asarray(m) for m in masks if m is not None]
    for m in arrays:
        if m.dtype != bool:
            raise DTypeError(
                "combine_masks",
                f"expected boolean masks (True = attend), got dtype {m.dtype}. "
                "Hint: from a 0/1 mask use m.astype(bool); from an additive one "
                "(0 or -inf) use m == 0.",
            )
    if not arrays:
        return None
    try:
        np.broadcast_shapes(*(m.shape for m in arrays))
    except ValueError:
        shapes = ", ".join(str(m.shape) for m in arrays)
        raise ShapeError("combine_masks", f"masks of shapes {shapes} do not broadcast.") from None
    return functools.reduce(jnp.logical_and, arrays)


def check_attention_mask(owner: Any, mask: Any, target: tuple[int, int, int, int]) -> None:
    """Raise unless ``mask`` is boolean and broadcasts to the logits' shape ``target``,
    ``(batch, heads, q_len, kv_len)``, without adding axes."""
    dtype = jnp.result_type(mask)
    if not jnp.issubdtype(dtype, jnp.bool_):
        raise DTypeError(
            layer_name(owner),
            f"expected a boolean mask (True = attend), got dtype {dtype}. Hint: from a "
            "0/1 mask use m.astype(bool), from an additive one (0 or -inf) m == 0; a "
            "PyTorch boolean attn_mask (True = masked) is ~m.",
        )
    shape = tuple(jnp.shape(mask))
    try:
        ok = len(shape) <= 4 and np.broadcast_shapes(shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(
            layer_name(owner),
            f"expected a mask broadcastable to [batch, heads, q_len, kv_len] = {target}, "
            f"got shape {shape}.",
        )


def as_4d(mask: jax.Array) -> jax.Array:
    """``mask`` with leading axes of 1 up to rank 4 ``[batch, heads, q_len, kv_len]``."""
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def check_lengths(owner: Any, lengths: Any, batch: tuple[int, ...], kv_len: int, what: str) -> None:
    """Raise unless ``lengths`` are integers of shape ``batch`` (``()`` for one unbatched
    sequence) and, when concrete, in ``[0, kv_len]``; ``what`` is the argument's name."""
    dtype = jnp.result_type(lengths)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise DTypeError(
            layer_name(owner),
            f"expected integer {what} (the number of real keys of each sequence), got dtype "
            f"{dtype}. Hint: for a boolean mask of the real keys pass mask=padding_mask(m).",
        )
    shape = tuple(jnp.shape(lengths))
    if shape != batch:
        layout = "[batch]" if batch else "a scalar for one unbatched sequence"
        raise ShapeError(
            layer_name(owner), f"expected {what} {layout} of shape {batch}, got shape {shape}."
        )
    check_length_range(owner, lengths, kv_len, what, "the keys' length")


def check_length_range(owner: Any, lengths: Any, length: int, what: str, meaning: str) -> None:
    """Raise if concrete ``lengths`` fall outside ``[0, length]``, naming the bad values and
    where they are; traced lengths are left to the caller."""
    if not is_concrete(lengths):
        return
    values = np.asarray(lengths)
    bad = (values < 0) | (values > length)
    if bad.any():
        check_values(
            owner,
            ~bad,
            f"expected {what} in [0, {length}] ({meaning}), got {values[bad].tolist()} at "
            f"{np.flatnonzero(bad).tolist()}.",
        )
