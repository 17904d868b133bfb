"""Recurrent cells: ``SimpleRNNCell``, ``LSTMCell`` and ``GRUCell``, one time step each.

A *cell* is a layer for one time step with one more method than other layers::

    carry = cell.initial_carry(batch_shape)             # zeros
    new_carry, output = cell.apply(params, carry, x_t)  # x_t: [*batch, in_features]

Any ``Module`` with that interface runs in ``jnn.RNN`` (``jnn._rnn``); its ``init`` is
called as ``cell.init(key, carry, x_t)``. A cell may also define ``output_of(carry)``,
the output read back from a carry (the built-in cells do); ``RNN`` then reads the last
output from the final carry instead of carrying it through the scan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._carry import batch_tuple, check_cell_carry
from jnn._checks import check_floating, check_positive_int, check_rank, is_apply_check
from jnn._errors import ShapeError
from jnn._module import Module, Params, Shape
from jnn._scope import child_key
from jnn.activations import sigmoid, tanh

__all__ = ["SimpleRNNCell", "LSTMCell", "GRUCell"]


class _Cell(Module):
    """What the three cells share: gate-stacked weights, the carry and the input checks.

    Subclasses set ``_gates`` (how many blocks of ``features`` columns the weights stack)
    and ``_carry_names``, and define the fields ``features``, ``w_init``,
    ``recurrent_init``, ``b_init`` and ``param_dtype``.
    """

    _gates = 1
    _carry_names = ("h",)

    def init(self, key: jax.Array, *inputs: Any) -> Params:
        return self._init_params(key, inputs)

    def _init_params(self, key: jax.Array, inputs: tuple) -> Params:
        # Called as init(key, x) by users and as init(key, carry, x) by RNN and by the
        # generic params check, which passes apply's inputs; only x matters.
        if len(inputs) not in (1, 2):
            raise TypeError(
                f"{self.layer_name()}: init takes (key, x) or (key, carry, x), "
                f"got {len(inputs)} inputs."
            )
        x = inputs[-1]
        check_rank(self, x, what="input [*batch, in_features]", min_rank=1)
        # apply's params check runs init on apply's inputs, which may be one unbatched step.
        if jnp.ndim(x) == 1 and not is_apply_check():
            raise ShapeError(
                self.layer_name(),
                f"init expected a batched step [batch, in_features], got shape "
                f"{tuple(x.shape)}. Hint: for one example add the batch axis, x[None]; "
                "for a batch of scalars add the feature axis, x[:, None]. (apply also "
                "takes one unbatched step.)",
            )
        check_floating(self, x)
        # PyTorch draws every weight and bias of a recurrent layer from
        # U(+-1/sqrt(hidden_size)), so the fan-in passed is the hidden size.
        fan_in = self.features
        rows = {"input": x.shape[-1], "hidden": self.features}
        inits = {"input": self.w_init, "hidden": self.recurrent_init}
        params = {}
        for name in ("input", "hidden"):
            k = child_key(child_key(key, name), "weight")
            # One block per gate, so an orthogonal (or fan-out scaled) initializer sees
            # each gate's square matrix, not the stacked one.
            blocks = [
                initializers.initialize(
                    inits[name],
                    jax.random.fold_in(k, g),
                    (rows[name], self.features),
                    self.param_dtype,
                    fan_in=fan_in,
                )
                for g in range(self._gates)
            ]
            params[name] = {"weight": jnp.concatenate(blocks, axis=1)}
        params["input"]["bias"] = initializers.initialize(
            self.b_init,
            child_key(child_key(key, "input"), "bias"),
            (self._gates * self.features,),
            self.param_dtype,
            fan_in=fan_in,
        )
        return params

    def output_of(self, carry: Any) -> jax.Array:
        """The output a step returns, read from the carry it returns (``h``)."""
        return carry if len(self._carry_names) == 1 else carry[0]

    def initial_carry(self, batch_shape: int | Shape = (), dtype: Any = jnp.float32) -> Any:
        """The zero carry for inputs of batch shape ``batch_shape`` (``()`` if unbatched)."""
        zeros = jnp.zeros((*batch_tuple(batch_shape), self.features), dtype)
        return zeros if len(self._carry_names) == 1 else (zeros,) * len(self._carry_names)

    def check_inputs(self, params: Params, carry: Any, x: jax.Array) -> None:
        """Check the step input and the carry before the generic params check."""
        check_rank(self, x, what="input [*batch, in_features]", min_rank=1)
        self._check_features(params, x, self.layer_name())
        batch = tuple(jnp.shape(x))[:-1]
        check_cell_carry(self, self, carry, batch, f"for input of shape {tuple(jnp.shape(x))}")

    def _check_features(self, params: Params, x: jax.Array, owner: str) -> None:
        check_floating(owner, x)
        weights = params.get("input") if isinstance(params, Mapping) else None
        weight = weights.get("weight") if isinstance(weights, Mapping) else None
        if weight is None or jnp.ndim(weight) != 2:
            return  # the generic params check names what is missing
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != weight.shape[0]:
            hint = ""
            if weight.shape[0] == 1:
                hint = " Hint: with one feature per step, add the feature axis: x[..., None]."
            raise ShapeError(
                owner,
                f"expected input with last dimension {weight.shape[0]} (set at init), "
                f"got shape {tuple(jnp.shape(x))}.{hint}",
            )

    def _project(self, params: Params, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Inside the step, not once for the whole sequence before the scan: on CPU the
        # hoisted projection made an LSTM training step about 1.6x slower. Two matmuls
        # rather than one on [x, h]: within 10% either way, and GRU needs them apart.
        from_x = x @ params["input"]["weight"] + params["input"]["bias"]
        return from_x, h @ params["hidden"]["weight"]


class SimpleRNNCell(_Cell):
    r"""The Elman recurrent cell: ``h' = activation(x @ W_x + b + h @ W_h)``.

    .. math:: h' = \phi(x W_x + b + h W_h), \qquad \text{output} = h'

    Args:
      features: Size of the hidden state and of the output.
      activation: The nonlinearity ``phi`` (``tanh``).
      w_init: Initializer of ``input/weight`` (LeCun normal).
      recurrent_init: Initializer of ``hidden/weight`` (orthogonal).
      b_init: Initializer of ``input/bias`` (zeros).
      param_dtype: Dtype of the parameters.

    Shapes:
      ``init(key, x)`` takes one step ``[batch, in_features]`` and creates
      ``{"input": {"weight": [in_features, features], "bias": [features]}, "hidden":
      {"weight": [features, features]}}``. The carry ``h`` and the output are
      ``[*batch, features]``.

    Parameters are made by ``jnn.initializers.initialize(..., fan_in=features)``, so
    ``pytorch_default()`` as ``w_init``, ``recurrent_init`` and ``b_init`` gives
    PyTorch's ``U(-1/sqrt(features), 1/sqrt(features))`` for every weight and bias.
    ``init`` takes a batched step and refuses one without its batch axis; ``apply``
    also takes one unbatched step ``[in_features]`` with an unbatched carry.

    Raises:
      ShapeError: If ``x`` lacks its batch axis at init, its last dimension differs
        from the one set at init, or the carry is not ``initial_carry(batch)``'s shape.
      DTypeError: If ``x`` or the carry is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> cell = jnn.SimpleRNNCell(4)
      >>> params = cell.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> h, y = cell.apply(params, cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> h.shape, bool((h == y).all())
      ((2, 4), True)
    """

    features: int
    activation: Callable = tanh
    w_init: Callable = initializers.lecun_normal()
    recurrent_init: Callable = initializers.orthogonal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_positive_int("SimpleRNNCell", "features", self.features)

    def apply(self, params: Params, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        from_x, from_h = self._project(params, carry, x)
        h = self.activation(from_x + from_h)
        return h, h


class LSTMCell(_Cell):
    r"""Long short-term memory cell, with PyTorch's equations and gate order.

    .. math::
       \begin{aligned}
       i &= \sigma(x W_{xi} + h W_{hi} + b_i) &
       f &= \sigma(x W_{xf} + h W_{hf} + b_f) \\
       g &= \tanh(x W_{xg} + h W_{hg} + b_g) &
       o &= \sigma(x W_{xo} + h W_{ho} + b_o) \\
       c' &= f \odot c + i \odot g &
       h' &= o \odot \tanh(c'), \quad \text{output} = h'
       \end{aligned}

    The gate blocks are stacked in the order ``i, f, g, o`` along the last axis of
    ``input/weight``, ``hidden/weight`` and ``input/bias``, as in PyTorch's
    ``weight_ih_l0``/``weight_hh_l0`` (transposed here). There is one bias per gate:
    PyTorch's ``bias_ih + bias_hh`` is ``input/bias`` (so where PyTorch's initial
    effective bias is the sum of two uniform draws, ``b_init`` draws it once).

    Args:
      features: Size of ``h``, ``c`` and the output.
      forget_bias: Added to the forget gate's initial bias. ``0.0`` matches PyTorch;
        ``1.0`` (Jozefowicz et al., 2015; Keras' ``unit_forget_bias``) helps long
        dependencies early in training.
      w_init: Initializer of each gate's block of ``input/weight`` (LeCun normal).
      recurrent_init: Initializer of each gate's block of ``hidden/weight``
        (orthogonal).
      b_init: Initializer of ``input/bias`` (zeros).
      param_dtype: Dtype of the parameters.

    Shapes:
      ``init(key, x)`` takes one step ``[batch, in_features]`` and creates
      ``{"input": {"weight": [in_features, 4 * features], "bias": [4 * features]},
      "hidden": {"weight": [features, 4 * features]}}``. The carry is the tuple
      ``(h, c)``, each ``[*batch, features]``; the output is ``h'``.

    Parameters are made by ``jnn.initializers.initialize(..., fan_in=features)``, so
    ``pytorch_default()`` as ``w_init``, ``recurrent_init`` and ``b_init`` gives
    PyTorch's ``U(-1/sqrt(features), 1/sqrt(features))`` for every weight and bias.
    ``init`` takes a batched step and refuses one without its batch axis; ``apply``
    also takes one unbatched step ``[in_features]`` with an unbatched carry.

    Raises:
      ShapeError: If ``x`` lacks its batch axis at init, its last dimension differs
        from the one set at init, or the carry is not a tuple ``(h, c)`` of
        ``initial_carry(batch)``'s shapes.
      DTypeError: If ``x`` or the carry is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> cell = jnn.LSTMCell(4)
      >>> params = cell.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> params["input"]["weight"].shape, params["hidden"]["weight"].shape
      ((3, 16), (4, 16))
      >>> (h, c), y = cell.apply(params, cell.initial_carry((2,)), jnp.ones((2, 3)))
      >>> h.shape, c.shape, y.shape
      ((2, 4), (2, 4), (2, 4))
    """

    features: int
    forget_bias: float = 0.0
    w_init: Callable = initializers.lecun_normal()
    recurrent_init: Callable = initializers.orthogonal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    _gates = 4
    _carry_names = ("h", "c")

    def __post_init__(self):
        check_positive_int("LSTMCell", "features", self.features)

    def init(self, key: jax.Array, *inputs: Any) -> Params:
        params = self._init_params(key, inputs)
        if self.forget_bias:
            f = self.features
            bias = params["input"]["bias"]
            params["input"]["bias"] = bias.at[f : 2 * f].add(self.forget_bias)
        return params

    def apply(
        self, params: Params, carry: tuple[jax.Array, jax.Array], x: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        h, c = carry
        # The hidden projection takes the bias and comes first, and each projection is
        # split into gates before they are added: XLA then compiles the training step to
        # code about 20% faster on a CPU than for split(x W + h U + b) (equal math).
        from_h = h @ params["hidden"]["weight"] + params["input"]["bias"]
        from_x = x @ params["input"]["weight"]
        gates = zip(jnp.split(from_h, 4, axis=-1), jnp.split(from_x, 4, axis=-1), strict=True)
        i, f, g, o = (a + b for a, b in gates)
        c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
        h = sigmoid(o) * jnp.tanh(c)
        return (h, c), h


class GRUCell(_Cell):
    r"""Gated recurrent unit, with PyTorch's (and cuDNN's) equations and gate order.

    The reset gate scales the hidden state's projection *after* the matmul (PyTorch,
    cuDNN and Keras' ``reset_after=True``), so the candidate has a bias of its own on
    the hidden side, ``hidden/bias``:

    .. math::
       \begin{aligned}
       r &= \sigma(x W_{xr} + b_r + h W_{hr}) \\
       z &= \sigma(x W_{xz} + b_z + h W_{hz}) \\
       n &= \tanh\big(x W_{xn} + b_n + r \odot (h W_{hn} + b_{hn})\big) \\
       h' &= (1 - z) \odot n + z \odot h, \qquad \text{output} = h'
       \end{aligned}

    The gate blocks are stacked in the order ``r, z, n`` along the last axis of
    ``input/weight``, ``hidden/weight`` and ``input/bias``. From PyTorch's ``GRU``:
    ``input/bias`` is ``bias_ih + bias_hh`` for ``r`` and ``z`` and ``bias_ih`` for
    ``n``; ``hidden/bias`` is the ``n`` block of ``bias_hh``.

    Args:
      features: Size of ``h`` and the output.
      w_init: Initializer of each gate's block of ``input/weight`` (LeCun normal).
      recurrent_init: Initializer of each gate's block of ``hidden/weight``
        (orthogonal).
      b_init: Initializer of ``input/bias`` and of ``hidden/bias``, called once for
        each (zeros).
      param_dtype: Dtype of the parameters.

    Shapes:
      ``init(key, x)`` takes one step ``[batch, in_features]`` and creates
      ``{"input": {"weight": [in_features, 3 * features], "bias": [3 * features]},
      "hidden": {"weight": [features, 3 * features], "bias": [features]}}``. The carry
      ``h`` and the output are ``[*batch, features]``.

    Parameters are made by ``jnn.initializers.initialize(..., fan_in=features)``, so
    ``pytorch_default()`` as ``w_init``, ``recurrent_init`` and ``b_init`` gives
    PyTorch's ``U(-1/sqrt(features), 1/sqrt(features))`` for every weight and bias.
    ``init`` takes a batched step and refuses one without its batch axis; ``apply``
    also takes one unbatched step ``[in_features]`` with an unbatched carry.

    Raises:
      ShapeError: If ``x`` lacks its batch axis at init, its last dimension differs
        from the one set at init, or the carry is not ``initial_carry(batch)``'s shape.
      DTypeError: If ``x`` or the carry is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> cell = jnn.GRUCell(4)
      >>> params = cell.init(jax.random.key(0), jnp.zeros((1, 3)))
      >>> params["hidden"]["bias"].shape
      (4,)
      >>> h, y = cell.apply(params, cell.initial_carry(), jnp.ones((3,)))  # unbatched
      >>> h.shape
      (4,)
    """

    features: int
    w_init: Callable = initializers.lecun_normal()
    recurrent_init: Callable = initializers.orthogonal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    _gates = 3

    def __post_init__(self):
        check_positive_int("GRUCell", "features", self.features)

    def init(self, key: jax.Array, *inputs: Any) -> Params:
        params = self._init_params(key, inputs)
        k = child_key(child_key(key, "hidden"), "bias")
        params["hidden"]["bias"] = initializers.initialize(
            self.b_init, k, (self.features,), self.param_dtype, fan_in=self.features
        )
        return params

    def apply(self, params: Params, carry: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        from_x, from_h = self._project(params, carry, x)
        x_r, x_z, x_n = jnp.split(from_x, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(from_h, 3, axis=-1)
        r = sigmoid(x_r + h_r)
        z = sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + params["hidden"]["bias"]))
        h = (1.0 - z) * n + z * carry
        return h, h
