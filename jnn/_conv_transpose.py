"""Transposed convolution over any number of spatial axes, channels last: ``ConvTranspose``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._conv import _ConvBase, _dimension_numbers
from jnn._errors import ShapeError
from jnn._module import Shape
from jnn._spatial import Pairs, freeze, padding_pairs, per_axis

__all__ = ["ConvTranspose"]


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
      w_init: Initializer of ``weight`` (LeCun normal, fan-in read from the weight's
        shape).
      b_init: Initializer of ``bias`` (zeros). Both receive PyTorch's fan-in of
        ``torch.nn.ConvTransposeNd``, ``features // groups * prod(kernel_size)`` (read
        from its weight ``[in_channels, features // groups, *kernel_size]``), when they
        take it, so ``jnn.initializers.pytorch_default()`` gives PyTorch's initial
        distribution.
      param_dtype: Floating-point dtype of the parameters.

    Shapes:
      As ``Conv``: ``init`` takes a batch ``[batch, *spatial, in_channels]`` and refuses
      an input with one axis fewer; ``apply`` maps ``[batch, *spatial, in_channels]`` to
      ``[batch, *out_spatial, features]``, where ``spatial`` is ``[length]``, ``[height,
      width]`` or ``[depth, height, width]``, and an unbatched ``[*spatial,
      in_channels]`` to ``[*out_spatial, features]``. ``weight`` is ``[*kernel_size,
      in_channels // groups, features]``, the layout of ``Conv``, and ``bias`` is
      ``[features]``. PyTorch's ``weight`` ``[in_channels, features // groups,
      *kernel_size]`` (no spatial flip is needed) converts with
      ``w.permute(*range(2, 2 + n), 0, 1)`` for ``groups=1`` (``n`` spatial axes), and
      in general with ``w.reshape(groups, in_channels // groups, features // groups,
      *kernel_size).permute(*range(3, 3 + n), 1, 0, 2).reshape(*kernel_size,
      in_channels // groups, features)``. Flax's ``ConvTranspose`` (with its default
      ``transpose_kernel=False``) gives the same results with the kernel's spatial axes
      flipped, for ``"SAME"``, and for ``"VALID"`` when ``kernel_size >= stride``.

    Raises:
      TypeError: At construction, for a hyperparameter of the wrong kind.
      ValueError: At construction, for invalid values, as ``Conv``, and an
        ``output_padding`` not below ``max(stride, dilation)`` or nonzero with ``"SAME"``.
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
        object.__setattr__(self, "output_padding", freeze(self.output_padding))
        super().__post_init__()
        name = type(self).__name__
        extra = per_axis(name, "output_padding", self.output_padding, self.spatial_ndim, 0)
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

    def _fan_in(self, channels: int) -> int:
        """PyTorch's fan-in of ``torch.nn.ConvTransposeNd``, read from its weight
        ``[in_channels, features // groups, *kernel]``: ``features // groups * prod(kernel)``."""
        del channels
        return self.features // self.groups * math.prod(self._geometry()[0])

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
            pads = padding_pairs(type(self).__name__, self.padding, self.spatial_ndim)
        extra = per_axis("", "", self.output_padding, self.spatial_ndim, 0)
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
        extra = per_axis("", "", self.output_padding, n, 0)
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
