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
"""

import jax.nn.initializers as _init

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

__all__ = [
    "Initializer",
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
