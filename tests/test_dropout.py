"""Dropout: explicit keys, inverted scaling, identity at inference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

import jnn


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_inference_is_identity(key, transform):
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(transform(jnn.Dropout(0.5).apply)({}, x), x)


def test_training_drops_and_rescales(key):
    x = jnp.ones((200, 100))
    y = jnn.Dropout(0.3).apply({}, x, key=key, is_training=True)
    values = np.unique(np.asarray(y))
    np.testing.assert_allclose(values, [0.0, 1 / 0.7], rtol=1e-6)
    assert abs(float((y == 0).mean()) - 0.3) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.02
    expected = np.where(jax.random.bernoulli(key, 0.7, x.shape), 1 / 0.7, 0.0)
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_same_key_same_mask_and_new_key_new_mask(key):
    drop = jnn.Dropout(0.5)
    x = jnp.ones((8, 8))
    a = drop.apply({}, x, key=key, is_training=True)
    np.testing.assert_array_equal(a, drop.apply({}, x, key=key, is_training=True))
    assert not np.array_equal(a, drop.apply({}, x, key=jax.random.key(1), is_training=True))


def test_broadcast_dims_share_the_mask(key):
    y = jnn.Dropout(0.5, broadcast_dims=(0,)).apply(
        {}, jnp.ones((5, 16)), key=key, is_training=True
    )
    assert (y == y[0]).all()


def test_rate_edges_and_gradient(key):
    x = jnp.ones((3, 3))
    np.testing.assert_array_equal(jnn.Dropout(0.0).apply({}, x, key=key, is_training=True), x)
    np.testing.assert_array_equal(jnn.Dropout(1.0).apply({}, x, key=key, is_training=True), 0 * x)
    grad = jax.grad(lambda v: jnn.Dropout(0.5).apply({}, v, key=key, is_training=True).sum())(x)
    mask = jnn.Dropout(0.5).apply({}, x, key=key, is_training=True)
    np.testing.assert_allclose(grad, mask)


def test_errors(key):
    with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0, 1\], got 1.5"):
        jnn.Dropout(1.5)
    model = jnn.Sequential([jnn.Dense(2), jnn.Dropout(0.5)])
    params = model.init(key, jnp.ones((1, 3)))
    with pytest.raises(
        jnn.MissingKeyError, match=r"Dropout at 'dropout_0': is_training=True needs a PRNG key"
    ):
        model.apply(params, jnp.ones((1, 3)), is_training=True)


def test_vmap_over_keys_gives_different_masks(key):
    keys = jax.random.split(key, 4)
    run = jax.vmap(lambda k: jnn.Dropout(0.5).apply({}, jnp.ones(32), key=k, is_training=True))
    masks = np.asarray(run(keys))
    assert len({m.tobytes() for m in masks}) == 4


def test_training_needs_a_floating_input_and_broadcast_dims_inside_its_rank(key):
    drop = jnn.Dropout(0.3)
    ints = jnp.arange(6)
    assert drop.apply({}, ints) is ints  # inference: identity, whatever the dtype
    with pytest.raises(
        jnn.DTypeError, match=r"^Dropout: expected a floating-point input while training, got "
    ):
        drop.apply({}, ints, key=key, is_training=True)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Dropout: broadcast_dims \(2,\) name axes outside an input of shape \(4, 3\)\.$",
    ):
        jnn.Dropout(0.3, broadcast_dims=(2,)).apply({}, jnp.ones((4, 3)), key=key, is_training=True)
