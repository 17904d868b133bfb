"""RNN: a cell over time against a Python loop; padding, reverse, gradients, custom
cells, stacking. The errors for bad sequence inputs are in test_sequences.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients
from recurrent_reference import CELLS, DenseCell, Encoder, cell_loop, random_params, row

from jnn import (
    RNN,
    Dense,
    Dropout,
    GRUCell,
    LSTMCell,
    Module,
    Sequential,
    ShapeError,
)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_rnn_equals_python_loop(make_cell, transform, key):
    cell = make_cell()
    x = jax.random.normal(key, (2, 6, 3))
    rnn = RNN(cell, return_carry=True)
    params = random_params(cell, key, x[:, 0])
    carry, ys = transform(rnn.apply)(params, x)
    loop_carry, loop_ys = cell_loop(cell, params, x)
    np.testing.assert_allclose(ys, loop_ys, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(carry, loop_carry, rtol=1e-5, atol=1e-6)
    last = transform(RNN(cell, return_sequences=False).apply)(params, x)
    np.testing.assert_allclose(last, loop_ys[:, -1], rtol=1e-5, atol=1e-6)


def test_rnn_params_are_the_cells(key):
    x = jnp.ones((2, 5, 3))
    chex.assert_trees_all_equal(RNN(LSTMCell(4)).init(key, x), LSTMCell(4).init(key, x[:, 0]))


@pytest.mark.parametrize("batch", [(1,), (2,), (2, 3)])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_rnn_shape_agreement(batch, return_sequences, key):
    rnn = RNN(GRUCell(4), return_sequences=return_sequences)
    x = jax.ShapeDtypeStruct((*batch, 5, 3), jnp.float32)
    params = rnn.init(key, x)
    out = rnn.apply(params, jnp.ones(x.shape), mask=jnp.ones(x.shape[:-1], bool))
    assert out.shape == ((*batch, 5, 4) if return_sequences else (*batch, 4))
    assert jax.eval_shape(rnn.apply, params, x).shape == out.shape
    # apply also takes one unbatched sequence [time, features].
    one = rnn.apply(params, jnp.ones((5, 3)), lengths=jnp.array(3))
    assert one.shape == ((5, 4) if return_sequences else (4,))


def test_time_major_equals_transposed(key):
    x = jax.random.normal(key, (2, 6, 3))
    lengths = jnp.array([6, 4])
    params = LSTMCell(4).init(key, x[:, 0])
    batch_major = RNN(LSTMCell(4)).apply(params, x, lengths=lengths)
    time_major = RNN(LSTMCell(4), time_major=True).apply(
        params, jnp.swapaxes(x, 0, 1), lengths=lengths
    )
    np.testing.assert_allclose(jnp.swapaxes(time_major, 0, 1), batch_major, rtol=1e-6)


def test_initial_carry(key):
    cell = LSTMCell(4)
    x = jax.random.normal(key, (2, 5, 3))
    params = random_params(cell, key, x[:, 0])
    carry = (jnp.full((2, 4), 0.3), jnp.full((2, 4), -0.2))
    out = RNN(cell).apply(params, x, initial_carry=carry)
    np.testing.assert_allclose(out, cell_loop(cell, params, x, carry)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_padding_leaves_carry_and_zero_outputs(make_cell, transform, key):
    cell = make_cell()
    x = jax.random.normal(key, (3, 7, 2))
    lengths = jnp.array([7, 4, 0])
    params = random_params(cell, key, x[:, 0])
    rnn = RNN(cell, return_carry=True)
    carry, ys = transform(lambda p, x, n: rnn.apply(p, x, lengths=n))(params, x, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone_carry, alone_ys = cell_loop(cell, params, x[b : b + 1, :n])
        np.testing.assert_allclose(ys[b, :n], alone_ys[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        chex.assert_trees_all_close(row(carry, b), row(alone_carry, 0), rtol=1e-5, atol=1e-6)
    mask = jnp.arange(7)[None] < lengths[:, None]
    chex.assert_trees_all_close(rnn.apply(params, x, mask=mask), (carry, ys), rtol=1e-6)


def test_mask_skips_steps_anywhere(key):
    """A mask need not be a prefix: masked steps are skipped wherever they are."""
    cell = GRUCell(3)
    x = jax.random.normal(key, (1, 6, 2))
    params = random_params(cell, key, x[:, 0])
    mask = jnp.array([[False, True, True, False, True, False]])
    ys = RNN(cell).apply(params, x, mask=mask)
    _, alone = cell_loop(cell, params, x[:, np.array([1, 2, 4])])
    np.testing.assert_allclose(ys[0, np.array([1, 2, 4])], alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ys[0, np.array([0, 3, 5])], 0.0)


@pytest.mark.parametrize("make_cell", CELLS)
def test_reverse_equals_reversing_valid_steps(make_cell, key):
    cell = make_cell()
    x = jax.random.normal(key, (3, 6, 2))
    lengths = jnp.array([6, 3, 1])
    params = random_params(cell, key, x[:, 0])
    rnn = RNN(cell, reverse=True, return_carry=True)
    carry, ys = rnn.apply(params, x, lengths=lengths)
    last = RNN(cell, reverse=True, return_sequences=False).apply(params, x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        flipped = x[b : b + 1, :n][:, ::-1]
        alone_carry, alone_ys = cell_loop(cell, params, flipped)
        np.testing.assert_allclose(ys[b, :n], alone_ys[0, ::-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        np.testing.assert_allclose(last[b], alone_ys[0, -1], rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(row(carry, b), row(alone_carry, 0), rtol=1e-5, atol=1e-6)
    # Without padding, reverse is a plain reversed scan.
    full = RNN(cell, reverse=True).apply(params, x)
    _, loop_ys = cell_loop(cell, params, x[:, ::-1])
    np.testing.assert_allclose(full, loop_ys[:, ::-1], rtol=1e-5, atol=1e-6)
    full_last = RNN(cell, reverse=True, return_sequences=False).apply(params, x)
    np.testing.assert_allclose(full_last, loop_ys[:, -1], rtol=1e-5, atol=1e-6)


def test_last_output_is_at_each_last_valid_step(key):
    cell = LSTMCell(4)
    x = jax.random.normal(key, (3, 5, 2))
    lengths = jnp.array([5, 2, 0])
    params = random_params(cell, key, x[:, 0])
    ys = RNN(cell).apply(params, x, lengths=lengths)
    last = jax.jit(RNN(cell, return_sequences=False).apply)(params, x, lengths=lengths)
    np.testing.assert_allclose(last[0], ys[0, 4], rtol=1e-6)
    np.testing.assert_allclose(last[1], ys[1, 1], rtol=1e-6)
    np.testing.assert_array_equal(last[2], 0.0)  # an empty sequence has no output


def test_rnn_gradients(key):
    cell = LSTMCell(3)
    x = jax.random.normal(key, (2, 4, 2))
    lengths = jnp.array([4, 2])
    params = random_params(cell, key, x[:, 0])
    for rnn in (RNN(cell), RNN(cell, reverse=True, return_sequences=False)):
        check_gradients(
            jax.jit(lambda p, x, rnn=rnn: (rnn.apply(p, x, lengths=lengths) ** 2).sum()),
            (params, x),
        )
    grads = jax.grad(lambda x: RNN(cell).apply(params, x, lengths=lengths).sum())(x)
    np.testing.assert_array_equal(grads[1, 2:], 0.0)  # padding does not reach the output


def test_vmap_over_sequences_equals_batch(key):
    x = jax.random.normal(key, (3, 5, 2))
    lengths = jnp.array([5, 1, 3])
    rnn = RNN(GRUCell(4))
    params = rnn.init(key, x)
    mapped = jax.vmap(lambda x, n: rnn.apply(params, x, lengths=n))(x, lengths)
    np.testing.assert_allclose(mapped, rnn.apply(params, x, lengths=lengths), rtol=1e-6)


# --------------------------------------------------------------------------- custom cells


def test_custom_composite_cell(key):
    """Any layer with initial_carry and apply(params, carry, x) runs in RNN."""
    cell = DenseCell(3)
    x = jax.random.normal(key, (2, 4, 2))
    params = RNN(cell).init(key, x)
    assert params["dense"]["weight"].shape == (5, 3)
    np.testing.assert_allclose(RNN(cell).apply(params, x), cell_loop(cell, params, x)[1], rtol=1e-6)
    last = RNN(cell, return_sequences=False)  # no output_of: the last output is carried
    np.testing.assert_allclose(
        last.apply(params, x), cell_loop(cell, params, x)[1][:, -1], rtol=1e-6
    )
    with pytest.raises(
        ShapeError,
        match=r"RNN\(DenseCell\): expected initial_carry of shape \(2, 3\) for input of shape "
        r"\(2, 4, 2\), got a tuple of 2 arrays .*Hint: make it with cell.initial_carry\(\(2,\)\)",
    ):
        RNN(cell).apply(params, x, initial_carry=(jnp.zeros((2, 3)),) * 2)


def test_cell_gets_the_same_key_at_every_step(key):
    """A dropout inside the cell draws one mask for the whole sequence (variational)."""

    class DropCell(Module):
        def initial_carry(self, batch_shape=(), dtype=jnp.float32):
            return jnp.zeros(batch_shape, dtype)

        def forward(self, scope, carry, x):
            return carry, scope("drop", Dropout(0.5), x)

    x = jnp.ones((2, 6, 16))
    rnn = RNN(DropCell())
    assert rnn.init(key, x) == {}
    ys = rnn.apply({}, x, key=key, is_training=True)
    assert 0 < float((ys == 0).mean()) < 1
    np.testing.assert_array_equal(ys, jnp.broadcast_to(ys[:, :1], ys.shape))
    np.testing.assert_array_equal(rnn.apply({}, x), x)  # inference: no dropout


# --------------------------------------------------------------------------- stacking


def test_sequential_stacks_rnns(key):
    x = jax.random.normal(key, (2, 5, 3))
    model = Sequential([RNN(LSTMCell(4)), RNN(GRUCell(2), return_sequences=False)])
    params = model.init(key, x)
    assert sorted(params) == ["rnn_0", "rnn_1"]
    h = RNN(LSTMCell(4)).apply(params["rnn_0"], x)
    expected = RNN(GRUCell(2), return_sequences=False).apply(params["rnn_1"], h)
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_stacking_with_lengths_in_a_composite(transform, key):
    x = jax.random.normal(key, (2, 5, 3))
    lengths = jnp.array([5, 2])
    params = Encoder().init(key, x, lengths)
    out = transform(Encoder().apply)(params, x, lengths)
    h = RNN(LSTMCell(4)).apply(params["lstm_0"], x, lengths=lengths)
    expected = RNN(LSTMCell(4)).apply(params["lstm_1"], h, lengths=lengths)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(out[1, 2:], 0.0)


# --------------------------------------------------------------------------- errors


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match=r"RNN: unroll must be a positive int, got 0"):
        RNN(GRUCell(2), unroll=0)
    with pytest.raises(TypeError, match=r"RNN: cell must be a jnn.Module with an initial_carry"):
        RNN(Dense(3))
