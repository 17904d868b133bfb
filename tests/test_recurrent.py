"""Recurrent cells, RNN and Bidirectional: NumPy references, padding, reverse, grads, errors."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients

from jnn import (
    RNN,
    Bidirectional,
    Dense,
    Dropout,
    DTypeError,
    GRUCell,
    LSTMCell,
    Module,
    Sequential,
    ShapeError,
    SimpleRNNCell,
)

CELLS = [
    pytest.param(lambda: SimpleRNNCell(4), id="simple"),
    pytest.param(lambda: LSTMCell(4), id="lstm"),
    pytest.param(lambda: GRUCell(4), id="gru"),
]


# --------------------------------------------------------------------------- references


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_step(cell, params, carry, x):
    """One step of ``cell`` in float64 NumPy, written from the documented equations."""
    p, x = _np(params), np.asarray(x, np.float64)
    wx, b, wh = p["input"]["weight"], p["input"]["bias"], p["hidden"]["weight"]
    f = cell.features
    block = lambda a, g: a[..., g * f : (g + 1) * f]  # noqa: E731
    if isinstance(cell, SimpleRNNCell):
        h = np.tanh(x @ wx + b + carry @ wh)
        return h, h
    if isinstance(cell, LSTMCell):
        h, c = carry
        pre = [block(x @ wx, g) + block(h @ wh, g) + block(b, g) for g in range(4)]
        i, fg, g, o = _sigmoid(pre[0]), _sigmoid(pre[1]), np.tanh(pre[2]), _sigmoid(pre[3])
        c = fg * c + i * g
        h = o * np.tanh(c)
        return (h, c), h
    h = carry
    r = _sigmoid(block(x @ wx, 0) + block(b, 0) + block(h @ wh, 0))
    z = _sigmoid(block(x @ wx, 1) + block(b, 1) + block(h @ wh, 1))
    n = np.tanh(block(x @ wx, 2) + block(b, 2) + r * (block(h @ wh, 2) + p["hidden"]["bias"]))
    h = (1 - z) * n + z * h
    return h, h


def numpy_zero_carry(cell, batch):
    zeros = np.zeros((*batch, cell.features))
    return (zeros, zeros) if isinstance(cell, LSTMCell) else zeros


def random_params(cell, key, x):
    """Init, then make every leaf random (biases too), so each term is exercised."""
    params = cell.init(key, x)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    leaves = [0.5 * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, leaves)


def row(carry, b):
    """Example ``b`` of a batched carry (an array or an LSTM's ``(h, c)``)."""
    return jax.tree.map(lambda c: c[b], carry)


def cell_loop(cell, params, x, carry=None):
    """The cell applied step by step over axis 1 of ``x`` [batch, time, in] in Python."""
    carry = cell.initial_carry(x.shape[:1]) if carry is None else carry
    step = jax.jit(cell.apply)  # a Python loop all the same; jit only saves time
    ys = []
    for t in range(x.shape[1]):
        carry, y = step(params, carry, x[:, t])
        ys.append(y)
    if not ys:  # an empty sequence
        return carry, jnp.zeros((x.shape[0], 0, cell.features))
    return carry, jnp.stack(ys, 1)


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_cell_matches_numpy_step_by_step(make_cell, transform, key):
    cell = make_cell()
    x = jax.random.normal(key, (2, 5, 3))
    params = random_params(cell, key, x[:, 0])
    carry, np_carry = cell.initial_carry((2,)), numpy_zero_carry(cell, (2,))
    step = transform(cell.apply)
    for t in range(x.shape[1]):
        carry, y = step(params, carry, x[:, t])
        np_carry, np_y = numpy_step(cell, params, np_carry, x[:, t])
        np.testing.assert_allclose(y, np_y, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(carry, np_carry, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_cell", CELLS)
@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
def test_cell_shape_agreement(make_cell, batch, key):
    cell = make_cell()
    x = jax.ShapeDtypeStruct((*batch, 3), jnp.float32)
    params = cell.init(key, x)
    gates = {SimpleRNNCell: 1, LSTMCell: 4, GRUCell: 3}[type(cell)]
    assert params["input"]["weight"].shape == (3, gates * 4)
    assert params["hidden"]["weight"].shape == (4, gates * 4)
    carry, y = cell.apply(params, cell.initial_carry(batch), jnp.ones(x.shape))
    assert y.shape == (*batch, 4)
    chex.assert_trees_all_equal_shapes(carry, cell.initial_carry(batch))
    # init also accepts apply's inputs, (carry, x).
    chex.assert_trees_all_equal(params, cell.init(key, cell.initial_carry(batch), x))


def test_lstm_carry_is_h_then_c_and_forget_bias(key):
    cell = LSTMCell(3, forget_bias=1.0)
    params = cell.init(key, jnp.zeros((2,)))
    np.testing.assert_array_equal(params["input"]["bias"], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert LSTMCell(3).init(key, jnp.zeros((2,)))["input"]["bias"].sum() == 0
    (h, c), y = cell.apply(params, cell.initial_carry(), jnp.ones((2,)))
    np.testing.assert_array_equal(h, y)
    assert not np.allclose(c, h)


def test_hidden_weights_are_orthogonal_per_gate(key):
    params = GRUCell(5).init(key, jnp.zeros((2, 3)))
    for g in range(3):
        block = params["hidden"]["weight"][:, g * 5 : (g + 1) * 5]
        np.testing.assert_allclose(block.T @ block, np.eye(5), atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cells_match_pytorch(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](3, 4, batch_first=True)
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(x))
    t = {name: p.detach().numpy() for name, p in module.named_parameters()}
    input_bias = t["bias_ih_l0"] + t["bias_hh_l0"]
    params = {
        "input": {"weight": t["weight_ih_l0"].T, "bias": input_bias},
        "hidden": {"weight": t["weight_hh_l0"].T},
    }
    if kind == "gru":
        params["input"]["bias"] = np.concatenate([input_bias[:8], t["bias_ih_l0"][8:]])
        params["hidden"]["bias"] = t["bias_hh_l0"][8:]
    cell = LSTMCell(4) if kind == "lstm" else GRUCell(4)
    out = RNN(cell).apply(jax.tree.map(jnp.asarray, params), jnp.asarray(x))
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_cell", CELLS)
def test_cell_gradients(make_cell, key):
    cell = make_cell()
    x = jax.random.normal(key, (2, 3))
    params = random_params(cell, key, x)
    carry = jax.tree.map(lambda c: 0.5 * jnp.ones_like(c), cell.initial_carry((2,)))

    def f(p, carry, x):
        new_carry, y = cell.apply(p, carry, x)
        return y.sum() + sum(c.sum() for c in jax.tree.leaves(new_carry))

    check_gradients(f, (params, carry, x))


# --------------------------------------------------------------------------- RNN


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


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_rnn_shape_agreement(batch, return_sequences, key):
    rnn = RNN(GRUCell(4), return_sequences=return_sequences)
    x = jax.ShapeDtypeStruct((*batch, 5, 3), jnp.float32)
    params = rnn.init(key, x)
    out = rnn.apply(params, jnp.ones(x.shape), mask=jnp.ones(x.shape[:-1], bool))
    assert out.shape == ((*batch, 5, 4) if return_sequences else (*batch, 4))
    assert jax.eval_shape(rnn.apply, params, x).shape == out.shape


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
        chex.assert_trees_all_close(
            row(carry, b),
            row(alone_carry, 0),
            rtol=1e-5,
            atol=1e-6,
        )
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
        chex.assert_trees_all_close(
            row(carry, b),
            row(alone_carry, 0),
            rtol=1e-5,
            atol=1e-6,
        )
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


class DenseCell(Module):
    """A user-written composite cell without output_of; its output (2h) is not its carry."""

    features: int

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        return jnp.zeros((*batch_shape, self.features), dtype)

    def forward(self, scope, carry, x):
        h = scope("dense", Dense(self.features), jnp.concatenate([x, carry], -1))
        return jnp.tanh(h), 2 * h


def test_custom_composite_cell(key):
    """Any layer with initial_carry and apply(params, carry, x) runs in RNN."""

    cell = DenseCell(3)
    x = jax.random.normal(key, (2, 4, 2))
    params = RNN(cell).init(key, x)
    assert params["dense"]["weight"].shape == (5, 3)
    np.testing.assert_allclose(RNN(cell).apply(params, x), cell_loop(cell, params, x)[1], rtol=1e-6)


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


class Encoder(Module):
    """Two stacked LSTMs that both see the lengths: the documented way to stack."""

    def forward(self, scope, x, lengths):
        for i in range(2):
            x = scope(f"lstm_{i}", RNN(LSTMCell(4)), x, lengths=lengths)
        return x


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


# --------------------------------------------------------------------------- Bidirectional


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_bidirectional_equals_concat_of_both(transform, key):
    x = jax.random.normal(key, (3, 6, 2))
    lengths = jnp.array([6, 3, 1])
    both = Bidirectional(RNN(LSTMCell(4)), RNN(GRUCell(3)))
    params = both.init(key, x)
    out = transform(lambda p, x, n: both.apply(p, x, lengths=n))(params, x, lengths)
    forward = RNN(LSTMCell(4)).apply(params["forward"], x, lengths=lengths)
    backward = RNN(GRUCell(3), reverse=True).apply(params["backward"], x, lengths=lengths)
    np.testing.assert_allclose(out, jnp.concatenate([forward, backward], -1), rtol=1e-6)
    np.testing.assert_array_equal(out[2, 1:], 0.0)


def test_bidirectional_last_outputs_sum_and_carry(key):
    x = jax.random.normal(key, (2, 5, 2))
    mask = jnp.arange(5)[None] < jnp.array([[5], [3]])
    rnn = RNN(GRUCell(3), return_sequences=False, return_carry=True)
    both = Bidirectional(rnn, merge="sum")
    assert both.backward_rnn == dataclasses.replace(rnn, reverse=True)
    params = both.init(key, x)
    (forward_carry, backward_carry), out = both.apply(params, x, mask=mask)
    f_carry, f_last = rnn.apply(params["forward"], x, mask=mask)
    b_carry, b_last = both.backward_rnn.apply(params["backward"], x, mask=mask)
    np.testing.assert_allclose(out, f_last + b_last, rtol=1e-6)
    chex.assert_trees_all_close((forward_carry, backward_carry), (f_carry, b_carry))


# --------------------------------------------------------------------------- errors


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match=r"LSTMCell: features must be a positive int, got 0"):
        LSTMCell(0)
    with pytest.raises(ValueError, match=r"RNN: unroll must be a positive int, got 0"):
        RNN(GRUCell(2), unroll=0)
    with pytest.raises(TypeError, match=r"RNN: cell must be a jnn.Module with an initial_carry"):
        RNN(Dense(3))
    with pytest.raises(ValueError, match=r"Bidirectional: forward_rnn must have reverse=False"):
        Bidirectional(RNN(GRUCell(2), reverse=True))
    with pytest.raises(ValueError, match=r"must agree on return_sequences, got True and False"):
        Bidirectional(RNN(GRUCell(2)), RNN(GRUCell(2), return_sequences=False))
    with pytest.raises(ValueError, match=r"Bidirectional: merge must be one of"):
        Bidirectional(RNN(GRUCell(2)), merge="max")


def test_input_errors(key):
    cell = LSTMCell(4)
    rnn = RNN(cell)
    x = jnp.zeros((2, 5, 3))
    params = rnn.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"RNN\(LSTMCell\): expected input with last dimension 3 \(set at init\), got shape \(2, 5, 4\)",
    ):
        rnn.apply(params, jnp.zeros((2, 5, 4)))
    with pytest.raises(
        ShapeError,
        match=r"LSTMCell: expected input with last dimension 3 \(set at init\), got shape \(2, 4\)",
    ):
        cell.apply(params, cell.initial_carry((2,)), jnp.zeros((2, 4)))
    with pytest.raises(
        ShapeError,
        match=r"LSTMCell: expected carry \(h, c\) of shape \(\(2, 4\), \(2, 4\)\) for input of shape \(2, 3\), got \(2, 4\)",
    ):
        cell.apply(params, jnp.zeros((2, 4)), jnp.zeros((2, 3)))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(LSTMCell\): expected input \[\*batch, time, features\] of rank at least 2, got shape \(3,\)",
    ):
        rnn.init(key, jnp.zeros((3,)))
    with pytest.raises(
        ShapeError,
        match=r"LSTMCell: expected input \[\*batch, in_features\] of rank at least 1, got shape \(\)",
    ):
        cell.init(key, jnp.zeros(()))
    with pytest.raises(DTypeError, match=r"RNN\(LSTMCell\): expected a floating-point input"):
        rnn.apply(params, jnp.zeros((2, 5, 3), jnp.int32))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(LSTMCell\): expected lengths of shape \(2,\) \(one per sequence of the input of shape \(2, 5, 3\)\), got shape \(2, 1\)",
    ):
        rnn.apply(params, x, lengths=jnp.array([[5], [3]]))
    with pytest.raises(
        DTypeError, match=r"RNN\(LSTMCell\): expected integer lengths, got dtype float32"
    ):
        rnn.apply(params, x, lengths=jnp.array([5.0, 3.0]))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(LSTMCell\): expected mask of shape \(2, 5\) \(the input's shape \(2, 5, 3\) without its feature axis\), got shape \(2, 6\)",
    ):
        rnn.apply(params, x, mask=jnp.ones((2, 6), bool))
    with pytest.raises(
        DTypeError, match=r"RNN\(LSTMCell\): expected a boolean mask, got dtype int32"
    ):
        rnn.apply(params, x, mask=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ShapeError, match=r"RNN\(LSTMCell\): give lengths or mask, not both"):
        rnn.apply(params, x, lengths=jnp.array([5, 3]), mask=jnp.ones((2, 5), bool))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(LSTMCell\): expected initial_carry of shape \(\(2, 4\), \(2, 4\)\) for input of shape \(2, 5, 3\), got \(2, 4\)",
    ):
        rnn.apply(params, x, initial_carry=jnp.zeros((2, 4)))


def test_bidirectional_merge_shapes_must_agree(key):
    both = Bidirectional(RNN(GRUCell(3)), RNN(GRUCell(2)), merge="sum")
    with pytest.raises(
        ShapeError,
        match=r"Bidirectional: merge='sum' needs outputs of equal shapes, got \(2, 5, 3\) \(forward\) and \(2, 5, 2\) \(backward\)",
    ):
        both.init(key, jnp.zeros((2, 5, 3)))


def test_errors_inside_bidirectional_name_the_path(key):
    both = Bidirectional(RNN(GRUCell(3)))
    x = jnp.zeros((2, 5, 3))
    params = both.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"RNN\(GRUCell\) at 'forward': expected lengths of shape \(2,\) .*got shape \(3,\)",
    ):
        both.apply(params, x, lengths=jnp.array([1, 2, 3]))


def test_custom_cell_without_output_of_returns_its_last_output(key):
    """output_of is optional: without it the last output is carried through the scan."""

    cell = DenseCell(3)
    x = jax.random.normal(key, (2, 4, 2))
    last = RNN(cell, return_sequences=False)
    params = last.init(key, x)
    np.testing.assert_allclose(
        last.apply(params, x), cell_loop(cell, params, x)[1][:, -1], rtol=1e-6
    )
