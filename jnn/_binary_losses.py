r"""Binary cross-entropy, on probabilities and on logits: one independent decision per element.

Targets are hard (0/1) or soft labels in ``[0, 1]``. Values outside the range each loss
accepts raise when concrete and give NaN under ``jit`` (see ``jnn._losses``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn._losses import (
    as_array,
    as_float,
    both,
    check_entries,
    check_option,
    check_reduction,
    check_same_shape,
    floating_input,
    reduce,
)

__all__ = ["binary_cross_entropy", "sigmoid_binary_cross_entropy"]


def _shape_cause(scores: jax.Array, targets: jax.Array, what: str) -> str:
    if scores.ndim >= 1 and scores.shape[:-1] == targets.shape and scores.shape[-1] > 1:
        return (
            f"{scores.shape[-1]} {what} per example are scores of {scores.shape[-1]} classes: "
            "use softmax_cross_entropy_with_integer_labels for one class per example, or a "
            "last layer with one output for a binary decision."
        )
    return ""


def _check_targets(name: str, targets: jax.Array) -> jax.Array | None:
    """Targets in ``[0, 1]``: checked when concrete, else the booleans for ``nan_unless``."""

    def hint(bad: np.ndarray) -> str:
        if np.all(np.isin(bad, (-1,))):
            return "labels in {-1, 1} become {0, 1} with (targets + 1) / 2."
        if np.all(bad == np.round(bad)) and bad.min() >= 0:
            return (
                "class indices 0..K-1 of one class per example go to "
                "softmax_cross_entropy_with_integer_labels with K logits per example."
            )
        return "binary targets are probabilities of the positive class."

    ok = ~((targets < 0) | (targets > 1))  # NaN passes: it stays NaN, nothing hidden
    return check_entries(name, ok, targets, "targets in [0, 1]", "targets", hint)


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

    Probabilities and targets must lie in ``[0, 1]``. Concrete values outside raise
    (logits passed here would otherwise be clipped to ``[eps, 1 - eps]``, with a zero
    gradient); under ``jit`` such elements give NaN losses with no gradient, and a
    reduced loss is NaN (with a zero gradient).

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
      ValueError: If ``reduction`` is unknown, ``eps`` is outside ``[0, 0.5)``, or
        concrete probabilities or targets lie outside ``[0, 1]``.
      TypeError: If ``eps`` is not a number or ``reduction`` not a string.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import binary_cross_entropy
      >>> round(float(binary_cross_entropy(jnp.array([0.5, 0.5]), jnp.array([0, 1]))), 4)
      0.6931
    """
    name = "binary_cross_entropy"
    check_reduction(name, reduction)
    check_option(name, "eps", eps, 0, 0.5, high_open=True)
    probabilities = as_float(name, probabilities, "probabilities")
    targets = as_float(name, targets, "targets")
    check_same_shape(
        name,
        probabilities,
        targets,
        "probabilities",
        "targets",
        _shape_cause(probabilities, targets, "probabilities"),
    )

    def hint(bad: np.ndarray) -> str:
        return (
            "these look like logits: use sigmoid_binary_cross_entropy(logits, targets), "
            "which is exact and stable, or pass jax.nn.sigmoid(logits)."
        )

    ok = ~((probabilities < 0) | (probabilities > 1))
    ok = check_entries(name, ok, probabilities, "probabilities in [0, 1]", "probabilities", hint)
    target_ok = _check_targets(name, targets)
    p = jnp.clip(probabilities, eps, 1 - eps)
    values = -(targets * jnp.log(p) + (1 - targets) * jnp.log1p(-p))
    return reduce(values, reduction, both(ok, target_ok))


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
    Concrete targets outside ``[0, 1]`` raise; under ``jit`` those elements give NaN.

    .. math:: \ell_i = -\big(t_i \log \sigma(z_i) + (1 - t_i) \log \sigma(-z_i)\big)

    Args:
      logits: Logits of the positive class, floating point, any shape ``[...]``.
      targets: Targets in ``[0, 1]`` (hard or soft labels), same shape.
      reduction: ``"mean"`` (over all elements), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-element losses ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ (no broadcasting).
      DTypeError: If ``logits`` are integers or booleans (a ``TypeError``).
      ValueError: If ``reduction`` is unknown, or concrete targets lie outside ``[0, 1]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import sigmoid_binary_cross_entropy
      >>> round(float(sigmoid_binary_cross_entropy(jnp.zeros(2), jnp.array([0, 1]))), 4)
      0.6931
    """
    name = "sigmoid_binary_cross_entropy"
    check_reduction(name, reduction)
    logits = floating_input(
        name,
        logits,
        "logits",
        "integer logits are usually labels or predicted classes: check the argument order, "
        "sigmoid_binary_cross_entropy(logits, targets).",
    )
    targets = as_array(name, targets, "targets")
    check_same_shape(
        name, logits, targets, "logits", "targets", _shape_cause(logits, targets, "logits")
    )
    ok = _check_targets(name, targets)
    values = optax.losses.sigmoid_binary_cross_entropy(logits, targets)
    return reduce(values, reduction, ok)
