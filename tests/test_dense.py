"""Dense and MLP: shapes, NumPy references, gradients, jit/vmap, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn


def numpy_dense(params, x, activation=None):
    w = np.asarray(params["weight"], np.float64)
    y = np.asarray(x, np.float64) @ w
    if "bias" in params:
        y = y + np.asarray(params["bias"], np.float64)
    return y if activation is None else activation(y)


@pytest.mark.parametrize("in_shape", [(5,), (4, 5), (2, 3, 5)])
@pytest.mark.parametrize("features", [1, 7])
@pytest.mark.parametrize("use_bias", [True, False])
def test_shape_agreement(key, in_shape, features, use_bias):
    layer = jnn.Dense(features, use_bias=use_bias)
    params = layer.init(key, jax.ShapeDtypeStruct(in_shape, jnp.float32))
    assert params["weight"].shape == (in_shape[-1], features)
    assert ("bias" in params) == use_bias
    out = layer.apply(params, jnp.ones(in_shape))
    assert out.shape == in_shape[:-1] + (features,)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_dense_matches_numpy_with_arange_params(transform):
    layer = jnn.Dense(3, activation=jnn.relu)
    params = {
        "weight": jnp.arange(12.0).reshape(4, 3) / 10 - 0.5,
        "bias": jnp.array([0.1, -0.2, 0.3]),
    }
    x = jnp.arange(8.0).reshape(2, 4) - 3
    expected = numpy_dense(params, x, lambda y: np.maximum(y, 0))
    np.testing.assert_allclose(transform(layer.apply)(params, x), expected, rtol=1e-6)


def test_perceptron_by_hand():
    """One neuron: sigmoid(w . x + b), computed with plain floats."""
    layer = jnn.Dense(1, activation=jnn.sigmoid)
    params = {"weight": jnp.array([[0.5], [-1.0]]), "bias": jnp.array([0.25])}
    z = 0.5 * 2.0 + -1.0 * 1.0 + 0.25
    np.testing.assert_allclose(
        layer.apply(params, jnp.array([2.0, 1.0])), [1 / (1 + np.exp(-z))], rtol=1e-6
    )


def test_initializers_are_used(key):
    layer = jnn.Dense(4, w_init=jnn.initializers.constant(0.5), b_init=jnn.initializers.ones)
    params = layer.init(key, jnp.zeros((2, 3)))
    np.testing.assert_array_equal(params["weight"], np.full((3, 4), 0.5))
    np.testing.assert_array_equal(params["bias"], np.ones(4))
    big = jnn.Dense(256, w_init=jnn.initializers.he_normal()).init(key, jnp.zeros((1, 512)))
    np.testing.assert_allclose(float(jnp.std(big["weight"])), np.sqrt(2 / 512), rtol=0.05)


def test_gradients(key):
    layer = jnn.Dense(3, activation=jnn.tanh)
    x = jax.random.normal(key, (2, 4))
    params = layer.init(key, x)
    check_gradients(lambda p, x: layer.apply(p, x).sum(), (params, x), order=2)


def test_vmap_over_examples_equals_batch(key):
    layer = jnn.Dense(3)
    x = jax.random.normal(key, (5, 4))
    params = layer.init(key, x)
    np.testing.assert_allclose(
        jax.vmap(layer.apply, in_axes=(None, 0))(params, x), layer.apply(params, x), rtol=1e-6
    )


class DenseVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_mlp_matches_numpy(self):
        mlp = jnn.MLP([5, 4, 2], activation=jnn.tanh, final_activation=jnn.softmax)
        x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
        params = mlp.init(jax.random.key(0), x)
        h = x
        for i in range(3):
            h = numpy_dense(params[f"dense_{i}"], h)
            if i < 2:
                h = np.tanh(h)
        h = np.exp(h - h.max(-1, keepdims=True))
        h = h / h.sum(-1, keepdims=True)
        out = self.variant(mlp.apply)(params, x)
        np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-6)


def test_mlp_equals_sequential_of_dense(key):
    x = jnp.ones((2, 6))
    mlp = jnn.MLP([5, 2])
    seq = jnn.Sequential([jnn.Dense(5), jnn.relu, jnn.Dense(2)])
    chex.assert_trees_all_equal(mlp.init(key, x), seq.init(key, x))


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match=r"Dense: features must be a positive int, got 0"):
        jnn.Dense(0)
    with pytest.raises(ValueError, match=r"MLP: features must list at least one"):
        jnn.MLP([])


def test_input_errors(key):
    layer = jnn.Dense(3)
    with pytest.raises(
        jnn.ShapeError, match=r"Dense: expected input of rank at least 1, got shape \(\)"
    ):
        layer.init(key, jnp.float32(1.0))
    with pytest.raises(
        jnn.DTypeError, match=r"Dense: expected a floating-point input, got dtype int32"
    ):
        layer.init(key, jnp.zeros((2, 3), jnp.int32))
    params = layer.init(key, jnp.zeros((2, 784)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"Dense: expected input with last dimension 784 \(set at init\), got shape \(32, 785\)",
    ):
        layer.apply(params, jnp.zeros((32, 785)))


def test_leaky_relu_as_a_layer_via_partial(key):
    model = jnn.Sequential([jnn.Dense(2), functools.partial(jnn.leaky_relu, negative_slope=0.5)])
    params = model.init(key, jnp.ones((1, 2)))
    assert model.names == ("dense_0", "leaky_relu_0")
    y = model.apply(params, jnp.ones((1, 2)))
    z = jnn.Dense(2).apply(params["dense_0"], jnp.ones((1, 2)))
    np.testing.assert_allclose(y, np.where(z > 0, z, 0.5 * z), rtol=1e-6)
