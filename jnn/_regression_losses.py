r"""Regression losses: squared, absolute and Huber error per element, reduced.

Integer and boolean inputs are promoted to the default float dtype. The shapes must be
equal: these losses never broadcast (see ``jnn._losses``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jnn._losses import (
    as_array,
    as_float,
    check_option,
    check_reduction,
    check_same_shape,
    reduce,
)

__all__ = ["mean_squared_error", "mean_absolute_error", "huber"]


def _checked(name: str, predictions, targets, reduction: str) -> tuple[jax.Array, jax.Array]:
    check_reduction(name, reduction)
    raw_targets = as_array(name, targets, "targets")
    predictions = as_float(name, predictions, "predictions")
    targets = as_float(name, raw_targets, "targets")
    cause = ""
    if (
        predictions.ndim >= 1
        and targets.shape == predictions.shape[:-1]
        and jnp.issubdtype(raw_targets.dtype, jnp.integer)
    ):
        cause = (
            f"integer targets {targets.shape} against predictions {predictions.shape} look "
            "like class labels and per-class scores: use "
            "softmax_cross_entropy_with_integer_labels."
        )
    check_same_shape(name, predictions, targets, "predictions", "targets", cause)
    return predictions, targets


def mean_squared_error(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
    r"""Squared error per element, reduced.

    .. math:: \ell_i = (p_i - t_i)^2

    Args:
      predictions: Predictions of any shape ``[...]``.
      targets: Targets of the same shape as ``predictions``.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      ValueError: If ``reduction`` is not one of the three names (``TypeError`` if it
        is not a string).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import mean_squared_error
      >>> float(mean_squared_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0])))
      2.0
    """
    predictions, targets = _checked("mean_squared_error", predictions, targets, reduction)
    return reduce(optax.losses.squared_error(predictions, targets), reduction)


def mean_absolute_error(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
    r"""Absolute error per element, reduced.

    .. math:: \ell_i = |p_i - t_i|

    Args:
      predictions: Predictions of any shape ``[...]``.
      targets: Targets of the same shape as ``predictions``.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      ValueError: If ``reduction`` is not one of the three names (``TypeError`` if it
        is not a string).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import mean_absolute_error
      >>> float(mean_absolute_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))
      1.5
    """
    predictions, targets = _checked("mean_absolute_error", predictions, targets, reduction)
    return reduce(jnp.abs(predictions - targets), reduction)


def huber(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    delta: float = 1.0,
    reduction: str = "mean",
) -> jax.Array:
    r"""Huber loss per element: quadratic near zero, linear beyond ``delta``, reduced.

    The same convention as PyTorch's ``HuberLoss``; with ``delta=1`` it equals the smooth
    L1 loss.

    .. math::
      \ell_i = \begin{cases}
        \tfrac12 d_i^2 & |d_i| \le \delta \\
        \delta \, (|d_i| - \tfrac12 \delta) & \text{otherwise}
      \end{cases}
      \qquad d_i = p_i - t_i

    Args:
      predictions: Predictions of any shape ``[...]``.
      targets: Targets of the same shape as ``predictions``.
      delta: Positive threshold where the loss turns from quadratic to linear. A traced
        ``delta`` that is not positive gives NaN.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      ValueError: If ``reduction`` is unknown or ``delta`` is not positive.
      TypeError: If ``delta`` is not a number or ``reduction`` not a string.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import huber
      >>> huber(jnp.array([0.5, 3.0]), jnp.zeros(2), reduction="none").tolist()
      [0.125, 2.5]
    """
    name = "huber"
    traced = check_option(
        name, "delta", delta, 0, float("inf"), low_open=True, expected="a positive delta"
    )
    predictions, targets = _checked(name, predictions, targets, reduction)
    values = optax.losses.huber_loss(predictions, targets, delta=delta)
    if traced:
        values = jnp.where(jnp.asarray(delta) > 0, values, jnp.nan)  # NaN unless positive
    return reduce(values, reduction)
