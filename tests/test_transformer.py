"""Transformer blocks and the decoder-only LM: composition, causality, cached decoding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(1), (2, 6, 16))


def test_encoder_block_equals_its_parts_applied_by_hand(key, x):
    block = jnn.TransformerBlock(num_heads=4, mlp_features=32)
    params = block.init(key, x)
    assert set(params) == {"norm_1", "attention", "norm_2", "mlp"}
    attention = jnn.MultiHeadAttention(4)
    norm = jnn.LayerNorm()
    h = x + attention.apply(params["attention"], norm.apply(params["norm_1"], x))
    mlp = jnn.MLP([32, 16], activation=jnn.gelu)
    expected = h + mlp.apply(params["mlp"], norm.apply(params["norm_2"], h))
    np.testing.assert_allclose(block.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_decoder_block_is_causal(key, x):
    block = jnn.TransformerBlock(num_heads=4, mlp_features=32, causal=True, use_rope=True)
    params = block.init(key, x)
    jacobian = jax.jacrev(lambda v: block.apply(params, v[None])[0])(x[0])  # [6,16,6,16]
    for t in range(6):
        assert np.all(np.asarray(jacobian[t, :, t + 1 :, :]) == 0.0)
        assert np.any(np.asarray(jacobian[t, :, : t + 1, :]) != 0.0)


def test_cross_attention_block(key, x):
    context = jax.random.normal(key, (2, 9, 8))
    block = jnn.TransformerBlock(2, 32, causal=True, cross_attention=True, norm=jnn.RMSNorm())
    params = block.init(key, x, context)
    assert {"norm_cross", "cross_attention"} <= set(params)
    assert block.apply(params, x, context).shape == x.shape
    with pytest.raises(ValueError, match="cross_attention=True needs a context"):
        block.apply(params, x)


@pytest.mark.parametrize("use_rope", [True, False])
def test_lm_cached_decoding_equals_the_full_forward_pass(key, use_rope):
    lm = jnn.TransformerLM(
        40, num_layers=2, features=16, num_heads=4, max_length=12, use_rope=use_rope
    )
    tokens = jax.random.randint(key, (2, 10), 0, 40)
    params = lm.init(key, tokens)
    full = lm.apply(params, tokens)
    assert full.shape == (2, 10, 40)
    cache = lm.init_cache(params, 2)
    prompt, cache = lm.apply(params, tokens[:, :4], cache=cache)
    steps = [prompt]
    decode = jax.jit(lambda p, t, c: lm.apply(p, t, cache=c))
    for t in range(4, 10):
        logits, cache = decode(params, tokens[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)


def test_lm_ties_embeddings_and_trains(key):
    lm = jnn.TransformerLM(30, num_layers=1, features=16, num_heads=2, dropout_rate=0.1)
    tokens = jax.random.randint(key, (4, 8), 0, 30)
    params = lm.init(key, tokens)
    assert "head" not in params and params["embed"]["embedding"].shape == (30, 16)

    def loss(p):
        logits = lm.apply(p, tokens[:, :-1], key=key, is_training=True)
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    grads = jax.grad(loss)(params)
    chex.assert_trees_all_equal_shapes(grads, params)
    assert float(jnp.abs(grads["embed"]["embedding"]).sum()) > 0
    untied = jnn.TransformerLM(30, 1, 16, 2, tie_embeddings=False).init(key, tokens)
    assert untied["head"]["weight"].shape == (16, 30)


def test_blocks_stack_with_repeat(key, x):
    deep = jnn.Repeat(jnn.TransformerBlock(num_heads=4, mlp_features=32), count=3)
    params = deep.init(key, x)
    assert params["attention"]["query"]["weight"].shape[0] == 3
    assert deep.apply(params, x).shape == x.shape


def test_errors():
    with pytest.raises(ValueError, match="TransformerBlock: num_heads must be a positive int"):
        jnn.TransformerBlock(num_heads=0, mlp_features=8)
