"""Training: a pure jit-compiled step on optax, evaluation and ``fit``.

Every argument is checked where it is passed, before anything is traced: a model that is
not a ``jnn.Module``, an optimizer that is not an optax transformation, a loss that is not
a function, metrics that are not a dict of functions, data whose arrays differ in length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jnn._batching import batches, check_bool, check_pair, count_examples
from jnn._checks import check_params_leaves, check_positive_int
from jnn._errors import DTypeError, ShapeError
from jnn._module import Module, Params, State

__all__ = ["make_train_step", "make_eval_step", "evaluate"]

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


# --------------------------------------------------------------------------- argument checks

_ORDER = "the arguments are (model, loss_fn, optimizer)"


def check_model(name: str, model: Any) -> None:
    if isinstance(model, Module):
        return
    if isinstance(model, type) and issubclass(model, Module):
        hint = f"instantiate it, e.g. {model.__name__}(...)."
    elif isinstance(getattr(model, "__self__", None), Module):
        hint = "pass the model itself, not its bound method."
    elif callable(model):
        hint = "wrap plain functions with jnn.from_functions(init_fn, apply_fn)."
    else:
        hint = "build one from layers, e.g. jnn.Sequential([...])."
    raise TypeError(
        f"{name}: expected a jnn.Module as model, got {type(model).__name__}. Hint: {hint}"
    )


def _is_optimizer(x: Any) -> bool:
    return callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))


def check_loss_fn(name: str, loss_fn: Any, what: str = "loss_fn") -> None:
    if callable(loss_fn) and not _is_optimizer(loss_fn):
        return
    if _is_optimizer(loss_fn):
        hint = f"that is an optimizer: {_ORDER}."
    elif isinstance(loss_fn, str):
        hint = "pass the function itself, e.g. jnn.softmax_cross_entropy_with_integer_labels."
    elif isinstance(loss_fn, jax.Array | np.ndarray | float | int):
        hint = "pass the loss function itself, not a value it returned."
    else:
        hint = f"{what}(outputs, targets) must return a scalar."
    raise TypeError(
        f"{name}: expected a function as {what}, got {type(loss_fn).__name__}. Hint: {hint}"
    )


def check_optimizer(name: str, optimizer: Any) -> None:
    """An optax ``GradientTransformation``, or anything with its ``init`` and ``update``."""
    if _is_optimizer(optimizer):
        return
    what = getattr(optimizer, "__name__", type(optimizer).__name__)
    if isinstance(optimizer, float | int) and not isinstance(optimizer, bool):
        hint = f"wrap a learning rate in an optimizer, e.g. optax.sgd({optimizer!r})."
    elif callable(optimizer) and getattr(optimizer, "__module__", "").startswith("optax"):
        hint = f"call it to build the transformation, e.g. optax.{what}(1e-3)."
    elif callable(optimizer):
        hint = f"pass an optimizer such as optax.adam(1e-3); {_ORDER}."
    else:
        hint = "pass an optimizer such as optax.adam(1e-3)."
    raise TypeError(
        f"{name}: expected an optax GradientTransformation as optimizer, got {what}. Hint: {hint}"
    )


def check_metrics(name: str, metrics: Any, *, with_loss: bool = True) -> dict[str, Callable]:
    """``metrics`` as a dict of name -> ``metric(outputs, targets)``; ``None`` is ``{}``."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        hint = (
            " Hint: name them, e.g. {'accuracy': jnn.accuracy}."
            if isinstance(metrics, list | tuple) or callable(metrics)
            else ""
        )
        raise TypeError(
            f"{name}: expected metrics as a dict of name -> function, got "
            f"{type(metrics).__name__}.{hint}"
        )
    for key, fn in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"{name}: expected metric names as strings, got {key!r}.")
        if not callable(fn):
            raise TypeError(
                f"{name}: expected a function for metric '{key}', got {type(fn).__name__}. "
                "Hint: metric(outputs, targets) returns a scalar, e.g. jnn.accuracy."
            )
    if with_loss and "loss" in metrics:
        raise ValueError(
            f"{name}: the metric name 'loss' is taken by the loss in the logs. Hint: rename "
            "the metric, e.g. {'train_loss': ...}."
        )
    return dict(metrics)


def _scalar(name: str, what: str, value: Any) -> Any:
    """Refuse a non-scalar loss or metric (static shape: free under ``jit``)."""
    if jnp.ndim(value) != 0:
        raise ShapeError(
            name,
            f"expected {what} to return a scalar, got shape {tuple(jnp.shape(value))}. "
            "Hint: reduce it over the batch, e.g. reduction='mean' for jnn losses, or .mean().",
        )
    return value


def _check_loss_value(name: str, loss: Any) -> Any:
    _scalar(name, "loss_fn", loss)
    if not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
        raise DTypeError(
            name,
            f"expected loss_fn to return a floating-point scalar to differentiate, got dtype "
            f"{jnp.result_type(loss)}.",
        )
    return loss


def check_key(name: str, key: Any) -> None:
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return  # a legacy jax.random.PRNGKey
    raise TypeError(
        f"{name}: expected key to be a PRNG key such as jax.random.key(0), got "
        f"{type(key).__name__}" + (f" of dtype {dtype}" if dtype is not None else "") + "."
    )


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

    Raises:
      TypeError: At once, if ``model`` is not a ``jnn.Module``, ``loss_fn`` not a
        function, ``optimizer`` not an optax transformation (``init`` and ``update``),
        ``metrics`` not a dict of functions, or ``donate``/``jit`` not bools.
      ValueError: At once, if a metric is named ``"loss"``. When the step is first
        traced, a ``ShapeError`` if ``loss_fn`` or a metric does not return a scalar,
        and a ``DTypeError`` if the loss is not floating point.

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
    name = "make_train_step"
    check_model(name, model)
    check_loss_fn(name, loss_fn)
    check_optimizer(name, optimizer)
    metrics = check_metrics(name, metrics)
    check_bool(name, "donate", donate)
    check_bool(name, "jit", jit)

    def step(params, opt_state, batch, key=None, state=None):
        inputs, targets = _split_batch(batch)

        def objective(p):
            if state is None:
                outputs = model.apply(p, *inputs, key=key, is_training=True)
                return _check_loss_value(name, loss_fn(outputs, targets)), (outputs, None)
            outputs, new_state = model.apply(p, *inputs, state=state, key=key, is_training=True)
            return _check_loss_value(name, loss_fn(outputs, targets)), (outputs, new_state)

        (loss, (outputs, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        logs = {"loss": loss, **_metric_logs(name, metrics.items(), outputs, targets)}
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


def _metric_logs(name: str, metrics: Any, outputs: Any, targets: Any) -> dict[str, Any]:
    return {k: _scalar(name, f"metric '{k}'", fn(outputs, targets)) for k, fn in metrics}


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
        inputs, targets = _split_batch(batch)
        if state is None:
            outputs = model.apply(params, *inputs)
        else:
            outputs, _ = model.apply(params, *inputs, state=state)
        logs = (
            {} if loss_fn is None else {"loss": _scalar(name, "loss_fn", loss_fn(outputs, targets))}
        )
        logs.update(_metric_logs(name, metrics, outputs, targets))
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
    totals: dict[str, Any] = {}
    count = 0
    for batch in batches(data, batch_size):
        size = int(np.shape(jax.tree.leaves(batch[1])[0])[0])
        logs = eval_step(params, batch, state)
        for name, value in logs.items():
            totals[name] = totals.get(name, 0.0) + value * size
        count += size
    return {name: float(total) / count for name, total in totals.items()}
