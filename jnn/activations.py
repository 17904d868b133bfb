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
* ``softmax(x, axis=-1) = exp(x) / sum(exp(x))`` over ``axis``; ``log_softmax`` its log
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

sigmoid = jax.nn.sigmoid
relu = jax.nn.relu
tanh = jnp.tanh
softmax = jax.nn.softmax
log_softmax = jax.nn.log_softmax
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
