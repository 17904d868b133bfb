"""The attention kernels: jax.nn.dot_product_attention (fused) against the written-out
einsum form, fully masked rows, dropout on the weights, every implementation of
MultiHeadAttention giving the same values and gradients, and the causal and padding
masks reaching jax.nn.dot_product_attention as is_causal and key_value_seq_lengths."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import normal

import jnn
from jnn import (
    DTypeError,
    MultiHeadAttention,
    ShapeError,
    causal_mask,
    combine_masks,
    padding_mask,
)
from jnn._dot_product_attention import attend_explicit, attend_fused, uses_fused


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_fused_equals_explicit(kv_heads):
    q = jnp.asarray(normal(0, (2, 4, 4, 3)))
    k, v = jnp.asarray(normal(1, (2, 6, kv_heads, 3))), jnp.asarray(normal(2, (2, 6, kv_heads, 3)))
    mask = np.random.default_rng(3).random((2, 4, 4, 6)) > 0.5
    mask[0, 1, 2] = False  # one fully masked row
    for m in (None, jnp.asarray(mask), jnp.asarray(mask[:, :1, :, :])):
        fused, explicit = attend_fused(q, k, v, m), attend_explicit(q, k, v, m)
        np.testing.assert_allclose(fused, explicit, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(attend_fused(q, k, v, jnp.asarray(mask))[0, 2, 1], 0.0)


def test_dropout_drops_attention_weights_inverted(key):
    """With V = identity-like values, the output is the dropped weights; their mean is kept."""
    q = jnp.zeros((1, 1, 1, 2))  # equal logits: weights 1/8 each
    k = jnp.zeros((1, 8, 1, 2))
    v = jnp.eye(8)[None, :, None, :]  # value s is the one-hot e_s
    out = attend_explicit(q, k, v, None, 0.5, key)[0, 0, 0]
    assert set(np.round(np.asarray(out), 6).tolist()) <= {0.0, 0.25}
    means = [attend_explicit(q, k, v, None, 0.5, jax.random.key(i)).sum() for i in range(200)]
    np.testing.assert_allclose(np.mean(means), 1.0, atol=0.05)


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_every_implementation_gives_the_same_layer(key, kv_heads):
    """The backend default, the einsum form and jax.nn.dot_product_attention agree, in
    value and gradient, with a mask that hides whole rows."""
    x = jnp.asarray(normal(0, (2, 5, 8)))
    mask = jnp.asarray(np.random.default_rng(1).random((2, 1, 5, 5)) > 0.4).at[0, 0, 2].set(False)
    layers = {
        impl: MultiHeadAttention(num_heads=4, num_kv_heads=kv_heads, implementation=impl)
        for impl in (None, "einsum", "xla")
    }
    params = layers[None].init(key, x)

    def loss(params, layer):
        return jnp.sum(jnp.sin(layer.apply(params, x, mask=mask)))

    reference = layers["einsum"].apply(params, x, mask=mask)
    ref_grads = jax.grad(loss)(params, layers["einsum"])
    for impl in (None, "xla"):
        np.testing.assert_allclose(
            layers[impl].apply(params, x, mask=mask), reference, rtol=1e-5, atol=1e-6
        )
        chex.assert_trees_all_close(jax.grad(loss)(params, layers[impl]), ref_grads, atol=1e-5)


def test_default_implementation_follows_the_backend():
    assert uses_fused(None) == (jax.default_backend() != "cpu")
    assert not uses_fused("einsum") and uses_fused("xla") and uses_fused("cudnn")


# --------------------------------------------------------------------------- is_causal

T = 7  # an odd length, so a [.., 7, 7] array in a jaxpr is a mask over the sequence


class Spy:
    """Stands in for jax.nn.dot_product_attention: records each call's masks and either
    runs the real function or returns the query (so a jaxpr shows jnn's work alone)."""

    def __init__(self, run=True):
        self.real, self.run, self.calls = jax.nn.dot_product_attention, run, []

    def __call__(self, q, k, v, bias=None, mask=None, **kwargs):
        self.calls.append(dict(mask=mask, **kwargs))
        return self.real(q, k, v, bias, mask, **kwargs) if self.run else q


def _square_bool_arrays(jaxpr) -> list[str]:
    return re.findall(rf"bool\[(?:\d+,)*{T},{T}\]", str(jaxpr))


def test_causal_only_attention_passes_is_causal_and_builds_no_mask(key, monkeypatch):
    x = jnp.asarray(normal(0, (2, T, 8)))
    layer = MultiHeadAttention(num_heads=4, causal=True, implementation="xla")
    params = layer.init(key, x)
    spy = Spy(run=False)
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    causal_only = jax.make_jaxpr(lambda p, x: layer.apply(p, x))(params, x)
    (call,) = spy.calls
    assert call["mask"] is None and call["is_causal"] is True
    assert call["key_value_seq_lengths"] is None
    assert _square_bool_arrays(causal_only) == []
    # The same attention given as an explicit mask does build one: the check can see it.
    plain = MultiHeadAttention(num_heads=4, implementation="xla")
    explicit = jax.make_jaxpr(lambda p, x: plain.apply(p, x, mask=causal_mask(T)))(params, x)
    assert spy.calls[-1]["mask"] is not None and not spy.calls[-1]["is_causal"]
    assert _square_bool_arrays(explicit)


def test_padding_lengths_reach_dot_product_attention_and_masks_fall_back(key, monkeypatch):
    x = jnp.asarray(normal(0, (2, T, 8)))
    layer = MultiHeadAttention(num_heads=4, causal=True, implementation="xla")
    params = layer.init(key, x)
    spy = Spy()
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    layer.apply(params, x, kv_lengths=jnp.array([3, 7]))
    lengths = spy.calls[-1]["key_value_seq_lengths"]
    assert spy.calls[-1]["mask"] is None and spy.calls[-1]["is_causal"]
    assert lengths.dtype == jnp.int32 and lengths.tolist() == [3, 7]
    # An arbitrary mask: causal and lengths join it in one explicit mask.
    layer.apply(params, x, mask=padding_mask(jnp.array([5, 6]), T), kv_lengths=jnp.array([3, 7]))
    call = spy.calls[-1]
    assert call["mask"].shape == (2, 1, T, T) and not call["is_causal"]
    assert call["key_value_seq_lengths"] is None
    # A cache: queries sit at index + t, which is_causal cannot express.
    cache = layer.init_cache(params, 2, T + 2)
    _, cache = layer.apply(params, x[:, :2], cache=cache)
    layer.apply(params, x[:, 2:5], cache=cache)
    call = spy.calls[-1]
    assert call["mask"].shape == (1, 1, 3, T + 2) and not call["is_causal"]


def _lengths_mask(lengths, length):
    return None if lengths is None else padding_mask(lengths, length)


@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize(
    "causal, lengths",
    [(True, None), (True, [3, 0]), (False, [4, 7]), (False, [0, 2])],
    ids=["causal", "causal_padded", "padded", "padded_empty"],
)
def test_structured_masks_equal_the_explicit_mask_in_values_and_gradients(
    key, kv_heads, causal, lengths
):
    """is_causal / key_value_seq_lengths (xla), the einsum form and an explicit mask
    through jax.nn.dot_product_attention agree; a length of 0 gives zeros, as a fully
    masked row does."""
    x = jnp.asarray(normal(0, (2, T, 8)))
    lengths = None if lengths is None else jnp.array(lengths)
    explicit_mask = combine_masks(causal_mask(T) if causal else None, _lengths_mask(lengths, T))
    structured = {
        impl: MultiHeadAttention(4, num_kv_heads=kv_heads, causal=causal, implementation=impl)
        for impl in ("xla", "einsum")
    }
    explicit = MultiHeadAttention(4, num_kv_heads=kv_heads, implementation="xla")
    params = explicit.init(key, x)

    def loss(params, layer, **kwargs):
        return jnp.sum(jnp.sin(layer.apply(params, x, **kwargs)))

    reference = explicit.apply(params, x, mask=explicit_mask)
    ref_grads = jax.grad(loss)(params, explicit, mask=explicit_mask)
    for layer in structured.values():
        np.testing.assert_allclose(
            layer.apply(params, x, kv_lengths=lengths), reference, rtol=1e-6, atol=1e-6
        )
        grads = jax.grad(loss)(params, layer, kv_lengths=lengths)
        chex.assert_trees_all_close(grads, ref_grads, rtol=1e-5, atol=1e-6)
    if lengths is not None and 0 in lengths.tolist():
        empty = lengths.tolist().index(0)
        np.testing.assert_allclose(reference[empty], params["output"]["bias"] + 0 * x[0])


def test_kv_lengths_of_one_unbatched_sequence_and_cross_attention(key):
    x, context = jnp.asarray(normal(0, (2, T, 8))), jnp.asarray(normal(1, (2, 4, 6)))
    layer = MultiHeadAttention(num_heads=2, implementation="xla")
    params = layer.init(key, x, context)
    batched = layer.apply(params, x, context, kv_lengths=jnp.array([2, 4]))
    expected = layer.apply(params, x, context, mask=padding_mask(jnp.array([2, 4]), 4))
    np.testing.assert_allclose(batched, expected, rtol=1e-6, atol=1e-6)
    one = layer.apply(params, x[0], context[0], kv_lengths=jnp.array(2))
    np.testing.assert_allclose(one, batched[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("implementation", ["xla", "einsum"])
def test_causal_cached_decoding_in_offset_chunks_equals_the_full_pass(key, implementation):
    """Chunks at cache offsets 0, 2 and 5: an is_causal mask (aligned at 0) would let
    the second chunk see too little; the explicit cache mask gets it right."""
    x = jnp.asarray(normal(0, (2, T, 8)))
    layer = MultiHeadAttention(
        num_heads=2, causal=True, use_rope=True, implementation=implementation
    )
    params = layer.init(key, x)
    full = layer.apply(params, x)
    cache = layer.init_cache(params, 2, T)
    step = jax.jit(lambda p, x, c: layer.apply(p, x, cache=c))
    outs = []
    for start, stop in [(0, 2), (2, 5), (5, 6), (6, 7)]:
        y, cache = step(params, x[:, start:stop], cache)
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_transformer_block_and_lm_is_causal_equals_the_explicit_mask(key):
    x = jnp.asarray(normal(0, (2, T, 16)))
    causal = jnn.TransformerBlock(4, 32, causal=True, implementation="xla")
    masked = jnn.TransformerBlock(4, 32, implementation="xla")
    params = causal.init(key, x)
    lengths = jnp.array([T, 3])
    for kwargs, mask in [
        ({}, causal_mask(T)),
        ({"lengths": lengths}, combine_masks(causal_mask(T), padding_mask(lengths, T))),
    ]:
        np.testing.assert_allclose(
            causal.apply(params, x, **kwargs), masked.apply(params, x, mask=mask), atol=1e-5
        )
    tokens = jax.random.randint(key, (2, T), 0, 30)
    lms = {
        impl: jnn.TransformerLM(30, 2, features=16, num_heads=4, implementation=impl)
        for impl in ("xla", "einsum")
    }
    lm_params = lms["xla"].init(key, tokens)

    def loss(params, lm):
        return jnp.sum(jnp.sin(lm.apply(params, tokens)))

    # Under jit: eager dispatch of two blocks' gradients took most of this test's time.
    forward = jax.jit(lambda p, lm: lm.apply(p, tokens), static_argnums=1)
    gradient = jax.jit(jax.grad(loss), static_argnums=1)
    np.testing.assert_allclose(
        forward(lm_params, lms["xla"]), forward(lm_params, lms["einsum"]), rtol=1e-5, atol=1e-5
    )
    chex.assert_trees_all_close(
        gradient(lm_params, lms["xla"]), gradient(lm_params, lms["einsum"]), rtol=1e-5, atol=1e-5
    )


def test_kv_lengths_and_implementation_errors(key):
    x = jnp.ones((2, 3, 8))
    layer = MultiHeadAttention(num_heads=2)
    params = layer.init(key, x)
    with pytest.raises(DTypeError, match=r"MultiHeadAttention: expected integer kv_lengths"):
        layer.apply(params, x, kv_lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected kv_lengths \[batch\] of shape \(2,\), got shape \(3,\)",
    ):
        layer.apply(params, x, kv_lengths=jnp.array([1, 2, 3]))
    with pytest.raises(
        ShapeError, match=r"expected kv_lengths a scalar for one unbatched sequence of shape \(\)"
    ):
        layer.apply(params, x[0], kv_lengths=jnp.array([1]))
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: expected kv_lengths in \[0, 3\] .*, got \[4\]"
    ):
        layer.apply(params, x, kv_lengths=jnp.array([1, 4]))
    for cls, kwargs in [
        (jnn.TransformerBlock, dict(num_heads=2, mlp_features=8)),
        (jnn.TransformerLM, dict(vocab_size=5, num_layers=1, features=8, num_heads=2)),
    ]:
        with pytest.raises(
            ValueError, match=rf"{cls.__name__}: implementation must be None, 'einsum'"
        ):
            cls(**kwargs, implementation="flash")


def test_kv_lengths_over_a_cache_index_its_positions(key):
    x = jnp.asarray(normal(0, (2, T, 8)))
    layer = MultiHeadAttention(num_heads=2, causal=True, implementation="xla")
    params = layer.init(key, x)
    lengths = jnp.array([T + 1, 3])
    cache = layer.init_cache(params, 2, T + 1)
    y, _ = layer.apply(params, x, cache=cache, kv_lengths=lengths)
    expected, _ = layer.apply(params, x, cache=cache, mask=padding_mask(lengths, T + 1))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    full = layer.apply(params, x, mask=padding_mask(jnp.array([T, 3]), T))
    np.testing.assert_allclose(y, full, rtol=1e-5, atol=1e-5)
