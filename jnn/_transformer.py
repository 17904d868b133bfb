"""Transformer blocks (pre-norm) and a decoder-only language model builder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn._attention import MultiHeadAttention
from jnn._checks import check_positive_int, check_rank
from jnn._dense import MLP, Dense
from jnn._dropout import Dropout
from jnn._embedding import Embedding
from jnn._errors import ParamsError, ShapeError
from jnn._masks import causal_mask, combine_masks
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


class TransformerBlock(Module):
    r"""A pre-norm transformer block: attention, then an MLP, each on a residual path.

    .. math::
       h = x + \mathrm{Dropout}(\mathrm{Attention}(\mathrm{Norm}(x))), \qquad
       y = h + \mathrm{Dropout}(\mathrm{MLP}(\mathrm{Norm}(h)))

    An encoder block has ``causal=False``; a decoder block ``causal=True`` (each
    position attends to itself and earlier ones) and, with ``cross_attention=True``, a
    third residual step that attends to a ``context`` (the encoder's output).

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

    Shapes:
      ``x`` ``[batch, length, features]`` to the same shape; ``context`` ``[batch,
      context_length, context_features]``. ``init`` takes a batched sample and refuses
      a rank-2 ``x``, which is most often a ``(batch, features)`` table whose rows would
      attend to each other (add a length axis: ``x[:, None, :]``). ``apply`` also takes
      one unbatched sequence ``[length, features]`` (with ``context`` ``[context_length,
      context_features]``), so ``jax.vmap(block.apply, ...)`` over examples works.
      ``features`` must be divisible by ``num_heads``. Children: ``norm_1``,
      ``attention``, (``norm_cross``, ``cross_attention``), ``norm_2``, ``mlp``.

    ``apply(params, x, context=None, *, mask=None, cache=None)``: ``mask`` (boolean,
    True = attend) is combined with the causal mask; with a ``cache`` from
    ``init_cache`` the block decodes incrementally and returns ``(y, new_cache)``.

    Raises:
      ValueError: At construction, for a non-positive ``num_heads``, ``mlp_features``
        or ``num_kv_heads``, a ``num_kv_heads`` that does not divide ``num_heads``, or
        a ``dropout_rate`` outside ``[0, 1]``.
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

    def _check_input(self, scope: Scope, x: Any, context: Any) -> None:
        name = self.layer_name()
        if scope.initializing:
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

    def _attention(self, use_rope: bool) -> MultiHeadAttention:
        return MultiHeadAttention(
            self.num_heads,
            num_kv_heads=self.num_kv_heads,
            dropout_rate=self.dropout_rate,
            use_rope=use_rope,
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
        return self._attention(self.use_rope).init_cache(
            params["attention"], batch_size, max_length
        )

    def forward(
        self,
        scope: Scope,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        cache: dict | None = None,
    ) -> Any:
        self._check_input(scope, x, context)
        drop = Dropout(self.dropout_rate)
        h = scope("norm_1", self.norm, x)
        attention = self._attention(self.use_rope)
        if cache is None:
            causal = causal_mask(x.shape[-2]) if self.causal else None
            a = scope("attention", attention, h, mask=combine_masks(causal, mask))
        else:  # the cache attends causally by itself
            a, cache = scope("attention", attention, h, mask=mask, cache=cache)
        x = x + scope("dropout_1", drop, a)
        if self.cross_attention:
            h = scope("norm_cross", self.norm, x)
            a = scope("cross_attention", self._attention(False), h, context)
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

    Shapes:
      ``init`` takes token ids ``[batch, length]`` and refuses a rank-1 sample (add the
      batch axis: ``tokens[None]``); ``apply`` maps ``[batch, length]`` to logits
      ``[batch, length, vocab_size]``, and also one unbatched sequence ``[length]`` to
      ``[length, vocab_size]`` (for ``jax.vmap``). ``length`` is at most ``max_length``
      with learned positions; with rotary ones only a cache limits it.

    Decoding: ``cache = model.init_cache(params, batch_size)``, then
    ``logits, cache = model.apply(params, tokens, cache=cache)`` on the prompt and on
    each new token gives the same logits as the full forward pass. Decoding past
    ``max_length`` raises: at once when the position is concrete, and when the compiled
    program runs under ``jit`` (a ``ValueError`` wrapped in JAX's runtime error).

    Raises:
      ValueError: At construction, for a non-positive count or size, an ``mlp_features``
        below 1, a ``dropout_rate`` outside ``[0, 1]``, ``features`` not divisible by
        ``num_heads``, or an odd head size ``features / num_heads`` with ``use_rope``.
      ShapeError: If the tokens have the wrong rank, or the cache does not match.
      DTypeError: If the tokens are not integers (raised by ``embed``).

    Examples:
      >>> import jax, jax.numpy as jnp, jnn
      >>> lm = jnn.TransformerLM(vocab_size=50, num_layers=2, features=32, num_heads=4)
      >>> tokens = jnp.zeros((2, 16), jnp.int32)
      >>> params = lm.init(jax.random.key(0), tokens)
      >>> lm.apply(params, tokens).shape
      (2, 16, 50)
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

    def __post_init__(self):
        name = self.layer_name()
        for field in ("vocab_size", "num_layers", "features", "num_heads", "max_length"):
            check_positive_int(name, field, getattr(self, field))
        if self.mlp_features is not None:
            check_positive_int(name, "mlp_features", self.mlp_features)
        _check_rate(name, self.dropout_rate)
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

    def _blocks(self) -> list[tuple[str, TransformerBlock]]:
        block = TransformerBlock(
            self.num_heads,
            self.mlp_features or 4 * self.features,
            causal=True,
            dropout_rate=self.dropout_rate,
            use_rope=self.use_rope,
            norm=self.norm,
        )
        return [(f"block_{i}", block) for i in range(self.num_layers)]

    def init_cache(self, params: Params, batch_size: int | None) -> dict:
        """Empty KV caches of every block, for ``max_length`` positions; ``batch_size``
        is ``None`` for unbatched decoding."""
        blocks = self._blocks()
        missing = [n for n, _ in blocks if not isinstance(params, Mapping) or n not in params]
        if missing:
            raise ParamsError(
                self.layer_name(),
                f"init_cache needs this model's params (or their shapes); missing {missing}.",
            )
        if batch_size is not None:
            check_positive_int(self, "batch_size", batch_size)
        return {
            name: block.init_cache(params[name], batch_size, self.max_length)
            for name, block in blocks
        }

    def _check_tokens(self, scope: Scope, tokens: Any, cache: Any) -> None:
        if scope.initializing:
            hint = "Hint: add the batch axis: tokens[None]." if jnp.ndim(tokens) == 1 else ""
            check_rank(self, tokens, 2, "token ids [batch, length]", hint=hint)
        else:
            layout = "token ids [batch, length] (or one unbatched [length])"
            check_rank(self, tokens, (1, 2), layout)
        names = [n for n, _ in self._blocks()]
        if cache is not None and (
            not isinstance(cache, Mapping)
            or sorted(cache) != sorted(names)
            or not all(isinstance(c, Mapping) and "index" in c for c in cache.values())
        ):
            got = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
            raise ShapeError(
                self.layer_name(),
                f"expected a cache with one entry per block {names}, got {got}. Hint: make "
                "it with model.init_cache(params, batch_size).",
            )

    def forward(self, scope: Scope, tokens: jax.Array, *, cache: dict | None = None) -> Any:
        self._check_tokens(scope, tokens, cache)
        embed = Embedding(self.vocab_size, self.features)
        x = scope("embed", embed, tokens)
        if not self.use_rope:
            offset = 0 if cache is None else cache["block_0"]["index"]
            x = scope("positions", LearnedPositions(self.max_length), x, offset=offset)
        new_cache = {}
        for name, block in self._blocks():
            if cache is None:
                x = scope(name, block, x)
            else:
                x, new_cache[name] = scope(name, block, x, cache=cache[name])
        x = scope("norm", self.norm, x)
        if self.tie_embeddings:
            logits = scope("embed", embed, x, attend=True)
        else:
            logits = scope("head", Dense(self.vocab_size), x)
        return logits if cache is None else (logits, new_cache)
