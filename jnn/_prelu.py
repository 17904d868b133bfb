"""``PReLU``: a leaky ReLU whose negative slope is learned."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jnn._checks import check_floating, check_floating_dtype, check_rank
from jnn._errors import ShapeError
from jnn._module import Module, Params

__all__ = ["PReLU"]


class PReLU(Module):
    r"""Parametric ReLU (He et al., 2015): ``x`` where positive, ``a * x`` elsewhere,
    with the slope ``a`` learned.

    .. math:: y = \max(0, x) + a \min(0, x)

    As PyTorch's ``nn.PReLU``: one slope shared by every element (``per_channel=False``,
    ``num_parameters=1`` there) or one per channel (``num_parameters=C``), here on the
    last axis (channels last); ``0.25`` to start, as in the paper and PyTorch (Flax's
    ``nn.PReLU`` starts at ``0.01``). Weight decay on the slope is usually left off.

    Args:
      per_channel: One slope per channel (last axis) instead of one in all.
      negative_slope_init: The slopes' initial value.
      param_dtype: Floating-point dtype of ``negative_slope``.

    Shapes:
      Any shape to the same shape; ``negative_slope`` is ``[]`` (a scalar), or
      ``[channels]`` with ``per_channel``. A PyTorch ``weight`` ``[C]`` (or ``[1]``)
      converts with ``w.reshape(())`` for a shared slope, as it is per channel.

    Raises:
      TypeError: At construction, for a non-float ``negative_slope_init`` or a
        non-floating ``param_dtype``.
      ShapeError: With ``per_channel``, if the input is a scalar or its channel count
        differs from the one at init.
      DTypeError: If the input is not floating point.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> prelu = jnn.PReLU()
      >>> params = prelu.init(jax.random.key(0), jnp.zeros((2, 3)))
      >>> float(params["negative_slope"])
      0.25
      >>> prelu.apply(params, jnp.array([[-2.0, 0.0, 3.0]])).tolist()
      [[-0.5, 0.0, 3.0]]
    """

    per_channel: bool = False
    negative_slope_init: float = 0.25
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_floating_dtype(self, "param_dtype", self.param_dtype)

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        del key
        self._check(x)
        shape = tuple(jnp.shape(x))[-1:] if self.per_channel else ()
        return {"negative_slope": jnp.full(shape, self.negative_slope_init, self.param_dtype)}

    def _check(self, x: Any) -> None:
        check_floating(self, x)
        if self.per_channel:
            check_rank(self, x, what="input [..., channels] (per_channel=True)", min_rank=1)

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check the dtype, and the channel count against a per-channel slope."""
        self._check(x)
        slope = params.get("negative_slope")
        if self.per_channel and slope is not None and jnp.ndim(slope) == 1:
            if jnp.shape(x)[-1] != jnp.shape(slope)[0]:
                raise ShapeError(
                    self.layer_name(),
                    f"expected input with {jnp.shape(slope)[0]} channels on the last axis "
                    f"(set at init), got shape {tuple(jnp.shape(x))}.",
                )

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        slope = params["negative_slope"].astype(x.dtype)
        return jnp.where(x >= 0, x, slope * x)
