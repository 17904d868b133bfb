"""Upsampling by integer factors, channels last: nearest-neighbour or linear."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jnn._module import Shape
from jnn._spatial import SpatialTransform, check_spatial_input, freeze, is_int

__all__ = ["Upsample"]

_METHODS = ("nearest", "linear")


class Upsample(SpatialTransform):
    r"""Enlarge each spatial axis by an integer factor, channels last.

    Keras' ``UpSampling1D/2D/3D`` and PyTorch's ``nn.Upsample(scale_factor=...)`` with
    ``align_corners=False``: the decoder half of a U-Net or a GAN's generator, often
    followed by a ``Conv`` (a common alternative to ``ConvTranspose``, without its
    checkerboard artefacts). The number of spatial axes is ``len(scale_factor)``; an
    int means 1-D, as ``kernel_size`` in ``Conv``, so images need ``(2, 2)``.

    ``"nearest"`` repeats each element ``s`` times along an axis. ``"linear"``
    (bilinear on images, trilinear on volumes) interpolates between input pixel centres:
    output ``j`` samples input position :math:`(j + \tfrac12)/s - \tfrac12`, clamped to
    the input, which is PyTorch's rule with ``align_corners=False`` and
    ``jax.image.resize``'s with ``method="linear"``.

    Args:
      scale_factor: The factor of each spatial axis: an int (1-D), or one int per
        spatial axis, each at least 1.
      method: ``"nearest"`` or ``"linear"``.

    Shapes:
      ``[batch, *spatial, channels]`` to ``[batch, *(spatial * scale_factor),
      channels]``; ``apply`` also maps one unbatched example ``[*spatial, channels]``,
      and ``init`` requires the batch axis, as in ``Conv``.

    Raises:
      TypeError: At construction, if ``scale_factor`` is not an int or a tuple of ints.
      ValueError: At construction, for an empty ``scale_factor``, a factor below 1 or
        an unknown ``method``.
      ShapeError: If the input's rank does not fit ``scale_factor`` (or, at init, lacks
        the batch axis), or a spatial axis is empty.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax.numpy as jnp, jnn
      >>> x = jnp.array([1.0, 2.0]).reshape(1, 2, 1)  # [batch, length, channels]
      >>> jnn.Upsample(2).apply({}, x).ravel().tolist()
      [1.0, 1.0, 2.0, 2.0]
      >>> jnn.Upsample(2, method="linear").apply({}, x).ravel().tolist()
      [1.0, 1.25, 1.75, 2.0]
      >>> jnn.Upsample((2, 2)).apply({}, jnp.zeros((8, 7, 7, 16))).shape
      (8, 14, 14, 16)
    """

    scale_factor: int | Sequence[int]
    method: str = "nearest"

    def __post_init__(self):
        factor = freeze(self.scale_factor)
        object.__setattr__(self, "scale_factor", factor)
        factors = (factor,) if is_int(factor) else factor
        if not factors or any(f < 1 for f in factors):
            raise ValueError(
                f"Upsample: scale_factor must be an int (1-D) or one int per spatial axis, "
                f"each at least 1, got {self.scale_factor!r}."
            )
        method = self.method.lower()
        if method in ("bilinear", "trilinear"):  # PyTorch's names of the same rule
            method = "linear"
        if method not in _METHODS:
            raise ValueError(
                f"Upsample: method must be one of {list(_METHODS)}, got {self.method!r}."
            )
        object.__setattr__(self, "method", method)

    @property
    def spatial_ndim(self) -> int:
        """The number of spatial axes: ``len(scale_factor)``, or 1 for an int."""
        return 1 if is_int(self.scale_factor) else len(self.scale_factor)

    def _factors(self) -> Shape:
        f = self.scale_factor
        return (f,) if is_int(f) else tuple(f)

    def _check(self, x: jax.Array, init: bool = False) -> Shape:
        return check_spatial_input(
            self,
            x,
            self.spatial_ndim,
            init=init,
            size_field="scale_factor",
            example=self._factors(),
        )

    def _transform(self, x: jax.Array, spatial: Shape) -> jax.Array:
        factors = self._factors()
        if self.method == "nearest":
            for axis, f in enumerate(factors, start=1):
                if f > 1:
                    x = jnp.repeat(x, f, axis=axis)
        else:
            out = (x.shape[0], *(n * f for n, f in zip(spatial, factors, strict=True)), x.shape[-1])
            # Upsampling needs no antialiasing; computing in at least float32 keeps the
            # interpolation weights exact for half-precision inputs.
            wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            x = jax.image.resize(wide, out, "linear", antialias=False).astype(x.dtype)
        return x
