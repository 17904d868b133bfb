"""What the layers with spatial axes share (convolution, pooling): per-axis
hyperparameters, padding, and the input check with the batch-axis rule.

The batch-axis rule: ``init`` takes a *batched* sample ``[batch, *spatial, channels]``
and refuses one axis fewer, which is ambiguous (a grayscale batch ``(32, 28, 28)`` would
pass for one 28-channel image); ``apply`` also takes one unbatched example
``[*spatial, channels]``, so ``jax.vmap(model.apply, ...)`` works.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jnn._checks import check_floating, is_apply_check
from jnn._errors import ShapeError, layer_name
from jnn._module import Module, Params, Shape

Pairs = tuple[tuple[int, int], ...]
_AXES = {1: "length", 2: "height, width", 3: "depth, height, width"}


def is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def freeze(value: Any) -> Any:
    """Lists become tuples and NumPy ints ints, so the layer hashes (a static ``jit`` arg)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(freeze(v) for v in value)
    return int(value) if is_int(value) else value


def axes_names(n: int) -> str:
    return _AXES.get(n, ", ".join(f"spatial_{i}" for i in range(n)))


def per_axis(
    layer: str, name: str, value: Any, n: int, minimum: int = 1, like: str = "kernel_size"
) -> Shape:
    """``value``, an int or one int per spatial axis, as ``n`` ints of at least ``minimum``."""
    if is_int(value):
        values = (value,) * n
    elif isinstance(value, tuple) and len(value) == n and all(map(is_int, value)):
        values = value
    else:
        raise ValueError(
            f"{layer}: {name} must be an int or {n} ints (one per spatial axis, as in "
            f"{like}), got {value!r}."
        )
    if min(values) < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{layer}: {name} must be {kind}, got {value!r}.")
    return values


def padding_pairs(layer: str, padding: Any, n: int, strings: str = "'SAME', 'VALID'") -> Pairs:
    """Integer ``padding`` (an int, or an int or ``(low, high)`` per axis) as ``n`` pairs;
    ``strings`` lists the layer's string options in the error."""

    def pair(p: Any) -> tuple[int, int] | None:
        if is_int(p):
            return (p, p)
        if isinstance(p, tuple) and len(p) == 2 and all(map(is_int, p)):
            return p
        return None

    pairs = None
    if is_int(padding):
        pairs = (pair(padding),) * n
    elif isinstance(padding, tuple) and len(padding) == n:
        pairs = tuple(pair(p) for p in padding)
    if pairs is None or None in pairs:
        raise ValueError(
            f"{layer}: padding must be {strings}, an int, or one int or (low, high) "
            f"pair per spatial axis ({n}), got {padding!r}."
        )
    if min(min(p) for p in pairs) < 0:
        raise ValueError(f"{layer}: padding must be non-negative, got {padding!r}.")
    return pairs


def freeze_padding(padding: Any) -> Any:
    """``padding`` as the layer stores it: strings upper-cased, sequences as tuples."""
    return padding.upper() if isinstance(padding, str) else freeze(padding)


def check_padding(
    layer: str, padding: Any, n: int, strings: str = "'SAME', 'VALID'"
) -> Pairs | None:
    """Validate a stored ``padding``; its pairs, or None for ``"SAME"``/``"VALID"``."""
    if padding in ("SAME", "VALID"):
        return None
    return padding_pairs(layer, padding, n, strings)


def resolve_padding(
    layer: Any,
    padding: Any,
    spatial: Shape,
    shape: Shape,
    extent: Shape,
    stride: Shape,
    what: str,
) -> Pairs:
    """The ``(low, high)`` zeros of each axis of ``spatial`` (the spatial part of an input
    of ``shape``, named in messages), for a window spanning ``extent`` (the dilated
    kernel, or the pooling window) at ``stride``.

    ``"SAME"`` gives ``ceil(size / stride)`` outputs, the odd padding on the high side (as
    ``jax.lax`` and TensorFlow). Raises ``ShapeError`` if the padded input is smaller than
    the window, which would leave no output.
    """
    spatial = tuple(spatial)
    if padding == "SAME":
        pads = []
        for size, e, s in zip(spatial, extent, stride, strict=True):
            total = max((-(-size // s) - 1) * s + e - size, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
    elif padding == "VALID":
        pads = ((0, 0),) * len(spatial)
    else:
        pads = padding_pairs(layer_name(layer), padding, len(spatial))
    padded = tuple(size + lo + hi for size, (lo, hi) in zip(spatial, pads, strict=True))
    if any(p < e for p, e in zip(padded, extent, strict=True)):
        grown = f" (padded to {padded})" if padded != spatial else ""
        raise ShapeError(
            layer_name(layer),
            f"expected spatial size at least {tuple(extent)} ({what}) after padding "
            f"{padding!r}, got shape {tuple(shape)}{grown}.",
        )
    return pads


def check_spatial_input(
    layer: Module, x: Any, n: int, *, init: bool, size_field: str, example: Shape
) -> Shape:
    """Check the rank and dtype of an input of a layer with ``n`` spatial axes; return
    its spatial shape.

    ``init`` takes ``[batch, *spatial, channels]`` only; ``apply`` also takes one
    unbatched example. ``size_field`` and ``example`` (the layer's window, one int per
    axis) make the hint when the input has another number of spatial axes.
    """
    shape = tuple(jnp.shape(x))
    axes = axes_names(n)
    batched_only = init and not is_apply_check()
    if len(shape) == n + 1 and batched_only:
        raise ShapeError(
            layer_name(layer),
            f"init expected a batched input of rank {n + 2} ([batch, {axes}, channels]), "
            f"got shape {shape}. Hint: if this is a batch without its channel axis (a "
            f"grayscale batch, say), add it: x[..., None]; if it is a single example, add "
            f"the batch axis: x[None]. (apply also takes one unbatched example, "
            f"[{axes}, channels].)",
        )
    if len(shape) not in (n + 1, n + 2):
        expected = f"rank {n + 2} ([batch, {axes}, channels])"
        if not batched_only:
            expected += f" or {n + 1} (unbatched)"
        hint = ""
        if len(shape) == n:
            fix = "x[None, ..., None]" if batched_only else "x[..., None]"
            axis = "the batch and channel axes" if batched_only else "a channel axis"
            hint = f" Hint: add {axis}, e.g. {fix}."
        elif len(shape) >= 3:
            m = len(shape) - 2
            hint = (
                f" Hint: the number of spatial axes is len({size_field}); for {m}-D inputs "
                f"give {m} sizes, e.g. {size_field}={(example[0],) * m}."
            )
        raise ShapeError(
            layer_name(layer), f"expected input of {expected}, got shape {shape}.{hint}"
        )
    spatial = shape[-n - 1 : -1]
    if 0 in spatial:
        raise ShapeError(
            layer_name(layer),
            f"expected non-empty spatial axes ([..., {axes}, channels]), got shape {shape}.",
        )
    check_floating(layer, x)
    return spatial


def batch_one(x: jax.Array, n: int) -> tuple[jax.Array, bool]:
    """``x`` with a batch axis, and whether it had one (rank ``n + 2``)."""
    batched = x.ndim == n + 2
    return (x if batched else x[None]), batched


class SpatialTransform(Module):
    """A layer without params over spatial axes, channels last (pooling, upsampling).

    A subclass gives ``spatial_ndim``, ``_check(x, init=False)``, which checks the input
    (with ``check_spatial_input``) and returns what the computation needs, and
    ``_transform(x, checked)``, the computation on a batched input. ``init`` checks the
    sample and returns ``{}``; ``apply`` also takes one unbatched example.
    """

    def _check(self, x: jax.Array, init: bool = False) -> Any:
        raise NotImplementedError

    def _transform(self, x: jax.Array, checked: Any) -> jax.Array:
        raise NotImplementedError

    def init(self, key: jax.Array, x: jax.Array) -> Params:
        del key
        self._check(x, init=True)
        return {}

    def check_inputs(self, params: Params, x: jax.Array) -> None:
        """Check ``x`` before the generic checks, so the message comes first."""
        del params
        self._check(x)

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        del params
        x = jnp.asarray(x)
        checked = self._check(x)
        x, batched = batch_one(x, self.spatial_ndim)
        y = self._transform(x, checked)
        return y if batched else y[0]
