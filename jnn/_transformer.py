"""Transformer blocks (pre-norm): self-attention (causal or not, with rotary positions,
grouped key-value heads and a KV cache), optional cross-attention, and an MLP. The
language model built from them is in ``jnn._language_model``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jnn._attention import MultiHeadAttention
from jnn._checks import check_positive_int, check_rank, is_apply_check
from jnn._dense import MLP
from jnn._dropout import Dropout
from jnn._errors import ParamsError, ShapeError
from jnn._module import Module, Params
from jnn._norm import LayerNorm
from jnn._scope import Scope
from jnn.activations import gelu

__all__ = ["TransformerBlock"]

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
    r"""A transformer block: attention, then an MLP, each on a residual path.

    Pre-norm (``norm_first=True``, the default: GPT-2, LLaMA, ViT) normalizes each
    step's input; post-norm (``norm_first=False``: the original transformer, BERT, and
    PyTorch's ``nn.TransformerEncoderLayer`` by default) normalizes each step's sum:

    .. math::
       \text{pre-norm:}\quad h = x + \mathrm{Dropout}(\mathrm{Attention}(\mathrm{Norm}(x))),
       \qquad y = h + \mathrm{Dropout}(\mathrm{MLP}(\mathrm{Norm}(h)))

       \text{post-norm:}\quad h = \mathrm{Norm}(x + \mathrm{Dropout}(\mathrm{Attention}(x))),
       \qquad y = \mathrm{Norm}(h + \mathrm{Dropout}(\mathrm{MLP}(h)))

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
      activation: Activation of the default MLP (``jnn.gelu``, JAX's tanh
        approximation; PyTorch's ``"gelu"`` is ``functools.partial(jnn.gelu,
        approximate=False)``, its default ``jnn.relu``).
      norm_first: Pre-norm (True) or post-norm (False). The params have the same names
        either way (``norm_1``, ``norm_cross``, ``norm_2``).
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

    ``apply(params, x, context=None, *, mask=None, lengths=None, context_mask=None,
    context_lengths=None, cache=None)``: ``mask`` (boolean, True = attend) is combined
    with the causal mask; ``lengths`` (integer ``[batch]``, a scalar for one unbatched
    sequence) hides the keys at positions ``>= lengths[b]`` in self-attention, as
    ``mask=padding_mask(lengths, length)`` does; ``context_mask`` and
    ``context_lengths`` do the same for cross-attention's keys (the context's
    positions: PyTorch's ``memory_key_padding_mask``); with a ``cache`` from
    ``init_cache`` the block decodes incrementally and returns ``(y, new_cache)``
    (``mask`` and ``lengths`` then index the cache's positions).

    Raises:
      ValueError: At construction, for a non-positive ``num_heads``, ``mlp_features``
        or ``num_kv_heads``, a ``num_kv_heads`` that does not divide ``num_heads``, a
        ``dropout_rate`` outside ``[0, 1]`` or an unknown ``implementation``.
      ShapeError: If ``x`` has the wrong rank, ``features`` is not divisible by
        ``num_heads`` (or gives an odd head size with ``use_rope``), a ``context`` is
        missing or unexpected (or its mask or lengths come without one), or a custom
        ``mlp`` changes the shape.

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
    norm_first: bool = True
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

    def _check_input(self, scope: Scope, x: Any, context: Any, context_keys: dict) -> None:
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
        given = [k for k, v in context_keys.items() if v is not None]
        if given and context is None:
            raise ShapeError(
                name,
                f"got {' and '.join(given)} but no context: they mask cross-attention's "
                "keys (the context's positions); for self-attention use mask and lengths.",
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
        context_mask: jax.Array | None = None,
        context_lengths: jax.Array | None = None,
        cache: dict | None = None,
    ) -> Any:
        context_keys = {"context_mask": context_mask, "context_lengths": context_lengths}
        self._check_input(scope, x, context, context_keys)
        drop = Dropout(self.dropout_rate)
        pre = self.norm_first

        def before(name: str, x: jax.Array) -> jax.Array:  # a step's input
            return scope(name, self.norm, x) if pre else x

        def after(name: str, x: jax.Array) -> jax.Array:  # a step's residual sum
            return x if pre else scope(name, self.norm, x)

        h = before("norm_1", x)
        attention = self._attention(self.use_rope, self.causal)
        if cache is None:
            a = scope("attention", attention, h, mask=mask, kv_lengths=lengths)
        else:  # the cache attends causally by itself
            a, cache = scope("attention", attention, h, mask=mask, kv_lengths=lengths, cache=cache)
        x = after("norm_1", x + scope("dropout_1", drop, a))
        if self.cross_attention:
            h = before("norm_cross", x)
            a = scope(
                "cross_attention",
                self._attention(False, False),
                h,
                context,
                mask=context_mask,
                kv_lengths=context_lengths,
            )
            x = after("norm_cross", x + scope("dropout_cross", drop, a))
        h = before("norm_2", x)
        mlp = self.mlp or MLP([self.mlp_features, x.shape[-1]], activation=self.activation)
        m = scope("mlp", mlp, h)
        if jnp.shape(m) != jnp.shape(x):
            raise ShapeError(
                self.layer_name(),
                f"the mlp must map features to features: it gave shape {tuple(jnp.shape(m))} "
                f"for input shape {tuple(x.shape)}.",
            )
        x = after("norm_2", x + scope("dropout_2", drop, m))
        return x if cache is None else (x, cache)
