"""Combinators must equal the same layers applied by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

import jnn


@pytest.fixture
def x():
    return jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)), jnp.float32)


def test_sequential_auto_names_count_per_kind(key, x):
    model = jnn.Sequential([jnn.Dense(4), jnn.relu, jnn.Dense(4), jnn.relu, jnn.Dense(2)])
    assert model.names == ("dense_0", "relu_0", "dense_1", "relu_1", "dense_2")
    assert set(model.init(key, x)) == {"dense_0", "dense_1", "dense_2"}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_sequential_equals_manual_composition(key, x, transform):
    d1, d2 = jnn.Dense(5), jnn.Dense(2)
    model = jnn.Sequential({"first": d1, "act": jnn.gelu, "second": d2})
    params = model.init(key, x)
    manual = d2.apply(params["second"], jax.nn.gelu(d1.apply(params["first"], x)))
    np.testing.assert_allclose(transform(model.apply)(params, x), manual, rtol=1e-6)


def test_nested_sequential(key, x):
    inner = jnn.Sequential([jnn.Dense(4), jnn.tanh])
    model = jnn.Sequential({"inner": inner, "head": jnn.Dense(1)})
    params = model.init(key, x)
    assert set(params["inner"]) == {"dense_0"}
    expected = jnn.Dense(1).apply(params["head"], inner.apply(params["inner"], x))
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)


def test_empty_sequential_and_identity_pass_inputs_through(key, x):
    np.testing.assert_array_equal(jnn.Sequential([]).apply({}, x), x)
    np.testing.assert_array_equal(jnn.Identity().apply({}, x), x)
    assert jnn.Identity().init(key, x) == {}


def test_residual(key, x):
    block = jnn.Residual([jnn.Dense(4), jnn.relu])
    params = block.init(key, x)
    expected = x + jax.nn.relu(jnn.Dense(4).apply(params["dense_0"], x))
    np.testing.assert_allclose(block.apply(params, x), expected, rtol=1e-6)


def test_residual_with_projection_shortcut(key, x):
    block = jnn.Residual(jnn.Dense(6), shortcut=jnn.Dense(6, use_bias=False))
    params = block.init(key, x)
    expected = x @ params["shortcut"]["weight"] + jnn.Dense(6).apply(params["dense_0"], x)
    np.testing.assert_allclose(block.apply(params, x), expected, rtol=1e-5, atol=1e-6)


def test_residual_shape_mismatch_is_explained(key, x):
    with pytest.raises(
        jnn.ShapeError, match=r"Residual: the layers map shape \(3, 4\) to \(3, 6\)"
    ):
        jnn.Residual(jnn.Dense(6)).init(key, x)


@pytest.mark.parametrize(
    "merge, combine",
    [
        ("concat", lambda a, b: np.concatenate([a, b], -1)),
        ("sum", lambda a, b: a + b),
        ("mean", lambda a, b: (a + b) / 2),
        ("stack", lambda a, b: np.stack([a, b], -1)),
    ],
)
def test_parallel_merges(key, x, merge, combine):
    model = jnn.Parallel({"left": jnn.Dense(3), "right": jnn.Dense(3)}, merge=merge)
    params = model.init(key, x)
    a = jnn.Dense(3).apply(params["left"], x)
    b = jnn.Dense(3).apply(params["right"], x)
    np.testing.assert_allclose(model.apply(params, x), combine(a, b), rtol=1e-6)


def test_parallel_tuple_and_callable_merge(key, x):
    model = jnn.Parallel([jnn.Dense(2), jnn.Dense(3)], merge="tuple")
    params = model.init(key, x)
    a, b = model.apply(params, x)
    assert a.shape == (3, 2) and b.shape == (3, 3)
    product = jnn.Parallel([jnn.Dense(2), jnn.Dense(2)], merge=lambda ys: ys[0] * ys[1])
    p = product.init(key, x)
    expected = jnn.Dense(2).apply(p["dense_0"], x) * jnn.Dense(2).apply(p["dense_1"], x)
    np.testing.assert_allclose(product.apply(p, x), expected, rtol=1e-6)


def test_parallel_errors(key, x):
    with pytest.raises(ValueError, match=r"Parallel: merge must be one of"):
        jnn.Parallel([jnn.Dense(2)], merge="max")
    with pytest.raises(jnn.ShapeError, match=r"Parallel: merge='sum' needs equal branch shapes"):
        jnn.Parallel([jnn.Dense(2), jnn.Dense(3)], merge="sum").init(key, x)


def test_lambda_layer_names_and_errors(x):
    assert jnn.Lambda(jnn.relu).layer_name() == "Lambda(relu)"
    np.testing.assert_allclose(jnn.Lambda(lambda v: 2 * v).apply({}, x), 2 * x)
    with pytest.raises(TypeError, match=r"Lambda: fn must be a function"):
        jnn.Lambda(3)
    with pytest.raises(TypeError, match=r"Sequential: expected a jnn.Module or a function"):
        jnn.Sequential([jnn.Dense(2), 3])


def test_multiple_inputs_reach_the_first_layer(key):
    add = jnn.Lambda(lambda a, b: a + b, name="add")
    model = jnn.Sequential([add, jnn.Dense(2)])
    a, b = jnp.ones((2, 3)), jnp.ones((2, 3))
    params = model.init(key, a, b)
    expected = jnn.Dense(2).apply(params["dense_0"], a + b)
    np.testing.assert_allclose(model.apply(params, a, b), expected, rtol=1e-6)
