"""MLP training steps (forward, softmax cross-entropy, backward, Adam) in each library.

Every builder returns a ``Runner`` for the same architecture: ``Dense`` layers of the
given widths with ReLU between them, LeCun-normal or library-default weights (the
initial values do not change the cost), Adam with learning rate 1e-3.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Runner, jax_runner

LEARNING_RATE = 1e-3


def _data(batch, sizes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int32)
    return x, y


def jnn_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    import jax
    import optax

    import jnn

    x, y = _data(batch, sizes)
    model = jnn.MLP(sizes[1:])
    params = model.init(jax.random.key(0), x)
    optimizer = optax.adam(LEARNING_RATE)
    step = jnn.make_train_step(model, jnn.softmax_cross_entropy_with_integer_labels, optimizer)

    def call(state):
        params, opt_state = state
        params, opt_state, logs = step(params, opt_state, (x, y))
        return (params, opt_state), logs["loss"]

    return jax_runner(call, (params, optimizer.init(params)), params)


def jax_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    """The zero-overhead reference: a dict of arrays, a loop of matmuls, optax, jax.jit."""
    import jax
    import jax.numpy as jnp
    import optax

    x, y = _data(batch, sizes)
    key = jax.random.key(0)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params[f"dense_{i}"] = {
            "weight": jax.random.normal(jax.random.fold_in(key, i), (n_in, n_out)) / np.sqrt(n_in),
            "bias": jnp.zeros((n_out,)),
        }
    optimizer = optax.adam(LEARNING_RATE)

    def forward(params, x):
        last = len(params) - 1
        for i in range(len(params)):
            x = x @ params[f"dense_{i}"]["weight"] + params[f"dense_{i}"]["bias"]
            if i < last:
                x = jax.nn.relu(x)
        return x

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    @jax.jit
    def _step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(_step, donate_argnums=(0, 1))

    def call(state):
        params, opt_state, loss = step(*state, x, y)
        return (params, opt_state), loss

    return jax_runner(call, (params, optimizer.init(params)), params)


def linen_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    import flax.linen as nn
    import jax
    import optax

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
    optimizer = optax.adam(LEARNING_RATE)

    def _step(params, opt_state, x, y):
        def loss_fn(params):
            logits = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(_step, donate_argnums=(0, 1))

    def call(state):
        params, opt_state, loss = step(*state, x, y)
        return (params, opt_state), loss

    return jax_runner(call, (params, optimizer.init(params)), params)


def nnx_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    """Flax NNX as its documentation's MLP tutorial writes it: nnx.Optimizer and nnx.jit."""
    import optax
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

    model = MLP(sizes, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def call(state):
        return state, step(model, optimizer, x, y)

    return jax_runner(call, (), nnx.state(model, nnx.Param))


def equinox_mlp(batch: int, sizes: tuple[int, ...]) -> Runner:
    """Equinox as its documentation writes it: eqx.nn.MLP, vmap per example, filter_jit."""
    import equinox as eqx
    import jax
    import optax

    x, y = _data(batch, sizes)
    model = eqx.nn.MLP(
        sizes[0], sizes[-1], width_size=sizes[1], depth=len(sizes) - 2, key=jax.random.key(0)
    )
    assert all(w == sizes[1] for w in sizes[1:-1]), "eqx.nn.MLP has one hidden width"
    optimizer = optax.adam(LEARNING_RATE)

    @eqx.filter_jit(donate="all")
    def step(model, opt_state, x, y):
        def loss_fn(model):
            logits = jax.vmap(model)(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def call(state):
        model, opt_state, loss = step(*state, x, y)
        return (model, opt_state), loss

    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    return jax_runner(call, (model, opt_state), eqx.filter(model, eqx.is_array))


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
