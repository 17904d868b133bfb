"""PReLU: values against NumPy, gradients, jit and vmap, in a model, and errors (PyTorch
parity: test_torch_parity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["shared", "per-channel"])
def test_matches_numpy(rng, per_channel, transform):
    layer = jnn.PReLU(per_channel=per_channel)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    params = layer.init(jax.random.key(0), jnp.asarray(x))
    assert params["negative_slope"].shape == ((4,) if per_channel else ())
    np.testing.assert_array_equal(params["negative_slope"], 0.25)
    slope = rng.uniform(-0.5, 0.5, (4,) if per_channel else ()).astype(np.float32)
    params = {"negative_slope": jnp.asarray(slope)}
    expected = np.where(x >= 0, x, slope * x)
    np.testing.assert_allclose(transform(layer.apply)(params, x), expected, rtol=1e-6)
    check_gradients(layer.apply, (params, jnp.asarray(x)))
    per_example = jax.vmap(layer.apply, in_axes=(None, 0))(params, jnp.asarray(x))
    np.testing.assert_allclose(per_example, expected, rtol=1e-6)


def test_slope_is_learned_in_a_model():
    model = jnn.Sequential([jnn.Dense(8), jnn.PReLU(per_channel=True), jnn.Dense(1)])
    x = jax.random.normal(jax.random.key(0), (16, 3))
    params = model.init(jax.random.key(1), x)
    grads = jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(params)
    assert set(params["prelu_0"]) == {"negative_slope"}
    assert np.abs(np.asarray(grads["prelu_0"]["negative_slope"])).sum() > 0
    bf16 = jnn.PReLU(negative_slope_init=0.1, param_dtype=jnp.bfloat16)
    assert bf16.init(jax.random.key(0), x)["negative_slope"].dtype == jnp.bfloat16


def test_errors():
    layer = jnn.PReLU(per_channel=True)
    params = layer.init(jax.random.key(0), jnp.zeros((2, 4)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^PReLU: expected input with 4 channels on the last axis \(set at init\), got "
        r"shape \(2, 5\)\.$",
    ):
        layer.apply(params, jnp.zeros((2, 5)))
    with pytest.raises(jnn.DTypeError, match=r"^PReLU: expected a floating-point input"):
        layer.apply(params, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(jnn.ShapeError, match=r"^PReLU: expected input \[\.\.\., channels\]"):
        layer.init(jax.random.key(0), jnp.zeros(()))
    with pytest.raises(TypeError, match=r"^PReLU: param_dtype"):
        jnn.PReLU(param_dtype=jnp.int32)
