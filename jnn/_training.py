"""Evaluation: a jit-compiled eval step and ``evaluate``, the average of the loss and
metrics over a data set in inference mode."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jnn._batching import batches, check_pair, count_examples
from jnn._checks import check_params_leaves, check_positive_int
from jnn._module import Module, Params, State
from jnn._train_checks import (
    Batch,
    LossFn,
    MetricFns,
    check_loss_fn,
    check_metrics,
    check_model,
    metric_logs,
    scalar,
    split_batch,
)

__all__ = ["make_eval_step", "evaluate"]


def make_eval_step(
    model: Module, loss_fn: LossFn | None = None, *, metrics: MetricFns | None = None
) -> Callable:
    """Build a jit-compiled ``eval_step(params, batch, state=None) -> logs`` in inference mode.

    Args:
      model: The model.
      loss_fn: Optional ``loss_fn(outputs, targets) -> scalar``, reported as ``"loss"``.
      metrics: Functions ``metric(outputs, targets) -> scalar`` reported by name.

    Returns:
      ``eval_step``; its ``logs`` hold ``"loss"`` (when ``loss_fn`` is given) and each
      metric, computed on the batch. Steps are cached per (model, loss, metrics), so
      calling this again does not compile again.

    Raises:
      TypeError: If ``model``, ``loss_fn`` or ``metrics`` is of the wrong kind.
      ValueError: If a metric is named ``"loss"`` while ``loss_fn`` is given.
    """
    return _build_eval_step("make_eval_step", model, loss_fn, metrics)


def _build_eval_step(name: str, model: Any, loss_fn: Any, metrics: Any) -> Callable:
    check_model(name, model)
    if loss_fn is not None:
        check_loss_fn(name, loss_fn)
    metrics = tuple(sorted(check_metrics(name, metrics, with_loss=loss_fn is not None).items()))
    try:
        return _eval_step(model, loss_fn, metrics)
    except TypeError:  # an unhashable hyperparameter: build an uncached step
        return _eval_step.__wrapped__(model, loss_fn, metrics)


@functools.lru_cache(maxsize=64)
def _eval_step(model: Module, loss_fn: LossFn | None, metrics: tuple) -> Callable:
    name = "evaluate"

    def eval_step(params, batch, state=None):
        inputs, targets = split_batch(name, batch)
        if state is None:
            outputs = model.apply(params, *inputs)
        else:
            outputs, _ = model.apply(params, *inputs, state=state)
        logs = (
            {} if loss_fn is None else {"loss": scalar(name, "loss_fn", loss_fn(outputs, targets))}
        )
        logs.update(metric_logs(name, metrics, outputs, targets))
        return logs

    return jax.jit(eval_step)


def evaluate(
    model: Module,
    params: Params,
    data: Batch,
    *,
    loss_fn: LossFn | None = None,
    metrics: MetricFns | None = None,
    batch_size: int = 1024,
    state: State | None = None,
) -> dict[str, float]:
    """Average the loss and metrics over a data set, in inference mode.

    Each batch's values are weighted by its number of examples, so the result equals the
    metric over the whole set for means such as accuracy.

    Args:
      model: The model.
      params: Its params.
      data: ``(inputs, targets)`` arrays with a shared leading axis.
      loss_fn: Optional ``loss_fn(outputs, targets) -> scalar``, reported as ``"loss"``.
      metrics: Functions ``metric(outputs, targets) -> scalar`` reported by name.
      batch_size: Examples per evaluation batch, a positive int.
      state: The model's state, for stateful models.

    Returns:
      A dict of Python floats.

    Raises:
      TypeError: If an argument is of the wrong kind (``data`` not a pair
        ``(inputs, targets)`` of arrays, ``metrics`` not a dict of functions, ...).
      ValueError: If ``data`` holds no examples, its arrays differ in length, or
        ``batch_size`` is not positive.
    """
    name = "evaluate"
    eval_step = _build_eval_step(name, model, loss_fn, metrics)
    check_params_leaves(name, params)
    check_pair(name, data, "data")
    count_examples(name, data)
    check_positive_int(name, "batch_size", batch_size)
    return {
        k: float(v) for k, v in average_logs(eval_step, params, data, state, batch_size).items()
    }


def average_logs(eval_step: Callable, params: Any, data: Batch, state: Any, batch_size: int):
    """The logs of ``eval_step(params, batch, state)`` over ``data``'s batches, each
    weighted by its number of examples (arrays, for a vmapped step of a population)."""
    totals: dict[str, Any] = {}
    count = 0
    for batch in batches(data, batch_size):
        size = int(np.shape(jax.tree.leaves(batch[1])[0])[0])
        logs = jax.device_get(eval_step(params, batch, state))
        for name, value in logs.items():
            totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64) * size
        count += size
    return {name: total / count for name, total in totals.items()}
