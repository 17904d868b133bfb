"""GroupNorm (statistics per example and group of channels) against a NumPy textbook form,
its special cases (one group is LayerNorm, one channel per group instance norm), vmap and
errors. What it shares with LayerNorm and RMSNorm (low precision, param_dtype, gradients,
hyperparameters) is tested in test_norm.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn
from jnn import GroupNorm, LayerNorm


@pytest.fixture
def spread():
    """[batch=2, height=3, width=4, channels=6], mean 1 and std 2, so statistics differ."""
    return np.random.default_rng(3).normal(1.0, 2.0, (2, 3, 4, 6)).astype(np.float32)


def random_affine(shape, seed=4):
    rng = np.random.default_rng(seed)
    return {
        "scale": rng.normal(1.0, 0.5, shape).astype(np.float32),
        "offset": rng.normal(0.0, 0.5, shape).astype(np.float32),
    }


def numpy_group_norm(x, num_groups, eps, scale, offset):
    """One example and one group at a time: statistics over spatial positions and channels."""
    x = np.asarray(x, np.float64)
    size = x.shape[-1] // num_groups
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        for g in range(num_groups):
            block = x[n, ..., g * size : (g + 1) * size]
            mean = block.mean()
            var = ((block - mean) ** 2).mean()
            y[n, ..., g * size : (g + 1) * size] = (block - mean) / np.sqrt(var + eps)
    return y * np.asarray(scale, np.float64) + np.asarray(offset, np.float64)


@pytest.mark.parametrize("shape", [(2, 6), (2, 5, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("num_groups", [1, 2, 3, 6])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_group_norm_matches_textbook(key, shape, num_groups, transform):
    x = np.random.default_rng(5).normal(1.0, 2.0, shape).astype(np.float32)
    layer = GroupNorm(num_groups=num_groups, epsilon=1e-3)
    params = layer.init(key, x)
    assert params["scale"].shape == params["offset"].shape == (6,)
    params = random_affine((6,))
    y = transform(layer.apply)(params, x)
    expected = numpy_group_norm(x, num_groups, 1e-3, params["scale"], params["offset"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    by_size = GroupNorm(group_size=6 // num_groups, epsilon=1e-3)
    np.testing.assert_allclose(transform(by_size.apply)(params, x), y, rtol=1e-6, atol=1e-6)


def test_group_norm_special_cases(key, spread):
    """One group is LayerNorm over all non-batch axes; a group per channel is instance norm."""
    affine = random_affine((6,))
    one_group = GroupNorm(num_groups=1).apply(affine, spread)
    ln_params = {k: np.broadcast_to(v, spread.shape[1:]) for k, v in affine.items()}
    layer_norm = LayerNorm(axis=(1, 2, 3)).apply(ln_params, spread)
    np.testing.assert_allclose(one_group, layer_norm, rtol=1e-5, atol=1e-5)

    plain = {"scale": np.ones(6, np.float32), "offset": np.zeros(6, np.float32)}
    instance = GroupNorm(num_groups=6).apply(plain, spread)
    x = spread.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(instance, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)


def test_group_norm_vmap_is_per_example(key, spread):
    layer = GroupNorm(num_groups=2)
    params = random_affine((6,))
    one_at_a_time = jax.vmap(lambda v: layer.apply(params, v[None])[0])(spread)
    np.testing.assert_allclose(one_at_a_time, layer.apply(params, spread), rtol=1e-6, atol=1e-6)
    stacked = np.stack([spread, 2 * spread + 1])  # [replica, batch, height, width, channels]
    mapped = jax.vmap(layer.apply, in_axes=(None, 0))(params, stacked)
    whole = layer.apply(params, stacked.reshape(4, 3, 4, 6)).reshape(stacked.shape)
    np.testing.assert_allclose(mapped, whole, rtol=1e-6, atol=1e-6)


def test_group_norm_errors(key):
    with pytest.raises(
        jnn.ShapeError,
        match=r"^GroupNorm: expected a channel count divisible by num_groups=4, got 6 channels "
        r"in input of shape \(2, 3, 6\)\.$",
    ):
        GroupNorm(num_groups=4).init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(
        jnn.ShapeError, match=r"divisible by group_size=4, got 6 channels in input of shape"
    ):
        GroupNorm(group_size=4).init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(jnn.ShapeError, match=r"divisible by num_groups=32, got 16 channels"):
        GroupNorm().init(key, jnp.zeros((2, 16)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"GroupNorm: expected input of rank at least 2 \(\[batch, \*spatial, channels\]\), "
        r"got shape \(6,\)\. Hint: add a batch axis",
    ):
        GroupNorm(2).init(key, jnp.zeros(6))
    layer = GroupNorm(2)
    params = layer.init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"GroupNorm: expected input with 6 channels on the last axis \(set at init\), got "
        r"shape \(2, 3, 4\)\.",
    ):
        layer.apply(params, jnp.zeros((2, 3, 4)))
    bare = GroupNorm(2, use_scale=False, use_offset=False)
    with pytest.raises(jnn.ShapeError, match=r"divisible by num_groups=2, got 5 channels"):
        bare.apply({}, jnp.zeros((2, 3, 5)))
    with pytest.raises(jnn.DTypeError, match=r"GroupNorm: expected a floating-point input"):
        layer.apply(params, jnp.zeros((2, 3, 6), jnp.int32))
    with pytest.raises(
        ValueError,
        match=r"GroupNorm: set num_groups or group_size, not both; got num_groups=2, "
        r"group_size=3\.",
    ):
        GroupNorm(num_groups=2, group_size=3)
    for field in ("num_groups", "group_size"):
        for bad in (0, -2):
            with pytest.raises(
                ValueError, match=rf"^GroupNorm: {field} must be a positive int, got {bad}\.$"
            ):
                GroupNorm(**{field: bad})
        with pytest.raises(TypeError, match=rf"^GroupNorm: {field} must be an int or None, got 2"):
            GroupNorm(**{field: 2.0})
    assert GroupNorm(np.int64(2)) == GroupNorm(2) and hash(GroupNorm(np.int64(2))) == hash(
        GroupNorm(2)
    )


# --------------------------------------------------------------------------- InstanceNorm


@pytest.mark.parametrize("shape", [(2, 5, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_instance_norm_matches_textbook_and_is_group_norm_of_size_one(key, shape, transform):
    x = np.random.default_rng(5).normal(1.0, 2.0, shape).astype(np.float32)
    layer = jnn.InstanceNorm(epsilon=1e-3)
    assert set(layer.init(key, x)) == {"scale", "offset"}
    params = random_affine((6,))
    y = transform(layer.apply)(params, x)
    # one channel per group: statistics of one example and one channel over its positions
    expected = numpy_group_norm(x, 6, 1e-3, params["scale"], params["offset"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    same = GroupNorm(group_size=1, epsilon=1e-3).apply(params, x)
    np.testing.assert_allclose(y, same, rtol=1e-6, atol=1e-6)
    per_example = jax.vmap(lambda v: layer.apply(params, v[None])[0])(jnp.asarray(x))
    np.testing.assert_allclose(per_example, y, rtol=1e-5, atol=1e-5)
    bare = jnn.InstanceNorm(use_scale=False, use_offset=False)
    assert bare.init(key, x) == {}


def test_instance_norm_gradients(key, spread):
    layer = jnn.InstanceNorm()
    params = random_affine((6,))
    check_gradients(layer.apply, (params, jnp.asarray(spread[:, :2, :2])))


def test_instance_norm_errors(key, spread):
    layer = jnn.InstanceNorm()
    with pytest.raises(
        jnn.ShapeError,
        match=r"^InstanceNorm: expected input of rank at least 3 \(\[batch, \*spatial, "
        r"channels\]\), got shape \(2, 6\)\. Hint: without a spatial axis each channel is a "
        r"single value",
    ):
        layer.init(key, jnp.zeros((2, 6)))
    params = layer.init(key, spread)
    with pytest.raises(jnn.ShapeError, match=r"^InstanceNorm: expected input with 6 channels"):
        layer.apply(params, spread[..., :4])
    with pytest.raises(jnn.DTypeError, match=r"^InstanceNorm: expected a floating-point input"):
        layer.apply(params, spread.astype(np.int32))
    with pytest.raises(ValueError, match=r"^InstanceNorm: epsilon"):
        jnn.InstanceNorm(epsilon=-1.0)
