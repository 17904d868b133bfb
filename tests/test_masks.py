"""The mask helpers: causal_mask, padding_mask and combine_masks against NumPy, under jit,
and every error they raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS

from jnn import DTypeError, ShapeError, causal_mask, combine_masks, padding_mask


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_mask_helpers(transform):
    np.testing.assert_array_equal(causal_mask(3), np.tril(np.ones((3, 3), bool))[None, None])
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)[:, None, None]
    lengths = jnp.array([2, 4])
    np.testing.assert_array_equal(transform(lambda n: padding_mask(n, 4))(lengths), expected)
    np.testing.assert_array_equal(transform(padding_mask)(expected[:, 0, 0]), expected)
    combined = combine_masks(causal_mask(4), padding_mask(lengths, 4))
    assert combined.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(combined, np.tril(np.ones((4, 4), bool)) & expected)
    assert combine_masks(None, None) is None


def test_padding_mask_accepts_the_ends_of_the_range():
    mask = padding_mask(np.array([0, 4]), np.int64(4))
    np.testing.assert_array_equal(mask[:, 0, 0], [[False] * 4, [True] * 4])


def test_padding_mask_errors():
    expected = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    with pytest.raises(ShapeError, match=r"padding_mask: integer lengths need length="):
        padding_mask(jnp.array([2, 4]))
    with pytest.raises(
        DTypeError, match=r"padding_mask: expected integer lengths .* got dtype float32"
    ):
        padding_mask(jnp.array([2.0]), 4)
    with pytest.raises(ShapeError, match=r"padding_mask: length 5 differs from the mask's kv_len"):
        padding_mask(expected, 5)
    with pytest.raises(
        ShapeError,
        match=r"padding_mask: expected lengths \[batch\] of rank 1, got shape \(2, 4\)\. Hint: for a 0/1 array marking the real keys, pass valid.astype\(bool\)\.",
    ):
        padding_mask(expected.astype(np.int32), 4)
    with pytest.raises(ValueError, match=r"padding_mask: length must be a positive int, got 0"):
        padding_mask(jnp.array([0]), 0)


def test_padding_mask_refuses_concrete_lengths_out_of_range():
    with pytest.raises(
        ValueError,
        match=r"padding_mask: expected lengths in \[0, 5\] \(the padded length\), got \[7, -1\] at \[1, 2\]\.",
    ):
        padding_mask(jnp.array([3, 7, -1]), 5)
    # Traced lengths cannot be checked: as documented, they mark every key or none.
    traced = jax.jit(lambda n: padding_mask(n, 2))(jnp.array([3, -1]))
    np.testing.assert_array_equal(traced[:, 0, 0], [[True, True], [False, False]])


def test_causal_mask_errors():
    with pytest.raises(TypeError, match=r"causal_mask: length must be an int, got 3.0"):
        causal_mask(3.0)
    with pytest.raises(ValueError, match=r"causal_mask: length must be a positive int, got 0"):
        causal_mask(0)


def test_combine_masks_errors():
    with pytest.raises(
        ShapeError, match=r"combine_masks: masks of shapes \(1, 1, 3, 3\), \(2, 1, 1, 4\)"
    ):
        combine_masks(causal_mask(3), padding_mask(jnp.array([2, 4]), 4))
    with pytest.raises(
        DTypeError,
        match=r"combine_masks: expected boolean masks \(True = attend\), got dtype float32\. Hint: from a 0/1 mask use m.astype\(bool\); from an additive one \(0 or -inf\) use m == 0\.",
    ):
        combine_masks(causal_mask(3), jnp.ones((3, 3)))
