"""Recurrent layers: the cells ``SimpleRNNCell``, ``LSTMCell``, ``GRUCell``; ``RNN`` runs a cell
over time with ``jax.lax.scan``, and ``Bidirectional`` runs one forward and one backward.

A *cell* is a layer for one time step with one more method than other layers::

    carry = cell.initial_carry(batch_shape)             # zeros
    new_carry, output = cell.apply(params, carry, x_t)  # x_t: [*batch, in_features]

Any ``Module`` with that interface runs in ``RNN``; its ``init`` is called as
``cell.init(key, carry, x_t)``. A cell may also define ``output_of(carry)``, the output
read back from a carry (the built-in cells do); ``RNN`` then reads the last output from
the final carry instead of carrying it through the scan.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating, check_positive_int, check_rank
from jnn._errors import DTypeError, ShapeError
from jnn._module import Module, Params, Shape
from jnn._scope import Scope, child_key
from jnn.activations import sigmoid, tanh

__all__ = ["SimpleRNNCell", "LSTMCell", "GRUCell", "RNN", "Bidirectional"]


def _shapes(tree: Any) -> Any:
    """Shapes of the arrays in a carry, as nested tuples (``(h, c)`` gives two shapes)."""
    if isinstance(tree, tuple | list):
        return tuple(_shapes(t) for t in tree)
    return tuple(jnp.shape(tree))


def _batch_shape(batch_shape: int | Shape) -> Shape:
    return (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)


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
        check_floating(self, x)
        rows = {"input": x.shape[-1], "hidden": self.features}
        inits = {"input": self.w_init, "hidden": self.recurrent_init}
        params = {}
        for name in ("input", "hidden"):
            k = child_key(child_key(key, name), "weight")
            # One block per gate, so an orthogonal (or fan-out scaled) initializer sees
            # each gate's square matrix, not the stacked one.
            blocks = [
                inits[name](jax.random.fold_in(k, g), (rows[name], self.features), self.param_dtype)
                for g in range(self._gates)
            ]
            params[name] = {"weight": jnp.concatenate(blocks, axis=1)}
        params["input"]["bias"] = self.b_init(
            child_key(child_key(key, "input"), "bias"),
            (self._gates * self.features,),
            self.param_dtype,
        )
        return params

    def output_of(self, carry: Any) -> jax.Array:
        """The output a step returns, read from the carry it returns (``h``)."""
        return carry if len(self._carry_names) == 1 else carry[0]

    def initial_carry(self, batch_shape: int | Shape = (), dtype: Any = jnp.float32) -> Any:
        """The zero carry for inputs of batch shape ``batch_shape`` (``()`` if unbatched)."""
        zeros = jnp.zeros((*_batch_shape(batch_shape), self.features), dtype)
        return zeros if len(self._carry_names) == 1 else (zeros,) * len(self._carry_names)

    def check_inputs(self, params: Params, carry: Any, x: jax.Array) -> None:
        """Check the step input and the carry before the generic params check."""
        self._check_features(params, x, self.layer_name())
        batch = tuple(jnp.shape(x))[:-1]
        expected = _shapes(jax.eval_shape(lambda: self.initial_carry(batch)))
        if _shapes(carry) != expected:
            names = self._carry_names
            what = "carry" if len(names) == 1 else f"carry ({', '.join(names)})"
            raise ShapeError(
                self.layer_name(),
                f"expected {what} of shape {expected} for input of shape "
                f"{tuple(jnp.shape(x))}, got {_shapes(carry)}. Hint: make it with "
                f"cell.initial_carry({batch}).",
            )

    def _check_features(self, params: Params, x: jax.Array, owner: str) -> None:
        check_floating(owner, x)
        weights = params.get("input") if isinstance(params, Mapping) else None
        weight = weights.get("weight") if isinstance(weights, Mapping) else None
        if weight is None or jnp.ndim(weight) != 2:
            return  # the generic params check names what is missing
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != weight.shape[0]:
            raise ShapeError(
                owner,
                f"expected input with last dimension {weight.shape[0]} (set at init), "
                f"got shape {tuple(jnp.shape(x))}.",
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
      ``init(key, x)`` takes one step ``[*batch, in_features]`` (``[in_features]``
      unbatched) and creates ``{"input": {"weight": [in_features, features], "bias":
      [features]}, "hidden": {"weight": [features, features]}}``. The carry ``h`` and the
      output are ``[*batch, features]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import SimpleRNNCell
      >>> cell = SimpleRNNCell(4)
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
    PyTorch's ``bias_ih + bias_hh`` is ``input/bias``.

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
      ``init(key, x)`` takes one step ``[*batch, in_features]`` (``[in_features]``
      unbatched) and creates ``{"input": {"weight": [in_features, 4 * features],
      "bias": [4 * features]}, "hidden": {"weight": [features, 4 * features]}}``. The
      carry is the tuple ``(h, c)``, each ``[*batch, features]``; the output is ``h'``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import LSTMCell
      >>> cell = LSTMCell(4)
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
      b_init: Initializer of both biases (zeros).
      param_dtype: Dtype of the parameters.

    Shapes:
      ``init(key, x)`` takes one step ``[*batch, in_features]`` (``[in_features]``
      unbatched) and creates ``{"input": {"weight": [in_features, 3 * features],
      "bias": [3 * features]}, "hidden": {"weight": [features, 3 * features], "bias":
      [features]}}``. The carry ``h`` and the output are ``[*batch, features]``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import GRUCell
      >>> cell = GRUCell(4)
      >>> params = cell.init(jax.random.key(0), jnp.zeros((3,)))
      >>> params["hidden"]["bias"].shape
      (4,)
      >>> h, y = cell.apply(params, cell.initial_carry(), jnp.ones((3,)))
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
        params["hidden"]["bias"] = self.b_init(k, (self.features,), self.param_dtype)
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


class RNN(Module):
    r"""Runs a cell over the time axis with ``jax.lax.scan``: a recurrent layer.

    .. math::
       (\text{carry}_t, y_t) = \text{cell}(\text{carry}_{t-1}, x_t), \quad t = 1 \ldots T

    Variable-length sequences take ``lengths`` (valid steps ``t < lengths[b]``, padding
    on the right) or a boolean ``mask`` (valid where ``True``). A padded step leaves the
    carry unchanged and outputs zeros, so the final carry and the last output are those
    of each sequence's last valid step. ``reverse=True`` runs from the last step to the
    first over the valid steps only: with right padding this is the same as reversing
    each sequence within its length, running forward and reversing the outputs back,
    so outputs stay aligned with their inputs and padding stays at the end.

    The params are the cell's own (there is no ``"cell"`` level), so a cell stepped by
    hand, e.g. when sampling, uses the RNN's params as they are.

    ``apply`` passes ``key`` and ``is_training`` to the cell at every step: a cell with
    dropout sees the same key, hence the same mask, at each step (variational dropout).

    Stacking: ``Sequential([RNN(LSTMCell(64)), RNN(LSTMCell(64))])`` stacks two layers
    for sequences without padding. ``Sequential`` passes no keyword arguments, so with
    ``lengths`` or ``mask`` write a composite that passes them to each layer (example
    below).

    Args:
      cell: The cell, e.g. ``LSTMCell(64)``; any layer with ``initial_carry`` and
        ``apply(params, carry, x_t) -> (carry, y_t)``.
      return_sequences: Return the outputs of every step, or only the last one (at each
        sequence's last valid step).
      reverse: Run from the last valid step to the first.
      time_major: Inputs are ``[time, *batch, features]`` instead of
        ``[*batch, time, features]``.
      unroll: Steps unrolled per loop iteration of ``jax.lax.scan``.
      return_carry: Also return the final carry, as ``(carry, outputs)``.

    Shapes:
      ``x`` is ``[*batch, time, in_features]`` (``[time, *batch, in_features]`` when
      ``time_major``); ``*batch`` may be empty. ``lengths`` is ``[*batch]`` and ``mask``
      has ``x``'s shape without its feature axis. Outputs are ``[*batch, time,
      features]`` (laid out like ``x``) with ``return_sequences``, else
      ``[*batch, features]``. ``initial_carry`` and the final carry are shaped like
      ``cell.initial_carry(batch)``.

    Raises:
      ShapeError: If ``x`` is not at least 2-D, its last dimension differs from the one
        set at init, or ``lengths``, ``mask`` or ``initial_carry`` do not fit ``x``.
      DTypeError: If ``x`` is not floating point, ``lengths`` not integer or ``mask``
        not boolean.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import Module
      >>> from jnn import RNN, LSTMCell
      >>> x = jnp.ones((2, 5, 3))                     # [batch, time, features]
      >>> lstm = RNN(LSTMCell(8))
      >>> params = lstm.init(jax.random.key(0), x)
      >>> lstm.apply(params, x).shape
      (2, 5, 8)
      >>> last = RNN(LSTMCell(8), return_sequences=False)
      >>> last.apply(params, x, lengths=jnp.array([5, 3])).shape
      (2, 8)
      >>> class Encoder(Module):
      ...     def forward(self, scope, x, lengths):
      ...         for i in range(2):
      ...             x = scope(f"lstm_{i}", RNN(LSTMCell(8)), x, lengths=lengths)
      ...         return x
      >>> lengths = jnp.array([5, 3])
      >>> params = Encoder().init(jax.random.key(0), x, lengths)
      >>> Encoder().apply(params, x, lengths)[1, 3:].tolist() == [[0.0] * 8] * 2
      True
    """

    cell: Module
    return_sequences: bool = True
    reverse: bool = False
    time_major: bool = False
    unroll: int = 1
    return_carry: bool = False

    def __post_init__(self):
        if not isinstance(self.cell, Module) or not callable(
            getattr(self.cell, "initial_carry", None)
        ):
            raise TypeError(
                f"RNN: cell must be a jnn.Module with an initial_carry method, e.g. "
                f"LSTMCell(64), got {self.cell!r}."
            )
        if not isinstance(self.unroll, int) or self.unroll < 1:
            raise ValueError(f"RNN: unroll must be a positive int, got {self.unroll!r}.")

    def layer_name(self) -> str:
        return f"RNN({self.cell.layer_name()})"

    def _time_axis(self, x: Any) -> int:
        return 0 if self.time_major else jnp.ndim(x) - 2

    def _batch_shape(self, x: Any) -> Shape:
        shape = tuple(jnp.shape(x))
        return shape[1:-1] if self.time_major else shape[:-2]

    def _check(self, x: Any, initial_carry: Any, lengths: Any, mask: Any) -> None:
        layout = "[time, *batch, features]" if self.time_major else "[*batch, time, features]"
        check_rank(self, x, what=f"input {layout}", min_rank=2)
        check_floating(self, x)
        shape, batch = tuple(jnp.shape(x)), self._batch_shape(x)
        if lengths is not None and mask is not None:
            raise ShapeError(self.layer_name(), "give lengths or mask, not both.")
        if lengths is not None:
            if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
                raise DTypeError(
                    self.layer_name(),
                    f"expected integer lengths, got dtype {jnp.result_type(lengths)}.",
                )
            if tuple(jnp.shape(lengths)) != batch:
                raise ShapeError(
                    self.layer_name(),
                    f"expected lengths of shape {batch} (one per sequence of the input of "
                    f"shape {shape}), got shape {tuple(jnp.shape(lengths))}.",
                )
        if mask is not None:
            if jnp.result_type(mask) != jnp.bool_:
                raise DTypeError(
                    self.layer_name(),
                    f"expected a boolean mask, got dtype {jnp.result_type(mask)}. "
                    "Hint: mask.astype(bool).",
                )
            if tuple(jnp.shape(mask)) != shape[:-1]:
                raise ShapeError(
                    self.layer_name(),
                    f"expected mask of shape {shape[:-1]} (the input's shape {shape} "
                    f"without its feature axis), got shape {tuple(jnp.shape(mask))}.",
                )
        if initial_carry is not None:
            expected = _shapes(jax.eval_shape(lambda: self.cell.initial_carry(batch)))
            if _shapes(initial_carry) != expected:
                raise ShapeError(
                    self.layer_name(),
                    f"expected initial_carry of shape {expected} for input of shape "
                    f"{shape}, got {_shapes(initial_carry)}. Hint: make it with "
                    f"cell.initial_carry({batch}).",
                )

    def _step_spec(self, x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self._batch_shape(x) + tuple(jnp.shape(x))[-1:], x.dtype)

    def init(
        self,
        key: jax.Array,
        x: jax.Array,
        *,
        initial_carry: Any = None,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> Params:
        self._check(x, initial_carry, lengths, mask)
        batch = self._batch_shape(x)
        if initial_carry is None:
            initial_carry = jax.eval_shape(lambda: self.cell.initial_carry(batch, x.dtype))
        return self.cell.init(key, initial_carry, self._step_spec(x))

    def check_inputs(
        self,
        params: Params,
        x: jax.Array,
        *,
        initial_carry: Any = None,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> None:
        """Check ``x``, ``lengths``, ``mask`` and the carry before the generic checks."""
        self._check(x, initial_carry, lengths, mask)
        if isinstance(self.cell, _Cell):
            self.cell._check_features(params, x, self.layer_name())

    def apply(
        self,
        params: Params,
        x: jax.Array,
        *,
        initial_carry: Any = None,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        key: jax.Array | None = None,
        is_training: bool = False,
    ) -> Any:
        time_axis = self._time_axis(x)
        xs = jnp.moveaxis(x, time_axis, 0)  # [time, *batch, features]
        batch = xs.shape[1:-1]
        valid = None  # [time, *batch] booleans
        if lengths is not None:
            steps = jnp.arange(xs.shape[0]).reshape((-1,) + (1,) * len(batch))
            valid = steps < jnp.asarray(lengths)[None]
        elif mask is not None:
            valid = jnp.moveaxis(jnp.asarray(mask), time_axis, 0)
        carry = initial_carry
        if carry is None:
            dtype = jnp.result_type(x, *jax.tree.leaves(params))
            carry = self.cell.initial_carry(batch, dtype)

        def cell(carry, x_t):
            new_carry, y = self.cell.apply(params, carry, x_t, key=key, is_training=is_training)
            return jax.tree.map(lambda n, o: n.astype(o.dtype), new_carry, carry), y

        def step(state, inputs):
            carry, last = state
            x_t, valid_t = inputs
            new_carry, y = cell(carry, x_t)
            if valid_t is not None:
                # A padded step keeps the old carry and outputs zeros.
                new_carry = jax.tree.map(
                    lambda n, o: jnp.where(_expand(valid_t, n), n, o), new_carry, carry
                )
                y = jnp.where(_expand(valid_t, y), y, jnp.zeros((), y.dtype))
                if last is not None:
                    last = jnp.where(_expand(valid_t, y), y, last)
            elif last is not None:  # a cell without output_of: carry the latest output
                last = y
            return (new_carry, last), (y if self.return_sequences else None)

        scan = functools.partial(jax.lax.scan, step, reverse=self.reverse, unroll=self.unroll)
        output_of = getattr(self.cell, "output_of", None)  # optional for user cells
        if valid is None and not self.return_sequences and xs.shape[0] > 0 and output_of:
            # The last output is then read from the final carry, as a hand-written scan
            # does: carrying every step's output through the scan, or running the last
            # step outside it, costs run time or compile time.
            (carry, _), ys = scan((carry, None), (xs, None))
            last = output_of(carry)
        else:
            last = None
            if not self.return_sequences:  # the last valid output, zeros if none
                y_spec = jax.eval_shape(cell, carry, jax.ShapeDtypeStruct(xs.shape[1:], x.dtype))
                last = jnp.zeros(y_spec[1].shape, y_spec[1].dtype)
            (carry, last), ys = scan((carry, last), (xs, valid))
        outputs = jnp.moveaxis(ys, 0, time_axis) if self.return_sequences else last
        return (carry, outputs) if self.return_carry else outputs


def _expand(valid: jax.Array, like: jax.Array) -> jax.Array:
    """``valid`` ``[*batch]`` with trailing axes added to broadcast against ``like``."""
    return valid.reshape(valid.shape + (1,) * (jnp.ndim(like) - valid.ndim))


_MERGES: dict[str, Callable[[Any, Any], Any]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": jnp.add,
    "mean": lambda a, b: (a + b) / 2,
    "mul": jnp.multiply,
    "tuple": lambda a, b: (a, b),
}


class Bidirectional(Module):
    r"""Runs one ``RNN`` forward and one backward over the same input and merges them.

    .. math::
       y_t = \operatorname{merge}\big(\overrightarrow{\mathrm{RNN}}(x_1 \ldots x_t),\;
       \overleftarrow{\mathrm{RNN}}(x_T \ldots x_t)\big)

    Both see the same ``lengths`` or ``mask``; the backward one runs over each
    sequence's valid steps in reverse, and its outputs stay aligned with the input, so
    step ``t`` merges the forward summary of ``x[:t+1]`` with the backward summary of
    ``x[t:]``. Children are named ``forward`` and ``backward`` in ``params``.

    Args:
      forward_rnn: The forward ``RNN`` (``reverse=False``).
      backward_rnn: The backward ``RNN``; it is always run with ``reverse=True``.
        Defaults to a copy of ``forward_rnn`` (with parameters of its own).
      merge: ``"concat"`` (along the feature axis), ``"sum"``, ``"mean"``, ``"mul"``,
        ``"tuple"``, or a function ``merge(forward_outputs, backward_outputs)``.

    Shapes:
      ``x`` as for ``RNN``. With ``"concat"`` the outputs are ``[*batch, time,
      f_forward + f_backward]`` (``[*batch, f_forward + f_backward]`` without
      ``return_sequences``; the backward part is then its output at each sequence's
      *first* valid step, the last it processes). With ``return_carry`` the result is
      ``((forward_carry, backward_carry), merged)``.

    Raises:
      ValueError: If the two RNNs disagree on ``return_sequences``, ``return_carry`` or
        ``time_major``, or ``forward_rnn`` has ``reverse=True``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import RNN, Bidirectional, GRUCell
      >>> both = Bidirectional(RNN(GRUCell(4)), RNN(GRUCell(6)))
      >>> x = jnp.ones((2, 5, 3))
      >>> params = both.init(jax.random.key(0), x)
      >>> sorted(params)
      ['backward', 'forward']
      >>> both.apply(params, x, lengths=jnp.array([5, 2])).shape
      (2, 5, 10)
    """

    forward_rnn: RNN
    backward_rnn: RNN | None = None
    merge: str | Callable = "concat"

    def __post_init__(self):
        backward = self.forward_rnn if self.backward_rnn is None else self.backward_rnn
        for name, rnn in (("forward_rnn", self.forward_rnn), ("backward_rnn", backward)):
            if not isinstance(rnn, RNN):
                raise TypeError(f"Bidirectional: {name} must be an RNN, got {rnn!r}.")
        if self.forward_rnn.reverse:
            raise ValueError("Bidirectional: forward_rnn must have reverse=False.")
        for field in ("return_sequences", "return_carry", "time_major"):
            if getattr(self.forward_rnn, field) != getattr(backward, field):
                raise ValueError(
                    f"Bidirectional: forward_rnn and backward_rnn must agree on {field}, got "
                    f"{getattr(self.forward_rnn, field)} and {getattr(backward, field)}."
                )
        if not callable(self.merge) and self.merge not in _MERGES:
            raise ValueError(
                f"Bidirectional: merge must be one of {sorted(_MERGES)} or a function, "
                f"got {self.merge!r}."
            )
        object.__setattr__(self, "backward_rnn", dataclasses.replace(backward, reverse=True))

    def forward(
        self,
        scope: Scope,
        x: jax.Array,
        *,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> Any:
        outputs = [
            scope(name, rnn, x, lengths=lengths, mask=mask)
            for name, rnn in (("forward", self.forward_rnn), ("backward", self.backward_rnn))
        ]
        carries = None
        if self.forward_rnn.return_carry:
            (forward_carry, forward_y), (backward_carry, backward_y) = outputs
            carries, outputs = (forward_carry, backward_carry), (forward_y, backward_y)
        if self.merge in ("sum", "mean", "mul"):
            shapes = [tuple(jnp.shape(y)) for y in outputs]
            if shapes[0] != shapes[1]:
                raise ShapeError(
                    self.layer_name(),
                    f"merge={self.merge!r} needs outputs of equal shapes, got {shapes[0]} "
                    f"(forward) and {shapes[1]} (backward).",
                )
        merged = (self.merge if callable(self.merge) else _MERGES[self.merge])(*outputs)
        return merged if carries is None else (carries, merged)
