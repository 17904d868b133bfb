"""Weight initializers: ``jax.nn.initializers``, plus the names PyTorch and Keras users know.

An initializer is a function ``init(key, shape, dtype) -> jax.Array``; layers take one as
``w_init`` / ``b_init``. As in JAX, ``zeros`` and ``ones`` are initializers themselves and
the others are factories that return one::

    jnn.Dense(128, w_init=jnn.initializers.he_normal(), b_init=jnn.initializers.zeros)

For a weight of shape ``[fan_in, fan_out]`` (dense) or ``[*window, in, out]`` (conv):

* ``glorot_*`` / ``xavier_*``: variance ``2 / (fan_in + fan_out)``
* ``he_*`` / ``kaiming_*``: variance ``2 / fan_in`` (for ReLU networks)
* ``lecun_*``: variance ``1 / fan_in`` (jnn's default for ``Dense``; for SELU networks)
* ``normal(stddev)``, ``uniform(scale)`` (on ``[0, scale)``), ``truncated_normal(stddev)``
  (cut at two standard deviations), ``constant(value)``, ``orthogonal(scale)``.
* ``pytorch_default()``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, the scheme of
  ``torch.nn.Linear``, ``Conv*``, ``RNN``/``LSTM``/``GRU`` for weights *and* biases.

A bias cannot know its layer's fan-in from its own shape, so layers pass it: every jnn
layer creates its parameters through ``initialize(init, key, shape, dtype, fan_in=...)``,
which hands ``fan_in`` to initializers that take it as a keyword (``pytorch_default``
does; ``jax.nn.initializers`` ignore it). A model ported from PyTorch starts from the same
distribution with::

    jnn.MLP([256, 10], w_init=jnn.initializers.pytorch_default(),
            b_init=jnn.initializers.pytorch_default())
"""

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.nn.initializers as _init
import jax.numpy as jnp

Initializer = _init.Initializer

zeros = _init.zeros
ones = _init.ones
constant = _init.constant
normal = _init.normal
uniform = _init.uniform
truncated_normal = _init.truncated_normal
variance_scaling = _init.variance_scaling
glorot_normal = _init.glorot_normal
glorot_uniform = _init.glorot_uniform
xavier_normal = _init.xavier_normal
xavier_uniform = _init.xavier_uniform
he_normal = _init.he_normal
he_uniform = _init.he_uniform
kaiming_normal = _init.kaiming_normal
kaiming_uniform = _init.kaiming_uniform
lecun_normal = _init.lecun_normal
lecun_uniform = _init.lecun_uniform
orthogonal = _init.orthogonal


def _fan_in_of(shape: tuple[int, ...]) -> int:
    """Fan-in read from a weight's shape, as ``jax.nn.initializers`` read it: ``in`` is the
    second-to-last axis, and leading axes form the receptive field."""
    if len(shape) < 2:
        raise ValueError(
            f"pytorch_default: cannot read the fan-in from shape {shape}; a layer passes it "
            "as initialize(init, key, shape, dtype, fan_in=...)."
        )
    return int(shape[-2] * math.prod(shape[:-2]))


def pytorch_default() -> Callable:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's default for ``Linear``, ``Conv*``
    and recurrent layers, for weights and biases alike.

    The returned initializer takes ``fan_in`` as a keyword (jnn layers pass their own:
    input features for ``Dense``, ``in_channels/groups * prod(kernel)`` for ``Conv``,
    ``hidden_size`` for recurrent cells, as PyTorch does); without it, the fan-in is read
    from the shape.

    Example:
      >>> import jax, jnn
      >>> init = jnn.initializers.pytorch_default()
      >>> bias = init(jax.random.key(0), (1000,), fan_in=16)
      >>> bool(abs(bias).max() <= 0.25)
      True
    """

    def init(key: jax.Array, shape, dtype: Any = jnp.float32, *, fan_in: int | None = None):
        shape = tuple(shape)
        bound = 1.0 / math.sqrt(fan_in if fan_in is not None else _fan_in_of(shape))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _takes_fan_in(init: Callable) -> bool:
    try:
        parameters = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return False
    return "fan_in" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def initialize(
    init: Callable, key: jax.Array, shape, dtype: Any, *, fan_in: int | None = None
) -> jax.Array:
    """``init(key, shape, dtype)``, with ``fan_in=`` added when ``init`` takes it.

    Layers call this for every parameter so that initializers which need the layer's
    fan-in (a bias has none of its own) receive it.
    """
    if fan_in is not None and _takes_fan_in(init):
        value = init(key, shape, dtype, fan_in=fan_in)
    else:
        value = init(key, shape, dtype)
    if tuple(getattr(value, "shape", ())) != tuple(shape) or not hasattr(value, "dtype"):
        name = getattr(init, "__name__", type(init).__name__)
        got = f"shape {value.shape}" if hasattr(value, "shape") else type(value).__name__
        raise TypeError(
            f"initializer {name} returned {got}, expected an array of shape {tuple(shape)}. "
            "Hint: an initializer is called as init(key, shape, dtype); factories such as "
            "jnn.initializers.he_normal must be called first: he_normal()."
        )
    return value


__all__ = [
    "Initializer",
    "initialize",
    "pytorch_default",
    "zeros",
    "ones",
    "constant",
    "normal",
    "uniform",
    "truncated_normal",
    "variance_scaling",
    "glorot_normal",
    "glorot_uniform",
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "orthogonal",
]
