"""MultiHeadAttention and masks: NumPy references, fused vs explicit, KV cache, causality,
dropout, gradients, jit/vmap, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

from jnn import (
    DTypeError,
    MissingKeyError,
    Module,
    MultiHeadAttention,
    ParamsError,
    Sequential,
    ShapeError,
    causal_mask,
    combine_masks,
    padding_mask,
)
from jnn._attention import _attend_explicit, _attend_fused

# --------------------------------------------------------------------------- references


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def numpy_rope(x, positions, base=10000.0):
    """Rotate pairs (i, i + d/2) of x [..., length, heads, d] by positions * base^(-2i/d)."""
    half = x.shape[-1] // 2
    angles = np.asarray(positions, np.float64)[:, None, None] * base ** (
        -2 * np.arange(half) / (2 * half)
    )
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate(
        [x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles)], -1
    )


def numpy_attention(params, query, key_value=None, mask=None, rope=False):
    """softmax(Q K^T / sqrt(d)) V in float64 from the same projections; all-False rows give 0."""
    p = _np(params)
    x = np.asarray(query, np.float64)
    kv = x if key_value is None else np.asarray(key_value, np.float64)

    def project(name, inputs):
        y = np.einsum("btf,fhd->bthd", inputs, p[name]["weight"])
        return y + p[name]["bias"] if "bias" in p[name] else y

    q, k, v = project("query", x), project("key", kv), project("value", kv)
    if rope:
        q, k = numpy_rope(q, np.arange(q.shape[1])), numpy_rope(k, np.arange(k.shape[1]))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    m = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(mask, logits.shape)
    logits = np.where(m, logits, -np.inf)
    attends = m.any(-1, keepdims=True)
    e = np.exp(logits - np.where(attends, logits.max(-1, keepdims=True), 0.0))
    weights = np.where(attends, e / np.where(attends, e.sum(-1, keepdims=True), 1.0), 0.0)
    out = np.einsum("bhts,bshd->bthd", weights, v)
    y = np.einsum("bthd,hdf->btf", out, p["output"]["weight"])
    return y + p["output"]["bias"] if "bias" in p["output"] else y


def random_params(layer, key, *inputs):
    """Init, then make every leaf random (biases too), so each term is exercised."""
    params = layer.init(key, *inputs)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [0.5 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, leaves)


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "kwargs, head_dim",
    [
        (dict(num_heads=4), 2),
        (dict(num_heads=4, num_kv_heads=1), 2),
        (dict(num_heads=4, num_kv_heads=2, head_dim=3, features=5), 3),
        (dict(num_heads=2, use_bias=False), 4),
    ],
)
@pytest.mark.parametrize("batch", [(), (2,)])
def test_shape_agreement(key, kwargs, head_dim, batch):
    layer = MultiHeadAttention(**kwargs)
    query = jax.ShapeDtypeStruct((*batch, 3, 8), jnp.float32)
    key_value = jax.ShapeDtypeStruct((*batch, 6, 7), jnp.float32)
    params = layer.init(key, query, key_value)
    heads, kv_heads = layer.num_heads, layer.num_kv_heads or layer.num_heads
    features = layer.features or 8
    assert params["query"]["weight"].shape == (8, heads, head_dim)
    assert params["key"]["weight"].shape == (7, kv_heads, head_dim)
    assert params["value"]["weight"].shape == (7, kv_heads, head_dim)
    assert params["output"]["weight"].shape == (heads, head_dim, features)
    assert ("bias" in params["output"]) == layer.use_bias
    if layer.use_bias:
        assert params["key"]["bias"].shape == (kv_heads, head_dim)
        assert params["output"]["bias"].shape == (features,)
    shapes = jax.eval_shape(layer.init, key, query, key_value)
    chex.assert_trees_all_equal_shapes(shapes, params)
    out = layer.apply(params, jnp.ones(query.shape), jnp.ones(key_value.shape))
    assert out.shape == (*batch, 3, features)


# --------------------------------------------------------------------------- numbers

B, T, F = 2, 5, 8
CASES = {
    "plain": dict(),
    "bool_mask": dict(mask=np.random.default_rng(1).random((B, 1, T, T)) > 0.3),
    "per_head_mask": dict(mask=np.random.default_rng(2).random((B, 4, T, T)) > 0.3),
    "causal": dict(mask=causal_mask(T)),
    "padding": dict(mask=padding_mask(jnp.array([3, 5]), T)),
    "causal_and_padding": dict(
        mask=combine_masks(causal_mask(T), padding_mask(jnp.array([2, 4]), T))
    ),
    "rank2_mask": dict(mask=np.tril(np.ones((T, T), bool))),
    "cross": dict(kv_shape=(B, 7, 6)),
    "cross_padding": dict(kv_shape=(B, 7, 6), mask=padding_mask(jnp.array([7, 2]), 7)),
    "multi_query": dict(num_kv_heads=1, mask=causal_mask(T)),
    "grouped_query": dict(num_kv_heads=2, mask=causal_mask(T)),
    "grouped_cross": dict(num_kv_heads=2, kv_shape=(B, 3, 8)),
    "head_dim_features": dict(head_dim=3, features=6),
    "rope": dict(use_rope=True, mask=causal_mask(T)),
    "rope_grouped": dict(use_rope=True, num_kv_heads=1),
}


# Every case under jit; a few eagerly too (each eager op compiles on its own, slowly).
EAGER_CASES = ("plain", "padding", "grouped_query", "cross_padding", "rope")


@pytest.mark.parametrize(
    "transform, case",
    [
        pytest.param(t.values[0], case, id=f"{case}-{t.id}")
        for case in CASES
        for t in TRANSFORMS
        if t.id != "eager" or case in EAGER_CASES
    ],
)
def test_matches_numpy(key, transform, case):
    spec = dict(CASES[case])
    mask, kv_shape = spec.pop("mask", None), spec.pop("kv_shape", None)
    layer = MultiHeadAttention(num_heads=4, **spec)
    query = normal(0, (B, T, F))
    key_value = None if kv_shape is None else normal(1, kv_shape)
    params = random_params(layer, key, query, key_value)
    out = transform(lambda p, q, kv, m: layer.apply(p, q, kv, mask=m))(
        params, query, key_value, mask
    )
    expected = numpy_attention(params, query, key_value, mask, rope=layer.use_rope)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_unbatched_equals_batched(key):
    layer = MultiHeadAttention(num_heads=2, num_kv_heads=1)
    x = normal(0, (3, T, F))
    params = layer.init(key, x)
    batched = layer.apply(params, x, mask=causal_mask(T))
    for b in range(3):
        np.testing.assert_allclose(
            layer.apply(params, x[b], mask=causal_mask(T)), batched[b], rtol=1e-6, atol=1e-6
        )


def test_vmap_over_examples_equals_batch(key):
    layer = MultiHeadAttention(num_heads=2)
    x, lengths = normal(0, (3, T, F)), jnp.array([5, 2, 4])
    params = layer.init(key, x)
    masks = padding_mask(lengths, T)
    per_example = jax.vmap(lambda x, m: layer.apply(params, x, mask=m))(x, masks)
    np.testing.assert_allclose(
        per_example, layer.apply(params, x, mask=masks), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_fused_equals_explicit(kv_heads):
    q = jnp.asarray(normal(0, (2, 4, 4, 3)))
    k, v = jnp.asarray(normal(1, (2, 6, kv_heads, 3))), jnp.asarray(normal(2, (2, 6, kv_heads, 3)))
    mask = np.random.default_rng(3).random((2, 4, 4, 6)) > 0.5
    mask[0, 1, 2] = False  # one fully masked row
    for m in (None, jnp.asarray(mask), jnp.asarray(mask[:, :1, :, :])):
        fused, explicit = _attend_fused(q, k, v, m), _attend_explicit(q, k, v, m)
        np.testing.assert_allclose(fused, explicit, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_attend_fused(q, k, v, jnp.asarray(mask))[0, 2, 1], 0.0)


def test_fully_masked_rows_output_the_bias(key):
    """A query that may attend to nothing gets a zero attention result: y = output bias."""
    layer = MultiHeadAttention(num_heads=2)
    x = normal(0, (2, 3, F))
    params = random_params(layer, key, x)
    mask = np.ones((2, 1, 3, 3), bool)
    mask[1, 0, 2] = False
    for layer_ in (layer, MultiHeadAttention(num_heads=2, dropout_rate=0.5)):
        y = layer_.apply(params, x, mask=mask, key=key, is_training=True)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y[1, 2], params["output"]["bias"], rtol=1e-6)
    grads = jax.jit(jax.grad(lambda p: layer.apply(p, x, mask=mask).sum()))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_causal_gradients_are_exactly_zero_for_future_positions(key):
    layer = MultiHeadAttention(num_heads=2, num_kv_heads=1, use_rope=True)
    x = jnp.asarray(normal(0, (1, T, F)))
    params = random_params(layer, key, x)
    jac = jax.jit(jax.jacrev(lambda x: layer.apply(params, x, mask=causal_mask(T))))(x)
    jac = jac[0, :, :, 0]
    for t in range(T):  # jac[t, :, s, :] = d y_t / d x_s
        assert np.all(jac[t, :, t + 1 :, :] == 0.0), t
        assert np.any(jac[t, :, t, :] != 0.0)


# --------------------------------------------------------------------------- KV cache


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
        match=r"MultiHeadAttention: cache overflow: 3 new positions at index 0 do not fit in the cache's max_length 2",
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
    # Under jit the index is traced: the overflowing step gives NaN instead.
    y, cache = jax.jit(lambda c: layer.apply(params, x, cache=c))(cache)
    assert np.isnan(y).all() and int(cache["index"]) == 3


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


# --------------------------------------------------------------------------- dropout


def test_dropout(key):
    layer = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    x = jnp.asarray(normal(0, (2, T, F)))
    params = random_params(layer, key, x)
    reference = MultiHeadAttention(num_heads=2).apply(params, x)
    np.testing.assert_array_equal(layer.apply(params, x), reference)  # inference: identity
    with pytest.raises(
        MissingKeyError, match=r"MultiHeadAttention: is_training=True .* needs a PRNG key"
    ):
        layer.apply(params, x, is_training=True)
    a = layer.apply(params, x, key=key, is_training=True)
    b = layer.apply(params, x, key=key, is_training=True)
    c = layer.apply(params, x, key=jax.random.key(1), is_training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, reference)
    dropped_all = MultiHeadAttention(num_heads=2, dropout_rate=1.0)
    y = dropped_all.apply(params, x, key=key, is_training=True)
    np.testing.assert_allclose(y, jnp.broadcast_to(params["output"]["bias"], y.shape), rtol=1e-6)


def test_dropout_drops_attention_weights_inverted(key):
    """With V = identity-like values, the output is the dropped weights; their mean is kept."""
    q = jnp.zeros((1, 1, 1, 2))  # equal logits: weights 1/8 each
    k = jnp.zeros((1, 8, 1, 2))
    v = jnp.eye(8)[None, :, None, :]  # value s is the one-hot e_s
    out = _attend_explicit(q, k, v, None, 0.5, key)[0, 0, 0]
    assert set(np.round(np.asarray(out), 6).tolist()) <= {0.0, 0.25}
    means = [_attend_explicit(q, k, v, None, 0.5, jax.random.key(i)).sum() for i in range(200)]
    np.testing.assert_allclose(np.mean(means), 1.0, atol=0.05)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "layer",
    [
        MultiHeadAttention(num_heads=2, num_kv_heads=1, use_rope=True),
        MultiHeadAttention(num_heads=2, dropout_rate=0.3),
    ],
    ids=["fused", "explicit_dropout"],
)
def test_gradients(key, layer):
    x = jnp.asarray(normal(0, (2, 4, 4)))
    params = random_params(layer, key, x)
    mask = combine_masks(causal_mask(4), padding_mask(jnp.array([4, 3]), 4))

    @jax.jit
    def loss(p, x):
        return jnp.tanh(layer.apply(p, x, mask=mask, key=key, is_training=True)).sum()

    check_gradients(loss, (params, x))


def test_cross_attention_gradients(key):
    layer = MultiHeadAttention(num_heads=2, features=3, head_dim=2)
    q, kv = jnp.asarray(normal(0, (1, 2, 4))), jnp.asarray(normal(1, (1, 3, 5)))
    params = random_params(layer, key, q, kv)
    check_gradients(jax.jit(lambda p, q, kv: layer.apply(p, q, kv).sum()), (params, q, kv))


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


# --------------------------------------------------------------------------- masks


def test_mask_helpers():
    np.testing.assert_array_equal(causal_mask(3), np.tril(np.ones((3, 3), bool))[None, None])
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)[:, None, None]
    np.testing.assert_array_equal(padding_mask(jnp.array([2, 4]), 4), expected)
    np.testing.assert_array_equal(padding_mask(expected[:, 0, 0]), expected)
    combined = combine_masks(causal_mask(4), padding_mask(jnp.array([2, 4]), 4))
    assert combined.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(combined, np.tril(np.ones((4, 4), bool)) & expected)
    assert combine_masks(None, None) is None
    with pytest.raises(ShapeError, match=r"padding_mask: integer lengths need length="):
        padding_mask(jnp.array([2, 4]))
    with pytest.raises(
        DTypeError, match=r"padding_mask: expected integer lengths .* got dtype float32"
    ):
        padding_mask(jnp.array([2.0]), 4)
    with pytest.raises(ShapeError, match=r"padding_mask: length 5 differs from the mask's kv_len"):
        padding_mask(expected[:, 0, 0], 5)
    with pytest.raises(
        ShapeError, match=r"combine_masks: masks of shapes \(1, 1, 3, 3\), \(2, 1, 1, 4\)"
    ):
        combine_masks(causal_mask(3), padding_mask(jnp.array([2, 4]), 4))
    with pytest.raises(
        DTypeError, match=r"combine_masks: expected boolean masks, got dtype float32"
    ):
        combine_masks(causal_mask(3), jnp.ones((3, 3)))


# --------------------------------------------------------------------------- errors


def test_hyperparameter_errors():
    with pytest.raises(
        ValueError,
        match=r"MultiHeadAttention: num_heads \(4\) must be a multiple of num_kv_heads \(3\)",
    ):
        MultiHeadAttention(num_heads=4, num_kv_heads=3)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: num_heads must be a positive int, got 0"
    ):
        MultiHeadAttention(num_heads=0)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: features 10 is not divisible by num_heads 4"
    ):
        MultiHeadAttention(num_heads=4, features=10)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: use_rope needs an even head_dim, got 3"
    ):
        MultiHeadAttention(num_heads=4, head_dim=3, use_rope=True)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: dropout_rate must be in \[0, 1\], got 1.5"
    ):
        MultiHeadAttention(num_heads=4, dropout_rate=1.5)
    with pytest.raises(
        ValueError,
        match=r"MultiHeadAttention: implementation must be None, 'einsum', 'xla' or 'cudnn'",
    ):
        MultiHeadAttention(num_heads=4, implementation="flash")


def test_input_errors(key):
    layer = MultiHeadAttention(num_heads=2)
    with pytest.raises(
        ShapeError, match=r"MultiHeadAttention: features 9 is not divisible by num_heads 2"
    ):
        layer.init(key, jnp.zeros((2, 3, 9)))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected query \[batch, q_len, features\] of rank 2 or 3, got shape \(8,\)",
    ):
        layer.init(key, jnp.zeros((8,)))
    with pytest.raises(
        DTypeError, match=r"MultiHeadAttention: expected a floating-point query, got dtype int32"
    ):
        layer.init(key, jnp.zeros((2, 3, 8), jnp.int32))
    params = layer.init(key, jnp.zeros((2, 3, 8)), jnp.zeros((2, 4, 6)))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected query with last dimension 8 \(set at init\), got shape \(2, 3, 7\)",
    ):
        layer.apply(params, jnp.zeros((2, 3, 7)), jnp.zeros((2, 4, 6)))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected key_value with last dimension 6 \(set at init\), got shape \(2, 4, 8\)",
    ):
        layer.apply(params, jnp.zeros((2, 3, 8)), jnp.zeros((2, 4, 8)))
    with pytest.raises(
        ShapeError,
        match=r"expected key_value \[batch, kv_len, features\] with the query's batch shape \(2,\), got shape \(3, 4, 6\)",
    ):
        layer.apply(params, jnp.zeros((2, 3, 8)), jnp.zeros((3, 4, 6)))
    q, kv = jnp.zeros((2, 3, 8)), jnp.zeros((2, 4, 6))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected a mask broadcastable to \[batch, heads, q_len, kv_len\] = \(2, 2, 3, 4\), got shape \(1, 1, 3, 3\)",
    ):
        layer.apply(params, q, kv, mask=causal_mask(3))
    with pytest.raises(ShapeError, match=r"= \(2, 2, 3, 4\), got shape \(3, 1, 1, 4\)"):
        layer.apply(params, q, kv, mask=padding_mask(jnp.array([1, 2, 3]), 4))
    with pytest.raises(
        DTypeError,
        match=r"MultiHeadAttention: expected a boolean mask \(True = attend\), got dtype float32",
    ):
        layer.apply(params, q, kv, mask=jnp.ones((3, 4)))


def test_errors_name_the_path_in_a_model(key):
    model = Sequential({"attention": MultiHeadAttention(num_heads=2)})
    params = model.init(key, jnp.zeros((1, 3, 8)))
    with pytest.raises(
        ShapeError, match=r"MultiHeadAttention at 'attention': expected query with last dimension 8"
    ):
        model.apply(params, jnp.zeros((1, 3, 4)))


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
    from jnn._attention import _fused

    assert _fused(None) == (jax.default_backend() != "cpu")
    assert not _fused("einsum") and _fused("xla") and _fused("cudnn")
