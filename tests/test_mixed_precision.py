"""Mixed precision: Policy, MixedPrecision and dynamic loss scaling in the train step."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from example_scripts import load

import jnn

BF16 = jnp.dtype(jnp.bfloat16)


def equations(jaxpr):
    """Every equation of ``jaxpr``, those of nested jaxprs (scan, remat, jit) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from equations(sub)


def product_dtypes(fn, params, *static):
    """The input dtypes of every matrix product and convolution ``fn(params, *static)`` runs."""
    jaxpr = jax.make_jaxpr(lambda p: fn(p, *static))(params).jaxpr
    names = ("dot_general", "conv_general_dilated")
    return {
        (eqn.primitive.name, str(v.aval.dtype))
        for eqn in equations(jaxpr)
        if eqn.primitive.name in names
        for v in eqn.invars
    }


# --------------------------------------------------------------------------- Policy


def test_policy_defaults_names_and_value_semantics():
    policy = jnn.Policy(compute_dtype="bfloat16")
    assert policy.compute_dtype == BF16
    assert policy.param_dtype == policy.output_dtype == jnp.float32
    assert policy == jnn.Policy(compute_dtype=jnp.bfloat16)
    assert hash(policy) == hash(jnn.Policy(compute_dtype=jnp.bfloat16))
    assert repr(policy) == (
        "Policy(compute_dtype=bfloat16, param_dtype=float32, output_dtype=float32)"
    )


@pytest.mark.parametrize("bad", ["int32", jnp.bool_, "fp8", None, 3])
def test_policy_refuses_what_is_not_a_floating_dtype(bad):
    with pytest.raises(TypeError, match=r"Policy: compute_dtype must be a floating-point dtype"):
        jnn.Policy(compute_dtype=bad)


def test_policy_casts_only_floating_arrays():
    policy = jnn.Policy(compute_dtype=jnp.float16)
    tree = {
        "w": jnp.ones(2),
        "x": np.ones(2, np.float64),
        "ids": jnp.arange(2),
        "mask": jnp.ones(2, bool),
        "key": jax.random.key(0),
        "n": 3.0,
    }
    out = policy.cast_to_compute(tree)
    assert out["w"].dtype == out["x"].dtype == jnp.float16
    assert out["ids"].dtype == jnp.int32 and out["mask"].dtype == jnp.bool_
    assert out["key"] is tree["key"] and out["n"] == 3.0
    assert policy.cast_to_output(out)["w"].dtype == jnp.float32


# --------------------------------------------------------------------------- MixedPrecision


def test_wrapper_keeps_float32_params_and_the_model_params_tree(key):
    x = jnp.ones((4, 8))
    plain = jnn.MLP([16, 3])
    mixed = jnn.MixedPrecision(plain, jnp.bfloat16)
    params = mixed.init(key, x)
    chex.assert_trees_all_equal(params, plain.init(key, x))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    half = jnn.MixedPrecision(plain, jnn.Policy(jnp.bfloat16, param_dtype=jnp.bfloat16))
    assert all(leaf.dtype == BF16 for leaf in jax.tree.leaves(half.init(key, x)))
    assert repr(mixed).startswith("MixedPrecision(model=MLP(features=(16, 3)), policy=Policy(")


def small_cnn():
    layers = [jnn.Conv(4, (3, 3)), jnn.BatchNorm(), jnn.relu, jnn.MaxPool((2, 2))]
    return jnn.Sequential([*layers, jnn.Flatten(), jnn.Dense(10)])


@pytest.mark.parametrize(
    "plain, shape", [(jnn.MLP([16, 10]), (2, 64)), (small_cnn(), (2, 8, 8, 1))], ids=["mlp", "cnn"]
)
def test_mlp_and_cnn_compute_in_bfloat16_and_return_float32(key, plain, shape):
    x = jnp.ones(shape)
    mixed = jnn.MixedPrecision(plain, jnp.bfloat16)
    params, state = mixed.init_with_state(key, x)

    def run(p, model):
        if state:
            return model.apply(p, x, state=state, is_training=True)[0]
        return model.apply(p, x)

    assert {dtype for _, dtype in product_dtypes(run, params, mixed)} == {"bfloat16"}
    assert {dtype for _, dtype in product_dtypes(run, params, plain)} == {"float32"}
    out = jax.jit(run, static_argnums=1)(params, mixed)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, run(params, plain), rtol=5e-2, atol=5e-2)


def test_batch_norm_state_stays_float32_and_its_statistics_are_float32(key):
    mixed = jnn.MixedPrecision(jnn.BatchNorm(), jnp.bfloat16)
    # Deviations of 1/256 around 300: bfloat16 cannot even hold the inputs apart, so the
    # layer sees them rounded; what matters is that the statistics are not computed in
    # bfloat16 (a bfloat16 mean of 300s is off by up to 1).
    x = jnp.full((64, 3), 300.0) + jnp.arange(64.0)[:, None] / 8
    params, state = mixed.init_with_state(key, x)
    _, new = mixed.apply(params, x, state=state, is_training=True)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new))
    rounded = np.asarray(x.astype(jnp.bfloat16), np.float64)
    momentum = mixed.model.momentum
    expected_mean = momentum * 0.0 + (1 - momentum) * rounded.mean(0)
    np.testing.assert_allclose(new["mean"], expected_mean, rtol=1e-6)


def test_transformer_lm_computes_in_bfloat16_softmax_and_loss_in_float32(key):
    tokens = jax.random.randint(key, (2, 12), 0, 40)
    lm = jnn.TransformerLM(40, 2, features=32, num_heads=4, max_length=12)
    mixed = jnn.MixedPrecision(lm, "bfloat16")
    params = mixed.init(key, tokens)
    dtypes = product_dtypes(lambda p: mixed.apply(p, tokens), params)
    assert {dtype for _, dtype in dtypes} == {"bfloat16"}
    jaxpr = jax.make_jaxpr(lambda p: mixed.apply(p, tokens))(params).jaxpr
    # The attention logits accumulate in float32 and the softmax's exp runs in float32.
    logits = [
        eqn
        for eqn in equations(jaxpr)
        if eqn.primitive.name == "dot_general" and eqn.outvars[0].aval.ndim == 4
    ]
    assert {str(eqn.outvars[0].aval.dtype) for eqn in logits} >= {"float32"}
    exps = {
        str(eqn.outvars[0].aval.dtype) for eqn in equations(jaxpr) if eqn.primitive.name == "exp"
    }
    assert exps == {"float32"}
    out = mixed.apply(params, tokens)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, lm.apply(params, tokens), rtol=0.1, atol=0.1)
    loss = jnn.softmax_cross_entropy_with_integer_labels(out.astype(jnp.bfloat16), tokens)
    assert loss.dtype == jnp.float32


def test_lstm_and_embedding_under_the_policy(key):
    ids = jnp.array([[1, 2, 3, 0]])
    model = jnn.Sequential([jnn.Embedding(5, 8), jnn.RNN(jnn.LSTMCell(6)), jnn.Dense(2)])
    mixed = jnn.MixedPrecision(model, jnp.bfloat16)
    params = mixed.init(key, ids)
    dtypes = product_dtypes(lambda p: mixed.apply(p, ids), params)
    assert {dtype for _, dtype in dtypes} == {"bfloat16"}
    out = jax.jit(mixed.apply)(params, ids)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, model.apply(params, ids), rtol=5e-2, atol=5e-2)


def test_gradients_are_float32_and_close_to_float32_training(key):
    x = jax.random.normal(key, (16, 8))
    y = jnp.arange(16) % 3
    plain = jnn.MLP([32, 3])
    mixed = jnn.MixedPrecision(plain, jnp.bfloat16)
    params = plain.init(key, x)

    def loss(p, model):
        return jnn.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y)

    grads = jax.jit(jax.grad(loss), static_argnums=1)(params, mixed)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    reference = jax.grad(loss)(params, plain)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference), strict=True):
        assert np.linalg.norm(g - r) <= 0.05 * np.linalg.norm(r) + 1e-3


def test_wrapper_works_under_vmap_and_reaches_the_model_methods(key):
    tokens = jnp.zeros((1, 6), jnp.int32)
    mixed = jnn.MixedPrecision(jnn.TransformerLM(20, 1, features=16, num_heads=2, max_length=8))
    params = mixed.init(key, tokens)
    cache = mixed.init_cache(params, 1)  # TransformerLM's own method, through the wrapper
    step = jax.jit(lambda c, t: mixed.apply(params, t, cache=c))
    logits, cache = step(cache, tokens)
    assert logits.dtype == jnp.float32 and cache["block_0"]["key"].dtype == jnp.float32
    logits, cache = step(cache, tokens[:, :1])
    assert int(cache["block_0"]["index"]) == 7
    many = jax.vmap(lambda t: mixed.apply(params, t))(jnp.zeros((3, 2, 6), jnp.int32))
    assert many.shape == (3, 2, 6, 20) and many.dtype == jnp.float32
    with pytest.raises(AttributeError, match=r"nor has its model TransformerLM"):
        mixed.no_such_method  # noqa: B018


def test_wrapper_errors_name_the_wrapper_or_the_model(key):
    with pytest.raises(TypeError, match=r"MixedPrecision: model must be a Module, got"):
        jnn.MixedPrecision(lambda x: x)
    with pytest.raises(TypeError, match=r"Policy: compute_dtype must be a floating-point"):
        jnn.Policy(compute_dtype="int8")
    with pytest.raises(
        TypeError,
        match=r"MixedPrecision: policy must be a jnn.Policy or a floating-point compute dtype .*, got int8\.$",
    ):
        jnn.MixedPrecision(jnn.Dense(2), "int8")
    mixed = jnn.MixedPrecision(jnn.Dense(2))
    params = mixed.init(key, jnp.ones((1, 3)))
    with pytest.raises(jnn.ShapeError, match=r"Dense: expected input with last dimension 3"):
        mixed.apply(params, jnp.ones((1, 4)))


# --------------------------------------------------------------------------- loss scaling


def test_dynamic_loss_scale_adjusts_and_is_an_immutable_pytree():
    scale = jnn.DynamicLossScale(8.0, period=2, factor=4.0, min_scale=2.0)
    assert float(scale.scale) == 8.0 and int(scale.good_steps) == 0
    scale = scale.adjust(True)
    assert (float(scale.scale), int(scale.good_steps)) == (8.0, 1)
    scale = scale.adjust(True)
    assert (float(scale.scale), int(scale.good_steps)) == (32.0, 0)
    scale = scale.adjust(jnp.asarray(False))
    assert (float(scale.scale), int(scale.good_steps)) == (8.0, 0)
    assert float(scale.adjust(False).adjust(False).scale) == 2.0  # min_scale
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(scale)]
    assert paths == [".scale", ".good_steps"]
    jitted = jax.jit(lambda s: s.adjust(False))(scale)
    assert isinstance(jitted, jnn.DynamicLossScale) and jitted.period == 2
    with pytest.raises(AttributeError, match="immutable"):
        scale.scale = 1.0
    grads = scale.unscale({"w": jnp.full(2, 16.0, jnp.float32), "h": jnp.ones(1, jnp.bfloat16)})
    assert grads["w"].tolist() == [2.0, 2.0] and grads["h"].dtype == BF16
    # Doubling past float32's range would make every loss infinite: it stops short.
    huge = jnn.DynamicLossScale(2.0**127, period=1)
    assert float(huge.adjust(True).scale) == 2.0**127


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(initial_scale=0.0), r"DynamicLossScale: expected initial_scale in \(0"),
        (dict(factor=1.0), r"DynamicLossScale: expected factor in \(1"),
        (dict(period=0), r"DynamicLossScale: period must be a positive int"),
        (dict(period=2.0), r"DynamicLossScale: period must be an int"),
    ],
)
def test_dynamic_loss_scale_refuses_bad_settings(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        jnn.DynamicLossScale(**kwargs)


def test_train_state_refuses_what_is_not_a_loss_scale(key):
    with pytest.raises(TypeError, match=r"loss_scale must be a jnn.DynamicLossScale or None"):
        jnn.init_train_state(jnn.Dense(2), optax.sgd(0.1), key, jnp.ones((1, 3)), loss_scale=2.0)


def test_overflowing_step_is_skipped_and_halves_the_scale(key):
    model = jnn.Dense(2)
    x, y = jnp.ones((4, 3)), jnp.full((4, 2), 100.0)
    optimizer = optax.adam(0.1)
    scale = jnn.DynamicLossScale(2.0**127)  # the scaled loss and gradients overflow float32
    state = jnn.init_train_state(model, optimizer, key, x, loss_scale=scale)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    loss = jnn.mean_squared_error
    step = jnn.make_train_step(model, loss, optimizer, donate=False)
    state, logs = step(state, (x, y))
    chex.assert_trees_all_equal((state.params, state.opt_state), before)
    assert float(state.loss_scale.scale) == 2.0**126 and int(state.step) == 1
    assert np.isfinite(logs["loss"])  # the unscaled loss
    for _ in range(30):  # halving until the gradients fit, then training resumes
        state, logs = step(state, (x, y))
    assert float(state.loss_scale.scale) < 2.0**126 and int(state.loss_scale.good_steps) > 0
    assert not np.allclose(state.params["weight"], before[0]["weight"])
    # With a scale that fits, a step equals the unscaled step.
    fresh = jnn.init_train_state(model, optimizer, key, x)
    scaled = jnn.init_train_state(model, optimizer, key, x, loss_scale=jnn.DynamicLossScale(64.0))
    a, _ = step(fresh, (x, y))
    b, _ = step(scaled, (x, y))
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6)


def test_float16_training_needs_the_loss_scale_and_fit_carries_it(key):
    """Gradients below float16's smallest number vanish without scaling, not with it."""
    x = jnp.full((8, 4), 1e-3)
    y = jnp.zeros((8, 1))
    model = jnn.MixedPrecision(jnn.Dense(1, use_bias=False), jnp.float16)

    def loss(out, target):
        return 1e-4 * jnn.mean_squared_error(out, target)

    optimizer = optax.sgd(1e6)  # the true gradients are about 1e-10
    results = {}
    for name, scale in [("plain", None), ("scaled", jnn.DynamicLossScale(2.0**15, period=2))]:
        state = jnn.init_train_state(model, optimizer, key, x, loss_scale=scale)
        result = jnn.fit(model, state, loss, optimizer, (x, y), epochs=2, batch_size=8,
                         progress=False)  # fmt: skip
        results[name] = (state, result.train_state)
    start, plain = results["plain"]
    chex.assert_trees_all_equal(plain.params, start.params)  # every gradient underflowed
    start, scaled = results["scaled"]
    assert not np.allclose(scaled.params["weight"], start.params["weight"])
    assert int(scaled.loss_scale.good_steps) == 0 and float(scaled.loss_scale.scale) == 2.0**16


def test_a_loss_scaled_train_state_round_trips_a_checkpoint(key, tmp_path):
    state = jnn.init_train_state(
        jnn.Dense(2), optax.adam(1e-3), key, jnp.ones((1, 3)), loss_scale=jnn.DynamicLossScale()
    )
    jnn.save_checkpoint(tmp_path / "ckpt", state)
    loaded = jnn.load_checkpoint(tmp_path / "ckpt", state)
    assert isinstance(loaded.loss_scale, jnn.DynamicLossScale)
    chex.assert_trees_all_equal(loaded, state)


# --------------------------------------------------------------------------- convergence


@pytest.mark.slow
def test_digits_mlp_reaches_its_target_in_bfloat16(empty_cwd):
    result = load("mlp_digits").main(["--precision", "bfloat16", "--epochs", "10"])
    assert result["test_accuracy"] >= 0.95


@pytest.mark.slow
def test_character_transformer_beats_bigram_counts_in_bfloat16(empty_cwd):
    """The example's own target (held-out bits per character under bigram counts'),
    at a size that trains in a minute on two cores."""
    args = ["--precision", "bfloat16", "--steps", "300", "--features", "64", "--context", "32"]
    result = load("char_transformer").main([*args, "--batch-size", "16", "--sample-length", "20"])
    assert result["test_bits"] < result["bigram_bits"]


def test_cudnn_attention_inits_in_float32_and_runs_under_a_bfloat16_policy(key, monkeypatch):
    """cuDNN's kernel takes only float16/bfloat16: init (a shape trace) must not reach it
    with float32, apply in float32 is refused by name, and under the policy it gets bf16."""
    tokens = jnp.zeros((2, 8), jnp.int32)
    lm = jnn.TransformerLM(20, 1, features=16, num_heads=2, max_length=8, implementation="cudnn")
    params = lm.init(key, tokens)  # no cuDNN involved, whatever the backend
    with pytest.raises(jnn.DTypeError, match=r"MultiHeadAttention at 'block_0/attention': "
                       r"implementation='cudnn' .* float16 or bfloat16, got float32"):  # fmt: skip
        lm.apply(params, tokens)
    calls = []
    real = jax.nn.dot_product_attention

    def recording(q, k, v, *args, implementation=None, **kwargs):
        calls.append((q.dtype, implementation))
        return real(q, k, v, *args, implementation=None, **kwargs)  # cuDNN needs a GPU

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    out = jnn.MixedPrecision(lm, jnp.bfloat16).apply(params, tokens)
    assert out.dtype == jnp.float32
    assert calls and set(calls) == {(BF16, "cudnn")}


def test_a_flax_style_dtype_argument_points_to_the_policy():
    with pytest.raises(TypeError, match=r"Dense\(.*unexpected keyword argument 'dtype'\. Hint: "
                       r"jnn layers take no computation dtype; .*jnn.MixedPrecision\(model, "
                       r"jnp.bfloat16\), and set the params' dtype with param_dtype\."):  # fmt: skip
        jnn.Dense(3, dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match=r"MixedPrecision\(model, jnp.bfloat16\)\.$"):
        jnn.MLP([3], dtype=jnp.bfloat16)


@pytest.mark.parametrize(
    "kwargs",
    [dict(scan_blocks=True, remat=True), dict(remat=jax.checkpoint_policies.dots_saveable)],
    ids=["scanned-remat", "unrolled-policy"],
)
def test_scanned_and_rematerialised_lm_under_the_policy(key, kwargs):
    """Repeat's init check meets float32 params and bfloat16 activations: the promotion
    the policy removes at apply is allowed there, and apply still checks the real dtypes."""
    tokens = jax.random.randint(key, (2, 10), 0, 30)
    lm = jnn.TransformerLM(30, 2, features=16, num_heads=2, max_length=10, **kwargs)
    mixed = jnn.MixedPrecision(lm, jnp.bfloat16)
    params = mixed.init(key, tokens)

    def loss(p):
        logits = mixed.apply(p, tokens[:, :-1])
        return jnn.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    assert {dtype for _, dtype in product_dtypes(loss, params)} == {"bfloat16"}
    grads = jax.jit(jax.grad(loss))(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    cache = mixed.init_cache(params, 2)
    logits, _ = jax.jit(lambda p, c: mixed.apply(p, tokens[:, :4], cache=c))(params, cache)
    full = jax.jit(mixed.apply)(params, tokens)
    np.testing.assert_allclose(logits, full[:, :4], rtol=0.1, atol=0.1)


def test_repeat_still_refuses_a_block_that_changes_the_dtype_at_apply(key):
    deep = jnn.Repeat(jnn.Dense(4), count=2)
    params = deep.init(key, jnp.ones((1, 4), jnp.bfloat16))  # float32 params: allowed here
    with pytest.raises(jnn.ShapeError, match=r"block must return its input's shape and dtype "
                       r"\(1, 4\) bfloat16, got \(1, 4\) float32"):  # fmt: skip
        deep.apply(params, jnp.ones((1, 4), jnp.bfloat16))
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    assert deep.apply(half, jnp.ones((1, 4), jnp.bfloat16)).dtype == jnp.bfloat16


def test_population_and_mesh_fit_carry_the_loss_scale(key, two_class_data):
    """A population's loss scales are one per member, and fit on a mesh keeps the
    scale's layout like the rest of the state."""
    x, y = two_class_data
    model = jnn.MixedPrecision(jnn.MLP([8, 2]), jnp.float16)
    optimizer = optax.adam(1e-2)
    loss = jnn.softmax_cross_entropy_with_integer_labels

    def make(k):
        scale = jnn.DynamicLossScale(2.0**10, period=3)
        return jnn.init_train_state(model, optimizer, k, x[:1], loss_scale=scale)

    population = jax.vmap(make)(jax.random.split(key, 3))
    result = jnn.fit(model, population, loss, optimizer, (x, y), epochs=1, batch_size=16,
                     population=True, progress=False)  # fmt: skip
    scale = result.train_state.loss_scale
    assert scale.scale.shape == (3,) and scale.scale.tolist() == [2.0**11] * 3
    assert scale.good_steps.tolist() == [1, 1, 1]  # 4 steps: the 3rd doubled the scale
    mesh = jnn.make_mesh((1,), ("data",))
    on_mesh = jnn.fit(model, make(key), loss, optimizer, (x, y), epochs=1, batch_size=16,
                      mesh=mesh, progress=False)  # fmt: skip
    alone = jnn.fit(model, make(key), loss, optimizer, (x, y), epochs=1, batch_size=16,
                    progress=False)  # fmt: skip
    chex.assert_trees_all_equal(on_mesh.train_state.loss_scale, alone.train_state.loss_scale)
    chex.assert_trees_all_close(on_mesh.train_state.params, alone.train_state.params)
