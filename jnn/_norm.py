"""Normalization layers.

``BatchNorm`` keeps its running statistics in explicit state; ``LayerNorm``, ``RMSNorm`` and
``GroupNorm`` normalise each example by its own statistics and have no state.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jnn._checks import check_floating
from jnn._errors import ParamsError, ShapeError
from jnn._module import Module, Params, Shape, State

__all__ = ["BatchNorm", "LayerNorm", "RMSNorm", "GroupNorm"]


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
            _, mean, variance = _moments(x.astype(jnp.float32), reduce, self.axis_name)
            mean, variance = mean.reshape(-1), variance.reshape(-1)
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


# --------------------------------------------------------------------------- per-example norms
# LayerNorm, RMSNorm and GroupNorm normalise each example on its own, so they need no
# state and behave the same in training and inference.


def _check_hyperparameters(module: Module) -> None:
    """Validate ``epsilon`` (stored as a float) and the ``use_*`` flags of ``module``."""
    name = module.layer_name()
    epsilon = module.epsilon
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, numbers.Real)
        or not 0 <= epsilon < math.inf
    ):
        raise ValueError(f"{name}: epsilon must be a finite number >= 0, got {epsilon!r}.")
    object.__setattr__(module, "epsilon", float(epsilon))
    for flag in ("use_scale", "use_offset"):
        value = getattr(module, flag)
        if not isinstance(value, bool):
            raise TypeError(f"{name}: {flag} must be a bool, got {value!r}.")


def _check_axis(module: Module) -> None:
    """Validate ``module.axis``: an int or a non-empty tuple of distinct ints (kept hashable)."""
    name, axis = module.layer_name(), module.axis
    many = isinstance(axis, Sequence) and not isinstance(axis, str)
    items = tuple(axis) if many else (axis,)
    if any(isinstance(a, bool) or not isinstance(a, numbers.Integral) for a in items):
        raise TypeError(f"{name}: axis must be an int or a tuple of ints, got {axis!r}.")
    if not items:
        raise ValueError(f"{name}: axis must name at least one axis, got {axis!r}.")
    if len(set(items)) != len(items):
        raise ValueError(f"{name}: axis {axis!r} names the same axis twice.")
    object.__setattr__(module, "axis", tuple(int(a) for a in items) if many else int(axis))


def _resolve_axes(module: Module, shape: Shape) -> tuple[int, ...]:
    """``module.axis`` as sorted non-negative axes of an input of this ``shape``."""
    axis = module.axis
    items = axis if isinstance(axis, tuple) else (axis,)
    need = max(a + 1 if a >= 0 else -a for a in items)
    if len(shape) < need:
        raise ShapeError(
            module.layer_name(),
            f"expected input of rank at least {need} for axis={axis!r}, got shape {shape}.",
        )
    axes = sorted(a % len(shape) for a in items)
    if len(set(axes)) != len(axes):
        raise ShapeError(
            module.layer_name(),
            f"axis={axis!r} names one axis twice for an input of shape {shape}. "
            "Hint: use only negative (or only non-negative) axes.",
        )
    return tuple(axes)


def _affine_params(module: Module, shape: Shape) -> Params:
    params = {}
    if module.use_scale:
        params["scale"] = jnp.ones(shape, jnp.float32)
    if module.use_offset:
        params["offset"] = jnp.zeros(shape, jnp.float32)
    return params


def _standardize(x: jax.Array, axes: tuple[int, ...], epsilon: float, center: bool):
    """``x`` over ``axes`` to zero mean (if ``center``) and unit mean square, in float32+."""
    # Low-precision inputs lose too much in a mean of squares: compute in float32 at least.
    h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if not center:
        return h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axes, keepdims=True) + epsilon)
    centered, _, variance = _moments(h, axes)
    return centered * jax.lax.rsqrt(variance + epsilon)


def _moments(h: jax.Array, axes: tuple[int, ...], axis_name: str | None = None):
    """``(h - mean, mean, variance)`` over ``axes`` (kept as size-1 axes), in one pass.

    The mean and the mean square of ``d = h - shift`` come from one read of ``h``:
    squaring before either mean lets XLA fuse both reductions into one loop (the
    two-pass form, centre then square, made a transformer training step 12-15% slower
    on a CPU). The shift, each row's first element, is exact for any value and keeps
    ``E[d^2] - E[d]^2`` free of cancellation when the mean is large against the spread
    (``E[d]^2`` is then at most ``n`` times the variance, for ``n`` elements). With an
    ``axis_name`` the shift and the moments are averaged across devices.
    """
    first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(h.ndim))
    shift = jax.lax.stop_gradient(h[first])
    if axis_name is not None:
        shift = jax.lax.pmean(shift, axis_name)
    d = h - shift
    squares = jnp.square(d)
    mean = jnp.mean(d, axes, keepdims=True)
    mean_of_squares = jnp.mean(squares, axes, keepdims=True)
    if axis_name is not None:
        mean, mean_of_squares = jax.lax.pmean((mean, mean_of_squares), axis_name)
    variance = jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)
    return d - mean, mean + shift, variance


def _scale_offset(module: Module, params: Params, h: jax.Array, axes: tuple[int, ...]):
    """Apply ``scale`` and ``offset``, whose axes are ``axes`` of ``h``."""
    shape = [d if i in axes else 1 for i, d in enumerate(h.shape)]
    if module.use_scale:
        h = h * params["scale"].reshape(shape)
    if module.use_offset:
        h = h + params["offset"].reshape(shape)
    return h


class _AxisNorm(Module):
    """``LayerNorm`` and ``RMSNorm``: normalise over ``axis``, centring when ``_center``."""

    _center = True

    def __post_init__(self):
        _check_hyperparameters(self)
        _check_axis(self)

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        del key
        check_floating(self, x)
        shape = tuple(x.shape)
        return _affine_params(self, tuple(shape[a] for a in _resolve_axes(self, shape)))

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Compare the normalised dimensions with those of the params, for a precise message."""
        check_floating(self, x)
        shape = tuple(jnp.shape(x))
        axes = _resolve_axes(self, shape)
        ref = params.get("scale", params.get("offset"))
        if ref is None or jnp.ndim(ref) != len(axes):
            return  # nothing to compare with, or malformed params the generic check reports
        want = tuple(jnp.shape(ref))
        if tuple(shape[a] for a in axes) == want:
            return
        if self.axis == -1:
            what = f"last dimension {want[0]}"
        elif isinstance(self.axis, int):
            what = f"dimension {want[0]} on axis {self.axis}"
        else:
            what = f"dimensions {want} on axes {self.axis}"
        raise ShapeError(
            self.layer_name(), f"expected input with {what} (set at init), got shape {shape}."
        )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        axes = _resolve_axes(self, x.shape)
        h = _standardize(x, axes, self.epsilon, self._center)
        return _scale_offset(self, params, h, axes).astype(x.dtype)


class LayerNorm(_AxisNorm):
    r"""Layer normalization: each example normalised over ``axis`` by its own statistics.

    .. math::
       y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \cdot \gamma + \beta, \qquad
       \mu = \operatorname{mean}_{\text{axis}}(x), \quad
       \sigma^2 = \operatorname{mean}_{\text{axis}}\big((x - \mu)^2\big)

    The variance is biased (divided by the count). Statistics are computed in float32 for
    lower-precision inputs (bfloat16, float16) and the output has the input's dtype.

    Args:
      epsilon: Added to the variance; ``1e-5`` is PyTorch's default (Flax uses ``1e-6``).
      use_scale: Learn ``scale`` (gamma), initialised to ones.
      use_offset: Learn ``offset`` (beta), initialised to zeros.
      axis: The axis, or tuple of axes, to normalise over. Negative axes count from the
        end, so they work for batched and unbatched inputs alike.

    Shapes:
      ``[..., features]`` to the same shape (default ``axis=-1``); other axes are batch
      axes. ``scale`` and ``offset`` have the shape of the normalised axes in input order:
      ``[features]`` by default, ``[height, width]`` for ``axis=(-2, -1)``.

    Raises:
      ShapeError: If the input lacks the axes, or their sizes differ from those at init.
      DTypeError: If the input is not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> from jnn import LayerNorm
      >>> ln = LayerNorm()
      >>> x = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
      >>> params = ln.init(jax.random.key(0), x)
      >>> params["scale"].shape, params["offset"].shape
      ((3,), (3,))
      >>> [round(v, 3) for v in ln.apply(params, x)[0].tolist()]
      [-1.225, 0.0, 1.225]
    """

    epsilon: float = 1e-5
    use_scale: bool = True
    use_offset: bool = True
    axis: int | tuple[int, ...] = -1

    _center = True


class RMSNorm(_AxisNorm):
    r"""Root-mean-square normalization: rescale each example by its RMS over ``axis``.

    Unlike ``LayerNorm`` it neither subtracts the mean nor, by default, adds an offset
    (Zhang & Sennrich, 2019):

    .. math::
       y = \frac{x}{\sqrt{\operatorname{mean}_{\text{axis}}(x^2) + \epsilon}} \cdot \gamma

    Statistics are computed in float32 for lower-precision inputs and the output has the
    input's dtype.

    Args:
      epsilon: Added to the mean square; ``1e-6`` as in Flax (PyTorch's ``RMSNorm``
        defaults to the dtype's machine epsilon).
      use_scale: Learn ``scale`` (gamma), initialised to ones.
      use_offset: Learn ``offset`` (beta), initialised to zeros; off by default.
      axis: The axis, or tuple of axes, to normalise over.

    Shapes:
      ``[..., features]`` to the same shape (default ``axis=-1``); ``scale`` (and
      ``offset``) have the shape of the normalised axes in input order.

    Raises:
      ShapeError: If the input lacks the axes, or their sizes differ from those at init.
      DTypeError: If the input is not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> from jnn import RMSNorm
      >>> rms = RMSNorm(epsilon=0.0)
      >>> x = jnp.array([[3.0, 4.0]])
      >>> params = rms.init(jax.random.key(0), x)
      >>> sorted(params)
      ['scale']
      >>> [round(v, 3) for v in rms.apply(params, x)[0].tolist()]  # RMS is sqrt(12.5)
      [0.849, 1.131]
    """

    epsilon: float = 1e-6
    use_scale: bool = True
    use_offset: bool = False
    axis: int | tuple[int, ...] = -1

    _center = False


class GroupNorm(Module):
    r"""Group normalization (Wu & He, 2018): statistics per example and channel group.

    The channels (last axis) are split into ``G`` groups of consecutive channels; each
    example is normalised by the mean and biased variance over its spatial positions and
    the channels of one group, as in PyTorch's ``GroupNorm``. One group is ``LayerNorm``
    over all non-batch axes; one channel per group is instance normalization.

    .. math::
       y_{n, s, c} = \frac{x_{n, s, c} - \mu_{n, g(c)}}{\sqrt{\sigma^2_{n, g(c)} + \epsilon}}
       \cdot \gamma_c + \beta_c, \qquad g(c) = \lfloor c \cdot G / C \rfloor

    Args:
      num_groups: Number of groups ``G``; it must divide the channel count. 32 (the
        paper's choice) when neither this nor ``group_size`` is given.
      group_size: Channels per group instead (``G = channels / group_size``); set one of
        the two, not both.
      epsilon: Added to the variance; ``1e-5`` is PyTorch's default (Flax uses ``1e-6``).
      use_scale: Learn a per-channel ``scale`` (gamma), initialised to ones.
      use_offset: Learn a per-channel ``offset`` (beta), initialised to zeros.

    Shapes:
      Channels last: ``[batch, *spatial, channels]`` (e.g. ``[batch, height, width,
      channels]``) to the same shape; zero or more spatial axes. The batch axis is
      required: the first axis is never reduced over, so for one example use ``x[None]``.
      ``scale`` and ``offset`` are ``[channels]``.

    Raises:
      ShapeError: If the input has rank below 2, its channel count is not divisible by
        the number of groups (or ``group_size``), or differs from the one at init.
      DTypeError: If the input is not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> from jnn import GroupNorm
      >>> gn = GroupNorm(num_groups=2)
      >>> x = jnp.arange(16.0).reshape(1, 2, 2, 4)  # [batch, height, width, channels]
      >>> params = gn.init(jax.random.key(0), x)
      >>> params["scale"].shape
      (4,)
      >>> y = gn.apply(params, x)
      >>> [round(float(y[..., :2].mean()), 3), round(float(y[..., :2].std()), 3)]
      [0.0, 1.0]
    """

    num_groups: int | None = None
    group_size: int | None = None
    epsilon: float = 1e-5
    use_scale: bool = True
    use_offset: bool = True

    def __post_init__(self):
        _check_hyperparameters(self)
        for field in ("num_groups", "group_size"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"GroupNorm: {field} must be a positive int, got {value!r}.")
        if self.num_groups is not None and self.group_size is not None:
            raise ValueError(
                f"GroupNorm: set num_groups or group_size, not both; got "
                f"num_groups={self.num_groups}, group_size={self.group_size}."
            )
        if self.num_groups is None and self.group_size is None:
            object.__setattr__(self, "num_groups", 32)

    def _groups(self, shape: Shape) -> int:
        """The number of groups for an input of this ``shape``, after checking it."""
        if len(shape) < 2:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least 2 ([batch, *spatial, channels]), got "
                f"shape {shape}. Hint: add a batch axis, e.g. x[None].",
            )
        channels = shape[-1]
        field, divisor = (
            ("num_groups", self.num_groups)
            if self.group_size is None
            else ("group_size", self.group_size)
        )
        if channels % divisor:
            raise ShapeError(
                self.layer_name(),
                f"expected a channel count divisible by {field}={divisor}, got {channels} "
                f"channels in input of shape {shape}.",
            )
        return self.num_groups if self.group_size is None else channels // self.group_size

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        del key
        check_floating(self, x)
        shape = tuple(x.shape)
        self._groups(shape)
        return _affine_params(self, shape[-1:])

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check rank and channel count against the params, for a precise message."""
        check_floating(self, x)
        shape = tuple(jnp.shape(x))
        ref = params.get("scale", params.get("offset"))
        if len(shape) >= 2 and ref is not None and jnp.ndim(ref) == 1:
            if shape[-1] != jnp.shape(ref)[0]:
                raise ShapeError(
                    self.layer_name(),
                    f"expected input with {jnp.shape(ref)[0]} channels on the last axis (set "
                    f"at init), got shape {shape}.",
                )
        self._groups(shape)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        groups = self._groups(x.shape)
        # [batch, *spatial, groups, group_size]: reduce over spatial axes and group_size.
        grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
        axes = (*range(1, grouped.ndim - 2), grouped.ndim - 1)
        h = _standardize(grouped, axes, self.epsilon, center=True).reshape(x.shape)
        return _scale_offset(self, params, h, (x.ndim - 1,)).astype(x.dtype)
