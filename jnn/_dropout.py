"""Dropout: randomly zero activations while training, with an explicit key."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn._checks import check_floating
from jnn._errors import MissingKeyError, ShapeError
from jnn._module import Module, Params

__all__ = ["Dropout"]


class Dropout(Module):
    r"""Zero each element with probability ``rate`` while training; identity at inference.

    Kept elements are scaled by ``1 / (1 - rate)`` so the expected output equals the
    input ("inverted" dropout, as in PyTorch and Keras). ``rate`` is the probability of
    *dropping*.

    .. math:: y = \frac{m \odot x}{1 - p}, \quad m_i \sim \mathrm{Bernoulli}(1 - p)

    Args:
      rate: Drop probability ``p`` in ``[0, 1]``.
      broadcast_dims: Axes along which the mask is shared (e.g. ``(-2,)`` to drop whole
        feature vectors of a sequence alike).

    Shapes:
      Any input shape; the output has the same shape.

    Raises:
      MissingKeyError: If ``is_training=True`` and no ``key`` is given.
      DTypeError: If training on an integer or boolean input (scaling it by
        ``1 / (1 - rate)`` has no integer result).
      ShapeError: If a ``broadcast_dims`` axis is outside the input's rank.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> drop = jnn.Dropout(0.5)
      >>> x = jnp.ones((2, 4))
      >>> bool((drop.apply({}, x) == x).all())   # inference: identity
      True
      >>> y = drop.apply({}, x, key=jax.random.key(0), is_training=True)
      >>> sorted(set(y.ravel().tolist())) == [0.0, 2.0]
      True
    """

    rate: float
    broadcast_dims: tuple[int, ...] = ()

    def __post_init__(self):
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1], got {self.rate!r}.")
        object.__setattr__(self, "broadcast_dims", tuple(self.broadcast_dims))

    def apply(
        self,
        params: Params,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        is_training: bool = False,
    ) -> jax.Array:
        del params
        if not is_training or self.rate == 0.0:
            return x
        if key is None:
            raise MissingKeyError(
                self.layer_name(),
                "is_training=True needs a PRNG key for the dropout mask. Hint: pass "
                "key=jax.random.key(...) to apply (a new key every step), or "
                "is_training=False for inference.",
            )
        check_floating(self, x, "input while training")
        shape = list(jnp.shape(x))
        if any(not -len(shape) <= axis < len(shape) for axis in self.broadcast_dims):
            raise ShapeError(
                self.layer_name(),
                f"broadcast_dims {self.broadcast_dims} name axes outside an input of shape "
                f"{tuple(shape)}.",
            )
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        for axis in self.broadcast_dims:
            shape[axis] = 1
        keep = jax.random.bernoulli(key, 1.0 - self.rate, tuple(shape))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros((), x.dtype)).astype(x.dtype)
