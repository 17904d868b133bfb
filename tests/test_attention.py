"""MultiHeadAttention: NumPy references, causality, dropout, gradients, jit/vmap, the
batch-axis rule, fan-in, errors. The KV cache is tested in test_kv_cache.py, the mask
helpers in test_masks.py and the kernels in test_dot_product_attention.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

from jnn import (
    DTypeError,
    MissingKeyError,
    MultiHeadAttention,
    Sequential,
    ShapeError,
    causal_mask,
    combine_masks,
    initializers,
    padding_mask,
)

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
    query = jax.ShapeDtypeStruct((2, 3, 8), jnp.float32)  # init takes a batched sample
    key_value = jax.ShapeDtypeStruct((2, 6, 7), jnp.float32)
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
    out = layer.apply(params, jnp.ones((*batch, 3, 8)), jnp.ones((*batch, 6, 7)))
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
        ValueError, match=r"MultiHeadAttention: use_rope needs an even head_dim, got 3\.$"
    ):
        MultiHeadAttention(num_heads=4, head_dim=3, use_rope=True)
    with pytest.raises(
        ValueError,
        match=r"MultiHeadAttention: use_rope needs an even head_dim, got 3 \(features 12 / num_heads 4\)",
    ):
        MultiHeadAttention(num_heads=4, features=12, use_rope=True)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: rope_base must be a number greater than 1, got 1.0"
    ):
        MultiHeadAttention(num_heads=4, rope_base=1.0)
    with pytest.raises(
        TypeError, match=r"MultiHeadAttention: num_kv_heads must be an int or None, got 2.0"
    ):
        MultiHeadAttention(num_heads=4, num_kv_heads=2.0)
    with pytest.raises(
        ValueError, match=r"MultiHeadAttention: head_dim must be a positive int, got -2"
    ):
        MultiHeadAttention(num_heads=4, head_dim=-2)
    assert MultiHeadAttention(np.int64(4)).num_heads == 4  # NumPy ints are ints
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
        match=r"MultiHeadAttention: expected query \[batch, q_len, features\] of rank 3, got shape \(8,\)\.$",
    ):
        layer.init(key, jnp.zeros((8,)))
    with pytest.raises(
        DTypeError,
        match=r"MultiHeadAttention: expected a floating-point query, got dtype int32\. Hint: embed token ids first \(jnn.Embedding\)",
    ):
        layer.init(key, jnp.zeros((2, 3, 8), jnp.int32))
    with pytest.raises(
        DTypeError, match=r"MultiHeadAttention: expected a floating-point key_value, got dtype bool"
    ):
        layer.init(key, jnp.zeros((2, 3, 8)), jnp.zeros((2, 3, 8), bool))
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
        match=r"MultiHeadAttention: expected a boolean mask \(True = attend\), got dtype float32\. Hint: from a 0/1 mask use m.astype\(bool\), from an additive one \(0 or -inf\) m == 0; a PyTorch boolean attn_mask \(True = masked\) is ~m\.",
    ):
        layer.apply(params, q, kv, mask=jnp.ones((3, 4)))
    with pytest.raises(DTypeError, match=r"expected a boolean mask .* got dtype int32"):
        layer.apply(params, q, kv, mask=np.ones((3, 4), np.int32))
    with pytest.raises(ShapeError, match=r"= \(2, 2, 3, 4\), got shape \(1, 1, 1, 3, 4\)"):
        layer.apply(params, q, kv, mask=np.ones((1, 1, 1, 3, 4), bool))
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected query \[batch, q_len, features\] \(or one unbatched \[q_len, features\]\) of rank 2 or 3, got shape \(1, 2, 3, 8\)",
    ):
        layer.apply(params, jnp.zeros((1, 2, 3, 8)))
    with pytest.raises(
        ShapeError,
        match=r"expected key_value \[batch, kv_len, features\] with the query's batch shape \(\), got shape \(2, 4, 6\) \(query shape \(3, 8\)\)",
    ):
        layer.apply(params, jnp.zeros((3, 8)), kv)


def test_rope_with_an_odd_head_dim_from_the_input_fails_at_init(key):
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: use_rope needs an even head_dim, got 3 \(features 6 / num_heads 2\)",
    ):
        MultiHeadAttention(num_heads=2, use_rope=True).init(key, jnp.zeros((1, 4, 6)))


# --------------------------------------------------------------------------- batch axis

TABLE = r"Hint: a \(batch, features\) table would make examples attend to each other; add a length axis: x\[:, None, :\]\."


def test_init_refuses_a_table_without_a_length_axis(key):
    layer = MultiHeadAttention(num_heads=2)
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention: expected query \[batch, q_len, features\] of rank 3, got shape \(32, 8\)\. "
        + TABLE,
    ):
        layer.init(key, jnp.zeros((32, 8)))
    with pytest.raises(
        ShapeError,
        match=r"expected key_value \[batch, kv_len, features\] of rank 3, got shape \(32, 6\)\. "
        + TABLE,
    ):
        layer.init(key, jnp.zeros((32, 1, 8)), jnp.zeros((32, 6)))
    # Inside a composite the concrete init of the child refuses it too, with its path.
    with pytest.raises(ShapeError, match=r"MultiHeadAttention at 'attention': .*" + TABLE):
        Sequential({"attention": layer}).init(key, jnp.zeros((32, 8)))
    # The fix the hint names works, and gives one output per example.
    table = jnp.asarray(normal(0, (32, 8)))
    params = layer.init(key, table[:, None, :])
    assert layer.apply(params, table[:, None, :]).shape == (32, 1, 8)


def test_apply_takes_one_unbatched_example_for_vmap(key):
    """apply reads a rank-2 input as one sequence, so vmap over examples works; init
    refuses one, under jax.eval_shape too."""
    layer = MultiHeadAttention(num_heads=2, num_kv_heads=1)
    x, context = jnp.asarray(normal(0, (3, T, F))), jnp.asarray(normal(1, (3, 4, 6)))
    params = layer.init(key, x, context)
    batched = layer.apply(params, x, context)
    mapped = jax.jit(jax.vmap(lambda x, c: layer.apply(params, x, c)))(x, context)
    np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        layer.apply(params, x[1], context[1]), batched[1], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ShapeError, match=r"\(batch, features\) table"):
        jax.eval_shape(layer.init, key, jax.ShapeDtypeStruct((T, F), jnp.float32))


# --------------------------------------------------------------------------- fan-in


def test_initializers_receive_the_projection_fan_in(key):
    """Each projection's weight and bias get fan_in = its input size, as torch.nn.Linear
    reads it: query q_features, key/value kv_features, output num_heads * head_dim."""
    seen = {}

    def recording(name):
        def init(key, shape, dtype=jnp.float32, *, fan_in=None):
            seen.setdefault(name, []).append((tuple(shape), fan_in))
            return jnp.zeros(shape, dtype)

        return init

    layer = MultiHeadAttention(
        num_heads=4, num_kv_heads=2, head_dim=3, w_init=recording("w"), b_init=recording("b")
    )
    layer.init(key, jnp.zeros((1, 2, 8)), jnp.zeros((1, 5, 6)))
    assert seen["w"] == [((8, 12), 8), ((6, 6), 6), ((6, 6), 6), ((12, 8), 12)]
    assert seen["b"] == [((12,), 8), ((6,), 6), ((6,), 6), ((8,), 12)]
    torch_like = MultiHeadAttention(
        num_heads=2,
        w_init=initializers.pytorch_default(),
        b_init=initializers.pytorch_default(),
    )
    params = torch_like.init(key, jnp.zeros((1, 2, 64)), jnp.zeros((1, 2, 4)))
    bounds = {"query": 1 / 8, "key": 1 / 2, "value": 1 / 2, "output": 1 / 8}
    for name, bound in bounds.items():
        for leaf in params[name].values():
            assert float(jnp.abs(leaf).max()) <= bound
        assert float(jnp.abs(params[name]["weight"]).max()) > 0.8 * bound


def test_errors_name_the_path_in_a_model(key):
    model = Sequential({"attention": MultiHeadAttention(num_heads=2)})
    params = model.init(key, jnp.zeros((1, 3, 8)))
    with pytest.raises(
        ShapeError, match=r"MultiHeadAttention at 'attention': expected query with last dimension 8"
    ):
        model.apply(params, jnp.zeros((1, 3, 4)))
