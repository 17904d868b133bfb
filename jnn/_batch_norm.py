"""``BatchNorm``: normalization by the batch's statistics, with running averages in state."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating
from jnn._errors import DTypeError, ParamsError, ShapeError
from jnn._module import Module, Params, Shape, State
from jnn._norm import _affine_params, _check_norm_hyperparameters, _moments

__all__ = ["BatchNorm"]


class BatchNorm(Module):
    r"""Batch normalization with running statistics held in explicit state.

    Training (``is_training=True``) normalises with the batch's mean and biased variance
    over every axis but the feature axis, and returns updated running statistics;
    inference (the default) normalises with the running statistics and returns them
    unchanged.

    .. math::
       y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \gamma + \beta, \qquad
       \hat\mu \leftarrow m \hat\mu + (1 - m) \mu_{\text{batch}}, \qquad
       \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \sigma^2_{\text{batch}} \cdot c

    where ``c = 1`` for ``running_variance="biased"`` (Flax's and Keras' rule, the
    default) and ``c = n / (n - 1)`` for ``"unbiased"`` (PyTorch's ``running_var``), for
    ``n`` values per feature in the batch (across devices with ``axis_name``).

    ``momentum`` weighs the *old* statistics (Flax and Keras convention). So
    ``torch.nn.BatchNorm2d(C, eps=e, momentum=0.1)`` is ``BatchNorm(momentum=0.9,
    epsilon=e, running_variance="unbiased")``, with ``axis=1`` for PyTorch's channels-first
    layout (or the default ``axis=-1`` once the input is channels last).

    Statistics are computed in the input's dtype, at least float32 (bfloat16 and float16
    inputs get float32 statistics); the output has the input's dtype, and the updated
    running statistics keep the dtype of the ``state`` passed in (``param_dtype`` at init).

    Args:
      momentum: Decay of the running statistics, in ``[0, 1]``.
      epsilon: Added to the variance for numerical stability (``>= 0``).
      use_scale: Learn ``scale`` (gamma), shape ``[features]``.
      use_offset: Learn ``offset`` (beta), shape ``[features]``.
      axis: The feature axis; any axis but the first (the batch axis).
      axis_name: Name of a mapped axis (``jax.vmap``/``shard_map``) over which batch
        statistics are averaged, for statistics across devices; ``None`` for none.
      running_variance: ``"biased"`` or ``"unbiased"``: which batch variance the running
        variance moves towards (the batch itself is always normalised with the biased one).
      scale_init: Initializer of ``scale`` (ones).
      offset_init: Initializer of ``offset`` (zeros).
      param_dtype: Dtype of ``scale``, ``offset`` and the running statistics.

    Shapes:
      ``[batch, ..., features]`` (default ``axis=-1``) to the same shape. The batch axis
      is required by ``init`` and ``apply`` alike, since the statistics are taken over
      it: for one example at inference use ``x[None]``; under ``jax.vmap``, map over
      batches and set ``axis_name`` to share statistics. Params ``scale``, ``offset`` and
      state ``mean``, ``variance`` are ``[features]``.

    Raises:
      ParamsError: If ``apply`` gets no ``state``.
      ShapeError: If the input has rank below 2, ``axis`` is out of range or is the batch
        axis, the feature count differs from the one at init, or a training batch has
        fewer than 2 values per feature.
      DTypeError: If the input or the state is not real floating point.

    Examples:
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
    running_variance: Literal["biased", "unbiased"] = "biased"
    scale_init: Callable = initializers.ones
    offset_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if not 0.0 <= self.momentum <= 1.0:  # NaN fails too
            raise ValueError(
                f"BatchNorm: momentum must be in [0, 1], got {self.momentum!r}. It weighs the "
                "old statistics: PyTorch's momentum=0.1 is momentum=0.9 here."
            )
        object.__setattr__(self, "momentum", float(self.momentum))
        _check_norm_hyperparameters(self)

    def _feature_axis(self, x: Any) -> int:
        """The feature axis of ``x`` as a non-negative int, after checking ``x``."""
        check_floating(self, x)
        shape = tuple(jnp.shape(x))
        if len(shape) < 2:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least 2 ([batch, ..., features]), got shape "
                f"{shape}. Hint: the first axis is the batch axis; add it, e.g. x[None] for "
                "one example, or x[:, None] for a batch of single values.",
            )
        if not -len(shape) <= self.axis < len(shape):
            raise ShapeError(
                self.layer_name(),
                f"axis={self.axis} is out of range for an input of shape {shape} (rank "
                f"{len(shape)}); the feature axis must be in [{-len(shape)}, {len(shape) - 1}].",
            )
        axis = self.axis % len(shape)
        if axis == 0:
            raise ShapeError(
                self.layer_name(),
                f"axis={self.axis} is the batch axis of an input of shape {shape}; the "
                "statistics are taken over the batch, so the feature axis must be another "
                "one, e.g. axis=-1 (channels last) or axis=1 (channels first).",
            )
        return axis

    def init_with_state(self, key: jax.Array, x: jax.Array) -> tuple[Params, State]:
        features = x.shape[self._feature_axis(x)]
        params = _affine_params(self, key, (features,))
        state = {
            "mean": jnp.zeros((features,), self.param_dtype),
            "variance": jnp.ones((features,), self.param_dtype),
        }
        return params, state

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check the input and its feature count against the params, for a precise message."""
        axis = self._feature_axis(x)
        stats = params.get("scale", params.get("offset"))
        if stats is None or jnp.ndim(stats) != 1:
            return  # the state's shape is compared by the generic check
        if jnp.shape(x)[axis] != stats.shape[0]:
            raise ShapeError(
                self.layer_name(),
                f"expected input with {stats.shape[0]} features on axis {self.axis} (set at "
                f"init), got shape {tuple(jnp.shape(x))}.",
            )

    def _count(self, shape: Shape, axis: int) -> int | jax.Array:
        """Values per feature in the batch (across ``axis_name``); at least 2 for training."""
        count = math.prod(d for i, d in enumerate(shape) if i != axis)
        where = ""
        if self.axis_name is not None:
            try:
                devices = jax.lax.psum(1, self.axis_name)
            except NameError:
                raise ValueError(
                    f"{self.layer_name()}: axis_name={self.axis_name!r} is not a mapped axis "
                    "here. Hint: call apply inside jax.vmap(..., axis_name=...) or shard_map "
                    "with that name, or set axis_name=None."
                ) from None
            count, where = count * devices, f" across axis_name={self.axis_name!r}"
        if isinstance(count, int) and count < 2:
            raise ShapeError(
                self.layer_name(),
                f"training needs at least 2 values per feature for batch statistics, got "
                f"{count}{where} from input of shape {shape}. Hint: train on a batch of 2 or "
                "more, or normalise with the running statistics (is_training=False).",
            )
        return count

    def apply(
        self, params: Params, x: jax.Array, *, state: State | None, is_training: bool = False
    ) -> tuple[jax.Array, State | None]:
        if state is None:
            use = (
                "y, state = model.apply(params, x, state=state, is_training=True), which "
                "returns them updated"
                if is_training
                else "y, _ = model.apply(params, x, state=state); inference normalises with them"
            )
            raise ParamsError(
                self.layer_name(),
                "needs its running statistics. Hint: params, state = "
                f"model.init_with_state(key, x), then {use}.",
            )
        x = jnp.asarray(x)
        axis = self._feature_axis(x)
        old = {name: jnp.asarray(state[name]) for name in ("mean", "variance")}
        for name, value in old.items():
            dtype = value.dtype
            if not jnp.issubdtype(dtype, jnp.floating):
                raise DTypeError(
                    self.layer_name(),
                    f"expected floating-point running statistics, got state '{name}' of dtype "
                    f"{dtype}. Hint: keep the state from init_with_state, or cast it, e.g. "
                    "jax.tree.map(lambda s: s.astype(jnp.float32), state).",
                )
        # Statistics in the input's precision, at least float32.
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        h = x.astype(dtype)
        shape = [1] * h.ndim
        shape[axis] = h.shape[axis]
        if is_training:
            count = self._count(h.shape, axis)
            reduce = tuple(i for i in range(h.ndim) if i != axis)
            _, mean, variance = _moments(h, reduce, self.axis_name)
            mean, variance = mean.reshape(-1), variance.reshape(-1)
            running = (
                variance * (count / (count - 1))
                if self.running_variance == "unbiased"
                else variance
            )
            m = self.momentum
            state = {
                name: (m * old[name] + (1 - m) * new).astype(old[name].dtype)
                for name, new in (("mean", mean), ("variance", running))
            }
        else:
            mean, variance = old["mean"].astype(dtype), old["variance"].astype(dtype)
        inv = jax.lax.rsqrt(variance + self.epsilon)
        if self.use_scale:
            inv = inv * params["scale"].astype(dtype)
        y = (h - mean.reshape(shape)) * inv.reshape(shape)
        if self.use_offset:
            y = y + params["offset"].astype(dtype).reshape(shape)
        return y.astype(x.dtype), state
