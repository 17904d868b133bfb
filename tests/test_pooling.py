"""MaxPool and AvgPool: NumPy loop references, both pooling paths, gradients, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn
from jnn import AvgPool, Flatten, GlobalAvgPool, GlobalMaxPool, MaxPool, Reshape
from jnn._pooling import _avg_pool, _max_pool


def same_pads(spatial, window, stride):
    """TensorFlow's SAME padding: output ceil(in / stride), the odd one on the high side."""
    pads = []
    for size, k, s in zip(spatial, window, stride, strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def numpy_pool(x, kind, window, stride, pads, count_include_pad=True):
    """Loops over output positions and window taps of an explicitly padded copy of x."""
    x = np.asarray(x, np.float64)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    fill = -np.inf if kind == "max" else 0.0
    padded = np.full(
        (batch, *(n + lo + hi for n, (lo, hi) in zip(spatial, pads, strict=True)), channels), fill
    )
    inside = np.zeros(padded.shape[1:-1], bool)
    region = tuple(slice(lo, lo + n) for n, (lo, _) in zip(spatial, pads, strict=True))
    padded[(slice(None), *region)] = x
    inside[region] = True
    out = [(p - k) // s + 1 for p, k, s in zip(padded.shape[1:-1], window, stride, strict=True)]
    y = np.zeros((batch, *out, channels))
    for o in itertools.product(*map(range, out)):
        taps = [
            tuple(oi * s + ti for oi, s, ti in zip(o, stride, t, strict=True))
            for t in itertools.product(*map(range, window))
        ]
        values = np.stack([padded[(slice(None), *t)] for t in taps])  # [taps, batch, channels]
        if kind == "max":
            y[(slice(None), *o)] = values.max(0)
        else:
            count = len(taps) if count_include_pad else sum(inside[t] for t in taps)
            y[(slice(None), *o)] = values.sum(0) / count
    return y


# (window, stride, padding, input shape): 1-D, 2-D and 3-D; odd sizes, stride > 1,
# overlapping windows (stride < window), stride > window, every padding mode.
CASES = [
    (3, None, "VALID", (2, 7, 3)),
    (2, 1, "SAME", (2, 5, 2)),
    (3, 2, "SAME", (1, 8, 2)),
    (3, 2, 1, (2, 7, 1)),
    (2, 3, "VALID", (1, 8, 2)),
    ((2, 2), None, "VALID", (2, 4, 6, 3)),
    ((2, 2), None, "VALID", (2, 5, 7, 2)),
    ((3, 2), (1, 2), "VALID", (1, 5, 6, 2)),
    ((3, 3), 2, "SAME", (2, 5, 6, 1)),
    ((2, 2), None, "SAME", (1, 5, 5, 2)),
    ((3, 3), 1, 1, (1, 4, 5, 2)),
    ((3, 2), (2, 1), ((2, 0), (0, 1)), (1, 5, 4, 2)),
    ((3, 3), (2, 1), (1, 0), (2, 5, 4, 1)),
    ((2, 2, 2), None, "VALID", (1, 4, 5, 3, 2)),
    ((2, 3, 2), (1, 2, 2), "SAME", (1, 3, 5, 4, 1)),
    ((3, 2, 2), 2, ((1, 1), (1, 0), 0), (1, 5, 4, 3, 2)),
]


def case_pads(window, stride, padding, shape):
    n = 1 if isinstance(window, int) else len(window)
    window = (window,) * n if isinstance(window, int) else window
    stride = window if stride is None else stride
    stride = (stride,) * n if isinstance(stride, int) else stride
    spatial = shape[1:-1]
    if padding == "VALID":
        pads = [(0, 0)] * n
    elif padding == "SAME":
        pads = same_pads(spatial, window, stride)
    elif isinstance(padding, int):
        pads = [(padding, padding)] * n
    else:
        pads = [(p, p) if isinstance(p, int) else p for p in padding]
    return window, stride, pads


@pytest.mark.parametrize("window, stride, padding, shape", CASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_max_pool_matches_numpy_loops(rng, window, stride, padding, shape, transform):
    x = rng.standard_normal(shape).astype(np.float32)
    expected = numpy_pool(x, "max", *case_pads(window, stride, padding, shape))
    layer = MaxPool(window, stride, padding)
    y = transform(layer.apply)({}, x)
    assert y.shape == expected.shape
    np.testing.assert_array_equal(y, expected.astype(np.float32))


@pytest.mark.parametrize("window, stride, padding, shape", CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_numpy_loops(rng, window, stride, padding, shape, count_include_pad):
    x = rng.standard_normal(shape).astype(np.float32)
    # SAME averages over the input elements only, whatever count_include_pad says.
    include = count_include_pad and padding != "SAME"
    expected = numpy_pool(x, "avg", *case_pads(window, stride, padding, shape), include)
    layer = AvgPool(window, stride, padding, count_include_pad=count_include_pad)
    y = jax.jit(layer.apply)({}, x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "window, shape",
    [((2,), (2, 6, 3)), ((3,), (1, 8, 2)), ((2, 2), (2, 4, 6, 3)), ((2, 3), (1, 5, 7, 2)),
     ((2, 2, 2), (1, 4, 5, 3, 2))],
)  # fmt: skip
def test_both_paths_agree_where_windows_tile(rng, window, shape):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    args = (window, window, ((0, 0),) * len(window))
    reference = numpy_pool(x, "max", *args)
    fast, general = _max_pool(x, *args, use_tiles=True), _max_pool(x, *args, use_tiles=False)
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_array_equal(fast, reference.astype(np.float32))
    fast, general = _avg_pool(x, *args, use_tiles=True), _avg_pool(x, *args, use_tiles=False)
    np.testing.assert_allclose(fast, general, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fast, numpy_pool(x, "avg", *args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layer, tiles",
    [
        (MaxPool((2, 2)), True),
        (MaxPool((2, 2), padding="SAME"), True),  # 4 x 6 needs no SAME padding
        (MaxPool((2, 2), padding=0), True),
        (MaxPool((3, 3)), True),  # crops the remainder
        (AvgPool((2, 2)), True),
        (MaxPool((3, 3), padding="SAME"), False),
        (MaxPool((2, 2), stride=1), False),
        (AvgPool((2, 2), padding=1), False),
    ],
)
def test_layer_picks_the_reshape_path_exactly_when_windows_tile(layer, tiles):
    jaxpr = str(jax.make_jaxpr(layer.apply)({}, jnp.zeros((2, 4, 6, 3))))
    assert ("reduce_window" not in jaxpr) == tiles


def test_max_gradient_with_ties_is_documented():
    x = jnp.array([[1.0, 3.0, 3.0, 2.0], [3.0, 0.0, 1.0, 1.0]]).reshape(1, 2, 4, 1)
    args = ((2, 2), (2, 2), ((0, 0), (0, 0)))
    # The reshaped form splits a window's gradient among its tied maxima ...
    grad = jax.grad(lambda x: _max_pool(x, *args, use_tiles=True).sum())(x)
    np.testing.assert_array_equal(grad[0, ..., 0], [[0, 0.5, 1, 0], [0.5, 0, 0, 0]])
    # ... and reduce_window gives it all to one of them.
    grad = jax.grad(lambda x: _max_pool(x, *args, use_tiles=False).sum())(x)
    np.testing.assert_array_equal(grad[0, ..., 0].sum(), 2.0)
    assert set(np.asarray(grad).ravel().tolist()) == {0.0, 1.0}


def distinct(rng, shape):
    """Values spaced 1 / size apart, so no window holds a tie within eps = 1e-3."""
    size = math.prod(shape)
    return jnp.asarray(rng.permutation(size).reshape(shape) / size, jnp.float32)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (MaxPool((2, 2)), (2, 4, 6, 2)),  # reshape path
        (MaxPool((3, 3), stride=2, padding="SAME"), (1, 5, 6, 2)),  # reduce_window path
        (AvgPool((2, 2)), (2, 4, 6, 2)),
        (AvgPool((3, 2), stride=(2, 1), padding=1, count_include_pad=False), (1, 5, 4, 2)),
        (AvgPool((2, 2, 2), padding="SAME"), (1, 3, 3, 3, 1)),
    ],
)
def test_gradients(rng, layer, shape):
    x = distinct(rng, shape)
    out = jax.eval_shape(layer.apply, {}, x)
    weights = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    check_gradients(jax.jit(lambda x: jnp.vdot(layer.apply({}, x), weights)), (x,))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (MaxPool(2), (3, 6, 2)),
        (AvgPool((2, 2), padding=1, count_include_pad=False), (3, 4, 5, 2)),
        (AvgPool((2, 2, 2)), (3, 4, 4, 4, 1)),
    ],
)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_unbatched_and_vmap_equal_the_batched_call(rng, layer, shape, transform):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    batched = transform(layer.apply)({}, x)
    np.testing.assert_array_equal(transform(layer.apply)({}, x[1]), batched[1])
    vmapped = jax.vmap(transform(layer.apply), in_axes=(None, 0))({}, x)
    np.testing.assert_allclose(vmapped, batched, rtol=1e-6)


def test_layers_inside_sequential_have_no_params(rng):
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    key = jax.random.key(0)
    layers = [
        MaxPool((2, 2)),
        AvgPool((3, 3), stride=1, padding="SAME"),
        GlobalMaxPool(keepdims=True),
        Flatten(),
        Reshape((3, 1)),
        GlobalAvgPool(),
    ]
    model = jnn.Sequential(layers)
    assert model.names == (
        "max_pool_0", "avg_pool_0", "global_max_pool_0", "flatten_0", "reshape_0",
        "global_avg_pool_0",
    )  # fmt: skip
    assert model.init(key, x) == {}
    by_hand = x
    for layer in layers:
        by_hand = layer.apply({}, by_hand)
    np.testing.assert_array_equal(jax.jit(model.apply)({}, x), by_hand)
    assert by_hand.shape == (2, 1)


def test_lenet_style_model_shapes():
    model = jnn.Sequential(
        [jnn.Conv(4, (3, 3)), jnn.relu, MaxPool((2, 2)), Flatten(), jnn.Dense(10)]
    )
    x = jax.ShapeDtypeStruct((2, 12, 12, 1), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    assert sorted(params) == ["conv_0", "dense_0"]
    assert params["dense_0"]["weight"].shape == (6 * 6 * 4, 10)
    assert jax.eval_shape(model.apply, params, x).shape == (2, 10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MaxPool("2"), r"^MaxPool: window must be an int or a list or tuple of ints, "),
        (lambda: MaxPool(2.0), r"^MaxPool: window must be an int or a list or tuple of ints"),
        (lambda: MaxPool((2, 2), stride=1.0), r"^MaxPool: stride must be an int or a list or "),
        (lambda: MaxPool(2, padding=None), r"^MaxPool: padding must be a string or an int or "),
        (
            lambda: AvgPool(2, count_include_pad=1),
            r"^AvgPool: count_include_pad must be a bool, got 1 \(int\)\.",
        ),
    ],
)
def test_hyperparameter_type_errors(make, match):
    with pytest.raises(TypeError, match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MaxPool(0), r"^MaxPool: window must be positive, got 0\."),
        (lambda: MaxPool((2, -2)), r"^MaxPool: window must be positive, got \(2, -2\)\."),
        (lambda: MaxPool(()), r"^MaxPool: window must be an int \(1-D\) or a tuple with one"),
        (
            lambda: MaxPool((2, 2), stride=(1,)),
            r"^MaxPool: stride must be an int or 2 ints \(one per spatial axis, as in "
            r"window\), got \(1,\)\.",
        ),
        (lambda: AvgPool((2, 2), stride=0), r"^AvgPool: stride must be positive, got 0\."),
        (
            lambda: MaxPool((2, 2), padding="FULL"),
            r"^MaxPool: padding must be 'SAME', 'VALID', an int, or one int or \(low, high\) "
            r"pair per spatial axis \(2\), got 'FULL'\.",
        ),
        (lambda: MaxPool((2, 2), padding=(1, 2, 3)), r"^MaxPool: padding must be 'SAME', 'VALID'"),
        (lambda: MaxPool(2, padding=-1), r"^MaxPool: padding must be non-negative, got -1\."),
        (
            lambda: MaxPool((3, 2), padding=((1, 1), (0, 2))),
            r"^MaxPool: padding must be smaller than the window on every axis, so that every "
            r"window overlaps the input; got padding=\(\(1, 1\), \(0, 2\)\), window=\(3, 2\)\.",
        ),
    ],
)
def test_hyperparameter_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_ints_and_lowercase_padding_are_accepted():
    i = np.int64
    assert MaxPool([i(2), i(2)], stride=i(1), padding="same") == MaxPool((2, 2), 1, "SAME")
    assert AvgPool(i(3), padding=[(i(1), i(0))]) == AvgPool(3, padding=((1, 0),))


@pytest.mark.parametrize("layer", [MaxPool((2, 2)), AvgPool((2, 2), padding="SAME")], ids=str)
def test_init_requires_the_batch_axis_and_apply_takes_one_example(rng, layer):
    name = type(layer).__name__
    with pytest.raises(
        jnn.ShapeError,
        match=rf"^{name}: init expected a batched input of rank 4 \(\[batch, height, width, "
        r"channels\]\), got shape \(32, 28, 28\)\. Hint: if this is a batch without its "
        r"channel axis \(a grayscale batch, say\), add it: x\[\.\.\., None\]; if it is a "
        r"single example, add the batch axis: x\[None\]\.",
    ):
        layer.init(jax.random.key(0), jnp.zeros((32, 28, 28)))
    assert layer.init(jax.random.key(0), jnp.zeros((32, 28, 28, 1))) == {}
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
    np.testing.assert_array_equal(layer.apply({}, x[0]), layer.apply({}, x)[0])
    vmapped = jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))({}, x)
    np.testing.assert_allclose(vmapped, layer.apply({}, x), rtol=1e-6)


def test_input_errors():
    key = jax.random.key(0)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^MaxPool: expected input of rank 4 \(\[batch, height, width, channels\]\) or 3 "
        r"\(unbatched\), got shape \(28, 28\)\. Hint: add a channel axis, e\.g\. x\[\.\.\., None\]\.",
    ):
        MaxPool((2, 2)).apply({}, jnp.zeros((28, 28)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^MaxPool: expected input of rank 4 \(\[batch, height, width, channels\]\), got "
        r"shape \(28, 28\)\. Hint: add the batch and channel axes, e\.g\. x\[None, \.\.\., None\]\.",
    ):
        MaxPool((2, 2)).init(key, jnp.zeros((28, 28)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^MaxPool: expected input of rank 3 \(\[batch, length, channels\]\) or 2 "
        r"\(unbatched\), got shape \(8, 28, 28, 3\)\. Hint: the number of spatial axes is "
        r"len\(window\); for 2-D inputs give 2 sizes, e\.g\. window=\(2, 2\)\.",
    ):
        MaxPool(2).apply({}, jnp.zeros((8, 28, 28, 3)))
    with pytest.raises(
        jnn.ShapeError, match=r"^AvgPool: expected input of rank 5 \(\[batch, depth, height, width"
    ):
        AvgPool((2, 2, 2)).apply({}, jnp.zeros((2, 4, 4, 4, 4, 1)))
    for x in (jnp.zeros((1, 4, 4, 1), jnp.int32), jnp.zeros((1, 4, 4, 1), bool)):
        with pytest.raises(
            jnn.DTypeError, match=r"^AvgPool: expected a floating-point input, got dtype"
        ):
            AvgPool((2, 2)).apply({}, x)
        with pytest.raises(jnn.DTypeError, match=r"^MaxPool: expected a floating-point input"):
            MaxPool((2, 2)).init(key, x)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^MaxPool: expected spatial size at least \(3, 3\) \(the window\) after padding "
        r"'VALID', got shape \(1, 2, 5, 1\)\.$",
    ):
        MaxPool((3, 3)).apply({}, jnp.zeros((1, 2, 5, 1)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^AvgPool: expected spatial size at least \(4,\) \(the window\) after padding "
        r"\(\(1, 0\),\), got shape \(2, 1\) \(padded to \(3,\)\)\.$",
    ):
        AvgPool(4, padding=((1, 0),)).apply({}, jnp.zeros((2, 1)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^MaxPool: expected non-empty spatial axes \(\[\.\.\., length, channels\]\), "
        r"got shape \(2, 0, 3\)\.$",
    ):
        MaxPool(2, padding="SAME").init(key, jnp.zeros((2, 0, 3)))


def test_errors_name_the_path_in_sequential():
    model = jnn.Sequential([MaxPool((2, 2)), jnn.Flatten(), jnn.Reshape((4, 4))])
    small = r"expected spatial size at least \(2, 2\) \(the window\) after padding 'VALID'"
    with pytest.raises(jnn.ShapeError, match=rf"^MaxPool at 'max_pool_0': {small}"):
        model.init(jax.random.key(0), jnp.zeros((2, 1, 8, 1)))
    with pytest.raises(jnn.ShapeError, match=rf"^MaxPool at 'max_pool_0': {small}"):
        model.apply({}, jnp.zeros((2, 8, 1, 1)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Reshape at 'reshape_0': expected examples of 16 elements to reshape to "
        r"\(4, 4\), got shape \(2, 8\) \(8 elements per example\)\.",
    ):
        model.apply({}, jnp.zeros((2, 4, 8, 1)))
    assert model.apply({}, jnp.zeros((2, 8, 8, 1))).shape == (2, 4, 4)
