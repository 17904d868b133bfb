"""Layers that change the shape of each example: ``Flatten`` and ``Reshape``.

Both keep the leading batch axis (axis 0) and have no parameters: ``init`` checks the
sample and returns ``{}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jnn._errors import ShapeError
from jnn._module import Module, Params
from jnn._spatial import freeze, is_int

__all__ = ["Flatten", "Reshape"]


class Flatten(Module):
    """Merge the axes from ``start_axis`` on into one, like PyTorch's ``nn.Flatten``.

    Args:
      start_axis: First axis to merge; negative counts from the end. The default, 1,
        keeps the batch axis. Under ``jax.vmap`` over examples the layer sees one
        example without its batch axis, so use ``start_axis=0`` there.

    Shapes:
      ``[batch, d_1, ..., d_k]`` to ``[batch, d_1 * ... * d_k]`` (``start_axis=1``);
      in general ``[d_0, ..., d_k]`` to ``[d_0, ..., d_{s-1}, d_s * ... * d_k]``.

    Raises:
      TypeError: At construction, if ``start_axis`` is not an int.
      ShapeError: If the input has no axis ``start_axis``.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.Flatten().apply({}, jnp.zeros((8, 7, 7, 16))).shape
      (8, 784)
    """

    start_axis: int = 1

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        start = self.start_axis
        need = start + 1 if start >= 0 else -start
        if x.ndim < need:
            hint = ""
            if start == 1 and x.ndim == 1:
                hint = (
                    " Hint: axis 0 is the batch axis; for one example add it (x[None]), or "
                    "use Flatten(start_axis=0) under jax.vmap."
                )
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least {need} (axes from start_axis={start} on "
                f"are merged), got shape {tuple(x.shape)}.{hint}",
            )
        start %= x.ndim
        return x.reshape(*x.shape[:start], math.prod(x.shape[start:]))


class Reshape(Module):
    """Reshape each example (every axis after the batch axis), like Keras' ``Reshape``.

    Args:
      shape: The new shape of one example: positive ints, with at most one ``-1`` that
        takes the size the others leave.

    Shapes:
      ``[batch, d_1, ..., d_k]`` to ``[batch, *shape]``; the batch axis (axis 0) is
      kept, so under ``jax.vmap`` over examples give each example a batch axis of 1.

    Raises:
      TypeError: At construction, if ``shape`` is not a list or tuple of ints.
      ValueError: At construction, for a size below 1 other than a single ``-1``.
      ShapeError: If an example's size does not fit ``shape``.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> jnn.Reshape((7, 7, -1)).apply({}, jnp.zeros((8, 784))).shape
      (8, 7, 7, 16)
    """

    shape: Sequence[int]

    def __post_init__(self):
        shape = freeze(self.shape)
        if not all(is_int(d) and (d >= 1 or d == -1) for d in shape) or shape.count(-1) > 1:
            raise ValueError(
                "Reshape: shape must be a tuple of positive ints with at most one -1, "
                f"got {self.shape!r}."
            )
        object.__setattr__(self, "shape", shape)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ShapeError(
                self.layer_name(),
                "expected input with a batch axis (rank at least 1), got shape ().",
            )
        size = math.prod(x.shape[1:])
        known = math.prod(d for d in self.shape if d != -1)
        if -1 in self.shape:
            fits, what = size % known == 0, f"a multiple of {known}"
        else:
            fits, what = size == known, f"{known}"
        if not fits:
            raise ShapeError(
                self.layer_name(),
                f"expected examples of {what} elements to reshape to {self.shape}, got shape "
                f"{tuple(x.shape)} ({size} elements per example).",
            )
        shape = tuple(size // known if d == -1 else d for d in self.shape)
        return x.reshape(x.shape[0], *shape)
