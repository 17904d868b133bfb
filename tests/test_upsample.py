"""Upsample: nearest and linear upsampling against direct NumPy computations, gradients,
jit and vmap, half precision, and errors (PyTorch parity: test_torch_parity.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

import jnn
from jnn import Upsample


def numpy_upsample(x, factors, method):
    """Direct computation per output element: ``x`` is ``[batch, *spatial, channels]``."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    out = tuple(n * f for n, f in zip(spatial, factors, strict=True))
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for j in itertools.product(*map(range, out)):
        if method == "nearest":
            y[(slice(None), *j)] = x[
                (slice(None), *(a // f for a, f in zip(j, factors, strict=True)))
            ]
            continue
        # linear: position (j + 1/2) / f - 1/2, clamped; a product of 1-D weights
        taps = []
        for a, f, n in zip(j, factors, spatial, strict=True):
            p = min(max((a + 0.5) / f - 0.5, 0.0), n - 1)
            lo = int(np.floor(p))
            hi = min(lo + 1, n - 1)
            taps.append(((lo, 1 - (p - lo)), (hi, p - lo)))
        total = 0.0
        for combo in itertools.product(*taps):
            weight = np.prod([w for _, w in combo])
            total = total + weight * x[(slice(None), *(i for i, _ in combo))]
        y[(slice(None), *j)] = total
    return y


CASES = [  # (spatial, scale_factor)
    ((4,), 3),
    ((3, 5), (2, 2)),
    ((3, 4), (1, 3)),
    ((2, 3, 2), (2, 1, 2)),
]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("method", ["nearest", "linear"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_numpy(rng, case, method, transform):
    spatial, factor = case
    x = rng.standard_normal((2, *spatial, 3)).astype(np.float32)
    layer = Upsample(factor, method=method)
    factors = (factor,) if isinstance(factor, int) else factor
    y = transform(layer.apply)({}, jnp.asarray(x))
    np.testing.assert_allclose(y, numpy_upsample(x, factors, method), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["nearest", "linear"])
def test_gradients_vmap_and_unbatched(rng, method):
    layer = Upsample((2, 3), method=method)
    x = jnp.asarray(rng.standard_normal((2, 3, 2, 2)).astype(np.float32))
    assert layer.init(jax.random.key(0), x) == {}
    check_gradients(lambda v: layer.apply({}, v), (x,))
    batched = layer.apply({}, x)
    assert batched.shape == (2, 6, 6, 2)
    np.testing.assert_allclose(jax.vmap(lambda v: layer.apply({}, v))(x), batched, atol=1e-6)
    np.testing.assert_allclose(layer.apply({}, x[0]), batched[0], atol=1e-6)


def test_half_precision_keeps_its_dtype(rng):
    x = jnp.asarray(rng.standard_normal((1, 4, 4, 2)), jnp.bfloat16)
    y = Upsample((2, 2), method="linear").apply({}, x)
    assert y.dtype == jnp.bfloat16
    expected = numpy_upsample(np.asarray(x, np.float32), (2, 2), "linear")
    np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=1e-2, atol=1e-2)


def test_names_and_in_a_generator(rng):
    assert Upsample(2, method="Bilinear").method == "linear"  # PyTorch's name
    assert Upsample([2, 2]).scale_factor == (2, 2)
    generator = jnn.Sequential([Upsample((2, 2)), jnn.Conv(4, (3, 3)), jnn.relu])
    x = jnp.zeros((2, 7, 7, 8))
    params = generator.init(jax.random.key(0), x)
    assert generator.apply(params, x).shape == (2, 14, 14, 4)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Upsample(0), ValueError, r"^Upsample: scale_factor must be an int \(1-D\) or "),
        (lambda: Upsample(()), ValueError, r"each at least 1, got \(\)\.$"),
        (lambda: Upsample(2.0), TypeError, r"^Upsample: scale_factor must be"),
        (
            lambda: Upsample(2, method="bicubic"),
            ValueError,
            r"^Upsample: method must be one of \['nearest', 'linear'\], got 'bicubic'\.$",
        ),
    ],
)
def test_hyperparameter_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_input_errors():
    images = Upsample((2, 2))
    with pytest.raises(jnn.ShapeError, match=r"^Upsample: init expected a batched input of rank"):
        images.init(jax.random.key(0), jnp.zeros((7, 7, 3)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Upsample: expected input of rank 4 .*Hint: the number of spatial axes is "
        r"len\(scale_factor\); for 3-D inputs give 3 sizes",
    ):
        images.apply({}, jnp.zeros((2, 5, 5, 5, 3)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Upsample: expected input of rank 3 .*for 2-D inputs give 2 sizes, e\.g\. "
        r"scale_factor=\(2, 2\)",
    ):
        Upsample(2).apply({}, jnp.zeros((2, 5, 5, 3)))
    with pytest.raises(jnn.DTypeError, match=r"^Upsample: expected a floating-point input"):
        images.apply({}, jnp.zeros((1, 2, 2, 3), jnp.int32))
