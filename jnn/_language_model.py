"""``TransformerLM``: a decoder-only language model of ``TransformerBlock``s, whose blocks
run unrolled or stacked in one ``jax.lax.scan`` (``jnn.Repeat``), with optional remat."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn._checks import check_positive_int, check_rank, is_concrete
from jnn._dense import Dense
from jnn._depth import Checkpointed, Repeat, stack_params, unstack_params
from jnn._embedding import Embedding
from jnn._errors import ParamsError, ShapeError
from jnn._kv_cache import _overflow
from jnn._module import Module, Params
from jnn._norm import LayerNorm
from jnn._positional import LearnedPositions
from jnn._scope import Scope
from jnn._transformer import TransformerBlock, _check_implementation, _check_rate

__all__ = ["TransformerLM"]


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
