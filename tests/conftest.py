"""Shared fixtures: small inputs and keys, so every test stays fast on two CPU cores."""

import jax
import numpy as np
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def x_small(rng):
    """A batch of 4 examples with 3 features, float32."""
    return rng.standard_normal((4, 3)).astype(np.float32)


# Transformations a layer's apply must survive: none and jax.jit (the chex "variants"
# idea, as a lightweight parametrize).
TRANSFORMS = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]


def check_gradients(f, args, order=1):
    """``jax.test_util.check_grads`` in forward and reverse mode, with the tolerances that
    float32 finite differences at ``eps=1e-3`` support (about 1e-2)."""
    from jax.test_util import check_grads

    check_grads(f, args, order=order, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2, eps=1e-3)
