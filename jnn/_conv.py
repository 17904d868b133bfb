"""Convolution over any number of spatial axes, channels last: ``Conv``, and the base it
shares with ``ConvTranspose`` (hyperparameter checks, init, the input checks, apply)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating_dtype, check_positive_int
from jnn._errors import ShapeError
from jnn._module import Module, Params, Shape
from jnn._scope import child_key
from jnn._spatial import (
    Pairs,
    batch_one,
    check_padding,
    check_spatial_input,
    freeze,
    freeze_padding,
    is_int,
    per_axis,
    resolve_padding,
)

__all__ = ["Conv"]


def _dimension_numbers(n: int) -> jax.lax.ConvDimensionNumbers:
    # (batch, feature, *spatial) for the input and output, (out, in, *spatial) for the
    # weight: the axis positions of the [batch, *spatial, channels] and
    # [*kernel_size, in, out] layouts.
    spatial = tuple(range(1, n + 1))
    return jax.lax.ConvDimensionNumbers(
        (0, n + 1, *spatial), (n + 1, n, *range(n)), (0, n + 1, *spatial)
    )


class _ConvBase(Module):
    """What ``Conv`` and ``ConvTranspose`` share: hyperparameter checks, init and apply."""

    def __post_init__(self):
        name = type(self).__name__
        for field in ("kernel_size", "stride", "dilation"):
            object.__setattr__(self, field, freeze(getattr(self, field)))
        object.__setattr__(self, "padding", freeze_padding(self.padding))
        check_positive_int(self, "features", self.features)
        if not is_int(self.kernel_size) and not self.kernel_size:
            raise ValueError(
                f"{name}: kernel_size must be an int (1-D) or a tuple with one int per "
                f"spatial axis, got {self.kernel_size!r}."
            )
        n = self.spatial_ndim
        per_axis(name, "kernel_size", self.kernel_size, n)
        per_axis(name, "stride", self.stride, n)
        per_axis(name, "dilation", self.dilation, n)
        causal = isinstance(self, Conv)  # ConvTranspose has no causal padding
        if self.padding == "CAUSAL" and not causal:
            raise ValueError(f"{name}: padding='causal' is for Conv, not {name}.")
        if self.padding == "CAUSAL" and n != 1:
            raise ValueError(
                f"{name}: padding='causal' is for 1-D convolutions over time (Conv with one "
                f"kernel size), got {n} spatial axes. Hint: give (low, high) pairs per axis, "
                "e.g. ((k - 1, 0), ...)."
            )
        if self.padding != "CAUSAL":
            strings = "'SAME', 'VALID', 'CAUSAL' (1-D)" if causal else "'SAME', 'VALID'"
            check_padding(name, self.padding, n, strings)
        check_positive_int(self, "groups", self.groups)
        if self.features % self.groups:
            raise ValueError(
                f"{name}: features ({self.features}) must be divisible by groups ({self.groups})."
            )
        check_floating_dtype(self, "param_dtype", self.param_dtype)

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes: ``len(kernel_size)``, or 1 for an int."""
        return 1 if is_int(self.kernel_size) else len(self.kernel_size)

    def _geometry(self) -> tuple[Shape, Shape, Shape]:
        """``kernel_size``, ``stride`` and ``dilation``, one int per spatial axis."""
        name, n = type(self).__name__, self.spatial_ndim
        return tuple(
            per_axis(name, field, getattr(self, field), n)
            for field in ("kernel_size", "stride", "dilation")
        )

    def _check_input(self, x: Any, init: bool = False) -> Shape:
        """Check the rank and dtype of ``x``; return its spatial shape."""
        kernel_size = self._geometry()[0]
        return check_spatial_input(
            self, x, self.spatial_ndim, init=init, size_field="kernel_size", example=kernel_size
        )

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        spatial = self._check_input(x, init=True)
        channels = x.shape[-1]
        if channels % self.groups:
            raise ShapeError(
                self.layer_name(),
                f"expected input channels divisible by groups={self.groups}, "
                f"got shape {tuple(x.shape)}.",
            )
        self._pads(spatial, tuple(x.shape))  # raises if the output would be empty
        kernel_size = self._geometry()[0]
        fan_in = self._fan_in(channels)
        params = {
            "weight": initializers.initialize(
                self.w_init,
                child_key(key, "weight"),
                (*kernel_size, channels // self.groups, self.features),
                self.param_dtype,
                fan_in=fan_in,
            )
        }
        if self.use_bias:
            params["bias"] = initializers.initialize(
                self.b_init,
                child_key(key, "bias"),
                (self.features,),
                self.param_dtype,
                fan_in=fan_in,
            )
        return params

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check ``x`` against the params before anything else, for a precise message."""
        spatial = self._check_input(x)
        shape = tuple(jnp.shape(x))
        self._pads(spatial, shape)
        weight = params.get("weight")
        if weight is None or jnp.ndim(weight) != self.spatial_ndim + 2:
            return  # the generic params check names what is missing
        channels = weight.shape[-2] * self.groups
        if shape[-1] != channels:
            hint = ""
            if len(shape) == self.spatial_ndim + 1:
                hint = (
                    f" Hint: read as one unbatched example with {shape[-1]} channels; if "
                    "this is a batch without its channel axis, add it: x[..., None]."
                )
            raise ShapeError(
                self.layer_name(),
                f"expected input with {channels} channels (set at init), got shape {shape}.{hint}",
            )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        x, batched = batch_one(jnp.asarray(x), self.spatial_ndim)
        weight = params["weight"]
        dtype = jnp.result_type(x, weight)
        pads = self._pads(x.shape[1:-1], tuple(x.shape if batched else x.shape[1:]))
        y = self._convolve(x.astype(dtype), weight.astype(dtype), pads)
        if self.use_bias:
            y = y + params["bias"]
        return y if batched else y[0]


class Conv(_ConvBase):
    r"""Convolution over 1, 2 or 3 (or more) spatial axes, channels last.

    The number of spatial axes is ``len(kernel_size)``; an int ``kernel_size`` means a
    1-D convolution (as in Flax), so images need ``kernel_size=(3, 3)``. For each output
    position ``o`` and feature ``f`` in group ``g``:

    .. math::
       y_{o,f} = b_f + \sum_{t} \sum_{c \in g} x_{o \cdot s + t \cdot d - p_{lo},\, c}\,
       W_{t,\, c - g C / G,\, f}

    (cross-correlation, like every deep-learning library), with zeros outside the input.

    Args:
      features: Number of output channels.
      kernel_size: Window size, an int (1-D) or one int per spatial axis.
      stride: Step of the window, an int or one per spatial axis.
      padding: ``"SAME"`` (output size ``ceil(in / stride)``; the odd extra zero goes on
        the high side, as in ``jax.lax`` and TensorFlow), ``"VALID"`` (no padding),
        ``"CAUSAL"`` (1-D only, as Keras' ``Conv1D``: all ``dilation * (kernel_size -
        1)`` zeros before the sequence, so output ``t`` sees inputs ``<= t`` only; output
        size ``ceil(in / stride)``; for WaveNet-style temporal networks), an int ``p``
        (``p`` zeros on both sides of every axis), or one int or ``(low, high)`` pair per
        spatial axis. Then, as in PyTorch, the output size is
        ``(in + low + high - dilation * (kernel_size - 1) - 1) // stride + 1``. Strings
        are case-insensitive.
      dilation: Spacing between kernel taps (atrous convolution).
      groups: Number of groups (``feature_group_count``): input and output channels are
        split into ``groups`` blocks convolved separately. ``groups == in_channels`` is a
        depthwise convolution. ``features`` and ``in_channels`` must be multiples of it.
      use_bias: Whether to add a learned ``bias``.
      w_init: Initializer of ``weight`` (LeCun normal, whose fan-in it reads from the
        weight's shape: ``prod(kernel_size) * in_channels / groups``).
      b_init: Initializer of ``bias`` (zeros). Both initializers receive PyTorch's
        fan-in, ``in_channels // groups * prod(kernel_size)``, when they take it, so
        ``jnn.initializers.pytorch_default()`` gives ``torch.nn.ConvNd``'s initial
        distribution.
      param_dtype: Floating-point dtype of the parameters. Input and weight are
        promoted to a common dtype before the convolution.

    Shapes:
      ``init`` takes a batch ``[batch, *spatial, in_channels]``, where ``spatial`` is
      ``[length]``, ``[height, width]`` or ``[depth, height, width]``, and refuses an
      input with one axis fewer: a grayscale batch ``(32, 28, 28)`` would otherwise pass
      for one 28-channel image (add the channel axis, ``x[..., None]``, or for a single
      example the batch axis, ``x[None]``). ``apply`` maps ``[batch, *spatial,
      in_channels]`` to ``[batch, *out_spatial, features]``, and one unbatched example
      ``[*spatial, in_channels]`` to ``[*out_spatial, features]``, so ``jax.vmap`` over
      examples works; the channel count set at init still catches a missing channel
      axis. ``weight`` is ``[*kernel_size, in_channels // groups, features]`` and
      ``bias`` ``[features]``. A PyTorch ``weight`` ``[features, in_channels // groups,
      *kernel_size]`` converts with ``w.permute(*range(2, 2 + n), 1, 0)`` (``n`` spatial
      axes).

    Raises:
      TypeError: At construction, for a hyperparameter of the wrong kind (a float
        ``kernel_size``, an integer ``param_dtype``).
      ValueError: At construction, for invalid values: sizes, strides or dilations that
        are not positive or not one per spatial axis, negative padding, a padding
        string other than ``"SAME"``/``"VALID"``/``"CAUSAL"`` (or ``"CAUSAL"`` with
        more than one spatial axis), ``features`` not divisible by ``groups``.
      ShapeError: If the input's rank does not fit ``kernel_size`` (or, at init, lacks
        the batch axis), its channels differ from init or are not a multiple of
        ``groups``, or the padded input is smaller than the dilated kernel.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import Conv
      >>> conv = Conv(16, kernel_size=(3, 3), stride=2)
      >>> x = jnp.zeros((8, 28, 28, 3))  # [batch, height, width, channels]
      >>> params = conv.init(jax.random.key(0), x)
      >>> params["weight"].shape, params["bias"].shape
      ((3, 3, 3, 16), (16,))
      >>> conv.apply(params, x).shape
      (8, 14, 14, 16)
    """

    features: int
    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: str | int | Sequence[int | tuple[int, int]] = "SAME"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    w_init: Callable = initializers.lecun_normal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    def _fan_in(self, channels: int) -> int:
        """PyTorch's fan-in of ``torch.nn.ConvNd``: ``in_channels // groups * prod(kernel)``."""
        return channels // self.groups * math.prod(self._geometry()[0])

    def _pads(self, spatial: Shape, shape: Shape) -> Pairs:
        """The zeros added to each spatial axis; raises if the output would be empty."""
        kernel_size, stride, dilation = self._geometry()
        extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation, strict=True))
        padding = self.padding
        if padding == "CAUSAL":  # every zero before the sequence: output t sees inputs <= t
            padding = ((extent[0] - 1, 0),)
        return resolve_padding(self, padding, spatial, shape, extent, stride, "the dilated kernel")

    def _convolve(self, x: jax.Array, weight: jax.Array, pads: Pairs) -> jax.Array:
        _, stride, dilation = self._geometry()
        return jax.lax.conv_general_dilated(
            x,
            weight,
            window_strides=stride,
            padding=pads,
            rhs_dilation=dilation,
            dimension_numbers=_dimension_numbers(self.spatial_ndim),
            feature_group_count=self.groups,
        )
