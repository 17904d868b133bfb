"""``fit``: the whole training loop (shuffled epochs, per-step keys, evaluation, progress)
over ``make_train_step`` and ``evaluate``; every argument is checked before it starts."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn._batching import batches, check_bool, check_pair, count_examples
from jnn._checks import check_params_leaves, check_positive_int
from jnn._module import Module, Params, State
from jnn._training import (
    Batch,
    LossFn,
    MetricFns,
    check_key,
    check_loss_fn,
    check_metrics,
    check_model,
    check_optimizer,
    evaluate,
    make_train_step,
)

__all__ = ["fit", "FitResult"]


class FitResult(NamedTuple):
    """What ``fit`` returns."""

    params: Params
    state: State | None
    opt_state: Any
    history: dict[str, list[float]]
    """Per-epoch means: ``loss`` and metrics on training batches, ``eval_*`` on ``eval_data``."""


def fit(
    model: Module,
    params: Params,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    train_data: Batch,
    *,
    key: jax.Array,
    epochs: int = 1,
    batch_size: int = 32,
    state: State | None = None,
    opt_state: Any = None,
    eval_data: Batch | None = None,
    metrics: MetricFns | None = None,
    progress: bool = True,
    drop_last: bool = True,
) -> FitResult:
    """Train for ``epochs`` passes over ``train_data`` and return the history.

    Every epoch shuffles the data with ``fold_in(key, epoch)``, and every step gets its own
    key for stochastic layers. Training metrics are averaged over the epoch's batches;
    ``eval_data`` is evaluated after each epoch in inference mode. The progress bar uses
    ``tqdm.auto`` (a widget in notebooks, text in terminals).

    Args:
      model: The model.
      params: Initial params (copied: the caller's arrays stay valid).
      loss_fn: ``loss_fn(outputs, targets) -> scalar``.
      optimizer: An optax gradient transformation.
      train_data: ``(inputs, targets)`` arrays with a shared leading axis.
      key: PRNG key of the shuffles and the stochastic layers.
      epochs: Passes over the data, a positive int.
      batch_size: Examples per step, a positive int.
      state: Initial state, for stateful models (from ``init_with_state``).
      opt_state: Optimizer state to resume from; ``optimizer.init(params)`` by default.
      eval_data: Optional ``(inputs, targets)`` evaluated after each epoch.
      metrics: Functions ``metric(outputs, targets)`` reported by name.
      progress: Show a progress bar.
      drop_last: Skip each epoch's last incomplete batch (one compiled shape).

    Returns:
      ``FitResult(params, state, opt_state, history)``.

    Raises:
      TypeError: Before training, if an argument is of the wrong kind: ``model`` not a
        ``jnn.Module``, ``optimizer`` not an optax transformation, ``loss_fn`` not a
        function, ``metrics`` not a dict of functions, ``train_data``/``eval_data`` not
        pairs ``(inputs, targets)`` of arrays, ``key`` not a PRNG key, ``epochs`` or
        ``batch_size`` not ints (NumPy ints are accepted), ``progress``/``drop_last``
        not bools.
      ValueError: Before training, if ``epochs`` or ``batch_size`` is not positive, the
        data hold no examples or arrays of different lengths, or ``drop_last`` leaves
        no full batch.
    """
    name = "fit"
    check_model(name, model)
    check_params_leaves(name, params)
    check_loss_fn(name, loss_fn)
    check_optimizer(name, optimizer)
    check_pair(name, train_data, "train_data")
    n = count_examples(name, train_data, "train_data")
    check_key(name, key)
    check_positive_int(name, "epochs", epochs)
    check_positive_int(name, "batch_size", batch_size)
    epochs, batch_size = int(epochs), int(batch_size)
    if eval_data is not None:
        check_pair(name, eval_data, "eval_data")
        count_examples(name, eval_data, "eval_data")
    check_metrics(name, metrics)
    check_bool(name, "progress", progress)
    check_bool(name, "drop_last", drop_last)
    params = jax.tree.map(jnp.copy, params)
    state = None if state is None else jax.tree.map(jnp.copy, state)
    opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.copy, opt_state)
    train_data = jax.tree.map(np.asarray, train_data)
    step = make_train_step(model, loss_fn, optimizer, metrics=metrics)
    steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if steps_per_epoch == 0:
        raise ValueError(
            f"fit: {n} examples give no full batch of {batch_size}; lower batch_size "
            "or pass drop_last=False."
        )
    shuffle_key, step_key = jax.random.split(key)
    history: dict[str, list[float]] = {}
    bar = _progress(epochs * steps_per_epoch, progress)
    global_step = 0
    for epoch in range(epochs):
        epoch_logs = []
        order_key = jax.random.fold_in(shuffle_key, epoch)
        for batch in batches(train_data, batch_size, key=order_key, drop_last=drop_last):
            k = jax.random.fold_in(step_key, global_step)
            if state is None:
                params, opt_state, logs = step(params, opt_state, batch, k)
            else:
                params, opt_state, state, logs = step(params, opt_state, batch, k, state)
            epoch_logs.append(logs)
            global_step += 1
            if bar is not None:
                bar.update(1)
        means = jax.device_get(jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *epoch_logs))
        summary = {name: float(value) for name, value in means.items()}
        if eval_data is not None:
            scores = evaluate(
                model, params, eval_data, loss_fn=loss_fn, metrics=metrics, state=state
            )
            summary.update({f"eval_{name}": value for name, value in scores.items()})
        for name, value in summary.items():
            history.setdefault(name, []).append(value)
        if bar is not None:
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            bar.set_postfix({name: f"{value:.4g}" for name, value in summary.items()})
    if bar is not None:
        bar.close()
    return FitResult(params, state, opt_state, history)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)
