"""MLP training steps (forward, softmax cross-entropy, backward, Adam) in each library.

Every builder makes the same architecture: ``Dense`` layers of the given widths with ReLU
between them, and Adam with learning rate 1e-3. Initial values differ between libraries;
they do not change the cost.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Runner, equinox_train, jax_train, jnn_train, nnx_train

LEARNING_RATE = 1e-3


def _data(batch, sizes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int32)
    return x, y


def jnn_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    import jnn

    x, y = _data(batch, sizes)
    return jnn_train(jnn.MLP(sizes[1:]), x, y, LEARNING_RATE)


def jax_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    """The zero-overhead reference: a dict of arrays, a loop of matmuls, optax, jax.jit."""
    import jax
    import jax.numpy as jnp

    x, y = _data(batch, sizes)
    key = jax.random.key(0)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params[f"dense_{i}"] = {
            "weight": jax.random.normal(jax.random.fold_in(key, i), (n_in, n_out)) / np.sqrt(n_in),
            "bias": jnp.zeros((n_out,)),
        }

    def forward(params, x):
        last = len(params) - 1
        for i in range(len(params)):
            x = x @ params[f"dense_{i}"]["weight"] + params[f"dense_{i}"]["bias"]
            if i < last:
                x = jax.nn.relu(x)
        return x

    return jax_train(forward, params, x, y, LEARNING_RATE)


def linen_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    import flax.linen as nn
    import jax

    x, y = _data(batch, sizes)

    class MLP(nn.Module):
        features: tuple[int, ...]

        @nn.compact
        def __call__(self, x):
            for i, width in enumerate(self.features):
                x = nn.Dense(width)(x)
                if i < len(self.features) - 1:
                    x = nn.relu(x)
            return x

    model = MLP(sizes[1:])
    params = model.init(jax.random.key(0), x)["params"]
    return jax_train(lambda p, x: model.apply({"params": p}, x), params, x, y, LEARNING_RATE)


def nnx_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    """Flax NNX as its documentation's MLP tutorial writes it: nnx.Optimizer and nnx.jit."""
    from flax import nnx

    x, y = _data(batch, sizes)

    class MLP(nnx.Module):
        def __init__(self, sizes, rngs):
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            )

        def __call__(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i < len(self.layers) - 1:
                    x = nnx.relu(x)
            return x

    return nnx_train(MLP(sizes, nnx.Rngs(0)), x, y, LEARNING_RATE)


def equinox_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    """Equinox as its documentation writes it: eqx.nn.MLP, vmap per example, filter_jit."""
    import equinox as eqx
    import jax

    x, y = _data(batch, sizes)
    assert all(w == sizes[1] for w in sizes[1:-1]), "eqx.nn.MLP has one hidden width"
    model = eqx.nn.MLP(
        sizes[0], sizes[-1], width_size=sizes[1], depth=len(sizes) - 2, key=jax.random.key(0)
    )
    return equinox_train(model, x, y, LEARNING_RATE)


def torch_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    import torch

    from benchmarks.harness import torch_runner

    x, y = _data(batch, sizes)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    return torch_runner(model, torch.from_numpy(x), torch.from_numpy(y).long(), LEARNING_RATE)


IMPLEMENTATIONS = {
    "jnn": jnn_mlp,
    "jax": jax_mlp,
    "flax.linen": linen_mlp,
    "flax.nnx": nnx_mlp,
    "equinox": equinox_mlp,
    "torch": torch_mlp,
}
