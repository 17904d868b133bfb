"""Shared by the recurrent tests (test_cells, test_rnn, test_bidirectional): the cells in
float64 NumPy from their documented equations, and a cell run step by step in Python."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn import RNN, Dense, GRUCell, LSTMCell, Module, SimpleRNNCell

CELLS = [
    pytest.param(lambda: SimpleRNNCell(4), id="simple"),
    pytest.param(lambda: LSTMCell(4), id="lstm"),
    pytest.param(lambda: GRUCell(4), id="gru"),
]


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


class DenseCell(Module):
    """A user-written composite cell without output_of; its output (2h) is not its carry."""

    features: int

    def initial_carry(self, batch_shape=(), dtype=jnp.float32):
        return jnp.zeros((*batch_shape, self.features), dtype)

    def forward(self, scope, carry, x):
        h = scope("dense", Dense(self.features), jnp.concatenate([x, carry], -1))
        return jnp.tanh(h), 2 * h


class Encoder(Module):
    """Two stacked LSTMs that both see the lengths: the documented way to stack."""

    def forward(self, scope, x, lengths):
        for i in range(2):
            x = scope(f"lstm_{i}", RNN(LSTMCell(4)), x, lengths=lengths)
        return x
