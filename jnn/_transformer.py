"""Transformer blocks (pre-norm) and a decoder-only language model builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jnn._attention import MultiHeadAttention, causal_mask, combine_masks
from jnn._checks import check_positive_int
from jnn._dense import MLP, Dense
from jnn._dropout import Dropout
from jnn._embedding import Embedding
from jnn._module import Module, Params
from jnn._norm import LayerNorm
from jnn._positional import LearnedPositions
from jnn._scope import Scope
from jnn.activations import gelu

__all__ = ["TransformerBlock", "TransformerLM"]


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
      ``x`` ``[batch, length, features]`` (or ``[length, features]``) to the same shape;
      ``context`` ``[batch, context_length, context_features]``. Children: ``norm_1``,
      ``attention``, (``norm_cross``, ``cross_attention``), ``norm_2``, ``mlp``.

    ``apply(params, x, context=None, *, mask=None, cache=None)``: ``mask`` (boolean,
    True = attend) is combined with the causal mask; with a ``cache`` from
    ``init_cache`` the block decodes incrementally and returns ``(y, new_cache)``.

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

    def _attention(self, use_rope: bool) -> MultiHeadAttention:
        return MultiHeadAttention(
            self.num_heads,
            num_kv_heads=self.num_kv_heads,
            dropout_rate=self.dropout_rate,
            use_rope=use_rope,
        )

    def init_cache(self, params: Params, batch_size: int | None, max_length: int) -> dict:
        """An empty self-attention KV cache for ``max_length`` positions."""
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
        if self.cross_attention and context is None:
            raise ValueError("TransformerBlock: cross_attention=True needs a context input.")
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
        x = x + scope("dropout_2", drop, scope("mlp", mlp, h))
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

    Decoding: ``cache = model.init_cache(params, batch_size)``, then
    ``logits, cache = model.apply(params, tokens, cache=cache)`` on the prompt and on
    each new token gives the same logits as the full forward pass.

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
        """Empty KV caches of every block, for ``max_length`` positions."""
        return {
            name: block.init_cache(params[name], batch_size, self.max_length)
            for name, block in self._blocks()
        }

    def forward(self, scope: Scope, tokens: jax.Array, *, cache: dict | None = None) -> Any:
        embed = Embedding(self.vocab_size, self.features)
        x = scope("embed", embed, tokens)
        if not self.use_rope:
            offset = 0 if cache is None else next(iter(cache.values()))["index"]
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
