r"""Softmax cross-entropy: one class out of ``num_classes`` per example, on logits.

Targets are probability distributions over the last axis (``softmax_cross_entropy``) or
class indices (``softmax_cross_entropy_with_integer_labels``). Values outside what each
loss accepts raise when concrete and give NaN under ``jit`` (see ``jnn._losses``).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import optax

from jnn._errors import DTypeError, ShapeError
from jnn._losses import (
    as_array,
    as_float,
    both,
    check_distributions,
    check_has_class_axis,
    check_labels,
    check_option,
    check_reduction,
    floating_input,
    in_range,
    reduce,
)

__all__ = ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]

_LOGITS_HINT = (
    "integer logits are usually labels or one-hot targets: check the argument order, "
    "{name}(logits, {targets})."
)


def _smoothing(name: str, label_smoothing) -> bool:
    """Check ``label_smoothing``; whether it is traced (then NaN answers a bad value)."""
    return check_option(name, "label_smoothing", label_smoothing, 0, 1)


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

    Each row of targets must be a distribution: non-negative, summing to 1 (a row of
    zeros is accepted and, without smoothing, contributes 0, which masks padding).
    Concrete targets that are not raise; under ``jit`` those examples give NaN losses,
    as does a traced ``label_smoothing`` outside ``[0, 1]``.

    .. math:: \ell_b = -\sum_c t_{bc} \log \operatorname{softmax}(z_b)_c

    with :math:`0 \log 0 = 0`: a class masked out with a ``-inf`` logit and a zero target
    adds nothing (PyTorch's and optax's plain ``softmax_cross_entropy`` give NaN there).

    Args:
      logits: Unnormalized log-probabilities ``[..., num_classes]``, floating point.
      targets: Probabilities ``[..., num_classes]``, each row summing to 1.
      label_smoothing: Smoothing ``a`` in ``[0, 1]``.
      reduction: ``"mean"`` (over the batch axes ``[...]``), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-example losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If ``targets`` differs in shape from ``logits``, or ``logits`` is 0-D.
      DTypeError: If ``logits`` are integers or booleans (a ``TypeError``).
      ValueError: If ``reduction`` is unknown, ``label_smoothing`` is outside ``[0, 1]``,
        or concrete targets are not distributions.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import softmax_cross_entropy
      >>> logits = jnp.zeros((2, 4))
      >>> round(float(softmax_cross_entropy(logits, jnp.eye(4)[:2])), 4)  # log(4)
      1.3863
    """
    name = "softmax_cross_entropy"
    check_reduction(name, reduction)
    traced_smoothing = _smoothing(name, label_smoothing)
    logits = floating_input(
        name, logits, "logits", _LOGITS_HINT.format(name=name, targets="targets")
    )
    targets = as_float(name, targets, "targets")
    check_has_class_axis(name, logits, "logits")
    if targets.shape != logits.shape:
        if targets.shape == logits.shape[:-1]:
            hint = (
                "for integer class labels use softmax_cross_entropy_with_integer_labels, "
                f"or one-hot encode them with jax.nn.one_hot(labels, {logits.shape[-1]})."
            )
        elif targets.shape == logits.shape[:-1] + (1,):
            hint = (
                "targets with a trailing axis of 1 are class labels: use "
                "softmax_cross_entropy_with_integer_labels(logits, labels[..., 0])."
            )
        else:
            hint = "targets hold one probability per class, like the logits."
        raise ShapeError(
            name,
            f"expected targets of shape {logits.shape} like the logits, got {targets.shape}. "
            f"Hint: {hint}",
        )
    ok = check_distributions(
        name,
        targets,
        "targets",
        "targets are probabilities: turn scores into them with jax.nn.softmax, or "
        f"log-probabilities with jnp.exp; and check the argument order, {name}(logits, "
        "targets).",
    )
    if not (isinstance(label_smoothing, numbers.Real) and label_smoothing == 0):
        targets = optax.losses.smooth_labels(targets, label_smoothing)
    if traced_smoothing:
        ok = both(ok, in_range(label_smoothing, 0, 1) & jnp.ones(targets.shape[:-1], bool))
    # The safe form takes 0 * log 0 as 0: a class masked out with a -inf logit and a zero
    # target adds nothing, where the plain form (and PyTorch's) gives NaN.
    return reduce(optax.losses.safe_softmax_cross_entropy(logits, targets), reduction, ok)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    r"""Cross-entropy between ``softmax(logits)`` and integer class labels, reduced.

    Gives the same values as ``softmax_cross_entropy`` with one-hot targets, without
    building them when ``label_smoothing`` is 0.

    Labels must lie in ``[0, num_classes)``. Concrete labels outside raise a
    ``ValueError`` naming them and their positions. Under ``jit`` (or ``grad``, ``vmap``)
    they cannot be read without a round trip to the host, so those examples' losses are
    NaN with no gradient, and a reduced loss is NaN (with a zero gradient), never a
    finite wrong value (an index of -1 would otherwise read the last class). A traced
    ``label_smoothing`` outside ``[0, 1]`` gives NaN too.

    .. math:: \ell_b = -\log \operatorname{softmax}(z_b)_{y_b}

    Args:
      logits: Unnormalized log-probabilities ``[..., num_classes]``, floating point.
      labels: Integer class indices ``[...]`` in ``[0, num_classes)``, i.e. of shape
        ``logits.shape[:-1]``.
      label_smoothing: Smoothing ``a`` in ``[0, 1]``; the target of each example becomes
        ``(1 - a) * one_hot(label) + a / num_classes``, as in PyTorch.
      reduction: ``"mean"`` (over the batch axes ``[...]``), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-example losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If ``labels`` is not of shape ``logits.shape[:-1]``.
      DTypeError: If ``labels`` is not of an integer dtype, or ``logits`` is (a
        ``TypeError``).
      ValueError: If ``reduction`` is unknown, ``label_smoothing`` is outside ``[0, 1]``,
        or concrete labels lie outside ``[0, num_classes)``.

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
    check_reduction(name, reduction)
    traced_smoothing = _smoothing(name, label_smoothing)
    logits = floating_input(
        name, logits, "logits", _LOGITS_HINT.format(name=name, targets="labels")
    )
    labels = as_array(name, labels, "labels")
    check_has_class_axis(name, logits, "logits")
    if labels.shape != logits.shape[:-1]:
        if labels.shape == logits.shape:
            hint = (
                "for one-hot or soft targets use softmax_cross_entropy. If the logits hold "
                "one score per example (a binary decision), use sigmoid_binary_cross_entropy."
            )
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
    ok = check_labels(name, labels, logits.shape[-1])
    if isinstance(label_smoothing, numbers.Real) and label_smoothing == 0:
        values = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        targets = optax.losses.smooth_labels(targets, label_smoothing)
        values = optax.losses.softmax_cross_entropy(logits, targets)
    if traced_smoothing:
        ok = both(ok, in_range(label_smoothing, 0, 1) & jnp.ones(labels.shape, bool))
    return reduce(values, reduction, ok)
