"""Windowed pooling over 1, 2 or 3 spatial axes, channels last: ``MaxPool``, ``AvgPool``.

A window slides over the input at a stride; each output reduces one window. Pools that
fix the output size instead are in ``_adaptive_pooling``. None has parameters: ``init``
checks the sample and returns ``{}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnn._module import Shape
from jnn._spatial import (
    Pairs,
    SpatialTransform,
    check_padding,
    check_spatial_input,
    freeze,
    freeze_padding,
    is_int,
    per_axis,
    resolve_padding,
)

__all__ = ["MaxPool", "AvgPool"]


def _tiles(x: jax.Array, window: Shape, stride: Shape, pads: Pairs) -> jax.Array | None:
    """``x`` as ``[batch, o_1, k_1, ..., o_n, k_n, channels]`` when the windows tile it.

    Windows tile the input when they do not overlap (``stride == window``) and nothing
    is padded; the remainder that fits no window is cropped, as VALID pooling drops it.
    Returns None otherwise.
    """
    if stride != window or any(lo or hi for lo, hi in pads):
        return None
    out = [size // k for size, k in zip(x.shape[1:-1], window, strict=True)]
    used = (x.shape[0], *(o * k for o, k in zip(out, window, strict=True)), x.shape[-1])
    if used != x.shape:
        x = jax.lax.slice(x, (0,) * x.ndim, used)
    pairs = [d for o, k in zip(out, window, strict=True) for d in (o, k)]
    return x.reshape(x.shape[0], *pairs, x.shape[-1])


def _window_axes(n: int) -> tuple[int, ...]:
    return tuple(range(2, 2 * n + 1, 2))


def _max_pool(
    x: jax.Array, window: Shape, stride: Shape, pads: Pairs, use_tiles: bool = True
) -> jax.Array:
    """Max over each window of ``x`` ``[batch, *spatial, channels]``; padding is -inf."""
    # On CPU the gradient of a plain reduction over tiles is about twice as fast as
    # reduce_window's select-and-scatter, and tiling windows are the common case.
    tiles = _tiles(x, window, stride, pads) if use_tiles else None
    if tiles is not None:
        return jnp.max(tiles, axis=_window_axes(len(window)))
    # A concrete -inf init lets JAX pick its reduce_window_max primitive and gradient.
    return jax.lax.reduce_window(
        x,
        np.array(-np.inf, x.dtype),
        jax.lax.max,
        (1, *window, 1),
        (1, *stride, 1),
        ((0, 0), *pads, (0, 0)),
    )


def _valid_counts(
    spatial: Shape, window: Shape, stride: Shape, pads: Pairs, out: Shape
) -> np.ndarray:
    """How many input (not padding) elements each window covers, ``[*out, 1]``."""
    counts = np.ones((), np.int64)
    for size, k, s, (lo, _), o in zip(spatial, window, stride, pads, out, strict=True):
        starts = np.arange(o) * s - lo
        axis = np.minimum(starts + k, size) - np.maximum(starts, 0)
        counts = np.multiply.outer(counts, axis)
    return counts[..., None]


def _avg_pool(
    x: jax.Array,
    window: Shape,
    stride: Shape,
    pads: Pairs,
    count_include_pad: bool = True,
    use_tiles: bool = True,
) -> jax.Array:
    """Mean over each window of ``x`` ``[batch, *spatial, channels]``; padding is zero."""
    tiles = _tiles(x, window, stride, pads) if use_tiles else None
    if tiles is not None:
        return jnp.mean(tiles, axis=_window_axes(len(window)))
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # accumulate half types in float32
    total = jax.lax.reduce_window(
        x.astype(dtype),
        np.array(0, dtype),
        jax.lax.add,
        (1, *window, 1),
        (1, *stride, 1),
        ((0, 0), *pads, (0, 0)),
    )
    if count_include_pad or not any(lo or hi for lo, hi in pads):
        count = np.array(math.prod(window), dtype)
    else:
        count = _valid_counts(x.shape[1:-1], window, stride, pads, total.shape[1:-1])
        count = count.astype(dtype)
    return (total / count).astype(x.dtype)


class _Pool(SpatialTransform):
    """What ``MaxPool`` and ``AvgPool`` share: hyperparameters, checks and geometry."""

    window: int | Sequence[int]
    stride: int | Sequence[int] | None = None
    padding: str | int | Sequence[int | tuple[int, int]] = "VALID"

    def __post_init__(self):
        name = type(self).__name__
        object.__setattr__(self, "window", freeze(self.window))
        object.__setattr__(self, "stride", freeze(self.stride))
        object.__setattr__(self, "padding", freeze_padding(self.padding))
        if not is_int(self.window) and not self.window:
            raise ValueError(
                f"{name}: window must be an int (1-D) or a tuple with one int per spatial "
                f"axis, got {self.window!r}."
            )
        window, _ = self._geometry()
        pads = check_padding(name, self.padding, self.spatial_ndim)
        if pads is not None and any(max(p) >= k for p, k in zip(pads, window, strict=True)):
            raise ValueError(
                f"{name}: padding must be smaller than the window on every axis, so that "
                f"every window overlaps the input; got padding={self.padding!r}, "
                f"window={self.window!r}."
            )

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes: ``len(window)``, or 1 for an int."""
        return 1 if is_int(self.window) else len(self.window)

    def _geometry(self) -> tuple[Shape, Shape]:
        """``window`` and ``stride``, one int per spatial axis."""
        name, n = type(self).__name__, self.spatial_ndim
        window = per_axis(name, "window", self.window, n, like="window")
        if self.stride is None:
            return window, window
        return window, per_axis(name, "stride", self.stride, n, like="window")

    def _check(self, x: jax.Array, init: bool = False) -> tuple[Shape, Shape, Pairs]:
        """Check ``x``; its window, stride and ``(low, high)`` padding per spatial axis."""
        window, stride = self._geometry()
        n = self.spatial_ndim
        spatial = check_spatial_input(self, x, n, init=init, size_field="window", example=window)
        pads = resolve_padding(
            self, self.padding, spatial, tuple(x.shape), window, stride, "the window"
        )
        return window, stride, pads

    def _transform(self, x: jax.Array, checked: tuple[Shape, Shape, Pairs]) -> jax.Array:
        return self._pool(x, *checked)


class MaxPool(_Pool):
    r"""Max pooling over 1, 2 or 3 spatial axes, channels last.

    The number of spatial axes is ``len(window)``; an int ``window`` means 1-D, so images
    need ``window=(2, 2)``. Each output is the maximum of one window of the input,
    per channel:

    .. math:: y_{o,c} = \max_{t} x_{o \cdot s + t - p_{lo},\, c}

    where positions outside the input (padding) count as :math:`-\infty`.

    When the windows tile the input (``stride == window`` and no padding, the usual
    ``MaxPool((2, 2))``), the input is reshaped to ``[batch, h / 2, 2, w / 2, 2,
    channels]`` and reduced over the window axes, whose backward pass is much faster on
    CPU than ``jax.lax.reduce_window``'s; otherwise ``reduce_window`` is used. Both give
    the same outputs. They differ only in the gradient when a window holds several equal
    maxima: the reshaped form splits the window's gradient equally among them, and
    ``reduce_window`` gives all of it to one of them (the first in row-major window
    order on CPU, like PyTorch).

    Args:
      window: Window size, an int (1-D) or one int per spatial axis.
      stride: Step between windows, an int or one per spatial axis; ``None`` (default)
        means ``window``, as in PyTorch and Keras.
      padding: ``"VALID"`` (default: no padding; the remainder that fits no window is
        dropped), ``"SAME"`` (output size ``ceil(in / stride)``; the odd extra padding
        goes on the high side, as in ``jax.lax`` and TensorFlow), an int ``p`` (``p`` on
        both sides of every axis), or one int or ``(low, high)`` pair per spatial axis.
        Padding must be smaller than the window on its axis, so every window overlaps
        the input. With integer padding the output size is PyTorch's
        ``(in + low + high - window) // stride + 1``.

    Shapes:
      ``[batch, *spatial, channels]`` to ``[batch, *out_spatial, channels]``, where
      ``spatial`` is ``[length]``, ``[height, width]`` or ``[depth, height, width]``.
      The batch-axis rule is ``Conv``'s: ``init`` takes a batch and refuses an input
      with one axis fewer (a grayscale batch ``(32, 28, 28)`` missing its channel axis
      would pass for one 28-channel image; add it with ``x[..., None]``); ``apply``
      also maps one unbatched example ``[*spatial, channels]`` to ``[*out_spatial,
      channels]``, so ``jax.vmap`` over examples works. With no parameters, a pool
      cannot tell the two apart at ``apply``; the check at ``init`` (of the pool, or of
      the model around it) is what catches the mistake.

    Raises:
      TypeError: At construction, for a hyperparameter of the wrong kind.
      ValueError: At construction, for invalid values: a window or stride that is not
        positive or not one per spatial axis, negative padding, padding not smaller
        than the window, a padding string other than ``"SAME"``/``"VALID"``.
      ShapeError: If the input's rank does not fit ``window`` (or, at init, lacks the
        batch axis), or a spatial axis (after padding) is smaller than the window.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import MaxPool
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)  # [batch, height, width, channels]
      >>> MaxPool((2, 2)).apply({}, x)[0, ..., 0].tolist()
      [[5.0, 7.0], [13.0, 15.0]]
      >>> MaxPool((3, 3), stride=2, padding="SAME").apply({}, x).shape
      (1, 2, 2, 1)
    """

    def _pool(self, x: jax.Array, window: Shape, stride: Shape, pads: Pairs) -> jax.Array:
        return _max_pool(x, window, stride, pads)


class AvgPool(_Pool):
    r"""Average pooling over 1, 2 or 3 spatial axes, channels last.

    The number of spatial axes is ``len(window)``; an int ``window`` means 1-D. Each
    output is the mean of one window of the input, per channel:

    .. math:: y_{o,c} = \frac{1}{n_o} \sum_{t} x_{o \cdot s + t - p_{lo},\, c}

    where positions outside the input (padding) count as zero. The divisor :math:`n_o`
    is ``prod(window)`` with integer padding and ``count_include_pad=True`` (PyTorch's
    default); with ``count_include_pad=False``, and always with ``"SAME"`` (as in Keras
    and TensorFlow), it is the number of input elements in the window, so padding does
    not pull border outputs towards zero.

    As in ``MaxPool``, tiling windows (``stride == window``, no padding) are computed
    as a reshape and a mean, and other windows with ``jax.lax.reduce_window``; the two
    agree up to float rounding.

    Args:
      window: Window size, an int (1-D) or one int per spatial axis.
      stride: Step between windows; ``None`` (default) means ``window``.
      padding: ``"VALID"`` (default), ``"SAME"``, an int, or one int or ``(low, high)``
        pair per spatial axis, as in ``MaxPool``.
      count_include_pad: With integer padding, whether padded zeros count in the
        divisor. Ignored with ``"SAME"`` (valid elements only) and ``"VALID"``.

    Shapes:
      ``[batch, *spatial, channels]`` to ``[batch, *out_spatial, channels]``, where
      ``spatial`` is ``[length]``, ``[height, width]`` or ``[depth, height, width]``;
      ``apply`` also maps one unbatched example ``[*spatial, channels]`` to
      ``[*out_spatial, channels]``, and ``init`` requires the batch axis, as in
      ``MaxPool``.

    Raises:
      TypeError: At construction, for a hyperparameter of the wrong kind.
      ValueError: At construction, for invalid values, as ``MaxPool``.
      ShapeError: As ``MaxPool``.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import AvgPool
      >>> x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(1, 5, 1)  # [batch, length, 1]
      >>> AvgPool(2).apply({}, x).ravel().tolist()  # VALID drops the 5
      [1.5, 3.5]
      >>> AvgPool(2, padding=(1,)).apply({}, x).ravel().tolist()
      [0.5, 2.5, 4.5]
      >>> AvgPool(2, padding=(1,), count_include_pad=False).apply({}, x).ravel().tolist()
      [1.0, 2.5, 4.5]
    """

    count_include_pad: bool = True

    def _pool(self, x: jax.Array, window: Shape, stride: Shape, pads: Pairs) -> jax.Array:
        include = self.count_include_pad and self.padding != "SAME"
        return _avg_pool(x, window, stride, pads, include)
