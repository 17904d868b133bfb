"""Training: a pure jit-compiled step on optax, evaluation, batching and ``fit``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn._module import Module, Params, State

__all__ = ["make_train_step", "make_eval_step", "evaluate", "batches", "fit", "FitResult"]

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], jax.Array]
MetricFns = Mapping[str, Callable[[Any, Any], jax.Array]]


def _split_batch(batch: Any) -> tuple[tuple, Any]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(
            f"expected a batch (inputs, targets), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
            + ". Hint: for several inputs use ((x1, x2), targets)."
        )
    inputs, targets = batch
    return (tuple(inputs) if isinstance(inputs, tuple | list) else (inputs,)), targets


def make_train_step(
    model: Module,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    metrics: MetricFns | None = None,
    donate: bool = True,
    jit: bool = True,
) -> Callable:
    """Build ``step(params, opt_state, batch, key=None, state=None)``, jit-compiled once.

    One step runs the forward pass in training mode, the loss, backpropagation with
    ``jax.value_and_grad`` and the optimizer update, and returns
    ``(params, opt_state, logs)``, or ``(params, opt_state, state, logs)`` when the model
    has state and ``state`` is given; ``logs`` holds ``"loss"`` and each metric computed
    on the batch's outputs. The optimizer only ever sees ``params``: state is updated by
    the forward pass, never by gradients.

    Args:
      model: The model.
      loss_fn: ``loss_fn(outputs, targets) -> scalar``, e.g.
        ``jnn.softmax_cross_entropy_with_integer_labels``.
      optimizer: An optax gradient transformation, e.g. ``optax.adam(1e-3)``.
      metrics: Functions ``metric(outputs, targets) -> scalar`` reported by name.
      donate: Donate the buffers of ``params``, ``opt_state`` and ``state`` to the step,
        so they are updated in place; the arrays passed in must not be used afterwards.
      jit: Compile the step with ``jax.jit``. Turn it off to debug, or to use the step
        inside your own transformation (a ``jax.lax.scan`` over steps, a ``jax.vmap``
        over a population, your own ``jax.jit``).

    Returns:
      The step function. ``batch`` is ``(inputs, targets)``; ``inputs`` may be a tuple
      for models with several inputs. ``key`` feeds stochastic layers (dropout).

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> model = jnn.MLP([16, 3])
      >>> x, y = jnp.ones((8, 4)), jnp.zeros((8,), jnp.int32)
      >>> params = model.init(jax.random.key(0), x)
      >>> optimizer = optax.sgd(0.1)
      >>> opt_state = optimizer.init(params)
      >>> step = jnn.make_train_step(
      ...     model, jnn.softmax_cross_entropy_with_integer_labels, optimizer)
      >>> params, opt_state, logs = step(params, opt_state, (x, y))
      >>> sorted(logs)
      ['loss']
    """
    metrics = dict(metrics or {})

    def step(params, opt_state, batch, key=None, state=None):
        inputs, targets = _split_batch(batch)

        def objective(p):
            if state is None:
                outputs = model.apply(p, *inputs, key=key, is_training=True)
                return loss_fn(outputs, targets), (outputs, None)
            outputs, new_state = model.apply(p, *inputs, state=state, key=key, is_training=True)
            return loss_fn(outputs, targets), (outputs, new_state)

        (loss, (outputs, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        logs = {"loss": loss, **{name: fn(outputs, targets) for name, fn in metrics.items()}}
        if state is None:
            return params, opt_state, logs
        return params, opt_state, new_state, logs

    if not jit:
        return step
    donated = ("params", "opt_state", "state") if donate else ()
    compiled = jax.jit(step, donate_argnames=donated)

    # jit caches keyword and positional calls separately; passing everything by position
    # keeps step(p, o, b, key) and step(p, o, b, key=key) on one compiled program.
    @functools.wraps(step)
    def train_step(params, opt_state, batch, key=None, state=None):
        return compiled(params, opt_state, batch, key, state)

    train_step.trace = lambda *a, **k: compiled.trace(*_positional(a, k))
    train_step.lower = lambda *a, **k: compiled.lower(*_positional(a, k))
    return train_step


def _positional(args: tuple, kwargs: dict) -> tuple:
    names = ("params", "opt_state", "batch", "key", "state")
    values = dict(zip(names, args, strict=False)) | kwargs
    return tuple(values.get(name) for name in names)


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
    """
    metrics = tuple(sorted(dict(metrics or {}).items()))
    try:
        return _eval_step(model, loss_fn, metrics)
    except TypeError:  # an unhashable hyperparameter: build an uncached step
        return _eval_step.__wrapped__(model, loss_fn, metrics)


@functools.lru_cache(maxsize=64)
def _eval_step(model: Module, loss_fn: LossFn | None, metrics: tuple) -> Callable:
    def eval_step(params, batch, state=None):
        inputs, targets = _split_batch(batch)
        if state is None:
            outputs = model.apply(params, *inputs)
        else:
            outputs, _ = model.apply(params, *inputs, state=state)
        logs = {} if loss_fn is None else {"loss": loss_fn(outputs, targets)}
        logs.update({name: fn(outputs, targets) for name, fn in metrics})
        return logs

    return jax.jit(eval_step)


def batches(
    data: Any,
    batch_size: int,
    *,
    key: jax.Array | None = None,
    drop_last: bool = False,
) -> Iterator[Any]:
    """Iterate over in-memory arrays in mini-batches, shuffled by ``key`` when given.

    Args:
      data: An array or a pytree of arrays (e.g. ``(x, y)``) sharing the leading axis.
      batch_size: Examples per batch.
      key: PRNG key of the shuffle; use ``jax.random.fold_in(key, epoch)`` for a new,
        reproducible order every epoch. No key: the stored order.
      drop_last: Drop the last batch if it is smaller than ``batch_size``.

    Yields:
      Pytrees like ``data`` whose leaves have leading axis ``batch_size`` (or fewer).

    Examples:
      >>> import numpy as np, jax, jnn
      >>> x, y = np.arange(10.0), np.arange(10)
      >>> [len(b[0]) for b in jnn.batches((x, y), 4)]
      [4, 4, 2]
      >>> [len(b[0]) for b in jnn.batches((x, y), 4, key=jax.random.key(0), drop_last=True)]
      [4, 4]
    """
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("batches: data holds no arrays.")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(sizes) != 1 or -1 in sizes:
        raise ValueError(
            "batches: every array must share the leading (example) axis, got leading sizes "
            f"{[np.shape(leaf)[:1] for leaf in leaves]}."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}.")
    (n,) = sizes
    order = None if key is None else np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            index = slice(start, min(start + batch_size, n))
        else:
            index = order[start : start + batch_size]
        yield jax.tree.map(lambda a, i=index: a[i], data)


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
      batch_size: Examples per evaluation batch.
      state: The model's state, for stateful models.

    Returns:
      A dict of Python floats.
    """
    eval_step = make_eval_step(model, loss_fn, metrics=metrics)
    totals: dict[str, Any] = {}
    count = 0
    for batch in batches(data, batch_size):
        size = int(np.shape(jax.tree.leaves(batch[1])[0])[0])
        logs = eval_step(params, batch, state)
        for name, value in logs.items():
            totals[name] = totals.get(name, 0.0) + value * size
        count += size
    return {name: float(total) / count for name, total in totals.items()}


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
      epochs: Passes over the data.
      batch_size: Examples per step.
      state: Initial state, for stateful models (from ``init_with_state``).
      opt_state: Optimizer state to resume from; ``optimizer.init(params)`` by default.
      eval_data: Optional ``(inputs, targets)`` evaluated after each epoch.
      metrics: Functions ``metric(outputs, targets)`` reported by name.
      progress: Show a progress bar.
      drop_last: Skip each epoch's last incomplete batch (one compiled shape).

    Returns:
      ``FitResult(params, state, opt_state, history)``.
    """
    params = jax.tree.map(jnp.copy, params)
    state = None if state is None else jax.tree.map(jnp.copy, state)
    opt_state = optimizer.init(params) if opt_state is None else jax.tree.map(jnp.copy, opt_state)
    train_data = jax.tree.map(np.asarray, train_data)
    step = make_train_step(model, loss_fn, optimizer, metrics=metrics)
    n = int(np.shape(jax.tree.leaves(train_data)[0])[0])
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
