"""Dynamic loss scaling, for training with float16 computation.

float16 represents nothing below about 6e-8, and many gradients of a float16 forward
pass are smaller than that: they would round to zero. Multiplying the loss by a large
``scale`` before differentiating lifts every gradient by the same factor, and dividing
the float32 gradients by it afterwards restores them. Too large a scale overflows
instead, so the scale adapts: a step whose gradients are not finite is skipped and
halves the scale; ``period`` finite steps in a row double it. bfloat16 has float32's
range and needs none of this.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.tree_util import GetAttrKey

from jnn._checks import check_positive_int
from jnn._losses import check_option

__all__ = ["DynamicLossScale"]


@jax.tree_util.register_pytree_with_keys_class
class DynamicLossScale:
    """A loss scale that adapts to the gradients: the train state's ``loss_scale``.

    A pytree whose leaves are ``scale`` (float32 scalar) and ``good_steps`` (int32
    scalar: finite steps since the scale last changed); ``period``, ``factor`` and
    ``min_scale`` are static. Give it to ``jnn.init_train_state(..., loss_scale=...)``
    (or ``TrainState.create``); the training step (``make_train_step``, ``fit``) then
    differentiates ``loss * scale``, divides the gradients by ``scale``, skips the
    update (params, optimizer state and model state stay as they were) when a
    gradient is not finite, and adjusts the scale. ``logs["loss"]`` stays the
    unscaled loss.

    Args:
      initial_scale: The starting scale, a power of two (``2**15`` by default).
      period: Finite steps in a row after which the scale is multiplied by ``factor``.
      factor: How much the scale grows after ``period`` good steps, and shrinks after
        a step that was not finite.
      min_scale: The scale never falls below this.

    Examples:
      >>> import jnn
      >>> scale = jnn.DynamicLossScale(2.0**10, period=2)
      >>> scale = scale.adjust(True).adjust(True)
      >>> float(scale.scale), int(scale.good_steps)
      (2048.0, 0)
      >>> float(scale.adjust(False).scale)
      1024.0
    """

    __slots__ = ("scale", "good_steps", "period", "factor", "min_scale")

    def __init__(
        self,
        initial_scale: float = 2.0**15,
        *,
        period: int = 2000,
        factor: float = 2.0,
        min_scale: float = 1.0,
    ):
        name = "DynamicLossScale"
        inf = float("inf")
        check_option(name, "initial_scale", initial_scale, 0.0, inf, low_open=True, high_open=True)
        check_option(name, "factor", factor, 1.0, inf, low_open=True, high_open=True)
        check_option(name, "min_scale", min_scale, 0.0, inf, low_open=True, high_open=True)
        check_positive_int(name, "period", period)
        self._set(
            jnp.asarray(max(float(initial_scale), float(min_scale)), jnp.float32),
            jnp.zeros((), jnp.int32),
            (period, float(factor), float(min_scale)),
        )

    def _set(self, scale: Any, good_steps: Any, static: tuple) -> None:
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "good_steps", good_steps)
        for name, value in zip(("period", "factor", "min_scale"), static, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("DynamicLossScale is immutable; adjust() returns a new one.")

    def _static(self) -> tuple:
        return self.period, self.factor, self.min_scale

    def tree_flatten_with_keys(self):
        children = ((GetAttrKey("scale"), self.scale), (GetAttrKey("good_steps"), self.good_steps))
        return children, self._static()

    def tree_flatten(self):
        return (self.scale, self.good_steps), self._static()

    @classmethod
    def tree_unflatten(cls, static: tuple, children: tuple) -> DynamicLossScale:
        new = object.__new__(cls)
        new._set(*children, static)
        return new

    def __repr__(self) -> str:
        return (
            f"DynamicLossScale(scale={self.scale}, good_steps={self.good_steps}, "
            f"period={self.period}, factor={self.factor}, min_scale={self.min_scale})"
        )

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        """``loss * scale``, in the loss's dtype (float32 for jnn's losses)."""
        return loss * self.scale.astype(loss.dtype)

    def unscale(self, grads: Any) -> Any:
        """``grads / scale``, leaf by leaf, each in its own dtype."""
        inverse = 1.0 / self.scale
        return jax.tree.map(lambda g: (g * inverse.astype(g.dtype)).astype(g.dtype), grads)

    def adjust(self, grads_finite: Any) -> DynamicLossScale:
        """The scale for the next step, after a step whose gradients were (not) finite."""
        finite = jnp.asarray(grads_finite)
        good = self.good_steps + 1
        grow = finite & (good >= self.period)
        scale = jnp.where(
            finite,
            jnp.where(grow, self.scale * self.factor, self.scale),
            jnp.maximum(self.scale / self.factor, self.min_scale),
        )
        # Growing past float32's range would make every later loss infinite.
        scale = jnp.where(jnp.isfinite(scale), scale, self.scale).astype(jnp.float32)
        good_steps = jnp.where(finite & ~grow, good, 0).astype(jnp.int32)
        return self.tree_unflatten(self._static(), (scale, good_steps))
