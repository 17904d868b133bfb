"""Flatten and Reshape: NumPy references, jit, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

import jnn
from jnn import Flatten, Reshape


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_flatten_and_reshape_match_numpy(rng, transform):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(transform(Flatten().apply)({}, x), x.reshape(2, 60))
    np.testing.assert_array_equal(transform(Flatten(2).apply)({}, x), x.reshape(2, 3, 20))
    np.testing.assert_array_equal(transform(Flatten(-2).apply)({}, x), x.reshape(2, 3, 20))
    np.testing.assert_array_equal(transform(Flatten(0).apply)({}, x), x.reshape(120))
    np.testing.assert_array_equal(transform(Flatten().apply)({}, x[..., 0, 0]), x[..., 0, 0])
    np.testing.assert_array_equal(transform(Reshape((60,)).apply)({}, x), x.reshape(2, 60))
    np.testing.assert_array_equal(transform(Reshape([5, -1]).apply)({}, x), x.reshape(2, 5, 12))
    np.testing.assert_array_equal(
        transform(Reshape((2, 3, 2, 5)).apply)({}, x), x.reshape(2, 2, 3, 2, 5)
    )


def test_hyperparameters_are_normalised():
    assert Flatten(np.int64(2)) == Flatten(2)
    assert Reshape([np.int64(3), -1]) == Reshape((3, -1))
    assert hash(Reshape([3, -1])) == hash(Reshape((3, -1)))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: Flatten(1.0), TypeError, r"^Flatten: start_axis must be an int, got 1\.0"),
        (lambda: Flatten("1"), TypeError, r"^Flatten: start_axis must be an int, got '1'"),
        (
            lambda: Reshape(12),
            TypeError,
            r"^Reshape: shape must be a list or tuple of ints, got 12 \(int\)\. Hint: wrap a "
            r"single value in a list, e\.g\. \[12\]\.",
        ),
        (lambda: Reshape((3, 4.0)), TypeError, r"^Reshape: shape must be a list or tuple of ints"),
        (
            lambda: Reshape((3, -1, -1)),
            ValueError,
            r"^Reshape: shape must be a tuple of positive ints with at most one -1, "
            r"got \(3, -1, -1\)\.",
        ),
        (lambda: Reshape((0, 3)), ValueError, r"^Reshape: shape must be a tuple of positive ints"),
        (lambda: Reshape((-2, 3)), ValueError, r"^Reshape: shape must be a tuple of positive"),
    ],
)
def test_hyperparameter_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_input_errors():
    key = jax.random.key(0)
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Flatten: expected input of rank at least 2 \(axes from start_axis=1 on are "
        r"merged\), got shape \(5,\)\. Hint: axis 0 is the batch axis; for one example add "
        r"it \(x\[None\]\), or use Flatten\(start_axis=0\) under jax\.vmap\.",
    ):
        Flatten().apply({}, jnp.zeros(5))
    with pytest.raises(jnn.ShapeError, match=r"^Flatten: expected input of rank at least 3 "):
        Flatten(-3).apply({}, jnp.zeros((2, 5)))
    with pytest.raises(jnn.ShapeError, match=r"^Flatten: expected input of rank at least 5 "):
        Flatten(4).init(key, jnp.zeros((2, 5, 3)))  # init checks the sample too
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Reshape: expected examples of 12 elements to reshape to \(3, 4\), got shape "
        r"\(2, 5, 3\) \(15 elements per example\)\.",
    ):
        Reshape((3, 4)).apply({}, jnp.zeros((2, 5, 3)))
    with pytest.raises(
        jnn.ShapeError,
        match=r"^Reshape: expected examples of a multiple of 4 elements to reshape to "
        r"\(4, -1\), got shape \(2, 5, 3\) \(15 elements per example\)\.",
    ):
        Reshape((4, -1)).init(key, jnp.zeros((2, 5, 3)))
    with pytest.raises(
        jnn.ShapeError, match=r"^Reshape: expected input with a batch axis .*got shape \(\)\."
    ):
        Reshape((1,)).apply({}, jnp.float32(1.0))
