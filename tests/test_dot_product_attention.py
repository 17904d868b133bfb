"""The attention kernels: jax.nn.dot_product_attention (fused) against the written-out
einsum form, fully masked rows, dropout on the weights, and every implementation of
MultiHeadAttention giving the same values and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import normal

from jnn import MultiHeadAttention
from jnn._dot_product_attention import attend_explicit, attend_fused, uses_fused


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_fused_equals_explicit(kv_heads):
    q = jnp.asarray(normal(0, (2, 4, 4, 3)))
    k, v = jnp.asarray(normal(1, (2, 6, kv_heads, 3))), jnp.asarray(normal(2, (2, 6, kv_heads, 3)))
    mask = np.random.default_rng(3).random((2, 4, 4, 6)) > 0.5
    mask[0, 1, 2] = False  # one fully masked row
    for m in (None, jnp.asarray(mask), jnp.asarray(mask[:, :1, :, :])):
        fused, explicit = attend_fused(q, k, v, m), attend_explicit(q, k, v, m)
        np.testing.assert_allclose(fused, explicit, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(attend_fused(q, k, v, jnp.asarray(mask))[0, 2, 1], 0.0)


def test_dropout_drops_attention_weights_inverted(key):
    """With V = identity-like values, the output is the dropped weights; their mean is kept."""
    q = jnp.zeros((1, 1, 1, 2))  # equal logits: weights 1/8 each
    k = jnp.zeros((1, 8, 1, 2))
    v = jnp.eye(8)[None, :, None, :]  # value s is the one-hot e_s
    out = attend_explicit(q, k, v, None, 0.5, key)[0, 0, 0]
    assert set(np.round(np.asarray(out), 6).tolist()) <= {0.0, 0.25}
    means = [attend_explicit(q, k, v, None, 0.5, jax.random.key(i)).sum() for i in range(200)]
    np.testing.assert_allclose(np.mean(means), 1.0, atol=0.05)


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_every_implementation_gives_the_same_layer(key, kv_heads):
    """The backend default, the einsum form and jax.nn.dot_product_attention agree, in
    value and gradient, with a mask that hides whole rows."""
    x = jnp.asarray(normal(0, (2, 5, 8)))
    mask = jnp.asarray(np.random.default_rng(1).random((2, 1, 5, 5)) > 0.4).at[0, 0, 2].set(False)
    layers = {
        impl: MultiHeadAttention(num_heads=4, num_kv_heads=kv_heads, implementation=impl)
        for impl in (None, "einsum", "xla")
    }
    params = layers[None].init(key, x)

    def loss(params, layer):
        return jnp.sum(jnp.sin(layer.apply(params, x, mask=mask)))

    reference = layers["einsum"].apply(params, x, mask=mask)
    ref_grads = jax.grad(loss)(params, layers["einsum"])
    for impl in (None, "xla"):
        np.testing.assert_allclose(
            layers[impl].apply(params, x, mask=mask), reference, rtol=1e-5, atol=1e-6
        )
        chex.assert_trees_all_close(jax.grad(loss)(params, layers[impl]), ref_grads, atol=1e-5)


def test_default_implementation_follows_the_backend():
    assert uses_fused(None) == (jax.default_backend() != "cpu")
    assert not uses_fused("einsum") and uses_fused("xla") and uses_fused("cudnn")
