"""Pooling over 1, 2 or 3 spatial axes, channels last, and the layers that reshape.

``MaxPool`` and ``AvgPool`` slide a window; ``GlobalMaxPool`` and ``GlobalAvgPool``
reduce every spatial axis; ``Flatten`` and ``Reshape`` change the shape of each example.
None of them has parameters: ``init`` returns ``{}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import check_floating
from jnn._errors import ShapeError
from jnn._module import Module, Params, Shape

__all__ = ["MaxPool", "AvgPool", "GlobalMaxPool", "GlobalAvgPool", "Flatten", "Reshape"]

from jnn._spatial import _AXES, Pairs, _freeze, _is_int, _pairs, _per_axis


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


class _Pool(Module):
    """What ``MaxPool`` and ``AvgPool`` share: hyperparameters, checks and geometry."""

    window: int | Sequence[int]
    stride: int | Sequence[int] | None = None
    padding: str | int | Sequence[int | tuple[int, int]] = "VALID"

    def __post_init__(self):
        name = type(self).__name__
        for field in ("window", "stride", "padding"):
            value = getattr(self, field)
            if field == "padding" and isinstance(value, str):
                value = value.upper()
            object.__setattr__(self, field, _freeze(value))
        if not (_is_int(self.window) or (isinstance(self.window, tuple) and self.window)):
            raise ValueError(
                f"{name}: window must be an int (1-D) or a tuple with one int per spatial "
                f"axis, got {self.window!r}."
            )
        window, _, pads = self._geometry()
        if pads is not None and any(max(p) >= k for p, k in zip(pads, window, strict=True)):
            raise ValueError(
                f"{name}: padding must be smaller than the window on every axis, so that "
                f"every window overlaps the input; got padding={self.padding!r}, "
                f"window={self.window!r}."
            )

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes: ``len(window)``, or 1 for an int."""
        return 1 if _is_int(self.window) else len(self.window)

    def _geometry(self) -> tuple[Shape, Shape, Pairs | None]:
        """``window`` and ``stride`` per axis, and integer padding (None for SAME/VALID)."""
        name, n = type(self).__name__, self.spatial_ndim
        window = _per_axis(name, "window", self.window, n, like="window")
        stride = (
            window
            if self.stride is None
            else _per_axis(name, "stride", self.stride, n, like="window")
        )
        pads = None if self.padding in ("SAME", "VALID") else _pairs(name, self.padding, n)
        return window, stride, pads

    def _check_input(self, x: jax.Array) -> None:
        n, shape = self.spatial_ndim, tuple(x.shape)
        if x.ndim not in (n + 1, n + 2):
            axes = _AXES.get(n, ", ".join(f"spatial_{i}" for i in range(n)))
            hint = ""
            if x.ndim == n:
                hint = " Hint: add a channels axis, e.g. x[..., None]."
            elif x.ndim >= 3:
                m = x.ndim - 2
                hint = (
                    f" Hint: the number of spatial axes is len(window); for {m}-D inputs "
                    f"give {m} window sizes, e.g. window={(self._geometry()[0][0],) * m}."
                )
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank {n + 2} ([batch, {axes}, channels]) or {n + 1} "
                f"(unbatched), got shape {shape}.{hint}",
            )
        check_floating(self, x)

    def _pads(self, x: jax.Array, shape: Shape) -> tuple[Shape, Shape, Pairs]:
        """Window, stride and padding per spatial axis of batched ``x`` (given ``shape``)."""
        window, stride, pads = self._geometry()
        spatial = x.shape[1:-1]
        if self.padding == "SAME":
            pads = []
            for size, k, s in zip(spatial, window, stride, strict=True):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                pads.append((total // 2, total - total // 2))
            pads = tuple(pads)
        elif self.padding == "VALID":
            pads = ((0, 0),) * self.spatial_ndim
        padded = tuple(size + lo + hi for size, (lo, hi) in zip(spatial, pads, strict=True))
        if any(p < k for p, k in zip(padded, window, strict=True)):
            extra = f" (padded to {padded})" if padded != spatial else ""
            raise ShapeError(
                self.layer_name(),
                f"expected spatial size at least {window} (the window) with padding "
                f"{self.padding!r}, got shape {shape}{extra}.",
            )
        return window, stride, pads

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        self._check_input(x)
        shape, batched = tuple(x.shape), x.ndim == self.spatial_ndim + 2
        x = x if batched else x[None]
        y = self._pool(x, *self._pads(x, shape))
        return y if batched else y[0]


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
      An unbatched ``[*spatial, channels]`` gives ``[*out_spatial, channels]``.

    Raises:
      ValueError: At construction, for invalid hyperparameters.
      ShapeError: If the input's rank does not fit ``window``, or a spatial axis (after
        padding) is smaller than the window.
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
      ``spatial`` is ``[length]``, ``[height, width]`` or ``[depth, height, width]``.
      An unbatched ``[*spatial, channels]`` gives ``[*out_spatial, channels]``.

    Raises:
      ValueError: At construction, for invalid hyperparameters.
      ShapeError: If the input's rank does not fit ``window``, or a spatial axis (after
        padding) is smaller than the window.
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

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.count_include_pad, bool):
            raise ValueError(
                f"AvgPool: count_include_pad must be a bool, got {self.count_include_pad!r}."
            )

    def _pool(self, x: jax.Array, window: Shape, stride: Shape, pads: Pairs) -> jax.Array:
        include = self.count_include_pad and self.padding != "SAME"
        return _avg_pool(x, window, stride, pads, include)


class _GlobalPool(Module):
    """What ``GlobalMaxPool`` and ``GlobalAvgPool`` share."""

    keepdims: bool = False

    def __post_init__(self):
        if not isinstance(self.keepdims, bool):
            raise ValueError(
                f"{type(self).__name__}: keepdims must be a bool, got {self.keepdims!r}."
            )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least 3 ([batch, *spatial, channels]), got "
                f"shape {tuple(x.shape)}. Hint: an unbatched example needs a batch axis, "
                "e.g. x[None].",
            )
        check_floating(self, x)
        return self._reduce(x, axis=tuple(range(1, x.ndim - 1)), keepdims=self.keepdims)


class GlobalMaxPool(_GlobalPool):
    """Maximum over all spatial axes, per example and channel.

    Args:
      keepdims: Keep the spatial axes, with size 1.

    Shapes:
      ``[batch, *spatial, channels]`` (at least one spatial axis) to
      ``[batch, channels]``, or ``[batch, 1, ..., 1, channels]`` with ``keepdims``.
      The batch axis is required; under ``jax.vmap`` over examples, give each example a
      batch axis of 1.

    Raises:
      ShapeError: If the input has rank below 3.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import GlobalMaxPool
      >>> x = jnp.arange(24.0).reshape(2, 3, 2, 2)  # [batch, height, width, channels]
      >>> GlobalMaxPool().apply({}, x).tolist()
      [[10.0, 11.0], [22.0, 23.0]]
    """

    _reduce = staticmethod(jnp.max)


class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial axes, per example and channel (as before a ResNet's head).

    Args:
      keepdims: Keep the spatial axes, with size 1.

    Shapes:
      ``[batch, *spatial, channels]`` (at least one spatial axis) to
      ``[batch, channels]``, or ``[batch, 1, ..., 1, channels]`` with ``keepdims``.
      The batch axis is required; under ``jax.vmap`` over examples, give each example a
      batch axis of 1.

    Raises:
      ShapeError: If the input has rank below 3.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import GlobalAvgPool
      >>> x = jnp.arange(24.0).reshape(2, 3, 2, 2)  # [batch, height, width, channels]
      >>> GlobalAvgPool().apply({}, x).tolist()
      [[5.0, 6.0], [17.0, 18.0]]
      >>> GlobalAvgPool(keepdims=True).apply({}, x).shape
      (2, 1, 1, 2)
    """

    _reduce = staticmethod(jnp.mean)


class Flatten(Module):
    """Merge the axes from ``start_axis`` on into one, like PyTorch's ``nn.Flatten``.

    Args:
      start_axis: First axis to merge; negative counts from the end. The default, 1,
        keeps the batch axis. Under ``jax.vmap`` over examples the layer sees one
        example without its batch axis, so use ``start_axis=0`` there.

    Shapes:
      ``[batch, d_1, ..., d_k]`` to ``[batch, d_1 * ... * d_k]`` (``start_axis=1``).

    Raises:
      ValueError: At construction, if ``start_axis`` is not an int.
      ShapeError: If the input has no axis ``start_axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import Flatten
      >>> Flatten().apply({}, jnp.zeros((8, 7, 7, 16))).shape
      (8, 784)
    """

    start_axis: int = 1

    def __post_init__(self):
        if not _is_int(self.start_axis):
            raise ValueError(f"Flatten: start_axis must be an int, got {self.start_axis!r}.")
        object.__setattr__(self, "start_axis", int(self.start_axis))

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        start = self.start_axis
        need = start + 1 if start >= 0 else -start
        if x.ndim < need:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least {need} (axes from start_axis={start} on "
                f"are merged), got shape {tuple(x.shape)}.",
            )
        start %= x.ndim
        return x.reshape(*x.shape[:start], math.prod(x.shape[start:]))


class Reshape(Module):
    """Reshape each example (every axis after the batch axis), like Keras' ``Reshape``.

    Args:
      shape: The new shape of one example: positive ints, with at most one ``-1`` that
        takes the size the others leave.

    Shapes:
      ``[batch, d_1, ..., d_k]`` to ``[batch, *shape]``; the batch axis is kept.

    Raises:
      ValueError: At construction, for an invalid ``shape``.
      ShapeError: If an example's size does not fit ``shape``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import Reshape
      >>> Reshape((7, 7, -1)).apply({}, jnp.zeros((8, 784))).shape
      (8, 7, 7, 16)
    """

    shape: Sequence[int]

    def __post_init__(self):
        shape = _freeze(self.shape)
        if (
            not isinstance(shape, tuple)
            or not all(_is_int(d) and (d >= 1 or d == -1) for d in shape)
            or shape.count(-1) > 1
        ):
            raise ValueError(
                "Reshape: shape must be a tuple of positive ints with at most one -1, "
                f"got {self.shape!r}."
            )
        object.__setattr__(self, "shape", shape)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ShapeError(
                self.layer_name(),
                "expected input with a batch axis (rank at least 1), got shape ().",
            )
        size = math.prod(x.shape[1:])
        known = math.prod(d for d in self.shape if d != -1)
        if -1 in self.shape:
            fits, what = size % known == 0, f"a multiple of {known}"
        else:
            fits, what = size == known, f"{known}"
        if not fits:
            raise ShapeError(
                self.layer_name(),
                f"expected examples of {what} elements to reshape to {self.shape}, got shape "
                f"{tuple(x.shape)} ({size} elements per example).",
            )
        shape = tuple(size // known if d == -1 else d for d in self.shape)
        return x.reshape(x.shape[0], *shape)
