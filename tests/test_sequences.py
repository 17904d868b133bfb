"""Sequence inputs of RNN (and Bidirectional): lengths out of range (an error when
concrete, NaN rows under jit), and the error for each bad input, with its hint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recurrent_reference import Encoder

from jnn import RNN, Dense, DTypeError, GRUCell, LSTMCell, Sequential, ShapeError


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_out_of_range_lengths_are_nan_rows_under_jit(reverse, return_sequences, key):
    """Traced lengths cannot be checked; the rows of bad ones come out NaN, the rest as
    with good lengths, outputs and carry alike."""
    rnn = RNN(LSTMCell(3), reverse=reverse, return_sequences=return_sequences, return_carry=True)
    x = jax.random.normal(key, (4, 5, 2))
    params = rnn.init(key, x)
    lengths = jnp.array([5, 6, -1, 2])
    carry, out = jax.jit(lambda n: rnn.apply(params, x, lengths=n))(lengths)
    good_carry, good = rnn.apply(params, x, lengths=jnp.array([5, 5, 0, 2]))
    for tree, good_tree in ((out, good), (carry, good_carry)):
        for leaf, good_leaf in zip(jax.tree.leaves(tree), jax.tree.leaves(good_tree), strict=True):
            assert np.isnan(leaf[1:3]).all()
            np.testing.assert_array_equal(leaf[np.array([0, 3])], good_leaf[np.array([0, 3])])
    mapped = jax.vmap(lambda x, n: rnn.apply(params, x, lengths=n))(x, lengths)
    assert np.isnan(mapped[1][1]).all() and not np.isnan(mapped[1][0]).any()


@pytest.mark.parametrize("reverse", [False, True])
def test_out_of_range_lengths_raise_when_concrete(reverse, key):
    rnn = RNN(GRUCell(3), reverse=reverse)
    x = jnp.zeros((3, 5, 2))
    params = rnn.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"RNN\(GRUCell\): lengths must lie in \[0, 5\], the length of the time axis of the "
        r"input of shape \(3, 5, 2\); got \[7, -1\] for the sequences at \[1, 2\]\.",
    ):
        rnn.apply(params, x, lengths=np.array([5, 7, -1]))
    with pytest.raises(ShapeError, match=r"lengths must lie in \[0, 5\].*; got 6\."):
        rnn.apply(params, x[0], lengths=jnp.array(6))  # one unbatched sequence
    # Inside a model the message names the layer's path.
    params = Encoder().init(key, x, jnp.array([5, 5, 5]))
    with pytest.raises(ShapeError, match=r"RNN\(LSTMCell\) at 'lstm_0': lengths must lie in"):
        Encoder().apply(params, x, jnp.array([5, 9, 1]))


# --------------------------------------------------------------------------- errors


R = r"RNN\(LSTMCell\): "
X = jnp.zeros((2, 5, 3))
INPUT_ERRORS = [
    # (error, message, x, keywords)
    (
        ShapeError,
        R + r"expected input with last dimension 3 \(set at init\), got shape \(2, 5, 4\)",
        jnp.zeros((2, 5, 4)),
        {},
    ),
    (
        ShapeError,
        R
        + r"expected input \[\*batch, time, features\] of rank at least 2, got shape \(5,\)\. Hint: one sequence of scalars is x\[None, :, None\]",
        jnp.zeros(5),
        {},
    ),
    (
        DTypeError,
        R
        + r"expected a floating-point input, got dtype int32\. Hint: token ids go through jnn.Embedding first",
        X.astype(jnp.int32),
        {},
    ),
    (
        ShapeError,
        R
        + r"expected lengths of shape \(2,\) \(one per sequence of the input of shape \(2, 5, 3\)\), got shape \(2, 1\)\.$",
        X,
        {"lengths": jnp.array([[5], [3]])},
    ),
    (
        ShapeError,
        R
        + r"expected lengths of shape \(2,\) .*got shape \(5,\)\. Hint: if x is \[time, batch, features\], pass time_major=True\.",
        X,
        {"lengths": jnp.arange(5)},
    ),
    (
        ShapeError,
        R
        + r".*got shape \(2, 5\)\. Hint: one flag per step is a mask: pass mask=lengths.astype\(bool\)",
        X,
        {"lengths": jnp.ones((2, 5), jnp.int32)},
    ),
    (
        DTypeError,
        R + r"expected integer lengths, got dtype float32\. Hint: lengths.astype\(jnp.int32\)",
        X,
        {"lengths": jnp.array([5.0, 3.0])},
    ),
    (
        DTypeError,
        R
        + r"expected integer lengths, got dtype bool\. Hint: a boolean array of valid steps is a mask",
        X,
        {"lengths": jnp.ones((2,), bool)},
    ),
    (
        ShapeError,
        R
        + r"expected mask of shape \(2, 5\) \(the input's shape \(2, 5, 3\) without its feature axis\), got shape \(2, 6\)\.$",
        X,
        {"mask": jnp.ones((2, 6), bool)},
    ),
    (
        ShapeError,
        R
        + r".*got shape \(5, 2\)\. Hint: if x and the mask are \[time, batch, features\], pass time_major=True\. Otherwise pass mask.T\.",
        X,
        {"mask": jnp.ones((5, 2), bool)},
    ),
    (
        ShapeError,
        R + r".*got shape \(2, 5, 3\)\. Hint: the mask has no feature axis",
        X,
        {"mask": jnp.ones((2, 5, 3), bool)},
    ),
    (
        DTypeError,
        R + r"expected a boolean mask, got dtype int32\. Hint: mask.astype\(bool\)\.",
        X,
        {"mask": jnp.ones((2, 5), jnp.int32)},
    ),
    (
        DTypeError,
        R
        + r"expected a boolean mask, got dtype int32\. Hint: a count of valid steps per sequence is lengths",
        X,
        {"mask": jnp.array([5, 3])},
    ),
    (
        DTypeError,
        R + r"expected lengths as an array, got a list\. Hint: jnp.asarray\(lengths, jnp.int32\)\.",
        X,
        {"lengths": [5, 3]},
    ),
    (
        DTypeError,
        R + r"expected mask as an array, got a tuple\. Hint: jnp.asarray\(mask, bool\)\.",
        X,
        {"mask": ((True,) * 5,) * 2},
    ),
    (
        ShapeError,
        R + r"give lengths or mask, not both",
        X,
        {"lengths": jnp.array([5, 3]), "mask": jnp.ones((2, 5), bool)},
    ),
    (
        ShapeError,
        R
        + r"expected initial_carry \(h, c\), a tuple of 2 arrays of shape \(2, 4\) for input of shape \(2, 5, 3\); got an array of shape \(2, 4\)",
        X,
        {"initial_carry": jnp.zeros((2, 4))},
    ),
    (
        ShapeError,
        R
        + r"expected initial_carry \(h, c\).*got h of shape \(1, 2, 4\), whose batch \(1, 2\) is not \(2,\) \(PyTorch's h0",
        X,
        {"initial_carry": (jnp.zeros((1, 2, 4)), jnp.zeros((1, 2, 4)))},
    ),
]


@pytest.mark.parametrize("error, message, x, keywords", INPUT_ERRORS)
def test_input_errors(error, message, x, keywords, key):
    rnn = RNN(LSTMCell(4))
    params = rnn.init(key, X)
    with pytest.raises(error, match=message):
        rnn.apply(params, x, **keywords)


def test_time_major_mistakes(key):
    rnn = RNN(GRUCell(4), time_major=True)
    x = jnp.zeros((5, 2, 3))  # [time, batch, features]
    params = rnn.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"got shape \(5,\)\. Hint: if x is \[batch, time, features\], pass time_major=False",
    ):
        rnn.apply(params, x, lengths=jnp.arange(5))
    with pytest.raises(
        ShapeError,
        match=r"expected mask of shape \(5, 2\).*got shape \(2, 5\)\. Hint: if x and the mask are \[batch, time, features\], pass time_major=False",
    ):
        rnn.apply(params, x, mask=jnp.ones((2, 5), bool))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(GRUCell\): expected initial_carry h, an array of shape \(2, 4\) for input of shape \(5, 2, 3\); got h of shape \(5, 4\)",
    ):
        rnn.apply(params, x, initial_carry=jnp.zeros((5, 4)))


def test_init_needs_the_batch_axis(key):
    """[batch, time] without a feature axis must not pass for [time, features]."""
    with pytest.raises(
        ShapeError,
        match=r"RNN\(GRUCell\): init expected a batched input \[\*batch, time, features\] \(rank at "
        r"least 3\), got shape \(128, 40\)\. Hint: for sequences of one feature per step add the "
        r"feature axis, x\[\.\.\., None\]; for one sequence \[time, features\] add the batch axis, x\[None\]",
    ):
        RNN(GRUCell(4)).init(key, jnp.zeros((128, 40)))
    with pytest.raises(ShapeError, match=r"init expected a batched input"):
        jax.jit(RNN(GRUCell(4)).init)(key, jnp.zeros((128, 40)))  # traced init too
    # The same mistake at apply time, after a correct init, names the fix too.
    rnn = RNN(GRUCell(4))
    params = rnn.init(key, jnp.zeros((128, 40, 1)))
    with pytest.raises(
        ShapeError,
        match=r"expected input with last dimension 1 \(set at init\), got shape \(128, 40\)\. Hint: "
        r"with one feature per step, add the feature axis: x\[\.\.\., None\]",
    ):
        rnn.apply(params, jnp.zeros((128, 40)))
    # Inside a model, the path is named.
    with pytest.raises(
        ShapeError, match=r"RNN\(GRUCell\) at 'rnn_0': init expected a batched input"
    ):
        Sequential([RNN(GRUCell(4)), Dense(2)]).init(key, jnp.zeros((128, 40)))
