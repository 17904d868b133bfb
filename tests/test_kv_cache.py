"""MultiHeadAttention's KV cache: decoding equals the causal forward pass (scan, chunks,
unbatched, vmap), masks over the cache, composites, and every cache error, eager and
under jit (where an overflow raises when the compiled program runs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import F, T, normal, random_params

from jnn import (
    DTypeError,
    Module,
    MultiHeadAttention,
    ParamsError,
    ShapeError,
    causal_mask,
    combine_masks,
    padding_mask,
)


def decode_by_scan(layer, params, x, max_length):
    """Run the cached step over every position of x [batch, length, features] in one scan."""
    cache = layer.init_cache(params, x.shape[0], max_length)

    def step(cache, x_t):
        y, cache = layer.apply(params, x_t[:, None], cache=cache)
        return cache, y[:, 0]

    cache, ys = jax.lax.scan(step, cache, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1), cache


@pytest.mark.parametrize("use_rope", [False, True], ids=["plain", "rope"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_decoding_with_cache_matches_causal_forward(key, use_rope, kv_heads):
    layer = MultiHeadAttention(num_heads=4, num_kv_heads=kv_heads, use_rope=use_rope)
    x = jnp.asarray(normal(0, (2, T, F)))
    params = random_params(layer, key, x)
    full = layer.apply(params, x, mask=causal_mask(T))
    decoded, cache = jax.jit(decode_by_scan, static_argnums=(0, 3))(layer, params, x, T + 2)
    np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)
    assert int(cache["index"]) == T
    assert cache["key"].shape == (2, T + 2, kv_heads, 2)
    np.testing.assert_array_equal(cache["key"][:, T:], 0.0)  # never written


@pytest.mark.parametrize("use_rope", [False, True], ids=["plain", "rope"])
def test_prefill_chunk_then_steps_eagerly(key, use_rope):
    layer = MultiHeadAttention(num_heads=2, use_rope=use_rope)
    x = jnp.asarray(normal(0, (2, T, F)))
    params = random_params(layer, key, x)
    full = layer.apply(params, x, mask=causal_mask(T))
    cache = layer.init_cache(params, 2, T)
    first, cache = layer.apply(params, x[:, :3], cache=cache)
    outs = [first]
    for t in range(3, T):
        y, cache = layer.apply(params, x[:, t : t + 1], cache=cache)
        outs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_unbatched_cache_and_vmap(key):
    layer = MultiHeadAttention(num_heads=2, use_rope=True)
    x = jnp.asarray(normal(0, (3, T, F)))
    params = random_params(layer, key, x)
    full = layer.apply(params, x, mask=causal_mask(T))
    cache = layer.init_cache(params, None, T)
    assert cache["key"].shape == (T, 2, 4)

    def decode_one(x):  # x: [length, features], cache unbatched
        def step(cache, x_t):
            y, cache = layer.apply(params, x_t[None], cache=cache)
            return cache, y[0]

        return jax.lax.scan(step, cache, x)[1]

    np.testing.assert_allclose(jax.vmap(decode_one)(x), full, rtol=1e-5, atol=1e-5)


def test_cache_with_padding_mask(key):
    """A user mask over the cache's positions combines with the causal cache mask."""
    layer = MultiHeadAttention(num_heads=2)
    x = jnp.asarray(normal(0, (2, T, F)))
    params = random_params(layer, key, x)
    valid = np.array([[True] * T, [False, True, True, True, True]])
    full = layer.apply(params, x, mask=combine_masks(causal_mask(T), padding_mask(valid)))
    cache = layer.init_cache(params, 2, T)
    y, _ = layer.apply(params, x, cache=cache, mask=padding_mask(valid))
    np.testing.assert_allclose(y, full, rtol=1e-5, atol=1e-5)


def test_init_cache_from_shapes_and_dtype(key):
    layer = MultiHeadAttention(num_heads=4, num_kv_heads=2, head_dim=3)
    shapes = jax.eval_shape(layer.init, key, jax.ShapeDtypeStruct((1, 2, 8), jnp.float32))
    cache = layer.init_cache(shapes, 5, 16, jnp.bfloat16)
    assert cache["key"].shape == cache["value"].shape == (5, 16, 2, 3)
    assert cache["key"].dtype == jnp.bfloat16 and cache["index"].dtype == jnp.int32
    with pytest.raises(
        ParamsError, match=r"MultiHeadAttention: init_cache needs this layer's params"
    ):
        layer.init_cache({}, 5, 16)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: max_length must be a positive int, got 0"
    ):
        layer.init_cache(shapes, 5, 0)


def test_cache_overflow(key):
    layer = MultiHeadAttention(num_heads=2)
    x = jnp.ones((1, 1, F))
    params = layer.init(key, x)
    cache = layer.init_cache(params, 1, 2)
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: cache overflow: 3 new positions at index 0 do not fit in the cache's max_length 2\. Hint: make a longer cache\.",
    ):
        layer.apply(params, jnp.ones((1, 3, F)), cache=cache)
    with pytest.raises(ShapeError, match=r"cache overflow: 3 new positions do not fit"):  # static
        jax.jit(lambda c: layer.apply(params, jnp.ones((1, 3, F)), cache=c))(cache)
    for _ in range(2):
        _, cache = layer.apply(params, x, cache=cache)
    with pytest.raises(
        ShapeError,
        match=r"cache overflow: 1 new positions at index 2 do not fit in the cache's max_length 2",
    ):
        layer.apply(params, x, cache=cache)


OVERFLOW_AT_RUN_TIME = (
    r"MultiHeadAttention: cache overflow: {n} new positions at index {at} do not fit in the "
    r"cache's max_length {max_length}\. Hint: make a longer cache\."
)


def test_cache_overflow_under_jit_raises_when_the_program_runs(key):
    """A traced index cannot be checked while tracing; the compiled program raises with
    the index it reached, wrapped in JAX's runtime error."""
    layer = MultiHeadAttention(num_heads=2)
    x = jnp.ones((1, 1, F))
    params = layer.init(key, x)
    step = jax.jit(lambda c, x: layer.apply(params, x, cache=c))
    cache = layer.init_cache(params, 1, 3)
    for _ in range(3):  # the steps that fit run as before
        y, cache = step(cache, x)
        assert np.isfinite(y).all()
    message = OVERFLOW_AT_RUN_TIME.format(n=1, at=3, max_length=3)
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(step(cache, x))
    chunk = jax.jit(lambda c: layer.apply(params, jnp.ones((1, 2, F)), cache=c))
    _, cache = step(layer.init_cache(params, 1, 3), x)
    _, cache = step(cache, x)
    message = OVERFLOW_AT_RUN_TIME.format(n=2, at=2, max_length=3)
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(chunk(cache))


def test_cache_overflow_inside_scan_and_vmap_names_the_index(key):
    layer = MultiHeadAttention(num_heads=2)
    x = jnp.ones((2, 4, F))  # two unbatched sequences of 4 steps, 3 cache positions
    params = layer.init(key, x)

    def decode_one(x):
        def step(cache, x_t):
            y, cache = layer.apply(params, x_t[None], cache=cache)
            return cache, y[0]

        return jax.lax.scan(step, layer.init_cache(params, None, 3), x)[1]

    # Under vmap the callback runs once per example, each with its own index.
    message = OVERFLOW_AT_RUN_TIME.format(n=1, at=3, max_length=3)
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(jax.jit(jax.vmap(decode_one))(x))
    np.testing.assert_array_equal(np.isfinite(jax.vmap(decode_one)(x[:, :3])), True)


def test_cache_errors(key):
    layer = MultiHeadAttention(num_heads=2, num_kv_heads=1)
    x = jnp.ones((2, 1, F))
    params = layer.init(key, x)
    cache = layer.init_cache(params, 2, 4)
    with pytest.raises(
        ShapeError, match=r"MultiHeadAttention: a cache decodes self-attention only"
    ):
        layer.apply(params, x, x, cache=cache)
    with pytest.raises(
        ShapeError,
        match=r"expected cache key and value of shape \(2, 'max_length', 1, 4\) for query shape \(2, 1, 8\), got \(3, 4, 1, 4\)",
    ):
        layer.apply(params, x, cache=layer.init_cache(params, 3, 4))
    with pytest.raises(
        ShapeError, match=r"expected a cache with keys index, key, value, got \['key'\]"
    ):
        layer.apply(params, x, cache={"key": cache["key"]})
    with pytest.raises(ShapeError, match=r"mask broadcastable to .* = \(2, 2, 1, 4\)"):
        layer.apply(params, x, cache=cache, mask=causal_mask(4))
    hint = r"Hint: make it with layer.init_cache\(params, batch_size, max_length\)\."
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected a cache with keys index, key, value, got tuple\. "
        + hint,
    ):
        layer.apply(params, x, cache=(cache["key"], cache["value"]))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected a scalar cache index, got shape \(2,\)\. " + hint,
    ):
        layer.apply(params, x, cache={**cache, "index": jnp.zeros(2, jnp.int32)})
    with pytest.raises(
        DTypeError,
        match=r"MultiHeadAttention: expected an integer cache index, got dtype float32\. " + hint,
    ):
        layer.apply(params, x, cache={**cache, "index": jnp.zeros((), jnp.float32)})
    with pytest.raises(
        ShapeError, match=r"MultiHeadAttention: expected a cache index >= 0, got -1\. " + hint
    ):
        layer.apply(params, x, cache={**cache, "index": jnp.array(-1)})
    with pytest.raises(
        ShapeError,
        match=r"expected cache key and value of shape \(2, 'max_length', 1, 4\) .* got \(2, 4, 1, 4\) and \(2, 3, 1, 4\)",
    ):
        layer.apply(params, x, cache={**cache, "value": cache["value"][:, :3]})
    with pytest.raises(
        ShapeError, match=r"expected cache key and value of shape \('max_length', 1, 4\)"
    ):
        layer.apply(params, x[0], cache=cache)  # unbatched query, batched cache


def test_init_cache_errors(key):
    layer = MultiHeadAttention(num_heads=2)
    params = layer.init(key, jnp.ones((1, 1, F)))
    with pytest.raises(
        ParamsError,
        match=r"MultiHeadAttention: init_cache needs this layer's params \(or their shapes\) with 'key/weight' of shape \[in_features, num_kv_heads, head_dim\]",
    ):
        layer.init_cache(params["key"], 1, 4)
    with pytest.raises(
        TypeError, match=r"MultiHeadAttention: batch_size must be an int, got 2.0 \(float\)"
    ):
        layer.init_cache(params, 2.0, 4)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: max_length must be a positive int, got -1"
    ):
        layer.init_cache(params, 1, -1)
    with pytest.raises(
        DTypeError,
        match=r"MultiHeadAttention: init_cache expected a floating-point dtype, got int32",
    ):
        layer.init_cache(params, 1, 4, jnp.int32)
    assert layer.init_cache(params, np.int64(2), np.int32(4))["key"].shape == (2, 4, 2, 4)


# --------------------------------------------------------------------------- composites


class Decoder(Module):
    """A composite passing mask and cache through scope, as a decoder block would."""

    def forward(self, scope, x, *, mask=None, cache=None):
        attention = MultiHeadAttention(num_heads=2)
        if cache is None:
            return x + scope("attention", attention, x, mask=mask)
        y, cache = scope("attention", attention, x, mask=mask, cache=cache)
        return x + y, cache


def test_mask_and_cache_pass_through_a_composite(key):
    model = Decoder()
    x = jnp.asarray(normal(0, (2, T, F)))
    params = model.init(key, x)
    assert set(params["attention"]) == {"query", "key", "value", "output"}
    full = model.apply(params, x, mask=causal_mask(T))
    cache = MultiHeadAttention(num_heads=2).init_cache(params["attention"], 2, T)
    y, cache = model.apply(params, x[:, :2], cache=cache)
    z, cache = model.apply(params, x[:, 2:], cache=cache)
    np.testing.assert_allclose(jnp.concatenate([y, z], 1), full, rtol=1e-5, atol=1e-5)
