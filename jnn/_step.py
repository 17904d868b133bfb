"""The training step: forward pass, loss, backpropagation and the optimizer update, as one
pure function ``state, logs = step(state, batch)`` of a ``TrainState``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnn._batching import check_bool
from jnn._module import Module
from jnn._train_checks import (
    LossFn,
    MetricFns,
    check_loss_fn,
    check_loss_value,
    check_metrics,
    check_model,
    check_opt_state,
    check_optimizer,
    metric_logs,
    split_batch,
)
from jnn._train_state import TrainState, step_key

__all__ = ["make_train_step"]


class Finite(NamedTuple):
    """Whether each stage of a step stayed finite (bool scalars), in the order computed."""

    inputs: jax.Array
    loss: jax.Array
    grads: jax.Array


def all_finite(tree: Any) -> jax.Array:
    """True when every floating-point entry of ``tree`` is finite (integers always are)."""
    flags = [
        jnp.isfinite(leaf).all()
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _update(
    name, model, loss_fn, optimizer, metrics, params, opt_state, batch, state, key, scale=None
):
    """Forward pass, loss, gradients and optimizer update: the arithmetic both step forms
    share. ``state`` is the model state, or ``None`` for a stateless model; ``scale`` a
    ``DynamicLossScale`` or ``None``.

    Returns ``(params, opt_state, state, logs, finite, scale)``.
    """
    inputs, targets = split_batch(name, batch)

    def objective(p):
        if state is None:
            outputs, new_state = model.apply(p, *inputs, key=key, is_training=True), None
        else:
            outputs, new_state = model.apply(p, *inputs, state=state, key=key, is_training=True)
        loss = check_loss_value(name, loss_fn(outputs, targets))
        scaled = loss if scale is None else scale.scale_loss(loss)
        return scaled, (loss, outputs, new_state)

    (_, (loss, outputs, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    if scale is not None:
        grads = scale.unscale(grads)
    grads_finite = all_finite(grads)
    # Under jit (the default) this runs once, when the step is traced.
    check_opt_state(name, optimizer, params, opt_state)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    logs = {"loss": loss, **metric_logs(name, metrics.items(), outputs, targets)}
    if scale is None:
        finite = Finite(all_finite(inputs), jnp.isfinite(loss), grads_finite)
        return new_params, new_opt_state, new_state, logs, finite, None
    # Loss scaling expects overflow now and then: such a step changes nothing but the
    # scale, and is not reported as a non-finite step.
    new_params, new_opt_state, new_state = _where(
        grads_finite, (new_params, new_opt_state, new_state), (params, opt_state, state)
    )
    finite = Finite(all_finite(inputs), jnp.isfinite(loss), jnp.asarray(True))
    return new_params, new_opt_state, new_state, logs, finite, scale.adjust(grads_finite)


def _where(condition: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def pure_step(
    name: str, model: Module, loss_fn: LossFn, optimizer: Any, metrics: dict
) -> Callable[[TrainState, Any], tuple[TrainState, dict, Finite]]:
    """The unchecked, unjitted step; it also reports which stages stayed finite.

    ``fit`` builds its guarded loops on it; under ``jit`` the finiteness checks cost
    nothing when their results are unused (XLA drops dead code), and so does the
    step's key when no layer draws random numbers.
    """

    def step(ts: TrainState, batch: Any) -> tuple[TrainState, dict, Finite]:
        stateful = bool(jax.tree.leaves(ts.model_state))
        params, opt_state, model_state, logs, finite, scale = _update(
            name, model, loss_fn, optimizer, metrics, ts.params, ts.opt_state, batch,
            ts.model_state if stateful else None, step_key(ts.key, ts.step), ts.loss_scale,
        )  # fmt: skip
        model_state = model_state if stateful else ts.model_state
        new = TrainState(params, opt_state, model_state, ts.step + 1, ts.key, scale)
        return new, logs, finite

    return step


def make_train_step(
    model: Module,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    metrics: MetricFns | None = None,
    donate: bool = True,
    jit: bool = True,
) -> Callable:
    """Build ``state, logs = step(state, batch)`` over a ``jnn.TrainState``, jit-compiled once.

    One step runs the forward pass in training mode, the loss, backpropagation with
    ``jax.value_and_grad`` and the optimizer update, and returns the new train state and
    ``logs``: ``"loss"`` and each metric, computed on the batch's outputs. The same call
    serves every model: a stateful one (batch norm) finds and returns its state in
    ``state.model_state``. The optimizer only ever sees ``params``. Step ``i`` gives
    stochastic layers (dropout) the key ``jnn.step_key(state.key, i)``. When
    ``state.loss_scale`` is a ``jnn.DynamicLossScale`` (float16 training), the step
    differentiates the scaled loss, unscales the gradients, skips the update if one is
    not finite, and returns the adjusted scale; ``logs["loss"]`` is the unscaled loss.

    The earlier form, ``step(params, opt_state, batch, key=None, state=None)`` returning
    ``(params, opt_state, logs)`` (or ``(params, opt_state, state, logs)`` with a model
    state), still works: it is chosen when the first argument is not a ``TrainState``.

    Args:
      model: The model.
      loss_fn: ``loss_fn(outputs, targets) -> scalar``, e.g.
        ``jnn.softmax_cross_entropy_with_integer_labels``.
      optimizer: An optax gradient transformation, e.g. ``optax.adam(1e-3)``.
      metrics: Functions ``metric(outputs, targets) -> scalar`` reported by name.
      donate: Donate the train state's buffers to the step, so they are updated in
        place; the state passed in must not be used afterwards.
      jit: Compile the step with ``jax.jit``. Turn it off to debug, or to use the step
        inside your own transformation (a ``jax.lax.scan`` over steps, a ``jax.vmap``
        over a population, your own ``jax.jit``).

    Returns:
      The step function. ``batch`` is ``(inputs, targets)``; ``inputs`` may be a tuple
      for models with several inputs.

    Raises:
      TypeError: At once, if ``model`` is not a ``jnn.Module``, ``loss_fn`` not a
        function, ``optimizer`` not an optax transformation (``init`` and ``update``),
        ``metrics`` not a dict of functions, or ``donate``/``jit`` not bools.
      ValueError: At once, if a metric is named ``"loss"``. When the step is first
        traced, a ``ShapeError`` if ``loss_fn`` or a metric does not return a scalar,
        and a ``DTypeError`` if the loss is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> model, optimizer = jnn.MLP([16, 3]), optax.sgd(0.1)
      >>> x, y = jnp.ones((8, 4)), jnp.zeros((8,), jnp.int32)
      >>> state = jnn.init_train_state(model, optimizer, jax.random.key(0), x)
      >>> step = jnn.make_train_step(
      ...     model, jnn.softmax_cross_entropy_with_integer_labels, optimizer)
      >>> state, logs = step(state, (x, y))
      >>> int(state.step), sorted(logs)
      (1, ['loss'])
    """
    name = "make_train_step"
    check_model(name, model)
    check_loss_fn(name, loss_fn)
    check_optimizer(name, optimizer)
    metrics = check_metrics(name, metrics)
    check_bool(name, "donate", donate)
    check_bool(name, "jit", jit)
    core = pure_step(name, model, loss_fn, optimizer, metrics)

    def state_step(ts: TrainState, batch: Any) -> tuple[TrainState, dict]:
        new, logs, _ = core(ts, batch)
        return new, logs

    legacy = _legacy_step(name, model, loss_fn, optimizer, metrics)
    if jit:
        state_step = jax.jit(state_step, donate_argnums=(0,) if donate else ())
        donated = ("params", "opt_state", "state") if donate else ()
        compiled_legacy = jax.jit(legacy, donate_argnames=donated)

        # jit caches keyword and positional calls separately; passing everything by
        # position keeps step(p, o, b, key) and step(p, o, b, key=key) on one program.
        def legacy(params, opt_state, batch, key=None, state=None):
            return compiled_legacy(params, opt_state, batch, key, state)

    @functools.wraps(state_step)
    def train_step(*args: Any, **kwargs: Any) -> Any:
        first = args[0] if args else kwargs.get("state", kwargs.get("params"))
        if isinstance(first, TrainState):
            return state_step(*args, **kwargs)
        return legacy(*args, **kwargs)

    if jit:
        train_step.trace = lambda *a, **k: _pick(state_step, compiled_legacy, a, k).trace(
            *_args(a, k)
        )
        train_step.lower = lambda *a, **k: _pick(state_step, compiled_legacy, a, k).lower(
            *_args(a, k)
        )
    return train_step


def _pick(state_step: Any, legacy: Any, args: tuple, kwargs: dict) -> Any:
    return state_step if args and isinstance(args[0], TrainState) else legacy


def _args(args: tuple, kwargs: dict) -> tuple:
    if args and isinstance(args[0], TrainState):
        return args
    names = ("params", "opt_state", "batch", "key", "state")
    values = dict(zip(names, args, strict=False)) | kwargs
    return tuple(values.get(name) for name in names)


def _legacy_step(name: str, model: Module, loss_fn: LossFn, optimizer: Any, metrics: dict):
    """``step(params, opt_state, batch, key=None, state=None)``: the form before TrainState."""

    def step(params, opt_state, batch, key=None, state=None):
        params, opt_state, new_state, logs, _, _ = _update(
            name, model, loss_fn, optimizer, metrics, params, opt_state, batch, state, key
        )
        if state is None:
            return params, opt_state, logs
        return params, opt_state, new_state, logs

    return step
