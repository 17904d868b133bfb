"""Pooling to a fixed output size, channels last: the adaptive pools (any size per
spatial axis, as ``torch.nn.AdaptiveAvgPool2d``) and the global pools (size 1, the
spatial axes dropped). None has parameters: ``init`` checks the sample and returns ``{}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import check_floating
from jnn._errors import ShapeError
from jnn._module import Module, Params, Shape
from jnn._spatial import SpatialTransform, check_spatial_input, freeze, is_int

__all__ = ["AdaptiveAvgPool", "AdaptiveMaxPool", "GlobalMaxPool", "GlobalAvgPool"]


def adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's bins of an axis of ``size`` pooled to ``out``: bin ``i`` covers
    ``[floor(i * size / out), ceil((i + 1) * size / out))``."""
    i = np.arange(out)
    return (i * size) // out, -(-((i + 1) * size) // out)


# Max pooling to at most this many bins per axis takes one slice per bin; to more (a
# large upsampling, say), one gather, so the program stays small.
_MAX_SLICES = 32


def _pool_axis(x: jax.Array, axis: int, out: int, kind: str) -> jax.Array:
    """Pool axis ``axis`` of ``x`` to ``out`` bins; max or mean over each bin."""
    size = x.shape[axis]
    if out == size:
        return x
    reduce = jnp.max if kind == "max" else jnp.mean
    if size % out == 0:  # equal bins that tile the axis: a reshape and a reduction
        x = x.reshape(*x.shape[:axis], out, size // out, *x.shape[axis + 1 :])
        return reduce(x, axis=axis + 1)
    starts, ends = adaptive_bins(size, out)
    if kind == "max" and out <= _MAX_SLICES:
        # One slice per bin: on CPU its gradient is about 3 times as fast as the
        # scatter-add that is the gradient of the gather below.
        bins = [
            jnp.max(jax.lax.slice_in_dim(x, int(a), int(b), axis=axis), axis, keepdims=True)
            for a, b in zip(starts, ends, strict=True)
        ]
        return jnp.concatenate(bins, axis=axis)
    lengths = ends - starts
    taps = np.arange(lengths.max())
    # [out, taps] input positions; a short bin repeats its last element, which changes
    # neither its max nor (masked below) its mean, and gets no extra gradient.
    index = np.minimum(starts[:, None] + taps, ends[:, None] - 1)
    g = jnp.take(x, index.ravel(), axis=axis, mode="clip")
    g = g.reshape(*x.shape[:axis], out, taps.size, *x.shape[axis + 1 :])
    if kind == "max":
        return jnp.max(g, axis=axis + 1)
    inside = (taps < lengths[:, None]).reshape(out, taps.size, *(1,) * (x.ndim - axis - 1))
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # accumulate half types in float32
    total = jnp.sum(jnp.where(inside, g, 0).astype(dtype), axis=axis + 1)
    count = lengths.reshape(out, *(1,) * (x.ndim - axis - 1)).astype(dtype)
    return (total / count).astype(x.dtype)


class _AdaptivePool(SpatialTransform):
    """What ``AdaptiveAvgPool`` and ``AdaptiveMaxPool`` share."""

    output_size: int | Sequence[int | None]

    def __post_init__(self):
        name = type(self).__name__
        size = freeze(self.output_size)
        object.__setattr__(self, "output_size", size)
        sizes = (size,) if is_int(size) else size
        if not sizes:
            raise ValueError(
                f"{name}: output_size must be an int (1-D) or a tuple with one int (or None "
                f"to keep the input's size) per spatial axis, got {self.output_size!r}."
            )
        if any(s is not None and s < 1 for s in sizes):
            raise ValueError(
                f"{name}: output_size must be positive on every axis, got {self.output_size!r}."
            )

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes: ``len(output_size)``, or 1 for an int."""
        return 1 if is_int(self.output_size) else len(self.output_size)

    def _check(self, x: jax.Array, init: bool = False) -> Shape:
        """Check ``x``; the output size of each of its spatial axes."""
        n = self.spatial_ndim
        sizes = (self.output_size,) if is_int(self.output_size) else self.output_size
        example = tuple(1 if s is None else s for s in sizes)
        spatial = check_spatial_input(
            self, x, n, init=init, size_field="output_size", example=example
        )
        return tuple(size if s is None else s for size, s in zip(spatial, sizes, strict=True))

    def _transform(self, x: jax.Array, sizes: Shape) -> jax.Array:
        for axis, out in enumerate(sizes, start=1):
            x = _pool_axis(x, axis, out, self._kind)
        return x


class AdaptiveAvgPool(_AdaptivePool):
    r"""Average pooling to a fixed output size per spatial axis, channels last.

    Like ``torch.nn.AdaptiveAvgPool1d/2d/3d``: the number of spatial axes is
    ``len(output_size)`` (an int means 1-D, as ``kernel_size`` in ``Conv``, so images
    need ``output_size=(7, 7)``). Along an axis of size ``n`` pooled to ``m``, output
    ``i`` is the mean of the input over the bin

    .. math:: \Big[\Big\lfloor \frac{i\, n}{m} \Big\rfloor,\
       \Big\lceil \frac{(i + 1)\, n}{m} \Big\rceil\Big)

    (PyTorch's rule): equal windows when ``m`` divides ``n``, otherwise bins of two
    lengths that may overlap; when ``m > n`` (upsampling) input elements are repeated.
    Several axes pool over the product of their bins.

    Args:
      output_size: The output's spatial size: an int (1-D), or one int per spatial
        axis, where ``None`` keeps that axis's input size (as in PyTorch).

    Shapes:
      ``[batch, *spatial, channels]`` to ``[batch, *output_size, channels]``; ``apply``
      also maps one unbatched example ``[*spatial, channels]`` to ``[*output_size,
      channels]``, and ``init`` requires the batch axis, as in ``MaxPool``.

    Raises:
      TypeError: At construction, if ``output_size`` is not an int or a tuple of ints
        and ``None``.
      ValueError: At construction, for an empty ``output_size`` or a size below 1.
      ShapeError: If the input's rank does not fit ``output_size`` (or, at init, lacks
        the batch axis), or a spatial axis is empty.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> x = jnp.arange(5.0).reshape(1, 5, 1)  # [batch, length, channels]
      >>> jnn.AdaptiveAvgPool(3).apply({}, x).ravel().tolist()  # [0, 2), [1, 4), [3, 5)
      [0.5, 2.0, 3.5]
      >>> jnn.AdaptiveAvgPool((7, None)).apply({}, jnp.zeros((2, 28, 20, 8))).shape
      (2, 7, 20, 8)
    """

    _kind = "mean"


class AdaptiveMaxPool(_AdaptivePool):
    r"""Max pooling to a fixed output size per spatial axis, channels last.

    Like ``torch.nn.AdaptiveMaxPool1d/2d/3d`` (without ``return_indices``), with the
    bins of ``AdaptiveAvgPool``: along an axis of size ``n`` pooled to ``m``, output
    ``i`` is the maximum over ``[floor(i * n / m), ceil((i + 1) * n / m))``. An int
    ``output_size`` means 1-D, so images need ``output_size=(7, 7)``. When a bin holds
    several equal maxima, the gradient is split equally among them (PyTorch gives all
    of it to one).

    Args:
      output_size: The output's spatial size: an int (1-D), or one int per spatial
        axis, where ``None`` keeps that axis's input size (as in PyTorch).

    Shapes:
      ``[batch, *spatial, channels]`` to ``[batch, *output_size, channels]``; ``apply``
      also maps one unbatched example ``[*spatial, channels]`` to ``[*output_size,
      channels]``, and ``init`` requires the batch axis, as in ``MaxPool``.

    Raises:
      TypeError: At construction, if ``output_size`` is not an int or a tuple of ints
        and ``None``.
      ValueError: At construction, for an empty ``output_size`` or a size below 1.
      ShapeError: If the input's rank does not fit ``output_size`` (or, at init, lacks
        the batch axis), or a spatial axis is empty.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> x = jnp.arange(5.0).reshape(1, 5, 1)  # [batch, length, channels]
      >>> jnn.AdaptiveMaxPool(3).apply({}, x).ravel().tolist()  # [0, 2), [1, 4), [3, 5)
      [1.0, 3.0, 4.0]
      >>> jnn.AdaptiveMaxPool((2, 2)).apply({}, jnp.zeros((2, 5, 5, 8))).shape
      (2, 2, 2, 8)
    """

    _kind = "max"


class _GlobalPool(Module):
    """What ``GlobalMaxPool`` and ``GlobalAvgPool`` share."""

    keepdims: bool = False

    def _check(self, x: jax.Array) -> None:
        if x.ndim < 3:
            raise ShapeError(
                self.layer_name(),
                f"expected input of rank at least 3 ([batch, *spatial, channels]), got "
                f"shape {tuple(x.shape)}. Hint: an unbatched example needs a batch axis, "
                "e.g. x[None].",
            )
        if 0 in x.shape[1:-1]:
            raise ShapeError(
                self.layer_name(),
                f"expected non-empty spatial axes, got shape {tuple(x.shape)}.",
            )
        check_floating(self, x)

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check ``x`` before the generic checks, so the message comes first."""
        del params
        self._check(jnp.asarray(x))

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        self._check(x)
        return self._reduce(x, axis=tuple(range(1, x.ndim - 1)), keepdims=self.keepdims)


class GlobalMaxPool(_GlobalPool):
    """Maximum over all spatial axes, per example and channel.

    Args:
      keepdims: Keep the spatial axes, with size 1.

    Shapes:
      ``[batch, *spatial, channels]`` (at least one spatial axis) to
      ``[batch, channels]``, or ``[batch, 1, ..., 1, channels]`` with ``keepdims``.
      The batch axis is required, by ``apply`` too: any number of spatial axes is
      accepted, so an unbatched example could not be told from a batch. Under
      ``jax.vmap`` over examples, give each example a batch axis of 1; for a fixed
      number of spatial axes, ``AdaptiveMaxPool((1, 1))`` also takes unbatched examples.

    Raises:
      TypeError: At construction, if ``keepdims`` is not a bool.
      ShapeError: If the input has rank below 3.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> x = jnp.arange(24.0).reshape(2, 3, 2, 2)  # [batch, height, width, channels]
      >>> jnn.GlobalMaxPool().apply({}, x).tolist()
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
      The batch axis is required, as in ``GlobalMaxPool``.

    Raises:
      TypeError: At construction, if ``keepdims`` is not a bool.
      ShapeError: If the input has rank below 3.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> x = jnp.arange(24.0).reshape(2, 3, 2, 2)  # [batch, height, width, channels]
      >>> jnn.GlobalAvgPool().apply({}, x).tolist()
      [[5.0, 6.0], [17.0, 18.0]]
      >>> jnn.GlobalAvgPool(keepdims=True).apply({}, x).shape
      (2, 1, 1, 2)
    """

    _reduce = staticmethod(jnp.mean)
