"""Bidirectional GRU classifier training steps on MNIST-1D-sized data (length 40, 1 feature).

Architecture: a bidirectional GRU (1 -> 64 per direction) over 40 steps; the last
forward and the last backward hidden state, concatenated -> dense 10; softmax
cross-entropy; Adam 1e-3. jnn's ``Bidirectional`` against the same network written by
hand with both directions in one ``lax.scan`` (26,762 parameters); PyTorch's GRU has
two full bias vectors per direction (256 more).
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Runner, jax_train, jnn_train

LEARNING_RATE = 1e-3
LENGTH, FEATURES, HIDDEN, CLASSES = 40, 1, 64, 10


def _data(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, LENGTH, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    return x, y


def jnn_bigru(batch: int) -> Runner:
    import jnn

    x, y = _data(batch)
    rnn = jnn.RNN(jnn.GRUCell(HIDDEN), return_sequences=False)
    model = jnn.Sequential([jnn.Bidirectional(rnn), jnn.Dense(CLASSES)])
    return jnn_train(model, x, y, LEARNING_RATE)


def jax_bigru(batch: int) -> Runner:
    """Hand-written: both directions in one lax.scan, the backward one reading the
    reversed sequence; each GRU step in the formulation of the LSTM reference (both
    projections inside the scan, the gates split before they are added)."""
    import jax
    import jax.numpy as jnp

    x, y = _data(batch)
    keys = iter(jax.random.split(jax.random.key(0), 5))

    def gru_params():
        return {
            "input": jax.random.normal(next(keys), (FEATURES, 3 * HIDDEN)) / np.sqrt(FEATURES),
            "input_bias": jnp.zeros((3 * HIDDEN,)),
            "hidden": jax.random.normal(next(keys), (HIDDEN, 3 * HIDDEN)) / np.sqrt(HIDDEN),
            "hidden_bias": jnp.zeros((HIDDEN,)),
        }

    params = {
        "forward": gru_params(),
        "backward": gru_params(),
        "head": {
            "weight": jax.random.normal(next(keys), (2 * HIDDEN, CLASSES)) / np.sqrt(2 * HIDDEN),
            "bias": jnp.zeros((CLASSES,)),
        },
    }

    def gru(q, h, x_t):
        x_r, x_z, x_n = jnp.split(x_t @ q["input"] + q["input_bias"], 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h @ q["hidden"], 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + q["hidden_bias"]))
        return (1.0 - z) * n + z * h

    def forward(p, x):
        def step(carry, inputs):
            h_forward, h_backward = carry
            x_t, x_reversed = inputs
            h_forward = gru(p["forward"], h_forward, x_t)
            h_backward = gru(p["backward"], h_backward, x_reversed)
            return (h_forward, h_backward), None

        xs = jnp.swapaxes(x, 0, 1)  # [time, batch, features]
        zeros = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
        (h_forward, h_backward), _ = jax.lax.scan(step, (zeros, zeros), (xs, xs[::-1]))
        h = jnp.concatenate([h_forward, h_backward], axis=-1)
        return h @ p["head"]["weight"] + p["head"]["bias"]

    return jax_train(forward, params, x, y, LEARNING_RATE)


def torch_bigru(batch: int) -> Runner:
    import torch

    from benchmarks.harness import torch_runner

    x, y = _data(batch)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(2 * HIDDEN, CLASSES)

        def forward(self, x):
            _, h = self.gru(x)  # [2, batch, hidden]: the last forward and backward states
            return self.head(torch.cat([h[0], h[1]], dim=-1))

    return torch_runner(
        Classifier(), torch.from_numpy(x), torch.from_numpy(y).long(), LEARNING_RATE
    )


IMPLEMENTATIONS = {"jnn": jnn_bigru, "jax": jax_bigru, "torch": torch_bigru}
