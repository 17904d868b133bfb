"""Convolutions over any number of spatial axes, channels last: ``Conv``, ``ConvTranspose``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_floating
from jnn._errors import ShapeError
from jnn._module import Module, Params, Shape
from jnn._scope import child_key

__all__ = ["Conv", "ConvTranspose"]

from jnn._spatial import _AXES, Pairs, _freeze, _is_int, _pairs, _per_axis


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
        for field in ("kernel_size", "stride", "padding", "dilation"):
            value = getattr(self, field)
            if field == "padding" and isinstance(value, str):
                value = value.upper()
            object.__setattr__(self, field, _freeze(value))
        if not _is_int(self.features) or self.features < 1:
            raise ValueError(f"{name}: features must be a positive int, got {self.features!r}.")
        if not _is_int(self.kernel_size) and not (
            isinstance(self.kernel_size, tuple) and len(self.kernel_size) >= 1
        ):
            raise ValueError(
                f"{name}: kernel_size must be an int (1-D) or a tuple with one int per "
                f"spatial axis, got {self.kernel_size!r}."
            )
        n = self.spatial_ndim
        _per_axis(name, "kernel_size", self.kernel_size, n)
        _per_axis(name, "stride", self.stride, n)
        _per_axis(name, "dilation", self.dilation, n)
        if self.padding not in ("SAME", "VALID"):
            _pairs(name, self.padding, n)
        if not _is_int(self.groups) or self.groups < 1:
            raise ValueError(f"{name}: groups must be a positive int, got {self.groups!r}.")
        if self.features % self.groups:
            raise ValueError(
                f"{name}: features ({self.features}) must be divisible by groups ({self.groups})."
            )

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes: ``len(kernel_size)``, or 1 for an int."""
        return 1 if _is_int(self.kernel_size) else len(self.kernel_size)

    def _geometry(self) -> tuple[Shape, Shape, Shape]:
        """``kernel_size``, ``stride`` and ``dilation``, one int per spatial axis."""
        name, n = type(self).__name__, self.spatial_ndim
        return tuple(
            _per_axis(name, field, getattr(self, field), n)
            for field in ("kernel_size", "stride", "dilation")
        )

    def _check_input(self, x: Any) -> Shape:
        """Check the rank and dtype of ``x``; return its spatial shape."""
        n, shape = self.spatial_ndim, tuple(jnp.shape(x))
        if len(shape) not in (n + 1, n + 2):
            axes = _AXES.get(n, ", ".join(f"spatial_{i}" for i in range(n)))
            hint = ""
            if len(shape) == n:
                hint = " Hint: add a channels axis, e.g. x[..., None]."
            elif len(shape) >= 3:
                m = len(shape) - 2
                hint = (
                    f" Hint: the number of spatial axes is len(kernel_size); for {m}-D inputs "
                    f"give {m} kernel sizes, e.g. kernel_size={(self._geometry()[0][0],) * m}."
                )
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank {n + 2} ([batch, {axes}, channels]) or {n + 1} "
                f"(unbatched), got shape {shape}.{hint}",
            )
        check_floating(self, x)
        return shape[-n - 1 : -1]

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        spatial = self._check_input(x)
        channels = x.shape[-1]
        if channels % self.groups:
            raise ShapeError(
                self.layer_name(),
                f"expected input channels divisible by groups={self.groups}, "
                f"got shape {tuple(x.shape)}.",
            )
        self._pads(spatial, tuple(x.shape))  # raises if the output would be empty
        kernel_size = self._geometry()[0]
        params = {
            "weight": self.w_init(
                child_key(key, "weight"),
                (*kernel_size, channels // self.groups, self.features),
                self.param_dtype,
            )
        }
        if self.use_bias:
            params["bias"] = self.b_init(child_key(key, "bias"), (self.features,), self.param_dtype)
        return params

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check ``x`` against the params before anything else, for a precise message."""
        self._check_input(x)
        weight = params.get("weight")
        if weight is None or jnp.ndim(weight) != self.spatial_ndim + 2:
            return  # the generic params check names what is missing
        channels = weight.shape[-2] * self.groups
        if jnp.shape(x)[-1] != channels:
            raise ShapeError(
                self.layer_name(),
                f"expected input with {channels} channels (set at init), "
                f"got shape {tuple(jnp.shape(x))}.",
            )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        batched = x.ndim == self.spatial_ndim + 2
        x = x if batched else x[None]
        weight = params["weight"]
        dtype = jnp.result_type(x, weight)
        pads = self._pads(x.shape[1:-1], tuple(x.shape))
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
        the high side, as in ``jax.lax`` and TensorFlow), ``"VALID"`` (no padding), an
        int ``p`` (``p`` zeros on both sides of every axis), or one int or
        ``(low, high)`` pair per spatial axis. Then, as in PyTorch, the output size is
        ``(in + low + high - dilation * (kernel_size - 1) - 1) // stride + 1``.
      dilation: Spacing between kernel taps (atrous convolution).
      groups: Number of groups (``feature_group_count``): input and output channels are
        split into ``groups`` blocks convolved separately. ``groups == in_channels`` is a
        depthwise convolution. ``features`` and ``in_channels`` must be multiples of it.
      use_bias: Whether to add a learned ``bias``.
      w_init: Initializer of ``weight`` (LeCun normal, fan-in ``prod(kernel_size) *
        in_channels / groups``).
      b_init: Initializer of ``bias`` (zeros).
      param_dtype: Dtype of the parameters. Input and weight are promoted to a common
        dtype before the convolution.

    Shapes:
      ``[batch, *spatial, in_channels]`` to ``[batch, *out_spatial, features]``, where
      ``spatial`` is ``[length]``, ``[height, width]`` or ``[depth, height, width]``.
      An unbatched ``[*spatial, in_channels]`` gives ``[*out_spatial, features]``.
      ``weight`` is ``[*kernel_size, in_channels // groups, features]`` and ``bias``
      ``[features]``. A PyTorch ``weight`` ``[features, in_channels // groups,
      *kernel_size]`` converts with ``w.permute(*range(2, 2 + n), 1, 0)`` (``n`` spatial
      axes).

    Raises:
      ValueError: At construction, for invalid hyperparameters.
      ShapeError: If the input's rank does not fit ``kernel_size``, its channels differ
        from init or are not a multiple of ``groups``, or the output would be empty.
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

    def _pads(self, spatial: Shape, shape: Shape) -> Pairs:
        """The zeros added to each spatial axis; raises if the output would be empty."""
        kernel_size, stride, dilation = self._geometry()
        extent = [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation, strict=True)]
        if self.padding == "SAME":
            pads = []
            for size, e, s in zip(spatial, extent, stride, strict=True):
                total = max((-(-size // s) - 1) * s + e - size, 0)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        elif self.padding == "VALID":
            pads = ((0, 0),) * self.spatial_ndim
        else:
            pads = _pairs(type(self).__name__, self.padding, self.spatial_ndim)
        padded = tuple(size + lo + hi for size, (lo, hi) in zip(spatial, pads, strict=True))
        if any(p < e for p, e in zip(padded, extent, strict=True)):
            raise ShapeError(
                self.layer_name(),
                f"expected spatial size at least {tuple(extent)} (the dilated kernel) after "
                f"padding {self.padding!r}, got shape {shape} (padded to {padded}).",
            )
        return pads

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


class ConvTranspose(_ConvBase):
    r"""Transposed convolution ("deconvolution"): the gradient of ``Conv`` for its input.

    Each input element, times the kernel, is added into the output at ``stride`` times
    its position; then ``padding`` is cropped from both ends of every axis and
    ``output_padding`` zeros extend the high end. For an input position ``i``, a tap
    ``t``, input channel ``c`` and feature ``f`` in the same group:

    .. math:: y_{i \cdot s + t \cdot d - p_{lo},\, f} \mathrel{+}= x_{i,c}\, W_{t,\,
       c - g C / G,\, f}

    With an int ``padding`` ``p`` the output size is PyTorch's:
    ``(in - 1) * stride - 2 * p + dilation * (kernel_size - 1) + output_padding + 1``.

    Args:
      features: Number of output channels.
      kernel_size: Window size, an int (1-D) or one int per spatial axis.
      stride: Upsampling factor, an int or one per spatial axis.
      padding: ``"SAME"`` (output size ``in * stride``: the gradient of a ``"SAME"``
        ``Conv``), ``"VALID"`` (``p = 0``), an int ``p`` cropped from both sides of
        every axis, or one int or ``(low, high)`` pair per spatial axis.
      output_padding: Zeros added on the high side of each axis (an int or one per axis),
        each smaller than ``max(stride, dilation)`` on its axis. It picks among the input
        sizes a strided ``Conv`` maps to the same output size. Must be 0 with ``"SAME"``.
      dilation: Spacing between kernel taps.
      groups: Number of groups, as in ``Conv``.
      use_bias: Whether to add a learned ``bias``.
      w_init: Initializer of ``weight`` (LeCun normal).
      b_init: Initializer of ``bias`` (zeros).
      param_dtype: Dtype of the parameters.

    Shapes:
      ``[batch, *spatial, in_channels]`` to ``[batch, *out_spatial, features]``, where
      ``spatial`` is ``[length]``, ``[height, width]`` or ``[depth, height, width]``;
      unbatched ``[*spatial, in_channels]`` gives ``[*out_spatial, features]``.
      ``weight`` is ``[*kernel_size, in_channels // groups, features]``, the layout of
      ``Conv``, and ``bias`` is ``[features]``. PyTorch's ``weight`` ``[in_channels,
      features // groups, *kernel_size]`` (no spatial flip is needed) converts with
      ``w.permute(*range(2, 2 + n), 0, 1)`` for ``groups=1`` (``n`` spatial axes), and
      in general with ``w.reshape(groups, in_channels // groups, features // groups,
      *kernel_size).permute(*range(3, 3 + n), 1, 0, 2).reshape(*kernel_size,
      in_channels // groups, features)``. Flax's ``ConvTranspose`` (with its default
      ``transpose_kernel=False``) gives the same results with the kernel's spatial axes
      flipped, for ``"SAME"``, and for ``"VALID"`` when ``kernel_size >= stride``.

    Raises:
      ValueError: At construction, for invalid hyperparameters.
      ShapeError: As ``Conv``, and if ``padding`` crops the whole output.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import ConvTranspose
      >>> up = ConvTranspose(8, kernel_size=(4, 4), stride=2, padding=1)
      >>> x = jnp.zeros((2, 7, 7, 16))  # [batch, height, width, channels]
      >>> params = up.init(jax.random.key(0), x)
      >>> params["weight"].shape
      (4, 4, 16, 8)
      >>> up.apply(params, x).shape  # (7 - 1) * 2 - 2 * 1 + (4 - 1) + 1 = 14
      (2, 14, 14, 8)
    """

    features: int
    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: str | int | Sequence[int | tuple[int, int]] = "SAME"
    output_padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    w_init: Callable = initializers.lecun_normal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "output_padding", _freeze(self.output_padding))
        super().__post_init__()
        name = type(self).__name__
        extra = _per_axis(name, "output_padding", self.output_padding, self.spatial_ndim, 0)
        _, stride, dilation = self._geometry()
        if any(o >= max(s, d) for o, s, d in zip(extra, stride, dilation, strict=True)):
            raise ValueError(
                f"{name}: output_padding must be smaller than max(stride, dilation) on "
                f"every axis, got output_padding={self.output_padding!r}, "
                f"stride={self.stride!r}, dilation={self.dilation!r}."
            )
        if self.padding == "SAME" and any(extra):
            raise ValueError(
                f"{name}: output_padding must be 0 with padding 'SAME' (whose output size "
                f"is in * stride), got {self.output_padding!r}. Use an int padding instead."
            )

    def _pads(self, spatial: Shape, shape: Shape) -> Pairs:
        """What is cropped from each axis, ``(low, high)``, before ``output_padding``."""
        kernel_size, stride, dilation = self._geometry()
        extent = [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation, strict=True)]
        if self.padding == "SAME":
            pads = []
            for e, s in zip(extent, stride, strict=True):
                # The crop that undoes a "SAME" Conv's padding; negative extends.
                total = e - s
                pads.append((total // 2, total - total // 2) if total >= 0 else (0, total))
            pads = tuple(pads)
        elif self.padding == "VALID":
            pads = ((0, 0),) * self.spatial_ndim
        else:
            pads = _pairs(type(self).__name__, self.padding, self.spatial_ndim)
        extra = _per_axis("", "", self.output_padding, self.spatial_ndim, 0)
        out = tuple(
            (size - 1) * s + e - lo - hi + o
            for size, s, e, (lo, hi), o in zip(spatial, stride, extent, pads, extra, strict=True)
        )
        if min(out) < 1:
            raise ShapeError(
                self.layer_name(),
                f"padding {self.padding!r} crops the whole output (size {out}) of an input "
                f"of shape {shape}; use a smaller padding or a larger input.",
            )
        return pads

    def _convolve(self, x: jax.Array, weight: jax.Array, pads: Pairs) -> jax.Array:
        kernel_size, stride, dilation = self._geometry()
        n = self.spatial_ndim
        extra = _per_axis("", "", self.output_padding, n, 0)
        # A stride-1 convolution of the input spread out by `stride` (lhs_dilation) with
        # the flipped kernel; padding d * (k - 1) minus the crop gives the scatter above.
        conv_pads = [
            (d * (k - 1) - lo, d * (k - 1) - hi + o)
            for k, d, (lo, hi), o in zip(kernel_size, dilation, pads, extra, strict=True)
        ]
        return jax.lax.conv_general_dilated(
            x,
            jnp.flip(weight, axis=tuple(range(n))),
            window_strides=(1,) * n,
            padding=conv_pads,
            lhs_dilation=stride,
            rhs_dilation=dilation,
            dimension_numbers=_dimension_numbers(n),
            feature_group_count=self.groups,
        )
