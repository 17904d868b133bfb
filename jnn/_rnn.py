"""Running a cell over time: ``RNN``, one ``jax.lax.scan`` over the time axis.

``Direction`` is one pass over the sequence (forward or backward) split into the pieces a
scan needs, so that ``Bidirectional`` can run both of its directions in one scan.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jnn._carry import check_carry_like
from jnn._checks import is_apply_check
from jnn._module import Module, Params, Shape
from jnn._sequences import check_sequence, nan_bad_rows, time_major_inputs

__all__ = ["RNN", "Direction"]


# --------------------------------------------------------------------------- one direction


def _expand(valid: jax.Array, like: jax.Array) -> jax.Array:
    """``valid`` ``[*batch]`` with trailing axes added to broadcast against ``like``."""
    return valid.reshape(valid.shape + (1,) * (jnp.ndim(like) - valid.ndim))


class Direction:
    """One pass of ``rnn``'s cell over a time-major sequence, as the parts of a scan:
    its initial state, its step and its results. ``RNN`` scans one, ``Bidirectional``
    two side by side."""

    def __init__(self, rnn: RNN, params: Params, key: Any, is_training: bool):
        self.rnn, self.cell = rnn, rnn.cell
        self.params, self.key, self.is_training = params, key, is_training

    def cell_step(self, carry, x_t):
        new_carry, y = self.cell.apply(
            self.params, carry, x_t, key=self.key, is_training=self.is_training
        )
        return jax.tree.map(lambda n, o: n.astype(o.dtype), new_carry, carry), y

    def initial_state(self, xs, valid, carry) -> tuple[Any, Any]:
        """``(carry, last)``: ``last`` tracks the last valid output, or is ``None`` when it
        is read from the final carry (``output_of``)."""
        if carry is None:
            dtype = jnp.result_type(xs, *jax.tree.leaves(self.params))
            carry = self.cell.initial_carry(xs.shape[1:-1], dtype)
        # Without padding the last output is read from the final carry, as a hand-written
        # scan does: carrying every step's output through the scan, or running the last
        # step outside it, costs run time or compile time.
        self.from_carry = (
            valid is None
            and not self.rnn.return_sequences
            and xs.shape[0] > 0
            and getattr(self.cell, "output_of", None) is not None  # optional for user cells
        )
        last = None
        if not self.rnn.return_sequences and not self.from_carry:
            # The last valid output, zeros if none.
            y_spec = jax.eval_shape(
                self.cell_step, carry, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)
            )
            last = jnp.zeros(y_spec[1].shape, y_spec[1].dtype)
        return carry, last

    def step(self, state, inputs):
        carry, last = state
        x_t, valid_t = inputs
        new_carry, y = self.cell_step(carry, x_t)
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
        return (new_carry, last), (y if self.rnn.return_sequences else None)

    def results(self, state, ys) -> tuple[Any, Any]:
        """``(final carry, outputs)``; outputs are time-major ``ys`` or the last output."""
        carry, last = state
        if self.rnn.return_sequences:
            return carry, ys
        return carry, (self.cell.output_of(carry) if self.from_carry else last)


# --------------------------------------------------------------------------- RNN


class RNN(Module):
    r"""Runs a cell over the time axis with ``jax.lax.scan``: a recurrent layer.

    .. math::
       (\text{carry}_t, y_t) = \text{cell}(\text{carry}_{t-1}, x_t), \quad t = 1 \ldots T

    Variable-length sequences take ``lengths`` (valid steps ``t < lengths[b]``, padding
    on the right) or a boolean ``mask`` (valid where ``True``, anywhere). A padded step
    leaves the carry unchanged and outputs zeros, so the final carry and the last output
    are those of each sequence's last valid step. ``reverse=True`` runs from the last
    step to the first over the valid steps only: with ``lengths`` (right padding) this
    is the same as reversing each sequence within its length, running forward and
    reversing the outputs back, so outputs stay aligned with their inputs and padding
    stays at the end. For left-padded sequences pass a ``mask``.

    ``lengths`` must lie in ``[0, time]``. Concrete ones outside it raise a
    ``ShapeError``; under ``jit`` (or ``vmap``, ``grad``) they cannot be checked without
    a host round trip, so the rows of those sequences come out as NaN: their outputs
    and their final carry.

    The params are the cell's own (there is no ``"cell"`` level), so a cell stepped by
    hand, e.g. when sampling, uses the RNN's params as they are.

    ``apply`` passes ``key`` and ``is_training`` to the cell at every step: a cell with
    dropout sees the same key, hence the same mask, at each step (variational dropout).

    Batch axes: ``init`` takes a batched sample ``[batch, time, features]`` and refuses
    ``[time, features]``, which is as likely a batch of scalar sequences without its
    feature axis; ``apply`` also takes one unbatched sequence ``[time, features]`` (the
    params fix ``features``), so ``jax.vmap`` over sequences works.

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
      ``time_major``). ``lengths`` is ``[*batch]`` and ``mask`` has ``x``'s shape
      without its feature axis. Outputs are ``[*batch, time, features]`` (laid out like
      ``x``) with ``return_sequences``, else ``[*batch, features]``. ``initial_carry``
      and the final carry are shaped like ``cell.initial_carry(batch)``.

    Raises:
      ShapeError: If ``x`` is not at least 2-D (3-D at init), its last dimension differs
        from the one set at init, ``lengths``, ``mask`` or ``initial_carry`` do not fit
        ``x`` (with a hint when ``time_major`` would make them fit), or concrete
        ``lengths`` lie outside ``[0, time]``.
      DTypeError: If ``x`` or the carry is not floating point, ``lengths`` not integer
        or ``mask`` not boolean.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> x = jnp.ones((2, 5, 3))                     # [batch, time, features]
      >>> lstm = jnn.RNN(jnn.LSTMCell(8))
      >>> params = lstm.init(jax.random.key(0), x)
      >>> lstm.apply(params, x).shape
      (2, 5, 8)
      >>> last = jnn.RNN(jnn.LSTMCell(8), return_sequences=False)
      >>> last.apply(params, x, lengths=jnp.array([5, 3])).shape
      (2, 8)
      >>> class Encoder(jnn.Module):
      ...     def forward(self, scope, x, lengths):
      ...         for i in range(2):
      ...             x = scope(f"lstm_{i}", jnn.RNN(jnn.LSTMCell(8)), x, lengths=lengths)
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
        if not callable(getattr(self.cell, "initial_carry", None)):
            raise TypeError(
                f"RNN: cell must be a jnn.Module with an initial_carry method, e.g. "
                f"LSTMCell(64), got {self.cell!r}."
            )
        if self.unroll < 1:
            raise ValueError(f"RNN: unroll must be a positive int, got {self.unroll!r}.")

    def layer_name(self) -> str:
        return f"RNN({self.cell.layer_name()})"

    def batch_shape(self, x: Any) -> Shape:
        shape = tuple(jnp.shape(x))
        return shape[1:-1] if self.time_major else shape[:-2]

    def check_carry(self, owner: Any, x: Any, initial_carry: Any) -> None:
        """Raise naming ``owner`` unless ``initial_carry`` fits ``x``'s batch."""
        if initial_carry is not None:
            context = f"for input of shape {tuple(jnp.shape(x))}"
            check_carry_like(
                owner, self.cell, initial_carry, self.batch_shape(x), context, "initial_carry"
            )

    def init(
        self,
        key: jax.Array,
        x: jax.Array,
        *,
        initial_carry: Any = None,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> Params:
        # apply's params check runs init on apply's inputs, which may be one unbatched
        # sequence.
        at_init = not is_apply_check()
        check_sequence(self, x, lengths, mask, self.time_major, at_init=at_init)
        self.check_carry(self, x, initial_carry)
        batch = self.batch_shape(x)
        if initial_carry is None:
            initial_carry = jax.eval_shape(lambda: self.cell.initial_carry(batch, x.dtype))
        step = jax.ShapeDtypeStruct(batch + tuple(jnp.shape(x))[-1:], x.dtype)
        return self.cell.init(key, initial_carry, step)

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
        check_sequence(self, x, lengths, mask, self.time_major)
        check_features = getattr(self.cell, "_check_features", None)
        if check_features is not None:
            check_features(params, x, self.layer_name())
        self.check_carry(self, x, initial_carry)

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
        xs, valid = time_major_inputs(x, lengths, mask, self.time_major)
        run = Direction(self, params, key, is_training)
        state = run.initial_state(xs, valid, initial_carry)
        scan = functools.partial(jax.lax.scan, run.step, reverse=self.reverse, unroll=self.unroll)
        state, ys = scan(state, (xs, valid))
        carry, outputs = run.results(state, ys)
        steps = xs.shape[0]
        if self.return_sequences:
            outputs = nan_bad_rows(outputs, lengths, steps, lead=1)
            outputs = jnp.moveaxis(outputs, 0, 0 if self.time_major else x.ndim - 2)
        else:
            outputs = nan_bad_rows(outputs, lengths, steps)
        if not self.return_carry:
            return outputs
        return nan_bad_rows(carry, lengths, steps), outputs
