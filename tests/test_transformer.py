"""Transformer blocks and the decoder-only LM: composition, causality, cached decoding,
the batch-axis rule, hyperparameter and input errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from decoding import decode_step_by_step

import jnn
from jnn import DTypeError, ParamsError, ShapeError


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


def test_post_norm_block_equals_its_parts_applied_by_hand(key, x):
    context = jax.random.normal(key, (2, 9, 16))
    block = jnn.TransformerBlock(4, 32, cross_attention=True, norm_first=False)
    params = block.init(key, x, context)
    pre = jnn.TransformerBlock(4, 32, cross_attention=True)
    assert jax.tree.structure(params) == jax.tree.structure(pre.init(key, x, context))
    attention, norm = jnn.MultiHeadAttention(4), jnn.LayerNorm()
    mlp = jnn.MLP([32, 16], activation=jnn.gelu)
    h = norm.apply(params["norm_1"], x + attention.apply(params["attention"], x))
    h = norm.apply(params["norm_cross"], h + attention.apply(params["cross_attention"], h, context))
    expected = norm.apply(params["norm_2"], h + mlp.apply(params["mlp"], h))
    np.testing.assert_allclose(block.apply(params, x, context), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(pre.apply(params, x, context), expected, atol=1e-2)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
def test_context_lengths_hide_the_contexts_padding(key, x, norm_first):
    context = jax.random.normal(key, (2, 9, 8))
    block = jnn.TransformerBlock(2, 32, cross_attention=True, norm_first=norm_first)
    params = block.init(key, x, context)
    lengths = jnp.array([9, 4])
    by_lengths = block.apply(params, x, context, context_lengths=lengths)
    by_mask = block.apply(params, x, context, context_mask=jnn.padding_mask(lengths, 9))
    cut = block.apply(params, x[1:], context[1:, :4])  # the second context without padding
    np.testing.assert_allclose(by_lengths, by_mask, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(by_lengths[1:], cut, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_lengths[:1], block.apply(params, x, context)[:1], atol=1e-6)
    jitted = jax.jit(block.apply)(params, x, context, context_lengths=lengths)
    np.testing.assert_allclose(jitted, by_lengths, rtol=1e-5, atol=1e-5)
    one = jax.vmap(lambda a, c, n: block.apply(params, a, c, context_lengths=n))(
        x, context, lengths
    )
    np.testing.assert_allclose(one, by_lengths, rtol=1e-5, atol=1e-5)
    with pytest.raises(ShapeError, match=r"got context_lengths but no context: they mask"):
        jnn.TransformerBlock(2, 32).apply(
            jnn.TransformerBlock(2, 32).init(key, x), x, context_lengths=lengths
        )


def test_post_norm_decoding_with_a_cache_equals_the_full_pass(key, x):
    block = jnn.TransformerBlock(4, 32, causal=True, norm_first=False)
    params = block.init(key, x)
    full = block.apply(params, x)
    cache = block.init_cache(params, 2, 6)
    steps = []
    for t in range(6):
        y, cache = block.apply(params, x[:, t : t + 1], cache=cache)
        steps.append(y)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_post_norm_block_gradients(key):
    x = jax.random.normal(key, (1, 3, 4))
    block = jnn.TransformerBlock(2, 8, causal=True, norm_first=False)
    params = block.init(key, x)
    jax.test_util.check_grads(lambda p, v: block.apply(p, v), (params, x), order=1, modes="rev")


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
    decoded, cache = decode_step_by_step(lm, params, tokens, cache, prompt_length=4)
    np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-4)


def test_lm_ties_embeddings_and_trains(key):
    lm = jnn.TransformerLM(30, num_layers=1, features=16, num_heads=2, dropout_rate=0.1)
    tokens = jax.random.randint(key, (4, 8), 0, 30)
    params = lm.init(key, tokens)
    assert "head" not in params and params["embed"]["embedding"].shape == (30, 16)

    def loss(p):
        logits = lm.apply(p, tokens[:, :-1], key=key, is_training=True)
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    grads = jax.jit(jax.grad(loss))(params)  # eager dispatch of the dropout graph is slow
    chex.assert_trees_all_equal_shapes(grads, params)
    assert float(jnp.abs(grads["embed"]["embedding"]).sum()) > 0
    untied = jnn.TransformerLM(30, 1, 16, 2, tie_embeddings=False).init(key, tokens)
    assert untied["head"]["weight"].shape == (16, 30)


def test_blocks_stack_with_repeat(key, x):
    deep = jnn.Repeat(jnn.TransformerBlock(num_heads=4, mlp_features=32), count=3)
    params = deep.init(key, x)
    assert params["attention"]["query"]["weight"].shape[0] == 3
    assert deep.apply(params, x).shape == x.shape


# --------------------------------------------------------------------------- batch axis

TABLE = r"Hint: a \(batch, features\) table would make examples attend to each other; add a length axis: x\[:, None, :\]\."


def test_block_init_refuses_a_table_and_apply_takes_one_sequence(key, x):
    block = jnn.TransformerBlock(num_heads=4, mlp_features=32, causal=True)
    with pytest.raises(
        ShapeError,
        match=r"TransformerBlock: expected input \[batch, length, features\] of rank 3, got shape \(32, 16\)\. "
        + TABLE,
    ):
        block.init(key, jnp.zeros((32, 16)))
    params = block.init(key, x)
    batched = block.apply(params, x)
    np.testing.assert_allclose(block.apply(params, x[1]), batched[1], rtol=1e-5, atol=1e-5)
    mapped = jax.jit(jax.vmap(lambda v: block.apply(params, v)))(x)
    np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-5)
    with pytest.raises(
        ShapeError,
        match=r"TransformerBlock: expected input \[batch, length, features\] \(or one unbatched \[length, features\]\) of rank 2 or 3, got shape \(1, 2, 6, 16\)",
    ):
        block.apply(params, x[None])


def test_lm_init_needs_a_batch_axis_and_apply_takes_one_sequence(key):
    lm = jnn.TransformerLM(20, num_layers=1, features=8, num_heads=2, max_length=8)
    tokens = jax.random.randint(key, (3, 5), 0, 20)
    with pytest.raises(
        ShapeError,
        match=r"TransformerLM: expected token ids \[batch, length\] of rank 2, got shape \(5,\)\. Hint: add the batch axis: tokens\[None\]\.",
    ):
        lm.init(key, tokens[0])
    params = lm.init(key, tokens)
    batched = lm.apply(params, tokens)
    np.testing.assert_allclose(lm.apply(params, tokens[2]), batched[2], rtol=1e-5, atol=1e-5)
    mapped = jax.vmap(lambda t: lm.apply(params, t))(tokens)
    np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-5)
    with pytest.raises(
        ShapeError,
        match=r"TransformerLM: expected token ids \[batch, length\] \(or one unbatched \[length\]\) of rank 1 or 2, got shape \(3, 5, 1\)",
    ):
        lm.apply(params, tokens[..., None])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_heads=0), ValueError, r"num_heads must be a positive int, got 0"),
        (dict(mlp_features=-1), ValueError, r"mlp_features must be a positive int, got -1"),
        (dict(num_kv_heads=0), ValueError, r"num_kv_heads must be a positive int, got 0"),
        (
            dict(num_kv_heads=3),
            ValueError,
            r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)",
        ),
        (dict(dropout_rate=1.5), ValueError, r"dropout_rate must be in \[0, 1\], got 1.5"),
        (dict(num_heads=2.0), TypeError, r"num_heads must be an int, got 2.0"),
        (dict(norm=jnn.LayerNorm), TypeError, r"norm must be a Module.*create the layer"),
    ],
)
def test_block_hyperparameter_errors(kwargs, error, message):
    with pytest.raises(error, match=r"TransformerBlock: " + message):
        jnn.TransformerBlock(**{"num_heads": 4, "mlp_features": 8, **kwargs})


def test_block_input_errors(key, x):
    with pytest.raises(
        ShapeError,
        match=r"TransformerBlock: expected input features divisible by num_heads 3, got shape \(2, 6, 16\)",
    ):
        jnn.TransformerBlock(num_heads=3, mlp_features=8).init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"TransformerBlock: use_rope needs an even head size features / num_heads, got 12 / 4 = 3",
    ):
        jnn.TransformerBlock(num_heads=4, mlp_features=8, use_rope=True).init(key, x[..., :12])
    block = jnn.TransformerBlock(num_heads=4, mlp_features=8)
    params = block.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"TransformerBlock: got a context of shape \(2, 3, 16\), but cross_attention is False\. Hint: build the block with cross_attention=True\.",
    ):
        block.apply(params, x, x[:, :3])
    with pytest.raises(ShapeError, match=r"TransformerBlock: cross_attention=True needs a context"):
        jnn.TransformerBlock(4, 8, cross_attention=True).init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"TransformerBlock: the mlp must map features to features: it gave shape \(2, 6, 4\) for input shape \(2, 6, 16\)",
    ):
        jnn.TransformerBlock(4, 8, mlp=jnn.Dense(4)).init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"LayerNorm at 'norm_1': expected input with last dimension 16 \(set at init\), got shape \(2, 6, 8\)",
    ):
        block.apply(params, x[..., :8])
    with pytest.raises(
        ParamsError, match=r"TransformerBlock: init_cache needs this block's params"
    ):
        block.init_cache(params["mlp"], 2, 8)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(num_layers=-1), ValueError, r"num_layers must be a positive int, got -1"),
        (dict(num_layers=0), ValueError, r"num_layers must be a positive int, got 0"),
        (dict(vocab_size=0), ValueError, r"vocab_size must be a positive int, got 0"),
        (dict(features=0), ValueError, r"features must be a positive int, got 0"),
        (dict(num_heads=-2), ValueError, r"num_heads must be a positive int, got -2"),
        (dict(max_length=0), ValueError, r"max_length must be a positive int, got 0"),
        (dict(mlp_features=0), ValueError, r"mlp_features must be a positive int, got 0"),
        (dict(dropout_rate=-0.1), ValueError, r"dropout_rate must be in \[0, 1\], got -0.1"),
        (
            dict(num_heads=3),
            ValueError,
            r"features \(8\) must be divisible by num_heads \(3\)",
        ),
        (
            dict(num_heads=8),
            ValueError,
            r"use_rope needs an even head size features / num_heads, got 8 / 8 = 1",
        ),
        (dict(max_length=None), TypeError, r"max_length must be an int, got None"),
    ],
)
def test_lm_hyperparameter_errors(kwargs, error, message):
    with pytest.raises(error, match=r"TransformerLM: " + message):
        jnn.TransformerLM(
            **{"vocab_size": 10, "num_layers": 1, "features": 8, "num_heads": 2, **kwargs}
        )


def test_lm_hyperparameters_accept_numpy_ints_and_odd_heads_without_rope():
    lm = jnn.TransformerLM(np.int64(10), np.int32(1), features=8, num_heads=8, use_rope=False)
    assert lm.vocab_size == 10 and lm.num_layers == 1


def test_lm_input_and_cache_errors(key):
    lm = jnn.TransformerLM(20, num_layers=2, features=8, num_heads=2, max_length=8)
    tokens = jnp.zeros((2, 4), jnp.int32)
    params = lm.init(key, tokens)
    with pytest.raises(DTypeError, match=r"Embedding at 'embed': expected integer ids"):
        lm.apply(params, tokens.astype(jnp.float32))
    with pytest.raises(
        ValueError, match=r"Embedding: expected ids in \[0, 20\) .* got 25 at index \(1, 2\)"
    ):
        lm.apply(params, tokens.at[1, 2].set(25))
    cache = lm.init_cache(params, 2)
    assert sorted(cache) == ["block_0", "block_1"]
    hint = r"Hint: make it with model.init_cache\(params, batch_size\)\."
    with pytest.raises(
        ShapeError,
        match=r"TransformerLM: expected a cache with one entry per block \['block_0', 'block_1'\], got \['block_0'\]\. "
        + hint,
    ):
        lm.apply(params, tokens, cache={"block_0": cache["block_0"]})
    with pytest.raises(
        ShapeError, match=r"one entry per block .*, got \['index', 'key', 'value'\]"
    ):
        lm.apply(params, tokens, cache=cache["block_0"])
    with pytest.raises(
        ShapeError,
        match=r"MultiHeadAttention at 'block_0/attention': expected cache key and value of shape \(1, 'max_length', 2, 4\)",
    ):
        lm.apply(params, tokens[:1], cache=cache)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: init_cache needs this model's params \(or their shapes\); missing \['block_0', 'block_1'\]",
    ):
        lm.init_cache(params["embed"], 2)
    with pytest.raises(
        ValueError, match=r"TransformerLM: batch_size must be a positive int, got 0"
    ):
        lm.init_cache(params, 0)


@pytest.mark.parametrize("use_rope", [True, False], ids=["rope", "learned"])
def test_lm_decoding_past_max_length_raises_eagerly_and_under_jit(key, use_rope):
    lm = jnn.TransformerLM(20, 1, features=8, num_heads=2, max_length=4, use_rope=use_rope)
    params = lm.init(key, jnp.zeros((1, 4), jnp.int32))
    token = jnp.zeros((1, 1), jnp.int32)
    cache = lm.init_cache(params, 1)
    _, full = lm.apply(params, jnp.zeros((1, 4), jnp.int32), cache=cache)
    if use_rope:  # the cache is the limit
        eager = r"MultiHeadAttention at 'block_0/attention': cache overflow: 1 new positions at index 4 do not fit in the cache's max_length 4"
        traced = r"MultiHeadAttention: cache overflow: 1 new positions at index 4 do not fit in the cache's max_length 4"
    else:  # the position table comes first
        eager = r"LearnedPositions at 'positions': offset 4 plus input length 1 = 5 exceeds max_length 4"
        # Both checks fail at run time; whichever runs first reports.
        traced = r"LearnedPositions: offset 4 plus input length 1 = 5 exceeds max_length 4|MultiHeadAttention: cache overflow: 1 new positions at index 4"
    with pytest.raises(ShapeError, match=eager):
        lm.apply(params, token, cache=full)
    decode = jax.jit(lambda c, t: lm.apply(params, t, cache=c))
    with pytest.raises(jax.errors.JaxRuntimeError, match=traced):
        jax.block_until_ready(decode(full, token))
