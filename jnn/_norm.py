"""Normalization layers. ``BatchNorm`` keeps its running statistics in explicit state."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jnn._core import Module, Params, ParamsError, ShapeError, State, check_floating

__all__ = ["BatchNorm"]


class BatchNorm(Module):
    r"""Batch normalization with running statistics held in explicit state.

    Training (``is_training=True``) normalises with the batch's mean and (biased)
    variance over every axis but the feature axis, and returns updated running
    statistics; inference uses the running statistics and leaves them unchanged.

    .. math::
       y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \gamma + \beta, \qquad
       \hat\mu \leftarrow m \hat\mu + (1 - m) \mu_{\text{batch}}

    ``momentum`` weighs the *old* statistics (Flax and Keras convention): PyTorch's
    ``momentum=0.1`` is ``momentum=0.9`` here.

    Args:
      momentum: Decay of the running statistics.
      epsilon: Added to the variance for numerical stability.
      use_scale: Learn ``scale`` (gamma), shape ``[features]``.
      use_offset: Learn ``offset`` (beta), shape ``[features]``.
      axis: The feature axis.
      axis_name: Name of a mapped axis (``jax.vmap``/``shard_map``) over which batch
        statistics are averaged, for statistics across devices; ``None`` for none.

    Shapes:
      ``[..., features]`` (with the default ``axis=-1``) to the same shape. Params
      ``scale``, ``offset`` and state ``mean``, ``variance`` are ``[features]``.

    Raises:
      ParamsError: If ``apply`` gets no ``state``.

    Example:
      >>> import jax, jax.numpy as jnp, jnn
      >>> bn = jnn.BatchNorm()
      >>> x = jnp.arange(8.0).reshape(4, 2)
      >>> params, state = bn.init_with_state(jax.random.key(0), x)
      >>> y, state = bn.apply(params, x, state=state, is_training=True)
      >>> [round(v, 3) for v in y.mean(0).tolist()]
      [0.0, 0.0]
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    use_scale: bool = True
    use_offset: bool = True
    axis: int = -1
    axis_name: str | None = None

    def __post_init__(self):
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {self.momentum!r}.")

    def _features(self, x) -> int:
        if jnp.ndim(x) < 2:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least 2 ([batch, ..., features]), got shape "
                f"{tuple(jnp.shape(x))}.",
            )
        return jnp.shape(x)[self.axis]

    def init_with_state(self, key: jax.Array, x: jax.Array) -> tuple[Params, State]:
        del key
        check_floating(self, x)
        features = self._features(x)
        params = {}
        if self.use_scale:
            params["scale"] = jnp.ones((features,), jnp.float32)
        if self.use_offset:
            params["offset"] = jnp.zeros((features,), jnp.float32)
        state = {
            "mean": jnp.zeros((features,), jnp.float32),
            "variance": jnp.ones((features,), jnp.float32),
        }
        return params, state

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check the feature count against the params before the generic checks."""
        stats = params.get("scale", params.get("offset"))
        if stats is None or jnp.ndim(x) < 2 or jnp.ndim(stats) != 1:
            return
        if jnp.shape(x)[self.axis] != stats.shape[0]:
            raise ShapeError(
                self.layer_name(),
                f"expected input with {stats.shape[0]} features on axis {self.axis} (set at "
                f"init), got shape {tuple(jnp.shape(x))}.",
            )

    def apply(
        self, params: Params, x: jax.Array, *, state: State | None, is_training: bool = False
    ) -> tuple[jax.Array, State | None]:
        if state is None:
            raise ParamsError(
                self.layer_name(),
                "needs its running statistics. Hint: params, state = "
                "model.init_with_state(key, x), then model.apply(params, x, state=state).",
            )
        check_floating(self, x)
        axis = self.axis % jnp.ndim(x)
        shape = [1] * jnp.ndim(x)
        shape[axis] = self._features(x)
        if is_training:
            reduce = tuple(i for i in range(jnp.ndim(x)) if i != axis)
            x32 = x.astype(jnp.float32)
            mean = jnp.mean(x32, reduce)
            mean_of_squares = jnp.mean(jnp.square(x32), reduce)
            if self.axis_name is not None:
                mean, mean_of_squares = jax.lax.pmean((mean, mean_of_squares), self.axis_name)
            variance = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
            m = self.momentum
            state = {
                "mean": m * state["mean"] + (1 - m) * mean,
                "variance": m * state["variance"] + (1 - m) * variance,
            }
        else:
            mean, variance = state["mean"], state["variance"]
        inv = jax.lax.rsqrt(variance + self.epsilon)
        if self.use_scale:
            inv = inv * params["scale"]
        y = (x - mean.reshape(shape)) * inv.reshape(shape)
        if self.use_offset:
            y = y + params["offset"].reshape(shape)
        return y.astype(x.dtype), state
