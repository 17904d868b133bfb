"""BatchNorm: the textbook formula, running statistics in explicit state, train vs inference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TRANSFORMS
from jax.test_util import check_grads

import jnn


@pytest.fixture
def x():
    return np.random.default_rng(2).normal(3.0, 2.0, (6, 5, 4)).astype(np.float32)


def numpy_batch_norm(x, scale, offset, eps):
    mean = x.mean(axis=(0, 1), dtype=np.float64)
    var = x.var(axis=(0, 1), dtype=np.float64)
    return (x - mean) / np.sqrt(var + eps) * scale + offset, mean, var


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_training_matches_textbook_and_updates_running_stats(key, x, transform):
    bn = jnn.BatchNorm(momentum=0.9, epsilon=1e-3)
    params, state = bn.init_with_state(key, x)
    params = {"scale": jnp.array([1.0, 2.0, 0.5, 1.5]), "offset": jnp.array([0.0, 1.0, -1.0, 2.0])}
    apply = transform(lambda p, v, s: bn.apply(p, v, state=s, is_training=True))
    y, new_state = apply(params, x, state)
    expected, mean, var = numpy_batch_norm(x, np.asarray(params["scale"]), np.asarray(params["offset"]), 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new_state["variance"], 0.9 + 0.1 * var, rtol=1e-5)


def test_inference_uses_running_stats_and_keeps_them(key, x):
    bn = jnn.BatchNorm(use_scale=False, use_offset=False)
    params, _ = bn.init_with_state(key, x)
    assert params == {}
    state = {"mean": jnp.full(4, 3.0), "variance": jnp.full(4, 4.0)}
    y, same = bn.apply(params, x, state=state)
    np.testing.assert_allclose(y, (x - 3.0) / np.sqrt(4.0 + 1e-5), rtol=1e-5)
    chex.assert_trees_all_equal(same, state)


def test_gradients(key, x):
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    check_grads(
        lambda p, v: (bn.apply(p, v, state=state, is_training=True)[0] ** 3).sum(),
        (params, x[:2, :3]), order=1, modes=("rev",), atol=5e-2, rtol=5e-2, eps=1e-2,
    )


def test_optimizer_never_touches_state(key, x):
    model = jnn.Sequential([jnn.Dense(4), jnn.BatchNorm(), jnn.Dense(1)])
    params, state = model.init_with_state(key, x)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    assert "batch_norm_0" not in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, dict))
    step = jnn.make_train_step(model, lambda o, t: jnp.mean((o - t) ** 2), optimizer)
    params, opt_state, new_state, logs = step(params, opt_state, (x, jnp.zeros((6, 5, 1))), None, state)
    assert set(new_state) == {"batch_norm_0"}
    assert not np.allclose(new_state["batch_norm_0"]["mean"], 0.0)  # moved by the data


def test_axis_name_averages_across_a_mapped_axis(key, x):
    bn = jnn.BatchNorm(axis_name="devices")
    params, state = bn.init_with_state(key, x[0])
    mapped = jax.vmap(
        lambda v: bn.apply(params, v, state=state, is_training=True), axis_name="devices"
    )
    y, new_state = mapped(x)
    whole, whole_state = jnn.BatchNorm().apply(
        params, x.reshape(-1, 4), state=state, is_training=True
    )
    np.testing.assert_allclose(y.reshape(-1, 4), whole, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"][0], whole_state["mean"], rtol=1e-5)


def test_errors(key, x):
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    with pytest.raises(jnn.ParamsError, match=r"BatchNorm: needs its running statistics"):
        bn.apply(params, x)
    with pytest.raises(jnn.ShapeError, match=r"BatchNorm: expected input of rank at least 2"):
        bn.init_with_state(key, jnp.ones(3))
    with pytest.raises(
        jnn.ShapeError,
        match=r"BatchNorm: expected input with 4 features on axis -1 \(set at init\), got shape "
        r"\(6, 5, 3\)",
    ):
        bn.apply(params, x[..., :3], state=state)
    with pytest.raises(ValueError, match=r"BatchNorm: momentum must be in \[0, 1\]"):
        jnn.BatchNorm(momentum=2.0)
