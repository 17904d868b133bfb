"""Recurrent cells: NumPy references step by step, PyTorch's equations and initial
distribution, gradients, and the errors for a wrong input or carry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients
from recurrent_reference import CELLS, numpy_step, numpy_zero_carry, random_params

import jnn
from jnn import RNN, DTypeError, GRUCell, LSTMCell, ShapeError, SimpleRNNCell


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
@pytest.mark.parametrize("batch", [(1,), (2,), (2, 3)])
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
    # init also accepts apply's inputs, (carry, x); apply also takes one unbatched step.
    chex.assert_trees_all_equal(params, cell.init(key, cell.initial_carry(batch), x))
    carry, y = cell.apply(params, cell.initial_carry(), jnp.ones((3,)))
    assert y.shape == (4,)
    chex.assert_trees_all_equal_shapes(carry, cell.initial_carry())


def test_lstm_carry_is_h_then_c_and_forget_bias(key):
    cell = LSTMCell(3, forget_bias=1.0)
    params = cell.init(key, jnp.zeros((1, 2)))
    np.testing.assert_array_equal(params["input"]["bias"], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert LSTMCell(3).init(key, jnp.zeros((1, 2)))["input"]["bias"].sum() == 0
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
    from conftest import torch_rnn_params_to_jnn

    torch.manual_seed(0)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](3, 4, batch_first=True)
    x = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(x))
    t = {name: p.detach().numpy() for name, p in module.named_parameters()}
    params = jax.tree.map(jnp.asarray, torch_rnn_params_to_jnn(t, kind))
    cell = LSTMCell(4) if kind == "lstm" else GRUCell(4)
    out = RNN(cell).apply(params, jnp.asarray(x))
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


# --------------------------------------------------------------------------- initialization

TORCH_KINDS = {"rnn": ("RNN", SimpleRNNCell), "lstm": ("LSTM", LSTMCell), "gru": ("GRU", GRUCell)}


@pytest.mark.parametrize("kind", list(TORCH_KINDS))
def test_pytorch_default_gives_torchs_bounds(kind, key):
    """Every weight and bias is U(+-1/sqrt(hidden)), as torch.nn.RNN/LSTM/GRU draw them."""
    torch = pytest.importorskip("torch")
    torch_name, make_cell = TORCH_KINDS[kind]
    hidden = 32
    bound = 1 / np.sqrt(hidden)
    torch.manual_seed(0)
    module = getattr(torch.nn, torch_name)(3, hidden)
    init = jnn.initializers.pytorch_default()
    cell = make_cell(hidden, w_init=init, recurrent_init=init, b_init=init)
    params = cell.init(key, jnp.zeros((1, 3)))
    torch_params = {n: p.detach().numpy() for n, p in module.named_parameters()}
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    jnn_params = {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in flat}
    assert len(jnn_params) == (4 if kind == "gru" else 3)
    for name, value in {**torch_params, **jnn_params}.items():
        assert np.abs(value).max() <= bound, name
        assert np.abs(value).max() > 0.9 * bound, name  # the bound is reached, not smaller
        np.testing.assert_allclose(value.std(), bound / np.sqrt(3), rtol=0.25, err_msg=name)


def test_every_parameter_gets_the_hidden_size_as_fan_in(key):
    calls = []

    def recording(key, shape, dtype=jnp.float32, *, fan_in):
        calls.append((tuple(shape), fan_in))
        return jnp.zeros(shape, dtype)

    GRUCell(5, w_init=recording, recurrent_init=recording, b_init=recording).init(
        key, jnp.zeros((2, 3))
    )
    weights = [((3, 5), 5)] * 3 + [((5, 5), 5)] * 3  # one block per gate
    assert sorted(calls) == sorted(weights + [((15,), 5), ((5,), 5)])


def test_default_initialization_is_unchanged(key):
    """The defaults ignore fan_in: LeCun normal, orthogonal, zeros, as before."""
    params = LSTMCell(4).init(key, jnp.zeros((2, 3)))
    np.testing.assert_array_equal(params["input"]["bias"], 0.0)
    k = jnn.extend.child_key(jnn.extend.child_key(key, "input"), "weight")
    first = jnn.initializers.lecun_normal()(jax.random.fold_in(k, 0), (3, 4))
    np.testing.assert_array_equal(params["input"]["weight"][:, :4], first)


# --------------------------------------------------------------------------- errors


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match=r"LSTMCell: features must be a positive int, got 0"):
        LSTMCell(0)
    with pytest.raises(TypeError, match=r"GRUCell.*features"):
        GRUCell(4.0)
    assert GRUCell(np.int64(4)).features == 4


def test_input_errors(key):
    cell = LSTMCell(4)
    params = cell.init(key, jnp.zeros((2, 3)))
    with pytest.raises(
        ShapeError,
        match=r"LSTMCell: expected input with last dimension 3 \(set at init\), got shape \(2, 4\)\.$",
    ):
        cell.apply(params, cell.initial_carry((2,)), jnp.zeros((2, 4)))
    with pytest.raises(
        ShapeError,
        match=r"LSTMCell: expected input \[\*batch, in_features\] of rank at least 1, got shape \(\)",
    ):
        cell.init(key, jnp.zeros(()))
    with pytest.raises(
        ShapeError,
        match=r"LSTMCell: init expected a batched step \[batch, in_features\], got shape \(3,\)\. "
        r"Hint: for one example add the batch axis, x\[None\]; for a batch of scalars add the "
        r"feature axis, x\[:, None\]",
    ):
        cell.init(key, jnp.zeros((3,)))
    with pytest.raises(
        DTypeError, match=r"LSTMCell: expected a floating-point input, got dtype int32"
    ):
        cell.apply(params, cell.initial_carry((2,)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(TypeError, match=r"LSTMCell.apply.*initial_carry"):
        cell.apply(params, jnp.zeros((2, 3)))  # the carry forgotten
    one = GRUCell(4)
    one_params = one.init(key, jnp.zeros((2, 1)))
    with pytest.raises(
        ShapeError,
        match=r"expected input with last dimension 1 \(set at init\), got shape \(2, 5\)\. "
        r"Hint: with one feature per step, add the feature axis: x\[\.\.\., None\]",
    ):
        one.apply(one_params, one.initial_carry((2,)), jnp.zeros((2, 5)))


H, C = jnp.zeros((2, 4)), jnp.ones((2, 4))
CARRY_ERRORS = [
    (
        LSTMCell(4),
        H,
        r"LSTMCell: expected carry \(h, c\), a tuple of 2 arrays of shape \(2, 4\) for input "
        r"of shape \(2, 3\); got an array of shape \(2, 4\) \(LSTMCell carries both h and c\)\. "
        r"Hint: make it with cell.initial_carry\(\(2,\)\)\.",
    ),
    (
        LSTMCell(4),
        (H, C, C),
        r"got a tuple of 3 arrays of shapes \(2, 4\), \(2, 4\) and \(2, 4\)\.",
    ),
    (LSTMCell(4), [H, C], r"got a list of 2 arrays .*; pass it as a tuple, tuple\(carry\)\."),
    (
        LSTMCell(4),
        (H, jnp.ones((2, 5))),
        r"got c of shape \(2, 5\), whose last axis is not features=4\.",
    ),
    (
        LSTMCell(4),
        (jnp.zeros((3, 4)), C),
        r"got h of shape \(3, 4\), whose batch \(3,\) is not \(2,\)\.",
    ),
    (
        GRUCell(4),
        jnp.zeros((1, 2, 4)),
        r"GRUCell: expected carry h, an array of shape \(2, 4\) for input of shape \(2, 3\); got h "
        r"of shape \(1, 2, 4\), whose batch \(1, 2\) is not \(2,\) \(PyTorch's h0 is \[layers \* "
        r"directions, batch, hidden\]; one layer's is h0\[0\]\)\.",
    ),
    (GRUCell(4), (H, C), r"got a tuple of 2 arrays .* \(GRUCell carries h alone\)\."),
    (GRUCell(4), None, r"GRUCell: expected carry h, .*; got None\. Hint: make it with"),
    (SimpleRNNCell(4), jnp.zeros((4,)), r"got h of shape \(4,\), whose batch \(\) is not \(2,\)\."),
]


@pytest.mark.parametrize("cell, carry, message", CARRY_ERRORS)
def test_wrong_carry_says_what_the_cell_expects(cell, carry, message, key):
    x = jnp.zeros((2, 3))
    params = cell.init(key, x)
    with pytest.raises(ShapeError, match=message):
        cell.apply(params, carry, x)


def test_integer_carry(key):
    cell = GRUCell(4)
    params = cell.init(key, jnp.zeros((2, 3)))
    with pytest.raises(
        DTypeError,
        match=r"GRUCell: expected a floating-point carry, got h of dtype int32\. Hint: make it "
        r"with cell.initial_carry\(\(2,\), dtype\)",
    ):
        cell.apply(params, jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 3)))
