"""LayerNorm and RMSNorm against textbook formulas in NumPy; with GroupNorm (each example
normalised by its own statistics): low precision, param_dtype and initializers, gradients,
jit/vmap, errors. GroupNorm's own tests are in test_group_norm.py, BatchNorm's in
test_batch_norm.py."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn
from jnn import GroupNorm, LayerNorm, RMSNorm

# Each layer against textbook formulas in NumPy float64.


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
    for bad in [-1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match=rf"^{name}: epsilon must be a finite number >= 0"):
            cls(epsilon=bad)
    for bad in ["1e-5", True]:  # kinds are checked against the annotation
        with pytest.raises(TypeError, match=rf"^{name}: epsilon must be a float, got {bad!r}"):
            cls(epsilon=bad)
    with pytest.raises(TypeError, match=rf"^{name}: use_scale must be a bool, got 'yes' \(str\)"):
        cls(use_scale="yes")
    with pytest.raises(TypeError, match=rf"^{name}: use_offset must be a bool, got 1 \(int\)"):
        cls(use_offset=1)
    for bad, shown in [(jnp.int8, "int8"), ("foo", "'foo'"), (None, "None")]:
        with pytest.raises(
            TypeError, match=rf"^{name}: param_dtype must be a floating-point dtype .*{shown}\.$"
        ):
            cls(param_dtype=bad)
    if cls is GroupNorm:
        return
    with pytest.raises(
        TypeError, match=rf"^{name}: axis must be an int or a list or tuple of ints, got 1\.5"
    ):
        cls(axis=1.5)
    with pytest.raises(ValueError, match=rf"^{name}: axis must name at least one axis"):
        cls(axis=())
    with pytest.raises(ValueError, match=rf"^{name}: axis \(1, 1\) names the same axis twice"):
        cls(axis=(1, 1))
    assert cls(axis=(np.int64(-2), -1)) == cls(axis=[-2, -1]) == cls(axis=(-2, -1))


@pytest.mark.parametrize("layer", LAYERS)
def test_param_dtype_and_initializers(key, spread, layer):
    calls = []

    def half(key, shape, dtype, **kwargs):
        calls.append(kwargs)
        return jnp.full(shape, 0.5, dtype)

    custom = dataclasses.replace(
        layer, scale_init=half, offset_init=jnn.initializers.constant(2.0), param_dtype=jnp.bfloat16
    )
    params = custom.init(key, spread)
    assert calls == [{}]  # a per-feature scale has no fan-in to pass
    assert all(p.dtype == jnp.bfloat16 for p in params.values())
    np.testing.assert_array_equal(params["scale"], 0.5)
    if "offset" in params:
        np.testing.assert_array_equal(params["offset"], 2.0)
    y = jax.jit(custom.apply)(params, spread)
    assert y.dtype == jnp.float32  # the input's, not the params'
    plain = layer.apply({k: v.astype(jnp.float32) for k, v in params.items()}, spread)
    np.testing.assert_allclose(y, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", LAYERS)
def test_float64_inputs_get_float64_statistics(key, layer):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        x = 1e4 + 0.1 * np.random.default_rng(8).standard_normal((2, 3, 6))
        custom = dataclasses.replace(layer, param_dtype=jnp.float64, epsilon=0.0)
        params = custom.init(key, x)
        assert all(p.dtype == jnp.float64 for p in params.values())
        y = custom.apply(params, x)
        assert y.dtype == jnp.float64
        if isinstance(layer, LayerNorm):  # the other layers are covered by the float32 tests
            axes = layer.axis if isinstance(layer.axis, tuple) else (layer.axis,)
            np.testing.assert_allclose(y, numpy_layer_norm(x, axes, 0.0), rtol=1e-9, atol=1e-9)
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_initializer_errors(key, spread):
    with pytest.raises(TypeError, match=r"^LayerNorm: scale_init: .*takes 2 positional argument"):
        LayerNorm(scale_init=lambda k, s: jnp.ones(s)).init(key, spread)
    with pytest.raises(
        TypeError, match=r"^GroupNorm: offset_init: initializer .* returned shape \(3,\)"
    ):
        GroupNorm(2, offset_init=lambda k, s, d: jnp.zeros(3, d)).init(key, spread)
    with pytest.raises(
        TypeError, match=r"^RMSNorm: scale_init: initializer .* returned int, expected an array"
    ):
        RMSNorm(scale_init=lambda k, s, d: 1).init(key, spread)


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
