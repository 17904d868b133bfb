"""``Bidirectional``: one ``RNN`` forward and one backward over the same sequence, run
side by side in one ``jax.lax.scan`` and merged."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn._carry import describe_carry
from jnn._checks import is_apply_check
from jnn._errors import LayerError, ShapeError
from jnn._module import Module, Params
from jnn._rnn import RNN, Direction
from jnn._scope import child_key
from jnn._sequences import check_sequence, nan_bad_rows, time_major_inputs

__all__ = ["Bidirectional"]

_MERGES: dict[str, Callable[[Any, Any], Any]] = {
    "concat": lambda a, b: jnp.concatenate([a, b], axis=-1),
    "sum": jnp.add,
    "mean": lambda a, b: (a + b) / 2,
    "mul": jnp.multiply,
    "tuple": lambda a, b: (a, b),
}
_NAMES = ("forward", "backward")


@contextlib.contextmanager
def _at(name: str):
    """Errors raised inside name the direction, as a composite's child would."""
    try:
        yield
    except LayerError as error:
        error.path.insert(0, name)
        raise


class Bidirectional(Module):
    r"""Runs one ``RNN`` forward and one backward over the same input and merges them.

    .. math::
       y_t = \operatorname{merge}\big(\overrightarrow{\mathrm{RNN}}(x_1 \ldots x_t),\;
       \overleftarrow{\mathrm{RNN}}(x_T \ldots x_t)\big)

    Both see the same ``lengths`` or ``mask``; the backward one runs over each
    sequence's valid steps in reverse (starting at each sequence's own last valid
    step), and its outputs stay aligned with the input, so step ``t`` merges the
    forward summary of ``x[:t+1]`` with the backward summary of ``x[t:]``. The results
    are those of the two ``RNN``\ s applied one after the other, but both directions
    run in one ``jax.lax.scan`` (the backward one reading the sequence reversed),
    which on a CPU takes less time than two scans; it is unrolled by the larger of
    the two ``unroll``\ s. Children are named ``forward`` and ``backward`` in
    ``params``, and their params are each ``RNN``'s own.

    ``initial_carry=(forward_carry, backward_carry)`` starts each direction from a
    given carry (``None`` for zeros), each shaped like ``cell.initial_carry(batch)``.
    PyTorch's ``h0`` of a one-layer bidirectional ``GRU`` (``[2, batch, hidden]``) is
    ``(h0[0], h0[1])``; for an ``LSTM`` with ``(h0, c0)`` it is
    ``((h0[0], c0[0]), (h0[1], c0[1]))``. ``lengths`` out of ``[0, time]`` are
    answered as by ``RNN``: an error if concrete, NaN rows under ``jit``.

    Args:
      forward_rnn: The forward ``RNN`` (``reverse=False``).
      backward_rnn: The backward ``RNN``; it is always run with ``reverse=True``.
        Defaults to a copy of ``forward_rnn`` (with parameters of its own).
      merge: ``"concat"`` (along the feature axis), ``"sum"``, ``"mean"``, ``"mul"``,
        ``"tuple"``, or a function ``merge(forward_outputs, backward_outputs)``.

    Shapes:
      ``x``, ``lengths`` and ``mask`` as for ``RNN`` (``init`` takes a batched ``x``;
      ``apply`` also one unbatched sequence). With ``"concat"`` the outputs are
      ``[*batch, time, f_forward + f_backward]`` (``[*batch, f_forward + f_backward]``
      without ``return_sequences``; the backward part is then its output at each
      sequence's *first* valid step, the last it processes). With ``return_carry`` the
      result is ``((forward_carry, backward_carry), merged)``.

    Raises:
      ValueError: If the two RNNs disagree on ``return_sequences``, ``return_carry`` or
        ``time_major``, or ``forward_rnn`` has ``reverse=True``.
      ShapeError: As ``RNN`` does, naming the direction for a carry or params that do
        not fit; also if ``initial_carry`` is not a pair, or a built-in ``merge`` gets
        outputs of different shapes.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> both = jnn.Bidirectional(jnn.RNN(jnn.GRUCell(4)), jnn.RNN(jnn.GRUCell(6)))
      >>> x = jnp.ones((2, 5, 3))
      >>> params = both.init(jax.random.key(0), x)
      >>> sorted(params)
      ['backward', 'forward']
      >>> both.apply(params, x, lengths=jnp.array([5, 2])).shape
      (2, 5, 10)
      >>> h0 = (jnp.zeros((2, 4)), jnp.ones((2, 6)))  # (forward, backward)
      >>> both.apply(params, x, initial_carry=h0).shape
      (2, 5, 10)
    """

    forward_rnn: RNN
    backward_rnn: RNN | None = None
    merge: str | Callable = "concat"

    def __post_init__(self):
        backward = self.forward_rnn if self.backward_rnn is None else self.backward_rnn
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

    def _rnns(self) -> tuple[RNN, RNN]:
        return self.forward_rnn, self.backward_rnn

    def _carries(self, initial_carry: Any) -> tuple[Any, Any]:
        if initial_carry is None:
            return None, None
        if not (isinstance(initial_carry, tuple | list) and len(initial_carry) == 2):
            raise ShapeError(
                self.layer_name(),
                "expected initial_carry as a pair (forward_carry, backward_carry), each "
                f"like cell.initial_carry(batch) or None; got {describe_carry(initial_carry)}. "
                "Hint: PyTorch's h0 [2, batch, hidden] is (h0[0], h0[1]); with an LSTM's "
                "c0, ((h0[0], c0[0]), (h0[1], c0[1])).",
            )
        return tuple(initial_carry)

    def _check(self, x, initial_carry, lengths, mask, at_init=False) -> tuple[Any, Any]:
        check_sequence(self, x, lengths, mask, self.forward_rnn.time_major, at_init=at_init)
        carries = self._carries(initial_carry)
        for name, rnn, carry in zip(_NAMES, self._rnns(), carries, strict=True):
            with _at(name):
                rnn.check_carry(rnn, x, carry)
        return carries

    def init(
        self,
        key: jax.Array,
        x: jax.Array,
        *,
        initial_carry: Any = None,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> Params:
        carries = self._check(x, initial_carry, lengths, mask, at_init=not is_apply_check())
        params = {}
        for name, rnn, carry in zip(_NAMES, self._rnns(), carries, strict=True):
            with _at(name):
                params[name] = rnn.init(child_key(key, name), x, initial_carry=carry)
        # The merge sees the outputs' shapes now, so a mismatch fails at init.
        run = lambda p, *inputs: self._run(p, *inputs, None, False)  # noqa: E731
        jax.eval_shape(run, params, x, carries, lengths, mask)
        return params

    def check_inputs(
        self,
        params: Params,
        x: jax.Array,
        *,
        initial_carry: Any = None,
        lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> None:
        """Check the inputs, then each direction's input size against its params."""
        self._check(x, initial_carry, lengths, mask)
        for name, rnn in zip(_NAMES, self._rnns(), strict=True):
            check_features = getattr(rnn.cell, "_check_features", None)
            if check_features is not None and isinstance(params.get(name), Mapping):
                with _at(name):
                    check_features(params[name], x, rnn.layer_name())

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
        carries = self._carries(initial_carry)
        return self._run(params, x, carries, lengths, mask, key, is_training)

    def _run(self, params, x, carries, lengths, mask, key, is_training) -> Any:
        forward_rnn, backward_rnn = self._rnns()
        xs, valid = time_major_inputs(x, lengths, mask, forward_rnn.time_major)
        runs = [
            Direction(rnn, params[name], child_key(key, name), is_training)
            for name, rnn in zip(_NAMES, self._rnns(), strict=True)
        ]
        states = tuple(
            run.initial_state(xs, valid, carry) for run, carry in zip(runs, carries, strict=True)
        )
        # Step t runs the forward cell on x[t] and the backward cell on x[T-1-t], as
        # lax.scan(reverse=True) would: the same steps as two scans, in one loop.
        reversed_valid = None if valid is None else valid[::-1]

        def step(state, inputs):
            x_t, valid_t, x_r, valid_r = inputs
            forward_state, forward_y = runs[0].step(state[0], (x_t, valid_t))
            backward_state, backward_y = runs[1].step(state[1], (x_r, valid_r))
            return (forward_state, backward_state), (forward_y, backward_y)

        unroll = max(forward_rnn.unroll, backward_rnn.unroll)
        inputs = (xs, valid, xs[::-1], reversed_valid)
        states, (forward_ys, backward_ys) = jax.lax.scan(step, states, inputs, unroll=unroll)
        if backward_ys is not None:
            backward_ys = backward_ys[::-1]
        results = [
            run.results(state, ys)
            for run, state, ys in zip(runs, states, (forward_ys, backward_ys), strict=True)
        ]
        steps = xs.shape[0]
        carries = tuple(nan_bad_rows(carry, lengths, steps) for carry, _ in results)
        outputs = []
        for _, y in results:
            if forward_rnn.return_sequences:
                y = nan_bad_rows(y, lengths, steps, lead=1)
                y = jnp.moveaxis(y, 0, 0 if forward_rnn.time_major else x.ndim - 2)
            else:
                y = nan_bad_rows(y, lengths, steps)
            outputs.append(y)
        if self.merge in ("sum", "mean", "mul"):
            shapes = [tuple(jnp.shape(y)) for y in outputs]
            if shapes[0] != shapes[1]:
                raise ShapeError(
                    self.layer_name(),
                    f"merge={self.merge!r} needs outputs of equal shapes, got {shapes[0]} "
                    f"(forward) and {shapes[1]} (backward).",
                )
        merged = (self.merge if callable(self.merge) else _MERGES[self.merge])(*outputs)
        return (carries, merged) if forward_rnn.return_carry else merged
