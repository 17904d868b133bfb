"""Scaled dot-product attention over projected heads: the fused and the written-out forms.

Shapes: ``q`` ``[batch, q_len, heads, head_dim]``; ``k``, ``v`` ``[batch, kv_len,
kv_heads, head_dim]``; ``mask`` ``None`` or boolean ``[batch or 1, heads or 1, q_len or 1,
kv_len or 1]``; ``kv_lengths`` ``None`` or int32 ``[batch]``. Query head ``n`` reads
key/value head ``n // (heads // kv_heads)``, as ``jax.nn.dot_product_attention`` does. A
query row that may attend to nothing gets zeros in both forms.

Two masks have a structure that ``jax.nn.dot_product_attention`` takes without an array:
``causal`` (query ``i`` sees keys ``j <= i``, its ``is_causal``) and ``kv_lengths`` (keys
``j >= kv_lengths[b]`` are padding, its ``key_value_seq_lengths``). Without an explicit
``mask`` they reach it as such, so no ``[q_len, kv_len]`` mask is built and cuDNN's fused
kernel can skip the hidden blocks; every other path folds them into a boolean mask.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["attend", "attend_explicit", "attend_fused", "structured_mask", "uses_fused"]


def structured_mask(mask, q_len, kv_len, causal=False, kv_lengths=None):
    """``mask`` combined with the causal and padding masks: ``None`` or ``[b, h, q, kv]``."""
    masks = [] if mask is None else [mask]
    if causal:  # top-left aligned, as is_causal: query i sees keys j <= i
        masks.append((jnp.arange(kv_len) <= jnp.arange(q_len)[:, None])[None, None])
    if kv_lengths is not None:
        masks.append((jnp.arange(kv_len) < kv_lengths[:, None])[:, None, None, :])
    return functools.reduce(jnp.logical_and, masks) if masks else None


def attend_fused(q, k, v, mask, implementation=None, causal=False, kv_lengths=None):
    """``jax.nn.dot_product_attention``, with rows that attend to nothing set to zero."""
    if mask is not None:  # an arbitrary mask: the structured ones join it
        mask = structured_mask(mask, q.shape[1], k.shape[1], causal, kv_lengths)
        causal, kv_lengths = False, None
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        mask=mask,
        is_causal=causal,
        key_value_seq_lengths=kv_lengths,
        implementation=implementation,
    )
    if mask is None:
        # Causal rows always see key 0; only a length of 0 leaves a row nothing.
        if kv_lengths is None:
            return out
        return jnp.where(kv_lengths[:, None, None, None] > 0, out, jnp.zeros((), out.dtype))
    # It gives a fully masked row the mean of all values (every logit is the same large
    # negative number); zero such rows, as the explicit path does.
    attends = jnp.swapaxes(jnp.any(mask, axis=-1), 1, 2)[..., None]  # [b, q_len, heads, 1]
    return jnp.where(attends, out, jnp.zeros((), out.dtype))


def attention_weights(q, k, mask):
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


def attend_explicit(q, k, v, mask, dropout_rate=0.0, key=None):
    """The attention written out, with dropout on the weights (inverted, like Dropout)."""
    weights = attention_weights(q, k, mask)
    if dropout_rate == 1.0:
        weights = jnp.zeros_like(weights)
    elif dropout_rate > 0.0:
        keep = jax.random.bernoulli(key, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    v = jnp.repeat(v, q.shape[-2] // v.shape[-2], axis=-2)
    return jnp.einsum("bhts,bshd->bthd", weights.astype(v.dtype), v)


def uses_fused(implementation: str | None) -> bool:
    """Whether attention without dropout goes through ``jax.nn.dot_product_attention``.

    By default it does on accelerators, where that function can pick a fused kernel,
    and not on a CPU, where XLA runs the einsum form faster: on the benchmark's
    2-layer transformer encoder the training step took 7% less time written out.
    """
    if implementation is None:
        return jax.default_backend() != "cpu"
    return implementation != "einsum"


def attend(
    q, k, v, mask, implementation=None, dropout_rate=0.0, key=None, causal=False, kv_lengths=None
):
    """Attention by the form ``implementation`` picks; with dropout, always written out.

    ``causal`` and ``kv_lengths`` reach ``jax.nn.dot_product_attention`` as ``is_causal``
    and ``key_value_seq_lengths`` when there is no ``mask`` and it is the form picked.
    """
    if not dropout_rate and uses_fused(implementation):
        return attend_fused(q, k, v, mask, implementation, causal, kv_lengths)
    mask = structured_mask(mask, q.shape[1], k.shape[1], causal, kv_lengths)
    return attend_explicit(q, k, v, mask, dropout_rate, key)
