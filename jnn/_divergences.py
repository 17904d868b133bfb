r"""Divergences between distributions over the last axis: Kullback-Leibler.

Values outside what the divergence accepts (a positive log-probability, a negative
probability) raise when concrete and give NaN under ``jit`` (see ``jnn._losses``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn._losses import (
    as_float,
    both,
    check_distributions,
    check_entries,
    check_has_class_axis,
    check_reduction,
    check_same_shape,
    floating_input,
    log_tolerance,
    reduce,
)

__all__ = ["kl_divergence"]


def _check_log_probabilities(
    name: str, log_values: jax.Array, what: str, fix: str, role: str = ""
) -> jax.Array | None:
    """Log-probabilities are at most 0 (plus rounding); the booleans per row under a trace.

    ``fix`` completes the hint for values in ``(0, 1]``, which look like probabilities.
    """

    def hint(bad: np.ndarray) -> str:
        if np.all(bad <= 1):
            return f"these look like probabilities: {fix}"
        return "these look like scores (logits): pass jax.nn.log_softmax(logits)."

    tol = log_tolerance(log_values.dtype)
    ok = check_entries(
        name,
        ~(log_values > tol),
        log_values,
        f"log-probabilities (<= 0) as {what}{role}",
        what,
        hint,
    )
    return None if ok is None else jnp.all(ok, axis=-1)


def kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    log_targets: bool = False,
    reduction: str = "mean",
) -> jax.Array:
    r"""Kullback-Leibler divergence ``KL(targets || predictions)`` per distribution, reduced.

    The predictions are in log space; the targets are probabilities by default, the
    convention of PyTorch's ``KLDivLoss``: ``kl_divergence(log_p, t, reduction="none")``
    equals ``KLDivLoss(reduction="none")(log_p, t).sum(-1)``. With ``log_targets=True``
    the targets are log-probabilities too, as in ``KLDivLoss(log_target=True)``; that is
    exact where target probabilities underflow (distillation from a ``log_softmax``).
    Terms where a target probability is 0 (a log-target of ``-inf``) contribute 0, also
    where the prediction is 0 (a ``-inf`` log-prediction; PyTorch gives NaN there). For
    ``"mean"`` the average is over distributions, not over elements, so it matches
    PyTorch's ``reduction="batchmean"`` on 2-D inputs rather than ``"mean"``.

    Mixing up the two spaces gives a wrong, often negative, divergence, so each input is
    checked: log-probabilities must be ``<= 0``; probability targets must be
    non-negative with rows summing to 1 (a row of zeros contributes 0). Concrete inputs
    that fail raise with the fix; under ``jit`` those distributions give NaN.

    .. math:: \ell_b = \sum_c t_{bc} \, (\log t_{bc} - \log p_{bc})

    Args:
      log_predictions: Log-probabilities ``[..., num_classes]``, e.g. from
        ``jax.nn.log_softmax``.
      targets: Probabilities ``[..., num_classes]``, same shape; log-probabilities when
        ``log_targets`` is true.
      log_targets: Whether ``targets`` are log-probabilities.
      reduction: ``"mean"`` (over the batch axes ``[...]``), ``"sum"`` or ``"none"``.

    Returns:
      A scalar, or the per-distribution divergences ``[...]`` when ``reduction="none"``.

    Raises:
      ShapeError: If the two shapes differ, or the inputs are 0-D.
      DTypeError: If ``log_predictions`` are integers or booleans (a ``TypeError``).
      TypeError: If ``log_targets`` is not a bool.
      ValueError: If ``reduction`` is unknown, or concrete inputs are in the wrong space
        (a positive log-probability, a negative probability, a row not summing to 1).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import kl_divergence
      >>> log_p = jnp.log(jnp.array([0.5, 0.5]))
      >>> round(float(kl_divergence(log_p, jnp.array([1.0, 0.0]))), 4)  # log(2)
      0.6931
      >>> round(float(kl_divergence(log_p, jnp.log(jnp.array([1.0, 0.0])), log_targets=True)), 4)
      0.6931
    """
    name = "kl_divergence"
    check_reduction(name, reduction)
    if not isinstance(log_targets, bool | np.bool_):
        raise TypeError(
            f"{name}: expected log_targets to be a bool, got {log_targets!r} "
            f"({type(log_targets).__name__})."
        )
    log_predictions = floating_input(
        name,
        log_predictions,
        "log_predictions",
        f"pass log-probabilities, e.g. jax.nn.log_softmax(logits); check the argument order, "
        f"{name}(log_predictions, targets).",
    )
    targets = as_float(name, targets, "targets")
    check_has_class_axis(name, log_predictions, "log_predictions")
    check_same_shape(name, log_predictions, targets, "log_predictions", "targets")
    ok = _check_log_probabilities(
        name,
        log_predictions,
        "log_predictions",
        "pass jnp.log(predictions).",
    )
    if not log_targets:
        target_ok = check_distributions(
            name,
            targets,
            "targets",
            "negative targets look like log-probabilities: pass log_targets=True.",
        )
        # A zero target adds 0 whatever its prediction: 0 * log 0 counts as 0 (optax and
        # PyTorch give NaN for a prediction of 0, a -inf log-probability), and its gradient
        # stays 0.
        safe = jnp.where(targets > 0, log_predictions, 0)
        values = optax.losses.kl_divergence(safe, targets)
        return reduce(values, reduction, both(ok, target_ok))
    target_ok = _check_log_probabilities(
        name,
        targets,
        "targets",
        "pass log_targets=False, or jnp.log(targets).",
        " (log_targets=True)",
    )
    # A log-target of -inf is a probability of 0 and contributes 0 (PyTorch gives NaN);
    # the safe log keeps its gradient finite.
    present = targets != -jnp.inf
    safe_log = jnp.where(present, targets, 0)
    probabilities = jnp.exp(targets)
    target_ok = both(
        target_ok, check_distributions(name, probabilities, "exp(targets)", "unreachable")
    )
    terms = jnp.where(present, probabilities * (safe_log - log_predictions), 0)
    return reduce(jnp.sum(terms, axis=-1), reduction, both(ok, target_ok))
