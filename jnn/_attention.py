"""Multi-head attention, with boolean masks, grouped-query heads, RoPE and a KV cache.

Masks are boolean and ``True`` means *attend*. They broadcast against the attention
logits ``[batch, heads, q_len, kv_len]``; ``causal_mask``, ``padding_mask`` and
``combine_masks`` build the usual ones.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jnn import initializers
from jnn._checks import check_floating, check_positive_int, check_rank
from jnn._errors import DTypeError, MissingKeyError, ParamsError, ShapeError
from jnn._module import Module, Params
from jnn._positional import _concrete_int, rotary_embedding
from jnn._scope import child_key

__all__ = ["MultiHeadAttention", "causal_mask", "padding_mask", "combine_masks"]

Cache = dict[str, jax.Array]
"""``{"key": [batch, max_length, kv_heads, head_dim], "value": (same), "index": int32 []}``."""


# --------------------------------------------------------------------------- masks


def causal_mask(length: int) -> jax.Array:
    """The mask letting position ``i`` attend to positions ``j <= i`` only.

    Args:
      length: The sequence length (queries and keys alike).

    Returns:
      A boolean ``[1, 1, length, length]`` mask, ``True`` on and below the diagonal.

    Examples:
      >>> from jnn import causal_mask
      >>> causal_mask(3)[0, 0].astype(int).tolist()
      [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    """
    check_positive_int("causal_mask", "length", length)
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def padding_mask(valid: jax.typing.ArrayLike, length: int | None = None) -> jax.Array:
    """The mask hiding padded keys: from lengths ``[batch]`` or a boolean ``[batch, kv_len]``.

    Args:
      valid: Either integer lengths ``[batch]`` (keys ``0 ... lengths[b] - 1`` are real)
        or a boolean ``[batch, kv_len]`` that is ``True`` at real keys.
      length: The padded length ``kv_len``; needed with integer lengths.

    Returns:
      A boolean ``[batch, 1, 1, kv_len]`` mask.

    Raises:
      DTypeError: If ``valid`` is neither integer nor boolean.
      ShapeError: If ``valid`` has the wrong rank or disagrees with ``length``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import padding_mask
      >>> padding_mask(jnp.array([1, 3]), length=3)[:, 0, 0].astype(int).tolist()
      [[1, 0, 0], [1, 1, 1]]
    """
    name = "padding_mask"
    valid = jnp.asarray(valid)
    if valid.dtype == bool:
        check_rank(name, valid, 2, "boolean mask [batch, kv_len]")
        if length is not None and length != valid.shape[1]:
            raise ShapeError(
                name, f"length {length} differs from the mask's kv_len, shape {valid.shape}."
            )
        return valid[:, None, None, :]
    if not jnp.issubdtype(valid.dtype, jnp.integer):
        raise DTypeError(
            name,
            f"expected integer lengths [batch] or a boolean mask [batch, kv_len], "
            f"got dtype {valid.dtype}.",
        )
    check_rank(name, valid, 1, "lengths [batch]")
    if length is None:
        raise ShapeError(name, "integer lengths need length=kv_len, the padded length.")
    check_positive_int(name, "length", length)
    return (jnp.arange(length) < valid[:, None])[:, None, None, :]


def combine_masks(*masks: jax.typing.ArrayLike | None) -> jax.Array | None:
    """Combine boolean masks with logical *and*, skipping ``None``s.

    Returns:
      The broadcast conjunction, or ``None`` when every mask is ``None``.

    Raises:
      DTypeError: If a mask is not boolean.
      ShapeError: If the masks do not broadcast together.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jnn import causal_mask, combine_masks, padding_mask
      >>> m = combine_masks(causal_mask(3), None, padding_mask(jnp.array([2]), 3))
      >>> m.shape, m[0, 0].astype(int).tolist()
      ((1, 1, 3, 3), [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    """
    arrays = [jnp.asarray(m) for m in masks if m is not None]
    for m in arrays:
        if m.dtype != bool:
            raise DTypeError("combine_masks", f"expected boolean masks, got dtype {m.dtype}.")
    if not arrays:
        return None
    try:
        np.broadcast_shapes(*(m.shape for m in arrays))
    except ValueError:
        shapes = ", ".join(str(m.shape) for m in arrays)
        raise ShapeError("combine_masks", f"masks of shapes {shapes} do not broadcast.") from None
    return functools.reduce(jnp.logical_and, arrays)


# --------------------------------------------------------------------------- kernels
# q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim];
# mask: None or bool [batch or 1, heads or 1, q_len or 1, kv_len or 1]. Query head n
# reads key/value head n // (heads // kv_heads), as jax.nn.dot_product_attention does.


def _attend_fused(q, k, v, mask, implementation=None):
    """``jax.nn.dot_product_attention``, with rows that attend to nothing set to zero."""
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    if mask is None:
        return out
    # It gives a fully masked row the mean of all values (every logit is the same large
    # negative number); zero such rows, as the explicit path does.
    attends = jnp.swapaxes(jnp.any(mask, axis=-1), 1, 2)[..., None]  # [b, q_len, heads, 1]
    return jnp.where(attends, out, jnp.zeros((), out.dtype))


def _attention_weights(q, k, mask):
    """``softmax(q k^T / sqrt(head_dim))`` ``[batch, heads, q_len, kv_len]``, 0 if masked."""
    k = jnp.repeat(k, q.shape[-2] // k.shape[-2], axis=-2)
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    # Scaling q before the product touches head_dim numbers per query, not kv_len.
    q = q / jnp.asarray(math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=dtype)
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    logits = jnp.where(mask, logits, jnp.finfo(dtype).min)
    return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)


def _attend_explicit(q, k, v, mask, dropout_rate=0.0, key=None):
    """The attention written out, with dropout on the weights (inverted, like Dropout)."""
    weights = _attention_weights(q, k, mask)
    if dropout_rate == 1.0:
        weights = jnp.zeros_like(weights)
    elif dropout_rate > 0.0:
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    v = jnp.repeat(v, q.shape[-2] // v.shape[-2], axis=-2)
    return jnp.einsum("bhts,bshd->bthd", weights.astype(v.dtype), v)


def _fused(implementation: str | None) -> bool:
    """Whether attention without dropout goes through ``jax.nn.dot_product_attention``.

    By default it does on accelerators, where that function can pick a fused kernel,
    and not on a CPU, where XLA runs the einsum form faster: on the benchmark's
    2-layer transformer encoder the training step took 7% less time written out.
    """
    if implementation is None:
        return jax.default_backend() != "cpu"
    return implementation != "einsum"


def _as_4d(mask: jax.Array) -> jax.Array:
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


# --------------------------------------------------------------------------- the layer


class MultiHeadAttention(Module):
    r"""Multi-head scaled dot-product attention (Vaswani et al., 2017).

    Queries come from ``query``; keys and values from ``key_value``, or from ``query``
    itself when it is ``None`` (self-attention). Each of ``num_heads`` heads computes

    .. math::
       \mathrm{head}_n = \mathrm{softmax}\Big(\frac{Q_n K_{g(n)}^\top}{\sqrt{d}}
       + \log M\Big) V_{g(n)}, \qquad
       y = \sum_n \mathrm{head}_n W^O_n + b^O

    with :math:`Q_n = x W^Q_n + b^Q_n` (likewise ``K``, ``V`` from ``key_value``),
    ``d = head_dim`` and the boolean mask ``M`` (``log 1 = 0``, ``log 0 = -inf``).
    With ``num_kv_heads < num_heads`` the query heads share key/value heads in groups
    (grouped-query attention; multi-query when ``num_kv_heads=1``): query head ``n``
    reads key/value head ``g(n) = n // (num_heads // num_kv_heads)``.

    A query row whose mask is all ``False`` attends to nothing: its attention result is
    zero (not NaN, not a uniform average), so the layer outputs ``output/bias`` there.

    Without attention dropout (at inference, or ``dropout_rate=0``) the layer calls
    ``jax.nn.dot_product_attention`` on accelerators, which can run it as one fused
    kernel, and on a CPU writes it out as two einsums and a softmax, which XLA runs
    faster there (see ``implementation``). With dropout it computes the weights
    explicitly and drops them like ``Dropout`` (kept weights scaled by ``1 / (1 -
    rate)``) with the key ``child_key(key, "dropout")``.

    **Decoding with a KV cache.** ``cache = layer.init_cache(params, batch_size,
    max_length)`` makes an empty cache; ``y, cache = layer.apply(params, x, cache=cache)``
    writes the new keys and values at ``cache["index"]`` (with
    ``jax.lax.dynamic_update_slice``), lets each query attend to the cached positions
    up to its own (causal), and returns the advanced cache. ``x`` may be one step
    ``[batch, 1, features]`` or a chunk (a prompt) of several. The call is pure, so it
    works under ``jit`` and as the body of ``jax.lax.scan``. The cache is an explicit
    argument rather than the layer's ``state`` because ``state`` is for statistics that
    every call threads (``init_with_state`` creates it and every ``apply`` would have to
    carry it, training too), while the cache exists only while decoding, has a size
    (``max_length``) that ``init`` cannot know, and is reset per sequence. As a keyword
    of ``apply`` it also passes through a composite's ``scope("attention", layer, x,
    cache=...)``. Caching covers self-attention only.

    Args:
      num_heads: Number of query heads.
      features: Size of the output's last dimension; the query's by default.
      num_kv_heads: Number of key/value heads; must divide ``num_heads``. Defaults to
        ``num_heads`` (ordinary multi-head attention).
      head_dim: Size ``d`` of each head; ``features // num_heads`` by default.
      dropout_rate: Probability of dropping each attention weight while training.
      use_bias: Whether the four projections have biases.
      use_rope: Rotate queries and keys with ``rotary_embedding`` at their positions
        (``0 ... length - 1``, or the absolute positions in the cache when decoding).
      rope_base: The ``base`` of ``rotary_embedding``.
      w_init: Initializer of the weights. It is called with the 2-D shape of the
        equivalent dense layer (``[in_features, heads * head_dim]``, or
        ``[num_heads * head_dim, features]`` for the output), so fan-in and fan-out
        mean what they do for ``Dense``; the result is reshaped.
      b_init: Initializer of the biases.
      param_dtype: Dtype of the parameters.
      implementation: How attention without dropout is computed. ``None`` (the
        default) picks by backend: ``jax.nn.dot_product_attention`` on GPUs and TPUs,
        the einsum form on a CPU (faster there). ``"einsum"`` forces the einsum form;
        ``"xla"`` and ``"cudnn"`` force ``jax.nn.dot_product_attention`` with that
        implementation (``"cudnn"``: cuDNN's fused kernel on NVIDIA GPUs, fp16/bf16).

    Shapes:
      ``query`` is ``[batch, q_len, q_features]`` and ``key_value`` ``[batch, kv_len,
      kv_features]``; unbatched ``[q_len, q_features]`` works too (all inputs alike).
      The output is ``[batch, q_len, features]``. ``mask`` broadcasts to ``[batch,
      num_heads, q_len, kv_len]`` (``kv_len`` is the cache's ``max_length`` when
      decoding). ``init`` creates, with ``h = num_heads``, ``k = num_kv_heads`` and
      ``d = head_dim``::

        {"query":  {"weight": [q_features, h, d],  "bias": [h, d]},
         "key":    {"weight": [kv_features, k, d], "bias": [k, d]},
         "value":  {"weight": [kv_features, k, d], "bias": [k, d]},
         "output": {"weight": [h, d, features],    "bias": [features]}}

      A cache is ``{"key": [batch, max_length, k, d], "value": (same), "index": int32
      []}``, without ``batch`` for unbatched inputs.

    Raises:
      ShapeError: If an input's last dimension differs from the one set at init, the
        mask does not broadcast to the logits, or the cache does not fit (wrong shapes,
        or, when ``index`` is concrete, too few positions left).
      DTypeError: If an input is not floating point or the mask is not boolean.
      MissingKeyError: If training with ``dropout_rate > 0`` and no ``key``.

    A traced ``index`` (under ``jit`` or ``scan``) cannot be checked in Python: once the
    cache is full, outputs are NaN rather than silently overwriting the last position.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jnn import MultiHeadAttention, causal_mask
      >>> layer = MultiHeadAttention(num_heads=4, num_kv_heads=2)
      >>> x = jnp.ones((2, 5, 16))                       # [batch, length, features]
      >>> params = layer.init(jax.random.key(0), x)
      >>> params["query"]["weight"].shape, params["key"]["weight"].shape
      ((16, 4, 4), (16, 2, 4))
      >>> y = layer.apply(params, x, mask=causal_mask(5))
      >>> y.shape
      (2, 5, 16)
      >>> cache = layer.init_cache(params, batch_size=2, max_length=8)
      >>> step, cache = layer.apply(params, x[:, :1], cache=cache)
      >>> step.shape, int(cache["index"])
      ((2, 1, 16), 1)
    """

    num_heads: int
    features: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    dropout_rate: float = 0.0
    use_bias: bool = True
    use_rope: bool = False
    rope_base: float = 10000.0
    w_init: Callable = initializers.lecun_normal()
    b_init: Callable = initializers.zeros
    param_dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        name = self.layer_name()
        check_positive_int(name, "num_heads", self.num_heads)
        for field in ("features", "num_kv_heads", "head_dim"):
            if getattr(self, field) is not None:
                check_positive_int(name, field, getattr(self, field))
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{name}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})."
            )
        if self.features is not None or self.head_dim is not None:
            self._head_dim(self.features or 0)  # fail here, not at init, if we can
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ValueError(f"{name}: dropout_rate must be in [0, 1], got {self.dropout_rate!r}.")
        if self.implementation not in (None, "einsum", "xla", "cudnn"):
            raise ValueError(
                f"{name}: implementation must be None, 'einsum', 'xla' or 'cudnn', "
                f"got {self.implementation!r}."
            )

    def _head_dim(self, features: int) -> int:
        head_dim = self.head_dim
        if head_dim is None:
            if features % self.num_heads:
                raise ShapeError(
                    self.layer_name(),
                    f"features {features} is not divisible by num_heads {self.num_heads}. "
                    "Hint: set head_dim.",
                )
            head_dim = features // self.num_heads
        if self.use_rope and head_dim % 2:
            raise ShapeError(self.layer_name(), f"use_rope needs an even head_dim, got {head_dim}.")
        return head_dim

    # ----------------------------------------------------------------- checks

    def _check_sequences(self, query: Any, key_value: Any) -> None:
        check_rank(self, query, (2, 3), "query [batch, q_len, features]")
        check_floating(self, query, "query")
        if key_value is None:
            return
        check_floating(self, key_value, "key_value")
        if key_value.ndim != query.ndim or key_value.shape[:-2] != query.shape[:-2]:
            raise ShapeError(
                self.layer_name(),
                f"expected key_value [batch, kv_len, features] with the query's batch "
                f"shape {tuple(query.shape[:-2])}, got shape {tuple(key_value.shape)} "
                f"(query shape {tuple(query.shape)}).",
            )

    def check_inputs(self, params: Params, query, key_value=None, *, mask=None, cache=None):
        """Check inputs, mask and cache against the params before the generic check."""
        self._check_sequences(query, key_value)
        # Missing or mis-shaped params are left to the generic check that follows.
        weights = {n: p.get("weight") for n, p in params.items() if isinstance(p, Mapping)}
        for what, x, name in (("query", query, "query"), ("key_value", key_value, "key")):
            w = weights.get(name)
            if x is not None and w is not None and w.ndim == 3 and x.shape[-1] != w.shape[0]:
                raise ShapeError(
                    self.layer_name(),
                    f"expected {what} with last dimension {w.shape[0]} (set at init), "
                    f"got shape {tuple(x.shape)}.",
                )
        kv_len = (query if key_value is None else key_value).shape[-2]
        if cache is not None:
            kv_len = self._check_cache(weights.get("key"), query, key_value, cache)
        if mask is not None:
            mask = jnp.asarray(mask) if not hasattr(mask, "dtype") else mask
            if mask.dtype != bool:
                raise DTypeError(
                    self.layer_name(),
                    f"expected a boolean mask (True = attend), got dtype {mask.dtype}.",
                )
            # Unbatched inputs get a batch axis of 1 inside, so a mask may have one too.
            batch = query.shape[0] if query.ndim == 3 else 1
            target = (batch, self.num_heads, query.shape[-2], kv_len)
            try:
                ok = mask.ndim <= 4 and np.broadcast_shapes(mask.shape, target) == target
            except ValueError:
                ok = False
            if not ok:
                axes = "[batch, heads, q_len, kv_len]"
                raise ShapeError(
                    self.layer_name(),
                    f"expected a mask broadcastable to {axes} = {target}, "
                    f"got shape {tuple(mask.shape)}.",
                )

    def _check_cache(self, weight: Any, query: Any, key_value: Any, cache: Any) -> int:
        name = self.layer_name()
        hint = "Hint: make it with layer.init_cache(params, batch_size, max_length)."
        if key_value is not None:
            raise ShapeError(name, "a cache decodes self-attention only; got a key_value too.")
        if not isinstance(cache, Mapping) or set(cache) != {"key", "value", "index"}:
            got = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
            raise ShapeError(
                name, f"expected a cache with keys index, key, value, got {got}. {hint}"
            )
        keys, index = cache["key"], cache["index"]
        heads = tuple(weight.shape[1:]) if weight is not None and weight.ndim == 3 else None
        batch = tuple(query.shape[:-2])
        shape = tuple(keys.shape)
        if (
            len(shape) != len(batch) + 3
            or shape[: len(batch)] != batch
            or (heads is not None and shape[-2:] != heads)
            or tuple(cache["value"].shape) != shape
        ):
            raise ShapeError(
                name,
                f"expected cache key and value of shape {(*batch, 'max_length', *(heads or ()))} "
                f"for query shape {tuple(query.shape)}, got {shape} and "
                f"{tuple(cache['value'].shape)}. {hint}",
            )
        if jnp.ndim(index) != 0 or not jnp.issubdtype(jnp.result_type(index), jnp.integer):
            raise ShapeError(name, f"expected an integer scalar cache index, got {index!r}.")
        max_length, length = shape[-3], query.shape[-2]
        start = _concrete_int(index)
        if length > max_length or (start is not None and start + length > max_length):
            at = f" at index {start}" if start is not None else ""
            raise ShapeError(
                name,
                f"cache overflow: {length} new positions{at} do not fit in the cache's "
                f"max_length {max_length}. Hint: make a longer cache.",
            )
        return max_length

    # ----------------------------------------------------------------- init

    def init(self, key: jax.Array, query, key_value=None, *, mask=None, cache=None) -> Params:
        del mask, cache  # apply's keywords arrive here too; the params do not depend on them
        self._check_sequences(query, key_value)
        features = self.features or query.shape[-1]
        head_dim = self._head_dim(features)

        def make(name: str, in_shape: tuple, out_shape: tuple) -> Params:
            k = child_key(key, name)
            dense = (math.prod(in_shape), math.prod(out_shape))
            w = self.w_init(child_key(k, "weight"), dense, self.param_dtype)
            params = {"weight": w.reshape(in_shape + out_shape)}
            if self.use_bias:
                b = self.b_init(child_key(k, "bias"), dense[1:], self.param_dtype)
                params["bias"] = b.reshape(out_shape)
            return params

        heads, kv = (self.num_heads, head_dim), (self.num_kv_heads or self.num_heads, head_dim)
        kv_in = ((query if key_value is None else key_value).shape[-1],)
        return {
            "query": make("query", (query.shape[-1],), heads),
            "key": make("key", kv_in, kv),
            "value": make("value", kv_in, kv),
            "output": make("output", heads, (features,)),
        }

    def init_cache(
        self, params: Params, batch_size: int | None, max_length: int, dtype: Any = None
    ) -> Cache:
        """An empty KV cache for decoding up to ``max_length`` positions.

        Args:
          params: This layer's params, or their shapes (``jax.eval_shape`` of ``init``);
            only ``key/weight``'s shape and dtype are read.
          batch_size: The batch size, or ``None`` for unbatched decoding.
          max_length: Number of positions the cache holds.
          dtype: Dtype of the cached keys and values; that of ``key/weight`` by default.

        Returns:
          ``{"key": zeros [batch_size, max_length, num_kv_heads, head_dim], "value":
          (same), "index": int32 0}``.
        """
        name = self.layer_name()
        weight = params.get("key", {}).get("weight") if isinstance(params, Mapping) else None
        if weight is None or len(weight.shape) != 3:
            raise ParamsError(
                name,
                "init_cache needs this layer's params (or their shapes) with 'key/weight' "
                "of shape [in_features, num_kv_heads, head_dim].",
            )
        if batch_size is not None:
            check_positive_int(name, "batch_size", batch_size)
        check_positive_int(name, "max_length", max_length)
        batch = () if batch_size is None else (batch_size,)
        shape = (*batch, max_length, *weight.shape[1:])
        dtype = weight.dtype if dtype is None else dtype
        zeros = jnp.zeros(shape, dtype)
        return {"key": zeros, "value": zeros, "index": jnp.zeros((), jnp.int32)}

    # ----------------------------------------------------------------- apply

    def _project(self, params: Params, x: jax.Array) -> jax.Array:
        y = jnp.einsum("btf,fhd->bthd", x, params["weight"])
        return y + params["bias"] if self.use_bias else y

    def apply(
        self,
        params: Params,
        query: jax.Array,
        key_value: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        cache: Cache | None = None,
        key: jax.Array | None = None,
        is_training: bool = False,
    ) -> jax.Array | tuple[jax.Array, Cache]:
        rate = self.dropout_rate if is_training else 0.0
        if rate and key is None:
            raise MissingKeyError(
                self.layer_name(),
                "is_training=True with dropout_rate > 0 needs a PRNG key for the attention "
                "dropout. Hint: pass key=jax.random.key(...) to apply, or is_training=False.",
            )
        batched = query.ndim == 3
        if not batched:  # one code path: add a batch axis of 1, drop it at the end
            query = query[None]
            key_value = None if key_value is None else key_value[None]
            if cache is not None:
                cache = {**cache, "key": cache["key"][None], "value": cache["value"][None]}
        kv_input = query if key_value is None else key_value
        q = self._project(params["query"], query)
        k = self._project(params["key"], kv_input)
        v = self._project(params["value"], kv_input)
        length = query.shape[1]
        start = 0 if cache is None else cache["index"]
        if self.use_rope:
            q = rotary_embedding(q, start + jnp.arange(length), self.rope_base)
            k = rotary_embedding(k, start + jnp.arange(k.shape[1]), self.rope_base)
        mask = None if mask is None else _as_4d(jnp.asarray(mask))
        if cache is not None:
            k, v, cache = self._write(cache, k, v)
            visible = jnp.arange(k.shape[1]) < start + jnp.arange(1, length + 1)[:, None]
            mask = _as_4d(combine_masks(mask, visible))
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        if rate:
            out = _attend_explicit(q, k, v, mask, rate, child_key(key, "dropout"))
        elif _fused(self.implementation):
            out = _attend_fused(q, k, v, mask, self.implementation)
        else:
            out = _attend_explicit(q, k, v, mask)
        y = jnp.einsum("bthd,hdf->btf", out, params["output"]["weight"])
        if self.use_bias:
            y = y + params["output"]["bias"]
        if cache is None:
            return y if batched else y[0]
        overflow = start + length > k.shape[1]  # only a traced index gets this far
        y = jnp.where(overflow, jnp.full((), jnp.nan, y.dtype), y)
        if not batched:
            y, cache = y[0], {**cache, "key": cache["key"][0], "value": cache["value"][0]}
        return y, cache

    @staticmethod
    def _write(cache: Cache, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array, Cache]:
        index = jnp.asarray(cache["index"])
        at = (jnp.zeros((), index.dtype), index, *[jnp.zeros((), index.dtype)] * 2)
        keys = jax.lax.dynamic_update_slice(cache["key"], k.astype(cache["key"].dtype), at)
        values = jax.lax.dynamic_update_slice(cache["value"], v.astype(cache["value"].dtype), at)
        return keys, values, {"key": keys, "value": values, "index": index + k.shape[1]}
