"""Multi-head attention, with boolean masks, grouped-query heads, RoPE and a KV cache.

The masks are in ``jnn._masks``, the attention kernels in ``jnn._dot_product_attention``
and the cache in ``jnn._kv_cache``; this module holds the layer that ties them together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn import initializers
from jnn._checks import check_positive_int, check_rank, is_apply_check, is_shape_trace
from jnn._dot_product_attention import attend, structured_mask
from jnn._errors import DTypeError, MissingKeyError, ShapeError
from jnn._kv_cache import (
    Cache,
    check_cache,
    check_room,
    empty_cache,
    visible_positions,
    write_cache,
)
from jnn._masks import as_4d, check_attention_mask, check_lengths, combine_masks
from jnn._module import Module, Params
from jnn._positional import _check_base, rotary_embedding
from jnn._scope import child_key

__all__ = ["MultiHeadAttention"]

_TABLE_HINT = (
    "Hint: a (batch, features) table would make examples attend to each other; "
    "add a length axis: x[:, None, :]."
)


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

    **Causal and padding masks without a mask array.** ``causal=True`` lets query ``i``
    attend to keys ``j <= i`` only, and ``apply(..., kv_lengths=lengths)`` hides the keys
    at positions ``j >= lengths[b]`` (as ``mask=padding_mask(lengths, kv_len)`` does).
    When no ``mask`` is given and ``jax.nn.dot_product_attention`` runs (see
    ``implementation``), they reach it as ``is_causal=True`` and
    ``key_value_seq_lengths``: no ``[q_len, kv_len]`` mask is built, and cuDNN's fused
    kernel (``implementation="cudnn"``) skips the hidden blocks. With a ``mask``, on the
    einsum path, with dropout or with a KV cache they are folded into one boolean mask;
    every path gives the same values and gradients.

    Without attention dropout (at inference, or ``dropout_rate=0``) the layer calls
    ``jax.nn.dot_product_attention`` on accelerators (``implementation="cudnn"`` runs
    cuDNN's fused kernel; the default leaves the choice to JAX, whose XLA form it is in
    JAX 0.10), and on a CPU writes it out as two einsums and a softmax, which XLA runs
    faster there (see ``implementation``). With dropout it computes the weights
    explicitly and drops them like ``Dropout`` (kept weights scaled by ``1 / (1 -
    rate)``) with the key ``child_key(key, "dropout")``.

    **Decoding with a KV cache.** ``cache = layer.init_cache(params, batch_size,
    max_length)`` makes an empty cache; ``y, cache = layer.apply(params, x, cache=cache)``
    writes the new keys and values at ``cache["index"]``, lets each query attend to the
    cached positions up to its own (causal), and returns the advanced cache. ``x`` may
    be one step ``[batch, 1, features]`` or a chunk (a prompt) of several. The call is
    pure, so it works under ``jit`` and as the body of ``jax.lax.scan``. The cache is an
    explicit argument rather than the layer's ``state``: it exists only while decoding,
    has a size (``max_length``) that ``init`` cannot know, and is reset per sequence. As
    a keyword of ``apply`` it passes through a composite's ``scope("attention", layer,
    x, cache=...)``. Caching covers self-attention only. A cached call always uses an
    explicit mask: its queries sit at positions ``index ... index + length - 1`` of the
    cache, not at ``0 ... length - 1`` as ``is_causal`` assumes.

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
      rope_base: The ``base`` of ``rotary_embedding`` (greater than 1).
      w_init: Initializer of the weights. It is called with the 2-D shape of the
        equivalent dense layer (``[in_features, heads * head_dim]``, or
        ``[num_heads * head_dim, features]`` for the output) and that layer's fan-in,
        so fan-in and fan-out mean what they do for ``Dense`` (and
        ``initializers.pytorch_default()`` gets ``torch.nn.Linear``'s); the result is
        reshaped.
      b_init: Initializer of the biases; it receives the same fan-in.
      param_dtype: Dtype of the parameters.
      implementation: How attention without dropout is computed. ``None`` (the
        default) picks by backend: ``jax.nn.dot_product_attention`` on GPUs and TPUs,
        the einsum form on a CPU (faster there). ``"einsum"`` forces the einsum form;
        ``"xla"`` and ``"cudnn"`` force ``jax.nn.dot_product_attention`` with that
        implementation (``"cudnn"``: cuDNN's fused kernel on NVIDIA GPUs, fp16/bf16).
      causal: Let query ``i`` attend to keys ``j <= i`` only (self-attention in a
        decoder). A KV cache is causal whatever this says.

    Shapes:
      ``init`` takes a batched sample: ``query`` ``[batch, q_len, q_features]`` and
      ``key_value`` ``[batch, kv_len, kv_features]``. It refuses a rank-2 input, which
      is most often a ``(batch, features)`` table whose rows would attend to each other
      (add a length axis, ``x[:, None, :]``). ``apply`` takes the same, or one unbatched
      example ``[q_len, q_features]`` (and ``[kv_len, kv_features]``), so
      ``jax.vmap(layer.apply, ...)`` over examples works; a rank-2 input to ``apply`` is
      always read as one sequence.
      The output is ``[batch, q_len, features]``. ``mask`` broadcasts to ``[batch,
      num_heads, q_len, kv_len]`` (``kv_len`` is the cache's ``max_length`` when
      decoding); ``kv_lengths`` is integer ``[batch]`` (a scalar for one unbatched
      sequence) with values in ``[0, kv_len]``. ``init`` creates, with ``h =
      num_heads``, ``k = num_kv_heads`` and ``d = head_dim``::

        {"query":  {"weight": [q_features, h, d],  "bias": [h, d]},
         "key":    {"weight": [kv_features, k, d], "bias": [k, d]},
         "value":  {"weight": [kv_features, k, d], "bias": [k, d]},
         "output": {"weight": [h, d, features],    "bias": [features]}}

      A cache is ``{"key": [batch, max_length, k, d], "value": (same), "index": int32
      []}``, without ``batch`` for unbatched inputs.

    Raises:
      ShapeError: If an input has the wrong rank, its last dimension differs from the
        one set at init, the mask does not broadcast to the logits, ``kv_lengths`` has
        the wrong shape, or the cache does not fit (wrong shapes, or, when ``index`` is
        concrete, too few positions left).
      DTypeError: If an input is not floating point, the mask is not boolean, or
        ``kv_lengths`` or the cache index is not an integer.
      MissingKeyError: If training with ``dropout_rate > 0`` and no ``key``.
      ValueError: If concrete ``kv_lengths`` lie outside ``[0, kv_len]`` (traced ones
        are not checked). And when the compiled program runs, if a traced cache
        ``index`` (under ``jit`` or ``scan``) has too few positions left; it names the
        index and the cache's ``max_length`` and arrives wrapped in JAX's runtime error.

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
      >>> decoder = MultiHeadAttention(num_heads=4, num_kv_heads=2, causal=True)
      >>> bool(jnp.allclose(decoder.apply(params, x), y, atol=1e-6))
      True
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
    causal: bool = False

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
            try:
                self._head_dim(self.features or 0)  # fail here, not at init, if we can
            except ShapeError as error:
                raise ValueError(str(error)) from None
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ValueError(f"{name}: dropout_rate must be in [0, 1], got {self.dropout_rate!r}.")
        _check_base(name, self.rope_base, "rope_base")
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
            derived = f" (features {features} / num_heads {self.num_heads})"
            derived = "" if self.head_dim else derived
            raise ShapeError(
                self.layer_name(), f"use_rope needs an even head_dim, got {head_dim}{derived}."
            )
        return head_dim

    # ----------------------------------------------------------------- checks

    def _check_floating(self, x: Any, what: str) -> None:
        dtype = jnp.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):
            hint = "Hint: cast it first, e.g. x.astype(jnp.float32)."
            if jnp.issubdtype(dtype, jnp.integer):
                hint = "Hint: embed token ids first (jnn.Embedding); cast other data to float."
            raise DTypeError(
                self.layer_name(), f"expected a floating-point {what}, got dtype {dtype}. {hint}"
            )

    def _check_sequences(self, query: Any, key_value: Any, batched: bool = False) -> None:
        """Ranks and dtypes; ``batched``: refuse an unbatched rank-2 input (init)."""
        ranks = (3,) if batched else (2, 3)
        for what, x, axes in (("query", query, "q_len"), ("key_value", key_value, "kv_len")):
            if x is None:
                continue
            layout = f"{what} [batch, {axes}, features]"
            if not batched:
                layout += f" (or one unbatched [{axes}, features])"
            hint = _TABLE_HINT if batched and jnp.ndim(x) == 2 else ""
            check_rank(self, x, ranks, layout, hint=hint)
            self._check_floating(x, what)
        if key_value is not None and (
            key_value.ndim != query.ndim or key_value.shape[:-2] != query.shape[:-2]
        ):
            raise ShapeError(
                self.layer_name(),
                f"expected key_value [batch, kv_len, features] with the query's batch "
                f"shape {tuple(query.shape[:-2])}, got shape {tuple(key_value.shape)} "
                f"(query shape {tuple(query.shape)}).",
            )

    def check_inputs(
        self, params: Params, query, key_value=None, *, mask=None, cache=None, kv_lengths=None
    ):
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
            w = weights.get("key")
            heads = tuple(w.shape[1:]) if w is not None and w.ndim == 3 else None
            kv_len = check_cache(self, heads, query, key_value, cache)
        if mask is not None:
            # Unbatched inputs get a batch axis of 1 inside, so a mask may have one too.
            batch = query.shape[0] if query.ndim == 3 else 1
            check_attention_mask(self, mask, (batch, self.num_heads, query.shape[-2], kv_len))
        if kv_lengths is not None:
            check_lengths(self, kv_lengths, tuple(query.shape[:-2]), kv_len, "kv_lengths")

    # ----------------------------------------------------------------- init

    def init(
        self, key: jax.Array, query, key_value=None, *, mask=None, cache=None, kv_lengths=None
    ) -> Params:
        del mask, cache, kv_lengths  # apply's keywords arrive here; params do not depend on them
        # init needs a batched sample, except when apply runs it on its own inputs to
        # check the params: those may be one unbatched example (jax.vmap).
        self._check_sequences(query, key_value, batched=not is_apply_check())
        features = self.features or query.shape[-1]
        head_dim = self._head_dim(features)

        def make(name: str, in_shape: tuple, out_shape: tuple) -> Params:
            k = child_key(key, name)
            fan_in = math.prod(in_shape)
            dense = (fan_in, math.prod(out_shape))
            w = initializers.initialize(
                self.w_init, child_key(k, "weight"), dense, self.param_dtype, fan_in=fan_in
            )
            params = {"weight": w.reshape(in_shape + out_shape)}
            if self.use_bias:
                b = initializers.initialize(
                    self.b_init, child_key(k, "bias"), dense[1:], self.param_dtype, fan_in=fan_in
                )
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

        Raises:
          ParamsError: If ``params`` lack ``key/weight`` ``[in, num_kv_heads, head_dim]``.
          TypeError, ValueError: If ``batch_size`` or ``max_length`` is not a positive int.
          DTypeError: If ``dtype`` is not floating point.
        """
        return empty_cache(self, params, batch_size, max_length, dtype)

    # ----------------------------------------------------------------- apply

    def _implementation_for(self, dtype: Any, dropout_rate: float) -> str | None:
        """``implementation``, checked against the dtype when cuDNN is forced."""
        if self.implementation != "cudnn" or dropout_rate or dtype in (jnp.float16, jnp.bfloat16):
            return self.implementation
        if is_shape_trace():  # init traces shapes only; the portable form gives the same
            return None
        raise DTypeError(
            self.layer_name(),
            f"implementation='cudnn' runs cuDNN's fused kernel, which takes float16 or "
            f"bfloat16, got {jnp.dtype(dtype).name} queries. Hint: compute in bfloat16 with "
            "jnn.MixedPrecision(model, jnp.bfloat16), or leave implementation=None to let "
            "JAX choose.",
        )

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
        kv_lengths: jax.Array | None = None,
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
        if kv_lengths is not None:  # int32, as jax.nn.dot_product_attention wants
            kv_lengths = jnp.asarray(kv_lengths, jnp.int32).reshape(-1)
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
        mask = None if mask is None else as_4d(jnp.asarray(mask))
        causal = self.causal
        if cache is not None:
            check_room(self, start, length, cache["key"].shape[1])
            k, v, cache = write_cache(cache, k, v)
            # Queries sit at start + t, so is_causal (aligned at 0) would be wrong here.
            visible = visible_positions(start, length, k.shape[1])
            mask = structured_mask(
                combine_masks(mask, visible), length, k.shape[1], False, kv_lengths
            )
            mask, causal, kv_lengths = as_4d(mask), False, None
        k, v = k.astype(q.dtype), v.astype(q.dtype)
        dropout_key = child_key(key, "dropout") if rate else None
        implementation = self._implementation_for(q.dtype, rate)
        out = attend(q, k, v, mask, implementation, rate, dropout_key, causal, kv_lengths)
        y = jnp.einsum("bthd,hdf->btf", out, params["output"]["weight"])
        if self.use_bias:
            y = y + params["output"]["bias"]
        if cache is None:
            return y if batched else y[0]
        if not batched:
            y, cache = y[0], {**cache, "key": cache["key"][0], "value": cache["value"][0]}
        return y, cache
