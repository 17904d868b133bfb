"""BatchNorm (running statistics in explicit state, train vs inference), LayerNorm, RMSNorm and
GroupNorm: textbook formulas in NumPy, low precision, gradients, jit/vmap, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TRANSFORMS, check_gradients
from jax.test_util import check_grads

import jnn
from jnn import GroupNorm, LayerNorm, RMSNorm


@pytest.fixture
def x():
    return np.random.default_rng(2).normal(3.0, 2.0, (6, 5, 4)).astype(np.float32)


def numpy_batch_norm(x, scale, offset, eps):
    mean = x.mean(axis=(0, 1), dtype=np.float64)
    var = x.var(axis=(0, 1), dtype=np.float64)
    return (x - mean) / np.sqrt(var + eps) * scale + offset, mean, var


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_training_matches_textbook_and_updates_running_stats(key, x, transform):
    bn = jnn.BatchNorm(momentum=0.9, epsilon=1e-3)
    params, state = bn.init_with_state(key, x)
    params = {"scale": jnp.array([1.0, 2.0, 0.5, 1.5]), "offset": jnp.array([0.0, 1.0, -1.0, 2.0])}
    apply = transform(lambda p, v, s: bn.apply(p, v, state=s, is_training=True))
    y, new_state = apply(params, x, state)
    expected, mean, var = numpy_batch_norm(
        x, np.asarray(params["scale"]), np.asarray(params["offset"]), 1e-3
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(new_state["variance"], 0.9 + 0.1 * var, rtol=1e-5)


def test_inference_uses_running_stats_and_keeps_them(key, x):
    bn = jnn.BatchNorm(use_scale=False, use_offset=False)
    params, _ = bn.init_with_state(key, x)
    assert params == {}
    state = {"mean": jnp.full(4, 3.0), "variance": jnp.full(4, 4.0)}
    y, same = bn.apply(params, x, state=state)
    np.testing.assert_allclose(y, (x - 3.0) / np.sqrt(4.0 + 1e-5), rtol=1e-5)
    chex.assert_trees_all_equal(same, state)


def test_gradients(key, x):
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    check_grads(
        lambda p, v: (bn.apply(p, v, state=state, is_training=True)[0] ** 3).sum(),
        (params, x[:2, :3]),
        order=1,
        modes=("rev",),
        atol=5e-2,
        rtol=5e-2,
        eps=1e-2,
    )


def test_optimizer_never_touches_state(key, x):
    model = jnn.Sequential([jnn.Dense(4), jnn.BatchNorm(), jnn.Dense(1)])
    params, state = model.init_with_state(key, x)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    assert "batch_norm_0" not in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, dict))
    step = jnn.make_train_step(model, lambda o, t: jnp.mean((o - t) ** 2), optimizer)
    params, opt_state, new_state, logs = step(
        params, opt_state, (x, jnp.zeros((6, 5, 1))), None, state
    )
    assert set(new_state) == {"batch_norm_0"}
    assert not np.allclose(new_state["batch_norm_0"]["mean"], 0.0)  # moved by the data


def test_axis_name_averages_across_a_mapped_axis(key, x):
    bn = jnn.BatchNorm(axis_name="devices")
    params, state = bn.init_with_state(key, x[0])
    mapped = jax.vmap(
        lambda v: bn.apply(params, v, state=state, is_training=True), axis_name="devices"
    )
    y, new_state = mapped(x)
    whole, whole_state = jnn.BatchNorm().apply(
        params, x.reshape(-1, 4), state=state, is_training=True
    )
    np.testing.assert_allclose(y.reshape(-1, 4), whole, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state["mean"][0], whole_state["mean"], rtol=1e-5)


def test_errors(key, x):
    bn = jnn.BatchNorm()
    params, state = bn.init_with_state(key, x)
    with pytest.raises(jnn.ParamsError, match=r"BatchNorm: needs its running statistics"):
        bn.apply(params, x)
    with pytest.raises(jnn.ShapeError, match=r"BatchNorm: expected input of rank at least 2"):
        bn.init_with_state(key, jnp.ones(3))
    with pytest.raises(
        jnn.ShapeError,
        match=r"BatchNorm: expected input with 4 features on axis -1 \(set at init\), got shape "
        r"\(6, 5, 3\)",
    ):
        bn.apply(params, x[..., :3], state=state)
    with pytest.raises(ValueError, match=r"BatchNorm: momentum must be in \[0, 1\]"):
        jnn.BatchNorm(momentum=2.0)


# --------------------------------------------------------------------------- per-example norms
# LayerNorm, RMSNorm and GroupNorm against textbook formulas in NumPy float64.


@pytest.fixture
def spread():
    """[batch=2, height=3, width=4, channels=6], mean 1 and std 2, so statistics differ."""
    return np.random.default_rng(3).normal(1.0, 2.0, (2, 3, 4, 6)).astype(np.float32)


def random_affine(shape, seed=4):
    rng = np.random.default_rng(seed)
    return {
        "scale": rng.normal(1.0, 0.5, shape).astype(np.float32),
        "offset": rng.normal(0.0, 0.5, shape).astype(np.float32),
    }


def broadcast(p, ndim, axes):
    """A parameter laid out on ``axes`` of an ``ndim``-array, reshaped to broadcast."""
    axes = sorted(a % ndim for a in axes)
    shape = [1] * ndim
    for a, d in zip(axes, np.shape(p), strict=True):
        shape[a] = d
    return np.asarray(p, np.float64).reshape(shape)


def numpy_layer_norm(x, axes, eps, scale=None, offset=None):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # biased
    y = (x - mean) / np.sqrt(var + eps)
    if scale is not None:
        y = y * broadcast(scale, x.ndim, axes)
    if offset is not None:
        y = y + broadcast(offset, x.ndim, axes)
    return y


def numpy_rms_norm(x, axes, eps, scale=None, offset=None):
    x = np.asarray(x, np.float64)
    mean_square = (x**2).mean(axis=axes, keepdims=True)
    y = x / np.sqrt(mean_square + eps)
    if scale is not None:
        y = y * broadcast(scale, x.ndim, axes)
    if offset is not None:
        y = y + broadcast(offset, x.ndim, axes)
    return y


def numpy_group_norm(x, num_groups, eps, scale, offset):
    """One example and one group at a time: statistics over spatial positions and channels."""
    x = np.asarray(x, np.float64)
    size = x.shape[-1] // num_groups
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        for g in range(num_groups):
            block = x[n, ..., g * size : (g + 1) * size]
            mean = block.mean()
            var = ((block - mean) ** 2).mean()
            y[n, ..., g * size : (g + 1) * size] = (block - mean) / np.sqrt(var + eps)
    return y * np.asarray(scale, np.float64) + np.asarray(offset, np.float64)


AXES = [-1, (-2, -1), (1, 3), 2, (0,)]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_layer_norm_matches_textbook(key, spread, axis, transform):
    layer = LayerNorm(epsilon=1e-3, axis=axis)
    params = layer.init(key, spread)
    axes = axis if isinstance(axis, tuple) else (axis,)
    expected_shape = tuple(spread.shape[a] for a in sorted(a % 4 for a in axes))
    assert params["scale"].shape == params["offset"].shape == expected_shape
    params = random_affine(expected_shape)
    y = transform(layer.apply)(params, spread)
    expected = numpy_layer_norm(spread, axes, 1e-3, params["scale"], params["offset"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("use_offset", [False, True])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_rms_norm_matches_textbook(key, spread, axis, use_offset, transform):
    layer = RMSNorm(epsilon=1e-3, use_offset=use_offset, axis=axis)
    params = layer.init(key, spread)
    assert sorted(params) == (["offset", "scale"] if use_offset else ["scale"])
    params = {k: v for k, v in random_affine(params["scale"].shape).items() if k in params}
    y = transform(layer.apply)(params, spread)
    axes = axis if isinstance(axis, tuple) else (axis,)
    expected = numpy_rms_norm(spread, axes, 1e-3, params["scale"], params.get("offset"))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6), (2, 5, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("num_groups", [1, 2, 3, 6])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_group_norm_matches_textbook(key, shape, num_groups, transform):
    x = np.random.default_rng(5).normal(1.0, 2.0, shape).astype(np.float32)
    layer = GroupNorm(num_groups=num_groups, epsilon=1e-3)
    params = layer.init(key, x)
    assert params["scale"].shape == params["offset"].shape == (6,)
    params = random_affine((6,))
    y = transform(layer.apply)(params, x)
    expected = numpy_group_norm(x, num_groups, 1e-3, params["scale"], params["offset"])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    by_size = GroupNorm(group_size=6 // num_groups, epsilon=1e-3)
    np.testing.assert_allclose(transform(by_size.apply)(params, x), y, rtol=1e-6, atol=1e-6)


def test_group_norm_special_cases(key, spread):
    """One group is LayerNorm over all non-batch axes; a group per channel is instance norm."""
    affine = random_affine((6,))
    one_group = GroupNorm(num_groups=1).apply(affine, spread)
    ln_params = {k: np.broadcast_to(v, spread.shape[1:]) for k, v in affine.items()}
    layer_norm = LayerNorm(axis=(1, 2, 3)).apply(ln_params, spread)
    np.testing.assert_allclose(one_group, layer_norm, rtol=1e-5, atol=1e-5)

    plain = {"scale": np.ones(6, np.float32), "offset": np.zeros(6, np.float32)}
    instance = GroupNorm(num_groups=6).apply(plain, spread)
    x = spread.astype(np.float64)
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(instance, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-5, atol=1e-5)


def test_defaults_and_no_affine(key, spread):
    assert LayerNorm().epsilon == 1e-5 and RMSNorm().epsilon == 1e-6
    assert GroupNorm() == GroupNorm(num_groups=32) and GroupNorm().epsilon == 1e-5
    assert LayerNorm(axis=[-2, -1]) == LayerNorm(axis=(-2, -1))  # lists become tuples
    assert len({LayerNorm(), LayerNorm(), RMSNorm(), GroupNorm(group_size=2)}) == 3
    assert sorted(RMSNorm().init(key, spread)) == ["scale"]
    for layer in [
        LayerNorm(use_scale=False, use_offset=False),
        RMSNorm(use_scale=False),
        GroupNorm(2, use_scale=False, use_offset=False),
    ]:
        assert layer.init(key, spread) == {}
    y = LayerNorm(use_scale=False, use_offset=False).apply({}, spread)
    np.testing.assert_allclose(y, numpy_layer_norm(spread, (-1,), 1e-5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer", [LayerNorm(), LayerNorm(axis=(1, 2)), RMSNorm(), GroupNorm(3)], ids=repr
)
def test_init_from_shapes_only(key, layer):
    spec = jax.ShapeDtypeStruct((2, 3, 4, 6), jnp.bfloat16)
    shapes = jax.eval_shape(layer.init, key, spec)
    params = layer.init(key, spec)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, params)
    out = jax.eval_shape(layer.apply, params, spec)
    assert out.shape == spec.shape and out.dtype == jnp.bfloat16


LAYERS = [
    pytest.param(LayerNorm(), id="layer_norm"),
    pytest.param(LayerNorm(axis=(-2, -1)), id="layer_norm_2_axes"),
    pytest.param(RMSNorm(use_offset=True), id="rms_norm"),
    pytest.param(GroupNorm(num_groups=3), id="group_norm"),
]


def with_affine(layer, key, x):
    params = layer.init(key, x)
    return {k: v for k, v in random_affine(params["scale"].shape).items() if k in params}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_keeps_dtype_and_matches_float32(key, spread, layer, dtype):
    params = with_affine(layer, key, spread)
    low = jnp.asarray(spread, dtype)
    y = layer.apply(params, low)
    assert y.dtype == dtype
    tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    # Only the final rounding differs from float32 on the same (rounded) input ...
    np.testing.assert_allclose(
        y.astype(jnp.float32), layer.apply(params, low.astype(jnp.float32)), **tolerance
    )
    # ... and the input's rounding moves the result little.
    np.testing.assert_allclose(
        y.astype(jnp.float32), layer.apply(params, spread), rtol=5e-2, atol=5e-2
    )


def test_float16_statistics_do_not_overflow(key):
    """300**2 overflows float16 (max 65504); statistics in float32 do not."""
    x = jnp.full((2, 8), 300.0, jnp.float16).at[:, 0].set(310.0)
    rms = RMSNorm()
    y = rms.apply(rms.init(key, x), x)
    assert y.dtype == jnp.float16 and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_allclose(y.astype(np.float32), numpy_rms_norm(x, (-1,), 1e-6), rtol=2e-3)
    ln = LayerNorm(axis=(0, 1))
    y = ln.apply(ln.init(key, x), x * 10)  # squares of 3000 overflow, deviations do not
    np.testing.assert_allclose(
        y.astype(np.float32), numpy_layer_norm(x * 10, (0, 1), 1e-5), rtol=2e-3, atol=2e-3
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_per_example_norm_gradients(key, layer):
    x = np.random.default_rng(6).normal(1.0, 2.0, (2, 3, 6)).astype(np.float32)
    params = with_affine(layer, key, x)
    weights = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
    check_gradients(
        jax.jit(lambda p, v: jnp.sum(layer.apply(p, v) * weights)), (params, x), order=2
    )


@pytest.mark.parametrize("layer", LAYERS[:3])
def test_vmap_over_batch_equals_batched(key, spread, layer):
    params = with_affine(layer, key, spread)
    mapped = jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))(params, spread)
    np.testing.assert_allclose(mapped, layer.apply(params, spread), rtol=1e-6, atol=1e-6)


def test_group_norm_vmap_is_per_example(key, spread):
    layer = GroupNorm(num_groups=2)
    params = with_affine(layer, key, spread)
    one_at_a_time = jax.vmap(lambda v: layer.apply(params, v[None])[0])(spread)
    np.testing.assert_allclose(one_at_a_time, layer.apply(params, spread), rtol=1e-6, atol=1e-6)
    stacked = np.stack([spread, 2 * spread + 1])  # [replica, batch, height, width, channels]
    mapped = jax.vmap(layer.apply, in_axes=(None, 0))(params, stacked)
    whole = layer.apply(params, stacked.reshape(4, 3, 4, 6)).reshape(stacked.shape)
    np.testing.assert_allclose(mapped, whole, rtol=1e-6, atol=1e-6)


def test_in_sequential_matches_by_hand(key, spread):
    model = jnn.Sequential([jnn.Dense(6), LayerNorm(), jnn.relu, GroupNorm(2), RMSNorm()])
    params = model.init(key, spread)
    assert sorted(params) == ["dense_0", "group_norm_0", "layer_norm_0", "rms_norm_0"]
    h = jnn.Dense(6).apply(params["dense_0"], spread)
    h = jnn.relu(LayerNorm().apply(params["layer_norm_0"], h))
    h = GroupNorm(2).apply(params["group_norm_0"], h)
    expected = RMSNorm().apply(params["rms_norm_0"], h)
    np.testing.assert_allclose(jax.jit(model.apply)(params, spread), expected, rtol=1e-5, atol=1e-5)


def test_layer_norm_and_rms_norm_errors(key):
    params = LayerNorm().init(key, jnp.zeros((4, 16)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^LayerNorm: expected input with last dimension 16 \(set at init\), got shape "
        r"\(4, 15\)\.$",
    ):
        LayerNorm().apply(params, jnp.zeros((4, 15)))
    two = LayerNorm(axis=(-2, -1))
    with pytest.raises(
        jnn.ShapeError,
        match=r"LayerNorm: expected input with dimensions \(5, 6\) on axes \(-2, -1\) \(set at "
        r"init\), got shape \(4, 5, 7\)\.",
    ):
        two.apply(two.init(key, jnp.zeros((4, 5, 6))), jnp.zeros((4, 5, 7)))
    one = LayerNorm(axis=1)
    with pytest.raises(
        jnn.ShapeError, match=r"LayerNorm: expected input with dimension 5 on axis 1 \(set at"
    ):
        one.apply(one.init(key, jnp.zeros((4, 5, 6))), jnp.zeros((4, 6, 6)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"LayerNorm: expected input of rank at least 3 for axis=\(-3, -1\), got shape "
        r"\(4, 5\)\.",
    ):
        LayerNorm(axis=(-3, -1)).init(key, jnp.zeros((4, 5)))
    with pytest.raises(
        jnn.ShapeError, match=r"LayerNorm: axis=\(0, -1\) names one axis twice for an input of"
    ):
        LayerNorm(axis=(0, -1)).init(key, jnp.zeros(4))
    no_params = LayerNorm(use_scale=False, use_offset=False)
    with pytest.raises(jnn.ShapeError, match=r"LayerNorm: expected input of rank at least 3"):
        LayerNorm(axis=-3, use_scale=False, use_offset=False).apply({}, jnp.zeros((4, 5)))
    with pytest.raises(jnn.DTypeError, match=r"LayerNorm: expected a floating-point input"):
        no_params.apply({}, jnp.zeros((4, 5), jnp.int32))
    with pytest.raises(
        jnn.DTypeError, match=r"LayerNorm: expected a floating-point input, got dtype complex64"
    ):
        no_params.init(key, jnp.zeros((4, 5), jnp.complex64))
    rms = RMSNorm(use_scale=False, use_offset=True)
    with pytest.raises(
        jnn.ShapeError,
        match=r"RMSNorm: expected input with last dimension 8 \(set at init\), got shape "
        r"\(2, 7\)\.",
    ):
        rms.apply(rms.init(key, jnp.zeros((2, 8))), jnp.zeros((2, 7)))


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm, GroupNorm])
def test_hyperparameter_errors(cls):
    name = cls.__name__
    for bad in [-1.0, float("nan"), float("inf"), "1e-5", True]:
        with pytest.raises(ValueError, match=rf"^{name}: epsilon must be a finite number >= 0"):
            cls(epsilon=bad)
    with pytest.raises(TypeError, match=rf"^{name}: use_scale must be a bool, got 'yes'\."):
        cls(use_scale="yes")
    with pytest.raises(TypeError, match=rf"^{name}: use_offset must be a bool, got 1\."):
        cls(use_offset=1)
    if cls is GroupNorm:
        return
    with pytest.raises(TypeError, match=rf"^{name}: axis must be an int or a tuple of ints"):
        cls(axis=1.5)
    with pytest.raises(ValueError, match=rf"^{name}: axis must name at least one axis"):
        cls(axis=())
    with pytest.raises(ValueError, match=rf"^{name}: axis \(1, 1\) names the same axis twice"):
        cls(axis=(1, 1))


def test_group_norm_errors(key):
    with pytest.raises(
        jnn.ShapeError,
        match=r"^GroupNorm: expected a channel count divisible by num_groups=4, got 6 channels "
        r"in input of shape \(2, 3, 6\)\.$",
    ):
        GroupNorm(num_groups=4).init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(
        jnn.ShapeError, match=r"divisible by group_size=4, got 6 channels in input of shape"
    ):
        GroupNorm(group_size=4).init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(jnn.ShapeError, match=r"divisible by num_groups=32, got 16 channels"):
        GroupNorm().init(key, jnp.zeros((2, 16)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"GroupNorm: expected input of rank at least 2 \(\[batch, \*spatial, channels\]\), "
        r"got shape \(6,\)\. Hint: add a batch axis",
    ):
        GroupNorm(2).init(key, jnp.zeros(6))
    layer = GroupNorm(2)
    params = layer.init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"GroupNorm: expected input with 6 channels on the last axis \(set at init\), got "
        r"shape \(2, 3, 4\)\.",
    ):
        layer.apply(params, jnp.zeros((2, 3, 4)))
    bare = GroupNorm(2, use_scale=False, use_offset=False)
    with pytest.raises(jnn.ShapeError, match=r"divisible by num_groups=2, got 5 channels"):
        bare.apply({}, jnp.zeros((2, 3, 5)))
    with pytest.raises(jnn.DTypeError, match=r"GroupNorm: expected a floating-point input"):
        layer.apply(params, jnp.zeros((2, 3, 6), jnp.int32))
    with pytest.raises(
        ValueError,
        match=r"GroupNorm: set num_groups or group_size, not both; got num_groups=2, "
        r"group_size=3\.",
    ):
        GroupNorm(num_groups=2, group_size=3)
    for field in ("num_groups", "group_size"):
        with pytest.raises(ValueError, match=rf"GroupNorm: {field} must be a positive int"):
            GroupNorm(**{field: 0})


def test_errors_name_the_path_in_sequential(key):
    model = jnn.Sequential({"block": jnn.Sequential({"norm": LayerNorm()})})
    params = model.init(key, jnp.zeros((4, 16)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^LayerNorm at 'block/norm': expected input with last dimension 16 \(set at "
        r"init\), got shape \(4, 15\)\.$",
    ):
        model.apply(params, jnp.zeros((4, 15)))
    model = jnn.Sequential([jnn.relu, GroupNorm(2)])
    params = model.init(key, jnp.zeros((2, 3, 6)))
    with pytest.raises(jnn.ShapeError, match=r"^GroupNorm at 'group_norm_0': expected input"):
        jax.jit(model.apply)(params, jnp.zeros((2, 3, 4)))
    with pytest.raises(
        jnn.ShapeError, match=r"^GroupNorm at 'group_norm_0': expected a channel count"
    ):
        model.init(key, jnp.zeros((2, 3, 5)))


@pytest.mark.parametrize("layer", [LayerNorm(), GroupNorm(num_groups=2)])
def test_one_pass_statistics_survive_a_large_mean(layer):
    """Rows far from zero with a small spread: E[x^2] - E[x]^2 would cancel to noise in
    float32 (mean 1e4, std 0.1: the variance is 1e-10 of the mean square), the shifted
    one-pass form does not."""
    rng = np.random.default_rng(0)
    x = (1e4 + 0.1 * rng.standard_normal((4, 6, 8))).astype(np.float32)
    x[:, :, 0] += 0.5  # the shift element is not typical of its row
    params = layer.init(jax.random.key(0), x)
    axes = (-1,) if isinstance(layer, LayerNorm) else None
    x64 = x.astype(np.float64)
    if axes is None:  # two groups of 4 channels, over positions and channels
        groups = x64.reshape(4, 6, 2, 4)
        mean = groups.mean(axis=(1, 3), keepdims=True)
        var = groups.var(axis=(1, 3), keepdims=True)
        expected = ((groups - mean) / np.sqrt(var + layer.epsilon)).reshape(x.shape)
    else:
        mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
        expected = (x64 - mean) / np.sqrt(var + layer.epsilon)
    np.testing.assert_allclose(layer.apply(params, x), expected, atol=2e-3)


def test_batch_norm_statistics_survive_a_large_mean(key):
    """The batch statistics come from one shifted pass: a large mean does not cancel."""
    rng = np.random.default_rng(0)
    x = (1e4 + 0.1 * rng.standard_normal((16, 5, 3))).astype(np.float32)
    bn = jnn.BatchNorm(momentum=0.0)
    params, state = bn.init_with_state(key, x)
    y, state = bn.apply(params, x, state=state, is_training=True)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1)), x64.var(axis=(0, 1))
    np.testing.assert_allclose(state["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(state["variance"], var, rtol=1e-2)
    # x - mean itself is rounded at 1e-3 (float32 near 1e4), 1% of the spread.
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + bn.epsilon), atol=1e-2)
