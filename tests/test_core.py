"""The model contract: init/apply purity, keys by name, state, transforms, errors."""

import dataclasses
import inspect
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jnn


def small_model():
    return jnn.Sequential([jnn.Dense(8), jnn.relu, jnn.Dense(2)])


# --------------------------------------------------------------------------- init


def test_same_key_gives_bit_identical_params(key, x_small):
    a = small_model().init(key, x_small)
    b = small_model().init(key, x_small)
    chex.assert_trees_all_equal(a, b)
    c = small_model().init(jax.random.key(1), x_small)
    assert not np.array_equal(a["dense_0"]["weight"], c["dense_0"]["weight"])


def test_params_are_plain_nested_dicts_with_readable_names(key, x_small):
    params = small_model().init(key, x_small)
    assert type(params) is dict and type(params["dense_0"]) is dict
    assert set(params) == {"dense_0", "dense_1"}
    assert set(params["dense_0"]) == {"weight", "bias"}
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))


def test_adding_a_layer_leaves_other_layers_init_unchanged(key, x_small):
    before = jnn.Sequential({"a": jnn.Dense(4), "b": jnn.Dense(4)}).init(key, x_small)
    after = jnn.Sequential({"a": jnn.Dense(4), "new": jnn.Dense(4), "b": jnn.Dense(4)}).init(
        key, x_small
    )
    chex.assert_trees_all_equal(before["a"], after["a"])
    chex.assert_trees_all_equal(before["b"], after["b"])


def test_init_accepts_shape_dtype_structs_and_eval_shape(key, x_small):
    spec = jax.ShapeDtypeStruct((4, 3), jnp.float32)
    model = small_model()
    chex.assert_trees_all_equal(model.init(key, spec), model.init(key, x_small))
    shapes = jax.eval_shape(model.init, key, spec)
    assert isinstance(shapes["dense_0"]["weight"], jax.ShapeDtypeStruct)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, model.init(key, x_small))


def test_init_of_a_large_model_under_eval_shape_allocates_nothing(key):
    model = jnn.MLP([8192, 8192, 8192])
    spec = jax.ShapeDtypeStruct((1, 8192), jnp.float32)
    shapes = jax.eval_shape(model.init, key, spec)  # 200M parameters: would take 800 MB
    assert shapes["dense_2"]["weight"].shape == (8192, 8192)


def test_init_rejects_a_missing_key(x_small):
    with pytest.raises(jnn.DTypeError, match=r"Sequential: init expected a PRNG key"):
        small_model().init(x_small)


def test_legacy_prng_keys_are_accepted(x_small):
    params = small_model().init(jax.random.PRNGKey(0), x_small)
    assert params["dense_0"]["weight"].shape == (3, 8)


# --------------------------------------------------------------------------- modules


def test_layers_are_frozen_hashable_comparable():
    layer = jnn.Dense(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.features = 4
    assert layer == jnn.Dense(3) and hash(layer) == hash(jnn.Dense(3))
    assert layer != jnn.Dense(4)
    # Equal layers hash alike, however their dtype hyperparameters are spelled.
    same = jnn.Dense(3, param_dtype=np.dtype("float32"))
    assert same == jnn.Dense(3, param_dtype=jnp.float32) and hash(same) == hash(layer)
    assert repr(jnn.Dense(3, use_bias=False)) == "Dense(features=3, use_bias=False)"
    assert repr(small_model()).startswith("Sequential(layers=(Dense(features=8), Lambda(fn=relu)")


def test_model_can_be_a_static_argument_of_jit(key, x_small):
    @jax.jit
    def run(params, x):
        return small_model().apply(params, x)

    apply = jax.jit(lambda model, p, x: model.apply(p, x), static_argnums=0)
    params = small_model().init(key, x_small)
    np.testing.assert_allclose(apply(small_model(), params, x_small), run(params, x_small))


# --------------------------------------------------------------------------- transforms


def test_jit_grad_vmap_scan_checkpoint_apply_directly(key, x_small):
    model = small_model()
    params = model.init(key, x_small)
    expected = model.apply(params, x_small)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x_small), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.checkpoint(model.apply)(params, x_small), expected, rtol=1e-6)
    per_example = jax.vmap(model.apply, in_axes=(None, 0))(params, x_small)
    np.testing.assert_allclose(per_example, expected, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: model.apply(p, x_small).sum())(params)
    chex.assert_trees_all_equal_shapes(grads, params)

    def body(carry, x):
        return carry + model.apply(params, x[None]).sum(), None

    total, _ = jax.lax.scan(body, 0.0, x_small)
    np.testing.assert_allclose(total, expected.sum(), rtol=1e-5)


def test_population_vmap_over_init_and_apply(key, x_small):
    model = small_model()
    keys = jax.random.split(key, 5)
    population = jax.vmap(model.init, in_axes=(0, None))(keys, x_small)
    assert population["dense_0"]["weight"].shape == (5, 3, 8)
    outputs = jax.vmap(model.apply, in_axes=(0, None))(population, x_small)
    assert outputs.shape == (5, 4, 2)
    for i in range(5):
        member = model.init(keys[i], x_small)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], population), member)
        np.testing.assert_allclose(outputs[i], model.apply(member, x_small), rtol=1e-5)


# --------------------------------------------------------------------------- state and keys


class Counter(jnn.Module):
    """A test layer with state: counts the calls made in training mode."""

    def init_with_state(self, key, x):
        return {}, {"count": jnp.zeros((), jnp.int32)}

    def apply(self, params, x, *, state, is_training=False):
        if state is None:
            raise jnn.ParamsError(self.layer_name(), "needs state")
        return x, {"count": state["count"] + int(is_training)}


class Noise(jnn.Module):
    """A test layer that adds key-dependent noise while training."""

    def apply(self, params, x, *, key=None, is_training=False):
        if not is_training:
            return x
        return x + jax.random.normal(key, x.shape)


def test_state_flows_through_combinators_and_comes_back(key, x_small):
    model = jnn.Sequential([jnn.Dense(3), Counter(), jnn.Residual([Counter(), jnn.Dense(3)])])
    params, state = model.init_with_state(key, x_small)
    assert jax.tree.map(int, state) == {
        "counter_0": {"count": 0},
        "residual_0": {"counter_0": {"count": 0}},
    }
    _, state = model.apply(params, x_small, state=state, is_training=True)
    _, state = model.apply(params, x_small, state=state, is_training=True)
    out, state_eval = model.apply(params, x_small, state=state)
    assert jax.tree.map(int, state) == {
        "counter_0": {"count": 2},
        "residual_0": {"counter_0": {"count": 2}},
    }
    chex.assert_trees_all_equal(state, state_eval)
    # Without state the output alone comes back, and a stateless model ignores state={}.
    plain = jnn.MLP([3])
    p = plain.init(key, x_small)
    out2, s = plain.apply(p, x_small, state={})
    assert s == {}
    np.testing.assert_array_equal(out2, plain.apply(p, x_small))


def test_init_of_a_stateful_model_points_to_init_with_state(key, x_small):
    with pytest.raises(jnn.ParamsError, match=r"Sequential: this model has non-trainable state"):
        jnn.Sequential([Counter()]).init(key, x_small)


def test_apply_without_state_raises_named_error(key, x_small):
    model = jnn.Sequential([jnn.Dense(3), Counter()])
    params, _ = model.init_with_state(key, x_small)
    with pytest.raises(jnn.ParamsError, match=r"Counter at 'counter_0': needs state"):
        model.apply(params, x_small)


def test_child_keys_come_from_names(key, x_small):
    model = jnn.Sequential({"a": Noise(), "b": Noise()})
    x = jnp.zeros((2, 3))
    y = model.apply({}, x, key=key, is_training=True)
    expected = jax.random.normal(jnn.extend.child_key(key, "a"), x.shape)
    expected = expected + jax.random.normal(jnn.extend.child_key(key, "b"), x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    # Inserting another layer keeps the noise of "b" (checked alone) unchanged.
    only_b = jnn.Sequential({"b": Noise()}).apply({}, x, key=key, is_training=True)
    np.testing.assert_allclose(only_b, jax.random.normal(jnn.extend.child_key(key, "b"), x.shape))


def test_is_training_must_be_a_python_bool(key, x_small):
    model = small_model()
    params = model.init(key, x_small)
    with pytest.raises(jnn.DTypeError, match="is_training must be a Python bool"):
        jax.jit(model.apply)(params, x_small, is_training=True)
    out = jax.jit(model.apply, static_argnames="is_training")(params, x_small, is_training=True)
    assert out.shape == (4, 2)


# --------------------------------------------------------------------------- custom layers


class Scale(jnn.Module):
    """The custom leaf layer of the docs, in a few lines."""

    init_value: float = 1.0

    def init(self, key, x):
        return {"scale": jnp.full(x.shape[-1:], self.init_value, x.dtype)}

    def apply(self, params, x):
        return x * params["scale"]


class Block(jnn.Module):
    """The custom composite of the docs: a residual block with its own gain parameter."""

    features: int

    def forward(self, scope, x):
        h = scope("dense", jnn.Dense(self.features), x)
        gain = scope.param("gain", jnn.initializers.ones, ())
        return x + gain * jnn.relu(h)


def test_custom_leaf_layer(key, x_small):
    params = Scale(2.0).init(key, x_small)
    np.testing.assert_allclose(Scale(2.0).apply(params, x_small), 2 * x_small)
    # The uniform signature: key and is_training are accepted and ignored.
    np.testing.assert_allclose(
        Scale().apply(params, x_small, key=key, is_training=True), 2 * x_small
    )


def test_custom_composite_layer(key, x_small):
    block = Block(3)
    params = block.init(key, x_small)
    assert set(params) == {"dense", "gain"} and params["gain"].shape == ()
    w, b = params["dense"]["weight"], params["dense"]["bias"]
    expected = x_small + np.maximum(x_small @ np.asarray(w) + np.asarray(b), 0)
    np.testing.assert_allclose(block.apply(params, x_small), expected, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: block.apply(p, x_small).sum())(params)
    assert grads["gain"].shape == ()


class Shared(jnn.Module):
    def forward(self, scope, x):
        return scope("layer", jnn.Dense(3), scope("layer", jnn.Dense(3), x))


class Clash(jnn.Module):
    def forward(self, scope, x):
        return scope("layer", jnn.Dense(4), scope("layer", jnn.Dense(3), x))


def test_same_name_twice_shares_weights_and_different_layers_clash(key, x_small):
    params = Shared().init(key, x_small)
    assert list(params) == ["layer"]
    dense = jnn.Dense(3)
    once = lambda x: dense.apply(params["layer"], x)  # noqa: E731
    np.testing.assert_allclose(Shared().apply(params, x_small), once(once(x_small)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"Clash: the name 'layer' is used for two different"):
        Clash().init(key, x_small)


def test_bad_child_names_are_refused(key, x_small):
    with pytest.raises(ValueError, match=r"child name 'a/b' must be"):
        jnn.Sequential({"a/b": jnn.Dense(2)}).init(key, x_small)


def test_from_functions(key, x_small):
    model = jnn.from_functions(
        lambda key, x: {"w": jax.random.normal(key, (x.shape[-1], 2))},
        lambda params, x, is_training=False: x @ params["w"] * (2.0 if is_training else 1.0),
        name="Linear2",
    )
    params = model.init(key, x_small)
    np.testing.assert_allclose(model.apply(params, x_small), x_small @ params["w"], rtol=1e-6)
    np.testing.assert_allclose(
        jnn.Sequential([model]).apply({"function_module_0": params}, x_small, is_training=True),
        2 * x_small @ params["w"],
        rtol=1e-6,
    )


# --------------------------------------------------------------------------- errors


def test_wrong_input_shape_names_the_path_expected_and_actual(key):
    model = jnn.Sequential({"encoder": jnn.MLP([16, 8]), "head": jnn.Dense(10)})
    params = model.init(key, jnp.zeros((2, 784)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"Dense at 'encoder/dense_0': expected input with last dimension 784 "
        r"\(set at init\), got shape \(32, 785\)\.",
    ):
        model.apply(params, jnp.zeros((32, 785)))


def test_wrong_input_dtype_is_a_type_error(key, x_small):
    params = small_model().init(key, x_small)
    with pytest.raises(TypeError, match=r"Dense at 'dense_0': expected a floating-point input"):
        small_model().apply(params, jnp.ones((4, 3), jnp.int32))


def test_params_errors_name_the_path(key, x_small):
    model = jnn.Sequential({"body": small_model()})
    params = model.init(key, x_small)
    missing = {
        "body": {
            "dense_0": {"weight": params["body"]["dense_0"]["weight"]},
            "dense_1": params["body"]["dense_1"],
        }
    }
    with pytest.raises(
        jnn.ParamsError, match=r"Dense at 'body/dense_0': missing params \['bias'\]"
    ):
        model.apply(missing, x_small)
    extra = {"body": {**params["body"], "dense_9": {}}}
    with pytest.raises(
        jnn.ParamsError, match=r"Sequential at 'body': unexpected params \['dense_9'\]"
    ):
        model.apply(extra, x_small)
    leaf_extra = {
        "body": {**params["body"], "dense_1": {**params["body"]["dense_1"], "kernel": 1.0}}
    }
    with pytest.raises(jnn.ParamsError, match=r"'body/dense_1': unexpected params \['kernel'\]"):
        model.apply(leaf_extra, x_small)
    wrong = {
        "body": {**params["body"], "dense_1": {**params["body"]["dense_1"], "bias": jnp.zeros(3)}}
    }
    with pytest.raises(
        jnn.ParamsError,
        match=r"Dense at 'body/dense_1': params 'bias' has shape \(3,\).* need \(2,\)",
    ):
        model.apply(wrong, x_small)
    with pytest.raises(jnn.ParamsError, match=r"Sequential: expected params as a dict, got list"):
        model.apply([1, 2], x_small)


# --------------------------------------------------------------------------- Repeat


def test_repeat_equals_a_python_loop_and_stacks_params(key, x_small):
    block = jnn.Residual([jnn.Dense(3), jnn.tanh])
    deep = jnn.Repeat(block, count=3)
    params = deep.init(key, x_small)
    assert params["dense_0"]["weight"].shape == (3, 3, 3)
    h = x_small
    for i in range(3):
        member = jax.tree.map(lambda a, i=i: a[i], params)
        chex.assert_trees_all_equal(member, block.init(jax.random.fold_in(key, i), x_small))
        h = block.apply(member, h)
    np.testing.assert_allclose(deep.apply(params, x_small), h, rtol=1e-5, atol=1e-6)
    remat = jnn.Repeat(block, count=3, remat=True)
    g1 = jax.grad(lambda p: deep.apply(p, x_small).sum())(params)
    g2 = jax.grad(lambda p: remat.apply(p, x_small).sum())(params)
    chex.assert_trees_all_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_repeat_threads_state_and_keys(key, x_small):
    deep = jnn.Repeat(jnn.Sequential([Counter(), Noise()]), count=4)
    params, state = deep.init_with_state(key, x_small)
    assert state["counter_0"]["count"].shape == (4,)
    y, state = deep.apply(params, jnp.zeros((2, 3)), state=state, key=key, is_training=True)
    np.testing.assert_array_equal(state["counter_0"]["count"], [1, 1, 1, 1])
    assert float(jnp.std(y)) > 1.0  # four different noise draws added up


def test_repeat_rejects_a_shape_changing_block(key, x_small):
    with pytest.raises(jnn.ShapeError, match=r"Repeat: the block must return its input's shape"):
        jnn.Repeat(jnn.Dense(5), count=2).init(key, x_small)


def _compile_seconds(count):
    model = jnn.Repeat(jnn.Residual([jnn.Dense(32), jnn.relu, jnn.Dense(32)]), count=count)
    x = jnp.zeros((4, 32))
    start = time.perf_counter()
    params = jax.jit(model.init)(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: model.apply(p, x).sum()))
    grad.lower(params, x).compile()
    return time.perf_counter() - start


def test_repeat_compile_time_does_not_grow_with_depth():
    _compile_seconds(2)  # warm up JAX's own caches
    shallow = min(_compile_seconds(4) for _ in range(2))
    deep = min(_compile_seconds(48) for _ in range(2))
    # Unrolled, 48 blocks take ~12x longer; scanned they take about the same time.
    assert deep < 2.0 * shallow + 0.2, (shallow, deep)


class Masked(jnn.Module):
    """A leaf whose apply takes a keyword that its init does not."""

    def init(self, key, x):
        return {"w": jnp.ones(x.shape[-1])}

    def apply(self, params, x, *, mask=None):
        return x * params["w"] * (1.0 if mask is None else mask)


def test_apply_keywords_need_not_be_accepted_by_init(key, x_small):
    params = Masked().init(key, x_small)
    out = Masked().apply(params, x_small, mask=jnp.zeros_like(x_small))
    np.testing.assert_array_equal(out, np.zeros_like(x_small))


# --------------------------------------------------------------------------- hardened contract


class CountingLeaf(jnn.Module):
    """A one-weight leaf that records each init call: True when abstract (under a trace)."""

    calls: list

    def __hash__(self):
        return id(self)

    def init(self, key, x):
        self.calls.append(isinstance(key, jax.core.Tracer))
        return {"weight": jax.random.normal(key, x.shape[-1:])}

    def apply(self, params, x):
        return x * params["weight"]


@pytest.mark.parametrize("depth", [1, 4, 8])
def test_init_calls_each_leaf_once_abstractly_and_once_concretely(key, x_small, depth):
    calls = []
    model = CountingLeaf(calls)
    for _ in range(depth):
        model = jnn.Sequential([model])
    params = model.init(key, x_small)
    assert sorted(calls) == [False, True]  # at any depth
    leaf = params
    for _ in range(depth):
        (leaf,) = leaf.values()
    np.testing.assert_allclose(model.apply(params, x_small), x_small * leaf["weight"])


def test_init_of_a_transformer_calls_each_dense_init_twice(key, monkeypatch):
    calls = []
    original = jnn.Dense._raw_init

    def counting(self, key, *args, **kwargs):
        calls.append(isinstance(key, jax.core.Tracer))
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(jnn.Dense, "_raw_init", counting)
    model = jnn.TransformerLM(vocab_size=11, features=8, num_layers=4, num_heads=2)
    params = model.init(key, jnp.zeros((2, 5), jnp.int32))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    weights = [leaf for path, leaf in flat if path[-1].key == "weight" and leaf.ndim == 2]
    # One concrete call per Dense; identical blocks are traced once, so at most as many
    # abstract calls as concrete ones (4 blocks: 6 of 24), however deep the model.
    assert calls.count(False) == len(weights)
    assert 0 < calls.count(True) <= calls.count(False)


class MaskedInner(jnn.Module):
    def forward(self, scope, x, *, mask=None):
        return scope("masked", Masked(), x, mask=mask)


class MaskedOuter(jnn.Module):
    def forward(self, scope, x, *, mask=None):
        return scope("inner", MaskedInner(), x, mask=mask)


def test_apply_keywords_reach_init_only_if_it_names_them_at_every_depth(key, x_small):
    mask = (x_small > 0).astype(x_small.dtype)
    assert Masked().init(key, x_small, mask=mask)["w"].shape == (3,)
    params = MaskedOuter().init(key, x_small, mask=mask)
    assert params["inner"]["masked"]["w"].shape == (3,)
    np.testing.assert_allclose(MaskedOuter().apply(params, x_small, mask=mask), x_small * mask)


def test_signatures_are_the_real_ones():
    apply = inspect.signature(jnn.RNN.apply).parameters
    assert {"params", "x", "lengths", "mask", "initial_carry", "state", "key"} <= set(apply)
    assert "inputs" not in apply and "kwargs" not in apply
    assert list(inspect.signature(jnn.Dense.init).parameters) == ["self", "key", "x"]
    assert list(inspect.signature(jnn.MLP.apply).parameters)[:3] == ["self", "params", "x"]
    assert "mask" in inspect.signature(MaskedOuter.init).parameters
    assert list(inspect.signature(jnn.Dense).parameters)[0] == "features"


def test_call_mistakes_name_the_right_call(key, x_small):
    dense = jnn.Dense(2)
    params = dense.init(key, x_small)
    with pytest.raises(TypeError, match=r"Dense.apply\(params, x, \*.*flags go by keyword"):
        dense.apply(params, x_small, True)
    with pytest.raises(TypeError, match=r"'training' is spelled is_training"):
        dense.apply(params, x_small, training=True)
    with pytest.raises(TypeError, match=r"Sequential.apply.*'train' is spelled is_training"):
        jnn.Sequential([dense]).apply({"dense_0": params}, x_small, train=True)
    with pytest.raises(TypeError, match=r"init needs sample inputs after the key"):
        dense.init(key)
    cell = jnn.LSTMCell(4)
    cell_params = cell.init(key, cell.initial_carry((4,)), x_small)
    with pytest.raises(TypeError, match=r"LSTMCell.apply.*initial_carry"):
        cell.apply(cell_params, x_small)
    with pytest.raises(jnn.DTypeError, match=r"Dense: apply expected arrays.*Python list"):
        dense.apply(params, x_small.tolist())


@pytest.mark.parametrize(
    "model",
    [jnn.Dense(2), jnn.LayerNorm(), jnn.Flatten(), jnn.GlobalAvgPool(), small_model()],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("bad", [None, "x", b"x"], ids=["None", "str", "bytes"])
def test_inputs_that_are_not_arrays_are_named(key, x_small, model, bad):
    name = type(model).__name__
    params = model.init(key, x_small[..., None] if name == "GlobalAvgPool" else x_small)
    kind = type(bad).__name__
    for run in (lambda: model.init(key, bad), lambda: model.apply(params, bad)):
        with pytest.raises(
            jnn.DTypeError,
            match=rf"^{name}: (init|apply) expected arrays as "
            rf"inputs, got {kind} .* as input 0\.$",
        ):
            run()


def test_a_parameterless_layer_checks_its_inputs_at_init(key):
    with pytest.raises(jnn.ShapeError, match=r"^SinusoidalPositions: expected input"):
        jnn.SinusoidalPositions().init(key, jnp.zeros(()))
    with pytest.raises(jnn.DTypeError, match=r"^SinusoidalPositions: expected a floating"):
        jnn.SinusoidalPositions().init(key, jnp.zeros((2, 3), jnp.int32))


def test_integer_params_where_init_makes_floats_are_refused(key, x_small):
    model = small_model()
    params = model.init(key, x_small)
    as_ints = jax.tree.map(lambda a: a.astype(jnp.int32), params)
    with pytest.raises(
        jnn.ParamsError,
        match=r"'dense_0'.*params 'bias' has dtype int32, but init makes it float32\. Hint: ",
    ):
        model.apply(as_ints, x_small)
    halves = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)  # another width: allowed
    assert model.apply(halves, x_small).shape == (x_small.shape[0], 2)


def test_a_custom_init_must_return_a_dict(key, x_small):
    class ReturnsArray(jnn.Module):
        def init(self, key, x):
            return jnp.ones(3)

        def apply(self, params, x):
            return x

    class ReturnsPair(ReturnsArray):
        def init(self, key, x):
            return {"w": jnp.ones(3)}, {}

    cases = (
        (ReturnsArray(), "ArrayImpl", "put arrays under names"),
        (ReturnsPair(), "tuple", "state"),
    )
    for layer, kind, hint in cases:
        with pytest.raises(
            jnn.ParamsError,
            match=rf"^{type(layer).__name__}: init must return the params as a dict, got "
            rf"{kind}\. Hint: .*{hint}",
        ):
            layer.init(key, x_small)
        with pytest.raises(jnn.ParamsError, match="init must return the params as a dict"):
            layer.init_with_state(key, x_small)


def test_an_unhashable_hyperparameter_is_named():
    class Sizes(jnn.Module):
        sizes: list = dataclasses.field(default_factory=list)

        def apply(self, params, x):
            return x

    with pytest.raises(
        TypeError,
        match=r"^Sizes: hyperparameter 'sizes' is a list, which cannot be hashed.*Hint: use a "
        r"tuple instead of a list",
    ):
        hash(Sizes([1, 2]))


def test_calling_a_model_says_how_to_run_it(x_small):
    with pytest.raises(TypeError, match=r"Dense is not called directly.*model.apply\(params, x\)"):
        jnn.Dense(2)(x_small)


def test_params_loaded_as_lists_are_named(key, x_small):
    model = jnn.MLP([4, 2])
    params = model.init(key, x_small)
    as_lists = jax.tree.map(lambda a: np.asarray(a).tolist(), params)
    with pytest.raises(jnn.ParamsError, match=r"'dense_0'.*params 'bias' is a list.*jnp.asarray"):
        model.apply(as_lists, x_small)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: jnn.MLP(10), r"MLP: features must be .*got 10 \(int\).*\[10\]"),
        (
            lambda: jnn.Sequential(jnn.Dense(8), jnn.Dense(2)),
            r"Sequential: names must be.*one list",
        ),
        (
            lambda: jnn.Dense(3, activation="relu"),
            r"Dense: activation must be a function.*jnn.relu",
        ),
        (lambda: jnn.Dropout("0.5"), r"Dropout: rate must be a float.*not a string"),
        (
            lambda: jnn.TransformerLM(11, num_layers=2.5, features=8, num_heads=2),
            r"num_layers must be an int",
        ),
        (lambda: jnn.Sequential([jnn.Dense]), r"create the layer, e.g. Dense\(...\)"),
        (lambda: jnn.Dense(True), r"Dense: features must be an int, got True"),
        (lambda: jnn.Dense(3, 4, 5, 6, 7, 8, 9), r"Dense\(features.*too many positional"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_numpy_ints_are_accepted_as_ints(key, x_small):
    dense = jnn.Dense(np.int64(3))
    assert dense == jnn.Dense(3) and type(dense.features) is int
    assert dense.init(key, x_small)["weight"].shape == (3, 3)


def test_initializer_factories_and_bad_initializers_are_named(key, x_small):
    with pytest.raises(TypeError, match=r"Dense: w_init got the initializer factory he_normal"):
        jnn.Dense(2, w_init=jnn.initializers.he_normal)
    with pytest.raises(TypeError, match=r"initializer <lambda> returned shape \(2,\), expected"):
        jnn.Dense(2, w_init=lambda key, shape, dtype: jnp.zeros(2)).init(key, x_small)


def test_pytorch_default_receives_each_layers_fan_in(key):
    init = jnn.initializers.pytorch_default()
    model = jnn.MLP([64, 10], w_init=init, b_init=init)
    params = model.init(key, jnp.zeros((2, 400)))
    for name, fan_in in (("dense_0", 400), ("dense_1", 64)):
        for leaf in params[name].values():
            bound = 1 / np.sqrt(fan_in)
            assert float(jnp.abs(leaf).max()) <= bound
            assert float(jnp.abs(leaf).max()) > 0.8 * bound  # uniform on the whole range


def test_parallel_needs_a_branch():
    with pytest.raises(ValueError, match=r"Parallel: branches must hold at least one layer"):
        jnn.Parallel([])


def test_constructor_errors_show_defaults_and_functions_by_name():
    """No ``<function ... at 0x7f...>`` in a message: defaults and values that are
    functions are shown as the user wrote them."""
    with pytest.raises(TypeError) as error:
        jnn.Dense()
    message = str(error.value)
    assert message == (
        "Dense(features, use_bias=True, activation=None, w_init=variance_scaling(...), "
        "b_init=zeros, param_dtype=float32): missing a required argument: 'features'."
    )
    with pytest.raises(
        TypeError,
        match=r"^Sequential: names must be .*, got relu \(custom_jvp\)\. Hint: to chain "
        r"layers, put them in one list: jnn.Sequential\(\[\.\.\.\]\)\.$",
    ):
        jnn.Sequential(jnn.Dense(2), jnn.relu)
    assert repr(jnn.Dense(3, w_init=jnn.initializers.he_normal())) == (
        "Dense(features=3, w_init=variance_scaling(...))"
    )
