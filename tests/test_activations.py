"""Activations and initializers: the jax.nn functions, checked against NumPy formulas."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import jnn

X = np.linspace(-3, 3, 13).astype(np.float32)


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


REFERENCES = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0),
    "tanh": np.tanh,
    "softmax": _softmax,
    "log_softmax": lambda v: np.log(_softmax(v)),
    "leaky_relu": lambda v: np.where(v >= 0, v, 0.01 * v),
    "elu": lambda v: np.where(v > 0, v, np.exp(v) - 1),
    "selu": lambda v: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * (np.exp(v) - 1)),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "swish": lambda v: v / (1 + np.exp(-v)),
    "softplus": lambda v: np.log1p(np.exp(v)),
    "identity": lambda v: v,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_matches_numpy(name):
    fn = getattr(jnn, name)
    np.testing.assert_allclose(fn(X), REFERENCES[name](X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_exact_and_approximate():
    exact = 0.5 * X * (1 + erf(X / np.sqrt(2)))
    np.testing.assert_allclose(jnn.gelu(X, approximate=False), exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnn.gelu(X), exact, atol=1e-3)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_as_a_sequential_layer(key, name):
    model = jnn.Sequential([getattr(jnn, name)])
    expected_name = "silu" if name == "swish" else name  # swish is silu under another name
    assert model.names == (f"{expected_name}_0",)
    np.testing.assert_allclose(model.apply({}, X), getattr(jnn, name)(X), rtol=1e-6)


@pytest.mark.parametrize(
    "factory, std",
    [
        (jnn.initializers.glorot_normal, np.sqrt(2 / (400 + 300))),
        (jnn.initializers.xavier_uniform, np.sqrt(2 / (400 + 300))),
        (jnn.initializers.he_normal, np.sqrt(2 / 400)),
        (jnn.initializers.kaiming_uniform, np.sqrt(2 / 400)),
        (jnn.initializers.lecun_normal, np.sqrt(1 / 400)),
        (jnn.initializers.lecun_uniform, np.sqrt(1 / 400)),
    ],
)
def test_variance_scaling_initializers(key, factory, std):
    w = factory()(key, (400, 300), jnp.float32)
    np.testing.assert_allclose(float(jnp.std(w)), std, rtol=0.03)


def test_simple_initializers(key):
    init = jnn.initializers
    np.testing.assert_array_equal(init.zeros(key, (2, 2)), np.zeros((2, 2)))
    np.testing.assert_array_equal(init.ones(key, (2,)), np.ones(2))
    np.testing.assert_array_equal(init.constant(3.0)(key, (2,)), [3.0, 3.0])
    np.testing.assert_allclose(float(jnp.std(init.normal(0.5)(key, (200, 200)))), 0.5, rtol=0.03)
    u = init.uniform(2.0)(key, (10000,))
    assert 0 <= float(u.min()) and float(u.max()) < 2.0
    t = init.truncated_normal(1.0)(key, (10000,))
    assert float(jnp.abs(t).max()) <= 2.0
    q = init.orthogonal()(key, (6, 6))
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-5)
    assert jax.tree.leaves(q)[0].dtype == jnp.float32


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_normalises_half_precision_in_float32(name):
    """Under a bfloat16 policy the exp and the normalising sum run in float32, and the
    result keeps the input's dtype."""
    fn = getattr(jnn, name)
    x = jnp.linspace(-3.0, 3.0, 2048, dtype=jnp.float32).astype(jnp.bfloat16)
    eqns = list(_equations(jax.make_jaxpr(fn)(x).jaxpr))
    for primitive in ("exp", "reduce_sum"):
        dtypes = {str(e.outvars[0].aval.dtype) for e in eqns if e.primitive.name == primitive}
        assert dtypes == {"float32"}, (primitive, dtypes)
    out = fn(x)
    assert out.dtype == jnp.bfloat16
    expected = REFERENCES[name](np.asarray(x, np.float64))
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-2, atol=1e-5)
    # axis is honoured: uniform over the two rows of each column.
    np.testing.assert_allclose(
        fn(np.ones((2, 3), np.float32), axis=0), REFERENCES[name](np.ones(2))[0] * np.ones((2, 3))
    )
