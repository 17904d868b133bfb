"""``TrainState``: everything a training run carries from one step to the next, as one pytree.

One pytree means every generic tool takes it as it is: ``jax.jit`` and donation,
``jax.vmap`` over a population of runs, ``jax.lax.scan`` over steps, checkpoints and
sharding. The optimizer and the model are not in it: they are hyperparameters, held by
the step function, so the state holds only arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jnn._checks import check_params_leaves
from jnn._loss_scale import DynamicLossScale
from jnn._module import Module, Params, State
from jnn._train_checks import as_typed_key, check_model, check_optimizer

__all__ = ["TrainState", "init_train_state", "step_key", "epoch_key"]

_SHUFFLE, _LAYERS = 0, 1  # the two streams drawn from a run's key


class TrainState(NamedTuple):
    """The whole state of a training run: ``state, logs = step(state, batch)``.

    A NamedTuple of arrays, so it is a pytree: ``jax.tree.map``, ``jax.vmap`` (a
    population of runs), checkpoints and sharding apply to it directly. Build one with
    ``TrainState.create`` or ``jnn.init_train_state``.

    ``key`` is never split in place. Step ``i`` (counting from 0) gives stochastic layers
    (dropout) the key ``step_key(key, i)``, and ``fit`` shuffles epoch ``e`` (from 0) with
    a NumPy permutation seeded by the key data of ``epoch_key(key, e)``; both keys are
    ``jax.random.fold_in`` of a stream of ``key``. A run
    is therefore fully determined by its initial state and its data, which is what lets
    ``fit`` resume from a checkpoint bit for bit.
    """

    params: Params
    """Trainable parameters: the nested dict from ``model.init``."""
    opt_state: Any
    """The optimizer's state, from ``optimizer.init(params)``."""
    model_state: State
    """Non-trainable state (batch-norm statistics); ``{}`` for stateless models."""
    step: jax.Array
    """int32 scalar: the number of batches trained on so far."""
    key: jax.Array
    """The run's PRNG key (a typed key array); it stays the same for the whole run."""
    loss_scale: DynamicLossScale | None = None
    """A ``jnn.DynamicLossScale`` for float16 training, or ``None`` (no loss scaling)."""

    @classmethod
    def create(
        cls,
        params: Params,
        optimizer: optax.GradientTransformation,
        *,
        key: jax.Array,
        model_state: State | None = None,
        step: int = 0,
        loss_scale: DynamicLossScale | None = None,
    ) -> TrainState:
        """A fresh train state for ``params``: ``optimizer.init(params)`` and step 0.

        The state holds ``params``' own arrays (no copy): a donating step
        (``make_train_step``'s default) frees them, as it frees the state it is given.
        ``fit`` copies its argument and never frees it.

        Args:
          params: The model's params.
          optimizer: An optax gradient transformation; only its ``init`` is called.
          key: The run's PRNG key (``jax.random.key(seed)``; a legacy ``uint32[2]`` key
            is converted).
          model_state: The model's state, from ``init_with_state``; ``None`` for none.
          step: The step count to start from.
          loss_scale: A ``jnn.DynamicLossScale`` when the model computes in float16
            (``jnn.MixedPrecision``); ``None`` for no loss scaling.

        Raises:
          TypeError: If ``optimizer`` is not an optax transformation, ``key`` is not a
            PRNG key, or a leaf of ``params`` is not an array.

        Examples:
          >>> import jax, jax.numpy as jnp, optax, jnn
          >>> model = jnn.Dense(2)
          >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))
          >>> state = jnn.TrainState.create(params, optax.sgd(0.1), key=jax.random.key(1))
          >>> int(state.step), state.model_state
          (0, {})
        """
        name = "TrainState.create"
        check_params_leaves(name, params)
        check_optimizer(name, optimizer)
        key = as_typed_key(name, key)
        if loss_scale is not None and not isinstance(loss_scale, DynamicLossScale):
            raise TypeError(
                f"{name}: loss_scale must be a jnn.DynamicLossScale or None, got "
                f"{type(loss_scale).__name__}."
            )
        params = jax.tree.map(jnp.asarray, params)
        return cls(
            params=params,
            opt_state=optimizer.init(params),
            model_state={} if model_state is None else model_state,
            step=jnp.asarray(step, jnp.int32),
            key=key,
            loss_scale=loss_scale,
        )


def init_train_state(
    model: Module,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    *sample_inputs: Any,
    loss_scale: DynamicLossScale | None = None,
    **kwargs: Any,
) -> TrainState:
    """Initialise ``model`` on ``sample_inputs`` and wrap it in a ``TrainState``.

    ``key`` is split in two: one half initialises the params (and state), the other
    becomes the run's key for shuffling and stochastic layers.

    Args:
      model: The model.
      optimizer: An optax gradient transformation.
      key: A PRNG key.
      *sample_inputs: Inputs (or ``jax.ShapeDtypeStruct``s) with a batch axis, as for
        ``model.init``.
      loss_scale: A ``jnn.DynamicLossScale`` for float16 training, or ``None``.
      **kwargs: Passed on to ``model.init_with_state``.

    Returns:
      A ``TrainState`` at step 0; ``model_state`` is ``{}`` for stateless models.

    Examples:
      >>> import jax, jax.numpy as jnp, optax, jnn
      >>> state = jnn.init_train_state(
      ...     jnn.MLP([8, 2]), optax.adam(1e-3), jax.random.key(0), jnp.ones((4, 3)))
      >>> jax.tree.map(jnp.shape, state.params)["dense_0"]
      {'bias': (8,), 'weight': (3, 8)}
    """
    name = "init_train_state"
    check_model(name, model)
    key = as_typed_key(name, key)
    init_key, run_key = jax.random.split(key)
    params, model_state = model.init_with_state(init_key, *sample_inputs, **kwargs)
    return TrainState.create(
        params, optimizer, key=run_key, model_state=model_state, loss_scale=loss_scale
    )


def step_key(key: jax.Array, step: Any) -> jax.Array:
    """The key that step ``step`` gives stochastic layers: ``fold_in(fold_in(key, 1), step)``.

    Under ``jit`` it costs nothing when no layer uses it (XLA drops dead code).
    """
    return jax.random.fold_in(jax.random.fold_in(key, _LAYERS), step)


def epoch_key(key: jax.Array, epoch: Any) -> jax.Array:
    """The key of epoch ``epoch``'s shuffle in ``fit``: ``fold_in(fold_in(key, 0), epoch)``.

    ``fit`` seeds NumPy's ``default_rng`` with its key data and draws the permutation
    there (on a CPU, 20 times faster than ``jax.random.permutation``).
    """
    return jax.random.fold_in(jax.random.fold_in(key, _SHUFFLE), epoch)
