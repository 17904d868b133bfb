"""Classification metrics and ``Mean``, a running average that can be carried through ``jit``.

The metrics take logits (or integer predictions) first and integer labels second, like
the losses, so they plug into ``make_train_step(..., metrics={"accuracy": accuracy})``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jnn._errors import DTypeError, ShapeError
from jnn._losses import as_array, both, check_entries, check_labels, reduce

__all__ = ["accuracy", "top_k_accuracy", "confusion_matrix", "Mean"]


def _check_integer(name: str, x: jax.Array, what: str, hint: str) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise DTypeError(name, f"expected integer {what}, got dtype {x.dtype}. Hint: {hint}")


def _with_class_axis(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join([*map(str, shape), "num_classes"]) + ")"


_PADDING_HINT = (
    "drop padded examples first, or average the hits (predicted == labels) with "
    "jnn.Mean.empty().update(hits, weights=labels >= 0)."
)


def _predicted_classes(
    name: str, predictions: jax.Array, labels: jax.Array
) -> tuple[jax.Array, int | None]:
    """Class indices ``[...]`` from logits ``[..., num_classes]`` or from indices ``[...]``,
    and the number of classes when logits tell it."""
    _check_integer(
        name,
        labels,
        "labels",
        "labels are class indices; for one-hot labels pass labels.argmax(-1).",
    )
    if predictions.ndim == labels.ndim + 1 and predictions.shape[:-1] == labels.shape:
        return jnp.argmax(predictions, axis=-1), predictions.shape[-1]
    if predictions.shape == labels.shape:
        one_hot = (
            "if the labels are one-hot [..., num_classes], pass labels.argmax(-1); "
            if labels.ndim >= 2
            else ""
        )
        _check_integer(
            name,
            predictions,
            "predictions when they have the labels' shape",
            f"{one_hot}pass logits [..., num_classes], or class indices; for binary "
            "probabilities pass (probabilities > 0.5).astype(jnp.int32).",
        )
        return predictions, None
    raise ShapeError(
        name,
        f"expected logits of shape {_with_class_axis(labels.shape)} or class indices of "
        f"shape {labels.shape} for labels of shape {labels.shape}, got {predictions.shape}.",
    )


def _check_classes(
    name: str, labels: jax.Array, predicted: jax.Array, num_classes: int | None
) -> jax.Array | None:
    """Labels in ``[0, num_classes)`` (or at least non-negative, with class indices given
    for predictions): ``check_entries``, so the booleans per example under a trace."""
    if num_classes is not None:
        return check_labels(name, labels, num_classes, padding_hint=_PADDING_HINT)
    ok = check_entries(
        name,
        labels >= 0,
        labels,
        "labels >= 0 (class indices)",
        "labels",
        lambda bad: _PADDING_HINT,
    )
    predicted_ok = check_entries(
        name, predicted >= 0, predicted, "predictions >= 0 (class indices)", "predictions"
    )
    return both(ok, predicted_ok)


def accuracy(
    logits_or_predictions: jax.typing.ArrayLike, labels: jax.typing.ArrayLike
) -> jax.Array:
    """Fraction of examples whose predicted class equals the label.

    The first argument is either logits (or probabilities) ``[..., num_classes]``, whose
    argmax over the last axis is the prediction, or predicted class indices ``[...]``.
    Among tied logits the lowest class index is predicted.

    Labels must lie in ``[0, num_classes)`` with logits (be non-negative with class
    indices). Concrete labels outside raise, naming them; under ``jit`` the result is NaN
    instead, never an accuracy that counts them as plain misses.

    Args:
      logits_or_predictions: Logits ``[..., num_classes]`` or integer predictions ``[...]``.
      labels: Integer class indices ``[...]``.

    Returns:
      A float32 scalar in ``[0, 1]``, the mean over all examples.

    Raises:
      ShapeError: If the shapes match neither form.
      DTypeError: If ``labels`` (or predictions of the labels' shape) are not integers.
      ValueError: If concrete labels (or predicted indices) are out of range.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import accuracy
      >>> logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
      >>> float(accuracy(logits, jnp.array([0, 1, 1])))
      0.6666666865348816
    """
    name = "accuracy"
    predictions = as_array(name, logits_or_predictions, "predictions")
    labels = as_array(name, labels, "labels")
    predicted, num_classes = _predicted_classes(name, predictions, labels)
    ok = _check_classes(name, labels, predicted, num_classes)
    return reduce((predicted == labels).astype(jnp.float32), "mean", ok)


def top_k_accuracy(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, k: int = 5
) -> jax.Array:
    """Fraction of examples whose label is among the ``k`` largest logits.

    Ties are broken towards the lower class index, as ``jax.lax.top_k`` does. Concrete
    labels outside ``[0, num_classes)`` raise; under ``jit`` they make the result NaN.

    Args:
      logits: Logits or probabilities ``[..., num_classes]``.
      labels: Integer class indices ``[...]``, i.e. of shape ``logits.shape[:-1]``.
      k: How many of the top classes count as a hit, in ``[1, num_classes]``.

    Returns:
      A float32 scalar in ``[0, 1]``.

    Raises:
      ShapeError: If ``labels`` is not of shape ``logits.shape[:-1]``.
      DTypeError: If ``labels`` is not of an integer dtype.
      ValueError: If ``k`` is not in ``[1, num_classes]`` (``TypeError`` if not an int),
        or concrete labels lie outside ``[0, num_classes)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import top_k_accuracy
      >>> logits = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
      >>> float(top_k_accuracy(logits, jnp.array([1, 0]), k=2))
      0.5
    """
    name = "top_k_accuracy"
    logits, labels = as_array(name, logits, "logits"), as_array(name, labels, "labels")
    if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
        hint = (
            " Hint: top-k needs a score for every class, not predicted classes."
            if logits.shape == labels.shape
            else ""
        )
        raise ShapeError(
            name,
            f"expected logits of shape {_with_class_axis(labels.shape)} for labels of shape "
            f"{labels.shape}, got {logits.shape}.{hint}",
        )
    _check_integer(name, labels, "labels", "labels are class indices, e.g. labels.argmax(-1).")
    num_classes = logits.shape[-1]
    expected = f"{name}: expected k to be an int in [1, {num_classes}] (the number of classes)"
    if not isinstance(k, int | np.integer) or isinstance(k, bool | np.bool_):
        raise TypeError(f"{expected}, got {k!r} ({type(k).__name__}).")
    if not 1 <= k <= num_classes:
        hint = (
            f" Hint: the logits have {num_classes} classes on their last axis, so at most "
            f"k={num_classes} (which always hits)."
            if k > num_classes
            else ""
        )
        raise ValueError(f"{expected}, got {k!r}.{hint}")
    ok = check_labels(name, labels, num_classes, padding_hint=_PADDING_HINT)
    _, top = jax.lax.top_k(logits, int(k))
    hits = jnp.any(top == labels[..., None], axis=-1)
    return reduce(hits.astype(jnp.float32), "mean", ok)


def confusion_matrix(
    predictions_or_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    num_classes: int,
) -> jax.Array:
    """Count of examples for each (true class, predicted class) pair.

    Entry ``[i, j]`` counts examples with label ``i`` predicted as class ``j``: rows are
    true labels and columns predictions, the layout of scikit-learn's
    ``confusion_matrix``. The diagonal holds the correct predictions. Pairs with a label
    or prediction outside ``[0, num_classes)`` are not counted (so a label of -1 can mark
    padding), by design; logits must have ``num_classes`` classes. Works under ``jit`` with
    ``num_classes`` static, e.g. ``jax.jit(confusion_matrix, static_argnames="num_classes")``.

    Args:
      predictions_or_logits: Integer predictions ``[...]`` or logits
        ``[..., num_classes]`` (argmax over the last axis).
      labels: Integer class indices ``[...]``.
      num_classes: Number of classes, a positive Python int.

    Returns:
      An int32 matrix ``[num_classes, num_classes]``.

    Raises:
      ShapeError: If the shapes match neither form, or logits do not have
        ``num_classes`` classes.
      DTypeError: If ``labels`` (or predictions of the labels' shape) are not integers.
      ValueError: If ``num_classes`` is not positive (``TypeError`` if not an int).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import confusion_matrix
      >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), num_classes=2).tolist()
      [[1, 1], [0, 1]]
    """
    name = "confusion_matrix"
    if not isinstance(num_classes, int | np.integer) or isinstance(num_classes, bool | np.bool_):
        raise TypeError(
            f"{name}: expected num_classes to be a positive int, got {num_classes!r} "
            f"({type(num_classes).__name__})."
        )
    if num_classes < 1:
        raise ValueError(f"{name}: expected num_classes to be a positive int, got {num_classes!r}.")
    predictions = as_array(name, predictions_or_logits, "predictions")
    labels = as_array(name, labels, "labels")
    predicted, classes = _predicted_classes(name, predictions, labels)
    if classes is not None and classes != num_classes:
        raise ShapeError(
            name,
            f"expected logits with num_classes={num_classes} classes on the last axis, got "
            f"shape {predictions.shape}. Hint: pass num_classes={classes}, or the matrix would "
            "silently drop the classes beyond it.",
        )
    predicted = predicted.ravel()
    labels = labels.ravel()
    valid = (labels >= 0) & (labels < num_classes) & (predicted >= 0) & (predicted < num_classes)
    # Invalid pairs still scatter, but add 0, so negative indices wrapping around is harmless.
    matrix = jnp.zeros((num_classes, num_classes), jnp.int32)
    return matrix.at[labels, predicted].add(valid.astype(jnp.int32), mode="drop")


class Mean(NamedTuple):
    """A running (weighted) mean, as an immutable pytree that ``jit`` and ``scan`` carry.

    ``update`` returns a new ``Mean`` and never mutates, so the accumulator can be the
    carry of ``jax.lax.scan`` or an argument and result of a jitted step.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import Mean
      >>> def step(mean, batch):
      ...     return mean.update(batch), None
      >>> batches = jnp.arange(6.0).reshape(3, 2)
      >>> mean, _ = jax.lax.scan(step, Mean.empty(), batches)
      >>> float(mean.compute())
      2.5
    """

    total: jax.Array  # float32 [], the weighted sum of the values seen
    count: jax.Array  # float32 [], the sum of their weights (their number when unweighted)

    @classmethod
    def empty(cls) -> Mean:
        """A mean of nothing yet: ``total`` and ``count`` are 0."""
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))

    def update(self, values: jax.typing.ArrayLike, weights: Any = None) -> Mean:
        """Add every element of ``values`` (any shape), optionally weighted.

        Args:
          values: Values of any shape ``[...]``; all elements count.
          weights: Optional weights broadcastable to ``values.shape``, e.g. ``[batch]``
            for ``[batch]`` values, or a mask of 0 and 1 to skip padded examples.

        Returns:
          A new ``Mean`` with ``total + sum(weights * values)`` and
          ``count + sum(weights)``.

        Raises:
          ShapeError: If ``weights`` does not broadcast to ``values.shape``.
        """
        values = jnp.asarray(values, jnp.float32)
        if weights is None:
            return Mean(self.total + jnp.sum(values), self.count + jnp.float32(values.size))
        weights = jnp.asarray(weights, jnp.float32)
        try:
            broadcast = np.broadcast_shapes(weights.shape, values.shape)
        except ValueError:
            broadcast = None
        if broadcast != values.shape:
            raise ShapeError(
                "Mean.update",
                f"expected weights broadcastable to the values' shape {values.shape}, "
                f"got {weights.shape}. Hint: shapes align from the right, so per-example "
                "weights [batch] for values [batch, ...] need trailing axes, e.g. "
                "weights[:, None].",
            )
        weights = jnp.broadcast_to(weights, values.shape)
        return Mean(self.total + jnp.sum(weights * values), self.count + jnp.sum(weights))

    def merge(self, other: Mean) -> Mean:
        """The mean of everything seen by ``self`` and ``other`` together."""
        return Mean(self.total + other.total, self.count + other.count)

    def compute(self) -> jax.Array:
        """``total / count`` as a float32 scalar; NaN when nothing was added (count 0)."""
        return jnp.where(self.count == 0, jnp.nan, self.total / self.count)
