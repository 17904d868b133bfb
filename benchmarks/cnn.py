"""LeNet-style CNN training steps on 28x28x1 images in each library.

Architecture (44,426 parameters): conv 5x5x6 (VALID) -> relu -> max pool 2 -> conv 5x5x16
(VALID) -> relu -> max pool 2 -> flatten (256) -> dense 120 -> relu -> dense 84 -> relu ->
dense 10; softmax cross-entropy; Adam 1e-3.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Runner, equinox_train, jax_train, jnn_train, nnx_train

LEARNING_RATE = 1e-3
IMAGE = (28, 28, 1)
CLASSES = 10


def _data(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *IMAGE)).astype(np.float32)
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    return x, y


def jnn_cnn(batch: int) -> Runner:
    import jnn

    x, y = _data(batch)
    model = jnn.Sequential(
        [
            jnn.Conv(6, (5, 5), padding="VALID"),
            jnn.relu,
            jnn.MaxPool((2, 2)),
            jnn.Conv(16, (5, 5), padding="VALID"),
            jnn.relu,
            jnn.MaxPool((2, 2)),
            jnn.Flatten(),
            jnn.MLP([120, 84, CLASSES]),
        ]
    )
    return jnn_train(model, x, y, LEARNING_RATE)


def jax_cnn(batch: int) -> Runner:
    """Hand-written with jax.lax: conv_general_dilated, and 2x2 max pooling as a reshape
    and a max (the windows tile the input). Pooling with reduce_window, as most code
    writes it, made this step about 1.2x slower: XLA's CPU gradient of reduce_window
    (select-and-scatter) is slow."""
    import jax
    import jax.numpy as jnp

    x, y = _data(batch)
    key = jax.random.key(0)
    shapes = {
        "conv_0": ((5, 5, 1, 6), 6),
        "conv_1": ((5, 5, 6, 16), 16),
        "dense_0": ((256, 120), 120),
        "dense_1": ((120, 84), 84),
        "dense_2": ((84, CLASSES), CLASSES),
    }
    params = {}
    for i, (name, (shape, out)) in enumerate(shapes.items()):
        fan_in = int(np.prod(shape[:-1]))
        weight = jax.random.normal(jax.random.fold_in(key, i), shape) / np.sqrt(fan_in)
        params[name] = {"weight": weight, "bias": jnp.zeros((out,))}

    def conv(p, h):
        out = jax.lax.conv_general_dilated(
            h, p["weight"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return out + p["bias"]

    def pool(h):
        b, height, width, c = h.shape
        return h.reshape(b, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))

    def forward(p, h):
        h = pool(jax.nn.relu(conv(p["conv_0"], h)))
        h = pool(jax.nn.relu(conv(p["conv_1"], h)))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ p["dense_0"]["weight"] + p["dense_0"]["bias"])
        h = jax.nn.relu(h @ p["dense_1"]["weight"] + p["dense_1"]["bias"])
        return h @ p["dense_2"]["weight"] + p["dense_2"]["bias"]

    return jax_train(forward, params, x, y, LEARNING_RATE)


def linen_cnn(batch: int) -> Runner:
    import flax.linen as nn
    import jax

    x, y = _data(batch)

    class LeNet(nn.Module):
        @nn.compact
        def __call__(self, h):
            h = nn.max_pool(nn.relu(nn.Conv(6, (5, 5), padding="VALID")(h)), (2, 2), (2, 2))
            h = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(h)), (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            h = nn.relu(nn.Dense(120)(h))
            h = nn.relu(nn.Dense(84)(h))
            return nn.Dense(CLASSES)(h)

    model = LeNet()
    params = model.init(jax.random.key(0), x)["params"]
    return jax_train(lambda p, x: model.apply({"params": p}, x), params, x, y, LEARNING_RATE)


def nnx_cnn(batch: int) -> Runner:
    from flax import nnx

    x, y = _data(batch)

    class LeNet(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 6, (5, 5), padding="VALID", rngs=rngs)
            self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
            self.fc1 = nnx.Linear(256, 120, rngs=rngs)
            self.fc2 = nnx.Linear(120, 84, rngs=rngs)
            self.fc3 = nnx.Linear(84, CLASSES, rngs=rngs)

        def __call__(self, h):
            h = nnx.max_pool(nnx.relu(self.conv1(h)), (2, 2), (2, 2))
            h = nnx.max_pool(nnx.relu(self.conv2(h)), (2, 2), (2, 2))
            h = h.reshape(h.shape[0], -1)
            return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(h)))))

    return nnx_train(LeNet(nnx.Rngs(0)), x, y, LEARNING_RATE)


def equinox_cnn(batch: int) -> Runner:
    """Equinox's documented style: channels-first single examples, vmap, filter_jit."""
    import equinox as eqx
    import jax

    x, y = _data(batch)
    x = np.transpose(x, (0, 3, 1, 2))  # Equinox convolutions are channels-first
    keys = jax.random.split(jax.random.key(0), 5)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, 6, 5, key=keys[0]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.MaxPool2d(2, 2),
            eqx.nn.Conv2d(6, 16, 5, key=keys[1]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.MaxPool2d(2, 2),
            eqx.nn.Lambda(lambda h: h.reshape(-1)),
            eqx.nn.Linear(256, 120, key=keys[2]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(120, 84, key=keys[3]),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(84, CLASSES, key=keys[4]),
        ]
    )
    return equinox_train(model, x, y, LEARNING_RATE)


def torch_cnn(batch: int) -> Runner:
    import torch

    from benchmarks.harness import torch_runner

    x, y = _data(batch)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 120),
        torch.nn.ReLU(),
        torch.nn.Linear(120, 84),
        torch.nn.ReLU(),
        torch.nn.Linear(84, CLASSES),
    )
    images = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
    return torch_runner(model, images, torch.from_numpy(y).long(), LEARNING_RATE)


IMPLEMENTATIONS = {
    "jnn": jnn_cnn,
    "jax": jax_cnn,
    "flax.linen": linen_cnn,
    "flax.nnx": nnx_cnn,
    "equinox": equinox_cnn,
    "torch": torch_cnn,
}
