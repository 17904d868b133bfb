"""profile_step: every stage timed, donating steps profiled safely."""

import jax
import jax.numpy as jnp
import optax
import pytest

import jnn


def test_profile_a_donating_train_step(key):
    model = jnn.MLP([8, 2])
    x, y = jnp.ones((4, 3)), jnp.zeros((4,), jnp.int32)
    params = model.init(key, x)
    optimizer = optax.sgd(0.1)
    step = jnn.make_train_step(
        model, lambda o, t: optax.softmax_cross_entropy_with_integer_labels(o, t).mean(), optimizer
    )
    profile = jnn.profile_step(step, params, optimizer.init(params), (x, y), repeats=3)
    assert all(t > 0 for t in (profile.trace, profile.lower, profile.compile, profile.run))
    assert profile.dispatch <= profile.run
    assert profile.flops is None or profile.flops > 0
    assert not params["dense_0"]["weight"].is_deleted()  # the caller's arrays survive
    assert "compile" in str(profile) and "dispatch" in str(profile)


def test_profile_a_plain_function():
    profile = jnn.profile_step(lambda a: a @ a, jnp.ones((16, 16)), repeats=2, warmup=0)
    assert profile.flops is None or abs(profile.flops - 2 * 16**3) / (2 * 16**3) < 0.1
    assert jax.tree.leaves(profile)


def test_the_step_comes_first():
    with pytest.raises(TypeError, match=r"^profile_step: expected the step function first, got"):
        jnn.profile_step(jnp.ones(3), lambda a: a)
