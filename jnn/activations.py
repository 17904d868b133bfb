"""Activation functions: ``jax.nn``'s, usable as functions and as layers in ``Sequential``.

Each name is the plain ``jax.nn`` (or ``jax.numpy``) function, so ``jnn.relu(x)`` computes
directly and ``jnn.Sequential([jnn.Dense(8), jnn.relu])`` wraps it in a parameter-free
``jnn.Lambda`` layer named after the function. Functions with options take them through
``functools.partial`` or ``jnn.Lambda``, e.g. ``functools.partial(jnn.leaky_relu,
negative_slope=0.2)``.

Definitions (elementwise unless noted):

* ``sigmoid(x) = 1 / (1 + exp(-x))``
* ``relu(x) = max(x, 0)``
* ``tanh(x)``
* ``softmax(x, axis=-1) = exp(x) / sum(exp(x))`` over ``axis``; ``log_softmax`` its log.
  These two are ``jax.nn``'s computed in at least float32: a bfloat16 or float16 input
  (under a mixed-precision policy) is normalised in float32 and the result returned in
  the input's dtype, since a half-precision sum over thousands of classes loses most
  of its digits.
* ``leaky_relu(x, negative_slope=0.01) = x if x >= 0 else negative_slope * x``
* ``elu(x, alpha=1.0) = x if x > 0 else alpha * (exp(x) - 1)``
* ``selu(x) = scale * elu(x, alpha)`` with the self-normalising constants
* ``gelu(x, approximate=True)``: ``x * Phi(x)``; ``approximate=False`` gives the exact
  erf form (PyTorch's default)
* ``silu(x) = swish(x) = x * sigmoid(x)``
* ``softplus(x) = log(1 + exp(x))``
* ``identity(x) = x``
"""

import jax
import jax.numpy as jnp

from jnn._losses import at_least_float32

sigmoid = jax.nn.sigmoid
relu = jax.nn.relu
tanh = jnp.tanh


def _at_least_float32(fn):
    def normalised(x: jax.typing.ArrayLike, axis: int | tuple[int, ...] = -1, where=None):
        x = jnp.asarray(x)
        return fn(at_least_float32(x), axis=axis, where=where).astype(x.dtype)

    normalised.__name__ = normalised.__qualname__ = fn.__name__
    normalised.__doc__ = (
        f"``jax.nn.{fn.__name__}`` over ``axis``, computed in at least float32 and returned "
        "in ``x``'s dtype (half-precision inputs are normalised in float32)."
    )
    return normalised


softmax = _at_least_float32(jax.nn.softmax)
log_softmax = _at_least_float32(jax.nn.log_softmax)
leaky_relu = jax.nn.leaky_relu
elu = jax.nn.elu
selu = jax.nn.selu
gelu = jax.nn.gelu
silu = jax.nn.silu
swish = jax.nn.swish
softplus = jax.nn.softplus
identity = jax.nn.identity

__all__ = [
    "sigmoid",
    "relu",
    "tanh",
    "softmax",
    "log_softmax",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "softplus",
    "identity",
]
