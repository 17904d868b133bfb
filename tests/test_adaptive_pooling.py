"""Adaptive and global pools: PyTorch (float64) and NumPy loop references, gradients,
jit and vmap, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn
from jnn import AdaptiveAvgPool, AdaptiveMaxPool, GlobalAvgPool, GlobalMaxPool


@pytest.fixture
def float64():
    """JAX's 64-bit mode for one test; the previous setting comes back afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def numpy_adaptive_pool(x, output_size, kind):
    """Loops over output positions; bin i of an axis n -> m is [floor(i n / m), ceil((i + 1) n / m))."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    sizes = (output_size,) if isinstance(output_size, int) else output_size
    out = [n if m is None else m for n, m in zip(spatial, sizes, strict=True)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for o in itertools.product(*map(range, out)):
        region = tuple(
            slice(math.floor(i * n / m), math.ceil((i + 1) * n / m))
            for i, n, m in zip(o, spatial, out, strict=True)
        )
        block = x[(slice(None), *region, slice(None))]
        axes = tuple(range(1, block.ndim - 1))
        y[(slice(None), *o)] = block.max(axes) if kind == "max" else block.mean(axes)
    return y


def distinct(rng, shape, dtype=np.float32):
    """Values spaced 1 / size apart, so no bin holds a tie."""
    size = math.prod(shape)
    return (rng.permutation(size).reshape(shape) / size).astype(dtype)


# (output_size, input shape): uneven bins (some overlapping), divisible bins, identity,
# upsampling (output larger than the input, divisible or not), None keeping an axis, and
# more bins than max pooling takes one slice each for.
CASES = [
    (3, (2, 5, 3)),
    (4, (1, 10, 2)),
    (2, (2, 6, 2)),
    (5, (1, 5, 2)),
    (7, (2, 3, 2)),
    (6, (1, 3, 1)),
    (40, (1, 50, 2)),  # more bins than max pooling slices: one gather
    (45, (1, 20, 1)),
    ((3, 4), (2, 7, 9, 2)),
    ((7, None), (1, 10, 5, 2)),
    ((2, 2), (2, 4, 6, 3)),
    ((5, 3), (1, 3, 2, 2)),
    ((1, 1), (2, 5, 4, 2)),
    ((2, 3, 2), (1, 5, 4, 3, 2)),
    ((3, None, 4), (1, 2, 3, 5, 1)),
]
KINDS = [("avg", AdaptiveAvgPool), ("max", AdaptiveMaxPool)]


@pytest.mark.parametrize("kind, make", KINDS, ids=["avg", "max"])
@pytest.mark.parametrize("output_size, shape", CASES, ids=str)
def test_matches_torch_in_float64(float64, rng, kind, make, output_size, shape):
    torch = pytest.importorskip("torch")
    n = len(shape) - 2
    module = getattr(torch.nn, f"Adaptive{kind.capitalize()}Pool{n}d")(output_size)
    x = distinct(rng, shape, np.float64)
    cotangent = rng.standard_normal(jax.eval_shape(make(output_size).apply, {}, x).shape)
    # PyTorch is channels first: move jnn's last axis to 1 and back.
    x_torch = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
    y_torch = module(x_torch)
    (y_torch * torch.tensor(np.moveaxis(cotangent, -1, 1))).sum().backward()
    y, vjp = jax.vjp(lambda x: make(output_size).apply({}, x), jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(cotangent))
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y, np.moveaxis(y_torch.detach().numpy(), 1, -1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, np.moveaxis(x_torch.grad.numpy(), 1, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("kind, make", KINDS, ids=["avg", "max"])
@pytest.mark.parametrize("output_size, shape", CASES, ids=str)
def test_matches_numpy_loops(rng, kind, make, output_size, shape, transform):
    x = rng.standard_normal(shape).astype(np.float32)
    expected = numpy_adaptive_pool(x, output_size, kind)
    layer = make(output_size)
    y = transform(layer.apply)({}, x)
    assert y.shape == expected.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    assert jax.eval_shape(layer.init, jax.random.key(0), x) == {}


@pytest.mark.parametrize(
    "layer, shape",
    [
        (AdaptiveAvgPool((3, 4)), (1, 7, 9, 2)),  # uneven
        (AdaptiveMaxPool((3, 4)), (1, 7, 9, 2)),
        (AdaptiveAvgPool(7), (2, 3, 2)),  # upsampling
        (AdaptiveMaxPool((2, None)), (2, 4, 3, 2)),  # divisible
    ],
    ids=str,
)
def test_gradients(rng, layer, shape):
    x = jnp.asarray(distinct(rng, shape))
    weights = jnp.asarray(rng.standard_normal(jax.eval_shape(layer.apply, {}, x).shape))
    check_gradients(jax.jit(lambda x: jnp.vdot(layer.apply({}, x), weights)), (x,))


def test_half_precision_averages_in_float32():
    x = jnp.full((1, 300, 1), 1.0 + 2.0**-7, jnp.bfloat16)  # sums in bf16 would round
    y = AdaptiveAvgPool(7).apply({}, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.float32(1.0 + 2.0**-7))


@pytest.mark.parametrize("make", [AdaptiveAvgPool, AdaptiveMaxPool])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_unbatched_and_vmap_equal_the_batched_call(rng, make, transform):
    layer = make((3, None))
    x = jnp.asarray(rng.standard_normal((3, 7, 4, 2)), jnp.float32)
    batched = transform(layer.apply)({}, x)
    np.testing.assert_array_equal(transform(layer.apply)({}, x[1]), batched[1])
    vmapped = transform(jax.vmap(layer.apply, in_axes=(None, 0)))({}, x)
    np.testing.assert_allclose(vmapped, batched, rtol=1e-6)


def test_in_a_model_with_global_pools(rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 7, 3)), jnp.float32)
    model = jnn.Sequential([jnn.Conv(4, (3, 3)), AdaptiveAvgPool((2, 2)), jnn.Flatten()])
    params = model.init(jax.random.key(0), x)
    assert jax.jit(model.apply)(params, x).shape == (2, 16)
    np.testing.assert_allclose(
        AdaptiveAvgPool((1, 1)).apply({}, x)[:, 0, 0], GlobalAvgPool().apply({}, x), rtol=1e-6
    )
    np.testing.assert_array_equal(
        AdaptiveMaxPool((1, 1)).apply({}, x)[:, 0, 0], GlobalMaxPool().apply({}, x)
    )


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: AdaptiveAvgPool("7"),
            TypeError,
            r"^AdaptiveAvgPool: output_size must be an int or a list or tuple of items that are "
            r"each an int or None, got '7' \(str\)\.",
        ),
        (lambda: AdaptiveMaxPool(7.0), TypeError, r"^AdaptiveMaxPool: output_size must be an int"),
        (lambda: AdaptiveMaxPool(None), TypeError, r"^AdaptiveMaxPool: output_size must be an"),
        (lambda: AdaptiveAvgPool((7, 7.0)), TypeError, r"^AdaptiveAvgPool: output_size must be"),
        (
            lambda: AdaptiveAvgPool(0),
            ValueError,
            r"^AdaptiveAvgPool: output_size must be positive on every axis, got 0\.",
        ),
        (
            lambda: AdaptiveMaxPool((7, -1)),
            ValueError,
            r"^AdaptiveMaxPool: output_size must be positive on every axis, got \(7, -1\)\.",
        ),
        (
            lambda: AdaptiveAvgPool(()),
            ValueError,
            r"^AdaptiveAvgPool: output_size must be an int \(1-D\) or a tuple with one int \(or "
            r"None to keep the input's size\) per spatial axis, got \(\)\.",
        ),
        (lambda: GlobalAvgPool(keepdims=None), TypeError, r"^GlobalAvgPool: keepdims must be a"),
        (lambda: GlobalMaxPool(keepdims=1), TypeError, r"^GlobalMaxPool: keepdims must be a bool"),
    ],
)
def test_hyperparameter_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_hyperparameters_are_normalised():
    assert AdaptiveAvgPool([np.int64(7), None]) == AdaptiveAvgPool((7, None))
    assert hash(AdaptiveMaxPool([2, 2])) == hash(AdaptiveMaxPool((2, 2)))
    assert AdaptiveAvgPool((7, 7)).spatial_ndim == 2 and AdaptiveAvgPool(7).spatial_ndim == 1


def test_input_errors():
    key = jax.random.key(0)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^AdaptiveAvgPool: init expected a batched input of rank 4 \(\[batch, height, "
        r"width, channels\]\), got shape \(32, 28, 28\)\. Hint: if this is a batch without its "
        r"channel axis \(a grayscale batch, say\), add it: x\[\.\.\., None\]; if it is a single "
        r"example, add the batch axis: x\[None\]\.",
    ):
        AdaptiveAvgPool((7, 7)).init(key, jnp.zeros((32, 28, 28)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^AdaptiveMaxPool: expected input of rank 3 \(\[batch, length, channels\]\) or 2 "
        r"\(unbatched\), got shape \(8, 28, 28, 3\)\. Hint: the number of spatial axes is "
        r"len\(output_size\); for 2-D inputs give 2 sizes, e\.g\. output_size=\(7, 7\)\.",
    ):
        AdaptiveMaxPool(7).apply({}, jnp.zeros((8, 28, 28, 3)))
    with pytest.raises(
        jnn.DTypeError, match=r"^AdaptiveAvgPool: expected a floating-point input, got dtype int32"
    ):
        AdaptiveAvgPool((2, 2)).apply({}, jnp.zeros((1, 4, 4, 1), jnp.int32))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^AdaptiveMaxPool: expected non-empty spatial axes \(\[\.\.\., height, width, "
        r"channels\]\), got shape \(2, 0, 4, 1\)\.$",
    ):
        AdaptiveMaxPool((2, 2)).init(key, jnp.zeros((2, 0, 4, 1)))
    model = jnn.Sequential([AdaptiveAvgPool((2, 2))])
    with pytest.raises(jnn.ShapeError, match=r"^AdaptiveAvgPool at 'adaptive_avg_pool_0': init"):
        model.init(key, jnp.zeros((32, 28, 28)))


# --------------------------------------------------------------------------- global pools


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 3, 4, 3), (2, 2, 3, 4, 3)])
def test_global_pools_match_numpy(rng, shape, transform):
    x = rng.standard_normal(shape).astype(np.float32)
    axes = tuple(range(1, len(shape) - 1))
    for keepdims in (False, True):
        y = transform(GlobalMaxPool(keepdims).apply)({}, x)
        np.testing.assert_array_equal(y, x.max(axes, keepdims=keepdims))
        y = transform(GlobalAvgPool(keepdims=keepdims).apply)({}, x)
        np.testing.assert_allclose(y, x.mean(axes, keepdims=keepdims), rtol=1e-5, atol=1e-6)
    assert GlobalAvgPool().apply({}, x).shape == (2, 3)


def test_global_pool_gradients(rng):
    x = jnp.asarray(distinct(rng, (2, 3, 4, 2)))
    weights = jnp.asarray(rng.standard_normal((2, 2)), jnp.float32)
    for layer in (GlobalMaxPool(), GlobalAvgPool()):
        check_gradients(jax.jit(lambda x, layer=layer: jnp.vdot(layer.apply({}, x), weights)), (x,))


def test_global_pool_input_errors():
    with pytest.raises(
        jnn.ShapeError,
        match=r"^GlobalMaxPool: expected input of rank at least 3 \(\[batch, \*spatial, "
        r"channels\]\), got shape \(4, 3\)\. Hint: an unbatched example needs a batch axis",
    ):
        GlobalMaxPool().init(jax.random.key(0), jnp.zeros((4, 3)))
    with pytest.raises(jnn.DTypeError, match=r"^GlobalAvgPool: expected a floating-point input"):
        GlobalAvgPool().apply({}, jnp.zeros((2, 3, 3, 1), jnp.int32))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^GlobalMaxPool: expected non-empty spatial axes, got shape \(2, 0, 3\)\.$",
    ):
        GlobalMaxPool().apply({}, jnp.zeros((2, 0, 3)))
