"""Conv and ConvTranspose: NumPy loop references, PyTorch's size formula, gradients, errors."""

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    TRANSFORMS,
    check_gradients,
    torch_conv_transpose_weight_to_jnn,
    torch_conv_weight_to_jnn,
)

import jnn
from jnn import Conv, ConvTranspose

# --------------------------------------------------------------------------- references


def per_axis(value, n):
    return (value,) * n if isinstance(value, int) else tuple(value)


def same_pads(size, kernel, stride, dilation):
    """SAME: output ceil(size / stride), the odd extra zero on the high side."""
    extent = dilation * (kernel - 1) + 1
    total = max((-(-size // stride) - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def conv_pairs(padding, spatial, kernel, stride, dilation):
    n = len(kernel)
    if padding == "SAME":
        return [same_pads(*args) for args in zip(spatial, kernel, stride, dilation, strict=True)]
    if padding == "VALID":
        return [(0, 0)] * n
    if padding == "CAUSAL":  # Keras' Conv1D: every zero before the sequence
        return [(dilation[0] * (kernel[0] - 1), 0)]
    return [(p, p) if isinstance(p, int) else tuple(p) for p in per_axis(padding, n)]


def numpy_conv(x, w, bias, stride, pairs, dilation, groups):
    """Direct loops. ``x`` is ``[batch, *spatial, in]``, ``w`` PyTorch's ``[F, in // G, *k]``."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    batch, *spatial, channels = x.shape
    features, in_per_group, *kernel = w.shape
    n, f_per_group = len(kernel), features // groups
    padded = [size + lo + hi for size, (lo, hi) in zip(spatial, pairs, strict=True)]
    xp = np.zeros((batch, *padded, channels))
    inner = tuple(slice(lo, lo + size) for size, (lo, _) in zip(spatial, pairs, strict=True))
    xp[(slice(None), *inner, slice(None))] = x
    out_spatial = [
        (padded[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(n)
    ]
    y = np.zeros((batch, *out_spatial, features))
    for b in range(batch):
        for o in itertools.product(*map(range, out_spatial)):
            for f in range(features):
                g = f // f_per_group
                total = 0.0 if bias is None else float(bias[f])
                for t in itertools.product(*map(range, kernel)):
                    pos = tuple(o[i] * stride[i] + t[i] * dilation[i] for i in range(n))
                    for c in range(in_per_group):
                        total += xp[(b, *pos, g * in_per_group + c)] * w[(f, c, *t)]
                y[(b, *o, f)] = total
    return y


def numpy_conv_transpose(x, w, bias, stride, lows, out_spatial, dilation, groups):
    """Scatter each input element times the kernel, crop ``lows``, keep ``out_spatial``.

    ``w`` has PyTorch's layout ``[in, F // G, *k]``. Entries past the scatter (from
    ``output_padding``, or a SAME output longer than the scatter) are zero.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    batch, *spatial, channels = x.shape
    _, f_per_group, *kernel = w.shape
    n, in_per_group = len(kernel), channels // groups
    full = [
        max((spatial[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1, lows[i] + out)
        for i, out in enumerate(out_spatial)
    ]
    y = np.zeros((batch, *full, groups * f_per_group))
    for b in range(batch):
        for i in itertools.product(*map(range, spatial)):
            for c in range(channels):
                g = c // in_per_group
                for t in itertools.product(*map(range, kernel)):
                    pos = tuple(i[a] * stride[a] + t[a] * dilation[a] for a in range(n))
                    for f in range(f_per_group):
                        y[(b, *pos, g * f_per_group + f)] += x[(b, *i, c)] * w[(c, f, *t)]
    crop = tuple(slice(lo, lo + out) for lo, out in zip(lows, out_spatial, strict=True))
    y = y[(slice(None), *crop, slice(None))]
    return y if bias is None else y + np.asarray(bias, np.float64)


def torch_transpose_size(size, kernel, stride, padding, output_padding, dilation):
    """PyTorch's documented output size of ConvTransposeNd, per axis."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def random(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def zero_params(layer, x):
    """Params of the right shapes without running the (slow, eager) random initializer."""
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def random_params(rng, layer, x):
    return jax.tree.map(lambda p: jnp.asarray(random(rng, p.shape)), zero_params(layer, x))


# --------------------------------------------------------------------------- Conv

# (spatial, kernel_size, stride, padding, dilation, groups, in_channels, features)
CONV_CASES = [
    ((7,), (3,), 1, "SAME", 1, 1, 2, 3),
    ((8,), (4,), 2, "SAME", 1, 1, 2, 3),
    ((9,), 3, 2, "VALID", 2, 1, 2, 2),
    ((6,), (2,), 3, 1, 1, 2, 4, 2),
    ((5,), (3,), 1, ((2, 0),), 1, 4, 4, 4),  # causal padding by hand, depthwise
    ((9,), (3,), 1, "CAUSAL", 2, 1, 2, 3),  # dilated, WaveNet-style
    ((8,), (2,), 3, "CAUSAL", 1, 1, 2, 2),  # strided: ceil(8 / 3) outputs
    ((5, 6), (3, 3), 1, "SAME", 1, 1, 3, 4),
    ((6, 5), (3, 2), (2, 1), "SAME", (1, 2), 1, 2, 3),
    ((7, 7), (3, 3), 2, "VALID", 1, 2, 4, 2),
    ((5, 4), (2, 3), 1, 1, 2, 1, 2, 2),
    ((5, 5), (3, 3), (1, 2), ((0, 2), (1, 0)), 1, 3, 3, 6),  # depthwise, multiplier 2
    ((4, 3, 5), (2, 2, 3), 1, "SAME", 1, 1, 2, 2),
    ((5, 4, 4), (3, 2, 2), (2, 1, 2), ((1, 1), (0, 1), 1), (1, 2, 1), 2, 2, 2),
    ((3, 4, 3), (3, 3, 3), 1, "VALID", 1, 1, 1, 2),
]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_numpy_loops(rng, case, use_bias, transform):
    spatial, kernel_size, stride, padding, dilation, groups, channels, features = case
    kernel = per_axis(kernel_size, len(spatial))
    n = len(kernel)
    x = random(rng, (2, *spatial, channels))
    w_torch = random(rng, (features, channels // groups, *kernel))
    bias = random(rng, (features,)) if use_bias else None
    layer = Conv(features, kernel_size, stride, padding, dilation, groups, use_bias)
    params = {"weight": jnp.asarray(torch_conv_weight_to_jnn(w_torch))}
    if use_bias:
        params["bias"] = jnp.asarray(bias)
    stride, dilation = per_axis(stride, n), per_axis(dilation, n)
    pairs = conv_pairs(padding, spatial, kernel, stride, dilation)
    expected = numpy_conv(x, w_torch, bias, stride, pairs, dilation, groups)
    out = transform(layer.apply)(params, x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert zero_params(layer, x)["weight"].shape == params["weight"].shape


# --------------------------------------------------------------------------- ConvTranspose

# (spatial, kernel_size, stride, padding, output_padding, dilation, groups, in, features)
TRANSPOSE_CASES = [
    ((4,), (3,), 2, 1, 1, 1, 1, 2, 3),
    ((5,), (4,), 2, "SAME", 0, 1, 1, 2, 2),
    ((3,), (3,), 3, "SAME", 0, 1, 1, 1, 2),
    ((3,), (2,), 3, "SAME", 0, 1, 1, 1, 2),  # the window is shorter than the stride
    ((4,), 3, 1, "VALID", 0, 2, 2, 4, 2),
    ((4,), (3,), 2, ((2, 0),), 1, 1, 1, 2, 2),
    ((3,), (1,), 1, 1, 0, 1, 1, 1, 1),  # crops more than the kernel adds
    ((4,), (2,), 1, 0, 1, 2, 1, 1, 2),  # output_padding below the dilation
    ((3, 4), (3, 3), 2, "SAME", 0, 1, 1, 2, 3),
    ((3, 3), (4, 3), (2, 1), 1, (1, 0), 1, 2, 4, 2),
    ((4, 3), (2, 3), (1, 2), ((0, 1), (2, 1)), 0, (2, 1), 1, 2, 2),
    ((3, 3), (3, 3), 2, "VALID", 1, 1, 3, 3, 3),  # depthwise
    ((2, 3, 2), (2, 3, 2), (2, 1, 2), 1, 0, 1, 1, 2, 2),
    ((2, 2, 3), (3, 2, 2), 2, "SAME", 0, 1, 2, 2, 4),
]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_matches_numpy_scatter(rng, case, transform):
    spatial, kernel_size, stride, padding, output_padding, dilation, groups, channels, features = (
        case
    )
    n = len(spatial)
    kernel, stride_, dilation_ = (per_axis(v, n) for v in (kernel_size, stride, dilation))
    extra = per_axis(output_padding, n)
    x = random(rng, (2, *spatial, channels))
    w_torch = random(rng, (channels, features // groups, *kernel))
    bias = random(rng, (features,))
    layer = ConvTranspose(features, kernel_size, stride, padding, output_padding, dilation, groups)
    params = {
        "weight": jnp.asarray(torch_conv_transpose_weight_to_jnn(w_torch, groups)),
        "bias": jnp.asarray(bias),
    }
    if padding == "SAME":
        # The gradient of a SAME Conv from in * stride: crop that Conv's low padding.
        out_spatial = [size * s for size, s in zip(spatial, stride_, strict=True)]
        lows = [
            same_pads(out, k, s, d)[0]
            for out, k, s, d in zip(out_spatial, kernel, stride_, dilation_, strict=True)
        ]
    else:
        pairs = conv_pairs(padding, spatial, kernel, stride_, dilation_)
        lows = [lo for lo, _ in pairs]
        out_spatial = [
            (size - 1) * s + d * (k - 1) + 1 - lo - hi + o
            for size, k, s, d, (lo, hi), o in zip(
                spatial, kernel, stride_, dilation_, pairs, extra, strict=True
            )
        ]
    expected = numpy_conv_transpose(x, w_torch, bias, stride_, lows, out_spatial, dilation_, groups)
    out = transform(layer.apply)(params, x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert zero_params(layer, x)["weight"].shape == params["weight"].shape


def test_conv_transpose_by_hand():
    """Ones kernel of 3, stride 2: x0 lands on 0..2, x1 on 2..4, x2 on 4..6."""
    layer = ConvTranspose(1, 3, stride=2, padding="VALID", use_bias=False)
    out = layer.apply({"weight": jnp.ones((3, 1, 1))}, jnp.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_allclose(out[:, 0], [1, 1, 3, 2, 5, 3, 3])


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
def test_conv_transpose_output_size_is_pytorchs(stride, dilation):
    for size, kernel, padding, extra in itertools.product([1, 5], [1, 3], [0, 1, 2], [0, 1, 2]):
        expected = torch_transpose_size(size, kernel, stride, padding, extra, dilation)
        if extra >= max(stride, dilation) or expected < 1:
            continue
        layer = ConvTranspose(2, kernel, stride, padding, extra, dilation)
        x = jax.ShapeDtypeStruct((1, size, 3), jnp.float32)
        params = jax.eval_shape(layer.init, jax.random.key(0), x)
        assert jax.eval_shape(layer.apply, params, x).shape == (1, expected, 2)
        if padding == 0:
            valid = ConvTranspose(2, kernel, stride, "VALID", extra, dilation)
            assert jax.eval_shape(valid.apply, params, x).shape == (1, expected, 2)
    same = ConvTranspose(2, 3, stride, "SAME", dilation=dilation)
    x = jax.ShapeDtypeStruct((1, 5, 3), jnp.float32)
    params = jax.eval_shape(same.init, jax.random.key(0), x)
    assert jax.eval_shape(same.apply, params, x).shape == (1, 5 * stride, 2)


# (conv input spatial, kernel_size, stride, padding, dilation, groups)
INPUT_GRADIENT_CASES = [
    ((8,), (4,), 2, "SAME", 1, 1),
    ((9,), (2,), 3, "SAME", 1, 1),
    ((7,), (3,), 2, "VALID", 2, 1),
    ((6, 4), (3, 2), 2, "SAME", 1, 2),
    ((7, 6), (3, 3), (2, 3), ((1, 2), 0), (1, 2), 2),
]


@pytest.mark.parametrize("case", INPUT_GRADIENT_CASES, ids=str)
def test_conv_transpose_is_the_input_gradient_of_conv(rng, case):
    spatial, kernel_size, stride, padding, dilation, groups = case
    n, channels, features = len(spatial), 4, 2
    conv = Conv(features, kernel_size, stride, padding, dilation, groups, use_bias=False)
    x = random(rng, (1, *spatial, channels))
    params = random_params(rng, conv, x)
    y, vjp = jax.vjp(lambda x: conv.apply(params, x), x)
    cotangent = random(rng, y.shape)
    (expected,) = vjp(cotangent)
    kernel, stride_, dilation_ = (per_axis(v, n) for v in (kernel_size, stride, dilation))
    if padding == "SAME":
        extra = 0
    else:
        pairs = conv_pairs(padding, spatial, kernel, stride_, dilation_)
        extra = tuple(  # the input positions the strided Conv skipped at the end
            (size + lo + hi - d * (k - 1) - 1) % s
            for size, k, s, d, (lo, hi) in zip(
                spatial, kernel, stride_, dilation_, pairs, strict=True
            )
        )
    # [*k, in / G, G, out / G] -> [*k, out / G, G, in / G]: swap the channel roles.
    w = params["weight"].reshape(*kernel, channels // groups, groups, features // groups)
    w = w.transpose(*range(n), n + 2, n + 1, n).reshape(*kernel, features // groups, channels)
    transpose = ConvTranspose(
        channels, kernel_size, stride, padding, extra, dilation, groups, use_bias=False
    )
    out = transpose.apply({"weight": w}, cotangent)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- transforms


LAYERS = [
    pytest.param(Conv(4, (3, 3), stride=2, groups=2), (2, 5, 6, 4), id="conv2d"),
    pytest.param(Conv(2, 3, padding=((2, 0),), dilation=2), (2, 7, 3), id="conv1d"),
    pytest.param(ConvTranspose(3, (2, 3, 2), stride=2, padding=1), (2, 2, 3, 2, 2), id="convT3d"),
    pytest.param(
        ConvTranspose(2, (4, 4), stride=2, padding=1, output_padding=1), (2, 3, 3, 2), id="convT2d"
    ),
]


@pytest.mark.parametrize("layer, shape", [LAYERS[0], LAYERS[-1]])
def test_gradients(rng, layer, shape):
    x = random(rng, shape)
    params = random_params(rng, layer, x)
    # Jitted, as eager checks spend their time dispatching small ops. First order: the
    # layers are bilinear in (params, x), so second order only re-checks JAX's own rules.
    f = jax.jit(lambda p, x: jnp.tanh(layer.apply(p, x)).sum())
    check_gradients(f, (params, x))


@pytest.mark.parametrize("layer, shape", LAYERS)
def test_vmap_and_unbatched_equal_the_batched_call(rng, layer, shape):
    x = random(rng, shape)
    params = random_params(rng, layer, x)
    batched = layer.apply(params, x)
    np.testing.assert_allclose(
        jax.vmap(layer.apply, in_axes=(None, 0))(params, x), batched, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(layer.apply(params, x[0]), batched[0], rtol=1e-5, atol=1e-6)
    vmapped = jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))(params, x)
    np.testing.assert_allclose(vmapped, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [Conv, ConvTranspose])
def test_init_from_shape_dtype_struct(make):
    # Normal initializers: cheaper eagerly than the default truncated normal, same path.
    init = jnn.initializers.normal(1.0)
    layer = make(4, (3, 2), stride=2, groups=2, w_init=init, b_init=init)
    key, shape = jax.random.key(3), (2, 5, 4, 6)
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = layer.init(key, spec)
    assert jax.tree.map(jnp.shape, params) == {"weight": (3, 2, 3, 4), "bias": (4,)}
    chex.assert_trees_all_equal(params, layer.init(key, jnp.zeros(shape)))
    chex.assert_trees_all_equal_shapes(jax.eval_shape(layer.init, key, spec), params)
    assert not np.allclose(params["weight"][..., 0], params["weight"][..., 1])


def test_dtypes_promote_like_dense(rng):
    x = random(rng, (1, 5, 2))
    layer = Conv(3, 3)
    params = zero_params(layer, x)
    assert layer.apply(params, x.astype(jnp.bfloat16)).dtype == jnp.float32
    half = Conv(3, 3, param_dtype=jnp.bfloat16)
    params = zero_params(half, x)
    assert params["weight"].dtype == jnp.bfloat16
    assert half.apply(params, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_hyperparameters_are_normalised_and_hashable():
    layer = Conv(4, [3, 3], stride=[2, 1], padding="same")
    assert layer == Conv(4, (3, 3), stride=(2, 1), padding="SAME")
    assert Conv(4, np.array([3, 3]).tolist()) == Conv(4, (np.int64(3), np.int64(3)))
    assert hash(layer) == hash(Conv(4, (3, 3), stride=(2, 1), padding="SAME"))
    assert layer.spatial_ndim == 2 and Conv(4, 3).spatial_ndim == 1
    assert repr(Conv(4, (3, 3))) == "Conv(features=4, kernel_size=(3, 3))"


# --------------------------------------------------------------------------- initialization


def recorded_fan_ins(layer, shape):
    """The fan-ins ``layer.init`` hands its initializers, weight's then bias's."""
    seen = []

    def record(key, shape, dtype=jnp.float32, *, fan_in=None):
        seen.append(fan_in)
        return jnp.zeros(shape, dtype)

    jax.eval_shape(
        dataclasses.replace(layer, w_init=record, b_init=record).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    return seen


# (layer, input shape, the same layer in PyTorch as (class name, args))
FAN_IN_CASES = [
    (Conv(6, 3, groups=2), (1, 9, 4), ("Conv1d", (4, 6, 3), {"groups": 2})),
    (Conv(8, (3, 2)), (1, 6, 6, 3), ("Conv2d", (3, 8, (3, 2)), {})),
    (Conv(4, (2, 2, 3), groups=4), (1, 4, 4, 4, 8), ("Conv3d", (8, 4, (2, 2, 3)), {"groups": 4})),
    (ConvTranspose(6, 3, groups=2), (1, 5, 4), ("ConvTranspose1d", (4, 6, 3), {"groups": 2})),
    (ConvTranspose(5, (3, 2)), (1, 4, 4, 3), ("ConvTranspose2d", (3, 5, (3, 2)), {})),
]


@pytest.mark.parametrize("layer, shape, torch_layer", FAN_IN_CASES, ids=str)
def test_initializers_receive_pytorchs_fan_in(layer, shape, torch_layer):
    torch = pytest.importorskip("torch")
    name, args, kwargs = torch_layer
    module = getattr(torch.nn, name)(*args, **kwargs)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
    assert recorded_fan_ins(layer, shape) == [fan_in, fan_in]


@pytest.mark.parametrize("make", [Conv, ConvTranspose])
def test_pytorch_default_gives_torchs_bounds(make):
    init = jnn.initializers.pytorch_default()
    layer = make(64, (3, 3), groups=2, w_init=init, b_init=init)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 5, 5, 16)))
    # Conv: in_channels // groups * 9 = 72; ConvTranspose: features // groups * 9 = 288.
    bound = 1 / np.sqrt(72 if make is Conv else 288)
    for name in ("weight", "bias"):
        values = np.abs(np.asarray(params[name]))
        assert values.max() <= bound
        assert values.max() > 0.9 * bound  # uniform over the whole range, not narrower
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)  # a fixed draw: 64 biases need not reach 0.9 of the bound
    module = (torch.nn.Conv2d if make is Conv else torch.nn.ConvTranspose2d)(16, 64, 3, groups=2)
    for tensor in (module.weight, module.bias):
        assert 0.8 * bound < float(tensor.detach().abs().max()) <= bound


def test_default_initializer_is_unchanged():
    """LeCun normal, fan-in read from the weight's shape: prod(kernel) * in / groups."""
    layer = Conv(4, (3, 3), groups=2)
    params = layer.init(jax.random.key(1), jnp.zeros((1, 5, 5, 4)))
    expected = jnn.initializers.lecun_normal()(
        jnn.extend.child_key(jax.random.key(1), "weight"), (3, 3, 2, 4), jnp.float32
    )
    np.testing.assert_array_equal(params["weight"], expected)
    np.testing.assert_array_equal(params["bias"], np.zeros(4))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Conv(4, "3"), r"^Conv: kernel_size must be an int or a list or tuple of ints, "),
        (lambda: Conv(4, 3.0), r"^Conv: kernel_size must be an int or a list or tuple of ints"),
        (lambda: Conv(4, (3, 3.0)), r"^Conv: kernel_size must be .*got \(3, 3\.0\) \(tuple\)"),
        (lambda: Conv(4.0, 3), r"^Conv: features must be an int, got 4\.0 \(float\)\."),
        (lambda: Conv(True, 3), r"^Conv: features must be an int, got True \(bool\)\."),
        (lambda: Conv(4, 3, stride=1.5), r"^Conv: stride must be an int or a list or tuple"),
        (lambda: Conv(4, 3, groups=2.0), r"^Conv: groups must be an int, got 2\.0 \(float\)"),
        (lambda: Conv(4, 3, padding=None), r"^Conv: padding must be a string or an int or "),
        (
            lambda: Conv(4, (3, 3), padding=((1, 2, 3), 1)),
            r"^Conv: padding must be .*a tuple of 2 \(an int, an int\), got \(\(1, 2, 3\), 1\)",
        ),
        (lambda: Conv(4, 3, use_bias=1), r"^Conv: use_bias must be a bool, got 1 \(int\)\."),
        (lambda: Conv(4, 3, w_init="normal"), r"^Conv: w_init must be a function"),
        (
            lambda: Conv(4, 3, param_dtype=jnp.int32),
            r"^Conv: param_dtype must be a floating-point dtype such as jnp\.float32, "
            r"got int32\.",
        ),
        (lambda: Conv(4, 3, param_dtype=None), r"^Conv: param_dtype .*got None\."),
        (lambda: ConvTranspose(4, 3, output_padding=0.5), r"^ConvTranspose: output_padding must"),
    ],
)
def test_hyperparameter_type_errors(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_causal_padding_sees_only_the_past(rng):
    conv = Conv(3, 3, padding="causal", dilation=2)
    assert conv.padding == "CAUSAL"
    x = jnp.asarray(random(rng, (1, 10, 2)))
    params = random_params(rng, conv, x)
    jacobian = np.asarray(jax.jacrev(lambda v: conv.apply(params, v))(x[0]))  # [t,f,s,c]
    reach = np.abs(jacobian).sum((1, 3))  # how much output t depends on input s
    assert (np.triu(reach, 1) == 0).all()  # nothing from the future
    assert (np.diag(reach) > 0).all() and (reach[4:, :] > 0).sum(1).min() == 3  # 3 taps
    by_hand = Conv(3, 3, padding=((4, 0),), dilation=2)
    np.testing.assert_allclose(conv.apply(params, x), by_hand.apply(params, x), rtol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Conv(0, 3), r"Conv: features must be a positive int, got 0\."),
        (lambda: Conv(4, 0), r"Conv: kernel_size must be positive, got 0\."),
        (lambda: Conv(4, (3, -1)), r"Conv: kernel_size must be positive, got \(3, -1\)\."),
        (lambda: Conv(4, ()), r"Conv: kernel_size must be an int \(1-D\) or a tuple"),
        (lambda: Conv(4, (3, 3), stride=0), r"Conv: stride must be positive, got 0\."),
        (
            lambda: Conv(4, (3, 3), stride=(1, 2, 1)),
            r"Conv: stride must be an int or 2 ints \(one per spatial axis, as in kernel_size\), "
            r"got \(1, 2, 1\)\.",
        ),
        (lambda: Conv(4, (3, 3), dilation=(1, 0)), r"Conv: dilation must be positive"),
        (lambda: Conv(4, 3, dilation=(1, 1)), r"Conv: dilation must be an int or 1 ints"),
        (
            lambda: Conv(4, 3, padding="FULL"),
            r"Conv: padding must be 'SAME', 'VALID', 'CAUSAL' \(1-D\), an int, or one int or "
            r"\(low, high\) pair per spatial axis \(1\), got 'FULL'\.",
        ),
        (
            lambda: ConvTranspose(4, 3, padding="FULL"),
            r"ConvTranspose: padding must be 'SAME', 'VALID', an int, or one int or \(low, high\) "
            r"pair per spatial axis \(1\), got 'FULL'\.",
        ),
        (lambda: Conv(4, (3, 3), padding=((1, 1),)), r"pair per spatial axis \(2\), got"),
        (lambda: Conv(4, 3, padding=-1), r"Conv: padding must be non-negative, got -1\."),
        (
            lambda: Conv(4, (3, 3), padding="causal"),
            r"^Conv: padding='causal' is for 1-D convolutions over time \(Conv with one kernel "
            r"size\), got 2 spatial axes\. Hint: give \(low, high\) pairs per axis",
        ),
        (
            lambda: ConvTranspose(4, 3, padding="causal"),
            r"^ConvTranspose: padding='causal' is for Conv, not ConvTranspose\.$",
        ),
        (lambda: Conv(4, 3, padding=((0, -1),)), r"Conv: padding must be non-negative"),
        (lambda: Conv(4, 3, groups=0), r"Conv: groups must be a positive int, got 0\."),
        (lambda: Conv(6, 3, groups=4), r"Conv: features \(6\) must be divisible by groups \(4\)"),
        (lambda: ConvTranspose(0, 3), r"ConvTranspose: features must be a positive int"),
        (
            lambda: ConvTranspose(4, 3, stride=2, padding=0, output_padding=2),
            r"ConvTranspose: output_padding must be smaller than max\(stride, dilation\) on "
            r"every axis, got output_padding=2, stride=2, dilation=1\.",
        ),
        (
            lambda: ConvTranspose(4, 3, output_padding=-1),
            r"ConvTranspose: output_padding must be non-negative, got -1\.",
        ),
        (
            lambda: ConvTranspose(4, (3, 3), output_padding=(0, 0, 0)),
            r"ConvTranspose: output_padding must be an int or 2 ints",
        ),
        (
            lambda: ConvTranspose(4, 3, stride=2, output_padding=1),
            r"ConvTranspose: output_padding must be 0 with padding 'SAME'",
        ),
    ],
)
def test_hyperparameter_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_ints_are_ints():
    i = np.int64
    layer = Conv(i(4), (i(3), i(3)), stride=i(2), padding=((i(1), i(0)), i(1)), groups=i(2))
    assert layer == Conv(4, (3, 3), stride=2, padding=((1, 0), 1), groups=2)


def test_init_requires_the_batch_axis():
    key = jax.random.key(0)
    missing = (
        r"init expected a batched input of rank 4 \(\[batch, height, width, channels\]\), "
        r"got shape \(32, 28, 28\)\. Hint: if this is a batch without its channel axis "
        r"\(a grayscale batch, say\), add it: x\[\.\.\., None\]; if it is a single example, "
        r"add the batch axis: x\[None\]\."
    )
    for layer in (Conv(4, (3, 3)), ConvTranspose(4, (3, 3))):
        name = type(layer).__name__
        with pytest.raises(jnn.ShapeError, match=rf"^{name}: {missing}"):
            layer.init(key, jnp.zeros((32, 28, 28)))
        spec = jax.ShapeDtypeStruct((32, 28, 28), jnp.float32)
        with pytest.raises(jnn.ShapeError, match=rf"^{name}: {missing}"):
            jax.eval_shape(layer.init, key, spec)
    model = jnn.Sequential([jnn.Conv(4, (3, 3)), jnn.relu])
    with pytest.raises(jnn.ShapeError, match=rf"^Conv at 'conv_0': {missing}"):
        model.init(key, jnp.zeros((32, 28, 28)))
    # apply takes an unbatched example; the channels set at init catch the mistake there.
    params = zero_params(model, jnp.zeros((32, 28, 28, 1)))
    assert model.apply(params, jnp.zeros((28, 28, 1))).shape == (28, 28, 4)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Conv at 'conv_0': expected input with 1 channels \(set at init\), got shape "
        r"\(32, 28, 28\)\. Hint: read as one unbatched example with 28 channels; if this is "
        r"a batch without its channel axis, add it: x\[\.\.\., None\]\.$",
    ):
        model.apply(params, jnp.zeros((32, 28, 28)))


def test_input_errors():
    key = jax.random.key(0)
    conv = Conv(4, (3, 3))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Conv: expected input of rank 4 \(\[batch, height, width, channels\]\), got "
        r"shape \(28, 28\)\. Hint: add the batch and channel axes, e\.g\. x\[None, \.\.\., "
        r"None\]\.$",
    ):
        conv.init(key, jnp.zeros((28, 28)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"rank 3 \(\[batch, length, channels\]\), got shape \(8, 28, 28, 3\)\. Hint: "
        r"the number of spatial axes is len\(kernel_size\); for 2-D inputs give 2 sizes, "
        r"e\.g\. kernel_size=\(3, 3\)\.",
    ):
        Conv(4, 3).init(key, jnp.zeros((8, 28, 28, 3)))
    with pytest.raises(
        jnn.ShapeError, match=r"Conv: expected input of rank 5 \(\[batch, depth, height, width"
    ):
        Conv(4, (3, 3, 3)).init(key, jnp.zeros((2, 5, 5, 5, 5, 1)))
    with pytest.raises(
        jnn.DTypeError, match=r"Conv: expected a floating-point input, got dtype int32"
    ):
        conv.init(key, jnp.zeros((1, 5, 5, 3), jnp.int32))
    with pytest.raises(
        jnn.ShapeError,
        match=r"Conv: expected input channels divisible by groups=2, got shape \(1, 5, 5, 3\)\.",
    ):
        Conv(4, (3, 3), groups=2).init(key, jnp.zeros((1, 5, 5, 3)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^ConvTranspose: expected non-empty spatial axes \(\[\.\.\., height, width, "
        r"channels\]\), got shape \(1, 0, 5, 3\)\.$",
    ):
        ConvTranspose(4, (3, 3)).init(key, jnp.zeros((1, 0, 5, 3)))

    params = zero_params(conv, jnp.zeros((8, 28, 28, 3)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Conv: expected input with 3 channels \(set at init\), "
        r"got shape \(8, 28, 28, 4\)\.$",
    ):
        conv.apply(params, jnp.zeros((8, 28, 28, 4)))
    with pytest.raises(jnn.DTypeError, match=r"Conv: expected a floating-point input"):
        conv.apply(params, jnp.zeros((8, 28, 28, 3), jnp.int32))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Conv: expected input of rank 4 \(\[batch, height, width, channels\]\) or 3 "
        r"\(unbatched\), got shape \(28, 28\)\. Hint: add a channel axis, e\.g\. x\[\.\.\., "
        r"None\]\.$",
    ):
        conv.apply(params, jnp.zeros((28, 28)))

    small = r"expected spatial size at least \(3, 3\) \(the dilated kernel\) after padding "
    valid = Conv(4, (3, 3), padding="VALID")
    with pytest.raises(
        jnn.ShapeError, match=rf"^Conv: {small}'VALID', got shape \(1, 2, 5, 1\)\.$"
    ):
        valid.init(key, jnp.zeros((1, 2, 5, 1)))
    params = zero_params(valid, jnp.zeros((1, 5, 5, 1)))
    with pytest.raises(jnn.ShapeError, match=rf"^Conv: {small}'VALID', got shape \(5, 2, 1\)\.$"):
        valid.apply(params, jnp.zeros((5, 2, 1)))  # unbatched: its own shape is named
    dilated = Conv(4, 3, padding=1, dilation=3)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Conv: expected spatial size at least \(7,\) \(the dilated kernel\) after "
        r"padding 1, got shape \(2, 4, 1\) \(padded to \(6,\)\)\.$",
    ):
        dilated.init(key, jnp.zeros((2, 4, 1)))

    up = ConvTranspose(2, 1, padding=1)
    with pytest.raises(
        jnn.ShapeError, match=r"^ConvTranspose: padding 1 crops the whole output \(size \(0,\)\)"
    ):
        up.init(key, jnp.zeros((1, 2, 1)))
    params = zero_params(ConvTranspose(2, (2, 2)), jnp.zeros((1, 3, 3, 5)))
    with pytest.raises(
        jnn.ShapeError, match=r"^ConvTranspose: expected input with 5 channels \(set at init\)"
    ):
        ConvTranspose(2, (2, 2)).apply(params, jnp.zeros((3, 3, 6)))


def test_errors_name_the_path_in_sequential():
    model = jnn.Sequential([Conv(4, (3, 3)), jnn.relu, ConvTranspose(2, (2, 2), stride=2)])
    params = zero_params(model, jnp.zeros((2, 8, 8, 3)))
    assert sorted(params) == ["conv_0", "conv_transpose_0"]
    assert model.apply(params, jnp.zeros((2, 8, 8, 3))).shape == (2, 16, 16, 2)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Conv at 'conv_0': expected input with 3 channels \(set at init\), "
        r"got shape \(2, 8, 8, 4\)\.$",
    ):
        model.apply(params, jnp.zeros((2, 8, 8, 4)))
