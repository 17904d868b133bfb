r"""The interface every loss shares, and the checks of what losses and metrics receive.

Every loss is ``loss(predictions, targets, *, reduction="mean")``. It computes one value
per example (per element for regression and binary losses, per distribution over the
last axis for the softmax losses and the divergences) and then reduces them: ``"mean"``
and ``"sum"`` return a scalar, ``"none"`` returns the per-example values.

What each loss checks, and when:

- Options (``reduction``, ``label_smoothing``, ``delta``, ``eps``) at the call: a wrong
  kind raises ``TypeError``, a value out of range ``ValueError``.
- Shapes and dtypes in Python before anything runs, so a mismatch that broadcasting
  would hide (targets ``[32, 1]`` against predictions ``[32]``) fails with a message that
  names the likely cause.
- Values (a label past the last class, a "probability" of 3, a positive
  log-probability) raise ``ValueError`` listing the offending entries when the arrays
  are concrete. Under ``jit`` (or ``grad`` or ``vmap`` of them) a check would cost a
  round trip to the host every step, so the affected examples' losses are NaN instead,
  with no gradient: a reduced loss is then NaN too (with a zero gradient), never a
  plausible wrong number. For good inputs the arithmetic is that of the unchecked loss:
  the flag is applied to the reduced scalar.

The arithmetic builds on ``optax.losses``. The losses themselves live in
``_regression_losses``, ``_binary_losses``, ``_categorical_losses`` and ``_divergences``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import is_concrete
from jnn._errors import DTypeError, ShapeError

_REDUCTIONS = ("mean", "sum", "none")
_SHOWN = 3  # offending entries quoted in a message


# --------------------------------------------------------------------------- options


def check_reduction(name: str, reduction: Any) -> None:
    """Raise unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``."""
    if isinstance(reduction, str) and reduction in _REDUCTIONS:
        return
    expected = f"{name}: expected reduction 'mean', 'sum' or 'none', got {reduction!r}."
    if not isinstance(reduction, str):
        hint = " Hint: for per-example values pass the string 'none'." if reduction is None else ""
        raise TypeError(expected + hint)
    hints = {
        "batchmean": "'mean' already averages over examples (distributions), like PyTorch's "
        "'batchmean'.",
        "elementwise_mean": "use 'mean'.",
    }
    hint = hints.get(reduction) or (
        f"the names are lower case: '{reduction.lower()}'."
        if reduction.lower() in _REDUCTIONS
        else ""
    )
    raise ValueError(expected + (f" Hint: {hint}" if hint else ""))


def reduce(values: jax.Array, reduction: str, ok: jax.Array | None = None) -> jax.Array:
    """Reduce ``values``; NaN where ``ok`` (from ``check_entries``, per example) is false.

    A reduced loss is NaN if any example is bad. The flag is applied to the reduced
    scalar, so for good inputs the reduction is the unchecked one.
    """
    if ok is not None and reduction == "none":
        return nan_unless(ok, values)
    if reduction == "mean":
        reduced = jnp.mean(values)
    elif reduction == "sum":
        reduced = jnp.sum(values)
    else:
        return values
    return reduced if ok is None else jnp.where(jnp.all(ok), reduced, jnp.nan)


def check_option(
    name: str,
    what: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
    expected: str = "",
) -> bool:
    """Check a number option against its interval, e.g. ``[0, 1]`` or ``(0, inf)``.

    Python and NumPy numbers and concrete JAX scalars are range-checked at once; a wrong
    kind raises ``TypeError``, a value outside ``ValueError`` saying ``expected`` (by
    default "{what} in {interval}"). Returns whether the value is traced (unknown until
    run), in which case the caller answers an out-of-range value with NaN (``in_range``).
    """
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    expected = expected or f"{what} in {interval}"
    if isinstance(value, jax.Array | np.ndarray) and np.ndim(value) == 0:
        if jnp.issubdtype(value.dtype, jnp.bool_) or not jnp.issubdtype(value.dtype, jnp.number):
            raise TypeError(f"{name}: expected {what} to be a number, got dtype {value.dtype}.")
        if not is_concrete(value):
            return True
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name}: expected {what} to be a number ({expected}), got {value!r} "
            f"({type(value).__name__})."
        )
    if not in_range(value, low, high, low_open=low_open, high_open=high_open):
        raise ValueError(f"{name}: expected {expected}, got {value!r}.")
    return False


def in_range(
    value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Any:
    """Whether ``value`` lies in the interval: a bool, or a boolean array when traced."""
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return above & below


# --------------------------------------------------------------------------- dtypes and shapes


def as_array(name: str, x: Any, what: str) -> jax.Array:
    """``x`` as an array, or a ``DTypeError`` naming the function for ``None`` or a string
    (JAX would read a string as a dtype name)."""
    if x is None or isinstance(x, str | bytes):
        raise DTypeError(name, f"expected an array as {what}, got {type(x).__name__} {x!r:.40}.")
    return jnp.asarray(x)


def as_float(name: str, x: jax.typing.ArrayLike, what: str) -> jax.Array:
    """``x`` as an array of at least float32: integers and booleans become the default
    float dtype, and half precision (bfloat16, float16) becomes float32, so a loss is
    computed and reduced in float32 whatever the model's compute dtype."""
    x = as_array(name, x, what)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x.astype(jnp.result_type(x, float))
    return at_least_float32(x)


def at_least_float32(x: jax.Array) -> jax.Array:
    """``x`` unchanged if its dtype is float32 or wider, else cast to float32."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def floating_input(name: str, x: jax.typing.ArrayLike, what: str, hint: str) -> jax.Array:
    """``x`` as an array, refusing integers and booleans where only scores make sense.

    Integer "logits" are nearly always labels or predicted classes in the wrong place.
    """
    x = as_array(name, x, what)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise DTypeError(
            name,
            f"expected floating-point {what}, got dtype {x.dtype}. Hint: {hint} If they "
            "really are scores, cast them first, e.g. x.astype(jnp.float32).",
        )
    return at_least_float32(x)


def check_same_shape(
    name: str,
    reference: jax.Array,
    other: jax.Array,
    reference_what: str,
    other_what: str,
    cause: str = "",
) -> None:
    """Elementwise losses refuse broadcasting: ``[32, 1]`` against ``[32]`` gives ``[32, 32]``.

    ``cause`` is appended to the message: the likely mistake, when the caller knows one.
    """
    if reference.shape == other.shape:
        return
    if reference.size == other.size:
        hint = f"reshape them to match, e.g. {other_what}.reshape({reference_what}.shape)."
    else:
        hint = f"{other_what} need one value per element of {reference_what}."
    try:
        broadcast = np.broadcast_shapes(reference.shape, other.shape)
    except ValueError:
        broadcast = None
    if broadcast is not None:
        hint += f" Broadcasting is not applied: it would silently give shape {broadcast}."
    if not cause and reference.shape == other.shape + (1,):
        cause = (
            f"{reference_what} of shape {reference.shape} come from a last layer with one "
            f"output, e.g. Dense(1): use {reference_what}[..., 0]."
        )
    elif not cause and other.shape == reference.shape + (1,):
        cause = f"drop the trailing axis of the {other_what}: {other_what}[..., 0]."
    raise ShapeError(
        name,
        f"expected {other_what} of shape {reference.shape} like the {reference_what}, "
        f"got {other.shape}. Hint: {hint}" + (f" Likely cause: {cause}" if cause else ""),
    )


def check_has_class_axis(name: str, x: jax.Array, what: str) -> None:
    if x.ndim < 1:
        raise ShapeError(
            name,
            f"expected {what} of shape [..., num_classes] (at least 1-D), got {x.shape}.",
        )


# --------------------------------------------------------------------------- values


def _position(index: np.ndarray) -> str:
    return str(int(index[0])) if len(index) == 1 else str(tuple(int(i) for i in index))


def _value(v: Any) -> str:
    return str(int(v)) if np.issubdtype(np.asarray(v).dtype, np.integer) else f"{float(v):.4g}"


def describe_entries(bad: np.ndarray, shown: np.ndarray, what: str) -> str:
    """``"-1 at index 3, 7 at index 9 (2 of 32 labels)"``: the first offending entries."""
    where = np.argwhere(bad)
    parts = [f"{_value(shown[tuple(i)])} at index {_position(i)}" for i in where[:_SHOWN]]
    if len(where) > _SHOWN:
        parts.append("...")
    return f"{', '.join(parts)} ({len(where)} of {bad.size} {what})"


def check_entries(
    name: str,
    ok: jax.Array,
    shown: jax.typing.ArrayLike,
    expected: str,
    what: str,
    hint: Callable[[np.ndarray], str] = lambda bad_values: "",
) -> jax.Array | None:
    """Raise ``ValueError`` listing the entries of ``shown`` where ``ok`` is false.

    Only concrete arrays can be read; then ``None`` is returned once they pass. Under a
    trace ``ok`` is returned, for the caller to give NaN where it is false (``nan_unless``).

    Args:
      ok: Booleans, one per entry checked.
      shown: The values quoted in the message, of ``ok``'s shape.
      expected: What was expected, e.g. ``"labels in [0, 10)"``.
      what: What the entries are, plural, e.g. ``"labels"``.
      hint: Builds the hint from the offending values (a 1-D NumPy array).
    """
    if not is_concrete(ok):
        return ok
    ok = np.asarray(ok)
    if ok.all():
        return None
    bad, shown = ~ok, np.asarray(shown)
    text = hint(shown[bad])
    raise ValueError(
        f"{name}: expected {expected}, got {describe_entries(bad, shown, what)}."
        + (f" Hint: {text}" if text else "")
    )


def nan_unless(ok: jax.Array | None, values: jax.Array) -> jax.Array:
    """``values`` where ``ok`` (broadcast from the left-aligned batch axes), NaN elsewhere.

    ``None`` means the values were checked and all passed: nothing to do.
    """
    if ok is None:
        return values
    ok = jnp.reshape(ok, ok.shape + (1,) * (values.ndim - ok.ndim))
    return jnp.where(ok, values, jnp.asarray(jnp.nan, values.dtype))


def both(a: jax.Array | None, b: jax.Array | None) -> jax.Array | None:
    """Combine two results of ``check_entries`` (``None``: checked and passed)."""
    return b if a is None else a if b is None else a & b


def check_labels(
    name: str,
    labels: jax.Array,
    num_classes: int,
    what: str = "labels",
    padding_hint: str = (
        "if negative labels mark padding to ignore, compute per-example values on "
        "jnp.where(labels < 0, 0, labels) (reduction='none') and average them with the "
        "mask labels >= 0."
    ),
) -> jax.Array | None:
    """Class indices must lie in ``[0, num_classes)``; ``check_entries`` on them."""

    def hint(bad: np.ndarray) -> str:
        if bad.min() >= 0 and bad.max() == num_classes:
            return (
                f"labels run from 1 to {num_classes}? They are 0-based class indices: "
                "pass labels - 1."
            )
        if bad.min() < 0:
            return padding_hint
        return (
            f"the scores have {num_classes} classes on their last axis; does the model's "
            "last layer output one score per class?"
        )

    ok = (labels >= 0) & (labels < num_classes)
    expected = (
        f"{what} in [0, {num_classes}) (the logits have {num_classes} classes on their last axis)"
    )
    return check_entries(name, ok, labels, expected, what, hint)


def sum_tolerance(dtype: Any, n: int) -> float:
    """Slack for rounding in a sum of ``n`` terms of ``dtype`` near 1: at least 1e-3."""
    return max(1e-3, 4 * n * float(jnp.finfo(dtype).eps))


def log_tolerance(dtype: Any) -> float:
    """Slack above 0 for a log-probability rounded up (``log`` of ``1 + eps``)."""
    return 4 * float(jnp.finfo(dtype).eps)


def check_distributions(
    name: str, probabilities: jax.Array, what: str, negative_hint: str
) -> jax.Array | None:
    """Each row (last axis) must be non-negative and sum to 1, or to 0 (a masked example).

    ``check_entries`` on the entries, then on the row sums; under a trace, the booleans
    per row ``[...]`` for ``nan_unless``. NaN passes: it stays NaN, nothing is hidden.
    """

    def sum_hint(sums: np.ndarray) -> str:
        values = np.asarray(probabilities)
        if sums.max() > 1 and np.all((values == 0) | (values == 1)):
            return (
                "rows with several 1s are several labels per example (multi-label): use "
                "sigmoid_binary_cross_entropy, one binary decision per class."
            )
        return f"normalise them, e.g. {what} / {what}.sum(-1, keepdims=True)."

    entries = check_entries(
        name,
        ~(probabilities < 0),
        probabilities,
        f"{what} >= 0 (probabilities)",
        what,
        lambda bad: negative_hint,
    )
    sums = jnp.sum(probabilities, axis=-1)
    tol = sum_tolerance(probabilities.dtype, probabilities.shape[-1])
    rows = check_entries(
        name,
        ~((jnp.abs(sums - 1) > tol) & (sums != 0)),
        sums,
        f"{what} summing to 1 over the last axis (within {tol:.0e}; a row of zeros masks "
        "its example)",
        "row sums",
        sum_hint,
    )
    if entries is None:
        return rows
    entries = jnp.all(entries, axis=-1)
    return entries if rows is None else entries & rows
