"""``integrated_gradients``: the gradient averaged along the straight path from a baseline
to the input, times ``x - baseline``, by one of Captum's quadrature rules; its
attributions add up to ``f(x) - f(baseline)`` (completeness). The shared checks and the
batched weighted sum are in ``jnn._attribution``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jnn._attribution import (
    _check_count,
    _check_inputs,
    _check_params,
    _chooser,
    _forward,
    _weighted_sum,
)
from jnn._errors import ShapeError
from jnn._module import Module, Params, State

__all__ = ["integrated_gradients"]

METHODS = (
    "riemann_trapezoid",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "gausslegendre",
)


def _quadrature(name: str, method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alpha`` in [0, 1] and weights (summing to 1) of the path integral."""
    if method not in METHODS:
        raise ValueError(f"{name}: expected method in {METHODS}, got {method!r}.")
    _check_count(name, "steps", steps)
    if method == "riemann_trapezoid" and steps < 2:
        raise ValueError(
            f"{name}: the trapezoid rule needs steps >= 2 (both ends of the path), got "
            f"{steps}. Hint: method='riemann_middle' takes one step."
        )
    k = np.arange(steps, dtype=np.float64)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return k / (steps - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / steps, np.full(steps, 1.0 / steps)


# --------------------------------------------------------------------------- attributions


def integrated_gradients(
    model: Module | Callable,
    params: Params,
    x: ArrayLike,
    target: int | ArrayLike | None = None,
    *,
    baseline: ArrayLike | None = None,
    steps: int = 50,
    method: str = "riemann_trapezoid",
    batch_size: int | None = None,
    model_state: State | None = None,
) -> jax.Array:
    r"""Integrated gradients (Sundararajan et al., 2017): the gradient averaged along the
    straight path from ``baseline`` to ``x``, times ``x - baseline``.

    .. math:: A_i = (x_i - x'_i) \int_0^1
        \frac{\partial f_c\big(x' + \alpha (x - x')\big)}{\partial x_i}\, d\alpha
        \;\approx\; (x_i - x'_i) \sum_{k} w_k\,
        \frac{\partial f_c\big(x' + \alpha_k (x - x')\big)}{\partial x_i}

    The attributions of an example add up to ``f_c(x) - f_c(x')`` (completeness), up to
    the error of the quadrature, which shrinks as ``steps`` grows: check it on your model
    by comparing ``A.sum()`` with the difference of the outputs.

    Args:
      model: A ``jnn.Module``, or a function ``apply_fn(params, x) -> outputs``.
      params: The model's params.
      x: Inputs with a batch axis, ``[batch, ...]``, floating point.
      target: An int, an int array ``[batch]``, or ``None`` for a scalar output, as in
        ``saliency``.
      baseline: The reference input ``x'``: zeros by default (a black image), or an array
        that broadcasts to ``x`` (``[...]`` for one baseline for all, ``[batch, ...]``).
      steps: Number of points on the path (at least 2 for the trapezoid rule).
      method: The quadrature, with Captum's names: ``"riemann_trapezoid"`` (points
        ``k / (steps - 1)``, ends weighted half), ``"riemann_left"``,
        ``"riemann_right"``, ``"riemann_middle"`` (``steps`` equal weights) or
        ``"gausslegendre"``.
      batch_size: How many path points go through the model together (a ``vmap`` of
        ``batch_size`` copies of ``x``); ``None`` runs all ``steps`` at once. Lower it
        when memory is short; the result does not depend on it. The chunks run in a
        Python loop when called eagerly, in a ``jax.lax.scan`` under ``jit`` or ``vmap``
        (on a CPU, XLA runs convolution gradients several times slower inside a loop:
        there, prefer ``None`` and fewer examples per call).
      model_state: The state of a model with batch norm, as in ``saliency``.

    Returns:
      The attributions, shaped and typed like ``x``.

    Shapes:
      As ``saliency``; ``baseline`` broadcasts to ``x.shape``.

    Raises:
      TypeError: As ``saliency``; also if ``steps`` or ``batch_size`` is not an int.
      ShapeError: As ``saliency``; also if ``baseline`` does not broadcast to ``x``.
      DTypeError: As ``saliency``.
      ValueError: If ``method`` is unknown, ``steps`` too small, or a target out of range.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> model = jnn.Dense(1)  # linear: the attributions are (x - baseline) * weight
      >>> params = {"weight": jnp.array([[2.0], [-1.0]]), "bias": jnp.array([0.5])}
      >>> x = jnp.array([[3.0, 4.0]])
      >>> jnn.integrated_gradients(model, params, x, steps=4).tolist()
      [[6.0, -4.0]]
      >>> jnn.integrated_gradients(model, params, x, baseline=jnp.ones(2), steps=4).tolist()
      [[4.0, -3.0]]
    """
    name = "integrated_gradients"
    forward = _forward(name, model, model_state)
    _check_params(name, params)
    x = _check_inputs(name, x)
    alphas, weights = _quadrature(name, method, steps)
    if batch_size is not None:
        _check_count(name, "batch_size", batch_size)
    if baseline is None:
        baseline = jnp.zeros_like(x)
    else:
        baseline = jnp.asarray(baseline, x.dtype)
        try:
            fits = jnp.broadcast_shapes(baseline.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ShapeError(
                name,
                f"expected a baseline that broadcasts to x's shape {tuple(x.shape)}, got "
                f"shape {tuple(baseline.shape)}.",
            )
        baseline = jnp.broadcast_to(baseline, x.shape)
    gradient = jax.grad(_chooser(name, forward, params, x, target))
    path = x - baseline

    def at(alpha):
        return gradient(baseline + alpha * path)

    inputs = (params, x, baseline, target, model_state)
    average = _weighted_sum(at, jnp.asarray(alphas, x.dtype), weights, batch_size, x, inputs)
    return path * average
