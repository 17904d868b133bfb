"""Checks of the arguments shared by the training step, ``evaluate`` and ``fit``.

Every argument is checked where it is passed, before anything is traced: a model that is
not a ``jnn.Module``, an optimizer that is not an optax transformation, a loss that is not
a function, metrics that are not a dict of functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._errors import DTypeError, ShapeError
from jnn._module import Module

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], jax.Array]
MetricFns = Mapping[str, Callable[[Any, Any], jax.Array]]


def split_batch(name: str, batch: Any) -> tuple[tuple, Any]:
    """``(inputs as a tuple, targets)`` of a ``(inputs, targets)`` batch."""
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        got = (
            f"an array of shape {batch.shape}" if hasattr(batch, "shape") else type(batch).__name__
        )
        raise TypeError(
            f"{name}: expected a batch (inputs, targets), got {got}"
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


def is_optimizer(x: Any) -> bool:
    return callable(getattr(x, "init", None)) and callable(getattr(x, "update", None))


def check_loss_fn(name: str, loss_fn: Any, what: str = "loss_fn") -> None:
    if callable(loss_fn) and not is_optimizer(loss_fn):
        return
    if is_optimizer(loss_fn):
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
    if is_optimizer(optimizer):
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


def check_opt_state(name: str, optimizer: Any, params: Any, opt_state: Any) -> None:
    """Raise ``TypeError`` unless ``opt_state`` has the tree structure ``optimizer.init``
    makes for ``params``: an optimizer state made by another optimizer would otherwise
    fail deep inside optax, or, worse, be accepted and ignored."""
    expected = jax.eval_shape(optimizer.init, params)
    if jax.tree.structure(expected) == jax.tree.structure(opt_state):
        paths = jax.tree_util.tree_leaves_with_path(opt_state)
        for (path, got), want in zip(paths, jax.tree.leaves(expected), strict=True):
            if np.shape(got) != want.shape:
                where = jax.tree_util.keystr(path)
                detail = (
                    f"opt_state{where} has shape {np.shape(got)}, and optimizer.init(params) "
                    f"makes {want.shape} (a state made for other params?)"
                )
                break
        else:
            return
    else:
        got, want = _state_kinds(opt_state), _state_kinds(expected)
        detail = (
            f"it holds {got}, and optimizer.init(params) makes {want}"
            if got != want
            else "its tree differs from the one optimizer.init(params) makes (other params?)"
        )
    raise TypeError(
        f"{name}: the optimizer state does not fit this optimizer: {detail}. Hint: pass the "
        "optimizer the train state was made with (init_train_state), or make a new "
        "optimizer state: train_state._replace(opt_state=optimizer.init(train_state.params))."
    )


def _state_kinds(tree: Any) -> str:
    """The optax state types in ``tree``, in order: ``(ScaleByAdamState, EmptyState)``."""

    def is_state(node: Any) -> bool:  # an optax state is a NamedTuple
        return hasattr(node, "_fields")

    names = [type(n).__name__ for n in jax.tree.leaves(tree, is_leaf=is_state) if is_state(n)]
    return f"({', '.join(names)})" if names else type(tree).__name__


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


def scalar(name: str, what: str, value: Any) -> Any:
    """Refuse a non-scalar loss or metric (static shape: free under ``jit``)."""
    if jnp.ndim(value) != 0:
        raise ShapeError(
            name,
            f"expected {what} to return a scalar, got shape {tuple(jnp.shape(value))}. "
            "Hint: reduce it over the batch, e.g. reduction='mean' for jnn losses, or .mean().",
        )
    return value


def check_loss_value(name: str, loss: Any) -> Any:
    scalar(name, "loss_fn", loss)
    if not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
        raise DTypeError(
            name,
            f"expected loss_fn to return a floating-point scalar to differentiate, got dtype "
            f"{jnp.result_type(loss)}.",
        )
    return loss


def as_typed_key(name: str, key: Any) -> jax.Array:
    """``key`` as a typed key array; a legacy ``uint32[2]`` key is wrapped."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"{name}: expected key to be a PRNG key such as jax.random.key(0), got "
        f"{type(key).__name__}" + (f" of dtype {dtype}" if dtype is not None else "") + "."
    )


def metric_logs(name: str, metrics: Any, outputs: Any, targets: Any) -> dict[str, Any]:
    return {k: scalar(name, f"metric '{k}'", fn(outputs, targets)) for k, fn in metrics}
