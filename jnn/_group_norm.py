"""``GroupNorm`` and ``InstanceNorm``: each example normalised per group of channels (one
channel per group for instance norm), with no state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating, check_positive_int
from jnn._errors import ShapeError
from jnn._module import Module, Params, Shape
from jnn._norm import _affine_params, _check_norm_hyperparameters, _scale_offset, _standardize

__all__ = ["GroupNorm", "InstanceNorm"]


class _GroupedNorm(Module):
    """What ``GroupNorm`` and ``InstanceNorm`` share: statistics per example over the
    spatial axes and a group of channels; ``_groups(shape)`` checks the input's shape and
    gives the number of groups."""

    _min_rank = 2

    def _groups(self, shape: Shape) -> int:
        raise NotImplementedError

    def _check_rank(
        self, shape: Shape, hint: str = " Hint: add a batch axis, e.g. x[None]."
    ) -> None:
        if len(shape) < self._min_rank:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least {self._min_rank} ([batch, *spatial, "
                f"channels]), got shape {shape}.{hint}",
            )

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        check_floating(self, x)
        shape = tuple(x.shape)
        self._groups(shape)
        return _affine_params(self, key, shape[-1:])

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


class GroupNorm(_GroupedNorm):
    r"""Group normalization (Wu & He, 2018): statistics per example and channel group.

    The channels (last axis) are split into ``G`` groups of consecutive channels; each
    example is normalised by the mean and biased variance over its spatial positions and
    the channels of one group, as in PyTorch's ``GroupNorm``. One group is ``LayerNorm``
    over all non-batch axes; one channel per group is instance normalization.

    .. math::
       y_{n, s, c} = \frac{x_{n, s, c} - \mu_{n, g(c)}}{\sqrt{\sigma^2_{n, g(c)} + \epsilon}}
       \cdot \gamma_c + \beta_c, \qquad g(c) = \lfloor c \cdot G / C \rfloor

    Statistics are computed in the input's dtype, at least float32; the output has the
    input's dtype.

    Args:
      num_groups: Number of groups ``G``; it must divide the channel count. 32 (the
        paper's choice) when neither this nor ``group_size`` is given.
      group_size: Channels per group instead (``G = channels / group_size``); set one of
        the two, not both.
      epsilon: Added to the variance; ``1e-5`` is PyTorch's default (Flax uses ``1e-6``).
      use_scale: Learn a per-channel ``scale`` (gamma).
      use_offset: Learn a per-channel ``offset`` (beta).
      scale_init: Initializer of ``scale`` (ones).
      offset_init: Initializer of ``offset`` (zeros).
      param_dtype: Dtype of ``scale`` and ``offset``.

    Shapes:
      Channels last: ``[batch, *spatial, channels]`` (e.g. ``[batch, height, width,
      channels]``) to the same shape; zero or more spatial axes. The batch axis is
      required by ``init`` and ``apply`` alike: the first axis is never reduced over, so
      for one example use ``x[None]``. ``scale`` and ``offset`` are ``[channels]``.

    Raises:
      ShapeError: If the input has rank below 2, its channel count is not divisible by
        the number of groups (or ``group_size``), or differs from the one at init.
      DTypeError: If the input is not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> gn = jnn.GroupNorm(num_groups=2)
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
    scale_init: Callable = initializers.ones
    offset_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        _check_norm_hyperparameters(self)
        for field in ("num_groups", "group_size"):
            value = getattr(self, field)
            if value is not None:
                check_positive_int(self, field, value)
        if self.num_groups is not None and self.group_size is not None:
            raise ValueError(
                f"GroupNorm: set num_groups or group_size, not both; got "
                f"num_groups={self.num_groups}, group_size={self.group_size}."
            )
        if self.num_groups is None and self.group_size is None:
            object.__setattr__(self, "num_groups", 32)

    def _groups(self, shape: Shape) -> int:
        """The number of groups for an input of this ``shape``, after checking it."""
        self._check_rank(shape)
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


class InstanceNorm(_GroupedNorm):
    r"""Instance normalization (Ulyanov et al., 2016): each example and channel normalised
    over its spatial positions, with no state; style transfer and GAN generators use it.

    .. math::
       y_{n, s, c} = \frac{x_{n, s, c} - \mu_{n, c}}{\sqrt{\sigma^2_{n, c} + \epsilon}}
       \cdot \gamma_c + \beta_c

    It is ``GroupNorm(group_size=1)``, and PyTorch's ``nn.InstanceNorm1d/2d/3d`` with
    ``affine=True`` (PyTorch's default is ``affine=False``: ``use_scale=False,
    use_offset=False`` here) and without running statistics, on channels-last input. The
    mean and biased variance are computed in the input's dtype, at least float32.

    Args:
      epsilon: Added to the variance (``1e-5``, PyTorch's default).
      use_scale: Learn a per-channel ``scale`` (gamma).
      use_offset: Learn a per-channel ``offset`` (beta).
      scale_init: Initializer of ``scale`` (ones).
      offset_init: Initializer of ``offset`` (zeros).
      param_dtype: Dtype of ``scale`` and ``offset``.

    Shapes:
      ``[batch, *spatial, channels]`` with at least one spatial axis, to the same shape;
      ``scale`` and ``offset`` are ``[channels]``. Without a spatial axis every channel
      is one value, which normalises to zero, so that is refused.

    Raises:
      ShapeError: If the input has no spatial axis, or its channel count differs from
        the one at init.
      DTypeError: If the input is not real floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> norm = jnn.InstanceNorm()
      >>> x = jnp.arange(16.0).reshape(2, 2, 2, 2)  # [batch, height, width, channels]
      >>> y = norm.apply(norm.init(jax.random.key(0), x), x)
      >>> [round(float(y[1, ..., 0].mean()), 3), round(float(y[1, ..., 0].std()), 3)]
      [0.0, 1.0]
    """

    epsilon: float = 1e-5
    use_scale: bool = True
    use_offset: bool = True
    scale_init: Callable = initializers.ones
    offset_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    _min_rank = 3

    def __post_init__(self):
        _check_norm_hyperparameters(self)

    def _groups(self, shape: Shape) -> int:
        """One group per channel, after checking the rank."""
        self._check_rank(
            shape,
            " Hint: without a spatial axis each channel is a single value, which normalises "
            "to 0; for one example add the batch axis, e.g. x[None].",
        )
        return shape[-1]
