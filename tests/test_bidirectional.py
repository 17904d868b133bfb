"""Bidirectional: identical to its two RNNs run one after the other, PyTorch's
bidirectional GRU/LSTM with h0 (and c0), initial carries, lengths out of range, errors."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRANSFORMS, check_gradients, torch_rnn_params_to_jnn
from recurrent_reference import CELLS, DenseCell

from jnn import RNN, Bidirectional, GRUCell, LSTMCell, Module, ShapeError


def two_rnns(both, params, x, **keywords):
    """What Bidirectional computed before it ran both directions in one scan: each RNN
    applied on its own, then merged."""
    forward = both.forward_rnn.apply(params["forward"], x, **keywords)
    backward = both.backward_rnn.apply(params["backward"], x, **keywords)
    if both.forward_rnn.return_carry:
        (f_carry, forward), (b_carry, backward) = forward, backward
        return (f_carry, b_carry), jnp.concatenate([forward, backward], -1)
    return jnp.concatenate([forward, backward], -1)


@pytest.mark.parametrize("make_cell", [*CELLS, pytest.param(lambda: DenseCell(3), id="custom")])
@pytest.mark.parametrize("padding", ["none", "lengths", "mask"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_one_scan_is_identical_to_two_rnns(make_cell, padding, return_sequences, transform, key):
    rnn = RNN(make_cell(), return_sequences=return_sequences, return_carry=True)
    both = Bidirectional(rnn)
    x = jax.random.normal(key, (3, 6, 2))
    keywords = {
        "none": {},
        "lengths": {"lengths": jnp.array([6, 3, 0])},
        "mask": {"mask": jax.random.bernoulli(key, 0.6, (3, 6))},
    }[padding]
    params = both.init(key, x, **keywords)
    got = transform(lambda p, x, kw: both.apply(p, x, **kw))(params, x, keywords)
    expected = transform(lambda p, x, kw: two_rnns(both, p, x, **kw))(params, x, keywords)
    # Bit-identical under XLA's default CPU compilation; the suite's fast-compile flags
    # (tests/conftest.py) let tanh round differently in the last bit.
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)


def test_time_major_and_different_cells(key):
    both = Bidirectional(
        RNN(LSTMCell(4), time_major=True), RNN(GRUCell(3), time_major=True, unroll=2)
    )
    x = jax.random.normal(key, (6, 3, 2))  # [time, batch, features]
    lengths = jnp.array([6, 3, 1])
    params = both.init(key, x)
    out = both.apply(params, x, lengths=lengths)
    assert out.shape == (6, 3, 7)
    chex.assert_trees_all_equal(out, two_rnns(both, params, x, lengths=lengths))
    np.testing.assert_array_equal(out[1:, 2], 0.0)


def test_last_outputs_sum_and_carry(key):
    x = jax.random.normal(key, (2, 5, 2))
    mask = jnp.arange(5)[None] < jnp.array([[5], [3]])
    rnn = RNN(GRUCell(3), return_sequences=False, return_carry=True)
    both = Bidirectional(rnn, merge="sum")
    assert both.backward_rnn == dataclasses.replace(rnn, reverse=True)
    params = both.init(key, x)
    (forward_carry, backward_carry), out = both.apply(params, x, mask=mask)
    f_carry, f_last = rnn.apply(params["forward"], x, mask=mask)
    b_carry, b_last = both.backward_rnn.apply(params["backward"], x, mask=mask)
    np.testing.assert_array_equal(out, f_last + b_last)
    chex.assert_trees_all_equal((forward_carry, backward_carry), (f_carry, b_carry))


# --------------------------------------------------------------------------- initial carries


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_initial_carry_matches_torch_h0(kind, lengths):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](
        3, 4, batch_first=True, bidirectional=True
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 3)).astype(np.float32)
    h0 = rng.standard_normal((2, 3, 4)).astype(np.float32)  # [directions, batch, hidden]
    c0 = rng.standard_normal((2, 3, 4)).astype(np.float32)
    n = np.array([5, 2, 4])
    inputs = torch.from_numpy(x)
    if lengths:
        inputs = torch.nn.utils.rnn.pack_padded_sequence(
            inputs, torch.from_numpy(n), batch_first=True, enforce_sorted=False
        )
    hx = torch.from_numpy(h0) if kind == "gru" else (torch.from_numpy(h0), torch.from_numpy(c0))
    with torch.no_grad():
        outputs, final = module(inputs, hx)
    if lengths:
        outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(
            outputs, batch_first=True, total_length=5
        )
    t = {name: p.detach().numpy() for name, p in module.named_parameters()}
    params = {
        "forward": torch_rnn_params_to_jnn(t, kind, "_l0"),
        "backward": torch_rnn_params_to_jnn(t, kind, "_l0_reverse"),
    }
    cell = GRUCell(4) if kind == "gru" else LSTMCell(4)
    both = Bidirectional(RNN(cell, return_carry=True))
    if kind == "gru":
        initial_carry = (h0[0], h0[1])
        expected_carries = (final[0].numpy(), final[1].numpy())
    else:
        initial_carry = ((h0[0], c0[0]), (h0[1], c0[1]))
        h_n, c_n = (s.numpy() for s in final)
        expected_carries = ((h_n[0], c_n[0]), (h_n[1], c_n[1]))
    carries, out = both.apply(
        jax.tree.map(jnp.asarray, params),
        jnp.asarray(x),
        initial_carry=jax.tree.map(jnp.asarray, initial_carry),
        lengths=jnp.asarray(n) if lengths else None,
    )
    np.testing.assert_allclose(out, outputs.numpy(), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(carries, expected_carries, rtol=1e-5, atol=1e-5)


def test_initial_carry_per_direction_and_gradients(key):
    both = Bidirectional(RNN(LSTMCell(3), return_carry=True))
    x = jax.random.normal(key, (2, 4, 2))
    lengths = jnp.array([4, 2])
    params = both.init(key, x)
    carry = (jnp.full((2, 3), 0.3), jnp.full((2, 3), -0.2))
    zeros = both.forward_rnn.cell.initial_carry((2,))
    # None starts a direction from zeros.
    chex.assert_trees_all_equal(
        both.apply(params, x, initial_carry=(None, carry), lengths=lengths),
        both.apply(params, x, initial_carry=(zeros, carry), lengths=lengths),
    )
    got = both.apply(params, x, initial_carry=(carry, carry), lengths=lengths)
    expected = two_rnns(both, params, x, initial_carry=carry, lengths=lengths)
    chex.assert_trees_all_equal(got, expected)

    def f(params, carries, x):
        (fc, bc), y = both.apply(params, x, initial_carry=carries, lengths=lengths)
        return (y**2).sum() + sum(c.sum() for c in jax.tree.leaves((fc, bc)))

    check_gradients(jax.jit(f), (params, (carry, carry), x))


# --------------------------------------------------------------------------- lengths out of range


def test_out_of_range_lengths(key):
    both = Bidirectional(RNN(GRUCell(3), return_carry=True))
    x = jax.random.normal(key, (3, 5, 2))
    params = both.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"Bidirectional: lengths must lie in \[0, 5\], the length of the time axis of the "
        r"input of shape \(3, 5, 2\); got \[8\] for the sequences at \[2\]\.",
    ):
        both.apply(params, x, lengths=jnp.array([5, 1, 8]))
    carries, out = jax.jit(lambda n: both.apply(params, x, lengths=n))(jnp.array([5, 1, 8]))
    good_carries, good = both.apply(params, x, lengths=jnp.array([5, 1, 5]))
    for leaf, good_leaf in zip(
        jax.tree.leaves((carries, out)), jax.tree.leaves((good_carries, good)), strict=True
    ):
        assert np.isnan(leaf[2]).all()
        np.testing.assert_array_equal(leaf[:2], good_leaf[:2])


# --------------------------------------------------------------------------- errors


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match=r"Bidirectional: forward_rnn must have reverse=False"):
        Bidirectional(RNN(GRUCell(2), reverse=True))
    with pytest.raises(ValueError, match=r"must agree on return_sequences, got True and False"):
        Bidirectional(RNN(GRUCell(2)), RNN(GRUCell(2), return_sequences=False))
    with pytest.raises(ValueError, match=r"Bidirectional: merge must be one of"):
        Bidirectional(RNN(GRUCell(2)), merge="max")
    with pytest.raises(TypeError, match=r"Bidirectional.*forward_rnn"):
        Bidirectional(GRUCell(2))


def test_merge_shapes_must_agree(key):
    both = Bidirectional(RNN(GRUCell(3)), RNN(GRUCell(2)), merge="sum")
    with pytest.raises(
        ShapeError,
        match=r"Bidirectional: merge='sum' needs outputs of equal shapes, got \(2, 5, 3\) \(forward\) and \(2, 5, 2\) \(backward\)",
    ):
        both.init(key, jnp.zeros((2, 5, 3)))


class Tagger(Module):
    def forward(self, scope, x, lengths):
        return scope("encoder", Bidirectional(RNN(GRUCell(3))), x, lengths=lengths)


def test_errors_name_the_layer_and_the_direction(key):
    both = Bidirectional(RNN(GRUCell(3)), RNN(LSTMCell(2)))
    x = jnp.zeros((2, 5, 3))
    params = both.init(key, x)
    with pytest.raises(
        ShapeError,
        match=r"Bidirectional: expected initial_carry as a pair \(forward_carry, backward_carry\), each like cell.initial_carry\(batch\) or None; got an array of shape \(2, 2, 3\)\. Hint: PyTorch's h0 \[2, batch, hidden\] is \(h0\[0\], h0\[1\]\)",
    ):
        both.apply(params, x, initial_carry=jnp.zeros((2, 2, 3)))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(LSTMCell\) at 'backward': expected initial_carry \(h, c\), a tuple of 2 arrays of shape \(2, 2\) for input of shape \(2, 5, 3\); got an array of shape \(2, 2\) \(LSTMCell carries both h and c\)",
    ):
        both.apply(params, x, initial_carry=(None, jnp.zeros((2, 2))))
    with pytest.raises(
        ShapeError,
        match=r"RNN\(GRUCell\) at 'forward': expected input with last dimension 3 \(set at init\), got shape \(2, 5, 4\)",
    ):
        both.apply(params, jnp.zeros((2, 5, 4)))
    with pytest.raises(
        ShapeError,
        match=r"Bidirectional: init expected a batched input \[\*batch, time, features\] \(rank at least 3\), got shape \(5, 3\)",
    ):
        both.init(key, jnp.zeros((5, 3)))
    assert both.apply(params, x[0]).shape == (5, 5)  # apply takes one unbatched sequence
    params = Tagger().init(key, x, jnp.array([5, 5]))
    with pytest.raises(
        ShapeError,
        match=r"Bidirectional at 'encoder': expected lengths of shape \(2,\) \(one per sequence of the input of shape \(2, 5, 3\)\), got shape \(3,\)",
    ):
        Tagger().apply(params, x, jnp.array([1, 2, 3]))
