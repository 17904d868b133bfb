"""The key-value cache of ``MultiHeadAttention``: making, checking and writing it.

A cache holds the keys and values of the positions decoded so far::

    {"key":   [batch, max_length, num_kv_heads, head_dim],
     "value": [batch, max_length, num_kv_heads, head_dim],
     "index": int32 []}   # the next position to write

(without ``batch`` for unbatched decoding). Each call writes its new keys and values at
``index`` and returns the cache advanced by their number. Writing past ``max_length``
is an error: at once when ``index`` is concrete, and when the compiled program runs
when it is traced (under ``jit`` or ``scan``), where ``jax.lax.dynamic_update_slice``
would otherwise clamp the write and silently overwrite the last positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn._checks import check_positive_int, is_concrete, raise_at_run_time
from jnn._errors import DTypeError, ParamsError, ShapeError, layer_name
from jnn._positional import _concrete_int

__all__ = ["Cache", "empty_cache", "check_cache", "write_cache", "visible_positions"]

Cache = dict[str, jax.Array]
"""``{"key": [batch, max_length, kv_heads, d], "value": (same), "index": int32 []}``."""

_HINT = "Hint: make it with layer.init_cache(params, batch_size, max_length)."


def empty_cache(
    owner: Any, params: Any, batch_size: int | None, max_length: int, dtype: Any = None
) -> Cache:
    """An empty cache for the attention layer whose params (or their shapes) are given."""
    name = layer_name(owner)
    weight = params.get("key", {}).get("weight") if isinstance(params, Mapping) else None
    if weight is None or len(getattr(weight, "shape", ())) != 3:
        raise ParamsError(
            name,
            "init_cache needs this layer's params (or their shapes) with 'key/weight' "
            "of shape [in_features, num_kv_heads, head_dim].",
        )
    if batch_size is not None:
        check_positive_int(name, "batch_size", batch_size)
    check_positive_int(name, "max_length", max_length)
    dtype = weight.dtype if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DTypeError(name, f"init_cache expected a floating-point dtype, got {dtype}.")
    batch = () if batch_size is None else (batch_size,)
    zeros = jnp.zeros((*batch, max_length, *weight.shape[1:]), dtype)
    return {"key": zeros, "value": zeros, "index": jnp.zeros((), jnp.int32)}


def check_cache(owner: Any, heads: tuple | None, query: Any, key_value: Any, cache: Any) -> int:
    """Check a cache's structure and shapes against the query; return its ``max_length``.

    ``heads`` is ``(num_kv_heads, head_dim)`` from the params, or ``None`` if unknown.
    A concrete ``index`` is checked here too; a traced one by ``check_room``.
    """
    name = layer_name(owner)
    if key_value is not None:
        raise ShapeError(name, "a cache decodes self-attention only; got a key_value too.")
    if not isinstance(cache, Mapping) or set(cache) != {"key", "value", "index"}:
        got = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
        raise ShapeError(name, f"expected a cache with keys index, key, value, got {got}. {_HINT}")
    keys, values, index = cache["key"], cache["value"], cache["index"]
    batch, shape = tuple(query.shape[:-2]), tuple(jnp.shape(keys))
    if (
        len(shape) != len(batch) + 3
        or shape[: len(batch)] != batch
        or (heads is not None and shape[-2:] != heads)
        or tuple(jnp.shape(values)) != shape
    ):
        raise ShapeError(
            name,
            f"expected cache key and value of shape {(*batch, 'max_length', *(heads or ()))} "
            f"for query shape {tuple(query.shape)}, got {shape} and "
            f"{tuple(jnp.shape(values))}. {_HINT}",
        )
    if jnp.ndim(index) != 0:
        raise ShapeError(
            name, f"expected a scalar cache index, got shape {tuple(jnp.shape(index))}. {_HINT}"
        )
    if not jnp.issubdtype(jnp.result_type(index), jnp.integer):
        raise DTypeError(
            name, f"expected an integer cache index, got dtype {jnp.result_type(index)}. {_HINT}"
        )
    max_length, length = shape[-3], query.shape[-2]
    start = _concrete_int(index)
    if start is not None and start < 0:
        raise ShapeError(name, f"expected a cache index >= 0, got {start}. {_HINT}")
    if length > max_length or (start is not None and start + length > max_length):
        raise ShapeError(name, _overflow(length, start, max_length))
    return max_length


def _overflow(length: int, start: Any, max_length: int) -> str:
    at = f" at index {start}" if start is not None else ""
    return (
        f"cache overflow: {length} new positions{at} do not fit in the cache's "
        f"max_length {max_length}. Hint: make a longer cache."
    )


def check_room(owner: Any, index: Any, length: int, max_length: int) -> None:
    """Raise, when the compiled program runs, if ``length`` positions from a traced
    ``index`` pass ``max_length``.

    The message names the position the program reached (``raise_at_run_time`` hands it
    to the host), and a cache with room costs no host round trip. Under ``jit`` the
    ``ValueError`` arrives wrapped in JAX's runtime error. A concrete ``index`` was
    already checked by ``check_cache``.
    """
    if is_concrete(index):
        return
    name = layer_name(owner)

    def raise_on_overflow(index):
        index = np.asarray(index)
        bad = index + length > max_length
        if bad.any():
            start = index[bad].tolist() if index.ndim else int(index)
            raise ValueError(f"{name}: {_overflow(length, start, max_length)}")

    raise_at_run_time(index + length > max_length, raise_on_overflow, index)


def write_cache(cache: Cache, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, Cache]:
    """Write ``k``, ``v`` ``[batch, length, kv_heads, d]`` at the cache's ``index``.

    Returns the whole cached keys and values and the cache advanced by ``length``.
    """
    index = jnp.asarray(cache["index"])
    at = (jnp.zeros((), index.dtype), index, *[jnp.zeros((), index.dtype)] * 2)
    keys = jax.lax.dynamic_update_slice(cache["key"], k.astype(cache["key"].dtype), at)
    values = jax.lax.dynamic_update_slice(cache["value"], v.astype(cache["value"].dtype), at)
    return keys, values, {"key": keys, "value": values, "index": index + k.shape[1]}


def visible_positions(start: Any, length: int, max_length: int) -> jax.Array:
    """Boolean ``[length, max_length]``: query ``t`` (at ``start + t``) sees positions up
    to its own, the causal mask over the cache."""
    return jnp.arange(max_length) < start + jnp.arange(1, length + 1)[:, None]
