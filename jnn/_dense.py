"""Fully connected layers: ``Dense`` (the perceptron layer) and the ``MLP`` builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating, check_positive_int, check_rank
from jnn._errors import ShapeError
from jnn._module import Module, Params
from jnn._scope import Scope, child_key
from jnn.activations import relu

__all__ = ["Dense", "MLP"]


class Dense(Module):
    r"""Fully connected layer: ``y = activation(x @ weight + bias)``.

    One ``Dense`` is a layer of ``features`` perceptrons: each output is a weighted sum of
    all inputs plus a bias, passed through an optional activation.

    .. math:: y_j = \phi\Big(\sum_i x_i W_{ij} + b_j\Big)

    Args:
      features: Size of the last output dimension.
      use_bias: Whether to add a learned ``bias`` of shape ``[features]``.
      activation: Optional function applied to the output (e.g. ``jnn.relu``).
      w_init: Initializer of ``weight`` (LeCun normal by default, as in Flax).
      b_init: Initializer of ``bias`` (zeros by default). Both receive the layer's fan-in
        when they take it, so ``jnn.initializers.pytorch_default()`` gives
        ``torch.nn.Linear``'s initial distribution.
      param_dtype: Dtype of the parameters.

    Shapes:
      ``init`` takes ``[..., in_features]`` and creates ``weight`` ``[in_features, features]``
      and ``bias`` ``[features]``; ``apply`` maps ``[..., in_features]`` to
      ``[..., features]``. Leading axes are batch axes, so batched and unbatched inputs
      both work.

    Raises:
      ShapeError: If the input's last dimension differs from ``in_features`` set at init.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> layer = jnn.Dense(3)
      >>> params = layer.init(jax.random.key(0), jnp.zeros((8, 5)))
      >>> params["weight"].shape, params["bias"].shape
      ((5, 3), (3,))
      >>> layer.apply(params, jnp.ones((8, 5))).shape
      (8, 3)
    """

    features: int
    use_bias: bool = True
    activation: Callable | None = None
    w_init: Callable = initializers.lecun_normal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_positive_int(self, "features", self.features)

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        check_rank(self, x, min_rank=1)
        check_floating(self, x)
        fan_in = x.shape[-1]
        params = {
            "weight": initializers.initialize(
                self.w_init,
                child_key(key, "weight"),
                (fan_in, self.features),
                self.param_dtype,
                fan_in=fan_in,
            )
        }
        if self.use_bias:
            params["bias"] = initializers.initialize(
                self.b_init,
                child_key(key, "bias"),
                (self.features,),
                self.param_dtype,
                fan_in=fan_in,
            )
        return params

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check ``x`` against the params before anything else, for a precise message."""
        check_floating(self, x)
        weight = params.get("weight")
        if weight is None or jnp.ndim(weight) != 2:
            return  # the generic params check names what is missing
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != weight.shape[0]:
            raise ShapeError(
                self.layer_name(),
                f"expected input with last dimension {weight.shape[0]} (set at init), "
                f"got shape {tuple(jnp.shape(x))}.",
            )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        y = x @ params["weight"]
        if self.use_bias:
            y = y + params["bias"]
        return y if self.activation is None else self.activation(y)


class MLP(Module):
    """Multi-layer perceptron: ``Dense`` layers of the given widths with activations between.

    The hidden layers use ``activation``; the last layer uses ``final_activation``
    (none by default, so a classifier returns logits). Parameters are named
    ``dense_0`` ... ``dense_{n-1}``.

    Args:
      features: Width of each layer, the last one being the output size.
      activation: Activation after every layer but the last.
      final_activation: Optional activation after the last layer.
      use_bias: Whether every layer has a bias.
      w_init: Weight initializer of every layer.
      b_init: Bias initializer of every layer.

    Shapes:
      ``[..., in_features]`` to ``[..., features[-1]]``.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> mlp = jnn.MLP([64, 64, 10])
      >>> params = mlp.init(jax.random.key(0), jnp.zeros((1, 784)))
      >>> list(params), params["dense_0"]["weight"].shape
      (['dense_0', 'dense_1', 'dense_2'], (784, 64))
    """

    features: Sequence[int]
    activation: Callable = relu
    final_activation: Callable | None = None
    use_bias: bool = True
    w_init: Callable = initializers.lecun_normal()
    b_init: Callable = initializers.zeros

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise ValueError("MLP: features must list at least one layer width.")
        for width in self.features:
            check_positive_int(self, "features", width)

    def forward(self, scope: Scope, x: jax.Array) -> jax.Array:
        last = len(self.features) - 1
        for i, width in enumerate(self.features):
            layer = Dense(width, self.use_bias, w_init=self.w_init, b_init=self.b_init)
            x = scope(f"dense_{i}", layer, x)
            activation = self.activation if i < last else self.final_activation
            if activation is not None:
                x = activation(x)
        return x
