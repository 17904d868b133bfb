"""Precision on every backend.

The suite compares with NumPy at full float32 (the autouse fixture in conftest.py); the
tests here are marked ``default_precision`` and check the fast path a user gets by
default: on a CPU it is full float32, on a GPU TF32 matrix products, on a TPU bfloat16
passes. Their tolerances are the backend's (``backend_tolerance``), so the same test
passes everywhere and still fails on a real error (a wrong transpose or a missing bias is
off by O(1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


def test_the_suite_checks_against_references_at_full_float32():
    assert jax.config.jax_default_matmul_precision == "highest"


@pytest.mark.default_precision
def test_fast_path_tests_see_jax_defaults_and_importing_jnn_changes_none():
    # jnn never sets a global precision: the user's choice (or JAX's default) stands.
    assert jax.config.jax_default_matmul_precision is None


@pytest.mark.default_precision
def test_dense_at_default_precision(key, backend_tolerance):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    layer = jnn.Dense(32, activation=jnn.tanh)
    params = layer.init(key, x)
    w, b = (np.asarray(params[k], np.float64) for k in ("weight", "bias"))
    expected = np.tanh(x.astype(np.float64) @ w + b)
    got = jax.jit(layer.apply)(params, x)
    np.testing.assert_allclose(got, expected, **backend_tolerance)


@pytest.mark.default_precision
def test_conv_at_default_precision(key, backend_tolerance):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    layer = jnn.Conv(4, kernel_size=(3, 3), padding="VALID")
    params = layer.init(key, x)
    w, b = (np.asarray(params[k], np.float64) for k in ("weight", "bias"))
    expected = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            patch = x[:, i : i + 3, j : j + 3, :].astype(np.float64)
            expected[:, i, j, :] = np.einsum("bhwc,hwcf->bf", patch, w) + b
    got = jax.jit(layer.apply)(params, x)
    np.testing.assert_allclose(got, expected, **backend_tolerance)


@pytest.mark.default_precision
def test_causal_attention_at_default_precision(key, backend_tolerance):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    layer = jnn.MultiHeadAttention(num_heads=2, causal=True)
    params = layer.init(key, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x64 = x.astype(np.float64)

    def project(name):
        return np.einsum("btf,fhd->bthd", x64, p[name]["weight"]) + p[name]["bias"]

    q, k, v = project("query"), project("key"), project("value")
    logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.tril(np.ones((5, 5), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = np.einsum("bhts,bshd->bthd", weights, v)
    out = p["output"]
    expected = np.einsum("bthd,hdf->btf", heads, out["weight"]) + out["bias"]
    got = jax.jit(layer.apply)(params, x)
    np.testing.assert_allclose(got, expected, **backend_tolerance)


@pytest.mark.default_precision
def test_lstm_and_transformer_lm_at_default_precision_match_full_float32(key, backend_tolerance):
    """Deep or recurrent networks compound rounding, so their fast path is checked against
    the same model at full float32, with the backend's tolerance."""
    tokens = jax.random.randint(key, (2, 12), 0, 40)
    lm = jnn.TransformerLM(40, 2, features=32, num_heads=4, max_length=12)
    params = lm.init(key, tokens)
    forward = jax.jit(lm.apply)
    fast = forward(params, tokens)
    with jax.default_matmul_precision("highest"):
        full = jax.jit(lm.apply)(params, tokens)
    np.testing.assert_allclose(fast, full, **backend_tolerance)

    x = jax.random.normal(key, (3, 10, 8))
    rnn = jnn.RNN(jnn.LSTMCell(16))
    rnn_params = rnn.init(key, x)
    fast = jax.jit(rnn.apply)(rnn_params, x)
    with jax.default_matmul_precision("highest"):
        full = jax.jit(rnn.apply)(rnn_params, x)
    np.testing.assert_allclose(fast, full, **backend_tolerance)
    assert fast.dtype == full.dtype == jnp.float32
