r"""Loss functions with one interface: ``loss(predictions, targets, *, reduction="mean")``.

Each loss computes one value per example (per element for regression losses, per
distribution over the last axis for classification losses) and then reduces them:
``"mean"`` and ``"sum"`` return a scalar, ``"none"`` returns the per-example values.
Shapes are checked in Python before anything runs, so a mismatch that broadcasting
would hide (targets ``[32, 1]`` against predictions ``[32]``) fails with a clear message.
The arithmetic builds on ``optax.losses``.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn._errors import DTypeError, ShapeError

__all__ = [
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
    "binary_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "kl_divergence",
]

_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- shared checks


def _check_reduction(name: str, reduction: Any) -> None:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: expected reduction 'mean', 'sum' or 'none', got {reduction!r}.")


def _reduce(values: jax.Array, reduction: str) -> jax.Array:
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    return values


def _as_float(x: jax.typing.ArrayLike) -> jax.Array:
    """``x`` as an array, promoting integers and booleans to the default float dtype."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(x, float))


def _check_same_shape(
    name: str, reference: jax.Array, other: jax.Array, reference_what: str, other_what: str
) -> None:
    """Elementwise losses refuse broadcasting: ``[32, 1]`` against ``[32]`` gives ``[32, 32]``."""
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
    raise ShapeError(
        name,
        f"expected {other_what} of shape {reference.shape} like the {reference_what}, "
        f"got {other.shape}. Hint: {hint}",
    )


def _check_has_class_axis(name: str, x: jax.Array, what: str) -> None:
    if x.ndim < 1:
        raise ShapeError(
            name,
            f"expected {what} of shape [..., num_classes] (at least 1-D), got {x.shape}.",
        )


def _check_in_range(name: str, what: str, value: Any, low: float, high: float) -> None:
    """Range-check a Python or NumPy scalar option; traced values are taken on trust."""
    if isinstance(value, numbers.Real) and not low <= value <= high:
        raise ValueError(f"{name}: expected {what} in [{low}, {high}], got {value!r}.")


# --------------------------------------------------------------------------- regression


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
      ValueError: If ``reduction`` is not one of the three names.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import mean_squared_error
      >>> float(mean_squared_error(jnp.array([1.0, 2.0]), jnp.array([1.0, 4.0])))
      2.0
    """
    name = "mean_squared_error"
    _check_reduction(name, reduction)
    predictions, targets = _as_float(predictions), _as_float(targets)
    _check_same_shape(name, predictions, targets, "predictions", "targets")
    return _reduce(optax.losses.squared_error(predictions, targets), reduction)


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
      ValueError: If ``reduction`` is not one of the three names.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import mean_absolute_error
      >>> float(mean_absolute_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))
      1.5
    """
    name = "mean_absolute_error"
    _check_reduction(name, reduction)
    predictions, targets = _as_float(predictions), _as_float(targets)
    _check_same_shape(name, predictions, targets, "predictions", "targets")
    return _reduce(jnp.abs(predictions - targets), reduction)


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
      delta: Positive threshold where the loss turns from quadratic to linear.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      ValueError: If ``reduction`` is unknown or ``delta`` is not positive.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import huber
      >>> huber(jnp.array([0.5, 3.0]), jnp.zeros(2), reduction="none").tolist()
      [0.125, 2.5]
    """
    name = "huber"
    _check_reduction(name, reduction)
    if isinstance(delta, numbers.Real) and not delta > 0:
        raise ValueError(f"{name}: expected a positive delta, got {delta!r}.")
    predictions, targets = _as_float(predictions), _as_float(targets)
    _check_same_shape(name, predictions, targets, "predictions", "targets")
    return _reduce(optax.losses.huber_loss(predictions, targets, delta=delta), reduction)


# --------------------------------------------------------------------------- binary


def binary_cross_entropy(
    probabilities: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    eps: float = 1e-7,
    reduction: str = "mean",
) -> jax.Array:
    r"""Binary cross-entropy per element, on probabilities, reduced.

    Probabilities are clipped to ``[eps, 1 - eps]`` so that a confident wrong answer gives
    a large finite loss instead of ``inf``. Prefer ``sigmoid_binary_cross_entropy`` on
    logits: it is exact and stable without clipping.

    .. math:: \ell_i = -\big(t_i \log p_i + (1 - t_i) \log(1 - p_i)\big)

    Args:
      probabilities: Predicted probabilities of the positive class, any shape ``[...]``.
      targets: Targets in ``[0, 1]`` (hard or soft labels), same shape.
      eps: Clipping margin, in ``[0, 0.5)``.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      ValueError: If ``reduction`` is unknown or ``eps`` is outside ``[0, 0.5)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import binary_cross_entropy
      >>> round(float(binary_cross_entropy(jnp.array([0.5, 0.5]), jnp.array([0, 1]))), 4)
      0.6931
    """
    name = "binary_cross_entropy"
    _check_reduction(name, reduction)
    if isinstance(eps, numbers.Real) and not 0 <= eps < 0.5:
        raise ValueError(f"{name}: expected eps in [0, 0.5), got {eps!r}.")
    probabilities, targets = _as_float(probabilities), _as_float(targets)
    _check_same_shape(name, probabilities, targets, "probabilities", "targets")
    p = jnp.clip(probabilities, eps, 1 - eps)
    values = -(targets * jnp.log(p) + (1 - targets) * jnp.log1p(-p))
    return _reduce(values, reduction)


def sigmoid_binary_cross_entropy(
    logits: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
    r"""Binary cross-entropy per element, on logits, reduced.

    Equals ``binary_cross_entropy(sigmoid(logits), targets)`` but is computed in log
    space, so it stays exact for large ``|logits|``. Each element is an independent
    binary decision, which also covers multi-label classification ``[..., num_labels]``.

    .. math:: \ell_i = -\big(t_i \log \sigma(z_i) + (1 - t_i) \log \sigma(-z_i)\big)

    Args:
      logits: Logits of the positive class, any shape ``[...]``.
      targets: Targets in ``[0, 1]`` (hard or soft labels), same shape.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      ValueError: If ``reduction`` is not one of the three names.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import sigmoid_binary_cross_entropy
      >>> round(float(sigmoid_binary_cross_entropy(jnp.zeros(2), jnp.array([0, 1]))), 4)
      0.6931
    """
    name = "sigmoid_binary_cross_entropy"
    _check_reduction(name, reduction)
    logits = _as_float(logits)
    targets = jnp.asarray(targets)
    _check_same_shape(name, logits, targets, "logits", "targets")
    return _reduce(optax.losses.sigmoid_binary_cross_entropy(logits, targets), reduction)


# --------------------------------------------------------------------------- categorical


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    r"""Cross-entropy between ``softmax(logits)`` and target distributions, reduced.

    Targets are one-hot or soft labels over the last axis. With label smoothing ``a``
    the targets become ``(1 - a) * targets + a / num_classes``, as in PyTorch's
    ``CrossEntropyLoss(label_smoothing=a)``.

    .. math:: \ell_b = -\sum_c t_{bc} \log \operatorname{softmax}(z_b)_c

    Args:
      logits: Unnormalized log-probabilities ``[..., num_classes]``.
      targets: Probabilities ``[..., num_classes]``, each row summing to 1.
      label_smoothing: Smoothing ``a`` in ``[0, 1]``.
      reduction: ``"mean"`` (over the batch axes ``[...]``), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-example losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If ``targets`` differs in shape from ``logits``, or ``logits`` is 0-D.
      ValueError: If ``reduction`` is unknown or ``label_smoothing`` is outside ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import softmax_cross_entropy
      >>> logits = jnp.zeros((2, 4))
      >>> round(float(softmax_cross_entropy(logits, jnp.eye(4)[:2])), 4)  # log(4)
      1.3863
    """
    name = "softmax_cross_entropy"
    _check_reduction(name, reduction)
    _check_in_range(name, "label_smoothing", label_smoothing, 0, 1)
    logits, targets = _as_float(logits), _as_float(targets)
    _check_has_class_axis(name, logits, "logits")
    if targets.shape != logits.shape:
        if targets.shape == logits.shape[:-1]:
            hint = (
                "for integer class labels use softmax_cross_entropy_with_integer_labels, "
                f"or one-hot encode them with jax.nn.one_hot(labels, {logits.shape[-1]})."
            )
        else:
            hint = "targets hold one probability per class, like the logits."
        raise ShapeError(
            name,
            f"expected targets of shape {logits.shape} like the logits, got {targets.shape}. "
            f"Hint: {hint}",
        )
    if not (isinstance(label_smoothing, numbers.Real) and label_smoothing == 0):
        targets = optax.losses.smooth_labels(targets, label_smoothing)
    return _reduce(optax.losses.softmax_cross_entropy(logits, targets), reduction)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    r"""Cross-entropy between ``softmax(logits)`` and integer class labels, reduced.

    Gives the same values as ``softmax_cross_entropy`` with one-hot targets, without
    building them when ``label_smoothing`` is 0. Labels outside ``[0, num_classes)``
    cannot be checked under ``jit`` and give meaningless values.

    .. math:: \ell_b = -\log \operatorname{softmax}(z_b)_{y_b}

    Args:
      logits: Unnormalized log-probabilities ``[..., num_classes]``.
      labels: Integer class indices ``[...]``, i.e. of shape ``logits.shape[:-1]``.
      label_smoothing: Smoothing ``a`` in ``[0, 1]``; the target of each example becomes
        ``(1 - a) * one_hot(label) + a / num_classes``, as in PyTorch.
      reduction: ``"mean"`` (over the batch axes ``[...]``), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-example losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If ``labels`` is not of shape ``logits.shape[:-1]``.
      DTypeError: If ``labels`` is not of an integer dtype (a ``TypeError``).
      ValueError: If ``reduction`` is unknown or ``label_smoothing`` is outside ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import softmax_cross_entropy_with_integer_labels
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
      >>> losses = softmax_cross_entropy_with_integer_labels(
      ...     logits, jnp.array([0, 2]), reduction="none")
      >>> [round(v, 4) for v in losses.tolist()]
      [0.2395, 1.0986]
    """
    name = "softmax_cross_entropy_with_integer_labels"
    _check_reduction(name, reduction)
    _check_in_range(name, "label_smoothing", label_smoothing, 0, 1)
    logits, labels = _as_float(logits), jnp.asarray(labels)
    _check_has_class_axis(name, logits, "logits")
    if labels.shape != logits.shape[:-1]:
        if labels.shape == logits.shape:
            hint = "for one-hot or soft targets use softmax_cross_entropy."
        elif labels.shape == logits.shape[:-1] + (1,):
            hint = "drop the trailing axis, e.g. labels.squeeze(-1)."
        else:
            hint = "labels hold one class index per example."
        raise ShapeError(
            name,
            f"expected labels of shape {logits.shape[:-1]} (the logits' shape without the "
            f"class axis), got {labels.shape}. Hint: {hint}",
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise DTypeError(
            name,
            f"expected integer labels, got dtype {labels.dtype}. "
            "Hint: cast class indices with labels.astype(jnp.int32); for one-hot or soft "
            "targets use softmax_cross_entropy.",
        )
    if isinstance(label_smoothing, numbers.Real) and label_smoothing == 0:
        values = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        targets = optax.losses.smooth_labels(targets, label_smoothing)
        values = optax.losses.softmax_cross_entropy(logits, targets)
    return _reduce(values, reduction)


def kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    reduction: str = "mean",
) -> jax.Array:
    r"""Kullback-Leibler divergence ``KL(targets || predictions)`` per distribution, reduced.

    The first argument is in log space and the second is not, the convention of PyTorch's
    ``KLDivLoss``: ``kl_divergence(log_p, t, reduction="none")`` equals
    ``KLDivLoss(reduction="none")(log_p, t).sum(-1)``. Terms where a target is 0
    contribute 0. For ``"mean"`` the average is over distributions, not over elements, so
    it matches PyTorch's ``reduction="batchmean"`` on 2-D inputs rather than ``"mean"``.

    .. math:: \ell_b = \sum_c t_{bc} \, (\log t_{bc} - \log p_{bc})

    Args:
      log_predictions: Log-probabilities ``[..., num_classes]``, e.g. from
        ``jax.nn.log_softmax``.
      targets: Probabilities ``[..., num_classes]``, same shape.
      reduction: ``"mean"`` (over the batch axes ``[...]``), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-distribution divergences ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ, or the inputs are 0-D.
      ValueError: If ``reduction`` is not one of the three names.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import kl_divergence
      >>> log_p = jnp.log(jnp.array([0.5, 0.5]))
      >>> round(float(kl_divergence(log_p, jnp.array([1.0, 0.0]))), 4)  # log(2)
      0.6931
    """
    name = "kl_divergence"
    _check_reduction(name, reduction)
    log_predictions, targets = _as_float(log_predictions), _as_float(targets)
    _check_has_class_axis(name, log_predictions, "log_predictions")
    _check_same_shape(name, log_predictions, targets, "log_predictions", "targets")
    return _reduce(optax.losses.kl_divergence(log_predictions, targets), reduction)
