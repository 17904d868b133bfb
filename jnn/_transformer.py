"""Transformer blocks (pre-norm) and a decoder-only language model builder, whose blocks
run unrolled or stacked in one ``jax.lax.scan`` (``jnn.Repeat``), with optional remat."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn._attention import MultiHeadAttention
from jnn._checks import check_positive_int, check_rank, is_apply_check, is_concrete
from jnn._dense import MLP, Dense
from jnn._depth import Checkpointed, Repeat, stack_params, unstack_params
from jnn._dropout import Dropout
from jnn._embedding import Embedding
from jnn._errors import ParamsError, ShapeError
from jnn._kv_cache import _overflow
from jnn._module import Module, Params
from jnn._norm import LayerNorm
from jnn._positional import LearnedPositions
from jnn._scope import Scope
from jnn.activations import gelu

__all__ = ["TransformerBlock", "TransformerLM"]

_TABLE_HINT = (
    "Hint: a (batch, features) table would make examples attend to each other; "
    "add a length axis: x[:, None, :]."
)


def _check_rate(owner: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{owner}: dropout_rate must be in [0, 1], got {rate!r}.")


def _check_implementation(owner: str, implementation: str | None) -> None:
    if implementation not in (None, "einsum", "xla", "cudnn"):
        raise ValueError(
            f"{owner}: implementation must be None, 'einsum', 'xla' or 'cudnn', "
            f"got {implementation!r}."
        )


class TransformerBlock(Module):
    r"""A pre-norm transformer block: attention, then an MLP, each on a residual path.

    .. math::
       h = x + \mathrm{Dropout}(\mathrm{Attention}(\mathrm{Norm}(x))), \qquad
       y = h + \mathrm{Dropout}(\mathrm{MLP}(\mathrm{Norm}(h)))

    An encoder block has ``causal=False``; a decoder block ``causal=True`` (each
    position attends to itself and earlier ones) and, with ``cross_attention=True``, a
    third residual step that attends to a ``context`` (the encoder's output).

    The causal mask and the padding given as ``lengths`` are not built as arrays when
    attention runs through ``jax.nn.dot_product_attention`` (on GPUs and TPUs, or with
    ``implementation="xla"`` or ``"cudnn"``): they reach it as ``is_causal`` and
    ``key_value_seq_lengths``, which cuDNN's fused kernel uses to skip hidden blocks.
    A ``mask`` of your own, the einsum path (a CPU's default), dropout and a KV cache
    fold them into a boolean mask instead, with the same result.

    Args:
      num_heads: Attention heads.
      mlp_features: Hidden width of the default MLP (``features -> mlp_features ->
        features`` with ``activation``).
      num_kv_heads: Key/value heads for grouped-query attention; ``num_heads`` by default.
      causal: Mask attention to earlier positions.
      cross_attention: Add attention to ``context`` after self-attention.
      dropout_rate: Dropout after attention and after the MLP, and on attention weights.
      use_rope: Rotary position embeddings in self-attention.
      norm: The normalization layer used before each step (``LayerNorm()`` by default;
        ``RMSNorm()`` for LLaMA-style blocks).
      mlp: A layer replacing the default MLP; it must map ``features`` to ``features``.
      activation: Activation of the default MLP.
      implementation: How self- and cross-attention are computed (see
        ``MultiHeadAttention``): ``None`` (by backend), ``"einsum"``, ``"xla"`` or
        ``"cudnn"``.

    Shapes:
      ``x`` ``[batch, length, features]`` to the same shape; ``context`` ``[batch,
      context_length, context_features]``. ``init`` takes a batched sample and refuses
      a rank-2 ``x``, which is most often a ``(batch, features)`` table whose rows would
      attend to each other (add a length axis: ``x[:, None, :]``). ``apply`` also takes
      one unbatched sequence ``[length, features]`` (with ``context`` ``[context_length,
      context_features]``), so ``jax.vmap(block.apply, ...)`` over examples works.
      ``features`` must be divisible by ``num_heads``. Children: ``norm_1``,
      ``attention``, (``norm_cross``, ``cross_attention``), ``norm_2``, ``mlp``.

    ``apply(params, x, context=None, *, mask=None, lengths=None, cache=None)``:
    ``mask`` (boolean, True = attend) is combined with the causal mask; ``lengths``
    (integer ``[batch]``, a scalar for one unbatched sequence) hides the keys at
    positions ``>= lengths[b]`` in self-attention, as ``mask=padding_mask(lengths,
    length)`` does; with a ``cache`` from ``init_cache`` the block decodes
    incrementally and returns ``(y, new_cache)`` (``mask`` and ``lengths`` then index
    the cache's positions).

    Raises:
      ValueError: At construction, for a non-positive ``num_heads``, ``mlp_features``
        or ``num_kv_heads``, a ``num_kv_heads`` that does not divide ``num_heads``, a
        ``dropout_rate`` outside ``[0, 1]`` or an unknown ``implementation``.
      ShapeError: If ``x`` has the wrong rank, ``features`` is not divisible by
        ``num_heads`` (or gives an odd head size with ``use_rope``), a ``context`` is
        missing or unexpected, or a custom ``mlp`` changes the shape.

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> block = jnn.TransformerBlock(num_heads=4, mlp_features=64, causal=True)
      >>> x = jnp.ones((2, 10, 32))
      >>> params = block.init(jax.random.key(0), x)
      >>> block.apply(params, x).shape
      (2, 10, 32)
    """

    num_heads: int
    mlp_features: int
    num_kv_heads: int | None = None
    causal: bool = False
    cross_attention: bool = False
    dropout_rate: float = 0.0
    use_rope: bool = False
    norm: Module = LayerNorm()
    mlp: Module | None = None
    activation: Callable = gelu
    implementation: str | None = None

    def __post_init__(self):
        for name in ("num_heads", "mlp_features"):
            check_positive_int(self, name, getattr(self, name))
        if self.num_kv_heads is not None:
            check_positive_int(self, "num_kv_heads", self.num_kv_heads)
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"TransformerBlock: num_heads ({self.num_heads}) must be a multiple of "
                    f"num_kv_heads ({self.num_kv_heads})."
                )
        _check_rate("TransformerBlock", self.dropout_rate)
        _check_implementation("TransformerBlock", self.implementation)

    def _check_input(self, scope: Scope, x: Any, context: Any) -> None:
        name = self.layer_name()
        # A leaf running this block (Repeat, remat) checks apply's params by tracing init
        # on apply's inputs, which may be one unbatched sequence.
        if scope.initializing and not is_apply_check():
            hint = _TABLE_HINT if jnp.ndim(x) == 2 else ""
            check_rank(self, x, 3, "input [batch, length, features]", hint=hint)
        else:
            layout = "input [batch, length, features] (or one unbatched [length, features])"
            check_rank(self, x, (2, 3), layout)
        if self.cross_attention and context is None:
            raise ShapeError(name, "cross_attention=True needs a context input.")
        if not self.cross_attention and context is not None:
            raise ShapeError(
                name,
                f"got a context of shape {tuple(jnp.shape(context))}, but cross_attention "
                "is False. Hint: build the block with cross_attention=True.",
            )
        features = x.shape[-1]
        if features % self.num_heads:
            raise ShapeError(
                name,
                f"expected input features divisible by num_heads {self.num_heads}, got "
                f"shape {tuple(x.shape)}.",
            )
        if self.use_rope and (features // self.num_heads) % 2:
            raise ShapeError(
                name,
                f"use_rope needs an even head size features / num_heads, got "
                f"{features} / {self.num_heads} = {features // self.num_heads}.",
            )

    def _attention(self, use_rope: bool, causal: bool) -> MultiHeadAttention:
        return MultiHeadAttention(
            self.num_heads,
            num_kv_heads=self.num_kv_heads,
            dropout_rate=self.dropout_rate,
            use_rope=use_rope,
            implementation=self.implementation,
            causal=causal,
        )

    def init_cache(self, params: Params, batch_size: int | None, max_length: int) -> dict:
        """An empty self-attention KV cache for ``max_length`` positions (see
        ``MultiHeadAttention.init_cache``); ``batch_size`` is ``None`` for unbatched
        decoding."""
        if not isinstance(params, Mapping) or "attention" not in params:
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise ParamsError(
                self.layer_name(),
                f"init_cache needs this block's params (or their shapes), with an "
                f"'attention' entry; got {got}.",
            )
        return self._attention(self.use_rope, self.causal).init_cache(
            params["attention"], batch_size, max_length
        )

    def forward(
        self,
        scope: Scope,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        lengths: jax.Array | None = None,
        cache: dict | None = None,
    ) -> Any:
        self._check_input(scope, x, context)
        drop = Dropout(self.dropout_rate)
        h = scope("norm_1", self.norm, x)
        attention = self._attention(self.use_rope, self.causal)
        if cache is None:
            a = scope("attention", attention, h, mask=mask, kv_lengths=lengths)
        else:  # the cache attends causally by itself
            a, cache = scope("attention", attention, h, mask=mask, kv_lengths=lengths, cache=cache)
        x = x + scope("dropout_1", drop, a)
        if self.cross_attention:
            h = scope("norm_cross", self.norm, x)
            a = scope("cross_attention", self._attention(False, False), h, context)
            x = x + scope("dropout_cross", drop, a)
        h = scope("norm_2", self.norm, x)
        mlp = self.mlp or MLP([self.mlp_features, x.shape[-1]], activation=self.activation)
        m = scope("mlp", mlp, h)
        if jnp.shape(m) != jnp.shape(x):
            raise ShapeError(
                self.layer_name(),
                f"the mlp must map features to features: it gave shape {tuple(jnp.shape(m))} "
                f"for input shape {tuple(x.shape)}.",
            )
        x = x + scope("dropout_2", drop, m)
        return x if cache is None else (x, cache)


class TransformerLM(Module):
    """A decoder-only language model: embeddings, causal blocks, a final norm, logits.

    Token ids ``[batch, length]`` map to logits ``[batch, length, vocab_size]``; position
    ``t``'s logits predict token ``t + 1``. Positions come from rotary embeddings in
    every block (``use_rope=True``, the default) or from a learned table of
    ``max_length`` rows. With ``tie_embeddings`` the output projection is the embedding
    matrix transposed.

    **Depth.** By default the blocks are unrolled: ``block_0 ... block_{n-1}`` each
    have their own entry in ``params`` and are traced and compiled one by one.
    ``scan_blocks=True`` stacks them with ``jnn.Repeat`` instead: one ``jax.vmap``
    creates them and one ``jax.lax.scan`` applies them, so trace and compile time stay
    those of one block however deep the model is; on a CPU the step itself is slower,
    since XLA cannot fuse across the loop. ``remat=True`` (or a policy from
    ``jax.checkpoint_policies``, e.g. ``dots_with_no_batch_dims_saveable``) wraps each
    block in ``jax.checkpoint``: its activations are recomputed in the backward pass
    instead of stored, trading compute for memory. The transformer page of the docs
    gives measured times and memory for each choice.

    Args:
      vocab_size: Number of token ids.
      num_layers: Number of ``TransformerBlock``\\ s.
      features: Model width.
      num_heads: Attention heads per block.
      mlp_features: Hidden width of each block's MLP (``4 * features`` by default).
      max_length: Longest sequence (for learned positions and caches).
      dropout_rate: Dropout in every block.
      use_rope: Rotary positions; otherwise a learned position table.
      tie_embeddings: Share the embedding matrix with the output projection.
      norm: Normalization layer of the blocks and the final norm.
      scan_blocks: Stack the blocks and run them in one ``jax.lax.scan``.
      remat: ``False``, ``True`` or a ``jax.checkpoint`` policy, applied per block.
      implementation: How attention is computed (see ``MultiHeadAttention``). The
        causal mask reaches ``jax.nn.dot_product_attention`` as ``is_causal=True``, with
        no mask array, so ``"cudnn"`` runs cuDNN's fused causal kernel (fp16/bf16).

    Shapes:
      ``init`` takes token ids ``[batch, length]`` and refuses a rank-1 sample (add the
      batch axis: ``tokens[None]``); ``apply`` maps ``[batch, length]`` to logits
      ``[batch, length, vocab_size]``, and also one unbatched sequence ``[length]`` to
      ``[length, vocab_size]`` (for ``jax.vmap``). ``length`` is at most ``max_length``
      with learned positions; with rotary ones only a cache limits it.

      Params: ``{"embed", ("positions"), "block_0", ..., "block_{n-1}", "norm",
      ("head")}``, each block's entry being ``TransformerBlock``'s. With
      ``scan_blocks=True`` the blocks are one entry ``"blocks"``: a block's params with
      a leading axis of ``num_layers`` on every leaf (``blocks/attention/query/weight``
      is ``[num_layers, features, num_heads, head_dim]``). ``stack_blocks`` and
      ``unstack_blocks`` convert one layout to the other. The two layouts draw their
      initial weights from the same distributions with different keys (block ``i`` of
      a scan uses ``fold_in(child_key(key, "blocks"), i)``), so ``init`` of the two
      models gives different numbers; converted params give the same outputs.

    Decoding: ``cache = model.init_cache(params, batch_size)``, then
    ``logits, cache = model.apply(params, tokens, cache=cache)`` on the prompt and on
    each new token gives the same logits as the full forward pass. Decoding past
    ``max_length`` raises: at once when the position is concrete, and when the compiled
    program runs under ``jit`` (a ``ValueError`` wrapped in JAX's runtime error). The
    cache has one entry per block, ``{"block_i": {"key", "value", "index"}}``, or with
    ``scan_blocks`` one entry ``"blocks"`` whose leaves have a leading axis of
    ``num_layers``, which the scan reads and writes with the params.

    Raises:
      ValueError: At construction, for a non-positive count or size, an ``mlp_features``
        below 1, a ``dropout_rate`` outside ``[0, 1]``, ``features`` not divisible by
        ``num_heads``, an odd head size ``features / num_heads`` with ``use_rope``, or an
        unknown ``implementation``.
      ShapeError: If the tokens have the wrong rank, or the cache does not match.
      DTypeError: If the tokens are not integers (raised by ``embed``).

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.TransformerLM(vocab_size=50, num_layers=2, features=32, num_heads=4)
      >>> tokens = jnp.zeros((2, 16), jnp.int32)
      >>> params = lm.init(jax.random.key(0), tokens)
      >>> lm.apply(params, tokens).shape
      (2, 16, 50)
      >>> deep = jnn.TransformerLM(50, 2, 32, 4, scan_blocks=True, remat=True)
      >>> stacked = deep.stack_blocks(params)
      >>> stacked["blocks"]["attention"]["query"]["weight"].shape
      (2, 32, 4, 8)
      >>> bool(jnp.allclose(deep.apply(stacked, tokens), lm.apply(params, tokens), atol=1e-5))
      True
    """

    vocab_size: int
    num_layers: int
    features: int
    num_heads: int
    mlp_features: int | None = None
    max_length: int = 512
    dropout_rate: float = 0.0
    use_rope: bool = True
    tie_embeddings: bool = True
    norm: Module = LayerNorm()
    scan_blocks: bool = False
    remat: bool | Callable = False
    implementation: str | None = None

    def __post_init__(self):
        name = self.layer_name()
        for field in ("vocab_size", "num_layers", "features", "num_heads", "max_length"):
            check_positive_int(name, field, getattr(self, field))
        if self.mlp_features is not None:
            check_positive_int(name, "mlp_features", self.mlp_features)
        _check_rate(name, self.dropout_rate)
        _check_implementation(name, self.implementation)
        if self.features % self.num_heads:
            raise ValueError(
                f"{name}: features ({self.features}) must be divisible by num_heads "
                f"({self.num_heads})."
            )
        head_dim = self.features // self.num_heads
        if self.use_rope and head_dim % 2:
            raise ValueError(
                f"{name}: use_rope needs an even head size features / num_heads, got "
                f"{self.features} / {self.num_heads} = {head_dim}."
            )

    def _block(self) -> TransformerBlock:
        return TransformerBlock(
            self.num_heads,
            self.mlp_features or 4 * self.features,
            causal=True,
            dropout_rate=self.dropout_rate,
            use_rope=self.use_rope,
            norm=self.norm,
            implementation=self.implementation,
        )

    def _block_names(self) -> list[str]:
        return [f"block_{i}" for i in range(self.num_layers)]

    def _cache_names(self) -> list[str]:
        return ["blocks"] if self.scan_blocks else self._block_names()

    def stack_blocks(self, params: Params) -> Params:
        """The params of the unrolled layout in the scanned one (``scan_blocks=True``).

        ``block_0 ... block_{n-1}`` become one entry ``blocks`` whose leaves are theirs
        stacked along a new leading axis; the other entries are kept as they are.

        Raises:
          ParamsError: If a block's entry is missing or the blocks differ in structure.
        """
        return stack_params(self, params, self._block_names(), "blocks")

    def unstack_blocks(self, params: Params) -> Params:
        """The params of the scanned layout in the unrolled one (``scan_blocks=False``).

        Raises:
          ParamsError: If ``blocks`` is missing or its leading axis is not ``num_layers``.
        """
        return unstack_params(self, params, self._block_names(), "blocks")

    def init_cache(self, params: Params, batch_size: int | None) -> dict:
        """Empty KV caches of every block, for ``max_length`` positions; ``batch_size``
        is ``None`` for unbatched decoding. With ``scan_blocks`` the caches are stacked:
        ``{"blocks": {"key": [num_layers, batch, max_length, heads, head_dim], "value":
        (same), "index": int32 [num_layers]}}``."""
        names = self._cache_names()
        missing = [n for n in names if not isinstance(params, Mapping) or n not in params]
        if missing:
            raise ParamsError(
                self.layer_name(),
                f"init_cache needs this model's params (or their shapes); missing {missing}.",
            )
        if batch_size is not None:
            check_positive_int(self, "batch_size", batch_size)
        block = self._block()
        if not self.scan_blocks:
            return {
                name: block.init_cache(params[name], batch_size, self.max_length) for name in names
            }
        one = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(tuple(a.shape[1:]), a.dtype), params["blocks"]
        )
        cache = block.init_cache(one, batch_size, self.max_length)
        return {
            "blocks": jax.tree.map(lambda a: jnp.zeros((self.num_layers, *a.shape), a.dtype), cache)
        }

    def _check_tokens(self, scope: Scope, tokens: Any, cache: Any) -> None:
        if scope.initializing:
            hint = "Hint: add the batch axis: tokens[None]." if jnp.ndim(tokens) == 1 else ""
            check_rank(self, tokens, 2, "token ids [batch, length]", hint=hint)
        else:
            layout = "token ids [batch, length] (or one unbatched [length])"
            check_rank(self, tokens, (1, 2), layout)
        if cache is None:
            return
        names = self._cache_names()
        hint = "Hint: make it with model.init_cache(params, batch_size)."
        if (
            not isinstance(cache, Mapping)
            or sorted(cache) != sorted(names)
            or not all(isinstance(c, Mapping) and "index" in c for c in cache.values())
        ):
            got = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
            raise ShapeError(
                self.layer_name(),
                f"expected a cache with one entry per block {names}, got {got}. {hint}",
            )
        if self.scan_blocks:
            shapes = sorted({tuple(jnp.shape(a))[:1] for a in jax.tree.leaves(cache["blocks"])})
            if shapes != [(self.num_layers,)]:
                raise ShapeError(
                    self.layer_name(),
                    f"expected a cache stacked over the {self.num_layers} blocks (a leading "
                    f"axis of {self.num_layers} on every leaf), got leading shapes "
                    f"{shapes}. {hint}",
                )
            # Inside the scan the index is traced; check a concrete one here, at once.
            index, keys = cache["blocks"]["index"], cache["blocks"]["key"]
            if is_concrete(index) and jnp.ndim(index) == 1:
                start, length, max_length = int(index[0]), tokens.shape[-1], keys.shape[-3]
                if start + length > max_length:
                    raise ShapeError(self.layer_name(), _overflow(length, start, max_length))

    def _check_layout(self, scope: Scope) -> None:
        """Point at the conversion when params of the other layout arrive."""
        given = scope._params if not scope.initializing else {}
        layouts = {True: ("blocks", "stack_blocks"), False: ("block_0", "unstack_blocks")}
        wanted, convert = layouts[self.scan_blocks]
        other = layouts[not self.scan_blocks][0]
        if isinstance(given, Mapping) and wanted not in given and other in given:
            raise ParamsError(
                self.layer_name(),
                f"got params with '{other}' for scan_blocks={self.scan_blocks}, which expects "
                f"'{wanted}'. Hint: convert them with model.{convert}(params).",
            )

    def forward(self, scope: Scope, tokens: jax.Array, *, cache: dict | None = None) -> Any:
        self._check_tokens(scope, tokens, cache)
        self._check_layout(scope)
        embed = Embedding(self.vocab_size, self.features)
        x = scope("embed", embed, tokens)
        if not self.use_rope:
            offset = 0
            if cache is not None:
                blocks = cache["blocks"] if self.scan_blocks else cache["block_0"]
                offset = blocks["index"][0] if self.scan_blocks else blocks["index"]
            x = scope("positions", LearnedPositions(self.max_length), x, offset=offset)
        block = self._block()
        new_cache = {}
        if self.scan_blocks:
            stack = Repeat(block, self.num_layers, remat=self.remat)
            if cache is None:
                x = scope("blocks", stack, x)
            else:
                x, new_cache["blocks"] = scope("blocks", stack, x, cache=cache["blocks"])
        else:
            # Decoding computes no gradients, so it needs no remat.
            layer = (
                block if cache is not None or not self.remat else Checkpointed(block, self.remat)
            )
            for name in self._block_names():
                if cache is None:
                    x = scope(name, layer, x)
                else:
                    x, new_cache[name] = scope(name, layer, x, cache=cache[name])
        x = scope("norm", self.norm, x)
        if self.tie_embeddings:
            logits = scope("embed", embed, x, attend=True)
        else:
            logits = scope("head", Dense(self.vocab_size), x)
        return logits if cache is None else (logits, new_cache)
