"""Sequence inputs of the recurrent layers: the ``[*batch, time, features]`` layout (or
time-major), ``lengths`` and ``mask``; the checks that name what is wrong with them, and
the NaN answer to lengths out of range that cannot be checked under ``jit``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import is_concrete
from jnn._errors import DTypeError, ShapeError, layer_name

__all__ = ["check_sequence", "nan_bad_rows", "time_major_inputs"]


def known(value: Any) -> bool:
    """Whether ``value`` holds concrete values (not a tracer, nor an abstract spec)."""
    return not isinstance(value, jax.ShapeDtypeStruct) and is_concrete(value)


def _layout(time_major: bool) -> str:
    return "[time, *batch, features]" if time_major else "[*batch, time, features]"


def _swap_hint(time_major: bool) -> str:
    if time_major:
        return " Hint: if x is [batch, time, features], pass time_major=False."
    return " Hint: if x is [time, batch, features], pass time_major=True."


def check_sequence(
    owner: Any, x: Any, lengths: Any, mask: Any, time_major: bool, *, at_init: bool = False
) -> None:
    """Check a sequence input ``x`` and its ``lengths`` or ``mask`` for ``owner``.

    ``at_init`` refuses an input without its batch axis (see ``RNN``). Concrete
    ``lengths`` outside ``[0, time]`` raise; traced ones are answered with NaN rows by
    ``nan_bad_rows``.
    """
    name, layout = layer_name(owner), _layout(time_major)
    shape = tuple(jnp.shape(x))
    if len(shape) < 2:
        raise ShapeError(
            name,
            f"expected input {layout} of rank at least 2, got shape {shape}. Hint: one "
            "sequence of scalars is x[None, :, None] ([batch, time, features]).",
        )
    if at_init and len(shape) == 2:
        raise ShapeError(
            name,
            f"init expected a batched input {layout} (rank at least 3), got shape {shape}. "
            "Hint: for sequences of one feature per step add the feature axis, "
            "x[..., None]; for one sequence [time, features] add the batch axis, x[None]. "
            "(apply also takes one unbatched sequence.)",
        )
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        hint = "cast it first, e.g. x.astype(jnp.float32)"
        if jnp.issubdtype(dtype, jnp.integer):
            hint = "token ids go through jnn.Embedding first; other numbers: " + hint
        raise DTypeError(name, f"expected a floating-point input, got dtype {dtype}. Hint: {hint}.")
    time_axis = 0 if time_major else len(shape) - 2
    batch = shape[1:-1] if time_major else shape[:-2]
    steps = shape[time_axis]
    if lengths is not None and mask is not None:
        raise ShapeError(name, "give lengths or mask, not both.")
    for what, value, dtype in (("lengths", lengths, "jnp.int32"), ("mask", mask, "bool")):
        if value is not None and not hasattr(value, "dtype"):
            raise DTypeError(
                name,
                f"expected {what} as an array, got a {type(value).__name__}. Hint: "
                f"jnp.asarray({what}, {dtype}).",
            )
    if lengths is not None:
        _check_lengths(name, lengths, shape, batch, steps, time_major)
    if mask is not None:
        _check_mask(name, mask, shape, time_major)


def _check_lengths(name, lengths, shape, batch, steps, time_major) -> None:
    got_dtype, got = jnp.result_type(lengths), tuple(jnp.shape(lengths))
    if not jnp.issubdtype(got_dtype, jnp.integer):
        hint = ""
        if got_dtype == jnp.bool_:
            hint = " Hint: a boolean array of valid steps is a mask: pass mask=... instead."
        elif jnp.issubdtype(got_dtype, jnp.floating):
            hint = " Hint: lengths.astype(jnp.int32)."
        raise DTypeError(name, f"expected integer lengths, got dtype {got_dtype}.{hint}")
    if got != batch:
        hint = ""
        if len(shape) == 3 and got == (shape[1] if not time_major else shape[0],):
            hint = _swap_hint(time_major)
        elif got == shape[:-1]:
            hint = " Hint: one flag per step is a mask: pass mask=lengths.astype(bool)."
        raise ShapeError(
            name,
            f"expected lengths of shape {batch} (one per sequence of the input of shape "
            f"{shape}), got shape {got}.{hint}",
        )
    if known(lengths):
        values = np.asarray(lengths)
        bad = (values < 0) | (values > steps)
        if bad.any():
            if values.ndim == 0:
                got = f"got {int(values)}"
            else:
                rows = [tuple(map(int, b)) if len(b) > 1 else int(b[0]) for b in np.argwhere(bad)]
                got = f"got {values[bad].tolist()[:8]} for the sequences at {rows[:8]}"
            raise ShapeError(
                name,
                f"lengths must lie in [0, {steps}], the length of the time axis of the "
                f"input of shape {shape}; {got}.",
            )


def _check_mask(name, mask, shape, time_major) -> None:
    got_dtype, got = jnp.result_type(mask), tuple(jnp.shape(mask))
    if got_dtype != jnp.bool_:
        hint = "mask.astype(bool)"
        if jnp.issubdtype(got_dtype, jnp.integer) and len(got) == len(shape) - 2:
            hint = "a count of valid steps per sequence is lengths: pass lengths=..."
        raise DTypeError(name, f"expected a boolean mask, got dtype {got_dtype}. Hint: {hint}.")
    if got != shape[:-1]:
        hint = ""
        if len(shape) == 3 and got == (shape[1], shape[0]):
            hint = _swap_hint(time_major).replace("if x is", "if x and the mask are")
            hint += " Otherwise pass mask.T."
        elif got == shape:
            hint = " Hint: the mask has no feature axis: e.g. mask[..., 0]."
        raise ShapeError(
            name,
            f"expected mask of shape {shape[:-1]} (the input's shape {shape} "
            f"without its feature axis), got shape {got}.{hint}",
        )


def nan_bad_rows(tree: Any, lengths: Any, steps: int, lead: int = 0) -> Any:
    """``tree`` with NaN in the rows of sequences whose traced ``lengths`` lie outside
    ``[0, steps]``; leaves are ``[*lead_axes, *batch, ...]`` with ``lead`` leading axes.

    Under ``jit`` the lengths cannot be checked without a host round trip per step, so
    a bad one shows as NaN rather than as a plausible wrong number. Concrete lengths
    were checked already and leave ``tree`` as it is.
    """
    if lengths is None or known(lengths) or isinstance(lengths, jax.ShapeDtypeStruct):
        return tree
    lengths = jnp.asarray(lengths)
    bad = (lengths < 0) | (lengths > steps)

    def poison(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return leaf
        shape = (1,) * lead + bad.shape + (1,) * (leaf.ndim - lead - bad.ndim)
        return jnp.where(bad.reshape(shape), jnp.array(jnp.nan, leaf.dtype), leaf)

    return jax.tree.map(poison, tree)


def time_major_inputs(x, lengths, mask, time_major: bool) -> tuple[jax.Array, Any]:
    """``x`` as ``[time, *batch, features]`` and the valid steps ``[time, *batch]``
    (``None`` without ``lengths`` or ``mask``)."""
    time_axis = 0 if time_major else jnp.ndim(x) - 2
    xs = jnp.moveaxis(x, time_axis, 0)
    valid = None
    if lengths is not None:
        steps = jnp.arange(xs.shape[0]).reshape((-1,) + (1,) * (xs.ndim - 2))
        valid = steps < jnp.asarray(lengths)[None]
    elif mask is not None:
        valid = jnp.moveaxis(jnp.asarray(mask), time_axis, 0)
    return xs, valid
