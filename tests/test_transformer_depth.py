"""TransformerLM's depth options: blocks stacked in one scan (scan_blocks), remat per
block with jax.checkpoint policies, the params conversion between the two layouts, the
stacked KV cache, and a trace whose size does not grow with depth."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from decoding import decode_step_by_step

import jnn
from jnn import ParamsError, ShapeError

POLICY = jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def make(num_layers=3, **kwargs):
    return jnn.TransformerLM(30, num_layers, features=16, num_heads=4, max_length=12, **kwargs)


@pytest.fixture
def tokens(key):
    return jax.random.randint(key, (2, 10), 0, 30)


def primitives(jaxpr, name: str) -> int:
    """How many equations of ``jaxpr``, nested ones included, run primitive ``name``."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += primitives(sub, name)
    return count


def test_scanned_params_are_the_unrolled_blocks_stacked(key, tokens):
    unrolled, scanned = make(), make(scan_blocks=True)
    params = unrolled.init(key, tokens)
    stacked_params = scanned.init(key, tokens)
    assert list(stacked_params) == ["embed", "blocks", "norm"]
    weight = stacked_params["blocks"]["attention"]["query"]["weight"]
    assert weight.shape == (3, 16, 4, 4)
    converted = unrolled.stack_blocks(params)
    assert list(converted) == ["embed", "blocks", "norm"]
    chex.assert_trees_all_equal_shapes(converted, stacked_params)
    chex.assert_trees_all_equal(
        converted["blocks"]["mlp"]["dense_0"]["weight"][1],
        params["block_1"]["mlp"]["dense_0"]["weight"],
    )
    back = scanned.unstack_blocks(converted)
    assert list(back) == list(params)
    chex.assert_trees_all_equal(back, params)
    # The copies of a scan are initialised independently, like the unrolled blocks.
    first, second = weight[0], weight[1]
    assert not np.allclose(first, second)


# Each position encoding and each remat choice at least once (all six pairs cost the
# suite half a minute more on 2 cores and cover nothing new).
@pytest.mark.parametrize(
    "use_rope, remat",
    [(True, False), (False, True), (True, POLICY)],
    ids=["rope-plain", "learned-remat", "rope-policy"],
)
def test_scanned_equals_unrolled_in_values_and_gradients(key, tokens, use_rope, remat):
    unrolled = make(use_rope=use_rope, remat=remat)
    scanned = make(use_rope=use_rope, remat=remat, scan_blocks=True)
    params = make(use_rope=use_rope).init(key, tokens)
    stacked = unrolled.stack_blocks(params)

    def loss(params, lm):
        logits = lm.apply(params, tokens[:, :-1])
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    # Everything under jit: eager op-by-op dispatch of three blocks costs seconds per call.
    forward = jax.jit(lambda p, lm: lm.apply(p, tokens), static_argnums=1)
    gradient = jax.jit(jax.grad(loss), static_argnums=1)
    reference = forward(params, make(use_rope=use_rope))
    np.testing.assert_allclose(forward(params, unrolled), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(forward(stacked, scanned), reference, rtol=1e-5, atol=1e-5)
    grads = gradient(params, make(use_rope=use_rope))
    chex.assert_trees_all_close(gradient(params, unrolled), grads, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(
        gradient(stacked, scanned), unrolled.stack_blocks(grads), rtol=1e-5, atol=1e-6
    )


def test_remat_wraps_each_block_in_a_checkpoint(key, tokens):
    for kwargs, expected in [
        (dict(), 0),
        (dict(remat=True), 3),
        (dict(remat=POLICY), 3),
        (dict(scan_blocks=True, remat=True), 1),  # one body, scanned
        (dict(scan_blocks=True), 0),
    ]:
        lm = make(**kwargs)
        params = lm.init(key, tokens)
        jaxpr = jax.make_jaxpr(lambda p, lm=lm: lm.apply(p, tokens))(params)
        assert primitives(jaxpr.jaxpr, "remat2") == expected, kwargs


def test_scanned_trace_does_not_grow_with_depth(tokens):
    def size(lm):
        shapes = jax.eval_shape(lm.init, jax.random.key(0), tokens)
        return len(jax.make_jaxpr(lambda p: lm.apply(p, tokens))(shapes).eqns)

    assert size(make(2, scan_blocks=True)) == size(make(8, scan_blocks=True))
    assert size(make(8)) > 3 * size(make(2)) / 2  # unrolled: every block traced


def test_remat_policy_in_repeat(key):
    block = jnn.Residual([jnn.Dense(8), jnn.tanh, jnn.Dense(8)])
    x = jax.random.normal(key, (4, 8))
    plain = jnn.Repeat(block, count=3)
    params = plain.init(key, x)
    grads = jax.grad(lambda p: plain.apply(p, x).sum())(params)
    for remat in (True, POLICY, jax.checkpoint_policies.nothing_saveable):
        deep = jnn.Repeat(block, count=3, remat=remat)
        chex.assert_trees_all_close(
            jax.grad(lambda p, deep=deep: deep.apply(p, x).sum())(params), grads, atol=1e-6
        )
    with pytest.raises(TypeError, match=r"Repeat: remat must be a bool or a jax.checkpoint policy"):
        jnn.Repeat(block, count=3, remat="full")


@pytest.mark.parametrize("use_rope", [True, False], ids=["rope", "learned"])
def test_scanned_cached_decoding_equals_the_full_forward_pass(key, tokens, use_rope):
    lm = make(use_rope=use_rope, scan_blocks=True)
    params = lm.init(key, tokens)
    full = lm.apply(params, tokens)
    cache = lm.init_cache(params, 2)
    assert cache["blocks"]["key"].shape == (3, 2, 12, 4, 4)
    assert cache["blocks"]["index"].shape == (3,)
    decoded, cache = decode_step_by_step(lm, params, tokens, cache, prompt_length=4)
    np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-4)
    assert cache["blocks"]["index"].tolist() == [10, 10, 10]
    # One unbatched sequence, as with the unrolled model, decoded and not.
    one = lm.init_cache(params, None)
    logits, _ = lm.apply(params, tokens[0, :5], cache=one)
    np.testing.assert_allclose(logits, full[0, :5], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lm.apply(params, tokens[1]), full[1], rtol=1e-5, atol=1e-5)
    remat = make(use_rope=use_rope, remat=True)
    unrolled = remat.unstack_blocks(params)
    np.testing.assert_allclose(remat.apply(unrolled, tokens[1]), full[1], rtol=1e-5, atol=1e-5)


def test_scanned_decoding_past_max_length_raises_eagerly_and_under_jit(key):
    lm = jnn.TransformerLM(20, 2, features=8, num_heads=2, max_length=4, scan_blocks=True)
    params = lm.init(key, jnp.zeros((1, 4), jnp.int32))
    token = jnp.zeros((1, 1), jnp.int32)
    _, full = lm.apply(params, jnp.zeros((1, 4), jnp.int32), cache=lm.init_cache(params, 1))
    with pytest.raises(
        ShapeError,
        match=r"TransformerLM: cache overflow: 1 new positions at index 4 do not fit in the cache's max_length 4\. Hint: make a longer cache\.",
    ):
        lm.apply(params, token, cache=full)
    decode = jax.jit(lambda c, t: lm.apply(params, t, cache=c))
    with pytest.raises(
        jax.errors.JaxRuntimeError,
        match=r"MultiHeadAttention: cache overflow: 1 new positions at index 4",
    ):
        jax.block_until_ready(decode(full, token))


def test_layout_errors(key, tokens):
    unrolled, scanned = make(), make(scan_blocks=True)
    params = unrolled.init(key, tokens)
    stacked = unrolled.stack_blocks(params)
    hint = r"Hint: make it with model.init_cache\(params, batch_size\)\."
    with pytest.raises(
        ShapeError,
        match=r"TransformerLM: expected a cache with one entry per block \['blocks'\], got \['block_0', 'block_1', 'block_2'\]\. "
        + hint,
    ):
        scanned.apply(stacked, tokens, cache=unrolled.init_cache(params, 2))
    cache = scanned.init_cache(stacked, 2)
    short = {"blocks": jax.tree.map(lambda a: a[:2], cache["blocks"])}
    with pytest.raises(
        ShapeError,
        match=r"TransformerLM: expected a cache stacked over the 3 blocks \(a leading axis of 3 on every leaf\), got leading shapes \[\(2,\)\]\. "
        + hint,
    ):
        scanned.apply(stacked, tokens, cache=short)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: init_cache needs this model's params \(or their shapes\); missing \['blocks'\]",
    ):
        scanned.init_cache(params, 2)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: expected unrolled params with \['block_0', 'block_1', 'block_2'\], got \['blocks', 'embed', 'norm'\]",
    ):
        scanned.stack_blocks(stacked)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: expected stacked params with \['blocks'\], got \['block_0'",
    ):
        scanned.unstack_blocks(params)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: expected every leaf of params\['blocks'\] to have a leading axis of 4 \(one per block\), got leading shapes \[\(3,\)\]",
    ):
        make(4).unstack_blocks(stacked)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: got params with 'block_0' for scan_blocks=True, which expects 'blocks'\. Hint: convert them with model\.stack_blocks\(params\)\.",
    ):
        scanned.apply(params, tokens)
    with pytest.raises(
        ParamsError,
        match=r"TransformerLM: got params with 'blocks' for scan_blocks=False, which expects 'block_0'\. Hint: convert them with model\.unstack_blocks\(params\)\.",
    ):
        unrolled.apply(stacked, tokens)
    with pytest.raises(
        TypeError, match=r"TransformerLM: remat must be a bool or a jax.checkpoint policy"
    ):
        make(remat="dots")


@pytest.mark.parametrize("scan_blocks", [False, True], ids=["unrolled", "scanned"])
def test_remat_keeps_the_dropout_masks(key, tokens, scan_blocks):
    """Each block gets the same key with and without remat, so training matches."""
    plain = make(dropout_rate=0.3, scan_blocks=scan_blocks)
    remat = make(dropout_rate=0.3, scan_blocks=scan_blocks, remat=True)
    params = plain.init(key, tokens)

    def loss(params, lm):
        logits = lm.apply(params, tokens, key=jax.random.key(7), is_training=True)
        return jnp.sum(jnp.sin(logits))

    assert not np.allclose(
        plain.apply(params, tokens, key=key, is_training=True), plain.apply(params, tokens)
    )
    gradient = jax.jit(jax.grad(loss), static_argnums=1)
    chex.assert_trees_all_close(
        gradient(params, remat), gradient(params, plain), rtol=1e-4, atol=2e-5
    )
