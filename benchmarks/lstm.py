"""One-layer LSTM classifier training steps (length 50, hidden 128) in each library.

Architecture: LSTM(32 -> 128) over 50 steps, the last hidden state -> dense 10; softmax
cross-entropy; Adam 1e-3. The JAX libraries use one bias per gate (83,722 parameters);
PyTorch's LSTM has two (input and hidden), 512 more, which costs nothing measurable.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Runner, equinox_train, jax_train, jnn_train, nnx_train

LEARNING_RATE = 1e-3
LENGTH, FEATURES, HIDDEN, CLASSES = 50, 32, 128, 10


def _data(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, LENGTH, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    return x, y


def jnn_lstm(batch: int) -> Runner:
    import jnn

    x, y = _data(batch)
    model = jnn.Sequential(
        [jnn.RNN(jnn.LSTMCell(HIDDEN), return_sequences=False), jnn.Dense(CLASSES)]
    )
    return jnn_train(model, x, y, LEARNING_RATE)


def jax_lstm(batch: int) -> Runner:
    """Hand-written: both gate matmuls inside lax.scan, the fastest formulation we
    measured on a CPU. Hoisting the input projection out of the scan made the step 1.6x
    slower; ``split(x W + h U + b)`` instead of adding the split projections, with the
    hidden one (and the bias) first, made it 1.2x slower."""
    import jax
    import jax.numpy as jnp

    x, y = _data(batch)
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "input": jax.random.normal(k[0], (FEATURES, 4 * HIDDEN)) / np.sqrt(FEATURES),
        "hidden": jax.random.normal(k[1], (HIDDEN, 4 * HIDDEN)) / np.sqrt(HIDDEN),
        "bias": jnp.zeros((4 * HIDDEN,)),
        "head": {
            "weight": jax.random.normal(k[2], (HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
            "bias": jnp.zeros((CLASSES,)),
        },
    }

    def forward(p, x):
        def cell(carry, x_t):
            h, c = carry
            from_h = jnp.split(h @ p["hidden"] + p["bias"], 4, axis=-1)
            from_x = jnp.split(x_t @ p["input"], 4, axis=-1)
            i, f, g, o = (a + b for a, b in zip(from_h, from_x, strict=True))
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), None

        zeros = jnp.zeros((x.shape[0], HIDDEN), x.dtype)
        (h, _), _ = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(x, 0, 1))
        return h @ p["head"]["weight"] + p["head"]["bias"]

    return jax_train(forward, params, x, y, LEARNING_RATE)


def linen_lstm(batch: int) -> Runner:
    import flax.linen as nn
    import jax

    x, y = _data(batch)

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):
            (_, h), _ = nn.RNN(nn.OptimizedLSTMCell(HIDDEN), return_carry=True)(x)
            return nn.Dense(CLASSES)(h)

    model = Classifier()
    params = model.init(jax.random.key(0), x)["params"]
    return jax_train(lambda p, x: model.apply({"params": p}, x), params, x, y, LEARNING_RATE)


def nnx_lstm(batch: int) -> Runner:
    """Flax NNX as its documentation writes it: nnx.RNN over nnx.OptimizedLSTMCell (the
    cell the docs recommend for speed at this hidden size), nnx.Optimizer and nnx.jit."""
    from flax import nnx

    x, y = _data(batch)

    class Classifier(nnx.Module):
        def __init__(self, rngs):
            cell = nnx.OptimizedLSTMCell(FEATURES, HIDDEN, rngs=rngs)
            self.rnn = nnx.RNN(cell, return_carry=True)
            self.head = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

        def __call__(self, x):
            (_, h), _ = self.rnn(x)
            return self.head(h)

    return nnx_train(Classifier(nnx.Rngs(0)), x, y, LEARNING_RATE)


def equinox_lstm(batch: int) -> Runner:
    """Equinox's documented RNN style: LSTMCell over one example with lax.scan, vmap."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    x, y = _data(batch)

    class Classifier(eqx.Module):
        cell: eqx.nn.LSTMCell
        head: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.cell = eqx.nn.LSTMCell(FEATURES, HIDDEN, key=k1)
            self.head = eqx.nn.Linear(HIDDEN, CLASSES, key=k2)

        def __call__(self, xs):
            def step(carry, x_t):
                return self.cell(x_t, carry), None

            zeros = jnp.zeros((HIDDEN,))
            (h, _), _ = jax.lax.scan(step, (zeros, zeros), xs)
            return self.head(h)

    return equinox_train(Classifier(jax.random.key(0)), x, y, LEARNING_RATE)


def torch_lstm(batch: int) -> Runner:
    import torch

    from benchmarks.harness import torch_runner

    x, y = _data(batch)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return self.head(h[-1])

    return torch_runner(
        Classifier(), torch.from_numpy(x), torch.from_numpy(y).long(), LEARNING_RATE
    )


IMPLEMENTATIONS = {
    "jnn": jnn_lstm,
    "jax": jax_lstm,
    "flax.linen": linen_lstm,
    "flax.nnx": nnx_lstm,
    "equinox": equinox_lstm,
    "torch": torch_lstm,
}
